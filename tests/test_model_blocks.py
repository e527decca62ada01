"""Transformer blocks written in plain NumPy as public NumPy model code writes them (issue 12): a GPT-2
block (picoGPT style: layer norm with np.var, qkv split, per-head loop, np.hstack, gelu) and a Llama
block (RMSNorm, rotary embeddings with split/concatenate, grouped-query attention with np.repeat, einsum,
SwiGLU), and a whole small GPT-2 forward (embedding gather `wte[inputs] + wpe[range(len(inputs))]`, 2 blocks,
final layer norm, logits `x @ wte.T`). Each compiles on reference, sim and cpu and equals NumPy."""
from __future__ import annotations

import numpy as np
import pytest

import explorer
from test_backends_diff import TARGETS, _nvcc


# ----------------------------------------------------------------------------- GPT-2 (picoGPT style)
def gelu(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def softmax(x):
    exp_x = np.exp(x - np.max(x, axis=-1, keepdims=True))
    return exp_x / np.sum(exp_x, axis=-1, keepdims=True)


def layer_norm(x, g, b, eps=1e-5):
    mean = np.mean(x, axis=-1, keepdims=True)
    variance = np.var(x, axis=-1, keepdims=True)
    return g * (x - mean) / np.sqrt(variance + eps) + b


def attention(q, k, v, mask):
    return softmax(q @ k.T / np.sqrt(q.shape[-1]) + mask) @ v


def gpt2_block(x, ln1_g, ln1_b, w_attn, b_attn, w_proj, b_proj, ln2_g, ln2_b, w_fc, b_fc, w_out, b_out):
    n_head = 4
    h = layer_norm(x, ln1_g, ln1_b)
    qkv = h @ w_attn + b_attn
    qkv_heads = list(map(lambda t: np.split(t, n_head, axis=-1), np.split(qkv, 3, axis=-1)))
    causal_mask = (1 - np.tri(x.shape[0], dtype=x.dtype)) * -1e10
    out_heads = [attention(q, k, v, causal_mask) for q, k, v in zip(*qkv_heads)]
    x = x + np.hstack(out_heads) @ w_proj + b_proj
    return x + gelu(layer_norm(x, ln2_g, ln2_b) @ w_fc + b_fc) @ w_out + b_out


def gpt2_args(seq=16, d=64, seed=0):
    rng = np.random.default_rng(seed)
    f = lambda *s: (rng.standard_normal(s) * 0.1).astype(np.float32)  # noqa: E731
    return [f(seq, d), 1 + f(d), f(d), f(d, 3 * d), f(3 * d), f(d, d), f(d), 1 + f(d), f(d), f(d, 4 * d),
            f(4 * d), f(4 * d, d), f(d)]


# ----------------------------------------------------------------------------- whole GPT-2 forward (picoGPT)
def ffn(x, c_fc_w, c_fc_b, c_proj_w, c_proj_b):
    return gelu(x @ c_fc_w + c_fc_b) @ c_proj_w + c_proj_b


def mha(x, c_attn_w, c_attn_b, c_proj_w, c_proj_b, n_head):
    x = x @ c_attn_w + c_attn_b
    qkv_heads = list(map(lambda x: np.split(x, n_head, axis=-1), np.split(x, 3, axis=-1)))
    causal_mask = (1 - np.tri(x.shape[0], dtype=x.dtype)) * -1e10
    out_heads = [attention(q, k, v, causal_mask) for q, k, v in zip(*qkv_heads)]
    return np.hstack(out_heads) @ c_proj_w + c_proj_b


def transformer_block(x, ln_1_g, ln_1_b, attn_w, attn_b, attn_proj_w, attn_proj_b, ln_2_g, ln_2_b, fc_w, fc_b,
                      mlp_proj_w, mlp_proj_b, n_head):
    x = x + mha(layer_norm(x, ln_1_g, ln_1_b), attn_w, attn_b, attn_proj_w, attn_proj_b, n_head=n_head)
    return x + ffn(layer_norm(x, ln_2_g, ln_2_b), fc_w, fc_b, mlp_proj_w, mlp_proj_b)


def gpt2(inputs, wte, wpe, ln_f_g, ln_f_b, *blocks, n_head=4):
    """picoGPT's forward; `blocks` is each block's 12 parameters in turn (compile takes arrays, not dicts)."""
    x = wte[inputs] + wpe[range(len(inputs))]
    for i in range(0, len(blocks), 12):
        x = transformer_block(x, *blocks[i:i + 12], n_head=n_head)
    return layer_norm(x, ln_f_g, ln_f_b) @ wte.T


def gpt2_forward_args(vocab=50, n_ctx=16, seq=8, d=32, n_layer=2, seed=0):
    rng = np.random.default_rng(seed)
    f = lambda *s: (rng.standard_normal(s) * 0.1).astype(np.float32)  # noqa: E731
    args = [rng.integers(0, vocab, seq), f(vocab, d), f(n_ctx, d), 1 + f(d), f(d)]
    for _ in range(n_layer):
        args += gpt2_args(seq, d, seed=int(rng.integers(1 << 30)))[1:]
    return args


@pytest.mark.parametrize("target", ["reference"] + TARGETS)
def test_gpt2_forward_equals_numpy(target):
    args = gpt2_forward_args()
    assert len(args) == 5 + 2 * 12 and args[0].dtype == np.int64
    c = explorer.compile(gpt2, *args, target=target, verbose=False)
    got, want = c(*args), gpt2(*args)
    assert got.dtype == want.dtype and got.shape == want.shape == (8, 50)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=f"gpt2 forward on {target}")
    # other token ids through the same compiled program: the gather reads the ids at run time
    args[0] = np.random.default_rng(1).integers(0, 50, 8)
    np.testing.assert_allclose(c(*args), gpt2(*args), rtol=1e-4, atol=1e-5, err_msg=f"new ids on {target}")


