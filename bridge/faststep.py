"""The step of a loop whose only work is its metrics: one function, installed as the bridge's own `step`.

A loop with metrics calls `step()` at every step, and at N = 1 the layers between it and the metric (the slow path,
then the runner) cost more than writing the value itself. While the bridge has metrics only (every one running at
every step, in one process and one thread, no rules, no `prepare`), `Parts` installs `FastStep.fn` as the
instance's `step` attribute, so `bridge.step(...)` finds it before the class's method. It does what `Bridge.step`,
the metrics-only branch of `Parts.slow_step` and `MetricRunner.run` do for a batch that raises nothing, inline:
count the call, check the loss (divergence guard), update the namespace, open the hook timer's batch, and per
metric: name it to the timer, run its code, write a float through the writer's `scalar_writer` for its tag (or
`add_scalar`), keep it in `recent`.

Everything else goes the general way, at once and in the same step: the house-keeping due every CHECK_SECONDS, a
held function (`attend` holds it: a command handed off, the metric set changed), a call from another thread; a
value that is not a float goes to the metric's `emit`; anything raised goes to the runner
(`MetricRunner.recover`), which handles it as its own batch would and runs the metrics left. The counter is the
bridge's own `_calls` (kept in its `__dict__`, which this function holds instead of the bridge, so a forgotten
bridge is still freed, and closed, when its last reference goes), so both ways count the same calls.

`build` makes this step in C (`_faststep.c`, the same function line for line, calling the same Python functions)
when the extension was compiled at install, and this module's own otherwise or with BIDVIZ_FASTSTEP=python. The C
one only takes the interpreter's cost per line off the step's own bookkeeping: it reads and sets the hook timer's
attributes through their slots and the metrics' and `Control`'s through their `__dict__` (where no descriptor of
their class takes the name), so a metric's code, writers and every other call are the ones this module makes.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any, NamedTuple

from bidviz.compat import thread_count

from .interrupt import ctrl_c, get_ident
from .runner import THREADS_EVERY

try:  # the same step in C (`_faststep.c`), built when a compiler was there at install
    from ._faststep import Step as NativeStep
except ImportError:  # pragma: no cover - no compiler: this module's step runs
    NativeStep = None

Step = Callable[..., None]


def native() -> bool:
    """Whether `build` makes the C step: built, and not turned off with BIDVIZ_FASTSTEP=python (read at each
    `build`, so a test can run both)."""
    return NativeStep is not None and os.environ.get("BIDVIZ_FASTSTEP", "") != "python"


class FastStep(NamedTuple):
    """One bridge's fast `step` (`fn`, made once) and the two ways to steer it: `use` (the training thread, at its
    house-keeping: the metric set to run and the call count up to which to run it alone) and `hold` (any thread:
    from the next call on, take the general way until `use` says otherwise). A loop that kept `fn` from before
    keeps a working step: held, it goes the general way."""

    fn: Step
    use: Callable[[list[Any], int], None]
    hold: Callable[[], None]


def _plain_vars(obj: Any, *names: str) -> dict[str, Any] | None:
    """`obj`'s `__dict__`, for the C step to read and set `names` there, when each is a plain attribute: no
    descriptor of its class (a property, a slot) takes it over. None: the C step goes through getattr/setattr."""
    try:
        own = vars(obj)
    except TypeError:  # no __dict__ (slots)
        return None
    for name in names:
        for klass in type(obj).__mro__:
            found = klass.__dict__.get(name)
            if found is not None and (hasattr(type(found), "__set__") or hasattr(type(found), "__delete__")):
                return None
    return own if type(own) is dict else None


def build(parts: Any, bridge: Any) -> FastStep:
    registry, runner, control, ns, timer = parts.registry, parts.runner, parts.control, parts.namespace, parts.timer
    slow_step = parts.slow_step
    state = bridge.__dict__  # `_calls`, `_next_check`, `_prepare`: the bridge's own attributes
    guarded, spiky, see = bridge._guarded, bridge._spiky, bridge._see
    writer = registry.writer
    scalar_writer = getattr(writer, "scalar_writer", None)  # EventWriter's: the tag's bytes made once
    active: list[Any] = []
    plan: tuple[tuple[Any, ...], ...] = ()
    limit = 0  # the call count from which to take the general way (0: held)
    threads = thread_count()
    threads_seen = threads()

    def step(step: int | None = None, loss: Any = None, **context: Any) -> None:
        nonlocal threads_seen, limit
        calls = state["_calls"] + 1
        state["_calls"] = calls
        if guarded and loss is not None and (loss.__class__ is not float or loss - loss or spiky):
            see(loss, calls - 1 if step is None else step)
        if calls >= limit or timer.thread_id != get_ident():
            if loss is not None:
                context["loss"] = loss
            state["_next_check"] = slow_step(calls, step, context, state["_prepare"])
            return
        if step is None:
            step = calls - 1
        control.step = step
        if loss is not None:
            ns["loss"] = loss
        if context:
            ns.update(context)
        ns["step"] = step
        timer.batch += 1
        started = ctrl_c.count
        try:
            for m, fn, kept, write, keep in plan:
                timer.hook = m
                value = fn(kept)
                if value.__class__ is float and write is not None:
                    write(value, step)
                    keep((step, value))
                elif value is None:
                    m.errors_in_row = 0
                    continue
                else:
                    keep((step, m.emit(writer, value, step)))
                if m.errors_in_row:
                    m.errors_in_row = 0
            timer.hook = None
            if timer.firing or timer.fired:
                runner.settle(step)
        except BaseException as e:  # noqa: BLE001 - the runner re-raises the process's own Ctrl-C
            runner.recover(e, timer.hook, active, step, started)  # the hook running when it was raised
        if not calls & (THREADS_EVERY - 1):  # as the runner does: one look every few batches
            count = threads()
            if count > threads_seen:  # the runner watches each metric on its own until a step leaves none
                runner.watch_threads()
                limit = 0
                parts.attend()
            threads_seen = count

    fn: Any = step
    if native():
        fn = NativeStep(
            state=state,
            guarded=guarded,
            spiky=spiky,
            see=see,
            slow_step=slow_step,
            timer=timer,
            control=control,
            ns=ns,
            runner=runner,
            ctrl_c=ctrl_c,
            threads=threads,
            parts=parts,
            writer=writer,
            threads_every=THREADS_EVERY,
            control_vars=_plain_vars(control, "step"),
        )

    def _writer(tag: str) -> Callable[[float, int], None]:
        if scalar_writer is not None:
            return scalar_writer(tag)  # type: ignore[no-any-return]
        return functools.partial(writer.add_scalar, tag)

    def use(metrics: list[Any], until: int) -> None:
        nonlocal active, plan, limit, threads_seen
        if fn is not step:  # the C step keeps its own (it may have held itself, counted threads)
            limit, threads_seen = fn.limit, fn.threads_seen
        if metrics is not active:
            # a metric whose kind takes a float as a scalar writes one straight through (else: its `emit`)
            plan = tuple((m, m.fn, m.state, _writer(m.tag) if m.floats else None, m.recent.append) for m in metrics)
            active = metrics
        registry.wrote = True  # this function writes at every step; the writer's flush comes at the next tick
        if limit == 0 and until:
            threads_seen = threads()
        limit = until
        if fn is not step:
            if metrics is not fn.active:
                fn.plan = tuple((*entry, _plain_vars(entry[0], "errors_in_row")) for entry in plan)
            fn.active, fn.threads_seen, fn.limit = active, threads_seen, limit

    def hold() -> None:
        nonlocal limit
        limit = 0
        if fn is not step:
            fn.limit = 0

    return FastStep(fn, use, hold)
