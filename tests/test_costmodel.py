"""Cost model: hand-computed flops/bytes, roofline classification, devices, the measured CPU."""
from __future__ import annotations

import json
import math
import socket

import numpy as np
import pytest

import explorer
from explorer.ops import TRANSCENDENTAL_FLOPS
from explorer import costmodel as cm
from explorer.errors import ExplorerError

M, K, N = 256, 32, 48  # non-square so a swapped dimension shows up


def mlp(x, w, b):
    return np.maximum(x @ w + b, 0)


def mlp_args(m=M, k=K, n=N):
    rng = np.random.default_rng(1)
    return (rng.standard_normal((m, k), dtype=np.float32), rng.standard_normal((k, n), dtype=np.float32),
            rng.standard_normal(n, dtype=np.float32))


def test_mlp_fused_costs_match_hand_formula():
    c = explorer.compile(mlp, *mlp_args(), target="reference")
    (k,) = cm.kernel_costs(c, "h100")
    # matmul 2MNK, bias add MN, relu (max) MN
    assert k.flops == 2 * M * N * K + M * N + M * N
    # fused: read x, w, b once, write the output once; the two MN intermediates stay in registers
    assert k.bytes == 4 * (M * K + K * N + N + M * N)
    assert k.bytes_read == 4 * (M * K + K * N + N) and k.bytes_written == 4 * M * N
    assert k.source == "model"
    assert k.intensity == pytest.approx(k.flops / k.bytes)
    assert k.name == c.kernels[0].name


def test_mlp_unfused_costs_match_hand_formula():
    c = explorer.compile(mlp, *mlp_args(), target="reference", fuse=False)
    costs = cm.kernel_costs(c, "h100")
    assert [k.ops for k in costs] == [("matmul",), ("add",), ("maximum",)]
    assert [k.flops for k in costs] == [2 * M * N * K, M * N, M * N]
    assert [k.bytes for k in costs] == [4 * (M * K + K * N + M * N), 4 * (M * N + N + M * N), 4 * (2 * M * N)]
    fused = 4 * (M * K + K * N + N + M * N)
    # unfused adds a write and a read of each of the two MN intermediates
    assert sum(k.bytes for k in costs) == fused + 2 * (4 * M * N + 4 * M * N)
    assert [k.name for k in costs] == [k.name for k in c.kernels]


def test_predicted_time_is_roofline_max():
    c = explorer.compile(mlp, *mlp_args(), target="reference", fuse=False)
    dev = cm.device("a100")
    for k in cm.kernel_costs(c, dev):
        assert k.predicted_ms == pytest.approx(max(k.flops / dev.peak_fp32, k.bytes / dev.bandwidth) * 1e3)
        assert k.attainable_flops == pytest.approx(min(dev.peak_fp32, k.intensity * dev.bandwidth))


def test_attainable_and_bound():
    h = cm.device("h100")
    assert cm.attainable(1.0, h) == pytest.approx(3.35e12)           # on the bandwidth slope
    assert cm.attainable(1e6, h) == pytest.approx(67e12)             # on the flat roof
    assert cm.bound(h.ridge / 2, h) == "memory"
    assert cm.bound(h.ridge * 2, h) == "compute"
    assert cm.predict_seconds(67e12, 0, h) == pytest.approx(1.0)
    assert cm.predict_seconds(0, 3.35e12, h) == pytest.approx(1.0)


@pytest.mark.parametrize("dev", ["h100", "cpu"])
def test_elementwise_is_memory_bound(dev):
    a = np.ones(1 << 16, np.float32)
    c = explorer.compile(lambda a: np.exp(a) * 2.0 + 1.0, a, target="reference")
    (k,) = cm.kernel_costs(c, dev)
    assert k.flops == (TRANSCENDENTAL_FLOPS + 2) * a.size and k.bytes == 2 * a.nbytes    # exp counts as N flops
    assert k.bound == "memory"


@pytest.mark.parametrize("dev", ["h100", "cpu"])
def test_large_matmul_is_compute_bound(dev):
    n = 2048
    a = np.zeros((n, n), np.float32)
    c = explorer.compile(lambda a, b: a @ b, a, a, target="reference", stop_after="fused")
    (k,) = cm.kernel_costs(c, dev)
    assert k.flops == 2 * n ** 3 and k.bytes == 3 * 4 * n * n
    assert k.bound == "compute"


