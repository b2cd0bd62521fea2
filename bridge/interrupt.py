"""Time budget for user hooks: a hook that runs too long is interrupted in the training thread itself.

A monitor thread looks every ~100 ms at which hook is running since when; past its budget, it raises
`MetricTimeout` inside the training thread (`PyThreadState_SetAsyncExc`). The training thread clears a pending
interrupt that arrives after its hook has already returned, so it never escapes into the user's loop. A hook
blocked inside one long C call (a sleep, a huge matmul) is interrupted when that call returns.
"""

from __future__ import annotations

import ctypes
import threading
import time
from collections.abc import Callable
from typing import Any

from .metrics import MetricTimeout

_set_async_exc = ctypes.pythonapi.PyThreadState_SetAsyncExc
_set_async_exc.argtypes = (ctypes.c_ulong, ctypes.py_object)


class HookTimer:
    def __init__(self, budget: float) -> None:
        self.budget = budget
        self._lock = threading.Lock()
        self._running: tuple[int, float] | None = None  # (thread id, start), set by the training thread
        self._fired = False
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, thread_id: int) -> None:
        """Called by the training thread just before running a hook."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="bidviz-hook-timer", daemon=True)
            self._thread.start()
        with self._lock:
            if self._fired:  # an interrupt that landed after its hook, outside `finish`: never into this one
                _set_async_exc(thread_id, ctypes.py_object())
                self._fired = False
            self._running = (thread_id, time.monotonic())

    def finish(self) -> bool:
        """Called by the training thread after its hook; True when the hook was interrupted."""
        with self._lock:
            running, self._running = self._running, None
            fired, self._fired = self._fired, False
            if fired and running is not None:
                # The interrupt may still be pending (the hook returned first): clear it.
                _set_async_exc(running[0], ctypes.py_object())
        return fired

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)` in this thread under the budget; MetricTimeout if it ran past it (whatever else it raised)."""
        self.start(threading.get_ident())
        try:
            value = fn(*args)
        except BaseException:
            if self._finished():
                raise MetricTimeout(f"ran longer than its {self.budget:g} s budget and was interrupted") from None
            raise
        if self._finished():
            raise MetricTimeout(f"ran longer than its {self.budget:g} s budget and was interrupted")
        return value

    def _finished(self) -> bool:
        fired = False
        while True:
            try:
                return self.finish() or fired
            except MetricTimeout:  # delivered between the hook's end and the clearing: it did fire
                fired = True

    def _watch(self) -> None:
        while not self._closed.wait(min(0.1, self.budget / 4)):
            running = self._running
            if running is None or time.monotonic() - running[1] < self.budget:
                continue
            with self._lock:
                if self._running is running and not self._fired:
                    self._fired = True
                    _set_async_exc(running[0], ctypes.py_object(MetricTimeout))

    def close(self) -> None:
        self._closed.set()
