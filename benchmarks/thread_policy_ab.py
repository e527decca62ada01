"""A/B of the CPU thread policy's inputs on this machine (docs/CPU_THREADS.md, "Load as a signal").

    PYTHONPATH=$PWD .venv/bin/python benchmarks/thread_policy_ab.py [--rounds 25] [--neighbour]

(1) team size for the 8192x64 @ 64x64 MLP (a kernel the policy makes parallel): per round, in rotated
    order, 20 calls each with the team forced to 2 threads, forced serial, and the load-based choice
    (/proc/loadavg's running count); prints medians with IQR of the per-call time.
(2) the fused 16384x16 @ 16x16 MLP (serial by the policy) after: nothing (3 warm calls before: the
    "alone" of timing_stability.py), a NumPy 512^3 matmul, an 8 MB np.copyto (cache state only),
    and a 512^3 matmul with OpenBLAS limited to 1 thread by threadpoolctl (no BLAS worker left spinning).
(3) --part compare: compare() on the essay MLP 256x64 @ 64x32, 12 times with a NumPy 512^3 matmul
    before each (timing_stability.py's first scenario), printing each run's fused/unfused medians and
    IQR and /proc/loadavg's running count: shows runs where OpenBLAS's spinning worker takes a core.
(4) --part blas: NumPy's own matmul (256^3, 512^3, 1024^3) with OpenBLAS limited to 1 thread vs its
    default 2 (threadpoolctl), interleaved: what limiting NumPy's BLAS pool would cost (or save).
The load average is printed at the start and end of each part.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import numpy as np


def mlp(x, w, b):
    return np.maximum(x @ w + b, 0)


def q(s, p):
    s = sorted(s)
    return s[min(len(s) - 1, int(round(p * (len(s) - 1))))]


def show(name, s, unit="ms"):
    print(f"  {name:<34} median {statistics.median(s):8.4f} {unit}  IQR {q(s, .25):8.4f}-{q(s, .75):8.4f}  "
          f"p90 {q(s, .9):8.4f}  n={len(s)}")


def load() -> str:
    with open("/proc/loadavg") as f:
        return f.read().strip()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=25)
    ap.add_argument("--neighbour", action="store_true", help="start `python -c 'while True: pass'` for the run")
    ap.add_argument("--part", choices=["team", "after", "both", "compare", "blas"], default="both")
    args = ap.parse_args()
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if args.neighbour else None
    try:
        import explorer
        from explorer.backends import threads
        rng = np.random.default_rng(0)
        f32 = lambda *s: rng.standard_normal(s, dtype=np.float32)  # noqa: E731
        print(f"neighbour: {'pid %d' % busy.pid if busy else 'none'}; OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}")
        if args.part in ("team", "both"):
            x, w, b = f32(8192, 64), f32(64, 64), f32(64)
            c = explorer.compile(mlp, x, w, b, target="cpu", verbose=False)
            exe = c._exe if hasattr(c, "_exe") else None
            print(f"(1) 8192x64@64x64 MLP; policy: {[str(d) for d in c.thread_policy]}; load {load()}")
            real_busy = threads.busy_cores
            modes = {"team 2 (ignore load)": lambda **k: 0, "serial (forced)": lambda **k: 99,
                     "load-based (busy_cores)": real_busy}
            res = {m: [] for m in modes}
            for _ in range(3):
                c(x, w, b)
            names = list(modes)
            for r in range(args.rounds):
                for m in names[r % 3:] + names[:r % 3]:
                    threads.busy_cores = modes[m]
                    for _ in range(20):
                        t0 = time.perf_counter()
                        c(x, w, b)
                        res[m].append((time.perf_counter() - t0) * 1e3)
            threads.busy_cores = real_busy
            for m in names:
                show(m, res[m])
            print(f"  load at end {load()}")
        if args.part in ("after", "both"):
            from threadpoolctl import threadpool_limits
            x, w, b = f32(16384, 16), f32(16, 16), f32(16)
            c = explorer.compile(mlp, x, w, b, target="cpu", verbose=False)
            big_a, big_b = f32(512, 512), f32(512, 512)
            src, dst = f32(1 << 21), f32(1 << 21)
            print(f"(2) 16384x16@16x16 MLP; policy: {[str(d) for d in c.thread_policy]}; load {load()}")

            def matmul_1thread():
                with threadpool_limits(1, user_api="blas"):
                    big_a @ big_b
            before = {"alone (3 warm calls)": lambda: [c(x, w, b) for _ in range(3)],
                      "after 512^3 matmul": lambda: big_a @ big_b,
                      "after 8 MB np.copyto": lambda: np.copyto(dst, src),
                      "after matmul, BLAS 1 thread": matmul_1thread}
            res = {m: [] for m in before}
            names = list(before)
            c(x, w, b)
            for r in range(args.rounds * 2):
                for m in names[r % 4:] + names[:r % 4]:
                    time.sleep(0.002)
                    before[m]()
                    t0 = time.perf_counter()
                    c(x, w, b)
                    res[m].append((time.perf_counter() - t0) * 1e3)
            base = statistics.median(res[names[0]])
            for m in names:
                show(m, res[m])
                print(f"    {statistics.median(res[m]) / base:.2f}x alone")
            print(f"  load at end {load()}")
        if args.part == "compare":
            x, w, b = f32(256, 64), f32(64, 32), f32(32)
            big_a, big_b = f32(512, 512), f32(512, 512)
            print(f"(3) compare() MLP 256x64@64x32 x12; load {load()}")
            for i in range(12):
                big_a @ big_b
                r = explorer.compare(mlp, x, w, b, target="cpu", verbose=False)
                f, u = r.variant("fused"), r.variant("unfused")
                t = f.timing
                print(f"  {i:2d} speedup {r.speedup:.2f}  fused {f.median_ms * 1e3:.1f} us (IQR {t.q1_ms * 1e3:.1f}-"
                      f"{t.q3_ms * 1e3:.1f}, n={t.repeat})  unfused {u.median_ms * 1e3:.1f} us  "
                      f"running {load().split()[3]}", flush=True)
        if args.part == "blas":
            from threadpoolctl import threadpool_limits
            print(f"(4) NumPy matmul, OpenBLAS 1 vs 2 threads; load {load()}")
            for n in (256, 512, 1024):
                a = f32(n, n)
                res = {1: [], 2: []}
                for r in range(12 if n < 1024 else 6):
                    for t in ((1, 2) if r % 2 else (2, 1)):
                        with threadpool_limits(t, user_api="blas"):
                            a @ a
                            t0 = time.perf_counter()
                            a @ a
                            res[t].append((time.perf_counter() - t0) * 1e3)
                for t in (1, 2):
                    show(f"{n}^3 matmul, OpenBLAS {t} thread(s)", res[t])
                print(f"    1 thread / 2 threads: {statistics.median(res[1]) / statistics.median(res[2]):.2g}x")
            print(f"  load at end {load()}")
    finally:
        if busy:
            busy.terminate()
            busy.wait()


if __name__ == "__main__":
    main()
