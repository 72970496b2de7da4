"""Gemma 3 in numpy: GGUF loading, dequantization, tokenizer, model and generation."""
from __future__ import annotations

__version__ = "0.1.0"

from .gguf import GGUFError, GGUFFile, open_gguf  # noqa: E402,F401
