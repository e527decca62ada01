"""The module layering runs one way, bottom to top (issue 14).

Every import of every module is read with `ast`, the ones inside functions included (a lazy
import is still a dependency), and relative imports are resolved to module names:

* backends/, codegen/ and passes/ never import the top layer (compiled, pipeline, compare,
  report, autotune, lesson, costmodel, custom, __main__, the widgets package);
* compiled, compare and report never import backends/, codegen/ or passes/: they reach a backend
  through the Target (Target.build, Target.available) and a pass through the snapshot it made
  (FusedGraph.explain);
* the leaf modules import nothing of the project above them;
* docs/ARCHITECTURE.md matches the code: its layer table names every module file exactly once, and no
  module imports one of a higher layer unless the doc's exception table lists it with its reason.
"""
from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("explorer", "widgets")

LOWER = ("explorer.backends", "explorer.codegen", "explorer.passes")
TOP = ("explorer.compiled", "explorer.pipeline", "explorer.compare", "explorer.report", "explorer.autotune",
       "explorer.lesson", "explorer.costmodel", "explorer.custom", "explorer.__main__", "widgets")
# modules of the project each leaf may import (all of them lazily or at the bottom of the stack)
LEAVES = {"explorer.measure": (), "explorer.tolerance": (), "explorer.units": (), "explorer.errors": (),
          # the Target is data; its stages() names the stage list (explorer.stages), imported on call
          "explorer.target": ("explorer.errors", "explorer.stages"),
          "explorer.snapshot": ("explorer.errors", "explorer.render", "explorer.target"),
          "explorer.interpreter": ("explorer.errors", "explorer.graph", "explorer.ops")}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@functools.lru_cache(maxsize=None)
def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every import in `path`, at any depth; `from . import x` yields package.x
    when x is a submodule (else the package), so a submodule imported by name is seen too."""
    known = _modules()
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found += [(node.lineno, f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod) for a in node.names]
    return found


def _within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def violations(importers: tuple[str, ...], forbidden: tuple[str, ...]) -> list[str]:
    """'file:line imports module' for every import from a module in `importers` into `forbidden`."""
    out = []
    for name, path in _modules().items():
        if _within(name, importers):
            out += [f"{path.relative_to(ROOT)}:{line} imports {mod}" for line, mod in imports_of(path)
                    if _within(mod, forbidden)]
    return sorted(set(out))


def test_the_import_reader_sees_lazy_and_relative_imports():
    # the checks below are only as good as this reader; each case is an import the code has on purpose
    mods = _modules()

    def sees(module: str, imported: str) -> bool:
        return imported in {m for _, m in imports_of(mods[module])}
    assert sees("explorer.compiled", "explorer.report")           # `from .report import to_html` in a method
    assert sees("explorer.backends.simulator", "explorer.loopir")  # `from .. import loopir as L`
    assert sees("explorer.backends.cpu", "explorer.measure")       # `from ..measure import measure` in a method
    assert sees("widgets.explorer_widget", "explorer.pipeline")    # absolute, inside a function


def test_backends_codegen_passes_never_import_the_top_layer():
    assert violations(LOWER, TOP) == []


def test_codegen_imports_no_backend_but_the_nvcc_resource_report():
    # code generation sits below the backends that run its output; the one exception is a lazy lookup:
    # GeneratedKernel.resources asks nvcc (explorer.backends.nvcc, the toolchain wrapper) for the register report
    allowed = {("explorer/codegen/__init__.py", "explorer.backends.nvcc")}
    found = violations(("explorer.codegen",), ("explorer.backends",))
    assert [v for v in found if (v.split(":")[0], v.rsplit(" ", 1)[1]) not in allowed] == []


@pytest.mark.parametrize("module", ["explorer.compiled", "explorer.compare", "explorer.report"])
def test_top_layer_imports_no_backend_codegen_or_pass(module):
    assert violations((module,), LOWER) == []


def test_pipeline_imports_no_backend_codegen_or_pass():
    assert violations(("explorer.pipeline",), LOWER) == []


@pytest.mark.parametrize("leaf", sorted(LEAVES))
def test_leaf_modules_import_nothing_above_them(leaf):
    path = _modules()[leaf]
    project = [(line, m) for line, m in imports_of(path) if _within(m, PACKAGES)]
    assert [f"{leaf}:{line} imports {m}" for line, m in project
            if not _within(m, LEAVES[leaf] + (leaf,))] == []


# ----------------------------------------------------------------------------- docs/ARCHITECTURE.md matches the code
ARCHITECTURE = ROOT / "docs" / "ARCHITECTURE.md"
_LAYER_ROW = re.compile(r"^\| (\d+) \| ([^|]+?) \| (.+) \|$", re.M)
_EXCEPTION_ROW = re.compile(r"^\| `([^`]+)` \| `([^`]+)` \| (.*) \|$", re.M)


def documented_layers(text: str) -> list[tuple[int, str, list[str]]]:
    """(number, layer name, module files) for every row of ARCHITECTURE.md's layer table."""
    return [(int(n), name, re.findall(r"`([^`]+)`", files)) for n, name, files in _LAYER_ROW.findall(text)]


