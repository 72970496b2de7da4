"""The command line: one parser shared by every mode, with llamafile 0.9's flag names.

Bad flags and values print one line (`gemma-runner: error: ...`) and exit with status 2.
Sampling defaults follow llamafile: temperature 0.8 in --cli and --server, 0 in the chat
REPL unless given.
"""
from __future__ import annotations

import argparse
import sys

from .sampling import SamplingParams

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


def _nonneg_float(s: str) -> float:
    v = float(s)
    if not v >= 0:                              # also refuses nan
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {s}")
    return v


def _prob(s: str) -> float:
    v = float(s)
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {s}")
    return v


def _port(s: str) -> int:
    v = int(s)
    if not 0 <= v <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 0 to 65535, got {s}")
    return v


# argparse names a type function in its "invalid ... value" message: give them plain names
for _f, _name in ((_nonneg_int, "integer"), (_pos_int, "integer"), (_nonneg_float, "number"),
                  (_prob, "probability"), (_port, "port")):
    _f.__name__ = _name


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG, add_help=True, allow_abbrev=False,
        formatter_class=lambda prog: argparse.RawDescriptionHelpFormatter(prog, max_help_position=34, width=96),
        description="Gemma 3 in one file. With no mode flag: a chat in the terminal. "
                    "--cli: complete a prompt and exit (for scripts). --server: a web chat "
                    "and an OpenAI-compatible API.",
        epilog="examples:\n"
               "  gemma-runner                                   chat in the terminal\n"
               "  gemma-runner -p 'You are terse.'               ... with a system prompt\n"
               "  gemma-runner --cli -p 'The sky is' -n 32 --temp 0\n"
               "  echo 'Once upon a time' | gemma-runner --cli -f - -n 64\n"
               "  gemma-runner --server --port 8080              browser chat + /v1 API\n"
               "  gemma-runner -m other.gguf --cli -p Hi         run another GGUF file",
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
                       help="context size in tokens (default 8192; 0 = the model's trained maximum)")
    model.add_argument("-t", "--threads", type=_pos_int, default=None, metavar="N",
                       help="CPU threads for the math (default: all cores)")
    model.add_argument("-ngl", "--n-gpu-layers", "--gpu-layers", type=int, default=None, metavar="N",
                       help="accepted for compatibility; this build runs on the CPU")

    prompt = p.add_argument_group("prompt")
    prompt.add_argument("-p", "--prompt", metavar="TEXT",
                        help="the system prompt in the chat; the prompt itself in --cli")
    prompt.add_argument("-f", "--file", metavar="FILE", help="read the prompt from FILE ('-' = standard input)")
    prompt.add_argument("-e", "--escape", action="store_true",
                        help="process escapes (\\n, \\t, \\\\, \\\", \\') in the prompt")
    prompt.add_argument("--image", metavar="FILE", action="append", default=[],
                        help="an image for the prompt (needs --mmproj); repeatable")
    prompt.add_argument("--chat-template", metavar="NAME|TEMPLATE",
                        help="'gemma' (built in) or a Jinja chat template string")
    prompt.add_argument("--no-display-prompt", "--silent-prompt", dest="no_display_prompt",
                        action="store_true", help="--cli: print only the completion, not the prompt")

    gen = p.add_argument_group("generation")
    gen.add_argument("-n", "--n-predict", type=int, default=-1, metavar="N",
                     help="tokens to generate (default -1: until the end of the text or context)")
    gen.add_argument("--temp", type=_nonneg_float, default=None, metavar="T",
                     help="temperature; 0 = greedy (default 0.8, or 0 in the chat)")
    gen.add_argument("--top-k", type=_nonneg_int, default=40, metavar="K", help="top-k sampling (default 40; 0 = off)")
    gen.add_argument("--top-p", type=_prob, default=0.95, metavar="P", help="top-p sampling (default 0.95; 1 = off)")
    gen.add_argument("--min-p", type=_prob, default=0.05, metavar="P", help="min-p sampling (default 0.05; 0 = off)")
    gen.add_argument("--repeat-penalty", type=_nonneg_float, default=1.0, metavar="X",
                     help="penalize repeated tokens (default 1.0 = off)")
    gen.add_argument("--repeat-last-n", type=int, default=64, metavar="N",
                     help="tokens the penalties look back over (default 64; -1 = all)")
    gen.add_argument("--presence-penalty", type=float, default=0.0, metavar="X", help="(default 0)")
    gen.add_argument("--frequency-penalty", type=float, default=0.0, metavar="X", help="(default 0)")
    gen.add_argument("-s", "--seed", type=int, default=None, metavar="N", help="random seed (default: random)")
    gen.add_argument("-r", "--reverse-prompt", action="append", default=[], metavar="TEXT",
                     help="stop when the output contains TEXT; repeatable")
    gen.add_argument("--ignore-eos", action="store_true", help="keep generating past the end-of-text token")

    srv = p.add_argument_group("server")
    srv.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    srv.add_argument("--port", type=_port, default=8080, help="port (default 8080)")
    srv.add_argument("--nobrowser", action="store_true", help="do not open a browser tab")
    srv.add_argument("--api-key", metavar="KEY", help="require 'Authorization: Bearer KEY' on the API")
    srv.add_argument("-np", "--parallel", type=_pos_int, default=1, metavar="N",
                     help="requests generated at the same time (default 1)")

    log = p.add_argument_group("logging")
    log.add_argument("--log-disable", action="store_true", help="print no logs or progress on stderr")
    log.add_argument("--verbose", action="store_true", help="print more detail on stderr")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = build_parser()
    args = p.parse_args(argv)
    if args.n_predict < -1:
        p.error(f"argument -n/--n-predict: expected -1 or a number >= 0, got {args.n_predict}")
    if args.repeat_last_n < -1:
        p.error(f"argument --repeat-last-n: expected -1 or a number >= 0, got {args.repeat_last_n}")
    args.mode = "server" if args.server else "cli" if args.cli else "chat"
    return args


def sampling_from_args(args: argparse.Namespace) -> SamplingParams:
    """Sampling settings from the flags; temperature defaults by mode, as in llamafile."""
    temp = args.temp if args.temp is not None else (0.0 if args.mode == "chat" else 0.8)
    return SamplingParams(temperature=temp, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                          repeat_penalty=args.repeat_penalty, repeat_last_n=args.repeat_last_n,
                          presence_penalty=args.presence_penalty, frequency_penalty=args.frequency_penalty,
                          seed=args.seed)


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


def die(message: str, status: int = 1) -> int:
    """One line on stderr; the exit status to return."""
    print(f"{PROG}: {message}", file=sys.stderr)
    return status
