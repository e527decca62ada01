"""The fusion pass: group the op nodes of a Graph into kernels (TVM operator-pattern style).

Every op node lands in exactly one FusionGroup (one future kernel); values that cross
a group boundary go through global memory, values inside a group stay in registers.
Every producer→consumer edge between op nodes gets a FusionDecision saying which
rule decided it and why, in one sentence.

Before (simplified graph)                      After fuse(graph)
    %3: f32[64,256] = matmul(x, w)                 kernel g0 fused_matmul_add_maximum [contraction]
    %4: f32[64,256] = add(%3, b)                     %3 = matmul(x, w)
    %5: f32[] = const 0.0                            %4 = add(%3, b)          epilogue
    %6: f32[64,256] = maximum(%4, %5)                %6 = maximum(%4, %5)     epilogue

Rules (keys of `fuse(graph, rules={...})`):
    elementwise      chains of elementwise/injective ops fuse
    reduce_producer  a reduction absorbs its elementwise/injective producers over its input domain
    reduce_consumer  elementwise consumers of a reduction join its kernel when they read the same row
    multi_reduce     reductions over the same domain and axes share one kernel (softmax, layernorm)
    epilogue         a matmul absorbs elementwise consumers over its output shape (bias, relu, gelu, scale)
    prologue         a matmul absorbs injective-only producers of an operand (x @ w.T)
    horizontal       identical computations over equally spaced slices (one per attention head) become
                     one computation batched over h, before the rules above group it (passes/horizontal.py)
    attention        softmax(q @ kᵀ · scale [+ mask]) @ v becomes one kernel with FlashAttention's online
                     softmax (passes/attention.py): the S×S scores stay on chip
Which rule decides an edge is data: FUSION_TABLE maps (producer kind, consumer category) to the
rule (then fuse={rule: False} and the legality checks may still refuse) or to a refusal. Opaque ops
(cumsum) never fuse, and a merge that would break an invariant of the lowering, recompute a value
needed elsewhere, or create a cycle between kernels is refused. Every refusal carries a Refusal code
(FusionDecision.code, e.g. Refusal.RULE_OFF, Refusal.CYCLE) beside its English reason.

>>> import numpy as np, explorer
>>> from explorer.passes.fusion import fuse
>>> g = explorer.trace(lambda x, w, b: np.maximum(x @ w + b, 0),
...                    np.ones((4, 8), np.float32), np.ones((8, 3), np.float32), np.ones(3, np.float32))
>>> [grp.name for grp in fuse(g).groups]
['fused_matmul_add_maximum']
>>> len(fuse(g, rules=False).groups)
3
"""
from __future__ import annotations

import heapq
import html
import re
from collections import Counter
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable

from ..errors import ExplorerError, VerificationError
from ..graph import Graph, Node, Provenance
from ..naming import c_identifier
from ..ops import OPS, get as get_op
from ..units import fmt_bytes as _fmt_bytes
from .attention import ATTENTION_REASON, AttentionMatch, attention_problem, match_attention

RULES = ("elementwise", "reduce_producer", "reduce_consumer", "multi_reduce", "epilogue", "prologue", "horizontal", "attention")
RULE_DOCS = {  # what each rule fuses (fuse={"rule": False} turns one off); the dashboard shows these
    "elementwise": "chains of elementwise/injective ops become one loop",
    "reduce_producer": "elementwise producers are computed inside a reduction",
    "reduce_consumer": "elementwise consumers of a reduction join its kernel",
    "multi_reduce": "reductions over the same rows share one kernel (softmax, layernorm)",
    "epilogue": "bias/activation after a matmul run in the matmul kernel",
    "prologue": "reshapes/transposes feeding a matmul are folded into its loads",
    "horizontal": "identical per-head computations over slices run as one kernel batched over heads",
    "attention": "softmax(q @ kᵀ) @ v as one kernel with the online softmax: the scores stay on chip",
}
KINDS = ("elementwise", "reduce", "contraction", "opaque", "attention")
_POINTWISE = ("elementwise", "injective")
# injective ops a matmul does not fold into its operand loads (tiles are staged block by block)
_DATA_DEPENDENT = {
    "take": "picks the matmul operand's rows by run-time index values, so its tiles cannot be staged block by block",
    "set_slice": "selects between two arrays element by element (a slice write), which the matmul's operand "
                 "staging does not fold",
}


# ----------------------------------------------------------------------------- data model
@dataclass(eq=False)
class FusionGroup:
    """One kernel: member nodes (topological), external inputs, outputs and the anchor's domain."""

    id: str
    kind: str
    nodes: list[Node]
    inputs: list[Node]
    outputs: list[Node]
    anchor: Node
    name: str
    source_lines: list[Provenance] = field(default_factory=list)
    pattern: Any = None   # kind 'attention': its attention.AttentionMatch

    @property
    def ops(self) -> list[str]:
        return [n.op for n in self.nodes]

    def __repr__(self) -> str:
        return f"<FusionGroup {self.id} {self.name} [{self.kind}] {len(self.nodes)} ops>"


class Refusal(str, Enum):
    """Why an edge is not fused, as a structured code (FusionDecision.code) beside the English reason.

    The value is the code (`Refusal.CYCLE == "cycle"`), `.label` the short text on the edge in dot(),
    `.doc` what the refusal means.

    >>> Refusal.RULE_OFF.value, Refusal.RULE_OFF.short("epilogue"), Refusal.CYCLE.label
    ('rule_off', 'rule off: epilogue', 'cycle')
    """

    FUSION_OFF = ("fusion_off", "fusion off", "fusion is off (fuse=False): every op is its own kernel")
    RULE_OFF = ("rule_off", "rule off", "the rule that would fuse this edge is turned off (fuse={'rule': False})")
    OPAQUE = ("opaque", "opaque", "an opaque op (cumsum, a custom kernel) is always a kernel of its own")
    TWO_CONTRACTIONS = ("two_contractions", "two matmuls",
                        "two matmuls (or convolutions) never share a kernel: each one is its own tiled loop nest")
    REDUCE_WITH_CONTRACTION = ("reduce_with_contraction", "reduce + matmul",
                               "a reduction and a matmul never share a kernel (neither its operand loads nor "
                               "its epilogue take a reduction)")
    PROLOGUE_NOT_INJECTIVE = ("prologue_not_injective", "not injective",
                              "a matmul folds only injective producers (transpose, reshape, slice, broadcast) "
                              "into its operand loads")
    DATA_DEPENDENT_OPERAND = ("data_dependent_operand", "data-dependent",
                              "a take or set_slice feeding a matmul operand cannot be staged tile by tile")
    RECOMPUTE = ("recompute", "multi-consumer",
                 "fusing would recompute a value that another kernel or the caller also reads")
    EPILOGUE_NOT_ELEMENTWISE = ("epilogue_not_elementwise", "not elementwise",
                                "a matmul epilogue takes only elementwise ops on its output")
    EPILOGUE_SHAPE = ("epilogue_shape", "shape", "an epilogue op must have the matmul's output shape")
    OUTPUT_SHAPES = ("output_shapes", "shape",
                     "everything an elementwise kernel writes has the shape of its anchor (its last output)")
    REDUCE_DOMAIN = ("reduce_domain", "reduce axes",
                     "reductions share a kernel only over the same input shape and the same axes")
    REDUCE_MEMBER_SHAPE = ("reduce_member_shape", "shape",
                           "the other ops of a reduction kernel have its input shape or its result shape")
    REARRANGES_ROWS = ("rearranges_rows", "row mismatch",
                       "a rearranging op (transpose, reshape, slice, concat, pad, take) would move values "
                       "across the rows of a reduction kernel")
    OTHER_ROW = ("other_row", "row mismatch",
                 "an op would read a reduced value of another row than the one it computes")
    CYCLE = ("cycle", "cycle", "the merged kernel would wait for itself through another kernel")
    ATTENTION_INPUT = ("attention_input", "attention",
                       "q, k, v and a mask are inputs the attention kernel reads from global memory")
    ATTENTION_OUTPUT = ("attention_output", "attention",
                        "the attention kernel writes only its result; its consumers read it from global memory")

    label: str
    doc: str

    def __new__(cls, code: str, label: str, doc: str) -> "Refusal":
        member = str.__new__(cls, code)
        member._value_ = code
        member.label = label
        member.doc = doc
        return member

    def __str__(self) -> str:
        return self.value

    def short(self, rule: str) -> str:
        """The label on a refused edge in dot(): 'rule off: epilogue' names the rule that is off."""
        return f"rule off: {rule}" if self is Refusal.RULE_OFF else self.label


