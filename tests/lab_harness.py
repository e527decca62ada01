"""JupyterLab + headless Chromium for the browser tests and the screenshot script (recipe and pitfalls:
../shared/ENVIRONMENT.md). Not a test module: tests/test_browser.py and benchmarks/screenshots.py use it.

>>> with running_lab(tmp, [CELL_1, CELL_2]) as lab, browser_page(lab) as page:   # doctest: +SKIP
...     run_all(page, lab)
"""
from __future__ import annotations

import contextlib
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
from typing import Iterator

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def mlp_cell(m: int, k: int, n: int) -> str:
    """The notebook cell both the browser tests and the screenshots start from: the essay's MLP
    (matmul + bias + relu) and random float32 inputs x[m,k], w[k,n], b[n]."""
    return f"""\
import numpy as np, explorer, widgets

def mlp(x, w, b):
    return np.maximum(x @ w + b, 0)

rng = np.random.default_rng(0)
x = rng.standard_normal(({m}, {k})).astype(np.float32)
w = rng.standard_normal(({k}, {n})).astype(np.float32)
b = rng.standard_normal({n}).astype(np.float32)
"""


def skip_reason() -> str | None:
    """Why a browser test cannot run here, or None."""
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


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read().decode())


def wait_until(cond, timeout: float, what: str, proc: subprocess.Popen | None = None):
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


@contextlib.contextmanager
def running_lab(directory: Path, cells: list[str], name: str = "dashboard.ipynb") -> Iterator[dict]:
    """A JupyterLab server in `directory` serving one notebook made of `cells`; yields
    {'base', 'token', 'proc', 'url'} and stops the server (its log tail printed) at the end."""
    import nbformat
    spec = importlib.util.spec_from_file_location("setup_browser", ROOT / "tests" / "setup_browser.py")
    setup = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(setup)
    setup.write_lab_overrides()  # no "Jupyter news" toast over the dashboard

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nbformat.write(nb, directory / name)

    token, port = secrets.token_hex(16), _free_port()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           "JUPYTER_CONFIG_DIR": str(directory / ".jupyter"), "JUPYTER_RUNTIME_DIR": str(directory / ".runtime")}
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}", "--ServerApp.ip=127.0.0.1",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={directory}",
           "--ServerApp.port_retries=0", "--LabApp.news_url=", "--LabApp.check_for_updates_class="
           "jupyterlab.NeverCheckForUpdate"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    log = open(directory / "lab.log", "wb")
    proc = subprocess.Popen(cmd, cwd=directory, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: get_json(f"{base}/api/status?token={token}"), 60, "JupyterLab to start", proc)
        yield {"base": base, "token": token, "proc": proc, "url": f"{base}/lab/tree/{name}?token={token}"}
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        # pytest shows captured output only when the test fails: the server's log tail explains why
        print((directory / "lab.log").read_text(errors="replace")[-3000:])


@contextlib.contextmanager
def browser_page(lab: dict, width: int = 1500, height: int = 1100):
    """A Chromium page with the lab's notebook open."""
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.goto(lab["url"])
            page.wait_for_selector(".jp-Notebook", timeout=60_000)
            yield page
        finally:
            browser.close()


def run_all(page, lab: dict) -> None:
    """Run All Cells, after the notebook's kernel is connected and idle (else a Select Kernel dialog)."""
    base, token = lab["base"], lab["token"]

    def kernel_ready():
        ks = get_json(f"{base}/api/kernels?token={token}")
        return any(k.get("connections", 0) >= 1 and k.get("execution_state") == "idle" for k in ks)
    wait_until(kernel_ready, 90, "the notebook's kernel", lab["proc"])
    page.click(".lm-MenuBar-itemLabel:text-is('Run')")
    page.click(".lm-Menu-itemLabel:text-is('Run All Cells')")


def broken_images(page) -> list[str]:
    """src (first 60 chars) of every <img> on the page that did not load or has no source."""
    return page.evaluate("""() => Array.from(document.querySelectorAll('.jp-OutputArea img'))
        .filter(i => i.offsetParent !== null && (!i.getAttribute('src') || !i.complete || i.naturalWidth === 0))
        .map(i => (i.getAttribute('src') || '(no src)').slice(0, 60))""")