# ----------------------------------------------------------------------------- Llama
def rms_norm(x, weight, eps=1e-6):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def silu(x):
    return x / (1 + np.exp(-x))


def apply_rotary_emb(x, cos, sin):
    x1, x2 = np.split(x, 2, axis=-1)
    rotated = np.concatenate([-x2, x1], axis=-1)
    return x * cos[:, None, :] + rotated * sin[:, None, :]


def llama_block(x, attn_norm, wq, wk, wv, wo, ffn_norm, w1, w2, w3, cos, sin):
    seq, dim = x.shape
    n_heads, n_kv_heads = 4, 2
    head_dim = dim // n_heads
    h = rms_norm(x, attn_norm)
    xq = (h @ wq).reshape(seq, n_heads, head_dim)
    xk = (h @ wk).reshape(seq, n_kv_heads, head_dim)
    xv = (h @ wv).reshape(seq, n_kv_heads, head_dim)
    xq, xk = apply_rotary_emb(xq, cos, sin), apply_rotary_emb(xk, cos, sin)
    xk = np.repeat(xk, n_heads // n_kv_heads, axis=1)
    xv = np.repeat(xv, n_heads // n_kv_heads, axis=1)
    scores = np.einsum("qhd,khd->hqk", xq, xk) / np.sqrt(head_dim)
    mask = np.triu(np.full((seq, seq), -1e9, dtype=np.float32), 1)
    probs = softmax(scores + mask)
    out = np.einsum("hqk,khd->qhd", probs, xv).reshape(seq, dim)
    x = x + out @ wo
    h = rms_norm(x, ffn_norm)
    return x + (silu(h @ w1) * (h @ w3)) @ w2


def llama_args(seq=8, dim=32, hidden=64, seed=0):
    rng = np.random.default_rng(seed)
    f = lambda *s: (rng.standard_normal(s) * 0.1).astype(np.float32)  # noqa: E731
    head_dim = dim // 4
    freqs = 1.0 / 10000 ** (np.arange(0, head_dim, 2) / head_dim)
    angles = np.outer(np.arange(seq), freqs)
    cos = np.concatenate([np.cos(angles)] * 2, axis=-1).astype(np.float32)
    sin = np.concatenate([np.sin(angles)] * 2, axis=-1).astype(np.float32)
    return [f(seq, dim), 1 + f(dim), f(dim, dim), f(dim, dim // 2), f(dim, dim // 2), f(dim, dim), 1 + f(dim),
            f(dim, hidden), f(hidden, dim), f(dim, hidden), cos, sin]


@pytest.mark.parametrize("target", ["reference"] + TARGETS)
@pytest.mark.parametrize("block, make_args", [pytest.param(gpt2_block, gpt2_args, id="gpt2"),
                                              pytest.param(llama_block, llama_args, id="llama")])
def test_block_equals_numpy(block, make_args, target):
    args = make_args()
    c = explorer.compile(block, *args, target=target, verbose=False)
    got, want = c(*args), block(*args)
    # GPT-2's `/ np.sqrt(q.shape[-1])` divides by a float64 scalar, so NumPy 2 returns float64 computed from
    # float32 work: compare at float32 accuracy whatever the result dtype
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=f"{block.__name__} on {target}")


def test_gpt2_forward_batches_each_blocks_heads():
    """The horizontal rule batches the per-head loop of both blocks, also when the position embedding is a
    prefix `wpe[range(seq)]` of a longer table (a lone slice of an input once hid every head slice from it)."""
    for n_ctx in (8, 16):
        c = explorer.compile(gpt2, *gpt2_forward_args(n_ctx=n_ctx), target="reference", stop_after="fused",
                             verbose=False)
        assert [hb.count for hb in c.stage("fused").ir.horizontal] == [4, 4], f"n_ctx={n_ctx}"


@pytest.mark.skipif(not _nvcc(), reason="nvcc not on PATH")
def test_gpt2_forward_cuda_compiles_with_nvcc():
    """The CUDA generated for the whole forward (the sim target runs that same code) builds with nvcc --ptx."""
    from explorer.backends import nvcc
    args = gpt2_forward_args()
    cg = explorer.compile(gpt2, *args, target="sim", verbose=False).codegen
    ptx = nvcc.check(cg.source(), arch="sm_80", mode="ptx")
    assert ptx.count(".entry ") == len(cg.kernels) > 0
