"""KnobPanel: every compile knob as a control; `kwargs()` is exactly what explorer.compile gets.

Every control's help is its label's title (hover), and every knob that does not apply is disabled
with its reason written under its group (`notes`: tile sizes without a matmul, per-rule fusion
checkboxes with fusion off, GPU schedule knobs on the CPU, ...). The help texts come from explorer
(explorer.schedule.KNOBS, explorer.passes.fusion.RULE_DOCS). A value given to the constructor that a
menu lacks (tile 48, scale 3) is added to it.

>>> from widgets.panels.knobs import KnobPanel
>>> k = KnobPanel(target="cpu", schedule={"vector": 4})
>>> k.kwargs()["schedule"], k.kwargs()["target"]
({'vector': 4}, 'cpu')
"""
from __future__ import annotations

from typing import Any, Callable

import ipywidgets as W
import numpy as np
from explorer.schedule import KNOBS as SCHEDULE_KNOB_DOCS
from explorer.passes.fusion import RULE_DOCS as RULE_HELP
from explorer.passes.fusion import RULES as FUSION_RULES
from explorer.target import get_target

from ._util import esc
TARGETS = ("cpu", "sim", "cuda", "reference")
AUTO = "auto"
TILE_SIZES = (AUTO, 4, 8, 16, 32, 64, 128, 256)
THREADS = (AUTO, 32, 64, 128, 256, 512, 1024)
VECTOR = (AUTO, 1, 2, 4, 8, 16)
THREAD_TILES = (AUTO, (1, 1), (2, 2), (4, 4), (4, 8), (8, 8), (4, 16), (4, 32), (8, 32))
ON_OFF = (("auto", AUTO), ("on", True), ("off", False))
SCHEDULE_KNOBS = ("thread_tile", "threads", "vector", "unroll", "shared", "double_buffer",
                  "tensor_core")  # besides "tile"
AS_GIVEN = "given"  # Dropdown treats None as "nothing selected", so a sentinel
DTYPES = (("as given", AS_GIVEN), ("float32", "float32"), ("float64", "float64"), ("float16", "float16"),
          ("bfloat16 (ml_dtypes)", "bfloat16"))
SCALES = (("×¼", 0.25), ("×½", 0.5), ("×1", 1.0), ("×2", 2.0), ("×4", 4.0), ("×8", 8.0))
NARROW = W.Layout(width="176px")


