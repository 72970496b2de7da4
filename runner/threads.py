"""The compute threads: how many the numerical libraries use (`-t/--threads`)."""
from __future__ import annotations

import ctypes

_blas_setter = None


def set_blas_threads(n: int | None) -> None:
    """Set the number of threads numpy's OpenBLAS uses (None: leave it as it is)."""
    global _blas_setter
    if not n:
        return
    if _blas_setter is None:
        _blas_setter = lambda n: None                 # noqa: E731 - no OpenBLAS found: nothing to set
        for line in open("/proc/self/maps"):
            if "openblas" in line.lower():
                lib = ctypes.CDLL(line.split()[-1])
                for name in ("scipy_openblas_set_num_threads64_", "openblas_set_num_threads64_",
                             "openblas_set_num_threads"):
                    if hasattr(lib, name):
                        fn = getattr(lib, name)
                        _blas_setter = lambda n, fn=fn: fn(ctypes.c_int(n))   # noqa: E731
                        break
                break
    _blas_setter(n)
