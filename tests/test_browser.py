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
