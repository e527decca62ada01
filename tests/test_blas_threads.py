"""NumPy's BLAS pool while the explorer measures (explorer.blas): blas_threads= validation, the limit
applied during the measurement and restored after, and the one-line note in tables and charts.
Correctness only: no timing is asserted."""
from __future__ import annotations

import numpy as np
import pytest

import explorer
from explorer import blas
from explorer.errors import BackendUnavailable, ExplorerError

threadpoolctl = pytest.importorskip("threadpoolctl")

BAD = ["many", 0, -1, True, 1.5, "AUTO"]


def _blas_threads_now() -> tuple[int, ...]:
    return tuple(i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas")


@pytest.fixture
def two_blas_threads():
    """NumPy's BLAS pool at 2 threads for the test (whatever the environment set), restored after."""
    if not _blas_threads_now():
        pytest.skip("no BLAS library loaded by NumPy")
    with threadpoolctl.threadpool_limits(2, user_api="blas"):
        yield _blas_threads_now()


def _probe(seen: list):
    """fn for compare(): records NumPy's BLAS thread counts whenever NumPy (not the tracer) calls it
    -- the reference call and the 'numpy' baseline's timed calls."""
    def scale(a):
        if isinstance(a, np.ndarray):
            seen.append(_blas_threads_now())
        return a * 2.0
    return scale


X = np.arange(64, dtype=np.float32)


@pytest.mark.parametrize("bad", BAD)
def test_bad_blas_threads_values_are_explorer_errors(bad):
    with pytest.raises(ExplorerError, match="blas_threads="):
        explorer.compare(lambda a: a * 2.0, X, target="reference", blas_threads=bad)
    with pytest.raises(ExplorerError, match="blas_threads="):
        explorer.sweep(lambda a: a * 2.0, sizes=[64], target="reference", blas_threads=bad, progress=False)
    c = explorer.compile(lambda a: a * 2.0, X, target="reference", verbose=False)
    with pytest.raises(ExplorerError, match="blas_threads="):
        c.benchmark(blas_threads=bad)
    with pytest.raises(ExplorerError, match="blas_threads="):
        explorer.autotune(lambda a: a * 2.0, X, target="sim", blas_threads=bad, cache=False, progress=False)
    with pytest.raises(ExplorerError):
        with explorer.blas_threads(bad):
            pass
    with pytest.raises(ExplorerError, match="thread count"):
        with explorer.blas_threads(None):
            pass


def test_auto_limits_blas_to_one_thread_during_compare_and_restores_it(two_blas_threads, monkeypatch):
    monkeypatch.setattr(blas, "_usable_cores", lambda: 2)      # as on the project's 2-core machine
    seen: list = []
    r = explorer.compare(_probe(seen), X, target="reference", repeat=3, warmup=1)
    assert seen and all(s == (1,) * len(two_blas_threads) for s in seen)
    assert _blas_threads_now() == two_blas_threads               # restored
    assert r.blas.requested == "auto" and r.blas.limit == 1 and r.blas.before == two_blas_threads
    note = ("NumPy's BLAS ran on 1 thread during this measurement (2-core machine: its idle threads spin and steal "
            "the core the next kernel needs); blas_threads=None leaves it alone")
    assert r.blas.note == note
    assert r.table().count(note) == 1
    assert "NumPy&#x27;s BLAS ran on 1 thread" in r._repr_html_()


def test_auto_leaves_blas_alone_on_a_bigger_machine_and_none_leaves_it_alone(two_blas_threads, monkeypatch):
    monkeypatch.setattr(blas, "_usable_cores", lambda: 8)
    for kwargs in ({}, {"blas_threads": None}):
        seen: list = []
        r = explorer.compare(_probe(seen), X, target="reference", repeat=3, warmup=1, **kwargs)
        assert seen and all(s == two_blas_threads for s in seen)
        assert r.blas.limit is None and r.blas.note == "" and "NumPy's BLAS" not in r.table()


def test_an_int_is_that_limit_and_nested_limits_restore(two_blas_threads):
    seen: list = []
    with explorer.blas_threads(1) as outer:
        assert outer.limit == 1 and _blas_threads_now() == (1,) * len(two_blas_threads)
        r = explorer.compare(_probe(seen), X, target="reference", repeat=3, warmup=1, blas_threads=2)
        assert _blas_threads_now() == (1,) * len(two_blas_threads)     # the outer limit is back
    assert seen and all(s == (2,) * len(two_blas_threads) for s in seen)
    assert r.blas.limit == 2 and "blas_threads=2" in r.table()
    assert _blas_threads_now() == two_blas_threads


def test_the_limit_is_restored_when_the_measurement_raises(two_blas_threads):
    def boom(a):
        if isinstance(a, np.ndarray):
            raise RuntimeError("user code failed")
        return a * 2.0
    with pytest.raises(Exception):
        explorer.compare(boom, X, target="reference", blas_threads=1)
    assert _blas_threads_now() == two_blas_threads


def test_benchmark_and_sweep_record_and_apply_it(two_blas_threads, monkeypatch):
    monkeypatch.setattr(blas, "_usable_cores", lambda: 2)
    c = explorer.compile(lambda a: a * 2.0, X, target="reference", verbose=False)
    seen: list = []
    monkeypatch.setattr(c, "sampler", lambda *a, **k: (lambda: seen.append(_blas_threads_now())))
    t = c.benchmark(repeat=3, warmup=1)
    assert seen and all(s == (1,) * len(two_blas_threads) for s in seen)
    assert t.blas.limit == 1 and _blas_threads_now() == two_blas_threads
    assert c.benchmark(repeat=3, warmup=1, blas_threads=None).blas.limit is None
    s = explorer.sweep(_probe(seen := []), sizes=[32, 64], target="reference", repeat=3, warmup=1, progress=False)
    assert seen and all(x == (1,) * len(two_blas_threads) for x in seen)
    assert s.blas.limit == 1 and s.table().count("NumPy's BLAS ran on 1 thread") == 1


def test_without_threadpoolctl_auto_says_so_and_an_int_asks_for_it(monkeypatch):
    monkeypatch.setattr(blas, "_usable_cores", lambda: 2)
    monkeypatch.setattr(blas, "_threadpoolctl", lambda: None)
    r = explorer.compare(lambda a: a * 2.0, X, target="reference", repeat=3, warmup=1)
    assert r.blas.limit is None and "threadpoolctl is not installed" in r.blas.note
    assert r.table().count("pip install threadpoolctl") == 1
    with pytest.raises(BackendUnavailable, match="pip install threadpoolctl"):
        explorer.compare(lambda a: a * 2.0, X, target="reference", blas_threads=1)
    with pytest.raises(BackendUnavailable, match="pip install threadpoolctl"):
        with explorer.blas_threads(1):
            pass


def test_the_note_is_under_the_charts(two_blas_threads, monkeypatch):
    pytest.importorskip("matplotlib")
    monkeypatch.setattr(blas, "_usable_cores", lambda: 2)
    r = explorer.compare(lambda a: a * 2.0, X, target="reference", repeat=3, warmup=1)
    fig = r.plot_timing()
    assert "NumPy's BLAS ran on 1 thread" in fig.get_supxlabel().replace("\n", " ")
    s = explorer.sweep(lambda a: a * 2.0, sizes=[32, 64], target="reference", repeat=3, warmup=1, progress=False)
    assert "NumPy's BLAS ran on 1 thread" in s.plot().get_supxlabel().replace("\n", " ")


def test_autotune_records_the_note_and_restores(two_blas_threads, monkeypatch):
    from explorer.backends import cpu
    if not cpu.available()[0]:
        pytest.skip("no C compiler")
    import sys
    at = sys.modules["explorer.autotune"]
    monkeypatch.setattr(blas, "_usable_cores", lambda: 2)
    a = np.ones((16, 16), np.float32)
    r = explorer.autotune(lambda a, b: a @ b, a, a, target="cpu", budget=3, top_k=1, cache=False, progress=False)
    assert r.blas_note.startswith("NumPy's BLAS ran on 1 thread") and r.blas_note in r.summary()
    assert at.load(r.to_json()).blas_note == r.blas_note
    assert _blas_threads_now() == two_blas_threads
