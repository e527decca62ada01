"""simplify's identities as data: Pat / PatternMatcher (explorer/passes/simplify.py) and Graph.rewrites."""
from __future__ import annotations

import numpy as np

import explorer
from explorer.graph import Graph
from explorer.passes.simplify import IDENTITIES, Pat, PatternMatcher, simplify

X = np.ones((2, 3), np.float32)


def last(fn, *args):
    return explorer.trace(fn, *args).nodes[-1]


def test_pattern_binds_names_and_checks_arity():
    n = last(lambda x: np.exp(x) * 2.0, X)
    bound: dict = {}
    assert Pat("mul", (Pat("exp", name="e"), Pat("const", name="c"))).match(n, bound)
    assert bound["e"].op == "exp" and bound["c"].op == "const"
    assert not Pat("mul", (Pat(name="x"),)).match(n, {})            # a tuple of patterns fixes the arity
    assert not Pat("add").match(n, {}) and Pat().match(n, {})
    assert not Pat("mul", where=lambda m: m.shape == (9,)).match(n, {})


def test_first_rewrite_that_returns_a_node_wins_and_none_falls_through():
    n = last(lambda x: -np.exp(x), X)
    tried = []
    pm = PatternMatcher([(Pat("neg"), lambda n: tried.append(1)),           # matches, declines
                         (Pat("neg", (Pat(name="x"),)), lambda n, x: x),   # matches, rewrites
                         (Pat("neg"), lambda n: tried.append(3) or n)])    # never reached
    assert pm.rewrite(n) is n.inputs[0] and tried == [1]
    assert pm.rewrite(n.inputs[0]) is None                                 # no pattern for exp


def test_identities_keep_the_type_and_the_order():
    # x * ones(4) broadcasts (2,3,1) to (2,3,4): not an identity, although the constant is all ones
    n = last(lambda x: np.exp(x) * np.ones(4, np.float32), np.ones((2, 3, 1), np.float32))
    assert IDENTITIES.rewrite(n) is None
    # reshape∘reshape becomes one reshape that keeps the outer node's id
    n = last(lambda x: np.exp(x).reshape(6).reshape(3, 2), X)
    r = IDENTITIES.rewrite(n)
    assert r.op == "reshape" and r.id == n.id and r.inputs[0].op == "exp"
    # transpose∘transpose that is not the identity becomes one transpose with the composed axes
    y = np.ones((2, 3, 4), np.float32)
    n = last(lambda x: np.exp(x).transpose(1, 0, 2).transpose(0, 2, 1), y)
    r = IDENTITIES.rewrite(n)
    assert r.id == n.id and r.attrs["axes"] == (1, 2, 0) and r.inputs[0].op == "exp"


def test_rewrites_is_a_declared_field():
    g = explorer.trace(lambda x: np.exp(x) + 0.0, X)
    assert g.rewrites is None and "rewrites" not in g.stats()
    s = simplify(g)
    assert s.rewrites["identity"] == 1 and s.stats()["rewrites"] == s.rewrites
    assert Graph("f", [], [], []).rewrites is None
    assert s.derive(list(s.nodes), list(s.outputs)).rewrites is None     # a later pass's graph has none
