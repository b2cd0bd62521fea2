"""Mailboxes on object stores, through fsspec: `s3://bucket/runs/exp` (s3fs), `gs://`, `az://`, `memory://` (tests).

The same layout as a local run (`<run>/.bidviz/inbox/`, `outbox/`, `state.json`, `owner`), with what object stores
lack done another way:

- no rename: an object is created whole or not at all, so a client writes its command once, under its unique name,
  straight into `inbox/`;
- no events: the bridge lists the inbox prefix every `poll_interval` seconds (default POLL_SECONDS);
- no append: the journal is a series of objects `journal/<12 digits>.jsonl`; each write replaces the current one
  with its lines so far (one PUT, at most about ROLL_BYTES), and at a checkpoint past ROLL_BYTES a new one begins
  with that checkpoint, so a resume reads the last object or two;
- no flock: `owner` is a lease, renewed every third of LEASE_SECONDS (env BIDVIZ_LEASE_SECONDS) by conditional
  writes (S3's If-Match / If-None-Match); a bridge whose lease is live refuses a second one, one past its expiry (or
  of a dead pid on this host) is taken over, and a bridge that finds its lease taken stops admitting commands;
- a claim: before it reads a command, the bridge creates `claims/<name>` only if absent; a sender that gives up
  creates the same object saying `withdrawn`. Whoever creates it first wins, so a command is applied or withdrawn,
  never both, whatever listings overlap.

Credentials come from where the store's library looks (for S3: AWS_* variables, profiles, instance roles; an
emulator or another S3 API through AWS_ENDPOINT_URL); nothing here stores them. The bucket's permissions are the
trust boundary: with write access anyone can send commands, so set BIDVIZ_SECRET on a shared bucket.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import PurePosixPath
from typing import Any

from . import protocol
from .channel import DIRNAME, Mailbox, parse_object
from .errors import BridgeBusyError, ChannelError, ProtocolError, StateError

POLL_SECONDS = 2.0  # the bridge lists the inbox this often (requests per hour: 3600 / POLL_SECONDS when idle)
LEASE_SECONDS = 30.0  # an owner lease not renewed for this long is dead; renewed every third of it
ROLL_BYTES = 256 * 1024  # a journal object past this size is not rewritten again: the next checkpoint begins a new one
WITHDRAWN = b"withdrawn"
HELD_PART = 2 / 3  # a lease not renewed for this part of its term is renewed before a command is applied or answered
KEEP = ".keep"  # inbox/.keep: an empty object the bridge puts there, so the inbox prefix is never empty


def lease_seconds() -> float:
    try:
        return max(1.0, float(os.environ.get("BIDVIZ_LEASE_SECONDS", LEASE_SECONDS)))
    except ValueError:
        return LEASE_SECONDS


def filesystem(url: str) -> tuple[Any, str]:
    """The fsspec file system of `url` and the path inside it; ChannelError naming the extra to install."""
    try:
        from fsspec.core import url_to_fs
    except ImportError:
        raise ChannelError(
            f"{url}: runs on object stores need fsspec: pip install 'tensorboard-bidviz[remote]'"
        ) from None
    try:
        return url_to_fs(url)
    except ImportError as e:
        raise ChannelError(f"{url}: {e} (for s3:// pip install 'tensorboard-bidviz[remote]')") from None
    except ValueError as e:
        raise ChannelError(f"{url} is not a URL fsspec knows: {e}") from None


def _mtime(info: Mapping[str, Any]) -> float:
    for key in ("LastModified", "mtime", "created", "last_modified", "updated"):
        value = info.get(key)
        if isinstance(value, datetime.datetime):
            return value.timestamp()
        if isinstance(value, (int, float)):
            return float(value)
    return time.time()


class RemoteMailbox(Mailbox):
    """The mailbox of a run at an fsspec URL; every method of `Mailbox`, through object operations."""

    wait_interval = 0.25  # a client looks for its response at least this often (each look: a HEAD, a LIST if missing)
    events = False  # a store raises no events: the mailroom lists the inbox every rescan_seconds

    def __init__(self, url: str, fs: Any = None) -> None:  # noqa: D107 - no super().__init__: no local paths here
        self.url = url.rstrip("/")
        self.fs, base = (fs, fs._strip_protocol(self.url)) if fs is not None else filesystem(self.url)
        self._base = base.rstrip("/")
        self.run_dir = self.url  # type: ignore[assignment]
        root = PurePosixPath(f"{self._base}/{DIRNAME}")
        self.root, self.inbox, self.outbox = root, root / "inbox", root / "outbox"
        self.tmp = self.claims = root / "claims"
        self.state_path, self.owner_path = root / "state.json", root / "owner"
        self.journal_path = root / "journal"  # a prefix of objects here, not one file
        self._marker = str(root / "mailbox.json")
        self._lease: Lease | None = None
        self._prefixes: set[str] = set()  # inbox names that the last listing showed as prefixes (directories)

    def __repr__(self) -> str:
        return f"RemoteMailbox({self.url!r})"

    def where(self, path: PurePosixPath | str) -> str:
        """A key as the user wrote the run: `s3://bucket/runs/exp/.bidviz/state.json`."""
        return self.url + str(path)[len(self._base) :]

    # -- layout ----------------------------------------------------------------------------------------

    def exists(self) -> bool:
        return bool(self.fs.exists(self._marker))

    def create(self) -> None:
        if not self.fs.exists(self._marker):
            self.fs.pipe_file(self._marker, protocol.dumps({"v": protocol.VERSION, "created_at": time.time()}))
        # An inbox prefix with no object under it lists as missing, and s3fs then lists the parent too to tell a
        # missing prefix from a file: this marker keeps an idle inbox at one LIST a poll.
        self.fs.pipe_file(str(self.inbox / KEEP), b"")

    def check_root(self) -> None:
        """Nothing to check: on a store the bucket's permissions decide who may read and write."""

    # -- writes: each object is created or replaced whole ----------------------------------------------

    def write_atomic(self, path: Any, data: bytes, *, fsync: bool = False) -> None:
        self.fs.pipe_file(str(path), data)

    def append_journal(self, entry: Mapping[str, Any]) -> None:
        journal = self.open_journal()
        journal.append(protocol.dumps(entry) + b"\n")

    # -- reading ---------------------------------------------------------------------------------------

    def _read(self, path: PurePosixPath, what: str) -> dict[str, Any] | None:
        try:
            data = self.fs.cat_file(str(path))
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StateError(f"{self.where(path)} ({what}) cannot be read: {e}") from None
        return parse_object(data, self.where(path), what)

    def read_state(self) -> dict[str, Any] | None:
        return self._read(self.state_path, "the bridge's state")

    def wait_response(self, command_id: str, timeout: float, interval: float = 0.1) -> dict[str, Any] | None:
        """As `Mailbox.wait_response`, from 0.1 s between looks: no bridge on a store answers sooner, and each look
        costs requests (s3fs: a HEAD, and a LIST when the response is not there yet)."""
        return super().wait_response(command_id, timeout, max(interval, 0.1))

    def read_response(self, command_id: str) -> dict[str, Any] | None:
        if not protocol.is_response_id(command_id):
            raise ChannelError(f"not a command id: {command_id!r}")
        return self._read(self.outbox / f"{command_id}.json", f"the response to {command_id}")

    def _segments(self) -> list[str]:
        try:
            names = self.fs.ls(str(self.journal_path), detail=False, refresh=True)
        except FileNotFoundError:
            return []
        return sorted(n for n in names if n.endswith(".jsonl"))

    def journal_version(self) -> tuple[str, list[str]]:
        """A token that changes whenever the journal does (one LIST: its objects' names and the last one's size,
        which grows at each append), and the journal's objects in order."""
        try:
            infos = self.fs.ls(str(self.journal_path), detail=True, refresh=True)
        except FileNotFoundError:
            return "0", []
        segments = sorted((str(i["name"]), int(i.get("size") or 0)) for i in infos if str(i["name"]).endswith(".jsonl"))
        if not segments:
            return "0", []
        last, size = segments[-1]
        return f"{len(segments)}.{last.rsplit('/', 1)[-1].split('.')[0]}.{size}", [name for name, _ in segments]

    def last_entries(self, n: int, segments: list[str] | None = None) -> list[dict[str, Any]]:
        """The journal's last `n` entries, oldest first, read from its newest objects back (not all of them)."""
        entries: list[dict[str, Any]] = []
        for key in reversed(self._segments() if segments is None else segments):
            older = [e for e in _lines(b"".join(self._cat_all([key]))) if e is not None]
            entries[:0] = older
            if len(entries) >= n:
                break
        return entries[-n:]

    def iter_journal(self) -> Iterator[dict[str, Any]]:
        for entry in _lines(b"".join(self._cat_all(self._segments()))):
            if entry is not None:
                yield entry

    def _cat_all(self, keys: list[str]) -> Iterator[bytes]:
        for key in keys:
            try:
                yield self.fs.cat_file(key)
            except FileNotFoundError:
                continue
            except OSError as e:
                raise StateError(f"{self.where(key)} (the journal) cannot be read: {e}") from None

    def journal_tail(self) -> Iterator[dict[str, Any] | None]:
        """The journal's lines from its last checkpoint: the objects from the newest back to one that has one."""
        chunks: list[bytes] = []
        for key in reversed(self._segments()):
            chunks[:0] = list(self._cat_all([key]))
            if chunks and _CHECKPOINT in chunks[0]:
                break
        data = b"".join(chunks)
        at = data.rfind(b"\n" + _CHECKPOINT)
        start = at + 1 if at >= 0 else 0
        yield from _lines(data[start:])

    def open_journal(self) -> Journal:
        return Journal(self)

    # -- the client side -------------------------------------------------------------------------------

    def send(self, command: protocol.Command) -> str:
        if not self.exists():
            raise ChannelError(
                f"{self.url} has no BIDViz mailbox ({self.where(self._marker)} is missing): no Bridge has run there. "
                "Start training with a Bridge on this run, or check the URL"
            )
        data = protocol.dumps(command.to_dict())
        if len(data) > protocol.MAX_COMMAND_BYTES:
            raise protocol.ProtocolError(
                f"command is {len(data)} bytes; the limit is {protocol.MAX_COMMAND_BYTES}", type="TooLarge"
            )
        self.fs.pipe_file(str(self.inbox / protocol.inbox_name(command.id, command.sent_at)), data)
        return command.id

    def withdraw(self, command: protocol.Command) -> str:
        """As `Mailbox.withdraw`: the sender's `withdrawn` claim, if it is first, keeps the bridge from applying it."""
        name = protocol.inbox_name(command.id, command.sent_at)
        if self._create(str(self.claims / name), WITHDRAWN):
            self._rm(str(self.inbox / name))
            return "withdrawn"
        return "answered" if self.has_response(command.id) else "claimed"

    # -- the bridge side -------------------------------------------------------------------------------

    def rescan_seconds(self, poll_interval: float | None) -> float:
        return POLL_SECONDS if poll_interval is None else max(0.05, float(poll_interval))

    def watch(self, wake: Callable[[], None], poll_interval: float | None) -> None:
        return None  # no events on a store: the mailroom lists the inbox every rescan_seconds

    def inbox_version(self) -> int:
        return 0  # no cheap look: the mailroom's own listing finds new commands

    def list_inbox(self) -> list[str]:
        if self._lease is not None and not self._lease.held():
            raise OSError(self._lease.lost or f"the lease on {self.url} could not be renewed: no command is taken")
        try:
            infos = self.fs.ls(str(self.inbox), detail=True, refresh=True)
        except FileNotFoundError:
            return []
        infos = [info for info in infos if not str(info["name"]).endswith(f"/{KEEP}")]
        names = [str(info["name"]).rstrip("/").rsplit("/", 1)[-1] for info in infos]
        # A prefix with objects under it (`inbox/sub/...`, a `marker/` key) lists as a directory: never a command.
        self._prefixes = {n for n, info in zip(names, infos, strict=True) if info.get("type") == "directory"}
        return names

    def claim(self, name: str) -> PurePosixPath | None:
        """Claim `name` (create `claims/<name>` only if absent): its key, or None when its sender withdrew it. A
        claim left by an earlier bridge (which crashed) is this one's now: the journal says what became of it."""
        key = str(self.claims / name)
        if not self._create(key, self._lease.token.encode() if self._lease else b"bridge"):
            try:
                if self.fs.cat_file(key) == WITHDRAWN:
                    return None
            except FileNotFoundError:
                pass
        return self.inbox / name

    def unclaim(self, name: str) -> None:
        self._rm(str(self.claims / name))

    def read_command(self, name: str, source: Any = None) -> bytes:
        key = str(self.inbox / name)
        if name in self._prefixes:
            raise ProtocolError(
                f"{name!r} is a prefix holding other objects (a directory), not a command: write each command as "
                "one object directly under inbox/, named <milliseconds>-<32 hex id>.json",
                type="NotAFile",
            )
        size = self.fs.info(key, refresh=True).get("size") or 0
        if size > protocol.MAX_COMMAND_BYTES:
            raise ProtocolError(f"{name!r} is {size} bytes; the limit is {protocol.MAX_COMMAND_BYTES}", type="TooLarge")
        if not protocol.is_command_filename(name):
            raise ProtocolError(
                f"command files are named <milliseconds>-<32 hex id>.json; received {name!r}", type="BadFileName"
            )
        return bytes(self.fs.cat_file(key, start=0, end=protocol.MAX_COMMAND_BYTES + 1))

    def remove_command(self, name: str) -> None:
        """Take an answered command out of the inbox; a prefix (a directory) goes with every object under it."""
        key = str(self.inbox / name)
        if name in self._prefixes:
            try:
                self.fs.rm(key, recursive=True)
            except FileNotFoundError:
                pass
            self._prefixes.discard(name)
        else:
            self._rm(key)  # its claim goes after (`unclaim`): a sender withdrawing meanwhile finds it claimed

    def has_response(self, command_id: str) -> bool:
        return bool(self.fs.exists(str(self.outbox / f"{command_id}.json")))

    def remove_response(self, command_id: str) -> None:
        self._rm(str(self.outbox / f"{command_id}.json"))

    def prune(self, outbox_before: float | None, tmp_before: float) -> None:
        """Responses older than `outbox_before` (None: none), claims older than `tmp_before` whose command is gone."""
        try:
            inbox = set(self.list_inbox())
        except OSError:
            return
        todo = [(self.claims, tmp_before, inbox)] + ([(self.outbox, outbox_before, set())] if outbox_before else [])
        for prefix, before, keep in todo:
            try:
                infos = self.fs.ls(str(prefix), detail=True, refresh=True)
            except OSError:
                continue
            for info in infos:
                name = str(info["name"]).rsplit("/", 1)[-1]
                if name not in keep and _mtime(info) < before:
                    self._rm(str(info["name"]))

    def owner_lock(self) -> Lease:
        self._lease = Lease(self)
        return self._lease

    # -- helpers ---------------------------------------------------------------------------------------

    def _rm(self, key: str) -> None:
        try:
            self.fs.rm_file(key)
        except FileNotFoundError:
            pass

    def _create(self, key: str, data: bytes) -> bool:
        """Create `key` only if absent (S3 If-None-Match); False when it exists."""
        try:
            self.fs.pipe_file(key, data, mode="create")
        except FileExistsError:
            return False
        return True


