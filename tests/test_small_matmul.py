"""Small matmuls on the CPU take the row-streaming schedule (schedules/cpu._cpu_small_matmul): correctness
across shapes, dtypes, epilogues and batches, and which schedule each case took. Timing is in
benchmarks/transformer.py, never here."""
from __future__ import annotations

import numpy as np
import pytest

import explorer
from explorer.backends import cpu

HAVE_CC, WHY = cpu.available()
pytestmark = pytest.mark.skipif(not HAVE_CC, reason=f"no C compiler: {WHY}")
RNG = np.random.default_rng(11)


def arr(*shape, dtype=np.float32):
    return (RNG.standard_normal(shape) * 2).astype(dtype)


def notes(c) -> str:
    return " ".join(n for k in c.stage("tiled").ir.kernels for n in k.meta_dict()["notes"])


def gelu_linear(x, w, b):
    y = x @ w + b
    return 0.5 * y * (1 + np.tanh(0.7978845608 * (y + 0.044715 * y ** 3)))


CASES = [
    ("16x64@64x192", lambda x, w: x @ w, (arr(16, 64), arr(64, 192)), "one thread"),
    ("64x64@64x64", lambda x, w: x @ w, (arr(64, 64), arr(64, 64)), "one thread"),
    ("1x768@768x2304", lambda x, w: x @ w, (arr(1, 768), arr(768, 2304)), "column chunks"),
    ("16x16@16x16", lambda x, w: x @ w, (arr(16, 16), arr(16, 16)), "one thread"),
    ("odd 7x9@9x10", lambda x, w: x @ w, (arr(7, 9), arr(9, 10)), "one thread"),
    ("N tail 5x33@33x100", lambda x, w: x @ w, (arr(5, 33), arr(33, 100)), "one thread"),
    ("M=1 N=1", lambda x, w: x @ w, (arr(1, 40), arr(40, 1)), "one thread"),
    ("bias+gelu epilogue", gelu_linear, (arr(16, 64), arr(64, 96), arr(96)), "one thread"),
    ("batched", lambda x, w: x @ w, (arr(4, 16, 16), arr(4, 16, 24)), "one thread"),
    ("broadcast batch", lambda x, w: x @ w, (arr(3, 10, 12), arr(12, 20)), "one thread"),
    ("f64", lambda x, w: x @ w, (arr(16, 24, dtype=np.float64), arr(24, 40, dtype=np.float64)), "one thread"),
    ("i32", lambda x, w: x @ w, ((arr(12, 20) * 3).astype(np.int32), (arr(20, 36) * 3).astype(np.int32)),
     "one thread"),
    # 4 k steps per accumulator load/store (K % 4 == 0), up to 16 rows a pass: a 1-row tail, a tile
    # halved to fit L1 (f64, 16 x 200 x 8 B > 16 KB), K = 4 (no split), K = 12 with a ragged N
    ("M tail 17x8@8x40", lambda x, w: x @ w, (arr(17, 8), arr(8, 40)), "one thread"),
    ("f64 tile halved 16x16@16x200", lambda x, w: x @ w,
     (arr(16, 16, dtype=np.float64), arr(16, 200, dtype=np.float64)), "one thread"),
    ("K=4 3x4@4x20", lambda x, w: x @ w, (arr(3, 4), arr(4, 20)), "one thread"),
    ("K=12 20x12@12x77", lambda x, w: x @ w, (arr(20, 12), arr(12, 77)), "one thread"),
    # B read transposed: not contiguous along j, so the register-tiled path packs it instead
    ("x @ w.T", lambda x, w: x @ w.T, (arr(16, 64), arr(48, 64)), None),
    # over the size limit: the parallel register-tiled schedule
    ("128x128@128x128", lambda x, w: x @ w, (arr(128, 128), arr(128, 128)), None),
]


@pytest.mark.parametrize("name,fn,args,path", CASES, ids=[c[0] for c in CASES])
def test_small_matmul_matches_numpy(name, fn, args, path):
    c = explorer.compile(fn, *args, target="cpu", verbose=False)
    n = notes(c)
    if path is None:
        assert "small matmul" not in n, n
    else:
        assert "small matmul" in n and path in n, n
    want = fn(*args)
    got = c(*args)
    if np.issubdtype(want.dtype, np.integer):
        np.testing.assert_array_equal(got, want)
    else:
        tol = 1e-12 if want.dtype == np.float64 else 1e-4
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max())


