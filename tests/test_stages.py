"""The stage list: built per target (explorer/stages.py), user stages added without removing the defaults."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import explorer
from explorer import pipeline
from explorer.errors import ExplorerError
from explorer.target import TARGETS, get_target

DEFAULTS = ["traced", "simplified", "fused", "lowered", "tiled", "vectorized", "codegen"]
# the reference target shows the naive loops: no loop-IR rewrite after tiling
REFERENCE = [s for s in DEFAULTS if s != "vectorized"]
X = np.arange(8, dtype=np.float32)


@pytest.fixture
def user_stages():
    saved = dict(pipeline.USER_STAGES)
    pipeline.USER_STAGES.clear()
    yield pipeline.USER_STAGES
    pipeline.USER_STAGES.clear()
    pipeline.USER_STAGES.update(saved)


@pytest.mark.parametrize("target", ["sim", "reference"])
def test_every_target_runs_its_default_stages(target):
    c = explorer.compile(lambda a: a * 2, X, target=target, verbose=False)
    expected = REFERENCE if target == "reference" else DEFAULTS
    assert c.stage_names == expected
    assert [n for n, _ in get_target(target).stages()] == expected[1:]


def test_a_user_stage_runs_after_the_defaults_and_keeps_them(user_stages):
    seen = []

    @pipeline.stage("kernel_names")
    def kernel_names(codegen, ctx):
        seen.append((type(codegen).__name__, ctx.target.name))
        return codegen

    c = explorer.compile(lambda a: a * 2, X, target="sim", verbose=False)
    assert c.stage_names == [*DEFAULTS, "kernel_names"]
    assert seen == [("Codegen", "sim")]
    c = explorer.compile(lambda a: a * 2, X, target="sim", verbose=False, stop_after="kernel_names")
    assert c.stage_names[-1] == "kernel_names"


def test_a_user_stage_with_a_default_name_takes_its_place(user_stages):
    @pipeline.stage("tiled")
    def naive(prog, ctx):   # keep the lowered loops: no schedule
        return prog

    c = explorer.compile(lambda a: a * 2, X, target="sim", verbose=False)
    assert c.stage_names == DEFAULTS
    assert c.stage("tiled").text() == c.stage("lowered").text()


def test_stop_after_names_the_stages_of_the_target():
    with pytest.raises(ExplorerError, match="stop_after='ptx' is not a stage; stages are traced, simplified, "
                                            "fused, lowered, tiled, vectorized, codegen"):
        explorer.compile(lambda a: a * 2, X, target="sim", stop_after="ptx")
    with pytest.raises(ExplorerError, match="'traced' is the trace itself"):
        pipeline.stage("traced")


def test_compile_names_every_target():
    assert pipeline.TARGETS == ("auto", *TARGETS)
