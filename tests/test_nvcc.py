"""nvcc compile check and ptxas resource report for generated CUDA (skipped, with the reason, without nvcc)."""
from __future__ import annotations

import os
import stat

import pytest

from explorer.backends import nvcc
from explorer.codegen.cuda import generate_cuda
from explorer.errors import BackendUnavailable, CompileError

try:
    import cuda_programs as cp
except ImportError:
    from tests import cuda_programs as cp  # type: ignore

_OK, _WHY = nvcc.available()
needs_nvcc = pytest.mark.skipif(not _OK, reason=_WHY)


@needs_nvcc
@pytest.mark.parametrize("name", sorted(cp.all_programs()))
def test_every_generated_kernel_compiles_to_ptx(name):
    cg = generate_cuda(cp.all_programs()[name])
    ptx = nvcc.check(cg.source(), arch="sm_80", mode="ptx")
    for k in cg.kernels:
        assert f".entry {k.name}(" in ptx
    if name == "elementwise":
        assert "ld.global.nc.v4.f32" in ptx and "st.global.v4.f32" in ptx  # float4 survives to PTX
    # each ke_allreduce path: warp shuffles where whole warps (or one row) exist, barriers across warps
    if name in ("logsumexp_128x1", "logsumexp_100x1"):
        assert "shfl.sync" in ptx and "bar.sync" in ptx
    if name == "logsumexp_32x4":  # one warp per row: shuffles only, no block barrier needed
        assert "shfl.sync" in ptx and "bar.sync" not in ptx
    if name == "logsumexp_24x3":  # rows straddle warps: shared memory and barriers, no shuffles
        assert "shfl.sync" not in ptx and "bar.sync" in ptx


@needs_nvcc
def test_resource_report_for_tiled_matmul():
    cg = generate_cuda(cp.matmul_bias_relu())
    rep = nvcc.resource_report(cg, arch="sm_80")
    r = rep["fused_matmul_add_maximum"]
    assert r["arch"] == "sm_80"
    assert 16 <= r["registers"] <= 255  # a 4x4 register tile needs at least its 16 accumulators
    assert r["spill_stores"] == 0 and r["spill_loads"] == 0
    assert r["shared_bytes"] == 2048 == cg.kernels[0].launch["shared_bytes"]
    assert r["barriers"] >= 1
    # the lazy property on GeneratedKernel goes through the same report (and the in-process cache)
    assert cg.kernels[0].resources == r
    assert nvcc.resource_report(cg, arch="sm_80") == rep


@needs_nvcc
def test_resource_report_sees_local_memory():
    # a per-thread array indexed by a runtime value cannot live in registers: it goes to the stack frame
    src = ('extern "C" __global__ void spill(const float* x, const int* i, float* y) {\n'
           '  float a[256];\n  for (int k = 0; k < 256; ++k) a[k] = x[k * threadIdx.x];\n'
           '  y[threadIdx.x] = a[i[threadIdx.x]];\n}\n')
    r = nvcc.resource_report(src, arch="sm_80")["spill"]
    assert r["local_bytes"] >= 1024 and r["stack_bytes"] >= 1024


def test_parse_ptxas_info_reads_spills():
    log = """ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'k' for 'sm_90'
ptxas info    : Function properties for k
    48 bytes stack frame, 44 bytes spill stores, 40 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 48 bytes cumulative stack size, 8192 bytes smem, 368 bytes cmem[0]
"""
    r = nvcc.parse_ptxas_info(log)["k"]
    assert (r["registers"], r["spill_stores"], r["spill_loads"], r["shared_bytes"], r["arch"]) == (255, 44, 40, 8192,
                                                                                                    "sm_90")
    assert r["local_bytes"] == 48 and r["barriers"] == 1


