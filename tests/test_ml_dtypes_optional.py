"""ml_dtypes is optional: without it `import explorer` and float32 work, and asking for bfloat16 says how to
install it (a subprocess hides the package, so this runs whether or not it is installed)."""
from __future__ import annotations

import subprocess
import sys

PROG = r"""
import sys
sys.modules["ml_dtypes"] = None          # any import of ml_dtypes now raises ImportError
import numpy as np, explorer
x = np.ones(4, np.float32)
print(explorer.compile(lambda a: a * 2, x, target="reference")(x).tolist())
try:
    explorer.compile(lambda a: a * 2, x, dtype="bfloat16", target="reference")
except explorer.DTypeError as e:
    print("DTypeError:", e)
"""


def test_bfloat16_without_ml_dtypes_names_the_install():
    r = subprocess.run([sys.executable, "-c", PROG], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "[2.0, 2.0, 2.0, 2.0]"
    assert lines[1] == ("DTypeError: dtype bfloat16 needs the ml_dtypes package: pip install ml_dtypes "
                        "(or pip install 'kernel-explorer[ml_dtypes]')")
