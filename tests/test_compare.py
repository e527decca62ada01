"""compare(), sweep(), charts and `python -m explorer bench` (headless, Agg canvas)."""
from __future__ import annotations

import importlib
import re
import sys

import numpy as np
import pytest

import explorer
from explorer.errors import BackendUnavailable, ExplorerError

C = importlib.import_module("explorer.compare")  # the module; the attribute explorer.compare is the function

pytest.importorskip("matplotlib")


def mlp(x, w, b):
    return np.maximum(x @ w + b, 0)


def ew(a, b):
    return np.exp(a) * b + 1.0


def mlp_args(m=128, k=16, n=16):
    rng = np.random.default_rng(0)
    return (rng.standard_normal((m, k), dtype=np.float32), rng.standard_normal((k, n), dtype=np.float32),
            rng.standard_normal(n, dtype=np.float32))


def _available(target: str) -> bool:
    from explorer.backends import backend_module
    return backend_module(target).available()[0]


cpu_only = pytest.mark.skipif(not _available("cpu"), reason="no working C compiler for the cpu target")
sim_only = pytest.mark.skipif(not _available("sim"), reason="simulator unavailable")


@pytest.fixture(scope="module")
def sim_mlp():
    if not _available("sim"):
        pytest.skip("simulator unavailable")
    return C.compare(mlp, *mlp_args(), target="sim", baselines=("numpy",), repeat=3, warmup=1)


@pytest.fixture(scope="module")
def cpu_mlp():
    if not _available("cpu"):
        pytest.skip("no working C compiler for the cpu target")
    return C.compare(mlp, *mlp_args(1024, 32, 32), target="cpu", baselines=("numpy",), repeat=5, warmup=1)


def _check_fusion_saves_bytes(r, measured_bytes: bool):
    f, u = r.variant("fused"), r.variant("unfused")
    assert f.kernels == 1 and u.kernels == 3
    assert f.bytes_model < u.bytes_model
    assert u.bytes_model - f.bytes_model == r.bytes_saved == 4 * (2 * 2 * f.compiled.examples[0].shape[0]
                                                                  * f.compiled.examples[1].shape[1])
    assert f.flops == u.flops
    if measured_bytes:
        assert f.bytes_measured is not None and u.bytes_measured is not None
        assert f.bytes_measured < u.bytes_measured
    for v in (f, u):
        assert v.max_abs_error is not None and v.max_abs_error < 1e-4
    assert r.speedup == pytest.approx(u.median_ms / f.median_ms)


def test_compare_sim_fused_moves_fewer_bytes(sim_mlp):
    r = sim_mlp
    _check_fusion_saves_bytes(r, measured_bytes=True)
    f, u = r.variant("fused"), r.variant("unfused")
    # the simulator's time is the roofline model on its exact counters, labelled as such
    assert f.time_source.startswith("model") and not f.measured
    assert f.median_ms == pytest.approx(sum(k.predicted_ms for k in f.costs))
    assert all(k.source == "simulator" for k in f.costs + u.costs)
    assert r.speedup > 1.0
    assert r.variant("numpy").measured
    # a wall-clock baseline is not divided by a model time
    assert [row["speedup_vs_unfused"] is None for row in r.rows] == [False, False, True]
    text = r.table()
    assert "fused [model time]" in text and "unfused [model time]" in text and "model (simulator counters)" in text


@cpu_only
def test_compare_cpu_fused_moves_fewer_bytes(cpu_mlp):
    r = cpu_mlp
    _check_fusion_saves_bytes(r, measured_bytes=False)
    f = r.variant("fused")
    assert f.measured and f.median_ms > 0 and f.repeat == 5
    rows = r.rows
    assert [row["variant"] for row in rows] == ["fused", "unfused", "numpy"]
    assert rows[1]["speedup_vs_unfused"] == pytest.approx(1.0)
    assert rows[0]["bytes_model"] == f.bytes_model and rows[0]["bytes_measured"] is None
    assert "<table>" in r._repr_html_() and "fused" in r._repr_html_()
    krows = r.kernel_rows
    assert [k["variant"] for k in krows] == ["fused", "unfused", "unfused", "unfused"]
    assert [k["bound"] for k in krows[2:]] == ["memory", "memory"]      # bias add and relu alone
    assert sum(k["bytes"] for k in krows[1:]) == r.variant("unfused").bytes_model
    assert "matmul_kernel" in r.kernels_table() and "model ms" in r.kernels_table()


