"""The wiring of one Bridge: its parts made in order (and released in reverse if one fails), the slow path of
`step()`, the mailroom's periodic tick, the state snapshot and the shutdown.

Holds no reference to the `Bridge` object itself (only a proxy in the metric namespace), so a bridge the user
forgets is closed when it is collected, or at interpreter exit.
"""

from __future__ import annotations

import builtins
import math
import os
import socket
import sys
import time
import weakref
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bidviz import protocol
from bidviz.channel import is_url, mailbox_for
from bidviz.errors import ChannelError, ProtocolError

from . import faststep
from .admission import Admitted
from .applier import Applier
from .effects import Rendered, Runtime
from .handoff import Handoff
from .interrupt import HookTimer, get_ident, mark_ctrl_c
from .lockstep import Lockstep, NullWriter, Quiet
from .mailroom import Mailroom
from .metrics import Metric, compile_metric, error_info
from .ranks import Ranks
from .rate import StepRate
from .recorder import STATE_SECONDS, Recorder, build_response
from .registry import Control, Registry
from .replay import Restored, replay
from .runner import MetricRunner
from .safetynet import NetOptions, SafetyNet

HEARTBEAT_SECONDS = 1.0
#: the default `flush_secs` of a local run: a value logged at a step is in the event file within this, for a live
#: server to push (a flush is one write from the writer's thread, at most 10 a second, however many values)
LOCAL_FLUSH_SECONDS = 0.1
#: and of a run on a store, where a flush uploads the event file (one PUT): at most one a second
STORE_FLUSH_SECONDS = 1.0


def flush_cadence(run_dir: Any, flush_secs: float | None) -> float:
    """`flush_secs` as given, or the default for where the run lives (local: LOCAL_FLUSH_SECONDS, store: STORE_)."""
    if flush_secs is not None:
        return float(flush_secs)
    return STORE_FLUSH_SECONDS if is_url(run_dir) else LOCAL_FLUSH_SECONDS


CHECK_SECONDS = 0.01


