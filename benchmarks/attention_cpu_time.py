"""CPU seconds per call of fused attention and NumPy, one thread each: the work per call, which neighbours
on a shared machine do not inflate (wall time does). Run it with one thread for both:

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python benchmarks/attention_cpu_time.py [S]

With more threads the number includes OpenMP/BLAS workers spinning while they wait, so it is not the work.
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import explorer  # noqa: E402
from attention import attention, inputs  # noqa: E402


def cpu_seconds(call, n: int = 5) -> list[float]:
    """CPU seconds (time.process_time) of n calls after one warm-up."""
    call()
    out = []
    for _ in range(n):
        t0 = time.process_time()
        call()
        out.append(time.process_time() - t0)
    return out


if __name__ == "__main__":
    s = int(sys.argv[1]) if len(sys.argv) > 1 else 1024
    q, k, v = inputs(s)
    # keep the Compiled alive: the sampler's calls hold raw pointers into its executable's buffers
    compiled = explorer.compile(attention, q, k, v, target="cpu", verbose=False)
    fused = compiled.executable().sampler([q, k, v])
    flops = 4 * 8 * s * s * 64
    for name, call in (("fused (flash)", fused.sample), ("numpy", lambda: attention(q, k, v))):
        ts = cpu_seconds(call)
        med = statistics.median(ts)
        print(f"B1 H8 S{s} D64 {name:<14} CPU time per call: median {med * 1e3:.3g} ms "
              f"(min {min(ts) * 1e3:.3g}, max {max(ts) * 1e3:.3g}, n={len(ts)}), {flops / med / 1e9:.3g} GFLOP/s")
