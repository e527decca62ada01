"""Real-browser tests of the dashboard: JupyterLab in a subprocess, driven by Playwright in the system's
headless Chromium (no browser download). They assert on the rendered page, not on widget attributes.
Recipe and pitfalls: ../shared/ENVIRONMENT.md; the harness: tests/lab_harness.py.

Screenshots of every tab: benchmarks/screenshots.py.
"""
from __future__ import annotations

import re

import pytest

from lab_harness import broken_images, browser_page, mlp_cell, run_all, running_lab, skip_reason

pytestmark = pytest.mark.browser

DEFINE_CELL = mlp_cell(256, 64, 32)  # mlp is defined on line 4 of cell [1]
TRACE_CELL = "print(explorer.trace(mlp, x, w, b).text(provenance=True))"
CPU_CELL = "ex = widgets.Explorer(mlp, x, w, b, target='cpu')\nex"
SIM_CELL = "ex = widgets.Explorer(mlp, x, w, b, target='sim')\nex"


@pytest.fixture
def need_browser():
    why = skip_reason()
    if why:
        pytest.skip(why)


def _tab(dash, title: str):
    dash.locator(f".lm-TabBar-tab:has-text('{title}')").first.click()


def _help_texts() -> list[str]:
    """Every help text of every control of the cpu dashboard (tooltips, per-button tooltips), as its
    Python side knows them: the same dashboard, built here."""
    import numpy as np
    import widgets
    from widgets.panels.knobs import _help
    rng = np.random.default_rng(0)
    x, w, b = (rng.standard_normal(s).astype(np.float32) for s in ((256, 64), (64, 32), (32,)))
    ex = widgets.Explorer(lambda x, w, b: np.maximum(x @ w + b, 0), x, w, b, target="cpu")
    texts = {_help(name, c) for name, c in ex.knobs.controls().items()}

    def walk(widget):
        if getattr(getattr(widget, "layout", None), "display", None) == "none":
            return  # not on the page (e.g. the model-GPU choice, shown on target sim)
        texts.update(t for t in [getattr(widget, "tooltip", None), *(getattr(widget, "tooltips", None) or ())] if t)
        for child in getattr(widget, "children", ()):
            walk(child)
    walk(ex)
    return sorted(texts)


MISSING_HELP_JS = """(helps) => {
    const root = document.querySelector('.ke-explorer');
    const titles = new Set(Array.from(root.querySelectorAll('[title]')).map(e => e.getAttribute('title')));
    const text = root.innerText;
    return helps.filter(h => !titles.has(h) && !text.includes(h));
}"""


def test_cpu_dashboard_help_lesson_charts_and_cell_provenance(need_browser, tmp_path):
    from playwright.sync_api import expect
    with running_lab(tmp_path, [DEFINE_CELL, TRACE_CELL, CPU_CELL]) as lab, browser_page(lab) as page:
        run_all(page, lab)
        dash = page.locator(".jp-OutputArea-output .ke-explorer")
        expect(dash).to_be_visible(timeout=90_000)

        # a function defined in a notebook cell: its traced text names the cell, line and code
        traced = page.locator(".jp-OutputArea-output").filter(has_text="graph mlp").first
        expect(traced).to_contain_text("cell [1], line 4", timeout=30_000)
        expect(traced).to_contain_text("return np.maximum(x @ w + b, 0)")
        assert "ipykernel_" not in traced.inner_text()

        # the graph is drawn, and the stage shown is highlighted from the start
        expect(dash.locator(".ke-graph .ke-svg svg").first).to_be_visible(timeout=30_000)
        expect(dash.locator(".ke-header")).to_contain_text("1 kernel(s)")
        expect(dash.locator(".widget-toggle-button.mod-active:text-is('fused')")).to_be_visible()

        # every knob's help is on the page (a rendered title or visible text), and the knobs that do not
        # apply on the cpu say why in visible text
        assert page.evaluate(MISSING_HELP_JS, _help_texts()) == []
        why = dash.locator(".ke-knob-why").first
        expect(why).to_be_visible()
        expect(why).to_contain_text("tile BM")
        expect(why).to_contain_text("apply to GPU targets")
        assert "tile1" not in dash.inner_text() and "fused_edges" not in dash.inner_text()

        # the fusion lesson: per-edge bytes on both graphs and a sentence made from the numbers
        _tab(dash, "Fusion")
        lesson = dash.locator(".ke-lesson")
        expect(lesson.locator(".ke-lesson-sentence")).to_contain_text("fusion removed 2 round trips of 32.0 KiB",
                                                                      timeout=30_000)
        expect(lesson.locator(".ke-lesson-sentence")).to_contain_text("3 → 1 kernels")
        svgs = lesson.locator(".ke-svg svg")
        expect(svgs).to_have_count(2)
        unfused, fused = svgs.nth(0).text_content(), svgs.nth(1).text_content()
        assert "64.0 KiB · round trip" in unfused and "0 B · fused" in fused
        expect(lesson.locator(".ke-lesson-totals")).to_contain_text("bytes through global memory")

        # Charts before the first run: a placeholder saying what the button does, no broken image
        _tab(dash, "Charts")
        expect(dash.locator(".ke-chart-placeholder")).to_contain_text("Compare fused vs unfused")
        assert broken_images(page) == []

        # fusion off: three kernels, the rule boxes unchecked and disabled, edges say 'fusion off'
        knobs = dash.locator(".ke-knobs")
        knobs.get_by_role("checkbox", name="fusion", exact=True).click()
        expect(dash.locator(".ke-header")).to_contain_text("3 kernel(s)", timeout=30_000)
        rule = knobs.get_by_role("checkbox", name="epilogue", exact=True)
        expect(rule).to_be_disabled()
        expect(rule).not_to_be_checked()
        expect(knobs.locator(".ke-knob-why").filter(has_text="fusion is off")).to_be_visible()
        assert not page.locator(".ke-explorer .ke-error").count()


