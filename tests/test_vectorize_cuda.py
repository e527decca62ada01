"""The float4 rewrite as a loop-IR pass (passes/vectorize_cuda.py): the `vectorized` snapshot shows the float4
loads/stores the CUDA source contains, the simulator runs that snapshot and equals NumPy, and where float4 is
not legal the loop stays scalar with the reason in the snapshot."""
from __future__ import annotations

import re

import numpy as np
import pytest

import explorer
from explorer import loopir as L
from explorer.backends import nvcc, simulator
from explorer.codegen.cuda import generate_cuda
from explorer.errors import VerificationError
from explorer.passes.vectorize_cuda import vectorize_cuda

try:
    import cuda_programs as cp
except ImportError:
    from tests import cuda_programs as cp  # type: ignore

VEC = {"unroll": False}   # the CUDA elementwise schedule's 4-lane loop stays `vectorized`, not unrolled
rng = np.random.default_rng(0)
X = rng.standard_normal((64, 64)).astype(np.float32)
Y = rng.standard_normal((64, 64)).astype(np.float32)


def chain(x, y):
    return np.maximum(np.tanh(x) * 1.5 + y, x - y)


def blocks(prog: L.Program) -> list[L.Float4Block]:
    return [s for k in prog.kernels for s in L.walk(k.body) if isinstance(s, L.Float4Block)]


def float4_lines(text: str) -> tuple[list[str], list[str]]:
    """(registers loaded, buffers stored) by float4 accesses in a stage text."""
    loads = re.findall(r"^\s*(\w+) = float4 (\w+)", text, re.M)
    stores = re.findall(r"^\s*(\w+)(?:\.flat)?\[[^\n]*\.\.\+4\] = float4\(", text, re.M)
    return loads, stores


def test_snapshot_shows_the_float4_accesses_the_cuda_source_has():
    c = explorer.compile(chain, X, Y, target="cuda", schedule=VEC, verbose=False)
    assert c.stage_names.index("vectorized") == c.stage_names.index("tiled") + 1
    tiled, vec = c.stage("tiled").text(), c.stage("vectorized").text()
    assert "vectorized(4)" in tiled and "float4" not in tiled
    loads, stores = float4_lines(vec)
    assert sorted(b for _, b in loads) == ["x", "y"] and stores == ["out0"]
    assert "vectorized(4)" not in vec and "float4 n_v in [0, 4):" in vec
    assert c.stage("vectorized").stats["float4_blocks"] == len(blocks(c.stage("vectorized").ir)) == vec.count("float4 n_v")
    assert "float4_blocks" not in c.stage("tiled").stats
    src = c.kernels[0].source
    for reg, buf in loads:
        assert f"const float4 ke_{reg} = *reinterpret_cast<const float4*>({buf} + " in src
        assert f"{reg}[3]" in vec and f"ke_{reg}.w" in src
    assert src.count("reinterpret_cast<const float4*>") == len(loads)
    assert src.count("*reinterpret_cast<float4*>(out0 + ") == len(stores) == 1
    assert "make_float4(ke_st0_0_0, ke_st0_0_1, ke_st0_0_2, ke_st0_0_3)" in src
    # codegen prints the snapshot: the same program, and re-vectorizing it changes nothing
    assert c.codegen.program is c.stage("vectorized").ir
    assert vectorize_cuda(c.stage("vectorized").ir) is c.stage("vectorized").ir
    assert generate_cuda(c.stage("tiled").ir).source() == c.codegen.source()


def test_simulator_runs_the_vectorized_snapshot_and_equals_numpy():
    c = explorer.compile(chain, X, Y, target="sim", schedule=VEC, verbose=False)
    assert c.program is c.stage("vectorized").ir and len(blocks(c.program)) == 1
    np.testing.assert_allclose(c(X, Y), chain(X, Y), rtol=1e-6, atol=1e-6)
    # the float4 loads move each element of x and y once; the tiled loop IR (x and y read twice per
    # element by max(tanh(x) * 1.5 + y, x - y)) counted every scalar load
    ctr = c.executable().counters["total"]
    assert ctr["global_load_bytes"] == X.nbytes + Y.nbytes and ctr["global_store_bytes"] == X.nbytes
    _, tiled = simulator.run_program(c.stage("tiled").ir, [X, Y])
    assert tiled["total"]["global_load_bytes"] == 2 * (X.nbytes + Y.nbytes)
    assert tiled["total"]["flops"] == ctr["flops"]