def test_device_lookup_and_bad_name():
    assert cm.device("H100 SXM") is cm.DEVICES["h100"]
    assert cm.device("a100-sxm") is cm.DEVICES["a100"]
    assert cm.device("T4").bandwidth == pytest.approx(320e9)
    for target in ("cpu", "reference"):
        assert cm.device(target).kind == "cpu"
    # the simulator runs CUDA code compiled for sm_80: its model times are an A100's, not this CPU's
    assert cm.device("sim") is cm.DEVICES["a100"]
    with pytest.raises(ExplorerError, match="unknown device 'tpu'.*h100.*h200.*a100.*l4.*t4"):
        cm.device("tpu")
    for d in cm.DEVICES.values():
        assert d.kind == "gpu" and d.source and not d.measured
        # dense numbers: tensor-core rate above the FMA rates, ridge in a sane range for a GPU
        assert d.peak_tensor > d.peak_fp16 >= d.peak_fp32 and 5 < d.ridge < 200


def test_fp16_kernels_use_the_fp16_peak():
    a = np.ones(1 << 12, np.float16)
    c = explorer.compile(lambda a: a * a, a, target="reference")
    (k,) = cm.kernel_costs(c, "h100")
    assert k.dtype == "float16"
    assert k.attainable_flops == pytest.approx(min(133.8e12, k.intensity * 3.35e12))


def test_local_cpu_measured_once_and_cached_on_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(cm, "_LOCAL", None)
    calls = []

    def fake_measure(*a, **k):
        calls.append(1)
        return {"bandwidth": 20e9, "peak_fp32": 100e9}
    monkeypatch.setattr(cm, "measure_cpu", fake_measure)
    d = cm.local_cpu()
    assert d.measured and d.kind == "cpu" and "measured" in d.source
    assert d.bandwidth == 20e9 and d.peak_fp32 == 100e9 and d.ridge == pytest.approx(5.0)
    assert cm.local_cpu() is d and len(calls) == 1                    # in-process cache
    data = json.loads((tmp_path / "kernel-explorer" / "device.json").read_text())
    (key,) = data
    assert key.startswith(socket.gethostname() + "|")
    monkeypatch.setattr(cm, "_LOCAL", None)                           # a "new process": read from disk
    assert cm.local_cpu().bandwidth == 20e9 and len(calls) == 1
    cm.local_cpu(refresh=True)
    assert len(calls) == 2


def test_measure_cpu_returns_positive_rates():
    m = cm.measure_cpu(copy_mb=4, matmul_n=128, repeat=1)
    assert m["bandwidth"] > 1e8 and m["peak_fp32"] > 1e7 and all(math.isfinite(v) for v in m.values())


def test_kernel_costs_needs_the_fused_stage():
    with pytest.raises(ExplorerError, match="fused"):
        cm.kernel_costs(explorer.compile(mlp, *mlp_args(), target="reference", stop_after="simplified"), "h100")


def _sim_ok() -> bool:
    from explorer.backends import simulator
    return simulator.available()[0]


def test_simulator_counters_replace_the_model():
    if not _sim_ok():
        pytest.skip("simulator unavailable")
    a = np.arange(1024, dtype=np.float32)
    c = explorer.compile(lambda a, b: np.exp(a) * b, a, a, target="sim")
    model = cm.kernel_costs(c, "h100")
    assert [k.source for k in model] == ["model"]
    c.run(a, a)
    (k,) = cm.kernel_costs(c, "h100")
    assert k.source == "simulator"
    # an elementwise kernel loads each input element once and stores each output once
    assert k.bytes_read == 2 * a.nbytes and k.bytes_written == a.nbytes
    assert cm.kernel_costs(c, "h100", counters=False)[0].source == "model"


def test_transcendentals_count_in_the_compute_estimate():
    # one tanh per element is memory-bound on an H100; a chain of 16 does 16 x TRANSCENDENTAL_FLOPS per
    # element at the same bytes and crosses the ridge (the model's answer to "why does time grow with steps")
    a = np.ones(1 << 12, np.float32)

    def chain(n):
        def f(x):
            for _ in range(n):
                x = np.tanh(x)
            return x
        return f
    one, many = (cm.kernel_costs(explorer.compile(chain(n), a, target="reference"), "h100")[0] for n in (1, 16))
    assert one.bytes == many.bytes == 2 * a.nbytes
    assert many.flops == 16 * one.flops == 16 * TRANSCENDENTAL_FLOPS * a.size
    assert one.bound == "memory" and many.bound == "compute"
