"""`gemma-runner` / `python -m runner`: parse the flags, load the model, run one mode."""
from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

from . import __version__
from .args import PROG, UserError, die, parse_args

# where `scripts/setup.sh` puts the default model, for running from a checkout
DEV_MODEL = Path(__file__).resolve().parent.parent / "models" / "gemma-3-270m-q4_k_m.gguf"


def log(args, message: str) -> None:
    if not args.log_disable:
        print(message, file=sys.stderr, flush=True)


def embedded():
    """The payload of this executable when it is a packed runner (None otherwise)."""
    if not getattr(sys, "frozen", False):
        return None
    from .bundle import find_embedded
    return find_embedded(sys.executable)


def model_source(args) -> tuple[str, int, int | None] | None:
    """(path, offset, length) of the GGUF to run: -m FILE, else the weights embedded in
    this executable, else (running from a checkout) the default model in models/."""
    if args.model:
        return args.model, 0, None
    emb = getattr(args, "embedded", None)
    if emb is not None and emb.region("model"):
        return emb.region("model")
    if not getattr(sys, "frozen", False) and DEV_MODEL.exists():
        return str(DEV_MODEL), 0, None
    return None


def open_model(args):
    """The GGUF to run, opened (its header checked: fast), or GGUFError."""
    from .gguf import GGUFError, GGUFFile
    src = model_source(args)
    if src is None:
        raise GGUFError("this runner has no embedded model: pass -m FILE.gguf")
    if not os.path.exists(src[0]):
        raise GGUFError(f"{src[0]}: no such file")
    return GGUFFile(*src)


def chat_format(args, g):
    """The chat template, resolved once for every mode: --chat-template, else the model
    file's (a warning if it does not compile), else none. ChatError for a bad flag."""
    from .args import read_text
    from .chat import resolve_template
    requested = args.chat_template
    if args.chat_template_file is not None:
        requested = read_text(args.chat_template_file)
        if not requested.strip():
            raise UserError(f"{args.chat_template_file}: the chat template file is empty", 2)
    fmt = resolve_template(requested, g.get("tokenizer.chat_template"))
    if fmt.warning:
        log(args, f"{PROG}: {fmt.warning}")
    return fmt


def load_model(args, g=None, chat=None):
    """The model ready to generate: -m / embedded weights, --mmproj / an embedded one."""
    from .args import engine_config
    from .llm import LLM
    g = g or open_model(args)
    mmproj = args.mmproj
    emb = getattr(args, "embedded", None)
    if mmproj is None and args.model is None and emb is not None and emb.region("mmproj"):
        from .gguf import GGUFFile
        mmproj = GGUFFile(*emb.region("mmproj"))
    log(args, f"loading {os.path.basename(g.path) if not emb or args.model else emb.names['model']} ...")
    return LLM(g, engine_config(args), threads=args.threads, mmproj=mmproj, chat_format=chat)


def model_name(args) -> str:
    """The model's name from its metadata, without loading the weights."""
    if model_source(args) is None:
        return "no model"
    g = open_model(args)
    return str(g.get("general.name") or os.path.basename(g.path))


def main(argv: list[str] | None = None) -> int:
    from .bundle import BundleError, merge_args
    from .chat import ChatError
    from .gguf import GGUFError
    argv = sys.argv[1:] if argv is None else argv
    # why: a broken model's NaN is reported once, on one line; numpy's warnings on the
    # way there (invalid value in multiply, ...) would only bury it
    warnings.filterwarnings("ignore", category=RuntimeWarning, module=r"runner(\.|$)")
    try:
        emb = embedded()
    except BundleError as e:
        return die(str(e))
    if emb is not None:
        argv = merge_args(emb.args, argv)       # llamafile's .args: defaults first
    args = parse_args(argv)
    args.embedded = emb
    if args.version:
        try:
            print(f"{PROG} {__version__} ({model_name(args)})")
        except GGUFError as e:
            print(f"{PROG} {__version__}")
            return die(str(e))
        return 0
    if args.n_gpu_layers is not None:
        log(args, f"{PROG}: -ngl ignored: this build runs on the CPU")
    try:
        g = open_model(args)
        chat = chat_format(args, g)
    except ChatError as e:
        return die(f"--chat-template: {e}", 2)
    except UserError as e:
        return die(str(e), e.status)
    except (GGUFError, ValueError, OSError) as e:
        return die(str(e))
    try:
        if args.mode == "server":
            # serve at once (503 on /health) while the weights load
            from .modes.server import run as serve
            return serve(lambda: load_model(args, g, chat), args, name=str(g.get("general.name") or ""))
        llm = load_model(args, g, chat)
    except (GGUFError, ValueError, OSError) as e:
        return die(str(e))
    if args.mode == "cli":
        from .modes.cli import run
    else:
        from .modes.repl import run
    return run(llm, args)


if __name__ == "__main__":
    sys.exit(main())
