"""CUDA codegen from hand-tiled loop IR: the source says what it should, deterministically, and (run on the
CPU through tests/cuda_emu.py, one OS thread per CUDA thread) computes what NumPy computes."""
from __future__ import annotations

import re

import numpy as np
import pytest

from explorer.errors import ScheduleError
from explorer.loopir import (Buffer, Call, Cast, Comment, Const, For, Kernel, Program, Store, Var, call)
from explorer.codegen import generate
from explorer.codegen.cuda import generate_cuda

try:
    import cuda_programs as cp
    import cuda_emu
except ImportError:  # tests/ is a package in some layouts
    from tests import cuda_programs as cp, cuda_emu  # type: ignore


def _one(prog: Program) -> str:
    cg = generate_cuda(prog)
    assert cg.language == "cuda" and len(cg.kernels) == len(prog.kernels)
    return cg.kernels[0].source


def test_source_is_deterministic():
    for name, prog in cp.all_programs().items():
        a = generate_cuda(prog).source()
        b = generate_cuda(cp.all_programs()[name]).source()
        assert a == b, name
    assert generate(cp.elementwise(), target="cuda").source() == generate_cuda(cp.elementwise()).source()


def test_elementwise_bound_guarded_float4():
    cg = generate_cuda(cp.elementwise())
    k = cg.kernels[0]
    src = k.source
    assert k.launch == {"grid": (10, 1, 1), "block": (256, 1, 1), "shared_bytes": 0, "dynamic_shared_bytes": 0}
    assert 'extern "C" __global__ void __launch_bounds__(256) fused_tanh_mul_add_maximum(' in src
    assert "const float* __restrict__ x, const float* __restrict__ y, float* __restrict__ out0)" in src
    # bound loops are index reads, not loops
    assert "const int bx = blockIdx.x;" in src and "const int tx = threadIdx.x;" in src
    assert "for (int bx" not in src and "for (int tx" not in src
    # the guarded vector body uses float4 for both loads and the store; the tail is a guarded scalar loop
    assert "if ((bx * 256 + tx) * 4 + 4 <= 10001) {" in src
    assert src.count("*reinterpret_cast<const float4*>(") == 2
    assert "*reinterpret_cast<float4*>(out0 + (bx * 256 + tx) * 4) = make_float4(" in src
    assert "if ((bx * 256 + tx) * 4 + v < 10001) {" in src
    assert "tanhf(" in src and "ke_max(" in src
    # the header comment carries group, ops, provenance and schedule
    assert "fusion group g0 (elementwise)" in src and "ops: tanh -> mul -> add -> sub -> maximum" in src
    assert "from: demo.py:3" in src and "schedule: split(i, 4); vectorize(v)" in src
    # helpers live in the prelude only
    assert "__device__" not in src and "ke_max(float a, float b)" in cg.prelude


def test_vectorized_falls_back_when_not_provably_aligned():
    src = _one(cp.elementwise(aligned=False))
    assert "reinterpret_cast" not in src and "make_float4" not in src
    assert "not provably float4-able" in src and "#pragma unroll\n  for (int v = 0; v < 4; ++v) {" in src


