"""A catalogue of bad input across trace, compile, schedule, run and widgets (issue 13).

Each case asserts the ExplorerError subclass and a key phrase of the message (what was wrong, and where
possible how to fix it). Cases already in tests/test_errors.py, test_errors_adversarial.py and
test_schedule.py are not repeated here.
"""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest

import explorer
from explorer import (BackendUnavailable, CompileError, DTypeError, ExplorerError, Schedule, ScheduleError,
                      ShapeError, TraceError, UnsupportedOpError)
from explorer.backends import cpu as cpu_backend
from explorer.errors import VerificationError
from test_errors import check_raises, check_trace_error  # noqa: E402  (tests/ is on sys.path)

X = np.ones((2, 3), np.float32)
V = np.ones(64, np.float32)
A = np.ones((32, 32), np.float32)
I4 = np.ones(4, np.int32)
B4 = np.array([True, False, True, True])
S0 = np.array(1.0, np.float32)


def _ew(a):
    return np.exp(a) * 2


def _mm(a, b):
    return np.maximum(a @ b + 1, 0)


# ----------------------------------------------------------------------------- trace
TRACE_CASES = [
    # (id, fn, examples, exception class, phrase in message)
    ("bool_subtract", lambda a: a - a, (B4,), DTypeError, "sub: not defined for operand dtype(s) bool"),
    ("bool_power_is_int8", lambda a: a ** a, (B4,), DTypeError, "is int8, which is not supported"),
    ("bool_square_is_int8", np.square, (B4,), DTypeError, "np.square of a bool array is int8"),
    ("bool_positive", np.positive, (B4,), DTypeError, "not defined for bool arrays"),
    ("bool_unary_plus", lambda a: +a, (B4,), DTypeError, "+x / np.positive"),
    ("bool_floor_divide", np.floor_divide, (B4, B4), UnsupportedOpError, "np.floor_divide is not supported"),
    ("int_bitwise_and", lambda a: a & a, (I4,), UnsupportedOpError, "integer bitwise_and (e.g. bool_array & 1 is int64)"),
    ("float_invert", lambda a: ~a, (X,), UnsupportedOpError, "~ (invert) is only supported on bool"),
    ("float_bitwise_or", lambda a: a | a, (X,), UnsupportedOpError, "bitwise or is only supported"),
    ("cumsum_out", lambda a: np.cumsum(a, out=a), (X,), TraceError, "writes in place"),
    ("cumsum_axis_out_of_range", lambda a: np.cumsum(a, axis=3), (X,), ShapeError, "cumsum: axis 3 is out of range"),
    ("cumsum_dtype_uint8", lambda a: np.cumsum(a, dtype=np.uint8), (X,), DTypeError, "np.cumsum(dtype=...)"),
    ("clip_method_out", lambda a: a.clip(0, 1, out=a), (X,), TraceError, "np.clip(..., out=...)"),
    ("squeeze_axis_not_1", lambda a: np.squeeze(a, axis=0), (X,), ShapeError, "its size is not 1"),
    ("expand_dims_axis", lambda a: np.expand_dims(a, 5), (X,), ShapeError, "expand_dims: axis 5 is out of range"),
    ("swapaxes_axis", lambda a: np.swapaxes(a, 0, 4), (X,), ShapeError, "swapaxes: axis 4 is out of range"),
    ("too_many_indices", lambda a: a[0, 0, 0], (X,), ShapeError, "too many indices"),
    ("two_ellipses", lambda a: a[..., ...], (X,), ShapeError, "single ellipsis"),
    ("negative_index_out_of_bounds", lambda a: a[-3], (X,), ShapeError, "index -3 is out of bounds"),
    ("slice_step_zero", lambda a: a[::0], (X,), ShapeError, "slice step cannot be zero"),
    ("bool_mask_index", lambda a: a[a > 0], (X,), UnsupportedOpError, "np.where for masking"),
    ("str_index", lambda a: a["x"], (X,), TraceError, "cannot index a traced array with str"),
    ("float_index", lambda a: a[1.5], (X,), TraceError, "cannot index a traced array with float"),
    ("matmul_with_scalar", lambda a: a @ 2.0, (X,), ShapeError, "got (2, 3) @ ()"),
    ("matmul_of_vectors", lambda a: a[0] @ a[0], (X,), ShapeError, "reshape vectors to (1, n)"),
    ("dot_3d", lambda a: np.dot(a, a), (np.ones((2, 2, 2), np.float32),), UnsupportedOpError,
     "np.dot is supported for 2-D operands only"),
    ("reshape_two_unknowns", lambda a: a.reshape(-1, -1), (X,), ShapeError, "only specify one unknown dimension"),
    ("reshape_negative_dim", lambda a: a.reshape(-2, 3), (X,), ShapeError, "negative dimension"),
    ("sum_repeated_axis", lambda a: a.sum(axis=(0, 0)), (X,), ShapeError, "sum: repeated axis"),
    ("max_of_zero_size", lambda a: a.max(axis=0), (np.ones((0, 3), np.float32),), ShapeError, "has no identity"),
    ("mean_bool_axis", lambda a: a.mean(axis=True), (X,), ShapeError, "got bool True"),
    ("where_shapes", lambda a: np.where(a > 0, a, np.ones(4, np.float32)), (X,), ShapeError,
     "where: cannot broadcast"),
    ("astype_not_a_dtype", lambda a: a.astype("banana"), (X,), DTypeError, "'banana' is not a dtype"),
    ("uint16_constant", lambda a: a + np.ones(3, np.uint16), (X,), DTypeError, "a constant has dtype uint16"),
    ("mixed_list_operand", lambda a: a + [1, "a", 3], (X,), TraceError, "cannot use a list as an operand"),
    ("object_operand", lambda a: a + object(), (X,), TraceError, "cannot use a object as an operand"),
    ("softmax_of_bool", explorer.nn.softmax, (B4,), DTypeError, "softmax: not defined for operand dtype(s) bool"),
    ("layernorm_gamma_shape", lambda a: explorer.nn.layernorm(a, np.ones(5, np.float32)), (X,), ShapeError,
     "cannot broadcast shapes (2, 3) and (5,)"),
    ("len_of_0d", lambda a: a * len(a), (S0,), TraceError, "len() of a 0-d traced array"),
    ("keyword_only_parameter", lambda *, a: a, (X,), TraceError, "keyword-only parameter 'a'"),
    ("returns_generator", lambda a: (y for y in [a]), (X,), TraceError, "returned a generator"),
    ("returns_dict", lambda a: {"a": a}, (X,), TraceError, "returned a dict"),
    ("returns_empty_tuple", lambda a: (), (X,), TraceError, "returned an empty tuple"),
    ("bytes_example", lambda a: a, (b"ab",), TraceError, "is a bytes, not an array"),
    ("datetime_example", lambda a: a, (np.array(["2020-01-01"], "datetime64[D]"),), DTypeError,
     "datetime64[D] is not supported"),
    ("structured_example", lambda a: a, (np.zeros(2, [("a", "f4")]),), DTypeError, "is not supported"),
    ("np_sort", np.sort, (X,), UnsupportedOpError, "np.sort is not supported"),
    ("np_linalg_inv", np.linalg.inv, (A,), UnsupportedOpError, "np.linalg.inv is not supported"),
    ("ufunc_at", lambda a: np.add.at(a, [0], 1), (X,), UnsupportedOpError, "np.add.at is not supported"),
    ("ufunc_outer", lambda a: np.add.outer(a, a), (X,), UnsupportedOpError, "np.add.outer is not supported"),
    ("sum_initial", lambda a: np.sum(a, initial=1.0), (X,), TraceError, "initial"),
]


