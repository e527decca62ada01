"""The `vectorized` stage on cpu (passes/vectorize_cpu.py): the snapshot shows the micro-kernels and lane
accumulators the generated C contains, the simulator runs that snapshot and equals NumPy, and so does the C."""
from __future__ import annotations

import re

import numpy as np
import pytest

import explorer
from explorer import loopir as L
from explorer.backends import cpu
from explorer.backends import simulator as S
from explorer.passes.vectorize_cpu import vectorize_cpu

HAVE_CC, WHY = cpu.available()
needs_cc = pytest.mark.skipif(not HAVE_CC, reason=f"no C compiler: {WHY}")
RNG = np.random.default_rng(14)


@pytest.fixture(autouse=True)
def register_tiled(monkeypatch):
    """Small matmuls take the row-streaming schedule (schedules/cpu._cpu_small_matmul); these shapes are chosen
    small so the simulator is quick, so turn it off: they take the register-tiled path of large ones."""
    from explorer.schedules import cpu as cpu_schedules
    monkeypatch.setattr(cpu_schedules, "SMALL_MATMUL_MACS", 0)


def arr(*shape, dtype=np.float32):
    return (RNG.standard_normal(shape) * 2).astype(dtype)


def softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def mlp(x, w, b):
    return np.maximum(x @ w + b, 0)


# (name, fn, args, micro-kernels expected, lane accumulators expected)
CASES = [
    ("matmul f32", lambda x, w: x @ w, (arr(24, 16), arr(16, 32)), True, False),
    ("matmul f64", lambda x, w: x @ w, (arr(12, 9, dtype=np.float64), arr(9, 20, dtype=np.float64)), True, False),
    ("matmul odd sizes (guards)", lambda x, w: x @ w, (arr(37, 13), arr(13, 40)), True, False),
    ("matmul i32", lambda x, w: x @ w, (arr(10, 7, dtype=np.int32), arr(7, 16, dtype=np.int32)), True, False),
    ("essay mlp", mlp, (arr(29, 20), arr(20, 48), arr(48)), True, False),
    ("row sum", lambda x: x.sum(axis=-1), (arr(7, 64),), True, True),
    ("row max", lambda x: x.max(axis=-1), (arr(5, 48),), True, True),
    ("softmax", softmax, (arr(9, 128),), True, True),
    ("f64 row min", lambda x: x.min(axis=-1), (arr(4, 32, dtype=np.float64),), True, True),
]
IDS = [c[0] for c in CASES]


def check(got, want):
    if np.issubdtype(want.dtype, np.integer):
        np.testing.assert_array_equal(got, want)
    else:
        tol = {np.float32: 1e-5, np.float64: 1e-12}[want.dtype.type]
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol * max(1.0, float(np.abs(want).max())))


def micro_kernels(text: str) -> dict[str, int]:
    """{kernel: register vectors} per `microkernel` statement of a snapshot text."""
    out, kernel = {}, None
    for line in text.splitlines():
        if line.startswith("kernel "):
            kernel = line.split()[1].split("(")[0]
        m = re.match(r"\s*microkernel (mk\d+) \(register tiles (.*)\):$", line)
        if m:
            vectors = sum(len(t.split("[")[1].split("]")[0].split(",")) for t in m.group(2).split("; "))
            out[f"ke_{kernel}_{m.group(1)}"] = vectors
    return out