def test_compare_reference_and_baselines():
    a = np.linspace(-2, 2, 4096, dtype=np.float32)
    r = C.compare(ew, a, a[::-1].copy(), target="reference", baselines=("numpy", "numexpr", "torch"), repeat=3,
                  warmup=0)
    names = [v.name for v in r.variants]
    assert names[:3] == ["fused", "unfused", "numpy"]
    if "numexpr" in names:
        assert r.variant("numexpr").max_abs_error < 1e-4
    else:
        assert "numexpr" in r.skipped
    if "torch" not in names:
        assert "torch" in r.skipped and "torch" in r.table()


def test_numexpr_is_skipped_for_matmul():
    pytest.importorskip("numexpr")
    r = C.compare(mlp, *mlp_args(), target="reference", baselines=("numexpr",), repeat=1, warmup=0)
    assert "elementwise" in r.skipped["numexpr"]


def test_numexpr_expression_matches_numpy():
    ne = pytest.importorskip("numexpr")

    def f(a, b):
        return np.where(a > b, np.exp(a), -b) * 2.0 + np.maximum(a, 0.5)
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal(100, dtype=np.float32), rng.standard_normal(100, dtype=np.float32)
    g = explorer.trace(f, a, b)
    expr, consts = C.numexpr_expression(g)
    assert "in0" in expr and "in1" in expr
    got = ne.evaluate(expr, local_dict={"in0": a, "in1": b, **consts})
    np.testing.assert_allclose(got, f(a, b), rtol=1e-6)


def test_bad_arguments():
    with pytest.raises(ExplorerError, match="unknown baseline 'jax'"):
        C.compare(mlp, *mlp_args(), target="reference", baselines=("jax",))
    with pytest.raises(ExplorerError, match="fuse="):
        C.compare(mlp, *mlp_args(), target="reference", fuse=False)
    with pytest.raises(ExplorerError, match="unknown device"):
        C.compare(mlp, *mlp_args(), target="reference", device="tpu", baselines=())


# ----------------------------------------------------------------------------- charts
def _marker_lines(ax):
    return [ln for ln in ax.lines if ln.get_marker() not in (None, "None", "", " ")]


def _filled(ln) -> bool:
    fc = ln.get_markerfacecolor()
    return not (isinstance(fc, str) and fc == "none")


def test_plot_timing_has_one_bar_per_variant(sim_mlp):
    from matplotlib.figure import Figure
    fig = sim_mlp.plot_timing()
    assert isinstance(fig, Figure)
    # model times (sim) and the measured NumPy baseline never share an axis: two panels
    model_ax, measured_ax = fig.axes
    assert "model time on" in model_ax.get_title() and "measured" in measured_ax.get_title()
    assert sim_mlp.device.name in model_ax.get_title()
    bars = [p for ax in fig.axes for p in ax.patches if p.get_height() > 0]
    assert len(bars) == len(sim_mlp.variants) == 3
    assert [b.get_height() for b in bars] == pytest.approx([v.median_ms for v in sim_mlp.variants])
    # error bars: one line collection holding one segment per bar
    assert sum(len(c.get_segments()) for ax in fig.axes for c in ax.collections) == 3
    # model times say so wherever they appear
    ticks = [t.get_text() for t in model_ax.get_xticklabels()]
    assert ticks[0].endswith("(model)") and ticks[1].endswith("(model)")
    assert "model" not in measured_ax.get_xticklabels()[0].get_text()
    assert all("(model)" in t.get_text() for t in model_ax.texts)
    assert not any("(model)" in t.get_text() for t in measured_ax.texts)
    assert "model time" in model_ax.get_ylabel() and "median of" in measured_ax.get_ylabel()
    assert fig._repr_png_().startswith(b"\x89PNG")  # renders headless; shows itself in a notebook


def test_plot_timing_one_axis_marks_model_bars(sim_mlp):
    from matplotlib.figure import Figure
    ax = Figure().add_subplot()
    sim_mlp.plot_timing(ax=ax)  # everything on the caller's axis: model bars hatched and labelled
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert ticks[0].endswith("(model)") and "model" not in ticks[2]
    assert [p.get_hatch() for p in ax.patches if p.get_height() > 0] == ["//", "//", None]
    assert any("hatched bars: model time" in t.get_text() for t in ax.texts)


def test_plot_bytes_shows_model_and_simulator_counts(sim_mlp):
    fig = sim_mlp.plot_bytes()
    (ax,) = fig.axes
    heights = [p.get_height() for p in ax.patches]
    f, u = sim_mlp.variant("fused"), sim_mlp.variant("unfused")
    assert heights == [f.bytes_model, u.bytes_model, f.bytes_measured, u.bytes_measured]
    assert "fusion saves" in ax.get_title()


