"""Attention on the CPU: the fused FlashAttention-style kernel vs NumPy, the unfused explorer and torch SDPA.

    PYTHONPATH=. .venv/bin/python benchmarks/attention.py [--quick] [--tile BQ BK] [--no-numpy]
        [--torch-python /tmp/torchvenv/bin/python]
    OMP_NUM_THREADS=1 ...   # one core each (ours and torch's)

B1 H8 S1024 D64 float32 (--quick: S256). Every number is measured in this run with explorer.measure:
medians with their interquartile range; ratios carry the quartile range. The fused kernel is
`explorer.compile(attention, ...)` (one kernel, online softmax); the unfused explorer is the same
function with fuse={"attention": False} (3 kernels, the S×S scores in global memory).
torch.nn.functional.scaled_dot_product_attention runs in a child process started with
`--torch-python PATH` (default: this interpreter; '' skips torch; torch is not a project dependency):
its OpenMP pool and ours would spin against each other in one process, and torch may live in another
venv. The in-process variants run interleaved round-robin; torch is interleaved by chunks: the budget
is split into CHUNKS slices, each runs the in-process variants, then the torch child for half as long.
torch's output is checked against NumPy's. --no-numpy leaves NumPy's slow calls out of the interleave.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import explorer  # noqa: E402
from explorer import measure  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from child import torch_timing_chunk  # noqa: E402

CHUNKS = 4   # slices of the budget: in-process variants, then the torch child, CHUNKS times

TORCH_SETUP = r'''
    q, k, v = (torch.from_numpy(d[n]) for n in "qkv")

    def run():
        return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    def to_numpy(out):
        return out.numpy()
'''


def attention(q, k, v):
    s = q @ k.transpose(0, 1, 3, 2) * np.float32(1.0 / np.sqrt(q.shape[-1]))
    p = np.exp(s - s.max(-1, keepdims=True))
    return (p / p.sum(-1, keepdims=True)) @ v


def inputs(s: int, b: int = 1, h: int = 8, d: int = 64):
    rng = np.random.default_rng(0)
    return tuple(rng.standard_normal((b, h, s, d), dtype=np.float32) for _ in range(3))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="S=256 instead of 1024")
    ap.add_argument("--budget", type=float, default=20.0, help="seconds for the interleaved measurement")
    ap.add_argument("--tile", type=int, nargs=2, metavar=("BQ", "BK"), help="attention tile (query rows, keys)")
    ap.add_argument("--torch-python", default=sys.executable,
                    help="interpreter for the torch child process (default: this one); '' skips torch")
    ap.add_argument("--no-numpy", action="store_true", help="leave NumPy (slow calls) out of the interleave")
    a = ap.parse_args()
    load = os.getloadavg()
    print(f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, {os.cpu_count()} CPUs, "
          f"load average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    s = 256 if a.quick else 1024
    q, k, v = inputs(s)
    args = (q, k, v)
    sched = {"attention_tile": tuple(a.tile)} if a.tile else None
    fused = explorer.compile(attention, *args, target="cpu", verbose=False, schedule=sched)
    unfused = explorer.compile(attention, *args, target="cpu", verbose=False, fuse={"attention": False})
    print(f"attention B1 H8 S{s} D64 float32 on the CPU; kernels: fused {len(fused.kernels)} "
          f"({fused.kernels[0].name}, tile {sched or 'default'}), unfused {len(unfused.kernels)}")
    print(f"max |error| vs NumPy: fused {fused.max_error(*args):.2g}, unfused {unfused.max_error(*args):.2g}")
    variants = {"fused (flash)": fused.executable().sampler(list(args)),
                "unfused explorer": unfused.executable().sampler(list(args))}
    if not a.no_numpy:
        variants["numpy"] = lambda: attention(q, k, v)
    chunks = CHUNKS if a.torch_python else 1
    samples: dict[str, list[float]] = {n: [] for n in variants}
    torch_samples: list[float] = []
    note = "torch SDPA: skipped (--torch-python '')" if not a.torch_python else ""
    with tempfile.TemporaryDirectory() as tmp:
        npz = Path(tmp) / "attention.npz"
        np.savez(npz, q=q, k=k, v=v, want=attention(q, k, v))
        for _ in range(chunks):
            for n, t in measure.interleaved(variants, warmup=2, budget_s=a.budget / chunks).items():
                samples[n] += t.samples_ms
            if a.torch_python and not note:
                res = torch_timing_chunk(a.torch_python, TORCH_SETUP, npz, a.budget / chunks / 2)
                if isinstance(res, str):
                    note = f"torch SDPA: no row: {res}"
                else:
                    assert res["err"] < 1e-4, f"torch SDPA: max error {res['err']} vs NumPy"
                    torch_samples += res["samples"]
                    tinfo = res
    ts = {n: measure.summarize(x) for n, x in samples.items()}
    if torch_samples:
        ts["torch SDPA"] = measure.summarize(torch_samples)
    for name, t in ts.items():
        print(f"  {name:<18} {t}")
    f = ts["fused (flash)"]
    if "numpy" in ts:
        print(f"  fused vs numpy:            {measure.speedup(ts['numpy'], f)}")
    print(f"  fused vs unfused explorer: {measure.speedup(ts['unfused explorer'], f)}")
    if torch_samples:
        print(f"  fused vs torch SDPA:       {measure.speedup(ts['torch SDPA'], f)}  (target >= 1.0x; torch "
              f"{tinfo['version']} in {a.torch_python}, {tinfo['threads']} threads, max error vs NumPy "
              f"{tinfo['err']:.1e})")
    else:
        print(f"  {note}")
    load = os.getloadavg()
    print(f"load average at end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
