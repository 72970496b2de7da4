"""The chat in the terminal, the default mode (llamafile's chatbot).

    >>> Why is the sky blue?
    (the reply streams here)
    >>> /stats

The loop: bring the cache in line with the conversation and compute ahead what the next
turn surely starts with; read a line (terminal.py); run a command (commands.py) or a
turn; stream the reply. Ctrl-C stops a reply (what was said stays, and so does the
cache); Ctrl-D, Ctrl-C at an empty prompt or /exit quit.

A model without a chat template (a base model, like the default 270M one) runs in raw
completion mode: the conversation is one text, each input is appended on a new line (or
after the -r stop string the model stopped at, which stays in the text) and the model
continues it, up to RAW_REPLY_TOKENS at a time (-n changes it); Enter on an empty line
lets it go on.
"""
from __future__ import annotations

import os
import sys

from .. import __version__
from ..args import PROG, UserError, die, read_prompt, sampling_from_args, stop_strings
from ..chat import ChatError
from ..engine import ContextError
from ..generation import ModelError, Result, Stop
from . import commands
from .conversation import Conversation, sync_cache, warm_cache
from .terminal import PlainReader, TerminalReader, unquote
from .upload import upload

RAW_REPLY_TOKENS = 256          # a base model rarely ends its text: it writes a page at a time
REPLY_ROOM = 256                # tokens a turn keeps free for the reply (at most a quarter of -c)


