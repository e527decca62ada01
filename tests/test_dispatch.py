"""The C call path of small serial CPU programs (explorer/backends/dispatch.py): the same results,
checks, errors and buffer rules as the Python path it replaces."""
from __future__ import annotations

import threading

import numpy as np
import pytest

import explorer
from explorer.backends import cpu, dispatch
from explorer.errors import ExplorerError, ShapeError

pytestmark = [pytest.mark.skipif(not cpu.available()[0], reason="no C compiler"),
              pytest.mark.skipif(dispatch.module() is None, reason="the C call path cannot be built here")]


def _compiled(fn, *args, **kw):
    c = explorer.compile(fn, *args, target="cpu", verbose=False, **kw)
    c(*args)                                   # the first call makes the fast path
    return c


def _uses_c_path(c) -> bool:
    return type(c._fast_call).__name__ == "Call"


def test_a_small_matmul_is_called_from_c_and_equals_numpy():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, 16, 16)).astype(np.float32)
    c = _compiled(lambda a, b: a @ b, a, b)
    assert _uses_c_path(c)
    np.testing.assert_allclose(c(a, b), a @ b, rtol=1e-5, atol=1e-5)
    exe = c.executable()
    before = exe.thread_stats["serial"]
    c(a, b)
    assert exe.thread_stats["serial"] == before + 1          # C calls are counted like the others


def test_outputs_are_fresh_and_a_held_result_is_never_overwritten():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    c = _compiled(lambda x: x * 2, a)
    first = c(a)
    second = c(a + 1)
    assert not np.shares_memory(first, second) and not np.shares_memory(first, a)
    np.testing.assert_array_equal(first, a * 2)
    np.testing.assert_array_equal(second, (a + 1) * 2)


def test_arguments_the_c_checks_reject_take_the_full_path():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    c = _compiled(lambda x, y: x * y + 1, a, a)
    assert _uses_c_path(c)
    want = a * a + 1
    call = c._fast_call
    assert call((a, a)) is not None
    swapped = a.astype(a.dtype.newbyteorder(">"))
    class Sub(np.ndarray):
        pass
    for other in (np.asfortranarray(a), a.astype(np.float64), a.astype(np.float16), swapped, a.view(Sub),
                  a.tolist(), np.ones((4, 3), np.float32)):
        assert call((other, a)) is None                      # not exactly like the example: Python decides
    assert call((a,)) is None and call((a, a, a)) is None
    for other in (np.asfortranarray(a), a.astype(np.float16), swapped, a.view(Sub), a.tolist()):
        np.testing.assert_array_equal(c(other, a), want)     # converted by the full path, as before
    with pytest.raises(ShapeError, match=r"compiled for \(3, 4\)"):
        c(np.ones((4, 3), np.float32), a)
    with pytest.raises(ExplorerError, match="2 inputs"):
        c(a)
    with pytest.raises(TypeError):
        call([a, a])                                          # the call takes one tuple


def test_several_outputs_kernels_and_a_constant():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((8, 5)).astype(np.float32)
    w = rng.standard_normal((5, 3)).astype(np.float32)    # captured: a constant of the program

    def f(x):
        h = np.maximum(x @ w, 0)
        return h, h.sum(axis=-1)
    for fuse in (True, False):
        c = _compiled(f, x, fuse=fuse)
        assert _uses_c_path(c)
        h, s = c(x)
        np.testing.assert_allclose(h, np.maximum(x @ w, 0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(s, np.maximum(x @ w, 0).sum(axis=-1), rtol=1e-5, atol=1e-5)


def test_integer_and_double_programs():
    i = np.arange(-6, 6, dtype=np.int32).reshape(3, 4)
    c = _compiled(lambda a: a * 3 - 1, i)
    assert _uses_c_path(c)
    np.testing.assert_array_equal(c(i), i * 3 - 1)
    d = np.linspace(-1, 1, 7)
    c = _compiled(lambda a: np.tanh(a) * a, d)
    np.testing.assert_allclose(c(d), np.tanh(d) * d, rtol=1e-15, atol=1e-15)


def test_big_outputs_and_parallel_kernels_keep_the_python_path():
    big = np.ones(1 << 16, np.float32)                       # 256 KiB out: the pool's faulted pages pay
    assert not _uses_c_path(_compiled(lambda a: a + 1, big))
    huge = np.ones(1 << 22, np.float32)                      # enough work for a team
    c = _compiled(lambda a: np.tanh(a) * a, huge)
    assert any(d.threads > 1 for d in c.thread_policy) and not _uses_c_path(c)


def test_concurrent_calls_from_threads():
    rng = np.random.default_rng(2)
    xs = [rng.standard_normal((16, 16)).astype(np.float32) for _ in range(4)]
    c = _compiled(lambda a: a @ a + 1, xs[0])
    assert _uses_c_path(c)
    errors: list[float] = []

    def work(x):
        for _ in range(200):
            errors.append(float(np.abs(c(x) - (x @ x + 1)).max()))
    ts = [threading.Thread(target=work, args=(x,)) for x in xs]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert len(errors) == 800 and max(errors) < 1e-4


def test_the_python_path_can_be_asked_for(monkeypatch):
    monkeypatch.setattr(dispatch, "_state", {})
    monkeypatch.setenv("KE_PYTHON_CALL_PATH", "1")
    assert dispatch.module() is None
    assert dispatch.status() == "C call path: off (KE_PYTHON_CALL_PATH is set)"
    a = np.ones(4, np.float32)
    c = _compiled(lambda x: x + 1, a)
    assert not _uses_c_path(c)
    np.testing.assert_array_equal(c(a), a + 1)


def test_missing_headers_are_said_in_one_line(monkeypatch):
    monkeypatch.setattr(dispatch, "_state", {})
    monkeypatch.setattr(dispatch.sysconfig, "get_paths", lambda: {"include": "/nonexistent"})
    assert dispatch.module() is None
    assert dispatch.status().startswith("C call path: Python's C headers are not installed")