def test_sim_source_tab_run_edited_and_compile_error(need_browser, tmp_path):
    from playwright.sync_api import expect
    with running_lab(tmp_path, [DEFINE_CELL, SIM_CELL]) as lab, browser_page(lab) as page:
        run_all(page, lab)
        dash = page.locator(".jp-OutputArea-output .ke-explorer")
        expect(dash).to_be_visible(timeout=90_000)
        _tab(dash, "Source")
        source = dash.locator(".ke-source")
        expect(source.locator(".ke-code")).to_contain_text("__global__", timeout=30_000)
        # sim cannot build source: Run edited is disabled and the reason is on the page
        expect(source.locator("button:has-text('Run edited')")).to_be_disabled()
        expect(source.locator(".ke-run-why")).to_contain_text("switch the language to C")

        # C on this CPU: edit one line so it does not compile; the error quotes the editor's line
        source.locator(".widget-toggle-button:text-is('C')").click()
        expect(source.locator(".ke-code")).to_contain_text("void fused_matmul_add_maximum", timeout=30_000)
        expect(source.locator("button:has-text('Run edited')")).to_be_enabled()
        source.locator(".widget-toggle-button:text-is('edit')").click()
        editor = source.locator(".ke-editor textarea")
        expect(editor).to_be_visible()
        expect(source.locator(".ke-code")).to_be_hidden()  # the source is on the page once
        text = editor.input_value()
        lines = text.split("\n")
        n = next(i for i, ln in enumerate(lines) if re.search(r"\bout0\[.*\]\s*=", ln))
        lines[n] = lines[n].rstrip().rstrip(";") + " oops;"
        editor.fill("\n".join(lines))
        source.locator("button:has-text('Run edited')").click()
        err = source.locator(".ke-error-line")
        expect(err).to_contain_text(f"line {n + 1}:", timeout=60_000)
        expect(err).to_contain_text("oops")
        result = source.locator(".ke-error").first.inner_text()
        assert "/root/" not in result and "kernel-explorer/cpu" not in result and "kernels.c:" not in result


SOFTMAX_LAYER_CELL = """\
def softmax_layer(x, w):
    s = x @ w
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)

ex2 = widgets.Explorer(softmax_layer, x, w, target='cpu')
ex2"""


def test_vectorized_stage_and_refusal_codes_as_rendered(need_browser, tmp_path):
    """The vectorized stage on the cpu shows the matmul's micro-kernel (help line, IR text, a folded diff
    against tiled); an unfused pair shows its refusal code with what the code means."""
    from playwright.sync_api import expect
    # 512x64 @ 64x64 is above the small-matmul threshold, so its k loop becomes a register-tiled micro-kernel
    cells = [mlp_cell(512, 64, 64), CPU_CELL, SOFTMAX_LAYER_CELL]
    with running_lab(tmp_path, cells) as lab, browser_page(lab) as page:
        run_all(page, lab)
        dashes = page.locator(".jp-OutputArea-output .ke-explorer")
        expect(dashes).to_have_count(2, timeout=120_000)
        mlp_dash, sm_dash = dashes.nth(0), dashes.nth(1)

        mlp_dash.locator(".widget-toggle-button:text-is('vectorized')").click()
        help_line = mlp_dash.locator(".ke-stage-help")
        expect(help_line).to_contain_text("vectorized on cpu", timeout=30_000)
        expect(help_line).to_contain_text("microkernel")
        expect(help_line.locator(".ke-stage-here")).to_contain_text("1 register-tiled micro-kernel (mk0 in "
                                                                    "fused_matmul_add_maximum: over loop k")
        _tab(mlp_dash, "IR text")
        expect(mlp_dash.locator(".ke-ir")).to_contain_text("microkernel mk0 (register tiles acc")
        _tab(mlp_dash, "Diff vs previous")
        diff = mlp_dash.locator(".ke-diff")
        expect(diff).to_contain_text("tiled → vectorized")
        added = diff.locator(".ke-add").filter(has_text="microkernel mk0")
        expect(added).to_be_in_viewport()  # on screen without scrolling: the unchanged lines before it are folded
        expect(diff.locator(".ke-fold summary").first).to_contain_text("unchanged lines")
        assert diff.locator(".ke-del").filter(has_text="for k in range(64)").count() == 1

        # softmax(x @ w): the max reduction cannot join the matmul's kernel; the code is explained
        _tab(sm_dash, "Fusion")
        table = sm_dash.locator(".ke-boundaries")
        expect(table).to_contain_text("reduce_with_contraction", timeout=30_000)
        legend = sm_dash.locator(".ke-refusal-legend")
        expect(legend).to_contain_text("reduce_with_contraction: a reduction and a matmul never share a kernel")
        expect(sm_dash.locator(".ke-why-code")).to_contain_text("refusal code reduce_with_contraction: a reduction")
        assert "categories" not in sm_dash.locator(".ke-lesson").inner_text()  # edge labels say what was refused
        assert not page.locator(".ke-explorer .ke-error").count()
