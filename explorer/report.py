"""A standalone HTML report of one compile: every stage, every kernel, charts — one file, no network.

>>> import numpy as np, explorer, pathlib, tempfile
>>> c = explorer.compile(lambda x: np.exp(x) * 2, np.ones(8, np.float32), target="sim")
>>> path = pathlib.Path(tempfile.mkdtemp()) / "report.html"
>>> n = path.write_text(to_html(c, charts=False), encoding="utf-8")   # c.to_html(): with compare()'s charts

From the shell (FILE.py is imported by path; arrays are random with a fixed seed):

    python -m explorer report model.py::mlp --shapes "x=64x128,w=128x256,b=256" -o report.html

Everything the user wrote (function name, source, file names) is HTML-escaped; graphs are
inlined as SVG when graphviz's `dot` exists (otherwise the DOT text with a one-line note);
charts are inlined as base64 PNG when matplotlib is installed.
"""
from __future__ import annotations

import argparse
import base64
import html
import importlib.util
import inspect
import io
import os
import re
import shutil
import sys
from typing import Any, Callable, Sequence

import numpy as np

from .errors import ExplorerError


_CSS = """
body{font-family:-apple-system,BlinkMacSystemFont,"Segoe UI",Helvetica,Arial,sans-serif;margin:0;color:#1d1d1f;background:#fafafa}
header{background:#1f3a5f;color:#fff;padding:18px 28px}
header h1{margin:0 0 4px 0;font-size:22px;font-family:Menlo,Consolas,monospace}
header .sub{opacity:.85;font-size:13px}
main{padding:12px 28px 40px 28px;max-width:1200px}
nav{font-size:13px;margin:10px 0 18px 0}
nav a{margin-right:12px;color:#1f3a5f}
section{background:#fff;border:1px solid #e3e3e3;border-radius:6px;padding:10px 18px;margin:14px 0}
h2{font-size:18px;margin:8px 0;color:#1f3a5f}
h3{font-size:15px;margin:10px 0 6px 0;font-family:Menlo,Consolas,monospace}
pre{background:#f5f6f8;border:1px solid #e6e6e6;border-radius:4px;padding:8px 10px;overflow-x:auto;font-size:12px;line-height:1.35}
table{border-collapse:collapse;font-size:12.5px;margin:6px 0}
td,th{border:1px solid #e0e0e0;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f0f3f7}
.note{color:#7a5b00;background:#fff8e1;border:1px solid #f3e0a0;border-radius:4px;padding:4px 8px;font-size:12.5px;display:inline-block}
.graph{overflow:auto;max-height:720px;border:1px solid #eee;border-radius:4px;padding:4px;background:#fff}
.graph svg{max-width:100%;height:auto}
img.chart{max-width:100%;border:1px solid #eee;border-radius:4px;margin:6px 0}
.muted{color:#666;font-size:12px}
"""


def esc(s: Any) -> str:
    """HTML-escape any value's str() (quotes too, so it is safe inside attributes)."""
    return html.escape(str(s), quote=True)


def _anchor(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "-", s)


# ----------------------------------------------------------------------------- pieces
def _fmt_value(v: Any) -> str:
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return ", ".join(f"{k}: {_fmt_value(x)}" for k, x in v.items()) or "{}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt_value(x) for x in v) + "]"
    return str(v)


def stats_table(stats: dict[str, Any]) -> str:
    """A two-column table of a stats dict, every cell escaped."""
    if not stats:
        return '<p class="muted">no stats</p>'
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(_fmt_value(v))}</td></tr>" for k, v in stats.items())
    return f"<table>{rows}</table>"


def _snapshot_text(snap: Any) -> str:
    # Graph-like IRs can annotate every line with the user's file:line; others take no arguments.
    try:
        return snap.text(provenance=True)
    except TypeError:
        return snap.text()


_SVG_START = re.compile(r"<svg\b", re.I)
_UNSAFE_SVG = re.compile(r"<\s*(script|foreignObject|iframe)\b|<[^>]*\son[a-z]+\s*=|javascript:", re.I)


def svg_inline(svg: str) -> str:
    """The <svg> element of dot's output, without the XML prolog and DOCTYPE (invalid inside HTML).

    Refuses (returns '') anything with script-capable content; dot escapes labels, so a
    legitimate graph never has any.
    """
    m = _SVG_START.search(svg)
    if m is None:
        return ""
    body = svg[m.start():]
    if _UNSAFE_SVG.search(body):
        return ""
    return body


