"""steps/s: estimated from the times of the last steps, so a slow loop never reads 0.0 while it runs."""

from __future__ import annotations

import time

import pytest

from bidviz.bridge.rate import StepRate


def test_slow_loop_in_a_real_process_reads_about_half_a_step_per_second(start_trainer):
    """A loop at 0.5 steps/s: counting calls in one-second windows read 0.0 in about half of the snapshots."""
    t = start_trainer("--delay", "2.0")
    t.wait_for(lambda s: (s["step"] or 0) >= 1, timeout=30, what="two steps")
    seen = []
    deadline = time.monotonic() + 4.5
    while time.monotonic() < deadline:
        seen.append(t.state()["steps_per_sec"])
        time.sleep(0.25)
    assert seen and all(r is not None and 0.4 <= r <= 0.6 for r in seen), seen


def test_rate_from_marks_fast_slow_stalled_and_paused() -> None:
    rate = StepRate()
    assert rate.rate(0.0) == 0.0
    rate.mark(0.0, 1)
    assert rate.rate(0.5) == 0.0, "one step says nothing of the pace"
    for i in range(2, 5):
        rate.mark(2.0 * (i - 1), i)  # one step every 2 s
    assert rate.rate(6.0) == pytest.approx(0.5)
    assert rate.rate(9.9) == pytest.approx(0.5), "waiting for the next step, not yet late"
    assert 0.1 < rate.rate(20.0) < 0.3, "a loop that stopped: the wait counts in"
    assert rate.rate(600.0) < 0.01

    fast = StepRate()
    for i in range(1000):  # the slow path every 10 ms, 100 calls apart: 10,000 steps/s
        fast.mark(i * 0.01, i * 100)
    assert fast.rate(9.99) == pytest.approx(10_000, rel=1e-6)
    assert len(fast._marks) <= 502, "only the last seconds are kept"
    fast.mark(9.99, 99_900)
    assert fast.rate(9.995) == pytest.approx(10_000, rel=1e-6), "a call seen twice is no step"

    fast.restart()
    assert fast.rate(30.0) == 0.0
    fast.mark(30.0, 100_000)
    fast.mark(30.5, 100_050)
    assert fast.rate(30.5) == pytest.approx(100), "after a pause the pace is measured afresh"
