"""Attention fusion (issue 16): softmax(q @ kᵀ · scale [+ mask]) @ v is ONE kernel with the online softmax.

Differential: sim and cpu against NumPy for several batch/head/seq/dim shapes (seq not a multiple of the
tile), with and without an additive mask; the generated CUDA compiles with nvcc for sm_80 and sm_90; the
simulator shows that no S×S buffer reaches global memory.
"""
from __future__ import annotations

import numpy as np
import pytest

import explorer
from explorer import loopir as L
from explorer.backends import cpu as cpu_backend, nvcc

_CPU_OK, _CPU_WHY = cpu_backend.available()
_NVCC_OK, _NVCC_WHY = nvcc.available()


def attention(q, k, v):
    s = q @ k.transpose(*range(k.ndim - 2), k.ndim - 1, k.ndim - 2) * np.float32(1.0 / np.sqrt(q.shape[-1]))
    p = np.exp(s - s.max(-1, keepdims=True))
    return (p / p.sum(-1, keepdims=True)) @ v


def masked_attention(q, k, v, mask):
    s = q @ k.transpose(*range(k.ndim - 2), k.ndim - 1, k.ndim - 2) * np.float32(0.5) + mask
    p = np.exp(s - s.max(-1, keepdims=True))
    return (p / p.sum(-1, keepdims=True)) @ v


def nn_attention(q, k, v):
    return explorer.nn.softmax((q @ k.T) / np.float32(8.0), axis=-1) @ v


def _qkv(rng, *shape, sk=None, dv=None):
    *b, s, d = shape
    q = rng.standard_normal((*b, s, d)).astype(np.float32)
    k = rng.standard_normal((*b, sk or s, d)).astype(np.float32)
    v = rng.standard_normal((*b, sk or s, dv or d)).astype(np.float32)
    return q, k, v


def _causal(s: int) -> np.ndarray:
    return np.triu(np.full((s, s), -np.inf, np.float32), 1)