@pytest.mark.parametrize("case", TRACE_CASES, ids=[c[0] for c in TRACE_CASES])
def test_trace(case):
    check_trace_error(case)


# ----------------------------------------------------------------------------- compile options
def _kernel_name(fn, *args) -> str:
    return explorer.compile(fn, *args, target="sim", verbose=False).program.kernels[0].name


def _one(build) -> Schedule:
    s = Schedule()
    build(s)
    return s


COMPILE_CASES = [
    # (id, fn, examples, compile kwargs, exception class, phrase)
    ("target_unknown", _ew, (X,), dict(target="tpu"), ExplorerError, "unknown target 'tpu'"),
    ("target_none", _ew, (X,), dict(target=None), ExplorerError, "choose one of auto, cuda, cpu, sim, reference"),
    ("stop_after_unknown", _ew, (X,), dict(stop_after="ptx"), ExplorerError, "stop_after='ptx' is not a stage"),
    ("fuse_rule_unknown", _ew, (X,), dict(fuse={"epilogues": False}), ExplorerError, "unknown fusion rule 'epilogues'"),
    ("fuse_str", _ew, (X,), dict(fuse="yes"), ExplorerError, "fuse must be True, False or a dict"),
    ("fuse_rule_value_str", _ew, (X,), dict(fuse={"epilogue": "no"}), ExplorerError, "must be True or False"),
    ("dtype_not_a_dtype", _ew, (X,), dict(dtype="half-ish"), DTypeError, "'half-ish' is not a dtype"),
    ("dtype_int8", _ew, (X,), dict(dtype=np.int8), DTypeError, "int8 is not supported"),
    # schedule knobs
    ("schedule_list", _ew, (X,), dict(schedule=[1, 2]), ScheduleError, "got list"),
    ("tile_two_values", _mm, (A, A), dict(schedule={"tile": (64, 64)}), ScheduleError, "must be a 3-tuple"),
    ("tile_zero", _mm, (A, A), dict(schedule={"tile": (0, 64, 16)}), ScheduleError, "0 must be a positive integer"),
    ("tile_float", _mm, (A, A), dict(schedule={"tile": (16.0, 16, 16)}), ScheduleError,
     "16.0 must be a positive integer"),
    ("threads_over_limit", _ew, (V,), dict(schedule={"threads": 2000}), ScheduleError, "over the CUDA limit of 1024"),
    ("threads_negative", _ew, (V,), dict(schedule={"threads": -1}), ScheduleError, "-1 must be a positive integer"),
    ("vector_zero", _ew, (V,), dict(schedule={"vector": 0}), ScheduleError, "0 must be a positive integer"),
    ("knob_misspelled", _ew, (V,), dict(schedule={"tiles": 3}), ScheduleError, "unknown schedule knob(s) 'tiles'"),
    ("tensor_core_on_f32", _mm, (A, A), dict(schedule={"tensor_core": True}), ScheduleError,
     "the WMMA path needs f16 operands"),
    ("double_buffer_without_shared", _mm, (A, A), dict(schedule={"double_buffer": True, "shared": False}),
     ScheduleError, "drop one of the two knobs"),
    # explicit Schedules
    ("schedule_unknown_kernel", _mm, (A, A), dict(schedule={"nokernel": Schedule()}), ScheduleError,
     "schedule for unknown kernel(s) nokernel"),
    ("split_missing_axis", _mm, (A, A), dict(schedule=lambda c, t: _one(lambda s: s.split("zz", 4))),
     ScheduleError, "axis 'zz' is not a loop here; loops are i, j, k"),
    ("bind_reduction_to_blocks", _mm, (A, A), dict(schedule=lambda c, t: _one(lambda s: s.bind("k", "blockIdx.x"))),
     ScheduleError, "k is a reduction axis, and blocks cannot combine partial results"),
    ("bind_split_reduction_to_blocks", lambda a: a.sum(1), (A,),
     dict(schedule=lambda c, t: _one(lambda s: s.bind(s.split("r1", 8)[0], "blockIdx.x"))),
     ScheduleError, "is a reduction axis"),
    ("bind_int_axis", _mm, (A, A), dict(schedule=lambda c, t: _one(lambda s: s.bind(3, "threadIdx.x"))),
     ScheduleError, "axis 3 is not a loop here"),
    ("tensorize_unknown_intrinsic", _mm, (A, A),
     dict(schedule=lambda c, t: _one(lambda s: s.tensorize("i", "mma_8x8"))), ScheduleError, "unknown intrinsic"),
    ("unroll_over_limit", _ew, (np.ones(1000, np.float32),),
     dict(schedule=lambda c, t: _one(lambda s: s.unroll("i0"))), ScheduleError, "over the unroll limit 256"),
    ("cache_read_of_reshaped_operand", lambda a, w: a @ w.reshape(4, 5), (np.ones((3, 4), np.float32),
                                                                         np.ones(20, np.float32)),
     dict(schedule=lambda c, t: _one(lambda s: s.cache_read("w", "shared", "k"))), ScheduleError,
     "not an operand this kernel can stage"),
]

