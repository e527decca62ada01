"""Screenshots of every dashboard tab, on targets cpu and sim, taken in real JupyterLab + Chromium.

    .venv/bin/python benchmarks/screenshots.py            # writes docs/images/dashboard_<target>_<tab>.png
    .venv/bin/python benchmarks/screenshots.py --out /tmp/shots --targets sim
    .venv/bin/python benchmarks/screenshots.py --only stages   # just the stage and refusal close-ups below

Besides one picture per tab, close-ups of what a learner looks for after issue 14: the `vectorized`
stage against `tiled` (dashboard_<target>_vectorized_diff.png: on cpu the matmul's micro-kernel, on
sim float4 loads in an elementwise kernel with the unroll knob off) and the refusal codes of
softmax(x @ w) on the Fusion tab (dashboard_cpu_fusion_refusals.png).

Each tab is shown as a learner would first see it, with one measurement on the Charts tab (so the
Fusion tab's lesson has its time too) and one short
search on the Autotune tab. Needs Chromium (tests/setup_browser.py) and playwright.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from lab_harness import broken_images, browser_page, mlp_cell, run_all, running_lab, skip_reason  # noqa: E402

TABS = ("Stages", "Fusion", "Tiling", "Source", "Run", "Charts", "Autotune")
AUTOTUNE_BUDGET_S = 8.0  # a short search: enough rounds for the table, heatmap and scatter


def small_png(path: Path) -> None:
    """Rewrite a screenshot with a 256-colour palette (no dithering): text and flat colours look the same,
    the file is 2-3x smaller. Pillow comes with matplotlib (the notebook extra); without it the file stays."""
    try:
        from PIL import Image
    except ImportError:
        return
    with Image.open(path) as im:
        small = im.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    small.save(path, optimize=True)


def dashboard_cell(target: str) -> str:
    return mlp_cell(4096, 64, 64) + f"ex = widgets.Explorer(mlp, x, w, b, target={target!r})\nex\n"


def shoot(target: str, out: Path) -> list[Path]:
    from playwright.sync_api import expect
    written = []
    with tempfile.TemporaryDirectory() as tmp, running_lab(Path(tmp), [dashboard_cell(target)]) as lab, \
            browser_page(lab, width=1500, height=1300) as page:
        run_all(page, lab)
        dash = page.locator(".jp-OutputArea-output .ke-explorer")
        expect(dash).to_be_visible(timeout=90_000)
        expect(dash.locator(".ke-graph .ke-svg svg").first).to_be_visible(timeout=60_000)
        page.locator(".jp-Cell-inputWrapper").first.evaluate("e => e.style.display = 'none'")  # the dashboard only
        # one measurement first, so the Fusion tab shows the time as well
        dash.locator(".lm-TabBar-tab:has-text('Charts')").first.click()
        dash.locator("button:has-text('Compare fused vs unfused')").click()
        expect(dash.locator(".ke-compare-table")).to_be_visible(timeout=240_000)
        for tab in TABS:
            dash.locator(f".lm-TabBar-tab:has-text('{tab}')").first.click()
            if tab == "Run":
                dash.locator(".ke-run button:has-text('Run')").click()
                expect(dash.locator(".ke-run-results")).to_be_visible(timeout=240_000)
            if tab == "Autotune":
                assert broken_images(page) == [], broken_images(page)  # before the first search too
                budget = dash.locator(".ke-autotune input").first
                budget.fill(str(AUTOTUNE_BUDGET_S))
                budget.press("Enter")
                dash.locator(".ke-autotune button:has-text('Autotune')").click()
                expect(dash.locator(".ke-autotune-table")).to_be_visible(timeout=300_000)
            if tab == "Source" and target == "sim":
                time.sleep(3)  # the nvcc resource report arrives from a worker
            page.wait_for_timeout(800)
            assert broken_images(page) == [], broken_images(page)
            path = out / f"dashboard_{target}_{tab.lower()}.png"
            dash.screenshot(path=str(path))
            small_png(path)
            written.append(path)
            print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return written


SOFTMAX_LAYER = """
def softmax_layer(x, w):
    s = x @ w
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)

def scaled_exp(x):
    return np.exp(x) * 2.0
"""


def _tabs_only(dash):
    """The tab area (without the knobs column): the close-ups stay small."""
    return dash.locator(".widget-tab").first


def shoot_close_ups(target: str, out: Path) -> list[Path]:
    from playwright.sync_api import expect
    if target == "cpu":   # the MLP: its k loop becomes a register-tiled micro-kernel
        cells = [mlp_cell(4096, 64, 64) + SOFTMAX_LAYER + "ex = widgets.Explorer(mlp, x, w, b, target='cpu')\nex\n",
                 "ex2 = widgets.Explorer(softmax_layer, x, w, target='cpu')\nex2\n"]
    else:                 # float4 needs a vectorized loop: GPU schedules unroll unless the unroll knob is off
        cells = [mlp_cell(4096, 64, 64) + SOFTMAX_LAYER
                 + f"ex = widgets.Explorer(scaled_exp, x, target={target!r}, schedule={{'unroll': False}})\nex\n"]
    written = []
    with tempfile.TemporaryDirectory() as tmp, running_lab(Path(tmp), cells) as lab, \
            browser_page(lab, width=1500, height=1900) as page:   # tall: the Fusion tab's legend fits
        run_all(page, lab)
        dashes = page.locator(".jp-OutputArea-output .ke-explorer")
        expect(dashes).to_have_count(len(cells), timeout=120_000)
        page.locator(".jp-Cell-inputWrapper").evaluate_all("es => es.forEach(e => e.style.display = 'none')")
        dash = dashes.nth(0)
        dash.locator(".widget-toggle-button:text-is('vectorized')").click()
        dash.locator(".lm-TabBar-tab:has-text('Diff vs previous')").first.click()
        expect(dash.locator(".ke-diff .ke-add").first).to_be_visible(timeout=30_000)
        page.wait_for_timeout(800)
        shots = [(_tabs_only(dash), f"dashboard_{target}_vectorized_diff.png")]
        if target == "cpu":
            sm = dashes.nth(1)
            sm.locator(".lm-TabBar-tab:has-text('Fusion')").first.click()
            expect(sm.locator(".ke-refusal-legend")).to_be_visible(timeout=30_000)
            shots.append((sm.locator(".ke-fusion"), "dashboard_cpu_fusion_refusals.png"))
        for loc, name in shots:
            loc.scroll_into_view_if_needed()
            page.wait_for_timeout(500)
            path = out / name
            loc.screenshot(path=str(path))
            small_png(path)
            written.append(path)
            print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return written


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    ap.add_argument("--targets", nargs="+", default=["cpu", "sim"])
    ap.add_argument("--only", choices=["tabs", "stages"], help="only the tab pictures, or only the close-ups")
    args = ap.parse_args()
    why = skip_reason()
    if why:
        print(f"cannot take screenshots: {why}")
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    for t in args.targets:
        if args.only != "stages":
            shoot(t, args.out)
        if args.only != "tabs":
            shoot_close_ups(t, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
