"""`import explorer` needs only numpy: no heavy optional dependency is imported."""
from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ["matplotlib", "ipywidgets", "graphviz", "pycuda", "pygments", "IPython", "pandas", "scipy", "torch"]


def test_import_explorer_loads_only_numpy():
    code = ("import json, sys, explorer; "
            "print(json.dumps(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    mods = set(json.loads(out.stdout.strip().splitlines()[-1]))
    assert "numpy" in mods and "explorer" in mods
    loaded = sorted(m for m in mods if any(m == h or m.startswith(h + ".") for h in HEAVY))
    assert loaded == [], f"import explorer pulled in {loaded}"


def test_public_api_exists():
    import explorer
    for name in ("trace", "compile", "Tensor", "Graph", "nn", "ExplorerError", "TraceError"):
        assert hasattr(explorer, name), name
