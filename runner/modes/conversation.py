"""The chat as the model reads it, and the points the user can go back to.

A `Point` is one state of the conversation: its messages, the text they render to, and
the tokens the model read for that text. The tokens are what the KV cache holds: the ids
the model generated (not a re-tokenization of its reply) and the tokens of each new
piece of text, so a turn computes only what is new (the engine reuses the cached
prefix). Each point links to the point before its last exchange, so /undo is one step
back along that chain, and /push and /pop save and restore whole points.

Images (/upload IMG with a vision model) stand in the text as a marker, `\ue000N\ue001`
(N numbers the conversation's images): templates carry it like any text, and `encode`
turns each marker into the image's soft-token slots (llm.build_prompt), so a Point also
holds the image slots of its tokens.

Two formats:
- a chat template (built-in Gemma, or Jinja): messages in turns, the model replies as
  the assistant;
- raw completion (a base model, no template): the conversation is one plain text; each
  input goes on a new line (or after the -r stop string the model stopped at), and the
  model continues the text.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

from ..chat import ChatError, ImageRef, render
from ..engine import Engine, common_prefix
from ..generation import ImageSlot, Prompt, Result

MARK_OPEN, MARK_CLOSE = "\ue000", "\ue001"       # private-use characters: never in typed text
_MARK = re.compile("\ue000(\\d+)\ue001")
_HALF_MARK = re.compile("\ue000\\d*$")


@dataclass(frozen=True, eq=False)
class Point:
    messages: tuple[dict, ...]
    tokens: tuple[int, ...]         # what the model read (BOS first), as the cache holds it
    text: str                       # the rendering those tokens stand for ("" at the start)
    prev: Point | None = None       # the point before the last exchange (None: the start)
    images: tuple[ImageSlot, ...] = ()   # the image slots among the tokens

    def prompt(self) -> Prompt:
        return Prompt(list(self.tokens), list(self.images))

    @property
    def exchanges(self) -> int:
        n, p = 0, self
        while p.prev is not None:
            n, p = n + 1, p.prev
        return n


def render_raw(messages, bos: str, stops=()) -> str:
    """Raw completion: the messages as one text. The model's text follows whatever
    precedes it as it is; an input (or the system prompt) starts on a new line, except
    after a -r stop string the model wrote (say "User:"): there it goes on the same line,
    as in llama.cpp's interactive mode."""
    text = ""
    for m in messages:
        if m["role"] == "assistant":
            text += m["content"]
            continue
        after_stop = any(s and text.endswith(s) for s in stops)
        sep = ("" if text[-1:].isspace() else " ") if after_stop else "\n"
        text = join(text, m["content"], sep)
    return bos + text


def plain(text: str) -> str:
    """Typed or uploaded text, without the characters image markers are made of."""
    return text.replace(MARK_OPEN, "").replace(MARK_CLOSE, "")


def join(left: str, right: str, sep: str) -> str:
    """left + right, with `sep` between them unless either is empty or left ends a line."""
    if left and right and not left.endswith("\n"):
        return left + sep + right
    return left + right


