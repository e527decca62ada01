"""The graph IR: an SSA list of typed nodes, like a jaxpr or a torch.fx Graph.

>>> import numpy as np, explorer
>>> g = explorer.trace(lambda x: np.exp(x) + 1.0, np.ones((2, 3), np.float32))
>>> print(g.text())
graph lambda(x: f32[2,3]):
  %1: f32[2,3] = exp(x)
  %2: f32[] = const 1.0
  %3: f32[2,3] = add(%1, %2)
  return %3
>>> [n.op for n in g.op_nodes()], g.node("%3").type_str
(['exp', 'add'], 'f32[2,3]')
>>> g.verify() is g, g.dot().splitlines()[0]        # verify(): SSA and types hold; dot(): graphviz source
(True, 'digraph lambda {')

Nodes keep the id they got at trace time for life, so the text of two stages
diffs line by line: a pass that removes a node removes exactly its line.
"""
from __future__ import annotations

import dataclasses
import html
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from . import dtypes
from .errors import VerificationError
from .naming import C_KEYWORDS as _C_KEYWORDS, c_identifier, dot_id, dot_str  # noqa: F401 (re-exported: graph.c_identifier, tests/test_naming.py)


@dataclass(frozen=True)
class Provenance:
    """Where the user wrote an op: file, line number, function and the line's text."""

    file: str
    line: int
    function: str
    code: str              # the whole statement, on one line (a call spanning lines is joined)
    end_line: int = 0      # last line of the statement when it spans several (0: just `line`)

    def short(self) -> str:
        """'model.py:12', or 'cell [3], line 2' for a line of a notebook cell (see notebook_cell)."""
        cell = notebook_cell(self.file)
        if cell is not None:
            return f"cell [{cell}], line {self.line}" if cell else f"cell, line {self.line}"
        base = self.file.replace("\\", "/").rsplit("/", 1)[-1]
        return f"{base}:{self.line}"

    def __str__(self) -> str:
        return f"{self.short()}  {self.code.strip()}"


def notebook_cell(filename: str) -> int | None:
    """The In[n] execution count of an IPython/Jupyter cell's code file, 0 when the file is a cell's
    but its number is unknown, None when it is no cell.

    ipykernel compiles each cell under a temp name (/tmp/ipykernel_123/669796501.py; plain IPython:
    '<ipython-input-3-…>') and records name → execution count in the shell's compiler
    (`get_ipython().compile._filename_map`, which IPython's own tracebacks use for "Cell In[3], line 2").
    IPython is only consulted when it is already imported.
    """
    import sys
    ipython = sys.modules.get("IPython")
    if ipython is not None:
        try:
            shell = ipython.get_ipython()
            number = shell.compile._filename_map.get(filename) if shell is not None else None
        except Exception:  # noqa: BLE001 — an old or unusual IPython: fall back to the name
            number = None
        if number is not None:
            return int(number)
    m = _IPYTHON_INPUT.match(filename)
    if m:
        return int(m.group(1))
    return 0 if _IPYKERNEL_FILE.search(filename.replace("\\", "/")) else None


_IPYTHON_INPUT = re.compile(r"<ipython-input-(\d+)-[0-9a-f]+>")
_IPYKERNEL_FILE = re.compile(r"/ipykernel_\d+/\d+\.py$")


@dataclass(eq=False)
class Node:
    """One SSA value: `name: type = op(inputs..., attrs)`.

    op is a key of explorer.ops.OPS, or 'input' / 'const'. Identity is by object;
    `id` is stable across passes (new nodes made by a pass get fresh ids).
    """

    id: int
    op: str
    inputs: tuple["Node", ...]
    shape: tuple[int, ...]
    dtype: np.dtype
    attrs: dict[str, Any] = field(default_factory=dict)
    name: str = ""
    provenance: Provenance | None = None
    value: np.ndarray | None = None  # only for op == 'const'

    def __post_init__(self):
        if not self.name:
            self.name = f"%{self.id}"

    @property
    def type_str(self) -> str:
        return dtypes.type_str(self.shape, self.dtype)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.size * np.dtype(self.dtype).itemsize

    @property
    def category(self) -> str:
        from .ops import category_of
        return category_of(self)

    def replace(self, **changes) -> "Node":
        return dataclasses.replace(self, **changes)

    def __repr__(self) -> str:
        return f"<Node {self.name}: {self.type_str} = {self.op}>"


def format_const(node: Node) -> str:
    v = node.value
    if v is None:
        return "?"
    if v.ndim == 0 or v.size == 1:
        x = v.reshape(()).item()
        if isinstance(x, float):
            # the shortest text that reads back as the same value of the node's dtype: 1.01, not the
            # float64 expansion of float32(1.01) (1.0099999904632568)
            return str(np.asarray(x, dtype=node.dtype)[()])
        return repr(x)
    return f"<array {node.type_str}>"


