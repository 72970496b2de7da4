"""Embedded payloads: packing, finding, repacking and every way the index can be broken.

A synthetic "runner" (some bootloader bytes, then an archive ending in a PyInstaller
cookie whose length field spans the archive) stands in for a real build: the layout
rules are PyInstaller's (SPEC 5), and the real binary is tested in test_binary.py."""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest

import runner
from runner.bundle import (ALIGN, COOKIE_MAGIC, FOOTER, BundleError, find_embedded, merge_args, pack)
from runner.gguf import GGUFError, GGUFFile


def fake_runner(path, head=b"\x7fBOOTLOADER" * 100, archive_body=b"PYZ" * 5000, tail=b"ELF section table" * 10):
    cookie = COOKIE_MAGIC + struct.pack(">IIII", len(archive_body) + 88, 0, 0, 311) + b"libpython3.11.so".ljust(64, b"\0")
    path.write_bytes(head + archive_body + cookie + tail)
    path.chmod(0o755)
    return path


def archive_of(path):
    """The bytes from the archive start to the end (what the bootloader needs intact)."""
    data = path.read_bytes()
    c = data.rfind(COOKIE_MAGIC)
    (n,) = struct.unpack(">I", data[c + 8:c + 12])
    return data[c + 88 - n:]


@pytest.fixture
def bare(tmp_path):
    return fake_runner(tmp_path / "runner")


def test_pack_round_trip_maps_the_model(tmp_path, bare, model_path):
    out = tmp_path / "packed"
    emb = pack(str(bare), str(out), {"model": str(model_path)}, ["--temp", "0", "..."])
    assert emb.names == {"model": model_path.name} and emb.args == ["--temp", "0", "..."]
    offset, length = emb.files["model"]
    assert offset % ALIGN == 0 and length == model_path.stat().st_size
    # the archive is unchanged and still where its cookie says; the bootloader precedes all
    assert archive_of(out) == archive_of(bare)
    assert out.read_bytes().startswith(bare.read_bytes()[:1100])
    assert out.stat().st_mode & 0o111
    g = GGUFFile(*emb.region("model"))
    ref = GGUFFile(model_path)
    assert g.metadata["general.name"] == ref.metadata["general.name"]
    assert np.array_equal(g.raw("token_embd.weight")[:3], ref.raw("token_embd.weight")[:3])


def test_the_same_logits_from_the_executable_as_from_the_file(tmp_path, bare, model_path):
    out = tmp_path / "packed"
    emb = pack(str(bare), str(out), {"model": str(model_path)})
    path, offset, length = emb.region("model")
    ids = [2, 818, 5279, 529, 7001, 563]
    a = runner.load(path, offset=offset, length=length, n_ctx=64).logits(ids)
    b = runner.load(model_path, n_ctx=64).logits(ids)
    assert np.array_equal(a, b)


def test_repack_replaces_the_payload(tmp_path, bare, model_path):
    once = tmp_path / "once"
    pack(str(bare), str(once), {"model": str(model_path)})
    small = tmp_path / "small.gguf"
    small.write_bytes(model_path.read_bytes()[:100_000])          # any file: pack copies bytes
    twice = tmp_path / "twice"
    emb = pack(str(once), str(twice), {"model": str(small)}, ["--cli"])
    assert emb.files["model"][1] == 100_000 and emb.args == ["--cli"]
    assert twice.stat().st_size < 2 * ALIGN + bare.stat().st_size + 100_000 + 4096
    assert archive_of(twice) == archive_of(bare)


def test_a_bare_runner_or_another_file_has_no_payload(tmp_path, bare, model_path):
    assert find_embedded(str(bare)) is None
    assert find_embedded(str(model_path)) is None
    with pytest.raises(BundleError, match="not a one-file runner"):
        pack(str(model_path), str(tmp_path / "x"), {"model": str(model_path)})
    with pytest.raises(BundleError, match="not found"):
        pack(str(bare), str(tmp_path / "x"), {"model": str(tmp_path / "missing.gguf")})


def _footer_of(path):
    """The file's bytes, archive start, and footer fields."""
    data = bytearray(path.read_bytes())
    c = data.rfind(COOKIE_MAGIC)
    (n,) = struct.unpack(">I", data[c + 8:c + 12])
    pkg = c + 88 - n
    magic, ioff, ilen, pstart = FOOTER.unpack(data[pkg - FOOTER.size:pkg])
    return data, pkg, magic, ioff, ilen, pstart


def test_corrupt_indexes_are_clear_errors(tmp_path, bare, model_path):
    out = tmp_path / "packed"
    pack(str(bare), str(out), {"model": str(model_path)})
    data, pkg, magic, ioff, ilen, pstart = _footer_of(out)
    index = json.loads(bytes(data[ioff:ioff + ilen]))

    def variant(name, footer=None, blob=None):
        d = bytearray(data)
        if blob is not None:
            assert len(blob) == ilen
            d[ioff:ioff + ilen] = blob
        if footer is not None:
            d[pkg - FOOTER.size:pkg] = FOOTER.pack(*footer)
        p = tmp_path / name
        p.write_bytes(bytes(d))
        return str(p)

    with pytest.raises(BundleError, match="footer points outside"):
        find_embedded(variant("a", footer=(magic, ioff + 7, ilen, pstart)))
    with pytest.raises(BundleError, match="not JSON"):
        find_embedded(variant("b", blob=b"x" * ilen))
    bad = dict(index, files={"model": {"offset": pstart, "length": 10 ** 12}})
    with pytest.raises(BundleError, match="outside the payload"):
        find_embedded(variant("c", blob=json.dumps(bad).encode().ljust(ilen)))
    bad = dict(index, format=9)
    with pytest.raises(BundleError, match="unknown layout"):
        find_embedded(variant("d", blob=json.dumps(bad).encode().ljust(ilen)))
    bad = dict(index, args=[1, 2])
    with pytest.raises(BundleError, match="args"):
        find_embedded(variant("e", blob=json.dumps(bad).encode().ljust(ilen)))


def test_a_payload_that_is_not_gguf(tmp_path, bare):
    junk = tmp_path / "notes.txt"
    junk.write_bytes(b"these are not weights\n" * 100)
    emb = pack(str(bare), str(tmp_path / "packed"), {"model": str(junk)})
    with pytest.raises(GGUFError, match="not a GGUF file"):
        runner.load(*emb.region("model")[:1], offset=emb.files["model"][0], length=emb.files["model"][1])


def test_merge_args_follows_llamafile():
    assert merge_args([], ["-p", "hi"]) == ["-p", "hi"]
    assert merge_args(["--temp", "0"], ["-p", "hi"]) == ["--temp", "0", "-p", "hi"]
    assert merge_args(["-c", "512", "...", "--nobrowser"], ["--server"]) == ["-c", "512", "--server", "--nobrowser"]
