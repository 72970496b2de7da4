"""The chat REPL, driven as a person would drive it: in a real terminal (tmux: type keys,
read the screen), and through a pipe; plus the conversation state underneath it.

References: the library (`llm.complete`, `llm.chat`) gives each reply the REPL must show;
/dump shows the exact text the model read; /stats shows how much the cache saved."""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import jsonschema
import pytest

from runner.modes.conversation import Conversation, sync_cache, warm_cache
from runner.modes.terminal import open_quote, unquote
from conftest import cold


@pytest.fixture(scope="module", autouse=True)
def exact_mode():
    """The exact mode (float32 activations) for this module: its tests compare texts
    computed along different paths (the REPL's process and the library, a prompt cached
    or not), equal to the last bit only there. In the default mode the activations are
    rounded to 8 bits, so a last-bit difference between paths can move a code by a step
    and a greedy near-tie the other way (as llama.cpp's results depend on its batch
    size); the kernels read the variable at every product and child processes inherit it."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GEMMA_RUNNER_KERNELS", "float32")
        yield


ROOT = Path(__file__).resolve().parent.parent


def norm(text: str) -> str:
    """Text as a terminal shows it, for comparing: whitespace runs as one space."""
    return " ".join(text.split())


# -- a terminal --------------------------------------------------------------------------------

class Terminal:
    """`python -m runner ARGS` in a tmux pane of its own server."""

    def __init__(self, args: list[str], home: Path, width: int = 120, height: int = 50):
        if shutil.which("tmux") is None:
            pytest.fail("tmux is needed for the REPL tests")
        self.sock = f"gemma-test-{uuid.uuid4().hex[:10]}"
        conf = home / "tmux.conf"
        conf.write_text("set -g history-limit 50000\nset -g status off\n")
        cmd = shlex.join([sys.executable, "-m", "runner", *args]) + '; echo "[exit $?]"; sleep 600'
        self.tmux("-f", str(conf), "new-session", "-d", "-x", str(width), "-y", str(height), "-c", str(ROOT),
                  "-e", f"HOME={home}", "-e", f"XDG_STATE_HOME={home / 'state'}", "-e", "PYTHONIOENCODING=utf-8",
                  cmd)
        self.socket = self.tmux("display-message", "-p", "#{socket_path}").strip()

    def tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.sock, *args], check=True, capture_output=True,
                              text=True).stdout

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-J", "-S", "-", "-E", "-", "-t", "0")

    def type(self, text: str, enter: bool = True) -> None:
        self.tmux("send-keys", "-t", "0", "-l", text)
        if enter:
            self.key("Enter")

    def key(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", "0", *keys)

    def wait(self, check, timeout: float = 180, what: str = "") -> str:
        """Poll the screen until check(screen) is true (a string: it appears)."""
        pred = (lambda s: check in s) if isinstance(check, str) else check
        end = time.monotonic() + timeout
        while True:
            s = self.screen()
            if pred(s):
                return s
            if time.monotonic() > end:
                pytest.fail(f"timed out waiting for {what or check!r}; the screen:\n{s}")
            time.sleep(0.2)

    def prompts(self, s: str | None = None) -> int:
        return sum(1 for line in (s if s is not None else self.screen()).splitlines() if line.startswith(">>>"))

    def idle(self, s: str) -> bool:
        """The program waits at an empty prompt."""
        return last_line(s) == ">>>"

    def run(self, text: str, timeout: float = 180) -> str:
        """Type a line (Enter), wait for the next empty prompt; what was printed between."""
        n = self.prompts()
        self.type(text)
        s = self.wait(lambda s: self.prompts(s) > n and self.idle(s), timeout, f"the prompt after {text!r}")
        return output_after(s, n)

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.sock, "kill-server"], capture_output=True)
        if self.socket and os.path.exists(self.socket):
            os.unlink(self.socket)


def last_line(screen: str) -> str:
    lines = screen.rstrip("\n").splitlines()
    return lines[-1].rstrip() if lines else ""


def output_after(screen: str, n: int) -> str:
    """The lines after the n-th prompt line (the one typed) up to the next prompt."""
    lines = screen.splitlines()
    at = [i for i, line in enumerate(lines) if line.startswith(">>>")]
    start = at[n - 1] + 1 if n >= 1 else 0
    while start < len(lines) and lines[start].startswith("..."):   # the rest of a multi-line input
        start += 1
    end = at[n] if n < len(at) else len(lines)
    return "\n".join(lines[start:end])


@pytest.fixture
def terminal(tmp_path):
    made = []

    def start(*args: str) -> Terminal:
        t = Terminal(list(args), tmp_path)
        made.append(t)
        t.wait(lambda s: t.idle(s), 120, "the first prompt")
        return t

    yield start
    for t in made:
        t.close()


def generated_ids(llm, ids: list[int], n: int) -> list[int]:
    """Greedy continuation of exact token ids (the REPL's reference)."""
    from runner.engine import Prompt, SamplingParams
    return [t.id for t in llm.engine.generate(Prompt(list(ids)), SamplingParams(temperature=0), max_tokens=n)
            if t.id >= 0]


# -- the REPL in a terminal ----------------------------------------------------------------------

def test_raw_session_every_command(terminal, llm, tmp_path):
    t = terminal("-c", "2048", "-n", "8", "--log-disable")
    banner = t.screen()
    assert "raw completion mode" in banner and llm.name in banner and "context 2048 tokens" in banner
    assert "/upload" in banner and "/forget" in banner

    # a reply is what the library gives for the same text
    p1 = "The capital of France is"
    ids1 = llm.tokenize(p1)
    out1 = generated_ids(llm, ids1, 8)
    assert norm(t.run(p1)) == norm(llm.detokenize(out1))

    # multi-line input: the quotes go, the lines stay; the text goes on after the reply
    n = t.prompts()
    t.type('"""')
    t.type("Roses are red,")
    t.type('violets are"""')
    s = t.wait(lambda s: t.prompts(s) > n and t.idle(s))
    ids2 = ids1 + out1 + llm.tokenize("\nRoses are red,\nviolets are", add_bos=False)
    out2 = generated_ids(llm, ids2, 8)
    assert norm(output_after(s, n)) == norm(llm.detokenize(out2))

    # the second turn computed only its new text
    stats = t.run("/stats")
    m = re.search(r"prompt\s+(\d+) tokens: (\d+) reused from the cache, (\d+) computed", stats)
    assert m, stats
    assert int(m.group(1)) == len(ids2) and int(m.group(2)) >= len(ids1) + len(out1) - 1
    assert int(m.group(3)) <= len(ids2) - len(ids1) - len(out1) + 1
    assert "ended by   the length limit" in stats

    dump1 = tmp_path / "dump1.txt"
    t.run(f"/dump {dump1}")
    text2 = "<bos>" + p1 + llm.detokenize(out1) + "\nRoses are red,\nviolets are" + llm.detokenize(out2)
    assert dump1.read_text().startswith(text2)
    assert norm(t.run("/dump")) == norm(dump1.read_text())

    # Tab completes a command, then a path after /upload
    n = t.prompts()
    t.type("/cont", enter=False)
    t.key("Tab")
    t.wait(lambda s: last_line(s) == ">>> /context", what="/context completed")
    t.key("Enter")
    s = t.wait(lambda s: t.prompts(s) > n and t.idle(s))
    assert re.search(r"\d+ of 2048 context tokens used \(\d+ left\); 2 exchanges", output_after(s, n))
    notes = tmp_path / "notes-for-the-model.txt"
    notes.write_text("Apples are red. Bananas are yellow.\n")
    t.type(f"/upload {tmp_path}/notes-for", enter=False)
    t.key("Tab")
    t.wait(lambda s: last_line(s) == f">>> /upload {notes}", what="the path completed")
    n = t.prompts()
    t.key("Enter")
    s = t.wait(lambda s: t.prompts(s) > n and t.idle(s))
    size = len(llm.tokenize(notes.read_text(), add_bos=False))
    assert f"uploaded {notes.name} ({size} tokens)" in output_after(s, n)
    t.run("")                                       # raw mode: Enter goes on, the upload with it
    assert "Apples are red. Bananas are yellow." in t.run("/dump")
    assert "back to: " in t.run("/undo")
    assert "Apples" not in t.run("/dump")
    assert norm(t.run("/dump")) == norm(dump1.read_text())

    # /push, a turn, /pop: back to the same text
    assert re.search(r"1\. \d+ tokens, 2 exchanges", t.run("/push"))
    t.run("One, two,")
    assert "1. " in t.run("/stack")
    assert "restored: " in t.run("/pop")
    assert "the stack is empty" in t.run("/stack")
    dump2 = tmp_path / "dump2.txt"
    t.run(f"/dump {dump2}")
    assert dump2.read_text() == dump1.read_text()

    # unknown commands: a hint, the chat intact
    assert "/frobnicate: unknown command" in t.run("/frobnicate")
    assert "did you mean /forget?" in t.run("/forgte")
    assert "usage: /undo" in t.run("/help undo")
    helped = t.run("/help")
    assert all(f"/{c}" in helped for c in ("stats", "context", "clear", "undo", "push", "pop", "stack",
                                          "forget", "dump", "upload", "exit"))
    image = tmp_path / "photo.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    assert "--mmproj" in t.run(f"/upload {image}")
    assert "no such file" in t.run(f"/upload {tmp_path}/missing.txt")
    t.run(f"/dump {dump2}")
    assert dump2.read_text() == dump1.read_text()

    # /forget drops the oldest exchange; /clear everything
    assert "forgot the oldest exchange" in t.run("/forget")
    assert t.run("/dump").startswith("<bos>Roses are red,\nviolets are")
    assert "starts over" in t.run("/clear")
    assert t.run("/dump").strip() == "<bos>"
    assert "nothing to undo" in t.run("/undo")

    t.key("C-d")                                    # Ctrl-D quits
    t.wait("[exit 0]")


def test_ctrl_c_stops_a_reply_and_the_chat_goes_on(terminal, llm, tmp_path):
    t = terminal("-n", "300", "--log-disable")
    p = "Once upon a time"
    ref = llm.detokenize(generated_ids(llm, llm.tokenize(p), 10))
    n = t.prompts()
    t.type(p)
    t.wait(lambda s: len(norm(output_after(s, n)).split()) >= 3, what="the reply to start")
    t.key("C-c")
    s = t.wait(lambda s: t.prompts(s) > n and t.idle(s), what="the prompt after Ctrl-C")
    partial = output_after(s, n)
    assert "[stopped]" in partial
    partial = partial.replace("[stopped]", "")
    kept = t.run("/dump")
    assert norm(kept).startswith(norm("<bos>" + p + partial))       # the partial reply stays
    assert norm(ref).startswith(norm(partial)) or norm(partial).startswith(norm(ref))
    assert "Ctrl-C" in t.run("/stats")

    # another question after the interruption: the cache gave back exactly what a fresh
    # start gives (the same question, after /undo, streams the reference again)
    t.run("/undo")
    n = t.prompts()
    t.type(p)
    s = t.wait(lambda s: len(norm(output_after(s, n))) >= len(norm(ref)), what="the reply again")
    t.key("C-c")
    t.wait(lambda s: t.prompts(s) > n and t.idle(s))
    assert norm(output_after(s, n)).startswith(norm(ref))

    n = t.prompts()
    t.type("and then", enter=False)
    t.key("C-c")                                    # Ctrl-C with text clears the line ...
    t.wait(lambda s: t.idle(s), what="the line cleared")
    t.key("C-c")                                    # ... and on an empty line quits
    t.wait("[exit 0]")


def test_chat_session_with_a_system_prompt(terminal, llm):
    system = "You are terse."
    t = terminal("--chat-template", "gemma", "-p", system, "-n", "10", "--log-disable")
    banner = t.screen()
    assert "Gemma chat format" in banner and "system prompt:" in banner and "raw completion" not in banner
    q1 = "Name a fruit."
    msgs = [{"role": "system", "content": system}, {"role": "user", "content": q1}]
    r1 = cold(llm).chat(msgs, max_tokens=10, temperature=0)
    assert norm(t.run(q1)) == norm(r1)
    first = len(llm.chat_prompt(msgs))
    t.run("Another one?")
    m = re.search(r"prompt\s+(\d+) tokens: (\d+) reused", t.run("/stats"))
    assert m and int(m.group(2)) >= first
    dump = t.run("/dump")
    assert dump.startswith(f"<bos><start_of_turn>user\n{system}\n\n{q1}<end_of_turn>\n<start_of_turn>model\n")
    assert "<start_of_turn>user\nAnother one?<end_of_turn>" in dump
    t.type("/exit")
    t.wait("[exit 0]")


# -- the REPL through a pipe ---------------------------------------------------------------------

def piped(args: list[str], lines: str, home: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "HOME": str(home), "PYTHONIOENCODING": "utf-8"}
    return subprocess.run([sys.executable, "-m", "runner", *args], cwd=ROOT, env=env, input=lines,
                          capture_output=True, text=True, timeout=timeout)


def test_piped_session_and_a_full_context(llm, tmp_path):
    """Without a terminal the REPL reads lines (no prompt); a full context is said, the
    next message makes room by dropping the oldest exchange (said too), a message too
    long on its own is refused with what to do, and the chat goes on."""
    long = " ".join(["word"] * 40)
    p = piped(["-c", "24", "--log-disable"],
              f"Hi there\nMore words that no longer fit in the context\n{long}\n/forget\n/context\n/exit\n",
              tmp_path)
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr
    err = p.stderr.splitlines()
    assert err[0].startswith("the context is full: the reply was cut short")
    assert "[the context is full: dropped the oldest exchange (1); the system prompt stays]" in p.stdout
    assert err[1].startswith("the context is full: the reply was cut short")       # the second reply
    assert err[2].startswith("the context is full: this message needs") and "/forget" in err[2]
    assert "forgot the oldest exchange" in p.stdout
    assert re.search(r"\b1 of 24 context tokens used", p.stdout)
    reply = llm.detokenize(generated_ids(llm, llm.tokenize("Hi there"), 16))   # it ran on to the end
    assert norm(reply) in norm(p.stdout)


def test_a_chat_three_times_longer_than_the_context_keeps_answering(llm, tmp_path):
    """-c 512 and a conversation of ~1500 tokens: every turn is answered, the oldest
    exchanges are dropped with a notice, and the system prompt is still what the model
    reads first (/dump)."""
    system = "SYSTEM NOTE: the notes below are a ship's log."
    turns = [f"Entry {i}: " + " ".join(["the river rose and the village slept"] * 12) for i in range(16)]
    lines = "\n".join(turns + ["/dump", "/exit"]) + "\n"
    p = piped(["-c", "512", "-n", "24", "-p", system, "--chat-template", "gemma", "--log-disable"], lines,
              tmp_path, timeout=900)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    assert sum(len(llm.tokenize(t)) + 24 for t in turns) > 3 * 512        # with the replies
    assert p.stdout.count("[the context is full: dropped the oldest exchange") >= 3
    assert "this message needs" not in p.stderr
    dump = p.stdout[p.stdout.rindex("<bos>"):]
    assert dump.startswith(f"<bos><start_of_turn>user\n{system}\n\nEntry ")  # the system prompt stays first
    assert "Entry 15" in dump and "Entry 0:" not in dump                   # the newest kept, the oldest gone


def test_raw_mode_reverse_prompt_keeps_the_stop_string(llm, tmp_path):
    """-r in raw completion mode (llama.cpp's reverse prompt): the reply stops at the
    string, which stays in the text, and the next input follows it on the same line."""
    start = "A chat.\nUser: Hi!\nBot: Hello! How can I help?\nUser:"
    q = "What is the capital of France?"
    want = cold(llm).complete(start + " " + q, max_tokens=24, temperature=0, stop=["User:"])
    assert llm.stats.finish_reason == "stop"
    p = piped(["-p", start, "-e", "-r", "User:", "-n", "24", "--log-disable"], q + "\n/dump\n", tmp_path)
    assert p.returncode == 0, p.stderr
    assert f"<bos>{start} {q}{want}User: " in p.stdout


def test_json_schema_makes_every_reply_json(llm, tmp_path):
    """--json-schema in the chat: each reply is JSON the schema accepts (the first one as
    llm.chat gives it), and the conversation goes on."""
    schema = {"type": "object", "properties": {"animal": {"type": "string", "maxLength": 16},
                                               "legs": {"type": "integer", "minimum": 0, "maximum": 8}},
              "required": ["animal", "legs"], "additionalProperties": False}
    q = "Describe a cat."
    want = cold(llm).chat([{"role": "user", "content": q}], max_tokens=100, temperature=0, json_schema=schema)
    p = piped(["--chat-template", "gemma", "-j", json.dumps(schema), "-n", "100", "--log-disable"],
              f"{q}\nAnd a spider?\n", tmp_path)
    assert p.returncode == 0, p.stderr
    assert "every reply is JSON" in p.stdout
    replies, dec, at = [], json.JSONDecoder(), p.stdout.find("{")
    while at >= 0:
        value, end = dec.raw_decode(p.stdout, at)
        replies.append((p.stdout[at:end], value))
        at = p.stdout.find("{", end)
    assert len(replies) == 2 and replies[0][0] == want
    for _, value in replies:
        jsonschema.validate(value, schema)


def test_bad_system_prompt_file_and_template(tmp_path):
    p = piped(["-f", str(tmp_path / "missing.txt")], "", tmp_path)
    assert p.returncode == 1 and p.stderr.strip().endswith("missing.txt: no such file")
    p = piped(["--chat-template", "{% for %}", "--log-disable"], "", tmp_path)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "--chat-template" in p.stderr


# -- the conversation underneath -----------------------------------------------------------------

def fake_reply(conv, llm, turn, text):
    conv.reply(turn, llm.tokenize(text, add_bos=False), text)


def test_raw_turn_keeps_the_generated_ids(llm):
    conv = Conversation(llm, None)
    turn = conv.prompt("The capital of France is")
    assert list(turn.tokens) == llm.tokenize("The capital of France is")
    ids = generated_ids(llm, turn.tokens, 8)
    conv.reply(turn, ids, llm.detokenize(ids))
    assert list(conv.state.tokens) == list(turn.tokens) + ids
    nxt = conv.prompt("And Spain's?")
    assert list(nxt.tokens) == list(conv.state.tokens) + llm.tokenize("\nAnd Spain's?", add_bos=False)


def test_chat_turn_matches_the_chat_format(llm):
    conv = Conversation(llm, "gemma", system="Be brief.")
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    turn = conv.prompt("Hi")
    assert turn.tokens == tuple(llm.chat_prompt(msgs).tokens)
    ids = llm.tokenize("Hello there!", add_bos=False)
    conv.reply(turn, ids, "Hello there!")
    eot = llm.tokenize("<end_of_turn>\n", add_bos=False)
    assert list(conv.state.tokens) == list(turn.tokens) + ids + eot
    # a reply cut short in its whitespace keeps the ids that still spell it
    turn2 = conv.prompt("Again")
    ids2 = llm.tokenize("Yes.\n\n", add_bos=False)
    conv.reply(turn2, ids2, "Yes.\n\n")
    assert list(conv.state.tokens)[:len(turn2.tokens) + 1] == list(turn2.tokens) + ids2[:1]
    assert llm.detokenize(conv.state.tokens).endswith("<start_of_turn>model\nYes.<end_of_turn>\n")


def test_undo_push_pop_forget_and_the_cache(llm):
    conv = Conversation(llm, "gemma", system="S.")
    points = [conv.state]
    for q in ("one", "two", "three"):
        fake_reply(conv, llm, conv.prompt(q), q.upper())
        points.append(conv.state)
    conv.push()
    warm_cache(llm.engine, conv.next_prefix())
    assert conv.state.exchanges == 3

    assert conv.undo() is points[2]
    sync_cache(llm.engine, conv.state.prompt())
    assert llm.engine.ids == list(conv.state.tokens)[:len(llm.engine.ids)]    # rewound with it
    assert conv.pop() is points[3] and conv.stack == []

    dropped = conv.forget()
    assert [m["content"] for m in dropped] == ["one", "ONE"]
    assert conv.state.messages == points[3].messages[:1] + points[3].messages[3:]
    assert conv.state.text == conv.render(conv.state.messages, False)
    assert "one" not in conv.state.text and conv.state.text.startswith("<bos><start_of_turn>user\nS.\n\ntwo")
    assert conv.state.exchanges == 2
    assert conv.undo().messages == conv.start.messages + points[2].messages[3:]
    conv.forget()
    assert conv.state is conv.start and conv.forget() is None and conv.undo() is None


def test_pending_upload_goes_with_the_next_message(llm):
    conv = Conversation(llm, "gemma")
    conv.pending.append(("a.txt", "FILE TEXT"))
    turn = conv.prompt("What is it?")
    assert turn.messages[-1]["content"] == "FILE TEXT\n\nWhat is it?"
    ahead = conv.next_prefix()
    assert list(turn.tokens[:len(ahead) - 1]) == ahead.tokens[:-1]     # computed ahead, reused by the turn
    raw = Conversation(llm, None, system="Notes:")
    raw.pending.append(("a.txt", "text"))
    assert raw.prompt("").text == "<bos>Notes:\ntext"


def test_raw_text_joins_inputs_on_new_lines_or_after_a_stop_string(llm):
    conv = Conversation(llm, None, system="Log:", stops=("User:",))
    fake_reply(conv, llm, conv.prompt("first"), " line")
    fake_reply(conv, llm, conv.prompt("second"), "\nUser:")
    assert conv.prompt("third").text == "<bos>Log:\nfirst line\nsecond\nUser: third"
    fake_reply(conv, llm, conv.prompt(""), " goes on")          # Enter: the text goes on
    assert conv.state.text.endswith("User: goes on")


def test_multiline_quotes():
    assert open_quote('"""') and open_quote('"""\nabc') and not open_quote('"""\nabc\n"""')
    assert not open_quote('"""abc"""') and not open_quote("plain")
    assert unquote('"""\nline one\nline two\n"""') == "line one\nline two"
    assert unquote('"""one line"""') == "one line" and unquote(" plain ") == " plain "
