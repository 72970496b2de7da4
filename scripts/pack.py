"""Pack a GGUF (and optionally an mmproj GGUF and default arguments) into a runner:
one executable that maps its weights from its own file. Takes seconds, no rebuild.

    python scripts/pack.py --runner dist/gemma-runner --model models/x.gguf [--mmproj m.gguf]
                           [--args "--server --nobrowser"] [-o dist/x.llamafile]
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from runner.bundle import BundleError, executable_name, pack  # noqa: E402
from runner.gguf import GGUFError, GGUFFile  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runner", required=True, help="the bare runner built by PyInstaller (or a packed one)")
    ap.add_argument("--model", required=True, help="the GGUF to embed")
    ap.add_argument("--mmproj", help="a vision projector GGUF to embed")
    ap.add_argument("--args", default="", help="default arguments, as one shell-quoted string; '...' marks "
                                               "where the user's own go (default: after them)")
    ap.add_argument("-o", "--output", help="output file (default: dist/<model name>.llamafile)")
    a = ap.parse_args()
    try:
        for p in (a.model, a.mmproj):
            if p:
                GGUFFile(p)                          # refuse anything that is not a GGUF
        out = a.output or str(Path(a.runner).parent / executable_name(a.model))
        files = {"model": a.model}
        if a.mmproj:
            files["mmproj"] = a.mmproj
        t = time.perf_counter()
        emb = pack(a.runner, out, files, shlex.split(a.args))
    except (BundleError, GGUFError, OSError) as e:
        print(f"pack: {e}", file=sys.stderr)
        return 1
    size = Path(out).stat().st_size
    print(f"{out}: {size / 1e6:.0f} MB, {', '.join(emb.names[r] for r in emb.files)} embedded "
          f"in {time.perf_counter() - t:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
