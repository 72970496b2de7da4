"""Weights embedded in the executable: pack them in, find them, map them.

A PyInstaller one-file binary is the bootloader followed by its archive (PKG), which
ends in an 88-byte cookie; the bootloader finds the cookie by scanning back from the end
of the file and computes the archive start as `cookie_end - archive_length`. So bytes
spliced in *before* the archive are invisible to it and cost nothing at start-up.
That is where the payload goes, uncompressed and page aligned, so the runner can
memory-map the GGUF straight out of its own file:

    [bootloader] [pad] [model.gguf] [pad] [mmproj.gguf] [pad] [index JSON] [footer] [PKG ... cookie] [ELF tail]

    footer (32 bytes, little-endian): magic "GEMMAFL1" | index offset u64 | index length u64
                                      | payload start u64

The index names each file's role, offset and length, and carries default arguments
(llamafile's `.args`: the user's own arguments go where "..." stands, else after them).
On Linux the archive is also an ELF section (`pydata`); the section table is patched so
that the file stays a well-formed ELF for tools like readelf and strip.
"""
from __future__ import annotations

import json
import os
import shutil
import struct
from dataclasses import dataclass, field

COOKIE_MAGIC = b"MEI\014\013\012\013\016"
COOKIE_SIZE = 88
FOOTER_MAGIC = b"GEMMAFL1"
FOOTER = struct.Struct("<8sQQQ")
ALIGN = 1 << 16            # 64 KiB: a page on every common system
INDEX_MAX = 1 << 20        # an index is a few hundred bytes; refuse anything absurd
COOKIE_SCAN = 1 << 20      # the cookie sits within the ELF tail (a few KB) of the end


class BundleError(ValueError):
    """An executable whose embedded payload or archive cannot be read."""


@dataclass
class Embedded:
    path: str                                       # the executable
    files: dict[str, tuple[int, int]] = field(default_factory=dict)   # role -> (offset, length)
    names: dict[str, str] = field(default_factory=dict)               # role -> original file name
    args: list[str] = field(default_factory=list)

    def region(self, role: str) -> tuple[str, int, int] | None:
        if role not in self.files:
            return None
        offset, length = self.files[role]
        return self.path, offset, length


def _archive_start(f, size: int, path: str) -> int:
    """Where the PyInstaller archive begins, from its cookie."""
    scan = min(size, COOKIE_SCAN)
    f.seek(size - scan)
    tail = f.read(scan)
    at = tail.rfind(COOKIE_MAGIC)
    if at < 0 or at + COOKIE_SIZE > len(tail):
        raise BundleError(f"{path}: not a one-file runner (no PyInstaller archive found)")
    (length,) = struct.unpack(">I", tail[at + 8:at + 12])
    start = size - scan + at + COOKIE_SIZE - length
    if not 0 <= start <= size - scan + at:
        raise BundleError(f"{path}: the PyInstaller archive's cookie is corrupt")
    return start