def test_float4_needs_stride_one_f32_and_no_aliasing():
    x = Buffer("x", (64,))
    v, t = Var("v"), Var("t")
    # stride 2 in v: not contiguous
    k1 = Kernel("k1", (x, Buffer("out0", (128,))), (For(t, 16, (For(v, 4, (
        Store(Buffer("out0", (128,)), (t * 8 + v * 2,), x[t * 4 + v]),), kind="vectorized"),), kind="threadIdx.x"),),
        outputs=("out0",))
    # in-place update reads and writes the same buffer: lanes would see a different order
    inout = Buffer("out0", (64,))
    k2 = Kernel("k2", (inout,), (For(t, 16, (For(v, 4, (Store(inout, (t * 4 + v,), inout[t * 4 + v] + 1.0),),
                                                  kind="vectorized"),), kind="threadIdx.x"),), outputs=("out0",))
    # f64: not float4
    xd, yd = Buffer("x", (64,), "f64"), Buffer("out0", (64,), "f64")
    k3 = Kernel("k3", (xd, yd), (For(t, 16, (For(v, 4, (Store(yd, (t * 4 + v,), xd[t * 4 + v]),), kind="vectorized"),),
                                      kind="threadIdx.x"),), outputs=("out0",))
    # invariant (stride 0) loads are fine next to float4 ones
    s = Buffer("s", (1,))
    o4 = Buffer("out0", (64,))
    k4 = Kernel("k4", (x, s, o4), (For(t, 16, (For(v, 4, (Store(o4, (t * 4 + v,), x[t * 4 + v] * s[0]),),
                                                    kind="vectorized"),), kind="threadIdx.x"),), outputs=("out0",))
    # stride 1 but the base t * 2 is not a multiple of 4: a float4 access could be misaligned
    o5 = Buffer("out0", (40,))
    k5 = Kernel("k5", (x, o5), (For(t, 16, (For(v, 4, (Store(o5, (t * 2 + v,), x[t * 4 + v]),),
                                                 kind="vectorized"),), kind="threadIdx.x"),), outputs=("out0",))
    for k, want in ((k1, False), (k2, False), (k3, False), (k4, True), (k5, False)):
        src = generate_cuda(Program("p", (k,), k.inputs, k.output_buffers)).kernels[0].source
        assert ("reinterpret_cast" in src) == want, k.name
    src4 = generate_cuda(Program("p", (k4,), k4.inputs, k4.output_buffers)).kernels[0].source
    assert "ke_ld0_0.w * s[0]" in src4


@pytest.mark.parametrize("nx,ny", cp.REDUCTION_SHAPES)
def test_row_reduction_uses_block_allreduce(nx, ny):
    cg = generate_cuda(cp.logsumexp(nx=nx, ny=ny))
    k = cg.kernels[0]
    src = k.source
    scratch = {(128, 1): 4, (32, 4): 4, (100, 1): 4, (24, 3): 72}[(nx, ny)]
    assert f"__shared__ float ke_red_float[{scratch}];" in src
    assert k.launch["shared_bytes"] == 4 * scratch and k.launch["block"] == (nx, ny, 1)
    assert f"m = ke_allreduce<{nx}, {ny}>(m, ke_red_float, ke_op_max());" in src
    assert f"s = ke_allreduce<{nx}, {ny}>(s, ke_red_float, ke_op_sum());" in src
    assert "m = __int_as_float(0xff800000);" in src  # -inf, exactly
    assert "__shfl_xor_sync" in cg.prelude and "__shfl_down_sync" in cg.prelude
    assert "float m;" in src and "expf(" in src and "logf(" in src


def test_tiled_matmul_shared_barriers_register_tile():
    cg = generate_cuda(cp.matmul_bias_relu())
    k = cg.kernels[0]
    src = k.source
    assert k.launch["grid"] == (3, 4, 1) and k.launch["block"] == (8, 8, 1) and k.launch["shared_bytes"] == 2048
    assert "__launch_bounds__(64)" in src
    # shared tiles are hoisted to the top of the kernel, before any statement
    body = src.split("{", 1)[1].lstrip("\n").splitlines()
    assert body[0].strip() == "__shared__ float As[256];" and body[1].strip() == "__shared__ float Bs[256];"
    assert src.count("__syncthreads();") == 2
    assert "float acc[16];" in src
    assert "const int by = blockIdx.y;" in src and "const int ty = threadIdx.y;" in src
    assert "for (int ko = 0; ko < 9; ++ko) {" in src
    assert src.count("#pragma unroll") >= 6
    assert "ke_max(acc[i * 4 + j] + bias[bx * 32 + tx * 4 + j], 0.0f)" in src


def test_user_text_only_in_sanitized_comments():
    x, y = Buffer("x", (8,)), Buffer("out0", (8,))
    t = Var("t")
    evil = "*/ int pwn(); /* ünïcode → here\nnext line"
    k = Kernel("my kernel-*/", (x, y), (Comment(evil), For(t, 8, (Store(y, (t,), x[t]),), kind="threadIdx.x")),
               outputs=("out0",), group="g0 */", ops=("add*/",), source_lines=(evil,))
    cg = generate_cuda(Program("p", (k,), (x,), (y,)))
    src = cg.source()
    name = cg.kernels[0].name
    assert re.fullmatch(r"[A-Za-z_]\w*", name)
    # every '*/' in the source closes a comment the generator opened: none comes from user text
    assert "*/ int pwn" not in src and "* / int pwn" in src
    assert src.isascii()
    for line in cg.kernels[0].source.splitlines():
        if "pwn" in line:
            assert line.lstrip().startswith(("/*", "*")), line