@dataclass(frozen=True)
class Refused:
    """A refused merge: its code and the English reason (printed in the fused stage, so kept verbatim)."""

    code: Refusal
    reason: str


@dataclass
class FusionDecision:
    """Why `producer` → `consumer` is (not) inside one kernel; `code` says it as a Refusal (None when fused)."""

    producer: Node
    consumer: Node
    fused: bool
    rule: str
    reason: str
    code: Refusal | None = None

    @property
    def short(self) -> str:
        """The label of a refused edge in dot() ('' for a fused one)."""
        return "" if self.code is None else self.code.short(self.rule)

    def as_dict(self) -> dict[str, Any]:
        return {"producer": self.producer.name, "consumer": self.consumer.name, "fused": self.fused,
                "rule": self.rule, "reason": self.reason, "code": None if self.code is None else self.code.value}


class FusedGraph:
    """The fused snapshot: the graph, its kernels (groups, in execution order) and every boundary decision."""

    def __init__(self, graph: Graph, groups: list[FusionGroup], decisions: list[FusionDecision],
                 rules: dict[str, bool], horizontal: list | None = None):
        self.graph = graph
        self.groups = groups
        self.decisions = decisions
        self.rules = dict(rules)
        self.horizontal = list(horizontal or [])   # passes.horizontal.HorizontalBatch records
        self._group_of = {id(n): g for g in groups for n in g.nodes}

    @property
    def name(self) -> str:
        return self.graph.name

    def group_of(self, node: Node | str) -> FusionGroup | None:
        """The group holding `node` (a Node or a name like '%3'); None for inputs and constants."""
        if isinstance(node, str):
            node = _lookup(self.graph, node)
        return self._group_of.get(id(node))

    def group(self, key: str) -> FusionGroup:
        """A group by id ('g0') or name ('fused_matmul_add_maximum')."""
        for g in self.groups:
            if key in (g.id, g.name):
                return g
        raise ExplorerError(f"fused {self.name} has no kernel {key!r}; kernels are "
                            + ", ".join(f"{g.id} {g.name}" for g in self.groups))

    def decision(self, a: Node, b: Node) -> FusionDecision | None:
        for d in self.decisions:
            if (d.producer is a and d.consumer is b) or (d.producer is b and d.consumer is a):
                return d
        return None

    def explain(self, a: str | None = None, b: str | None = None) -> "Explanation | str":
        """Why ops are (not) in one kernel: explain(self, a, b) (Compiled.explain_fusion calls this,
        so the top layer reaches the fusion pass only through the snapshot it holds)."""
        return explain(self, a, b)

    # -- printing ----------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """kernels, fused/unfused edges, bytes of intermediates that round-trip through global memory."""
        outs = {id(o) for o in self.graph.outputs}
        inter = [o for g in self.groups for o in g.outputs if id(o) not in outs]
        cats = Counter(_cat(n) for g in self.groups for n in g.nodes)
        return {"kernels": len(self.groups), "ops": sum(len(g.nodes) for g in self.groups),
                "fused_edges": sum(d.fused for d in self.decisions),
                "unfused_edges": sum(not d.fused for d in self.decisions),
                "intermediates": len(inter), "intermediate_bytes": int(sum(o.nbytes for o in inter)),
                "kernels_by_kind": dict(sorted(Counter(g.kind for g in self.groups).items())),
                "horizontal_batches": len(self.horizontal),
                "ops_by_category": dict(sorted(cats.items()))}

    def text(self, provenance: bool = True) -> str:
        """Kernels with their member lines, then every boundary decision; stable across runs."""
        st = self.stats()
        k = st["kernels"]
        lines = [f"fused {self.name}: {k} kernel{'s' if k != 1 else ''} ({st['ops']} op{'s' if st['ops'] != 1 else ''}), "
                 f"{st['intermediates']} intermediate{'s' if st['intermediates'] != 1 else ''} in global memory"
                 + (f" ({_fmt_bytes(st['intermediate_bytes'])})" if st["intermediates"] else "")]
        outs = {id(o) for o in self.graph.outputs}
        for hb in self.horizontal:
            lines.append(f"  {hb.reason}: kernel{'s' if len(hb.group_ids) != 1 else ''} "
                         f"{', '.join(hb.group_ids)} (members ending at {', '.join(hb.roots)})")
        for g in self.groups:
            head = f"  kernel {g.id} {g.name} [{g.kind}]"
            if provenance and g.source_lines:
                head += "  lines: " + ", ".join(_short_lines(g.source_lines))
            lines.append(head)
            lines.append("    reads: " + (", ".join(i.name for i in g.inputs) or "-")
                         + "   writes: " + ", ".join(o.name + (" (returned)" if id(o) in outs else "") for o in g.outputs))
            if g.kind == "attention":
                lines.append(f"    {ATTENTION_REASON}: online softmax (running max and sum per query row, "
                             f"rescaled per key tile); the {'x'.join(map(str, g.pattern.scores.shape[-2:]))} "
                             f"score matrix is never written to global memory")
            for n in g.nodes:
                lines.append("    " + self.graph.node_line(n, provenance=False))
        passthrough = [o for o in self.graph.outputs if o.op in ("input", "const")]
        if passthrough:
            lines.append("  returned without a kernel: " + ", ".join(o.name for o in passthrough))
        if self.decisions:
            lines.append("  boundaries:")
            w = max(len(f"{d.producer.name} → {d.consumer.name}") for d in self.decisions)
            for d in self.decisions:
                lines.append(f"    {d.producer.name + ' → ' + d.consumer.name:<{w}}  {d.reason}")
        return "\n".join(lines)

    __str__ = text

    def _repr_html_(self) -> str:
        return f"<pre>{html.escape(self.text())}</pre>"

    def __repr__(self) -> str:
        return f"<FusedGraph {self.name}: {len(self.groups)} kernels, {len(self.decisions)} boundaries>"

    def edge_traffic(self) -> dict[tuple[int, int], tuple[int, str]]:
        """{(producer id, consumer id): (bytes through global memory, how)} for every edge into an op.

        how: 'read' (an input, read from memory), 'fused' (stays in registers: 0 B), 'round trip'
        (an unfused intermediate, written by one kernel and read by the next: 2 × its size) or
        'inlined' (a constant compiled into the kernel: 0 B).

        >>> import numpy as np, explorer
        >>> g = explorer.trace(lambda x: np.exp(x) * 2, np.ones(8, np.float32))
        >>> sorted(fuse(g, rules=False).edge_traffic().values())
        [(0, 'inlined'), (32, 'read'), (64, 'round trip')]
        """
        out: dict[tuple[int, int], tuple[int, str]] = {}
        for n in self.graph.nodes:
            for i in n.inputs:
                if i.op == "const":
                    out[(i.id, n.id)] = (0, "inlined")
                elif i.op == "input":
                    out[(i.id, n.id)] = (i.nbytes, "read")
                elif self._group_of.get(id(i)) is self._group_of.get(id(n)):
                    out[(i.id, n.id)] = (0, "fused")
                else:
                    out[(i.id, n.id)] = (2 * i.nbytes, "round trip")
        return out

    def dot(self) -> str:
        """Graphviz source: one cluster per kernel; every edge labelled with the bytes it moves through
        global memory (edge_traffic: '0 B · fused' inside a kernel) and, between kernels, the short reason."""
        clusters = [(g.id, f"{g.id} {g.name} [{g.kind}]", g.nodes) for g in self.groups]
        why = {(d.producer.id, d.consumer.id): d.short for d in self.decisions if not d.fused}
        labels = {}
        for key, (nbytes, how) in self.edge_traffic().items():
            text = "inlined" if how == "inlined" else f"{_fmt_bytes(nbytes)} · {how}"
            labels[key] = f"{text}\\n{why[key]}" if key in why else text
        return self.graph.dot(clusters=clusters, edge_labels=labels)

    def to_svg(self) -> str:
        from ..render import dot_to_svg
        return dot_to_svg(self.dot())