def test_plot_roofline_points_sim_are_all_model(sim_mlp):
    fig = sim_mlp.plot_roofline()
    ax = fig.axes[0]
    pts = _marker_lines(ax)
    assert len(pts) == 1 + 3                     # one per kernel of fused (1) and unfused (3)
    assert not any(_filled(p) for p in pts)      # simulated times are not measurements: all hollow
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("roof" in t for t in legend)
    assert all("model" in t for t in legend if t[:1].isdigit())
    assert [t.split(":")[0] for t in legend if t[:1].isdigit()] == [str(k) for k in range(1, len(legend))]
    numbers = [t.get_text() for t in ax.texts if t.get_text().isdigit()]  # each point numbered once
    assert sorted(numbers, key=int) == [str(k) for k in range(1, len(legend))]
    assert "simulator" in ax.get_xlabel()


@cpu_only
def test_plot_roofline_points_cpu_measured_filled(cpu_mlp):
    fig = cpu_mlp.plot_roofline()
    ax = fig.axes[0]
    pts = _marker_lines(ax)
    want = cpu_mlp.roofline_points()
    assert len(pts) == len(want)
    n_measured = sum(p["measured"] for p in want)
    assert sum(_filled(p) for p in pts) == n_measured >= 2      # at least one per variant
    assert sum(not _filled(p) for p in pts) == 1 + 3
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("fused — measured" in t for t in legend) and any(t.split(": ")[1] == "unfused — model"
                                                                for t in legend if t[:1].isdigit())
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    # measured points: achieved flop/s = model flops / measured time
    f = cpu_mlp.variant("fused")
    (m,) = [p for p in want if p["variant"] == "fused" and p["measured"]]
    ms = (f.per_kernel_ms or {}).get(f.costs[0].name, f.median_ms)
    assert m["gflops"] == pytest.approx(f.flops / (ms * 1e-3) / 1e9)


def test_plot_roofline_on_a_named_gpu(sim_mlp):
    fig = sim_mlp.plot_roofline(device="h100")
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert any("H100" in t and "data sheet" in t for t in legend)


