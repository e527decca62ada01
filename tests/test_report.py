"""The standalone HTML report: every stage, every kernel's source, graphs, escaping, and the CLI."""
from __future__ import annotations

import html
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import explorer
from explorer.errors import ExplorerError
from explorer.render import have_dot
from explorer.report import graph_stages, main, make_examples, parse_shapes, svg_inline, to_html

ROOT = Path(__file__).resolve().parents[1]
C_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def mlp(x, w, b):
    return np.maximum(x @ w + b, 0)


@pytest.fixture(scope="module")
def compiled():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 8)).astype(np.float32)
    w = rng.standard_normal((8, 12)).astype(np.float32)
    b = rng.standard_normal(12).astype(np.float32)
    return explorer.compile(mlp, x, w, b, target="sim", verbose=False)


@pytest.fixture(scope="module")
def report(compiled):
    return to_html(compiled, charts=False, resources=False)


def test_report_has_every_stage_and_kernel_source(compiled, report):
    assert compiled.stage_names[-1] == "codegen" and len(compiled.kernels) >= 1
    for s in compiled.stages:
        assert f"Stage: {html.escape(s.name)}</h2>" in report
        # the stage's text is there, escaped, verbatim (so a reader can copy it)
        first_line = s.text().splitlines()[0]
        assert html.escape(first_line) in report or html.escape(first_line, quote=False) in report
    for k in compiled.kernels:
        assert html.escape(k.name) in report
        # pygments splits the source into spans: compare the text with the tags removed
        plain = html.unescape(re.sub(r"<[^>]+>", "", report))
        for line in k.source.strip().splitlines():
            assert line.strip() in plain, f"kernel line missing from report: {line!r}"


def test_report_is_self_contained(report):
    assert report.startswith("<!DOCTYPE html>")
    # nothing fetched from elsewhere: no external scripts, stylesheets or images
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", report)
    assert "<script" not in report.lower()
    assert "<link" not in report.lower()


def test_report_graph_per_graph_stage(compiled, report):
    drawn = graph_stages(compiled.stages)
    assert len(drawn) >= 3 and "codegen" not in drawn   # codegen's dot() is its program's again
    for name in set(compiled.stage_names) - set(drawn):   # a repeated picture is named, not drawn twice
        section = report.split(f'id="stage-{name}"', 1)[1].split("</section>", 1)[0]
        assert "the same graph as the stage above" in section and "DOT source" not in section
    if not have_dot():
        # without graphviz, every graph stage still carries its DOT source and the one-line note
        assert report.count("DOT source") == len(drawn)
        assert "apt-get install graphviz" in report
        pytest.skip("graphviz `dot` not installed: the <svg> assertion needs it (apt-get install graphviz)")
    for name in drawn:
        section = report.split(f'id="stage-{name}"', 1)[1].split("</section>", 1)[0]
        assert "<svg" in section, f"stage {name} has no inline SVG"
    assert report.count("<svg") >= len(drawn)
    assert "<?xml" not in report and "<!DOCTYPE svg" not in report


def test_hostile_function_name_is_escaped_and_sanitized():
    evil = "<script>alert(1)</script>"

    def f(x, y):
        return np.exp(x) * y + 1.0

    f.__name__ = evil
    f.__qualname__ = evil
    a = np.ones((4, 8), np.float32)
    c = explorer.compile(f, a, a, target="sim", verbose=False)
    assert c.name == evil
    page = to_html(c, charts=False, resources=False)
    assert "<script" not in page.lower()
    assert html.escape(evil) in page
    # generated code never carries the raw name: every kernel name and the program name are C identifiers
    for k in c.kernels:
        assert C_IDENT.fullmatch(k.name), k.name
        assert "<" not in k.source and "alert(1)" not in k.source
    assert "alert(1)" not in c.codegen.source() and "<script" not in c.codegen.source()


def test_hostile_name_in_cpu_source_too():
    if "cpu" not in _available_targets():
        pytest.skip("no C compiler: the cpu target is unavailable")
    evil = "<script>alert(1)</script>"

    def g(x):
        return np.tanh(x) * 2.0

    g.__name__ = evil
    c = explorer.compile(g, np.ones(32, np.float32), target="cpu", verbose=False)
    assert "alert(1)" not in c.codegen.source() and "<script" not in c.codegen.source()
    np.testing.assert_allclose(c(np.ones(32, np.float32)), np.tanh(np.ones(32, np.float32)) * 2, rtol=1e-5)
    assert "<script" not in to_html(c, charts=False, resources=False).lower()


