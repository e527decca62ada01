"""Time trace + simplify of a 3-layer MLP (median of 50 runs). Target: < 20 ms.

    .venv/bin/python benchmarks/trace_mlp.py
    .venv/bin/python benchmarks/trace_mlp.py --against HEAD~1 [--rounds 8]

--against REV times this tree and REV (a temporary `git worktree`) in two child processes that
take turns (A B B A ...), so drift on a shared machine hits both alike, and prints both with
their spreads and the ratio.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from _common import add_worktree, remove_worktree, short_revision  # benchmarks/ is sys.path[0] (standard library only)

if os.environ.get("KE_BENCH_ROOT"):          # a child of --against imports that checkout's explorer
    sys.path.insert(0, os.environ["KE_BENCH_ROOT"])

import numpy as np

import explorer
from explorer import measure
from explorer.passes.simplify import simplify


def mlp3(x, w1, b1, w2, b2, w3, b3):
    h = np.maximum(x @ w1 + b1, 0)
    h = np.maximum(h @ w2 + b2, 0)
    return h @ w3 + b3


def _inputs():
    rng = np.random.default_rng(0)
    dims = [(256, 512), (512, 512), (512, 256), (256, 10)]
    x = rng.standard_normal(dims[0], dtype=np.float32)
    params = []
    for k_in, k_out in dims[1:]:
        params += [rng.standard_normal((k_in, k_out), dtype=np.float32), np.zeros(k_out, np.float32)]
    return x, params


def main(runs: int = 50) -> float:
    x, params = _inputs()
    simplify(explorer.trace(mlp3, x, *params))  # warm caches (imports, linecache)
    g = simplify(explorer.trace(mlp3, x, *params))
    t = measure.measure(lambda: simplify(explorer.trace(mlp3, x, *params)), warmup=0, repeat=runs)
    med = t.median_ms
    print(f"trace + simplify of a 3-layer MLP ({len(g.op_nodes())} ops): median {med:.3f} ms over {runs} runs "
          f"(IQR {t.q1_ms:.3f}–{t.q3_ms:.3f}, min {t.min_ms:.3f} ms); target < 20 ms"
          + (f" — {t.flag_text()}" if t.unstable else ""))
    return med


def serve() -> int:
    """Child of --against: each line 'REPEAT' on stdin -> one JSON line of ms samples."""
    x, params = _inputs()
    for _ in range(3):
        simplify(explorer.trace(mlp3, x, *params))
    for line in sys.stdin:
        t = measure.measure(lambda: simplify(explorer.trace(mlp3, x, *params)), warmup=0, repeat=int(line))
        print(json.dumps({"ms": list(t.samples_ms)}), flush=True)
    return 0


def against(rev: str, rounds: int, repeat: int = 10) -> int:
    root = Path(__file__).resolve().parents[1]
    sha = short_revision(str(root), rev)
    if sha is None:
        return 2
    wt = add_worktree(str(root), rev)
    kids = []
    try:
        for r in (str(root), wt):
            env = dict(os.environ, KE_BENCH_ROOT=r, PYTHONPATH=r)
            kids.append(subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--serve"], env=env,
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
        samples: list[list[float]] = [[], []]
        for k in range(rounds):
            for i in ((0, 1) if k % 2 == 0 else (1, 0)):
                kids[i].stdin.write(f"{repeat}\n")
                kids[i].stdin.flush()
                samples[i] += json.loads(kids[i].stdout.readline())["ms"]
    finally:
        for p in kids:
            p.stdin.close()
            p.wait(timeout=60)
        remove_worktree(str(root), wt)
    after, before = (measure.summarize(s) for s in samples)
    r = measure.ratio(after, before)
    print(f"trace + simplify of a 3-layer MLP, this tree vs {rev} = {sha}, {rounds} rounds x "
          f"{repeat} runs, taking turns; load average {os.getloadavg()[0]:.1f}")
    for name, t in (("before", before), ("after", after)):
        print(f"  {name:<6} median {t.median_ms:.3f} ms (IQR {t.q1_ms:.3f}-{t.q3_ms:.3f}, min {t.min_ms:.3f})")
    print(f"  after/before {measure.fmt_ratio(r.value)}" + (" (unstable: rerun)" if r.unstable else ""))
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--against", metavar="REV", help="also time git revision REV, interleaved")
    ap.add_argument("--rounds", type=int, default=8, help="--against: turns per tree (default 8)")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.serve:
        sys.exit(serve())
    if a.against:
        sys.exit(against(a.against, a.rounds))
    main()
