"""Headless tests of the ipywidgets dashboard (no browser): every knob changes what is shown,
errors show in red and keep the previous view, panels work on their own."""
from __future__ import annotations

import html
import inspect
import re
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("ipywidgets")
pytest.importorskip("pygments")

import explorer  # noqa: E402
import widgets  # noqa: E402
from explorer import render  # noqa: E402


def mlp(x, w, b):
    return np.maximum(x @ w + b, 0)


def softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def matmul(a, b):
    return a @ b


RNG = np.random.default_rng(0)
X, W_, B = (RNG.standard_normal((64, 32)).astype(np.float32), RNG.standard_normal((32, 16)).astype(np.float32),
            RNG.standard_normal(16).astype(np.float32))
S = RNG.standard_normal((16, 64)).astype(np.float32)
MA, MB = RNG.standard_normal((64, 64)).astype(np.float32), RNG.standard_normal((64, 64)).astype(np.float32)
MLP_LINE = inspect.getsourcelines(mlp)[1] + 1  # the `return np.maximum(...)` line


@pytest.fixture
def ex():
    return widgets.Explorer(mlp, X, W_, B, target="cpu")


def kernel_count(e) -> int:
    return len(e.compiled.kernels)


def stage_text(e, name: str) -> str:
    e.tabs.selected_index = 0
    e.select_stage(name)
    return e.ir_text.value


def source_html(e) -> str:
    e.select_tab("Source")
    return e.source.code.value


