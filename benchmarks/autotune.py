"""Autotune a 1024^3 float32 matmul on the CPU with a 60 s budget, then check what it found.

    PYTHONPATH=. python benchmarks/autotune.py [--n 1024] [--budget 60]

Prints: the head of the results table, the tuned schedule vs the default timed again interleaved
(explorer.measure: median, IQR, unstable flag), the total tune wall time, and the wall time of the
cached rerun (a second autotune call with the same kernel, device and space reads the disk cache).
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

import explorer
from explorer import measure


def matmul(a, b):
    return a @ b


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1024)
    p.add_argument("--budget", type=float, default=60.0)
    p.add_argument("--check-budget", type=float, default=15.0, help="seconds for the best-vs-default timing")
    p.add_argument("--fresh", action="store_true", help="ignore a cached tune (measure again)")
    a = p.parse_args(argv)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((a.n, a.n), dtype=np.float32)
    w = rng.standard_normal((a.n, a.n), dtype=np.float32)
    at = sys.modules["explorer.autotune"]
    if a.fresh:   # drop a cached result for this kernel/device/space so the tune really runs
        base = explorer.compile(matmul, x, w, target="cpu")
        space = at.check_space(at.default_space(base), "cpu")
        (at.cache_dir() / f"{at._cache_key(base, 'cpu', space)}.json").unlink(missing_ok=True)

    t0 = time.perf_counter()
    r = explorer.autotune(matmul, x, w, target="cpu", budget=a.budget)
    tune_s = time.perf_counter() - t0
    print(r.table(12))
    print(f"\ntotal tune wall time: {tune_s:.1f} s (budget {a.budget:.0f} s; cached: {r.cached})")

    # the tuned schedule vs the default, timed again interleaved (a fresh measurement, not the tune's)
    best = explorer.compile(matmul, x, w, target="cpu", schedule=r.best)
    default = explorer.compile(matmul, x, w, target="cpu")
    np.testing.assert_allclose(best(x, w), x @ w, rtol=1e-3, atol=1e-2)
    ts = measure.interleaved({"tuned": best.sampler(), "default": default.sampler()}, warmup=1,
                             budget_s=a.check_budget)
    print(f"tuned   {r.best}: {ts['tuned']}")
    print(f"default {{}}: {ts['default']}")
    print(f"speedup tuned vs default: {measure.speedup(ts['default'], ts['tuned'])}")

    t0 = time.perf_counter()
    before = dict(at.STATS)
    r2 = explorer.autotune(matmul, x, w, target="cpu", budget=a.budget)
    print(f"cached rerun: {time.perf_counter() - t0:.3f} s wall, cached={r2.cached}, "
          f"candidates measured again: {at.STATS['measured'] - before['measured']}, same best: {r2.best == r.best}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