class Screen:
    """Output: the reply as it streams, notes (faint) and errors (red, on stderr)."""

    def __init__(self, color: bool):
        self.color = color
        self.last = "\n"

    def _paint(self, code: str, text: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.color else text

    def write(self, text: str) -> None:
        if text:
            sys.stdout.write(text)
            sys.stdout.flush()
            self.last = text[-1]

    def newline(self) -> None:
        if self.last != "\n":
            self.write("\n")

    def line(self, text: str) -> None:
        self.newline()
        self.write(text + "\n")

    def note(self, text: str) -> None:
        self.line(self._paint("2", text))

    def error(self, text: str) -> None:
        self.newline()
        sys.stdout.flush()
        print(self._paint("31", text), file=sys.stderr, flush=True)


class Repl:
    def __init__(self, llm, args, conv: Conversation, screen: Screen):
        self.llm, self.args, self.conv, self.screen = llm, args, conv, screen
        self.engine = llm.engine
        self.params = sampling_from_args(args)
        self.stops = stop_strings(args)
        n = args.n_predict
        self.limit = n if n >= 0 else (RAW_REPLY_TOKENS if conv.raw else None)
        self.last: Result | None = None         # of the last reply
        self.replies = self.generated = 0

    def banner(self, fmt: str) -> None:
        s = self.screen
        s.line(f"{PROG} {__version__} · {self.llm.name} · context {self.llm.n_ctx} tokens · {fmt}")
        if self.conv.raw:
            s.note(f"This model has no chat template, so there are no turns: what you type is added\n"
                   f"to the text and the model continues it ({self._limit_text()} at a time; Enter on\n"
                   f"an empty line lets it go on). -r 'User:' stops it at 'User:' for you to write\n"
                   f"after; --chat-template gemma formats turns instead.")
        if self.conv.start.messages:
            what = "the text starts with -p" if self.conv.raw else "system prompt"
            s.note(f"{what}: {self.conv.tokens_used()} tokens")
        s.note("commands: " + " ".join("/" + c for c in commands.names()))
        s.note('"""  starts and ends multi-line input · Ctrl-C stops a reply · Ctrl-D quits')

    def _limit_text(self) -> str:
        return "until it ends" if self.limit is None else f"up to {self.limit} tokens"

    # -- the loop -------------------------------------------------------------------------

    def loop(self, reader) -> int:
        """Read and run until the end; the exit status. Between prompts the terminal
        does not echo (typing ahead waits for the next prompt)."""
        while True:
            with reader.busy():
                try:
                    self.settle()
                except KeyboardInterrupt:           # the next turn computes it instead
                    self.screen.note("[interrupted]")
            try:
                line = reader.read()
                if line is None:
                    self.screen.newline()
                    return 0
                with reader.busy():
                    if commands.is_command(line):
                        if commands.dispatch(self, line):
                            return 0
                        continue
                    text = unquote(line)
                    if not text.strip():
                        if not self.conv.raw:      # a chat waits for a message
                            continue
                        text = ""                   # raw mode: go on with the text
                    self.turn(text)
            except KeyboardInterrupt:
                self.screen.note("[interrupted]")

    def settle(self) -> None:
        """Rewind the cache to the conversation (after /undo, /pop, ...), then compute
        what the next turn starts with (the system prompt, uploads) while the user types."""
        sync_cache(self.engine, self.conv.state.prompt())
        warm_cache(self.engine, self.conv.next_prefix())

    def turn(self, text: str) -> None:
        try:
            turn = self.make_room(self.conv.prompt(text), text)
        except ChatError as e:
            self.screen.error(str(e))
            return
        ids, pieces, interrupted = [], [], False
        gen = None
        try:
            # with -n 0 the model reads the message and says nothing
            gen = self.engine.generate(turn.prompt(), self.params, max_tokens=self.limit,
                                       stop=self.stops, ignore_eos=self.args.ignore_eos)
            for tok in gen:
                if tok.id >= 0:
                    ids.append(tok.id)
                pieces.append(tok.text)
                self.screen.write(tok.text)
        except KeyboardInterrupt:
            interrupted = True
        except ContextError:
            self.screen.error(self._full(f"this message needs {len(turn.tokens)} tokens and the "
                                         f"context holds {self.llm.n_ctx}"))
            return
        except ModelError as e:                     # the chat goes on: /clear, another message
            self.screen.error(str(e))
            return
        finally:
            if gen is not None:
                gen.close()
        if interrupted and not ids:                 # stopped while reading the message
            self.screen.note("[interrupted]")
            return
        reply = "".join(pieces)
        result = self.llm.stats
        if interrupted:
            result.stop = Stop.CANCELLED
        if self.conv.raw and result.stop is Stop.WORD:
            # raw mode: the -r string the model wrote (the engine holds it back) stays in
            # the text, so the user writes after it
            self.screen.write(result.stopping_word)
            reply += result.stopping_word
        self.conv.reply(turn, ids, reply)
        self.screen.newline()
        self.last = result
        self.replies += 1
        self.generated += len(ids)
        if result.stop is Stop.CANCELLED:
            self.screen.note("[stopped]")
        elif result.stop is Stop.CONTEXT:
            self.screen.error("the context is full: the reply was cut short (your next message makes room "
                              "by dropping the oldest exchanges)")

    def make_room(self, turn, text: str):
        """The turn, after dropping the oldest exchanges (the system prompt stays) while it
        leaves less than REPLY_ROOM tokens (or the -n limit) for the reply; each drop is
        said. A message too long on its own is left for generate to refuse."""
        room = min(self.limit or REPLY_ROOM, self.llm.n_ctx // 4)
        first, before, dropped = turn, self.conv.state, 0
        while len(turn.tokens) + room > self.llm.n_ctx and self.conv.forget() is not None:
            dropped += 1
            turn = self.conv.prompt(text)
        if len(turn.tokens) >= self.llm.n_ctx:        # too long on its own: drop nothing
            self.conv.state = before
            return first
        if dropped:
            self.screen.note(f"[the context is full: dropped the oldest exchange{'s' * (dropped > 1)} "
                             f"({dropped}); the system prompt stays]")
        return turn

    def _full(self, why: str) -> str:
        train = self.llm.cfg.n_ctx_train
        more = f", or restart with -c {train}" if self.llm.n_ctx < train else ""
        return f"the context is full: {why}. /forget drops the oldest exchange, /clear starts over{more}."

    def attach(self, name: str, text: str, size: int | None = None) -> None:
        """An upload (text, or an image's marker and its size in tokens): it goes with the
        next message, and is read into the cache now."""
        conv = self.conv
        conv.pending.append((name, text))
        if size is None:
            size = len(self.llm.tokenize(text, add_bos=False))
        ahead = conv.next_prefix()
        if len(ahead) >= self.llm.n_ctx:
            conv.pending.pop()
            self.screen.error(self._full(f"{name} has {size} tokens; with the conversation it needs "
                                         f"{len(ahead)} of {self.llm.n_ctx}"))
            return
        try:
            warm_cache(self.engine, ahead)
        except KeyboardInterrupt:
            conv.pending.pop()
            self.screen.note(f"[interrupted: {name} not uploaded]")
            return
        where = "added to the text with your next input" if conv.raw else "it goes with your next message"
        self.screen.note(f"uploaded {name} ({size} tokens); {where}")


def run(llm, args) -> int:
    try:
        system = read_prompt(args)                 # -p / -f: the system prompt
    except UserError as e:
        return die(str(e), e.status)
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    color = interactive and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"
    sys.stdout.reconfigure(errors="replace")
    screen = Screen(color)
    template = llm.chat_format.template          # None: a base model, raw completion
    fmt = llm.chat_format.how if template is not None else "raw completion mode"
    conv = Conversation(llm, template, system or None, stop_strings(args))
    repl = Repl(llm, args, conv, screen)
    reader = TerminalReader(commands.names(), color) if interactive else PlainReader()
    repl.banner(fmt)
    try:
        for path in args.image:
            upload(repl, path)
    except KeyboardInterrupt:
        screen.note("[interrupted]")
    return repl.loop(reader)