# ----------------------------------------------------------------------------- import hygiene
def test_import_widgets_is_lazy_and_explorer_never_imports_widgets():
    code = ("import sys, widgets; assert 'ipywidgets' not in sys.modules and 'pygments' not in sys.modules; "
            "import explorer; assert 'widgets.explorer_widget' not in sys.modules; "
            "widgets.GraphView; assert 'ipywidgets' in sys.modules; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "ok", out.stderr
    code2 = "import sys, explorer; explorer.compile; assert not any(m.startswith('widgets') for m in sys.modules); print('ok')"
    out2 = subprocess.run([sys.executable, "-c", code2], capture_output=True, text=True, timeout=60)
    assert out2.stdout.strip() == "ok", out2.stderr


# ----------------------------------------------------------------------------- construction
def test_mlp_dashboard_shows_every_stage(ex):
    assert ex.error.value == ""
    names = list(ex.stage_nav.options)
    assert names[0] == "traced" and "fused" in names and names[-1] == "codegen"
    assert ex.stage_nav.value == "fused"
    assert "fused_matmul_add_maximum" in ex.ir_text.value
    if render.have_dot():
        assert ex.graph.has_svg and "<svg" in ex.graph.html.value and "<?xml" not in ex.graph.html.value
    else:
        assert "apt-get install graphviz" in ex.graph.html.value
    # simplified → fused changes the IR's kind: the diff is kernel by kernel, not one delete-and-insert
    assert "ke-structural-diff" in ex.diff.html.value and "fused_matmul_add_maximum" in ex.diff.html.value
    assert "IR changes kind" in ex.diff.header.value
    ex.select_stage("tiled")  # lowered → tiled: same kind, a line diff marking added and removed lines
    assert ex.diff.added > 0 and "ke-add" in ex.diff.html.value
    ex.select_stage("fused")
    traced = stage_text(ex, "traced")
    assert "matmul" in traced and "maximum" in traced
    assert "first stage" in ex.diff.header.value
    assert "kernel explorer" in ex.header.value and "cpu" in ex.header.value


def test_softmax_and_tiled_matmul_dashboards():
    sm = widgets.Explorer(softmax, S, target="sim")
    assert sm.error.value == "" and "reduce" in sm.ir_text.value
    # no matmul: the tile knobs are off, and say why
    assert sm.knobs.tile[0].disabled and "no matmul" in sm.knobs.tile[0].tooltip
    sm.select_tab("Source")
    assert sm.source.language.value == "cuda" and "__global__" in sm.source.code.value

    mm = widgets.Explorer(matmul, MA, MB, target="sim", schedule={"tile": (32, 32, 8)})
    assert mm.error.value == "" and not mm.knobs.tile[0].disabled
    assert [w.value for w in mm.knobs.tile] == [32, 32, 8]
    mm.select_tab("Tiling")
    html = mm.tiling.html.value
    assert "split(i, 32)" in html and "blockIdx" in html and "loop nest" in html


# ----------------------------------------------------------------------------- knobs
def test_fusion_knobs_change_stage_text_and_source(ex):
    fused_text, src = stage_text(ex, "fused"), source_html(ex)
    assert kernel_count(ex) == 1 and len(ex.source.kernel.options) == 1
    ex.knobs.fuse.value = False
    assert ex.error.value == "" and kernel_count(ex) == 3
    assert stage_text(ex, "fused") != fused_text and "3 kernels" in ex.ir_text.value
    assert source_html(ex) != src and len(ex.source.kernel.options) == 3
    # per-rule boxes do not apply with fusion off, and say so
    rule = ex.knobs.rules["epilogue"]
    assert rule.disabled and "fusion is off" in rule.tooltip
    ex.knobs.fuse.value = True
    assert not rule.disabled and kernel_count(ex) == 1
    rule.value = False  # no epilogue fusion: the matmul is its own kernel
    assert ex.compiled.options.fuse == {**{r: True for r in ex.knobs.rules}, "epilogue": False}
    assert kernel_count(ex) == 2 and "epilogue" in stage_text(ex, "fused")


def test_schedule_knobs_change_tiled_stage():
    e = widgets.Explorer(mlp, X, W_, B, target="sim")
    tiled = stage_text(e, "tiled")
    for knob, value in ((e.knobs.tile[0], 16), (e.knobs.tile[1], 16), (e.knobs.tile[2], 8)):
        knob.value = value
    assert e.compiled.options.schedule == {"tile": (16, 16, 8)}
    t2 = stage_text(e, "tiled")
    assert t2 != tiled and "split(i, 16)" in t2
    e.knobs.thread_tile.value = (2, 2)
    t3 = stage_text(e, "tiled")
    assert t3 != t2 and "split(i_in, 2)" in t3
    e.knobs.unroll.value = False
    t4 = stage_text(e, "tiled")
    assert t4 != t3 and "unroll(" in t3 and "unroll(" not in t4
    e.knobs.double_buffer.value = False
    t5 = stage_text(e, "tiled")
    assert "double_buffer(" in t4 and "double_buffer(" not in t5 and "cache_read" in t5
    e.knobs.shared.value = False
    assert "cache_read" not in stage_text(e, "tiled")
    assert e.knobs.double_buffer.disabled and "shared" in e.knobs.double_buffer.tooltip

    # threads and vector shape the elementwise kernels (unfused graph on the GPU schedule)
    e.knobs.fuse.value = False
    before = stage_text(e, "tiled")
    e.knobs.threads.value = 64
    after = stage_text(e, "tiled")
    assert e.error.value == "" and after != before and "split(n_o, 64)" in after
    e.knobs.vector.value = 2
    assert stage_text(e, "tiled") != after and "split(n, 2)" in e.ir_text.value


def test_target_dtype_scale_fast_math_knobs(ex):
    assert "void" in source_html(ex) and ex.source.language.value == "c"
    # threads/unroll do not apply to the CPU schedule
    assert ex.knobs.threads.disabled and "GPU targets" in ex.knobs.threads.tooltip
    ex.knobs.target.value = "sim"
    assert ex.compiled.target == "sim" and not ex.knobs.threads.disabled
    assert "__global__" in source_html(ex) and ex.source.language.value == "cuda"
    assert ex.knobs.fast_math.disabled and "cpu" in ex.knobs.fast_math.tooltip
    ex.knobs.target.value = "cpu"
    ex.knobs.dtype.value = "float64"
    assert "f64" in stage_text(ex, "traced") and "double" in source_html(ex)
    ex.knobs.dtype.value = "given"  # back to the inputs' own dtype
    ex.knobs.scale.value = 2.0
    assert ex.compiled.examples[0].shape == (128, 32) and "128" in stage_text(ex, "traced")
    assert "float32[128,32]" in ex.header.value
    ex.knobs.fast_math.value = True
    assert ex.compiled.options.fast_math and ex.compiled.stage("codegen").stats.get("fast_math") is True


def test_reference_target_disables_schedule_knobs(ex):
    ex.knobs.target.value = "reference"
    assert ex.error.value == "" and ex.compiled.target == "reference"
    for w in (*ex.knobs.tile, ex.knobs.threads, ex.knobs.vector, ex.knobs.unroll):
        assert w.disabled and "reference" in w.tooltip


def test_knob_error_shows_message_and_keeps_previous_view():
    # M, N >= 256, so the 256 tile is not clamped to a smaller matmul's extents
    big_x, big_w = np.resize(X, (256, 32)), np.resize(W_, (32, 256))
    e = widgets.Explorer(mlp, big_x, big_w, np.resize(B, 256), target="sim")
    e.select_stage("tiled")
    text, compiled, graph = e.ir_text.value, e.compiled, e.graph.html.value
    for w in e.knobs.tile:  # 256x256 block tile with 4x4 per thread = 4096 threads: over the CUDA limit
        w.value = 256
    assert "ScheduleError" in e.error.value and "1024" in e.error.value and "ke-error" in e.error.value
    assert e.compiled is compiled and e.ir_text.value == text and e.graph.html.value == graph
    assert isinstance(e.last_error, explorer.ScheduleError)
    e.knobs.unroll.value = False  # still failing: the tile stays invalid
    assert "ScheduleError" in e.error.value and e.compiled is compiled
    for w in e.knobs.tile:
        w.value = 16
    assert e.error.value == "" and e.compiled is not compiled and e.ir_text.value != text


def test_first_compile_error_is_shown_not_raised():
    e = widgets.Explorer(mlp, X, W_[:5], B, target="cpu")
    assert "ShapeError" in e.error.value and e.compiled is None


# ----------------------------------------------------------------------------- fused view, provenance
def test_fusion_view_boundaries_and_why_not_fused(ex):
    ex.select_tab("Fusion")
    assert "every producer" in ex.fusion.table.value  # one kernel: no boundary
    assert "fused_matmul_add_maximum" in ex.fusion.kernels.value
    ex.knobs.rules["epilogue"].value = False
    table = ex.fusion.table.value
    assert "%3 (matmul)" in table and "%4 (add)" in table and "epilogue" in table
    # the dropdown pair starts on the first boundary and answers why
    assert (ex.fusion.producer.value, ex.fusion.consumer.value) == ("%3", "%4")
    assert "not fused" in ex.fusion.answer.value and "epilogue" in ex.fusion.answer.value
    ex.fusion.producer.value, ex.fusion.consumer.value = "%4", "%6"
    assert "fused" in ex.fusion.answer.value and "not fused" not in ex.fusion.answer.value
    ex.knobs.fuse.value = False
    assert "fuse=False" in ex.fusion.table.value and ex.fusion.table.value.count("<tr>") == 3
    assert "matmul_kernel" in ex.fusion.kernels.value
    if render.have_dot():  # fusion off: the knobs' kernels are the unfused graph; beside it what fusion would do
        assert ex.fusion.unfused_graph.html.value.count('class="cluster"') == 3
        assert ex.fusion.graph.html.value.count('class="cluster"') == 1


def test_provenance_highlights_the_users_lines(ex):
    ex.select_tab("Source")
    assert ex.source.provenance.highlighted == [MLP_LINE]
    shown = re.sub(r"<[^>]+>", "", ex.source.provenance.html.value)
    assert "def mlp" in html.unescape(shown) and "np.maximum" in shown


# ----------------------------------------------------------------------------- source panel
def test_language_switch_compiles_the_other_target_lazily(ex):
    ex.select_tab("Source")
    assert ex.source.current is ex.compiled and ex.source.language.value == "c"
    ex.source.language.value = "cuda"
    assert ex.source.current is not ex.compiled and ex.source.current.target == "sim"
    assert "__global__" in ex.source.code.value
    assert "grid" in ex.source.launch.value
    ex.source.wait()
    assert ex.source.resources.value  # nvcc report, or the note saying nvcc is missing
    ex.source.language.value = "c"
    assert ex.source.current is ex.compiled


def test_edit_and_run(ex):
    ex.select_tab("Source")
    original = ex.source.editor.value
    assert original.startswith("void") or "void" in original
    ex.source.run_edited()
    assert "ke-edit-result" in ex.source.result.value and "generated" in ex.source.result.value
    # a syntax error: the compiler's message with the line, inline
    lines = original.splitlines()
    bad_line = len(lines) // 2
    lines[bad_line - 1] += " int oops = ;"
    ex.source.editor.value = "\n".join(lines)
    ex.source.run_edited()
    res = ex.source.result.value
    assert "CompileError" in res and "ke-error-line" in res and f"line {bad_line}" in res
    ex.source.reset_button.click()
    assert ex.source.editor.value == original and ex.source.result.value == ""


def test_edit_cuda_on_sim_says_what_to_do():
    e = widgets.Explorer(mlp, X, W_, B, target="sim")
    e.select_tab("Source")
    e.source.run_edited()
    assert "switch the language to C" in e.source.result.value


# ----------------------------------------------------------------------------- run and charts
def test_run_panel_reports_error_and_time(ex):
    ex.select_tab("Run")
    assert ex.run_panel.target.value == "cpu"
    ex.run_panel.target.value = "sim"
    assert ex.run_panel.run()
    ex.run_panel.wait()
    assert ex.run_panel.rows and ex.run_panel.rows[0]["target"] == "sim"
    assert ex.run_panel.rows[0]["max abs error"] < 1e-4 and "ke-run-results" in ex.run_panel.results.value
    assert ex.run_panel.progress.bar_style == "success"


def test_charts_from_compare_change_with_knobs(ex):
    ex.select_tab("Charts")
    ex.compare_options = {"repeat": 2, "warmup": 0}
    ex.knobs.target.value = "sim"  # model times: deterministic, no timing noise
    ex.charts.button.click()
    ex.charts.wait()
    assert ex.charts.status.value == "", ex.charts.status.value
    first = (bytes(ex.charts.timing.value), bytes(ex.charts.roofline.value), ex.charts.table.value)
    assert first[0][:4] == b"\x89PNG" and first[1][:4] == b"\x89PNG" and "fused" in first[2]
    ex.knobs.scale.value = 4.0
    assert "previous knobs" in ex.charts.status.value
    ex.charts.button.click()
    ex.charts.wait()
    assert ex.charts.table.value != first[2] and bytes(ex.charts.timing.value) != first[0]
    assert ex.charts.progress.value == 1.0


# ----------------------------------------------------------------------------- panels on their own
def test_panels_standalone(monkeypatch):
    c = explorer.compile(mlp, X, W_, B, target="cpu", verbose=False)
    g = widgets.GraphView(c.stage("fused"))
    assert g.dot == c.stage("fused").dot()
    monkeypatch.setattr(render, "have_dot", lambda: False)
    g2 = widgets.GraphView("digraph { a -> b }")
    assert "apt-get install graphviz" in g2.html.value and "a -&gt; b" in g2.html.value and not g2.has_svg
    d = widgets.StageDiff("a\nb\nc", "a\nB\nc\nd", "one", "two")
    assert (d.added, d.removed) == (2, 1) and "one → two" in d.header.value
    s = widgets.SourceView(c)
    assert s.language.value == "c" and "fused_matmul_add_maximum" in s.code.value
    s.language.value = "cuda"  # the standalone view compiles the other target itself
    assert "__global__" in s.code.value
    cmp = explorer.compare(mlp, X, W_, B, target="sim", repeat=2, warmup=0)
    t = widgets.TimingChart(cmp)
    assert t.timing.value[:4] == b"\x89PNG" and t.roofline.value[:4] == b"\x89PNG"


def test_run_panel_shows_spread_and_unstable_flag(monkeypatch):
    from explorer import measure
    from widgets.panels import run as run_mod
    a = np.ones(32, np.float32)
    panel = run_mod.RunPanel(lambda target: explorer.compile(lambda x: x * 2.0, a, target=target), target="reference",
                             repeat=4)
    assert panel.run()
    panel.wait()
    row = panel.rows[0]
    assert row["n"] == 4 and "–" in row["IQR ms"] and row["vs numpy"].endswith(")")
    assert "IQR ms" in panel.results.value and row["IQR ms"] in panel.results.value

    def noisy(calls, **kw):
        return {n: measure.summarize([0.01, 16.0, 0.02, 9.0, 0.015, 12.0]) for n in calls}
    monkeypatch.setattr(run_mod.measure, "interleaved", noisy)
    assert panel.run()
    panel.wait()
    # the flag first; then, on a <= 2-core machine with threadpoolctl, the NumPy-BLAS line (explorer.blas)
    from explorer import blas
    with blas.during_measurement("auto") as setting:
        pass
    assert panel.rows[0]["note"] == "; ".join(filter(None, [measure.UNSTABLE_TEXT, setting.note]))
    assert html.escape(measure.UNSTABLE_TEXT) in panel.results.value
    # the note is numbered under the table, not a tall cell: the row cites [1], the footnote holds the text
    table, _, below = panel.results.value.partition("</table>")
    assert html.escape(measure.UNSTABLE_TEXT) not in table and "<td style='padding:0 6px;white-space:nowrap'>[1]</td>" in table
    assert "class='ke-run-note'" in below and f"[1] {html.escape(panel.rows[0]['note'])}" in below


def test_timing_chart_shows_spread_and_unstable_flag(monkeypatch):
    import importlib
    from explorer import measure
    C = importlib.import_module("explorer.compare")

    def noisy(calls, **kw):
        return {n: measure.summarize([0.01, 16.0, 0.02, 9.0, 0.015, 12.0] if n == "fused" else [1.0, 1.02, 0.99])
                for n in calls}
    monkeypatch.setattr(C.measure, "interleaved", noisy)
    a = np.linspace(-1, 1, 256, dtype=np.float32)
    t = widgets.TimingChart(explorer.compare(lambda x: np.exp(x) * 2.0, a, target="reference", verbose=False))
    text = html.unescape(t.table.value)
    assert "IQR ms" in text and "fused !" in text and measure.UNSTABLE_TEXT in text
