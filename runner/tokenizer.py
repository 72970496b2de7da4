"""SentencePiece BPE built from the GGUF vocabulary; streaming detokenizer.

The GGUF stores the pieces (`tokenizer.ggml.tokens`), their scores and types; there are no
merges. Encoding a text follows the tokenizer `transformers` builds from the same file
(`integrations/gguf`), which is the reference the tests hold us to:

1. Added tokens are cut out of the raw text first, leftmost-longest: control tokens
   (`<start_of_turn>`, `<bos>`, `<unusedN>`) when `special=True`, user-defined ones
   (`\\n`, `\\n\\n`, `\\t`, `<table>`, `<start_of_image>`) always. With `special=False` a
   control token's text stays plain text and is cut into ordinary pieces.
2. In the text between them spaces become `▁` (U+2581).
3. Each stretch is split into characters, then the adjacent pair whose concatenation is a
   vocabulary piece with the best rank is merged, again and again (two pairs that make the
   same piece: the longer left part first, then the leftmost). The rank is the piece's position in the vocabulary:
   SentencePiece writes pieces best score first, and Gemma's non-normal pieces carry
   placeholder scores (-1000, 0) that would misplace them. A vocabulary whose normal
   scores are not in file order falls back to ranking by score.
4. A character that is no piece becomes the byte tokens `<0xNN>` of its UTF-8 bytes.

Gemma stores runs of two or more spaces as pieces of real spaces ("  "); they are
respelled `▁▁` so the merges can reach them (llama.cpp instead matches them whole, which
gives other ids for runs longer than the longest such piece).

Speed: a merge can only join two characters that stand side by side in some piece, so the
text is cut wherever a bigram occurs in no piece (a hashed table of the vocabulary's
bigrams, checked with numpy over the whole text; hash collisions only cut less), and the
encoding of every cut piece, mostly one word with its leading `▁`, is cached.

`add_space_prefix` (false for Gemma) prefixes `▁` to each stretch of text at the start or
after an added token, as llama.cpp does.
"""
from __future__ import annotations

import codecs
import enum
import heapq
import os
import re
from collections.abc import Iterable, Sequence

import numpy as np

from .gguf import GGUFError, GGUFFile

SPACE = "\u2581"             # SentencePiece's visible space
_HASH_BITS = 22              # bigram table: 4 MB of bools, ~1% false "joinable" for Gemma
_HASH_MUL = np.uint32(0x9E3779B1)
_CACHE_MAX = 1 << 18         # cached pieces before the cache is dropped


class TokenType(enum.IntEnum):
    """`tokenizer.ggml.token_type` values (llama.cpp's llama_token_type)."""
    NORMAL = 1
    UNKNOWN = 2
    CONTROL = 3
    USER_DEFINED = 4
    UNUSED = 5
    BYTE = 6


