"""Stance data (items, statements, loaders) and prompt formatting."""

from polineurons.data.items import (
    LEANINGS,
    SPLITS,
    TOPICS,
    DataError,
    StanceDataset,
    StanceItem,
    StatementItem,
)
from polineurons.data.loaders import (
    DATASETS,
    bundled_data_dir,
    load_data,
    load_hf,
    load_ideoinst,
    load_jsonl,
    load_neutral,
)
from polineurons.data.prompts import encode_prompt, encode_text, format_prompt, has_chat_template

__all__ = [
    "LEANINGS",
    "SPLITS",
    "TOPICS",
    "DataError",
    "StanceDataset",
    "StanceItem",
    "StatementItem",
    "bundled_data_dir",
    "encode_prompt",
    "encode_text",
    "format_prompt",
    "has_chat_template",
    "load_data",
    "load_hf",
    "load_ideoinst",
    "load_jsonl",
    "load_neutral",
    "DATASETS",
]
