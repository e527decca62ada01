"""The NumPy surface transformer code uses (issue 12): joining, splitting, var/std, repeat/tile, pad,
einsum and the method forms, written the way NumPy code is written. Every case runs through all stages
on reference, sim and cpu against NumPy, and its CUDA compiles with nvcc --ptx; bad input of each
construct ends in a clear ExplorerError; docs/NUMPY.md matches the tracer's tables."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import explorer
from explorer.errors import ExplorerError, ShapeError, TraceError, UnsupportedOpError
from test_backends_diff import TARGETS, _cpu_ok, _nvcc, check
from test_reference_diff import B, F16, F32, F64, I32, make, m

CASES: dict[str, tuple] = {}


def case(name, *spec):
    def deco(fn):
        assert name not in CASES
        CASES[name] = (fn, list(spec))
        return fn
    return deco


# -- concatenate / concat / stack / hstack / vstack -------------------------------------------------
case("concat_last_axis", m(3, 5), m(3, 2))(lambda x, y: np.concatenate([x, y], axis=-1) * 2.0)
case("concat_axis0_three", m(1, 4), m(2, 4), m(3, 4))(lambda a, b, c: np.concatenate((a, b, c)))
case("concat_promotes_f32_f64", m(2, 3), m(2, 1, dt=F64))(lambda x, y: np.concatenate([x, y], axis=1))
case("concat_promotes_i32_f32", m(3, dt=I32), m(2))(lambda i, x: np.concatenate([i, x]))
case("concat_f16_3d_neg_axis", m(2, 3, 5, dt=F16), m(2, 1, 5, dt=F16))(
    lambda x, y: np.concatenate([x, y], axis=-2) + 1)
case("concat_bool", m(4, dt=B), m(3, dt=B))(lambda a, b: np.concatenate([a, ~b]))
case("concat_axis_none_i32", m(2, 3, dt=I32), m(5, dt=I32))(lambda a, b: np.concatenate([a, b], axis=None))
case("concat_with_constant", m(2, 3))(lambda x: np.concatenate([x, np.zeros((2, 3), np.float32)], axis=1) + x[:, :1])
case("concat_alias", m(3, 2), m(3, 3))(lambda x, y: np.concat([np.exp(x), y], axis=1))
case("concat_five_operands", m(2, 1), m(2, 2), m(2, 3), m(2, 4), m(2, 5))(
    lambda a, b, c, d, e: np.concatenate([a, b, c, d, e], axis=-1) * 3)
case("concat_then_row_sum", m(4, 3), m(4, 6))(lambda x, y: np.exp(np.concatenate([x, y], axis=1)).sum(axis=1))
case("stack_axis0", m(3, 4), m(3, 4))(lambda x, y: np.stack([x, y]) * 0.5)
case("stack_neg_axis_odd", m(5), m(5), m(5))(lambda a, b, c: np.stack([a, b, c], axis=-1))
case("hstack_1d", m(3), m(1))(lambda a, b: np.hstack([a, b]))
case("hstack_heads", m(4, 3), m(4, 3))(lambda h0, h1: np.hstack([h0 * 2, h1]) - 1)
case("vstack_rows", m(5), m(5))(lambda a, b: np.vstack([a, b]))
case("vstack_i32", m(2, 3, dt=I32), m(1, 3, dt=I32))(lambda a, b: np.vstack((a, b)) * 3)


# -- split / array_split ------------------------------------------------------------------------------
def qkv_split(x):
    q, k, v = np.split(x, 3, axis=-1)
    return q * k + v


def split_at_indices(x):
    a, b, c = np.split(x, [2, 5])
    return np.concatenate([c, a, b])


def rotate_half(x):
    x1, x2 = np.split(x, 2, axis=-1)
    return np.concatenate([-x2, x1], axis=-1)


case("split_qkv", m(4, 12))(qkv_split)
case("split_indices_axis0", m(7, 3))(split_at_indices)
case("split_rotary", m(2, 5, 6))(rotate_half)
case("array_split_unequal", m(7))(lambda x: tuple(p * (k + 1) for k, p in enumerate(np.array_split(x, 3))))
case("array_split_neg_axis", m(2, 3, 5))(lambda x: np.array_split(x, 2, axis=-1)[1].sum(-1))
case("split_neg_index", m(3, 6, dt=F64))(lambda x: np.split(x, [-2], axis=1)[0])


# -- var / std --------------------------------------------------------------------------------------
def layer_norm(x, g, b):
    mean = x.mean(axis=-1, keepdims=True)
    var = x.var(axis=-1, keepdims=True)
    return g * (x - mean) / np.sqrt(var + 1e-5) + b


def batch_norm_std(x):
    return (x - x.mean(axis=0)) / (np.std(x, axis=0) + 1e-3)


case("var_all", m(4, 5))(lambda x: np.var(x))
case("layer_norm_var", m(6, 9), m(9), m(9))(layer_norm)
case("std_axis0_ddof1", m(7, 3))(lambda x: np.std(x, axis=0, ddof=1))
case("std_two_axes", m(3, 4, 5))(lambda x: x.std(axis=(0, 2)))
case("var_int", m(5, 4, dt=I32))(lambda x: np.var(x, axis=1))
case("var_f16_keepdims", m(3, 8, dt=F16))(lambda x: x.var(axis=-1, keepdims=True))
case("var_correction", m(6, dt=F64))(lambda x: np.var(x, correction=1))
case("batch_norm_std", m(8, 3))(batch_norm_std)


# -- repeat / tile --------------------------------------------------------------------------------------
def gqa_scores(q, k):
    k = np.repeat(k, 2, axis=0)            # 2 kv heads shared by 4 query heads
    return q @ k.transpose(0, 2, 1)


case("repeat_axis1", m(3, 4))(lambda x: np.repeat(x, 3, axis=1))
case("repeat_flat_method", m(2, 3))(lambda x: x.repeat(2))
case("repeat_counts", m(4, 3, dt=I32))(lambda x: np.repeat(x, [1, 2, 0, 3], axis=0))
case("repeat_zero_counts", m(2, 3))(lambda x: (np.repeat(x, [0, 0], axis=0), np.repeat(x, 0, axis=1) * 2))
case("repeat_gqa", m(4, 5, 8), m(2, 5, 8))(gqa_scores)
case("tile_1d", m(3))(lambda x: np.tile(x, 2))
case("tile_adds_axis", m(2, 3))(lambda x: np.tile(x, (2, 1, 3)) + 1)
case("tile_bool", m(1, 3, dt=B))(lambda x: np.tile(x, (3, 1)))

# -- method forms -----------------------------------------------------------------------------------
case("swapaxes_method", m(2, 3, 4))(lambda x: x.swapaxes(0, -1) * 2)
case("swapaxes_np", m(3, 5))(lambda x: np.swapaxes(x, 0, 1) + 1)
case("moveaxis", m(2, 3, 4))(lambda x: np.moveaxis(x, 0, -1))
case("clip_method", m(4, 6))(lambda x: x.clip(-0.5, 0.5))
case("squeeze_axis", m(3, 1, 4))(lambda x: x.squeeze(axis=1) * 2)
case("squeeze_neg_axis", m(5, 1))(lambda x: np.exp(x.squeeze(-1)))


# -- pad ----------------------------------------------------------------------------------------------
def conv1d_im2col(x, w):
    # x: (length, channels), w: (3 * channels, out); 'same' padding by np.pad, then im2col by slices
    xp = np.pad(x, ((1, 1), (0, 0)))
    cols = np.concatenate([xp[0:-2], xp[1:-1], xp[2:]], axis=1)
    return cols @ w


case("pad_scalar_width", m(3, 4))(lambda x: np.pad(x, 1))
case("pad_value_then_exp", m(2, 5))(lambda x: np.exp(np.pad(x, ((0, 0), (2, 1)), constant_values=-1.5)))
case("pad_int_constant", m(4, dt=I32))(lambda x: np.pad(x, (2, 3), constant_values=7))
case("pad_f16_3d", m(2, 3, 1, dt=F16))(lambda x: np.pad(x, ((1, 0), (0, 2), (1, 1))) * 2)
case("pad_conv1d_im2col", m(6, 2), m(6, 3))(conv1d_im2col)
case("pad_bool_mask", m(3, 3, dt=B))(lambda mask: np.pad(mask, 1) | np.pad(~mask, ((2, 0), (0, 2))))
case("repeat_f64_neg_axis", m(2, 1, 3, dt=F64))(lambda x: np.repeat(x, 4, axis=-2) - x)
case("stack_f16_axis1", m(3, 2, dt=F16), m(3, 2, dt=F16))(lambda a, b: np.stack((a, b), axis=1) * 2)


# -- einsum / tensordot ------------------------------------------------------------------------------
case("einsum_ij_jk", m(3, 5), m(5, 4))(lambda a, b: np.einsum("ij,jk->ik", a, b))
case("einsum_bij_bjk", m(2, 3, 5), m(2, 5, 4))(lambda a, b: np.einsum("bij,bjk->bik", a, b))
case("einsum_attn_scores", m(1, 2, 5, 4), m(1, 2, 3, 4))(lambda q, k: np.einsum("bhqd,bhkd->bhqk", q, k) / 2.0)
case("einsum_attn_values", m(2, 2, 5, 3), m(2, 2, 3, 4))(lambda p, v: np.einsum("bhqk,bhkd->bhqd", p, v))
case("einsum_bqhd_bkhd", m(1, 5, 2, 4), m(1, 3, 2, 4))(lambda q, k: np.einsum("bqhd,bkhd->bhqk", q, k))
case("einsum_dot", m(7, dt=F64), m(7, dt=F64))(lambda a, b: np.einsum("i,i->", a, b))
case("einsum_transpose", m(3, 4))(lambda a: np.einsum("ij->ji", a))
case("einsum_linear", m(2, 5), m(3, 5))(lambda x, w: np.einsum("bi,oi->bo", x, w))
case("einsum_sum_axis", m(4, 3))(lambda a: np.einsum("ij->j", a))
case("einsum_implicit", m(3, 4), m(4, 2))(lambda a, b: np.einsum("ij,jk", a, b))
case("einsum_three", m(2, 3), m(3, 4), m(4, 5))(lambda a, b, c: np.einsum("ij,jk,kl->il", a, b, c))
case("einsum_outer_i32", m(3, dt=I32), m(4, dt=I32))(lambda a, b: np.einsum("i,j->ij", a, b))
case("tensordot_axes1", m(3, 4), m(4, 5))(lambda a, b: np.tensordot(a, b, axes=1))
case("tensordot_pairs", m(3, 4, 2), m(4, 3, 5))(lambda a, b: np.tensordot(a, b, axes=([0, 1], [1, 0])))


# -- a block using them together -------------------------------------------------------------------
def attention_heads(x, w_qkv):
    q, k, v = np.split(x @ w_qkv, 3, axis=-1)           # (seq, 3 * d) -> three (seq, d)
    heads = []
    for h in range(2):
        sl = slice(h * 4, (h + 1) * 4)
        s = np.einsum("qd,kd->qk", q[:, sl], k[:, sl]) / 2.0
        p = np.exp(s - s.max(axis=-1, keepdims=True))
        p = p / p.sum(axis=-1, keepdims=True)
        heads.append(p @ v[:, sl])
    return np.hstack(heads)


case("attention_split_einsum_hstack", m(5, 8), m(8, 24))(attention_heads)


# ----------------------------------------------------------------------------- differential tests
@pytest.mark.parametrize("target", ["reference"] + TARGETS)
@pytest.mark.parametrize("name", sorted(CASES))
def test_case_equals_numpy(name, target):
    fn, spec = CASES[name]
    args = make(spec)
    c = explorer.compile(fn, *args, target=target, verbose=False)
    check(c(*args), fn(*args), f"{name} on {target}")


def _cuda_source(name: str) -> str:
    fn, spec = CASES[name]
    return explorer.compile(fn, *make(spec), target="sim", verbose=False).codegen.source()


@pytest.mark.skipif(not _nvcc(), reason="nvcc not on PATH")
def test_cuda_of_every_case_compiles_with_nvcc():
    """One nvcc --ptx run over all cases (each in its own namespace; ~1.5 s of nvcc start-up per case
    otherwise); when it fails, each case is compiled alone to name the ones nvcc rejects."""
    from explorer.backends import nvcc
    from explorer.errors import CompileError
    sources = {n: _cuda_source(n) for n in sorted(CASES)}
    includes: dict[str, None] = {}
    parts = []
    for k, (name, src) in enumerate(sources.items()):
        body = []
        for line in src.splitlines():
            (includes.setdefault(line) if line.startswith("#include") else body.append(line))
        parts.append(f"namespace case{k} {{  // {name}\n" + "\n".join(body).replace('extern "C" ', "") + "\n}")
    try:
        ptx = nvcc.check("\n".join(includes) + "\n" + "\n".join(parts), arch="sm_80", mode="ptx")
    except CompileError:
        bad = []
        for name, src in sources.items():
            try:
                nvcc.check(src, arch="sm_80", mode="ptx")
            except CompileError as e:
                bad.append(f"{name}: {str(e)[:300]}")
        pytest.fail("nvcc rejects the CUDA of: " + "; ".join(bad))
    kernels = sum(src.count("__global__ void") for src in sources.values())
    assert ptx.count(".entry ") == kernels >= len(sources)


def test_case_count():
    assert len(CASES) >= 45


# ----------------------------------------------------------------------------- fusion, stages, costs
def test_concat_and_pad_fuse_with_elementwise_neighbours():
    x, y = np.ones((3, 5), np.float32), np.ones((3, 2), np.float32)
    c = explorer.compile(lambda x, y: np.exp(np.concatenate([x * 2, y], axis=-1)) + 1, x, y, target="sim",
                         verbose=False)
    assert len(c.kernels) == 1
    fused = c.stage("fused").text()
    assert "concat" in fused and "fused: elementwise" in fused
    c = explorer.compile(lambda x: np.pad(np.tanh(x), 1) * 3, x, target="sim", verbose=False)
    assert len(c.kernels) == 1 and "pad" in c.stage("fused").text()


def test_concat_and_pad_read_each_input_once_in_the_simulator():
    # the select evaluates only the branch it takes, so the simulator's measured bytes equal the cost
    # model's (each input element read once, nothing out of range) and its bounds checks pass
    from explorer.costmodel import kernel_costs
    x, y = make([m(3, 5), m(3, 2)])
    fn = lambda x, y: np.pad(np.concatenate([x, y], axis=1), ((1, 2), (0, 1)), constant_values=3.0) * 2  # noqa: E731
    c = explorer.compile(fn, x, y, target="sim", verbose=False)
    check(c(x, y), fn(x, y), "concat+pad")
    (measured,), (model,) = kernel_costs(c), kernel_costs(c, counters=False)
    assert measured.source == "simulator" and model.source == "model"
    assert measured.bytes_read == model.bytes_read == x.nbytes + y.nbytes
    assert measured.bytes_written == model.bytes_written == 6 * 8 * 4
    assert "select(i0 >= 1 && i0 < 4 && i1 < 7, select(i1 < 5, x[i0 - 1, i1], y[i0 - 1, i1 - 5]), 3.0f)" in \
        c.stage("lowered").text()


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", ["concat_last_axis", "stack_neg_axis_odd", "pad_value_then_exp", "layer_norm_var",
                                  "split_rotary", "tile_adds_axis", "einsum_attn_scores"])
def test_unfused_equals_numpy(name, target):
    fn, spec = CASES[name]
    args = make(spec)
    c = explorer.compile(fn, *args, target=target, fuse=False, verbose=False)
    check(c(*args), fn(*args), f"{name} unfused on {target}")


def test_dot_drawing_and_cost_of_concat_and_pad():
    from explorer.ops import node_cost
    x, y = np.ones((3, 5), np.float32), np.ones((3, 2), np.float32)
    g = explorer.trace(lambda x, y: np.pad(np.concatenate([x, y], axis=1), 1), x, y)
    dot = g.dot()
    assert "concat" in dot and "pad" in dot
    cat, pad = g.op_nodes()
    assert node_cost(cat).bytes_read == x.nbytes + y.nbytes and node_cost(cat).bytes_written == 3 * 7 * 4
    assert node_cost(pad).bytes_written == 5 * 9 * 4


def test_var_layer_norm_is_one_reduction_kernel():
    x, g, b = make([m(6, 9), m(9), m(9)])
    c = explorer.compile(layer_norm, x, g, b, target="sim", verbose=False)
    assert len(c.kernels) == 1


def test_einsum_is_one_matmul():
    q, k = np.ones((1, 2, 5, 4), np.float32), np.ones((1, 2, 3, 4), np.float32)
    g = explorer.trace(lambda q, k: np.einsum("bhqd,bhkd->bhqk", q, k), q, k)
    assert [n.op for n in g.op_nodes()].count("matmul") == 1


# ----------------------------------------------------------------------------- CPU: index-set splitting
needs_cc = pytest.mark.skipif(not _cpu_ok(), reason="no C compiler")


@needs_cc
def test_cpu_concat_and_pad_loops_are_split_at_the_select_bounds():
    from explorer.passes.index_split import split_index_ranges
    x, y = make([m(4, 3), m(4, 2)])
    cat = lambda x, y: np.concatenate([x, y], axis=1)  # noqa: E731
    c = explorer.compile(cat, x, y, target="cpu", verbose=False)
    src = c.kernels[0].source
    assert "?" not in src.split("{", 1)[1]                     # no select left in the kernel body
    assert "i1 < 3; ++i1" in src and "i1 < 2; ++i1" in src     # one loop per operand
    check(c(x, y), cat(x, y), "split concat")
    pad = lambda x: np.pad(x, ((0, 0), (2, 1)), constant_values=5.0)  # noqa: E731
    c = explorer.compile(pad, x, target="cpu", verbose=False)
    assert c.kernels[0].source.count("for (int i1 = 0;") == 3   # left pad, the data, right pad
    check(c(x), pad(x), "split pad")
    # a kernel whose selects test data, not loop variables, is left as it is
    c = explorer.compile(lambda x: np.where(x > 0, x, 0.5 * x), x, target="cpu", verbose=False)
    assert "?" in c.kernels[0].source
    tiled = c.stage("tiled").ir.kernels[0]
    assert split_index_ranges(tiled.body) == tuple(tiled.body)


@needs_cc
def test_cpu_split_concat_of_many_operands_and_rows():
    xs = make([m(5, 1), m(5, 2), m(5, 3), m(2, 6)])
    fn = lambda a, b, c, d: np.exp(np.concatenate([np.concatenate([a, b, c], axis=1), d], axis=0))  # noqa: E731
    c = explorer.compile(fn, *xs, target="cpu", verbose=False)
    check(c(*xs), fn(*xs), "nested concat on cpu")


@needs_cc
def test_cpu_rows_schedule_for_rearranging_loads():
    # np.repeat / a slice at an offset: rows across threads and a plain last-axis loop, not one flat
    # loop that divides per element; a transposed read keeps the flat loop (a row loop would stride)
    from explorer.schedule import rearranged_loads
    k, x = make([m(4, 64, 32), m(64, 96)])
    for fn, rows in ((lambda k: np.repeat(k, 2, axis=0), True), (lambda x: x[:, 32:] * 2, True),
                     (lambda x: x.T + 1, False), (lambda x: x + x[0], False)):
        arg = k if fn.__code__.co_varnames[0] == "k" else x
        c = explorer.compile(fn, arg, target="cpu", verbose=False)
        compute = c.stage("lowered").ir.computes[0]
        assert rearranged_loads(compute) is rows
        check(c(arg), fn(arg), "rows schedule")


def test_gpu_schedules_of_concat_and_repeat_stay_thread_parallel():
    # the CPU's plain-loop schedules for selects and rearranging loads are CPU-only
    x, y, k = make([m(64, 48), m(64, 16), m(4, 64, 32)])
    for fn, args in ((lambda x, y: np.concatenate([x, y], axis=1), (x, y)), (lambda k: np.repeat(k, 2, axis=0), (k,))):
        c = explorer.compile(fn, *args, target="sim", verbose=False)
        sched = c.stage("tiled").ir.kernels[0].schedule
        assert any(p.startswith("bind(") and "threadIdx" in p for p in sched), sched


# ----------------------------------------------------------------------------- bad input
X34 = np.ones((3, 4), np.float32)
X410 = np.ones((4, 10), np.float32)
V5 = np.ones(5, np.float32)

BAD = [
    ("split_unequal", lambda x: np.split(x, 3, axis=1), (X410,), ShapeError, r"size 10.*3 sections.*array_split"),
    ("split_zero_sections", lambda x: np.split(x, 0), (X410,), ShapeError, "larger than 0"),
    ("split_bad_axis", lambda x: np.split(x, 2, axis=2), (X410,), ShapeError, "axis 2 is out of range"),
    ("concat_mismatch", lambda x, y: np.concatenate([x, y]), (X34, np.ones((2, 5), np.float32)), ShapeError,
     r"\(2, 5\).*\(3, 4\)"),
    ("concat_ndim_mismatch", lambda x, y: np.concatenate([x, y]), (X34, V5), ShapeError, "same number of dimensions"),
    ("concat_axis_range", lambda x: np.concatenate([x, x], axis=2), (X34,), ShapeError, "axis 2 is out of range"),
    ("concat_0d", lambda x: np.concatenate([x.sum(), x.sum()]), (X34,), ShapeError, "zero-dimensional"),
    ("stack_shapes", lambda x, y: np.stack([x, y]), (X34, np.ones((4, 3), np.float32)), ShapeError, "same shape"),
    ("pad_mode", lambda x: np.pad(x, 1, mode="reflect"), (X34,), UnsupportedOpError, "mode='reflect'.*constant"),
    ("pad_negative", lambda x: np.pad(x, -1), (X34,), ShapeError, "cannot be negative"),
    ("pad_width_shape", lambda x: np.pad(x, ((1, 2, 3),)), (X34,), ShapeError, "does not fit"),
    ("pad_per_axis_value", lambda x: np.pad(x, 1, constant_values=((1, 2), (3, 4))), (X34,), UnsupportedOpError,
     "one number"),
    ("pad_traced_value", lambda x: np.pad(x, 1, constant_values=x.sum()), (X34,), TraceError, "Python number"),
    ("einsum_ellipsis", lambda a: np.einsum("...ij->...ji", a), (X34,), UnsupportedOpError, "ellipsis"),
    ("einsum_diagonal", lambda a: np.einsum("ii->", a), (np.ones((3, 3), np.float32),), UnsupportedOpError,
     "repeated index"),
    ("einsum_size_mismatch", lambda a, b: np.einsum("ij,jk->ik", a, b), (X34, X34), ShapeError,
     "'j' has size 4 in one operand and 3"),
    ("einsum_operand_count", lambda a: np.einsum("ij,jk->ik", a), (X34,), ShapeError, "2 operand subscript"),
    ("einsum_rank", lambda a: np.einsum("ijk->k", a), (X34,), ShapeError, "name 3 axes"),
    ("einsum_out_index", lambda a: np.einsum("ij->iz", a), (X34,), ShapeError, "'z' does not appear"),
    ("einsum_interleaved", lambda a: np.einsum(a, [0, 1], [1, 0]), (X34,), UnsupportedOpError, "subscripts-string"),
    ("repeat_negative", lambda x: np.repeat(x, -1), (X34,), ShapeError, "non-negative"),
    ("repeat_count_length", lambda x: np.repeat(x, [1, 2], axis=1), (X34,), ShapeError, "2 counts given"),
    ("repeat_float", lambda x: np.repeat(x, 1.5), (X34,), ShapeError, "int or a list of ints"),
    ("tile_negative", lambda x: np.tile(x, (2, -1)), (X34,), ShapeError, "non-negative"),
    ("var_ddof_str", lambda x: np.var(x, ddof="1"), (X34,), TraceError, "ddof must be a number"),
    ("var_dtype_kw", lambda x: np.var(x, dtype=np.float64), (X34,), TraceError, "dtype"),
    ("squeeze_not_one", lambda x: x.squeeze(axis=0), (X34,), ShapeError, "its size is not 1"),
    ("moveaxis_repeat", lambda x: np.moveaxis(x, [0, 0], [0, 1]), (X34,), ShapeError, "distinct axes"),
    ("tensordot_pairs", lambda a, b: np.tensordot(a, b, axes=([0], [0, 1])), (X34, X34), ShapeError,
     "pair 1 axes of a with 2"),
    ("swapaxes_range", lambda x: x.swapaxes(0, 3), (X34,), ShapeError, "axis 3 is out of range"),
]


@pytest.mark.parametrize("name", [b[0] for b in BAD])
def test_bad_input_clear_error(name):
    _, fn, args, cls, pattern = next(b for b in BAD if b[0] == name)
    with pytest.raises(cls, match=pattern) as e:
        explorer.trace(fn, *args)
    assert isinstance(e.value, ExplorerError)
    assert "Traceback" not in str(e.value) and len(str(e.value)) < 600


# ----------------------------------------------------------------------------- unsupported-op messages
def uses_sort(x):
    return np.sort(x) + 1


def uses_arctan2(x):
    return np.arctan2(x, x)


def uses_argmax(x):
    return x.argmax(axis=0)


def uses_norm(x):
    return np.linalg.norm(x, axis=-1)


@pytest.mark.parametrize("fn, op, close", [(uses_sort, "np.sort", "np.sqrt"), (uses_norm, "np.linalg.norm", "np."),
                                            (uses_arctan2, "np.arctan2", "np.tanh"),
                                            (uses_argmax, "x.argmax", "x.max")])
def test_unsupported_message_is_short_and_points_to_docs(fn, op, close):
    with pytest.raises(UnsupportedOpError) as e:
        explorer.trace(fn, X34)
    msg = str(e.value)
    assert msg.startswith(f"{op} is not supported"), msg
    assert len(msg) < 300, (len(msg), msg)
    assert "test_numpy_surface.py:" in msg and "return" in msg   # the user's line
    assert close in msg and msg.count(", ") >= 2                   # three closest names
    assert "docs/NUMPY.md" in msg
    assert "layernorm" not in msg and "gelu" not in msg           # no internal op names


def test_unsupported_message_names_closest_of_typo():
    from explorer.tracing import unsupported_numpy
    msg = str(unsupported_numpy("concatenat"))
    assert "np.concatenate" in msg.split("closest supported:")[1]


# ----------------------------------------------------------------------------- docs/NUMPY.md
def test_numpy_doc_matches_the_tracer():
    from explorer.numpy_api import NOTES, numpy_surface_markdown
    from explorer.tracing import supported_numpy_names
    doc = Path(__file__).resolve().parents[1] / "docs" / "NUMPY.md"
    assert doc.read_text() == numpy_surface_markdown(), (
        "docs/NUMPY.md is stale; regenerate it (see the command at its top)")
    names = supported_numpy_names()
    assert not set(NOTES) - set(names), f"notes for unsupported names: {set(NOTES) - set(names)}"
    for n in ("concatenate", "stack", "hstack", "vstack", "split", "array_split", "var", "std", "repeat", "tile",
              "pad", "einsum", "tensordot", "swapaxes", "moveaxis"):
        assert f"| np.{n} |" in doc.read_text()
    for meth in ("x.var", "x.std", "x.clip", "x.swapaxes", "x.squeeze"):
        assert f"`{meth}`" in doc.read_text()


def test_numpy_api_docstring_examples():
    import doctest

    import explorer.numpy_api
    assert doctest.testmod(explorer.numpy_api).failed == 0


def test_cli_prints_the_numpy_doc(capsys):
    from explorer.__main__ import main
    from explorer.numpy_api import numpy_surface_markdown
    assert main(["numpy-doc"]) == 0
    assert capsys.readouterr().out == numpy_surface_markdown()