@pytest.mark.parametrize("name,fn,args,mk,lanes", CASES, ids=IDS)
def test_snapshot_shows_what_the_c_contains(name, fn, args, mk, lanes):
    c = explorer.compile(fn, *args, target="cpu", verbose=False)
    assert c.stage_names[-3:] == ["tiled", "vectorized", "codegen"]
    text, tiled, src = c.stage("vectorized").text(), c.stage("tiled").text(), c.codegen.source()
    assert "microkernel" not in tiled and not re.search(r"alloc \w+ lanes:", tiled)   # the rewrite is this stage's
    shown = micro_kernels(text)
    assert bool(shown) == mk, text
    # every micro-kernel of the snapshot is one helper function of the C, with one vector variable per tile vector
    helpers = re.findall(r"static __attribute__\(\(noinline\)\) void (ke_\w+)\(", src)
    assert sorted(helpers) == sorted(shown), (helpers, text)
    for helper, vectors in shown.items():
        fn_src = src[src.index(f"void {helper}("):]
        fn_src = fn_src[:fn_src.index("\n}\n")]
        assert len(re.findall(r"ke_v\d+[fdil] \w+_r\d+ = ke_load_", fn_src)) == vectors, fn_src
        assert f"{helper}(" in src[src.index("/* kernel "):]                           # and it is called
    # lane accumulators: `alloc acc lanes: f32[E] local` in the snapshot, `float acc_lanes[E]` in the C
    shown_lanes = sorted(re.findall(r"alloc (\w+) lanes: \w+\[(\d+)\] local", text))
    c_lanes = sorted(re.findall(r"(?:float|double|int32_t|int64_t) (\w+)_lanes\[(\d+)\]", src))
    assert bool(shown_lanes) == lanes and shown_lanes == c_lanes, (shown_lanes, c_lanes)
    # the stage's stats count what it made; the tiled stage's stats have no such keys
    stats = c.stage("vectorized").stats
    assert (stats.get("micro_kernels", 0), stats.get("lane_accumulators", 0)) == (len(shown), len(shown_lanes))
    assert not {"micro_kernels", "lane_accumulators", "float4_blocks"} & set(c.stage("tiled").stats)


@pytest.mark.parametrize("name,fn,args,mk,lanes", CASES, ids=IDS)
def test_simulator_runs_the_vectorized_snapshot(name, fn, args, mk, lanes):
    c = explorer.compile(fn, *args, target="cpu", verbose=False)
    prog = c.stage("vectorized").ir
    assert any(isinstance(s, L.MicroKernel) for k in prog.kernels for s in L.walk(k.body)) == mk
    outs, _ = S.run_program(prog, list(args))
    check(outs[0], fn(*args))


@needs_cc
@pytest.mark.parametrize("name,fn,args,mk,lanes", CASES, ids=IDS)
def test_c_of_the_vectorized_snapshot_equals_numpy(name, fn, args, mk, lanes):
    c = explorer.compile(fn, *args, target="cpu", verbose=False)
    assert c.codegen.program is c.stage("vectorized").ir    # the C is printed from this snapshot
    check(c(*args), fn(*args))


def test_other_targets_keep_the_tiled_program():
    x, w = arr(24, 16), arr(16, 32)
    c = explorer.compile(lambda x, w: x @ w, x, w, target="sim", verbose=False)
    assert c.stage("vectorized").ir is c.stage("tiled").ir


def test_guards_are_hoisted_and_shown():
    """Rows past the end of the matrix: the micro-kernel tests each row's guard once per call."""
    x, w = arr(37, 13), arr(13, 40)
    c = explorer.compile(lambda x, w: x @ w, x, w, target="cpu", verbose=False)
    mks = [s for k in c.stage("vectorized").ir.kernels for s in L.walk(k.body) if isinstance(s, L.MicroKernel)]
    assert mks and all(mk.guards for mk in mks)
    assert "# guards tested once per call: " in c.stage("vectorized").text()
    assert "const bool ke_g0 = " in c.codegen.source()


def hand_region(vec_body=None, n=16, dtype="f32"):
    """for k: for r in unrolled(2): for v in vectorized(n): t[r, v] = t[r, v] + x[k, v] * 2."""
    x, t, y = L.Buffer("x", (4, n), dtype), L.Buffer("t", (2, n), dtype, "local"), L.Buffer("y", (2, n), dtype)
    k, r, v = L.Var("k"), L.Var("r"), L.Var("v")
    upd = vec_body or (L.Store(t, (r, v), t[r, v] + x[k, v] * L.Const(2, dtype)),)
    body = (L.Alloc(t),
            L.For(r, 2, (L.For(v, n, (L.Store(t, (r, v), L.Const(0, dtype)),), "vectorized"),), "unrolled"),
            L.For(k, 4, (L.For(r, 2, (L.For(v, n, upd, "vectorized"),), "unrolled"),)),
            L.For(r, 2, (L.For(v, n, (L.Store(y, (r, v), t[r, v]),), "vectorized"),), "unrolled"))
    return L.Program("p", (L.Kernel("hand", (x, y), body, outputs=("y",)),), (x,), (y,)), (x, t, y, k, r, v)


