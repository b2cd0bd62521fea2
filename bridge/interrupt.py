"""Time budget for user hooks: a hook that runs too long is interrupted in the training thread itself.

A monitor thread looks every ~100 ms at which hook is running since when; past its budget, it raises an interrupt
inside the training thread (`PyThreadState_SetAsyncExc`; a BaseException, so the hook's own `except Exception`
cannot keep it, raised again each budget while the hook runs), which the caller sees as `MetricTimeout`. The
training thread clears a pending interrupt that arrives after its hook has already returned, so it never escapes
into the user's loop. A hook blocked inside one long C call (a sleep, a read, a huge matmul) cannot be interrupted
by anything but a signal; it is interrupted when that call returns (so `time.sleep(100)` in a metric stalls training
for 100 s, then the metric is disabled). `os._exit()` and a crash of native code end the process: out of any hook's
reach.

User code may raise anything. `is_real_ctrl_c` tells the user's own Ctrl-C (a SIGINT the process received while
the hook ran) from a `KeyboardInterrupt` the code raised itself: the first ends training as it would without
BIDViz; every other BaseException (SystemExit, KeyboardInterrupt raised by the code, a BaseException subclass) is
the hook's failure.
"""

from __future__ import annotations

import ctypes
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from bidviz.errors import MetricTimeout, UserCodeExit

_set_async_exc = ctypes.pythonapi.PyThreadState_SetAsyncExc
_set_async_exc.argtypes = (ctypes.c_ulong, ctypes.py_object)


class _OverBudget(BaseException):
    """What the monitor raises inside a hook past its budget: not an Exception, so the hook's own `except
    Exception` cannot keep it (a loop doing so ran forever), and raised again each budget while the hook still
    runs. The caller of `HookTimer.call` gets MetricTimeout."""


class HookTimer:
    def __init__(self, budget: float) -> None:
        self.budget = budget
        self._lock = threading.Lock()
        self._running: tuple[int, float] | None = None  # (thread id, start), set by the training thread
        self._fired = False
        self._fired_at = 0.0
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
        """`fn(*args)` in this thread under the budget; MetricTimeout if it ran past it (whatever else it raised).
        A BaseException that is not an Exception comes out as UserCodeExit, except the process's own Ctrl-C."""
        started = time.monotonic()
        self.start(threading.get_ident())
        try:
            try:
                value = fn(*args)
            except BaseException as e:
                if self._finished():
                    raise self._timeout() from None
                if isinstance(e, Exception) or is_real_ctrl_c(e, started):
                    raise
                raise as_failure(e) from e
            if self._finished():
                raise self._timeout()
        except _OverBudget:  # delivered after the hook, before `finish` cleared it
            self._finished()
            raise self._timeout() from None
        return value

    def _timeout(self) -> MetricTimeout:
        return MetricTimeout(f"ran longer than its {self.budget:g} s budget and was interrupted")

    def _finished(self) -> bool:
        fired = False
        while True:
            try:
                return self.finish() or fired
            except _OverBudget:  # delivered between the hook's end and the clearing: it did fire
                fired = True

    def _watch(self) -> None:
        while not self._closed.wait(min(0.1, self.budget / 4)):
            running, now = self._running, time.monotonic()
            if running is None or now - running[1] < self.budget:
                continue
            with self._lock:
                if self._running is running and (not self._fired or now - self._fired_at >= self.budget):
                    self._fired, self._fired_at = True, now
                    _set_async_exc(running[0], ctypes.py_object(_OverBudget))

    def close(self) -> None:
        self._closed.set()


_last_sigint = 0.0  # monotonic time of the last SIGINT, when our marker is installed
_marker_installed = False


def _marker(signum: int, frame: Any) -> None:
    global _last_sigint
    _last_sigint = time.monotonic()
    signal.default_int_handler(signum, frame)


def mark_ctrl_c() -> None:
    """Note the time of each SIGINT, so a hook's KeyboardInterrupt can be told apart from the user's Ctrl-C. Only
    where Python's own handler is in place (the user's own handler is left alone) and from the main thread."""
    global _marker_installed
    if _marker_installed or threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _marker)
        _marker_installed = True


def is_real_ctrl_c(exc: BaseException, started: float) -> bool:
    """True when `exc` is the process's own Ctrl-C: a KeyboardInterrupt while a SIGINT arrived since `started`
    (or any KeyboardInterrupt, where the marker could not be installed and the two cannot be told apart, unless
    SIGINT is ignored, as for a job started in the background with `&` or nohup: then no Ctrl-C can arrive)."""
    if not isinstance(exc, KeyboardInterrupt):
        return False
    if _marker_installed:
        return _last_sigint >= started
    return signal.getsignal(signal.SIGINT) is not signal.SIG_IGN


def as_failure(exc: BaseException) -> BaseException:
    """What a hook's BaseException is reported as: itself when it is an Exception, else a UserCodeExit naming it
    (its traceback kept), so it can never end the training loop."""
    if isinstance(exc, Exception):
        return exc
    err = UserCodeExit(
        f"{type(exc).__name__}({', '.join(map(repr, exc.args))}) raised by user code; training goes on "
        "(a hook cannot end the training loop: use the stop command)"
    )
    err.__cause__ = exc
    return err.with_traceback(exc.__traceback__)
