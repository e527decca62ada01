"""Minimal programs the fuzzer once found failing, kept as regression tests.

Each tests/fuzz/regressions/case_*.py is `Program.source()` text (a function `f`, its INPUTS, the
KNOBS of the knob-variant run); it must now pass on every available target (and build to PTX with
nvcc when nvcc is here) and on its variant.
"""
from __future__ import annotations

import glob
import os

import pytest

from fuzz_check import available_targets, check_program
from fuzz_programs import from_source

HERE = os.path.dirname(os.path.abspath(__file__))
CASES = sorted(glob.glob(os.path.join(HERE, "regressions", "case_*.py")))


@pytest.mark.parametrize("path", CASES, ids=[os.path.basename(p)[:-3] for p in CASES])
def test_saved_case_passes(path):
    with open(path) as f:
        prog = from_source(f.read())
    runs = check_program(prog, available_targets(nvcc=True))
    bad = [r for r in runs if r.failed]
    assert not bad, "\n".join(f"{r.target}: {r.outcome} {r.cls}: {r.detail[:400]}" for r in bad)
