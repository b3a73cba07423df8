"""Stance data and prompt formatting."""

from polineurons.data.prompts import encode_prompt, encode_text, format_prompt, has_chat_template

__all__ = ["encode_prompt", "encode_text", "format_prompt", "has_chat_template"]