def graph_stages(stages: Sequence[Any]) -> list[str]:
    """Names of the stages whose picture is drawn: each whose dot() differs from the previous stage's.

    No list of stage names: the codegen snapshot draws its program again, and a stage that changed
    nothing (nothing to simplify, a program with nothing to vectorize) would repeat the picture above it.

    >>> import numpy as np, explorer
    >>> c = explorer.compile(lambda a, b: np.maximum(a @ b, 0), np.ones((8, 8), np.float32),
    ...                      np.ones((8, 8), np.float32), target="sim")
    >>> graph_stages(c.stages)
    ['traced', 'fused', 'lowered', 'tiled']
    """
    names, previous = [], None
    for s in stages:
        try:
            dot_src = s.dot()
        except Exception:   # no drawing: graph_html says why
            dot_src = None
        if dot_src is None or dot_src != previous:
            names.append(s.name)
        previous = dot_src
    return names


def graph_html(snap: Any) -> str:
    """The stage's graph as inline SVG, or its DOT text with a note when `dot` is missing."""
    from .render import have_dot
    try:
        dot_src = snap.dot()
    except Exception as e:  # an IR without a drawing is still reported, with the reason
        return f'<p class="note">no graph for this stage: {esc(e)}</p>'
    if have_dot():
        try:
            svg = svg_inline(snap.to_svg())
            if svg:
                return f'<div class="graph">{svg}</div>'
            note = "dot produced no usable SVG; showing the DOT text"
        except ExplorerError as e:
            note = f"graph rendering failed ({e}); showing the DOT text"
    else:
        note = ("graphviz's `dot` binary is not installed (apt-get install graphviz), "
                "so the graph is shown as DOT text")
    return (f'<p class="note">{esc(note)}</p>'
            f"<details><summary>DOT source</summary><pre>{esc(dot_src)}</pre></details>")


def highlight(source: str, language: str) -> tuple[str, str]:
    """(html, css) for `source`: pygments when installed, else an escaped <pre>."""
    try:
        from pygments import highlight as _hl
        from pygments.formatters import HtmlFormatter
        from pygments.lexers import CLexer, CudaLexer, PythonLexer
    except ImportError:
        return f"<pre>{esc(source)}</pre>", ""
    lexer = {"cuda": CudaLexer, "c": CLexer, "python": PythonLexer}.get(language, CLexer)()
    fmt = HtmlFormatter(cssclass="hl")
    return _hl(source, lexer, fmt), fmt.get_style_defs(".hl")


def function_source(compiled: Any) -> tuple[str, str, int | None]:
    """(source text, file name, first line) of the compiled function; falls back to the traced
    graph's recorded lines when inspect cannot find the source (lambdas typed in a REPL)."""
    fn = compiled.fn
    file = ""
    line: int | None = None
    try:
        file = inspect.getsourcefile(fn) or inspect.getfile(fn)
    except (TypeError, OSError):
        pass
    try:
        lines, line = inspect.getsourcelines(fn)
        return "".join(lines), file, line
    except (TypeError, OSError):
        pass
    try:
        g = compiled.stage("traced").ir
        if g.source_lines:
            first = min(g.source_lines)
            return "\n".join(g.source_lines[k] for k in sorted(g.source_lines)), g.source_file or file, first
    except Exception:
        pass
    return "# source not available", file, line


def _charts_html(compiled: Any, repeat: int = 10) -> str:
    """Run explorer.compare() on the compile's examples and inline each plot_* chart as PNG."""
    try:
        import matplotlib
        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        return '<p class="note">charts need matplotlib (pip install matplotlib)</p>'
    try:
        from .compare import compare
    except ImportError as e:
        return f'<p class="note">charts unavailable: {esc(e)}</p>'
    try:
        result = compare(compiled.fn, *compiled.examples, target=compiled.target, repeat=repeat,
                         warmup=min(2, repeat), verbose=False)
    except ExplorerError as e:
        return f'<p class="note">compare() failed: {esc(e)}</p>'
    parts = []
    table = getattr(result, "table", None)
    summary = table() if callable(table) else str(result)
    if isinstance(summary, str) and summary:
        parts.append(f"<pre>{esc(summary)}</pre>")
    for name in sorted(n for n in dir(result) if n.startswith("plot_")):
        plot = getattr(result, name)
        if not callable(plot):
            continue
        plt.close("all")
        try:
            ret = plot()
        except ExplorerError as e:
            parts.append(f'<p class="note">{esc(name)}: {esc(e)}</p>')
            continue
        fig = _figure_of(ret) or plt.gcf()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
        plt.close("all")
        data = base64.b64encode(buf.getvalue()).decode("ascii")
        parts.append(f'<h3>{esc(name[5:])}</h3><img class="chart" alt="{esc(name)}" '
                     f'src="data:image/png;base64,{data}">')
    return "".join(parts) or '<p class="muted">compare() produced no charts</p>'


