"""Convolution: the NumPy idiom (pad + sliding_window_view + einsum) and explorer.nn.conv2d become ONE
conv2d node, fused with its bias/activation/residual epilogue, equal to NumPy on reference, sim and cpu;
the CUDA compiles with nvcc; the simulator sees no padded copy of the input; bad input is a clear error."""
from __future__ import annotations

import re

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view as swv

import explorer
from explorer.errors import ExplorerError, ShapeError, UnsupportedOpError

try:
    from test_backends_diff import _cpu_ok
except ImportError:   # pragma: no cover
    from tests.test_backends_diff import _cpu_ok  # type: ignore
from explorer.backends import nvcc

TARGETS = ["reference", "sim", pytest.param("cpu", marks=pytest.mark.skipif(not _cpu_ok(), reason="no C compiler"))]
PAD1 = ((0, 0), (1, 1), (1, 1), (0, 0))


def rnd(*shape, dtype=np.float32, seed=0):
    return np.random.default_rng(seed + sum(shape)).standard_normal(shape).astype(dtype)


# ----------------------------------------------------------------------------- the NumPy idiom
def conv_relu(x, w, b):                       # the function: 'same' padding, bias, relu
    xp = np.pad(x, PAD1)
    win = swv(xp, (3, 3), axis=(1, 2))
    return np.maximum(np.einsum("nhwcrs,rsck->nhwk", win, w) + b, 0)


def conv_s2_relu(x, w, b):                    # stride 2 by slicing the window
    win = swv(np.pad(x, PAD1), (3, 3), axis=(1, 2))[:, ::2, ::2]
    return np.maximum(np.einsum("nhwcrs,rsck->nhwk", win, w) + b, 0)


def conv_valid_relu(x, w, b):                 # no padding
    return np.maximum(np.einsum("nhwcrs,rsck->nhwk", swv(x, (3, 3), axis=(1, 2)), w) + b, 0)


def depthwise_relu(x, w, b):                  # depthwise: w is (R, S, C)
    win = swv(np.pad(x, PAD1), (3, 3), axis=(1, 2))
    return np.maximum(np.einsum("nhwcrs,rsc->nhwc", win, w) + b, 0)


def depthwise_s2_relu(x, w, b):
    win = swv(np.pad(x, PAD1), (3, 3), axis=(1, 2))[:, ::2, ::2]
    return np.maximum(np.einsum("nhwcrs,rsc->nhwc", win, w) + b, 0)


def conv_residual(x, w, b):                   # bias + residual add + relu in the epilogue
    win = swv(np.pad(x, PAD1), (3, 3), axis=(1, 2))
    return np.maximum(np.einsum("nhwcrs,rsck->nhwk", win, w) + b + x, 0)


def conv_asym_pad(x, w, b):
    win = swv(np.pad(x, ((0, 0), (0, 2), (1, 0), (0, 0))), (3, 2), axis=(1, 2))
    return np.einsum("nhwcrs,rsck->nhwk", win, w) + b


def conv_dilated(x, w, b):                    # a 5x5 window sliced ::2 on its taps: dilation 2
    win = swv(np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0))), (5, 5), axis=(1, 2))[:, :, :, :, ::2, ::2]
    return np.einsum("nhwcrs,rsck->nhwk", win, w) + b


def conv_krsc(x, w, b):                       # another weight layout and other letters
    win = swv(np.pad(x, PAD1), (3, 3), axis=(1, 2))
    return np.einsum("bijcpq,kpqc->bijk", win, w) + b


def conv_nchw(x, w, b):                       # NCHW input, KCRS weight
    win = swv(np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1))), (3, 3), axis=(2, 3))
    return np.einsum("nchwrs,kcrs->nkhw", win, w) + b[:, None, None]


def conv_pad_value(x, w, b):                  # a non-zero pad is not folded: the pad is the conv's prologue
    win = swv(np.pad(x, PAD1, constant_values=0.5), (3, 3), axis=(1, 2))
    return np.einsum("nhwcrs,rsck->nhwk", win, w) + b