SHAPES = [(1, 1, 40, 16), (2, 3, 33, 8), (1, 2, 70, 32), (3, 17, 4)]
TARGETS = ["sim"] + (["cpu"] if _CPU_OK else [])


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_attention_is_one_kernel_and_equals_numpy(target, shape, rng):
    q, k, v = _qkv(rng, *shape)
    c = explorer.compile(attention, q, k, v, target=target)
    assert [kk.name for kk in c.kernels] == ["flash_attention"]
    np.testing.assert_allclose(c(q, k, v), attention(q, k, v), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("target", TARGETS)
def test_masked_attention_with_other_lengths(target, rng):
    """Causal mask as an input (with -inf), q and k of different lengths, dv != d."""
    q, k, v = _qkv(rng, 2, 2, 37, 8, sk=37, dv=12)
    mask = _causal(37)
    c = explorer.compile(masked_attention, q, k, v, mask, target=target)
    assert len(c.kernels) == 1
    np.testing.assert_allclose(c(q, k, v, mask), masked_attention(q, k, v, mask), rtol=1e-4, atol=1e-5)
    q2, k2, v2 = _qkv(rng, 2, 20, 8, sk=45, dv=4)
    m2 = rng.standard_normal((20, 45)).astype(np.float32)
    c2 = explorer.compile(masked_attention, q2, k2, v2, m2, target=target)
    assert len(c2.kernels) == 1
    np.testing.assert_allclose(c2(q2, k2, v2, m2), masked_attention(q2, k2, v2, m2), rtol=1e-4, atol=1e-5)


def test_nn_softmax_form_and_explanations(rng):
    q, k, v = _qkv(rng, 48, 64)
    c = explorer.compile(nn_attention, q, k, v, target="sim")
    assert len(c.kernels) == 1
    np.testing.assert_allclose(c(q, k, v), nn_attention(q, k, v), rtol=1e-4, atol=1e-5)
    fused = c.stage("fused").text()
    assert "attention: scores stay on chip" in fused and "[attention]" in fused
    tiled = c.stage("tiled").text()
    for piece in ("m_run", "l_run", "alpha[] = exp(", "acc_o[e] * alpha[]", "barrier()", "k_tile", "v_tile"):
        assert piece in tiled, piece


def test_knob_turns_attention_fusion_off(rng):
    q, k, v = _qkv(rng, 2, 24, 8)
    on = explorer.compile(attention, q, k, v, target="sim")
    off = explorer.compile(attention, q, k, v, target="sim", fuse={"attention": False})
    assert len(on.kernels) == 1 and len(off.kernels) == 3
    assert [g.kind for g in off.stage("fused").ir.groups] == ["contraction", "reduce", "contraction"]
    np.testing.assert_allclose(off(q, k, v), on(q, k, v), rtol=1e-4, atol=1e-5)


def test_not_attention_when_scores_are_needed_elsewhere(rng):
    """The probabilities are also returned: they must reach memory, so no attention kernel."""
    def both(q, k, v):
        s = q @ k.T
        p = np.exp(s - s.max(-1, keepdims=True))
        p = p / p.sum(-1, keepdims=True)
        return p @ v, p
    q, k, v = _qkv(rng, 16, 8)
    c = explorer.compile(both, q, k, v, target="sim")
    assert "flash_attention" not in [kk.name for kk in c.kernels]
    for got, want in zip(c(q, k, v), both(q, k, v)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mask", [False, True])
def test_simulated_global_bytes_stay_below_one_quarter_score_matrix(mask, rng):
    """inputs + output + S×S/4 elements: the fused kernel never writes (or reads) the S×S scores.

    The mask is per head here: a mask broadcast over heads is read once per head (it is an input)."""
    S, D = 128, 32
    q, k, v = _qkv(rng, 1, 2, S, D)
    args = (q, k, v) + ((np.ascontiguousarray(np.broadcast_to(_causal(S), (2, S, S))),) if mask else ())
    fn = masked_attention if mask else attention
    c = explorer.compile(fn, *args, target="sim")
    ex = c.executable()
    np.testing.assert_allclose(ex.run(list(args))[0], fn(*args), rtol=1e-4, atol=1e-5)
    total = ex.counters["total"]
    moved = total["global_load_bytes"] + total["global_store_bytes"]
    bound = sum(a.nbytes for a in args) + q.nbytes + (S * S // 4) * q.itemsize
    assert moved < bound, (moved, bound)
    unfused = explorer.compile(fn, *args, target="sim", fuse={"attention": False}).executable()
    unfused.run(list(args))
    assert unfused.counters["total"]["global_load_bytes"] + unfused.counters["total"]["global_store_bytes"] > bound


@pytest.mark.skipif(not _NVCC_OK, reason=_NVCC_WHY)
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_attention_cuda_compiles(arch, rng):
    q, k, v = _qkv(rng, 2, 4, 70, 64)
    for fn, args in ((attention, (q, k, v)), (masked_attention, (q, k, v, _causal(70)))):
        c = explorer.compile(fn, *args, target="cuda")
        assert [kk.name for kk in c.kernels] == ["flash_attention"]
        ptx = nvcc.check(c.stage("codegen").ir.source(), arch=arch, mode="ptx")
        assert ".entry flash_attention(" in ptx


def causal_triu(q, k, v):
    S = q.shape[-2]
    s = q @ k.transpose(0, 2, 1) * np.float32(0.25) + np.triu(np.full((S, S), -np.inf, dtype=np.float32), 1)
    p = np.exp(s - s.max(-1, keepdims=True))
    return (p / p.sum(-1, keepdims=True)) @ v


def causal_tri(q, k, v):
    s = np.where(np.tri(q.shape[-2], dtype=bool), q @ k.T * np.float32(0.25), -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    return (p / p.sum(-1, keepdims=True)) @ v


@pytest.mark.parametrize("target", TARGETS)
def test_causal_mask_built_inside_the_function(target, rng):
    q, k, v = _qkv(rng, 2, 37, 16)
    for fn, args in ((causal_triu, (q, k, v)), (causal_tri, (q[0], k[0], v[0]))):
        c = explorer.compile(fn, *args, target=target)
        assert [kk.name for kk in c.kernels] == ["flash_attention"], fn.__name__
        np.testing.assert_allclose(c(*args), fn(*args), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("tile", [(8, 16), (5, 7), (64, 128)])
def test_attention_tile_knob(target, tile, rng):
    q, k, v = _qkv(rng, 2, 37, 16)
    c = explorer.compile(causal_triu, q, k, v, target=target, schedule={"attention_tile": tile})
    np.testing.assert_allclose(c(q, k, v), causal_triu(q, k, v), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("tile, words", [((2048, 32), "1024"), ((64, 4096), "48 KiB"), ((0, 8), "positive"),
                                         ((8,), "(BQ, BK)")])
def test_bad_attention_tile_is_a_schedule_error(tile, words, rng):
    q, k, v = _qkv(rng, 2, 200, 64)
    with pytest.raises(explorer.ScheduleError, match=words.replace("(", r"\(").replace(")", r"\)")):
        explorer.compile(attention, q, k, v, target="sim", schedule={"attention_tile": tile})


def plain_2d(q, k, v):
    s = q @ k.T * 0.5
    p = np.exp(s - s.max(-1, keepdims=True))
    return (p / p.sum(-1, keepdims=True)) @ v


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("dtype, tol", [(np.float16, 4e-3), (np.float64, 1e-12)])
def test_attention_other_dtypes(target, dtype, tol, rng):
    """f16 storage accumulates in f32 (one rounding at the end, NumPy rounds every op); f64 stays f64."""
    q, k, v = (x.astype(dtype) for x in _qkv(rng, 40, 16))
    c = explorer.compile(plain_2d, q, k, v, target=target)
    assert [kk.name for kk in c.kernels] == ["flash_attention"]
    got = c(q, k, v)
    assert got.dtype == plain_2d(q, k, v).dtype
    np.testing.assert_allclose(got.astype(np.float64), plain_2d(q, k, v).astype(np.float64), rtol=tol, atol=tol)


@pytest.mark.parametrize("target", TARGETS)
def test_attention_with_shared_keys_broadcast_over_queries_batch(target, rng):
    q = rng.standard_normal((3, 40, 16)).astype(np.float32)
    k, v = _qkv(rng, 40, 16)[1:]
    c = explorer.compile(plain_2d, q, k, v, target=target)
    assert len(c.kernels) == 1
    np.testing.assert_allclose(c(q, k, v), plain_2d(q, k, v), rtol=1e-4, atol=1e-5)


def sliced_heads(x, w):
    """q, k, v as column slices of one projection (as after horizontal batching): slices fold into the loads."""
    qkv = x @ w
    q, k, v = qkv[:, :8], qkv[:, 8:16], qkv[:, 16:]
    s = q @ k.T * np.float32(0.25)
    p = np.exp(s - s.max(-1, keepdims=True))
    return (p / p.sum(-1, keepdims=True)) @ v


@pytest.mark.parametrize("target", TARGETS)
def test_sliced_qkv_fold_into_the_attention_kernel(target, rng):
    x, w = rng.standard_normal((21, 12)).astype(np.float32), rng.standard_normal((12, 24)).astype(np.float32)
    c = explorer.compile(sliced_heads, x, w, target=target)
    assert [g.kind for g in c.stage("fused").ir.groups] == ["contraction", "attention"]
    np.testing.assert_allclose(c(x, w), sliced_heads(x, w), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("tile", [(16, 32), (32, 64), (64, 64), None])
def test_model_bytes_count_kv_rereads_like_the_simulator(tile, rng):
    """predict_schedule: K and V are read once per block of BQ query rows — the simulator's exact count."""
    from explorer import costmodel
    q, k, v = _qkv(rng, 128, 16)
    c = explorer.compile(plain_2d, q, k, v, target="sim", schedule={"attention_tile": tile} if tile else None)
    ex = c.executable()
    ex.run([q, k, v])
    total = ex.counters["total"]
    assert costmodel.predict_schedule(c, "sim")[1] == total["global_load_bytes"] + total["global_store_bytes"]


def test_autotune_attention_tile_on_sim(rng):
    """attention_tile is tunable; on sim the fewest-bytes tile wins and the model ranks like the counters."""
    q, k, v = _qkv(rng, 128, 16)
    tiles = [(16, 32), (32, 32), (64, 64), (128, 64)]   # the default is (128, 32)
    r = explorer.autotune(plain_2d, q, k, v, target="sim", space={"attention_tile": tiles}, budget=30,
                          top_k=len(tiles), progress=False, cache=False)
    measured = {tuple(c.schedule.get("attention_tile", ())): c.global_bytes for c in r.measured()}
    assert r.score(r.best_candidate) == min(measured.values())
    assert measured[(16, 32)] > measured[(64, 64)] > measured[(128, 64)]
    assert r.spearman() > 0.9
    np.testing.assert_allclose(explorer.compile(plain_2d, q, k, v, target="sim", schedule=r.best)(q, k, v),
                               plain_2d(q, k, v), rtol=1e-4, atol=1e-5)


def self_scaled_logits(q, k, v):
    s = q @ k.T
    s = s + s * np.float32(0.5)   # elementwise on the scores: two roundings, as in NumPy
    p = np.exp(s - s.max(-1, keepdims=True))
    return (p / p.sum(-1, keepdims=True)) @ v


def test_inner_products_accumulate_with_fma_and_logits_do_not(rng):
    """q·k and p·v are matmul accumulations (NumPy runs them through BLAS, one rounding per step): both code
    generators emit them as fused multiply-adds; the logit arithmetic keeps separate roundings."""
    q, k, v = _qkv(rng, 64, 16)   # keys a multiple of the tile: the logit store is not under a key-tail select
    for fn in (attention, self_scaled_logits):
        cuda = explorer.compile(fn, q, k, v, target="cuda").kernels[0].source
        body = cuda[cuda.index("flash_attention("):]
        assert body.count("fmaf(") == 2, (fn.__name__, body)
        if _CPU_OK:
            c = explorer.compile(fn, q, k, v, target="cpu")
            assert "ke_fma" in c.kernels[0].source
            np.testing.assert_allclose(c(q, k, v), fn(q, k, v), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("avx512", [True, False], ids=["64-byte", "32-byte"])
@pytest.mark.parametrize("shape,dtype", [((2, 3, 64, 16), np.float32), ((1, 2, 70, 32), np.float32),
                                         ((2, 64, 16), np.float64)], ids=["64x16", "70x32 tails", "f64"])
def test_cpu_vector_width_follows_the_host(avx512, shape, dtype, monkeypatch, rng):
    """The cpu kernel (scores transposed, softmax vectorized over query rows) at both vector widths.

    With AVX-512 its register tiles are 64-byte vectors (a schedule step and the kernel's
    vector_bytes say so; the C holds ke_v16f / ke_v8d), else 32-byte ones; both equal NumPy (the C compiles
    either way: gcc splits wide vectors on narrower ISAs)."""
    from explorer.passes import attention as A
    monkeypatch.setattr(A, "_avx512", lambda: avx512)
    q, k, v = (x.astype(dtype) for x in _qkv(rng, *shape))
    c = explorer.compile(attention, q, k, v, target="cpu")
    kern = c.stage("vectorized").ir.kernels[0]
    steps = "; ".join(c.stage("tiled").ir.kernels[0].schedule)
    assert ("vector width 64 bytes" in steps) == avx512, steps
    lanes = {t.lanes for s in L.walk(kern.body) if isinstance(s, L.MicroKernel) for t in s.tiles}
    want_lanes = (64 if avx512 else 32) // np.dtype(dtype).itemsize
    assert lanes == {want_lanes}, lanes
    tol = 1e-4 if dtype == np.float32 else 1e-10
    if _CPU_OK:
        np.testing.assert_allclose(c(q, k, v), attention(q, k, v), rtol=tol, atol=tol)


@pytest.mark.parametrize("avx512", [True, False], ids=["64-byte", "32-byte"])
def test_simulator_runs_the_cpu_loop_nests(avx512, monkeypatch, rng):
    """The cpu loop IR itself (what the C prints) equals NumPy: the simulator runs the vectorized snapshot (micro-
    kernels and the staged mask tile included) and the lowered stage's naive nest; 16x16 tiles over 40 keys and
    rows leave tails."""
    from explorer.backends import simulator as S
    from explorer.passes import attention as A
    monkeypatch.setattr(A, "_avx512", lambda: avx512)
    q, k, v = _qkv(rng, 1, 40, 16)
    for fn, args in ((attention, (q, k, v)), (masked_attention, (q, k, v, _causal(40)))):
        c = explorer.compile(fn, *args, target="cpu", schedule={"attention_tile": (16, 16)})
        vec = c.stage("vectorized").ir
        assert sum(isinstance(s, L.MicroKernel) for s in L.walk(vec.kernels[0].body)) == 3   # q·k, max, p·v
        # a mask read along (row, key) is staged per key tile in the transposed layout, visibly
        staged = "cache_read(mask, local, at=j_o, transposed)" in c.stage("tiled").ir.kernels[0].schedule
        assert staged == (fn is masked_attention)
        for prog in (vec, c.stage("lowered").ir.loops):
            np.testing.assert_allclose(S.run_program(prog, list(args))[0][0], fn(*args), rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- large head dims on the gpu (D = 128)
@pytest.mark.parametrize("d, g", [(64, 1), (96, 2), (128, 2), (256, 4)])
@pytest.mark.parametrize("mask", [False, True])
def test_large_head_dims_on_sim_split_rows_over_threads(d, g, mask, rng):
    """D > 64: G threads per query row (each keeps D/G columns of q and acc_o); seq 37 is not a multiple of the
    tile. The simulator runs that loop IR (the warp-shuffle sum is a ThreadAllReduce) and equals NumPy. At
    D=256 the default key tile shrinks so K and V stay within 48 KiB of shared memory."""
    q, k, v = _qkv(rng, 2, 2, 37, d)
    fn, args = (masked_attention, (q, k, v, _causal(37))) if mask else (attention, (q, k, v))
    c = explorer.compile(fn, *args, target="sim")
    assert [kk.name for kk in c.kernels] == ["flash_attention"]
    steps = "; ".join(c.stage("tiled").ir.kernels[0].schedule)
    if d == 64:   # unchanged: one thread per row
        assert "one query row per thread" in steps and "threadIdx.y" not in steps, steps
    else:
        assert f"one query row per {g} threads" in steps and "allreduce(q_k, threadIdx.x)" in steps, steps
        tiled = c.stage("tiled").text()
        assert "for t in threadIdx.y(" in tiled and f"for g in threadIdx.x({g})" in tiled, tiled
        # the mask is read by one thread of the row and shared (max over the row's threads), not read twice
        assert ("mask of row" in tiled) == mask and ("allreduce_max(mask of row[]" in tiled) == mask, tiled
    assert c.kernels[0].launch["shared_bytes"] <= 48 * 1024
    np.testing.assert_allclose(c(*args), fn(*args), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mask", [False, True])
def test_global_bytes_at_head_dim_128(mask, rng):
    """The split rows read K and V once per block of 128 rows and the mask once per row (one thread of the row
    reads it): at S=128 still below inputs + output + S×S/4."""
    S, D = 128, 128
    q, k, v = _qkv(rng, 1, 2, S, D)
    args = (q, k, v) + ((np.ascontiguousarray(np.broadcast_to(_causal(S), (2, S, S))),) if mask else ())
    fn = masked_attention if mask else attention
    ex = explorer.compile(fn, *args, target="sim").executable()
    np.testing.assert_allclose(ex.run(list(args))[0], fn(*args), rtol=1e-4, atol=1e-5)
    total = ex.counters["total"]
    moved = total["global_load_bytes"] + total["global_store_bytes"]
    assert moved < sum(a.nbytes for a in args) + q.nbytes + (S * S // 4) * q.itemsize, moved


def test_large_head_dim_tile_knob_counts_threads_per_row(rng):
    q, k, v = _qkv(rng, 2, 40, 128)
    with pytest.raises(explorer.ScheduleError, match=r"2048 threads per block \(2 per query row\).*BQ <= 512"):
        explorer.compile(attention, q, k, v, target="sim", schedule={"attention_tile": (1024, 32)})


_EMU_OK = False
try:
    try:
        import cuda_emu  # type: ignore
    except ImportError:
        from tests import cuda_emu  # type: ignore
    _EMU_OK, _EMU_WHY = cuda_emu.available()
except ImportError as exc:   # pragma: no cover
    _EMU_WHY = str(exc)


@pytest.mark.skipif(not _EMU_OK, reason="g++ is needed to emulate CUDA on the CPU")
@pytest.mark.parametrize("d, tile", [(128, None), (128, (5, 7)), (96, (3, 8))])
def test_split_row_cuda_runs_emulated(d, tile, rng):
    """The printed CUDA itself (ke_row_allreduce: warp shuffles with the live-lane mask; (5, 7) and (3, 8) leave one partial warp
    of 10 and 6 threads) run by tests/cuda_emu.py, one OS thread per CUDA thread, equals NumPy."""
    q, k, v = _qkv(rng, 1, 2, 37, d)
    for fn, args in ((attention, (q, k, v)), (masked_attention, (q, k, v, _causal(37)))):
        c = explorer.compile(fn, *args, target="sim", schedule={"attention_tile": tile} if tile else None)
        src = c.codegen.source()
        assert "ke_row_allreduce<2," in src and "ke_red_" not in src   # shuffles only, no shared scratch
        got, = cuda_emu.run(c.codegen, c.check_args(args))
        np.testing.assert_allclose(got, fn(*args), rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not _NVCC_OK, reason=_NVCC_WHY)
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("d, masked", [(64, False), (128, False), (128, True)])
def test_attention_cuda_does_not_spill(arch, d, masked, rng):
    """ptxas: no spill stores/loads and no local-memory stack frame at D=64 and D=128 (one thread per row at
    D=128 used 255 registers and 296 (sm_80) / 340 (sm_90) bytes of spill stores)."""
    q, k, v = _qkv(rng, 1, 8, 1024, d)
    fn, args = (masked_attention, (q, k, v, _causal(1024))) if masked else (attention, (q, k, v))
    c = explorer.compile(fn, *args, target="cuda")
    r = nvcc.resource_report(c.stage("codegen").ir.source(), arch=arch)["flash_attention"]
    assert (r["spill_stores"], r["spill_loads"], r["stack_bytes"]) == (0, 0, 0), r


@pytest.mark.parametrize("d, dv", [(128, 64), (64, 128)])
def test_split_rows_with_other_value_dims(d, dv, rng):
    """G follows the wider of D and Dv (2 threads per row here); q and k of different lengths."""
    q, k, v = _qkv(rng, 2, 33, d, sk=45, dv=dv)
    c = explorer.compile(attention, q, k, v, target="sim")
    assert c.kernels[0].launch["block"] == (2, 64, 1)
    np.testing.assert_allclose(c(q, k, v), attention(q, k, v), rtol=1e-4, atol=1e-5)
