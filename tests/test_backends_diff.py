"""Differential suite through all six stages: every case of test_reference_diff compiled for the
loop-IR targets (sim, cpu), fused and unfused, must equal NumPy; every generated CUDA kernel
compiles with nvcc when present."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

import explorer
from test_reference_diff import CASES, _check, make

# f64 tolerance allows float64 results computed from float32 work (e.g. an f32 matmul divided by an
# f64 scalar), where accumulation order and fused multiply-add differ from NumPy's by ~1e-8.
TOL = {np.dtype(np.float16): 2e-2, np.dtype(np.float32): 2e-4, np.dtype(np.float64): 1e-7}


def check(got, want, label):
    _check(got if isinstance(got, tuple) else (got,), want, label, TOL)


def _cpu_ok():
    from explorer.backends import cpu
    return cpu.available()[0]


def _cuda_ok():
    from explorer.backends import cuda
    return cuda.available()


TARGETS = ["sim", pytest.param("cpu", marks=pytest.mark.skipif(not _cpu_ok(), reason="no C compiler")),
           pytest.param("cuda", marks=[pytest.mark.gpu,
                                       pytest.mark.skipif(not _cuda_ok()[0], reason=f"no GPU: {_cuda_ok()[1]}")])]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", sorted(CASES))
def test_all_stages_equal_numpy(name, target):
    fn, spec = CASES[name]
    args = make(spec)
    c = explorer.compile(fn, *args, target=target, verbose=False)
    assert c.stage_names == ["traced", "simplified", "fused", "lowered", "tiled", "vectorized", "codegen"]
    check(c(*args), fn(*args), f"{name} on {target}")


UNFUSED = ["bcast_row", "softmax", "layernorm", "matmul_bias_relu", "gelu_tanh", "sum_axis0", "batch_matmul"]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", [n for n in UNFUSED if n in CASES] or sorted(CASES)[:5])
def test_unfused_equal_numpy(name, target):
    fn, spec = CASES[name]
    args = make(spec)
    c = explorer.compile(fn, *args, target=target, fuse=False, verbose=False)
    check(c(*args), fn(*args), f"{name} unfused on {target}")


def mlp(x, w, b):
    return np.maximum(x @ w + b, 0)


@pytest.mark.skipif(not _cpu_ok(), reason="no C compiler")
def test_non_divisible_large_matmul_cpu():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1000, 999), dtype=np.float32)
    w = rng.standard_normal((999, 1001), dtype=np.float32)
    b = rng.standard_normal(1001, dtype=np.float32)
    c = explorer.compile(mlp, x, w, b, target="cpu", verbose=False)
    np.testing.assert_allclose(c(x, w, b), mlp(x, w, b), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("target", TARGETS)
def test_non_divisible_matmul_tiles(target):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((100, 99), dtype=np.float32)
    w = rng.standard_normal((99, 101), dtype=np.float32)
    b = rng.standard_normal(101, dtype=np.float32)
    c = explorer.compile(mlp, x, w, b, target=target, verbose=False)
    np.testing.assert_allclose(c(x, w, b), mlp(x, w, b), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("axis", [0, 1, 2, (0, 2), None])
@pytest.mark.parametrize("keepdims", [False, True])
def test_reductions_every_axis(target, axis, keepdims):
    x = np.random.default_rng(2).standard_normal((5, 6, 7)).astype(np.float32)
    f = lambda x: (x * 2).sum(axis=axis, keepdims=keepdims) + x.max(axis=axis, keepdims=keepdims)  # noqa: E731
    c = explorer.compile(f, x, target=target, verbose=False)
    check(c(x), f(x), f"axis={axis} keepdims={keepdims}")


def _nvcc():
    from explorer.backends import nvcc
    return nvcc.available()[0]


@pytest.mark.skipif(not _nvcc(), reason="nvcc not on PATH")
@pytest.mark.parametrize("name", sorted(CASES))
def test_generated_cuda_compiles_with_nvcc(name):
    from explorer.backends import nvcc
    fn, spec = CASES[name]
    args = make(spec)
    c = explorer.compile(fn, *args, target="sim", verbose=False)
    assert c.codegen.language == "cuda"
    nvcc.check(c.codegen.source(), arch="sm_80", mode="ptx")