def _figure_of(obj: Any) -> Any:
    if obj is None:
        return None
    if hasattr(obj, "savefig"):
        return obj
    fig = getattr(obj, "figure", None) or getattr(obj, "fig", None)
    if fig is not None and hasattr(fig, "savefig"):
        return fig
    if isinstance(obj, (tuple, list)) and obj:
        return _figure_of(obj[0])
    return None


def _kernel_html(i: int, k: Any, compiled: Any, css: set[str], resources: bool) -> str:
    override = compiled.kernel_overrides.get(i)
    src = override if override is not None else k.source
    code, style = highlight(src, k.language)
    if style:
        css.add(style)
    rows = [("language", k.language)]
    for key, val in (k.launch or {}).items():
        rows.append((f"launch.{key}", _fmt_value(val)))
    kern = getattr(k, "kernel", None)
    if kern is not None:
        if getattr(kern, "kind", ""):
            rows.append(("kind", kern.kind))
        if getattr(kern, "ops", ()):
            rows.append(("ops", " → ".join(kern.ops)))
        for s in getattr(kern, "source_lines", ()) or ():
            rows.append(("from", s))
        if getattr(kern, "schedule", ()):
            rows.append(("schedule", "; ".join(kern.schedule)))
    out = [f'<h3 id="kernel-{i}">{i}: {esc(k.name)}</h3>']
    if override is not None:
        out.append('<p class="note">hand-edited source (with_kernel_source), checked against the reference</p>')
    out.append("<table>" + "".join(f"<tr><th>{esc(a)}</th><td>{esc(b)}</td></tr>" for a, b in rows) + "</table>")
    if resources and k.language == "cuda":
        if shutil.which("nvcc") is None:
            out.append('<p class="muted">register/shared-memory report needs nvcc (not found)</p>')
        else:
            try:
                res = k.resources
                out.append("<b>nvcc resources</b>" + stats_table(res))
            except ExplorerError as e:
                out.append(f'<p class="note">nvcc resource report failed: {esc(e)}</p>')
    out.append(code)
    return "\n".join(out)


