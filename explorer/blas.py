"""NumPy's BLAS thread pool while the explorer measures (and for notebooks that mix the two).

NumPy's wheels ship OpenBLAS (0.3.31 here), whose idle worker threads busy-spin for 0.1-0.5 s
after every threaded BLAS call (no sched_yield; docs/CPU_THREADS.md). On a 2-core machine that
worker holds the core the next explorer kernel needs: a fused MLP after a NumPy matmul took 3x
its isolated time, and compare()'s NumPy baseline (itself a threaded matmul) slowed the fused
kernel timed after it. With NumPy's BLAS on one thread both went away (timing_stability 12/12).

So compare(), sweep(), Compiled.benchmark and autotune measure inside `during_measurement(
blas_threads)`: with the default "auto" NumPy's BLAS runs on 1 thread when this process may use
<= AUTO_MAX_CORES cores (affinity and cgroup quota), and is left alone elsewhere; None leaves it
alone; an int is that limit. The previous setting comes back afterwards. threadpoolctl (optional,
`pip install threadpoolctl`) does the limiting; without it "auto" leaves the pool alone and says so.

`blas_threads(n)` is the same limit for your own code:

>>> import numpy as np, explorer
>>> x, w = np.ones((256, 256), np.float32), np.ones((256, 16), np.float32)
>>> c = explorer.compile(lambda x, w: np.maximum(x @ w, 0), x, w, target="cpu")
>>> with explorer.blas_threads(1):
...     y = x @ w                                # NumPy's matmul on 1 thread: no spinning worker
...     t = c.benchmark(x, w, repeat=5)          # ... when the explorer kernel runs right after it
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator, Union

import numpy as np

from .errors import BackendUnavailable, ExplorerError

AUTO_MAX_CORES = 2       # "auto" limits NumPy's BLAS to 1 thread on machines with this many usable cores or fewer
INSTALL_HINT = "pip install threadpoolctl"
BlasThreads = Union[str, int, None]


@dataclass(frozen=True)
class BlasSetting:
    """What was done to NumPy's BLAS pool during one measurement.

    requested: the blas_threads argument ("auto", None or an int); limit: the thread limit in force
    while measuring (None: the pool was left alone); before: the pools' thread counts before;
    note: one line for tables and charts ('' when there is nothing to say).
    """

    requested: BlasThreads
    limit: int | None
    before: tuple[int, ...] = ()
    note: str = ""


def check_blas_threads(value: Any) -> BlasThreads:
    """Validate a blas_threads= argument: "auto", None or an int >= 1 (ExplorerError otherwise)."""
    if value is None or (isinstance(value, str) and value == "auto"):
        return value
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ExplorerError(f"blas_threads={value!r}: must be 'auto' (NumPy's BLAS on 1 thread while measuring on "
                            f"a machine with <= {AUTO_MAX_CORES} usable cores), None (leave NumPy's BLAS pool "
                            f"alone) or a thread count >= 1")
    return int(value)


def _threadpoolctl():
    try:
        import threadpoolctl
    except ImportError:
        return None
    return threadpoolctl


def blas_pool_threads() -> tuple[int, ...]:
    """Thread counts of the BLAS pools loaded in this process (threadpoolctl); () without it."""
    from .backends.threads import blas_pools
    return tuple(int(p["num_threads"]) for p in blas_pools() if p["user_api"] == "blas")


def _usable_cores() -> int:
    from .backends.threads import usable_cores
    return usable_cores(omp_num_threads=None)[0]   # affinity and cgroup quota: the cores, not our OpenMP setting


def _note(limit: int, cores: int | None) -> str:
    if cores is not None and limit == 1:
        return (f"NumPy's BLAS ran on 1 thread during this measurement ({cores}-core machine: its idle threads "
                f"spin and steal the core the next kernel needs); blas_threads=None leaves it alone")
    return f"NumPy's BLAS ran on {limit} thread{'s' if limit > 1 else ''} during this measurement (blas_threads={limit})"


@contextlib.contextmanager
def during_measurement(blas_threads: BlasThreads = "auto") -> Iterator[BlasSetting]:
    """Limit NumPy's BLAS pool as `blas_threads` asks for the duration of a measurement → BlasSetting.

    "auto": 1 thread when this process may use <= AUTO_MAX_CORES cores, else untouched; None:
    untouched; int: that limit (BackendUnavailable without threadpoolctl). Restored on exit.
    """
    requested = check_blas_threads(blas_threads)
    if requested is None:
        yield BlasSetting(None, None)
        return
    cores = None
    if requested == "auto":
        cores = _usable_cores()
        if cores > AUTO_MAX_CORES:
            yield BlasSetting("auto", None)
            return
        limit = 1
    else:
        limit = requested
    tpc = _threadpoolctl()
    if tpc is None:
        if requested != "auto":
            raise BackendUnavailable(f"blas_threads={requested} needs threadpoolctl to limit NumPy's BLAS pool: "
                                     f"{INSTALL_HINT} (or pass blas_threads=None)")
        yield BlasSetting("auto", None, (), f"NumPy's BLAS pool was left alone: threadpoolctl is not installed "
                                            f"({INSTALL_HINT}); on this {cores}-core machine its idle threads may "
                                            f"spin and steal the core the next kernel needs")
        return
    before = blas_pool_threads()
    if not before:          # no BLAS library loaded: nothing to limit, nothing to say
        yield BlasSetting(requested, None)
        return
    with tpc.threadpool_limits(limit, user_api="blas"):
        yield BlasSetting(requested, limit, before, _note(limit, cores))


@contextlib.contextmanager
def blas_threads(n: int = 1) -> Iterator[BlasSetting]:
    """Run NumPy's BLAS (matmul, dot, linalg) on at most `n` threads inside the `with` block.

    For notebooks that mix NumPy and explorer calls on a 2-core machine: after a threaded NumPy
    matmul, OpenBLAS's idle worker spins for 0.1-0.5 s on the core the next explorer kernel
    needs. The previous limit comes back on exit. Needs threadpoolctl (BackendUnavailable
    without it); limiting halves NumPy's large matmuls on an idle 2-core machine.

    >>> import numpy as np, explorer
    >>> x, w1, w2, b2 = np.ones((64, 64), np.float32), np.eye(64, dtype=np.float32), np.eye(64, dtype=np.float32), np.zeros(64, np.float32)
    >>> fused_mlp = explorer.compile(lambda h, w, b: np.maximum(h @ w + b, 0), x, w2, b2, target="sim")
    >>> with explorer.blas_threads(1) as setting:
    ...     h = x @ w1                                     # NumPy, 1 thread
    ...     y = fused_mlp(h, w2, b2)                       # explorer: its core is free
    >>> float(y.sum())
    4096.0
    """
    n = check_blas_threads(n)
    if n is None or n == "auto":
        raise ExplorerError(f"blas_threads(n): n must be a thread count >= 1, got {n!r}")
    with during_measurement(n) as setting:
        yield setting


def note_of(setting: BlasSetting | None) -> str:
    """The setting's table line ('' for None or nothing to say)."""
    return setting.note if setting is not None else ""


__all__ = ["BlasSetting", "blas_threads", "during_measurement", "check_blas_threads", "blas_pool_threads",
           "AUTO_MAX_CORES"]