def _read_index(f, pkg: int, path: str) -> tuple[dict, int, int] | None:
    """(index, its offset, payload start) from the footer just before the archive;
    None if there is no footer."""
    if pkg < FOOTER.size:
        return None
    f.seek(pkg - FOOTER.size)
    magic, ioff, ilen, pstart = FOOTER.unpack(f.read(FOOTER.size))
    if magic != FOOTER_MAGIC:
        return None
    if not (0 < ilen <= INDEX_MAX and pstart <= ioff and ioff + ilen == pkg - FOOTER.size):
        raise BundleError(f"{path}: the embedded index is corrupt (footer points outside the payload)")
    f.seek(ioff)
    try:
        index = json.loads(f.read(ilen).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise BundleError(f"{path}: the embedded index is corrupt (not JSON)") from None
    if not isinstance(index, dict) or index.get("format") != 1 or not isinstance(index.get("files"), dict):
        raise BundleError(f"{path}: the embedded index is corrupt (unknown layout)")
    return index, ioff, pstart


def find_embedded(path: str) -> Embedded | None:
    """The payload of a packed runner, None for a bare one (or any other file)."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            try:
                pkg = _archive_start(f, size, path)
            except BundleError:
                return None
            found = _read_index(f, pkg, path)
    except OSError as e:
        raise BundleError(f"{path}: cannot read: {e.strerror}") from None
    if found is None:
        return None
    index, ioff, pstart = found
    emb = Embedded(path=path)
    for role, entry in index["files"].items():
        try:
            offset, length, name = int(entry["offset"]), int(entry["length"]), str(entry.get("name", role))
        except (KeyError, TypeError, ValueError):
            raise BundleError(f"{path}: the embedded index is corrupt (entry {role!r})") from None
        if not (pstart <= offset and length > 0 and offset + length <= ioff):
            raise BundleError(f"{path}: the embedded index is corrupt ({role} lies outside the payload)")
        emb.files[role], emb.names[role] = (offset, length), name
    args = index.get("args", [])
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise BundleError(f"{path}: the embedded index is corrupt (args)")
    emb.args = args
    return emb


def merge_args(embedded: list[str], user: list[str]) -> list[str]:
    """llamafile's rule: the user's arguments replace "...", or follow the embedded ones."""
    if "..." in embedded:
        i = embedded.index("...")
        return embedded[:i] + user + embedded[i + 1:]
    return embedded + user


# --- packing ----------------------------------------------------------------------------

def _copy(src, dst, n: int) -> None:
    while n > 0:
        chunk = src.read(min(n, 1 << 24))
        if not chunk:
            raise BundleError("unexpected end of file while copying")
        dst.write(chunk)
        n -= len(chunk)


def _pad(f) -> None:
    f.write(b"\0" * (-f.tell() % ALIGN))


def pack(runner: str, out: str, files: dict[str, str], args: list[str] | None = None) -> Embedded:
    """Write `out`: the runner's bootloader, the files (role -> path, e.g. {"model":
    "x.gguf"}) uncompressed and aligned, the index, and the runner's archive. A runner
    that already carries a payload has it replaced."""
    if os.path.abspath(runner) == os.path.abspath(out):
        raise BundleError("pack: the output must be a new file, not the runner itself")
    for role, p in files.items():
        if not os.path.isfile(p):
            raise BundleError(f"pack: {role} file {p} not found")
    with open(runner, "rb") as src:
        size = os.fstat(src.fileno()).st_size
        pkg = _archive_start(src, size, runner)
        old = _read_index(src, pkg, runner)
        head_end = old[2] if old else pkg              # drop a previous payload
        tmp = out + ".part"
        with open(tmp, "wb") as dst:
            src.seek(0)
            _copy(src, dst, head_end)
            _pad(dst)
            payload_start = dst.tell()
            index: dict = {"format": 1, "files": {}, "args": list(args or [])}
            for role, p in files.items():
                offset = dst.tell()
                with open(p, "rb") as fp:
                    length = os.fstat(fp.fileno()).st_size
                    _copy(fp, dst, length)
                index["files"][role] = {"offset": offset, "length": length, "name": os.path.basename(p)}
                _pad(dst)
            blob = json.dumps(index, indent=1).encode()
            ioff = dst.tell()
            dst.write(blob)
            dst.write(FOOTER.pack(FOOTER_MAGIC, ioff, len(blob), payload_start))
            new_pkg = dst.tell()
            src.seek(pkg)
            _copy(src, dst, size - pkg)
        _patch_elf(tmp, pkg, new_pkg - pkg)
    shutil.copymode(runner, tmp)
    os.replace(tmp, out)
    return find_embedded(out)


def _patch_elf(path: str, moved_from: int, delta: int) -> None:
    """Shift the ELF section table entries of everything at or after `moved_from` (the
    archive section and what follows it) by `delta` bytes. Not ELF64-LE: nothing to do."""
    if delta == 0:
        return
    with open(path, "r+b") as f:
        ident = f.read(64)
        if len(ident) < 64 or ident[:4] != b"\x7fELF" or ident[4] != 2 or ident[5] != 1:
            return
        (shoff,) = struct.unpack_from("<Q", ident, 0x28)
        shentsize, shnum = struct.unpack_from("<HH", ident, 0x3A)
        if shoff >= moved_from:
            shoff += delta
            f.seek(0x28)
            f.write(struct.pack("<Q", shoff))
        for i in range(shnum):
            at = shoff + i * shentsize + 0x18                  # sh_offset
            f.seek(at)
            (off,) = struct.unpack("<Q", f.read(8))
            if off >= moved_from:
                f.seek(at)
                f.write(struct.pack("<Q", off + delta))


def executable_name(model_path: str) -> str:
    """dist file name from the model's metadata: gemma-3-270m.llamafile."""
    from .gguf import GGUFFile
    g = GGUFFile(model_path)
    base = str(g.get("general.basename") or "").strip().lower()
    size = str(g.get("general.size_label") or "").strip().lower()
    stem = "-".join(x for x in (base, size) if x) or os.path.splitext(os.path.basename(model_path))[0]
    return stem.replace(" ", "-") + ".llamafile"
