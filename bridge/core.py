"""`Bridge`: the in-training side. The watcher thread admits commands; the training thread applies them in `step()`."""

from __future__ import annotations

import atexit
import builtins
import collections
import math
import os
import socket
import sys
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from bidviz import protocol
from bidviz.channel import Mailbox, OwnerLock
from bidviz.protocol import ProtocolError

from . import admission
from .admission import Admitted
from .hparams import HParam, HParamView, optimizer_hparams
from .interrupt import HookTimer
from .journal import Recorder, Replay, build_response, replay, unlink
from .metrics import Metric, MetricTimeout, compile_metric, emit, error_info, make_function

CHECK_SECONDS = 0.01  # step() looks at the inbox itself this often, in case the watcher is starved of the GIL
STATE_SECONDS = 0.2
HEARTBEAT_SECONDS = 1.0


class Bridge:
    """Log-plus-control bridge for one run directory. See DESIGN.md, "Bridge API".

    `step()` with nothing to do costs one increment and one comparison; everything else happens either in the
    watcher thread (parsing, compiling, state writes) or in the slow path of `step()` (applying, metrics).
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        writer: Any = None,
        namespace: Mapping[str, Any] | None = None,
        *,
        secret: str | None = None,
        resume: bool = True,
        poll_interval: float | None = None,
        hook_budget: float = 10.0,
        flush_secs: float = 1.0,
    ) -> None:
        from bidviz.writers import as_writer

        self.run_dir = Path(run_dir)
        self.mailbox = Mailbox(self.run_dir)
        self.mailbox.create()
        self._owner = OwnerLock(self.mailbox)
        self._owner.acquire()
        self.secret = secret if secret is not None else protocol.env_secret()
        self.hook_budget = hook_budget
        self.flush_secs = flush_secs
        self.started_at = time.time()
        self.should_stop = False
        self.paused = False
        self.steps_per_sec = 0.0
        self.closed = False

        self._calls = 0
        self._next_check = 0
        self._step = 0
        self._stepping = False  # first step seen: hparams registered by then
        self._session_written = False
        self._training_thread = threading.get_ident()
        self._lock = threading.RLock()  # registry, metrics, queue
        self._scan_lock = threading.Lock()
        self._queue: collections.deque[Admitted] = collections.deque()
        self._wakeup = threading.Event()
        self._seen: set[str] = set()
        self._done: dict[str, dict[str, Any]] = {}  # command id -> response (from the journal)
        self._hparams: dict[str, HParam] = {}
        self._overrides: dict[str, Any] = {}
        self._metrics: dict[str, Metric] = {}
        self._active: list[Metric] = []
        self._wrote = False
        self._last_flush = time.monotonic()
        self._last_slow = time.monotonic()
        self._calls_at_slow = 0
        self._rate_mark = (time.monotonic(), 0)
        self._inbox_mtime = 0
        self._last_inbox_check = 0.0
        self._timer = HookTimer(hook_budget)
        self._now_timer = HookTimer(hook_budget)
        self.hparams: Mapping[str, Any] = HParamView(self._hparams)
        # Called in the training thread right before commands are applied or metrics run at a step: framework
        # adapters use it to copy device-resident state back into framework objects (Keras on JAX).
        self.prepare: Callable[[], Any] | None = None

        self.writer = as_writer(writer, run_dir=str(self.run_dir), flush_secs=flush_secs)
        self.writer.flush()  # the event file exists from the start, so TensorBoard lists the run
        self.namespace: dict[str, Any] = self._base_namespace(namespace)
        self._recorder = Recorder(self.mailbox, self.state)
        self._restore(replay(self.mailbox.iter_journal(), restore=resume))
        self._recorder.write_state()
        self._recorder.start()
        from .watcher import InboxWatcher

        self._watcher = InboxWatcher(self.mailbox.inbox, self._on_files, self._on_tick, poll_interval)
        self._watcher.start()
        self._atexit = _closer(weakref.ref(self))
        atexit.register(self._atexit)

    # -- public API -------------------------------------------------------------------------------------

    def step(self, step: int | None = None, **context: Any) -> None:
        """Mark a step boundary: apply pending commands and run metrics. Nearly free when there is nothing to do."""
        self._calls += 1
        if self._calls >= self._next_check:
            self._slow_step(step, context)

    def hparam(
        self,
        name: str,
        value: Any,
        *,
        type: str | None = None,
        min: float | None = None,
        max: float | None = None,
        choices: list[Any] | tuple[Any, ...] | None = None,
        on_change: Callable[[Any], Any] | None = None,
    ) -> Any:
        """Register a tunable value; returns its current value (a value tuned earlier in this run, on resume)."""
        protocol.check_name(name, "hyperparameter name")
        from .hparams import _type_name

        kind = type or _type_name(value)
        hp = HParam(name, value, kind, min, max, tuple(choices) if choices is not None else None, on_change)
        hp.value = hp.coerce(value)
        self._register(hp)
        self._write_session()
        return hp.current()

    def bind_optimizer(self, optimizer: Any, scheduler: Any = None, *, prefix: str = "") -> list[str]:
        """Register every numeric param-group value of a torch optimizer (`lr`, `momentum`, `betas`, ...).

        `prefix` names the values of a second optimizer apart (`prefix="opt1/"` gives `opt1/lr`); only an unprefixed
        optimizer becomes `optimizer` (and its scheduler `scheduler`) in metric code.
        """
        if prefix:
            protocol.check_name(prefix + "lr", "hyperparameter name")
        names = []
        for hp in optimizer_hparams(optimizer, scheduler):
            hp.name = prefix + hp.name
            self._register(hp)
            names.append(hp.name)
        self._write_session()
        if not prefix:
            self.namespace["optimizer"] = optimizer
            self.namespace["scheduler"] = scheduler
        return names

    def bind_hparam(
        self,
        name: str,
        get: Callable[[], Any],
        set: Callable[[Any], Any],
        *,
        type: str | None = None,
        min: float | None = None,
        max: float | None = None,
        choices: list[Any] | tuple[Any, ...] | None = None,
    ) -> Any:
        """Register a value that lives elsewhere (a framework's optimizer, a device array): `get()` reads it, `set(v)`
        writes it in the training thread. `set` may raise ProtocolError to refuse a value. Returns the current value."""
        protocol.check_name(name, "hyperparameter name")
        from .hparams import _type_name

        value = get()
        hp = HParam(name, value, type or _type_name(value), min, max, tuple(choices) if choices else None)
        hp.apply, hp.read = set, get
        self._register(hp)
        self._write_session()
        return hp.current()

    def add_metric(self, name: str, code: str, every: int = 1, kind: str = "auto", replace: bool = False) -> None:
        """Add a metric from code, as the `add_metric` command does (raises ProtocolError on bad code)."""
        cmd = protocol.make_command(
            "add_metric", {"name": name, "code": code, "every": every, "kind": kind, "replace": replace}
        )
        with self._lock:
            if name in self._metrics and not replace:
                raise admission.metric_exists(name)
            self._install_metric(cmd.args, compile_metric(name, code), sender="api")

    def enable_diagnostics(self, every: int = 1) -> list[str]:
        """Switch on the built-in diagnostics pack (grad/weight norms, update ratio, lr, steps/s)."""
        from .diagnostics import PACK

        with self._lock:
            for name, src in PACK.items():
                args = {"name": name, "code": src, "every": every, "kind": "auto", "replace": True}
                self._install_metric(args, compile_metric(name, src), sender="api")
        return list(PACK)

    def close(self) -> None:
        """Stop watching, answer commands that will never be applied, flush and release the run. Idempotent."""
        if self.closed:
            return
        self.closed = True
        atexit.unregister(self._atexit)
        self._watcher.stop()
        self._timer.close()
        self._now_timer.close()
        with self._scan_lock:
            self._on_files(sorted(os.listdir(self.mailbox.inbox)), closing=True)
        while self._queue:
            item = self._queue.popleft()
            err = ProtocolError(
                f"training ended (the Bridge closed at step {self._step}) before this command was applied; "
                "send it again to a running bridge",
                type="BridgeClosed",
            )
            self._finish(item, "rejected", error=err.as_error())
        self._recorder.close()
        try:
            self.writer.flush()
            self.writer.close()
        finally:
            self._recorder.write_state()
            self._owner.release()

    def __enter__(self) -> Bridge:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- the slow path of step() ------------------------------------------------------------------------

    def _slow_step(self, step: int | None, context: dict[str, Any]) -> None:
        self._step = step = self._calls - 1 if step is None else step
        ns = self.namespace
        if context:
            ns.update(context)
        ns["step"] = step
        if not self._stepping:
            self._first_step(step)
        now = time.monotonic()
        if now - self._last_inbox_check >= CHECK_SECONDS / 2:  # the pacing below aims at CHECK_SECONDS
            self._last_inbox_check = now
            self._check_inbox()
        if self._queue:
            self._apply_queue()
        while self.paused and not self.should_stop:
            self._wakeup.wait(0.1)
            self._wakeup.clear()
            self._check_inbox()
            self._apply_queue()
        if self._active:
            self._run_metrics(step)
        self._schedule_next_check(now)

    def _schedule_next_check(self, now: float) -> None:
        if self._active or self._queue:
            self._next_check = self._calls + 1
        else:
            # Calls expected in CHECK_SECONDS at the current pace; the watcher also forces a check when commands
            # arrive or the loop slows down, so a stale estimate cannot delay a command.
            elapsed = now - self._last_slow
            calls = self._calls - self._calls_at_slow
            per_sec = calls / elapsed if elapsed > 0 else 0.0
            self._next_check = self._calls + max(1, min(int(per_sec * CHECK_SECONDS), 100_000))
        self._last_slow = now
        self._calls_at_slow = self._calls

    def _first_step(self, step: int) -> None:
        self._stepping = True
        with self._lock:
            self._write_session()
            for name, hp in self._hparams.items():
                self._write_hparam(name, hp.current(), step)
        self._recorder.dirty = True

    def _write_session(self) -> None:
        """The starting values as TensorBoard's HPARAMS session, once: at the first step, or at the first
        registration after it for loops that bind their optimizer late (TensorBoard keeps the first one)."""
        if self._session_written or not self._stepping or not self._hparams:
            return
        flat = {}
        for name, hp in self._hparams.items():
            value = hp.current()
            if isinstance(value, tuple):
                flat.update({f"{name}/{i}": v for i, v in enumerate(value)})
            else:
                flat[name] = value
        self.writer.add_hparams_session(flat, [f"hparams/{n}" for n in flat])
        self._session_written = True

    def _check_inbox(self) -> None:
        try:
            mtime = os.stat(self.mailbox.inbox).st_mtime_ns
        except OSError:
            return
        # Blocking briefly hands the GIL to a watcher that is mid-scan, instead of missing its result.
        if mtime != self._inbox_mtime and self._scan_lock.acquire(timeout=0.005):
            try:
                self._inbox_mtime = mtime
                self._on_files(sorted(os.listdir(self.mailbox.inbox)), locked=True)
            finally:
                self._scan_lock.release()

    def _run_metrics(self, step: int) -> None:
        call = self._timer.call
        prepared = self.prepare is None
        for m in self._active:
            if step % m.every:
                continue
            if not prepared:
                prepared = True
                self.prepare()  # type: ignore[misc]
            try:
                value = call(m.fn, m.state)
                if value is None:
                    m.errors_in_row = 0
                    continue
                shown = emit(self.writer, f"bidviz/{m.name}", value, m.kind, step)
            except MetricTimeout as e:
                self._metric_error(m, step, e, f"metric {m.name!r} {e}")
            except Exception as e:
                self._metric_error(m, step, e)
            else:
                m.record_value(step, shown)
                self._wrote = True

    def _metric_error(self, m: Metric, step: int, exc: BaseException, message: str | None = None) -> None:
        info = error_info(exc, "<metric")
        if message is not None:
            info.update(message=message, traceback="", line=None)
        info["step"] = step
        disable = m.record_error(info)
        self._journal({"event": "metric_error", "metric": m.name, "error": info})
        if disable:
            reason = (
                "disabled: ran past its time budget" if message else f"disabled after {m.errors_in_row} errors in a row"
            )
            with self._lock:
                m.status = "disabled"
                self._refresh_active()
            self._journal({"event": "metric_disabled", "metric": m.name, "reason": reason})
        self._recorder.dirty = True

    # -- admission (watcher thread, or the training thread when the watcher is starved) -----------------

    def _on_files(self, names: list[str], *, locked: bool = False, closing: bool = False) -> None:
        if not locked and not closing:
            with self._scan_lock:
                return self._on_files(names, locked=True)
        for name in names:
            if name in self._seen or name.startswith("."):
                continue
            self._seen.add(name)
            path = self.mailbox.inbox / name
            cid = protocol.id_from_filename(name)
            done = self._done.get(cid)
            if done is not None:  # answered before a crash or restart: never apply twice
                if self.mailbox.read_response(cid) is None:
                    self.mailbox.write_response(done)
                unlink(path)
                continue
            try:
                with self._lock:
                    metric_names = set(self._metrics)
                    hparam_names = set(self._hparams) if self._stepping else None
                item = admission.admit(path, secret=self.secret, metric_names=metric_names, hparam_names=hparam_names)
            except ProtocolError as e:
                self._reject(path, cid, e)
                continue
            except FileNotFoundError:
                continue
            except OSError as e:
                self._reject(path, cid, ProtocolError(f"cannot read {name}: {e}", type="Unreadable"))
                continue
            if item.command.kind == "eval" and item.command.args["now"] and not closing:
                self._eval_now(item)
            else:
                self._queue.append(item)
                self._next_check = 0
                self._wakeup.set()

    def _reject(self, path: Path, cid: str, error: ProtocolError) -> None:
        stub = protocol.Command(id=cid, kind="unknown", args={})
        try:
            stub = admission.read_command_file(path, secret=None)
        except (ProtocolError, OSError):
            pass
        self._finish(Admitted(stub, path, time.time()), "rejected", error=error.as_error())

    def _eval_now(self, item: Admitted) -> None:
        try:
            value = self._now_timer.call(admission.eval_code, item.code, self.namespace)
        except BaseException as e:  # noqa: BLE001 - any failure of user code is its answer
            self._finish(item, "failed", error=error_info(_eval_error(e), "<eval"))
        else:
            self._finish(item, "applied", result=value)

    # -- applying (training thread) ---------------------------------------------------------------------

    def _apply_queue(self) -> None:
        if self._queue and self.prepare is not None:
            self.prepare()
        while self._queue:
            item = self._queue.popleft()
            try:
                result = self._apply(item)
            except ProtocolError as e:
                self._finish(item, "rejected", error=e.as_error())
            except KeyboardInterrupt as e:  # the user's Ctrl-C is for the training loop
                self._finish(item, "failed", error=error_info(e, "<eval"))
                raise
            except BaseException as e:  # noqa: BLE001 - SystemExit from `exit()` in the terminal included
                self._finish(item, "failed", error=error_info(_eval_error(e), "<eval"))
            else:
                self._finish(item, "applied", result=result)

    def _apply(self, item: Admitted) -> Any:
        cmd = item.command
        args = cmd.args
        kind = cmd.kind
        if kind == "set_hparam":
            return self._set_hparam(args["name"], args["value"], cmd.sender)
        if kind == "eval":
            return self._timer.call(admission.eval_code, item.code, self.namespace)
        if kind == "pause":
            self.paused = True
            return True
        if kind == "resume":
            self.paused = False
            return False
        if kind == "stop":
            self.should_stop = True
            self.paused = False
            return True
        with self._lock:
            if kind == "add_metric":
                if args["name"] in self._metrics and not args["replace"]:
                    raise admission.metric_exists(args["name"])
                self._install_metric(args, item.code, cmd.sender)
                return {"name": args["name"], "tag": f"bidviz/{args['name']}"}
            if kind == "add_diagnostics":
                from .diagnostics import PACK

                for name, code in item.code.items():
                    spec = {"name": name, "code": PACK[name], "every": args["every"], "kind": "auto"}
                    self._install_metric(spec, code, cmd.sender)
                return list(item.code)
            m = self._metrics.get(args["name"])
            if m is None:
                raise admission.unknown_metric(args["name"], list(self._metrics))
            if kind == "remove_metric":
                del self._metrics[m.name]
            elif kind == "pause_metric":
                m.status = "paused"
            elif kind == "resume_metric":
                m.status, m.errors_in_row = "running", 0
            self._refresh_active()
            return {"name": m.name, "status": "removed" if kind == "remove_metric" else m.status}

    def _set_hparam(self, name: str, value: Any, sender: str) -> dict[str, Any]:
        hp = self._hparams.get(name)
        if hp is None:
            raise admission.unknown_hparam(name, list(self._hparams))
        value = hp.coerce(value)
        old = hp.current()
        hp.assign(value)
        hp.record(_plain_json(old), _plain_json(value), self._step, sender)
        self._write_hparam(name, value, self._step)
        return {"name": name, "value": _plain_json(value), "old": _plain_json(old)}

    def _write_hparam(self, name: str, value: Any, step: int) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float, tuple)):
            return
        if isinstance(value, tuple):
            for i, v in enumerate(value):
                self.writer.add_scalar(f"hparams/{name}/{i}", float(v), step)
        else:
            self.writer.add_scalar(f"hparams/{name}", float(value), step)
        self._wrote = True

    def _install_metric(self, args: Mapping[str, Any], code: Any, sender: str) -> None:
        if "torch" not in self.namespace and "torch" in sys.modules:  # imported after the bridge was made
            self.namespace["torch"] = sys.modules["torch"]
        name = args["name"]
        fn = make_function(code, self.namespace)
        self._metrics[name] = Metric(name, args["code"], args["every"], args.get("kind", "auto"), fn, sender)
        self._refresh_active()

    def _refresh_active(self) -> None:
        self._active = [m for m in self._metrics.values() if m.status == "running"]
        self._next_check = 0
        self._recorder.dirty = True

    def _register(self, hp: HParam) -> None:
        with self._lock:
            existing = self._hparams.get(hp.name)
            if existing is not None:
                hp.changes = existing.changes
            self._hparams[hp.name] = hp
            if hp.name in self._overrides:
                try:
                    value = hp.coerce(self._overrides.pop(hp.name))
                except ProtocolError:
                    pass  # the registered type or bounds changed since: keep the new start value
                else:
                    old = hp.current()
                    hp.assign(value)
                    hp.record(_plain_json(old), _plain_json(value), self._step, "journal (resumed run)")
            if self._stepping:
                self._write_hparam(hp.name, hp.current(), self._step)
            self._recorder.dirty = True

    # -- responses, journal, state ----------------------------------------------------------------------

    def _finish(self, item: Admitted, status: str, *, result: Any = None, error: dict[str, Any] | None = None) -> None:
        """Answer a command; the recorder journals it before the response appears (see `Recorder`)."""
        response = build_response(item, status, self._step if self._stepping else None, result, error)
        self._done[item.command.id] = response
        self._recorder.command(item, response)

    def _journal(self, entry: dict[str, Any]) -> None:
        self._recorder.event({"time": time.time(), "step": self._step if self._stepping else None, **entry})

    def _on_tick(self) -> None:
        now = time.monotonic()
        if now - self._last_slow > 0.05 and not self.paused:
            self._next_check = 0  # a slow loop: have the next step refresh step and steps/s
        t0, c0 = self._rate_mark
        if now - t0 >= 1.0:
            rate = (self._calls - c0) / (now - t0)
            self.steps_per_sec = rate if not self.paused else 0.0
            self._rate_mark = (now, self._calls)
        if self._wrote and now - self._last_flush >= self.flush_secs:
            self._wrote = False
            self._last_flush = now
            self.writer.flush()
        since = now - self._recorder.last_state
        if self._recorder.dirty and since >= STATE_SECONDS or since >= HEARTBEAT_SECONDS:
            self._recorder.write_state()

    def state(self) -> dict[str, Any]:
        """What `state.json` holds: a snapshot safe to take from any thread."""
        with self._lock:
            hparams = {n: _json_safe(hp.describe()) for n, hp in self._hparams.items()}
            metrics = {n: m.describe() for n, m in self._metrics.items()}
        return {
            "v": protocol.VERSION,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "run_dir": str(self.run_dir.resolve()),
            "started_at": self.started_at,
            "heartbeat": time.time(),
            "step": self._step if self._stepping else None,
            "steps_per_sec": round(self.steps_per_sec, 3) if math.isfinite(self.steps_per_sec) else None,
            "paused": self.paused,
            "stopping": self.should_stop,
            "closed": self.closed,
            "signed": bool(self.secret),
            "hook_budget": self.hook_budget,
            "pending": len(self._queue),
            "hparams": hparams,
            "metrics": metrics,
            "watcher_error": repr(self._watcher.last_error)
            if getattr(self, "_watcher", None) and self._watcher.last_error
            else None,
        }

    # -- start-up -----------------------------------------------------------------------------------------

    def _base_namespace(self, namespace: Mapping[str, Any] | None) -> dict[str, Any]:
        import numpy as np

        ns: dict[str, Any] = {"__builtins__": builtins, "math": math, "np": np, "numpy": np}
        torch = sys.modules.get("torch")
        if torch is not None:
            ns["torch"] = torch
        ns.update({"optimizer": None, "scheduler": None, "model": None, "step": 0})
        ns.update(namespace or {})
        ns.update({"hparams": self.hparams, "bridge": self})
        return ns

    def _restore(self, journal: Replay) -> None:
        """Answered commands, tuned hyperparameters and the metric set of a resumed run."""
        self._done = journal.done
        self._overrides = journal.hparams
        for name, spec in journal.metrics.items():
            try:
                code = compile_metric(name, spec["code"])
            except ProtocolError:
                continue
            self._install_metric(spec, code, spec["sender"])
            self._metrics[name].status = spec["status"]
        self._refresh_active()


def _closer(ref: weakref.ReferenceType[Bridge]) -> Callable[[], None]:
    """Close at interpreter exit a bridge the user forgot, without keeping it alive until then."""

    def close() -> None:
        bridge = ref()
        if bridge is not None:
            bridge.close()

    return close


def _eval_error(e: BaseException) -> BaseException:
    return MetricTimeout(f"eval {e}") if isinstance(e, MetricTimeout) else e


def _plain_json(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _json_safe(obj: Any) -> Any:
    try:
        return protocol.to_json_value(obj)
    except TypeError:
        return repr(obj)