def test_guarded_block_with_tail_runs_lane_by_lane():
    """cuda_programs.elementwise: the float4 block under a thread-dependent guard, a scalar tail after it."""
    prog = vectorize_cuda(cp.elementwise())
    assert len(blocks(prog)) == 1
    x, y = (rng.standard_normal(10001).astype(np.float32) for _ in range(2))
    (out,), ctr = simulator.run_program(prog, [x, y])
    np.testing.assert_allclose(out, cp.elementwise_ref(x, y), rtol=1e-6, atol=1e-6)
    assert ctr["total"]["global_store_bytes"] == out.nbytes


def test_local_stores_inside_the_block_run_per_lane():
    x, t, y = L.Buffer("x", (64,)), L.Buffer("t", (4,), "f32", "local"), L.Buffer("out0", (64,))
    tx, v = L.Var("tx"), L.Var("v")
    i = tx * 4 + v
    loop = L.For(v, 4, (L.Store(t, (v,), x[i] * 2.0), L.Store(y, (i,), t[v] + x[i])), kind="vectorized")
    k = L.Kernel("k", (x, y), (L.For(tx, 16, (L.Alloc(t), loop), kind="threadIdx.x"),), outputs=("out0",))
    prog = vectorize_cuda(L.Program("p", (k,), (x,), (y,)))
    text = prog.text()
    assert "t[2] = ld0_0[2] * 2.0f" in text and "st0_1[2] = t[2] + ld0_0[2]" in text
    src = generate_cuda(prog).kernels[0].source
    assert "t[2] = ke_ld0_0.z * 2.0f;" in src and "const float ke_st0_1_2 = t[2] + ke_ld0_0.z;" in src
    xs = rng.standard_normal(64).astype(np.float32)
    (out,), _ = simulator.run_program(prog, [xs])
    np.testing.assert_array_equal(out, xs * np.float32(2) + xs)


def _kernel(store_index, load, x, out, extra=()):
    tx, v = L.Var("tx"), L.Var("v")
    loop = L.For(v, 4, (L.Store(out, (store_index(tx, v),), load(tx, v)),), kind="vectorized")
    return L.Kernel("k", (x, *extra, out), (L.For(tx, 16, (loop,), kind="threadIdx.x"),), outputs=(out.name,))


@pytest.mark.parametrize("case", ["misaligned", "f64", "read_and_written"])
def test_illegal_loops_stay_scalar_with_the_reason(case):
    if case == "misaligned":   # stride 1, but the base tx * 2 of the load is not a multiple of 4
        x, out = L.Buffer("x", (64,)), L.Buffer("out0", (64,))
        k = _kernel(lambda t, v: t * 4 + v, lambda t, v: x[t * 2 + v], x, out)
        why, ins = "x's index tx * 2 is not provably a multiple of 4", [rng.standard_normal(64).astype(np.float32)]
    elif case == "f64":
        x, out = L.Buffer("x", (64,), "f64"), L.Buffer("out0", (64,), "f64")
        k = _kernel(lambda t, v: t * 4 + v, lambda t, v: x[t * 4 + v] * 2.0, x, out)
        why, ins = "out0 is f64 (float4 moves f32)", [rng.standard_normal(64)]
    else:                       # y = x + out0 read back: out0 both read and written
        x, out = L.Buffer("x", (64,)), L.Buffer("out0", (64,))
        k = _kernel(lambda t, v: t * 4 + v, lambda t, v: x[t * 4 + v] + out[t * 4 + v], x, out)
        why, ins = "out0 is both read and written", [rng.standard_normal(64).astype(np.float32)]
    prog = L.Program("p", (k,), k.inputs, k.output_buffers)
    vec = vectorize_cuda(prog)
    assert not blocks(vec) and "vectorized(4)" in vec.text()
    assert f"# why: float4: v stays a scalar vectorized loop: {why}" in vec.text()
    src = generate_cuda(vec).kernels[0].source
    assert "float4" not in src.replace("float4-able", "") and "not provably float4-able" in src
    if case != "read_and_written":   # (out0 starts as NaN poison in the simulator)
        (got,), _ = simulator.run_program(vec, ins)
        xs = ins[0]
        want = np.array([xs[2 * t + v] for t in range(16) for v in range(4)]) if case == "misaligned" else xs * 2.0
        np.testing.assert_array_equal(got, want)


