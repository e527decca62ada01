"""Small helpers shared by the panels: HTML snippets, tolerant accessors, a background worker.

Nothing here knows about the compiler; panels call only the public `explorer` API.
"""
from __future__ import annotations

import html
import re
import threading
import traceback
from typing import Any, Callable

ERROR_STYLE = "color:#b00020;background:#fdecea;border:1px solid #f5c2c7;padding:4px 8px;border-radius:3px"
NOTE_STYLE = "color:#555;font-size:90%"


def esc(x: Any) -> str:
    return html.escape(str(x))


def code_html(text: str) -> str:
    """`text` escaped for HTML, with its `backquoted` parts as <code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", esc(text))


def error_html(message: str, title: str = "") -> str:
    """A red box with `message` (escaped); the dashboard's one way to show a failure."""
    head = f"<b>{esc(title)}</b> " if title else ""
    body = esc(message).replace("\n", "<br>")
    return f'<div class="ke-error" style="{ERROR_STYLE}">{head}{body}</div>'


def note_html(message: str) -> str:
    return f'<div class="ke-note" style="{NOTE_STYLE}">{esc(message)}</div>'


def pre_html(text: str, max_height: str = "480px", css_class: str = "") -> str:
    # white-space:pre and no word-break: JupyterLab's output CSS would otherwise wrap IR lines (and text
    # tables' rows) mid-word
    cls = f' class="{css_class}"' if css_class else ""
    return (f'<pre{cls} style="max-height:{max_height};overflow:auto;font-size:12px;line-height:1.35;white-space:pre;'
            f'word-break:normal;overflow-wrap:normal;margin:0;padding:4px;background:#fafafa">{esc(text)}</pre>')


_PATH = re.compile(r"(?:[A-Za-z]:)?(?:/[^/\s:'\"()]+)+/([^/\s:'\"()]+)")


def strip_paths(text: str) -> str:
    """Absolute paths (build caches, temp dirs) reduced to their file name."""
    return _PATH.sub(r"\1", text)


def describe_error(e: BaseException) -> str:
    """One readable message: ExplorerErrors are shown as written, anything else is labelled a bug."""
    from explorer.errors import ExplorerError
    if isinstance(e, ExplorerError):
        return f"{type(e).__name__}: {e}"
    last = traceback.extract_tb(e.__traceback__)[-1:] if e.__traceback__ else []
    where = f" (at {last[0].filename.rsplit('/', 1)[-1]}:{last[0].lineno})" if last else ""
    return f"internal error {type(e).__name__}: {e}{where} — please report it"


def get(obj: Any, key: str, default: Any = None) -> Any:
    """obj[key] for dicts, getattr(obj, key) otherwise (Explanation parts may be either)."""
    if isinstance(obj, dict):
        return obj.get(key, default)
    return getattr(obj, key, default)


def node_label(x: Any) -> str:
    """'%3 (matmul)' for a Node, str(x) for anything else."""
    name = getattr(x, "name", None)
    op = getattr(x, "op", None)
    if name is not None and op is not None:
        return f"{name} ({op})"
    return str(x)


def node_name(x: Any) -> str:
    name = getattr(x, "name", None)
    return str(name) if name is not None else str(x)


_LINE_RE = re.compile(r":(\d+)\b")


def line_numbers(items: Any) -> list[int]:
    """Source line numbers from Provenance objects, ints, or 'file.py:12  code' strings."""
    out: list[int] = []
    for it in items or ():
        if isinstance(it, int):
            out.append(it)
        elif getattr(it, "line", None) is not None and not isinstance(it, str):
            out.append(int(it.line))
        else:
            m = _LINE_RE.search(str(it))
            if m:
                out.append(int(m.group(1)))
    return sorted(set(out))


STAT_LABELS = {"wall_ms": "pass time (ms)", "bytes_unfused": "bytes moved unfused", "flops": "FLOPs",
               "intermediate_bytes": "intermediate bytes", "temp_bytes": "temporary bytes",
               "shared_bytes": "shared-memory bytes", "source_lines": "source lines"}


def stat_label(key: str) -> str:
    """A stage statistic's name as the dashboard shows it ('fused_edges' → 'fused edges')."""
    return STAT_LABELS.get(key, key.replace("_", " "))


def format_bytes(n: float) -> str:
    from explorer.units import fmt_bytes
    return fmt_bytes(int(n))


def format_stats(stats: dict[str, Any] | None) -> str:
    parts = []
    for k, v in (stats or {}).items():
        if isinstance(v, bool):
            v = "on" if v else "off"
        elif k.endswith("bytes") and isinstance(v, (int, float)):
            v = format_bytes(v)
        elif isinstance(v, float):
            v = f"{v:.3g}"
        elif isinstance(v, dict):
            v = ", ".join(f"{str(a).replace('_', ' ')}: {b}" for a, b in v.items()) or "—"
        parts.append(f"<b>{esc(stat_label(k))}</b>: {esc(v)}")
    return '<div style="font-size:90%;color:#333">' + " &nbsp;·&nbsp; ".join(parts) + "</div>"


class Worker:
    """Runs one job at a time on a daemon thread so a long measurement does not block the kernel.

    ipykernel sends widget updates made from a thread, so the job may set widget values.
    `wait()` joins the current job (tests and scripts use it).
    """

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self.last_error: BaseException | None = None

    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, job: Callable[[], None], on_error: Callable[[BaseException], None]) -> bool:
        if self.busy:
            return False

        def run() -> None:
            try:
                job()
            except BaseException as e:  # noqa: BLE001 — every failure is shown, none kills the UI
                self.last_error = e
                on_error(e)

        self.last_error = None
        self._thread = threading.Thread(target=run, daemon=True, name="kernel-explorer-worker")
        self._thread.start()
        return True

    def wait(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)


def show_progress(bar: Any, done: bool | None = None) -> None:
    """A worker panel's FloatProgress: done=None shows it at 0 (a job starts); True fills it green and
    hides it; False fills it red and leaves it visible (the job failed)."""
    if done is None:
        bar.bar_style = "info"
        bar.layout.visibility = "visible"
        bar.value = 0.0
        return
    bar.value = 1.0
    bar.bar_style = "success" if done else "danger"
    bar.layout.visibility = "hidden" if done else "visible"

