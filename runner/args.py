"""The command line: one parser shared by every mode, with llamafile 0.9's flag names.

Bad flags and values print one line (`gemma-runner: error: ...`) and exit with status 2.
Sampling defaults follow llamafile: temperature 0.8 in --cli and --server, 0 in the chat
REPL unless given.
"""
from __future__ import annotations

import argparse
import json
import math
import sys

from dataclasses import fields

from .engine import EngineConfig
from .sampling import SamplingParams, in_range, range_text

PROG = "gemma-runner"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not argparse's usage block
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _nonneg_int(s: str) -> int:
    v = int(s)
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {s}")
    return v


def _pos_int(s: str) -> int:
    v = int(s)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {s}")
    return v


def _pos_float(s: str) -> float:
    v = float(s)
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {s}")
    return v


def _port(s: str) -> int:
    v = int(s)
    if not 0 <= v <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 0 to 65535, got {s}")
    return v


def _checked(f):
    """The argparse type of a declared sampling option: its kind and its range (nan and
    inf are refused: the server refuses them too)."""
    integer = f.type.startswith("int")

    def check(s: str):
        v = int(s) if integer else float(s)
        if not in_range(f, v) or not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"expected a number {range_text(f)}, got {s}")
        return v
    check.__name__ = "integer" if integer else "number"
    return check