class KnobPanel(W.VBox):
    """Fusion on/off and per rule, tile (BM, BN, BK), threads, vector, unroll, shared staging and its
    double buffering, tensor cores (f16 matmuls on cuda/sim), dtype, target, fast-math and problem-size scale. `on_change(cb)` calls cb(knob_name) after a user change."""

    def __init__(self, target: str = "cpu", fuse: Any = True, schedule: dict | None = None, dtype: Any = None,
                 fast_math: bool = False, scale: float = 1.0, **kwargs: Any):
        style = {"description_width": "70px"}
        self.fuse = W.Checkbox(description="fusion", indent=False, tooltip="fuse ops into kernels (fuse=True/False)")
        self.rules = {r: W.Checkbox(description=r, indent=False, value=True, layout=W.Layout(margin="0 0 0 14px"))
                      for r in FUSION_RULES}
        self.tile = [W.Dropdown(description=d, options=TILE_SIZES, layout=NARROW, style=style)
                     for d in ("tile BM", "tile BN", "tile BK")]
        self.threads = W.Dropdown(description="threads", options=THREADS, layout=NARROW, style=style)
        self.thread_tile = W.Dropdown(description="reg tile", options=[(_tt(v), v) for v in THREAD_TILES],
                                      layout=NARROW, style=style)
        self.vector = W.Dropdown(description="vector", options=VECTOR, layout=NARROW, style=style)
        self.unroll = W.Dropdown(description="unroll", options=ON_OFF, layout=NARROW, style=style)
        self.shared = W.Dropdown(description="shared", options=ON_OFF, layout=NARROW, style=style)
        self.double_buffer = W.Dropdown(description="2x buffer", options=ON_OFF, layout=NARROW, style=style)
        self.tensor_core = W.Dropdown(description="wmma", options=ON_OFF, layout=NARROW, style=style)
        self.dtype = W.Dropdown(description="dtype", options=DTYPES, layout=NARROW, style=style)
        self.target = W.Dropdown(description="target", options=TARGETS, layout=NARROW, style=style)
        self.fast_math = W.Checkbox(description="fast math", indent=False)
        self.scale = W.Dropdown(description="size", options=SCALES, value=1.0, layout=NARROW, style=style,
                                tooltip=SCALE_HELP)
        self.tile_note = W.HTML()
        # the reasons knobs do not apply, visible under each group (a tooltip alone is never rendered
        # by ipywidgets 8 for a control with a description)
        self.notes = {g: W.HTML(layout=W.Layout(width="196px")) for g in GROUPS}
        for n in self.notes.values():
            n.add_class("ke-knob-note")
        self._saved_rules: dict[str, bool] | None = None  # rule values kept while fusion is off
        self._callbacks: list[Callable[[str], None]] = []
        self._quiet = False
        self._why: dict[str, str] = {}
        self.has_matmul = True  # until a compile says otherwise
        # schedule keys given to the constructor that no control shows (e.g. "chunk"): kept as given
        self.schedule_extra: dict[str, Any] = {}
        for name, w in self.controls().items():
            # the help is the label's title: rendered on the page, shown on hover
            w.description_allow_html = True
            w.description = f'<span title="{esc(_help(name, w))}">{esc(label(name))}</span>'
            w.tooltip = _help(name, w)
        super().__init__([W.HTML("<b>knobs</b>"), self.target, self.dtype, self.scale, self.fast_math, self.notes["knobs"],
                          W.HTML("<b>fusion</b>"), self.fuse, *self.rules.values(), self.notes["fusion"],
                          W.HTML("<b>schedule</b>"), *self.tile, self.tile_note, self.thread_tile, self.threads,
                          self.vector, self.unroll, self.shared, self.double_buffer, self.tensor_core,
                          self.notes["schedule"]],
                         layout=W.Layout(width="210px", min_width="210px"), **kwargs)
        self.add_class("ke-knobs")
        self.set(target=target, fuse=fuse, schedule=schedule, dtype=dtype, fast_math=fast_math, scale=scale)
        for name, w in self.controls().items():
            w.observe(lambda ch, name=name: self._changed(name), "value")

    def controls(self) -> dict[str, W.ValueWidget]:
        c: dict[str, Any] = {"fuse": self.fuse, "dtype": self.dtype, "target": self.target,
                             "fast_math": self.fast_math, "scale": self.scale}
        c.update({k: getattr(self, k) for k in SCHEDULE_KNOBS})
        c.update({f"rule:{r}": w for r, w in self.rules.items()})
        c.update({f"tile{i}": w for i, w in enumerate(self.tile)})
        return c

    # -- values ---------------------------------------------------------------------------------
    def set(self, target: str | None = None, fuse: Any = None, schedule: dict | None = None, dtype: Any = None,
            fast_math: bool | None = None, scale: float | None = None) -> None:
        """Set controls without triggering a recompile."""
        self._quiet = True
        try:
            if target is not None and target in TARGETS:
                self.target.value = target
            if fuse is not None:
                self._saved_rules = None
                self.fuse.value = bool(fuse) if not isinstance(fuse, dict) else True
                for r, w in self.rules.items():
                    w.value = bool(fuse.get(r, True)) if isinstance(fuse, dict) else True
            if isinstance(schedule, dict):
                # a value the menu lacks (tile 48, threads 96, ...) is added to it, so the controls show
                # exactly the schedule that was compiled and the next knob change keeps it
                tile = schedule.get("tile")
                tile = tuple(tile) if isinstance(tile, (tuple, list)) and len(tile) == 3 else (AUTO,) * 3
                for w, v in zip(self.tile, tile):
                    _select(w, v)
                for key in SCHEDULE_KNOBS:
                    v = schedule.get(key, AUTO)
                    _select(getattr(self, key), tuple(v) if isinstance(v, list) else v)
                self.schedule_extra = {k: v for k, v in schedule.items() if k != "tile" and k not in SCHEDULE_KNOBS}
            if dtype is not None:
                name = getattr(dtype, "__name__", None) or str(dtype)
                self.dtype.value = name if name in dict(DTYPES).values() else AS_GIVEN
            if fast_math is not None:
                self.fast_math.value = bool(fast_math)
            if scale is not None:
                if isinstance(scale, bool) or not isinstance(scale, (int, float, np.integer, np.floating)) \
                        or not np.isfinite(scale) or scale <= 0:
                    from explorer import ExplorerError
                    raise ExplorerError(f"scale={scale!r}: must be a positive number (the factor on the first "
                                        f"input's leading dimension), e.g. 0.5 or 2")
                _select(self.scale, float(scale))
        finally:
            self._quiet = False

    def fuse_value(self) -> Any:
        if not self.fuse.value:
            return False
        if self._saved_rules is not None:  # fusion just turned back on: the boxes are restored on redraw
            rules = dict(self._saved_rules)
            return True if all(rules.values()) else rules
        rules = {r: w.value for r, w in self.rules.items()}
        return True if all(rules.values()) else rules

    def schedule_value(self, target: str | None = None) -> dict | None:
        """The schedule dict of the knobs that apply to `target` (default: the target knob)."""
        target = target or self.target.value
        why = self.applicability(target)
        sched: dict[str, Any] = dict(self.schedule_extra) if get_target(target).scheduled else {}
        tile = [w.value for w in self.tile]
        if all(v != AUTO for v in tile) and "tile0" not in why:
            sched["tile"] = tuple(tile)
        for key in SCHEDULE_KNOBS:
            v = getattr(self, key).value
            if v != AUTO and key not in why:
                sched[key] = v
        return sched or None

    def kwargs(self, target: str | None = None) -> dict[str, Any]:
        """The keyword arguments for explorer.compile these controls stand for (for `target`, which
        defaults to the target knob: the dashboard compiles the other language's source this way)."""
        target = target or self.target.value
        return {"target": target, "fuse": self.fuse_value(), "schedule": self.schedule_value(target),
                "dtype": None if self.dtype.value == AS_GIVEN else self.dtype.value,
                "fast_math": self.fast_math.value and get_target(target).language == "c"}

    # -- applicability ------------------------------------------------------------------------------
    def applicability(self, target: str, has_matmul: bool | None = None) -> dict[str, str]:
        """{control name: why it does not apply} for `target` (pure; no widget changes)."""
        has_matmul = self.has_matmul if has_matmul is None else has_matmul
        t = get_target(target)
        not_here = t.knobs_not_applicable   # the target's own reasons (explorer/target.py)
        why: dict[str, str] = {}
        if not self.fuse.value:
            for r in self.rules:
                why[f"rule:{r}"] = "fusion is off: turn it on to choose fusion rules"
        no_mm = "no matmul in this function: this knob applies to matmul kernels"
        if not t.scheduled:
            for name in ("tile0", "tile1", "tile2", *SCHEDULE_KNOBS):
                why[name] = not_here[knob_of(name)]
        else:
            for i in range(3):
                if not has_matmul:
                    why[f"tile{i}"] = no_mm
                elif "tile" in not_here:
                    why[f"tile{i}"] = not_here["tile"]
            if not has_matmul:
                why["thread_tile"] = why["shared"] = why["double_buffer"] = why["tensor_core"] = no_mm
            elif self.shared.value is False:
                why["double_buffer"] = "double buffering needs shared-memory staging: set shared to on or auto"
                why["tensor_core"] = ("tensor cores load their WMMA fragments from shared-memory tiles: "
                                      "set shared to on or auto")
            # (the kept ones last: the notes list the knobs sharing a reason in this order)
            for name in sorted(SCHEDULE_KNOBS, key=lambda n: n in KEEP_FUNCTION_REASON):
                if name in not_here:
                    if name in KEEP_FUNCTION_REASON:   # no matmul / shared off: say what the user can change
                        why.setdefault(name, not_here[name])
                    else:
                        why[name] = not_here[name]
        if t.language != "c":
            why["fast_math"] = "fast math is a C-compiler flag: it applies to target 'cpu'"
        return why

    def update_applicability(self, has_matmul: bool | None = None) -> None:
        """Disable what does not apply to this function and target; the notes under each group say why."""
        if has_matmul is not None:
            self.has_matmul = has_matmul
        self._sync_rules()
        why = self._why = self.applicability(self.target.value)
        for name, w in self.controls().items():
            w.disabled = name in why
            w.tooltip = why.get(name) or _help(name, w)
        for group, html in self.notes.items():
            html.value = notes_html(why, group)
        partial = [w.value for w in self.tile].count(AUTO)
        self.tile_note.value = ("<small style='color:#8a6d3b'>set BM, BN and BK to override the tile</small>"
                                if 0 < partial < 3 and "tile0" not in why else "")

    def _sync_rules(self) -> None:
        """With fusion off the rule boxes show unchecked (nothing is fused); turning it on restores them."""
        self._quiet, quiet = True, self._quiet
        try:
            if not self.fuse.value and self._saved_rules is None:
                self._saved_rules = {r: w.value for r, w in self.rules.items()}
                for w in self.rules.values():
                    w.value = False
            elif self.fuse.value and self._saved_rules is not None:
                for r, w in self.rules.items():
                    w.value = self._saved_rules[r]
                self._saved_rules = None
        finally:
            self._quiet = quiet

    def why_disabled(self, name: str) -> str | None:
        return self._why.get(name)

    # -- events ---------------------------------------------------------------------------------------
    def on_change(self, callback: Callable[[str], None]) -> None:
        self._callbacks.append(callback)

    def _changed(self, name: str) -> None:
        if self._quiet:
            return
        for cb in self._callbacks:
            cb(name)