def format_attrs(attrs: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_fmt_attr(v)}" for k, v in sorted(attrs.items()))


def _fmt_attr(v: Any) -> str:
    if isinstance(v, tuple):
        return "(" + ",".join(str(x) for x in v) + ("," if len(v) == 1 else "") + ")"
    if isinstance(v, np.dtype):
        return str(v)
    return str(v)


class Graph:
    """A traced function: inputs, nodes in topological order, outputs.

    `text()` prints one line per node with its type (stable and diffable),
    `dot()` returns graphviz source, `verify()` checks SSA and types. `rewrites` is set by
    passes.simplify (how many rewrites of each kind it made; shown under stats()['rewrites']).
    """

    rewrites: dict[str, int] | None = None

    def __init__(self, name: str, inputs: list[Node], nodes: list[Node], outputs: list[Node],
                 *, source_lines: dict[int, str] | None = None, source_file: str = "",
                 next_id: int | None = None):
        self.name = name
        self.inputs = list(inputs)
        self.nodes = list(nodes)
        self.outputs = list(outputs)
        self.source_file = source_file
        self.source_lines = dict(source_lines or {})  # line number -> text of the user's function
        self._next_id = next_id if next_id is not None else (max((n.id for n in nodes), default=-1) + 1)
        self.rewrites = None   # a derived graph starts without simplify's counts

    # -- building -------------------------------------------------------------
    def fresh_id(self) -> int:
        i = self._next_id
        self._next_id += 1
        return i

    @property
    def next_id(self) -> int:
        """The id fresh_id() gives next (every node of the graph has a smaller one)."""
        return self._next_id

    def derive(self, nodes: list[Node], outputs: list[Node], inputs: list[Node] | None = None,
               next_id: int | None = None) -> "Graph":
        """A new Graph sharing this one's name, source and id counter (for passes); `next_id` when the
        pass numbered new nodes itself, past this graph's counter."""
        return Graph(self.name, inputs if inputs is not None else self.inputs, nodes, outputs,
                     source_lines=self.source_lines, source_file=self.source_file,
                     next_id=self._next_id if next_id is None else next_id)

    # -- queries ----------------------------------------------------------------
    def consumers(self) -> dict[Node, list[Node]]:
        users: dict[Node, list[Node]] = {n: [] for n in self.nodes}
        for n in self.nodes:
            for i in n.inputs:
                users.setdefault(i, []).append(n)
        return users

    def op_nodes(self) -> list[Node]:
        return [n for n in self.nodes if n.op not in ("input", "const")]

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name or n.name == f"%{name}":
                return n
        from .errors import ExplorerError
        raise ExplorerError(f"graph {self.name} has no node named {name!r}; nodes are "
                            + ", ".join(n.name for n in self.nodes))

    def stats(self) -> dict[str, Any]:
        from .ops import node_cost
        by_cat: Counter[str] = Counter()
        by_op: Counter[str] = Counter()
        flops = 0
        nbytes = 0
        for n in self.op_nodes():
            by_cat[n.category] += 1
            by_op[n.op] += 1
            c = node_cost(n)
            flops += c.flops
            nbytes += c.bytes_read + c.bytes_written
        return {"nodes": len(self.op_nodes()), "ops_by_category": dict(sorted(by_cat.items())),
                "ops": dict(sorted(by_op.items())), "flops": int(flops), "bytes_unfused": int(nbytes),
                **({"rewrites": dict(self.rewrites)} if self.rewrites is not None else {})}

    # -- checking ---------------------------------------------------------------
    def verify(self) -> "Graph":
        """Check SSA order, input/output membership and every node's inferred type."""
        from .ops import OPS, infer_type
        seen: set[int] = set()
        names: set[str] = set()
        for n in self.nodes:
            if id(n) in seen:
                raise VerificationError(f"graph {self.name}: node {n.name} appears twice")
            if n.name in names:
                raise VerificationError(f"graph {self.name}: two nodes are named {n.name}")
            names.add(n.name)
            for i in n.inputs:
                if id(i) not in seen:
                    raise VerificationError(f"graph {self.name}: {n.name} uses {i.name} before it is defined")
            if n.op == "input":
                if n not in self.inputs:
                    raise VerificationError(f"graph {self.name}: input node {n.name} is not a graph input")
            elif n.op == "const":
                if n.value is None or tuple(n.value.shape) != n.shape or n.value.dtype != n.dtype:
                    raise VerificationError(f"graph {self.name}: constant {n.name} value does not match {n.type_str}")
            else:
                if n.op not in OPS:
                    raise VerificationError(f"graph {self.name}: {n.name} has unknown op {n.op!r}")
                shape, dt = infer_type(n.op, [(i.shape, i.dtype) for i in n.inputs], n.attrs)
                if tuple(shape) != tuple(n.shape) or np.dtype(dt) != np.dtype(n.dtype):
                    raise VerificationError(
                        f"graph {self.name}: {n.name} = {n.op} has type {n.type_str} but its inputs give "
                        f"{dtypes.type_str(shape, dt)}")
            seen.add(id(n))
        for n in self.inputs:
            if id(n) not in seen:
                raise VerificationError(f"graph {self.name}: input {n.name} missing from nodes")
        for n in self.outputs:
            if id(n) not in seen:
                raise VerificationError(f"graph {self.name}: output {n.name} missing from nodes")
        return self

    # -- printing ----------------------------------------------------------------
    def node_line(self, n: Node, provenance: bool = False) -> str:
        if n.op == "const":
            rhs = f"const {format_const(n)}"
        else:
            args = ", ".join(i.name for i in n.inputs)
            attrs = format_attrs(n.attrs)
            rhs = f"{n.op}({args}{', ' if args and attrs else ''}{attrs})"
        line = f"{n.name}: {n.type_str} = {rhs}"
        if provenance and n.provenance is not None:
            line = f"{line:<48}  # {n.provenance}"
        return line

    def signature(self) -> str:
        return f"graph {self.name}(" + ", ".join(f"{i.name}: {i.type_str}" for i in self.inputs) + "):"

    def text(self, provenance: bool = False) -> str:
        """One line per node: `%3: f32[64,256] = add(%1, b)`; `provenance=True` appends `# file:line  code`."""
        lines = [self.signature()]
        for n in self.nodes:
            if n.op == "input":
                continue
            lines.append("  " + self.node_line(n, provenance))
        lines.append("  return " + ", ".join(o.name for o in self.outputs))
        return "\n".join(lines)

    __str__ = text

    def _repr_html_(self) -> str:
        return f"<pre>{html.escape(self.text(provenance=True))}</pre>"

    def dot(self, clusters: Iterable[tuple[str, str, list[Node]]] | None = None,
            edge_labels: dict[tuple[int, int], str] | None = None) -> str:
        """Graphviz source. Inputs are green ellipses, outputs double octagons, constants grey.

        `clusters` is a list of (id, label, nodes) drawn as subgraph clusters (used by the
        fused snapshot); `edge_labels` labels edges keyed by (producer id, consumer id).
        """
        out_ids = {id(o) for o in self.outputs}
        lines = [f'digraph {dot_id(self.name)} {{', '  rankdir=TB;',
                 '  node [fontname="Helvetica", fontsize=10, shape=box, style="rounded,filled", fillcolor="#eef3fb"];',
                 '  edge [fontname="Helvetica", fontsize=9, color="#555555"];']

        def node_stmt(n: Node, indent: str = "  ") -> str:
            if n.op == "input":
                label = f"{n.name}\\n{n.type_str}"
                attrs = 'shape=ellipse, fillcolor="#d9f2d9"'
            elif n.op == "const":
                label = f"{format_const(n)}\\n{n.type_str}"
                attrs = 'shape=plaintext, style="", fontcolor="#666666"'
            else:
                label = f"{n.op}\\n{n.type_str}"
                attrs = 'fillcolor="#eef3fb"'
            if id(n) in out_ids:
                attrs += ', peripheries=2, fillcolor="#fde9c9"'
            tip = f", tooltip={dot_str(str(n.provenance))}" if n.provenance else ""
            return f"{indent}n{n.id} [label={dot_str(label)}, {attrs}{tip}];"

        in_cluster: set[int] = set()
        for k, (cid, label, members) in enumerate(clusters or []):
            lines.append(f"  subgraph cluster_{dot_id(cid)} {{")
            lines.append(f'    label={dot_str(label)}; style="rounded,dashed"; color="#3a6ea5"; fontcolor="#3a6ea5";')
            for n in members:
                lines.append(node_stmt(n, "    "))
                in_cluster.add(n.id)
            lines.append("  }")
        for n in self.nodes:
            if n.id not in in_cluster:
                lines.append(node_stmt(n))
        for n in self.nodes:
            for i in n.inputs:
                lab = (edge_labels or {}).get((i.id, n.id))
                extra = f" [label={dot_str(lab)}]" if lab else ""
                lines.append(f"  n{i.id} -> n{n.id}{extra};")
        lines.append("}")
        return "\n".join(lines)

    def to_svg(self) -> str:
        from .render import dot_to_svg
        return dot_to_svg(self.dot())

    def __repr__(self) -> str:
        return f"<Graph {self.name}: {len(self.inputs)} inputs, {len(self.op_nodes())} ops, {len(self.outputs)} outputs>"