# argparse names a type function in its "invalid ... value" message: give them plain names
for _f, _name in ((_nonneg_int, "integer"), (_pos_int, "integer"), (_pos_float, "number"), (_port, "port")):
    _f.__name__ = _name


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG, add_help=True, allow_abbrev=False,
        formatter_class=lambda prog: argparse.RawDescriptionHelpFormatter(prog, max_help_position=34, width=96),
        description="Gemma 3 in one file. With no mode flag: a chat in the terminal.\n"
                    "--cli: complete a prompt and exit (for scripts). --server: a web chat and an\n"
                    "OpenAI-compatible API.",
        epilog="examples:\n"
               "  gemma-runner                                   chat in the terminal\n"
               "  gemma-runner -p 'You are terse.'               ... with a system prompt\n"
               "  gemma-runner --cli -p 'The sky is' -n 32 --temp 0\n"
               "  echo 'Once upon a time' | gemma-runner --cli -f - -n 64\n"
               "  gemma-runner --server --port 8080              browser chat + /v1 API\n"
               "  gemma-runner -m other.gguf --cli -p Hi         run another GGUF file\n"
               "\n"
               "in the chat: /help lists the commands (/stats /context /clear /undo /push /pop\n"
               "/stack /forget /dump /upload /exit); \"\"\" starts and ends multi-line input; Ctrl-C\n"
               "stops a reply; Ctrl-D quits.",
    )

    mode = p.add_argument_group("mode")
    m = mode.add_mutually_exclusive_group()
    m.add_argument("--cli", action="store_true", help="complete the prompt (-p, -f or stdin), print, exit")
    m.add_argument("--chat", action="store_true", help="chat in the terminal (the default)")
    m.add_argument("--server", action="store_true", help="serve the web page and the OpenAI-compatible API")
    mode.add_argument("--version", action="store_true", help="print the version and the embedded model, exit")

    model = p.add_argument_group("model")
    model.add_argument("-m", "--model", metavar="FILE", help="a GGUF file to run instead of the embedded weights")
    model.add_argument("--mmproj", metavar="FILE", help="vision projector GGUF (lets the model read images)")
    model.add_argument("-c", "--ctx-size", type=_nonneg_int, default=8192, metavar="N",
                       help="context size in tokens (default 8192; 0 = the model's trained maximum); "
                            "the server divides it among its -np slots, as llama-server does")
    model.add_argument("-t", "--threads", type=_pos_int, default=None, metavar="N",
                       help="CPU threads for the math (default: all cores)")
    model.add_argument("-b", "--batch-size", type=_pos_int, default=512, metavar="N",
                       help="prompt tokens computed in one pass (default 512)")
    model.add_argument("--draft-max", "--draft", type=_nonneg_int, default=8, metavar="N",
                       help="greedy decoding guesses up to N tokens ahead from a small vocabulary "
                            "and checks them in one pass (same text, faster; default 8; 0 = off)")
    model.add_argument("--context-shift", action="store_true",
                       help="when generation fills the context, drop the older half of it (after "
                            "--keep tokens) and go on, instead of stopping")
    model.add_argument("--keep", type=int, default=0, metavar="N",
                       help="tokens after BOS a context shift keeps (default 0; -1 = the whole prompt)")
    model.add_argument("-ngl", "--n-gpu-layers", "--gpu-layers", type=int, default=None, metavar="N",
                       help="accepted for compatibility; this build runs on the CPU")

    prompt = p.add_argument_group("prompt")
    prompt.add_argument("-p", "--prompt", metavar="TEXT",
                        help="the system prompt in the chat (in raw completion mode, the text's "
                             "start); the prompt itself in --cli")
    prompt.add_argument("-f", "--file", metavar="FILE",
                        help="read -p's text from FILE ('-' = standard input; one trailing newline "
                             "is dropped)")
    prompt.add_argument("-e", "--escape", action="store_true",
                        help="process escapes (\\n, \\t, \\\\, \\\", \\') in the prompt and -r")
    prompt.add_argument("--image", metavar="FILE", action="append", default=[],
                        help="an image for the prompt (needs --mmproj); repeatable")
    prompt.add_argument("--chat-template", metavar="NAME|TEMPLATE",
                        help="gemma (built in), chatml, llama3, or a Jinja chat template string "
                             "(default: the model file's; a model without one chats in raw completion "
                             "mode; --cli uses none unless given)")
    prompt.add_argument("--chat-template-file", metavar="FILE", help="read the Jinja chat template from FILE")
    prompt.add_argument("--no-display-prompt", "--silent-prompt", dest="no_display_prompt",
                        action="store_true", help="--cli: print only the completion, not the prompt")

    gen = p.add_argument_group("generation")
    gen.add_argument("-n", "--n-predict", type=int, default=-1, metavar="N",
                     help="tokens to generate (default -1: until the end of the text or the context; "
                          "a reply in raw completion mode: 256)")
    for f in fields(SamplingParams):             # one flag per declared sampling option
        meta = f.metadata
        if meta["flag"]:
            default = None if f.name == "temperature" else f.default     # its default depends on the mode
            gen.add_argument(*meta["flag"].split("/"), dest=f.name, type=_checked(f), default=default,
                             metavar="N" if f.type.startswith("int") else "X", help=meta["help"])
    gen.add_argument("-r", "--reverse-prompt", action="append", default=[], metavar="TEXT",
                     help="stop when the output contains TEXT; repeatable (in the chat's raw "
                          "completion mode TEXT stays, for you to write after)")
    gen.add_argument("--ignore-eos", action="store_true", help="keep generating past the end-of-text token")
    gen.add_argument("-j", "--json-schema", metavar="SCHEMA",
                     help="constrain the output to JSON this JSON Schema accepts ('{}': any JSON value); "
                          "in the chat, every reply")
    gen.add_argument("-jf", "--json-schema-file", metavar="FILE", help="the same, with the schema read from FILE")

    srv = p.add_argument_group("server")
    srv.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    srv.add_argument("--port", type=_port, default=8080, help="port (default 8080)")
    srv.add_argument("--nobrowser", action="store_true", help="do not open a browser tab")
    srv.add_argument("--embedding", "--embeddings", action="store_true",
                     help="accepted for compatibility: the embeddings API is always on")
    srv.add_argument("--pooling", choices=("none", "mean", "cls", "last"), default=None,
                     help="how embeddings pool the token states (default: the model file's, else mean)")
    srv.add_argument("--api-key", metavar="KEY", help="require 'Authorization: Bearer KEY' on the API")
    srv.add_argument("--allowed-hosts", metavar="NAME,...", action="append", default=[],
                     help="bound to a loopback address, the server answers only requests naming it "
                          "localhost, 127.0.0.1 or [::1] (against DNS rebinding); these Host names too "
                          "('.example.org' with its subdomains, '*' any)")
    srv.add_argument("-a", "--alias", metavar="NAME",
                     help="the model's id in the API (/v1/models and replies; default: from its name)")
    srv.add_argument("--cors-origins", default="localhost", metavar="ORIGINS",
                     help="pages from which other origins may call the API (CORS): 'localhost' (default: "
                          "pages served from a loopback origin), '*' any (llama-server's default; any web "
                          "site could then use the model), 'none', or a comma-separated list of origins "
                          "such as 'https://app.example.org,chrome-extension://ID'")
    srv.add_argument("-np", "--parallel", type=_pos_int, default=1, metavar="N",
                     help="requests generated at the same time (default 1); each slot holds "
                          "-c/N tokens of context (-c 8192 -np 4: 2048 each)")
    srv.add_argument("--timeout", type=_pos_float, default=10.0, metavar="S",
                     help="seconds a client may take to send a request's headers, and to pause "
                          "while sending its body (default 10; then 408 and the connection closes)")

    log = p.add_argument_group("logging")
    log.add_argument("--log-disable", action="store_true", help="print no logs or progress on stderr")
    log.add_argument("--verbose", action="store_true", help="print more detail on stderr")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = build_parser()
    args = p.parse_args(argv)
    if args.keep < -1:
        p.error(f"argument --keep: expected -1 or a number >= 0, got {args.keep}")
    if args.n_predict < -1:
        p.error(f"argument -n/--n-predict: expected -1 or a number >= 0, got {args.n_predict}")
    if args.prompt is not None and args.file is not None:
        p.error("-p and -f both give the prompt: use one of them")
    if args.chat_template is not None and args.chat_template_file is not None:
        p.error("--chat-template and --chat-template-file both give the template: use one of them")
    if args.image and not args.mmproj:
        p.error("--image needs --mmproj FILE (the vision projector)")
    args.mode = "server" if args.server else "cli" if args.cli else "chat"
    args.schema = _schema(p, args)
    return args


