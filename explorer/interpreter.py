"""The NumPy interpreter of a Graph: every node evaluated with its op's NumPy reference (the ground
truth every target is checked against).

It sits just above graph and ops and below every backend, so Compiled.reference, the run-time index
checks and the custom-kernel check evaluate graphs without importing a backend; the reference
backend (explorer.backends.reference) wraps it as an Executable.

>>> import numpy as np, explorer
>>> g = explorer.trace(lambda a: np.tanh(a) * 2, np.zeros(3, np.float32))
>>> run_graph(g, [np.zeros(3, np.float32)])
[array([0., 0., 0.], dtype=float32)]
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from . import ops as _ops
from .errors import ExplorerError, ShapeError
from .graph import Graph


def run_graph(graph: Graph, inputs: Sequence[Any]) -> list[np.ndarray]:
    """Evaluate `graph` node by node with each op's NumPy reference; returns the outputs in order."""
    env = node_values(graph, inputs)
    # copies, so callers never alias an input, a constant or a broadcast view
    return [np.array(env[id(o)], dtype=o.dtype, copy=True) for o in graph.outputs]


def node_values(graph: Graph, inputs: Sequence[Any]) -> dict[int, np.ndarray]:
    """{id(node): value} for every node of `graph` on `inputs` (each op's NumPy reference)."""
    if len(inputs) != len(graph.inputs):
        raise ExplorerError(f"graph {graph.name} takes {len(graph.inputs)} inputs ("
                            f"{', '.join(i.name for i in graph.inputs)}) but {len(inputs)} were given")
    env: dict[int, np.ndarray] = {}
    for node, value in zip(graph.inputs, inputs):
        arr = np.asarray(value)
        if node.shape == () and arr.shape == (1,):  # np.ascontiguousarray makes 0-d arrays 1-d
            arr = arr.reshape(())
        if arr.shape != node.shape:
            raise ShapeError(f"graph {graph.name}: input {node.name} has shape {arr.shape}, expected {node.shape}")
        env[id(node)] = arr.astype(node.dtype, copy=False)
    for n in graph.nodes:
        if n.op == "input":
            continue
        if n.op == "const":
            env[id(n)] = n.value
            continue
        v = _ops.evaluate(n.op, [env[id(i)] for i in n.inputs], n.attrs)
        if v.dtype != n.dtype:  # NumPy returns 0-d results as scalars of the same dtype; keep types exact
            v = v.astype(n.dtype)
        env[id(n)] = v
    return env


__all__ = ["run_graph", "node_values"]
