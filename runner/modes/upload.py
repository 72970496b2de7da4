"""/upload FILE: what the model gets from a file, by kind.

`kind_of` sorts a file by its first bytes; `READERS` maps each kind to the function that
adds it to the conversation. A text file goes in front of the next message (fenced, with
its name; as it is in raw completion mode) and is read into the cache right away. An
image is recognized and refused with the reason: the chat's token state (conversation.py)
holds text only so far; an image reader goes under READERS["image"].
"""
from __future__ import annotations

import os

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
    repl.attach(name, text if repl.conv.raw else fenced(name, text))


def read_image(repl, path: str, data: bytes) -> None:
    if not getattr(repl.llm, "has_vision", False):
        repl.screen.error(f"{path}: an image; this model reads text only: images need a vision "
                          f"projector (restart with --mmproj FILE)")
    else:
        repl.screen.error(f"{path}: an image; the terminal chat does not take images yet "
                          f"(--cli --image FILE and --server do)")


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
