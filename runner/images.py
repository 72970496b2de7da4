"""Images in: a path, bytes, a `data:image/...;base64,` URI or a PIL image -> an RGB PIL
image, or an `ImageError` that says in one line what is wrong.

    img = open_image("photo.jpg")                     # EXIF orientation applied
    img = open_image("data:image/png;base64,iVBOR...")

PNG, JPEG, WebP and GIF (its first frame), and whatever else Pillow decodes. Transparent
images are flattened onto white, as transformers' image processors do. http(s) URLs are
refused (nothing is fetched). Pillow is imported when an image is opened, not with this
module, so modes can catch `ImageError` without loading it.
"""
from __future__ import annotations

import base64
import binascii
import io
import os
import re
import struct
import warnings
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import PIL.Image

MAX_BYTES = 20 * 1024 * 1024          # the largest encoded image accepted (20 MB)

_DATA_URI = re.compile(r"data:([^,;]*)((?:;[^,;]*)*),(.*)", re.DOTALL)


class ImageError(ValueError):
    """An image that cannot be used: unreadable, not an image, too large, or a URL."""


def describe(source: Any) -> str:
    """A short name for an image source, for error messages."""
    if isinstance(source, (str, os.PathLike)):
        s = os.fspath(source)
        return s[:40] + "..." if s.startswith("data:") or len(s) > 200 else s
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    return f"<{type(source).__name__}>"


def check_remote(source: Any) -> None:
    """For servers: an image from a client must be a `data:image/...;base64,` URI (a
    path would read the server's files; a URL would be fetched). ImageError otherwise."""
    if isinstance(source, str) and _is_url(source):
        raise ImageError(_url_refused(source))
    if not (isinstance(source, str) and source[:5].lower() == "data:"):
        raise ImageError(f"{describe(source)}: images must be sent as data:image/...;base64, URIs")


def read_bytes(source: str | os.PathLike | bytes | bytearray | memoryview) -> bytes:
    """The encoded image behind a path, a data URI or bytes (at most MAX_BYTES)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif isinstance(source, (str, os.PathLike)):
        s = os.fspath(source)
        if _is_url(s):
            raise ImageError(_url_refused(s))
        if s[:5].lower() == "data:":
            return _data_uri(s)
        if s[:7].lower() == "file://":
            s = s[7:]
        try:
            size = os.path.getsize(s)
            if size > MAX_BYTES:
                raise ImageError(_too_large(s, size))
            with open(s, "rb") as f:
                data = f.read(MAX_BYTES + 1)
        except OSError as e:
            raise ImageError(f"{s}: cannot read the image: {e.strerror or e}") from None
    else:
        raise ImageError(f"expected an image as a path, bytes, a data URI or a PIL image, "
                         f"not {type(source).__name__}")
    if len(data) > MAX_BYTES:
        raise ImageError(_too_large(describe(source), len(data)))
    return data


def _is_url(s: str) -> bool:
    return s[:8].lower().startswith(("http://", "https://"))


def _url_refused(s: str) -> str:
    return f"{describe(s)}: image URLs are not fetched; give a file or a data:image/...;base64, URI"


def _too_large(name: str, n: int) -> str:
    return f"{name}: {n:,} bytes is over the {MAX_BYTES >> 20} MB ({MAX_BYTES:,}-byte) limit for an image"


def _data_uri(uri: str) -> bytes:
    m = _DATA_URI.fullmatch(uri.strip())
    if not m:
        raise ImageError(f"{describe(uri)}: not a valid data URI (expected data:image/...;base64,...)")
    mime, params, payload = m.group(1).lower(), m.group(2).lower(), m.group(3)
    if mime and not mime.startswith("image/"):
        raise ImageError(f"{describe(uri)}: a data URI of type {mime!r}, expected image/...")
    if ";base64" not in params:
        raise ImageError(f"{describe(uri)}: only base64 data URIs are accepted")
    if len(payload) * 3 // 4 > MAX_BYTES + 3:
        raise ImageError(_too_large(describe(uri), len(payload) * 3 // 4))
    try:
        data = base64.b64decode(re.sub(r"\s+", "", payload), validate=True)
    except (binascii.Error, ValueError):
        raise ImageError(f"{describe(uri)}: the base64 payload is not valid") from None
    if len(data) > MAX_BYTES:
        raise ImageError(_too_large(describe(uri), len(data)))
    return data


def open_image(source: Any) -> PIL.Image.Image:
    """Decode `source` into an RGB PIL image: EXIF orientation applied, the first frame
    of an animation, transparency composited onto white."""
    from PIL import Image, ImageOps, UnidentifiedImageError
    name = describe(source)
    if isinstance(source, Image.Image):
        img = source
    else:
        data = read_bytes(source)
        if not data:
            raise ImageError(f"{name}: empty, not an image")
        try:
            with warnings.catch_warnings():
                # why: Pillow only warns between MAX_IMAGE_PIXELS and twice that; a
                # decompression bomb must be an error here, not a warning
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img = Image.open(io.BytesIO(data))
                img.seek(0)                              # GIF, APNG, WebP: the first frame
                img.load()
        except UnidentifiedImageError:
            size = _header_size(data)
            if size is not None and 0 in size:
                raise ImageError(f"{name}: the image is empty ({size[0]}x{size[1]})") from None
            raise ImageError(f"{name}: not an image Pillow can read (PNG, JPEG, WebP, GIF, ...)") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ImageError(f"{name}: too many pixels (more than {Image.MAX_IMAGE_PIXELS:,}): "
                             f"refused as a possible decompression bomb") from None
        except (OSError, SyntaxError, ValueError, EOFError) as e:
            msg = str(e) or type(e).__name__
            if "truncated" in msg or isinstance(e, EOFError):
                raise ImageError(f"{name}: cannot decode the image: the file is truncated") from None
            raise ImageError(f"{name}: cannot decode the image (corrupt or truncated?): {msg}") from None
    if img.width <= 0 or img.height <= 0:
        raise ImageError(f"{name}: the image is empty ({img.width}x{img.height})")
    try:
        img = ImageOps.exif_transpose(img)
        return to_rgb(img)
    except (OSError, ValueError) as e:
        raise ImageError(f"{name}: cannot decode the image: {e}") from None


def _header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG, GIF or BMP header (Pillow refuses to open 0x0 ones
    without saying why)."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        return struct.unpack("<HH", data[6:10])
    if data[:2] == b"BM" and len(data) >= 26:
        w, h = struct.unpack("<ii", data[18:26])
        return w, abs(h)
    return None


def to_rgb(img: PIL.Image.Image) -> PIL.Image.Image:
    """RGB, with any transparency composited onto white (transformers' convert_to_rgb)."""
    from PIL import Image
    if "A" in img.getbands() or img.info.get("transparency") is not None:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")