def test_f64_program_keeps_its_scalar_loop_and_says_why():
    x, y = X.astype(np.float64), Y.astype(np.float64)
    c = explorer.compile(chain, x, y, target="sim", schedule=VEC, verbose=False)
    assert not blocks(c.program) and "is f64 (float4 moves f32)" in c.stage("vectorized").text()
    np.testing.assert_allclose(c(x, y), chain(x, y), rtol=1e-12)


def test_select_branch_loads_stay_scalar_so_concat_reads_in_bounds():
    a, b = (rng.standard_normal(1024).astype(np.float32) for _ in range(2))

    def cat(a, b):
        return np.concatenate([a, b]) * 2

    c = explorer.compile(cat, a, b, target="sim", schedule=VEC, verbose=False)
    (blk,) = blocks(c.program)
    assert blk.loads == () and [s.buffer.name for s in blk.stores] == ["out0"]
    # hoisted float4 loads would read a past its end and b before its start: the memcheck would say so
    np.testing.assert_array_equal(c(a, b), cat(a, b))
    src = explorer.compile(cat, a, b, target="cuda", schedule=VEC, verbose=False).kernels[0].source
    assert "reinterpret_cast<const float4*>" not in src and "*reinterpret_cast<float4*>(out0 + " in src


@pytest.mark.parametrize("base,error", [
    (lambda tx: tx * 2, r"float4 load of x at flat index tx \* 2 = 2 is not a multiple of 4 \(a misaligned"),
    (lambda tx: tx * 4 + 4, r"float4 load of x at flat index tx \* 4 \+ 4 = 64 does not leave 4 elements inside "
                            r"its 64 \(outside the buffer\) at block \(0, 0, 0\), thread \(15, 0, 0\)")])
def test_simulator_memchecks_float4_accesses(base, error):
    x, out = L.Buffer("x", (64,)), L.Buffer("out0", (64,))
    tx = L.Var("tx")
    ld, st = L.Buffer("ld0_0", (4,), "f32", "local"), L.Buffer("st0_0", (4,), "f32", "local")
    lanes = tuple(L.Store(st, (L.Const(k),), L.Load(ld, (L.Const(k),))) for k in range(4))
    blk = L.Float4Block(L.Var("v"), (L.Float4Load(ld, x, base(tx)),), lanes, (L.Float4Store(out, tx * 4, st),))
    k = L.Kernel("k", (x, out), (L.For(tx, 16, (blk,), kind="threadIdx.x"),), outputs=("out0",))
    with pytest.raises(VerificationError, match=error):
        simulator.run_program(L.Program("p", (k,), (x,), (out,)), [np.ones(64, np.float32)])


_NVCC, _WHY = nvcc.available()


@pytest.mark.skipif(not _NVCC, reason=_WHY)
def test_nvcc_accepts_the_vectorized_sources():
    a = rng.standard_normal(1024).astype(np.float32)
    for fn, args in ((chain, (X, Y)), (lambda a, b: np.concatenate([a, b]) * 2, (a, a))):
        c = explorer.compile(fn, *args, target="cuda", schedule=VEC, verbose=False)
        ptx = nvcc.check(c.codegen.source(), arch="sm_80", mode="ptx")
        assert "st.global.v4.f32" in ptx   # the float4 store survives to PTX
        if fn is chain:
            assert "ld.global.nc.v4.f32" in ptx
