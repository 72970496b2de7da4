"""The REPL's slash commands: one table (name, usage, summary, details, handler), the
dispatcher, and /help built from the table. A handler gets the Repl and the rest of the
line; one that returns True ends the session."""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Callable

from .conversation import Point
from .upload import upload


@dataclass(frozen=True)
class Command:
    name: str
    usage: str
    summary: str
    details: str
    run: Callable[[Any, str], bool | None]
    aliases: tuple[str, ...] = ()


def is_command(line: str) -> bool:
    """A slash and a letter start a command, as in llamafile ("/?" is /help); anything
    else, "/ 2" or "//" included, is a message."""
    s = line.strip()
    return s == "/?" or (len(s) > 1 and s[0] == "/" and s[1].isalpha())


def find(name: str) -> Command | None:
    for c in COMMANDS:
        if name == c.name or name in c.aliases:
            return c
    return None


def names() -> list[str]:
    return [c.name for c in COMMANDS]


def dispatch(repl, line: str) -> bool:
    """Run a command line; True when the session should end."""
    s = line.strip()
    name, _, arg = ("help" if s == "/?" else s[1:]).partition(" ")
    cmd = find(name)
    if cmd is None:
        near = difflib.get_close_matches(name, names(), n=1)
        hint = f" (did you mean /{near[0]}?)" if near else ""
        repl.screen.error(f"/{name}: unknown command{hint}; /help lists the commands")
        return False
    return bool(cmd.run(repl, arg.strip()))


# -- describing points ----------------------------------------------------------------------

def count(n: int, word: str) -> str:
    return f"{n} {word}{'s' * (n != 1)}"


def snippet(messages, width: int = 48) -> str:
    """The end of the last message, on one line."""
    for m in reversed(messages):
        if m["role"] != "system" and str(m["content"]).strip():
            text = " ".join(str(m["content"]).split())
            return '"' + ("…" + text[-width:] if len(text) > width else text) + '"'
    return "the start"


def describe(p: Point) -> str:
    n = p.exchanges
    if n == 0:
        return "the start" + (" (the system prompt)" if p.messages else "")
    return f"{count(len(p.tokens), 'token')}, {count(n, 'exchange')}, ending {snippet(p.messages)}"


def print_stack(repl) -> None:
    for i in range(len(repl.conv.stack), 0, -1):
        repl.screen.line(f"  {i:2d}. {describe(repl.conv.stack[i - 1])}")


# -- the handlers ---------------------------------------------------------------------------

def _help(repl, arg):
    if arg:
        cmd = find(arg.lstrip("/"))
        if cmd is None:
            repl.screen.error(f"/{arg.lstrip('/')}: unknown command; /help lists the commands")
            return
        repl.screen.line(f"usage: {cmd.usage}\n{cmd.details}")
        if cmd.aliases:
            repl.screen.line("also: " + ", ".join("/" + a for a in cmd.aliases))
        return
    width = max(len(c.usage) for c in COMMANDS) + 2
    lines = [f"  {c.usage:<{width}} {c.summary}" for c in COMMANDS]
    keys = [('"""', "starts and ends multi-line input (Alt-Enter also adds a line)"),
            ("Ctrl-C", "stops a reply; on an empty line, quits"), ("Ctrl-D", "quits"),
            ("Tab", "completes commands and /upload paths")]
    lines += [f"  {k:<{width}} {v}" for k, v in keys]
    repl.screen.line("commands (/help COMMAND explains one):\n" + "\n".join(lines))


def _stats(repl, arg):
    if repl.last is None:
        repl.screen.note("no reply yet")
        return
    s = repl.last
    computed = s.prompt_tokens - s.cached_tokens
    guesses = (f"  guesses    {s.draft_accepted} of {s.draft_n} right (greedy drafting, --draft-max)\n"
               if s.draft_n else "")
    repl.screen.line(
        f"last reply\n"
        f"  prompt     {s.prompt_tokens} tokens: {s.cached_tokens} reused from the cache, {computed} computed\n"
        f"  prefill    {s.prefill_s:.2f} s ({s.prefill_tok_s:.1f} tok/s)\n"
        f"  generated  {s.generated_tokens} tokens\n"
        f"  decode     {s.decode_s:.2f} s ({s.decode_tok_s:.1f} tok/s)\n"
        f"{guesses}"
        f"  ended by   {s.stop.words}\n"
        f"session: {repl.replies} repl{'ies' if repl.replies != 1 else 'y'}, {repl.generated} tokens generated; "
        f"model loaded in {repl.llm.load_s:.1f} s")