_CHECKPOINT = b'{"event":"checkpoint"'


def _lines(data: bytes) -> Iterator[dict[str, Any] | None]:
    for raw in data.splitlines():
        try:
            entry = json.loads(raw)
        except (ValueError, RecursionError):
            yield None
            continue
        yield entry if isinstance(entry, dict) else None


class Journal:
    """The journal on a store: the current object rewritten whole at each append (a PUT is durable when it returns),
    a new one begun at a checkpoint once the current one holds ROLL_BYTES."""

    def __init__(self, mailbox: RemoteMailbox) -> None:
        self.mailbox = mailbox
        segments = mailbox._segments()
        last = segments[-1].rsplit("/", 1)[-1].split(".")[0] if segments else ""
        self._seq = int(last) if last.isdigit() else 0
        self._key: str | None = None
        self._data = b""

    @property
    def full(self) -> bool:
        return len(self._data) >= ROLL_BYTES

    def append(self, data: bytes, *, checkpoint: bool = False) -> None:
        if self._key is None or (checkpoint and self.full):
            self._seq += 1
            self._key = str(self.mailbox.journal_path / f"{self._seq:012d}.jsonl")
            self._data = b""
        self.mailbox.fs.pipe_file(self._key, self._data + data)
        self._data += data

    def close(self) -> None:
        """Nothing held open."""