def _short_lines(provs: list[Provenance]) -> list[str]:
    return [p.short() for p in provs]


# ----------------------------------------------------------------------------- helpers
def _shape(s: tuple[int, ...]) -> str:
    return "[" + ",".join(str(x) for x in s) + "]"


def _axes(n: Node) -> tuple[int, ...]:
    from ..ops import normalize_axes
    src = n.inputs[0].shape
    return normalize_axes(n.op, n.attrs.get("axes"), len(src), src)


def _cat(n: Node) -> str:
    # Node.category imports lazily on every call; this pass asks millions of times on big graphs.
    if n.op in ("input", "const"):
        return n.op
    d = OPS.get(n.op)
    return d.category if d is not None else get_op(n.op).category  # get_op raises UnsupportedOpError


def _is_scalar_const(n: Node) -> bool:
    return n.op == "const" and n.size == 1


def _is_op(n: Node) -> bool:
    return n.op not in ("input", "const")


def _opaque_why(op: str) -> str:
    from ..ops import OPS
    if op in OPS and OPS[op].custom is not None:
        return f"{op}: custom kernel: opaque (user code; the compiler cannot see into it)"
    doc = OPS[op].doc if op in OPS else ""
    doc = doc.split(", so")[0].strip()
    return f"{op} is opaque ({doc})" if doc else f"{op} is opaque (its loop structure cannot be shared)"


def _row_aligned(rs: tuple[int, ...], d: tuple[int, ...], axes: tuple[int, ...]) -> bool:
    """Does a reduced value of shape rs, broadcast against the domain d, pick the value of the same row?"""
    if len(rs) == len(d) and all(rs[k] == (1 if k in axes else d[k]) for k in range(len(d))):
        return True  # keepdims=True
    k = len(axes)
    return axes == tuple(range(k)) and rs == d[k:]  # leading axes reduced: broadcasting re-aligns


def _is_identity_injective(n: Node) -> bool:
    if n.shape != n.inputs[0].shape:
        return False
    if n.op in ("reshape", "broadcast_to"):
        return True
    if n.op == "transpose":
        return tuple(n.attrs.get("axes", ())) == tuple(range(len(n.shape)))
    if n.op == "slice":
        return all(a == 0 and c == 1 for a, c in zip(n.attrs["starts"], n.attrs["steps"]))
    return False


def _lookup(graph: Graph, name: str) -> Node:
    name = str(name).strip()
    for n in graph.nodes:
        if n.name == name or n.name == f"%{name}":
            return n
    raise ExplorerError(f"graph {graph.name} has no node named {name!r}; names are "
                        + ", ".join(n.name for n in graph.nodes))


def parse_rules(rules: Any) -> dict[str, bool]:
    """True → all rules on, False → all off (one kernel per op), dict → named rules (others stay on).

    >>> parse_rules({"epilogue": False})["epilogue"]
    False
    """
    if rules is None or rules is True:
        return {r: True for r in RULES}
    if rules is False:
        return {r: False for r in RULES}
    if isinstance(rules, dict):
        bad = [k for k in rules if k not in RULES]
        if bad:
            raise ExplorerError(f"unknown fusion rule{'s' if len(bad) > 1 else ''} {', '.join(map(repr, bad))}; "
                                f"valid keys are {', '.join(RULES)} (or pass fuse=True / fuse=False)")
        out = {r: True for r in RULES}
        for k, v in rules.items():
            if not isinstance(v, (bool, int)) or isinstance(v, int) and v not in (0, 1):
                raise ExplorerError(f"fusion rule {k!r} must be True or False, got {v!r}")
            out[k] = bool(v)
        return out
    raise ExplorerError(f"fuse must be True, False or a dict like {{'epilogue': False}}, got {rules!r}")


# ----------------------------------------------------------------------------- legality
class _Ctx:
    """What the legality checks need: consumers, graph outputs and the current partition."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.consumers = graph.consumers()
        self.out_ids = {id(o) for o in graph.outputs}
        self.pos = {id(n): k for k, n in enumerate(graph.nodes)}

    def is_output(self, m: Node, members: set[int]) -> bool:
        cons = self.consumers.get(m, [])
        return id(m) in self.out_ids or not cons or any(id(c) not in members for c in cons)



def _kind_of(members: list[Node]) -> str:
    cats = {_cat(m) for m in members}
    if "contraction" in cats:
        return "contraction"
    if "reduce" in cats:
        return "reduce"
    if "opaque" in cats:
        return "opaque"
    return "elementwise"


def _validate(members: list[Node], ctx: _Ctx) -> tuple[str, Node] | Refused:
    """(kind, anchor) when `members` can be one kernel under the contract's invariants, else why not."""
    ids = {id(m) for m in members}
    cats = [_cat(m) for m in members]
    kind = _kind_of(members)
    opaque = [m for m, c in zip(members, cats) if c == "opaque"]
    if opaque and len(members) > 1:
        return Refused(Refusal.OPAQUE, _opaque_why(opaque[0].op))
    if kind == "opaque":
        return kind, members[0]
    mms = [m for m, c in zip(members, cats) if c == "contraction"]
    reds = [m for m, c in zip(members, cats) if c == "reduce"]
    if len(mms) > 1:
        return Refused(Refusal.TWO_CONTRACTIONS, f"two matmuls ({mms[0].name}, {mms[1].name}) never share a "
                       f"kernel: each one is its own tiled loop nest")
    if mms and reds:
        return Refused(Refusal.REDUCE_WITH_CONTRACTION, f"the reduction {reds[0].op} {reds[0].name} and the "
                       f"matmul {mms[0].name} cannot share a kernel: a matmul epilogue only takes elementwise ops")
    if kind == "contraction":
        return _validate_contraction(members, ids, mms[0], ctx)
    if kind == "reduce":
        return _validate_reduce(members, ids, reds, ctx)
    # elementwise: any index mapping is fine inside (values are recomputed per element),
    # but everything the kernel writes must share the anchor's shape.
    outs = [m for m in members if ctx.is_output(m, ids)]
    return _elementwise_outputs_problem(outs or [members[-1]], lambda c: id(c) in ids, ctx)


def _elementwise_outputs_problem(outs: list[Node], in_group: Callable[[Node], bool],
                                 ctx: _Ctx) -> tuple[str, Node] | Refused:
    outs = sorted(outs, key=lambda m: ctx.pos[id(m)])
    anchor = outs[-1]
    for o in outs:
        if o.shape != anchor.shape:
            reader = next((c for c in ctx.consumers.get(o, []) if not in_group(c)), None)
            also = (f" ({o.name} is also read by {reader.name})" if reader is not None else
                    f" ({o.name} is also returned by the function)" if id(o) in ctx.out_ids else "")
            return Refused(Refusal.OUTPUT_SHAPES, f"{o.name} ({o.op}, {_shape(o.shape)}) and {anchor.name} "
                           f"({anchor.op}, {_shape(anchor.shape)}) would both be written by one kernel but have "
                           f"different shapes{also}")
    return "elementwise", anchor


