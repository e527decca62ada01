"""Adversarial headless tests of the dashboard: knob sequences a user could click, values the menus lack,
a failed first compile, targets that cannot run here, edited sources that are empty or wrong, every
"why not fused?" pair, and the tensor-core knob. Each test drives widgets.Explorer like a user would and
checks that nothing escapes, nothing goes stale and nothing is blank."""
from __future__ import annotations

import contextlib
import io
import random

import numpy as np
import pytest

pytest.importorskip("ipywidgets")
pytest.importorskip("pygments")

import explorer  # noqa: E402
import widgets  # noqa: E402
from widgets.panels import knobs as K  # noqa: E402
from widgets.panels._util import pre_html  # noqa: E402
from test_widgets import mlp, softmax  # noqa: E402  (the essay's MLP and a softmax, shared with test_widgets)


def chain(x, y):
    return np.tanh(x * 2.0 + y) * 0.5 - y


def bmm(a, b):
    return a @ b


def f16mm(x, w):
    return x.astype(np.float16) @ w.astype(np.float16)


def two(x, y):
    return x + y, x * y


RNG = np.random.default_rng(1)


def f32(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


X, W_, B = f32(64, 32), f32(32, 16), f32(16)
S = f32(16, 64)
CX, CY = f32(32, 32), f32(32, 32)
BA, BB = f32(4, 32, 16), f32(4, 16, 32)
HX, HW = f32(64, 32), f32(32, 48)


def tiled_text(e) -> str:
    e.tabs.selected_index = 0
    e.select_stage("tiled")
    return e.ir_text.value


def assert_consistent(e, label: str = "") -> None:
    """What the dashboard shows is ex.compiled, compiled with exactly the knobs' arguments."""
    k = e.knobs
    kw = k.kwargs()
    why = k.applicability(k.target.value)
    for name, w in k.controls().items():  # disabled ⇔ does not apply, and then it never reaches compile
        assert w.disabled == (name in why), (label, name)
    sched = kw["schedule"] or {}
    assert not [key for key in K.SCHEDULE_KNOBS if key in why and key in sched], (label, sched)
    assert not ("tile0" in why and "tile" in sched), (label, sched)
    if e.error.value:
        return
    o = e.compiled.options
    assert (o.target, o.fuse, o.schedule, o.dtype, o.fast_math) == (
        kw["target"], kw["fuse"], kw["schedule"], kw["dtype"], kw["fast_math"]), label
    e.tabs.selected_index = 0
    name = e.stage_nav.value
    assert e.ir_text.value == f"<div class='ke-ir'>{pre_html(e.compiled.stage(name).text(), '520px')}</div>", label
    assert e.graph.html.value, label
    for i in range(1, 6):
        e.tabs.selected_index = i
    assert e.fusion.kernels.value and e.fusion.table.value and e.tiling.html.value, label
    assert e.source.code.value or e.source.status.value, label
    e.tabs.selected_index = 0


# ----------------------------------------------------------------------------- random clicking
@pytest.mark.parametrize("fn,args,target,seed", [(mlp, (X, W_, B), "sim", 0), (chain, (CX, CY), "cpu", 1),
                                                 (softmax, (S,), "sim", 2)], ids=["mlp", "chain", "softmax"])
def test_random_knob_walk_keeps_dashboard_consistent(fn, args, target, seed):
    rnd = random.Random(seed)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        e = widgets.Explorer(fn, *args, target=target)
        assert_consistent(e, "init")
        controls = e.knobs.controls()
        for step in range(18):
            name = rnd.choice([n for n in controls if n != "target"] + ["target"] * 3)
            w = controls[name]
            w.value = (not w.value) if not hasattr(w, "options") else rnd.choice(K._values(w))
            assert "internal error" not in e.error.value, (step, name, e.error.value)
            e.stage_nav.value = rnd.choice(list(e.stage_nav.options))
            assert_consistent(e, f"step {step} {name}={w.value!r}")
    assert out.getvalue() == ""  # nothing printed, no traceback


# ----------------------------------------------------------------------------- tensor cores
def test_tensor_core_knob_changes_tiled_stage_for_f16_matmul_on_sim():
    e = widgets.Explorer(f16mm, HX, HW, target="sim")
    tc = e.knobs.tensor_core
    assert not tc.disabled and "f16" in tc.tooltip
    assert "tensorize(" in tiled_text(e)  # auto: f16 operands, M, N, K >= 16
    tc.value = False
    assert e.error.value == "" and e.compiled.options.schedule == {"tensor_core": False}
    assert "tensorize(" not in tiled_text(e)
    tc.value = True
    assert "tensorize(" in tiled_text(e)
    e.knobs.shared.value = False  # WMMA loads from shared tiles: the knob no longer applies, and says why
    assert tc.disabled and "shared" in tc.tooltip and "tensor_core" not in (e.compiled.options.schedule or {})
    e.knobs.shared.value = K.AUTO
    e.knobs.target.value = "cpu"  # ignored by the CPU schedule: disabled, and never passed
    assert tc.disabled and "CPU" in tc.tooltip and e.compiled.options.schedule is None
    assert tc.value is True  # the choice is kept for when it applies again
    e.knobs.target.value = "sim"
    assert "tensorize(" in tiled_text(e) and e.compiled.options.schedule == {"tensor_core": True}


def test_tensor_core_knob_disabled_without_matmul_and_explains_f32():
    sm = widgets.Explorer(softmax, S, target="sim")
    assert sm.knobs.tensor_core.disabled and "no matmul" in sm.knobs.tensor_core.tooltip
    e = widgets.Explorer(mlp, X, W_, B, target="sim")
    e.knobs.tensor_core.value = True  # f32 operands: a clear error, the previous view stays
    assert "ScheduleError" in e.error.value and "f16" in e.error.value
    e.knobs.dtype.value = "float16"
    assert e.error.value == "" and "tensorize(" in tiled_text(e)


# ----------------------------------------------------------------------------- size knob
def test_size_knob_scales_inputs_that_share_the_leading_dimension():
    e = widgets.Explorer(chain, CX, CY, target="sim")  # x + y: scaling x alone would not broadcast
    e.knobs.scale.value = 0.25
    assert e.error.value == "" and [a.shape for a in e.compiled.examples] == [(8, 32), (8, 32)]
    fn, examples, _ = e._compare_request()  # Charts measure the same inputs
    assert [a.shape for a in examples] == [(8, 32), (8, 32)]
    b = widgets.Explorer(bmm, BA, BB, target="sim")
    b.knobs.scale.value = 0.5
    assert b.error.value == "" and [a.shape for a in b.compiled.examples] == [(2, 32, 16), (2, 16, 32)]
    m = widgets.Explorer(mlp, X, W_, B, target="sim")  # x's rows only: w keeps its shape
    m.knobs.scale.value = 2.0
    assert [a.shape for a in m.compiled.examples] == [(128, 32), (32, 16), (16,)]


# ----------------------------------------------------------------------------- constructor arguments
def test_constructor_values_the_menus_lack_are_shown_and_kept():
    e = widgets.Explorer(softmax, S, target="sim", schedule={"threads": 48}, scale=3.0)  # used to raise TraitError
    assert e.error.value == "" and e.knobs.threads.value == 48 and e.knobs.scale.value == 3.0
    assert e.compiled.examples[0].shape == (48, 64)
    e.knobs.vector.value = 2  # the next click keeps threads=48
    assert e.compiled.options.schedule == {"threads": 48, "vector": 2}
    c = widgets.Explorer(chain, CX, CY, target="cpu", schedule={"chunk": 64})  # no control for chunk
    c.knobs.vector.value = 4
    assert c.compiled.options.schedule == {"chunk": 64, "vector": 4}
    c.knobs.target.value = "reference"
    assert c.error.value == "" and c.compiled.options.schedule is None


def test_failed_first_compile_then_fix_updates_which_knobs_apply():
    e = widgets.Explorer(softmax, S, target="sim", schedule={"threads": 4096})
    assert "ScheduleError" in e.error.value and e.compiled is None
    e.knobs.threads.value = 64
    assert e.error.value == "" and e.compiled.options.schedule == {"threads": 64}
    assert e.knobs.tile[0].disabled and "no matmul" in e.knobs.tile[0].tooltip
    assert_consistent(e)


# ----------------------------------------------------------------------------- targets that cannot run here
def test_target_that_cannot_run_here_says_so_in_red():
    from explorer.backends import cuda
    if cuda.available()[0]:
        pytest.skip("a GPU is available: cuda runs here")
    e = widgets.Explorer(mlp, X, W_, B, target="cpu")
    assert e.notice.value == ""
    e.knobs.target.value = "cuda"
    assert "ke-error" in e.notice.value and "cannot run here" in e.notice.value and "sim" in e.notice.value
    assert e.compiled.target == "cuda" and "__global__" in e.compiled.kernels[0].source  # source still readable
    assert_consistent(e)
    e.select_tab("Run")
    assert e.run_panel.target.value == "cuda" and e.run_panel.run()
    e.run_panel.wait()
    assert "ke-error" in e.run_panel.status.value and "unavailable" in e.run_panel.status.value
    e.knobs.target.value = "cpu"
    assert e.notice.value == "" and e.compiled.target == "cpu"


# ----------------------------------------------------------------------------- edit and run
def test_edit_and_run_empty_and_wrong_sources():
    e = widgets.Explorer(two, CX, CY, target="cpu")
    e.select_tab("Source")
    assert [label for label, _ in e.source.kernel.options] == ["0: add_kernel", "1: mul_kernel"]
    e.source.editor.value = "  \n"
    e.source.run_edited()
    assert "editor is empty" in e.source.result.value and "Reset" in e.source.result.value
    e.source.reset_button.click()
    src = e.source.editor.value
    assert "x[n] + y[n]" in src
    e.source.editor.value = src.replace("x[n] + y[n]", "x[n] - y[n]")  # builds, but computes x - y
    e.source.run_edited()
    assert "ke-edit-result" in e.source.result.value and "differs from NumPy" in e.source.result.value


# ----------------------------------------------------------------------------- why not fused, every pair
def test_why_not_fused_answers_every_pair():
    for fuse in (True, False):
        e = widgets.Explorer(chain, CX, CY, target="sim", fuse=fuse)
        e.select_tab("Fusion")
        names = [v for _, v in e.fusion.producer.options]
        assert len(names) == 5
        for a in names:
            for b in names:
                e.fusion.producer.value, e.fusion.consumer.value = a, b
                ans = e.fusion.answer.value
                assert ans and "internal error" not in ans, (fuse, a, b, ans)
                if a == b:
                    assert "one node" in ans
