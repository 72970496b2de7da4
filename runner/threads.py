"""The compute threads: how many the numerical libraries use (`-t/--threads`)."""
from __future__ import annotations

import contextlib
import ctypes
import functools


@functools.lru_cache(maxsize=1)
def _openblas() -> tuple | None:
    """(get, set) of the OpenBLAS thread count numpy uses; None with another BLAS."""
    try:
        for line in open("/proc/self/maps"):
            if "openblas" in line.lower():
                lib = ctypes.CDLL(line.split()[-1])
                for prefix, suffix in (("scipy_", "64_"), ("", "64_"), ("", "")):
                    get = getattr(lib, f"{prefix}openblas_get_num_threads{suffix}", None)
                    put = getattr(lib, f"{prefix}openblas_set_num_threads{suffix}", None)
                    if get and put:
                        return get, put
    except OSError:
        pass
    return None


def set_blas_threads(n: int | None) -> None:
    """Set the number of threads numpy's OpenBLAS uses (None: leave it as it is)."""
    lib = _openblas()
    if n and lib is not None:
        lib[1](ctypes.c_int(n))


@contextlib.contextmanager
def single_threaded_blas():
    """BLAS on one thread inside the block (the callers' threads share the cores)."""
    lib = _openblas()
    if lib is None:
        yield
        return
    get, put = lib
    before = get()
    put(ctypes.c_int(1))
    try:
        yield
    finally:
        put(ctypes.c_int(before))
