"""Read-only GGUF: metadata and zero-copy tensor views over a file or a region of one.

Layout (the GGUF specification, ggml docs/gguf.md; gguf-py reads the same), all little-endian:

    magic "GGUF" | version u32 | n_tensors u64 | n_kv u64
    n_kv    x  key string | value type u32 | value
    n_tensors x name string | n_dims u32 | ne[n_dims] u64 | ggml type u32 | offset u64
    padding to general.alignment | data section (tensor offsets are relative to it)

A string is a u64 byte length and UTF-8 bytes. The file may start at an offset inside a
larger file (weights embedded in an executable), so every position here is relative to
`self.offset`. Every length and count read from the file is checked against the bytes
that remain before anything is allocated for it, so a corrupt file raises `GGUFError`
and never asks for gigabytes.
"""
from __future__ import annotations

import enum
import mmap
import os
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from .quants import GGMLType, QUANT_SIZES

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS


class GGUFError(ValueError):
    """A file that is not a valid GGUF, with the file, the field and what was expected."""


class ValueType(enum.IntEnum):
    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


# scalar value types: numpy dtype (little-endian) of one element
_SCALAR_DTYPES = {
    ValueType.UINT8: np.dtype("u1"), ValueType.INT8: np.dtype("i1"),
    ValueType.UINT16: np.dtype("<u2"), ValueType.INT16: np.dtype("<i2"),
    ValueType.UINT32: np.dtype("<u4"), ValueType.INT32: np.dtype("<i4"),
    ValueType.FLOAT32: np.dtype("<f4"), ValueType.BOOL: np.dtype("?"),
    ValueType.UINT64: np.dtype("<u8"), ValueType.INT64: np.dtype("<i8"),
    ValueType.FLOAT64: np.dtype("<f8"),
}
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]     # numpy order: reversed(ne), so shape[-1] is the row length
    type: GGMLType
    offset: int                # relative to the data section
    nbytes: int


