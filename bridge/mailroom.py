"""The mailroom: the one thread that takes command files in. It wakes on inbox events (watchdog: inotify here; on
a store, a network file system or with `poll_interval` there are none, and it lists the inbox every period), on
`wake()` from a training thread that saw the inbox change, and on a short timer; it reads, verifies and admits each
new file, answers rejections, runs `eval` with `now`, and hands everything else to the training thread through the
`Handoff`. Nothing it does can raise past it: whatever a file holds, the answer is a response naming the file.

On a distributed job only the leader runs a mailroom (and a recorder); the applier and the metric runner run on
every rank.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from watchdog.events import FileSystemEvent, FileSystemEventHandler

from bidviz import protocol
from bidviz.errors import ProtocolError

from . import admission
from .admission import Admitted
from .effects import BEHAVIOURS, Runtime
from .handoff import Handoff
from .interrupt import HookTimer
from .metrics import describe_failure
from .recorder import Recorder, build_response
from .replay import Restored

TICK_SECONDS = 0.2
RESCAN_SECONDS = 1.0  # a full listing now and then, for file systems whose events get lost
SCAN_PASSES = 20  # listings a scan takes at most while files keep arriving; the next wake or tick goes on
RECENT_IDS = 50_000  # ids answered by this process, to refuse a second file with the same id


class _Wake(FileSystemEventHandler):
    def __init__(self, wake: Callable[[], None]) -> None:
        self._wake = wake

    def on_any_event(self, event: FileSystemEvent) -> None:
        self._wake()


class Mailroom:
    def __init__(
        self,
        inbox: Path,
        *,
        secret: str | None,
        runtime: Runtime,
        handoff: Handoff,
        recorder: Recorder,
        now_timer: HookTimer,
        on_tick: Callable[[], None],
        poll_interval: float | None = None,
    ) -> None:
        self.inbox = inbox
        self.secret = secret
        self.runtime = runtime
        self.handoff = handoff
        self.recorder = recorder
        self.now_timer = now_timer
        self._on_tick = on_tick
        self._poll_interval = poll_interval
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._observer: Any = None
        self._thread = threading.Thread(target=self._run, name="bidviz-mailroom", daemon=True)
        self._inflight: set[str] = set()  # file names admitted or answered, still in the inbox
        self._inflight_ids: set[str] = set()
        self._recent: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._restored = Restored()
        self.last_error: str | None = None
        # A store, a network file system or `poll_interval`: no events to wait for, a listing every period.
        self._rescan = recorder.mailbox.rescan_seconds(poll_interval)
        events = self._rescan is None and recorder.mailbox.events
        self.watching = "events" if events else f"listing every {self._rescan:g}s"  # how new commands are noticed
        recorder.on_removed = self._removed

    def start(self, restored: Restored) -> None:
        self._restored = restored
        try:
            present = {protocol.id_from_filename(n) for n in self.recorder.mailbox.list_inbox()}
        except OSError:
            present = set()
        for cid in [c for c in restored.interrupted if c not in present]:  # its file is gone: answer it anyway
            self._interrupted(cid, self.inbox / f"{cid}.json", restored.interrupted.pop(cid))
        if self.watching == "events":
            self._observer = _observe(self.inbox, _Wake(self._wake.set))
        self._wake.set()  # scan once at start: commands sent while no bridge ran
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._observer is not None:
            self._observer.stop()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=10)
        if self._observer is not None:
            try:
                self._observer.join(timeout=5)
            except RuntimeError:
                pass

    def _run(self) -> None:
        last_scan = 0.0
        rescan = self._rescan or RESCAN_SECONDS
        while not self._stop.is_set():
            woke = self._wake.wait(TICK_SECONDS)
            if self._stop.is_set():
                break
            try:
                now = time.monotonic()
                if woke or now - last_scan >= rescan:
                    self._wake.clear()
                    last_scan = now
                    self.scan()
                self._on_tick()
            except Exception as e:  # noqa: BLE001 - never let the mailroom die: report and go on
                self.last_error = f"{type(e).__name__}: {e}"

    # -- admission ------------------------------------------------------------------------------------------------

    def scan(self, *, closing: bool = False) -> None:
        """Admit every new file of the inbox, in name order (the sending order).

        A listing is no snapshot: one taken while files arrive may hold a sender's file n+1 and miss its file n (seen
        on ext4 with a few thousand files queued). A file listed twice in a row existed before the second listing
        began, and so did every file its sender wrote before it, which that listing therefore holds: each pass
        admits, in name order, the files listed twice, and stops at the first file new to its listing."""
        previous: set[str] = set()
        for _ in range(SCAN_PASSES):
            try:
                names = sorted(self.recorder.mailbox.list_inbox())
            except OSError as e:
                self.last_error = f"cannot list {self.inbox}: {e}"
                return
            if not self._admit_listed(names, previous, closing):
                return
            previous = set(names)

    def _admit_listed(self, names: list[str], previous: set[str], closing: bool) -> bool:
        """The files of `names` also in `previous`, up to the first that is not; True when one was not."""
        for name in names:
            if name in self._inflight or name.startswith("."):
                continue
            if name not in previous:
                return True
            self._inflight.add(name)
            try:
                self._take(name, closing)
            except Exception as e:  # noqa: BLE001 - a file must never stop the mailroom: it is answered instead
                self._reject(
                    self.inbox / name, ProtocolError(f"{name!r} could not be admitted: {e}", type="Unreadable")
                )
        return False

    def _take(self, name: str, closing: bool) -> None:
        path = self.inbox / name
        cid = protocol.id_from_filename(name)
        if self._answered_before(cid, path):
            return
        # From here on the id is answered (a rejection too, written later by the recorder): a second file with it
        # is a duplicate, even while this answer is in flight.
        self._inflight_ids.add(cid)
        claimed_at = time.time()  # a command claimed before its expiry is in time, whenever it is read
        source = self.recorder.mailbox.claim(name)
        try:
            if source is None:  # its sender withdrew it: never applied, and the sender knows
                raise FileNotFoundError(path)
            item = admission.admit(
                self.recorder.mailbox,
                path,
                secret=self.secret,
                registry=self.runtime.registry,
                now=claimed_at,
                source=source,
            )
        except FileNotFoundError:
            self.recorder.mailbox.unclaim(name)
            self._inflight.discard(name)
            self._inflight_ids.discard(cid)
            return
        except ProtocolError as e:
            self._reject(path, e)
            return
        except OSError as e:
            self._reject(path, ProtocolError(f"cannot read {name!r}: {e.strerror or e}", type="Unreadable"))
            return
        except (RecursionError, MemoryError):  # MemoryError: the parser's "too complex" (e.g. 50,000 unary minus)
            self._reject(path, ProtocolError("the code is nested too deeply to compile", type="SyntaxError"))
            return
        if BEHAVIOURS[item.command.kind].kind.runs_now(item.command.args) and not closing:
            self._run_now(item)
        else:
            self.handoff.put(item)

    def _answered_before(self, cid: str, path: Path) -> bool:
        """A second file with an id already answered or in flight, or one answered before a crash: answer it from
        the journal when its response is missing, never apply it again."""
        info = self._restored.interrupted.pop(cid, None)
        if info is not None:
            behaviour = BEHAVIOURS.get(info.get("kind"))  # type: ignore[arg-type]
            if behaviour is None or not behaviour.kind.idempotent:
                self._inflight_ids.add(cid)
                self._interrupted(cid, path, info)
                return True
        done = self._restored.done.pop(cid, None)
        if done is not None:
            if not self.recorder.mailbox.has_response(cid):
                self.recorder.mailbox.write_response(done)
            self._forget(path)
            return True
        if cid in self._recent or cid in self._inflight_ids or self.recorder.mailbox.has_response(cid):
            self._forget(path)  # a duplicate delivery: the first file with this id gets the one response
            return True
        return False

    def _interrupted(self, cid: str, path: Path, info: dict[str, Any]) -> None:
        stub = Admitted(protocol.Command(id=cid, kind=str(info.get("kind")), args={}), path, time.time())
        error = ProtocolError(
            f"training died while applying this command (at step {info.get('step')}); it was not run again, since "
            "running it twice could do harm: check the run, then send it again if it is still wanted",
            type="Interrupted",
            status="failed",
        )
        self._answer(stub, "failed", error=error.as_error())

    def _forget(self, path: Path) -> None:
        try:
            self.recorder.mailbox.remove_command(path.name)  # a directory is moved out of the inbox all the same
        except OSError:
            return
        self.recorder.mailbox.unclaim(path.name)
        self._inflight.discard(path.name)

    def _reject(self, path: Path, error: ProtocolError) -> None:
        cid = protocol.id_from_filename(path.name)
        stub = protocol.Command(id=cid, kind="unknown", args={})
        try:  # the kind and args, where the file has them, so the journal line says what was refused
            stub = admission.read_command_file(self.recorder.mailbox, path, secret=None)
        except Exception:  # noqa: BLE001, S110 - nothing more to say than the rejection itself
            pass
        if stub.id != cid:
            stub = protocol.Command(id=cid, kind=stub.kind, args=stub.args, sender=stub.sender)
        self._answer(Admitted(stub, path, time.time()), "rejected", error=error.as_error())

    def _run_now(self, item: Admitted) -> None:
        from .applier import outcome

        rt = self.runtime
        # Write-ahead, as the applier does: a crash while it runs answers it Interrupted on restart, never re-runs it.
        self.recorder.applying([item], rt.control.at)
        behaviour = BEHAVIOURS[item.command.kind]
        try:
            status, rendered, error = outcome(lambda: behaviour.apply(_Now(rt, self.now_timer), item), self.now_timer)
        except KeyboardInterrupt as e:  # never Ctrl-C in this thread (signals go to the main one): the code raised it
            status, rendered, error = "failed", None, describe_failure(self.now_timer, e, "<eval")
        self._answer(item, status, rendered, error)

    def _answer(self, item: Admitted, status: str, rendered: Any = None, error: dict[str, Any] | None = None) -> None:
        self.recorder.command(item, build_response(item, status, self.runtime.control.at, rendered, error))

    def _removed(self, name: str) -> None:
        """A file left the inbox once answered: its id is remembered, so a later file with it is a duplicate."""
        cid = protocol.id_from_filename(name)
        self._recent[cid] = None
        self._inflight_ids.discard(cid)
        self._inflight.discard(name)
        while len(self._recent) > RECENT_IDS:
            self._recent.popitem(last=False)


def _Now(rt: Runtime, timer: HookTimer) -> Runtime:
    """The runtime as an `eval` with `now` sees it: the mailroom's own hook timer."""
    return Runtime(rt.registry, rt.control, timer)


def _observe(inbox: Path, handler: FileSystemEventHandler) -> Any:
    """A started watchdog observer of `inbox`: native events, or watchdog's polling where they fail."""
    from watchdog.observers import Observer
    from watchdog.observers.polling import PollingObserver

    observer: Any = Observer()
    observer.schedule(handler, str(inbox), recursive=False)
    observer.daemon = True
    try:
        observer.start()
    except OSError:  # e.g. inotify limits reached: fall back to polling rather than failing training
        observer = PollingObserver(timeout=0.5)
        observer.schedule(handler, str(inbox), recursive=False)
        observer.daemon = True
        observer.start()
    return observer
