"""Docstring examples (`>>>`) in explorer/ and widgets/ run as tests with the default suite.

`make test` (pytest with pyproject's testpaths) collects every module of the two packages as a
doctest module. We collect them here instead of with `--doctest-modules` in addopts because that
flag would also import every helper under tests/ (tests/fuzz/regressions/*.py are data files that
only run inside fuzz_check and fail on a plain import).

An example that needs something optional is skipped, with the reason, where that thing is absent:
the requirement is read from the example's own text (`target="cpu"` needs a C compiler, and so on,
see _NEEDS) or, for modules whose examples call their own functions bare, from _MODULE_NEEDS.
"""
from __future__ import annotations

import importlib
import re
import shutil
from functools import cache
from pathlib import Path

import pytest
from _pytest.doctest import DoctestItem, DoctestModule   # pytest has no public name for these

_ROOT = Path(__file__).parent
_DOCTEST_PACKAGES = ("explorer", "widgets")


@cache
def _cc() -> tuple[bool, str]:
    from explorer.backends import cpu
    return cpu.available()


@cache
def _gpu() -> tuple[bool, str]:
    from explorer.backends import cuda
    return cuda.available()


@cache
def _nvcc() -> tuple[bool, str]:
    from explorer.backends import nvcc
    ok, why = nvcc.available()
    if ok and not (shutil.which("gcc") or shutil.which("g++")):
        # nvcc found (it is also looked for outside PATH) but not the host compiler it runs
        return False, "nvcc's host compiler (gcc/g++) is not on PATH"
    return ok, why


def _dot() -> tuple[bool, str]:
    return shutil.which("dot") is not None, "graphviz's `dot` binary is not on PATH"


def _module(name: str):
    @cache
    def check() -> tuple[bool, str]:
        try:
            importlib.import_module(name)
        except ImportError as e:
            return False, f"{name} cannot be imported ({e})"
        return True, ""
    return check


# (pattern found in a docstring's examples, what it needs)
_NEEDS = [
    (re.compile(r"""target\s*=\s*["']cpu["']|\bcpu\.(build|compile_source)\b"""), _cc),
    (re.compile(r"""target\s*=\s*["']cuda["']|\bcuda\.(build|device_info)\b"""), _gpu),
    (re.compile(r"""\bresource_report\(|\bnvcc\.check\(|\.resources\b"""), _nvcc),
    (re.compile(r"""to_svg\(|_repr_svg_"""), _dot),
    (re.compile(r"""\.plot\w*\(|\bmatplotlib\b"""), _module("matplotlib")),
    (re.compile(r"""\bblas_threads\("""), _module("threadpoolctl")),
]
# modules whose examples need something whatever they say (they call their own functions bare, or
# the objects they build use it)
_MODULE_NEEDS = {
    "explorer.backends.nvcc": _nvcc,
    "explorer.backends.cuda": _gpu,
    "explorer.render": _dot,
    "widgets.panels.charts": _module("matplotlib"),      # the panels draw their charts when a run ends
    "widgets.panels.autotune": _module("matplotlib"),
}
# packages that need a module to be imported at all
_PACKAGE_NEEDS = {"widgets": _module("ipywidgets")}


class _ExampleModule(DoctestModule):
    """A doctest module that is skipped, with the reason, when its package's requirement is absent."""

    def collect(self):
        package = self.path.relative_to(_ROOT).parts[0]
        check = _PACKAGE_NEEDS.get(package)
        if check is not None:
            ok, why = check()
            if not ok:
                pytest.skip(f"{package}/ docstring examples: {why}", allow_module_level=True)
        yield from super().collect()


def pytest_collect_file(file_path: Path, parent):
    if parent.config.option.doctestmodules:
        return None                           # pytest's own doctest plugin collects them
    if file_path.suffix != ".py" or file_path.name in ("__main__.py", "conftest.py"):
        return None
    try:
        package = file_path.relative_to(_ROOT).parts[0]
    except ValueError:
        return None
    if package not in _DOCTEST_PACKAGES:
        return None
    return _ExampleModule.from_parent(parent, path=file_path)


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        if not isinstance(item, DoctestItem):
            continue
        checks = [check for pattern, check in _NEEDS
                  if any(pattern.search(ex.source) for ex in item.dtest.examples)]
        checks += [check for name, check in _MODULE_NEEDS.items()
                   if item.dtest.name == name or item.dtest.name.startswith(name + ".")]
        for check in checks:
            ok, why = check()
            if not ok:
                item.add_marker(pytest.mark.skip(reason=f"docstring example needs it: {why}"))
                break
