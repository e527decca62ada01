"""simplify: decomposition of composites, constant folding, algebraic identities, CSE and DCE.

A pure pass: returns a new Graph (via Graph.derive) and never mutates its input.
Surviving nodes keep their ids and names, so `traced` and `simplified` diff line by
line. Rewrites repeat until nothing changes; each is counted in `graph.rewrites`
(shown under stats()['rewrites']).

Before (x * 1.0 feeding a double transpose, a dead exp, a repeated tanh):

    graph f(x: f32[2,3]):
      %1: f32[] = const 1.0
      %2: f32[2,3] = mul(x, %1)
      %3: f32[3,2] = transpose(%2, axes=(1,0))
      %4: f32[2,3] = transpose(%3, axes=(1,0))
      %5: f32[2,3] = exp(x)
      %6: f32[2,3] = tanh(%4)
      %7: f32[2,3] = tanh(%4)
      %8: f32[2,3] = add(%6, %7)
      return %8

After simplify (identity x*1 -> x, transpose∘transpose -> nothing, CSE %7 -> %6, DCE):

    graph f(x: f32[2,3]):
      %6: f32[2,3] = tanh(x)
      %8: f32[2,3] = add(%6, %6)
      return %8

Rewrites (each only when the result keeps the node's exact shape and dtype):
  decompose      composite (softmax, layernorm, gelu, ...) -> its primitive ops, re-traced in place;
                 the new nodes carry the composite's provenance
  constant_fold  an op whose inputs are all constants -> a constant (skipped above 1M elements)
  identity       x*1, 1*x, x+0, 0+x, x-0, x/1, x**1, neg(neg x), cast to the same dtype, reshape /
                 broadcast_to to the same shape, full slice, transpose∘transpose, reshape∘reshape:
                 (pattern, rewrite) pairs in IDENTITIES, applied by a PatternMatcher (as tinygrad's)
                 (x+0 -> x may turn -0.0 into -0.0 where NumPy gives +0.0: equal values, as in most compilers)
  cse            same op, same inputs, same attrs (and equal small constants) -> one node
  dce            nodes nothing reads (including those orphaned by the rewrites above)
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .. import ops as _ops
from ..errors import VerificationError
from ..graph import Graph, Node

FOLD_LIMIT = 1 << 20        # do not materialize folded constants bigger than this
CSE_CONST_LIMIT = 64        # constants up to this many elements are merged by value
REWRITE_KINDS = ("decompose", "constant_fold", "identity", "cse", "dce")
MAX_ITERATIONS = 100


def simplify(graph: Graph, decompose: bool = True) -> Graph:
    """Return a simplified copy of `graph`; `result.rewrites` counts each rewrite kind.

    >>> import numpy as np, explorer
    >>> g = explorer.trace(lambda x: np.exp(x * 1.0) + 0.0, np.ones(4, np.float32))
    >>> s = simplify(g)
    >>> [n.op for n in s.op_nodes()], s.rewrites["identity"]
    (['exp'], 2)
    """
    counts: Counter[str] = Counter({k: 0 for k in REWRITE_KINDS})
    work = graph.derive(list(graph.nodes), list(graph.outputs))  # owns the id counter; input stays untouched
    nodes, outputs = list(graph.nodes), list(graph.outputs)
    for _ in range(MAX_ITERATIONS):
        before = sum(counts.values())
        nodes, outputs = _rewrite_once(work, nodes, outputs, decompose, counts)
        nodes, outputs = _dce(work, nodes, outputs, counts)
        if sum(counts.values()) == before:
            break
    out = work.derive(nodes, outputs)
    out.rewrites = dict(counts)
    return out


# ----------------------------------------------------------------------------- one sweep
def _rewrite_once(work: Graph, nodes: list[Node], outputs: list[Node], decompose: bool,
                  counts: Counter) -> tuple[list[Node], list[Node]]:
    env: dict[int, Node] = {}           # id(old node) -> its replacement in the new list
    new_nodes: list[Node] = []
    cse: dict[Any, Node] = {}

    for n in nodes:
        if n.op == "input":
            env[id(n)] = n
            new_nodes.append(n)
            continue
        ins = tuple(env[id(i)] for i in n.inputs)
        cur = n if all(a is b for a, b in zip(ins, n.inputs)) else n.replace(inputs=ins)

        if cur.op != "const":
            d = _ops.get(cur.op)
            if decompose and d.composite:
                added, result = _decompose(work, cur, d)
                new_nodes.extend(added)
                env[id(n)] = result
                counts["decompose"] += 1
                continue
            folded = _fold(cur)
            if folded is not None:
                cur = folded
                counts["constant_fold"] += 1
            else:
                repl = IDENTITIES.rewrite(cur)
                if repl is not None:
                    counts["identity"] += 1
                    if repl.id != cur.id:   # an existing node computes the same value
                        env[id(n)] = repl
                        continue
                    cur = repl              # a cheaper node that keeps this node's id
        key = _cse_key(cur)
        if key is not None:
            prev = cse.get(key)
            if prev is not None:
                env[id(n)] = prev
                counts["cse"] += 1
                continue
            cse[key] = cur
        env[id(n)] = cur
        new_nodes.append(cur)
    return new_nodes, [env[id(o)] for o in outputs]


def _dce(work: Graph, nodes: list[Node], outputs: list[Node], counts: Counter) -> tuple[list[Node], list[Node]]:
    live: set[int] = {id(o) for o in outputs}
    for n in reversed(nodes):
        if id(n) in live:
            live.update(id(i) for i in n.inputs)
    kept = [n for n in nodes if n.op == "input" or id(n) in live]
    counts["dce"] += len(nodes) - len(kept)
    return kept, outputs


# ----------------------------------------------------------------------------- rewrites
def _decompose(work: Graph, node: Node, d: _ops.OpDef) -> tuple[list[Node], Node]:
    """Re-trace the composite's NumPy implementation on the node's inputs."""
    from ..tracing import Tensor, Tracer
    tr = Tracer(id_source=work.fresh_id, provenance=node.provenance)
    args = [tr.wrap(i) for i in node.inputs]
    res = d.decomposition(*args, **node.attrs)
    if not isinstance(res, Tensor):
        raise VerificationError(f"decomposition of {node.op} returned {type(res).__name__}, not a traced array")
    r = res.node
    if r.shape != node.shape or r.dtype != node.dtype:
        raise VerificationError(f"decomposition of {node.name} = {node.op} gives {r.type_str}, expected {node.type_str}")
    return tr.nodes, r


def _fold(n: Node) -> Node | None:
    if not n.inputs or any(i.op != "const" for i in n.inputs) or n.size > FOLD_LIMIT:
        return None
    v = _ops.evaluate(n.op, [i.value for i in n.inputs], n.attrs)
    if tuple(v.shape) != n.shape:
        return None
    v = np.array(v, dtype=n.dtype, order="C")  # not ascontiguousarray: it turns 0-d into shape (1,)
    return Node(n.id, "const", (), n.shape, n.dtype, {}, n.name, n.provenance, v)


def _const_all(n: Node, x: float) -> bool:
    return n.op == "const" and n.value is not None and n.size <= CSE_CONST_LIMIT and bool(np.all(n.value == x))


def _same_type(a: Node, b: Node) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype


# ----------------------------------------------------------------------------- identities as data
@dataclass(frozen=True)
class Pat:
    """A pattern over a node and its inputs, as in tinygrad's UPat.

    op: the node's op (None: any); src: one pattern per input (None: any inputs; a tuple also fixes
    how many); name: bind the matched node to this name for the rewrite; where: a test on the node.
    """

    op: str | None = None
    src: tuple["Pat", ...] | None = None
    name: str | None = None
    where: Callable[[Node], bool] | None = None

    def match(self, n: Node, bound: dict[str, Node]) -> bool:
        if self.op is not None and n.op != self.op:
            return False
        if self.src is not None and (len(self.src) != len(n.inputs)
                                     or not all(p.match(i, bound) for p, i in zip(self.src, n.inputs))):
            return False
        if self.where is not None and not self.where(n):
            return False
        if self.name is not None:
            bound[self.name] = n
        return True


Rewrite = Callable[..., "Node | None"]   # rewrite(n=matched node, **bound names) -> replacement or None


class PatternMatcher:
    """(pattern, rewrite) pairs tried in order on one node; the first rewrite that returns a node wins.

    Patterns are indexed by their root op, so a node only meets the patterns of its own op.

    >>> pm = PatternMatcher([(Pat("neg", (Pat("neg", (Pat(name="x"),)),)), lambda n, x: x)])
    >>> import numpy as np, explorer
    >>> g = explorer.trace(lambda x: -(-x), np.ones(2, np.float32))
    >>> pm.rewrite(g.nodes[-1]) is g.inputs[0]
    True
    """

    def __init__(self, rules: list[tuple[Pat, Rewrite]]):
        self.rules = list(rules)
        self._any_op = [(pat, fn) for pat, fn in self.rules if pat.op is None]
        self._by_op = {op: [(pat, fn) for pat, fn in self.rules if pat.op in (op, None)]
                       for op in {pat.op for pat, _ in self.rules if pat.op is not None}}

    def rewrite(self, n: Node) -> Node | None:
        """The first rewrite's result among the patterns that match `n`, else None."""
        for pat, fn in self._by_op.get(n.op, self._any_op):
            bound: dict[str, Node] = {}
            if pat.match(n, bound):
                out = fn(n=n, **bound)
                if out is not None:
                    return out
        return None


