"""Reading the REPL's input: prompt_toolkit on a terminal (history, tab completion of
commands and /upload paths, \"\"\" multi-line input, Ctrl-C clears the line or, on an
empty line, quits), plain lines otherwise (a pipe, a file).

`read()` returns the text entered, or None at the end (Ctrl-D, Ctrl-C on an empty line,
end of input). prompt_toolkit is imported here only, so --cli starts fast.
"""
from __future__ import annotations

import contextlib
import os
import sys

try:
    import termios                                  # POSIX terminals
except ImportError:
    termios = None

QUOTES = '"""'
PROMPT = ">>> "
CONTINUATION = "... "


def open_quote(text: str) -> bool:
    """True while a \"\"\" block is open: the text starts with \"\"\" and has not ended with
    another one yet."""
    s = text.lstrip()
    if not s.startswith(QUOTES):
        return False
    return len(s.rstrip()) < 2 * len(QUOTES) or not s.rstrip().endswith(QUOTES)


def unquote(text: str) -> str:
    """The message in a \"\"\" block (the quotes and the newlines next to them removed);
    other text as it is."""
    s = text.strip()
    if not s.startswith(QUOTES):
        return text
    s = s[len(QUOTES):]
    if s.rstrip().endswith(QUOTES):
        s = s.rstrip()[:-len(QUOTES)]
    return s.strip("\n")


class PlainReader:
    """Lines from standard input (not a terminal): no prompt, no editing."""

    def busy(self):
        return contextlib.nullcontext()

    def read(self) -> str | None:
        line = sys.stdin.readline()
        if not line:
            return None
        text = line.rstrip("\n")
        while open_quote(text):
            more = sys.stdin.readline()
            if not more:
                break
            text += "\n" + more.rstrip("\n")
        return text


def history_path() -> str:
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(state, "gemma-runner", "history")


class TerminalReader:
    def __init__(self, commands: list[str], color: bool = True):
        from prompt_toolkit import PromptSession
        from prompt_toolkit.formatted_text import ANSI
        from prompt_toolkit.history import FileHistory, InMemoryHistory
        from prompt_toolkit.key_binding import KeyBindings
        from prompt_toolkit.shortcuts import CompleteStyle

        try:
            path = history_path()
            os.makedirs(os.path.dirname(path), exist_ok=True)
            history = FileHistory(path)
        except OSError:                             # a read-only home: keep history in memory
            history = InMemoryHistory()

        keys = KeyBindings()

        # why c-j too: Enter typed ahead, while a reply streams, reaches us as \n (c-j)
        @keys.add("enter")
        @keys.add("c-j")
        def _(event):                               # inside a """ block, Enter is a new line
            buf = event.current_buffer
            if open_quote(buf.text):
                buf.insert_text("\n")
            else:
                buf.validate_and_handle()

        @keys.add("escape", "enter")
        def _(event):                               # Alt-Enter: a new line anywhere
            event.current_buffer.insert_text("\n")

        @keys.add("c-c")
        def _(event):                               # clear the line; on an empty one, quit
            buf = event.current_buffer
            if buf.text:
                buf.reset()
            else:
                event.app.exit(exception=EOFError())

        self.message = ANSI("\033[32m" + PROMPT + "\033[0m") if color else PROMPT
        self.session = PromptSession(
            history=history, completer=_completer(commands), complete_style=CompleteStyle.READLINE_LIKE,
            complete_while_typing=False, key_bindings=keys, multiline=True,
            prompt_continuation=lambda width, line, wrap: CONTINUATION)

    def read(self) -> str | None:
        try:
            return self.session.prompt(self.message)
        except (EOFError, KeyboardInterrupt):
            return None

    @contextlib.contextmanager
    def busy(self):
        """While a reply streams: what the user types ahead is not echoed into it (it
        waits for the next prompt); Ctrl-C still interrupts."""
        if termios is None:
            yield
            return
        fd = sys.stdin.fileno()
        saved = termios.tcgetattr(fd)
        quiet = list(saved)
        quiet[3] &= ~termios.ECHO                   # the local-modes word
        termios.tcsetattr(fd, termios.TCSANOW, quiet)
        try:
            yield
        finally:
            termios.tcsetattr(fd, termios.TCSANOW, saved)


def _completer(commands: list[str]):
    """Tab: command names after a slash; paths after /upload and /dump; command names
    after /help."""
    from prompt_toolkit.completion import Completer, Completion, PathCompleter
    from prompt_toolkit.document import Document

    paths = PathCompleter(expanduser=True)

    class Commands(Completer):
        def get_completions(self, document, event):
            text = document.text_before_cursor
            if not text.startswith("/") or "\n" in text:
                return
            name, space, arg = text[1:].partition(" ")
            if not space:
                for c in commands:
                    if c.startswith(name):
                        yield Completion("/" + c + " ", start_position=-len(text), display="/" + c)
            elif name in ("upload", "dump"):
                yield from paths.get_completions(Document(arg, len(arg)), event)
            elif name == "help":
                for c in commands:
                    if c.startswith(arg):
                        yield Completion(c, start_position=-len(arg))

    return Commands()
