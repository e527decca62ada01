"""Fusion legality as data (explorer/passes/fusion.py): FUSION_TABLE and the structured refusal codes.

Every Refusal has an example graph below that produces it, so a code nobody can reach fails here, and
so does a refusal whose code drifts from its English reason.
"""
from __future__ import annotations

import numpy as np
import pytest

import explorer
from explorer.passes.fusion import (CONSUMER_CATEGORIES, FUSION_TABLE, PRODUCER_KINDS, RULES, Refusal,
                                    consumer_category, explain, fuse)
from explorer.passes.simplify import simplify

RNG = np.random.default_rng(0)


def arr(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def attention(q, k, v):
    s = (q @ k.T) * np.float32(0.125)
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)) @ v


def mlp(x, w, b):
    return np.maximum(x @ w + b, 0)


def _cycle(x):
    a = np.exp(x)
    return a + np.cumsum(a, axis=0)


def _shared_transpose(x, w):
    t = x.T
    return t @ w, t + 1.0


def _written_broadcast(v, x):
    a = np.exp(v)
    return a, a + x


def _mixed_axes(x):
    e = np.exp(x)
    return e.sum(axis=0), e.sum(axis=1)


IDS = np.array([1, 2, 3, 0, 5, 6, 7, 8], np.int64)
# code -> (function, its arguments, fuse=..., (producer op, consumer op) of the refused edge, words of the reason)
EXAMPLES = {
    Refusal.FUSION_OFF: (mlp, (arr(8, 4), arr(4, 3), arr(3)), False, ("matmul", "add"), "fuse=False"),
    Refusal.RULE_OFF: (mlp, (arr(8, 4), arr(4, 3), arr(3)), {"epilogue": False}, ("matmul", "add"),
                       "rule 'epilogue' is turned off"),
    Refusal.OPAQUE: (lambda x: np.cumsum(np.exp(x), axis=0), (arr(8),), True, ("exp", "cumsum"), "opaque"),
    Refusal.TWO_CONTRACTIONS: (lambda x, w, w2: (x @ w) @ w2, (arr(4, 8), arr(8, 3), arr(3, 2)), True,
                               ("matmul", "matmul"), "two matmuls"),
    Refusal.REDUCE_WITH_CONTRACTION: (lambda x, w: np.sum(x @ w, axis=1), (arr(4, 8), arr(8, 3)), True,
                                      ("matmul", "sum"), "is a reduction"),
    Refusal.PROLOGUE_NOT_INJECTIVE: (lambda x, w: (x * 2.0) @ w, (arr(8, 8), arr(8, 4)), True,
                                     ("mul", "matmul"), "only folds injective producers"),
    Refusal.DATA_DEPENDENT_OPERAND: (lambda x, e, ids: x @ e[ids], (arr(4, 8), arr(10, 3), IDS), True,
                                     ("take", "matmul"), "run-time index values"),
    Refusal.RECOMPUTE: (_shared_transpose, (arr(16, 16), arr(16, 8)), True, ("transpose", "matmul"),
                        "would recompute it"),
    Refusal.EPILOGUE_NOT_ELEMENTWISE: (lambda x, w: (x @ w).T, (arr(4, 4), arr(4, 4)), True,
                                       ("matmul", "transpose"), "epilogue only takes elementwise ops"),
    Refusal.EPILOGUE_SHAPE: (lambda x, w, y: (x @ w) + y, (arr(4, 8), arr(8, 3), arr(2, 4, 3)), True,
                             ("matmul", "add"), "not the matmul's output shape"),
    Refusal.OUTPUT_SHAPES: (_written_broadcast, (arr(8), arr(4, 8)), True, ("exp", "add"), "different shapes"),
    Refusal.REDUCE_DOMAIN: (_mixed_axes, (arr(8, 16),), True, ("exp", "sum"), "one reduction domain"),
    Refusal.REDUCE_MEMBER_SHAPE: (lambda x, z: x.sum(axis=1) + z, (arr(4, 8), arr(3, 4)), True, ("sum", "add"),
                                  "neither the reduction's input shape"),
    Refusal.REARRANGES_ROWS: (lambda x: np.exp(x).T.sum(axis=1), (arr(4, 4),), True, ("transpose", "sum"),
                              "across rows"),
    Refusal.OTHER_ROW: (lambda x: x - x.sum(axis=1), (arr(8, 8),), True, ("sum", "sub"), "different row"),
    Refusal.CYCLE: (_cycle, (arr(8, 4),), True, ("exp", "add"), "cycle"),
    Refusal.ATTENTION_INPUT: (lambda q, k, v: attention(np.exp(q), k, v), (arr(16, 8), arr(16, 8), arr(16, 8)),
                              True, ("exp", "matmul"), "input of the attention kernel"),
    Refusal.ATTENTION_OUTPUT: (lambda q, k, v: attention(q, k, v) + 1.0, (arr(16, 8), arr(16, 8), arr(16, 8)),
                               True, ("matmul", "add"), "output of the attention kernel"),
}


