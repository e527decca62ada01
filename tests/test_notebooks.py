"""Every tutorial notebook runs headless, top to bottom, without errors; committed notebooks carry no outputs.

The notebooks read KE_FAST=1 to use small problem sizes (the numbers they print are still measured,
just on smaller arrays), so the whole file stays within a couple of minutes on 2 cores.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NB_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NB_DIR.glob("*.ipynb"))
EXPECTED = ["01_fusion_matmul_relu", "02_elementwise_and_roofline", "03_tiling_matmul", "04_softmax_layernorm",
            "05_attention", "06_transformer_block", "07_convolution"]


def test_all_tutorials_present():
    assert [p.stem for p in NOTEBOOKS] == EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_outputs_stripped(path):
    nb = json.loads(path.read_text())
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code":
            continue
        assert cell.get("outputs") == [], f"{path.name} cell {i} has outputs: strip them (notebooks/make_notebooks.py)"
        assert cell.get("execution_count") is None, f"{path.name} cell {i} has an execution count"
    assert "widgets" not in nb["metadata"], f"{path.name} carries widget state in its metadata"


def test_generator_reproduces_committed_notebooks(tmp_path):
    """The committed .ipynb files are exactly what notebooks/make_notebooks.py writes."""
    import subprocess
    subprocess.run([sys.executable, str(NB_DIR / "make_notebooks.py"), "--out", str(tmp_path)], check=True,
                   timeout=60)
    for p in NOTEBOOKS:
        assert (tmp_path / p.name).read_text() == p.read_text(), f"{p.name} differs from the generator's output"


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory):
    """A `python3` kernelspec that runs *this* interpreter, found first (JUPYTER_PATH beats user dirs)."""
    pytest.importorskip("ipykernel", reason="executing notebooks needs ipykernel (pip install -e .[test])")
    d = tmp_path_factory.mktemp("jupyter")
    spec = d / "kernels" / "python3"
    spec.mkdir(parents=True)
    spec.joinpath("kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (tests)", "language": "python"}))
    old = {k: os.environ.get(k) for k in ("JUPYTER_PATH", "KE_FAST", "PYTHONPATH")}
    os.environ["JUPYTER_PATH"] = str(d)
    os.environ["KE_FAST"] = "1"
    # the kernel imports this checkout's explorer/widgets even when it is not pip-installed
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), old["PYTHONPATH"]]))
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes(path, kernel_env):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=300, allow_errors=False,
                                     resources={"metadata": {"path": str(NB_DIR)}})
    client.execute()   # raises CellExecutionError naming the cell on any error
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.get("output_type") == "error"]
    assert not errors
    # every notebook prints measured numbers: at least one code cell produced output
    assert any(c.outputs for c in nb.cells if c.cell_type == "code")
