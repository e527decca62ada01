"""Explorer: the whole dashboard for one function — stages, fusion, tiling, source, run, charts, knobs.

>>> import numpy as np, widgets
>>> def mlp(x, w, b):
...     return np.maximum(x @ w + b, 0)
>>> x, w, b = np.ones((64, 32), np.float32), np.ones((32, 16), np.float32), np.zeros(16, np.float32)
>>> ex = widgets.Explorer(mlp, x, w, b, target="cpu")
>>> len(ex.compiled.kernels)
1
>>> ex.knobs.fuse.value = False                            # recompiles and redraws
>>> len(ex.compiled.kernels)
3
>>> ex                                                     # doctest: +SKIP
(in JupyterLab: the dashboard)

Every control maps to one explorer.compile argument (see KnobPanel.kwargs), so any view can be
reproduced in a script. The dashboard holds no compiler logic: it calls explorer.compile,
Compiled.explain_fusion / with_kernel_source / max_error / benchmark, and explorer.compare.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any, Callable

import ipywidgets as W
import numpy as np

from explorer.target import TARGETS as _TARGETS, get_target, target_for_language

from .panels._util import code_html, describe_error, error_html, esc, format_stats, pre_html
from .panels.autotune import AutotunePanel
from .panels.charts import TimingChart
from .panels.diff import StageDiff
from .panels.fusion import FusionView
from .panels.graph import GraphView
from .panels.knobs import TARGETS, KnobPanel
from .panels.knobs import label as knob_label
from .panels.run import RunPanel
from .panels.source import SourceView, language_of
from .panels.stagehelp import stage_help, vectorized_summary
from .panels.tiling import TilingView

KNOB_ARGS = ("target", "fuse", "schedule", "dtype", "fast_math")
TAB_TITLES = ("Stages", "Fusion", "Tiling", "Source", "Run", "Charts", "Autotune")
STAGE_SUBTABS = ("Graph", "IR text", "Diff vs previous")
_CACHE_SIZE = 24


def scale_examples(examples: list[np.ndarray], scale: float, shared: bool = False) -> list[np.ndarray]:
    """Scale the leading (batch) dimension of the first input; other inputs are unchanged, or with
    `shared`, every input whose leading dimension equals the first one's is scaled with it.

    Values repeat the original ones (np.resize), so results stay comparable across sizes.
    """
    if scale == 1.0 or not examples or np.ndim(examples[0]) == 0:
        return list(examples)
    lead = examples[0].shape[0]
    rows = max(1, int(round(lead * scale)))

    def resized(e: np.ndarray) -> np.ndarray:
        return np.resize(e, (rows, *e.shape[1:])).astype(e.dtype, copy=False)
    return [resized(e) if i == 0 or (shared and np.ndim(e) > 0 and e.shape[0] == lead) else e
            for i, e in enumerate(examples)]


def scale_variants(examples: list[np.ndarray], scale: float) -> list[list[np.ndarray]]:
    """The inputs to try for `scale`, in order: the first input scaled alone (x in x @ w + b), then,
    when other inputs share its leading dimension (x + y, a batched a @ b), all of those together."""
    alone = scale_examples(examples, scale)
    together = scale_examples(examples, scale, shared=True)
    same = len(alone) == len(together) and all(a is b for a, b in zip(alone, together))
    return [alone] if same else [alone, together]


class Explorer(W.VBox):
    """Dashboard over explorer.compile(fn, *examples, **compile_kwargs).

    Attributes for scripts and tests: `compiled` (the Compiled shown), `knobs` (KnobPanel),
    `stage_nav`, `graph`, `ir_text`, `diff`, `fusion`, `tiling`, `source`, `run_panel`, `charts`,
    `error` (red message of the last failed knob change, '' when fine), `notice` (red note when the shown
    target cannot run on this machine, e.g. cuda without a GPU: its stages and source are still shown),
    `last_redraw_ms`.
    """

    def __init__(self, fn: Callable, *examples: Any, scale: float = 1.0, **compile_kwargs: Any):
        self.fn = fn
        self.examples = [np.asarray(e) for e in examples]
        self.extra = {k: v for k, v in compile_kwargs.items() if k not in KNOB_ARGS}
        self.extra.setdefault("verbose", False)
        self.compiled: Any = None
        self.last_error: BaseException | None = None
        self.last_compile_ms = self.last_redraw_ms = 0.0
        self._cache: "OrderedDict[str, Any]" = OrderedDict()
        self._inputs: dict[str, list[np.ndarray]] = {}  # cache key -> the (scaled) inputs it compiled
        self._compare_key: str | None = None  # the knobs of the comparison running or shown
        self._fusion_cmp: tuple[str, Any] | None = None  # (knobs, comparison) the Fusion tab's lesson can reuse
        self._dirty: set[int] = set()
        self._stage_graph_dirty = True
        self._busy = False
        # explorer.compare's, for Charts: explorer.measure picks the repeats within the budget
        self.compare_options: dict[str, Any] = {"warmup": 2, "budget_s": 1.0}

        target = compile_kwargs.get("target", "auto")
        if target == "auto":
            from explorer.pipeline import resolve_target
            target = resolve_target("auto", verbose=False)
        self.knobs = KnobPanel(target=target, fuse=compile_kwargs.get("fuse", True),
                               schedule=compile_kwargs.get("schedule"), dtype=compile_kwargs.get("dtype"),
                               fast_math=compile_kwargs.get("fast_math", False), scale=scale)
        self.header = W.HTML()
        self.error = W.HTML()
        self.notice = W.HTML()  # red note when the shown target cannot run on this machine
        # stages
        self.stage_nav = W.ToggleButtons(options=[], style={"button_width": "92px"})
        self.stage_help = W.HTML()  # what the selected stage's pass does on this target (and did, for vectorized)
        self.stage_stats = W.HTML()
        self.graph = GraphView()
        self.ir_text = W.HTML()
        self.diff = StageDiff()
        self.stage_tabs = W.Tab([self.graph, self.ir_text, self.diff], titles=STAGE_SUBTABS)
        stages = W.VBox([self.stage_nav, self.stage_help, self.stage_stats, self.stage_tabs])
        # other views
        self.fusion = FusionView()
        self.tiling = TilingView()
        self.source = SourceView()
        self.run_panel = RunPanel(provider=self.compiled_for, target=target)
        self.charts = TimingChart()
        self.charts.set_request(self._compare_request)
        self.charts.on_result(self._compared)
        self.fusion.set_measure(self._measure_from_fusion)
        self.autotune = AutotunePanel()
        self.autotune.set_request(self._autotune_request, self.use_schedule)
        self.tabs = W.Tab([stages, self.fusion, self.tiling, self.source, self.run_panel, self.charts, self.autotune],
                          titles=TAB_TITLES)
        body = W.HBox([self.knobs, W.VBox([self.tabs], layout=W.Layout(width="100%", overflow="auto"))])
        super().__init__([self.header, self.error, self.notice, body])
        self.add_class("ke-explorer")

        self._quiet_nav = False
        self.stage_nav.observe(lambda ch: None if self._quiet_nav else self._draw_stage(), "value")
        self.stage_tabs.observe(lambda ch: self._draw_stage(), "selected_index")
        self.tabs.observe(lambda ch: self._draw_tab(ch["new"]), "selected_index")
        self.knobs.on_change(self._on_knob)

        # The first compile uses the caller's arguments as given; afterwards the knobs drive it.
        t0 = time.perf_counter()
        given = {"target": target, "fuse": compile_kwargs.get("fuse", True),
                 "schedule": compile_kwargs.get("schedule") or None, "dtype": compile_kwargs.get("dtype"),
                 "fast_math": compile_kwargs.get("fast_math", False)}
        try:
            first = self._compile(given, scale)
        except Exception as e:  # noqa: BLE001 — show it in the dashboard instead of raising
            self._show_error(e, "cannot compile:")
            return
        self.knobs.set(target=first.target)
        self.knobs.update_applicability(self._has_matmul(first))
        if self.knobs.kwargs() == given:  # the knobs say the same: reuse this compile for them
            self._cache[self._key(given, scale)] = first
        self._show(first, t0)

    # -- compiling ---------------------------------------------------------------------------------
    def current_examples(self) -> list[np.ndarray]:
        """The inputs at the size knob's scale (the ones the shown compile used, when it did)."""
        scale = self.knobs.scale.value
        for inputs in (self._inputs.get(self._key(self.knobs.kwargs(), scale)), *scale_variants(self.examples, scale)):
            if inputs is not None:
                return inputs
        return list(self.examples)

    def _compile(self, kwargs: dict[str, Any], scale: float) -> Any:
        import explorer
        key = self._key(kwargs, scale)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        first_error: Exception | None = None
        for inputs in scale_variants(self.examples, scale):
            try:
                comp = explorer.compile(self.fn, *inputs, **{**self.extra, **kwargs})
            except explorer.ShapeError as e:  # e.g. x + y with only x scaled: scale y too, then give up
                first_error = first_error or e
                continue
            break
        else:
            assert first_error is not None
            raise first_error
        self._cache[key], self._inputs[key] = comp, inputs
        if len(self._cache) > _CACHE_SIZE:
            old, _ = self._cache.popitem(last=False)
            self._inputs.pop(old, None)
        return comp

    @staticmethod
    def _key(kwargs: dict[str, Any], scale: float) -> str:
        return repr((sorted((k, repr(v)) for k, v in kwargs.items()), scale))

    def compiled_for(self, target: str) -> Any:
        """The current knobs compiled for `target` (the run panel and the other language use this)."""
        return self._compile(self.knobs.kwargs(target), self.knobs.scale.value)

    def _language_provider(self, language: str) -> Any:
        comp = self.compiled
        if language_of(comp) == language:
            return comp
        return self.compiled_for(target_for_language(language, comp.target).name)

    def _compare_request(self) -> tuple[Callable, tuple, dict[str, Any]]:
        """explorer.compare arguments for the current knobs (compare builds the unfused variant itself)."""
        kw = self.knobs.kwargs()
        fuse = kw.pop("fuse")
        if isinstance(fuse, dict):
            kw["fuse"] = fuse
        kw = {k: v for k, v in kw.items() if v is not None and v is not False}
        if get_target(kw["target"]).simulated:  # modelled times: of the GPU chosen on the Charts tab, not of this CPU
            kw["device"] = self.charts.model_device.value
        self._compare_key = self._key(self.knobs.kwargs(), self.knobs.scale.value)
        return self.fn, tuple(self.current_examples()), {**kw, **self.compare_options}

    def _compared(self, cmp: Any) -> None:
        """A finished comparison: the Fusion tab's lesson gets its times when it is for the shown knobs."""
        if self._compare_key == self._key(self.knobs.kwargs(), self.knobs.scale.value):
            self.fusion.set_comparison(cmp)
            self._fusion_cmp = (self._compare_key, cmp)

    def _measure_from_fusion(self) -> None:
        self.charts.run_requested()

    def _autotune_request(self) -> tuple[Callable, tuple, dict[str, Any]]:
        """explorer.autotune arguments for the current knobs: same target, fusion, dtype and inputs."""
        kw = self.knobs.kwargs()
        kw.pop("schedule", None)   # the tuner searches the schedule
        if kw.get("target") in _TARGETS and not get_target(kw["target"]).scheduled:
            kw["target"] = "sim"   # reference has no schedule to tune: tune its CUDA loops in the simulator
        kw = {k: v for k, v in kw.items() if v is not None and not (k == "fast_math" and v is False)}
        return self.fn, tuple(self.current_examples()), kw

    def use_schedule(self, schedule: dict[str, Any]) -> None:
        """Put `schedule` (e.g. an autotune result's best) into the knobs and recompile."""
        self.knobs.set(schedule=dict(schedule))
        self.recompile("autotuned schedule")

    @staticmethod
    def _has_matmul(comp: Any) -> bool:
        stats = comp.stages[0].stats if comp.stages else {}
        if (stats.get("ops_by_category") or {}).get("contraction"):
            return True
        return any(op in ("matmul", "dot", "einsum", "tensordot") for op in (stats.get("ops") or {}))

    def recompile(self, reason: str = "knobs") -> bool:
        """Compile with the current knobs and redraw; on any error show it and keep the old view."""
        t0 = time.perf_counter()
        self.knobs.update_applicability()
        try:
            kw = self.knobs.kwargs()
            comp = self._compile(kw, self.knobs.scale.value)
            # the first successful compile may be this one (the constructor's failed): it says whether there
            # is a matmul, which decides the knobs that apply; compile again if that changes the arguments
            self.knobs.update_applicability(self._has_matmul(comp))
            if self.knobs.kwargs() != kw:
                comp = self._compile(self.knobs.kwargs(), self.knobs.scale.value)
        except Exception as e:  # noqa: BLE001 — every failure is shown, the previous view stays
            self._show_error(e, f"{reason}: ")
            return False
        self._show(comp, t0)
        self.charts.mark_stale(reason)
        return True

    def _on_knob(self, name: str) -> None:
        if self._busy:
            return
        self._busy = True
        try:
            self.recompile(f"changed {knob_label(name)}")
        finally:
            self._busy = False

    def _show_error(self, e: BaseException, prefix: str) -> None:
        self.last_error = e
        keep = " — still showing the last valid compile" if self.compiled is not None else ""
        self.error.value = error_html(describe_error(e) + keep, prefix)

    # -- drawing ------------------------------------------------------------------------------------
    def _show(self, comp: Any, t0: float) -> None:
        t1 = time.perf_counter()
        self.compiled = comp
        self.last_error = None
        self.error.value = ""
        self.notice.value = self._availability_note(comp.target)
        self.charts.show_model_device(get_target(comp.target).simulated)
        names = [s.name for s in comp.stages]
        keep = self.stage_nav.value
        default = "fused" if "fused" in names else names[-1]
        # (not unobserve_all: that also drops ipywidgets' own value → index link, and no button is highlighted)
        self._quiet_nav = True
        try:
            if tuple(self.stage_nav.options) != tuple(names):
                self.stage_nav.options = names
            self.stage_nav.value = keep if keep in names else default
        finally:
            self._quiet_nav = False
        self._stage_graph_dirty = True
        self._dirty = set(range(len(TAB_TITLES)))
        self._draw_tab(self.tabs.selected_index or 0)
        t2 = time.perf_counter()
        self.last_compile_ms, self.last_redraw_ms = (t1 - t0) * 1e3, (t2 - t0) * 1e3
        shapes = ", ".join(f"{e.dtype}[{','.join(map(str, e.shape))}]" for e in comp.examples)
        self.header.value = (f"<div class='ke-header'><b>kernel explorer</b> · <code>{esc(comp.name)}</code>({esc(shapes)})"
                             f" · target <b>{esc(comp.target)}</b> · {len(comp.kernels)} kernel(s) · stages "
                             f"{esc(' → '.join(names))} · compiled in {self.last_compile_ms:.0f} ms, "
                             f"drawn in {(t2 - t1) * 1e3:.0f} ms</div>")

    @staticmethod
    def _availability_note(target: str) -> str:
        """'' when `target` runs here; else a red note: its stages and source are shown, running needs it."""
        try:
            from explorer.backends import backend_module
            ok, why = backend_module(target).available()
        except Exception as e:  # noqa: BLE001
            ok, why = False, describe_error(e)
        if ok:
            return ""
        alt = " (target 'sim' runs the same CUDA kernels in the simulator)" if get_target(target).runs_on_gpu else ""
        return error_html(f"target {target!r} cannot run here: {why}. The stages and the generated source shown "
                          f"are compiled for it; Run, edit-and-run and Charts need it{alt}.", "not runnable here:")

    def _draw_tab(self, index: int) -> None:
        if self.compiled is None or index not in self._dirty:
            return
        self._dirty.discard(index)
        comp = self.compiled
        try:
            if index == 0:
                self._draw_stage()
            elif index == 1:
                key = self._key(self.knobs.kwargs(), self.knobs.scale.value)
                cmp = self._fusion_cmp[1] if self._fusion_cmp and self._fusion_cmp[0] == key else None
                self.fusion.set_compiled(comp, cmp)
            elif index == 2:
                self.tiling.set_compiled(comp)
            elif index == 3:
                self.source.set_compiled(comp, self._language_provider)
            elif index == 4:
                if self.run_panel.target.value != comp.target and comp.target in TARGETS:
                    self.run_panel.target.value = comp.target
        except Exception as e:  # noqa: BLE001 — a drawing bug must not take the dashboard down
            self._show_error(e, f"cannot draw the {TAB_TITLES[index]} tab:")

    def _draw_stage(self) -> None:
        comp = self.compiled
        name = self.stage_nav.value
        if comp is None or name is None:
            return
        names = [s.name for s in comp.stages]
        snap = comp.stage(name)
        i = names.index(name)
        prev = comp.stages[i - 1] if i > 0 else None
        note = self._stage_note(comp, name, prev, snap)
        self.stage_help.value = note
        self.stage_stats.value = format_stats(snap.stats)
        try:
            text = snap.text()
        except Exception as e:  # noqa: BLE001
            text = ""
            self.ir_text.value = error_html(describe_error(e), "no text for this stage:")
        else:
            self.ir_text.value = f"<div class='ke-ir'>{pre_html(text, '520px')}</div>"
        if prev is None:
            self.diff.show_first(name, text)
        else:
            try:
                self.diff.set_stages(prev, snap)  # what the pass did here is in the stage help above
            except Exception as e:  # noqa: BLE001
                self.diff.html.value = error_html(describe_error(e))
        if (self.stage_tabs.selected_index or 0) == 0:
            self.graph.show(snap)  # the only costly drawing (graphviz), so only when visible

    @staticmethod
    def _changed_here(comp: Any, name: str, prev: Any, snap: Any) -> str:
        """What the pass did in this program, where the view knows how to say it ('' otherwise)."""
        if name != "vectorized" or prev is None:
            return ""
        try:
            return vectorized_summary(prev.ir, snap.ir, comp.target)
        except Exception:  # noqa: BLE001 — an explanation must not break the stage view
            return ""

    def _stage_note(self, comp: Any, name: str, prev: Any, snap: Any) -> str:
        """HTML under the stage navigator: the stage's job on this target, and what it did here."""
        try:
            job = stage_help(name, comp.target)
        except Exception:  # noqa: BLE001
            job = ""
        here = self._changed_here(comp, name, prev, snap)
        if not job and not here:
            return ""
        return ("<div class='ke-stage-help' style='font-size:90%;color:#333;margin:2px 0 4px 0'>"
                f"<b>{esc(name)}</b> on {esc(comp.target)}: {code_html(job)}"
                + (f"<div class='ke-stage-here' style='color:#1a5e20'>{code_html(here)}</div>" if here else "")
                + "</div>")

    # -- conveniences ---------------------------------------------------------------------------------
    def select_stage(self, name: str) -> None:
        if name not in self.stage_nav.options:
            from explorer import ExplorerError
            raise ExplorerError(f"no stage {name!r} to show; stages are {', '.join(self.stage_nav.options) or 'none'}")
        self.stage_nav.value = name

    def select_tab(self, title: str) -> None:
        if title not in TAB_TITLES:
            from explorer import ExplorerError
            raise ExplorerError(f"no tab {title!r}; tabs are {', '.join(TAB_TITLES)}")
        self.tabs.selected_index = TAB_TITLES.index(title)
