"""Horizontal batching (passes/horizontal.py): per-head computations over slices → one batched computation."""
from __future__ import annotations

import numpy as np
import pytest

import explorer
from explorer.backends import nvcc
from explorer.backends.reference import run_graph
from explorer.passes.fusion import fuse
from explorer.passes.horizontal import batch_horizontal

S, H, D = 16, 4, 8


def softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def heads_tuple(q, k, v):
    outs = []
    for h in range(H):
        outs.append(softmax(q[:, h * D:(h + 1) * D] @ k[:, h * D:(h + 1) * D].T) @ v[:, h * D:(h + 1) * D])
    return tuple(outs)


def heads_sum(q, k, v):
    out = 0.0
    for h in range(H):
        out = out + softmax(q[:, h * D:(h + 1) * D] @ k[:, h * D:(h + 1) * D].T) @ v[:, h * D:(h + 1) * D]
    return out


def qkv_attention(x, w, mask):
    # the GPT-2 pattern: one qkv projection, q/k/v and the heads are slices of it
    W = H * D
    qkv = x @ w
    q, k, v = qkv[:, :W], qkv[:, W:2 * W], qkv[:, 2 * W:]
    out = 0.0
    for h in range(H):
        s = q[:, h * D:(h + 1) * D] @ k[:, h * D:(h + 1) * D].T * D ** -0.5 + mask
        out = out + softmax(s) @ v[:, h * D:(h + 1) * D]
    return out


def rand(*shape, dtype=np.float32, seed=0):
    return np.random.default_rng(seed + len(shape)).standard_normal(shape).astype(dtype)


def qkv(dtype=np.float32):
    return tuple(rand(S, H * D, dtype=dtype, seed=s) for s in range(3))


def results(out):
    return list(out) if isinstance(out, (tuple, list)) else [out]


def check(fn, args, target, tol, **kw):
    c = explorer.compile(fn, *args, target=target, verbose=False, **kw)
    want = results(fn(*args))
    got = results(c(*args))
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=tol, atol=tol)
    return c


@pytest.mark.parametrize("fn", [heads_tuple, heads_sum])
@pytest.mark.parametrize("target", ["sim", "cpu"])
def test_heads_batched_equal_numpy(fn, target):
    c = check(fn, qkv(), target, 1e-5)
    fg = c.stage("fused").ir
    assert len(fg.horizontal) == 1 and fg.horizontal[0].count == H
    # the rewritten graph on the NumPy interpreter (the reference backend's executor) equals NumPy too
    for g, w in zip(run_graph(fg.graph, list(qkv())), results(fn(*qkv()))):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def test_reason_in_fused_snapshot_and_fewer_kernels():
    args = qkv()
    on = explorer.compile(heads_sum, *args, target="sim", verbose=False, fuse={"attention": False})
    off = explorer.compile(heads_sum, *args, target="sim", verbose=False, fuse={"horizontal": False, "attention": False})
    text = on.stage("fused").text()
    assert f"horizontal: {H} identical computations (3 kernels each) over slices of q, k, v → batched over h" in text
    assert f"({3 * H} → 3)" in text
    assert "horizontal:" not in off.stage("fused").text()
    assert len(off.kernels) == 3 * H           # qk matmul, softmax, pv matmul (+ the running sum) per head
    assert len(on.kernels) == 4                 # the three batched kernels; the sum of the head slices
    assert on.stage("fused").stats["horizontal_batches"] == 1


def test_batch_loop_and_index_arithmetic_in_loop_ir():
    c = explorer.compile(heads_sum, *qkv(), target="cpu", verbose=False, fuse={"attention": False})
    tiled = c.stage("tiled").text()
    assert "for b0 in range(4)" in tiled                 # one loop over the heads
    assert f"q[i_o * 6 + i_r, b0 * {D} + k]" in tiled     # head h's columns: h * D + k, no division


def test_qkv_slices_of_one_projection():
    W = H * D
    args = (rand(S, W, seed=3), rand(W, 3 * W, seed=4) * 0.2, np.triu(np.full((S, S), -1e9, np.float32), 1))
    for target in ("sim", "cpu"):
        c = check(qkv_attention, args, target, 1e-4)
        fg = c.stage("fused").ir
        assert [hb.count for hb in fg.horizontal] == [H]
        assert fg.horizontal[0].sources == ("%3",)   # q, k and v are all slices of x @ w
    off = explorer.compile(qkv_attention, *args, target="cpu", verbose=False, fuse={"horizontal": False})
    np.testing.assert_allclose(off(*args), qkv_attention(*args), rtol=1e-4, atol=1e-4)
    assert len(c.kernels) < len(off.kernels)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtypes(dtype):
    check(heads_sum, qkv(dtype), "cpu", 1e-5)


def test_row_slices_and_gaps_between_members():
    x = rand(24, 10)

    def rows(x):   # blocks of 4 rows with a gap of 2 rows between them (step 6 > size 4)
        return tuple(np.tanh(x[6 * h:6 * h + 4] * 2.0).sum(axis=1) for h in range(4))

    for target in ("sim", "cpu"):
        c = check(rows, (x,), target, 1e-5)
        assert c.stage("fused").ir.horizontal[0].count == 4


def test_member_value_used_outside_is_read_back():
    def attn_and_weights(q, k, v):
        ws = [softmax(q[:, h * D:(h + 1) * D] @ k[:, h * D:(h + 1) * D].T) for h in range(H)]
        return (ws[0] @ v[:, 0:D] + ws[1] @ v[:, D:2 * D], ws[2])
    for target in ("sim", "cpu"):
        check(attn_and_weights, qkv(), target, 1e-5)