def test_dtypes_math_and_constants():
    v = Var("t")
    xd, yd = Buffer("x", (8,), "f64"), Buffer("out0", (8,), "f64")
    kd = Kernel("kd", (xd, yd), (For(v, 8, (Store(yd, (v,), call("exp", xd[v]) + call("sigmoid", xd[v])
                                                  + Const(float("nan"), "f64")),), kind="threadIdx.x"),),
                outputs=("out0",))
    src = _one(Program("p", (kd,), (xd,), (yd,)))
    assert "exp(x[t])" in src and "expf" not in src and "ke_sigmoid(x[t])" in src
    assert "__longlong_as_double(0x7ff8000000000000LL)" in src
    assert "const double* __restrict__ x" in src

    xh, yh = Buffer("x", (8,), "f16"), Buffer("out0", (8,), "f16")
    kh = Kernel("kh", (xh, yh), (For(v, 8, (Store(yh, (v,), call("tanh", xh[v]) * Const(0.5, "f16")),),
                                     kind="threadIdx.x"),), outputs=("out0",))
    src = _one(Program("p", (kh,), (xh,), (yh,)))
    assert "const __half* __restrict__ x" in src
    assert "out0[t] = __float2half(tanhf(__half2float(x[t])) * 0.5f);" in src

    xi, yi = Buffer("x", (8,), "i32"), Buffer("out0", (8,), "f32")
    ki = Kernel("ki", (xi, yi), (For(v, 8, (Store(yi, (v,), Cast("f32", xi[v] % 3) + Const(float("inf"), "f32")),),
                                     kind="threadIdx.x"),), outputs=("out0",))
    src = _one(Program("p", (ki,), (xi,), (yi,)))
    assert "(float)(x[t] % 3) + __int_as_float(0x7f800000)" in src

    yi2 = Buffer("out0", (8,), "i32")
    kp = Kernel("kp", (xi, yi2), (For(v, 8, (Store(yi2, (v,), call("pow", xi[v], Const(3)) + call("abs", xi[v])),),
                                      kind="threadIdx.x"),), outputs=("out0",))
    src = _one(Program("p", (kp,), (xi,), (yi2,)))
    assert "ke_ipow(x[t], 3) + ke_abs(x[t])" in src  # integer power stays exact (no powf round trip)


def test_parallel_loop_runs_serially_with_comment():
    x, y = Buffer("x", (8,)), Buffer("out0", (8,))
    i = Var("i")
    k = Kernel("k", (x, y), (For(i, 8, (Store(y, (i,), x[i]),), kind="parallel"),), outputs=("out0",))
    src = _one(Program("p", (k,), (x,), (y,)))
    assert "runs serially in each CUDA thread" in src and "for (int i = 0; i < 8; ++i) {" in src


def test_wide_buffers_use_64_bit_indices():
    n = 2**31 + 8
    x, y = Buffer("x", (n,)), Buffer("out0", (n,))
    b, t = Var("b"), Var("t")
    k = Kernel("k", (x, y), (For(b, n // 8, (For(t, 8, (Store(y, (b * 8 + t,), x[b * 8 + t]),),
                                                 kind="threadIdx.x"),), kind="blockIdx.x"),), outputs=("out0",))
    src = _one(Program("p", (k,), (x,), (y,)))
    assert "const long long b = blockIdx.x;" in src and "const long long t = threadIdx.x;" in src


def test_too_many_threads_is_a_schedule_error():
    x, y = Buffer("x", (2048,)), Buffer("out0", (2048,))
    t = Var("t")
    k = Kernel("k", (x, y), (For(t, 2048, (Store(y, (t,), x[t]),), kind="threadIdx.x"),), outputs=("out0",))
    with pytest.raises(ScheduleError, match="2048 threads"):
        generate_cuda(Program("p", (k,), (x,), (y,)))


