"""The fuzz runner survives a worker that segfaults or hangs, and charges each to its program."""
from __future__ import annotations

import sys

import pytest

import fuzz_run


@pytest.mark.skipif(sys.platform != "linux", reason="fork start method")
def test_crash_and_hang_are_counted_and_the_run_goes_on(capsys):
    code = fuzz_run.main(["-n", "6", "--workers", "1", "--timeout", "3", "--seed", "3", "--batch", "6",
                          "--targets", "reference", "--quiet", "--inject", "crash:2,hang:4"])
    out = capsys.readouterr().out
    last = fuzz_run.main.last
    assert last["n_done"] == 6, out
    counts = last["counts"]
    assert counts.get(("reference", "crash")) == 1 and counts.get(("reference", "hang")) == 1, out
    assert sum(n for (t, o), n in counts.items() if t == "reference") == 6, out
    assert code == 1 and "NEW failure classes: 2" in out, out
    assert "worker died (exit code -11)" in out and "def f(" in out, out