def _schema(p: argparse.ArgumentParser, args: argparse.Namespace):
    """The parsed and checked --json-schema / --json-schema-file, or None. Bad JSON or an
    unsupported keyword is a usage error (status 2), an unreadable file status 1."""
    from .structured import SchemaError, compile_schema
    if args.json_schema is not None and args.json_schema_file is not None:
        p.error("--json-schema and --json-schema-file both give the schema: use one of them")
    if args.json_schema is not None:
        flag, text = "--json-schema", args.json_schema
    elif args.json_schema_file is not None:
        flag = "--json-schema-file"
        try:
            text = read_text(args.json_schema_file)
        except UserError as e:
            p.exit(e.status, f"{p.prog}: error: {flag}: {e}\n")
    else:
        return None
    try:
        schema = json.loads(text)
        compile_schema(schema)
    except json.JSONDecodeError as e:
        p.error(f"{flag}: not valid JSON: {e}")
    except SchemaError as e:
        p.error(f"{flag}: {e}")
    return schema


def sampling_from_args(args: argparse.Namespace) -> SamplingParams:
    """Sampling settings from the flags; temperature defaults by mode, as in llamafile."""
    given = {f.name: getattr(args, f.name) for f in fields(SamplingParams) if f.metadata["flag"]}
    if given["temperature"] is None:
        given["temperature"] = 0.0 if args.mode == "chat" else 0.8
    return SamplingParams(**given)


def engine_config(args: argparse.Namespace) -> EngineConfig:
    return EngineConfig(n_ctx=args.ctx_size, n_batch=args.batch_size, draft_max=args.draft_max,
                        context_shift=args.context_shift, n_keep=args.keep,
                        n_seq=args.parallel if args.mode == "server" else 1)


def unescape(text: str) -> str:
    """-e: the escapes llama.cpp understands in a prompt."""
    out, i = [], 0
    table = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'", "0": "\0", "a": "\a",
             "b": "\b", "f": "\f", "v": "\v"}
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text) and text[i + 1] in table:
            out.append(table[text[i + 1]])
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


class UserError(Exception):
    """A mistake in the flags or their inputs: one line for the user, and the exit status."""

    def __init__(self, message: str, status: int = 1):
        super().__init__(message)
        self.status = status


MAX_PROMPT_BYTES = 16 << 20     # what -f reads: 16 MiB, far more text than any context holds


def read_text(path: str) -> str:
    """A prompt or template file's text, at most MAX_PROMPT_BYTES (why: -f /dev/zero, or
    a wrong file, would otherwise fill the memory)."""
    name = "standard input" if path == "-" else path
    try:
        if path == "-":
            data = sys.stdin.buffer.read(MAX_PROMPT_BYTES + 1)
        else:
            with open(path, "rb") as f:
                data = f.read(MAX_PROMPT_BYTES + 1)
    except FileNotFoundError:
        raise UserError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"{name}: is a directory, not a file") from None
    except OSError as e:
        raise UserError(f"{name}: cannot read: {e.strerror or e}") from None
    if len(data) > MAX_PROMPT_BYTES:
        raise UserError(f"{name}: longer than {MAX_PROMPT_BYTES >> 20} MiB, the most read from a file "
                        f"(far more text than any context holds)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{name}: not UTF-8 text (byte {e.start})") from None


def read_prompt(args: argparse.Namespace, stdin: bool = False) -> str | None:
    """The prompt from -p TEXT, -f FILE or -f - (one trailing newline of a file dropped,
    as llama.cpp does), with -e escapes applied. `stdin`: with neither flag, read a piped
    standard input. None when there is no prompt."""
    if args.prompt is not None:
        text = args.prompt
    elif args.file is not None or (stdin and sys.stdin is not None and not sys.stdin.isatty()):
        text = read_text(args.file if args.file is not None else "-")
        if text.endswith("\n"):
            text = text[:-1]
    else:
        return None
    return unescape(text) if args.escape else text


def stop_strings(args: argparse.Namespace) -> list[str]:
    """-r stop strings (with -e escapes applied, as llama.cpp does)."""
    return [unescape(r) if args.escape else r for r in args.reverse_prompt]


def die(message: str, status: int = 1) -> int:
    """One line on stderr; the exit status to return."""
    print(f"{PROG}: {message}", file=sys.stderr)
    return status
