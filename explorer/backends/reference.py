"""The reference backend: the NumPy interpreter of any Graph (the ground truth every target is checked against).

The interpreter itself lives in explorer.interpreter (below every backend, so Compiled and the
index checks use it without importing a backend); run_graph and node_values are re-exported here.

>>> import numpy as np, explorer
>>> c = explorer.compile(lambda a: np.tanh(a) * 2, np.zeros(3, np.float32), target="reference")
>>> build(c).run([np.ones(3, np.float32)])
[array([1.5231884, 1.5231884, 1.5231884], dtype=float32)]
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..graph import Graph
from ..interpreter import node_values, run_graph


def available() -> tuple[bool, str]:
    """Always available: it needs only NumPy."""
    return True, "numpy"


class Executable:
    """Runs the compile's simplified graph with NumPy."""

    def __init__(self, graph: Graph):
        self.graph = graph

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        return run_graph(self.graph, inputs)


def build(compiled: Any) -> Executable:
    """Executable for `compiled` (interprets compiled.graph: simplified if that stage ran, else traced)."""
    return Executable(compiled.graph)


__all__ = ["available", "build", "run_graph", "node_values", "Executable"]