def documented_exceptions(text: str) -> dict[tuple[str, str], str]:
    """{(importer file, imported module): why} for every row of the upward-import table."""
    return {(importer, imported): why.strip() for importer, imported, why in _EXCEPTION_ROW.findall(text)}


def imports_by_name(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every importlib.import_module call whose argument starts with a literal module name
    (a str, or an f-string's leading text): `import_module(f"explorer.backends.{name}")` yields explorer.backends."""
    known = _modules()
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not (isinstance(node, ast.Call) and node.args and getattr(node.func, "attr", getattr(node.func, "id", ""))
                == "import_module"):
            continue
        arg = node.args[0]
        if isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
            arg = arg.values[0]
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            parts = arg.value.rstrip(".").split(".")
            while parts and ".".join(parts) not in known:
                parts.pop()
            if parts:
                found.append((node.lineno, ".".join(parts)))
    return found


def _owner(module: str) -> str | None:
    """The module file (by module name) an imported name belongs to: itself, or the longest known prefix."""
    known = _modules()
    parts = module.split(".")
    while parts and ".".join(parts) not in known:
        parts.pop()
    return ".".join(parts) or None


def test_the_by_name_reader_sees_the_targets_backend_import():
    # Target.backend_module() imports `explorer.backends.<name>`: the one upward link ast's import nodes miss
    mods = _modules()
    assert "explorer.backends" in {m for _, m in imports_by_name(mods["explorer.target"])}
    assert "explorer.schedules" in {m for _, m in imports_by_name(mods["explorer.schedule"])}   # moved names


def test_architecture_layers_name_every_module_once():
    layers = documented_layers(ARCHITECTURE.read_text())
    assert [n for n, _, _ in layers] == list(range(1, len(layers) + 1)), "layers are numbered 1, 2, ... bottom to top"
    named = [f for _, _, files in layers for f in files]
    on_disk = {str(p.relative_to(ROOT)) for p in _modules().values()}
    twice = sorted({f for f in named if named.count(f) > 1})
    assert twice == [], f"named in more than one layer of docs/ARCHITECTURE.md: {twice}"
    assert sorted(set(named) - on_disk) == [], "docs/ARCHITECTURE.md names module files that do not exist"
    assert sorted(on_disk - set(named)) == [], "module files missing from docs/ARCHITECTURE.md's layer table"


def test_no_module_imports_a_higher_layer_except_the_documented_ones():
    text = ARCHITECTURE.read_text()
    layer_of = {f: n for n, _, files in documented_layers(text) for f in files}
    exceptions = documented_exceptions(text)
    assert exceptions and all(exceptions.values()), "every documented exception says why"
    upward: dict[tuple[str, str], str] = {}
    for name, path in _modules().items():
        importer = str(path.relative_to(ROOT))
        for line, mod in imports_of(path) + imports_by_name(path):
            owner = _owner(mod) if _within(mod, PACKAGES) else None
            if owner is None:
                continue
            target = str(_modules()[owner].relative_to(ROOT))
            if target in layer_of and importer in layer_of and layer_of[target] > layer_of[importer]:
                upward[(importer, owner)] = f"{importer}:{line} (layer {layer_of[importer]}) imports {owner} " \
                                            f"(layer {layer_of[target]})"
    undocumented = sorted(v for k, v in upward.items() if k not in exceptions)
    assert undocumented == [], "upward imports not in docs/ARCHITECTURE.md's exception table:\n" + "\n".join(undocumented)
    stale = sorted(k for k in exceptions if k not in upward)
    assert stale == [], f"documented exceptions the code no longer has (remove their rows): {stale}"


_FLOW_ROW = re.compile(r"→ (\w+) +(\w+)\b")


@pytest.mark.parametrize("target", ["sim", "reference"])
def test_architecture_data_flow_names_each_stage_and_its_ir_type(target):
    # the "One compile" diagram: `→ stage  IRType` per line, in the order compile runs them
    import numpy as np

    import explorer
    flow = _FLOW_ROW.findall(ARCHITECTURE.read_text().split("## One compile", 1)[1].split("```")[1])
    a = np.ones((8, 8), np.float32)
    c = explorer.compile(lambda a, b: np.maximum(a @ b, 0), a, a, target=target)
    assert [(s.name, type(s.ir).__name__) for s in c.stages] == [(n, t) for n, t in flow if n in c.stage_names]
    assert [n for n, _ in flow] == ["traced", *(n for n, _ in explorer.target.get_target("sim").stages())]
