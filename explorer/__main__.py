"""Command line: `python -m explorer demo | report | bench`.

    python -m explorer demo [--out DIR]   compile the essay's MLP, print every stage, write DOT/SVG files
    python -m explorer report ...         HTML report (explorer.report.main)
    python -m explorer bench ...          benchmarks against NumPy (explorer.compare.bench_main)
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Sequence

import numpy as np


def mlp(x, w, b):
    # The essay's example: a matmul, a bias add and a relu.
    return np.maximum(x @ w + b, 0)


def _stage_text(snap) -> str:
    try:
        return snap.text(provenance=True)
    except TypeError:  # an IR whose text() has no provenance option
        return snap.text()


def _fmt_stats(stats: dict) -> str:
    parts = []
    for k, v in stats.items():
        if k == "wall_ms":
            parts.append(f"wall time {v:.2f} ms")
        elif isinstance(v, float):
            parts.append(f"{k}={v:.4g}")
        else:
            parts.append(f"{k}={v}")
    return "\n".join(f"    {p}" for p in parts)


def demo(out_dir: str = "explorer-demo", seed: int = 0) -> int:
    """Compile the MLP on the auto target, print stages and stats, write DOT/SVG, check the result."""
    import explorer
    from explorer.render import have_dot

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((256, 512), dtype=np.float32)
    w = rng.standard_normal((512, 256), dtype=np.float32) / np.float32(np.sqrt(512))
    b = rng.standard_normal(256, dtype=np.float32)
    status = 0
    t0 = time.perf_counter()
    try:
        c = explorer.compile(mlp, x, w, b, target="auto")
    except Exception as e:  # a later stage under construction must not hide the front end
        print(f"compile with target='auto' failed: {type(e).__name__}: {e}")
        print("showing the front-end stages only (target='reference')")
        if not isinstance(e, (ImportError, explorer.BackendUnavailable)):
            status = 1
        c = explorer.compile(mlp, x, w, b, target="reference", stop_after="simplified")
    print(f"compiled {c.name} in {(time.perf_counter() - t0) * 1e3:.1f} ms; target used: {c.target}")
    print(f"stages: {', '.join(c.stage_names)}\n")

    os.makedirs(out_dir, exist_ok=True)
    dot_ok = have_dot()
    for k, snap in enumerate(c.stages):
        print(f"== {snap.name} " + "=" * max(0, 60 - len(snap.name)))
        try:
            print(_stage_text(snap))
        except Exception as e:
            print(f"(text() failed: {type(e).__name__}: {e})")
            status = 1
        print("  stats:")
        print(_fmt_stats(snap.stats))
        base = os.path.join(out_dir, f"{k}_{snap.name}")
        try:
            src = snap.dot()
        except Exception as e:
            print(f"  (dot() failed: {type(e).__name__}: {e})")
            status = 1
            print()
            continue
        with open(base + ".dot", "w") as f:
            f.write(src)
        if dot_ok:
            try:
                with open(base + ".svg", "w") as f:
                    f.write(snap.to_svg())
            except Exception as e:
                print(f"  (SVG rendering failed: {e})")
        print()
    if not dot_ok:
        print("SVG rendering skipped: graphviz's `dot` binary is not installed (apt-get install graphviz, "
              "or conda install graphviz); the .dot files are written")
    print(f"wrote DOT{' and SVG' if dot_ok else ''} files for {len(c.stages)} stages to {os.path.abspath(out_dir)}")

    want = mlp(x, w, b)
    try:
        got = c(x, w, b)
        where = c.target
    except Exception as e:
        print(f"running on target {c.target!r} failed ({type(e).__name__}: {e}); using the reference interpreter")
        if not isinstance(e, (ImportError, explorer.BackendUnavailable)):  # missing pieces are not failures
            status = 1
        got = c.reference(x, w, b)[0]
        where = "reference"
    err = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64))))
    print(f"ran on {where}: output {got.dtype}{list(got.shape)}, max abs error vs numpy = {err:.3g}")
    return status


def _delegate(module: str, func: str, argv: Sequence[str]) -> int:
    import importlib
    try:
        mod = importlib.import_module(module)
        fn = getattr(mod, func)
    except (ImportError, AttributeError):
        print(f"{module}.{func} is not available yet in this checkout")
        return 2
    rc = fn(list(argv))
    return int(rc or 0)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m explorer` and the `kernel-explorer` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m explorer", description="kernel-explorer: watch a NumPy function "
                                "become fused, tiled CUDA/C kernels")
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="compile the essay's MLP and show every stage")
    d.add_argument("--out", default="explorer-demo", help="folder for the DOT/SVG files (default ./explorer-demo)")
    sub.add_parser("report", help="write an HTML report (explorer.report)", add_help=False)
    sub.add_parser("bench", help="benchmark targets against NumPy (explorer.compare)", add_help=False)
    sub.add_parser("numpy-doc", help="print docs/NUMPY.md, the supported NumPy surface, from the tracer's tables")
    if argv and argv[0] in ("report", "bench"):
        if argv[0] == "report":
            return _delegate("explorer.report", "main", argv[1:])
        return _delegate("explorer.compare", "bench_main", argv[1:])
    args = p.parse_args(argv)
    if args.cmd == "numpy-doc":
        from .numpy_api import numpy_surface_markdown
        sys.stdout.write(numpy_surface_markdown())
        return 0
    return demo(args.out)


if __name__ == "__main__":
    sys.exit(main())