GROUPS = ("knobs", "fusion", "schedule")
GPU_ONLY = get_target("cpu").knobs_not_applicable["threads"]   # the CPU's reason for the GPU-only knobs
# knobs whose function-level reason (no matmul, shared staging off) stays when the target's reason also holds
KEEP_FUNCTION_REASON = ("shared", "double_buffer")


def knob_of(name: str) -> str:
    """The schedule knob a control sets ('tile1' → 'tile')."""
    return "tile" if name.startswith("tile") else name
LABELS = {"fuse": "fusion", "dtype": "dtype", "target": "target", "fast_math": "fast math", "scale": "size",
          "tile0": "tile BM", "tile1": "tile BN", "tile2": "tile BK", "thread_tile": "reg tile", "threads": "threads",
          "vector": "vector", "unroll": "unroll", "shared": "shared", "double_buffer": "2x buffer",
          "tensor_core": "wmma"}


def label(name: str) -> str:
    """The friendly name the dashboard shows for a control ('tile1' → 'tile BN', 'rule:epilogue' → 'epilogue')."""
    return name[5:].replace("_", " ") if name.startswith("rule:") else LABELS.get(name, name.replace("_", " "))


def group_of(name: str) -> str:
    if name == "fuse" or name.startswith("rule:"):
        return "fusion"
    return "schedule" if name.startswith("tile") or name in SCHEDULE_KNOBS else "knobs"