def _bigram_hash(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    # multiplicative hash of two uint32 code points (21 bits each) into _HASH_BITS bits
    key = (left << np.uint32(11)) ^ right
    return (key * _HASH_MUL) >> np.uint32(32 - _HASH_BITS)


def _code_points(s: str) -> np.ndarray:
    return np.frombuffer(s.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


class Tokenizer:
    """Encoder and decoder over one vocabulary. `tokens[i]` is piece i as the file spells
    it, `types[i]` its `TokenType`; `scores` may be None (ranks follow the file order)."""

    def __init__(self, tokens: Sequence[str], types: Sequence[int] | np.ndarray,
                 scores: Sequence[float] | np.ndarray | None = None, *,
                 bos_id: int = 2, eos_id: int = 1, pad_id: int = 0, unk_id: int = 3,
                 add_space_prefix: bool = False, add_bos: bool = True):
        self.tokens = list(tokens)
        self.types = np.asarray(types, dtype=np.int32)
        n = self.n_vocab = len(self.tokens)
        if self.types.shape != (n,):
            raise ValueError(f"token types: expected {n} entries, found {self.types.shape}")
        self.bos_id, self.eos_id, self.pad_id, self.unk_id = bos_id, eos_id, pad_id, unk_id
        self.add_space_prefix = add_space_prefix
        self.add_bos = add_bos        # the file's advice (tokenizer.ggml.add_bos_token)

        # all pieces end to end as code points; piece i is cps[starts[i]:ends[i]]
        cps = _code_points("".join(self.tokens)).copy()
        lengths = np.fromiter(map(len, self.tokens), dtype=np.int64, count=n)
        ends = np.cumsum(lengths)
        starts = ends - lengths

        # the spelling BPE sees: all-whitespace pieces with real spaces become ▁ runs
        spelled = list(self.tokens)
        self._respelled: dict[str, int] = {}
        with_space = np.searchsorted(ends, np.flatnonzero(cps == ord(" ")), side="right")
        for i in np.unique(with_space).tolist():
            t = spelled[i]
            if not t.strip():
                spelled[i] = SPACE * len(t)
                self._respelled[t] = i
                cps[starts[i]:ends[i]] = ord(SPACE)
        self._vocab = dict(zip(spelled, range(n)))          # later duplicates win, as in HF
        self._rank = self._ranks(scores).tolist()

        # byte fallback: byte value -> id and spelling (None: no such byte token)
        byte_value = np.full(n, -1, dtype=np.int16)
        byte_ids: list[int | None] = [None] * 256
        for i in np.flatnonzero(self.types == TokenType.BYTE).tolist():
            t = self.tokens[i]
            if len(t) == 6 and t.startswith("<0x") and t.endswith(">"):
                b = int(t[3:5], 16)
                byte_value[i] = b
                byte_ids[b] = i
        self._byte_value: list[int] = byte_value.tolist()    # -1 for non-byte tokens
        self._byte_ids = byte_ids
        self._byte_spelling = [spelled[i] if i is not None else "" for i in byte_ids]

        # added tokens, matched in the raw text: control ones and the user-defined ones
        # BPE can spell (the respelled space runs are left to the merges, as in HF)
        control = np.flatnonzero(self.types == TokenType.CONTROL).tolist()
        user = np.flatnonzero(self.types == TokenType.USER_DEFINED).tolist()
        self._control = {self.tokens[i] for i in control}
        self._added: dict[str, int] = {}
        for i in sorted(control + [i for i in user if self.tokens[i] in self._vocab]):
            if self.tokens[i]:
                self._added.setdefault(self.tokens[i], i)
        self._added_prefixes = {t[:k] for t in self._added for k in range(1, len(t) + 1)}
        firsts = "".join(sorted({t[0] for t in self._added}))
        self._added_start = re.compile(f"[{re.escape(firsts)}]") if firsts else None

        # which code points are pieces, and which bigrams occur inside some piece
        inside = np.ones(max(len(cps) - 1, 0), dtype=bool)
        inside[ends[(ends > 0) & (ends < len(cps))] - 1] = False   # pairs across two pieces
        self._joinable = np.zeros(1 << _HASH_BITS, dtype=bool)
        self._joinable[_bigram_hash(cps[:-1][inside], cps[1:][inside])] = True
        self._is_char = np.zeros(0x110000, dtype=bool)
        self._is_char[cps[starts[lengths == 1]]] = True  # one-character pieces

        self._cache: dict[str, list[int]] = {}
        self._texts: list[str] | None = None              # decode table, built on first use

    @classmethod
    def from_gguf(cls, g: GGUFFile) -> Tokenizer:
        md = g.metadata
        model = md.get("tokenizer.ggml.model")
        if model != "llama":
            raise ValueError(f"{g.path}: tokenizer.ggml.model is {model!r}, expected 'llama' "
                             "(SentencePiece); other tokenizers are not supported")
        for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type"):
            if key not in md:
                raise ValueError(f"{g.path}: metadata {key!r} is missing")
        n = len(md["tokenizer.ggml.tokens"])

        def token_id(name: str, default: int) -> int:
            # why: an id past the vocabulary would fail later as an IndexError mid-request
            key = f"tokenizer.ggml.{name}"
            v = g.value(key, int, default)
            if not 0 <= v < n:
                raise GGUFError(f"{g.path}: {key}: expected a token id from 0 to {n - 1}, found {v}")
            return v

        return cls(md["tokenizer.ggml.tokens"], md["tokenizer.ggml.token_type"],
                   md.get("tokenizer.ggml.scores"),
                   bos_id=token_id("bos_token_id", 2), eos_id=token_id("eos_token_id", 1),
                   pad_id=token_id("padding_token_id", 0), unk_id=token_id("unknown_token_id", 3),
                   add_space_prefix=bool(md.get("tokenizer.ggml.add_space_prefix", False)),
                   add_bos=bool(md.get("tokenizer.ggml.add_bos_token", True)))

    def _ranks(self, scores) -> np.ndarray:
        order = np.arange(self.n_vocab)
        if scores is None:
            return order
        scores = np.asarray(scores, dtype=np.float64)
        normal = scores[self.types == TokenType.NORMAL]
        if np.all(np.diff(normal) <= 0):                    # file order is score order
            return order
        rank = np.empty(self.n_vocab, dtype=np.int64)
        rank[np.argsort(-scores, kind="stable")] = order
        return rank

    # -- vocabulary ---------------------------------------------------------------------

    def token_id(self, piece: str) -> int | None:
        """Id of the piece spelled as in the file (`"<end_of_turn>"`), None if absent."""
        i = self._vocab.get(piece)
        if i is not None and self.tokens[i] == piece:
            return i
        return self._respelled.get(piece)

    def frequent(self, n: int) -> np.ndarray:
        """About n ids of the pieces most likely to occur, by the tokenizer's own order:
        every user-defined piece (Gemma's runs of spaces and newlines), the first n/8
        single characters and then the multi-character pieces in BPE merge order.
        why: SentencePiece keeps single characters apart, ranked among themselves by
        frequency (Gemma puts them after all the merges: '.' is id 236761), so merge
        order alone would leave out punctuation and digits."""
        normal = (self.types == TokenType.NORMAL)
        single = normal & (np.fromiter(map(len, self.tokens), dtype=np.int64, count=self.n_vocab) == 1)
        rank = np.asarray(self._rank)

        def first(mask: np.ndarray, k: int) -> np.ndarray:
            ids = np.flatnonzero(mask)
            return ids[np.argsort(rank[ids], kind="stable")[:max(k, 0)]]

        user = np.flatnonzero(self.types == TokenType.USER_DEFINED)
        chars = first(single, n // 8)
        return np.concatenate([user, chars, first(normal & ~single, n - len(user) - len(chars))])

    def byte_of(self, id: int) -> int | None:
        """The byte a byte-fallback token `<0xNN>` stands for; None for other tokens."""
        b = self._byte_value[id]
        return b if b >= 0 else None

    def token_text(self, id: int) -> str:
        return self.tokens[id]

    def is_control(self, id: int) -> bool:
        return int(self.types[id]) == TokenType.CONTROL

    # -- encoding -----------------------------------------------------------------------

    def encode(self, text: str, add_bos: bool = False, special: bool = True) -> list[int]:
        """Token ids of `text`; `special` matches control tokens written in it."""
        ids = [self.bos_id] if add_bos else []
        spans = self._find_added(text, special)
        if not self.add_space_prefix:
            ids += self._encode_text(text.replace(" ", SPACE), spans)
            return ids
        pos = 0
        for a, b, tid in spans + [(len(text), len(text), None)]:
            if a > pos:      # llama.cpp: a space before text at the start or after a token
                ids += self._encode_text(SPACE + text[pos:a].replace(" ", SPACE), [])
            if tid is not None:
                ids.append(tid)
            pos = b
        return ids

    def _find_added(self, text: str, special: bool) -> list[tuple[int, int, int]]:
        """(start, end, id) of the added tokens in `text`, leftmost-longest, no overlaps."""
        spans: list[tuple[int, int, int]] = []
        if self._added_start is None:
            return spans
        search, prefixes, added = self._added_start.search, self._added_prefixes, self._added
        n, i = len(text), 0
        while (m := search(text, i)) is not None:
            i = m.start()
            best, k = 0, i + 1
            while k <= n and text[i:k] in prefixes:             # walk down the prefix trie
                if text[i:k] in added:
                    best = k
                k += 1
            if not best:
                i += 1
                continue
            piece = text[i:best]
            if special or piece not in self._control:           # else: plain text (as HF)
                spans.append((i, best, added[piece]))
            i = best
        return spans

    def _encode_text(self, norm: str, spans: list[tuple[int, int, int]]) -> list[int]:
        """Ids of the normalized text (spaces already ▁) with added tokens at `spans`."""
        n = len(norm)
        if n == 0:
            return []
        cut = np.zeros(n + 1, dtype=bool)
        cut[0] = cut[n] = True
        if n > 1:
            cp = _code_points(norm)
            known = self._is_char[cp]
            # a boundary where the two characters never meet inside a piece
            cut[1:n] = ~self._joinable[_bigram_hash(cp[:-1], cp[1:])] & known[:-1] & known[1:]
        at = {}
        for a, b, tid in spans:
            cut[a + 1:b] = False
            cut[a] = cut[b] = True
            at[a] = tid
        bounds = np.flatnonzero(cut).tolist()
        out: list[int] = []
        cache = self._cache
        if len(cache) > _CACHE_MAX:
            cache.clear()
        for a, b in zip(bounds, bounds[1:]):
            tid = at.get(a)
            if tid is not None:
                out.append(tid)
                continue
            piece = norm[a:b]
            r = cache.get(piece)
            if r is None:
                r = cache[piece] = self._bpe(piece)
            out += r
        return out

    def _bpe(self, piece: str) -> list[int]:
        """BPE over one piece with a heap of candidate merges (rank, -len(left), pos, id)."""
        vocab, rank = self._vocab, self._rank
        sym: list[str] = []
        ids: list[int] = []
        for ch in piece:
            t = vocab.get(ch)
            if t is not None:
                sym.append(ch)
                ids.append(t)
            else:                                               # byte fallback
                utf8 = ch.encode("utf-8", "surrogatepass")
                if all(self._byte_ids[b] is not None for b in utf8):
                    sym += [self._byte_spelling[b] for b in utf8]
                    ids += [self._byte_ids[b] for b in utf8]
                elif not ids or ids[-1] != self.unk_id:         # <unk>, one for a run
                    sym.append(self.tokens[self.unk_id])
                    ids.append(self.unk_id)
        n = len(sym)
        if n < 2:
            return ids
        nxt = list(range(1, n + 1))
        nxt[-1] = -1
        prv = list(range(-1, n - 1))
        heap = []
        for i in range(n - 1):
            t = vocab.get(sym[i] + sym[i + 1])
            if t is not None:
                heap.append((rank[t], -len(sym[i]), i, t))
        if not heap:
            return ids
        heapq.heapify(heap)
        while heap:
            _, _, i, t = heapq.heappop(heap)
            j = nxt[i]
            # stale entry: the left symbol was merged away, or either side has changed
            if j < 0 or not sym[i] or vocab.get(sym[i] + sym[j]) != t:
                continue
            sym[i] += sym[j]
            ids[i] = t
            sym[j] = ""
            k = nxt[i] = nxt[j]
            if k >= 0:
                prv[k] = i
                t2 = vocab.get(sym[i] + sym[k])
                if t2 is not None:
                    heapq.heappush(heap, (rank[t2], -len(sym[i]), i, t2))
            p = prv[i]
            if p >= 0:
                t2 = vocab.get(sym[p] + sym[i])
                if t2 is not None:
                    heapq.heappush(heap, (rank[t2], -len(sym[p]), p, t2))
        out, i = [], 0
        while i >= 0:
            out.append(ids[i])
            i = nxt[i]
        return out

    # -- decoding -----------------------------------------------------------------------

    def _text_table(self) -> list[str]:
        if self._texts is None:
            self._texts = [t.replace(SPACE, " ") for t in self.tokens]
        return self._texts

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`: control tokens as their text, runs of byte tokens as UTF-8
        (invalid bytes as U+FFFD), ▁ as a space."""
        texts, byte_value = self._text_table(), self._byte_value
        parts: list[str] = []
        pending = bytearray()
        for i in ids:
            b = byte_value[i]
            if b >= 0:
                pending.append(b)
                continue
            if pending:
                parts.append(pending.decode("utf-8", "replace"))
                pending.clear()
            parts.append(texts[i])
        if pending:
            parts.append(pending.decode("utf-8", "replace"))
        return "".join(parts)

    def stream_decoder(self) -> StreamDecoder:
        return StreamDecoder(self)


class StreamDecoder:
    """Decodes one id at a time; holds back the bytes of a character not yet complete, so
    the concatenated outputs plus `flush()` equal `Tokenizer.decode` of all the ids."""

    def __init__(self, tok: Tokenizer):
        self._tok = tok
        self._texts = tok._text_table()
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace")

    def feed(self, id: int) -> str:
        b = self._tok._byte_value[id]
        if b >= 0:
            return self._utf8.decode(bytes((b,)))
        return self.flush() + self._texts[id]    # a run of byte tokens ends here

    def flush(self) -> str:
        """What is held back, invalid leftovers as U+FFFD; the decoder starts afresh."""
        out = self._utf8.decode(b"", final=True)
        self._utf8.reset()
        return out


def load_tokenizer(src: str | os.PathLike | GGUFFile) -> Tokenizer:
    """The tokenizer of a GGUF file, given its path or the open file."""
    return Tokenizer.from_gguf(src if isinstance(src, GGUFFile) else GGUFFile(src))