class Conversation:
    def __init__(self, llm, template: str | None, system: str | None = None, stops=()):
        """`template`: "gemma" or a Jinja chat template; None: raw completion."""
        self.llm, self.template, self.raw = llm, template, template is None
        self.stops = tuple(stops)               # raw mode: the -r strings replies stop at
        tok = llm.tokenizer
        self.bos_id = tok.bos_id
        self.bos, self.eos = tok.token_text(tok.bos_id), tok.token_text(tok.eos_id)
        msgs = ({"role": "system", "content": system},) if system else ()
        self.start = Point(msgs, (), "")
        self.state = self.start
        self.stack: list[Point] = []            # /push
        self.pending: list[tuple[str, str]] = []    # (name, text or image marker) for the next message
        self.images: list[ImageRef] = []        # the images the markers number

    # -- text and tokens -----------------------------------------------------------------

    def render(self, messages, add_generation_prompt: bool) -> str:
        if self.raw:
            return render_raw(messages, self.bos, self.stops)
        pieces = render(list(messages), self.template, add_generation_prompt, self.bos, self.eos)
        if any(isinstance(p, ImageRef) for p in pieces):
            raise ChatError("images go in with /upload IMAGE")
        return "".join(pieces)

    def add_image(self, source) -> str:
        """The marker for a new image (its bytes, or a path) in the conversation."""
        self.images.append(ImageRef(source))
        return f"{MARK_OPEN}{len(self.images) - 1}{MARK_CLOSE}"

    def _pieces(self, text: str) -> list:
        """Text split at image markers: text pieces and ImageRefs."""
        out: list = []
        pos = 0
        for m in _MARK.finditer(text):
            out += [text[pos:m.start()], self.images[int(m.group(1))]]
            pos = m.end()
        return out + [text[pos:]]

    def encode(self, text: str, base: Point | None = None) -> tuple[tuple[int, ...], tuple[ImageSlot, ...]]:
        """Tokens and image slots for `text`: `base`'s and the new text's when `text`
        extends `base.text`, else the whole text's (exactly one BOS, whatever the template)."""
        if base is not None and base.tokens and text.startswith(base.text):
            new = self.llm.build_prompt(self._pieces(text[len(base.text):]))
            at = len(base.tokens)
            slots = tuple(ImageSlot(im.start + at, im.embeds, im.key) for im in new.images)
            return base.tokens + tuple(new.tokens), base.images + slots
        p = self.llm.build_prompt(self._pieces(text))
        ids, slots = list(p.tokens), list(p.images)
        if not ids or ids[0] != self.bos_id:
            ids = [self.bos_id] + ids
            slots = [ImageSlot(im.start + 1, im.embeds, im.key) for im in slots]
        return tuple(ids), tuple(slots)

    def _point(self, messages, prev: Point | None) -> Point:
        if messages == self.start.messages:
            return self.start
        text = self.render(messages, False)
        tokens, images = self.encode(text, prev)
        return Point(messages, tokens, text, prev, images)

    # -- a turn ---------------------------------------------------------------------------

    def user_content(self, text: str) -> str:
        """The next user message: pending uploads, then what was typed. An image goes
        right before what follows it (as transformers' processor lays out an image part)."""
        sep = "\n" if self.raw else "\n\n"
        out = ""
        for part in [t for _, t in self.pending] + [plain(text)]:
            out = out + part if out.endswith(MARK_CLOSE) else join(out, part, sep)
        return out

    def prompt(self, text: str) -> Point:
        """What a reply to `text` is generated from (nothing is committed yet). In raw
        mode an empty `text` (and no upload) continues the text as it is."""
        content = self.user_content(text)
        new = ({"role": "user", "content": content},) if content or not self.raw else ()
        msgs = self.state.messages + new
        rendered = self.render(msgs, True)
        tokens, images = self.encode(rendered, self.state)
        return Point(msgs, tokens, rendered, self.state, images)

    def reply(self, turn: Point, ids: list[int], reply: str) -> None:
        """Commit the exchange: `turn` (from prompt()) and the model's reply, whole or cut
        short. The generated ids are kept as far as they spell the rendered reply."""
        msgs = turn.messages + ({"role": "assistant", "content": reply},)
        text = self.render(msgs, False)
        if text.startswith(turn.text):
            rest = text[len(turn.text):]            # e.g. the reply, then "<end_of_turn>\n"
            k = self._agreeing(ids, rest)
            spelled = self.llm.detokenize(ids[:k])
            tokens = turn.tokens + tuple(ids[:k]) + \
                tuple(self.llm.tokenize(rest[len(spelled):], add_bos=False))
            images = turn.images
        else:                                       # the template rewrote earlier text
            tokens, images = self.encode(text)
        self.state = Point(msgs, tokens, text, self.state, images)
        self.pending = []

    def _agreeing(self, ids: list[int], rest: str) -> int:
        """The largest k (by bisection) such that ids[:k] spell a prefix of `rest`."""
        def ok(k):
            return rest.startswith(self.llm.detokenize(ids[:k]))
        if ok(len(ids)):
            return len(ids)
        lo, hi = 0, len(ids)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if ok(mid) else (lo, mid)
        return lo

    def tokens_used(self) -> int:
        """Tokens the model has read: the conversation, the uploads waiting, and what
        the next turn opens with (next_prefix)."""
        return len(self.next_prefix())

    def next_prefix(self) -> Prompt:
        """What every next prompt starts with (the system prompt, an upload, the opening
        of the next turn), to compute ahead while the user types."""
        try:
            a, b = self.prompt("A"), self.prompt("B")
        except ChatError:
            return self.state.prompt()
        common = os.path.commonprefix([a.text, b.text])
        if _HALF_MARK.search(common):
            common = common[:common.rindex(MARK_OPEN)]     # never half a marker
        tokens, images = self.encode(common, self.state)
        return Prompt(list(tokens), list(images))

    def readable(self, prompt: Prompt) -> str:
        """The text the model reads for `prompt`, an image shown as its size in tokens."""
        out, pos = [], 0
        for im in prompt.images:
            out.append(self.llm.detokenize(prompt.tokens[pos:im.start]))
            out.append(f"[image: {len(im.embeds)} tokens]")
            pos = im.start + len(im.embeds)
        return "".join(out) + self.llm.detokenize(prompt.tokens[pos:])

    # -- going back -----------------------------------------------------------------------

    def undo(self) -> Point | None:
        """Back to the point before the last exchange; None if there is none."""
        if self.state.prev is None:
            return None
        self.state, self.pending = self.state.prev, []
        return self.state

    def clear(self) -> None:
        self.state, self.stack, self.pending = self.start, [], []

    def push(self) -> None:
        self.stack.append(self.state)

    def pop(self) -> Point | None:
        if not self.stack:
            return None
        self.state, self.pending = self.stack.pop(), []
        return self.state

    def forget(self) -> tuple[dict, ...] | None:
        """Drop the oldest exchange (the system prompt stays): the later exchanges are
        rendered again without it. Returns the dropped messages, None if there are none."""
        chain, p = [], self.state
        while p.prev is not None:
            chain.append(p)
            p = p.prev
        if not chain:
            return None
        root, chain = p, chain[::-1]
        first = chain[0]
        dropped = first.messages[len(root.messages):]
        new = root
        for q in chain[1:]:
            new = self._point(root.messages + q.messages[len(first.messages):], new)
        self.state = new
        return dropped


def sync_cache(engine: Engine, prompt: Prompt) -> None:
    """Rewind the cache to what it shares with `prompt` (the conversation went back)."""
    engine.rewind(len(engine.ids) - common_prefix(engine.ids, prompt.ids()))


def warm_cache(engine: Engine, prompt: Prompt) -> int:
    """Compute `tokens` ahead (the cache keeps them for the next turn); how many were
    computed. Skips a prefix that does not fit (the turn then says so)."""
    if not len(prompt) or len(prompt) >= engine.n_ctx:
        return 0
    st = Result()
    engine.prefill(prompt, st, logits=False)                # only what the cache lacks
    return st.prompt_tokens - st.cached_tokens
