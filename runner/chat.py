"""Messages -> prompt pieces (the chat template), with slots for images. No I/O.

Gemma's template (SPEC 3): `<bos>`, then per turn
`<start_of_turn>{user|model}\\n{content.strip()}<end_of_turn>\\n`; a system message has no
turn of its own: its text and a blank line open the first user turn. The generation
prompt is `<start_of_turn>model\\n`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class ChatError(ValueError):
    """A message list that cannot be formatted (wrong roles, types)."""


@dataclass(frozen=True)
class ImageRef:
    """An image in a message: `source` is what the user gave (a path, bytes, a data URI,
    a PIL image); the mode that owns I/O turns it into pixels."""
    source: Any


ROLES = ("system", "user", "assistant", "model")


def message_parts(content: Any) -> list[str | ImageRef]:
    """A message's content (a string, or OpenAI-style parts) as text and image pieces."""
    if isinstance(content, str):
        return [content]
    if content is None:
        return [""]
    if not isinstance(content, list):
        raise ChatError(f"message content must be a string or a list of parts, not {type(content).__name__}")
    parts: list[str | ImageRef] = []
    for part in content:
        if not isinstance(part, dict) or "type" not in part:
            raise ChatError("each content part must be an object with a 'type'")
        kind = part["type"]
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise ChatError("a text part needs a string 'text'")
            parts.append(part["text"])
        elif kind in ("image", "image_url"):
            src = part.get("image_url", part.get("image"))
            if isinstance(src, dict):
                src = src.get("url")
            if src is None:
                raise ChatError(f"an {kind} part needs its image")
            parts.append(ImageRef(src))
        else:
            raise ChatError(f"unknown content part type {kind!r}")
    return parts


def _strip_parts(parts: list[str | ImageRef]) -> list[str | ImageRef]:
    """Gemma trims each text piece of a turn."""
    return [p.strip() if isinstance(p, str) else p for p in parts]


def render_gemma(messages: list[dict], add_generation_prompt: bool = True) -> list[str | ImageRef]:
    """The prompt as text pieces and image slots, in order (text pieces may contain
    control tokens written out, e.g. `<start_of_turn>`: tokenize with special=True)."""
    if not isinstance(messages, list) or not messages:
        raise ChatError("messages must be a non-empty list")
    out: list[str | ImageRef] = ["<bos>"]
    prefix: list[str | ImageRef] = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise ChatError(f"message {i}: expected an object with a role among {', '.join(ROLES)}")
        parts = message_parts(m.get("content"))
        if m["role"] == "system":
            # why: Gemma has no system turn; the text opens the next user turn
            prefix += [p for p in parts] + ["\n\n"]
            continue
        role = "model" if m["role"] in ("assistant", "model") else "user"
        out.append(f"<start_of_turn>{role}\n")
        if role == "user":
            out += prefix
            prefix = []
        out += _strip_parts(parts)
        out.append("<end_of_turn>\n")
    if prefix:                                   # a system message with no user turn after it
        out += ["<start_of_turn>user\n"] + prefix + ["<end_of_turn>\n"]
    if add_generation_prompt:
        out.append("<start_of_turn>model\n")
    return _merge_text(out)


def _merge_text(pieces: list[str | ImageRef]) -> list[str | ImageRef]:
    merged: list[str | ImageRef] = []
    for p in pieces:
        if isinstance(p, str) and merged and isinstance(merged[-1], str):
            merged[-1] += p
        elif p != "":
            merged.append(p)
    return merged


def render_text(messages: list[dict], add_generation_prompt: bool = True) -> str:
    """The Gemma prompt as one string (images shown as `<start_of_image>`)."""
    return "".join(p if isinstance(p, str) else "<start_of_image>"
                   for p in render_gemma(messages, add_generation_prompt))


def render(messages: list[dict], template: str | None = None,
           add_generation_prompt: bool = True) -> list[str | ImageRef]:
    """The prompt for `messages` under `template`: None or "gemma" is the built-in Gemma
    format; anything else is a chat template string (Jinja, as in GGUF files)."""
    if template is None or template == "gemma":
        return render_gemma(messages, add_generation_prompt)
    raise ChatError("only the built-in 'gemma' chat template is supported")
