"""Time trace + simplify of a 3-layer MLP (median of 50 runs). Target: < 20 ms.

    .venv/bin/python benchmarks/trace_mlp.py
"""
from __future__ import annotations

import numpy as np

import explorer
from explorer import measure
from explorer.passes.simplify import simplify


def mlp3(x, w1, b1, w2, b2, w3, b3):
    h = np.maximum(x @ w1 + b1, 0)
    h = np.maximum(h @ w2 + b2, 0)
    return h @ w3 + b3


def main(runs: int = 50) -> float:
    rng = np.random.default_rng(0)
    dims = [(256, 512), (512, 512), (512, 256), (256, 10)]
    x = rng.standard_normal(dims[0], dtype=np.float32)
    params = []
    for k_in, k_out in dims[1:]:
        params += [rng.standard_normal((k_in, k_out), dtype=np.float32), np.zeros(k_out, np.float32)]
    simplify(explorer.trace(mlp3, x, *params))  # warm caches (imports, linecache)
    g = simplify(explorer.trace(mlp3, x, *params))
    t = measure.measure(lambda: simplify(explorer.trace(mlp3, x, *params)), warmup=0, repeat=runs)
    med = t.median_ms
    print(f"trace + simplify of a 3-layer MLP ({len(g.op_nodes())} ops): median {med:.3f} ms over {runs} runs "
          f"(IQR {t.q1_ms:.3f}–{t.q3_ms:.3f}, min {t.min_ms:.3f} ms); target < 20 ms"
          + (f" — {t.flag_text()}" if t.unstable else ""))
    return med


if __name__ == "__main__":
    main()
