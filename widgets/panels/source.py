"""SourceView: each kernel's CUDA or C source, nvcc's resource report, edit-and-run, and provenance
(the lines of the user's function that went into the selected kernel).

The source is shown once: read (pygments, line numbers, the kernel's epilogue lines highlighted and
named above it) or edited (a plain editor with the same line numbers) — the "view / edit" switch.
"Run edited" is disabled, with its reason on the page, where the target cannot build source (sim,
reference, cuda without a GPU). Compile errors quote the editor's line; no build paths are shown.

The other language is produced lazily, by compiling the same function for the other target
the first time the user switches (C ← target 'cpu', CUDA ← target 'sim' or 'cuda').

>>> import numpy as np, explorer
>>> def mlp(x, w, b):
...     return np.maximum(x @ w + b, 0)
>>> x, w, b = np.ones((64, 32), np.float32), np.ones((32, 16), np.float32), np.zeros(16, np.float32)
>>> from widgets import SourceView
>>> v = SourceView(explorer.compile(mlp, x, w, b, target="cpu"))
>>> v.kernel.options, v.language.value, v.mode.value
((('0: fused_matmul_add_maximum', 0),), 'c', 'view')
"""
from __future__ import annotations

import inspect
import re
import shutil
import threading
from typing import Any, Callable

import ipywidgets as W

from explorer.target import TARGETS as _TARGETS, get_target, target_for_language

from ._util import Worker, describe_error, error_html, esc, get, line_numbers, note_html, strip_paths

LANG_LABELS = [("CUDA", "cuda"), ("C", "c")]
LINE_PX = 16  # editor and gutter share this line height, so the numbers stay beside their lines
EDITOR_CSS = ("<style>.ke-code pre,.ke-helper-code pre,.ke-pycode pre{white-space:pre!important;word-break:normal!important;"
              "overflow-wrap:normal!important}"
              f".ke-editor textarea{{font-family:monospace;font-size:12px;line-height:{LINE_PX}px;"
              "white-space:pre;overflow:hidden;padding:4px;resize:none;border:0;outline:1px solid #ddd}"
              f".ke-gutter pre{{font-family:monospace;font-size:12px;line-height:{LINE_PX}px;margin:0;"
              "padding:5px 6px 4px 4px;color:#888;text-align:right;background:#f4f4f4}</style>")
_OUTPUT_STORE = re.compile(r"\bout\d+\s*\[[^\]]*\]\s*=[^=]")


def kernel_start(source: str, name: str) -> int:
    """0-based index of the first line of the kernel function itself (its comment header, else its
    signature): the lines before it are helpers (micro-kernels, device functions)."""
    lines = source.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(f"/* kernel {name}"):
            return i
    sig = re.compile(rf"\b{re.escape(name)}\s*\(")
    for i, line in enumerate(lines):
        if sig.search(line) and not line.startswith((" ", "\t")) and "static" not in line:
            return i
    return 0


def source_html(source: str, language: str, name: str, marked: list[int]) -> str:
    """The kernel highlighted with line numbers, opening at the kernel function: helper functions
    before it are folded under a <details> line (their line numbers kept)."""
    start = kernel_start(source, name)
    lines = source.splitlines(keepends=True)
    body = highlight("".join(lines[start:]), language, [n - start for n in marked if n > start],
                     linenostart=start + 1, max_height="560px")
    if start == 0:
        return body
    helpers = highlight("".join(lines[:start]), language, [n for n in marked if n <= start], max_height="300px",
                        css_class="ke-helper-code")
    return (f"<details class='ke-helpers'><summary style='cursor:pointer;color:#3a6ea5;font-size:12px'>lines 1–{start}: "
            f"helper functions the kernel calls (click to show)</summary>{helpers}</details>{body}")


def epilogue_lines(source: str) -> list[int]:
    """Lines (1-based) of a kernel's source that store a result to an output array — where the fused
    epilogue (bias, activation, ...) runs, written with the result."""
    return [i for i, line in enumerate(source.splitlines(), 1) if _OUTPUT_STORE.search(line)]


def gutter_html(n_lines: int, marked: list[int] | None = None) -> str:
    marked_set = set(marked or ())
    rows = "\n".join(f"<b style='color:#b35900'>{i}</b>" if i in marked_set else str(i) for i in range(1, n_lines + 1))
    return f"<div class='ke-gutter'><pre>{rows}</pre></div>"


