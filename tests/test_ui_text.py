"""Headless tests of every word the dashboard puts on the page: knob labels and help, the reasons a
knob does not apply, stat names, the fusion lesson's sentence, the provenance of notebook cells,
compile logs in the editor's terms, and what each timing is called."""
from __future__ import annotations

import html
import re
import sys
import types

import numpy as np
import pytest

import explorer
from explorer.graph import Provenance, notebook_cell
from explorer.lesson import FusionSummary, fusion_summary, speedup_spread
from explorer.passes.fusion import RULE_DOCS, fuse
from explorer.schedule import KNOBS

pytest.importorskip("ipywidgets")
pytest.importorskip("pygments")

from widgets.panels import knobs as K  # noqa: E402
from widgets.panels._util import format_stats, strip_paths  # noqa: E402


def mlp(x, w, b):
    return np.maximum(x @ w + b, 0)


RNG = np.random.default_rng(0)
X, W_, B = (RNG.standard_normal((64, 32)).astype(np.float32), RNG.standard_normal((32, 16)).astype(np.float32),
            RNG.standard_normal(16).astype(np.float32))


def chain(a, b):
    return np.exp(a) * b + 1


A1 = np.ones(1 << 12, np.float32)


def _text(h: str) -> str:
    return re.sub(r"\s+:", ":", html.unescape(re.sub(r"<[^>]+>", " ", h)))


# ----------------------------------------------------------------------------- knob labels and help
def test_every_control_has_a_friendly_label_and_its_help_as_a_rendered_title():
    k = K.KnobPanel(target="cpu")
    for name, w in k.controls().items():
        lab = K.label(name)
        assert "_" not in lab and not re.fullmatch(r"tile\d", lab), (name, lab)
        # the label is the description, and its title attribute holds the help (rendered on the page)
        assert w.description_allow_html
        assert f'title="{html.escape(K._help(name, w))}"' in w.description and f">{html.escape(lab)}<" in w.description
    assert [K.label(f"tile{i}") for i in range(3)] == ["tile BM", "tile BN", "tile BK"]
    assert K.label("double_buffer") == "2x buffer" and K.label("rule:epilogue") == "epilogue"


def test_help_texts_come_from_explorer():
    k = K.KnobPanel(target="cpu")
    assert K._help("threads", k.threads) == KNOBS["threads"]
    assert K._help("tile1", k.tile[1]).startswith(KNOBS["tile"])
    assert all(K._help(f"rule:{r}", k.rules[r]) == RULE_DOCS[r] for r in k.rules)


def _notes(k: K.KnobPanel) -> dict[str, str]:
    return {g: _text(h.value) for g, h in k.notes.items()}


def test_reasons_on_cpu_are_written_under_the_schedule_group():
    k = K.KnobPanel(target="cpu")
    k.update_applicability(True)
    notes = _notes(k)
    assert notes["knobs"] == "" and notes["fusion"] == ""
    for lab in ("tile BM", "tile BN", "tile BK", "threads", "unroll", "shared", "2x buffer", "wmma"):
        assert lab in notes["schedule"], lab
    assert "apply to GPU targets (cuda, sim) only" in notes["schedule"]
    assert "reg tile," not in notes["schedule"] and not k.thread_tile.disabled and not k.vector.disabled


def test_reasons_per_rule():
    k = K.KnobPanel(target="sim")
    k.update_applicability(False)  # no matmul
    assert "no matmul in this function" in _notes(k)["schedule"] and "fast math" in _notes(k)["knobs"]
    assert k.tile[0].disabled and not k.threads.disabled
    k.update_applicability(True)
    k.shared.value = False
    k.update_applicability()
    assert "double buffering needs shared-memory staging" in _notes(k)["schedule"]
    assert "tensor cores load their WMMA fragments" in _notes(k)["schedule"]
    k.target.value = "reference"
    k.update_applicability()
    assert "target 'reference' runs NumPy" in _notes(k)["schedule"] and k.vector.disabled


