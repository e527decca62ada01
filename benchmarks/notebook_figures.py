"""Each tutorial notebook's key figure as a PNG in docs/images/, taken from a real headless run.

    .venv/bin/python benchmarks/notebook_figures.py                  # all notebooks, KE_FAST=1 sizes
    .venv/bin/python benchmarks/notebook_figures.py --full 06        # notebook 06 only, full sizes

Every notebook in notebooks/ runs top to bottom with nbclient (in memory: the committed .ipynb files
keep no outputs). Its key figure is the output of the cell tagged `key-figure` when one is, else the
first image/png output; it is written to docs/images/notebook_<NN>_<name>.png. A notebook without any
figure is reported, not skipped silently.
"""
from __future__ import annotations

import argparse
import base64
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NB_DIR = ROOT / "notebooks"
KEY_TAG = "key-figure"


def key_png(nb) -> bytes | None:
    """The PNG of the cell tagged KEY_TAG, else the first PNG output of the notebook (None: no figure)."""
    cells = [c for c in nb.cells if c.cell_type == "code"]
    tagged = [c for c in cells if KEY_TAG in c.get("metadata", {}).get("tags", [])]
    for cell in tagged + cells:
        for out in cell.get("outputs", []):
            png = out.get("data", {}).get("image/png")
            if png:
                return base64.b64decode(png)
    return None


def run_notebook(path: Path, fast: bool, timeout: int = 600):
    import nbclient
    import nbformat
    nb = nbformat.read(path, as_version=4)
    env = {"KE_FAST": "1" if fast else "0",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)     # the kernel inherits this process's environment
    try:
        nbclient.NotebookClient(nb, kernel_name="python3", timeout=timeout, allow_errors=False,
                                resources={"metadata": {"path": str(NB_DIR)}}).execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return nb


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("only", nargs="*", help="notebook numbers or names to run (default: all)")
    p.add_argument("--out", default=str(ROOT / "docs" / "images"), help="output folder (default: docs/images)")
    p.add_argument("--full", action="store_true", help="full problem sizes (default: KE_FAST=1 sizes)")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [q for q in sorted(NB_DIR.glob("*.ipynb"))
             if not args.only or any(q.stem.startswith(o) or q.stem == o for o in args.only)]
    missing = []
    for path in paths:
        t0 = time.perf_counter()
        nb = run_notebook(path, fast=not args.full)
        png = key_png(nb)
        if png is None:
            missing.append(path.stem)
            print(f"{path.stem}: ran in {time.perf_counter() - t0:.0f} s, but it has no figure")
            continue
        dest = out / f"notebook_{path.stem}.png"
        dest.write_bytes(png)
        print(f"{path.stem}: ran in {time.perf_counter() - t0:.0f} s → {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest}"
              f" ({len(png):,d} B)")
    if missing:
        print("no figure in:", ", ".join(missing), file=sys.stderr)
    return 1 if missing else 0


if __name__ == "__main__":
    raise SystemExit(main())