def conv_1x1(x, w, b):
    return np.maximum(np.einsum("nhwcrs,rsck->nhwk", swv(x, (1, 1), axis=(1, 2)), w) + b, 0)


def window_blur(x, w, b):                     # not a conv pattern: generic lowering of the window
    win = swv(x, (2, 2), axis=(1, 2))
    return np.einsum("nhwcrs,rs->nhwc", win, w[:2, :2, 0, 0]) + b[0]


def conv_bn_relu(x, w, b):                   # inference batch-norm as per-channel scale and shift: epilogue too
    win = swv(np.pad(x, PAD1), (3, 3), axis=(1, 2))
    return np.maximum(np.einsum("nhwcrs,rsck->nhwk", win, w) * b + 0.25, 0)


def window_offset(x, w, b):                   # a window sliced from 1: not folded (generic lowering), still right
    win = swv(np.pad(x, PAD1), (3, 3), axis=(1, 2))[:, 1::2, 1:]
    return np.einsum("nhwcrs,rsck->nhwk", win, w) + b


def nn_groups(x, w, b):
    return explorer.nn.relu(explorer.nn.conv2d(x, w, stride=(1, 2), padding=1, groups=2) + b)


def nn_same_dilated(x, w, b):
    return explorer.nn.conv2d(x, w, padding="same", dilation=2) + b


def nn_nchw(x, w, b):
    return explorer.nn.conv2d(x, w, stride=2, padding=((1, 0), (0, 1)), layout="NCHW") + b[:, None, None]


def nn_depthwise_mult(x, w, b):               # groups = C, two output channels per input channel
    return explorer.nn.conv2d(x, w, padding="valid", groups=x.shape[-1]) + b


# name: (fn, x shape, w shape, b shape, kernels: 1 = everything fused (the NCHW bias b[:, None, None] is an
# indexed load in the epilogue); 0 = no conv node, generic lowering: kernels not checked)
CASES = {
    "same_relu": (conv_relu, (2, 7, 9, 3), (3, 3, 3, 5), (5,), 1),
    "stride2_relu": (conv_s2_relu, (1, 9, 11, 4), (3, 3, 4, 6), (6,), 1),
    "valid_relu": (conv_valid_relu, (1, 8, 7, 3), (3, 3, 3, 4), (4,), 1),
    "depthwise_relu": (depthwise_relu, (1, 9, 7, 5), (3, 3, 5), (5,), 1),
    "depthwise_s2_relu": (depthwise_s2_relu, (2, 7, 8, 6), (3, 3, 6), (6,), 1),
    "residual": (conv_residual, (1, 6, 5, 4), (3, 3, 4, 4), (4,), 1),
    "bn_relu": (conv_bn_relu, (1, 6, 7, 3), (3, 3, 3, 4), (4,), 1),
    "asym_pad": (conv_asym_pad, (1, 5, 6, 2), (3, 2, 2, 3), (3,), 1),
    "dilated": (conv_dilated, (1, 7, 8, 2), (3, 3, 2, 3), (3,), 1),
    "krsc_letters": (conv_krsc, (1, 5, 5, 3), (4, 3, 3, 3), (4,), 1),
    "nchw": (conv_nchw, (1, 3, 6, 5), (4, 3, 3, 3), (4,), 1),
    "pad_value": (conv_pad_value, (1, 5, 4, 2), (3, 3, 2, 3), (3,), 1),
    "one_by_one": (conv_1x1, (1, 5, 7, 8), (1, 1, 8, 3), (3,), 1),
    "window_blur": (window_blur, (1, 5, 6, 3), (2, 2, 1, 1), (1,), 0),
    "window_offset": (window_offset, (1, 6, 5, 2), (3, 3, 2, 3), (3,), 0),
    "nn_groups": (nn_groups, (1, 6, 7, 4), (3, 3, 2, 6), (6,), 1),
    "nn_same_dilated": (nn_same_dilated, (1, 9, 8, 3), (3, 3, 3, 2), (2,), 1),
    "nn_nchw": (nn_nchw, (2, 3, 7, 6), (3, 3, 3, 5), (5,), 1),
    "nn_depthwise_mult": (nn_depthwise_mult, (1, 6, 6, 3), (3, 3, 1, 6), (6,), 1),
}
TOL = {np.float16: 3e-2, np.float32: 1e-4, np.float64: 1e-10}