# ----------------------------------------------------------------------------- semantics on the CPU
needs_gxx = pytest.mark.skipif(not cuda_emu.available()[0], reason="g++ is needed to emulate CUDA on the CPU")


def _with_nans(a: np.ndarray) -> np.ndarray:
    a = a.copy()
    a.flat[7] = np.nan
    return a


@needs_gxx
def test_emulated_elementwise_matches_numpy():
    rng = np.random.default_rng(0)
    x = _with_nans(rng.standard_normal(10001).astype(np.float32))
    y = rng.standard_normal(10001).astype(np.float32)
    want = cp.elementwise_ref(x, y)
    for aligned in (True, False):
        got, = cuda_emu.run(generate_cuda(cp.elementwise(aligned=aligned)), [x, y])
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6, equal_nan=True)
        assert np.isnan(got[7])  # np.maximum propagates NaN


@needs_gxx
@pytest.mark.parametrize("nx,ny", cp.REDUCTION_SHAPES)
def test_emulated_block_reduction_matches_numpy(nx, ny):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((37, 1000)) * 4).astype(np.float32)
    x[5, 999] = np.nan  # the last column, handled by the last (partial) thread block column
    got, = cuda_emu.run(generate_cuda(cp.logsumexp(nx=nx, ny=ny)), [x])
    np.testing.assert_allclose(got, cp.logsumexp_ref(x), rtol=1e-5, equal_nan=True)
    assert np.isnan(got[5]) and np.isfinite(np.delete(got, 5)).all()


@needs_gxx
def test_emulated_tiled_matmul_matches_numpy():
    rng = np.random.default_rng(2)
    a = rng.standard_normal((100, 70)).astype(np.float32)
    b = rng.standard_normal((70, 90)).astype(np.float32)
    bias = rng.standard_normal(90).astype(np.float32)
    got, = cuda_emu.run(generate_cuda(cp.matmul_bias_relu()), [a, b, bias])
    np.testing.assert_allclose(got, cp.matmul_bias_relu_ref(a, b, bias), rtol=1e-4, atol=1e-4)


@needs_gxx
def test_emulator_catches_a_wrong_kernel():
    # the harness can fail: a missing barrier or a wrong reduction op changes results
    rng = np.random.default_rng(3)
    x = rng.standard_normal((37, 1000)).astype(np.float32)
    cg = generate_cuda(cp.logsumexp())
    bad = cg.source().replace("s = ke_allreduce<128, 1>(s, ke_red_float, ke_op_sum());",
                              "s = ke_allreduce<128, 1>(s, ke_red_float, ke_op_max());")
    assert bad != cg.source()
    got, = cuda_emu.run(cg, [x], source=bad)
    assert not np.allclose(got, cp.logsumexp_ref(x), rtol=1e-3)


# A cross-section of the differential suite, through the real pipeline (target 'sim' tiles for CUDA):
# fused reductions, matmul epilogues, f16, ints, bools, multiple outputs, an opaque op.
PIPELINE_CASES = ["softmax", "layernorm_affine", "mlp_essay", "f16_mean_softmax", "matmul_batched",
                  "sum_axis0_kd0", "max_axis(0,2)_kd1", "gelu_erf", "cumsum_axis", "two_outputs",
                  "bool_where_sum", "int32_sum_mean", "const_array"]


@needs_gxx
@pytest.mark.parametrize("name", PIPELINE_CASES)
def test_emulated_pipeline_kernels_match_numpy(name):
    try:
        from test_reference_diff import CASES, make
        from test_backends_diff import check
    except ImportError as e:
        pytest.skip(f"differential suite not importable: {e}")
    import explorer
    if name not in CASES:
        pytest.skip(f"case {name} not in the differential suite")
    fn, spec = CASES[name]
    args = make(spec)
    c = explorer.compile(fn, *args, target="sim", verbose=False)
    assert c.codegen.language == "cuda"
    outs = cuda_emu.run(c.codegen, c.check_args(args))
    check(outs[0] if len(outs) == 1 else tuple(outs), fn(*args), f"{name} (generated CUDA, emulated)")
