"""Regression tests for the wrong results and failing supported ops the random-program fuzzer found
(issue 13, bugs A-H and the minor ones), each shrunk to a few lines.

Every program runs on reference, sim and cpu (skipped without a C compiler), and its generated CUDA
(the sim compile's codegen) is run on the CPU by tests/cuda_emu.py and compiled by `nvcc --ptx` when
those tools exist. Results must equal NumPy's exactly (same dtype, same bits) unless a tolerance is given.
"""
from __future__ import annotations

import numpy as np
import pytest

import explorer
from explorer import DTypeError
from explorer.backends import cpu as cpu_backend
from explorer.backends import nvcc

import cuda_emu

_CPU_OK, _CPU_WHY = cpu_backend.available()
_EMU_OK = cuda_emu.available()[0]
_NVCC_OK = nvcc.available()[0]
TARGETS = ["reference", "sim", pytest.param("cpu", marks=pytest.mark.skipif(not _CPU_OK, reason=_CPU_WHY))]


def _same(got, want, label: str, rtol: float = 0.0) -> None:
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape and got.dtype == want.dtype, f"{label}: {got.dtype}{got.shape} != {want.dtype}{want.shape}"
    if rtol:
        np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=rtol, atol=rtol,
                                   equal_nan=True, err_msg=label)
    else:
        np.testing.assert_array_equal(got, want, err_msg=label)


# cases whose fused CUDA is also emulated and checked by nvcc (a couple per bug: each costs a g++ and an nvcc run)
CUDA_CHECKED = {"add", "add_sum", "mul", "tanh_astype", "tanh_gt_x", "layernorm_constant_row", "sum_0d",
                "max_0d_fused", "abs_bool", "power_i32", "power_i64_wraps", "step_slice", "gpt2_qkv_tiles",
                "strided_offset_tiles", "same_reshaped_value", "ones_3000", "f32_accumulation_knob"}


def check_targets(fn, *args, target: str, rtol: float = 0.0, cuda: bool = True, **compile_kw):
    """fn on `target` (fused and unfused) equals NumPy; on sim with `cuda` also the fused program's generated
    CUDA, emulated and through nvcc (the fused kernels are where these bugs lived)."""
    want = fn(*args)
    for fuse in (True, False):
        c = explorer.compile(fn, *args, target=target, fuse=fuse, verbose=False, **compile_kw)
        _same(c(*args), want, f"{target} fuse={fuse}", rtol)
        if target == "sim" and fuse and cuda and _EMU_OK:
            (got,) = cuda_emu.run(c.codegen, c.backend_inputs(c.check_args(args)))
            _same(got, want, "generated CUDA (emulated)", rtol)
        if target == "sim" and fuse and cuda and _NVCC_OK:
            nvcc.check(c.codegen.source(), arch="sm_80", mode="ptx")


BOOL_A = np.array([True, True, False, False])
BOOL_B = np.array([True, False, True, False])


# --- A: arithmetic on bool follows NumPy (add is logical or, multiply logical and) ------------------
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name,fn", [
    ("add", lambda a, b: (a + b).astype(np.float32)),
    ("add_sum", lambda a, b: (a + b).sum()),
    ("mul", lambda a, b: (a * b).astype(np.int32)),
    ("maximum", lambda a, b: np.maximum(a, b).astype(np.float32)),
    ("minimum", lambda a, b: np.minimum(a, b).astype(np.float32)),
    ("abs", lambda a, b: np.abs(a + b).astype(np.float32)),
    ("div", lambda a, b: a / (b + True)),
    ("compare", lambda a, b: (a > b) + (a == b)),
    ("add_scalar", lambda a, b: (a + True).astype(np.int64)),
])
def test_bool_arithmetic_matches_numpy(name, fn, target):
    check_targets(fn, BOOL_A, BOOL_B, target=target, cuda=name in CUDA_CHECKED)


@pytest.mark.parametrize("name,fn,numpy_gives", [
    ("sub", lambda a: a - a, TypeError), ("neg", lambda a: -a, TypeError), ("positive", np.positive, TypeError),
    ("unary_plus", lambda a: +a, TypeError), ("square", np.square, np.int8), ("power", lambda a: a ** a, np.int8)])
