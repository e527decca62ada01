"""Convolution benchmark on the CPU: ResNet-style layers, explorer fused vs unfused vs NumPy vs torch.

    PYTHONPATH=. .venv/bin/python benchmarks/conv.py [--quick] [--layers 3x3_64,dw3x3_32]
    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python benchmarks/conv.py    # one core each

On a loaded 2-core machine an OpenMP kernel stalls whenever one of its threads is descheduled (the
other waits at the barrier), which dominates the medians; OMP_NUM_THREADS=1 compares one core each.

Each layer is the NumPy idiom (np.pad + sliding_window_view + np.einsum, conv + bias + relu) compiled
by the explorer for target='cpu': fused (one kernel: conv with bias and relu in the epilogue) and
unfused (fuse=False: conv, add, maximum as three kernels with two intermediates in memory); NumPy runs
the same function (einsum, optimize=False as written; `np einsum opt` with optimize=True, which
BLAS-backs it); torch's conv2d + relu (channels_last, torch.no_grad) in a child process run by
`--torch-python PATH` (default: this interpreter; '' skips torch; torch is not a project dependency),
e.g. `--torch-python /tmp/torchvenv/bin/python`. The explorer/NumPy variants of a layer are timed
interleaved (explorer.measure); torch, being in another process, is interleaved by chunks: the layer's
budget is split into CHUNKS slices, and each slice runs the in-process variants, then the torch child
for the same time. Printed: medians, interquartile range, GFLOP/s from the median
(2*N*H*W*K*R*S*C/groups flops) and, per layer, "explorer vs torch" (torch median / explorer median:
above 1 means the explorer is faster).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import explorer  # noqa: E402
from explorer import measure  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from child import torch_timing_chunk  # noqa: E402

CHUNKS = 4   # torch runs in a child process: interleave with it in this many slices of each layer's budget

# name: (N, H, W, C, K, R, depthwise)
LAYERS = {
    "3x3_64": (1, 56, 56, 64, 64, 3, False),
    "3x3_128": (1, 28, 28, 128, 128, 3, False),
    "1x1_256_64": (1, 56, 56, 256, 64, 1, False),
    "dw3x3_32": (1, 112, 112, 32, 32, 3, True),
}


def conv_layer(r: int, depthwise: bool, optimize: bool = False):
    p = r // 2
    spec = "nhwcrs,rsc->nhwc" if depthwise else "nhwcrs,rsck->nhwk"

    def conv_bias_relu(x, w, b):
        xp = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
        win = sliding_window_view(xp, (r, r), axis=(1, 2))
        return np.maximum(np.einsum(spec, win, w, optimize=optimize) + b, 0)
    return conv_bias_relu


def inputs(layer: str):
    n, h, w, c, k, r, dw = LAYERS[layer]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, h, w, c), dtype=np.float32)
    wt = rng.standard_normal((r, r, c) if dw else (r, r, c, k), dtype=np.float32) / np.float32(np.sqrt(r * r * c))
    return x, wt, rng.standard_normal(k, dtype=np.float32)


def flops(layer: str) -> int:
    n, h, w, c, k, r, dw = LAYERS[layer]
    return 2 * n * h * w * k * r * r * (1 if dw else c)


TORCH_SETUP = r'''
    x, wt, b = d["x"], d["w"], d["b"]
    r, c, dw = spec["r"], x.shape[-1], spec["depthwise"]
    tx = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
    tw = torch.from_numpy(wt.reshape(r, r, 1, c) if dw else wt).permute(3, 2, 0, 1).contiguous()
    tb = torch.from_numpy(b)

    def run():
        return torch.relu(torch.nn.functional.conv2d(tx, tw, tb, padding=r // 2, groups=c if dw else 1))

    def to_numpy(out):
        return out.permute(0, 2, 3, 1).numpy()
'''


def torch_chunk(python: str, layer: str, npz: Path, budget_s: float) -> dict | str:
    """One slice of torch conv2d + relu timings from the child interpreter `python`."""
    n, h, w, c, k, r, dw = LAYERS[layer]
    return torch_timing_chunk(python, TORCH_SETUP, npz, budget_s, r=r, depthwise=dw)


def bench(layer: str, budget_s: float, torch_python: str, numpy_rows: bool = True) -> tuple[dict[str, measure.Timing], str]:
    """{variant: Timing} for one layer, and a note on the torch child (its version, or why no torch row)."""
    n, h, w, c, k, r, dw = LAYERS[layer]
    x, wt, b = inputs(layer)
    fn = conv_layer(r, dw)
    want = fn(x, wt, b)
    fused = explorer.compile(fn, x, wt, b, target="cpu", verbose=False)
    unfused = explorer.compile(fn, x, wt, b, target="cpu", fuse=False, verbose=False)
    for name, cc in (("fused", fused), ("unfused", unfused)):
        err = float(np.abs(cc(x, wt, b) - want).max())
        assert err < 1e-3, f"{layer} {name}: max error {err}"
    assert len(fused.kernels) == 1, [kk.name for kk in fused.kernels]
    opt = conv_layer(r, dw, optimize=True)
    variants = {"explorer fused": lambda: fused(x, wt, b), "explorer unfused": lambda: unfused(x, wt, b)}
    if numpy_rows:
        variants.update({"numpy einsum": lambda: fn(x, wt, b), "numpy einsum opt": lambda: opt(x, wt, b)})
    chunks = CHUNKS if torch_python else 1
    samples: dict[str, list[float]] = {v: [] for v in variants}
    torch_samples: list[float] = []
    note = "torch: skipped (--torch-python '')" if not torch_python else ""
    with tempfile.TemporaryDirectory() as tmp:
        npz = Path(tmp) / "conv.npz"
        np.savez(npz, x=x, w=wt, b=b, want=want)
        for _ in range(chunks):
            for v, t in measure.interleaved(variants, budget_s=budget_s / chunks, warmup=1).items():
                samples[v] += t.samples_ms
            if torch_python and not note.startswith("torch: no row"):
                res = torch_chunk(torch_python, layer, npz, budget_s / chunks / 2)
                if isinstance(res, str):
                    note = f"torch: no row: {res}"
                else:
                    assert res["err"] < 1e-3, f"{layer} torch: max error {res['err']} vs NumPy"
                    torch_samples += res["samples"]
                    note = f"torch {res['version']} in {torch_python}, {res['threads']} threads, max error vs NumPy {res['err']:.1e}"
    out = {v: measure.summarize(s) for v, s in samples.items()}
    if torch_samples:
        out["torch conv2d+relu"] = measure.summarize(torch_samples)
    return out, note


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a 3 s budget per layer instead of 10 s")
    ap.add_argument("--layers", default=",".join(LAYERS), help="comma-separated: " + ", ".join(LAYERS))
    ap.add_argument("--torch-python", default=sys.executable,
                    help="interpreter for the torch child process (default: this one); '' skips torch")
    ap.add_argument("--no-numpy", action="store_true",
                    help="leave out the NumPy rows (their 10-80 ms calls, interleaved, disturb the explorer's caches "
                         "and timings; torch's child runs alone)")
    a = ap.parse_args(argv)
    budget = 3.0 if a.quick else 10.0
    load = os.getloadavg()
    print(f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, {os.cpu_count()} CPUs, "
          f"load average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"{'layer':<12} {'variant':<18} {'median ms':>10} {'IQR ms':>16} {'min ms':>8} {'n':>4} {'GFLOP/s':>8} "
          f"{'(at min)':>8}  median vs fused")
    for layer in a.layers.split(","):
        ts, note = bench(layer, budget, a.torch_python, not a.no_numpy)
        f = ts["explorer fused"]
        for name, t in ts.items():
            q1, q3 = t.q1_ms, t.q3_ms
            gf, gf_min = flops(layer) / (t.median_ms * 1e6), flops(layer) / (t.min_ms * 1e6)
            rel = "" if name == "explorer fused" else f"{t.median_ms / f.median_ms:6.2f}x slower" \
                if t.median_ms >= f.median_ms else f"{f.median_ms / t.median_ms:6.2f}x faster"
            flag = "  (unstable)" if t.unstable else ""
            print(f"{layer:<12} {name:<18} {t.median_ms:10.3f} {q1:7.3f}-{q3:<8.3f} {t.min_ms:8.3f} {t.repeat:4d} {gf:8.1f} {gf_min:8.1f}  {rel}{flag}")
        tt = ts.get("torch conv2d+relu")
        if tt is not None:
            print(f"{layer:<12} explorer vs torch: {tt.median_ms / f.median_ms:.2f}x torch's speed (median; "
                  f"{tt.min_ms / f.min_ms:.2f}x at min)  [{note}]")
        else:
            print(f"{layer:<12} {note}")
    load = os.getloadavg()
    print(f"load average at end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