def args_of(name, dtype=np.float32):
    _, xs, ws, bs, _ = CASES[name]
    return rnd(*xs, dtype=dtype), rnd(*ws, dtype=dtype, seed=1), rnd(*bs, dtype=dtype, seed=2)


def want_of(name, args):
    fn = CASES[name][0]
    if args[0].dtype == np.float16:   # NumPy sums f16 products in f16; the kernels accumulate in f32
        return fn(*[a.astype(np.float32) for a in args]).astype(np.float16)
    return fn(*args)


def check(got, want):
    assert got.shape == want.shape and got.dtype == want.dtype
    tol = TOL[want.dtype.type]
    np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=tol, atol=tol)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", sorted(CASES))
def test_conv_variants_equal_numpy(name, target):
    args = args_of(name)
    c = explorer.compile(CASES[name][0], *args, target=target, verbose=False)
    check(c(*args), want_of(name, args))
    if CASES[name][4]:
        assert [n.op for n in c.stage("simplified").ir.op_nodes()].count("conv2d") == 1
        assert len(c.kernels) == CASES[name][4], [k.name for k in c.kernels]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("dtype", [np.float64, np.float16])
@pytest.mark.parametrize("name", ["same_relu", "stride2_relu", "depthwise_relu", "nn_groups"])
def test_conv_dtypes_equal_numpy(name, dtype, target):
    args = args_of(name, dtype)
    c = explorer.compile(CASES[name][0], *args, target=target, verbose=False)
    check(c(*args), want_of(name, args))


