"""Where numba keeps the kernels' machine code between runs.

why: numba's own locators key a cache on the file of the function it compiles and that
file's hash, while a kernel inlines code from several files of this package (simd.py, blocks.py,
products.py): an edit to a decoder left stale machine code in place. And they put the
cache beside the source or under a path derived from it, which a one-file executable
changes at every launch (it extracts to a new temporary folder). So the kernels get one
directory per version of their sources, under the user's cache directory:

    $GEMMA_RUNNER_CACHE or $XDG_CACHE_HOME/gemma-runner or ~/.cache/gemma-runner
        kernels-<sha256 of the kernel sources, 16 hex digits>/

and, where that is not writable, the same under the system's temporary directory.
"""
from __future__ import annotations

import functools
import hashlib
import os
import sys
import tempfile
from pathlib import Path

from numba.core import caching

HERE = Path(__file__).resolve().parent
PACKAGE = __name__.rpartition(".")[0]          # runner.kernels


@functools.lru_cache(maxsize=1)
def digest() -> str:
    """Hash of the kernel sources (of the executable itself when they are not files)."""
    h = hashlib.sha256()
    try:
        sources = sorted(HERE.glob("*.py"))       # every module of the package: they inline each other
        if not sources:
            raise OSError("no kernel sources")
        for path in sources:
            h.update(path.name.encode() + b"\0" + path.read_bytes())
    except OSError:
        h.update(Path(sys.executable).read_bytes())
    return h.hexdigest()[:16]


def roots() -> list[Path]:
    """Candidate parent directories, best first."""
    env = os.environ.get("GEMMA_RUNNER_CACHE")
    user = Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gemma-runner"
    return [user, Path(tempfile.gettempdir()) / f"gemma-runner-{os.getuid() if hasattr(os, 'getuid') else 0}"]


class KernelCacheLocator(caching._CacheLocator):
    """numba's cache locator for functions defined in runner/kernels."""

    def __init__(self, py_func, path: Path):
        self._lineno = py_func.__code__.co_firstlineno
        self._path = str(path)

    def get_cache_path(self) -> str:
        return self._path

    def get_source_stamp(self) -> str:
        return digest()

    def get_disambiguator(self) -> str:
        return str(self._lineno)

    @classmethod
    def from_function(cls, py_func, py_file):
        # by module name, not file: a one-file executable names the file relatively
        # ("runner/kernels/products.py"), which numba resolves against the working directory
        module = py_func.__module__ or ""
        if module != PACKAGE and not module.startswith(PACKAGE + "."):
            return None                      # not ours: numba's own locators
        for root in roots():
            self = cls(py_func, root / f"kernels-{digest()}")
            try:
                self.ensure_cache_path()
                return self
            except OSError:
                continue
        return None


def install() -> None:
    """Make numba ask KernelCacheLocator first (before any kernel is defined)."""
    # numba keeps its locator classes in a list on its cache implementation (no public
    # registry but the NUMBA_CACHE_LOCATOR_CLASSES variable, which would replace numba's
    # own locators for every library in the process); CacheImpl was _CacheImpl before 0.61
    impl = getattr(caching, "CacheImpl", None) or caching._CacheImpl
    if KernelCacheLocator not in impl._locator_classes:
        impl._locator_classes.insert(0, KernelCacheLocator)