def test_fusion_off_unchecks_the_rules_and_says_why_then_restores_them():
    k = K.KnobPanel(target="cpu", fuse={"epilogue": False})
    k.fuse.value = False
    k.update_applicability()
    assert [w.value for w in k.rules.values()] == [False] * len(k.rules) and all(w.disabled for w in k.rules.values())
    assert "fusion is off" in _notes(k)["fusion"] and k.kwargs()["fuse"] is False
    k.fuse.value = True
    k.update_applicability()
    assert k.rules["epilogue"].value is False and k.rules["elementwise"].value is True
    assert k.kwargs()["fuse"]["epilogue"] is False and _notes(k)["fusion"] == ""


def test_knob_errors_use_the_friendly_name(monkeypatch):
    import widgets
    ex = widgets.Explorer(mlp, X, W_, B, target="cpu")

    def fail(*a, **kw):
        raise explorer.ScheduleError("tile too large")
    monkeypatch.setattr(explorer, "compile", fail)
    ex._cache.clear()
    ex.knobs.vector.value = 4
    assert "changed vector" in _text(ex.error.value)
    ex._on_knob("tile1")
    assert "changed tile BN" in _text(ex.error.value) and "tile1" not in ex.error.value


def test_stats_show_friendly_names_and_bytes():
    shown = _text(format_stats({"fused_edges": 2, "intermediate_bytes": 65536, "kernels_by_kind": {"multi_reduce": 1},
                                "wall_ms": 0.5, "fast_math": False}))
    assert "fused edges: 2" in shown and "intermediate bytes: 64.0 KiB" in shown
    assert "multi reduce: 1" in shown and "pass time (ms)" in shown and "fast math: off" in shown
    assert "_" not in shown


# ----------------------------------------------------------------------------- the fusion lesson
def test_edges_carry_bytes_fused_zero_unfused_round_trip():
    g = explorer.trace(chain, A1, A1)
    fused, unfused = fuse(g), fuse(g, rules=False)
    hows = sorted(how for _, how in fused.edge_traffic().values())
    assert hows == ["fused", "fused", "inlined", "read", "read"]
    assert {b for b, how in fused.edge_traffic().values() if how == "fused"} == {0}
    trips = [b for b, how in unfused.edge_traffic().values() if how == "round trip"]
    assert trips == [2 * A1.nbytes, 2 * A1.nbytes]
    assert "0 B · fused" in fused.dot() and "32.0 KiB · round trip" in unfused.dot()
    # fusion off reads "fusion off", not the name of one rule
    assert "fusion off" in unfused.dot() and "rule off" not in unfused.dot()
    assert "rule off: elementwise" in fuse(g, rules={"elementwise": False}).dot()


def test_summary_counts_kernels_launches_bytes_and_round_trips():
    c = explorer.compile(chain, A1, A1, target="cpu", verbose=False)
    s = fusion_summary(c)
    assert s.kernels == (3, 1) and s.launches == (3, 1) and s.round_trips_removed == 2
    assert s.removed_sizes == [A1.nbytes, A1.nbytes]
    # unfused: exp reads a, writes t; mul reads t, b, writes u; add reads u, writes out — 7 arrays
    assert s.bytes_moved == (7 * A1.nbytes, 3 * A1.nbytes)
    assert s.sentence() == ("fusion removed 2 round trips of 16.0 KiB each through global memory: 3 → 1 kernels, "
                            "112.0 KiB → 48.0 KiB moved; measure to see the time.")


def _summary(**kw) -> FusionSummary:
    base = dict(name="f", kernels=(3, 1), launches=(3, 1), bytes_moved=(6 << 20, 2 << 20), round_trips_removed=2,
                removed_sizes=[1 << 20, 1 << 20])
    return FusionSummary(**{**base, **kw})


