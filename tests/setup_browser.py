"""Prepare this machine for the real-browser test (tests/test_browser.py); run by `make test` before pytest.

* Installs Debian's `chromium` and `graphviz` with apt-get when they are missing and we are root
  (quietly, with a timeout). When that is impossible it prints one line and exits 0: the browser
  test then skips, saying why.
* Writes JupyterLab's settings override that turns off the "Jupyter news" toast (it would cover
  the dashboard in screenshots) into this venv's share/jupyter/lab/settings/overrides.json.

Fast when everything is already present (no subprocess at all).

    $ .venv/bin/python tests/setup_browser.py
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
APT_TIMEOUT_S = 600
NEWS_OFF = {"@jupyterlab/apputils-extension:notification": {"fetchNews": "false", "checkForUpdates": False}}


def write_lab_overrides(prefix: str = sys.prefix) -> Path:
    """Merge the news-toast override into <prefix>/share/jupyter/lab/settings/overrides.json."""
    path = Path(prefix) / "share" / "jupyter" / "lab" / "settings" / "overrides.json"
    data: dict = {}
    if path.exists():
        try:
            data = json.loads(path.read_text() or "{}")
        except ValueError:
            data = {}  # a broken file would break JupyterLab's settings too: replace it
    merged = {**data, **{k: {**data.get(k, {}), **v} for k, v in NEWS_OFF.items()}}
    if merged != data or not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(merged, indent=2) + "\n")
    return path


def missing_packages() -> list[str]:
    missing = []
    if not os.path.exists(CHROMIUM):
        missing.append("chromium")
    if shutil.which("dot") is None:
        missing.append("graphviz")
    return missing


def install(packages: list[str]) -> str | None:
    """apt-get install `packages`; returns None on success, else one line saying why not."""
    if not packages:
        return None
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return f"not root, cannot apt-get install {' '.join(packages)} (run: sudo apt-get install -y {' '.join(packages)})"
    if shutil.which("apt-get") is None:
        return f"no apt-get on this machine; install {' '.join(packages)} with the system's package manager"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = f"apt-get update -qq && apt-get install -y -qq {' '.join(packages)}"
    try:
        proc = subprocess.run(["bash", "-c", cmd], env=env, capture_output=True, text=True, timeout=APT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return f"apt-get install {' '.join(packages)} took more than {APT_TIMEOUT_S} s; gave up"
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
        return f"apt-get install {' '.join(packages)} failed: {tail[0][:200]}"
    return None


def main() -> int:
    write_lab_overrides()
    why = install(missing_packages())
    if why:
        print(f"setup_browser: {why}; the browser test will skip")
    return 0


if __name__ == "__main__":
    sys.exit(main())