def test_small_matmul_serial_has_no_openmp_team():
    x, w = arr(16, 64), arr(64, 192)
    c = explorer.compile(lambda x, w: x @ w, x, w, target="cpu", verbose=False)
    assert "omp parallel" not in c.kernels[0].source


def test_thread_tile_knob_keeps_the_register_tiled_schedule():
    x, w = arr(16, 64), arr(64, 192)
    c = explorer.compile(lambda x, w: x @ w, x, w, target="cpu", verbose=False, schedule={"thread_tile": (4, 16)})
    assert "small matmul" not in notes(c)
    np.testing.assert_allclose(c(x, w), x @ w, rtol=1e-4, atol=1e-3)


def test_nan_propagates():
    x, w = arr(8, 16), arr(16, 32)
    x[1, 2] = np.nan
    w[3, 5] = np.inf
    c = explorer.compile(lambda x, w: x @ w, x, w, target="cpu", verbose=False)
    np.testing.assert_allclose(c(x, w), x @ w, rtol=1e-4, atol=1e-3, equal_nan=True)


def test_sim_and_cuda_schedules_unchanged():
    """The row-streaming schedule is CPU only: the simulator's (CUDA) schedule still binds blocks/threads."""
    x, w = arr(16, 64), arr(64, 192)
    c = explorer.compile(lambda x, w: x @ w, x, w, target="sim", verbose=False)
    assert "small matmul" not in notes(c)
    np.testing.assert_allclose(c(x, w), x @ w, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_integer_power_epilogue_is_multiplied_out(dtype):
    """x ** 3 (gelu's tanh form) and x ** 2 become multiplies, so the epilogue vectorizes; inf/NaN/-0 as NumPy."""
    x, w = arr(16, 32, dtype=dtype), arr(32, 48, dtype=dtype)
    x[0, :3] = [np.inf, -np.inf, np.nan]

    def f(x, w):
        y = x @ w
        return y ** 3 + 0.5 * y ** 2

    c = explorer.compile(f, x, w, target="cpu", verbose=False)
    assert "pow" not in c.kernels[0].source.split("*/", 1)[-1].split("{", 1)[-1]
    np.testing.assert_allclose(c(x, w), f(x, w), rtol=1e-5, atol=1e-3, equal_nan=True)
    z = np.array([[-0.0, np.inf, -np.inf, np.nan, 3.0]], dtype)
    c2 = explorer.compile(lambda z: (z ** 2, z ** 3), z, target="cpu", verbose=False)
    for got, want in zip(c2(z), (z ** 2, z ** 3)):
        np.testing.assert_array_equal(got, want)
        assert np.array_equal(np.signbit(got), np.signbit(want))


def _parallel_pragmas_and_depth(source: str, name: str) -> list[int]:
    """For each `omp parallel` pragma of kernel `name`: how many for-loops enclose it."""
    body = source[source.index(f"void {name}("):].splitlines()
    depths, depth = [], 0
    for line in body:
        if "omp parallel" in line:
            depths.append(depth)
        depth += line.count("for (") if line.lstrip().startswith("for (") else 0
        depth -= line.count("}") if line.strip() == "}" and depth else 0
    return depths


# (shape, for-loops around the one parallel loop): B panels or batch items across threads sit outermost
# (one fork/join per call); with fewer than PARALLEL_PANELS panels the row tiles inside each panel
# split instead (8 regions for 8 panels, each ~4 M multiply-adds here)
@pytest.mark.parametrize("shape, depth", [((256, 512, 1536), 0), ((2, 128, 64, 256), 0), ((1024, 256, 128), 1)],
                         ids=["panels across threads", "batch across threads", "few panels: rows across threads"])
def test_large_matmul_parallel_loop_placement(shape, depth):
    *batch, m, k, n = shape
    x, w = arr(*batch, m, k), arr(*batch, k, n)
    c = explorer.compile(lambda x, w: x @ w, x, w, target="cpu", verbose=False)
    kern = c.kernels[0]
    assert _parallel_pragmas_and_depth(kern.source, kern.name) == [depth], kern.source
    want = x @ w
    np.testing.assert_allclose(c(x, w), want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
