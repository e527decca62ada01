"""Graph.dot() is valid DOT: parsed by pydot, one node per graph node, inputs/outputs styled distinctly."""
from __future__ import annotations

import re

import numpy as np
import pytest

import explorer
from explorer.passes.simplify import simplify

# pydot's parser uses deprecated pyparsing names; not our concern here
pytestmark = pytest.mark.filterwarnings("ignore:.*deprecated:DeprecationWarning")


def _graph():
    def mlp(x, w, b):
        return np.maximum(x @ w + b, 0), np.exp(x).sum(axis=1)
    return explorer.trace(mlp, np.ones((4, 8), np.float32), np.ones((8, 3), np.float32), np.ones(3, np.float32))


def _node_stmts(dot_graph):
    return {n.get_name(): n for n in dot_graph.get_nodes() if re.fullmatch(r"n\d+", n.get_name())}


@pytest.mark.parametrize("stage", ["traced", "simplified"])
def test_dot_parses_with_pydot(stage):
    pydot = pytest.importorskip("pydot")
    g = _graph() if stage == "traced" else simplify(_graph())
    parsed = pydot.graph_from_dot_data(g.dot())
    assert parsed and len(parsed) == 1
    nodes = _node_stmts(parsed[0])
    assert set(nodes) == {f"n{n.id}" for n in g.nodes}
    edges = {(e.get_source(), e.get_destination()) for e in parsed[0].get_edges()}
    assert edges == {(f"n{i.id}", f"n{n.id}") for n in g.nodes for i in n.inputs}
    # inputs are ellipses, outputs have a double border, op nodes neither
    for n in g.nodes:
        attrs = nodes[f"n{n.id}"].get_attributes()
        assert (attrs.get("shape") == "ellipse") == (n.op == "input"), n
        assert (attrs.get("peripheries") == "2") == any(n is o for o in g.outputs), n
        label = attrs["label"]
        assert n.type_str in label
        if n.op not in ("input", "const"):
            assert n.op in label


def test_dot_structure_without_pydot():
    g = _graph()
    src = g.dot()
    assert src.startswith("digraph ") and src.rstrip().endswith("}")
    assert src.count("{") == src.count("}")
    stmts = re.findall(r"^\s*n(\d+) \[label=", src, re.M)
    assert sorted(int(s) for s in stmts) == sorted(n.id for n in g.nodes)
    assert len(re.findall(r"->", src)) == sum(len(n.inputs) for n in g.nodes)
    # every quoted string is closed (no raw quote from user text breaks the syntax)
    assert all(line.count('"') % 2 == 0 for line in src.splitlines())


def test_dot_escapes_hostile_names():
    def weird(x):
        return x * 2
    weird.__name__ = 'bad"name{ }'
    g = explorer.trace(weird, np.ones(3, np.float32))
    src = g.dot()
    assert src.splitlines()[0].startswith("digraph bad_name___ ")
    pydot = pytest.importorskip("pydot")
    assert pydot.graph_from_dot_data(src)
