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

from .interrupt import HookTimer
from .metrics import Metric, emit, failure_info
from .registry import Registry


class ThreadsLeft(Exception):
    """A metric started threads that still run after it returned."""


class MetricRunner:
    def __init__(self, registry: Registry, timer: HookTimer, journal: Callable[[dict[str, Any]], None]) -> None:
        self.registry = registry
        self.timer = timer
        self._journal = journal
        self._watch = False  # the last step left more threads running: count them per metric

    def run(self, step: int, before: Callable[[], Any] | None) -> None:
        """Every running metric due at `step`; `before` runs once first, if any is due.

        Threads are counted once per step; only after a step that left more of them running is each metric
        watched on its own (two lock round trips each), until a step leaves none."""
        writer = self.registry.writer
        call = self.timer.call
        watch = self._watch
        at_start = threading.active_count()
        for m in self.registry.active:
            if step % m.every:
                continue
            if before is not None:
                before, prepare = None, before
                prepare()
            threads = threading.active_count() if watch else 0
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
        self._watch = threading.active_count() > at_start

    @staticmethod
    def _count_threads(m: Metric, before: int) -> None:
        m.threads_left = m.threads_left + 1 if threading.active_count() > before else 0
        if m.threads_left >= THREAD_STRIKES:
            raise ThreadsLeft(
                f"metric {m.name!r} left more threads running on {THREAD_STRIKES} runs in a row; a metric must not "
                "start threads (each step would start more)"
            )

    def _failed(self, m: Metric, step: int, exc: BaseException, message: str | None = None) -> None:
        info = failure_info(exc, "<metric")
        if message is not None:
            info.update(message=message, traceback="", line=None)
        info["step"] = step
        disable = m.record_error(info) or isinstance(exc, ThreadsLeft)
        self._journal({"event": "metric_error", "metric": m.name, "error": info})
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


_NOTHING = object()
THREAD_STRIKES = 3  # runs in a row that left more threads: one lazily started pool is fine, one a step is not



def _value_of(m: Metric, writer: Any, step: int) -> Any:
    """User code and everything done with its value (conversion, writing): all inside the budget."""
    value = m.fn(m.state)
    if value is None:
        return _NOTHING
    return emit(writer, f"bidviz/{m.name}", value, m.kind, step)


__all__ = ["MetricRunner", "ThreadsLeft"]