def test_missing_matplotlib_names_the_extra(sim_mlp, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(BackendUnavailable, match=re.escape("kernel-explorer[notebook]")):
        sim_mlp.plot_timing()


# ----------------------------------------------------------------------------- sweeps and progress
def test_sweep_rows_and_plot():
    target = "sim" if _available("sim") else "reference"
    s = C.sweep(ew, sizes=[256, 2048], target=target, progress=False, repeat=2, warmup=0)
    assert [r["size"] for r in s.rows] == [256, 2048]
    for r in s.rows:
        assert r["speedup"] == pytest.approx(r["unfused_ms"] / r["fused_ms"])
        assert r["bytes"] < r["unfused_bytes"]
        assert r["bytes"] == 3 * 4 * r["size"]                    # read a, b; write the result
    fig = s.plot()
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    assert [ln.get_xdata().tolist() for ln in ax.lines[:2]] == [[256, 2048], [256, 2048]]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("model" in t for t in legend)
    if target == "sim":
        assert all("model" in t for t in legend)
    assert "2048" in s.table()


def test_sweep_custom_make_args_and_errors():
    s = C.sweep(mlp, make_args=lambda n: mlp_args(n, 8, 8), sizes=[64], target="reference", progress=False,
                repeat=1, warmup=0)
    assert s.rows[0]["fused_kernels"] == 1 and s.rows[0]["unfused_kernels"] == 3
    with pytest.raises(ExplorerError, match="at least one size"):
        C.sweep(ew, sizes=[], target="reference")


def test_progress_bar_only_for_slow_loops(monkeypatch):
    from explorer import progress as P
    made = []

    class FakeBar:
        def __init__(self, total=None, initial=0, desc=None, leave=False):
            self.n = initial
            made.append(self)

        def update(self, k):
            self.n += k

        def close(self):
            self.closed = True
    monkeypatch.setattr(P, "_tqdm", lambda: FakeBar)
    assert list(P.progress(range(5))) == list(range(5)) and not made          # fast: no bar
    assert list(P.progress(range(5), min_seconds=0.0)) == list(range(5))      # "slow": bar picks up
    (bar,) = made
    assert bar.n == 5 and bar.closed
    assert list(P.progress(range(3), min_seconds=0.0, enabled=False)) == [0, 1, 2] and len(made) == 1


# ----------------------------------------------------------------------------- CLI
def test_bench_main_prints_tables(capsys):
    rc = C.bench_main(["--target", "reference", "--quick", "--repeat", "1", "--warmup", "0",
                       "--baselines", "numpy"])
    out = capsys.readouterr().out
    assert rc == 0
    assert out.count("fusion: 3 → 1 kernels") == 2          # both MLP shapes
    assert "softmax" in out and "memory-bound" in out and "compute-bound" in out


@pytest.mark.gpu
def test_compare_cuda_uses_gpu_roofline_and_events():
    if not _available("cuda"):
        pytest.skip("no CUDA GPU with pycuda")
    r = C.compare(mlp, *mlp_args(4096, 64, 64), target="cuda", baselines=(), repeat=5, warmup=2)
    _check_fusion_saves_bytes(r, measured_bytes=False)
    assert r.device.kind == "gpu" and not r.device.measured
    assert r.variant("fused").measured
    fig = r.plot_roofline()
    assert any("data sheet" in t.get_text() for t in fig.axes[0].get_legend().get_texts())


def test_timing_quartiles_resist_one_outlier():
    from explorer.compiled import summarize
    t = summarize([1.0, 1.1, 0.9, 1.05, 0.95, 50.0])
    assert t.q1_ms <= t.median_ms <= t.q3_ms < 2.0 < t.stdev_ms   # the outlier moves stdev, not the bars
    one = summarize([3.0])
    assert one.q1_ms == one.q3_ms == 3.0


# ----------------------------------------------------------------------------- timing fields (explorer.measure)
def test_compare_rows_carry_spread_and_table_shows_it():
    a = np.linspace(-2, 2, 4096, dtype=np.float32)
    r = C.compare(ew, a, a[::-1].copy(), target="reference", baselines=("numpy",), repeat=4, warmup=0)
    for row in r.rows:
        assert row["repeat"] == 4 and row["q1_ms"] <= row["median_ms"] <= row["q3_ms"]
        assert row["min_ms"] <= row["q1_ms"] and isinstance(row["unstable"], bool)
        assert row["speedup_low"] <= row["speedup_vs_unfused"] <= row["speedup_high"]
    text = r.table()
    assert "IQR ms" in text and "min ms" in text and "interleaved" in text
    assert r.speedup_range.value == pytest.approx(r.speedup)
    assert "IQR" in r._repr_html_()


def test_compare_flags_an_unstable_measurement(monkeypatch):
    from explorer import measure

    def fake_interleaved(calls, **kw):
        for call in calls.values():
            call() if callable(call) else call.sample()
        steady = measure.summarize([1.0, 1.01, 0.99, 1.0, 1.02])
        noisy = measure.summarize([0.01, 16.0, 0.02, 9.0, 0.015, 12.0])
        return {n: (noisy if n == "fused" else steady) for n in calls}
    monkeypatch.setattr(C.measure, "interleaved", fake_interleaved)
    a = np.linspace(-2, 2, 256, dtype=np.float32)
    r = C.compare(ew, a, a, target="reference", baselines=("numpy",))
    assert r.unstable and r.variant("fused").unstable and not r.variant("numpy").unstable
    text = r.table()
    assert "fused !" in text and measure.UNSTABLE_TEXT in text and "fused: the middle half" in text
    assert r.speedup_range.unstable and measure.UNSTABLE_TEXT in repr(r)
    assert "0.00x" not in text
    fig = r.plot_timing()
    assert any(measure.UNSTABLE_TEXT in t.get_text() for t in fig.axes[0].texts)


def test_benchmark_returns_a_timing_with_spread_and_verdict():
    a = np.ones(64, np.float32)
    c = explorer.compile(ew, a, a, target="reference")
    t = c.benchmark(repeat=6, warmup=0)
    assert t.repeat == 6 and t.q1_ms <= t.median_ms <= t.q3_ms and t.min_ms <= t.median_ms
    assert isinstance(t.unstable, bool) and "IQR" in str(t)
    auto = c.benchmark(warmup=0, budget_s=0.2)
    assert auto.repeat >= 3
    with pytest.raises(ExplorerError, match="budget_s"):
        c.benchmark(budget_s=-1)


def test_sweep_rows_carry_speedup_range():
    s = C.sweep(ew, sizes=[256], target="reference", progress=False, repeat=4, warmup=0)
    (row,) = s.rows
    assert row["speedup_low"] <= row["speedup"] <= row["speedup_high"] and isinstance(row["unstable"], bool)
    assert row["fused_q1_ms"] <= row["fused_ms"] <= row["fused_q3_ms"] and row["repeat"] == 4
    assert "speedup (range)" in s.table()


def test_tolerance_follows_least_precise_input():
    """A float64 result computed from float32 inputs (GPT-2's `q @ k.T / np.sqrt(d)`) is checked at float32
    accuracy, not float64's: compare() must not reject a correct compile of such a function."""
    from explorer.compare import _tolerance
    want = [np.full((4, 4), 2.0)]
    assert _tolerance(want) == pytest.approx(2e-9)
    assert _tolerance(want, [np.ones(3, np.float32), np.arange(3)]) == pytest.approx(2e-4)
    assert _tolerance(want, [np.ones(3, np.float16)]) == pytest.approx(4e-2)
