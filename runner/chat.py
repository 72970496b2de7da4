"""Messages -> prompt pieces (the chat template), with slots for images. No I/O.

Gemma's template (Google's Gemma 3 chat format): `<bos>`, then per turn
`<start_of_turn>{user|model}\\n{content.strip()}<end_of_turn>\\n`; a system message has no
turn of its own: its text and a blank line open the first user turn. The generation
prompt is `<start_of_turn>model\\n`.

Any other template is a Jinja string (a GGUF file's `tokenizer.chat_template`, or
--chat-template), rendered in a sandbox as transformers and llama.cpp render it.

OpenAI's `developer` role is a system message; tools, tool calls and tool results are
written in the built-in tool format (structured/tools.py) unless the template renders
`tools` itself.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from .structured.tools import ToolError, ToolSpec, prepare_messages


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


def render(messages: list[dict], template: str = "gemma", add_generation_prompt: bool = True,
           bos_token: str = "<bos>", eos_token: str = "<eos>", tools: ToolSpec | None = None) -> list[str | ImageRef]:
    """The prompt for `messages` under `template`: "gemma" is the built-in Gemma format;
    anything else is a chat template string (Jinja, as in GGUF files). `developer` messages
    are system messages. Tools, tool calls and tool results go to a template that renders
    `tools` itself; for any other the messages are rewritten in the built-in tool format
    (structured/tools.py)."""
    native = template != "gemma" and template_supports_tools(template)
    try:
        messages = prepare_messages(messages, tools, native)
    except ToolError as e:
        raise ChatError(str(e)) from None
    if template == "gemma":
        return render_gemma(messages, add_generation_prompt)
    return render_jinja(messages, template, add_generation_prompt, bos_token, eos_token,
                        tools.openai() if native and tools is not None and tools.calls else None)


_PROBE_TOOL = "probe_tool_7f3a"


@functools.lru_cache(maxsize=8)
def template_supports_tools(template: str) -> bool:
    """Does a Jinja template render `tools`? (It shows a probe function's name.)"""
    probe = [{"type": "function", "function": {"name": _PROBE_TOOL, "description": "",
                                               "parameters": {"type": "object", "properties": {}}}}]
    try:
        text = render_jinja([{"role": "user", "content": "hi"}], template, tools=probe)
    except ChatError:
        return False
    return any(isinstance(p, str) and _PROBE_TOOL in p for p in text)


def render_prefilled(messages: list[dict], template: str = "gemma", bos_token: str = "<bos>",
                     eos_token: str = "<eos>", tools: ToolSpec | None = None) -> list[str | ImageRef]:
    """The prompt for `messages`; when the last one is the assistant's, a prefill, as in
    llama-server: its turn is left open after its text so that the reply continues it
    (rendered without a generation prompt, cut after that text). Two assistant messages
    at the end are an error there, and here."""
    if not (isinstance(messages, list) and messages and isinstance(messages[-1], dict)
            and messages[-1].get("role") in ("assistant", "model")) or messages[-1].get("tool_calls"):
        # an assistant turn of tool calls is complete: the next turn follows it
        return render(messages, template, True, bos_token, eos_token, tools)
    if len(messages) >= 2 and isinstance(messages[-2], dict) and messages[-2].get("role") in ("assistant", "model"):
        raise ChatError("cannot have 2 or more assistant messages at the end of the list")
    parts = message_parts(messages[-1].get("content"))
    text = parts[-1].strip() if all(isinstance(p, str) for p in parts) else ""   # the text the reply follows
    if not text:
        raise ChatError("a final assistant message (a prefill to continue) must hold text only")
    pieces = render(messages, template, False, bos_token, eos_token, tools)
    at = pieces[-1].rfind(text) if pieces and isinstance(pieces[-1], str) else -1
    if at < 0:
        raise ChatError("the chat template does not write the final assistant message's text as given, "
                        "so it cannot be continued")
    return pieces[:-1] + [pieces[-1][:at + len(text)]]


# -- Jinja chat templates (the `tokenizer.chat_template` of GGUF and HF files) -------------

# Where an image goes. Templates never see the image itself: its part becomes a text part
# holding this marker (as llama.cpp's mtmd does), and the rendered text is cut at it.
MEDIA_MARKER = "<__media__>"


class ChatFormat(NamedTuple):
    template: str | None        # for `render`: "gemma" or a Jinja string; None: the model has none
    how: str                    # where it comes from, for the user
    warning: str | None = None  # e.g. the file's template does not compile


# llama.cpp's names for two common formats (src/llama-chat.cpp), written as Jinja; "gemma"
# is the built-in format
NAMED_TEMPLATES = {
    "chatml": "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
              "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
    "llama3": "{% for m in messages %}<|start_header_id|>{{ m.role }}<|end_header_id|>\n\n"
              "{{ m.content | trim }}<|eot_id|>{% endfor %}"
              "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}",
}
TEMPLATE_NAMES = ("gemma", *NAMED_TEMPLATES)


def resolve_template(requested: str | None, own: str | None) -> ChatFormat:
    """Which template a model chats with. `requested` (--chat-template) is a name
    (TEMPLATE_NAMES) or a Jinja string, which must compile (ChatError; so does anything
    else: a name nobody knows would otherwise become a template that prints itself);
    else the model file's own template `own`, or the built-in Gemma format with a warning
    if that does not compile; else no chat template (template None: a base model, whose
    chat in the REPL is raw completion)."""
    if requested in ("gemma", "gemma3"):
        return ChatFormat("gemma", "Gemma chat format (--chat-template gemma)")
    if requested in NAMED_TEMPLATES:
        return ChatFormat(NAMED_TEMPLATES[requested], f"{requested} chat format (--chat-template {requested})")
    if requested:
        if "{{" not in requested and "{%" not in requested:
            raise ChatError(f"unknown chat template {requested[:40]!r}: give one of {', '.join(TEMPLATE_NAMES)}, "
                            f"a Jinja template, or --chat-template-file FILE")
        _try_template(requested)
        return ChatFormat(requested, "chat template from --chat-template")
    if own:
        try:
            _try_template(own)
            return ChatFormat(own, "chat template from the model file")
        except ChatError as e:
            return ChatFormat("gemma", "Gemma chat format (built in)",
                              f"the model's {e}; using the built-in Gemma format")
    return ChatFormat(None, "no chat template")


def _try_template(source: str) -> None:
    """Compile the template and render one user message with it: a template that cannot
    (a sandbox bound, an error) is found at start, not at the first message."""
    render_jinja([{"role": "user", "content": "Hello"}], source)


def compile_template(source: str):
    """A Jinja chat template, compiled in a sandbox the way transformers and llama.cpp
    read them (trim_blocks, lstrip_blocks, loop controls, raise_exception, tojson,
    strftime_now). ChatError for a template that does not compile."""
    return _compile(source)


@functools.lru_cache(maxsize=8)
def _compile(source: str):
    import jinja2

    from .sandbox import BoundedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        # why: Jinja's own tojson escapes HTML characters, which templates do not expect
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    env = BoundedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise ChatError(f"chat template, line {e.lineno}: {e.message}") from None
    except (MemoryError, RecursionError) as e:       # a template too large or too deep to compile
        raise ChatError(f"chat template: {type(e).__name__}") from None


def _template_messages(messages: list[dict]) -> tuple[list[dict], list[ImageRef]]:
    """Plain copies of the messages for a template; image parts become MEDIA_MARKER text
    parts. Returns them and the images in order."""
    if not isinstance(messages, list) or not messages:
        raise ChatError("messages must be a non-empty list")
    out, images = [], []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise ChatError(f"message {i}: expected an object with a string role")
        content = m.get("content")
        if isinstance(content, list):
            parts = []
            for p in message_parts(content):
                if isinstance(p, ImageRef):
                    images.append(p)
                    p = MEDIA_MARKER
                parts.append({"type": "text", "text": p})
            content = parts
        elif content is None:
            content = ""
        elif not isinstance(content, str):
            message_parts(content)                  # raises the error for a wrong type
        out.append({**{k: v for k, v in m.items() if isinstance(k, str)}, "content": content})
    return out, images


def render_jinja(messages: list[dict], template: str, add_generation_prompt: bool = True,
                 bos_token: str = "<bos>", eos_token: str = "<eos>", tools: list | None = None) -> list[str | ImageRef]:
    """The prompt from a Jinja chat template, with image slots where the images were
    (`tools`: OpenAI's tool list, for templates that render it)."""
    import jinja2

    from .sandbox import render as render_bounded
    compiled = compile_template(template)
    plain, images = _template_messages(messages)
    extra = {"tools": tools} if tools is not None else {}
    try:
        text = render_bounded(compiled, messages=plain, add_generation_prompt=add_generation_prompt,
                              bos_token=bos_token, eos_token=eos_token, **extra)
    except jinja2.TemplateError as e:               # raise_exception(), undefined names, sandbox bounds
        raise ChatError(f"chat template: {e}") from None
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, ArithmeticError, MemoryError,
            RecursionError) as e:                   # e.g. range(10**9): OverflowError
        raise ChatError(f"chat template: {type(e).__name__}: {str(e)[:200]}") from None
    pieces = text.split(MEDIA_MARKER)
    if len(pieces) != len(images) + 1:
        raise ChatError(f"chat template: {len(images)} image(s) in the messages, "
                        f"{len(pieces) - 1} in the rendered prompt")
    out: list[str | ImageRef] = [pieces[0]]
    for image, piece in zip(images, pieces[1:]):
        out += [image, piece]
    return _merge_text(out)