@pytest.mark.parametrize("kw, want", [
    (dict(speedup=1.4, spread=0.05), "3 → 1 kernels, 6.0 MiB → 2.0 MiB moved, 1.4x faster (±0.05, measured)."),
    (dict(speedup=0.8, spread=None), "1.2x slower (measured)."),
    (dict(speedup=6.0, measured=False, device="NVIDIA A100"), "6x faster (roofline model of NVIDIA A100, not measured)."),
    # a model's zero spread is not shown (the sim dashboard said "2.1x faster (±0.00, roofline model ...)")
    (dict(speedup=2.1, spread=0.0, measured=False, device="NVIDIA A100"),
     "2.1x faster (roofline model of NVIDIA A100, not measured)."),
    (dict(speedup=1.3, spread=0.2, unstable=True), "1.3x faster (±0.20, measured, timing unstable: re-measure)."),
    (dict(speedup=14.0), "14x faster (measured)."),
    (dict(removed_sizes=[1 << 20, 2 << 20]), "fusion removed 2 round trips (3.0 MiB in all) through global memory"),
    (dict(round_trips_removed=1, removed_sizes=[1 << 10]), "fusion removed 1 round trip of 1.0 KiB through"),
    (dict(kernels=(1, 1), launches=(1, 1), round_trips_removed=0, removed_sizes=[]),
     "fusion changed nothing here: 1 → 1 kernel (no intermediate to keep out of global memory)."),
    (dict(kernels=(2, 1), round_trips_removed=0, removed_sizes=[]),
     "fusion removed no round trip through global memory but merged kernels: 2 → 1 kernels"),
])
def test_sentence_rules(kw, want):
    assert want in _summary(**kw).sentence()


def test_speedup_spread_from_quartiles():
    T = types.SimpleNamespace
    assert speedup_spread(T(median_ms=1.0, q1_ms=None, q3_ms=None), T(median_ms=2.0, q1_ms=None, q3_ms=None)) == (2.0, None)
    speed, spread = speedup_spread(T(median_ms=1.0, q1_ms=0.9, q3_ms=1.1), T(median_ms=2.0, q1_ms=1.9, q3_ms=2.1))
    assert speed == 2.0 and spread == pytest.approx((2.1 / 0.9 - 1.9 / 1.1) / 2, abs=1e-4)


def test_fusion_view_draws_both_graphs_totals_and_sentence():
    from widgets.panels.fusion import FusionView
    v = FusionView(explorer.compile(mlp, X, W_, B, target="cpu", verbose=False))
    assert "fusion removed 2 round trips of 4.0 KiB each" in _text(v.sentence.value)
    totals = _text(v.totals.value)
    assert "launches per call" in totals and "bytes through global memory" in totals and "press Measure" in totals
    assert "round trip" in v.unfused_graph.dot and "0 B · fused" in v.graph.dot


# ----------------------------------------------------------------------------- provenance of notebook cells
def test_notebook_cell_files_are_named_by_their_execution_count(monkeypatch):
    cell_file = "/tmp/ipykernel_4242/669796501.py"
    shell = types.SimpleNamespace(compile=types.SimpleNamespace(_filename_map={cell_file: 3}))
    fake = types.ModuleType("IPython")
    fake.get_ipython = lambda: shell
    monkeypatch.setitem(sys.modules, "IPython", fake)
    assert notebook_cell(cell_file) == 3
    p = Provenance(cell_file, 2, "f", "    return np.exp(x)")
    assert p.short() == "cell [3], line 2" and str(p) == "cell [3], line 2  return np.exp(x)"
    # a cell IPython does not know (another kernel's) still reads as a cell, never as a temp-file name
    assert Provenance("/tmp/ipykernel_1/123.py", 4, "f", "").short() == "cell, line 4"
    assert Provenance("<ipython-input-7-0123abcd>", 1, "f", "").short() == "cell [7], line 1"
    assert Provenance("/home/u/model.py", 12, "f", "").short() == "model.py:12"


def test_traced_text_of_a_cell_function_names_the_cell(monkeypatch):
    import linecache
    cell_file = "/tmp/ipykernel_4242/1234.py"
    src = "import numpy as np\ndef f(x):\n    return np.exp(x) * 2\n"
    linecache.cache[cell_file] = (len(src), None, src.splitlines(True), cell_file)
    ns: dict = {}
    exec(compile(src, cell_file, "exec"), ns)
    shell = types.SimpleNamespace(compile=types.SimpleNamespace(_filename_map={cell_file: 5}))
    fake = types.ModuleType("IPython")
    fake.get_ipython = lambda: shell
    monkeypatch.setitem(sys.modules, "IPython", fake)
    from widgets.panels.source import ProvenanceView
    try:
        text = explorer.trace(ns["f"], np.ones(4, np.float32)).text(provenance=True)
        title = _text(ProvenanceView(ns["f"]).title.value)
    finally:
        linecache.cache.pop(cell_file, None)
    assert "# cell [5], line 3  return np.exp(x) * 2" in text and "1234.py" not in text
    assert "(cell [5])" in title and "your function" in title


