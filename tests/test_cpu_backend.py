"""CPU backend: build, run, cache, compiler errors, missing compiler, concurrent builds."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import numpy as np
import pytest

from explorer.codegen.c import generate_c
from explorer.compiled import Timing
from explorer.errors import BackendUnavailable, CompileError
from explorer.loopir import Buffer, Const, For, Kernel, Program, Store, Var, call

from explorer.backends import cpu

HAVE_CC, WHY = cpu.available()
pytestmark = pytest.mark.skipif(not HAVE_CC, reason=f"no C compiler: {WHY}")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "kernel-explorer" / "cpu"


def two_kernel_program(n: int = 100, scale: float = 2.0) -> Program:
    """t = exp(x) * scale (kernel 0, into a temp); out = t + x (kernel 1)."""
    x, t, o = Buffer("x", (n,)), Buffer("t1", (n,)), Buffer("out0", (n,))
    i = Var("i")
    k0 = Kernel("fused_exp_mul", (x, t), (For(i, n, (Store(t, (i,), call("exp", x[i]) * Const(scale, "f32")),),
                                                kind="parallel"),), outputs=("t1",), group="g0")
    k1 = Kernel("fused_add", (t, x, o), (For(i, n, (Store(o, (i,), t[i] + x[i]),), kind="vectorized"),),
                outputs=("out0",), group="g1")
    return Program("two", (k0, k1), (x,), (o,), temps=(t,))


def test_build_run_and_cache_hit(cache):
    x = np.linspace(-2, 2, 100).astype(np.float32)
    cg = generate_c(two_kernel_program())
    before = dict(cpu.stats)
    exe = cpu.build_codegen(cg)
    assert cpu.stats["compiles"] == before["compiles"] + 1
    out = exe.run([x])
    assert len(out) == 1 and out[0].dtype == np.float32
    np.testing.assert_allclose(out[0], np.exp(x) * 2 + x, rtol=1e-6, atol=1e-6)
    assert list(cache.glob("*.so"))
    # same source and flags: loaded from the cache, the compiler does not run
    exe2 = cpu.build_codegen(generate_c(two_kernel_program()))
    assert cpu.stats["compiles"] == before["compiles"] + 1
    assert cpu.stats["cache_hits"] == before["cache_hits"] + 1
    np.testing.assert_array_equal(exe2.run([x])[0], out[0])
    # other flags (fast_math) are another cache entry
    cpu.build_codegen(generate_c(two_kernel_program(), fast_math=True))
    assert cpu.stats["compiles"] == before["compiles"] + 2


def test_fast_math_build_leaves_numpy_subnormals_alone(cache):
    # linking with -ffast-math would set flush-to-zero for the whole process
    cpu.build_codegen(generate_c(two_kernel_program(scale=3.0), fast_math=True)).run([np.ones(100, np.float32)])
    assert np.float32(1e-38) * np.float32(1e-3) > 0


def test_timing_per_kernel(cache):
    exe = cpu.build_codegen(generate_c(two_kernel_program()))
    t = exe.time([np.ones(100, np.float32)], warmup=1, repeat=5)
    assert isinstance(t, Timing) and t.repeat == 5 and t.median_ms > 0
    assert set(t.per_kernel_ms) == {"fused_exp_mul", "fused_add"}
    assert sum(t.per_kernel_ms.values()) <= t.median_ms * 5


def test_build_from_compiled_with_override(cache):
    cg = generate_c(two_kernel_program())
    edited = cg.kernels[1].source.replace("t1[i] + x[i]", "t1[i] - x[i]")
    assert edited != cg.kernels[1].source
    compiled = types.SimpleNamespace(codegen=cg, kernel_overrides={1: edited}, program=cg.program,
                                     options=types.SimpleNamespace(fast_math=False), target="cpu")
    x = np.linspace(-1, 1, 100).astype(np.float32)
    np.testing.assert_allclose(cpu.build(compiled).run([x])[0], np.exp(x) * 2 - x, rtol=1e-6, atol=1e-7)


def test_compile_error_names_kernel_and_line(cache):
    cg = generate_c(two_kernel_program())
    lines = cg.kernels[1].source.splitlines()
    body = next(k for k, l in enumerate(lines) if "out0[i] =" in l)
    lines[body] = lines[body].replace(";", "")   # drop a semicolon: an error on the next line or this one
    with pytest.raises(CompileError) as ei:
        cpu.build_codegen(cg, overrides={1: "\n".join(lines)})
    e = ei.value
    assert "kernel 1 (fused_add)" in str(e)
    assert e.line in (body + 1, body + 2)
    assert "error" in e.log
    # a kernel that builds but lost its name
    renamed = cg.kernels[0].source.replace("void fused_exp_mul(", "void other_name(")
    with pytest.raises(CompileError, match="fused_exp_mul"):
        cpu.build_codegen(cg, overrides={0: renamed})


def test_missing_compiler_is_backend_unavailable(cache, monkeypatch):
    monkeypatch.setenv("CC", "/nonexistent/bin/cc")
    cpu.clear_cache()
    try:
        ok, why = cpu.available()
        assert not ok and "/nonexistent/bin/cc" in why
        with pytest.raises(BackendUnavailable, match="C compiler"):
            cpu.build_codegen(generate_c(two_kernel_program(n=7)))
    finally:
        monkeypatch.delenv("CC")
        cpu.clear_cache()
    assert cpu.available()[0]


def test_two_processes_build_the_same_source(cache):
    script = textwrap.dedent(f"""
        import sys, numpy as np
        sys.path.insert(0, {str(ROOT)!r}); sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_cpu_backend import two_kernel_program
        from explorer.codegen.c import generate_c
        from explorer.backends import cpu
        exe = cpu.build_codegen(generate_c(two_kernel_program(n=333, scale=5.0)))
        x = np.linspace(-1, 1, 333).astype(np.float32)
        assert np.allclose(exe.run([x])[0], np.exp(x) * 5 + x, rtol=1e-6, atol=1e-6)
        print(cpu.stats["compiles"])
    """)
    env = {**os.environ, "XDG_CACHE_HOME": str(cache.parents[1])}
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for _ in range(2)]
    results = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, results):
        assert p.returncode == 0, err
    # the file lock lets exactly one of them run the compiler; the other loads its result
    assert sum(int(out.strip().splitlines()[-1]) for out, _ in results) == 1
    assert len(list(cache.glob("*.so"))) == 1


def _compile_cpu(fn, *args, **kw):
    import explorer
    c = explorer.compile(fn, *args, target="cpu", verbose=False, **kw)
    if "codegen" not in c.stage_names:
        pytest.skip("the pipeline has no codegen stage yet")
    return c


def test_pipeline_chain_and_mlp_match_numpy(cache):
    rng = np.random.default_rng(3)
    a = rng.standard_normal(1001).astype(np.float32)
    b = rng.standard_normal(1001).astype(np.float32)
    a[:3] = [np.nan, np.inf, -np.inf]

    def chain(a, b):
        return np.maximum(np.tanh(a * 1.5 + b) * b - a / 3, 0.1) + a * b
    for fast in (False, True):
        c = _compile_cpu(chain, a, b, fast_math=fast)
        assert c.kernels[0].language == "c"
        got = c(a, b)
        if not fast:
            np.testing.assert_allclose(got, chain(a, b), rtol=2e-6, atol=1e-6, equal_nan=True)
        else:
            np.testing.assert_allclose(got[3:], chain(a, b)[3:], rtol=1e-5, atol=1e-5)
    x = rng.standard_normal((37, 50)).astype(np.float32)
    w = rng.standard_normal((50, 19)).astype(np.float32)
    bias = rng.standard_normal(19).astype(np.float32)
    c = _compile_cpu(lambda x, w, b: np.maximum(x @ w + b, 0), x, w, bias)
    np.testing.assert_allclose(c(x, w, bias), np.maximum(x @ w + bias, 0), rtol=1e-4, atol=1e-4)
    t = c.benchmark(repeat=3)
    assert t.per_kernel_ms and set(t.per_kernel_ms) == {k.name for k in c.kernels}


def test_with_kernel_source_reports_compiler_line(cache):
    x = np.linspace(-1, 1, 64).astype(np.float32)
    c = _compile_cpu(lambda x: np.exp(x) * 2, x)
    src = c.kernels[0].source
    lines = src.splitlines()
    at = next(k for k, l in enumerate(lines) if "ke_expf" in l)
    lines[at] = lines[at].replace("ke_expf(", "undeclared_fn(").replace(";", "")
    with pytest.raises(CompileError) as ei:
        c.with_kernel_source(0, "\n".join(lines))
    assert ei.value.line is not None and at + 1 <= ei.value.line <= at + 2
    new_src = src.replace("* 2.0f;", "* 2.0f + 0.0f;")
    assert new_src != src
    edited = c.with_kernel_source(0, new_src)
    np.testing.assert_allclose(edited(x), np.exp(x) * 2, rtol=1e-6)