@pytest.mark.parametrize("name,fn", [
    ("overlapping slices", lambda x: tuple(np.exp(x[:, 2 * h:2 * h + 4]) for h in range(3))),
    ("unequal spacing", lambda x: (np.exp(x[:, 0:2]), np.exp(x[:, 2:4]), np.exp(x[:, 5:7]))),
    ("different ops", lambda x: (np.exp(x[:, 0:4]), np.tanh(x[:, 4:8]))),
    ("two varying axes", lambda x: (np.exp(x[0:2, 0:4]), np.exp(x[2:4, 4:8]))),
    ("slices only", lambda x: (x[:, 0:4].T, x[:, 4:8].T)),
])
def test_not_batched(name, fn):
    x = rand(8, 12)
    c = check(fn, (x,), "cpu", 1e-6)
    assert c.stage("fused").ir.horizontal == [], name


def test_knobs_turn_it_off():
    g = explorer.trace(heads_sum, *qkv())
    assert fuse(g, rules={"horizontal": False}).horizontal == []
    assert fuse(g, rules=False).horizontal == []
    assert len(fuse(g).horizontal) == 1


def test_pass_is_pure():
    g = explorer.trace(heads_tuple, *qkv())
    before = g.text()
    g2, batches = batch_horizontal(g)
    assert g.text() == before and g2 is not g
    g2.verify()
    assert batches[0].roots and batches[0].count == H


_NVCC, _WHY = nvcc.available()


@pytest.mark.skipif(not _NVCC, reason=_WHY)
def test_cuda_of_batched_heads_compiles():
    c = explorer.compile(heads_tuple, *qkv(), target="cuda", verbose=False, stop_after="codegen")
    assert c.stage("fused").ir.horizontal
    ptx = nvcc.check(c.stage("codegen").ir.source(), arch="sm_80", mode="ptx")
    for k in c.kernels:
        assert f".entry {k.name}(" in ptx


def test_captured_mask_and_per_head_projection():
    """A mask array captured from outside is a separate const per use (equal values match), and the head
    merge folded into the projection (sum_h head_h @ W[h*d:(h+1)*d]) batches with the attention."""
    W = H * D
    mask = np.triu(np.full((S, S), -1e9, np.float32), 1)

    def mha(x, w, proj_w):
        qkv = x @ w
        out = 0.0
        for h in range(H):
            hs = slice(h * D, (h + 1) * D)
            q, k, v = qkv[:, hs], qkv[:, W:][:, hs], qkv[:, 2 * W:][:, hs]
            out = out + softmax(q @ k.T * 0.125 + mask) @ v @ proj_w[hs, :]
        return out

    args = (rand(S, W, seed=5), rand(W, 3 * W, seed=6) * 0.2, rand(W, W, seed=7) * 0.2)
    for target in ("sim", "cpu"):
        c = check(mha, args, target, 1e-4, fuse={"attention": False})
        hb = c.stage("fused").ir.horizontal
        assert len(hb) == 1 and hb[0].count == H and "proj_w" in hb[0].sources and hb[0].kernels == 4
    off = explorer.compile(mha, *args, target="cpu", verbose=False, fuse={"horizontal": False, "attention": False})
    assert len(c.kernels) == 6 and len(off.kernels) >= 1 + 4 * H   # qkv; 4 batched; the sum  vs  4 per head


def gpt2_block(x, attn_w, attn_b, proj_w, fc_w, fc2_w):
    """A GPT-2 style block with slices for the heads (np.split/np.hstack arrive with i12-surface)."""
    def ln(t):
        m = t.mean(axis=-1, keepdims=True)
        return (t - m) / np.sqrt(((t - m) ** 2).mean(axis=-1, keepdims=True) + 1e-5)
    n, width = x.shape
    d = width // H
    qkv = ln(x) @ attn_w + attn_b
    q, k, v = qkv[:, :width], qkv[:, width:2 * width], qkv[:, 2 * width:]
    mask = (1 - np.tri(n, dtype=x.dtype)) * -1e10
    att = 0.0
    for h in range(H):
        hs = slice(h * d, (h + 1) * d)
        att = att + softmax(q[:, hs] @ k[:, hs].T / d ** 0.5 + mask) @ v[:, hs] @ proj_w[hs, :]
    x = x + att
    y = ln(x) @ fc_w
    return x + 0.5 * y * (1 + np.tanh(0.7978845608 * (y + 0.044715 * y ** 3))) @ fc2_w


def block_args(n=8, width=32):
    return (rand(n, width, seed=20), rand(width, 3 * width, seed=21) * 0.2, rand(3 * width, seed=22) * 0.1,
            rand(width, width, seed=23) * 0.2, rand(width, 4 * width, seed=24) * 0.2,
            rand(4 * width, width, seed=25) * 0.2)


@pytest.mark.parametrize("target", ["sim", "cpu"])
def test_gpt2_block_heads_batched(target):
    args = block_args()
    c = check(gpt2_block, args, target, 1e-4)
    fg = c.stage("fused").ir
    assert [hb.count for hb in fg.horizontal] == [H]
    np.testing.assert_allclose(run_graph(fg.graph, list(args))[0], gpt2_block(*args), rtol=1e-4, atol=1e-4)
    off = explorer.compile(gpt2_block, *args, target=target, verbose=False, fuse={"horizontal": False})
    assert len(c.kernels) < len(off.kernels)


@pytest.mark.skipif(not _NVCC, reason=_WHY)
def test_gpt2_block_cuda_compiles():
    c = explorer.compile(gpt2_block, *block_args(), target="cuda", verbose=False, stop_after="codegen")
    ptx = nvcc.check(c.stage("codegen").ir.source(), arch="sm_80", mode="ptx")
    assert c.stage("fused").ir.horizontal and all(f".entry {k.name}(" in ptx for k in c.kernels)
