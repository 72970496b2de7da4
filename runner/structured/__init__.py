"""Structured output: JSON Schema and tool calls, guaranteed by the decoder.

    schema.py      JSON Schema -> Grammar, SchemaError for what is not supported
    grammar.py     the Grammar: nodes, and the tables the automaton reads
    formats.py     the date/time/uuid formats as small regular expressions; bounded numbers
    automaton.py   the grammar's pushdown automaton over the output's bytes
    vocab.py       the vocabulary as the automaton reads it; valid tokens without a 262k loop
    constraint.py  grammars as sampling constraints, with their caches (Structured)
    tools.py       OpenAI tools: the prompt, the calls' grammar, the calls in the output
"""
from .constraint import SchemaConstraint, Structured, schema_key
from .schema import Grammar, SchemaError, compile_schema

__all__ = ["SchemaConstraint", "Structured", "schema_key", "Grammar", "SchemaError", "compile_schema"]
