"""The metric runner: each running metric at its steps, in the training thread, under the hook budget.

A metric's failure is its own: whatever its code raises (SystemExit and any BaseException included) or returns
is reported and counted; after ERRORS_TO_DISABLE in a row, past its budget, or when it leaves threads running,
it is disabled. Only the process's own Ctrl-C leaves the runner.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from bidviz.errors import MetricTimeout

from .interrupt import HookTimer, OverBudget, ctrl_c, get_ident, is_real_ctrl_c
from .metrics import Metric, describe_failure, scalar
from .ranks import Ranks
from .registry import Registry


class ThreadsLeft(Exception):
    """A metric started threads that still run after it returned."""


class MetricRunner:
    def __init__(
        self,
        registry: Registry,
        timer: HookTimer,
        journal: Callable[[dict[str, Any]], None],
        ranks: Ranks | None = None,
    ) -> None:
        self.registry = registry
        self.ranks = ranks
        self.timer = timer
        self._journal = journal
        self._watch = False  # the last step left more threads running: count them per metric
        self._active: list[Metric] | None = None
        self._every_step = True  # every running metric runs at every step
        self._batches = 0
        self._threads_seen = threading.active_count()  # at the last look

    def run(self, step: int, before: Callable[[], Any] | None) -> None:
        """Every running metric due at `step`; `before` runs once first, if any is due.

        On one process the metrics due run as one batch of hooks under the timer: per metric, one store to name
        it, its code, and its value's write. Threads are counted every THREADS_EVERY batches; once more of them run
        than at the last count, each metric is watched on its own (`timer.call`, threads counted around it) until a
        step leaves none. On a distributed job every metric goes through `timer.call` (a reduced one talks to the
        other ranks). A loop whose only work is its metrics runs them through `faststep` instead, which hands
        whatever raises back here (`recover`)."""
        active = self.registry.active
        if active is not self._active:  # the registry makes a new list when the set changes
            self._active, self._every_step = active, all(m.every == 1 for m in active)
        due = active if self._every_step else [m for m in active if not step % m.every]
        if not due:
            return
        if before is not None:
            before()
        if self._watch or self.ranks is not None:
            self._run_one_by_one(step, due)
            self._threads_seen = threading.active_count()
            return
        timer = self.timer
        if timer.thread_id == get_ident():  # the batch opened inline (see HookTimer), as `begin()` would
            timer.batch += 1
            started = ctrl_c.count
        else:
            started = timer.begin()
        self._batch(iter(due), step, started, None)

    def recover(self, exc: BaseException, m: Metric | None, active: list[Metric], step: int, started: int) -> None:
        """A batch run inline (`faststep`) raised `exc` while running `m` of `active` (None: before the first):
        handle it as `run`'s own batch would (the process's own Ctrl-C goes on up), then run the metrics after `m`,
        and close the batch."""
        if m is None and not isinstance(exc, OverBudget):
            raise exc
        left = iter(active[active.index(m) + 1 :] if m is not None else active)
        self._batch(left, step, started, (exc, m))

    def settle(self, step: int) -> None:
        """Close a batch an interrupt fired or is firing in: the hook it was for has timed out."""
        late = self.timer.end()
        if isinstance(late, Metric):
            self._timed_out(late, step)

    @property
    def watching(self) -> bool:
        """Each metric is watched on its own for the threads it leaves (the last look found more)."""
        return self._watch

    def watch_threads(self) -> None:
        """More threads run than at the last look: watch each metric on its own until a step leaves none."""
        self._watch = True

    def _batch(self, left: Any, step: int, started: int, raised: tuple[BaseException, Metric | None] | None) -> None:
        timer = self.timer
        writer = self.registry.writer
        add = writer.add_scalar
        try:
            while True:  # an interrupt ends the inner loop; the outer one goes on with the metrics left
                try:
                    if raised is not None:  # from `recover`: what the inline batch raised, handled as below
                        exc, failed = raised
                        raised = None
                        if isinstance(exc, OverBudget) or is_real_ctrl_c(exc, started):
                            raise exc
                        self._failed(failed, step, exc)  # type: ignore[arg-type]
                    for m in left:
                        timer.hook = m
                        try:
                            value = m.fn(m.state)
                            if value.__class__ is float and m.floats:
                                add(m.tag, value, step)
                                shown = value
                            elif value is None:
                                m.errors_in_row = 0
                                continue
                            else:
                                shown = m.emit(writer, value, step)
                        except OverBudget:
                            raise
                        except BaseException as e:  # noqa: BLE001 - SystemExit from user code included
                            if is_real_ctrl_c(e, started):
                                raise
                            self._failed(m, step, e)
                            continue
                        if m.errors_in_row:
                            m.errors_in_row = 0
                        m.recent.append((step, shown))
                    break
                except OverBudget:  # in a hook, or in between: for the hook the monitor named
                    late = timer.taken()
                    if isinstance(late, Metric):
                        self._timed_out(late, step)
        finally:
            timer.hook = None
            if timer.firing or timer.fired:  # an interrupt fired or is firing: settle it
                self.settle(step)
            self.registry.wrote = True
        self._batches += 1
        if not self._batches & (THREADS_EVERY - 1):  # one look (a lock round trip) every few batches
            count = threading.active_count()
            self._watch, self._threads_seen = count > self._threads_seen, count

    def _timed_out(self, m: Metric, step: int) -> None:
        e = self.timer.timeout()
        self._failed(m, step, e, f"metric {m.name!r} {e}")

    def _run_one_by_one(self, step: int, due: list[Metric]) -> None:
        writer = self.registry.writer
        call = self.timer.call
        watch = self._watch
        at_start = _threads() if watch else threading.active_count()
        for m in due:
            if m.reduce != "rank0" and self.ranks is not None:
                self._run_reduced(m, step, self.ranks)
                continue
            threads = _threads() if watch else 0
            try:
                shown = call(_value_of, m, writer, step)
                if watch:
                    self._count_threads(m, threads)
            except KeyboardInterrupt:
                raise
            except MetricTimeout as e:
                self._failed(m, step, e, f"metric {m.name!r} {e}")
            except BaseException as e:  # noqa: BLE001 - SystemExit from user code included: the metric's failure
                self._failed(m, step, e)
            else:
                if shown is _NOTHING:
                    m.errors_in_row = 0
                else:
                    m.record_value(step, shown)
                    self.registry.wrote = True
        self._watch = (_threads() if watch else threading.active_count()) > at_start

    def _run_reduced(self, m: Metric, step: int, ranks: Ranks) -> None:
        """A metric whose ranks' values become one: every rank runs it and shares (status, value), so every rank
        counts the same failures and disables it at the same step (the collective must stay matched)."""
        failure: BaseException | None = None
        value, status = 0.0, _NONE
        try:
            raw = self.timer.call(_scalar_of, m)
            if raw is not None:
                value, status = raw, _VALUE
        except KeyboardInterrupt:
            raise
        except BaseException as e:  # noqa: BLE001 - this rank's failure; shared with the others below
            failure, status = e, _FAILED
        shared = ranks.all_values(status, value, step)
        failed = [rank for rank, (s, _) in enumerate(shared) if s == _FAILED]
        if failed:
            if failure is None:
                failure = RuntimeError(f"metric {m.name!r} failed on rank(s) {', '.join(map(str, failed))}")
            self._failed(m, step, failure)
            return
        values = [v for s, v in shared if s == _VALUE]
        if not values:
            m.errors_in_row = 0
            return
        writer, tag = self.registry.writer, f"bidviz/{m.name}"
        if m.reduce == "all":
            shown: Any = {f"rank{rank}": v for rank, (s, v) in enumerate(shared) if s == _VALUE}
            for key, v in shown.items():
                writer.add_scalar(f"{tag}/{key}", v, step)
        else:
            shown = REDUCE[m.reduce](values)
            writer.add_scalar(tag, shown, step)
        m.record_value(step, shown)
        self.registry.wrote = True

    @staticmethod
    def _count_threads(m: Metric, before: int) -> None:
        m.threads_left = m.threads_left + 1 if _threads() > before else 0
        if m.threads_left >= THREAD_STRIKES:
            raise ThreadsLeft(
                f"metric {m.name!r} left more threads running on {THREAD_STRIKES} runs in a row; a metric must not "
                "start threads (each step would start more)"
            )

    def _failed(self, m: Metric, step: int, exc: BaseException, message: str | None = None) -> None:
        info = describe_failure(self.timer, exc, "<metric")
        if message is not None:
            info.update(message=message, traceback="", line=None)
        info["step"] = step
        disable = m.record_error(info) or isinstance(exc, ThreadsLeft)
        count = m.error_types[info["type"]] = m.error_types.get(info["type"], 0) + 1
        if count == 1 or disable or _round(count):
            # One line per error type, then one at each power of ten with the count: a metric that fails now and
            # then (never disabled) does not flood the journal. state.json has every error's count and the last.
            entry: dict[str, Any] = {"event": "metric_error", "metric": m.name, "error": info}
            if count > 1:
                entry.update(count=count, reason=f"{info['type']} {count} times so far, the last at step {step}")
            self._journal(entry)
        if disable:
            if message is not None:
                reason = "disabled: ran past its time budget"
            elif isinstance(exc, ThreadsLeft):
                reason = "disabled: it left threads running"
            else:
                reason = f"disabled after {m.errors_in_row} errors in a row"
            with self.registry.lock:
                m.status = "disabled"
                self.registry.refresh()
            self._journal({"event": "metric_disabled", "metric": m.name, "reason": reason})
        self.registry.changed = True


def _round(count: int) -> bool:
    """10, 100, 1000...: the counts at which a repeated error of a metric is journaled again."""
    while count % 10 == 0:
        count //= 10
    return count == 1


_NOTHING = object()
_FAILED, _VALUE, _NONE = 0, 1, 2


def _threads() -> int:
    """Threads that are not the bridge's own (`bidviz-*`, the writers' flushers included) nor a `threading.Timer`
    (a flush timer of some other library's writer)."""
    return sum(
        1 for t in threading.enumerate() if not t.name.startswith("bidviz") and not isinstance(t, threading.Timer)
    )


REDUCE: dict[str, Callable[[list[float]], float]] = {
    "mean": lambda v: sum(v) / len(v),
    "sum": sum,
    "max": max,
    "min": min,
}
THREADS_EVERY = 8  # batches between two counts of the threads (a power of two)
THREAD_STRIKES = 3  # runs in a row that left more threads: one lazily started pool is fine, one a step is not


def _scalar_of(m: Metric) -> float | None:
    """A reduced metric's value on this rank, as a float (inside the budget: it converts a user's value)."""
    value = m.fn(m.state)
    return None if value is None else scalar(value)


def _value_of(m: Metric, writer: Any, step: int) -> Any:
    """User code and everything done with its value (conversion, writing): all inside the budget."""
    value = m.fn(m.state)
    if value is None:
        return _NOTHING
    return m.emit(writer, value, step)


__all__ = ["MetricRunner", "ThreadsLeft"]
