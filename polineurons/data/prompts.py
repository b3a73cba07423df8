"""Prompt formatting and tokenization that follow each model's chat template.

Rendering goes through the template and the text is tokenized *without* the tokenizer's special
tokens: the template already places its own leading token (``<|im_start|>``, ``<bos>``,
``<|begin_of_text|>``...), so adding the tokenizer's BOS as well would double it. Models without a
chat template get a plain ``Question: ... Answer:`` prompt after their BOS token.
"""

from __future__ import annotations

from typing import Any

PLAIN_TEMPLATE = "Question: {question}\nAnswer:"


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def format_prompt(tokenizer: Any, question: str) -> str:
    """The text a model sees before its answer to ``question`` (generation prompt included)."""
    if not has_chat_template(tokenizer):
        return PLAIN_TEMPLATE.format(question=question)
    messages = [{"role": "user", "content": question}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def encode_text(tokenizer: Any, text: str, *, prompt_start: bool = True) -> list[int]:
    """Token ids of ``text`` with no special tokens added, except a BOS in front of a plain prompt.

    ``prompt_start=False`` for continuations (answers) that follow an already-encoded prompt.
    """
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    bos = getattr(tokenizer, "bos_token_id", None)
    if prompt_start and not has_chat_template(tokenizer) and bos is not None and (not ids or ids[0] != bos):
        ids = [bos, *ids]
    return list(ids)


def encode_prompt(tokenizer: Any, question: str) -> list[int]:
    """Token ids of :func:`format_prompt` — exactly one leading special token."""
    return encode_text(tokenizer, format_prompt(tokenizer, question))
