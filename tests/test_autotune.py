"""explorer.autotune: a valid best schedule on cpu and sim, invalid candidates with reasons, plots,
the disk cache (checked by the measurement counter, not by time), export, and bad inputs."""
import sys

import numpy as np
import pytest

import explorer
from explorer.errors import ExplorerError

AT = sys.modules["explorer.autotune"]   # the module (explorer.autotune is the function)


def matmul(a, b):
    return a @ b


def mlp(x, w, b):
    return np.maximum(x @ w + b, 0)


@pytest.fixture
def args():
    rng = np.random.default_rng(0)
    # extents that are not multiples of the tiles: edge guards must be right in every candidate
    return rng.standard_normal((40, 24), dtype=np.float32), rng.standard_normal((24, 36), dtype=np.float32)


@pytest.fixture(autouse=True)
def tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(AT, "cache_dir", lambda: tmp_path / "autotune")
    return tmp_path / "autotune"


def _cpu_ok():
    from explorer.backends import cpu
    return cpu.available()[0]


@pytest.mark.skipif(not _cpu_ok(), reason="no C compiler")
def test_cpu_best_schedule_matches_numpy(args):
    a, b = args
    r = explorer.autotune(matmul, a, b, target="cpu", budget=8, progress=False, top_k=3,
                          space={"thread_tile": [(2, 8), (4, 16), (3, 5)], "shared": [True, False]})
    assert r.metric == "time" and isinstance(r.best, dict)
    assert r.default.measured and r.default.median_ms > 0
    best = r.best_candidate
    assert best.measured and best.median_ms <= r.default.median_ms   # never worse than the default
    if not best.is_default:   # it also won the head-to-head against the default
        conf = r.confirmation
        assert conf["kept"] and conf["candidate_ms"] < conf["default_ms"]
        assert conf["candidate_min_ms"] <= conf["default_min_ms"]
    else:   # either the default was fastest, or the head-to-head sent the candidate back
        assert not r.confirmation or (not r.confirmation["kept"] and "default kept" in r.table())
    assert best.q1_ms <= best.median_ms <= best.q3_ms and best.build_s is not None and best.pipeline_s is not None
    assert len(r.candidates) == 1 + 3 * 2
    assert sum(c.measured for c in r.candidates) <= 1 + 3        # top_k besides the default
    c = explorer.compile(matmul, a, b, target="cpu", schedule=r.best)
    np.testing.assert_allclose(c(a, b), a @ b, rtol=1e-4, atol=1e-4)
    text = r.table()
    assert "thread_tile" in text and "best" in text and "median ms" in text


def test_sim_best_schedule_matches_numpy_and_invalid_reasons(args):
    x, w = args
    bias = np.linspace(-1, 1, 36).astype(np.float32)
    r = explorer.autotune(mlp, x, w, bias, target="sim", budget=30, progress=False, top_k=4,
                          space={"tile": [(16, 16, 8), (32, 32, 8)], "thread_tile": [(2, 2), (3, 3)],
                                 "threads": [64, 128]})
    assert r.metric == "global_bytes"
    best = r.best_candidate
    assert best.global_bytes is not None and best.global_bytes <= r.default.global_bytes
    c = explorer.compile(mlp, x, w, bias, target="sim", schedule=r.best)
    np.testing.assert_allclose(c(x, w, bias), mlp(x, w, bias), rtol=1e-4, atol=1e-4)
    # thread tile 3 divides neither 16 nor 32: each such candidate is reported with the ScheduleError
    invalid = [c for c in r.candidates if c.status == "invalid"]
    assert invalid and all(c.schedule["thread_tile"] == (3, 3) for c in invalid)
    assert all("ScheduleError" in c.reason and "does not divide" in c.reason for c in invalid)
    assert "does not divide" in r.table()
    # 'threads' does not change a matmul: those candidates are duplicates of an earlier one
    dups = [c for c in r.candidates if c.status == "duplicate"]
    assert dups and all(r.candidates[c.same_as].schedule.get("threads") != c.schedule["threads"] for c in dups)


def test_plots_return_figures(args):
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    a, b = args
    r = explorer.autotune(matmul, a, b, target="sim", budget=30, progress=False, top_k=5,
                          space={"tile": [(8, 8, 8), (16, 16, 8), (32, 32, 8)], "thread_tile": [(2, 2), (4, 4)]})
    heat, scatter = r.plot()
    assert isinstance(heat, Figure) and isinstance(scatter, Figure)
    assert isinstance(r.plot_heatmap("thread_tile", "tile"), Figure)
    # the model's bytes are the simulator's bytes for a staged matmul: they rank alike
    assert r.spearman() > 0.5
    with pytest.raises(ExplorerError, match="not a knob of this tune's space"):
        r.plot_heatmap("chunk")


