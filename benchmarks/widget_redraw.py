"""Knob change → redraw time of the dashboard for the essay's MLP (matmul + bias + relu), headless.

One "redraw" is everything that happens synchronously when a knob changes: explorer.compile with the
new knobs, then drawing the visible tab (on the Stages tab: graphviz SVG, IR text, diff; on the
Source tab: pygments). Caches are cleared before each change ("cold"), so every sample recompiles
and re-renders; "warm" toggles back to a view seen before (compile and SVG served from caches).
Target: < 300 ms.

    $ .venv/bin/python benchmarks/widget_redraw.py [--n 15]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

TARGET_MS = 300.0


def mlp(x, w, b):
    return np.maximum(x @ w + b, 0)


def measure(target: str, tab: str, n: int, cold: bool) -> list[float]:
    import widgets
    from widgets.panels import graph
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8192, 64)).astype(np.float32)
    w = rng.standard_normal((64, 64)).astype(np.float32)
    b = rng.standard_normal(64).astype(np.float32)
    ex = widgets.Explorer(mlp, x, w, b, target=target)
    assert ex.error.value == "", ex.error.value
    ex.select_tab(tab)
    knobs = ex.knobs
    # knobs that apply on both targets and change the compiled program
    changes = [(knobs.fuse, False), (knobs.fuse, True), (knobs.rules["epilogue"], False),
               (knobs.rules["epilogue"], True), (knobs.vector, 4), (knobs.vector, "auto")]
    samples = []
    for i in range(n):
        widget, value = changes[i % len(changes)]
        if cold:
            ex._cache.clear()
            graph._CACHE.clear()
        t0 = time.perf_counter()
        widget.value = value
        samples.append((time.perf_counter() - t0) * 1e3)
        assert ex.error.value == "", ex.error.value
    return samples


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=15, help="knob changes per configuration (median reported)")
    args = ap.parse_args()
    from explorer import render
    print(f"mlp x[8192,64] @ w[64,64] + b, relu; graphviz dot: {'yes' if render.have_dot() else 'no (DOT text)'}")
    worst = 0.0
    for target in ("cpu", "sim"):
        for tab in ("Stages", "Fusion", "Source"):
            for cold in (True, False):
                s = measure(target, tab, args.n, cold)
                med = statistics.median(s)
                worst = max(worst, med)
                print(f"  {target:4s} {tab:7s} {'cold' if cold else 'warm'}: median {med:7.1f} ms  "
                      f"(min {min(s):.1f}, max {max(s):.1f}, n={len(s)})")
    print(f"worst median {worst:.1f} ms; target < {TARGET_MS:.0f} ms: {'OK' if worst < TARGET_MS else 'OVER'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
