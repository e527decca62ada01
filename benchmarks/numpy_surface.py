"""The NumPy surface of issue 12 on the CPU backend vs NumPy, measured in one run on this machine.

    .venv/bin/python benchmarks/numpy_surface.py [--quick]

One row per construct at transformer-like sizes (float32): concat / hstack of heads, pad, split,
var (layer norm), repeat (grouped-query attention), einsum (attention scores). Ours and NumPy's
timings are interleaved in rounds (neighbours on a shared machine disturb both alike); each column
is the median over rounds of per-round medians, with the spread (min-max of the round medians).
Ours come from Compiled.benchmark (output buffers allocated once); NumPy's from wall time of the call.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import explorer  # noqa: E402


def layer_norm(x, g, b):
    return g * (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5) + b


def rows(seq: int, d: int):
    rng = np.random.default_rng(0)
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    h = d // 64
    return [
        ("concatenate axis -1", lambda a, b: np.concatenate([a, b], axis=-1), [f(seq, d), f(seq, d // 2)]),
        ("hstack heads (8 x 64)", lambda *hs: np.hstack(hs), [f(seq, 64) for _ in range(8)]),
        ("concatenate + tanh", lambda a, b: np.tanh(np.concatenate([a, b], axis=-1)), [f(seq, d), f(seq, d)]),
        ("pad (1, 1) x (3, 3)", lambda x: np.pad(x, ((1, 1), (3, 3))), [f(seq, d)]),
        ("split qkv, q*k+v", lambda x: (lambda q, k, v: q * k + v)(*np.split(x, 3, axis=-1)), [f(seq, 3 * d)]),
        ("layer norm with var", layer_norm, [f(seq, d), f(d), f(d)]),
        ("repeat kv heads x2", lambda k: np.repeat(k, 2, axis=0), [f(h, seq, 64)]),
        ("einsum bhqd,bhkd->bhqk", lambda q, k: np.einsum("bhqd,bhkd->bhqk", q, k), [f(1, h, seq, 64), f(1, h, seq, 64)]),
    ]


def wall_ms(fn, args, repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(*args)
        samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes, few repeats")
    a = p.parse_args(argv)
    seq, d, rounds, repeat = (64, 256, 3, 5) if a.quick else (256, 1024, 5, 15)
    print(f"CPU backend vs NumPy, float32, seq={seq}, width={d}; {rounds} interleaved rounds of {repeat} calls")
    print(f"{'construct':28s} {'ours ms':>16s} {'numpy ms':>16s} {'numpy/ours':>10s}  kernels")
    for name, fn, args in rows(seq, d):
        c = explorer.compile(fn, *args, target="cpu", verbose=False)
        got, want = c(*args), fn(*args)
        got = got if isinstance(got, tuple) else (got,)
        want = want if isinstance(want, tuple) else (want,)
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4, err_msg=name)
        ours, theirs = [], []
        fn(*args)
        for _ in range(rounds):
            ours.append(c.benchmark(*args, warmup=1, repeat=repeat).median_ms)
            theirs.append(wall_ms(fn, args, repeat))
        o, n = statistics.median(ours), statistics.median(theirs)
        print(f"{name:28s} {o:7.3f} [{min(ours):.3f}-{max(ours):.3f}] {n:7.3f} [{min(theirs):.3f}-{max(theirs):.3f}]"
              f" {n / o:9.2f}x  {len(c.kernels)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
