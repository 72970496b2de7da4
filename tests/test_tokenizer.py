"""Tokenizer tests: ids equal to those of the tokenizer `transformers` builds from the same
GGUF, over a corpus of 300+ strings (tests/data/tokenizer_corpus.py); decode and streaming
decode round trips; merge order and byte fallback on a hand-built vocabulary."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from runner.gguf import GGUFFile
from runner.tokenizer import SPACE, Tokenizer, TokenType, load_tokenizer

_spec = importlib.util.spec_from_file_location(
    "tokenizer_corpus", Path(__file__).parent / "data" / "tokenizer_corpus.py")
corpus = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(corpus)
CORPUS: list[str] = corpus.CORPUS


@pytest.fixture(scope="module")
def gguf(model_path: Path) -> GGUFFile:
    return GGUFFile(model_path)


@pytest.fixture(scope="module")
def tok(gguf: GGUFFile) -> Tokenizer:
    return load_tokenizer(gguf)


@pytest.fixture(scope="module")
def hf(model_path: Path):
    """The reference: transformers' tokenizer built from the same GGUF (about 20 s)."""
    import transformers
    return transformers.AutoTokenizer.from_pretrained(str(model_path.parent),
                                                      gguf_file=model_path.name)


@pytest.fixture(scope="module")
def hf_ids(hf) -> list[list[int]]:
    return [hf.encode(s, add_special_tokens=False) for s in CORPUS]


def _mismatches(ours: list[list[int]], ref: list[list[int]]) -> list[str]:
    bad = []
    for s, a, b in zip(CORPUS, ours, ref):
        if a != b:
            i = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            bad.append(f"{s[:60]!r} (len {len(s)}): first difference at {i}: "
                       f"ours {a[i:i + 5]} reference {b[i:i + 5]}")
    return bad


# -- the corpus ------------------------------------------------------------------------------

def test_corpus_covers_the_cases():
    assert len(CORPUS) >= 300
    assert "" in CORPUS
    assert any(len(s) >= 20000 for s in CORPUS)
    for needle in ("<start_of_turn>", "<bos>", "<start_of_image>", SPACE, "\r\n", "\t",
                   "\x00", "\u200d", "𠀀", "我们", "안녕", "שלום", "नमस्ते", "สวัสดี", "def "):
        assert any(needle in s for s in CORPUS), needle


# -- vocabulary ------------------------------------------------------------------------------

def test_vocabulary_facts(tok: Tokenizer, model_path: Path):
    assert tok.n_vocab == 262144
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.unk_id) == (2, 1, 0, 3)
    assert tok.token_id("<start_of_turn>") == 105
    assert tok.token_id("<end_of_turn>") == 106
    assert tok.token_id("<start_of_image>") == 255999
    assert tok.token_id("<end_of_image>") == 256000
    assert tok.token_id("  ") == 138                   # stored as spaces, merged as ▁▁
    assert tok.token_id(SPACE * 2) is None
    assert tok.token_id("no such piece, surely") is None
    assert tok.token_text(106) == "<end_of_turn>"
    assert tok.is_control(106) and tok.is_control(2) and not tok.is_control(107)
    assert not tok.is_control(255999)                   # <start_of_image> is user-defined
    assert load_tokenizer(str(model_path)).encode("hi there") == tok.encode("hi there")


# -- encoding against transformers -----------------------------------------------------------

@pytest.mark.slow
def test_encode_matches_transformers(tok: Tokenizer, hf_ids: list[list[int]]):
    bad = _mismatches([tok.encode(s) for s in CORPUS], hf_ids)
    assert not bad, f"{len(bad)} of {len(CORPUS)} differ:\n" + "\n".join(bad[:10])


@pytest.mark.slow
def test_encode_without_special_matches_transformers(tok: Tokenizer, hf):
    # special=False leaves control-token text as plain text; transformers' equivalent is
    # split_special_tokens=True. User-defined tokens (\n, <start_of_image>) still match.
    ref = [hf.encode(s, add_special_tokens=False, split_special_tokens=True) for s in CORPUS]
    ours = [tok.encode(s, special=False) for s in CORPUS]
    bad = _mismatches(ours, ref)
    assert not bad, f"{len(bad)} of {len(CORPUS)} differ:\n" + "\n".join(bad[:10])
    assert not any(tok.is_control(i) for ids in ours for i in ids)


def test_special_tokens_in_text(tok: Tokenizer):
    ids = tok.encode("<start_of_turn>user\nHi<end_of_turn>\n")
    assert ids[0] == 105 and ids[2] == 107 and ids[-2:] == [106, 107]
    assert tok.encode("<bos>") == [2]
    assert 105 not in tok.encode("<start_of_turn>user", special=False)
    assert tok.encode("x<start_of_image>", special=False)[-1] == 255999


@pytest.mark.slow
def test_add_bos(tok: Tokenizer, hf):
    for s in ["", "hello", "<bos>hi", "<start_of_turn>user\nhi<end_of_turn>\n"]:
        ids = tok.encode(s, add_bos=True)
        assert ids == [tok.bos_id] + tok.encode(s)
        assert ids == hf.encode(s)                     # transformers adds one BOS too


@pytest.mark.slow
def test_large_text_matches_transformers(tok: Tokenizer, hf):
    text = corpus.mixed_text(300_000, seed=1)
    assert tok.encode(text) == hf.encode(text, add_special_tokens=False)


