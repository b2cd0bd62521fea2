"""Steps per second, from the times of the last steps.

Counting the calls that fall in one-second windows reads 0.0 for every window a slow loop (a step every two
seconds) has no step in, so a live run looked stalled half the time. `StepRate` keeps the times at which the
training thread went through `step()`'s slow path (every call of a slow loop, about every 10 ms of a fast one) and
divides the steps between the oldest and newest of the last few seconds by the time between them. A loop that
stops stepping is not shown at its old pace forever: once the wait since its last step is more than twice its usual
gap, the wait counts into the estimate, which then falls toward 0.

The training thread writes (`mark`), the mailroom thread reads (`rate`): the window ends travel as one tuple,
replaced whole, so a reader never sees half an update.
"""

from __future__ import annotations

from collections import deque

WINDOW_SECONDS = 5.0  # marks older than this are dropped, once enough newer ones are kept
MIN_MARKS = 3  # kept whatever their age: a loop slower than the window still has gaps to average


class StepRate:
    """`mark(now, calls)` at each step seen; `rate(now)` in steps per second."""

    def __init__(self) -> None:
        self._marks: deque[tuple[float, int]] = deque()
        self._ends: tuple[float, int, float, int, int] | None = None  # (t_first, calls_first, t_last, calls_last, gaps)

    def mark(self, now: float, calls: int) -> None:
        marks = self._marks
        if marks and calls <= marks[-1][1]:
            return  # the same call seen twice (a paused loop): no step happened
        marks.append((now, calls))
        while len(marks) > MIN_MARKS and marks[1][0] < now - WINDOW_SECONDS:
            marks.popleft()
        if len(marks) >= 2:
            (t0, c0), (t1, c1) = marks[0], marks[-1]
            self._ends = (t0, c0, t1, c1, len(marks) - 1)

    def restart(self) -> None:
        """Forget the marks (after a pause: the time paused is no part of the pace)."""
        self._marks.clear()
        self._ends = None

    def rate(self, now: float) -> float:
        ends = self._ends
        if ends is None:
            return 0.0
        t0, c0, t1, c1, gaps = ends
        steps, span = c1 - c0, t1 - t0
        if steps <= 0 or span <= 0:
            return 0.0
        late = (now - t1) - 2.0 * span / gaps  # no step for twice the usual gap between marks: slowed or stopped
        return steps / (span + max(0.0, late))
