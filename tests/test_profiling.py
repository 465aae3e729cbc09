"""vqfast.profiling: the harness every benchmark plugs into."""

import itertools
import json

import pytest
import torch

from vqfast import profiling
from vqfast.profiling import Timing, format_table, peak_extra_memory, time_callable, trace


@pytest.fixture
def fake_clock(monkeypatch):
    """perf_counter advancing by the durations a test queues, one per timed call."""
    durations = []
    state = {"now": 0.0, "calls": 0}

    def fn():
        state["calls"] += 1
        if state["calls"] > state["warmup"]:
            state["now"] += durations.pop(0)

    def perf_counter():
        return state["now"]

    monkeypatch.setattr(profiling.time, "perf_counter", perf_counter)
    return durations, state, fn


def test_median_quartiles_and_warmup(fake_clock):
    durations, state, fn = fake_clock
    state["warmup"] = 2
    durations += [5.0, 1.0, 3.0, 2.0, 4.0]
    t = time_callable(fn, name="x", warmup=2, repeats=5)
    assert state["calls"] == 7
    assert (t.median_s, t.q1_s, t.q3_s, t.min_s, t.repeats) == (3.0, 2.0, 4.0, 1.0, 5)
    assert t.spread == pytest.approx(2.0 / 3.0)


def test_time_budget_stops_early_but_keeps_three_runs(fake_clock):
    durations, state, fn = fake_clock
    state["warmup"] = 0
    durations += [10.0] * 10
    t = time_callable(fn, warmup=0, repeats=10, max_time_s=1.0)
    assert t.repeats == 3 and state["calls"] == 3


def test_repeats_must_be_positive():
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        time_callable(lambda: None, repeats=0)


def test_table_ratios_against_baselines():
    rows = [Timing("slow", 2.0, 2.0, 2.0, 2.0, 3), Timing("fast", 0.5, 0.5, 0.5, 0.5, 3, peak_extra_bytes=2**20)]
    table = format_table(rows, baselines=["slow", "absent"], title="t")
    lines = table.splitlines()
    assert lines[0] == "t" and "x vs slow" in lines[1] and "absent" not in table
    assert lines[3].split()[0] == "slow" and lines[3].split()[-1] == "1.00"
    assert lines[4].split()[0] == "fast" and lines[4].split()[-1] == "4.00"
    assert "1.0 MiB" in lines[4] and "500.00 ms" in lines[4]


def test_peak_extra_memory_sees_a_large_temporary():
    def big():
        x = torch.ones(16 * 2**20)  # 64 MiB, touched
        return float(x[-1])

    big()
    measured = peak_extra_memory(big, "cpu")
    if measured is None:
        pytest.skip("no /proc/self/clear_refs here")
    assert 60 * 2**20 <= measured <= 80 * 2**20
    assert peak_extra_memory(lambda: None, "cpu") < 8 * 2**20


def test_trace_writes_a_chrome_trace(tmp_path):
    path = tmp_path / "t.json"
    table = trace(lambda: torch.randn(64, 64) @ torch.randn(64, 64), str(path), calls=2)
    assert "aten::mm" in table
    events = json.loads(path.read_text())["traceEvents"]
    assert sum(e.get("name") == "aten::mm" for e in events) >= 2


def test_counter_is_real_without_fake_clock():
    calls = itertools.count()
    t = time_callable(lambda: next(calls), warmup=1, repeats=4)
    assert next(calls) == 5 and t.repeats == 4 and 0 <= t.min_s <= t.median_s