def _context(repl, arg):
    conv, n = repl.conv, repl.llm.n_ctx
    used = conv.tokens_used()
    ex = conv.state.exchanges
    lines = [f"{used} of {n} context tokens used ({n - used} left); {count(ex, 'exchange')}"]
    if conv.pending:
        waiting = used - len(conv.state.tokens)
        lines.append(f"of which {waiting} are uploads waiting for your next message")
    train = repl.llm.cfg.n_ctx_train
    if n < train:
        lines.append(f"the model was trained for {train}: restart with -c {train} (or -c 0) for all of it")
    repl.screen.line("\n".join(lines))


def _clear(repl, arg):
    repl.conv.clear()
    kept = " (the system prompt stays)" if repl.conv.start.messages else ""
    repl.screen.note(f"the conversation starts over{kept}")


def _undo(repl, arg):
    conv = repl.conv
    if conv.pending:
        name, _ = conv.pending.pop()
        repl.screen.note(f"removed the upload {name}")
        return
    p = conv.undo()
    if p is None:
        repl.screen.error("nothing to undo")
        return
    repl.screen.note(f"back to: {describe(p)}")


def _push(repl, arg):
    repl.conv.push()
    print_stack(repl)


def _pop(repl, arg):
    p = repl.conv.pop()
    if p is None:
        repl.screen.error("the stack is empty (/push saves a point)")
        return
    repl.screen.note(f"restored: {describe(p)}")
    print_stack(repl)


def _stack(repl, arg):
    if not repl.conv.stack:
        repl.screen.note("the stack is empty (/push saves a point)")
        return
    print_stack(repl)


def _forget(repl, arg):
    dropped = repl.conv.forget()
    if dropped is None:
        repl.screen.error("nothing to forget")
        return
    repl.screen.note(f"forgot the oldest exchange, ending {snippet(dropped)}; "
                     f"{count(repl.conv.tokens_used(), 'token')} used now")


def _dump(repl, arg):
    prompt = repl.conv.next_prefix()
    text = repl.conv.readable(prompt)
    if text and not text.endswith("\n"):
        text += "\n"
    if not arg:
        repl.screen.line(text.rstrip("\n") if text else "(the conversation is empty)")
        return
    try:
        with open(arg, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as e:
        repl.screen.error(f"{arg}: cannot write: {e.strerror or e}")
        return
    repl.screen.note(f"wrote {len(prompt)} tokens ({len(text)} characters) to {arg}")


def _upload(repl, arg):
    upload(repl, arg)


def _exit(repl, arg):
    return True


COMMANDS = [
    Command("help", "/help [COMMAND]", "list the commands, or explain one",
            "Without a name, a line on each command; with one (/help undo), what it does.", _help),
    Command("stats", "/stats", "speed and token counts of the last reply",
            "The last reply's prompt (how many of its tokens were reused from the cache and how\n"
            "many computed), the prefill time and speed (how fast the model reads), the tokens\n"
            "generated, the decode time and speed (how fast it writes), and what ended it.", _stats),
    Command("context", "/context", "how much of the context window is used",
            "Tokens the conversation takes, of the context size (-c), and what is left. When it\n"
            "runs out, /forget or /clear make room.", _context),
    Command("clear", "/clear", "start the conversation over",
            "Back to the start: the system prompt (-p) stays, everything after it goes, and the\n"
            "/push stack is emptied.", _clear),
    Command("undo", "/undo", "remove the last exchange",
            "Removes your last message and the model's reply (the model's cache is rewound with\n"
            "them); repeat to go further back. An upload not yet sent is removed first.", _undo),
    Command("push", "/push", "save this point of the conversation",
            "Puts the conversation as it is now on a stack; /pop comes back to it, whatever was\n"
            "said in between. /stack lists the saved points.", _push),
    Command("pop", "/pop", "go back to the last /push",
            "Restores the conversation saved by the last /push and takes it off the stack.", _pop),
    Command("stack", "/stack", "list the points saved by /push",
            "The saved points, the newest first: their size in tokens and how they end.", _stack),
    Command("forget", "/forget", "drop the oldest exchange to free context",
            "Removes the oldest message and its reply (the system prompt stays), to make room\n"
            "when the context is full. The rest is read again on the next turn. /undo removes\n"
            "the newest one instead.", _forget),
    Command("dump", "/dump [FILE]", "show the conversation as the model reads it",
            "The text of every token the model has read (the conversation, uploads waiting for\n"
            "your next message, the opening of the next turn), special tokens written out\n"
            "(<start_of_turn> ...); to the screen, or into FILE.", _dump),
    Command("upload", "/upload FILE", "add a text file to your next message",
            "Reads FILE (UTF-8 text) and puts it in front of your next message, so you can ask\n"
            "about it; it is read into the cache right away. In raw completion mode the file's\n"
            "text is added to the text as it is. Images need a vision model (--mmproj).", _upload),
    Command("exit", "/exit", "quit",
            "Ends the session, like Ctrl-D, or Ctrl-C at an empty prompt.", _exit, ("bye", "quit")),
]