def test_bool_ops_numpy_rejects_or_makes_int8_are_dtype_errors(name, fn, numpy_gives):
    if numpy_gives is TypeError:
        with pytest.raises(TypeError):
            fn(BOOL_A)
    else:
        assert fn(BOOL_A).dtype == numpy_gives   # int8: not a supported dtype
    with pytest.raises(DTypeError, match="bool|int8"):
        explorer.trace(fn, BOOL_A)


# --- B: f16 intermediates round to half inside fused C and CUDA kernels ------------------------------
F16_X = np.array([4.6, -0.027, 0.5, 3.0, -7.25, 0.0009765625], np.float16)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name,fn", [
    ("tanh_astype", lambda x: np.tanh(x).astype(np.int32)),
    ("tanh_gt_x", lambda x: np.tanh(x) > x),
    ("chain", lambda x: np.exp(x * 0.5) - np.tanh(x) * x + 1),
    ("layernorm_constant_row", lambda x: (lambda d: d / np.sqrt((d * d).mean(-1, keepdims=True) + 1e-5))(
        x - x.mean(-1, keepdims=True))),
])
def test_f16_intermediates_round_to_half(name, fn, target):
    x = np.full((2, 8), 0.3, np.float16) if name == "layernorm_constant_row" else F16_X
    check_targets(fn, x, target=target, cuda=name in CUDA_CHECKED)


# --- E: reductions with no reduce loop -------------------------------------------------------------
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name,fn,x", [
    ("sum_0d", np.sum, np.array(3.5, np.float32)),
    ("sum_axis_empty_tuple", lambda x: np.sum(x, axis=()), np.arange(12, dtype=np.float32).reshape(3, 4)),
    ("max_0d_fused", lambda x: (x * 2).max(), np.array(-1.5, np.float32)),
    ("mean_axis_empty_keepdims", lambda x: x - x.mean(axis=(), keepdims=True), np.arange(5, dtype=np.float32)),
])
def test_reduction_without_reduce_loop(name, fn, x, target):
    check_targets(fn, x, target=target, cuda=name in CUDA_CHECKED)


def test_reference_target_never_applies_a_gpu_schedule():
    # a CUDA-only knob combination that no kernel here could satisfy does not matter to the interpreter
    x = np.ones((4, 4), np.float32)
    c = explorer.compile(lambda x: (x @ x).sum(), x, target="reference", schedule={"tile": (256, 256, 64)},
                         verbose=False)
    assert c(x) == 64.0
    assert all(leaf.kind == "serial" for k in c.program.kernels for leaf in
               __import__("explorer").loopir.walk_loops(k.body))
    assert "schedules do not apply" in " ".join(c.program.kernels[0].meta_dict()["notes"])


# --- H: math the cpu (and CUDA) backends used to reject ---------------------------------------------
I32 = np.array([1, -2, 3, 7, 0, -5], np.int32)
J32 = np.array([2, 3, 0, 5, 4, 1], np.int32)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name,fn,args", [
    ("abs_bool", np.abs, (BOOL_A,)),
    ("square_pow_i32", lambda i: i ** 2, (I32,)),
    ("power_i32", np.power, (I32, J32)),
    ("power_i64_wraps", np.power, (I32.astype(np.int64) * 1000, J32.astype(np.int64) + 3)),
    ("power_i32_wraps", np.power, (I32 * 1000, J32 + 1)),
])
def test_integer_and_bool_math(name, fn, args, target):
    check_targets(fn, *args, target=target, cuda=name in CUDA_CHECKED)


# --- minor: x.clip method -----------------------------------------------------------------------------
@pytest.mark.parametrize("target", TARGETS)
def test_clip_method(target):
    x = np.linspace(-2, 2, 9, dtype=np.float32)
    check_targets(lambda x: x.clip(-0.5, 0.5) + x.clip(max=1.0) + x.clip(min=0.0), x, target=target, cuda=False)


