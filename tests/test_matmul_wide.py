"""The large-matmul register tile in 64-byte vectors (schedules/cpu._wide_matmul_tile): on hosts whose widest
vector is 64 bytes (AVX-512) f32/f64 matmuls take a 6x4- or 12x2-vector tile of zmm accumulators, elsewhere the
32-byte tile. Both widths run here whatever the host has (a 64-byte vector is split in halves without AVX-512):
the C and the simulator (on the vectorized snapshot) equal NumPy, and the tile is the one the schedule promises."""
from __future__ import annotations

import numpy as np
import pytest

import explorer
from explorer import loopir as L
from explorer.backends import cpu
from explorer.backends import simulator as S
from explorer.schedules import cpu as cpu_schedules
from test_vectorize_cpu import check, mlp  # noqa: E402  (tests/ is on sys.path, as test_numpy_surface uses)

HAVE_CC, WHY = cpu.available()
needs_cc = pytest.mark.skipif(not HAVE_CC, reason=f"no C compiler: {WHY}")
RNG = np.random.default_rng(12)


@pytest.fixture(params=[32, 64], ids=["32-byte", "64-byte"])
def vector_bytes(request, monkeypatch):
    monkeypatch.setattr(cpu_schedules, "native_vector_bytes", lambda: request.param)
    # small shapes keep the simulator quick: take the register-tiled path of large matmuls, not row streaming
    monkeypatch.setattr(cpu_schedules, "SMALL_MATMUL_MACS", 0)
    return request.param


def arr(*shape, dtype=np.float32):
    return (RNG.standard_normal(shape) * 2).astype(dtype)


def mm(x, w):
    return x @ w


# (name, fn, args, wide tile (rows, columns) with 64-byte vectors or None: the 32-byte tile stays)
CASES = [
    ("f32 6x64", mm, (arr(24, 16), arr(16, 64)), (6, 64)),
    ("f32 odd rows (row guards)", mm, (arr(37, 13), arr(13, 128)), (6, 64)),
    ("f32 12x32 (N % 64 != 0)", mm, (arr(25, 7), arr(7, 96)), (12, 32)),
    ("f32 N=48 (no wide tile divides)", mm, (arr(13, 9), arr(9, 48)), None),
    ("f32 odd N (column guards)", mm, (arr(37, 13), arr(13, 40)), None),
    ("f64 6x32", mm, (arr(13, 9, dtype=np.float64), arr(9, 32, dtype=np.float64)), (6, 32)),
    ("f64 12x16", mm, (arr(14, 5, dtype=np.float64), arr(5, 48, dtype=np.float64)), (12, 16)),
    ("i32 keeps 32-byte", mm, (arr(10, 7, dtype=np.int32), arr(7, 64, dtype=np.int32)), None),
    ("batched", mm, (arr(3, 10, 8), arr(3, 8, 64)), (6, 64)),
    ("essay mlp", mlp, (arr(29, 20), arr(20, 64), arr(64)), (6, 64)),
]
IDS = [c[0] for c in CASES]


def _micro_kernels(c) -> list[L.MicroKernel]:
    return [s for k in c.stage("vectorized").ir.kernels for s in L.walk(k.body) if isinstance(s, L.MicroKernel)]


@pytest.mark.parametrize("name,fn,args,tile", CASES, ids=IDS)
def test_tile_width_and_simulator(vector_bytes, name, fn, args, tile):
    c = explorer.compile(fn, *args, target="cpu", stop_after="vectorized", verbose=False)
    tiled = c.stage("tiled").text()
    wide = vector_bytes == 64 and tile is not None
    assert ("vectorize(j_v, 64 bytes)" in tiled) == wide, tiled
    mks = _micro_kernels(c)
    assert mks, c.stage("vectorized").text()
    if wide:
        rows, cols = tile
        assert f"split(i, {rows})" in tiled and f"split(j, {cols})" in tiled, tiled
        lanes = 64 // args[0].itemsize
        assert all(t.lanes == lanes for mk in mks for t in mk.tiles)
        assert max(sum(len(t.bases) for t in mk.tiles) for mk in mks) == 24   # accumulators: 24 of 32 zmm
    else:
        assert all(t.lanes * args[0].itemsize == 32 for mk in mks for t in mk.tiles)
    outs, _ = S.run_program(c.stage("vectorized").ir, list(args))
    check(outs[0], fn(*args))


@needs_cc
@pytest.mark.parametrize("name,fn,args,tile", CASES, ids=IDS)
def test_cpu_equals_numpy(vector_bytes, name, fn, args, tile):
    c = explorer.compile(fn, *args, target="cpu", verbose=False)
    src = c.codegen.source()
    wide = vector_bytes == 64 and tile is not None
    vec = {np.float32: "ke_v16f", np.float64: "ke_v8d"}.get(args[0].dtype.type, "ke_v16")
    assert (vec in src) == wide
    check(c(*args), fn(*args))


def test_thread_tile_knob_keeps_32_byte_vectors(monkeypatch):
    monkeypatch.setattr(cpu_schedules, "native_vector_bytes", lambda: 64)
    x, w = arr(64, 64), arr(64, 128)
    c = explorer.compile(mm, x, w, target="cpu", schedule={"thread_tile": (4, 16)}, stop_after="tiled", verbose=False)
    assert "split(j, 16)" in c.stage("tiled").text() and "64 bytes" not in c.stage("tiled").text()
