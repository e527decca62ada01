"""The data a compile passes between stages: Options (every knob), Snapshot (the IR after one stage)
and Context (what a stage may read besides its input IR).

A leaf module (it imports only NumPy, the standard library, explorer.errors and explorer.target), so the pipeline,
Compiled, the report and the widgets share these types without importing one another.

>>> s = Snapshot("traced", ir=None, stats={"nodes": 2})
>>> s
<Snapshot traced: {'nodes': 2}>
>>> Options(target="cpu").fuse
True
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import ExplorerError
from .target import get_target


@dataclass
class Options:
    """Every knob of a compile, as plain data (each widget control maps to one field)."""

    target: str = "auto"
    fuse: Any = True                 # True / False / {"epilogue": False, ...}
    schedule: Any = None             # None (defaults) | dict of knobs | Schedule | {kernel: Schedule}
    decompose: bool = True           # expand composite ops in simplify
    fast_math: bool = False          # trade NumPy's NaN/Inf semantics for speed (C backend)
    dtype: Any = None                # cast float example inputs to this dtype
    stop_after: str | None = None
    arch: str = "sm_80"              # nvcc -arch for the resource report
    verbose: bool = True             # print the one-line reason when auto falls back



class TextOptionError(ExplorerError, TypeError):
    """Snapshot.text(option=...) that this stage's IR does not take (a TypeError too, as before)."""


@dataclass
class Snapshot:
    """The IR after one stage. `text()`/`dot()` delegate to the IR; `stats` includes `wall_ms`."""

    name: str
    ir: Any
    stats: dict[str, Any] = field(default_factory=dict)

    def text(self, **kw) -> str:
        if kw:
            import inspect
            try:
                inspect.signature(self.ir.text).bind(**kw)
            except TypeError:
                params = [p for p in inspect.signature(self.ir.text).parameters if p != "self"]
                raise TextOptionError(f"stage {self.name!r}: text() takes {', '.join(f'{p}=' for p in params) or 'no'} "
                                    f"keyword option(s), got {', '.join(f'{k}=' for k in kw)}") from None
            except ValueError:
                pass
        return self.ir.text(**kw)

    def dot(self) -> str:
        return self.ir.dot()

    def to_svg(self) -> str:
        from .render import dot_to_svg
        return dot_to_svg(self.dot())

    def _repr_html_(self) -> str:
        import html
        return f"<b>{html.escape(self.name)}</b><pre>{html.escape(self.text())}</pre>"

    def __repr__(self) -> str:
        return f"<Snapshot {self.name}: {self.stats}>"


class Context:
    """What a stage may read besides its input IR: the options, the Target (`target`) and earlier snapshots."""

    def __init__(self, options: Options, snapshots: list[Snapshot], examples: list[np.ndarray]):
        self.options = options
        self.target = get_target(options.target)   # options.target is resolved (not 'auto')
        self.snapshots = snapshots
        self.examples = examples
        self.stage_notes: dict[str, dict[str, Any]] = {}   # extra stats a stage reports (stage name → dict)

    def ir(self, name: str) -> Any:
        for s in self.snapshots:
            if s.name == name:
                return s.ir
        raise KeyError(name)


__all__ = ["Options", "TextOptionError", "Snapshot", "Context"]