def notes_html(why: dict[str, str], group: str) -> str:
    """The visible 'not applicable' lines of one knob group: controls sharing a reason share a line."""
    by_reason: dict[str, list[str]] = {}
    for name, reason in why.items():
        if group_of(name) == group:
            by_reason.setdefault(reason, []).append(label(name))
    if not by_reason:
        return ""
    items = "".join(f"<div><b>{esc(', '.join(names))}</b>: {esc(reason)}</div>" for reason, names in by_reason.items())
    return (f"<div class='ke-knob-why' style='font-size:11px;line-height:1.3;color:#6b5200;background:#fff8e1;"
            f"padding:2px 4px;margin:2px 0;white-space:normal'>not applicable — {items}</div>")


SCALE_HELP = ("problem size: scales the leading (batch) dimension of the first input (and of the other inputs "
              "sharing it, when the function needs that)")
KNOB_HELP = {
    # the schedule knobs say what explorer.schedule.KNOBS says (one description for API and dashboard)
    "tile0": f"{SCHEDULE_KNOB_DOCS['tile']}: set all three to override the default",
    **{k: SCHEDULE_KNOB_DOCS[k] for k in SCHEDULE_KNOBS},
    "dtype": "cast the float inputs to this dtype",
    "target": "where the kernels run: cpu (C + OpenMP), sim (CUDA simulator), cuda (GPU), reference (NumPy)",
    "fast_math": "fast math: -ffast-math for the C compiler",
    "fuse": "fuse ops into kernels (fuse=True/False)",
    "scale": SCALE_HELP,
}


def _help(name: str, w: Any) -> str:
    """The tooltip of an enabled control: what it does."""
    if name.startswith("rule:"):
        return RULE_HELP[name[5:]]
    return KNOB_HELP.get("tile0" if name.startswith("tile") else name, getattr(w, "description", name))


def _select(w: Any, v: Any) -> None:
    """w.value = v, adding v to the Dropdown's options first when the menu lacks it."""
    if v not in _values(w):
        labels = {True: "on", False: "off"}
        label = labels[v] if isinstance(v, bool) else (_tt(v) if isinstance(v, tuple) and len(v) == 2
                                                         else f"×{v:g}" if isinstance(v, float) else str(v))
        w.options = [*w.options, (label, v)] if isinstance(w.options[0], tuple) else [*w.options, v]
    w.value = v


def _tt(v: Any) -> str:
    return "auto" if v == AUTO else f"{v[0]}×{v[1]}"


def _values(w: Any) -> list:
    return [o[1] if isinstance(o, tuple) and len(o) == 2 and isinstance(o[0], str) else o for o in w.options]