# ----------------------------------------------------------------------------- the report
def to_html(compiled: Any, *, charts: bool = True, resources: bool = True, graphs: bool = True,
            repeat: int = 10) -> str:
    """One self-contained HTML page for a Compiled: source, every stage, every kernel, charts.

    charts: run explorer.compare() (fused vs unfused) and inline its charts as PNG (needs matplotlib);
    resources: nvcc's register/spill report per CUDA kernel (needs nvcc);
    graphs: draw graph stages as SVG (needs graphviz's `dot`; otherwise DOT text);
    repeat: timed runs per variant for the charts (median reported).

    >>> import numpy as np, explorer
    >>> c = explorer.compile(lambda x: x * 2, np.ones(4, np.float32), target="sim")
    >>> page = to_html(c, charts=False, graphs=False, resources=False)   # no compare(), dot or nvcc run
    >>> page.startswith("<!DOCTYPE html>"), "mul_kernel" in page
    (True, True)
    """
    css: set[str] = set()
    name = compiled.name
    ex = ", ".join(f"{e.dtype}{list(e.shape)}" for e in compiled.examples)
    opts = compiled.options
    src, file, first = function_source(compiled)
    src_html, style = highlight(src, "python")
    if style:
        css.add(style)
    where = f"{file}:{first}" if file and first else (file or "unknown file")

    nav = ['<a href="#source">source</a>']
    nav += [f'<a href="#stage-{_anchor(s.name)}">{esc(s.name)}</a>' for s in compiled.stages]
    if compiled.kernels:
        nav.append('<a href="#kernels">kernels</a>')
    if charts:
        nav.append('<a href="#charts">charts</a>')

    body = [f'<section id="source"><h2>Source</h2><p class="muted">{esc(where)}</p>{src_html}</section>']
    opt_rows = {"target": compiled.target, "fuse": opts.fuse, "schedule": opts.schedule, "decompose": opts.decompose,
                "fast_math": opts.fast_math, "dtype": opts.dtype, "inputs": ex}
    body.append(f'<section id="options"><h2>Options</h2>{stats_table(opt_rows)}</section>')

    drawn = graph_stages(compiled.stages) if graphs else []
    for s in compiled.stages:
        parts = [f'<section id="stage-{_anchor(s.name)}"><h2>Stage: {esc(s.name)}</h2>', stats_table(s.stats)]
        try:
            text = _snapshot_text(s)
        except Exception as e:
            text = f"(text() failed: {e})"
        if s.name == "codegen":
            # the whole translation unit is long (prelude + every kernel); the kernels section shows each one
            parts.append(f"<details><summary>whole translation unit ({text.count(chr(10)) + 1} lines)</summary>"
                         f"<pre>{esc(text)}</pre></details>")
        else:
            parts.append(f"<pre>{esc(text)}</pre>")
        if s.name in drawn:
            parts.append(graph_html(s))
        elif graphs:
            parts.append('<p class="note">the same graph as the stage above (this stage changed nothing it draws)</p>')
        parts.append("</section>")
        body.append("\n".join(parts))

    if compiled.kernels:
        ks = [_kernel_html(i, k, compiled, css, resources) for i, k in enumerate(compiled.kernels)]
        body.append('<section id="kernels"><h2>Kernels</h2>' + "\n".join(ks) + "</section>")

    if charts:
        body.append(f'<section id="charts"><h2>Charts: fused vs unfused (explorer.compare, run while writing this report)</h2>{_charts_html(compiled, repeat)}</section>')

    from . import __version__
    head = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>kernel-explorer: {esc(name)}</title><style>{_CSS}{''.join(sorted(css))}</style></head><body>")
    header = (f"<header><h1>{esc(name)}</h1><div class=\"sub\">kernel-explorer {esc(__version__)} · "
              f"target {esc(compiled.target)} · {len(compiled.kernels)} kernel(s) · inputs {esc(ex)}</div></header>")
    return (head + header + "<main><nav>" + "".join(nav) + "</nav>" + "\n".join(body)
            + "</main></body></html>\n")


# ----------------------------------------------------------------------------- CLI
def parse_shapes(spec: str) -> dict[str, tuple[int, ...]]:
    """'x=64x128,w=128x256,b=256,s=' → {'x': (64, 128), 'w': (128, 256), 'b': (256,), 's': ()}.

    >>> parse_shapes("x=4x8, b=8")
    {'x': (4, 8), 'b': (8,)}
    """
    out: dict[str, tuple[int, ...]] = {}
    for item in [p.strip() for p in spec.split(",") if p.strip()]:
        if "=" not in item:
            raise ExplorerError(f"--shapes item {item!r} has no '=': write NAME=DIMS like x=64x128 (a scalar is x=)")
        name, dims = (t.strip() for t in item.split("=", 1))
        if not name.isidentifier():
            raise ExplorerError(f"--shapes item {item!r}: {name!r} is not a parameter name")
        if name in out:
            raise ExplorerError(f"--shapes gives {name!r} twice")
        try:
            shape = tuple(int(d) for d in dims.lower().split("x")) if dims else ()
        except ValueError:
            raise ExplorerError(f"--shapes item {item!r}: dimensions must be integers joined by 'x', like 64x128") from None
        if any(d <= 0 for d in shape):
            raise ExplorerError(f"--shapes item {item!r}: every dimension must be positive")
        out[name] = shape
    if not out:
        raise ExplorerError("--shapes is empty: give every parameter, like --shapes \"x=64x128,w=128x256,b=256\"")
    return out