# -- decoding --------------------------------------------------------------------------------

def test_decode_round_trip(tok: Tokenizer):
    for s in CORPUS:
        # ▁ in the text is a space to SentencePiece, so it comes back as one
        assert tok.decode(tok.encode(s)) == s.replace(SPACE, " "), s[:60]


@pytest.mark.slow
def test_decode_matches_transformers(tok: Tokenizer, hf, hf_ids: list[list[int]]):
    for s, ids in zip(CORPUS, hf_ids):
        assert tok.decode(ids) == hf.decode(ids), s[:60]


def test_decode_invalid_bytes(tok: Tokenizer):
    byte = {b: tok.token_id(f"<0x{b:02X}>") for b in range(256)}
    a = tok.token_id("a")
    assert tok.decode([byte[0xE4], byte[0xB8], a]) == b"\xe4\xb8".decode("utf-8", "replace") + "a"
    assert tok.decode([byte[0xFF], byte[0x41]]) == "\ufffdA"
    assert tok.decode([byte[0xE6], byte[0x88], byte[0x91]]) == "我"


# -- streaming -------------------------------------------------------------------------------

def test_stream_decoder_matches_decode(tok: Tokenizer):
    for s in CORPUS:
        ids = tok.encode(s)
        dec = tok.stream_decoder()
        parts = [dec.feed(i) for i in ids]
        assert "".join(parts) + dec.flush() == tok.decode(ids), s[:60]
        if "\ufffd" not in s:                 # valid text: never half a character
            assert not any("\ufffd" in p for p in parts), s[:60]


def test_stream_decoder_holds_incomplete_characters(tok: Tokenizer):
    for ch in ["🫨", "𠀀"]:                  # not in the vocabulary: 4 byte tokens each
        ids = tok.encode(ch)
        assert len(ids) == 4 and all(tok.types[i] == TokenType.BYTE for i in ids)
        dec = tok.stream_decoder()
        assert [dec.feed(i) for i in ids] == ["", "", "", ch]
        assert dec.flush() == ""
    dec = tok.stream_decoder()
    outs = [dec.feed(i) for i in tok.encode("a🫨b🪿")]
    assert outs == ["a", "", "", "", "🫨", "b", "", "", "", "🪿"]
    # a byte run cut short by a normal token: the leftover becomes U+FFFD, as in decode
    first_two = tok.encode("𠀀")[:2]
    ids = first_two + tok.encode("<eos>")
    dec = tok.stream_decoder()
    assert "".join(dec.feed(i) for i in ids) + dec.flush() == tok.decode(ids) == "\ufffd<eos>"
    dec = tok.stream_decoder()
    assert dec.feed(first_two[0]) == "" and dec.flush() == "\ufffd"


# -- a hand-built vocabulary -----------------------------------------------------------------

def _tiny(pieces: list[str], scores: list[float] | None = None, **kw) -> Tokenizer:
    """<unk>, <s>, </s>, the 256 byte tokens, then `pieces` (control if <...>, else normal)."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + pieces
    types = ([TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL] + [TokenType.BYTE] * 256
             + [TokenType.CONTROL if len(p) > 2 and p[0] == "<" else TokenType.NORMAL
                for p in pieces])
    if scores is not None:
        scores = [0.0] * 259 + scores
    return Tokenizer(tokens, types, scores, bos_id=1, eos_id=2, pad_id=0, unk_id=0, **kw)


def _pieces(t: Tokenizer, text: str, **kw) -> list[str]:
    return [t.token_text(i) for i in t.encode(text, **kw)]


def test_tiny_best_merge_wins():
    # file order is merge priority: "bc" comes before "ab", so it is merged first
    assert _pieces(_tiny(["a", "b", "c", "bc", "ab"]), "abc") == ["a", "bc"]
    assert _pieces(_tiny(["a", "b", "c", "ab", "bc"]), "abc") == ["ab", "c"]
    # scores out of file order: the highest score wins
    assert _pieces(_tiny(["a", "b", "c", "ab", "bc"], [-1, -2, -3, -9, -5]), "abc") == ["a", "bc"]
    # merges repeat until no adjacent pair is a piece
    assert _pieces(_tiny(["a", "b", "c", "ab", "abc"]), "abcab") == ["abc", "ab"]


def test_tiny_ties_go_leftmost():
    assert _pieces(_tiny(["a", "aa"]), "aaa") == ["aa", "a"]
    assert _pieces(_tiny(["a", "aa"]), "aaaaa") == ["aa", "aa", "a"]


def test_tiny_byte_fallback_and_spaces():
    t = _tiny(["a", "b", SPACE, SPACE + "b"])
    assert _pieces(t, "a b") == ["a", SPACE + "b"]
    assert _pieces(t, "aé") == ["a", "<0xC3>", "<0xA9>"]        # é is no piece: its bytes
    assert t.decode(t.encode("aé b")) == "aé b"
    prefixed = _tiny(["a", "b", SPACE, SPACE + "a"], add_space_prefix=True)
    assert _pieces(prefixed, "a") == [SPACE + "a"]


def test_tiny_control_tokens():
    t = _tiny(["a", "<", ">", "s", "<x>"])
    assert _pieces(t, "a<x>a") == ["a", "<x>", "a"]
    assert _pieces(t, "a<x>a", special=False) == ["a", "<", "<0x78>", ">", "a"]
    assert _pieces(t, "<s>", special=True) == ["<s>"]
