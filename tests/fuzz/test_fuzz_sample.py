"""A fixed-seed sample of the random-program fuzzer, run by `make test`.

Four shards (so `-n 2` spreads them) of SAMPLE programs each, every one compiled and run on every
available target and one knob variant and compared with NumPy (fuzz_check). A failure is shrunk by
hypothesis and reported as a minimal program; save it under tests/fuzz/regressions/ (see README.md).
Runs matching a known bug class (fuzz_known, issue 13's A-H, fixed elsewhere) are not failures here.
"""
from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, Phase, given, seed, settings

from fuzz_check import available_targets, check_program
from fuzz_known import known_letter
from fuzz_programs import programs

SHARDS = 4
SAMPLE = int(os.environ.get("FUZZ_SAMPLE", "50"))
TARGETS = available_targets()


@pytest.mark.parametrize("shard", range(SHARDS))
def test_random_programs_equal_numpy(shard):
    @settings(max_examples=SAMPLE, database=None, deadline=None, derandomize=False, print_blob=False,
              suppress_health_check=list(HealthCheck), phases=[Phase.generate, Phase.shrink])
    @seed(20261201 + shard)
    @given(programs(targets=[t for t in TARGETS if t in ("sim", "cpu", "cuda")]))
    def body(prog):
        runs = check_program(prog, TARGETS)
        new = [r for r in runs if r.failed and known_letter(r, prog) is None]
        assert not new, ("\n".join(f"{r.target}: {r.outcome} {r.cls}: {r.detail[:400]}" for r in new)
                         + "\n\nminimal program (save it as tests/fuzz/regressions/case_<name>.py):\n\n"
                         + prog.source())

    body()