class GGUFFile:
    """A parsed GGUF. `metadata` maps keys to Python values (numeric arrays as numpy
    arrays, string arrays as lists of str); `tensors` maps names to `TensorInfo`;
    `raw(name)` and `array(name)` are views over the memory map, never copies."""

    def __init__(self, path: str | os.PathLike, offset: int = 0, length: int | None = None):
        self.path = os.fspath(path)
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if offset < 0 or offset > size:
                    raise GGUFError(f"{self.path}: region offset {offset} is outside the file ({size} bytes)")
                if length is None:
                    length = size - offset
                if length < 0 or offset + length > size:
                    raise GGUFError(f"{self.path}: region [{offset}, {offset}+{length}) is outside the file ({size} bytes)")
                if length == 0:
                    raise GGUFError(f"{self.path}: empty, expected a GGUF header")
                self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as e:
            raise GGUFError(f"{self.path}: cannot open: {e.strerror or e}") from None
        self.offset, self.length = offset, length
        self._end = offset + length           # absolute end of the region
        self._pos = offset                    # absolute read position while parsing
        self._parse()

    # -- public -------------------------------------------------------------------------

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    def value(self, key: str, kind: type = int, default: Any = None) -> Any:
        """Metadata `key` as `kind` (int, float, str), `default` if absent; GGUFError
        naming the key if it is absent with no default, or not of that kind."""
        v = self.metadata.get(key, default)
        if v is None:
            raise self._fail(f"{key}: required key is missing")
        try:
            return kind(v)
        except (TypeError, ValueError):
            raise self._fail(f"{key}: expected {kind.__name__}, found {v!r}") from None

    def raw(self, name: str) -> np.ndarray:
        """The tensor's bytes as stored: uint8, shape (rows..., bytes per row)."""
        t = self.tensors[name]
        view = np.frombuffer(self._mm, dtype=np.uint8, count=t.nbytes,
                             offset=self.offset + self.data_offset + t.offset)
        row_bytes = _row_bytes(t)
        return view.reshape(*t.shape[:-1], row_bytes) if t.shape else view

    def array(self, name: str) -> np.ndarray:
        """F32/F16/BF16 tensors as typed views in numpy shape; quantized ones as `raw`."""
        t = self.tensors[name]
        if t.type == GGMLType.F32:
            return self.raw(name).view("<f4").reshape(t.shape)
        if t.type == GGMLType.F16:
            return self.raw(name).view("<f2").reshape(t.shape)
        if t.type == GGMLType.BF16:
            return self.raw(name).view("<u2").reshape(t.shape)
        return self.raw(name)

    def __repr__(self) -> str:
        return (f"GGUFFile({self.path!r}, offset={self.offset}, v{self.version}, "
                f"{len(self.metadata)} keys, {len(self.tensors)} tensors)")

    # -- parsing ------------------------------------------------------------------------

    def _fail(self, what: str) -> GGUFError:
        return GGUFError(f"{self.path}: {what}")

    def _need(self, n: int, field: str) -> None:
        if n < 0 or self._pos + n > self._end:
            have = self._end - self._pos
            raise self._fail(f"{field}: needs {n} bytes at offset {self._pos - self.offset}, "
                             f"only {have} remain (truncated file?)")

    def _u32(self, field: str) -> int:
        self._need(4, field)
        (v,) = _U32.unpack_from(self._mm, self._pos)
        self._pos += 4
        return v

    def _u64(self, field: str) -> int:
        self._need(8, field)
        (v,) = _U64.unpack_from(self._mm, self._pos)
        self._pos += 8
        return v

    def _string(self, field: str) -> str:
        n = self._u64(field + " (string length)")
        self._need(n, field)
        b = self._mm[self._pos:self._pos + n]
        self._pos += n
        return b.decode("utf-8", errors="replace")

    def _parse(self) -> None:
        self._need(4, "magic")
        magic = self._mm[self._pos:self._pos + 4]
        if magic != GGUF_MAGIC:
            raise self._fail(f"magic: expected {GGUF_MAGIC!r}, found {magic!r} (not a GGUF file)")
        self._pos += 4
        self.version = self._u32("version")
        if self.version not in SUPPORTED_VERSIONS:
            hint = " (big-endian file?)" if self.version & 0xFFFF == 0 else ""
            raise self._fail(f"version: expected one of {SUPPORTED_VERSIONS}, found {self.version}{hint}")
        n_tensors = self._u64("tensor count")
        n_kv = self._u64("metadata count")
        # the smallest key/value is 8+0+4+1 bytes, the smallest tensor info 8+4+4+8 bytes
        remaining = self._end - self._pos
        if n_kv * 13 > remaining:
            raise self._fail(f"metadata count: {n_kv} entries cannot fit in the {remaining} remaining bytes")
        if n_tensors * 24 > remaining:
            raise self._fail(f"tensor count: {n_tensors} tensors cannot fit in the {remaining} remaining bytes")

        self.metadata: dict[str, Any] = {}
        self.metadata_types: dict[str, ValueType] = {}
        for i in range(n_kv):
            key = self._string(f"metadata key #{i}")
            vtype = self._value_type(f"metadata {key!r} type")
            if key in self.metadata:
                raise self._fail(f"metadata {key!r}: duplicate key")
            self.metadata[key] = self._value(vtype, f"metadata {key!r}")
            self.metadata_types[key] = vtype

        self.alignment = self.metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if (not isinstance(self.alignment, int) or isinstance(self.alignment, bool)
                or self.alignment <= 0 or self.alignment & (self.alignment - 1)):
            raise self._fail(f"general.alignment: expected a positive power of two, found {self.alignment!r}")

        infos = [self._tensor_info(i) for i in range(n_tensors)]
        rel = self._pos - self.offset
        self.data_offset = -(-rel // self.alignment) * self.alignment
        data_size = self.length - self.data_offset
        if data_size < 0:
            data_size = 0
        self.tensors: dict[str, TensorInfo] = {}
        for t in infos:
            if t.name in self.tensors:
                raise self._fail(f"tensor {t.name!r}: duplicate name")
            if t.offset % self.alignment:
                raise self._fail(f"tensor {t.name!r} offset: expected a multiple of {self.alignment}, found {t.offset}")
            if t.offset + t.nbytes > data_size:
                raise self._fail(f"tensor {t.name!r}: data [{t.offset}, {t.offset + t.nbytes}) runs past the end "
                                 f"of the data section ({data_size} bytes; truncated file?)")
            self.tensors[t.name] = t

    def _value_type(self, field: str) -> ValueType:
        v = self._u32(field)
        try:
            return ValueType(v)
        except ValueError:
            raise self._fail(f"{field}: unknown value type {v}") from None

    def _value(self, vtype: ValueType, field: str) -> Any:
        if vtype == ValueType.STRING:
            return self._string(field)
        if vtype == ValueType.ARRAY:
            etype = self._value_type(field + " element type")
            count = self._u64(field + " element count")
            return self._array(etype, count, field)
        dt = _SCALAR_DTYPES[vtype]
        self._need(dt.itemsize, field)
        v = np.frombuffer(self._mm, dtype=dt, count=1, offset=self._pos)[0].item()
        self._pos += dt.itemsize
        return v

    def _array(self, etype: ValueType, count: int, field: str) -> Any:
        if etype in _SCALAR_DTYPES:
            dt = _SCALAR_DTYPES[etype]
            self._need(count * dt.itemsize, field)
            a = np.frombuffer(self._mm, dtype=dt, count=count, offset=self._pos)
            self._pos += count * dt.itemsize
            return a
        # strings and nested arrays take at least 8 bytes each (a length or a type+count)
        self._need(count * (8 if etype == ValueType.STRING else 12), field)
        if etype == ValueType.STRING:
            return self._string_array(count, field)
        return [self._value(etype, f"{field}[{i}]") for i in range(count)]

    def _string_array(self, count: int, field: str) -> list[str]:
        """Bulk parse of `count` strings (the 262k-token vocabulary): one pass to find the
        lengths, then the bytes between headers decoded in one call and split on NUL."""
        mm, pos, end, unpack = self._mm, self._pos, self._end, _U64.unpack_from
        starts = [0] * count
        for i in range(count):
            if pos + 8 > end:
                raise self._fail(f"{field}[{i}] (string length): truncated")
            n = unpack(mm, pos)[0]
            starts[i] = pos + 8
            pos += 8 + n
            if pos > end:
                raise self._fail(f"{field}[{i}]: string of {n} bytes runs past the end of the file")
        first, self._pos = self._pos, pos
        if count == 0:
            return []
        region = np.frombuffer(mm, dtype=np.uint8, count=pos - first, offset=first)
        st = np.asarray(starts, dtype=np.int64) - first
        ln = np.diff(np.append(st, pos - first + 8)) - 8         # byte length of each string
        # keep the string bytes and one NUL in place of each 8-byte header (but the first)
        keep = np.ones(len(region), dtype=bool)
        hdr = (st[:, None] - 8 + np.arange(8)).ravel()
        keep[hdr] = False
        keep[st[1:] - 8] = True
        joined = region[keep]
        joined[st[1:] - 9 - 7 * np.arange(1, count)] = 0  # header i: 8 + 7(i-1) bytes gone before it
        parts = joined.tobytes().decode("utf-8", errors="replace").split("\0")
        if len(parts) != count:
            # a string itself holds a NUL (or a broken UTF-8 run swallowed one): decode singly
            parts = [mm[s:s + n].decode("utf-8", errors="replace") for s, n in zip(starts, ln.tolist())]
        return parts

    def _tensor_info(self, i: int) -> TensorInfo:
        name = self._string(f"tensor #{i} name")
        field = f"tensor {name!r}"
        n_dims = self._u32(field + " n_dims")
        if not 1 <= n_dims <= MAX_DIMS:
            raise self._fail(f"{field} n_dims: expected 1..{MAX_DIMS}, found {n_dims}")
        ne = [self._u64(f"{field} ne[{d}]") for d in range(n_dims)]
        tval = self._u32(field + " type")
        try:
            ttype = GGMLType(tval)
        except ValueError:
            raise self._fail(f"{field} type: unknown ggml type {tval}") from None
        if ttype not in QUANT_SIZES:
            raise self._fail(f"{field} type: ggml type {ttype.name} is not supported")
        offset = self._u64(field + " offset")
        block, type_size = QUANT_SIZES[ttype]
        if ne[0] % block:
            raise self._fail(f"{field} ne[0]: expected a multiple of the {ttype.name} block size {block}, found {ne[0]}")
        n = 1
        for d in ne:
            n *= d
        nbytes = n // block * type_size
        if nbytes > self.length:
            raise self._fail(f"{field}: {nbytes} bytes of data cannot fit in a {self.length}-byte file")
        return TensorInfo(name, tuple(reversed(ne)), ttype, offset, nbytes)


def _row_bytes(t: TensorInfo) -> int:
    block, type_size = QUANT_SIZES[t.type]
    return t.shape[-1] // block * type_size if t.shape else type_size


def open_gguf(path: str | os.PathLike, offset: int = 0, length: int | None = None) -> GGUFFile:
    return GGUFFile(path, offset, length)