def _validate_contraction(members: list[Node], ids: set[int], mm: Node, ctx: _Ctx) -> tuple[str, Node] | Refused:
    # Prologue = in-group ancestors of the matmul; everything else is epilogue.
    pro = _prologue_of(mm, ids)
    for m in members:
        if m is mm:
            continue
        if id(m) in pro:
            if _cat(m) != "injective":
                return Refused(Refusal.PROLOGUE_NOT_INJECTIVE, f"{m.op} {m.name} feeds the matmul's operand but is "
                               f"{_cat(m)}; a matmul only folds injective producers (transpose, reshape, slice, "
                               f"broadcast) into its operand loads")
            if m.op in _DATA_DEPENDENT:
                return Refused(Refusal.DATA_DEPENDENT_OPERAND,
                               f"{m.op} {m.name} {_DATA_DEPENDENT[m.op]}; its result is written to memory first")
            if id(m) in ctx.out_ids:
                return Refused(Refusal.RECOMPUTE, f"{m.name} is also returned by the function, fusing it into the "
                               f"matmul's operand load would recompute it")
            for c in ctx.consumers.get(m, []):
                if c is not mm and id(c) not in pro:
                    return Refused(Refusal.RECOMPUTE, f"{m.name} is also read by {c.name}{_gref(c)}, fusing it into "
                                   f"the matmul's operand load would recompute it")
        elif _epilogue_operand(m, ids, ctx):
            continue
        else:
            why = _epilogue_problem(m, mm)
            if why:
                return why
    return "contraction", mm


def _epilogue_operand(m: Node, ids: set[int], ctx: _Ctx) -> bool:
    """True for an injective op on values from outside the group that only epilogue members read
    (the NCHW bias b[:, None, None], b[::-1]; a chain of them): an indexed load in the epilogue, never
    computed twice."""
    return (_cat(m) == "injective" and m.op not in _DATA_DEPENDENT and id(m) not in ctx.out_ids
            and all(id(c) in ids for c in ctx.consumers.get(m, []))
            and all(_epilogue_operand(i, ids, ctx) for i in m.inputs if id(i) in ids))


def _prologue_of(mm: Node, ids: set[int]) -> set[int]:
    """ids of the in-group ancestors of the matmul (its prologue)."""
    pro: set[int] = set()
    stack = [i for i in mm.inputs if id(i) in ids]
    while stack:
        m = stack.pop()
        if id(m) in pro:
            continue
        pro.add(id(m))
        stack.extend(i for i in m.inputs if id(i) in ids)
    return pro


def _epilogue_problem(m: Node, mm: Node) -> Refused | None:
    if _cat(m) != "elementwise":
        return Refused(Refusal.EPILOGUE_NOT_ELEMENTWISE, f"{m.op} {m.name} is {_cat(m)}; a matmul epilogue only "
                       f"takes elementwise ops on its output, element by element")
    if m.shape != mm.shape:
        return Refused(Refusal.EPILOGUE_SHAPE, f"{m.op} {m.name} has shape {_shape(m.shape)}, not the matmul's "
                       f"output shape {_shape(mm.shape)}, so it cannot run in the matmul's epilogue")
    return None


def _validate_reduce(members: list[Node], ids: set[int], reds: list[Node], ctx: _Ctx) -> tuple[str, Node] | Refused:
    r0 = reds[0]
    for r in reds[1:]:
        why = _reduce_problem(r, r0)
        if why:
            return why
    rshapes = {r.shape for r in reds}
    for m in members:
        if _cat(m) == "reduce":
            continue
        why = _reduce_member_problem(m, lambda i: id(i) in ids, r0, rshapes)
        if why:
            return why
    return "reduce", r0


def _reduce_problem(r: Node, r0: Node) -> Refused | None:
    d, a = r0.inputs[0].shape, _axes(r0)
    if r.inputs[0].shape != d or _axes(r) != a:
        return Refused(Refusal.REDUCE_DOMAIN, f"{r.op} {r.name} reduces {_shape(r.inputs[0].shape)} over axes "
                       f"{_axes(r)}, but the kernel of {r0.op} {r0.name} reduces {_shape(d)} over axes {a}; one "
                       f"kernel has one reduction domain")
    return None


def _reduce_member_problem(m: Node, in_group: Callable[[Node], bool], r0: Node,
                           rshapes: set[tuple[int, ...]]) -> Refused | None:
    """Is the non-reduce member m legal in the reduce kernel anchored at r0 (shape, same-row reads)?"""
    d, a = r0.inputs[0].shape, _axes(r0)
    if m.shape != d and m.shape not in rshapes:
        return Refused(Refusal.REDUCE_MEMBER_SHAPE, f"{m.op} {m.name} has shape {_shape(m.shape)}, which is "
                       f"neither the reduction's input shape {_shape(d)} nor its result shape {_shape(r0.shape)}")
    for i in m.inputs:
        if not in_group(i):
            continue  # read from global memory: any index is fine
        shifted = m.op == "set_slice" and i is m.inputs[1]   # the written value is read at box coordinates
        if (m.op in ("transpose", "reshape", "slice", "concat", "pad", "take") or shifted) and not _is_identity_injective(m):
            return Refused(Refusal.REARRANGES_ROWS, f"{m.op} {m.name} would rearrange {i.name} across rows of "
                           f"the reduction kernel (each row is computed by its own threads)")
        if i.shape == m.shape:
            continue
        if m.shape == d and i.shape in rshapes and _row_aligned(i.shape, d, a):
            continue
        return Refused(Refusal.OTHER_ROW, f"{m.op} {m.name} reads the reduced value {i.name} ({_shape(i.shape)}) "
                       f"of a different row than the one it computes")
    return None


# Group references in reasons are resolved after the final numbering: "\x00<node id>\x00".
def _gref(n: Node) -> str:
    return f" (kernel \x00{n.id}\x00)"


# ----------------------------------------------------------------------------- the pass
class _Partition:
    """The current grouping, with what incremental legality checks need per group.

    members are unordered until the end; cand holds the members that may be read outside
    (a superset of the outputs); ext the consumers outside the group (for the cycle check).
    """

    def __init__(self, graph: Graph, ctx: _Ctx):
        self.ctx = ctx
        self.gid: dict[int, int] = {}          # id(node) -> group key
        self.members: dict[int, list[Node]] = {}
        self.kind: dict[int, str] = {}
        self.anchor: dict[int, Node] = {}
        self.cand: dict[int, list[Node]] = {}
        self.ext: dict[int, dict[int, Node]] = {}
        self.rshapes: dict[int, set[tuple[int, ...]]] = {}
        self.pro: dict[int, set[int]] = {}
        self._next = 0

    def new(self, n: Node) -> int:
        k = self._next
        self._next += 1
        self.gid[id(n)] = k
        self.members[k] = [n]
        self.kind[k] = _kind_of([n])
        self.anchor[k] = n
        self.cand[k] = [n]
        self.ext[k] = {id(c): c for c in self.ctx.consumers.get(n, [])}
        self.rshapes[k] = {n.shape} if _cat(n) == "reduce" else set()
        self.pro[k] = set()
        return k

    def sorted_members(self, k: int) -> list[Node]:
        return sorted(self.members[k], key=lambda m: self.ctx.pos[id(m)])

    def try_merge(self, a: int, b: int) -> tuple[str, Node] | Refused:
        """(kind, anchor) of the union of groups a and b when it is a legal kernel, else the reason."""
        if len(self.members[b]) == 1:  # b is {n}, the newest node: check only what n adds
            fast = self._join_one(a, self.members[b][0], b)
            if fast is not None:
                return fast
        return _validate(sorted(self.members[a] + self.members[b], key=lambda m: self.ctx.pos[id(m)]), self.ctx)

    def _join_one(self, a: int, n: Node, b: int) -> tuple[str, Node] | Refused | None:
        """Fast legality of adding the newest node n (group b = {n}) to group a; None: do the full check."""
        ka, cat = self.kind[a], _cat(n)
        union = (a, b)
        in_group = lambda c: self.gid.get(id(c)) in union  # noqa: E731
        if ka == "elementwise" and cat in _POINTWISE:
            outs = [m for m in self.cand[a] if self._is_output(m, union)] + [n]
            return _elementwise_outputs_problem(outs, in_group, self.ctx)
        if ka == "reduce" and cat in _POINTWISE:
            why = _reduce_member_problem(n, in_group, self.anchor[a], self.rshapes[a])
            return why or ("reduce", self.anchor[a])
        if ka == "reduce" and cat == "reduce":
            why = _reduce_problem(n, self.anchor[a])
            return why or ("reduce", self.anchor[a])
        if ka == "contraction" and cat == "elementwise":
            why = _epilogue_problem(n, self.anchor[a])
            if why:
                return why
            for i in n.inputs:
                if id(i) in self.pro[a]:
                    return Refused(Refusal.RECOMPUTE, f"{i.name} is also read by {n.name}{_gref(n)}, fusing it "
                                   f"into the matmul's operand load would recompute it")
            return "contraction", self.anchor[a]
        return None

    def _is_output(self, m: Node, union: tuple[int, ...]) -> bool:
        cons = self.ctx.consumers.get(m, [])
        return id(m) in self.ctx.out_ids or not cons or any(self.gid.get(id(c)) not in union for c in cons)

    def merge(self, a: int, b: int, kind: str, anchor: Node) -> int:
        for n in self.members[b]:
            self.gid[id(n)] = a
        self.members[a] = self.members[a] + self.members[b]
        self.kind[a] = kind
        self.anchor[a] = anchor
        self.cand[a] = [m for m in self.cand[a] + self.cand[b] if self._is_output(m, (a,))]
        ext = {**self.ext[a], **self.ext[b]}
        self.ext[a] = {k: c for k, c in ext.items() if self.gid.get(k) != a}
        self.rshapes[a] = self.rshapes[a] | self.rshapes[b]
        if kind == "contraction":
            self.pro[a] = _prologue_of(anchor, {id(m) for m in self.members[a]})
        for d in (self.members, self.kind, self.anchor, self.cand, self.ext, self.rshapes, self.pro):
            del d[b]
        return a

    def cycle_through(self, a: int, b: int) -> Node | None:
        """A node outside groups a∪b on a path that leaves the union and comes back (None: no cycle)."""
        union = (a, b)
        seen: set[int] = set()
        stack: list[tuple[int, Node]] = []
        for g in union:
            for c in self.ext[g].values():
                cg = self.gid.get(id(c))
                if cg is not None and cg not in union:  # unprocessed nodes cannot lead back
                    stack.append((cg, c))
        while stack:
            g, first = stack.pop()
            if g in seen:
                continue
            seen.add(g)
            for c in self.ext[g].values():
                cg = self.gid.get(id(c))
                if cg is None or cg == g:
                    continue
                if cg in union:
                    return first
                stack.append((cg, first))
        return None