def test_heatmap_of_a_large_space_keeps_the_measured_values(args):
    """A sim tile space has dozens of tiles and ~10 measurements: past max_blank_axis values an axis keeps
    only the measured ones (the dashboard shows the heatmap at half width)."""
    import matplotlib
    matplotlib.use("Agg")
    a, b = args
    tiles = [(8, 8, 8), (16, 16, 8), (32, 32, 8), (8, 16, 8), (16, 8, 8)]
    r = explorer.autotune(matmul, a, b, target="sim", budget=30, progress=False, top_k=2, cache=False,
                          space={"tile": tiles, "thread_tile": [(2, 2)]})
    measured = [AT._fmt_value(t) for t in tiles if any(c.schedule.get("tile") == t for c in r.measured())]
    assert 0 < len(measured) < len(tiles)
    labels = [t.get_text() for t in r.plot_heatmap("tile", max_blank_axis=3).axes[0].get_xticklabels()]
    assert labels == measured
    full = [t.get_text() for t in r.plot_heatmap("tile").axes[0].get_xticklabels()]
    assert full == [AT._fmt_value(t) for t in tiles]   # a small axis is drawn whole


def test_cached_rerun_measures_nothing(args, tmp_cache):
    a, b = args
    space = {"tile": [(16, 16, 8), (32, 32, 16)]}
    r1 = explorer.autotune(matmul, a, b, target="sim", budget=30, progress=False, space=space)
    assert not r1.cached and list(tmp_cache.glob("*.json"))
    before = dict(AT.STATS)
    r2 = explorer.autotune(matmul, a, b, target="sim", budget=30, progress=False, space=space)
    assert r2.cached and AT.STATS == before          # nothing compiled or measured again
    assert r2.best == r1.best and r2.table().splitlines()[2:] == r1.table().splitlines()[2:]
    # another space is another key: tuned again
    explorer.autotune(matmul, a, b, target="sim", budget=30, progress=False, space={"tile": [(16, 16, 8)]})
    assert AT.STATS["measured"] > before["measured"]


def test_export_and_load(args, tmp_path):
    a, b = args
    r = explorer.autotune(matmul, a, b, target="sim", budget=30, progress=False, cache=False,
                          space={"tile": [(16, 16, 8), (32, 32, 8)]})
    path = tmp_path / "tune.json"
    r.to_json(path)
    r2 = explorer.autotune.load(path)
    assert r2.best == r.best and isinstance(r2.best.get("tile", ()), tuple)
    assert explorer.autotune.load(r.to_json()).best == r.best
    c = explorer.compile(matmul, a, b, target="sim", schedule=r2.best)
    np.testing.assert_allclose(c(a, b), a @ b, rtol=1e-4, atol=1e-4)
    with pytest.raises(ExplorerError, match="not an autotune result"):
        explorer.autotune.load('{"x": 1}')
    with pytest.raises(ExplorerError, match="cannot read"):
        explorer.autotune.load(tmp_path / "missing.json")


@pytest.mark.parametrize("kwargs, match", [
    (dict(space={"tiles": [(16, 16, 8)]}), r"unknown knob 'tiles' \(did you mean 'tile'\?\); knobs tunable on sim are tile"),
    (dict(space={"chunk": [1024]}), r"knob 'chunk' has no effect on target 'sim'; knobs tunable on sim are"),
    (dict(space={"tile": [(16, 16)]}), r"knob 'tile', value \(16, 16\).*must be a 3-tuple"),
    (dict(space={"thread_tile": [(0, 2)]}), r"knob 'thread_tile'.*positive integer"),
    (dict(space={"double_buffer": ["yes"]}), r"knob 'double_buffer'.*True or False"),
    (dict(space={}), r"space is empty.*knobs tunable on sim are tile, thread_tile"),
    (dict(space={"tile": []}), r"knob 'tile' has no values"),
    (dict(space={"tile": (16, 16, 8)}), r"knob 'tile', value 16"),
    (dict(space=[("tile", [(16, 16, 8)])]), r"must be a dict of knob -> list of values"),
    (dict(budget=0), r"budget=0: must be a number of seconds > 0"),
    (dict(budget=-5), r"budget=-5"),
    (dict(budget="60"), r"budget='60'"),
    (dict(top_k=0), r"top_k=0: must be an integer >= 1"),
    (dict(schedule={"tile": (16, 16, 8)}), r"pass the knobs to search as space="),
    (dict(target="reference"), r"choose cpu, cuda or sim"),
    (dict(spaces={"tile": [(16, 16, 8)]}), r"unknown option spaces= \(did you mean space=\?\); autotune takes space="),
    (dict(budjet=5), r"unknown option budjet= \(did you mean budget=\?\)"),
])
def test_bad_inputs(args, kwargs, match):
    a, b = args
    kw = dict(target="sim", budget=10, progress=False, space={"tile": [(16, 16, 8)]})
    kw.update(kwargs)
    with pytest.raises(ExplorerError, match=match):
        explorer.autotune(matmul, a, b, **kw)