def refused_edge(code: Refusal):
    fn, args, rules, (p_op, c_op), _ = EXAMPLES[code]
    fg = fuse(simplify(explorer.trace(fn, *args)), rules=rules)
    found = [d for d in fg.decisions if not d.fused and d.producer.op == p_op and d.consumer.op == c_op]
    assert len(found) == 1, [(d.producer.op, d.consumer.op, d.code) for d in fg.decisions]
    return fg, found[0]


def test_every_code_has_an_example():
    assert set(EXAMPLES) == set(Refusal)


@pytest.mark.parametrize("code", list(Refusal), ids=lambda c: c.value)
def test_refusal_carries_its_code_beside_the_reason(code):
    fg, d = refused_edge(code)
    assert d.code is code and d.reason.startswith("not fused: ") and EXAMPLES[code][-1] in d.reason
    assert d.as_dict()["code"] == code.value and d.short == code.short(d.rule)
    # the code reaches the explanation the dashboard reads, and the edge label in the drawing
    assert [b["code"] for b in explain(fg).boundaries if not b["fused"]].count(code.value) >= 1
    assert f'{code.short(d.rule)}"' in fg.dot()


def test_fused_edges_have_no_code():
    fg = fuse(simplify(explorer.trace(mlp, arr(8, 4), arr(4, 3), arr(3))))
    assert fg.decisions and all(d.fused and d.code is None and d.short == "" for d in fg.decisions)


def test_rule_off_names_the_rule_and_fusion_off_does_not():
    _, d = refused_edge(Refusal.RULE_OFF)
    assert d.rule == "epilogue" and d.short == "rule off: epilogue"
    _, d = refused_edge(Refusal.FUSION_OFF)
    assert d.short == "fusion off"


def test_table_covers_every_producer_kind_and_consumer_category():
    assert set(FUSION_TABLE) == {(k, c) for k in PRODUCER_KINDS for c in CONSUMER_CATEGORIES}
    for (kind, cat), cell in FUSION_TABLE.items():
        if cell.refusal is None:  # a cell that may fuse names the switch that turns it off
            assert cell.rule in RULES and cell.reason is None, (kind, cat)
        else:
            assert isinstance(cell.refusal, Refusal) and cell.reason is not None, (kind, cat)
    assert {c.rule for c in FUSION_TABLE.values() if c.refusal is None} == set(RULES) - {"horizontal", "attention"}


def test_consumer_category_names_the_kernel_a_diamond_joined():
    assert consumer_category("elementwise", "elementwise") == "pointwise"
    assert consumer_category("injective", "contraction") == "pointwise in contraction kernel"
    assert consumer_category("reduce", "reduce") == "reduce"
    assert consumer_category("contraction", "contraction") == "contraction"
    assert consumer_category("elementwise", "opaque") == consumer_category("opaque", "opaque") == "opaque"
    # every kernel an op can be in (a matmul's kernel is always a contraction, a reduction's never elementwise)
    possible = [(op, k) for op in ("elementwise", "injective") for k in ("elementwise", "reduce", "contraction")]
    possible += [("reduce", "reduce"), ("reduce", "contraction"), ("contraction", "contraction"), ("opaque", "opaque")]
    assert {consumer_category(op, k) for op, k in possible} == set(CONSUMER_CATEGORIES)


def test_every_code_is_documented():
    for code in Refusal:
        assert code.doc and code.label and str(code) == code.value and Refusal(code.value) is code


def test_widget_boundary_table_shows_the_code():
    pytest.importorskip("ipywidgets")
    from widgets.panels.fusion import FusionView
    c = explorer.compile(mlp, arr(8, 4), arr(4, 3), arr(3), target="sim", fuse={"epilogue": False},
                         verbose=False)
    view = FusionView(c)
    assert ">refusal code</th>" in view.table.value and "<code>rule_off</code>" in view.table.value
    assert "<code>rule_off</code>: the rule that would fuse this edge is turned off" in view.table.value  # the legend
    view.producer.value, view.consumer.value = "%3", "%4"
    assert "refusal code <code>rule_off</code>" in view.answer.value