@dataclass(frozen=True)
class FusionRule:
    """One cell of FUSION_TABLE: the rule that may fuse such an edge, or why such an edge never fuses.

    rule is a key of RULES (the merge still has to pass the legality checks: shapes, rows, cycles),
    or, for a refusal, the name FusionDecision.rule carries ('none', 'opaque', 'attention');
    reason(producer, consumer) is the refusal's English sentence.
    """

    rule: str
    refusal: Refusal | None = None
    reason: Callable[[Node, Node], str] | None = None


PRODUCER_KINDS = ("elementwise", "reduce", "contraction", "opaque", "attention")   # the producer's kernel kind
# The consumer's op category, and the kernel it already joined through an earlier producer (a diamond)
# when that is not the op's own kind: an elementwise op in a reduction's kernel is one of its row values.
CONSUMER_CATEGORIES = ("pointwise", "pointwise in reduce kernel", "pointwise in contraction kernel", "reduce",
                       "reduce in contraction kernel", "contraction", "opaque")


def consumer_category(op_category: str, kernel_kind: str) -> str:
    """The consumer's column of FUSION_TABLE.

    >>> consumer_category("injective", "elementwise"), consumer_category("elementwise", "reduce")
    ('pointwise', 'pointwise in reduce kernel')
    """
    if op_category == "opaque" or kernel_kind == "opaque":
        return "opaque"
    own = "pointwise" if op_category in _POINTWISE else op_category
    natural = "elementwise" if own == "pointwise" else own
    return own if kernel_kind == natural else f"{own} in {kernel_kind} kernel"


_OPAQUE_RULE = FusionRule("opaque", Refusal.OPAQUE, lambda p, n: _opaque_why(p.op if _cat(p) == "opaque" else n.op))
_REDUCE_MATMUL = FusionRule("none", Refusal.REDUCE_WITH_CONTRACTION,
                            lambda p, n: "a reduction and a matmul never share a kernel")
# a reduction never joins a matmul's kernel (_validate refuses it), so this cell is defensive
_REDUCE_IN_MATMUL = FusionRule("none", Refusal.REDUCE_WITH_CONTRACTION,
                               lambda p, n: "a reduction does not run inside a matmul kernel")

# (producer kind, consumer category) -> the rule that may fuse the edge, or the refusal. A cell naming a
# rule only says which rule decides: fuse={rule: False} turns it off, and the merge must still be legal.
FUSION_TABLE: dict[tuple[str, str], FusionRule] = {
    ("elementwise", "pointwise"): FusionRule("elementwise"),
    ("elementwise", "pointwise in reduce kernel"): FusionRule("reduce_producer"),
    ("elementwise", "pointwise in contraction kernel"): FusionRule("epilogue"),
    ("elementwise", "reduce"): FusionRule("reduce_producer"),
    ("elementwise", "reduce in contraction kernel"): _REDUCE_IN_MATMUL,
    ("elementwise", "contraction"): FusionRule("prologue"),
    ("reduce", "pointwise"): FusionRule("reduce_consumer"),
    ("reduce", "pointwise in reduce kernel"): FusionRule("multi_reduce"),
    ("reduce", "pointwise in contraction kernel"): _REDUCE_MATMUL,
    ("reduce", "reduce"): FusionRule("multi_reduce"),
    ("reduce", "reduce in contraction kernel"): _REDUCE_IN_MATMUL,
    ("reduce", "contraction"): FusionRule(
        "none", Refusal.REDUCE_WITH_CONTRACTION,
        lambda p, n: (f"a matmul does not absorb a reduction producer ({p.op} {p.name}); only injective "
                      f"producers (transpose, reshape, slice) fold into its operand loads")),
    ("contraction", "pointwise"): FusionRule("epilogue"),
    ("contraction", "pointwise in reduce kernel"): _REDUCE_MATMUL,
    ("contraction", "pointwise in contraction kernel"): FusionRule(
        "none", Refusal.TWO_CONTRACTIONS,
        lambda p, n: "two matmuls never share a kernel: each one is its own tiled loop nest"),
    ("contraction", "reduce"): FusionRule(
        "none", Refusal.REDUCE_WITH_CONTRACTION,
        lambda p, n: (f"{n.op} is a reduction, not an elementwise consumer; a matmul epilogue "
                      f"({p.name}) only takes elementwise ops")),
    ("contraction", "reduce in contraction kernel"): _REDUCE_IN_MATMUL,
    ("contraction", "contraction"): FusionRule(
        "none", Refusal.TWO_CONTRACTIONS,
        lambda p, n: (f"two matmuls never share a kernel: {n.name} reads the result of the matmul kernel "
                      f"of {p.name} from global memory")),
    **{(kind, "opaque"): _OPAQUE_RULE for kind in ("elementwise", "reduce", "contraction")},
    **{("opaque", c): _OPAQUE_RULE for c in CONSUMER_CATEGORIES},
    **{("attention", c): FusionRule(
        "attention", Refusal.ATTENTION_OUTPUT,
        lambda p, n: f"{p.name} is the output of the attention kernel{_gref(p)}, which writes only its result")
       for c in CONSUMER_CATEGORIES},
}


