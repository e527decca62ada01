"""Issue 4's fusion acceptance: kernel counts and the simulator's byte counters."""
from __future__ import annotations

import numpy as np
import pytest

import explorer


def mlp(x, w, b):
    return np.maximum(x @ w + b, 0)


def softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@pytest.fixture
def mlp_args():
    rng = np.random.default_rng(0)
    return (rng.standard_normal((128, 64), dtype=np.float32), rng.standard_normal((64, 96), dtype=np.float32),
            rng.standard_normal(96, dtype=np.float32))


def test_mlp_one_kernel_fused_three_unfused(mlp_args):
    assert len(explorer.compile(mlp, *mlp_args, target="sim", verbose=False).kernels) == 1
    assert len(explorer.compile(mlp, *mlp_args, target="sim", fuse=False, verbose=False).kernels) == 3


def test_softmax_at_most_two_kernels():
    x = np.random.default_rng(1).standard_normal((32, 100)).astype(np.float32)
    c = explorer.compile(softmax, x, target="sim", verbose=False)
    assert len(c.kernels) <= 2
    np.testing.assert_allclose(c(x), softmax(x), rtol=1e-5, atol=1e-6)
    c2 = explorer.compile(explorer.nn.softmax, x, target="sim", verbose=False)
    assert len(c2.kernels) <= 2


def global_bytes(c, args):
    exe = c.executable()
    exe.run(c.backend_inputs(c.check_args(args)))
    loads = sum(v["global_load_bytes"] for k, v in exe.counters.items() if k != "total")
    stores = sum(v["global_store_bytes"] for k, v in exe.counters.items() if k != "total")
    return loads, stores


def test_simulator_bytes_fused_vs_unfused_differ_by_intermediates(mlp_args):
    M, N = 128, 96
    fused = global_bytes(explorer.compile(mlp, *mlp_args, target="sim", verbose=False), mlp_args)
    unfused = global_bytes(explorer.compile(mlp, *mlp_args, target="sim", fuse=False, verbose=False), mlp_args)
    intermediates = 2 * M * N * 4    # x@w and x@w+b, float32: never written or re-read when fused
    assert unfused[1] - fused[1] == intermediates      # stores
    assert unfused[0] - fused[0] == intermediates      # loads (each read back once)
    assert sum(fused) < sum(unfused)