@needs_nvcc
def test_compile_error_names_kernel_and_line():
    cg = generate_cuda(cp.logsumexp())
    good = "out0[br + ty] = m + logf(s);"
    src = cg.source()
    assert good in src
    bad = src.replace(good, "out0[br + ty] = m + logf(s) + not_declared;")
    line = bad.splitlines().index(next(ln for ln in bad.splitlines() if "not_declared" in ln)) + 1
    with pytest.raises(CompileError) as ei:
        nvcc.check(bad)
    e = ei.value
    assert e.line == line
    assert "fused_max_sub_exp_sum_log_add" in str(e) and "not_declared" in str(e) and f"line {line}" in str(e)
    assert "error" in e.log


@needs_nvcc
def test_user_text_in_comments_still_compiles():
    from explorer.loopir import Buffer, Comment, For, Kernel, Program, Store, Var
    x, y = Buffer("x", (8,)), Buffer("out0", (8,))
    t = Var("t")
    evil = '*/ #error boom /* "x" \\'
    k = Kernel("k-*/", (x, y), (Comment(evil), For(t, 8, (Store(y, (t,), x[t]),), kind="threadIdx.x")),
               outputs=("out0",), source_lines=(evil,), ops=(evil,))
    nvcc.check(generate_cuda(Program("p", (k,), (x,), (y,))).source())


def test_bad_arch_and_mode_are_compile_errors():
    if not _OK:
        pytest.skip(_WHY)
    with pytest.raises(CompileError, match="sm_80"):
        nvcc.check("", arch="80; rm -rf /")
    with pytest.raises(CompileError, match="ptx"):
        nvcc.check("", mode="exe")


def test_without_nvcc_is_backend_unavailable(monkeypatch):
    monkeypatch.setattr(nvcc, "find_nvcc", lambda: None)
    ok, why = nvcc.available()
    assert ok is False and "nvcc" in why and "\n" not in why
    with pytest.raises(BackendUnavailable, match="nvcc not found"):
        nvcc.check("int x;")
    with pytest.raises(BackendUnavailable):
        nvcc.resource_report("// a source that is not in the cache\n", arch="sm_75")


def test_find_nvcc_uses_cuda_home(tmp_path, monkeypatch):
    fake = tmp_path / "bin" / "nvcc"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setenv("CUDA_HOME", str(tmp_path))
    assert nvcc.find_nvcc() == os.fspath(fake)


@needs_nvcc
def test_every_dtype_and_math_function_compiles():
    from explorer.loopir import MATH_FUNCTIONS, BinOp, Buffer, Cast, Const, For, Kernel, Program, Select, Store, Var, call
    t = Var("t")
    kernels = []
    for dt in ("f32", "f64", "f16"):
        x, y = Buffer("x", (64,), dt), Buffer(f"out_{dt}", (64,), dt)
        e = x[t]
        for fn in MATH_FUNCTIONS:
            e = e + (call(fn, x[t], x[t]) if fn == "pow" else call(fn, x[t]))
        e = BinOp("max", BinOp("min", e, Const(float("inf"), dt)), Const(float("nan"), dt)) + BinOp("%", e, x[t])
        kernels.append(Kernel(f"k_{dt}", (x, y), (For(t, 64, (Store(y, (t,), Cast(dt, e)),), kind="threadIdx.x"),),
                              outputs=(y.name,)))
    for dt in ("i32", "i64", "bool"):
        x, y = Buffer("x", (64,), dt), Buffer(f"out_{dt}", (64,), dt)
        if dt == "bool":
            e = Select(BinOp("&&", x[t], BinOp("max", x[t], Const(False, "bool"))), Const(True, "bool"), x[t])
        else:
            e = call("pow", x[t], Const(3, dt)) + call("abs", x[t]) + BinOp("max", x[t] % 7, x[t] / 3)
        kernels.append(Kernel(f"k_{dt}", (x, y), (For(t, 64, (Store(y, (t,), e),), kind="threadIdx.x"),),
                              outputs=(y.name,)))
    for k in kernels:
        src = generate_cuda(Program("p", (k,), k.inputs, k.output_buffers)).source()
        assert f".entry {k.name}(" in nvcc.check(src), k.name