def cannot_build_reason(compiled: Any) -> str | None:
    """Why 'Run edited' cannot run this compile's source here, or None when it can."""
    target = getattr(compiled, "target", None)
    t = get_target(target) if target in _TARGETS else None
    if t is not None and t.builds_source and not t.runs_on_gpu:   # C, built by this machine's compiler
        return None
    if t is not None and t.builds_source:
        try:
            from explorer.backends import backend_module
            ok, why = backend_module(t).available()
        except Exception as e:  # noqa: BLE001
            ok, why = False, str(e)
        return None if ok else f"target {t.name!r} cannot run here ({why}): switch the language to C to edit and run on this CPU"
    return (f"Run edited builds source: the {'CUDA' if t is not None and t.simulated else target} code of target {target!r} is "
            "shown for reading (the simulator runs the kernel IR, not this text): switch the language to C to "
            "edit and run on this CPU, or use target 'cuda' on a GPU")


def map_compile_log(log: str, editor_line: int | None) -> str:
    """The compiler's log in the editor's terms: build paths dropped, the build file's line numbers
    ('kernels.c:229:116', gcc's '  229 |' gutter) shifted to the editor's ('line 74:116')."""
    m = re.search(r"[\w.-]+\.(?:c|cu):(\d+)", log)
    shift = int(m.group(1)) - editor_line if m and editor_line is not None else None
    log = strip_paths(log)
    if shift is None:
        return log
    log = re.sub(r"[\w.-]+\.(?:c|cu):(\d+)", lambda g: f"line {int(g.group(1)) - shift}", log)
    return re.sub(r"(?m)^(\s*)(\d+)( \|)", lambda g: f"{g.group(1)}{int(g.group(2)) - shift}{g.group(3)}", log)
_RESOURCE_CACHE: dict[tuple[str, str, str], dict] = {}
_RESOURCE_LOCK = threading.Lock()


def highlight(code: str, language: str, hl_lines: list[int] | None = None, linenostart: int = 1,
              css_class: str = "ke-code", max_height: str = "480px") -> str:
    """Syntax-highlighted HTML with inline styles (no stylesheet needed inside a widget)."""
    from pygments import highlight as _hl
    from pygments.formatters import HtmlFormatter
    from pygments.lexers import CLexer, CudaLexer, PythonLexer
    lexer = {"cuda": CudaLexer, "c": CLexer, "python": PythonLexer}.get(language, CLexer)()
    fmt = HtmlFormatter(noclasses=True, linenos="inline", hl_lines=hl_lines or [], linenostart=linenostart,
                        style="default", cssstyles="font-size:12px;line-height:1.35;margin:0")
    body = _hl(code, lexer, fmt)
    return f'<div class="{css_class}" style="max-height:{max_height};overflow:auto">{body}</div>'


def language_of(compiled: Any) -> str:
    ks = getattr(compiled, "kernels", None) or []
    if ks:
        return ks[0].language
    from explorer.codegen import language_for
    return language_for(compiled.target)


def default_provider(compiled: Any) -> Callable[[str], Any]:
    """Compile `compiled`'s function again for the other language's target (cached)."""
    cache: dict[str, Any] = {language_of(compiled): compiled}

    def provide(language: str) -> Any:
        if language not in cache:
            import explorer
            o = compiled.options
            target = target_for_language(language, compiled.target).name
            cache[language] = explorer.compile(compiled.fn, *compiled.examples, target=target, fuse=o.fuse,
                                               schedule=o.schedule, fast_math=o.fast_math, verbose=False)
        return cache[language]
    return provide


class ProvenanceView(W.VBox):
    """The user's function with some lines highlighted. `.highlighted` lists those line numbers."""

    def __init__(self, fn: Callable | None = None, **kwargs: Any):
        self.title = W.HTML()
        self.html = W.HTML()
        self.highlighted: list[int] = []
        self.where = ""  # ' (cell [3])' for a function defined in a notebook cell
        self._src: tuple[list[str], int] | None = None
        super().__init__([self.title, self.html], **kwargs)
        self.add_class("ke-provenance")
        if fn is not None:
            self.set_function(fn)

    def set_function(self, fn: Callable) -> None:
        try:
            self._src = inspect.getsourcelines(fn)
        except (OSError, TypeError):
            self._src = None
        from explorer.graph import notebook_cell
        cell = notebook_cell(getattr(getattr(fn, "__code__", None), "co_filename", ""))
        # a notebook cell's line numbers count from the cell's first line: say which cell
        self.where = "" if cell is None else (f" (cell [{cell}])" if cell else " (a notebook cell)")
        self.highlight([])

    def highlight(self, lines: list[int], label: str = "") -> None:
        self.highlighted = sorted(lines)
        head = f"<b>your function</b>{esc(self.where)}"
        self.title.value = f"{head} — lines in <code>{esc(label)}</code> highlighted" if label else head
        if self._src is None:
            self.html.value = note_html("source of the function is not available (defined interactively?); "
                                        f"lines: {', '.join(map(str, lines)) or '—'}")
            return
        src_lines, start = self._src
        rel = [n - start + 1 for n in lines if start <= n < start + len(src_lines)]
        self.html.value = highlight("".join(src_lines), "python", rel, linenostart=start, css_class="ke-pycode")


