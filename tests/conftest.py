"""Shared pytest fixtures (kept small; helpers ask the lead to add more)."""
from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def rng() -> np.random.Generator:
    """A fixed-seed generator so every test is deterministic."""
    return np.random.default_rng(1234)


@pytest.fixture
def mlp_inputs(rng):
    """(x, w, b) for the essay's MLP, small enough for fast tests: x 8x16, w 16x4, b 4, float32."""
    return (rng.standard_normal((8, 16), dtype=np.float32), rng.standard_normal((16, 4), dtype=np.float32),
            rng.standard_normal(4, dtype=np.float32))
