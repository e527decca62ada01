"""GPU benchmark: generated CUDA kernels vs the measured copy bandwidth, cuBLAS, torch eager and torch.compile.

    python benchmarks/gpu.py            # on a machine with an NVIDIA GPU, pycuda and torch (or cupy)
    python benchmarks/gpu.py --quick    # smaller sizes, fewer repeats

Without a usable GPU it prints one line saying why and exits 0. Every number is measured in this
run with CUDA events (explorer: Compiled.benchmark, copies excluded; torch/cupy: their events).
Rows whose explorer side cannot compile yet print the reason instead of a number.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import explorer  # noqa: E402
from explorer.backends import cuda  # noqa: E402
from explorer.errors import ExplorerError  # noqa: E402


# ----------------------------------------------------------------------------- baselines
def _torch():
    try:
        import torch
        return torch if torch.cuda.is_available() else None
    except Exception:
        return None


def _cupy():
    try:
        import cupy
        cupy.cuda.runtime.getDeviceCount()
        return cupy
    except Exception:
        return None


def event_time(fn: Callable[[], Any], warmup: int, repeat: int) -> float:
    """Median ms of fn() with CUDA events from torch (or cupy)."""
    torch, cp = _torch(), _cupy()
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeat):
        if torch is not None:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record(); fn(); b.record(); b.synchronize()
            samples.append(a.elapsed_time(b))
        else:
            a, b = cp.cuda.Event(), cp.cuda.Event()
            a.record(); fn(); b.record(); b.synchronize()
            samples.append(cp.cuda.get_elapsed_time(a, b))
    return statistics.median(samples)


def to_dev(x: np.ndarray):
    torch = _torch()
    if torch is not None:
        return torch.from_numpy(x).cuda()
    return _cupy().asarray(x)


def copy_bandwidth(nbytes: int, warmup: int, repeat: int) -> float:
    """Device-to-device copy GB/s (read + write counted)."""
    src = to_dev(np.ones(nbytes // 4, np.float32))
    torch = _torch()
    dst = torch.empty_like(src) if torch is not None else _cupy().empty_like(src)
    ms = event_time(lambda: dst.copy_(src) if torch is not None else dst.__setitem__(Ellipsis, src), warmup, repeat)
    return 2 * nbytes / (ms * 1e-3) / 1e9


# ----------------------------------------------------------------------------- explorer side
def explorer_ms(fn, *args, warmup: int, repeat: int, **kw) -> tuple[float | None, str]:
    try:
        c = explorer.compile(fn, *args, target="cuda", **kw)
        if "codegen" not in c.stage_names:
            return None, "pipeline stops before codegen"
        t = c.benchmark(*args, warmup=warmup, repeat=repeat)
        return t.median_ms, ""
    except ExplorerError as e:
        return None, str(e).splitlines()[0][:70]


def chain(a, b):
    return np.maximum(np.tanh(a * 1.5 + b) * b - a / 3, 0.1) + a * b


def softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def layernorm(x, g, b):
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-5) * g + b


def mlp(x, w, b):
    return np.maximum(x @ w + b, 0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    ok, why = cuda.available()
    if not ok:
        print(f"benchmarks/gpu.py: skipped, no usable GPU ({why})")
        return 0
    torch = _torch()
    if torch is None and _cupy() is None:
        print("benchmarks/gpu.py: skipped, neither torch nor cupy is installed for the cuBLAS/torch baselines")
        return 0
    warmup, repeat = (2, 5) if args.quick else (5, 30)
    info = cuda.device_info()
    print(f"# {info['name']} ({info['arch']}, {info['sm_count']} SMs; datasheet-style estimates: "
          f"{info['memory_bandwidth_gbs'] or float('nan'):.0f} GB/s, {info['peak_fp32_gflops'] / 1e3:.1f} FP32 TFLOP/s)")
    rng = np.random.default_rng(0)
    rows: list[tuple[str, str, str, str, str]] = []

    def row(name, ours, base, ratio, target):
        rows.append((name, ours, base, ratio, target))

    n = (1 << 22) if args.quick else (1 << 24)
    copy_gbs = copy_bandwidth(n * 4, warmup, repeat)
    row("device copy (measured)", "", f"{copy_gbs:.0f} GB/s", "", "")

    # fused elementwise chain: 2 reads + 1 write
    a, b = rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)
    ms, err = explorer_ms(chain, a, b, warmup=warmup, repeat=repeat)
    gbs = 3 * n * 4 / (ms * 1e-3) / 1e9 if ms else None
    row("8-op elementwise chain, 16M f32", f"{gbs:.0f} GB/s" if gbs else err, f"copy {copy_gbs:.0f} GB/s",
        f"{gbs / copy_gbs:.2f}" if gbs else "n/a", ">= 0.90")

    # row reduction: read R*C, write R
    r, c = (2048, 2048) if args.quick else (8192, 4096)
    x = rng.standard_normal((r, c)).astype(np.float32)
    ms, err = explorer_ms(lambda x: x.sum(axis=1), x, warmup=warmup, repeat=repeat)
    gbs = (r * c + r) * 4 / (ms * 1e-3) / 1e9 if ms else None
    row(f"row sum {r}x{c}", f"{gbs:.0f} GB/s" if gbs else err, f"copy {copy_gbs:.0f} GB/s",
        f"{gbs / copy_gbs:.2f}" if gbs else "n/a", ">= 0.90")

    # softmax / layernorm vs torch eager and torch.compile (time ratio: ours / torch.compile)
    if torch is not None:
        xt = to_dev(x)
        g, bb = np.ones(c, np.float32), np.zeros(c, np.float32)
        gt, bt = to_dev(g), to_dev(bb)
        for name, ours_fn, ours_args, tfn, targs in (
                ("softmax", softmax, (x,), lambda t: torch.softmax(t, dim=-1), (xt,)),
                ("layernorm", layernorm, (x, g, bb),
                 lambda t, g_, b_: torch.nn.functional.layer_norm(t, (c,), g_, b_, 1e-5), (xt, gt, bt))):
            ms, err = explorer_ms(ours_fn, *ours_args, warmup=warmup, repeat=repeat)
            eager = event_time(lambda: tfn(*targs), warmup, repeat)
            try:
                comp = torch.compile(tfn)
                comp_ms = event_time(lambda: comp(*targs), warmup, repeat)
            except Exception as e:  # no triton / inductor: say so
                comp_ms, err = None, err or f"torch.compile failed: {e}"[:70]
            base = f"eager {eager:.3f} ms, compile {comp_ms:.3f} ms" if comp_ms else f"eager {eager:.3f} ms"
            row(f"{name} {r}x{c}", f"{ms:.3f} ms" if ms else err, base,
                f"{ms / comp_ms:.2f}x time" if ms and comp_ms else "n/a", "<= 1.10x time")

    # SGEMM and HGEMM vs cuBLAS
    m = 2048 if args.quick else 4096
    for dtype, label, target in ((np.float32, "SGEMM", ">= 0.70"), (np.float16, "fp16 GEMM", ">= 0.50")):
        A = rng.standard_normal((m, m)).astype(dtype)
        B = rng.standard_normal((m, m)).astype(dtype)
        ms, err = explorer_ms(lambda a, b: a @ b, A, B, warmup=warmup, repeat=repeat)
        At, Bt = to_dev(A), to_dev(B)
        blas = event_time(lambda: At @ Bt, warmup, repeat)
        tf = 2 * m ** 3 / 1e12
        row(f"{label} {m}^3", f"{tf / (ms * 1e-3):.1f} TFLOP/s" if ms else err,
            f"cuBLAS {tf / (blas * 1e-3):.1f} TFLOP/s", f"{blas / ms:.2f}" if ms else "n/a", target)

    # matmul + bias + relu, memory-bound shape: fused vs unfused (fuse=False: one kernel per op)
    mm = 4096 if args.quick else 16384
    X = rng.standard_normal((mm, 256)).astype(np.float32)
    W = rng.standard_normal((256, 256)).astype(np.float32)
    bias = rng.standard_normal(256).astype(np.float32)
    fused, err1 = explorer_ms(mlp, X, W, bias, warmup=warmup, repeat=repeat)
    unfused, err2 = explorer_ms(mlp, X, W, bias, warmup=warmup, repeat=repeat, fuse=False)
    row(f"matmul+bias+relu {mm}x256 @ 256x256", f"fused {fused:.3f} ms" if fused else err1,
        f"unfused {unfused:.3f} ms" if unfused else err2,
        f"{unfused / fused:.2f}x" if fused and unfused else "n/a", ">= 1.8x")

    widths = [max(len(str(rw[i])) for rw in rows + [("case", "explorer", "baseline", "ratio", "target")])
              for i in range(5)]
    for rw in [("case", "explorer", "baseline", "ratio", "target")] + rows:
        print(" | ".join(str(v).ljust(w) for v, w in zip(rw, widths)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
