"""explorer/naming.py: one naming policy for the IR, DOT and the generated C/CUDA."""
from __future__ import annotations

import re

import numpy as np

import explorer
from explorer import graph, naming
from explorer.codegen import c as cgen
from explorer.naming import Names, c_identifier, not_generated, param_name, unique
from explorer.passes import lower


def test_one_policy_everywhere():
    assert graph.c_identifier is c_identifier and lower.param_name is param_name
    assert graph._C_KEYWORDS is naming.C_KEYWORDS and graph.dot_id is naming.dot_id
    assert issubclass(cgen._Names, Names) and cgen._Names.reserved == cgen._RESERVED


def test_identifiers():
    assert c_identifier("my-fn!") == "my_fn_" and c_identifier("3d") == "v_3d" and c_identifier("float4") == "float4_"
    assert len(c_identifier("x" * 200)) == 64
    taken: set[str] = set()
    assert [unique("a", taken) for _ in range(3)] == ["a", "a_1", "a_2"]
    assert not_generated("ke_x") == "u_ke_x" and not_generated("memcpy", cgen._RESERVED, "k_") == "k_memcpy"
    t: set[str] = set()
    assert [param_name(n, t) for n in ("out0", "t5", "n", "x y", "x_y")] == ["out0_", "t5_", "n_", "x_y", "x_y_1"]


def test_c_names_scope():
    names = cgen._Names({"k0"})
    assert names.get("buf", "memcpy") == "u_memcpy" and names.get("buf", "k0") == "k0_1"
    assert names.get("var", "a-b") == "a_b" and names.get("buf", "a_b") == "a_b_1"    # kinds never collide
    assert names.fresh("ke_t") == "ke_t0" and names.fresh("ke_t") == "ke_t1"


def test_user_names_in_generated_source():
    def f(ke_x, out0):
        return np.exp(ke_x) + out0
    x = np.ones(4, np.float32)
    for target in ("sim", "cpu"):   # CUDA and C: the same names
        c = explorer.compile(f, x, x, target=target, verbose=False)
        # lowering renames parameters spelled like generated names; the emitters keep ke_ for their helpers
        assert [b.name for b in c.stage("lowered").ir.inputs] == ["ke_x_", "out0_"]
        params = re.search(r"fused_exp_add\((.*?)\)", c.kernels[0].source).group(1)
        assert re.findall(r"(\w+)(?:,|$)", params) == ["u_ke_x_", "out0_", "out0"]


def test_one_precedence_table_for_the_ir_text_and_both_generators():
    from explorer import loopir
    from explorer.codegen import cuda
    assert not hasattr(cgen, "_PREC") and not hasattr(cuda, "_PREC") and cuda.PRECEDENCE is loopir.PRECEDENCE
    a = np.ones(8, np.float32)
    want = "(x[i0] + y[i0]) * z[i0] - (x[i0] - (y[i0] - z[i0])) / -(x[i0] * y[i0])"
    c = explorer.compile(lambda x, y, z: (x + y) * z - (x - (y - z)) / -(x * y), a, a, a, target="cpu",
                         verbose=False)
    assert f"out0[i0] = {want}" in c.stage("lowered").text() and f"out0[i0] = {want};" in c.kernels[0].source
    s = explorer.compile(lambda x, y, z: (x + y) * z - (x - (y - z)) / -(x * y), a, a, a, target="sim",
                         verbose=False)
    assert want.replace("[i0]", "[blk * 8 + thr]") + ";" in s.kernels[0].source