def _all(x: float) -> Pat:
    return Pat("const", where=lambda c: _const_all(c, x))


def _same(n: Node, x: Node) -> Node | None:
    """x replaces n only when it has n's exact shape and dtype (x * ones(4) may broadcast x)."""
    return x if _same_type(x, n) else None


def _transpose_pair(n: Node, inner: Node, x: Node) -> Node | None:
    composed = tuple(inner.attrs["axes"][a] for a in n.attrs["axes"])
    if composed == tuple(range(len(composed))):
        return _same(n, x)
    return n.replace(inputs=(x,), attrs={"axes": composed})   # one transpose, keeping n's id


def _identity_axes(n: Node) -> bool:
    axes = tuple(n.attrs["axes"])
    return axes == tuple(range(len(axes)))


def _full_slice(n: Node) -> bool:
    return all(a == 0 and b == s and c == 1 for a, b, c, s in
               zip(n.attrs["starts"], n.attrs["stops"], n.attrs["steps"], n.inputs[0].shape))


_X = Pat(name="x")   # any node, bound as x
# The algebraic identities, in the order they are tried: each returns an existing node equal to the
# matched one, or a cheaper node that keeps the matched node's id.
IDENTITIES = PatternMatcher([
    (Pat("mul", (_X, _all(1))), _same),                                         # x * 1
    (Pat("mul", (_all(1), _X)), _same),                                         # 1 * x
    (Pat("add", (_X, _all(0))), _same),                                         # x + 0
    (Pat("add", (_all(0), _X)), _same),                                         # 0 + x
    (Pat("sub", (_X, _all(0))), _same),                                         # x - 0
    (Pat("div", (_X, _all(1))), _same),                                         # x / 1
    (Pat("pow", (_X, _all(1))), _same),                                         # x ** 1
    (Pat("neg", (Pat("neg", (_X,)),)), _same),                                  # -(-x)
    (Pat("cast", (_X,)), _same),                                                # cast to the same dtype
    (Pat("reshape", (_X,)), _same),                                             # reshape to the same shape
    (Pat("reshape", (Pat("reshape", (_X,)),)), lambda n, x: n.replace(inputs=(x,))),  # reshape∘reshape
    (Pat("broadcast_to", (_X,)), _same),                                        # broadcast to the same shape
    (Pat("concat", (_X,)), _same),                                              # concat of one array
    (Pat("pad", (_X,), where=lambda n: not any(lo or hi for lo, hi in n.attrs["pads"])), _same),
    (Pat("slice", (_X,), where=_full_slice), _same),                            # x[:, :]
    (Pat("transpose", (_X,), where=_identity_axes), _same),                     # transpose(x, (0, 1))
    (Pat("transpose", (Pat("transpose", (_X,), name="inner"),)), _transpose_pair),  # transpose∘transpose
])


def _cse_key(n: Node) -> Any:
    if n.op == "const":
        if n.value is None or n.size > CSE_CONST_LIMIT:
            return None
        return ("const", str(n.dtype), n.shape, n.value.tobytes())
    return (n.op, tuple(id(i) for i in n.inputs), repr(sorted(n.attrs.items())))


__all__ = ["simplify", "REWRITE_KINDS", "IDENTITIES", "Pat", "PatternMatcher"]