class Parts:
    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        writer: Any,
        namespace: Mapping[str, Any] | None,
        *,
        bridge: Any,
        poke: Callable[[], None],
        secret: str | None,
        resume: bool,
        poll_interval: float | None,
        hook_budget: float,
        flush_secs: float | None,
        rank: int | None = None,
        world: int | None = None,
        dist_timeout: float = 300.0,
        net: NetOptions = NetOptions(),  # noqa: B008 - frozen
    ) -> None:
        from bidviz.writers import as_writer

        self.run_dir: Any = run_dir if is_url(run_dir) else Path(run_dir)  # a URL: a run on a store (remote)
        self.ranks = Ranks.detect(rank, world, dist_timeout)
        leader = self.ranks is None or self.ranks.leader
        self.secret = secret if secret is not None else protocol.env_secret()
        self.flush_secs = flush_secs = flush_cadence(run_dir, flush_secs)
        self.hook_budget = hook_budget
        self.started_at = time.time()
        self._poke = poke
        self._bridge = weakref.ref(bridge)
        #: the bridge's fast `step`, made the first time the loop's only work is its metrics
        self._fast: faststep.FastStep | None = None
        #: the call count from which the slow path looks at everything again; below it, a loop with metrics only
        #: runs them (`attend` sets it to 0: a command handed off, the metric set changed, the loop slowed down)
        self._house_at = 0
        mark_ctrl_c()
        self._last_slow = self._last_flush = self._last_look = time.monotonic()
        self._calls_at_slow = 0
        self.rate = StepRate()
        self._inbox_mtime = 0
        #: on a resumed run, the last step its previous session reached (from its state.json), else None
        self.resumed_step: int | None = None
        self._told = False
        with ExitStack() as undo:  # a constructor that fails releases everything it took
            if self.ranks is not None and leader:  # rank 0 failed to start: the others must not wait until timeout
                undo.callback(self._tell_ranks, {"error": "rank 0's Bridge failed to start (see rank 0's error)"})
            self.mailbox = mailbox_for(self.run_dir)
            self.owner = self.mailbox.owner_lock()
            if leader:  # rank 0 of a job owns the mailbox; the other ranks never touch it
                self.mailbox.create()
                self.owner.acquire()
                undo.callback(self.owner.release)
            self.writer: Any = (
                as_writer(writer, run_dir=str(self.run_dir), flush_secs=flush_secs)
                if leader or writer is not None
                else NullWriter()
            )
            self.writer.flush()  # the event file exists from the start, so TensorBoard lists the run
            self.control = Control()
            self.namespace = _namespace(namespace, weakref.proxy(bridge))
            self.registry = Registry(self.writer, self.control, self.namespace)
            self.namespace["hparams"] = self.registry.view
            self.registry.on_metrics_changed = self.attend
            self.timer, self.now_timer = HookTimer(hook_budget), HookTimer(hook_budget)
            undo.callback(self.timer.close)
            undo.callback(self.now_timer.close)
            self.runtime = Runtime(self.registry, self.control, self.timer, self.ranks)
            self.handoff = Handoff()
            self.handoff.on_put = self.attend
            held = self.owner.held if leader and self.ranks is None else _always
            self.recorder: Any = Recorder(self.mailbox, self.snapshot, held) if leader else Quiet()
            undo.callback(self.recorder.close)
            self.registry.on_restore_failed = self._restore_failed
            self.applier = Applier(self.runtime, self.handoff, self.answer, self.recorder.applying, held)
            self.net = SafetyNet(
                self.runtime,
                self.handoff,
                self.timer,
                self.journal,
                self.mailbox.root / "snapshots",
                net,
                leader=leader,
            )
            self.runner = MetricRunner(self.registry, self.timer, self.journal, self.ranks)
            self.lockstep = (
                Lockstep(self.ranks, self.handoff, self.applier, self.control, self.registry)
                if self.ranks is not None
                else None
            )
            self.mailroom: Mailroom | None = None
            if self.ranks is not None and not leader:
                self._install(self.ranks.share(None, "the restored state"))  # what the leader restored
                undo.pop_all()
                return
            self.mailroom = Mailroom(
                self.mailbox.inbox,
                secret=self.secret,
                runtime=self.runtime,
                handoff=self.handoff,
                recorder=self.recorder,
                now_timer=self.now_timer,
                on_tick=self.tick,
                poll_interval=poll_interval,
            )
            restored = self._replay(resume)
            self.resumed_step = _last_step(self.mailbox) if resume else None
            self._tell_ranks({"hparams": restored.hparams, "metrics": restored.metrics, "rules": restored.rules})
            self.recorder.start(restored, restore=resume)
            self.recorder.write_state()
            self.mailroom.start(restored)
            undo.callback(self.mailroom.stop)
            undo.pop_all()

    # -- the slow path of step(), in the training thread ---------------------------------------------------------

    def attend(self) -> None:
        """Have the next `step()` take the whole slow path (any thread: a few stores)."""
        self._house_at = 0
        fast = self._fast
        if fast is not None:
            fast.hold()
        self._poke()

    def slow_step(self, calls: int, step: int | None, context: dict[str, Any], prepare: Any) -> int:
        """Apply what is pending and run the metrics; returns the call count at which to look again.

        A loop with metrics comes here at every step, but looks at the rest (its pace, the inbox, commands handed
        off, rules) only about every CHECK_SECONDS, as an idle loop does, or at once when `attend` is called; in
        between it only runs the metrics."""
        control = self.control
        control.step = step = calls - 1 if step is None else step
        ns = self.namespace
        if context:
            ns.update(context)
        ns["step"] = step
        if calls < self._house_at and not control.paused:
            self.runner.run(step, prepare)
            return calls + 1
        if not control.stepping:
            self.registry.first_step()
            self._check_restart(step)
        now = time.monotonic()
        self.rate.mark(now, calls)
        if self.mailroom is not None and now - self._last_look >= CHECK_SECONDS / 2:
            self._last_look = now
            self._look_at_inbox()
        if self.lockstep is not None:  # a distributed job: commands apply at sync points only, on every rank
            if self.lockstep.due(calls):
                if self.lockstep.sync(calls, step, prepare):  # the job was paused: its pace goes on from the resume
                    self.rate.restart()
                    self.rate.mark(time.monotonic(), calls)
                prepare = None
        elif self.handoff:
            if prepare is not None:
                prepare()
                prepare = None
            self.applier.apply_pending()
        if self.lockstep is None and control.paused:
            while control.paused and not control.should_stop and not control.closed:
                self.handoff.arrived.wait(0.1)
                self.handoff.arrived.clear()
                self.applier.apply_pending()
            self.rate.restart()  # the pace goes on from the resume, not from before the pause
            self.rate.mark(time.monotonic(), calls)
        if self.registry.active:
            self.runner.run(step, prepare)
        if self.net.active:
            self.net.run_rules(step)
        return self._next_check(calls, now)

    def _look_at_inbox(self) -> None:
        """Wake the mailroom when the inbox changed: a busy loop may starve it of the GIL."""
        mtime = self.mailbox.inbox_version()
        if mtime != self._inbox_mtime and self.mailroom is not None:
            self._inbox_mtime = mtime
            self.mailroom.wake()

    def _next_check(self, calls: int, now: float) -> int:
        # Calls expected in CHECK_SECONDS at the current pace; the mailroom also pokes when commands arrive or the
        # loop slows down, so a stale estimate cannot delay a command.
        elapsed = now - self._last_slow
        per_sec = (calls - self._calls_at_slow) / elapsed if elapsed > 0 else 0.0
        later = calls + max(1, min(int(per_sec * CHECK_SECONDS), 100_000))
        if self.registry.active and self.lockstep is None and not self.net.active:
            # Metrics only: every step runs them, the rest waits for `later`. `_house_at` is stored before the
            # handoff is looked at, so a command handed off meanwhile (its `attend` stores 0 after) is not missed.
            self._house_at = later
            nxt = calls + 1
            if self.handoff:
                self._house_at = 0  # the fast step stays, held: the next call takes the slow path
            fast = True
        elif self.registry.active or self.net.active or (self.handoff and self.lockstep is None):
            nxt, fast = calls + 1, False
        else:
            nxt, fast = later, False
        if fast or self._fast is not None:
            self._use_fast_step(fast, self._house_at)
        self._last_slow = now
        self._calls_at_slow = calls
        if self.lockstep is not None:
            nxt = min(nxt, self.lockstep.ranks.next_sync)
        return nxt

    def _use_fast_step(self, metrics_only: bool, until: int) -> None:
        """Have `faststep` run the metrics until call `until` while the loop's only work is its metrics (all at
        every step, in this thread, in one process, no `prepare`, none watched for threads), as the bridge's own
        `step`; otherwise hold it and give the bridge back its class's `step`."""
        fast, active, bridge = self._fast, self.registry.active, self._bridge()
        if bridge is None:
            return
        if (
            metrics_only
            and bridge._prepare is None
            and self.ranks is None
            and not self.runner.watching
            and not self.control.paused
            and self.timer.thread_id == get_ident()
            and all(m.every == 1 for m in active)
        ):
            if fast is None:
                fast = self._fast = faststep.build(self, bridge)
            fast.use(active, until)
            if self._house_at == 0:  # `attend` ran since `_house_at` was stored: its `hold` may have come first
                fast.hold()
            if bridge.__dict__.get("step") is not fast.fn:
                bridge.__dict__["step"] = fast.fn
        elif fast is not None:
            fast.use(active, 0)
            if bridge.__dict__.get("step") is fast.fn:
                del bridge.__dict__["step"]

    def _check_restart(self, step: int) -> None:
        """A resumed run whose loop restarted its step count: say so once (stderr and journal), since its curves
        would draw the new points over the old ones."""
        last = self.resumed_step
        if last is None or step > last:
            return
        message = (
            f"{self.run_dir} was resumed at step {last} but this session starts at step {step}: the loop restarted "
            "its step count, so TensorBoard draws the new points over the old ones at the same steps (and "
            f"`bidviz export` keeps the latest). Go on from `bridge.resumed_step + 1`, or train a new run in "
            "another directory (Bridge(run_dir, resume=False) does not replay the journal either)"
        )
        print(f"bidviz: warning: {message}", file=sys.stderr, flush=True)
        self.journal({"event": "steps_restarted", "reason": message})

    # -- answers and the journal -----------------------------------------------------------------------------------

    def answer(self, item: Admitted, status: str, rendered: Rendered | None, error: dict[str, Any] | None) -> None:
        self.recorder.command(item, build_response(item, status, self.control.at, rendered, error))

    def journal(self, entry: dict[str, Any]) -> None:
        self.recorder.event({"time": time.time(), "step": self.control.at, **entry})

    def _restore_failed(self, what: str, message: str) -> None:
        self.journal({"event": "restore_failed", "what": what, "label": f"not restored: {what}", "message": message})

    def _replay(self, resume: bool) -> Restored:
        """Answered commands, commands cut short by a crash, tuned values and the metric set of a resumed run."""
        try:
            wanted = {protocol.id_from_filename(n) for n in self.mailbox.list_inbox()}
        except OSError:
            wanted = set()
        restored = replay(self.mailbox.journal_tail(), wanted=wanted, restore=resume)
        self._install({"hparams": restored.hparams, "metrics": restored.metrics, "rules": restored.rules})
        return restored

    def _tell_ranks(self, restored: dict[str, Any]) -> None:
        """The leader's restored state (or why it failed to start), to the other ranks of a job: once."""
        if self.ranks is not None and not self._told:
            self._told = True
            self.ranks.share(restored, "the restored state")

    def _install(self, restored: dict[str, Any]) -> None:
        """Tuned values, the metric set and the rules of a resumed run, into this rank's registry."""
        if "error" in restored:
            raise RuntimeError(restored["error"])
        self.registry.overrides = dict(restored["hparams"])
        for name, spec in restored["metrics"].items():
            try:
                code = compile_metric(name, spec["code"])
            except (ProtocolError, RecursionError, ValueError, TypeError) as e:
                self._restore_failed(f"metric {name}", f"its code no longer compiles: {e}")
                broken = Metric(name, spec["code"], spec["every"], spec.get("kind", "auto"), _never, spec["sender"])
                broken.status = "disabled"
                broken.last_error = e.as_error() if isinstance(e, ProtocolError) else error_info(e, "<metric")
                self.registry.metrics[name] = broken
                continue
            self.registry.install(spec, code, spec["sender"], status=spec["status"])
        self.registry.refresh()
        self.net.restore(Restored(metrics=restored["metrics"], rules=restored["rules"]))

    # -- the mailroom's tick --------------------------------------------------------------------------------------

    def tick(self) -> None:
        now = time.monotonic()
        control = self.control
        if now - self._last_slow > 0.05 and not control.paused:
            self.attend()  # a slow loop: have the next step refresh step and steps/s
        control.steps_per_sec = self.rate.rate(now) if not control.paused else 0.0
        if self.registry.wrote and now - self._last_flush >= self.flush_secs:
            self.registry.wrote = False
            self._last_flush = now
            try:
                self.writer.flush()
            except Exception as e:  # noqa: BLE001 - a full disk: shown in state, retried at the next flush
                self.recorder.error = f"writing events failed: {type(e).__name__}: {e}"
                self.registry.wrote = True
        since = now - self.recorder.last_state
        if (self.registry.changed and since >= STATE_SECONDS) or since >= HEARTBEAT_SECONDS:
            self.registry.changed = False
            self.recorder.write_state()

    def snapshot(self) -> dict[str, Any]:
        """What `state.json` holds: a snapshot safe to take from any thread."""
        control = self.control
        rate = control.steps_per_sec
        writer_error = getattr(self.writer, "error", None) or getattr(self.writer, "last_error", None)
        return {
            "v": protocol.VERSION,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "run_dir": self.run_dir if is_url(self.run_dir) else str(self.run_dir.resolve()),
            "started_at": self.started_at,
            "heartbeat": time.time(),
            "step": control.at,
            "steps_per_sec": round(rate, 3) if math.isfinite(rate) else None,
            "paused": control.paused,
            "stopping": control.should_stop,
            "closed": control.closed,
            "signed": bool(self.secret),
            "hook_budget": self.hook_budget,
            "pending": len(self.handoff),
            **self.registry.describe(),
            **self.net.describe(),
            "watcher_error": self.mailroom.last_error if getattr(self, "mailroom", None) else None,
            "inbox_watch": self.mailroom.watching if getattr(self, "mailroom", None) else None,
            "world": self.ranks.world if self.ranks is not None else 1,
            "rank_error": self.ranks.lost if self.ranks is not None else None,
            "rank_steps": list(self.ranks.steps) if self.ranks is not None else None,
            "writer_error": str(writer_error) if writer_error else None,
            "record_error": self.recorder.error,
        }

    # -- the end -------------------------------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Answer what will never be applied, write everything, release the run. Runs once (weakref.finalize)."""
        control = self.control
        control.closed = True
        if self._fast is not None:
            self._use_fast_step(False, 0)
        self.timer.close()
        self.now_timer.close()
        held = self.lockstep.close() if self.lockstep is not None else []  # posted to the ranks, never applied
        if self.mailroom is None:  # another rank of a job: nothing of the mailbox is ours
            self.writer.close()
            return
        self.mailroom.stop()
        self.mailroom.scan(closing=True)
        self.handoff.put_back(held)
        while (item := self.handoff.take()) is not None:
            err = ProtocolError(
                f"training ended (the Bridge closed at step {control.step}) before this command was applied; "
                "send it again to a running bridge",
                type="BridgeClosed",
            )
            self.answer(item, "rejected", None, err.as_error())
        self.recorder.close()
        try:
            self.writer.flush()
            self.writer.close()
        finally:
            self.recorder.write_state()
            self.owner.release()


def _always() -> bool:
    return True


def _never(state: dict[str, Any]) -> None:
    return None


def _last_step(mailbox: Any) -> int | None:
    """The step a run's previous session reached, from the state.json it left (None when it has none)."""
    try:
        state = mailbox.read_state()
    except ChannelError:  # an unreadable state.json: no step to compare with
        return None
    step = (state or {}).get("step")
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def _namespace(namespace: Mapping[str, Any] | None, bridge: Any) -> dict[str, Any]:
    import numpy as np

    ns: dict[str, Any] = {"__builtins__": builtins, "math": math, "np": np, "numpy": np}
    torch = sys.modules.get("torch")
    if torch is not None:
        ns["torch"] = torch
    ns.update({"optimizer": None, "scheduler": None, "model": None, "step": 0})
    ns.update(namespace or {})
    ns["bridge"] = bridge
    return ns