def _fused_reason(rule: str, p: Node, n: Node, anchor: Node) -> str:
    if rule == "elementwise":
        return (f"fused: elementwise — {n.op} reads {p.name} ({p.op}) element by element, so the value stays "
                f"in registers")
    if rule == "epilogue":
        if _cat(p) == "injective" and _cat(n) != "contraction":
            return (f"fused: epilogue — {p.op} {p.name} only rearranges an operand that {n.op} {n.name} reads in "
                    f"the epilogue of {anchor.op} {anchor.name}, so it becomes an indexed load there")
        if p is anchor:
            return (f"fused: epilogue — {n.op} is an elementwise consumer of matmul {p.name} with the same output "
                    f"shape, applied while the result is still in registers")
        return (f"fused: epilogue — {n.op} joins the epilogue of matmul {anchor.name} (same output shape "
                f"{_shape(anchor.shape)}), applied while the result is still in registers")
    if rule == "prologue":
        return (f"fused: prologue — {p.op} {p.name} only rearranges an operand of matmul {n.name}, so it becomes "
                f"an indexed load inside the matmul kernel")
    if rule == "reduce_producer":
        return (f"fused: reduce_producer — {p.op} {p.name} is computed on the fly while the reduction kernel of "
                f"{anchor.op} {anchor.name} reads its input")
    if rule == "reduce_consumer":
        if _cat(p) == "reduce":
            return (f"fused: reduce_consumer — {n.op} uses the reduced value {p.name} ({p.op}) on the same row, "
                    f"right after the reduction, without a round trip through global memory")
        return (f"fused: reduce_consumer — {n.op} reads {p.name} on the same row inside the reduction kernel of "
                f"{anchor.op} {anchor.name}, without a round trip through global memory")
    if rule == "multi_reduce":
        return (f"fused: multi_reduce — {n.op} {n.name} works on the same rows (domain "
                f"{_shape(anchor.inputs[0].shape)}, axes {_axes(anchor)}) as {anchor.op} {anchor.name}, so both "
                f"reductions share one kernel")
    return f"fused: {rule}"


def fuse(graph: Graph, rules: bool | dict[str, bool] = True) -> FusedGraph:
    """Partition the op nodes of `graph` into kernels; every op→op edge gets a FusionDecision.

    Pure: the graph is not modified. `rules=False` gives one kernel per op node;
    `rules={'epilogue': False}` turns single rules off (see RULES).

    >>> import numpy as np, explorer
    >>> g = explorer.trace(lambda x: np.exp(x) * 2 + 1, np.ones(8, np.float32))
    >>> fg = fuse(g)
    >>> len(fg.groups), fg.groups[0].kind
    (1, 'elementwise')
    """
    rule_on = parse_rules(rules)
    batches: list = []
    if rule_on["horizontal"]:
        from .horizontal import batch_horizontal
        graph, batches = batch_horizontal(graph)
    all_off = not any(rule_on.values())
    off_text = "fuse=False" if all_off else "fuse=" + repr({k: v for k, v in rule_on.items() if not v})
    ctx = _Ctx(graph)
    part = _Partition(graph, ctx)
    pending: list[tuple[Node, Node, bool, str, str, Refusal | None]] = []  # p, n, fused, rule, reason, code
    # attention patterns are claimed first: their nodes form one kernel each, nothing else joins it
    att_of = {id(m): a for a in (match_attention(graph) if rule_on["attention"] else []) for m in a.nodes}
    att_key: dict[int, int] = {}

    for n in graph.nodes:
        if not _is_op(n):
            continue
        cat = _cat(n)
        if id(n) in att_of:
            _join_attention(part, att_of[id(n)], n, att_key, pending, ctx)
            continue
        part.new(n)
        seen_p: set[int] = set()
        for p in n.inputs:
            if not _is_op(p) or id(p) in seen_p:
                continue
            seen_p.add(id(p))
            gp, gn = part.gid[id(p)], part.gid[id(n)]
            if gp == gn:  # joined through an earlier producer of n (a diamond)
                rule = _same_group_rule(p, n, part.members[gn], part.kind[gn])
                pending.append((p, n, True, rule, _fused_reason(rule, p, n, part.anchor[gn]), None))
                continue
            cell = FUSION_TABLE[(part.kind[gp], consumer_category(cat, part.kind[gn]))]
            rule = cell.rule
            if cell.refusal is not None:
                pending.append((p, n, False, rule, f"not fused: {cell.reason(p, n)}", cell.refusal))
                continue
            if not rule_on.get(rule, False):
                if all_off:
                    pending.append((p, n, False, rule, "not fused: fusion is turned off (fuse=False)",
                                    Refusal.FUSION_OFF))
                else:
                    pending.append((p, n, False, rule, f"not fused: rule '{rule}' is turned off ({off_text})",
                                    Refusal.RULE_OFF))
                continue
            res = part.try_merge(gp, gn)
            if isinstance(res, Refused):
                pending.append((p, n, False, rule, f"not fused: {res.reason}", res.code))
                continue
            via = part.cycle_through(gp, gn)
            if via is not None:
                pending.append((p, n, False, rule,
                                f"not fused: {n.name} would form a cycle with {p.name}: the kernel of {p.name} "
                                f"feeds {via.name}{_gref(via)}, which {n.name} needs, so one kernel would wait "
                                f"for itself", Refusal.CYCLE))
                continue
            kind, anchor = res
            part.merge(gp, gn, kind, anchor)
            pending.append((p, n, True, rule, _fused_reason(rule, p, n, anchor), None))

    # Final numbering: groups in a valid execution order (Kahn, earliest first member first).
    keys = list(part.members)
    succ: dict[int, set[int]] = {k: set() for k in keys}
    indeg: dict[int, int] = {k: 0 for k in keys}
    for k in keys:
        part.members[k] = part.sorted_members(k)
        for m in part.members[k]:
            for c in ctx.consumers.get(m, []):
                ck = part.gid.get(id(c))
                if ck is not None and ck != k and ck not in succ[k]:
                    succ[k].add(ck)
                    indeg[ck] += 1
    heap = [(ctx.pos[id(part.members[k][0])], k) for k in keys if indeg[k] == 0]
    heapq.heapify(heap)
    order: list[int] = []
    while heap:
        _, k = heapq.heappop(heap)
        order.append(k)
        for s in succ[k]:
            indeg[s] -= 1
            if indeg[s] == 0:
                heapq.heappush(heap, (ctx.pos[id(part.members[s][0])], s))
    if len(order) != len(keys):  # the cycle check above makes this unreachable
        raise VerificationError(f"fuse({graph.name}): the kernels form a cycle; please report this graph")

    groups: list[FusionGroup] = []
    used: dict[str, int] = {}
    gname: dict[int, str] = {}
    for idx, k in enumerate(order):
        ms = part.members[k]
        ids = {id(m) for m in ms}
        res = ("attention", part.anchor[k]) if part.kind[k] == "attention" else _validate(ms, ctx)
        if isinstance(res, Refused):  # merges are checked when made; this is the final safety net
            raise VerificationError(f"fuse({graph.name}): kernel of {ms[0].name} is invalid: {res.reason}")
        kind, anchor = res
        gid = f"g{idx}"
        for m in ms:
            gname[m.id] = gid
        groups.append(FusionGroup(id=gid, kind=kind, nodes=list(ms), inputs=_group_inputs(ms, ids),
                                  outputs=[m for m in ms if ctx.is_output(m, ids)], anchor=anchor,
                                  name=_unique_name(ms, used) if kind != "attention" else _unique_attention_name(used),
                                  source_lines=_source_lines(ms),
                                  pattern=att_of[id(anchor)] if kind == "attention" else None))

    group_of = {m.id: g for g in groups for m in g.nodes}
    decisions: list[FusionDecision] = []
    for p, n, fused, rule, reason, code in pending:
        together = group_of[p.id] is group_of[n.id]
        if together and not fused:  # refused at first, merged later through another edge
            rule = _same_group_rule(p, n, group_of[n.id].nodes, group_of[n.id].kind)
            reason = _fused_reason(rule, p, n, group_of[n.id].anchor)
            fused, code = True, None
        reason = re.sub("\x00(\\d+)\x00", lambda m: gname.get(int(m.group(1)), "?"), reason)
        decisions.append(FusionDecision(p, n, fused, rule, reason, code))
    for hb in batches:   # the kernels the batched computation landed in
        hb.group_ids = [g.id for g in groups if any(n.id in {m.id for m in hb.nodes} for n in g.nodes)]
        hb.kernels = len(hb.group_ids)
    fg = FusedGraph(graph, groups, decisions, rule_on, batches)
    check_invariants(fg)
    return fg


