"""runner.gguf against files written by gguf-py's GGUFWriter and read by its GGUFReader."""
from __future__ import annotations

import struct
import tracemalloc
from pathlib import Path

import gguf as ggufpy
import numpy as np
import pytest

from runner.gguf import GGUFError, GGUFFile, ValueType
from runner.quants import GGMLType

VT = ggufpy.GGUFValueType

# one key per scalar type, and one array per element type (plus nested and string arrays)
SCALARS = [
    ("t.u8", 250, VT.UINT8), ("t.i8", -120, VT.INT8), ("t.u16", 65000, VT.UINT16),
    ("t.i16", -32000, VT.INT16), ("t.u32", 4_000_000_000, VT.UINT32),
    ("t.i32", -2_000_000_000, VT.INT32), ("t.f32", 1.5, VT.FLOAT32), ("t.bool", True, VT.BOOL),
    ("t.false", False, VT.BOOL), ("t.str", "héllo ▁wörld 🎉", VT.STRING),
    ("t.u64", 2**63 + 5, VT.UINT64), ("t.i64", -(2**62), VT.INT64), ("t.f64", -2.25e-300, VT.FLOAT64),
]
ARRAYS = [
    ("a.u8", [0, 1, 255], VT.UINT8, np.uint8), ("a.i8", [-128, 0, 127], VT.INT8, np.int8),
    ("a.u16", [0, 65535], VT.UINT16, np.uint16), ("a.i16", [-5, 5], VT.INT16, np.int16),
    ("a.u32", [1, 2, 3], VT.UINT32, np.uint32), ("a.i32", [-1, 7], VT.INT32, np.int32),
    ("a.f32", [0.5, -1.25], VT.FLOAT32, np.float32), ("a.bool", [True, False, True], VT.BOOL, np.bool_),
    ("a.u64", [2**64 - 1], VT.UINT64, np.uint64), ("a.i64", [-(2**63)], VT.INT64, np.int64),
    ("a.f64", [1e300, -0.0], VT.FLOAT64, np.float64),
]
STRINGS = ["", "a", "▁the", "<start_of_turn>", "日本語", "\n\n", "emoji 👩‍💻", "x" * 300]


def tensors_for_test() -> dict[str, tuple[np.ndarray, GGMLType]]:
    rng = np.random.default_rng(1)
    q8 = rng.integers(0, 256, (3, 2 * 34), dtype=np.uint8)      # 3 rows of 64 Q8_0 values
    q8[:, 0:2] = np.array([0.01], np.float16).view(np.uint8)
    q8[:, 34:36] = np.array([-2.0], np.float16).view(np.uint8)
    return {
        "w.f32": (rng.standard_normal((4, 8)).astype(np.float32), GGMLType.F32),
        "w.f16": (rng.standard_normal((2, 3, 16)).astype(np.float16), GGMLType.F16),
        "w.vec": (rng.standard_normal(5).astype(np.float32), GGMLType.F32),
        "w.q8": (q8, GGMLType.Q8_0),
    }


def write_test_gguf(path: Path, alignment: int | None = None) -> None:
    w = ggufpy.GGUFWriter(str(path), "test")
    if alignment is not None:
        w.add_custom_alignment(alignment)
    for key, val, vt in SCALARS:
        w.add_key_value(key, val, vt)
    for key, val, vt, _ in ARRAYS:
        w.add_key_value(key, val, VT.ARRAY, sub_type=vt)
    w.add_key_value("a.str", STRINGS, VT.ARRAY, sub_type=VT.STRING)
    w.add_key_value("a.nested", [[1, 2], [3]], VT.ARRAY, sub_type=VT.ARRAY)
    for name, (arr, t) in tensors_for_test().items():
        if t == GGMLType.Q8_0:
            w.add_tensor(name, arr, raw_dtype=ggufpy.GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="module")