def load_function(target: str) -> Callable:
    """Import FILE.py by path and return its attribute `fn` from 'FILE.py::fn'."""
    if "::" not in target:
        raise ExplorerError(f"{target!r}: name the function as FILE.py::fn (for example model.py::mlp)")
    path, _, attr = target.rpartition("::")
    if not path or not attr:
        raise ExplorerError(f"{target!r}: name the function as FILE.py::fn (for example model.py::mlp)")
    if not os.path.isfile(path):
        raise ExplorerError(f"no file {path!r}; give the path to a .py file, like model.py::mlp")
    modname = "_explorer_report_" + re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
    spec = importlib.util.spec_from_file_location(modname, path)
    if spec is None or spec.loader is None:
        raise ExplorerError(f"cannot import {path!r} as a Python module; is it a .py file?")
    module = importlib.util.module_from_spec(spec)
    sys.modules[modname] = module  # so inspect.getsource and dataclasses can find it
    try:
        spec.loader.exec_module(module)
    except ExplorerError:
        raise
    except Exception as e:
        raise ExplorerError(f"importing {path!r} failed: {type(e).__name__}: {e}") from e
    fn = getattr(module, attr, None)
    if fn is None:
        names = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
                 and getattr(v, "__module__", None) == modname]
        raise ExplorerError(f"{path!r} has no function {attr!r}; functions defined there: {', '.join(names) or 'none'}")
    if not callable(fn):
        raise ExplorerError(f"{path}::{attr} is not a function")
    return fn


def make_examples(fn: Callable, shapes: dict[str, tuple[int, ...]], dtype: str = "float32",
                  seed: int = 0) -> list[np.ndarray]:
    """Random example arrays (fixed seed) for fn's positional parameters, in order."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise ExplorerError(f"--dtype {dtype!r} is not a NumPy dtype; use float32, float16 or float64") from None
    try:
        params = [p for p in inspect.signature(fn).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        raise ExplorerError("cannot read the function's parameters; pass a plain Python function") from None
    if not params:
        raise ExplorerError("--shapes: the function has no named positional parameters (only *args/keywords); "
                            "wrap it, e.g. def f(x): return fn(x), so each input has a name")
    names = [p.name for p in params]
    missing = [n for n in names if n not in shapes and params[names.index(n)].default is inspect.Parameter.empty]
    extra = [n for n in shapes if n not in names]
    if missing or extra:
        msg = []
        if missing:
            msg.append(f"no shape for parameter(s) {', '.join(missing)}")
        if extra:
            msg.append(f"{', '.join(extra)} not parameter(s) of the function")
        raise ExplorerError("--shapes: " + "; ".join(msg) + f"; the parameters are {', '.join(names)}")
    rng = np.random.default_rng(seed)
    out = []
    for n in names:
        if n not in shapes:
            break  # the rest take their defaults
        a = rng.standard_normal(shapes[n])
        out.append(np.asarray(a, dtype=dt) if dt.kind == "f" else np.asarray(a * 4, dtype=dt))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m explorer report FILE.py::fn --shapes ... -o report.html`; returns the exit code (2 on bad input)."""
    p = argparse.ArgumentParser(prog="python -m explorer report",
                                description="Write a standalone HTML report of one compile.")
    p.add_argument("function", help="FILE.py::fn")
    p.add_argument("--shapes", required=True, help='example shapes, like "x=64x128,w=128x256,b=256"')
    p.add_argument("--dtype", default="float32", help="dtype of the random examples (default float32)")
    p.add_argument("--target", default="auto", help="auto | cuda | cpu | sim | reference (default auto)")
    p.add_argument("--no-fuse", action="store_true", help="compile with fusion off")
    p.add_argument("--no-charts", action="store_true", help="skip the fused-vs-unfused compare() run")
    p.add_argument("--no-resources", action="store_true", help="skip nvcc's per-kernel register report")
    p.add_argument("--repeat", type=int, default=10, help="timed runs per variant for the charts (default 10)")
    p.add_argument("-o", "--output", default="report.html", help="output file (default report.html)")
    args = p.parse_args(list(argv) if argv is not None else None)
    if args.repeat < 1:
        p.error(f"argument --repeat: must be >= 1, got {args.repeat}")
    try:
        from .pipeline import compile as _compile
        fn = load_function(args.function)
        examples = make_examples(fn, parse_shapes(args.shapes), args.dtype)
        c = _compile(fn, *examples, target=args.target, fuse=not args.no_fuse)
        text = to_html(c, charts=not args.no_charts, resources=not args.no_resources, repeat=args.repeat)
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text)
    except ExplorerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: cannot write {args.output!r}: {e.strerror or e}", file=sys.stderr)
        return 2
    print(f"wrote {args.output} ({len(text) // 1024} KiB, {len(c.stages)} stages, {len(c.kernels)} kernels)")
    return 0


if __name__ == "__main__":  # python -m explorer.report ...
    sys.exit(main())