@pytest.mark.parametrize("name", ["same_relu", "stride2_relu", "valid_relu", "depthwise_relu", "depthwise_s2_relu"])
def test_idiom_is_one_conv_node_one_kernel_with_bias_relu_fused(name):
    args = args_of(name)
    c = explorer.compile(CASES[name][0], *args, target="cpu" if _cpu_ok() else "sim", verbose=False)
    simplified = [n.op for n in c.stage("simplified").ir.op_nodes()]
    assert simplified.count("conv2d") == 1 and "pad" not in simplified and "window" not in simplified
    conv = next(n for n in c.stage("simplified").ir.op_nodes() if n.op == "conv2d")
    # provenance spans the user's pad, window and contraction statements
    assert "einsum" in conv.provenance.code and "swv(" in conv.provenance.code
    assert ("np.pad" in conv.provenance.code) == (name != "valid_relu")
    assert (conv.provenance.end_line > conv.provenance.line) == (name != "valid_relu")   # one line there
    (grp,) = c.stage("fused").ir.groups
    # the depthwise weight (R, S, C) is read as (R, S, 1, C): a reshape folded into the conv's weight load
    assert [n.op for n in grp.nodes if n.op != "reshape"] == ["conv2d", "add", "maximum"]
    if name.startswith("depthwise"):
        assert conv.attrs["groups"] == args[0].shape[-1]
    if "s2" in name or "stride2" in name:
        assert conv.attrs["stride"] == (2, 2)
    if name != "valid_relu":
        assert conv.attrs["padding"] == ((1, 1), (1, 1))


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("name", ["same_relu", "stride2_relu", "depthwise_relu"])
def test_simulator_sees_no_padded_copy(name, shared):
    args = args_of(name)
    c = explorer.compile(CASES[name][0], *args, target="sim", schedule={"shared": shared}, verbose=False)
    exe = c.executable()
    outs = exe.run(c.backend_inputs(c.check_args(args)))
    check(outs[0], want_of(name, args))
    kernels = {k: v for k, v in exe.counters.items() if k != "total"}
    assert len(kernels) == 1
    (ctr,) = kernels.values()
    # one store per output element and nothing else: no padded input (or any temp) is ever written
    assert ctr["global_store_bytes"] == outs[0].nbytes
    padded = tuple(s + 2 if d in (1, 2) else s for d, s in enumerate(args[0].shape))
    assert not any(tuple(b.shape) == padded for b in c.stage("lowered").ir.buffers().values())
    assert not c.stage("lowered").ir.temps
    # loads, exactly: a padding tap reads nothing (the select's untaken branch is never evaluated); each output
    # reads its in-bounds taps of x (C/groups channels each), every weight tap and its bias
    conv = next(n for n in c.stage("simplified").ir.op_nodes() if n.op == "conv2d")
    N, H, W, C = args[0].shape
    R, S, Cg, K = conv.inputs[1].shape
    _, Ho, Wo, _ = conv.shape
    (sh, sw), ((pt, _), (pl, _)) = conv.attrs["stride"], conv.attrs["padding"]
    rows = np.add.outer(np.arange(Ho) * sh - pt, np.arange(R))
    cols = np.add.outer(np.arange(Wo) * sw - pl, np.arange(S))
    taps = int(((rows >= 0) & (rows < H)).sum()) * int(((cols >= 0) & (cols < W)).sum())
    itemsize = args[0].itemsize
    if not shared:   # direct: every thread reads its own window and weights
        assert ctr["global_load_bytes"] == (N * K * taps * Cg + N * Ho * Wo * K * (R * S * Cg + 1)) * itemsize
    else:
        # implicit GEMM: a block of TP pixels x TK channels reads its pixels' in-bounds taps once (once per
        # channel when depthwise: each output channel reads its own input channel) and its weight tile once
        sched = c.stage("tiled").ir.kernels[0].schedule
        TP, TK = (int(re.search(rf"split\({ax}, (\d+)\)", "\n".join(sched)).group(1)) for ax in ("pix", "oc"))
        depthwise = conv.attrs["groups"] > 1
        x_reads = N * taps * (K if depthwise else Cg * -(-K // TK))
        w_reads = -(-(N * Ho * Wo) // TP) * R * S * Cg * K
        assert ctr["global_load_bytes"] == (x_reads + w_reads + N * Ho * Wo * K) * itemsize
    assert ctr["flops"] >= explorer.ops.conv_flops(next(n for n in c.stage("simplified").ir.op_nodes()
                                                         if n.op == "conv2d"))


@pytest.mark.skipif(not nvcc.available()[0], reason="nvcc not on PATH")
def test_cuda_of_the_idiom_compiles_with_nvcc():
    for name in ["same_relu", "stride2_relu", "valid_relu", "depthwise_relu", "nn_nchw", "nn_groups"]:
        args = args_of(name)
        src = explorer.compile(CASES[name][0], *args, target="sim", verbose=False).codegen.source()
        ptx = nvcc.check(src, arch="sm_80", mode="ptx")
        assert re.search(r"\.entry fused_\w*conv2d", ptx), name


def test_cost_model_flops():
    x, w = rnd(1, 8, 8, 4), rnd(3, 3, 2, 6)
    g = explorer.trace(lambda x, w: explorer.nn.conv2d(x, w, padding=1, groups=2), x, w)
    (conv,) = g.op_nodes()
    assert explorer.ops.node_cost(conv).flops == 2 * 1 * 8 * 8 * 6 * 3 * 3 * 4 // 2


def test_nn_conv2d_on_arrays_equals_the_idiom():
    x, w, b = args_of("same_relu")
    np.testing.assert_allclose(np.maximum(explorer.nn.conv2d(x, w, padding=1) + b, 0), conv_relu(x, w, b),
                               rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- bad input
def _trace(fn, *shapes):
    return explorer.trace(fn, *[rnd(*s) for s in shapes])


BAD = {
    "window_larger_than_input": (lambda x, w: np.einsum("nhwcrs,rsck->nhwk", swv(x, (7, 3), axis=(1, 2)), w),
                                 [(1, 5, 5, 2), (7, 3, 2, 3)], ShapeError, "window size 7"),
    "mismatched_channels": (lambda x, w: np.einsum("nhwcrs,rsck->nhwk", swv(x, (3, 3), axis=(1, 2)), w),
                            [(1, 5, 5, 2), (3, 3, 4, 3)], ShapeError, "index 'c'"),
    "pad_mode_reflect": (lambda x, w: explorer.nn.conv2d(np.pad(x, 1, mode="reflect"), w),
                         [(1, 5, 5, 2), (3, 3, 2, 3)], UnsupportedOpError, "mode='reflect'"),
    "stride_zero": (lambda x, w: explorer.nn.conv2d(x, w, stride=0), [(1, 5, 5, 2), (3, 3, 2, 3)], ShapeError,
                    "stride"),
    "stride_negative": (lambda x, w: explorer.nn.conv2d(x, w, stride=(1, -2)), [(1, 5, 5, 2), (3, 3, 2, 3)],
                        ShapeError, "stride"),
    "groups_not_dividing": (lambda x, w: explorer.nn.conv2d(x, w, groups=2), [(1, 5, 5, 3), (3, 3, 1, 4)],
                            ShapeError, "groups=2"),
    "groups_zero": (lambda x, w: explorer.nn.conv2d(x, w, groups=0), [(1, 5, 5, 2), (3, 3, 2, 3)], ShapeError,
                    "groups"),
    "weight_channels": (lambda x, w: explorer.nn.conv2d(x, w), [(1, 5, 5, 3), (3, 3, 4, 2)], ShapeError,
                        "input channels"),
    "conv_window_too_big": (lambda x, w: explorer.nn.conv2d(x, w, padding=1), [(1, 3, 3, 2), (7, 7, 2, 2)],
                            ShapeError, "larger than the padded input"),
    "negative_padding": (lambda x, w: explorer.nn.conv2d(x, w, padding=-1), [(1, 5, 5, 2), (3, 3, 2, 3)],
                         ShapeError, "negative"),
    "padding_mode_string": (lambda x, w: explorer.nn.conv2d(x, w, padding="reflect"), [(1, 5, 5, 2), (3, 3, 2, 3)],
                            UnsupportedOpError, "zero padding only"),
    "weight_3d": (lambda x, w: explorer.nn.conv2d(x, w), [(1, 5, 5, 2), (3, 3, 2)], ShapeError, "4-D"),
    "bad_layout": (lambda x, w: explorer.nn.conv2d(x, w, layout="NCWH"), [(1, 5, 5, 2), (3, 3, 2, 3)],
                   ShapeError, "layout"),
    "writeable_window": (lambda x, w: swv(x, (3, 3), axis=(1, 2), writeable=True), [(1, 5, 5, 2), (3, 3, 2, 3)],
                         UnsupportedOpError, "writeable"),
    "window_axis_count": (lambda x, w: swv(x, (3, 3), axis=1), [(1, 5, 5, 2), (3, 3, 2, 3)], ShapeError,
                          "one size per axis"),
    "dilation_zero": (lambda x, w: explorer.nn.conv2d(x, w, dilation=0), [(1, 5, 5, 2), (3, 3, 2, 3)], ShapeError,
                      "dilation"),
    "same_with_stride": (lambda x, w: explorer.nn.conv2d(x, w, stride=2, padding="same"),
                         [(1, 5, 5, 2), (3, 3, 2, 3)], ShapeError, "same"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_input_is_a_clear_error(name):
    fn, shapes, err, words = BAD[name]
    with pytest.raises(err) as e:
        _trace(fn, *shapes)
    assert isinstance(e.value, ExplorerError) and words in str(e.value), str(e.value)


@pytest.mark.parametrize("name", ["stride_zero", "groups_not_dividing", "weight_channels", "conv_window_too_big"])
def test_bad_input_on_arrays_is_the_same_error(name):
    fn, shapes, err, words = BAD[name]
    with pytest.raises(err, match=words.replace("=", ".")):
        fn(*[rnd(*s) for s in shapes])


def test_dot_and_cost_model_of_a_conv_kernel():
    args = args_of("same_relu")
    c = explorer.compile(conv_relu, *args, target="sim", verbose=False)
    for st in c.stage_names:
        assert "digraph" in c.stage(st).dot(), st
    assert "conv2d" in c.stage("fused").dot()
    (kc,) = explorer.costmodel.kernel_costs(c, counters=False)
    conv = next(n for n in c.stage("simplified").ir.op_nodes() if n.op == "conv2d")
    n_out = conv.size
    assert kc.flops == explorer.ops.conv_flops(conv) + 2 * n_out     # + bias add + relu


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_epilogue_operand_rearranged_by_injective_ops_is_fused(target, dtype):
    # b[::-1][None, :] feeds only the epilogue: an indexed load there, not a kernel of its own (f16: the
    # tensor-core path's epilogue on sim)
    x, w, b = rnd(32, 48, dtype=dtype), rnd(48, 32, dtype=dtype, seed=3), rnd(32, dtype=dtype, seed=4)
    f = lambda x, w, b: np.maximum(x @ w + b[::-1][None, :], 0)   # noqa: E731
    c = explorer.compile(f, x, w, b, target=target, verbose=False)
    assert len(c.kernels) == 1
    want = f(*[a.astype(np.float32) for a in (x, w, b)]).astype(dtype)
    check(c(x, w, b), want)


def max_pool(x):                              # 2x2 max pooling: a strided window reduced
    return swv(x, (2, 2), axis=(1, 2))[:, ::2, ::2].max(axis=(-2, -1))


def moving_mean(x):                           # a 1-D window along the last axis, averaged
    return np.mean(swv(x, 3, axis=-1), axis=-1)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("fn,shape", [(max_pool, (2, 8, 6, 3)), (moving_mean, (4, 10))])
def test_other_window_uses_equal_numpy(fn, shape, target):
    x = rnd(*shape)
    c = explorer.compile(fn, x, target=target, verbose=False)
    check(c(x), fn(x))


def test_conv_module_docstring_examples_run():
    import doctest
    import explorer.conv
    assert doctest.testmod(explorer.conv).failed == 0


@pytest.mark.parametrize("tk,tp", [(4, 8), (16, None), (None, 2)])
def test_cuda_conv_tile_knobs_reach_the_schedule(tk, tp):
    args = args_of("same_relu")
    knobs = {k: v for k, v in (("conv_tile_k", tk), ("conv_tile_p", tp)) if v is not None}
    c = explorer.compile(CASES["same_relu"][0], *args, target="sim", schedule=knobs, verbose=False)
    check(c(*args), want_of("same_relu", args))
    sched = c.stage("tiled").ir.kernels[0].schedule
    K = args[1].shape[-1]
    if tk is not None:
        assert f"split(oc, {min(tk, 1 << (min(K, 32).bit_length() - 1))}) -> oc_o, oc_i" in sched
    if tp is not None:
        assert f"split(pix, {tp}) -> pix_o, pix_i" in sched


@pytest.mark.parametrize("knobs,match", [({"conv_tile_k": 0}, "conv_tile_k"), ({"conv_tile_p": 2.5}, "conv_tile_p"),
                                         ({"conv_tile_k": 32, "conv_tile_p": 256, "thread_tile": (1, 1)}, "1024"),
                                         ({"conv_tile_k": 32, "conv_tile_p": 256, "thread_tile": (3, 4)}, "divide"),
                                         ({"thread_tile": (2, 2), "shared": False}, "shared memory")])
def test_cuda_conv_tile_knob_bad_values(knobs, match):
    x, w, b = rnd(1, 32, 32, 32), rnd(3, 3, 32, 32, seed=1), rnd(32, seed=2)
    with pytest.raises(ExplorerError, match=match):
        explorer.compile(conv_relu, x, w, b, target="sim", schedule=knobs, stop_after="tiled", verbose=False)


# ----------------------------------------------------------------------------- CUDA: implicit GEMM in shared memory
STAGED_CASES = ["same_relu", "stride2_relu", "valid_relu", "depthwise_relu", "one_by_one", "nn_groups", "nn_nchw",
                "dilated", "nn_depthwise_mult"]


@pytest.mark.parametrize("knobs", [{}, {"conv_tile_c": 2, "conv_tile_p": 3}, {"conv_tile_c": 2, "conv_tile_k": 2,
                                                                             "double_buffer": False},
                                   {"thread_tile": (2, 2), "conv_tile_p": 8, "conv_tile_c": 2}])
@pytest.mark.parametrize("name", STAGED_CASES)
def test_cuda_conv_staged_in_shared_memory_equals_numpy(name, knobs):
    """The default CUDA schedule stages the weight tile and the gathered input tile in shared memory (the
    `tiled` snapshot shows them); odd tiles (partial pixel, channel and input-channel steps, double-buffered
    or not) still equal NumPy on the simulator."""
    args = args_of(name)
    c = explorer.compile(CASES[name][0], *args, target="sim", schedule=knobs, verbose=False)
    check(c(*args), want_of(name, args))
    k = c.stage("tiled").ir.kernels[0]
    x_name, w_name = c.stage("lowered").ir.computes[0].operands
    assert f"cache_read({x_name}, shared, at=ic_o)" in k.schedule and f"cache_read({w_name}, shared, at=ic_o)" in k.schedule
    text = c.stage("tiled").text()
    assert f"alloc {x_name}_shared" in text and f"alloc {w_name}_shared" in text and "barrier()" in text


def _conv64(x, w):
    return np.einsum("nhwcrs,rsck->nhwk", swv(np.pad(x, PAD1), (3, 3), axis=(1, 2)), w)


def test_cuda_conv_shared_tiles_cut_global_bytes():
    """The 3x3 64->64 layer at 8x8: each block reads its input and weight tiles once from global memory
    instead of once per thread (the direct schedule), at least 8x fewer bytes; shared tiles within 48 KiB."""
    x, w = rnd(1, 8, 8, 64), rnd(3, 3, 64, 64, seed=1)
    got = {}
    for shared in (False, True):
        c = explorer.compile(_conv64, x, w, target="sim", schedule={"shared": shared}, verbose=False)
        exe = c.executable()
        out = exe.run(c.backend_inputs(c.check_args((x, w))))[0]
        check(out, _conv64(x, w))
        got[shared] = exe.counters["total"]["global_load_bytes"]
        k = c.stage("tiled").ir.kernels[0]
        smem = sum(s.buffer.nbytes for s in explorer.loopir.walk(k.body)
                   if isinstance(s, explorer.loopir.Alloc) and s.buffer.scope == "shared")
        assert (smem > 0) == shared and smem <= 48 * 1024
    print(f"global load bytes, 3x3 64->64 at 8x8: direct {got[False]:,}, implicit GEMM {got[True]:,} "
          f"({got[False] / got[True]:.1f}x fewer)")
    assert got[True] * 8 <= got[False]


@pytest.mark.skipif(not nvcc.available()[0], reason="nvcc not on PATH")
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_cuda_conv_shared_tiles_compile_with_nvcc(arch):
    for name, args in [("same_relu", args_of("same_relu")), ("depthwise_relu", args_of("depthwise_relu")),
                       ("conv64", (rnd(1, 8, 8, 64), rnd(3, 3, 64, 64, seed=1)))]:
        fn = _conv64 if name == "conv64" else CASES[name][0]
        src = explorer.compile(fn, *args, target="sim", verbose=False).codegen.source()
        assert "__shared__" in src, name
        ptx = nvcc.check(src, arch=arch, mode="ptx")
        assert re.search(r"\.entry fused_\w*conv2d|\.entry conv2d", ptx), name
