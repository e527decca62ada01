"""explorer.measure's statistics and stopping rule on synthetic timers (a fake clock: no real timing)."""
from __future__ import annotations

import math

import pytest

from explorer import measure as M


class FakeClock:
    """A clock that moves only when a fake variant 'runs' for a scripted duration."""

    def __init__(self) -> None:
        self.now = 0.0
        self.log: list[str] = []

    def __call__(self) -> float:
        return self.now

    def variant(self, name: str, durations_ms):
        """A callable that advances the clock by the next scripted duration (cycling) and logs its name."""
        seq = list(durations_ms) if not callable(durations_ms) else None
        k = [0]

        def run() -> None:
            d = durations_ms(k[0]) if seq is None else seq[k[0] % len(seq)]
            k[0] += 1
            self.log.append(name)
            self.now += d / 1e3
        return run


def test_a_stall_does_not_move_the_median():
    clock = FakeClock()
    steady = [1.0, 1.02, 0.98, 1.01, 0.99] * 4
    stalled = list(steady)
    stalled[7] = 16.0                       # one 16 ms stall (a descheduled OpenMP thread)
    a = M.measure(clock.variant("a", steady), repeat=20, warmup=0, clock=clock)
    b = M.measure(clock.variant("b", stalled), repeat=20, warmup=0, clock=clock)
    assert a.median_ms == pytest.approx(1.0, abs=1e-9)
    assert b.median_ms == pytest.approx(a.median_ms, abs=0.011)
    assert b.q1_ms == pytest.approx(a.q1_ms, abs=0.011) and b.q3_ms == pytest.approx(a.q3_ms, abs=0.011)
    assert b.min_ms == pytest.approx(0.98) and b.max_ms == pytest.approx(16.0)
    assert b.stalls == 1 and not b.unstable and b.stdev_ms > 3 * a.stdev_ms
    assert "1 stalled run" in str(b) and "IQR" in str(b)


def test_high_spread_is_flagged_with_a_reason():
    clock = FakeClock()
    noisy = [1.0, 3.0, 0.5, 2.0, 1.5, 4.0, 0.7, 2.5]
    t = M.measure(clock.variant("n", noisy), repeat=16, warmup=0, clock=clock)
    assert t.unstable and "middle half" in t.reason
    assert M.UNSTABLE_TEXT in str(t) and t.flag_text().startswith(M.UNSTABLE_TEXT)


def test_mostly_stalled_runs_are_flagged_even_with_a_tight_iqr():
    clock = FakeClock()
    runs = [0.13] + [6.0, 6.1, 5.9, 6.05] * 3     # one clean run, the rest slowed down alike
    t = M.measure(clock.variant("s", runs), repeat=13, warmup=0, clock=clock)
    assert t.spread < M.UNSTABLE_SPREAD
    assert t.unstable and "fastest run" in t.reason


def test_too_few_runs_are_not_judged():
    t = M.summarize([1.0, 9.0])
    assert not t.unstable and t.reason == ""


def test_interleaving_rotates_the_order_and_warms_up_first():
    clock = FakeClock()
    variants = {n: clock.variant(n, [1.0]) for n in ("fused", "unfused", "numpy")}
    ts = M.interleaved(variants, repeat=3, warmup=1, clock=clock)
    assert clock.log == ["fused", "unfused", "numpy",                 # warm-up round (untimed)
                         "fused", "unfused", "numpy",
                         "unfused", "numpy", "fused",
                         "numpy", "fused", "unfused"]
    assert {n: t.repeat for n, t in ts.items()} == {"fused": 3, "unfused": 3, "numpy": 3}


def test_drift_hits_interleaved_variants_alike():
    # the machine gets 3x slower half way through: both variants see it, so their ratio stays 2
    clock = FakeClock()

    def slow_later(name, base):
        def d(k):
            return base * (3.0 if k >= 10 else 1.0)
        return clock.variant(name, d)
    ts = M.interleaved({"a": slow_later("a", 1.0), "b": slow_later("b", 2.0)}, repeat=20, warmup=0, clock=clock)
    assert M.speedup(ts["b"], ts["a"]).value == pytest.approx(2.0)


def test_autorange_stops_early_when_stable():
    clock = FakeClock()
    t = M.measure(clock.variant("x", [1.0, 1.001, 0.999]), warmup=0, budget_s=100.0, clock=clock)
    assert M.MIN_REPEAT <= t.repeat < 20 and not t.unstable
    assert M.median_interval(t.samples_ms) <= M.PRECISION


def test_autorange_stops_at_the_budget_and_flags_an_imprecise_median():
    clock = FakeClock()
    noisy = [1.0, 1.6, 0.7, 1.3, 0.9, 1.8, 0.8]            # never precise to 3%
    t = M.measure(clock.variant("x", noisy), warmup=0, budget_s=0.05, clock=clock)
    # 50 ms of budget at ~1.2 ms per run: it stopped after about 40 runs, not at MAX_REPEAT
    assert 30 <= t.repeat <= 50
    assert t.unstable and "middle half" in t.reason


