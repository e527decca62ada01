"""The pycuda backend. GPU tests are marked `gpu` and skip with the reason when no GPU is usable; the
rest check, without a GPU, that unavailability is reported in one line and never as a crash."""
from __future__ import annotations

import builtins
import sys
import types

import numpy as np
import pytest

from explorer.backends import cuda
from explorer.codegen.cuda import generate_cuda
from explorer.errors import BackendUnavailable, CompileError

try:
    import cuda_programs as cp
except ImportError:
    from tests import cuda_programs as cp  # type: ignore


@pytest.fixture
def gpu():
    ok, why = cuda.available()
    if not ok:
        pytest.skip(f"no usable GPU: {why}")
    return cuda.device_info()


# ----------------------------------------------------------------------------- on a GPU
@pytest.mark.gpu
def test_device_info(gpu):
    assert gpu["sm_count"] > 0 and gpu["arch"].startswith("sm_") and gpu["peak_fp32_gflops"] > 0
    assert gpu["memory_bandwidth_gbs"] is None or gpu["memory_bandwidth_gbs"] > 100


@pytest.mark.gpu
def test_elementwise_on_gpu(gpu):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(10001).astype(np.float32)
    x[7] = np.nan
    y = rng.standard_normal(10001).astype(np.float32)
    for aligned in (True, False):
        exe = cuda.build_codegen(generate_cuda(cp.elementwise(aligned=aligned)))
        got, = exe.run([x, y])
        np.testing.assert_allclose(got, cp.elementwise_ref(x, y), rtol=1e-5, atol=1e-6, equal_nan=True)


@pytest.mark.gpu
@pytest.mark.parametrize("nx,ny", cp.REDUCTION_SHAPES)
def test_reduction_on_gpu(gpu, nx, ny):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((37, 1000)) * 4).astype(np.float32)
    x[5, 999] = np.nan
    got, = cuda.build_codegen(generate_cuda(cp.logsumexp(nx=nx, ny=ny))).run([x])
    np.testing.assert_allclose(got, cp.logsumexp_ref(x), rtol=1e-5, equal_nan=True)


@pytest.mark.gpu
def test_matmul_on_gpu_and_event_timing(gpu):
    rng = np.random.default_rng(2)
    a = rng.standard_normal((100, 70)).astype(np.float32)
    b = rng.standard_normal((70, 90)).astype(np.float32)
    bias = rng.standard_normal(90).astype(np.float32)
    cg = generate_cuda(cp.matmul_bias_relu())
    exe = cuda.build_codegen(cg)
    got, = exe.run([a, b, bias])
    np.testing.assert_allclose(got, cp.matmul_bias_relu_ref(a, b, bias), rtol=1e-4, atol=1e-4)
    t = exe.time([a, b, bias], warmup=2, repeat=5)
    assert t.source == "cuda-events" and t.repeat == 5 and 0 < t.min_ms <= t.median_ms
    assert set(t.per_kernel_ms) == {"fused_matmul_add_maximum"}
    t2 = exe.time([a, b, bias], warmup=1, repeat=3, include_copies=True)
    assert t2.median_ms > 0


@pytest.mark.gpu
def test_broken_override_is_compile_error(gpu):
    cg = generate_cuda(cp.logsumexp())
    with pytest.raises(CompileError, match="fused_max_sub_exp_sum_log_add"):
        cuda.build_codegen(cg, overrides={0: cg.kernels[0].source.replace("logf(s)", "logf(s) + oops")})


@pytest.mark.gpu
def test_compile_target_cuda_end_to_end(gpu):
    import explorer
    x = np.random.default_rng(3).standard_normal((256, 64)).astype(np.float32)
    w = np.random.default_rng(4).standard_normal((64, 32)).astype(np.float32)
    bias = np.zeros(32, np.float32)
    c = explorer.compile(lambda x, w, b: np.maximum(x @ w + b, 0), x, w, bias, target="cuda")
    if "codegen" not in c.stage_names:
        pytest.skip("the pipeline does not reach codegen yet")
    np.testing.assert_allclose(c(x, w, bias), np.maximum(x @ w + bias, 0), rtol=1e-4, atol=1e-4)
    assert c.benchmark(x, w, bias, warmup=1, repeat=3).source == "cuda-events"


