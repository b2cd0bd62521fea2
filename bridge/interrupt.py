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
from types import TracebackType
from typing import Any

from bidviz.errors import MetricTimeout, UserCodeExit

_set_async_exc = ctypes.pythonapi.PyThreadState_SetAsyncExc
_set_async_exc.argtypes = (ctypes.c_ulong, ctypes.py_object)


class OverBudget(BaseException):
    """What the monitor raises inside a hook past its budget: not an Exception, so the hook's own `except
    Exception` cannot keep it (a loop doing so ran forever), and raised again each budget while the hook still
    runs. The caller of `HookTimer.call` gets MetricTimeout; a batch's runner catches it around its hooks and asks
    `HookTimer.taken()` which hook it was meant for."""


class HookTimer:
    """The budget of the hooks run in one thread at a time (the training thread, or the mailroom's for evals).

    A hook is announced with one attribute store, `timer.hook = h`, inside a batch opened by `begin()` and closed by
    `end()` (a caller that runs a batch at every step may open it inline: `timer.batch += 1` when `thread_id` is
    its own thread, else `begin()`; and close it with `timer.hook = None`, then `end()` only when `firing` or
    `fired` is set); the monitor samples (batch, hook) every tick and interrupts a hook it has seen running for a whole
    budget (measured from the tick it was first seen; `call` gives its own start, exactly). So a batch of N hooks
    costs N stores and one check at its end, not two lock round trips and clock reads per hook.

    No lock on that path: the monitor sets `firing` before it looks at `hook` and clears it after it fired, under
    `_lock`; `end()` clears `hook` before it looks at `firing` and `fired`, and takes the lock only when either is
    set. With the GIL ordering every store, an interrupt is either raised while `hook` was still set, and `end()`
    sees it and clears it, or never.

    Slots, not a `__dict__`: the C fast step (`_faststep.c`) reads and sets `hook`, `batch`, `thread_id`, `firing` and
    `fired` at every step through their slots' offsets, without a dict lookup each.
    """

    __slots__ = (
        "budget",
        "hook",
        "batch",
        "firing",
        "fired",
        "fired_for",
        "thread_id",
        "_started",
        "_fired_at",
        "_lock",
        "_closed",
        "_thread",
        "__weakref__",
    )

    def __init__(self, budget: float) -> None:
        self.budget = budget
        self.hook: object = None  # the hook now running in this batch; None between hooks' batches
        self.batch = 0  # counts batches: a hook run again in the next batch is another run
        self.firing = False  # the monitor is deciding whether to interrupt
        self.fired = False  # it did, for `fired_for`, and `end()` or `taken()` has not settled it yet
        self.fired_for: object = None
        self.thread_id = 0  # the thread of the batch now open (an interrupt is raised in it); 0 before the first
        self._started = (0, 0.0)  # (batch, monotonic start) given by `call`: the exact start of its one hook
        self._fired_at = 0.0
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    def begin(self) -> int:
        """Open a batch of hooks in this thread; returns the count of SIGINTs so far, for `is_real_ctrl_c`."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="bidviz-hook-timer", daemon=True)
            self._thread.start()
        self.thread_id = get_ident()
        self.batch += 1
        return ctrl_c.count

    def end(self) -> object:
        """Close the batch: the hook an interrupt was raised for and not yet settled (its timeout to report), or
        None. A pending interrupt is cleared, never left to land in the caller's code."""
        self.hook = None
        if self.firing or self.fired:
            return self._settle()
        return None

    def taken(self) -> object:
        """Inside a batch, when an interrupt was caught: the hook it was raised for (settled), or None."""
        hook, self.hook = self.hook, None
        settled = self._settle()
        return settled if settled is not None else hook

    def _settle(self) -> object:
        hook: object = None
        while True:
            try:
                with self._lock:  # waits for a firing monitor to finish
                    if self.fired:
                        _set_async_exc(self.thread_id, ctypes.py_object())  # still pending: never delivered
                        hook, self.fired, self.fired_for = self.fired_for, False, None
                return hook
            except OverBudget:  # delivered before the clearing: it did fire, for the hook noted
                continue

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)` in this thread under the budget, as a batch of one; MetricTimeout if it ran past it
        (whatever else it raised). A BaseException that is not an Exception comes out as UserCodeExit, except the
        process's own Ctrl-C."""
        started = self.begin()
        self._started = (self.batch, time.monotonic())
        self.hook = fn
        try:
            try:
                value = fn(*args)
            except OverBudget:
                raise
            except BaseException as e:
                if self.end() is not None:
                    raise self._timeout() from None
                if isinstance(e, Exception) or is_real_ctrl_c(e, started):
                    raise
                raise as_failure(e) from e
            if self.end() is not None:
                raise self._timeout()
        except OverBudget:  # raised in the hook, or delivered after it before `end` cleared it
            self.taken()
            raise self._timeout() from None
        return value

    def timeout(self) -> MetricTimeout:
        return MetricTimeout(f"ran longer than its {self.budget:g} s budget and was interrupted")

    _timeout = timeout

    def _watch(self) -> None:
        seen: tuple[int, object] = (0, None)
        since = 0.0
        while not self._closed.wait(min(0.1, self.budget / 4)):
            hook, batch, now = self.hook, self.batch, time.monotonic()
            if hook is None:
                continue
            if seen[0] != batch or seen[1] is not hook:
                seen = (batch, hook)
                since = self._started[1] if self._started[0] == batch else now
            if now - since < self.budget or (self.fired and now - self._fired_at < self.budget):
                continue
            with self._lock:
                self.firing = True
                if self.hook is hook and self.batch == batch:
                    self.fired, self.fired_for, self._fired_at = True, hook, now
                    _set_async_exc(self.thread_id, ctypes.py_object(OverBudget))
                self.firing = False

    def close(self) -> None:
        self._closed.set()


class _CtrlC:
    __slots__ = ("count",)  # read by the C fast step at every step through its slot

    def __init__(self) -> None:
        self.count = 0  # SIGINTs received, when our marker is installed


ctrl_c = _CtrlC()
_marker_installed = False
get_ident = threading.get_ident


def _marker(signum: int, frame: Any) -> None:
    ctrl_c.count += 1
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


def is_real_ctrl_c(exc: BaseException, started: int) -> bool:
    """True when `exc` is the process's own Ctrl-C: a KeyboardInterrupt while a SIGINT arrived since `started` (the
    count `HookTimer.begin` returned), or any KeyboardInterrupt where the marker could not be installed and the two
    cannot be told apart, unless SIGINT is ignored, as for a job started in the background with `&` or nohup: then
    no Ctrl-C can arrive."""
    if not isinstance(exc, KeyboardInterrupt):
        return False
    if _marker_installed:
        return ctrl_c.count > started
    return signal.getsignal(signal.SIGINT) is not signal.SIG_IGN


def as_failure(exc: BaseException) -> BaseException:
    """What a hook's BaseException is reported as: itself when it is an Exception, else a UserCodeExit naming it
    (its traceback kept), so it can never end the training loop. Outside any budget, so it runs no user code: the
    class's own name, the arguments only when they are plain values (a user's `__repr__` may loop for ever)."""
    if isinstance(exc, Exception):
        return exc
    args = _ARGS(exc)
    said = ", ".join(map(repr, args)) if all(type(a) in _PLAIN for a in args) else "..."
    err = UserCodeExit(
        f"{type_name(exc)}({said}) raised by user code; training goes on "
        "(a hook cannot end the training loop: use the stop command)"
    )
    err.__cause__ = exc
    return err.with_traceback(traceback_of(exc))


def type_name(exc: BaseException) -> str:
    """The name `exc`'s class was made with, read without running user code: a metaclass may make `__name__` a
    property that raises or loops for ever."""
    return _TYPE_NAME(type(exc))  # type: ignore[no-any-return]


def traceback_of(exc: BaseException) -> TracebackType | None:
    """`exc.__traceback__` as the interpreter keeps it (a subclass may shadow the attribute with a property)."""
    return _TRACEBACK(exc)  # type: ignore[no-any-return]


_TYPE_NAME = type.__dict__["__name__"].__get__
_TRACEBACK = BaseException.__dict__["__traceback__"].__get__
_ARGS = BaseException.__dict__["args"].__get__
_PLAIN = (str, int, float, bool, type(None))
