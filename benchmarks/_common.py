"""Helpers the benchmark scripts share. Imports only the standard library: the thread pinning below
must run before NumPy (OpenBLAS) and the first kernel (libgomp) start their thread pools.

    from _common import threads_from_argv, pin_threads   # benchmarks/ is sys.path[0] for a script
"""
from __future__ import annotations

import os
from typing import Sequence

THREAD_ENV_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def threads_from_argv(argv: Sequence[str]) -> str | None:
    """The value of `--threads N` or `--threads=N` in argv (a string), None without one.

    >>> threads_from_argv(["x.py", "--threads=4"]), threads_from_argv(["--threads", "2"]), threads_from_argv([])
    ('4', '2', None)
    """
    for k, arg in enumerate(argv):
        if arg == "--threads" and k + 1 < len(argv):
            return argv[k + 1]
        if arg.startswith("--threads="):
            return arg.split("=", 1)[1]
    return None


def pin_threads(n: int | str) -> None:
    """OpenMP, OpenBLAS and MKL pools of n threads (environment variables; call before importing NumPy)."""
    for var in THREAD_ENV_VARS:
        os.environ[var] = str(n)