needs_cc = pytest.mark.skipif(not cpu_backend.available()[0], reason="no C compiler")
CPU_COMPILE_CASES = [
    ("cpu_bind_to_threads", _ew, (V,), dict(schedule=lambda c, t: _one(lambda s: s.bind("i0", "threadIdx.x"))),
     ScheduleError, "the CPU target cannot bind loops to blockIdx/threadIdx"),
    ("cpu_shared_cache_read", _mm, (A, A), dict(schedule=lambda c, t: _one(lambda s: s.cache_read("a", "shared", "k"))),
     ScheduleError, "the CPU has no shared memory; use 'local'"),
]


@pytest.mark.parametrize("case", COMPILE_CASES, ids=[c[0] for c in COMPILE_CASES])
def test_compile_and_schedule(case):
    _, fn, examples, kw, exc, phrase = case
    check_raises(lambda: explorer.compile(fn, *examples, **{"target": "sim", "verbose": False, **kw}), exc, phrase)


@needs_cc
@pytest.mark.parametrize("case", CPU_COMPILE_CASES, ids=[c[0] for c in CPU_COMPILE_CASES])
def test_cpu_schedule(case):
    _, fn, examples, kw, exc, phrase = case
    err = check_raises(lambda: explorer.compile(fn, *examples, target="cpu", verbose=False, **kw), exc, phrase)
    assert "computes:" in str(err)   # names the user's line, not only internal buffers