def _join_attention(part: _Partition, match: AttentionMatch, n: Node, att_key: dict[int, int],
                    pending: list, ctx: _Ctx) -> None:
    """Put n into its attention pattern's group (made on its first node); record its input edges."""
    k = att_key.get(id(match))
    if k is None:
        k = att_key[id(match)] = part.new(n)
        part.kind[k], part.anchor[k] = "attention", match.out
    else:
        part.gid[id(n)] = k
        part.members[k].append(n)
        part.cand[k] = [match.out]
    inside = {id(x) for x in match.nodes}
    part.ext[k] = {id(c): c for m in part.members[k] for c in ctx.consumers.get(m, []) if id(c) not in inside}
    for p in dict.fromkeys(n.inputs):
        if not _is_op(p):
            continue
        if part.gid.get(id(p)) == k:
            pending.append((p, n, True, "attention", f"fused: {ATTENTION_REASON} — {p.op} {p.name} and {n.op} "
                            f"{n.name} are one step of softmax(q @ kᵀ) @ v, computed tile by tile with the online "
                            f"softmax, so the scores never reach global memory", None))
        else:
            pending.append((p, n, False, "attention", f"not fused: {p.name} is an input of the attention kernel "
                            f"(q, k, v or mask), read from global memory", Refusal.ATTENTION_INPUT))


def _unique_attention_name(used: dict[str, int]) -> str:
    base, k = "flash_attention", used.get("flash_attention", 0)
    name = f"{base}_{k}" if k else base
    used[base] = k + 1
    used.setdefault(name, 1)
    return name


def _same_group_rule(p: Node, n: Node, members: list[Node], kind: str) -> str:
    """The rule that explains an edge whose two ends already share a kernel."""
    if kind == "contraction":
        mm = next(m for m in members if _cat(m) == "contraction")
        return "prologue" if (n is mm or _reaches(p, mm, members)) else "epilogue"
    if kind == "reduce":
        after_reduce = _cat(p) == "reduce" or _after_reduce(p, members)
        if _cat(n) == "reduce":
            return "multi_reduce" if after_reduce else "reduce_producer"
        return "reduce_consumer" if after_reduce else "reduce_producer"
    return "elementwise"


def _reaches(a: Node, b: Node, members: list[Node]) -> bool:
    ids = {id(m) for m in members}
    stack, seen = [b], set()
    while stack:
        m = stack.pop()
        if m is a:
            return True
        if id(m) in seen:
            continue
        seen.add(id(m))
        stack.extend(i for i in m.inputs if id(i) in ids)
    return False


def _after_reduce(p: Node, members: list[Node]) -> bool:
    ids = {id(m) for m in members}
    stack, seen = list(p.inputs), set()
    while stack:
        m = stack.pop()
        if id(m) not in ids or id(m) in seen:
            continue
        seen.add(id(m))
        if _cat(m) == "reduce":
            return True
        stack.extend(m.inputs)
    return False


def _group_inputs(members: list[Node], ids: set[int]) -> list[Node]:
    out: list[Node] = []
    seen: set[int] = set()
    for m in members:
        for i in m.inputs:
            if id(i) in ids or id(i) in seen or _is_scalar_const(i):
                continue
            seen.add(id(i))
            out.append(i)
    return out


def _unique_name(members: list[Node], used: dict[str, int]) -> str:
    """fused_<ops> (or <op>_kernel for one op), made unique with _1, _2...; `used` counts each base."""
    ops = [m.op for m in members]
    base = "fused_" + "_".join(ops) if len(ops) > 1 else f"{ops[0]}_kernel"
    base = c_identifier(base, "k")[:56].rstrip("_")
    name, k = base, used.get(base, 0)
    if k:
        name = f"{base}_{k}"
    while name in used:  # a truncated base can collide with an earlier suffixed name
        k += 1
        name = f"{base}_{k}"
    used[base] = k + 1
    used.setdefault(name, 1)
    return name


def _source_lines(members: list[Node]) -> list[Provenance]:
    seen: dict[tuple[str, int], Provenance] = {}
    for m in members:
        p = m.provenance
        if p is not None and (p.file, p.line) not in seen:
            seen[(p.file, p.line)] = p
    return [seen[k] for k in sorted(seen)]


# ----------------------------------------------------------------------------- checking
def check_invariants(fused: FusedGraph) -> FusedGraph:
    """Raise VerificationError unless `fused` satisfies every invariant the lowering relies on.

    Checks the partition (each op node in exactly one group, no inputs/consts), each kind's
    shape rules, inputs/outputs, unique C names, execution order, and one decision per
    op→op edge that agrees with the partition.
    """
    g = fused.graph
    ctx = _Ctx(g)
    name = f"fused {g.name}"

    def fail(msg: str) -> None:
        raise VerificationError(f"{name}: {msg}")

    where: dict[int, int] = {}
    for k, grp in enumerate(fused.groups):
        if grp.id != f"g{k}":
            fail(f"group {k} has id {grp.id!r}, expected 'g{k}'")
        if not grp.nodes:
            fail(f"group {grp.id} is empty")
        for m in grp.nodes:
            if not _is_op(m):
                fail(f"group {grp.id} contains {m.op} node {m.name}")
            if id(m) in where:
                fail(f"{m.name} is in two groups")
            where[id(m)] = k
        if [ctx.pos.get(id(m), -1) for m in grp.nodes] != sorted(ctx.pos.get(id(m), -1) for m in grp.nodes):
            fail(f"group {grp.id}: nodes are not in topological order")
        if grp.kind not in KINDS:
            fail(f"group {grp.id} has unknown kind {grp.kind!r}")
        if grp.kind == "attention":
            why = attention_problem(grp.nodes, g)
            if why:
                fail(f"group {grp.id}: {why}")
            res: tuple[str, Node] | Refused = ("attention", grp.anchor)
        else:
            res = _validate(grp.nodes, ctx)
        if isinstance(res, Refused):
            fail(f"group {grp.id}: {res.reason}")
        if res != (grp.kind, grp.anchor):
            fail(f"group {grp.id}: kind/anchor {grp.kind}/{grp.anchor.name} should be {res[0]}/{res[1].name}")
        if grp.kind == "opaque" and len(grp.nodes) != 1:
            fail(f"opaque group {grp.id} has {len(grp.nodes)} nodes")
        ids = {id(m) for m in grp.nodes}
        if [id(i) for i in grp.inputs] != [id(i) for i in _group_inputs(grp.nodes, ids)]:
            fail(f"group {grp.id}: inputs {[i.name for i in grp.inputs]} are not the external reads in first-use order")
        if [id(o) for o in grp.outputs] != [id(m) for m in grp.nodes if ctx.is_output(m, ids)]:
            fail(f"group {grp.id}: outputs {[o.name for o in grp.outputs]} are not the values read outside")
        if grp.kind == "elementwise" and any(o.shape != grp.anchor.shape for o in grp.outputs):
            fail(f"elementwise group {grp.id}: outputs differ in shape from the anchor {grp.anchor.name}")
        if c_identifier(grp.name) != grp.name:
            fail(f"group {grp.id}: name {grp.name!r} is not a C identifier")
        if grp.source_lines != sorted(set(grp.source_lines), key=lambda p: (p.file, p.line)):
            fail(f"group {grp.id}: source_lines are not deduplicated and in line order")
    if len({grp.name for grp in fused.groups}) != len(fused.groups):
        fail("two groups share a name")
    for n in g.op_nodes():
        if id(n) not in where:
            fail(f"{n.name} ({n.op}) is in no group")
    for k, grp in enumerate(fused.groups):
        for i in grp.inputs:
            if _is_op(i) and where[id(i)] >= k:
                fail(f"group {grp.id} reads {i.name} before its group runs")
    edges = {}
    for n in g.op_nodes():
        for p in n.inputs:
            if _is_op(p):
                edges[(id(p), id(n))] = (p, n)
    got: dict[tuple[int, int], FusionDecision] = {}
    for d in fused.decisions:
        key = (id(d.producer), id(d.consumer))
        if key not in edges:
            fail(f"decision {d.producer.name} → {d.consumer.name} is not an op→op edge")
        if key in got:
            fail(f"edge {d.producer.name} → {d.consumer.name} has two decisions")
        got[key] = d
        if d.fused != (where[key[0]] == where[key[1]]):
            fail(f"decision {d.producer.name} → {d.consumer.name} says fused={d.fused} but the groups disagree")
        if d.fused and d.rule not in RULES:
            fail(f"fused edge {d.producer.name} → {d.consumer.name} names no rule ({d.rule!r})")
        if not d.reason:
            fail(f"decision {d.producer.name} → {d.consumer.name} has no reason")
    missing = [f"{p.name} → {n.name}" for key, (p, n) in edges.items() if key not in got]
    if missing:
        fail("edges without a decision: " + ", ".join(missing))
    return fused


