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
                 broadcast_to to the same shape, full slice, transpose∘transpose, reshape∘reshape
                 (x+0 -> x may turn -0.0 into -0.0 where NumPy gives +0.0: equal values, as in most compilers)
  cse            same op, same inputs, same attrs (and equal small constants) -> one node
  dce            nodes nothing reads (including those orphaned by the rewrites above)
"""
from __future__ import annotations

from collections import Counter
from typing import Any

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
    out.rewrites = dict(counts)  # type: ignore[attr-defined]
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
                repl = _identity(work, cur)
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


def _identity(work: Graph, n: Node) -> Node | None:
    """An existing node equal to `n` (or a cheaper replacement node with n's id), else None."""
    op, ins = n.op, n.inputs
    cand: Node | None = None
    if op in ("mul", "add") and len(ins) == 2:
        unit = 1 if op == "mul" else 0
        if _const_all(ins[1], unit):
            cand = ins[0]
        elif _const_all(ins[0], unit):
            cand = ins[1]
    elif op == "sub" and _const_all(ins[1], 0):
        cand = ins[0]
    elif op in ("div", "pow") and _const_all(ins[1], 1):
        cand = ins[0]
    elif op == "neg" and ins[0].op == "neg":
        cand = ins[0].inputs[0]
    elif op in ("cast", "reshape", "broadcast_to"):
        cand = ins[0]
    elif op == "concat" and len(ins) == 1:
        cand = ins[0]
    elif op == "pad" and not any(lo or hi for lo, hi in n.attrs["pads"]):
        cand = ins[0]
    elif op == "slice":
        if all(a == 0 and b == s and c == 1 for a, b, c, s in
               zip(n.attrs["starts"], n.attrs["stops"], n.attrs["steps"], ins[0].shape)):
            cand = ins[0]
    elif op == "transpose":
        axes = tuple(n.attrs["axes"])
        if axes == tuple(range(len(axes))):
            cand = ins[0]
        elif ins[0].op == "transpose":
            inner = tuple(ins[0].attrs["axes"])
            composed = tuple(inner[a] for a in axes)
            if composed == tuple(range(len(composed))):
                cand = ins[0].inputs[0]
            else:
                return n.replace(inputs=(ins[0].inputs[0],), attrs={"axes": composed})
    if op == "reshape" and cand is not None and not _same_type(cand, n) and ins[0].op == "reshape":
        return n.replace(inputs=(ins[0].inputs[0],))
    if cand is not None and _same_type(cand, n):
        return cand
    return None


def _cse_key(n: Node) -> Any:
    if n.op == "const":
        if n.value is None or n.size > CSE_CONST_LIMIT:
            return None
        return ("const", str(n.dtype), n.shape, n.value.tobytes())
    return (n.op, tuple(id(i) for i in n.inputs), repr(sorted(n.attrs.items())))


__all__ = ["simplify", "REWRITE_KINDS"]
