"""`gemma-runner` / `python -m runner`: parse the flags, load the model, run one mode."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from . import __version__
from .args import PROG, die, parse_args

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


def load_model(args):
    import runner
    src = model_source(args)
    if src is None:
        raise runner.GGUFError("this runner has no embedded model: pass -m FILE.gguf")
    path, offset, length = src
    if not os.path.exists(path):
        raise runner.GGUFError(f"{path}: no such file")
    log(args, f"loading {os.path.basename(path)} ...")
    return runner.load(path, mmproj=args.mmproj, n_ctx=args.ctx_size, threads=args.threads,
                       offset=offset, length=length)


def model_name(args) -> str:
    """The model's name from its metadata, without loading the weights."""
    from .gguf import GGUFFile
    src = model_source(args)
    if src is None:
        return "no model"
    g = GGUFFile(*src)
    return str(g.get("general.name") or os.path.basename(src[0]))


def main(argv: list[str] | None = None) -> int:
    from .bundle import BundleError, merge_args
    from .gguf import GGUFError
    argv = sys.argv[1:] if argv is None else argv
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
        llm = load_model(args)
    except (GGUFError, ValueError, OSError) as e:
        return die(str(e))
    if args.mode == "cli":
        from .modes.cli import run
    elif args.mode == "server":
        from .modes.server import run
    else:
        from .modes.repl import run
    return run(llm, args)


if __name__ == "__main__":
    sys.exit(main())