def test_schedule_error_names_the_users_line():
    with pytest.raises(ScheduleError) as info:
        explorer.compile(_ew, V, target="sim", verbose=False, schedule={"threads": 2000})
    assert "test_bad_inputs.py:" in str(info.value) and "np.exp(a) * 2" in str(info.value)


@pytest.mark.skipif(explorer.pipeline.resolve_target("auto", verbose=False) == "cuda", reason="a GPU is here")
def test_cuda_target_without_gpu():
    with pytest.raises(BackendUnavailable, match="target 'cuda' is unavailable here"):
        explorer.compile(_ew, X, target="cuda", verbose=False)(X)


# ----------------------------------------------------------------------------- run (a Compiled and friends)
@pytest.fixture(scope="module")
def sim_compiled():
    return explorer.compile(_ew, X, target="sim", verbose=False)


RUN_CASES = [
    # (id, call(compiled), exception class, phrase)
    ("too_many_inputs", lambda c: c(X, X), TraceError, "compiled for 1 inputs but was called with 2"),
    ("float_for_int_input", lambda c: explorer.compile(lambda a: a * 2, I4, target="sim", verbose=False)(
        np.ones(4, np.float32)), DTypeError, "cast it with .astype(np.int32)"),
    ("stage_unknown", lambda c: c.stage("ptx"), ExplorerError, "no stage 'ptx' in this compile"),
    ("stage_not_run", lambda c: explorer.compile(_ew, X, target="sim", verbose=False, stop_after="fused")
     .stage("tiled"), ExplorerError, "stages are traced, simplified, fused"),
    ("kernel_by_unknown_name", lambda c: c.codegen.kernel("nope"), ExplorerError, "no kernel 'nope'; kernels are"),
    ("kernel_source_index", lambda c: c.with_kernel_source(3, "x"), ExplorerError, "kernel index 3 out of range"),
    ("explain_fusion_unknown_node", lambda c: c.explain_fusion("nonode"), ExplorerError,
     "has no node named 'nonode'"),
    ("costmodel_unknown_device", lambda c: explorer.costmodel.kernel_costs(c, "tpu9"), ExplorerError,
     "unknown device 'tpu9'"),
    ("compare_unknown_target", lambda c: explorer.compare(_ew, X, target="tpu"), ExplorerError,
     "unknown target 'tpu'"),
    ("compare_without_examples", lambda c: explorer.compare(_ew, target="sim"), TraceError,
     "0 example input(s) were given"),
]


