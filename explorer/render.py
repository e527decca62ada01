"""Render DOT source to SVG with the `graphviz` package and the `dot` binary, when present.

>>> svg = dot_to_svg("digraph { a -> b }")
>>> "<svg" in svg
True
"""
from __future__ import annotations

import shutil
import subprocess

from .errors import BackendUnavailable


def have_dot() -> bool:
    return shutil.which("dot") is not None


def dot_to_svg(dot_source: str, timeout: float = 30.0) -> str:
    """SVG text for `dot_source`; BackendUnavailable (one line, with the fix) without graphviz's `dot`."""
    exe = shutil.which("dot")
    if exe is None:
        raise BackendUnavailable("graph rendering needs graphviz's `dot` binary: apt-get install graphviz "
                                 "(or conda install graphviz); the DOT text is still available via .dot()")
    try:
        import graphviz  # the well-kept wrapper; optional
        return graphviz.Source(dot_source).pipe(format="svg").decode("utf-8")
    except ImportError:
        pass
    proc = subprocess.run([exe, "-Tsvg"], input=dot_source.encode(), capture_output=True, timeout=timeout)
    if proc.returncode != 0:
        raise BackendUnavailable(f"dot failed: {proc.stderr.decode(errors='replace').strip()[:300]}")
    return proc.stdout.decode("utf-8")
