"""The divergence guard's check, on real tensors: what trips it and what does not, and what it does to a loss on a
device. A CUDA loss must never be read on the step that made it (`.item()` there waits for the device): the guard
copies it non-blocking and reads the copy later. This machine has no GPU, so a tensor subclass that says it is on
CUDA records every torch operation made on it; the device path runs for real (the copy happens, on CPU)."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from bidviz.bridge.guard import Guard


class Trips:
    def __init__(self) -> None:
        self.seen: list[tuple[str, int, str, float]] = []

    def __call__(self, what: str, step: int, reason: str, value: float) -> None:
        self.seen.append((what, step, reason, value))


def test_nan_and_inf_trip_once_until_rearmed_in_every_form() -> None:
    trips = Trips()
    guard = Guard(trips)
    for step, loss in enumerate([1.0, 2, torch.tensor(0.5), torch.tensor(3.0, dtype=torch.float64), 1e308]):
        guard.see(loss, step)
    assert trips.seen == []
    guard.see(torch.tensor(float("nan"), requires_grad=True) * 1, 10)
    guard.see(float("inf"), 11)  # one trip until the run is resumed
    assert [(s, r) for _, s, r, _ in trips.seen] == [(10, "loss is nan at step 10")]
    guard.rearm()
    guard.see(-math.inf, 12)
    guard.see(torch.tensor([1.0, 2.0]), 13)  # not a scalar: noted, never raised into the loop
    assert [s for _, s, _, _ in trips.seen] == [10, 12]
    assert guard.note is not None and "0-d CPU tensor" in guard.note


def test_a_spike_over_the_factor_of_the_recent_median_trips_only_when_asked() -> None:
    trips = Trips()
    off = Guard(trips)
    on = Guard(trips, spike=10)
    for step in range(60):
        for guard in (off, on):
            guard.see(1.0 + (step % 3) * 0.1, step)
    off.see(9.0, 60)
    on.see(9.0, 60)  # under 10x the median
    assert trips.seen == []
    off.see(50.0, 61)
    on.see(50.0, 61)
    assert [(s, r.split(" is over")[0]) for _, s, r, _ in trips.seen] == [(61, "loss 50 at step 61")]
    with pytest.raises(ValueError, match="factor > 1"):
        Guard(trips, spike=0.5)
    with pytest.raises(ValueError, match="'pause' or 'stop'"):
        Guard(trips, mode="halt")


class OnCuda(torch.Tensor):
    """A CPU tensor that says it is on CUDA, and records every torch operation made on it."""

    calls: list[str] = []

    @property  # type: ignore[misc]
    def is_cuda(self) -> bool:
        return True

    @property  # type: ignore[misc]
    def is_cpu(self) -> bool:
        return False

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        name = getattr(func, "__name__", str(func))
        if name not in ("__get__", "is_cuda", "is_cpu"):
            cls.calls.append(name)
        return super().__torch_function__(func, types, args, kwargs or {})


def test_a_device_loss_is_copied_without_waiting_and_checked_a_step_later() -> None:
    trips = Trips()
    guard = Guard(trips)
    OnCuda.calls.clear()
    values = [1.0] * 40 + [float("nan")] + [1.0] * 9
    for step, value in enumerate(values):
        guard.see(torch.tensor(value).as_subclass(OnCuda), step)
    # Per step: the shape check and one copy into host memory, nothing that reads the value on the device.
    assert set(OnCuda.calls) == {"dim", "copy_"}, sorted(set(OnCuda.calls))
    assert OnCuda.calls.count("copy_") == len(values)
    for reads in ("item", "__float__", "__bool__", "tolist", "cpu", "numpy", "to", "isfinite", "isnan"):
        assert reads not in OnCuda.calls
    # The copy of step 40 is read at step 41 (here it lands at once); the trip names step 40.
    assert [(s, r) for _, s, r, _ in trips.seen] == [(40, "loss is nan at step 40")]