@pytest.mark.parametrize("case", RUN_CASES, ids=[c[0] for c in RUN_CASES])
def test_run(sim_compiled, case):
    _, call, exc, phrase = case
    check_raises(lambda: call(sim_compiled), exc, phrase)


@needs_cc
def test_edited_kernel_that_does_not_compile():
    c = explorer.compile(_ew, X, target="cpu", verbose=False)
    with pytest.raises(CompileError, match=r"C compiler error in kernel 0 \(fused_exp_mul\), line 1"):
        c.with_kernel_source(0, "void x( {")


@needs_cc
def test_edited_kernel_with_a_wrong_result():
    c = explorer.compile(_ew, X, target="cpu", verbose=False)
    wrong = c.kernels[0].source.replace("2.0f", "3.0f")
    with pytest.raises(VerificationError, match="differs from the NumPy reference"):
        c.with_kernel_source(0, wrong)


# ----------------------------------------------------------------------------- widgets
HAVE_WIDGETS = importlib.util.find_spec("ipywidgets") is not None
needs_widgets = pytest.mark.skipif(not HAVE_WIDGETS, reason="ipywidgets not installed")


def _explorer(*args, **kw):
    import widgets
    return widgets.Explorer(*args, **kw)


@needs_widgets
@pytest.mark.parametrize("case", [
    ("scale_negative", lambda: _explorer(_ew, X, target="sim", scale=-1), "scale=-1: must be a positive number"),
    ("scale_str", lambda: _explorer(_ew, X, target="sim", scale="big"), "scale='big'"),
    ("select_stage_unknown", lambda: _explorer(_ew, X, target="sim").select_stage("ptx"), "no stage 'ptx' to show"),
    ("select_tab_unknown", lambda: _explorer(_ew, X, target="sim").select_tab("Nope"), "tabs are Stages, Fusion"),
], ids=lambda c: c[0])
def test_widget_calls(case):
    _, call, phrase = case
    check_raises(call, ExplorerError, phrase)


@needs_widgets
@pytest.mark.parametrize("case", [
    ("not_callable", (42, X), {}, TraceError, "expected a function to trace"),
    ("target_unknown", (_ew, X), {"target": "tpu"}, ExplorerError, "unknown target"),
    ("option_unknown", (_ew, X), {"tile": (1, 2, 3)}, ExplorerError, "unknown compile option tile="),
    ("uint8_example", (_ew, np.ones(3, np.uint8)), {"target": "sim"}, DTypeError, "uint8 is not supported"),
    ("shape_mismatch", (lambda x, w: x @ w, X, X), {"target": "sim"}, ShapeError, "inner dimensions differ"),
], ids=lambda c: c[0])
def test_widget_shows_constructor_errors(case):
    """The dashboard does not raise on a failing first compile: it shows the error in red and keeps it."""
    _, args, kw, exc, phrase = case
    e = _explorer(*args, **kw)
    assert isinstance(e.last_error, exc)
    assert "ke-error" in e.error.value and phrase in str(e.last_error)