# ----------------------------------------------------------------------------- without a GPU
def test_available_never_raises():
    ok, why = cuda.available()
    assert isinstance(ok, bool) and isinstance(why, str) and why and "\n" not in why


@pytest.fixture
def fresh(monkeypatch):
    """Forget the cached availability and any imported pycuda, restored afterwards."""
    monkeypatch.setitem(cuda._state, "available", None)
    for name in [m for m in sys.modules if m == "pycuda" or m.startswith("pycuda.")]:
        monkeypatch.delitem(sys.modules, name)
    return monkeypatch


def _block_import(monkeypatch, exc: BaseException):
    real = builtins.__import__

    def fake(name, *a, **k):
        if name == "pycuda" or name.startswith("pycuda."):
            raise exc
        return real(name, *a, **k)
    monkeypatch.setattr(builtins, "__import__", fake)


def test_reason_when_pycuda_missing(fresh):
    _block_import(fresh, ModuleNotFoundError("No module named 'pycuda'", name="pycuda"))
    ok, why = cuda.available()
    assert ok is False and "pip install kernel-explorer[cuda]" in why


def test_reason_when_driver_missing(fresh):
    _block_import(fresh, ImportError("libcuda.so.1: cannot open shared object file: No such file or directory"))
    ok, why = cuda.available()
    assert ok is False and "no NVIDIA driver" in why and "libcuda" in why


def _fake_pycuda(monkeypatch, init=None, count=1):
    drv = types.ModuleType("pycuda.driver")

    class Error(Exception):
        pass

    def _init():
        if init:
            raise init

    class Device:
        def __init__(self, i): self.i = i
        @staticmethod
        def count(): return count
        def name(self): return "Fake GPU"

    drv.Error, drv.init, drv.Device = Error, _init, Device
    pkg = types.ModuleType("pycuda")
    pkg.driver = drv
    monkeypatch.setitem(sys.modules, "pycuda", pkg)
    monkeypatch.setitem(sys.modules, "pycuda.driver", drv)


def test_reason_when_driver_fails_or_no_device(fresh):
    _fake_pycuda(fresh, init=RuntimeError("cuInit failed: CUDA_ERROR_NO_DEVICE"))
    ok, why = cuda.available()
    assert ok is False and "failed to initialize" in why and "CUDA_ERROR_NO_DEVICE" in why
    fresh.setitem(cuda._state, "available", None)
    _fake_pycuda(fresh, count=0)
    assert cuda.available() == (False, "the NVIDIA driver reports no CUDA device")
    fresh.setitem(cuda._state, "available", None)
    _fake_pycuda(fresh, count=2)
    assert cuda.available() == (True, "Fake GPU (device 0 of 2)")


def _compiled_for_cuda():
    from explorer.compiled import Compiled
    from explorer.pipeline import Options, Snapshot
    x = np.ones(10001, np.float32)
    cg = generate_cuda(cp.elementwise())
    return Compiled(lambda x, y: x, [x, x], [Snapshot("codegen", cg)], Options(target="cuda")), x


def test_compiled_with_cuda_target_raises_backend_unavailable(monkeypatch):
    monkeypatch.setitem(cuda._state, "available", (False, "no NVIDIA driver here (test)"))
    c, x = _compiled_for_cuda()
    with pytest.raises(BackendUnavailable, match=r"target 'cuda' is unavailable here: no NVIDIA driver here \(test\)"):
        c.run(x, x)
    with pytest.raises(BackendUnavailable, match="no NVIDIA driver here"):
        cuda.build_codegen(c.codegen)


def test_compiled_with_cuda_target_names_the_real_reason_here():
    ok, why = cuda.available()
    if ok:
        pytest.skip("this machine has a usable GPU")
    c, x = _compiled_for_cuda()
    with pytest.raises(BackendUnavailable) as ei:
        c.run(x, x)
    assert why in str(ei.value)