class Lease:
    """The owner of a mailbox on a store: a lease object, created only if absent, renewed by conditional writes."""

    def __init__(self, mailbox: RemoteMailbox) -> None:
        self.mailbox = mailbox
        self.key = str(mailbox.owner_path)
        self.seconds = lease_seconds()
        self.token = uuid.uuid4().hex
        self.lost: str | None = None
        self._etag: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._renewing = threading.Lock()
        self._renewed = -math.inf  # _clock() when the last write of the lease that succeeded began
        self._tried = -math.inf  # _clock() of the last renewal `held` tried itself
        self._s3 = "s3" in (mailbox.fs.protocol if isinstance(mailbox.fs.protocol, tuple) else (mailbox.fs.protocol,))

    def _body(self) -> bytes:
        now = time.time()
        info = {"token": self.token, "pid": os.getpid(), "host": socket.gethostname(), "renewed_at": now}
        return protocol.dumps({**info, "expires_at": now + self.seconds, "lease_seconds": self.seconds})

    def acquire(self) -> None:
        if not self._put(self._body(), None):
            prev, etag = self._current()
            if prev is not None and _holds(prev):
                raise BridgeBusyError(_busy(self.mailbox, prev))
            if not self._put(self._body(), etag):  # another bridge took the expired lease first
                raise BridgeBusyError(_busy(self.mailbox, self._current()[0] or {}))
        self._thread = threading.Thread(target=self._renew_loop, name="bidviz-lease", daemon=True)
        self._thread.start()

    def held(self) -> bool:
        """Whether this bridge may still act on the run's commands: its lease renewed within two thirds of its term
        (renewed now if not: one conditional write) and not taken. A process frozen past its lease (a stopped job,
        a paused VM) finds its commands taken over when it wakes: checked before each command is applied or
        answered, so it does not apply one the new owner already answered."""
        if self.lost is None and _clock() - self._renewed < self.seconds * HELD_PART:
            return True
        if self.lost is not None or _clock() - self._tried < 1.0:  # a store that is down: one try a second
            return False
        self._tried = _clock()
        try:
            self.renew()
        except OSError:
            return False
        return self.lost is None and _clock() - self._renewed < self.seconds * HELD_PART

    def renew(self) -> None:
        with self._renewing:
            self._renew()

    def _renew(self) -> None:
        if self.lost is None and not self._put(self._body(), self._etag):
            holder = self._current()[0] or {}
            self.lost = (
                f"the lease on {self.mailbox.url} was taken by pid {holder.get('pid', '?')} on "
                f"{holder.get('host', '?')} (this bridge missed renewing it for {self.seconds:.0f}s): it no longer "
                "takes commands; stop this run"
            )

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.seconds / 3):
            try:
                self.renew()
            except OSError:
                continue  # the store is unreachable now: retry; the lease expires if it stays so

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        prev, _ = self._current()
        if prev is not None and prev.get("token") == self.token:
            self.mailbox._rm(self.key)

    def _current(self) -> tuple[dict[str, Any] | None, str | None]:
        try:
            data = self.mailbox.fs.cat_file(self.key)
        except FileNotFoundError:
            return None, None
        etag = self.mailbox.fs.info(self.key, refresh=True).get("ETag") if self._s3 else _digest(data)
        try:
            obj = json.loads(data)
        except ValueError:
            obj = {}
        return (obj if isinstance(obj, dict) else {}), etag

    def _put(self, body: bytes, etag: str | None) -> bool:
        """Write the lease: created if absent (`etag` None), or replacing the version `etag`. False when another
        writer came first. S3 decides atomically; elsewhere the check and the write are two steps."""
        fs = self.mailbox.fs
        began = _clock()
        try:
            if etag is None:
                out = fs.pipe_file(self.key, body, mode="create")
            elif self._s3:
                out = fs.pipe_file(self.key, body, IfMatch=etag)
            else:
                if self._current()[1] != etag:
                    return False
                out = fs.pipe_file(self.key, body)
        except FileExistsError:
            return False
        except OSError as e:
            if "PreconditionFailed" in str(e) or "pre-condition" in str(e):
                return False
            raise
        self._etag = out.get("ETag") if self._s3 and isinstance(out, dict) else _digest(body)
        self._renewed = began
        return True


