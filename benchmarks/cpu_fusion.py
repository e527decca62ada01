"""CPU fusion benchmark: everything measured in one run on this machine.

    .venv/bin/python benchmarks/cpu_fusion.py [--quick]

Rows:
  * copy bandwidth: numpy copy of a 16M float32 array (GB/s, read + write)
  * the 8-op chain np.maximum(np.tanh(a*1.5+b)*b - a/3, 0.1) + a*b on 16M float32:
    fused CPU kernel (NumPy NaN/Inf semantics), the fast_math=True variant, numpy, numexpr
    (if installed) and torch.compile (if torch is importable; never installed by this script),
    with speedups and the share of the copy bandwidth (3 arrays moved)
  * matmul+bias+relu at 1024x1024x1024 and at the memory-bound 8192x64 @ 64x64: fused vs
    unfused (fuse=False) on the CPU backend, and numpy
  * matmul 1024^3: CPU backend vs numpy in GFLOP/s

Our timings come from Compiled.benchmark (output buffers allocated once, as a caching allocator
would); NumPy's from wall time of the expression (which allocates its temporaries).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import explorer  # noqa: E402
from explorer.compiled import Timing, summarize  # noqa: E402


def chain(a, b):
    return np.maximum(np.tanh(a * 1.5 + b) * b - a / 3, 0.1) + a * b


def mlp(x, w, b):
    return np.maximum(x @ w + b, 0)


def matmul(x, w):
    return x @ w


def wall(fn, *args, warmup: int = 2, repeat: int = 10) -> Timing:
    for _ in range(warmup):
        fn(*args)
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(*args)
        samples.append((time.perf_counter() - t0) * 1e3)
    return summarize(samples)


def ours(fn, *args, repeat: int = 10, **kw) -> tuple[Timing, float, "explorer.Compiled"]:
    c = explorer.compile(fn, *args, target="cpu", verbose=False, **kw)
    err = c.max_error(*args)
    return c.benchmark(*args, warmup=3, repeat=repeat), err, c


class Table:
    def __init__(self):
        self.rows: list[tuple[str, str, str, str, str]] = []

    def add(self, name: str, t: Timing | None, ratio: str = "", note: str = ""):
        self.rows.append((name, f"{t.median_ms:9.3f}" if t else "      n/a", f"{t.min_ms:9.3f}" if t else "",
                          ratio, note))

    def section(self, title: str):
        self.rows.append((f"-- {title}", "", "", "", ""))

    def print(self):
        w = max(len(r[0]) for r in self.rows)
        print(f"{'case':<{w}}  {'median ms':>9}  {'min ms':>9}  {'ratio':>14}  note (ratios use medians)")
        for name, ms, mn, ratio, note in self.rows:
            if name.startswith("--"):
                print(name)
            else:
                print(f"{name:<{w}}  {ms:>9}  {mn:>9}  {ratio:>14}  {note}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes and fewer repeats (smoke test)")
    args = ap.parse_args(argv)
    from explorer.backends import cpu
    ok, why = cpu.available()
    if not ok:
        print(f"CPU backend unavailable: {why}")
        return 1
    n = 1 << (20 if args.quick else 24)
    rep = 3 if args.quick else 10
    rng = np.random.default_rng(0)
    tab = Table()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"machine: {os.cpu_count()} CPUs, load average {load:.1f}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'default')}, compiler: {why}")
    if load > 0.5 * (os.cpu_count() or 1):
        print("note: the machine is busy; timings (medians especially) are noisy, compare the min column")

    # -- copy bandwidth
    a = rng.standard_normal(n, dtype=np.float32)
    b = rng.standard_normal(n, dtype=np.float32)
    dst = np.empty_like(a)
    tcopy = wall(np.copyto, dst, a, repeat=rep * 2)
    copy_gbs = 2 * a.nbytes / tcopy.median_ms / 1e6
    tab.section(f"copy bandwidth, {n / 2**20:.0f}M float32")
    tab.add("numpy copy", tcopy, f"{copy_gbs:.1f} GB/s")

    # -- the 8-op chain
    moved = 3 * a.nbytes   # read a, b; write out

    def bw_note(t: Timing) -> str:
        gbs = moved / t.median_ms / 1e6
        return f"{gbs:.1f} GB/s = {100 * gbs / copy_gbs:.0f}% of copy"

    tab.section(f"8-op chain, {n / 2**20:.0f}M float32")
    tnp = wall(chain, a, b, warmup=1, repeat=max(3, rep // 2))
    tfused, err, _ = ours(chain, a, b, repeat=rep)
    tfast, err_fast, _ = ours(chain, a, b, repeat=rep, fast_math=True)
    tab.add("numpy", tnp, "1.0x", bw_note(tnp))
    tab.add("fused CPU kernel (NumPy NaN/Inf)", tfused, f"{tnp.median_ms / tfused.median_ms:.1f}x numpy",
            f"{bw_note(tfused)}; max err {err:.2g}")
    tab.add("fused CPU kernel, fast_math=True", tfast, f"{tnp.median_ms / tfast.median_ms:.1f}x numpy",
            f"{bw_note(tfast)}; max err {err_fast:.2g}")
    if importlib.util.find_spec("numexpr"):
        import numexpr as ne

        def ne_chain(a, b):   # numexpr has no maximum(): two passes, where() on the first's result
            t = ne.evaluate("tanh(a*1.5+b)*b - a/3")
            return ne.evaluate("where(t > 0.1, t, 0.1) + a*b")
        tne = wall(ne_chain, a, b, repeat=rep)
        tab.add(f"numexpr ({ne.detect_number_of_cores()} threads)", tne, f"{tnp.median_ms / tne.median_ms:.1f}x numpy",
                f"fused is {tne.median_ms / tfused.median_ms:.1f}x faster")
    else:
        tab.add("numexpr", None, "", "not installed")
    torch = _torch()
    if torch is not None:
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        tc = torch.compile(lambda a, b: torch.clamp_min(torch.tanh(a * 1.5 + b) * b - a / 3, 0.1) + a * b)
        tc(ta, tb)
        tt = wall(tc, ta, tb, repeat=rep)
        tab.add("torch.compile (Inductor)", tt, f"{tnp.median_ms / tt.median_ms:.1f}x numpy",
                f"fused is {tt.median_ms / tfused.median_ms:.1f}x faster")
    else:
        tab.add("torch.compile", None, "", "torch not importable (not installed by this script)")

    # -- matmul + bias + relu
    shapes = [(256, 256, 256), (2048, 64, 64)] if args.quick else [(1024, 1024, 1024), (8192, 64, 64)]
    for m, k, nn in shapes:
        x = rng.standard_normal((m, k), dtype=np.float32)
        w = rng.standard_normal((k, nn), dtype=np.float32)
        bias = rng.standard_normal(nn, dtype=np.float32)
        tab.section(f"matmul+bias+relu {m}x{k} @ {k}x{nn}")
        r = rep if m * k * nn < 2**28 else max(3, rep // 2)
        tf, ef, cf = ours(mlp, x, w, bias, repeat=r)
        tu, eu, cu = ours(mlp, x, w, bias, repeat=r, fuse=False)
        tn = wall(mlp, x, w, bias, repeat=r)
        tab.add("numpy", tn, "1.0x")
        tab.add(f"fused ({len(cf.kernels)} kernel)", tf, f"{tn.median_ms / tf.median_ms:.2f}x numpy",
                f"{tu.median_ms / tf.median_ms:.2f}x vs unfused; max err {ef:.2g}")
        tab.add(f"unfused ({len(cu.kernels)} kernels)", tu, f"{tn.median_ms / tu.median_ms:.2f}x numpy",
                "per kernel ms: " + ", ".join(f"{v:.3f}" for v in (tu.per_kernel_ms or {}).values()))
        if torch is not None:
            tx, twt, tbb = (torch.from_numpy(v) for v in (x, w, bias))
            tcm = torch.compile(lambda x, w, b: torch.relu(x @ w + b))
            tcm(tx, twt, tbb)
            tt = wall(tcm, tx, twt, tbb, repeat=r)
            tab.add("torch.compile (Inductor)", tt, f"{tn.median_ms / tt.median_ms:.2f}x numpy",
                    f"fused is {tt.median_ms / tf.median_ms:.2f}x its speed")

    # -- plain matmul
    m = 256 if args.quick else 1024
    x = rng.standard_normal((m, m), dtype=np.float32)
    w = rng.standard_normal((m, m), dtype=np.float32)
    flops = 2 * m ** 3
    tab.section(f"matmul {m}^3")
    tm, em, _ = ours(matmul, x, w, repeat=max(3, rep // 2))
    tn = wall(matmul, x, w, repeat=rep)
    tab.add("numpy", tn, f"{flops / tn.median_ms / 1e6:.0f} GFLOP/s")
    tab.add("CPU backend", tm, f"{flops / tm.median_ms / 1e6:.0f} GFLOP/s",
            f"{tn.median_ms / tm.median_ms:.2f}x numpy; max err {em:.2g}")
    tab.print()
    return 0


def _torch():
    if importlib.util.find_spec("torch") is None:
        return None
    try:
        import torch
        return torch
    except Exception:   # a broken torch install is just "not available" here
        return None


if __name__ == "__main__":
    sys.exit(main())