def test_micro_kernel_unrolls_into_vector_statements():
    prog, (x, t, y, k, r, v) = hand_region()
    mk = vectorize_cpu(prog).kernels[0].body[2]
    assert isinstance(mk, L.MicroKernel) and mk.name == "mk0"
    assert mk.tiles == (L.RegisterTile(t, (0, 8, 16, 24), 8),)
    assert mk.loop.var == k and len(mk.loop.body) == 4                  # 2 rows x 2 vectors of 8 lanes
    assert all(isinstance(s, L.For) and s.kind == "vectorized" and s.extent == 8 for s in mk.loop.body)
    assert str(mk).splitlines()[0] == "microkernel mk0 (register tiles t[0, 8, 16, 24] as f32x8):"
    xv = arr(4, 16)
    want = np.tile(2 * xv.sum(axis=0), (2, 1))
    for p in (prog, vectorize_cpu(prog)):
        check(S.run_program(p, [xv])[0][0], want)
    # the loop tree of the dot picture shows the micro-kernel with its loop
    assert "microkernel mk0" in vectorize_cpu(prog).dot()


@pytest.mark.parametrize("why,variant", [
    ("a math call has no vector form", "call"),
    ("lanes not a multiple of the vector", "odd"),
    ("f16 has no vector registers here", "f16"),
])
def test_regions_that_stay_loops(why, variant):
    if variant == "call":
        _, (x, t, y, k, r, v) = hand_region()
        prog, _ = hand_region((L.Store(t, (r, v), t[r, v] + L.call("exp", x[k, v])),))
    else:
        prog, _ = hand_region(n=12) if variant == "odd" else hand_region(dtype="f16")
    out = vectorize_cpu(prog)
    assert not any(isinstance(s, L.MicroKernel) for s in L.walk(out.kernels[0].body)), why


@pytest.mark.parametrize("dtype,lanes", [("f32", 16), ("f64", 8)])
def test_kernel_asking_for_64_byte_vectors(dtype, lanes):
    """A kernel whose schedule sets meta vector_bytes=64 (the attention kernel on AVX-512 hosts) gets zmm-wide
    register vectors: the snapshot says so, the simulator runs it, and the C (ke_v16f / ke_v8d) equals NumPy."""
    prog, (x, t, y, k, r, v) = hand_region(n=32, dtype=dtype)
    wide = L.Program("p", (prog.kernels[0].replace(meta=(("vector_bytes", 64),)),), prog.inputs, prog.outputs)
    mk = vectorize_cpu(wide).kernels[0].body[2]
    assert isinstance(mk, L.MicroKernel)
    assert mk.tiles == (L.RegisterTile(t, (0, lanes, 2 * lanes, 3 * lanes, 4 * lanes, 5 * lanes, 6 * lanes,
                                          7 * lanes)[:64 // lanes], lanes),)
    assert all(s.extent == lanes for s in mk.loop.body)
    xv = arr(4, 32, dtype={"f32": np.float32, "f64": np.float64}[dtype])
    want = np.tile(2 * xv.sum(axis=0), (2, 1))
    check(S.run_program(vectorize_cpu(wide), [xv])[0][0], want)
    from explorer.codegen.c import generate_c
    cg = generate_c(vectorize_cpu(wide))
    suffix = {"f32": "v16f", "f64": "v8d"}[dtype]
    assert f"ke_{suffix} t_r0 = ke_load_{suffix}(&t[0]);" in cg.kernels[0].source, cg.kernels[0].source
    assert "ke_v16f" not in generate_c(vectorize_cpu(prog)).prelude      # 32-byte kernels keep the old prelude
    if HAVE_CC:
        check(cpu.build_codegen(cg).run([xv])[0], want)
