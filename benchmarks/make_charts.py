"""Regenerate the example charts in docs/images/ from a real run on this machine.

    .venv/bin/python benchmarks/make_charts.py                 # best available target
    .venv/bin/python benchmarks/make_charts.py --target sim    # simulator: times are model, labelled so

Writes fusion_timing.png and fusion_roofline.png (the essay's MLP, matmul + bias + relu,
at the memory-bound shape 8192x64 @ 64x64) and sweep.png (a bias + GELU elementwise chain,
fused vs unfused over sizes), and prints every number the charts show.
The local CPU's roof is measured again at the start, in this run.
"""
from __future__ import annotations

import argparse
import os
import sys


from _common import pin_threads, threads_from_argv  # noqa: E402  (standard library only: before NumPy)

_THREADS = threads_from_argv(sys.argv[1:])
if _THREADS:
    pin_threads(_THREADS)

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import explorer  # noqa: E402
from explorer import costmodel  # noqa: E402
from explorer.pipeline import resolve_target  # noqa: E402


def mlp(x, w, b):
    return np.maximum(x @ w + b, 0)


def bias_gelu(x, b):
    y = x + b
    return 0.5 * y * (1.0 + np.tanh(0.7978845608 * (y + 0.044715 * y * y * y)))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", default="auto")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                 "docs", "images"))
    p.add_argument("--repeat", type=int, default=30)
    p.add_argument("--threads", type=int, default=None,
                   help="OpenMP/BLAS threads for every measurement (steadier numbers on a busy machine)")
    a = p.parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    target = resolve_target(a.target)
    dev = costmodel.local_cpu(refresh=True) if target != "cuda" else costmodel.device("cuda")
    print(f"target {target}; roofline device: {dev.label()}")

    rng = np.random.default_rng(0)
    m, k, n = (8192, 64, 64) if target != "sim" else (2048, 64, 64)
    x = rng.standard_normal((m, k), dtype=np.float32)
    w = rng.standard_normal((k, n), dtype=np.float32)
    b = rng.standard_normal(n, dtype=np.float32)
    r = explorer.compare(mlp, x, w, b, target=target, baselines=("numpy", "numexpr", "torch"),
                         repeat=a.repeat, warmup=3, device=dev)
    print(r.table())
    for p_ in r.roofline_points():
        print(f"  roofline point: {p_['variant']:8s} {p_['label']:28s} "
              f"{'measured' if p_['measured'] else 'model':8s} I={p_['intensity']:.3g} flop/B "
              f"{p_['gflops']:.3g} GFLOP/s")
    r.plot_timing().savefig(os.path.join(a.out, "fusion_timing.png"), dpi=110)
    r.plot_roofline().savefig(os.path.join(a.out, "fusion_roofline.png"), dpi=110)

    sizes = [1 << s for s in range(10, 23, 2)] if target != "sim" else [1 << s for s in range(8, 15, 2)]
    s = explorer.sweep(bias_gelu, sizes=sizes, target=target, repeat=max(5, a.repeat // 3), warmup=2, device=dev)
    print(s.table())
    s.plot().savefig(os.path.join(a.out, "sweep.png"), dpi=110)
    print("wrote", ", ".join(os.path.join(a.out, f) for f in ("fusion_timing.png", "fusion_roofline.png",
                                                                "sweep.png")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