def test_slow_calls_still_get_min_rounds():
    clock = FakeClock()
    t = M.measure(clock.variant("slow", [500.0, 520.0, 510.0]), warmup=0, budget_s=0.1, clock=clock)
    assert t.repeat == M.MIN_ROUNDS


def test_sampler_reports_its_own_time_and_per_kernel_medians():
    clock = FakeClock()
    k = [0]

    def sample():
        k[0] += 1
        clock.now += 1.0                     # wall time the budget sees
        return 0.5 + 0.01 * (k[0] % 2), {"k0": 0.2, "k1": 0.3 + 0.01 * (k[0] % 2)}
    t = M.measure(M.Sampler(sample, source="cuda-events"), repeat=4, warmup=1, clock=clock)
    assert t.source == "cuda-events" and t.repeat == 4
    assert t.median_ms == pytest.approx(0.505) and t.per_kernel_ms == pytest.approx({"k0": 0.2, "k1": 0.305})


def test_ratio_carries_the_range_and_never_prints_zero():
    fast = M.summarize([0.004, 0.0042, 0.0045, 0.0041, 0.0043])
    slow = M.summarize([1.0, 1.1, 0.9, 1.05, 0.95])
    r = M.ratio(fast, slow)
    assert r.low <= r.value <= r.high
    assert str(r).startswith("0.00") and "0.00x" not in str(r) and r.range_text() in str(r)
    assert M.fmt_ratio(0.0042) == "0.00420x" and M.fmt_ratio(39.66) == "39.7x" and M.fmt_ratio(math.inf) == "n/a"
    noisy = M.summarize([1.0, 3.0, 0.5, 2.0, 1.5, 4.0])
    flagged = M.speedup(noisy, fast)
    assert flagged.unstable and M.UNSTABLE_TEXT in str(flagged) and "middle half" in flagged.reason


def test_bad_arguments():
    with pytest.raises(ValueError, match="repeat=0"):
        M.measure(lambda: None, repeat=0)
    with pytest.raises(ValueError, match="budget_s"):
        M.measure(lambda: None, budget_s=0)
    with pytest.raises(ValueError, match="callable"):
        M.interleaved({"x": 3})
    with pytest.raises(ValueError, match="at least one"):
        M.interleaved({})


def test_cuda_sampler_with_a_fake_driver(monkeypatch):
    """The CUDA backend's sampler (no GPU: a fake driver whose events read a fake GPU clock) returns the
    event span and per-kernel times, skips empty launches, and time() reports source 'cuda-events'."""
    from explorer.backends import cuda

    gpu = {"now": 0.0}

    class Event:
        def record(self, stream=None):
            self.t = gpu["now"]

        def synchronize(self):
            pass

        def time_till(self, other):
            return other.t - self.t

    class Drv:
        Event = None   # set below: a class body cannot see the enclosing function's names

        class Context:
            @staticmethod
            def synchronize():
                pass

    class Kernel:
        def __init__(self, ms):
            self.ms = ms

        def prepared_call(self, grid, block, *args, shared_size=0):
            gpu["now"] += self.ms

    Drv.Event = Event
    monkeypatch.setattr(cuda, "_drv", lambda: Drv)
    monkeypatch.setattr(cuda, "_context", lambda: None)
    exe = object.__new__(cuda.CudaExecutable)
    exe.launches = [("k0", Kernel(0.25), (4, 1, 1), (128, 1, 1), 0, ()),
                    ("empty", Kernel(9.0), (0, 1, 1), (128, 1, 1), 0, ()),
                    ("k1", Kernel(0.5), (2, 1, 1), (64, 1, 1), 0, ())]
    exe.dev = {}
    monkeypatch.setattr(exe, "_upload", lambda inputs: None, raising=False)
    ms, per = exe.sampler([]).sample()
    assert ms == pytest.approx(0.75) and per == pytest.approx({"k0": 0.25, "k1": 0.5})
    t = exe.time([], warmup=1, repeat=4)
    assert t.source == "cuda-events" and t.repeat == 4 and t.median_ms == pytest.approx(0.75)
    assert t.per_kernel_ms == pytest.approx({"k0": 0.25, "k1": 0.5}) and not t.unstable


def test_gc_is_paused_while_timing_and_restored():
    import gc
    seen = []
    clock = FakeClock()
    M.measure(lambda: seen.append(gc.isenabled()), repeat=3, warmup=1, clock=clock)
    assert seen == [False] * 4 and gc.isenabled()
    with pytest.raises(ZeroDivisionError):
        M.measure(lambda: 1 / 0, repeat=1, clock=clock)
    assert gc.isenabled()
