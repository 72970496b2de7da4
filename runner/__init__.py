"""Gemma 3 in numpy: GGUF loading, dequantization, tokenizer, model and generation.

    import runner
    llm = runner.load("models/gemma-3-270m-q4_k_m.gguf")
    print(llm.complete("The capital of France is", max_tokens=16, temperature=0))
"""
from __future__ import annotations

__version__ = "0.1.0"

from .engine import ContextError, EngineConfig, Prompt
from .generation import Result, Stop
from .gguf import GGUFError, GGUFFile, open_gguf
from .llm import LLM, load
from .sampling import SamplingParams
from .tokenizer import Tokenizer, load_tokenizer

__all__ = ["load", "LLM", "load_tokenizer", "Tokenizer", "GGUFFile", "GGUFError", "open_gguf",
           "ContextError", "EngineConfig", "Prompt", "Result", "SamplingParams", "Stop"]