def test_space_too_large_names_the_biggest_knob(args):
    a, b = args
    big = {"tile": [(m, 8, 8) for m in range(1, 101)], "thread_tile": [(1, n) for n in range(1, 101)]}
    with pytest.raises(ExplorerError, match=r"10,000 combinations.*over the limit"):
        explorer.autotune(matmul, a, b, target="sim", progress=False, space=big)


def test_spearman():
    assert AT.spearman([1, 2, 3, 4], [2, 4, 6, 9]) == pytest.approx(1.0)
    assert AT.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert np.isnan(AT.spearman([1, 1, 1], [1, 2, 3]))


def test_dashboard_autotune_tab(args):
    pytest.importorskip("ipywidgets")
    import matplotlib
    matplotlib.use("Agg")
    import widgets
    a, b = args
    ex = widgets.Explorer(matmul, a, b, target="sim")
    ex.select_tab("Autotune")
    # before the first search: no empty <img> (a broken image in the browser), a placeholder says what to do
    assert ex.autotune.heatmap.layout.display == ex.autotune.scatter.layout.display == "none"
    assert "Use best" in ex.autotune.placeholder.value and ex.autotune.placeholder.layout.display != "none"
    fn, examples, kw = ex._autotune_request()
    assert kw["target"] == "sim" and "schedule" not in kw
    assert ex.autotune.run(fn, *examples, **kw, budget=20, space={"tile": [(16, 16, 8), (32, 32, 8)]})
    ex.autotune.wait()
    assert ex.autotune.result is not None, ex.autotune._worker.last_error
    assert "best by global bytes" in ex.autotune.table.value and ex.autotune.heatmap.value[:4] == b"\x89PNG"
    assert not ex.autotune.use_best.disabled
    assert ex.autotune.heatmap.layout.display == "" and ex.autotune.placeholder.layout.display == "none"
    ex.use_schedule({"tile": (16, 16, 8)})   # what "Use best" calls with result.best
    assert ex.knobs.kwargs()["schedule"]["tile"] == (16, 16, 8)
    assert "split(i, 16) -> i_b, i_in" in ex.compiled.program.kernels[0].schedule


def test_model_bytes_equal_simulator_counters_for_staged_matmul():
    """The schedule-aware model's global bytes for a shared-memory-staged matmul are what the simulator
    counts (operands re-read once per block tile, output written once); tiles divide the extents."""
    from explorer import costmodel
    a, b = np.ones((64, 32), np.float32), np.ones((32, 64), np.float32)
    seen = set()
    for tile in [(8, 8, 8), (16, 16, 8), (32, 32, 16), (16, 64, 8), (64, 64, 32)]:
        c = explorer.compile(matmul, a, b, target="sim", schedule={"tile": tile, "thread_tile": (2, 2)})
        c(a, b)
        counted = c.executable().counters["total"]
        _, model_bytes = costmodel.predict_schedule(c, "h100")
        assert model_bytes == counted["global_load_bytes"] + counted["global_store_bytes"], tile
        seen.add(model_bytes)
    assert len(seen) >= 4   # the tiles really move different amounts


def test_cpu_model_prefers_register_tiles_that_fit():
    from explorer import costmodel
    x = np.ones((256, 256), np.float32)
    ms = {tt: costmodel.predict_schedule_ms(explorer.compile(matmul, x, x, target="cpu",
                                                             schedule={"thread_tile": tt}), "cpu")
          for tt in [(6, 16), (1, 8), (1, 3), (12, 32)]}
    assert ms[(6, 16)] < ms[(1, 8)] < ms[(1, 3)]       # more accumulators per load; scalar tails
    assert ms[(6, 16)] < ms[(12, 32)]                   # 12 x 4 vectors spill the 16 registers


def test_cuda_without_gpu_says_so(args):
    from explorer.backends import cuda
    if cuda.available()[0]:
        pytest.skip("a GPU is present")
    with pytest.raises(explorer.BackendUnavailable, match="autotune on cuda needs a GPU.*target='sim'"):
        explorer.autotune(matmul, *args, target="cuda", budget=5, progress=False)


def test_kernel_hash_ignores_where_the_function_is_defined(args):
    a, b = args
    f1 = lambda a, b: a @ b   # noqa: E731 — two definitions on different lines, same program
    f2 = lambda a, b: a @ b   # noqa: E731
    h = [AT.kernel_hash(explorer.compile(f, a, b, target="sim")) for f in (f1, f2)]
    assert h[0] == h[1]
    assert AT.kernel_hash(explorer.compile(lambda a, b: a @ b + 1, a, b, target="sim")) != h[0]
    assert AT.kernel_hash(explorer.compile(f1, a[:20], b, target="sim")) != h[0]
