"""binder/ is valid for repo2docker: static checks always; the full fresh-venv install is `slow`."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BINDER = ROOT / "binder"


def _lines(name: str) -> list[str]:
    return [l.split("#", 1)[0].strip() for l in (BINDER / name).read_text().splitlines()
            if l.split("#", 1)[0].strip()]


def test_requirements_install_this_package_with_notebook_extra():
    assert _lines("requirements.txt") == [".[notebook]"]
    if sys.version_info >= (3, 11):
        import tomllib
        extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
        names = {e.split(">")[0].split("=")[0].split("[")[0].strip().lower() for e in extras["notebook"]}
        # what the tutorials import beyond numpy must come with the notebook extra
        assert {"jupyterlab", "ipywidgets", "matplotlib", "graphviz", "pygments"} <= names


def test_apt_and_scripts():
    assert {"graphviz", "build-essential"} <= set(_lines("apt.txt"))
    assert _lines("runtime.txt")[0].startswith("python-3.")
    for script in ("postBuild", "check"):
        p = BINDER / script
        assert os.access(p, os.X_OK), f"binder/{script} must be executable"
        assert p.read_text().startswith("#!/usr/bin/env bash")
        subprocess.run(["bash", "-n", str(p)], check=True)


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("KE_BINDER_CHECK") != "1",
                    reason="minutes and the package index: run binder/check, or set KE_BINDER_CHECK=1")
def test_binder_check_fresh_venv():
    """Runs binder/check: fresh venv, pip install -r binder/requirements.txt, postBuild, one notebook."""
    if shutil.which("bash") is None:
        pytest.skip("needs bash")
    proc = subprocess.run([str(BINDER / "check")], capture_output=True, text=True, timeout=1800, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "OK: binder/ installs" in proc.stdout