def _clock() -> float:
    """Seconds that go on while the process is stopped and while the machine sleeps (CLOCK_BOOTTIME on Linux)."""
    boottime = getattr(time, "CLOCK_BOOTTIME", None)
    return time.clock_gettime(boottime) if boottime is not None else time.monotonic()


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _holds(lease: Mapping[str, Any]) -> bool:
    """Whether a lease's holder may still be alive: not expired, and not a dead pid of this host."""
    from .channel import pid_alive

    expires = lease.get("expires_at")
    if not isinstance(expires, (int, float)) or expires < time.time():
        return False
    return not (lease.get("host") == socket.gethostname() and not pid_alive(lease.get("pid")))


def _busy(mailbox: RemoteMailbox, lease: Mapping[str, Any]) -> str:
    expires = lease.get("expires_at")
    left = f"; its lease expires in {max(0.0, expires - time.time()):.0f}s" if isinstance(expires, float) else ""
    return (
        f"{mailbox.url} already has a live Bridge (pid {lease.get('pid', '?')} on {lease.get('host', '?')}{left}); "
        "only one may consume a run's commands. Stop that training run first, or give this one another run"
    )


def find_runs(url: str, *, event_files: bool = False) -> list[tuple[str, RemoteMailbox]]:
    """As `channel.find_runs`, for a log directory at a URL: runs named by their path under it."""
    fs, base = filesystem(url)
    base = base.rstrip("/")
    try:
        keys = fs.find(base, refresh=True)
    except FileNotFoundError:
        return []
    dirs: set[str] = set()
    marker = f"/{DIRNAME}/mailbox.json"
    for key in keys:
        if key.endswith(marker):
            dirs.add(key[: -len(marker)])
        elif event_files and "tfevents" in key.rsplit("/", 1)[-1] and f"/{DIRNAME}/" not in key:
            dirs.add(key.rsplit("/", 1)[0])
    runs = []
    for d in dirs:
        rel = d[len(base) :].strip("/") or "."
        if any(part.startswith(".") for part in rel.split("/") if part != "."):
            continue
        runs.append((rel, RemoteMailbox(url.rstrip("/") + ("" if rel == "." else "/" + rel), fs=fs)))
    return sorted(runs, key=lambda r: r[0])


__all__ = ["LEASE_SECONDS", "POLL_SECONDS", "Journal", "Lease", "RemoteMailbox", "filesystem", "find_runs"]
