"""Attention on the CPU: the fused FlashAttention-style kernel vs NumPy, the unfused explorer and torch SDPA.

    PYTHONPATH=. .venv/bin/python benchmarks/attention.py [--quick] [--tile BQ BK]

B1 H8 S1024 D64 float32 (--quick: S256). Every number is measured in this run with explorer.measure:
the variants run interleaved round-robin, medians with their interquartile range; ratios carry the
quartile range. The fused kernel is `explorer.compile(attention, ...)` (one kernel, online softmax);
the unfused explorer is the same function with fuse={"attention": False} (3 kernels, the S×S scores
in global memory). torch's scaled_dot_product_attention runs in a child process (its OpenMP pool and
ours spin between parallel regions, so sharing a process slows whichever runs second); without torch
the row says 'not installed' (this script never installs it).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import explorer  # noqa: E402
from explorer import measure  # noqa: E402


def attention(q, k, v):
    s = q @ k.transpose(0, 1, 3, 2) * np.float32(1.0 / np.sqrt(q.shape[-1]))
    p = np.exp(s - s.max(-1, keepdims=True))
    return (p / p.sum(-1, keepdims=True)) @ v


def inputs(s: int, b: int = 1, h: int = 8, d: int = 64):
    rng = np.random.default_rng(0)
    return tuple(rng.standard_normal((b, h, s, d), dtype=np.float32) for _ in range(3))


def torch_sdpa(s: int, budget: float) -> dict:
    """Runs in the child: torch SDPA on the same seeded inputs → {'median_ms', 'q1_ms', 'q3_ms', ...}."""
    import torch
    import torch.nn.functional as F
    q, k, v = (torch.from_numpy(x) for x in inputs(s))
    with torch.no_grad():
        t = measure.measure(lambda: F.scaled_dot_product_attention(q, k, v), warmup=3, budget_s=budget)
        err = float((F.scaled_dot_product_attention(q, k, v).numpy() - attention(*inputs(s))).__abs__().max())
    return {"median_ms": t.median_ms, "q1_ms": t.q1_ms, "q3_ms": t.q3_ms, "min_ms": t.min_ms, "n": t.repeat,
            "threads": torch.get_num_threads(), "version": torch.__version__, "max_error": err}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="S=256 instead of 1024")
    ap.add_argument("--budget", type=float, default=20.0, help="seconds for the interleaved measurement")
    ap.add_argument("--tile", type=int, nargs=2, metavar=("BQ", "BK"), help="attention tile (query rows, keys)")
    ap.add_argument("--torch-child", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.torch_child:
        print(json.dumps(torch_sdpa(a.torch_child, a.budget / 4)))
        return
    s = 256 if a.quick else 1024
    q, k, v = inputs(s)
    args = (q, k, v)
    sched = {"attention_tile": tuple(a.tile)} if a.tile else None
    fused = explorer.compile(attention, *args, target="cpu", verbose=False, schedule=sched)
    unfused = explorer.compile(attention, *args, target="cpu", verbose=False, fuse={"attention": False})
    print(f"attention B1 H8 S{s} D64 float32 on the CPU; kernels: fused {len(fused.kernels)} "
          f"({fused.kernels[0].name}), unfused {len(unfused.kernels)}")
    print(f"max |error| vs NumPy: fused {fused.max_error(*args):.2g}, unfused {unfused.max_error(*args):.2g}")
    variants = {"fused (flash)": fused.executable().sampler(list(args)),
                "unfused explorer": unfused.executable().sampler(list(args)),
                "numpy": lambda: attention(q, k, v)}
    ts = measure.interleaved(variants, warmup=2, budget_s=a.budget)
    for name, t in ts.items():
        print(f"  {name:<18} {t}")
    f = ts["fused (flash)"]
    print(f"  fused vs numpy:            {measure.speedup(ts['numpy'], f)}")
    print(f"  fused vs unfused explorer: {measure.speedup(ts['unfused explorer'], f)}")
    if importlib.util.find_spec("torch") is None:
        print("  torch SDPA: not installed")
        return
    out = subprocess.run([sys.executable, __file__, "--torch-child", str(s), "--budget", str(a.budget)],
                         capture_output=True, text=True)
    if out.returncode:
        print("  torch SDPA: failed in the child process: " + (out.stderr.strip().splitlines() or ["?"])[-1])
        return
    r = json.loads(out.stdout.strip().splitlines()[-1])
    tt = measure.summarize([r["q1_ms"], r["median_ms"], r["median_ms"], r["q3_ms"]])
    print(f"  torch SDPA {r['version']} ({r['threads']} threads): {r['median_ms']:.3g} ms "
          f"(IQR {r['q1_ms']:.3g}–{r['q3_ms']:.3g}, min {r['min_ms']:.3g}, n={r['n']}, max error {r['max_error']:.2g})")
    print(f"  fused vs torch SDPA:       {measure.speedup(tt, f)}  (target >= 1.0x; measured in separate processes)")


if __name__ == "__main__":
    main()
