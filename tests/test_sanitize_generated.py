"""User text that reaches generated C/CUDA (function name, file name, source line) cannot inject code:
quotes, comment terminators, newlines, line splices and #include/#error stay inside comments (issue 13)."""
from __future__ import annotations

import linecache
import re

import numpy as np
import pytest

import explorer
from explorer.backends import cpu, nvcc

PAYLOAD = '"q\' */ int PWNED_A = 1; /* \n#include <stdlib.h>\n#error PWNED_B\n\\'
FILENAME = "evil */ int PWNED_D = 1; /*\n#error PWNED_E.py"
SOURCE = "def f(x, w):\n    return np.maximum(x @ w, 0) * 2  # */ int PWNED_C = 1; /* \\\n"


def _evil_function():
    ns = {"np": np}
    exec(compile(SOURCE, FILENAME, "exec"), ns)
    linecache.cache[FILENAME] = (len(SOURCE), None, SOURCE.splitlines(True), FILENAME)  # provenance finds the line
    f = ns["f"]
    f.__name__ = f.__qualname__ = PAYLOAD
    return f


def _code_outside_comments(src: str) -> str:
    return re.sub(r"//[^\n]*", "", re.sub(r"/\*.*?\*/", "", src, flags=re.S))


@pytest.mark.parametrize("target", ["sim", pytest.param("cpu", marks=pytest.mark.skipif(
    not cpu.available()[0], reason="no C compiler"))])
def test_user_text_stays_inside_comments(target):
    f = _evil_function()
    x, w = np.ones((4, 8), np.float32), np.ones((8, 3), np.float32)
    c = explorer.compile(f, x, w, target=target, verbose=False)
    src = c.codegen.source()
    assert "PWNED" in src                       # the provenance comment does show the user's line...
    assert "PWNED" not in _code_outside_comments(src)   # ...but never as code
    assert not [l for l in src.splitlines() if l.lstrip().startswith("#") and "PWNED" in l]
    assert all(l.rstrip().endswith("\\") is False for l in src.splitlines() if "PWNED" in l)
    np.testing.assert_array_equal(c(x, w), f(x, w))
    if target == "sim" and nvcc.available()[0]:
        nvcc.check(src, arch="sm_80", mode="ptx")


def test_kernel_and_parameter_names_are_c_identifiers():
    f = _evil_function()
    x, w = np.ones((4, 8), np.float32), np.ones((8, 3), np.float32)
    c = explorer.compile(f, x, w, target="sim", verbose=False)
    for k in c.kernels:
        assert re.fullmatch(r"[A-Za-z_]\w*", k.name)
        assert all(re.fullmatch(r"[A-Za-z_]\w*", p.name) for p in k.kernel.params)
