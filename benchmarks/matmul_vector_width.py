"""Large-matmul GFLOP/s on one thread: the CPU register tile in 32-byte vs 64-byte (AVX-512) vectors vs NumPy.

    PYTHONPATH=. .venv/bin/python benchmarks/matmul_vector_width.py [--n 1024] [--dtype float32] [--rounds 7]

Both widths are compiled on this host (schedules/cpu.native_vector_bytes set to 32, then 64; without
AVX-512 gcc splits a 64-byte vector in halves, so that row shows the cost, not a gain). Rounds interleave
the three variants; each time is process CPU time (time.process_time) with OpenMP and OpenBLAS on one
thread, so a neighbour holding the core does not count. Prints median [min, max] GFLOP/s and the error.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

from _common import pin_threads  # noqa: E402  (standard library only: before NumPy)

pin_threads(1)

import numpy as np  # noqa: E402

import explorer  # noqa: E402
from explorer.schedules import cpu as cpu_schedules  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1024, help="M = N = K (default 1024)")
    ap.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args(argv)
    n, dt = args.n, np.dtype(args.dtype)
    rng = np.random.default_rng(0)
    a, b = rng.random((n, n)).astype(dt), rng.random((n, n)).astype(dt)
    want = a @ b
    runs = {}
    for vb in (32, 64):
        cpu_schedules.native_vector_bytes = lambda vb=vb: vb
        c = explorer.compile(lambda a, b: a @ b, a, b, target="cpu", verbose=False)
        err = float(np.abs(c(a, b) - want).max() / np.abs(want).max())
        tile = [p for p in c.stage("tiled").ir.kernels[0].schedule if p.startswith("split")]
        print(f"{vb}-byte vectors: {', '.join(tile)}; max error / max |C| {err:.1e}")
        runs[f"explorer {vb}-byte"] = lambda c=c: c(a, b)
    runs["numpy (OpenBLAS)"] = lambda: a @ b
    gflops: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(args.rounds):
        for name, fn in runs.items():
            fn()
            t = time.process_time()
            for _ in range(3):
                fn()
            gflops[name].append(2 * n ** 3 * 3 / (time.process_time() - t) / 1e9)
    print(f"{n}^3 {dt.name}, 1 thread, process CPU time, {args.rounds} interleaved rounds of 3 calls:")
    for name, v in gflops.items():
        print(f"  {name:18s} {statistics.median(v):7.1f} GFLOP/s  [{min(v):.1f}, {max(v):.1f}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
