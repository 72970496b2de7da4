"""/upload FILE: what the model gets from a file, by kind.

`kind_of` sorts a file by its first bytes; `READERS` maps each kind to the function that
adds it to the conversation. A text file goes in front of the next message (fenced, with
its name; as it is in raw completion mode), an image (with a vision projector) as its
soft tokens; either is read into the cache right away.
"""
from __future__ import annotations

import os

from .conversation import plain

# signatures of the image formats a vision model reads (BMP's "BM" is too short to
# trust alone: the name must agree)
_IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a")


def kind_of(path: str, head: bytes) -> str:
    if head.startswith(_IMAGE_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP") \
            or (head[:2] == b"BM" and path.lower().endswith(".bmp")):
        return "image"
    return "text"


def fenced(name: str, text: str) -> str:
    """A file as a chat model expects to see it: its name, then its text in a fence
    longer than any backtick run inside."""
    fence = "```"
    while fence in text:
        fence += "`"
    ext = os.path.splitext(name)[1].lstrip(".")
    return f"File `{name}`:\n{fence}{ext}\n{text.rstrip(chr(10))}\n{fence}"


def read_text(repl, path: str, data: bytes) -> None:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        repl.screen.error(f"{path}: not a text file (not UTF-8); /upload reads text files")
        return
    if "\0" in text:
        repl.screen.error(f"{path}: a binary file (it has NUL bytes); /upload reads text files")
        return
    name = os.path.basename(path)
    text = plain(text)                             # no characters that could pose as an image
    repl.attach(name, text if repl.conv.raw else fenced(name, text))


def read_image(repl, path: str, data: bytes) -> None:
    if not repl.llm.has_vision:
        repl.screen.error(f"{path}: an image; this model reads text only: images need a vision "
                          f"projector (restart with --mmproj FILE)")
        return
    from ..images import ImageError
    try:
        repl.llm.image(data)                       # check and encode now; the prompt reuses it
    except ImageError as e:
        repl.screen.error(str(e))
        return
    # the file's bytes, not its path: the conversation keeps the image as it was
    repl.attach(os.path.basename(path), repl.conv.add_image(data), size=repl.llm.image_tokens + 4)


READERS = {"text": read_text, "image": read_image}


def upload(repl, arg: str) -> None:
    path = os.path.expanduser(arg.strip().strip("\"'"))
    if not path:
        repl.screen.error("usage: /upload FILE")
        return
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        repl.screen.error(f"{path}: no such file")
        return
    except IsADirectoryError:
        repl.screen.error(f"{path}: a directory; /upload reads one file")
        return
    except OSError as e:
        repl.screen.error(f"{path}: cannot read: {e.strerror or e}")
        return
    READERS[kind_of(path, data[:16])](repl, path, data)
