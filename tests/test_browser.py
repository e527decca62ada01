"""Real-browser test of the dashboard: JupyterLab in a subprocess, driven by Playwright in the system's
headless Chromium (no browser download). Recipe and pitfalls: ../shared/ENVIRONMENT.md.

Set KE_SAVE_SCREENSHOT=1 to write docs/dashboard.png (the README's screenshot).
"""
from __future__ import annotations

import importlib.util
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
NOTEBOOK_CODE = """\
import numpy as np, widgets

def mlp(x, w, b):
    return np.maximum(x @ w + b, 0)

rng = np.random.default_rng(0)
x = rng.standard_normal((256, 64)).astype(np.float32)
w = rng.standard_normal((64, 32)).astype(np.float32)
b = rng.standard_normal(32).astype(np.float32)
ex = widgets.Explorer(mlp, x, w, b)
ex
"""


def _skip_reason() -> str | None:
    if not os.path.exists(CHROMIUM):
        return (f"Chromium is not installed at {CHROMIUM}: run `.venv/bin/python tests/setup_browser.py` as root "
                "(apt-get install chromium)")
    for mod in ("playwright", "jupyterlab", "ipykernel", "nbformat"):
        if importlib.util.find_spec(mod) is None:
            return f"{mod} is not installed: pip install -e '.[test]'"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get_json(url: str):
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read().decode())


def _wait_until(cond, timeout: float, what: str, proc: subprocess.Popen | None = None):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"JupyterLab exited early while waiting for {what} (rc={proc.returncode})")
        try:
            got = cond()
        except OSError:  # server not up yet / connection reset: try again
            got = None
        if got:
            return got
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture
def lab(tmp_path):
    why = _skip_reason()
    if why:
        pytest.skip(why)
    import nbformat
    spec = importlib.util.spec_from_file_location("setup_browser", ROOT / "tests" / "setup_browser.py")
    setup = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(setup)
    setup.write_lab_overrides()  # no "Jupyter news" toast over the dashboard

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(NOTEBOOK_CODE)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nbformat.write(nb, tmp_path / "dashboard.ipynb")

    token, port = secrets.token_hex(16), _free_port()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "JUPYTER_CONFIG_DIR": str(tmp_path / ".jupyter"), "JUPYTER_RUNTIME_DIR": str(tmp_path / ".runtime")}
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}", "--ServerApp.ip=127.0.0.1",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={tmp_path}",
           "--ServerApp.port_retries=0", "--LabApp.news_url=", "--LabApp.check_for_updates_class="
           "jupyterlab.NeverCheckForUpdate"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    log = open(tmp_path / "lab.log", "wb")
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_until(lambda: _get_json(f"{base}/api/status?token={token}"), 60, "JupyterLab to start", proc)
        yield {"base": base, "token": token, "proc": proc}
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        # pytest shows captured output only when the test fails: the server's log tail explains why
        print((tmp_path / "lab.log").read_text(errors="replace")[-3000:])


def test_dashboard_renders_in_jupyterlab(lab):
    from playwright.sync_api import expect, sync_playwright
    base, token = lab["base"], lab["token"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1100})
            page.goto(f"{base}/lab/tree/dashboard.ipynb?token={token}")
            page.wait_for_selector(".jp-Notebook", timeout=60_000)

            # Race (ENVIRONMENT.md): wait for a connected, idle kernel before Run All.
            def kernel_ready():
                ks = _get_json(f"{base}/api/kernels?token={token}")
                return any(k.get("connections", 0) >= 1 and k.get("execution_state") == "idle" for k in ks)
            _wait_until(kernel_ready, 90, "the notebook's kernel", lab["proc"])
            page.click(".lm-MenuBar-itemLabel:text-is('Run')")
            page.click(".lm-Menu-itemLabel:text-is('Run All Cells')")

            dash = page.locator(".jp-OutputArea-output .ke-explorer")
            expect(dash).to_be_visible(timeout=90_000)
            # The graph: graphviz's SVG inline in the widget's HTML (a real <svg>, not an <img>).
            svg = dash.locator(".ke-graph .ke-svg svg")
            expect(svg).to_be_visible(timeout=30_000)
            assert svg.locator("g.node").count() >= 3
            expect(dash.locator(".ke-header")).to_contain_text("1 kernel(s)")
            expect(dash.locator(".ke-header")).to_contain_text("mlp")
            if os.environ.get("KE_SAVE_SCREENSHOT") == "1":
                page.wait_for_timeout(500)
                dash.screenshot(path=str(ROOT / "docs" / "dashboard.png"))

            # The generated CUDA source, syntax-highlighted.
            dash.locator(".lm-TabBar-tab:has-text('Source')").first.click()
            source = dash.locator(".ke-source")
            expect(source).to_be_visible()
            code = source.locator(".ke-code")
            # first the C source (target cpu), so the language toggle has its real state before the click
            expect(code).to_contain_text("void fused_matmul_add_maximum", timeout=30_000)
            expect(source.locator(".widget-toggle-button.mod-active")).to_have_text("C")
            source.locator(".widget-toggle-button:has-text('CUDA')").click()
            expect(code).to_contain_text("__global__", timeout=30_000)
            expect(code).to_contain_text("fused_matmul_add_maximum")
            assert code.locator("span[style*='color']").count() > 10  # pygments colours

            # A knob: fusion off → three kernels, and the page says so.
            before = dash.locator(".ke-header").inner_text()
            knobs = dash.locator(".ke-knobs")
            knobs.get_by_role("checkbox", name="fusion", exact=True).click()
            expect(dash.locator(".ke-header")).to_contain_text("3 kernel(s)", timeout=30_000)
            assert dash.locator(".ke-header").inner_text() != before
            expect(source.locator(".ke-code")).to_contain_text("matmul_kernel", timeout=30_000)
            # the per-rule boxes are now disabled
            rule = knobs.get_by_role("checkbox", name="epilogue", exact=True)
            expect(rule).to_be_disabled()

            # Back to the stages: the fused graph now has more clusters (one kernel per op).
            dash.locator(".lm-TabBar-tab:has-text('Stages')").first.click()
            expect(dash.locator(".ke-ir")).to_contain_text("3 kernels", timeout=30_000)
            svg = dash.locator(".ke-graph .ke-svg svg")
            expect(svg).to_be_visible()
            expect(svg.locator("g.cluster")).to_have_count(3)
            assert not page.locator(".ke-explorer .ke-error").count()
        finally:
            browser.close()