class SourceView(W.VBox):
    """Generated kernel sources with language switch, resource report, editor and provenance.

    `provider(language) -> Compiled` supplies the compile for a language (the dashboard caches
    them); without one the view compiles the other target itself.
    """

    def __init__(self, compiled: Any = None, provider: Callable[[str], Any] | None = None, **kwargs: Any):
        self.kernel = W.Dropdown(description="kernel", options=[], layout=W.Layout(width="360px"),
                                 style={"description_width": "50px"})
        self.language = W.ToggleButtons(options=LANG_LABELS, value="cuda", tooltips=[
            "CUDA source (target cuda, or the simulator's)", "C + OpenMP source (target cpu)"],
            style={"button_width": "64px"})
        self.status = W.HTML()
        self.launch = W.HTML()
        self.code = W.HTML(layout=W.Layout(width="100%"))
        self.resources = W.HTML()
        self.mode = W.ToggleButtons(options=[("view", "view"), ("edit", "edit")], value="view",
                                    tooltips=["the source, highlighted", "edit the source, then Run edited"],
                                    style={"button_width": "64px"})
        self.epilogue = W.HTML()
        self.editor = W.Textarea(layout=W.Layout(width="100%", height="240px"),
                                 placeholder="kernel source to edit")
        self.editor.add_class("ke-editor")
        self.gutter = W.HTML()
        self.editor_box = W.HBox([self.gutter, self.editor],
                                 layout=W.Layout(max_height="480px", overflow="auto", display="none", width="100%"))
        self.run_button = W.Button(description="Run edited", button_style="primary", icon="play",
                                   tooltip="build the edited kernel, run it, compare with the generated one",
                                   layout=W.Layout(width="130px", min_width="130px"))
        self.reset_button = W.Button(description="Reset", tooltip="put the generated source back")
        self.run_note = W.HTML()
        self.result = W.HTML()
        self.provenance = ProvenanceView()
        self.compiled: Any = None
        self.current: Any = None          # the compile whose source is shown (language-dependent)
        self._provider = provider
        self._explanations: dict[int, Any] = {}
        self._quiet = False
        self._nvcc = Worker()
        edit = W.VBox([W.HBox([self.run_button, self.reset_button]), self.run_note, self.result])
        left = W.VBox([W.HTML(EDITOR_CSS), self.kernel, W.HBox([self.language, W.HTML(layout=W.Layout(width="16px")), self.mode]), self.status, self.launch,
                       self.epilogue, self.code, self.editor_box, edit, self.resources], layout=W.Layout(width="62%"))
        super().__init__([W.HBox([left, W.VBox([self.provenance], layout=W.Layout(width="38%"))])], **kwargs)
        self.add_class("ke-source")
        self.kernel.observe(self._on_kernel, "value")
        self.language.observe(self._on_language, "value")
        self.mode.observe(lambda _ch: self._show_mode(), "value")
        self.editor.observe(lambda _ch: self._fit_editor(), "value")
        self.run_button.on_click(lambda _b: self.run_edited())
        self.reset_button.on_click(lambda _b: self._reset_editor())
        if compiled is not None:
            self.set_compiled(compiled, provider)

    # -- data ------------------------------------------------------------------------------
    def set_compiled(self, compiled: Any, provider: Callable[[str], Any] | None = None) -> None:
        """Show `compiled` (its own language first)."""
        self.compiled = compiled
        self._provider = provider or default_provider(compiled)
        self.provenance.set_function(compiled.fn)
        self.result.value = ""
        lang = language_of(compiled)
        self._quiet = True
        try:
            self.language.value = lang
        finally:
            self._quiet = False
        self._show_language(lang)

    def _show_language(self, lang: str) -> None:
        try:
            self.current = self._provider(lang)
            self.status.value = ""
        except Exception as e:  # noqa: BLE001 — e.g. a schedule invalid for the other target
            self.current = None
            self.status.value = error_html(describe_error(e), f"no {lang.upper()} source for these knobs:")
            self.kernel.options = []
            self.code.value = self.launch.value = self.resources.value = ""
            self.editor.value = ""
            return
        ks = self.current.kernels
        if not ks:
            self.status.value = note_html(f"this compile has no codegen stage (stages: "
                                          f"{', '.join(s.name for s in self.current.stages)})")
        old = self.kernel.value
        self._quiet = True
        try:
            self.kernel.options = [(f"{i}: {k.name}", i) for i, k in enumerate(ks)]
            self.kernel.value = old if old is not None and old < len(ks) else (0 if ks else None)
        finally:
            self._quiet = False
        self._render_kernel()

    def _on_language(self, change: dict) -> None:
        if not self._quiet and self.compiled is not None:
            self.result.value = ""
            self._show_language(change["new"])

    def _on_kernel(self, change: dict) -> None:
        if not self._quiet:
            self.result.value = ""
            self._render_kernel()

    def selected_kernel(self) -> Any:
        if self.current is None or self.kernel.value is None or not self.current.kernels:
            return None
        return self.current.kernels[self.kernel.value]

    def _render_kernel(self) -> None:
        k = self.selected_kernel()
        if k is None:
            self.code.value = self.launch.value = self.resources.value = ""
            self.editor.value = ""
            self.provenance.highlight([])
            return
        epi = epilogue_lines(k.source)
        self.code.value = source_html(k.source, k.language, k.name, epi)
        self.epilogue.value = (f"<small>the result is stored (with the fused epilogue: bias, activation, …) at line"
                               f"{'s' if len(epi) > 1 else ''} <b>{', '.join(map(str, epi))}</b>, highlighted</small>"
                               if epi else "")
        launch = getattr(k, "launch", None) or {}
        self.launch.value = ("<code>" + esc(" · ".join(f"{a}={b}" for a, b in launch.items())) + "</code>"
                             if launch else "")
        self.editor.value = k.source
        self._fit_editor()
        why = cannot_build_reason(self.current)
        self.run_button.disabled = why is not None
        self.run_button.tooltip = why or "build the edited kernel, run it, compare with the generated one"
        self.run_note.value = f"<small class='ke-run-why' style='color:#6b5200'>{esc(why)}</small>" if why else ""
        self._render_resources(k)
        self._render_provenance(k)

    def _show_mode(self) -> None:
        """One copy of the source on the page: highlighted to read, or in the editor."""
        editing = self.mode.value == "edit"
        self.code.layout.display = "none" if editing else ""
        self.editor_box.layout.display = "flex" if editing else "none"

    def _fit_editor(self) -> None:
        """The editor as tall as its text (its box scrolls, gutter and text together)."""
        k = self.selected_kernel()
        n = max(1, self.editor.value.count("\n") + 1)
        self.editor.layout.height = f"{n * LINE_PX + 10}px"
        self.gutter.value = gutter_html(n, epilogue_lines(k.source) if k is not None else [])

    def _reset_editor(self) -> None:
        k = self.selected_kernel()
        self.editor.value = k.source if k is not None else ""
        self.result.value = ""

    # -- nvcc resource report -------------------------------------------------------------------
    def _render_resources(self, k: Any) -> None:
        if k.language != "cuda":
            self.resources.value = note_html("resource report (registers, spills, shared memory) is for CUDA kernels")
            return
        if shutil.which("nvcc") is None:
            self.resources.value = note_html("nvcc not found: install the CUDA toolkit for the register/spill/"
                                             "shared-memory report")
            return
        key = (k.name, k.source, getattr(k, "arch", ""))
        if key in _RESOURCE_CACHE:
            self.resources.value = self._resources_html(k.name, _RESOURCE_CACHE[key])
            return
        self.resources.value = note_html("nvcc: compiling for the resource report…")

        def job() -> None:
            with _RESOURCE_LOCK:
                rep = dict(k.resources)
            _RESOURCE_CACHE[key] = rep
            if self.selected_kernel() is k:
                self.resources.value = self._resources_html(k.name, rep)

        def failed(e: BaseException) -> None:
            if self.selected_kernel() is k:
                self.resources.value = error_html(describe_error(e), "nvcc resource report failed:")
        if not self._nvcc.start(job, failed):
            # one report at a time; the newest selection is drawn when the user comes back to it
            self.resources.value = note_html("nvcc is busy with another kernel; reselect to refresh")

    @staticmethod
    def _resources_html(name: str, rep: dict) -> str:
        if not rep:
            return note_html(f"nvcc reported nothing for {name}")
        cells = "".join(f"<span style='display:inline-block;padding:0 10px 0 0;white-space:nowrap'><b>{esc(a)}</b>: "
                        f"{esc(b)}</span>" for a, b in rep.items())
        # wrapping chips, not one table row: the report fits any width
        return (f"<div class='ke-resources' style='white-space:normal;max-width:100%'>nvcc resources "
                f"({esc(name)}):<br>{cells}</div>")

    def wait(self, timeout: float | None = 60) -> None:
        """Wait for a pending nvcc report (tests, scripts)."""
        self._nvcc.wait(timeout)

    # -- provenance ----------------------------------------------------------------------------
    def _explanation(self, compiled: Any) -> Any:
        key = id(compiled)
        if key not in self._explanations:
            try:
                self._explanations = {key: compiled.explain_fusion()}
            except Exception:  # noqa: BLE001 — no fused stage: fall back to the kernel's own lines
                self._explanations = {key: None}
        return self._explanations[key]

    def kernel_lines(self, k: Any) -> list[int]:
        """User source lines that went into kernel `k` (Explanation first, then the loop kernel's)."""
        expl = self._explanation(self.current)
        for entry in (get(expl, "kernels") or []) if expl is not None else []:
            if get(entry, "name") == k.name:
                lines = line_numbers(get(entry, "lines"))
                if lines:
                    return lines
        return line_numbers(getattr(getattr(k, "kernel", None), "source_lines", ()))

    def _render_provenance(self, k: Any) -> None:
        self.provenance.highlight(self.kernel_lines(k), k.name)

    # -- edit and run ------------------------------------------------------------------------------
    def run_edited(self) -> None:
        """Build the editor's text as the selected kernel, run it, compare with the generated one."""
        from explorer.errors import CompileError
        comp, k, i = self.current, self.selected_kernel(), self.kernel.value
        if comp is None or k is None:
            self.result.value = error_html("no kernel selected")
            return
        why = cannot_build_reason(comp)
        if why is not None:
            self.result.value = error_html(why, "cannot run edited source:")
            return
        src = self.editor.value
        if not src.strip():
            self.result.value = error_html("the editor is empty: write the kernel, or press Reset to put the "
                                           "generated source back")
            return
        self.result.value = note_html("building…")
        try:
            edited = comp.with_kernel_source(i, src, check=False)
            err_e, err_g = edited.max_error(), comp.max_error()
            t_e = edited.benchmark(warmup=1, repeat=5)
            t_g = comp.benchmark(warmup=1, repeat=5)
        except CompileError as e:
            self.result.value = self._compile_error_html(e, src)
            return
        except OSError as e:  # the library builds but does not load, e.g. a misspelt function
            sym = re.search(r"undefined symbol: (\w+)", str(e))
            why = (f"it calls {sym.group(1)}, which is not defined (a misspelt or missing function?)" if sym
                   else strip_paths(str(e)))
            self.result.value = error_html(why, "the edited kernel does not load:")
            return
        except Exception as e:  # noqa: BLE001
            self.result.value = error_html(strip_paths(describe_error(e)))
            return
        from explorer.compiled import default_rtol
        tol = default_rtol(comp.examples[0].dtype) if comp.examples else 1e-4
        # "wrong" = clearly worse than the generated kernel (which is itself within NumPy's tolerance)
        bad = not err_e <= max(10 * err_g, tol)
        colour = "#b00020" if bad else "#116329"
        self.result.value = (
            "<table class='ke-edit-result' style='border-collapse:collapse'>"
            "<tr><th></th><th style='padding:0 10px'>max abs error vs NumPy</th><th style='padding:0 10px'>median ms</th></tr>"
            f"<tr><td>generated</td><td style='padding:0 10px'>{err_g:.3g}</td><td style='padding:0 10px'>{t_g.median_ms:.4g}</td></tr>"
            f"<tr><td>edited</td><td style='padding:0 10px;color:{colour}'>{err_e:.3g}</td>"
            f"<td style='padding:0 10px'>{t_e.median_ms:.4g}</td></tr></table>"
            + (error_html("the edited kernel's result differs from NumPy") if bad else ""))

    @staticmethod
    def _compile_error_html(e: Any, src: str) -> str:
        line = getattr(e, "line", None)
        log = (getattr(e, "log", "") or "").strip()
        lines = src.splitlines()
        where = ""
        if line is not None and 1 <= line <= len(lines):
            where = (f"<div class='ke-error-line'>line {line}: <code style='background:#ffebe9'>"
                     f"{esc(lines[line - 1].strip())}</code></div>")
        elif line is not None:
            where = f"<div class='ke-error-line'>line {line}</div>"
        log = map_compile_log(log, line)
        logs = (f"<pre style='max-height:160px;overflow:auto;font-size:11px;white-space:pre'>{esc(log[-3000:])}</pre>"
                if log else "")
        return error_html(strip_paths(f"CompileError: {e}"), "the edited kernel does not build:") + where + logs
