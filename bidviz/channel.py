"""The on-disk mailbox `<run>/.bidviz/`: atomic files, the owner lock, and the client side of sending.

Depends only on `bidviz.protocol`. Everything here is plain files, so it works on any file system two
processes (or two machines) share.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import stat
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from . import protocol
from .errors import BridgeBusyError, ChannelError

DIRNAME = ".bidviz"
LIVE_SECONDS = 5.0  # a bridge writes its heartbeat every second; older than this it is stale


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _owned_dir(d: Path) -> os.stat_result:
    st = os.lstat(d)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise ChannelError(f"{d} must be a real directory, not a symlink or file; remove it and start again")
    if st.st_uid != os.getuid():
        raise ChannelError(
            f"{d} belongs to uid {st.st_uid}, not to this user (uid {os.getuid()}); a mailbox is used only "
            "by its owner: run training as that user or remove the directory"
        )
    return st


class Mailbox:
    """Paths of one run's mailbox, and the atomic operations on them."""

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.run_dir = Path(run_dir)
        self.root = self.run_dir / DIRNAME
        self.inbox = self.root / "inbox"
        self.outbox = self.root / "outbox"
        self.tmp = self.root / "tmp"
        self.state_path = self.root / "state.json"
        self.journal_path = self.root / "journal.jsonl"
        self.owner_path = self.root / "owner"

    # -- layout ----------------------------------------------------------------------------------------

    def exists(self) -> bool:
        return self.inbox.is_dir()

    def create(self) -> None:
        """Create the tree with mode 0700, refusing one that is a symlink or belongs to another user."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for d in (self.root, self.inbox, self.outbox, self.tmp):
            try:
                os.mkdir(d, 0o700)
            except FileExistsError:
                pass
            st = _owned_dir(d)
            if stat.S_IMODE(st.st_mode) != 0o700:
                os.chmod(d, 0o700)

    def check_root(self) -> None:
        """Refuse (ChannelError) a mailbox that is a symlink, not a directory, or another user's; a missing one
        passes. Clients call this before reading or writing through a mailbox they did not create."""
        if os.path.lexists(self.root):
            _owned_dir(self.root)

    # -- atomic writes ---------------------------------------------------------------------------------

    def write_atomic(self, path: Path, data: bytes, *, fsync: bool = False) -> None:
        """Write `data` to `path` by tmp + rename, so readers never see half a file."""
        tmp = self.tmp / f"{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                if fsync:
                    f.flush()
                    os.fsync(f.fileno())
            os.rename(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        if fsync:
            _fsync_dir(path.parent)

    def append_journal(self, entry: Mapping[str, Any]) -> None:
        line = protocol.dumps(entry) + b"\n"
        fd = os.open(self.journal_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    def write_response(self, response: Mapping[str, Any]) -> None:
        self.write_atomic(self.outbox / f"{response['id']}.json", protocol.dumps(response), fsync=True)

    def write_state(self, state: Mapping[str, Any]) -> None:
        self.write_atomic(self.state_path, protocol.dumps(state))

    # -- reading ---------------------------------------------------------------------------------------

    def read_state(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.state_path.read_bytes())  # type: ignore[no-any-return]
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return None

    def read_journal(self) -> list[dict[str, Any]]:
        return list(self.iter_journal())

    def iter_journal(self) -> Iterator[dict[str, Any]]:
        try:
            f = open(self.journal_path, "rb")
        except FileNotFoundError:
            return
        with f:
            for raw in f:
                # A crash mid-append leaves one partial last line; skip what does not parse.
                try:
                    entry = json.loads(raw)
                except ValueError:
                    continue
                if isinstance(entry, dict):
                    yield entry

    def read_response(self, command_id: str) -> dict[str, Any] | None:
        if not protocol.is_response_id(command_id):
            raise ChannelError(f"not a command id: {command_id!r}")
        try:
            return json.loads((self.outbox / f"{command_id}.json").read_bytes())  # type: ignore[no-any-return]
        except FileNotFoundError:
            return None
        except ValueError:
            return None

    # -- client side -----------------------------------------------------------------------------------

    def send(self, command: protocol.Command) -> str:
        """Drop one command into the inbox (tmp + rename); returns its id."""
        if not self.exists():
            raise ChannelError(
                f"{self.run_dir} has no BIDViz mailbox ({self.root} is missing): no Bridge has run there. "
                "Start training with a Bridge on this run directory, or check the path"
            )
        data = protocol.dumps(command.to_dict())
        if len(data) > protocol.MAX_COMMAND_BYTES:
            raise protocol.ProtocolError(
                f"command is {len(data)} bytes; the limit is {protocol.MAX_COMMAND_BYTES}", type="TooLarge"
            )
        name = protocol.inbox_name(command.id, command.sent_at)
        tmp = self.tmp / f"{name}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, self.inbox / name)
        return command.id

    def wait_response(self, command_id: str, timeout: float, interval: float = 0.01) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout
        while True:
            resp = self.read_response(command_id)
            if resp is not None or time.monotonic() >= deadline:
                return resp
            time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
            interval = min(interval * 1.5, 0.1)

    def liveness(self, state: Mapping[str, Any] | None = None) -> str:
        """'live', 'stale' (no heartbeat for LIVE_SECONDS: crashed or hung), 'ended', or 'none'."""
        state = self.read_state() if state is None else state
        if not state:
            return "none"
        if state.get("closed"):
            return "ended"
        if state.get("host") == socket.gethostname() and not _pid_alive(state.get("pid")):
            return "stale"  # killed: no need to wait for the heartbeat to age
        age = time.time() - float(state.get("heartbeat") or 0)
        return "live" if age < LIVE_SECONDS else "stale"


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class OwnerLock:
    """The one live consumer of a mailbox.

    On one host an exclusive `flock` on `owner` decides (the kernel drops it when the process dies, so a
    crashed bridge never blocks a restart). The file's content (pid, host) lets a bridge on another host
    sharing the directory see a live owner by its heartbeat.
    """

    def __init__(self, mailbox: Mailbox) -> None:
        self.mailbox = mailbox
        self._fd: int | None = None

    def acquire(self) -> None:
        import fcntl

        path = self.mailbox.owner_path
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EACCES, errno.EAGAIN):
                raise
            raise BridgeBusyError(self._busy_message()) from None
        prev = self._read_owner(fd)
        host = socket.gethostname()
        if prev and prev.get("host") not in (None, host):
            state = self.mailbox.read_state()
            if self.mailbox.liveness(state) == "live":
                os.close(fd)
                raise BridgeBusyError(self._busy_message(prev))
        info = {"pid": os.getpid(), "host": host, "started_at": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, protocol.dumps(info), 0)
        os.fsync(fd)
        self._fd = fd

    def _read_owner(self, fd: int) -> dict[str, Any] | None:
        try:
            raw = os.pread(fd, 4096, 0)
            owner = json.loads(raw) if raw else None
            return owner if isinstance(owner, dict) else None
        except ValueError:
            return None

    def _busy_message(self, owner: Mapping[str, Any] | None = None) -> str:
        if owner is None:
            try:
                owner = json.loads(self.mailbox.owner_path.read_bytes())
            except (OSError, ValueError):
                owner = {}
        who = f"pid {owner.get('pid', '?')} on {owner.get('host', '?')}" if owner else "another process"
        return (
            f"{self.mailbox.run_dir} already has a live Bridge ({who}); only one may consume a run's commands. "
            "Stop that training run first, or give this one another run directory"
        )

    def release(self) -> None:
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)
            except OSError:
                pass
            os.close(self._fd)  # closing drops the flock
            self._fd = None


def find_runs(logdir: str | os.PathLike[str]) -> list[tuple[str, Mailbox]]:
    """Every run under `logdir` that has (or had) a bridge, as (relative name, mailbox), sorted by name."""
    root = Path(logdir)
    runs = []
    for dirpath, dirnames, _ in os.walk(root):
        if DIRNAME in dirnames:
            run_dir = Path(dirpath)
            rel = os.path.relpath(run_dir, root)
            runs.append(("." if rel == "." else rel, Mailbox(run_dir)))
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
    return sorted(runs, key=lambda r: r[0])