def _available_targets() -> set[str]:
    from explorer.backends import cpu
    return {"cpu"} if cpu.available()[0] else set()


def test_svg_inline_strips_prolog_and_refuses_scripts():
    svg = '<?xml version="1.0"?>\n<!DOCTYPE svg PUBLIC "x" "y">\n<svg width="1"><g/></svg>'
    assert svg_inline(svg) == '<svg width="1"><g/></svg>'
    assert svg_inline('<svg><script>alert(1)</script></svg>') == ""
    assert svg_inline('<svg><g onload="alert(1)"/></svg>') == ""
    assert svg_inline("not svg") == ""


def test_parse_shapes_and_errors():
    assert parse_shapes("x=64x128, w=128x256,b=256,s=") == {"x": (64, 128), "w": (128, 256), "b": (256,), "s": ()}
    for bad in ("x", "x=4xq", "x=0x3", "", "x=2,x=3", "1x=2"):
        with pytest.raises(ExplorerError):
            parse_shapes(bad)
    with pytest.raises(ExplorerError, match="no shape for parameter"):
        make_examples(mlp, {"x": (2, 3), "w": (3, 4)})
    with pytest.raises(ExplorerError, match="not parameter"):
        make_examples(mlp, {"x": (2, 3), "w": (3, 4), "b": (4,), "z": (1,)})
    ex = make_examples(mlp, {"x": (2, 3), "w": (3, 4), "b": (4,)}, "float16")
    assert [e.shape for e in ex] == [(2, 3), (3, 4), (4,)] and all(e.dtype == np.float16 for e in ex)


def test_main_bad_spec_exit_code_2(tmp_path, capsys):
    src = tmp_path / "model.py"
    src.write_text("import numpy as np\ndef mlp(x, w, b):\n    return np.maximum(x @ w + b, 0)\n")
    assert main([f"{src}::nope", "--shapes", "x=2x3,w=3x4,b=4", "-o", str(tmp_path / "r.html")]) == 2
    assert "no function 'nope'" in capsys.readouterr().err
    assert main([f"{src}", "--shapes", "x=2x3", "-o", str(tmp_path / "r.html")]) == 2
    assert "FILE.py::fn" in capsys.readouterr().err
    assert main([f"{tmp_path}/missing.py::mlp", "--shapes", "x=2", "-o", str(tmp_path / "r.html")]) == 2
    assert main([f"{src}::mlp", "--shapes", "x=2x3,w=5x4,b=4", "-o", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "Traceback" not in err
    assert not (tmp_path / "r.html").exists()


def test_cli_writes_report(tmp_path):
    src = tmp_path / "my model.py"
    src.write_text(textwrap.dedent("""\
        import numpy as np

        def mlp(x, w, b):
            h = x @ w + b
            return np.maximum(h, 0)
        """))
    out = tmp_path / "report.html"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "explorer", "report", f"{src}::mlp", "--shapes", "x=8x16,w=16x4,b=4",
                           "--target", "sim", "--no-charts", "--no-resources", "-o", str(out)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    page = out.read_text()
    for name in ("traced", "simplified", "fused", "lowered", "tiled", "codegen"):
        assert f"Stage: {name}</h2>" in page
    assert "np.maximum(h, 0)" in html.unescape(page)   # the function's own source, with provenance
    assert html.escape(str(src)) in page                # the file name, escaped

    bad = subprocess.run([sys.executable, "-m", "explorer", "report", f"{src}::mlp", "--shapes", "x=8x16,w=oops",
                          "-o", str(tmp_path / "bad.html")], capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2
    assert "error:" in bad.stderr and "Traceback" not in bad.stderr


def test_charts_embedded_as_png_when_matplotlib(compiled):
    pytest.importorskip("matplotlib")
    try:
        import explorer.compare  # noqa: F401
    except ImportError:
        pytest.skip("explorer.compare is not built yet")
    page = to_html(compiled, charts=True, resources=False, repeat=2)
    assert page.count("data:image/png;base64,") >= 2   # timing and roofline


def test_report_without_dot_shows_dot_text(compiled, monkeypatch):
    import explorer.render
    monkeypatch.setattr(explorer.render, "have_dot", lambda: False)
    page = to_html(compiled, charts=False, resources=False)
    drawn = graph_stages(compiled.stages)
    assert "<svg" not in page
    assert page.count("DOT source") == len(drawn)
    assert "apt-get install graphviz" in page
    assert html.escape(compiled.stage("traced").dot().splitlines()[0]) in page