# --- F: matmul with a fused slice / reshape / index operand -------------------------------------------
def _f(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


MATMUL_OPERAND_CASES = [
    ("step_slice", lambda a, w: a[::2] @ w, (_f(8, 5), _f(5, 4))),
    ("index_3d", lambda a, w: a[1] @ w, (_f(3, 8, 5), _f(5, 4))),
    ("reshape_rhs", lambda a, w: a @ w.reshape(4, 5), (_f(3, 4), _f(20))),
    ("newaxis_rhs", lambda a, w: a @ w[None], (_f(2, 3, 5), _f(5, 4))),
    ("same_reshaped_value", lambda a: (lambda s: s @ s)(a.reshape(4, 4)), (_f(16),)),
    ("gpt2_qkv", lambda x: x[:, 0:16] @ x[:, 16:32].T, (_f(8, 32),)),
    # big enough for several tiles, edge guards and double buffering of the staged slices
    ("gpt2_qkv_tiles", lambda x: x[:, 0:48] @ x[:, 48:96].T + 1, (_f(70, 96),)),
    ("strided_offset_tiles", lambda a, w: np.maximum(a[1::3, 2:] @ w[::2], 0), (_f(200, 39), _f(74, 33))),
]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name,fn,args", MATMUL_OPERAND_CASES, ids=[c[0] for c in MATMUL_OPERAND_CASES])
def test_matmul_with_sliced_or_reshaped_operand(name, fn, args, target):
    check_targets(fn, *args, target=target, rtol=1e-5, cuda=name in CUDA_CHECKED)


def test_sliced_operands_are_staged_not_just_read_from_global():
    x = _f(70, 96)
    c = explorer.compile(lambda x: x[:, 0:48] @ x[:, 48:96].T, x, target="sim", verbose=False)
    text = c.stage("tiled").text()
    assert "cache_read(x, shared" in text and "cache_read(x#1, shared" in text
    # the copy reads the slice at its offset: column 48 + k of x
    assert "x[" in text and "+ 48" in text


# --- C: float16 cumsum rounds each partial sum to half, as NumPy; dtype=np.float32 is the accurate knob --
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name,fn,x", [
    ("ones_3000", np.cumsum, np.full(3000, 1, np.float16)),
    ("rows_axis1", lambda x: np.cumsum(x * 3, axis=1), np.full((3, 2100), 0.7, np.float16)),
    ("method_axis0", lambda x: x.cumsum(axis=0), np.full((2100, 2), 1.3, np.float16)),
    ("f32_accumulation_knob", lambda x: np.cumsum(x, dtype=np.float32).astype(np.float16),
     np.full(3000, 1, np.float16)),
])
def test_f16_cumsum_rounds_like_numpy(name, fn, x, target):
    check_targets(fn, x, target=target, cuda=name in CUDA_CHECKED)


def test_f16_cumsum_default_and_knob_values():
    x = np.full(3000, 1, np.float16)
    c = explorer.compile(np.cumsum, x, target="sim", verbose=False)
    assert c(x)[-1] == 2048                                   # NumPy's f16 answer: 2048 + 1 rounds to 2048
    knob = explorer.compile(lambda x: x.cumsum(dtype=np.float32), x, target="sim", verbose=False)
    assert knob(x)[-1] == 3000 and knob(x).dtype == np.float32


# --- decompose=False: composites stay whole in the graph stages and are lowered by their decomposition --
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", ["softmax", "log_softmax", "layernorm", "gelu"])
def test_decompose_false_runs_composites(name, target):
    fn = getattr(explorer.nn, name)
    x = _f(6, 10)
    c = explorer.compile(fn, x, target=target, decompose=False, verbose=False)
    assert [n.op for n in c.stage("simplified").ir.op_nodes()] == [name]      # kept whole where it is shown
    assert name in c.stage("lowered").stats["note"]
    _same(c(x), fn(x), f"{name} decompose=False on {target}", rtol=1e-6)


# --- a global tile knob larger than one kernel's axes is clamped for that kernel ------------------------
@pytest.mark.parametrize("name,fn,args,knobs", [
    ("small_matmul", lambda a: (a @ a).sum(0) + 1, (_f(8, 8),), {"tile": (64, 64, 16)}),
    ("odd_extents", lambda a, b: a @ b, (_f(6, 7), _f(7, 5)), {"tile": (64, 64, 16)}),
    ("one_big_one_small", lambda a, b: (a @ a).sum() + b @ b, (_f(128, 128), _f(8, 8)),
     {"tile": (128, 128, 32), "thread_tile": (8, 8)}),
    ("tensor_core_f16", lambda a, b: a @ b, (_f(16, 48).astype(np.float16), _f(48, 64).astype(np.float16)),
     {"tile": (64, 64, 32)}),
])
def test_global_tile_is_clamped_per_kernel(name, fn, args, knobs):
    c = explorer.compile(fn, *args, target="sim", schedule=knobs, verbose=False)
    _same(c(*args), fn(*args), name, rtol=2e-3)
    notes = " ".join(n for k in c.program.kernels for n in k.meta_dict()["notes"])
    assert "clamped" in notes


