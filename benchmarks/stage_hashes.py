"""Record (or check) a hash of every stage text and generated source for the differential cases.

Issue 14's "behaviour unchanged" check: run on the tree before a refactor with ``--write``, and
after it with ``--check``; the report names every (case, target, fuse) whose stage texts or
generated C/CUDA sources changed, stage by stage.

    python benchmarks/stage_hashes.py --write docs/measurements/stage_hashes-before-issue14.json
    python benchmarks/stage_hashes.py --check docs/measurements/stage_hashes-before-issue14.json
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, ROOT)

import explorer  # noqa: E402
from test_reference_diff import CASES, make  # noqa: E402

TARGETS = ("sim", "cpu", "cuda")


def _h(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def record() -> dict:
    out: dict = {}
    for name in sorted(CASES):
        fn, spec = CASES[name]
        args = make(spec)
        for target in TARGETS:
            for fuse in (True, False):
                key = f"{name}/{target}/{'fused' if fuse else 'unfused'}"
                try:
                    c = explorer.compile(fn, *args, target=target, fuse=fuse, verbose=False)
                except Exception as e:  # recorded, so a change in the error is a change too
                    out[key] = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
                    continue
                entry = {"stages": {s: _h(c.stage(s).text()) for s in c.stage_names},
                         "sources": [_h(k.source) for k in c.kernels]}
                out[key] = entry
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--write", metavar="JSON")
    g.add_argument("--check", metavar="JSON")
    a = ap.parse_args()
    now = record()
    if a.write:
        with open(a.write, "w") as f:
            json.dump(now, f, indent=1, sort_keys=True)
        print(f"{len(now)} compilations recorded ({sum('error' in v for v in now.values())} errors) -> {a.write}")
        return 0
    with open(a.check) as f:
        before = json.load(f)
    src_changed, stage_changed, new_stages, gone = [], {}, {}, []
    for key in sorted(set(before) | set(now)):
        b, n = before.get(key), now.get(key)
        if b is None or n is None:
            gone.append(key)
            continue
        if "error" in b or "error" in n:
            if b != n:
                gone.append(f"{key}: {b.get('error')} -> {n.get('error')}")
            continue
        if b["sources"] != n["sources"]:
            src_changed.append(key)
        for s in n["stages"]:
            if s not in b["stages"]:
                new_stages.setdefault(s, []).append(key)
            elif b["stages"][s] != n["stages"][s]:
                stage_changed.setdefault(s, []).append(key)
        for s in b["stages"]:
            if s not in n["stages"]:
                gone.append(f"{key}: stage {s} removed")
    print(f"compilations: {len(now)} (before: {len(before)})")
    print(f"generated sources changed: {len(src_changed)}")
    for k in src_changed:
        print("   ", k)
    for s, keys in sorted(stage_changed.items()):
        print(f"stage '{s}' text changed in {len(keys)}: {', '.join(keys[:6])}{' ...' if len(keys) > 6 else ''}")
    for s, keys in sorted(new_stages.items()):
        print(f"new stage '{s}' in {len(keys)} compilations")
    for g_ in gone:
        print("missing/different:", g_)
    ok = not src_changed and not gone
    print("OK: sources identical" if ok else "DIFFERENT")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