def small_gguf(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("gguf") / "small.gguf"
    write_test_gguf(path)
    return path


def check_contents(g: GGUFFile) -> None:
    for key, val, vt in SCALARS:
        assert g.metadata[key] == val, key
        assert g.metadata_types[key] == ValueType(int(vt))
    for key, val, _, dt in ARRAYS:
        a = g.metadata[key]
        assert a.dtype == np.dtype(dt) and a.tolist() == val, key
    assert g.metadata["a.str"] == STRINGS
    assert g.metadata["general.architecture"] == "test"
    for name, (arr, t) in tensors_for_test().items():
        info = g.tensors[name]
        assert info.type == t
        if t == GGMLType.Q8_0:
            assert info.shape == (3, 64)
            assert np.array_equal(g.raw(name), arr)
        else:
            assert info.shape == arr.shape
            view = g.array(name)
            assert view.dtype == arr.dtype and np.array_equal(view, arr)
        assert info.offset % g.alignment == 0


@pytest.mark.fast
def test_round_trip_all_value_types(small_gguf):
    g = GGUFFile(small_gguf)
    check_contents(g)
    # nested arrays come back as lists of arrays
    assert [x.tolist() for x in g.metadata["a.nested"]] == [[1, 2], [3]]
    assert g.version == 3 and g.alignment == 32


@pytest.mark.fast
def test_agrees_with_gguf_py_reader(small_gguf):
    r = ggufpy.GGUFReader(str(small_gguf))
    g = GGUFFile(small_gguf)
    assert g.data_offset == r.data_offset
    for t in r.tensors:
        assert g.tensors[t.name].offset == t.data_offset - r.data_offset
        assert np.array_equal(g.raw(t.name).reshape(-1), np.asarray(t.data).view(np.uint8).reshape(-1))


@pytest.mark.fast
@pytest.mark.parametrize("alignment", [1, 8, 64, 4096])
def test_alignments(tmp_path, alignment):
    path = tmp_path / f"a{alignment}.gguf"
    write_test_gguf(path, alignment)
    g = GGUFFile(path)
    assert g.alignment == alignment and g.data_offset % alignment == 0
    check_contents(g)


@pytest.mark.fast
def test_version_2(tmp_path, small_gguf):
    # v2 and v3 share the layout (v3 only added big-endian files): patch the version field
    data = bytearray(small_gguf.read_bytes())
    data[4:8] = struct.pack("<I", 2)
    path = tmp_path / "v2.gguf"
    path.write_bytes(bytes(data))
    g = GGUFFile(path)
    assert g.version == 2
    check_contents(g)


@pytest.mark.fast
@pytest.mark.parametrize("alignment", [32, 64])
def test_embedded_at_offset(tmp_path, alignment):
    """A GGUF inside a larger file (as in the single-file executable), at an offset that is
    not a multiple of anything, with bytes after it."""
    inner = tmp_path / "inner.gguf"
    write_test_gguf(inner, alignment)
    payload = inner.read_bytes()
    outer = tmp_path / "outer.bin"
    head = b"\x7fELF" + bytes(range(256)) * 13 + b"xyz"
    outer.write_bytes(head + payload + b"trailing bytes" * 100)
    g = GGUFFile(outer, offset=len(head), length=len(payload))
    check_contents(g)
    # the region's end is enforced: cut one byte from the end of the last tensor's data
    data_end = g.data_offset + max(t.offset + t.nbytes for t in g.tensors.values())
    with pytest.raises(GGUFError, match="runs past the end"):
        GGUFFile(outer, offset=len(head), length=data_end - 1)


@pytest.mark.fast
def test_bad_regions_and_files(tmp_path, small_gguf):
    size = small_gguf.stat().st_size
    with pytest.raises(GGUFError, match="outside the file"):
        GGUFFile(small_gguf, offset=size + 1)
    with pytest.raises(GGUFError, match="outside the file"):
        GGUFFile(small_gguf, offset=10, length=size)
    with pytest.raises(GGUFError, match="cannot open"):
        GGUFFile(tmp_path / "missing.gguf")
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    with pytest.raises(GGUFError, match="empty"):
        GGUFFile(empty)
    text = tmp_path / "notes.txt"
    text.write_bytes(b"hello, this is not a model\n")
    with pytest.raises(GGUFError, match="magic"):
        GGUFFile(text)


def _patched(path: Path, tmp: Path, at: int, fmt: str, value) -> Path:
    data = bytearray(path.read_bytes())
    struct.pack_into(fmt, data, at, value)
    out = tmp / f"patched_{at}.gguf"
    out.write_bytes(bytes(data))
    return out


@pytest.mark.fast
def test_specific_corruptions(tmp_path, small_gguf):
    # header counts far beyond the file size: refused before any allocation
    with pytest.raises(GGUFError, match="tensor count"):
        GGUFFile(_patched(small_gguf, tmp_path, 8, "<Q", 2**62))
    with pytest.raises(GGUFError, match="metadata count"):
        GGUFFile(_patched(small_gguf, tmp_path, 16, "<Q", 2**40))
    with pytest.raises(GGUFError, match="version"):
        GGUFFile(_patched(small_gguf, tmp_path, 4, "<I", 7))
    # the first key's length (right after the 24-byte header) made huge
    with pytest.raises(GGUFError, match="metadata key #0"):
        GGUFFile(_patched(small_gguf, tmp_path, 24, "<Q", 2**50))


def _tensor_type_offset(path: Path) -> tuple[int, int]:
    """Byte positions of the type and offset fields of the last tensor's info."""
    name = ggufpy.GGUFReader(str(path)).tensors[-1].name.encode()
    raw = path.read_bytes()
    at = raw.index(struct.pack("<Q", len(name)) + name) + 8 + len(name)
    n_dims = struct.unpack_from("<I", raw, at)[0]
    type_at = at + 4 + 8 * n_dims
    return type_at, type_at + 4


@pytest.mark.fast
def test_bad_tensor_fields(tmp_path, small_gguf):
    type_at, offset_at = _tensor_type_offset(small_gguf)
    with pytest.raises(GGUFError, match="unknown ggml type"):
        GGUFFile(_patched(small_gguf, tmp_path, type_at, "<I", 99))
    with pytest.raises(GGUFError, match="not supported"):
        GGUFFile(_patched(small_gguf, tmp_path, type_at, "<I", int(GGMLType.IQ2_XXS)))
    with pytest.raises(GGUFError, match="multiple of 32"):
        GGUFFile(_patched(small_gguf, tmp_path, offset_at, "<Q", 3))
    with pytest.raises(GGUFError, match="runs past the end"):
        GGUFFile(_patched(small_gguf, tmp_path, offset_at, "<Q", 2**40))


def _parse_or_gguf_error(path: Path, offset: int = 0, length: int | None = None) -> GGUFFile | None:
    """Either parses or raises GGUFError; any other exception fails the test."""
    try:
        g = GGUFFile(path, offset, length)
    except GGUFError as e:
        assert str(e).startswith(str(path)), "the message names the file"
        return None
    # whatever parsed must be readable without errors
    for name in g.tensors:
        g.array(name)
    return g


@pytest.mark.fast
def test_every_truncation_raises_gguf_error(small_gguf):
    size = small_gguf.stat().st_size
    full = GGUFFile(small_gguf)
    data_end = full.data_offset + max(t.offset + t.nbytes for t in full.tensors.values())
    tracemalloc.start()
    try:
        for n in range(size):
            parsed = _parse_or_gguf_error(small_gguf, 0, n)
            # complete once the last tensor's bytes are in; only padding may be missing
            assert (parsed is not None) == (n >= data_end), f"prefix of {n} bytes"
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, f"parsing truncated files allocated {peak} bytes"


@pytest.mark.fast
def test_random_byte_flips_never_crash(tmp_path, small_gguf):
    rng = np.random.default_rng(7)
    original = small_gguf.read_bytes()
    path = tmp_path / "flipped.gguf"
    tracemalloc.start()
    try:
        for _ in range(1500):
            data = bytearray(original)
            for at in rng.integers(0, len(data), rng.integers(1, 4)):
                data[at] = rng.integers(0, 256)
            path.write_bytes(bytes(data))
            _parse_or_gguf_error(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, f"parsing corrupted files allocated {peak} bytes"


def test_real_model_metadata(model_path):
    g = GGUFFile(model_path)
    assert g.metadata["general.architecture"] == "gemma3"
    assert g.metadata["gemma3.embedding_length"] == 640
    assert len(g.metadata["tokenizer.ggml.tokens"]) == 262144
    assert g.tensors["token_embd.weight"].type == GGMLType.Q8_0
    assert g.tensors["token_embd.weight"].shape == (262144, 640)
    r = ggufpy.GGUFReader(str(model_path))
    tokens = r.fields["tokenizer.ggml.tokens"]
    assert g.metadata["tokenizer.ggml.tokens"] == [bytes(tokens.parts[i]).decode() for i in tokens.data]
    assert np.array_equal(g.metadata["tokenizer.ggml.scores"], r.fields["tokenizer.ggml.scores"].contents())
    for t in r.tensors:
        assert g.tensors[t.name].shape == tuple(int(x) for x in reversed(t.shape))
        assert g.tensors[t.name].offset == t.data_offset - r.data_offset


@pytest.mark.fast
def test_typed_values_and_their_errors(small_gguf):
    g = GGUFFile(small_gguf)
    assert g.value("t.u32") == 4_000_000_000 and g.value("t.f32", float) == 1.5
    assert g.value("no.such.key", int, 7) == 7
    with pytest.raises(GGUFError, match="no.such.key: required key is missing"):
        g.value("no.such.key")
    with pytest.raises(GGUFError, match="t.str: expected int, found"):
        g.value("t.str")