# ----------------------------------------------------------------------------- explaining
class Explanation:
    """Per kernel: its ops and the user's source lines; then every boundary decision.

    >>> import numpy as np, explorer
    >>> fg = fuse(explorer.trace(lambda x: np.exp(x) + 1, np.ones(4, np.float32)))
    >>> explain(fg).kernels[0]["ops"]
    ['exp', 'add']
    """

    def __init__(self, fused: FusedGraph):
        self.fused = fused
        self.kernels: list[dict[str, Any]] = [
            {"id": g.id, "name": g.name, "kind": g.kind, "ops": g.ops, "nodes": [n.name for n in g.nodes],
             "lines": [str(p) for p in g.source_lines]} for g in fused.groups]
        gof = fused.group_of
        self.boundaries: list[dict[str, Any]] = [
            {**d.as_dict(), "producer_kernel": gof(d.producer).id, "consumer_kernel": gof(d.consumer).id}
            for d in fused.decisions]

    def text(self) -> str:
        fg = self.fused
        lines = [f"fusion of {fg.name}: {len(fg.groups)} kernel{'s' if len(fg.groups) != 1 else ''}"]
        for k, g in zip(self.kernels, fg.groups):
            lines.append(f"kernel {k['id']} {k['name']} [{k['kind']}]: " + ", ".join(
                f"{n.name} {n.op}" for n in g.nodes))
            if g.source_lines:
                for p in g.source_lines:
                    lines.append(f"    {p}")
            else:
                lines.append("    (no source lines recorded)")
        if self.boundaries:
            lines.append("boundaries:")
            for b in self.boundaries:
                lines.append(f"  {b['producer']} → {b['consumer']}  {b['reason']}")
        return "\n".join(lines)

    __str__ = text

    def __repr__(self) -> str:
        return self.text()

    def _repr_html_(self) -> str:
        rows = []
        for k in self.kernels:
            src = "<br>".join(html.escape(s) for s in k["lines"]) or "<i>no source lines</i>"
            rows.append(f"<tr><td><b>{html.escape(k['id'])}</b> <code>{html.escape(k['name'])}</code> "
                        f"[{html.escape(k['kind'])}]</td><td>{html.escape(', '.join(k['ops']))}</td>"
                        f"<td><code>{src}</code></td></tr>")
        brows = []
        for b in self.boundaries:
            color = "#2a7a2a" if b["fused"] else "#a33"
            brows.append(f"<tr><td>{html.escape(b['producer'])} → {html.escape(b['consumer'])}</td>"
                         f"<td style='color:{color}'>{html.escape(b['reason'])}</td>"
                         f"<td><code>{html.escape(b['code'] or '')}</code></td></tr>")
        return ("<table><tr><th>kernel</th><th>ops</th><th>source lines</th></tr>" + "".join(rows) + "</table>"
                + ("<table><tr><th>edge</th><th>decision</th><th>code</th></tr>" + "".join(brows) + "</table>"
                   if brows else ""))


def explain(fused: FusedGraph, a: str | None = None, b: str | None = None) -> "Explanation | str":
    """Why ops are (not) in one kernel.

    explain(fg) → Explanation (kernels with their source lines, then every boundary);
    explain(fg, '%3', '%4') → the reason for that edge (either direction); for ops that are
    not adjacent, the decisions along the path between them; explain(fg, '%3') → the
    node's kernel and the decisions on its edges.

    >>> import numpy as np, explorer
    >>> fg = fuse(explorer.trace(lambda x: np.cumsum(np.exp(x), axis=0), np.ones(4, np.float32)))
    >>> explain(fg, fg.decisions[0].producer.name, fg.decisions[0].consumer.name)[:34]
    'not fused: cumsum is opaque (a sca'
    """
    if a is None and b is None:
        return Explanation(fused)
    g = fused.graph
    if a is None:
        a, b = b, None
    na = _lookup(g, a)
    if b is None:
        return _explain_node(fused, na)
    nb = _lookup(g, b)
    if na is nb:
        grp = fused.group_of(na)
        return f"{na.name} is one node" + (f", in kernel {grp.id} {grp.name}" if grp else "")
    d = fused.decision(na, nb)
    if d is not None:
        return d.reason
    for n1, n2 in ((na, nb), (nb, na)):
        if any(i is n1 for i in n2.inputs) and not (_is_op(n1) and _is_op(n2)):
            src = n1 if not _is_op(n1) else n2
            other = n2 if src is n1 else n1
            grp = fused.group_of(other)
            kind = "graph input" if src.op == "input" else "constant"
            if _is_scalar_const(src):
                return f"{src.name} is a scalar constant: it is an immediate inside kernel {grp.id} {grp.name}"
            return (f"{src.name} is a {kind}: kernel {grp.id} {grp.name} reads it from global memory "
                    f"(there is no op to fuse)")
    path = _path(g, na, nb) or _path(g, nb, na)
    ga, gb = fused.group_of(na), fused.group_of(nb)
    where = (f"both are in kernel {ga.id} {ga.name}" if ga is not None and ga is gb else
             f"{na.name} is in {_kname(ga)}, {nb.name} in {_kname(gb)}")
    if path is None:
        return f"{na.name} and {nb.name} are not connected by a path of ops; {where}"
    steps = []
    for p, c in zip(path, path[1:]):
        d = fused.decision(p, c)
        steps.append(f"{p.name} → {c.name}: " + (d.reason if d else explain(fused, p.name, c.name)))
    return (f"{na.name} and {nb.name} are not adjacent ({where}); the path " + " → ".join(n.name for n in path)
            + " crosses:\n  " + "\n  ".join(steps))


def _kname(g: FusionGroup | None) -> str:
    return f"kernel {g.id} {g.name}" if g is not None else "no kernel (an input or constant)"


def _explain_node(fused: FusedGraph, n: Node) -> str:
    grp = fused.group_of(n)
    head = f"{n.name} ({n.op}) is in {_kname(grp)}"
    if n.provenance is not None:
        head += f", from {n.provenance}"
    ds = [d for d in fused.decisions if d.producer is n or d.consumer is n]
    return head + ("".join(f"\n  {d.producer.name} → {d.consumer.name}: {d.reason}" for d in ds))


def _path(g: Graph, src: Node, dst: Node) -> list[Node] | None:
    """Shortest producer→consumer path src ⇝ dst (BFS over consumers)."""
    cons = g.consumers()
    prev: dict[int, Node | None] = {id(src): None}
    queue = [src]
    while queue:
        nxt = []
        for m in queue:
            for c in cons.get(m, []):
                if id(c) in prev:
                    continue
                prev[id(c)] = m
                if c is dst:
                    path = [c]
                    while prev[id(path[-1])] is not None:
                        path.append(prev[id(path[-1])])
                    return path[::-1]
                nxt.append(c)
        queue = nxt
    return None


__all__ = ["fuse", "explain", "check_invariants", "parse_rules", "FusedGraph", "FusionGroup", "FusionDecision",
           "Explanation", "RULES", "KINDS", "Refusal", "FusionRule", "FUSION_TABLE", "PRODUCER_KINDS",
           "CONSUMER_CATEGORIES", "consumer_category"]