def test_constants_print_short():
    text = explorer.trace(lambda x: x * 1.01 + 0.1, np.ones(3, np.float32)).text()
    assert "const 1.01" in text and "const 0.1" in text and "0999" not in text and "00000" not in text


# ----------------------------------------------------------------------------- source tab words
def test_compile_log_in_editor_lines_without_paths():
    from widgets.panels.source import map_compile_log
    log = ("/root/.cache/kernel-explorer/cpu/build-x1/kernels.c: In function 'k':\n"
           "/root/.cache/kernel-explorer/cpu/build-x1/kernels.c:229:116: error: expected ';'\n"
           "  229 |     out0[i] = 1\n  230 |   }")
    got = map_compile_log(log, 74)
    assert "/root" not in got and "kernels.c:229" not in got
    assert "line 74:116: error" in got and "  74 |     out0[i] = 1" in got and "  75 |   }" in got
    assert strip_paths("cannot open /tmp/a/b/c.so: x") == "cannot open c.so: x"


def test_run_edited_is_disabled_with_its_reason_on_sim():
    from widgets.panels.source import SourceView, cannot_build_reason, epilogue_lines
    sim = explorer.compile(mlp, X, W_, B, target="sim", verbose=False)
    v = SourceView(sim)
    assert v.run_button.disabled and "switch the language to C" in _text(v.run_note.value)
    assert cannot_build_reason(explorer.compile(mlp, X, W_, B, target="cpu", verbose=False)) is None
    v.language.value = "c"
    assert not v.run_button.disabled and v.run_note.value == ""
    src = v.selected_kernel().source
    epi = epilogue_lines(src)
    assert epi and all("out0[" in src.splitlines()[n - 1] for n in epi)
    assert f"{epi[0]}" in _text(v.epilogue.value)
    # shown once: the editor is hidden until "edit"
    assert v.editor_box.layout.display == "none" and v.code.layout.display != "none"
    v.mode.value = "edit"
    assert v.editor_box.layout.display == "flex" and v.code.layout.display == "none"
    assert _text(v.gutter.value).split()[:3] == ["1", "2", "3"]


def test_charts_placeholder_until_the_first_comparison():
    from widgets.panels.charts import TimingChart
    t = TimingChart()
    assert "Compare fused vs unfused" in _text(t.placeholder.value)
    assert t.timing.layout.display == t.bytes.layout.display == t.roofline.layout.display == "none"


def test_structural_diff_between_stages_of_different_kind():
    from widgets.panels.diff import StageDiff
    c = explorer.compile(mlp, X, W_, B, target="cpu", verbose=False)
    d = StageDiff()
    d.set_stages(c.stage("simplified"), c.stage("fused"))
    assert "ke-structural-diff" in d.html.value and "matmul(x, w)" in _text(d.html.value)
    d.set_stages(c.stage("fused"), c.stage("lowered"))
    assert "for i in range" in _text(d.html.value)
    d.set_stages(c.stage("lowered"), c.stage("tiled"))
    assert "ke-structural-diff" not in d.html.value and "lines" in _text(d.header.value)


def test_with_fusion_off_the_lesson_says_what_fusion_would_do():
    from widgets.panels.fusion import FusionView
    off = explorer.compile(chain, A1, A1, target="cpu", fuse=False, verbose=False)
    s = fusion_summary(off)
    assert s.fusion_off and s.kernels == (3, 1)
    assert s.sentence() == ("fusion is off: 3 kernels and 2 round trips through global memory; turned on, "
                            "fusion would make it 3 → 1 kernels.")
    v = FusionView(off)
    assert "it is off in the knobs" in v.fused_caption.value and "0 B · fused" in v.graph.dot
    assert "fusion is off" in _text(v.sentence.value)