# --- D: no FMA contraction on cpu (C is built with -ffp-contract=off unless fast_math) ----------------
def _fma_sensitive(a):
    v1 = a.sum((1, 2)) * a
    return v1 - v1.mean(0, keepdims=True)     # exactly 0 in NumPy: the mean over one row is the row


@pytest.mark.parametrize("target", TARGETS)
def test_no_fma_contraction(target):
    a = _f(1, 40, 33)
    check_targets(_fma_sensitive, a, target=target)


# ----------------------------------------------------------------------------- found later by tests/fuzz (N1-N4)
@pytest.mark.parametrize("target", TARGETS)
def test_global_vector_knob_is_clamped_per_kernel(target):
    # N1: vector=4 serves every elementwise kernel; a (1, 1) kernel gets vector=1 instead of a ScheduleError
    a0 = np.array([[True]])
    check_targets(lambda a0: abs(a0), a0, target=target, cuda=False, schedule={"vector": 4})


@pytest.mark.parametrize("name,fn", [("and_int", lambda b: b & 1), ("or_int", lambda b: b | 1),
                                     ("int_or", lambda b: 1 | b), ("bitwise_and_int", lambda b: np.bitwise_and(b, 1))])
def test_bool_bitwise_with_int_is_rejected_not_logical(name, fn):
    # N2: NumPy's bool_array & 1 is int64 (integer bitwise and); it used to come back bool (a logical and)
    b = np.array([[True, False]])
    assert fn(b).dtype == np.int64
    with pytest.raises(explorer.UnsupportedOpError, match=r"NumPy computes this as integer bitwise_(and|or) "
                                                          r"\(e\.g\. bool_array [&|] 1 is int64\)"):
        explorer.compile(fn, b, target="reference", verbose=False)


@pytest.mark.parametrize("target", TARGETS)
def test_bool_bitwise_with_bool_scalar_stays_logical(target):
    b = np.array([[True, False]])
    check_targets(lambda b: (b & True) | np.False_, b, target=target, cuda=False)


def _fill_copy(x):
    y = x.copy()
    y[:] = 2.0
    return y


@pytest.mark.parametrize("target", TARGETS)
def test_write_into_zero_size_array(target):
    # N3: y[:] = 2.0 on an empty y folds to a zero-size constant, which had no buffer in lowering
    check_targets(_fill_copy, np.zeros((0, 3), np.float32), target=target, cuda=False)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name,fn,x", [
    ("bool_row_any", lambda b: np.einsum("ij->i", b), np.array([[True, False], [False, False]])),
    ("bool_all", lambda b: np.einsum("ij->", b), np.array([[False, False], [False, True]])),
    ("bool_pair", lambda b: np.einsum("ij,ij->i", b, b), np.array([[True, False], [False, False]])),
    ("bool_empty_axis", lambda b: np.einsum("ij->i", b), np.zeros((2, 0), bool)),
    ("int32_stays_int32", lambda i: np.einsum("ij,ij->i", i, i), np.array([[1, 2], [3, 2 ** 30]], np.int32)),
], ids=lambda v: v if isinstance(v, str) else "")
def test_einsum_keeps_operand_dtype(name, fn, x, target):
    # N4: an einsum that sums kept np.sum's widening (bool -> int64, int32 -> int64); NumPy keeps the dtype
    check_targets(fn, x, target=target, cuda=False)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name,fn,x", [
    ("1x1", lambda a: 2.0 + a[None] @ np.swapaxes(a[None], -1, -2), np.array([[1.5]], np.float32)),
    ("mean_keepdims", lambda a: 2.0 + a.mean(keepdims=True)[None] @ np.swapaxes(a.mean(keepdims=True)[None], -1, -2),
     np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 2, 2)),
], ids=lambda v: v if isinstance(v, str) else "")
def test_matmul_of_one_element_with_itself(name, fn, x, target):
    # N5: both operand loads fold to the same x[0, 0]; staging the second read ('x#1') found no such load
    check_targets(fn, x, target=target, rtol=1e-6, cuda=False)
