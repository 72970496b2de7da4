"""The Jinja sandbox chat templates run in, with bounds.

A chat template (a model file's `tokenizer.chat_template`, or --chat-template) is code:
Jinja's sandbox keeps it from reaching Python's internals, but not from asking for a
huge number (`10**10**10`), a huge string (`'x' * 10**10`, a string doubled in a loop) or
a long loop. Here rendering is bounded in time, output size and the size of what the
template's operators build; a broken bound is a `TemplateLimit` (a Jinja TemplateError).

    env = BoundedEnvironment(trim_blocks=True, lstrip_blocks=True)
    text = render(env.from_string(source), messages=[...])
"""
from __future__ import annotations

import sys
import time
from typing import Any

from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

MAX_SECONDS = 2.0            # a chat template renders in milliseconds
MAX_CHARS = 16 << 20         # output and any string or list built (far more than a context holds)
MAX_INT_BITS = 1 << 16       # integers built with ** and * (a 20,000-digit number)


class TemplateLimit(TemplateError):
    """A chat template went past a bound of the sandbox."""


def _size(x: Any) -> int | None:
    return len(x) if isinstance(x, (str, list, tuple)) else None


class _Generator(CodeGenerator):
    """Compiles `a ~ b` to the environment's checked concatenation (Jinja joins the parts
    inline, where no sandbox hook sees them)."""

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        if frame.eval_ctx.volatile or frame.eval_ctx.autoescape:
            return super().visit_Concat(node, frame)     # Markup escaping: Jinja's own join
        self.write("environment.checked_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class BoundedEnvironment(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox (range() already capped at 100,000 items) whose `**`, `*`,
    `+` and `~` refuse results past MAX_INT_BITS or MAX_CHARS before computing them.
    why before: `10**10**10` alone would run for hours, and Jinja folds constant
    expressions at compile time unless the operator is intercepted."""

    code_generator_class = _Generator
    intercepted_binops = frozenset({"**", "*", "+"})

    def call_binop(self, context, operator: str, left: Any, right: Any) -> Any:
        ints = all(isinstance(v, int) for v in (left, right))
        if operator == "**" and ints and right > 0 and max(left.bit_length(), 1) * right > MAX_INT_BITS:
            raise TemplateLimit(f"{left} ** {right} is too large a number for a chat template")
        if operator == "*":
            if ints and left.bit_length() + right.bit_length() > MAX_INT_BITS:
                raise TemplateLimit("a product too large for a chat template")
            n, seq = (right, _size(left)) if isinstance(right, int) else (left, _size(right))
            if seq is not None and isinstance(n, int) and seq * n > MAX_CHARS:
                raise TemplateLimit(f"a repetition of {seq * n:,} items (more than {MAX_CHARS:,})")
        if operator == "+" and None not in (_size(left), _size(right)) and _size(left) + _size(right) > MAX_CHARS:
            raise TemplateLimit(f"a concatenation of more than {MAX_CHARS:,} items")
        return super().call_binop(context, operator, left, right)

    def checked_concat(self, parts: tuple) -> str:
        strings = [str(p) for p in parts]
        if sum(map(len, strings)) > MAX_CHARS:
            raise TemplateLimit(f"a string of more than {MAX_CHARS:,} characters")
        return "".join(strings)


def render(template, **context: Any) -> str:
    """The template's output, within MAX_SECONDS and MAX_CHARS (TemplateLimit otherwise).
    The time is checked on every Python call the template makes (each loop step is one),
    through a trace function on this thread only."""
    deadline = time.monotonic() + MAX_SECONDS

    def watch(frame, event, arg):
        if time.monotonic() > deadline:
            raise TemplateLimit(f"rendering took more than {MAX_SECONDS:g} s")
        return None                                      # no line-by-line tracing

    previous = sys.gettrace()
    sys.settrace(watch)
    try:
        out, size = [], 0
        for piece in template.generate(**context):
            size += len(piece)
            if size > MAX_CHARS:
                raise TemplateLimit(f"the prompt it wrote has more than {MAX_CHARS:,} characters")
            out.append(piece)
        return "".join(out)
    finally:
        sys.settrace(previous)