def test_summary_takes_time_spread_and_flag_from_the_comparison():
    T = types.SimpleNamespace
    variants = {"fused": T(median_ms=1.0, q1_ms=0.9, q3_ms=1.1, measured=True, unstable=False),
                "unfused": T(median_ms=1.4, q1_ms=1.3, q3_ms=1.5, measured=True, unstable=False)}
    cmp = T(variant=variants.__getitem__, device=T(name="this CPU"))
    c = explorer.compile(chain, A1, A1, target="cpu", verbose=False)
    s = fusion_summary(c, comparison=cmp)
    assert s.time_ms == (1.4, 1.0) and s.speedup == 1.4 and s.spread == pytest.approx((1.5 / 0.9 - 1.3 / 1.1) / 2, abs=1e-4)
    assert "1.4x faster (±0.24, measured)" in s.sentence()
    # explorer.measure's Ratio (compare's speedup_range), when present, is the one used, with its flag
    cmp.speedup_range = T(value=1.38, low=1.2, high=1.5, unstable=True)
    s = fusion_summary(c, comparison=cmp)
    assert s.speedup == 1.38 and s.spread == pytest.approx(0.15) and s.unstable
    assert "1.4x faster (±0.15, measured, timing unstable: re-measure)" in s.sentence()
    assert [r[0] for r in s.rows()][-1] == "time (median)"


# ----------------------------------------------------------------------------- the vectorized stage, refusal codes
def test_stage_help_says_what_vectorized_did_or_why_not(monkeypatch):
    from widgets.panels.stagehelp import stage_help, vectorized_summary
    from explorer.schedules import cpu as cpu_schedules
    # the 32-byte register tile (6 x 2 vectors) whatever the host has: AVX-512 hosts take 6 x 4 zmm vectors
    monkeypatch.setattr(cpu_schedules, "native_vector_bytes", lambda: 32)
    a = np.ones((512, 64), np.float32)
    c = explorer.compile(lambda x, w: x @ w, a, np.ones((64, 64), np.float32), target="cpu", verbose=False)
    assert "microkernel" in stage_help("vectorized", "cpu") and "float4" in stage_help("vectorized", "sim")
    assert vectorized_summary(c.stage("tiled").ir, c.stage("vectorized").ir, "cpu").startswith(
        "here: 1 register-tiled micro-kernel (mk0 in matmul_kernel: over loop k")
    from widgets.panels.tiling import TilingView
    tiling = " ".join(_text(TilingView(c).html.value).split())
    assert "next stage, vectorized: micro-kernel mk0 over loop k, 12 vector registers" in tiling
    row_sum = explorer.compile(lambda x: x.sum(axis=-1), a, target="cpu", verbose=False)
    assert "1 reduction kept in per-lane accumulators" in vectorized_summary(
        row_sum.stage("tiled").ir, row_sum.stage("vectorized").ir, "cpu")
    sim = explorer.compile(lambda x: np.exp(x) * 2, a, target="sim", verbose=False)
    assert "nothing changed" in vectorized_summary(sim.stage("tiled").ir, sim.stage("vectorized").ir, "sim")
    f4 = explorer.compile(lambda x: np.exp(x) * 2, a, target="sim", schedule={"unroll": False}, verbose=False)
    assert vectorized_summary(f4.stage("tiled").ir, f4.stage("vectorized").ir, "sim") == "here: 1 float4 block"


def test_diff_folds_long_unchanged_runs():
    from widgets.panels.diff import StageDiff
    before = "\n".join(f"line {i}" for i in range(40))
    d = StageDiff(before, before.replace("line 30", "LINE 30"))
    assert (d.added, d.removed) == (1, 1)
    assert "… 27 unchanged lines" in _text(d.html.value)   # lines 0-26 folded, 27-29 kept as context
    assert "line 27" in d.html.value.split("</details>")[1]
    same = StageDiff(before, before)
    assert "ke-fold" not in same.html.value and "left the text as it was" in _text(same.header.value)


def test_boundary_table_explains_its_refusal_codes():
    from widgets.panels.fusion import FusionView

    def softmax_layer(x, w):
        s = x @ w
        e = np.exp(s - s.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)
    v = FusionView(explorer.compile(softmax_layer, X, W_, target="cpu", verbose=False))
    table = _text(v.table.value)
    assert "reduce_with_contraction" in table and "cycle" in table
    assert "reduce_with_contraction: a reduction and a matmul never share a kernel" in table
    assert "cycle: the merged kernel would wait for itself" in table
    assert "categories" not in v.graph.dot and "reduce + matmul" in v.graph.dot
