"""The bridge's side of a local mailbox: what the mailroom and the recorder do to its files, as methods of
`channel.Mailbox`. `remote.RemoteMailbox` has the same methods over object operations, so the bridge works on
either without knowing which.

The journal is one append-only file here, fsynced at each write; `journal_tail` reads it from its last checkpoint
line, found reading backwards.

File-system events (inotify through watchdog) wake the bridge when a command arrives. On a network file system
(NFS, SMB, sshfs and other FUSE mounts, 9p, virtiofs...) a file written by another machine raises no event here, so
a run found on one (from /proc/self/mountinfo), or given `poll_interval=`, is served by listing the inbox every
NETWORK_POLL_SECONDS (or `poll_interval`) instead, with no watcher at all.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import stat
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from . import protocol
from .errors import BridgeBusyError, ProtocolError, StateError

CHECKPOINT_MARK = b'{"event":"checkpoint"'
_CHUNK = 1 << 16
NETWORK_POLL_SECONDS = 1.0  # the inbox of a run on a network file system is listed this often (one readdir each)
#: file systems where another machine's writes raise no inotify event here (any `fuse.*` type counts too)
NETWORK_FILESYSTEMS = frozenset(
    {"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "virtiofs", "vboxsf", "ceph", "glusterfs", "lustre", "gpfs"}
    | {"beegfs", "afs", "ocfs2", "gfs2", "davfs", "fuse"}
)


class JournalFile:
    """The journal, open for appending; each append is on disk (fsynced) when it returns."""

    full = False  # a file needs no rolling over

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def append(self, data: bytes, *, checkpoint: bool = False) -> None:
        written = 0
        while written < len(data):
            written += os.write(self._fd, data[written:])
        os.fsync(self._fd)

    def close(self) -> None:
        os.close(self._fd)


class BridgeFiles:
    """Mixed into `Mailbox`: listing, reading and removing command files, responses, pruning, the journal."""

    inbox: Path
    outbox: Path
    tmp: Path
    journal_path: Path
    claim_path: Callable[[str], Path]
    events = True  # inbox changes raise file-system events (watchdog); False: list every rescan_seconds

    def rescan_seconds(self, poll_interval: float | None) -> float | None:
        """How often the mailroom lists the inbox instead of waiting for events: `poll_interval` when given, about
        a second on a network file system, else None (events say when to look)."""
        if poll_interval is not None:
            return max(0.05, float(poll_interval))
        return NETWORK_POLL_SECONDS if network_filesystem(self.inbox) else None

    def inbox_version(self) -> int:
        """Changes when the inbox does (its mtime): a cheap look from the training thread."""
        try:
            return os.stat(self.inbox).st_mtime_ns
        except OSError:
            return 0

    def list_inbox(self) -> list[str]:
        return os.listdir(self.inbox)

    def read_command(self, name: str, source: Path | None = None) -> bytes:
        """The bytes of inbox file `name` (read through `source`, the bridge's claim, when given); ProtocolError for
        a symlink, a directory, a foreign or oversized file or a bad name, FileNotFoundError when it is gone."""
        path = source or self.inbox / name
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            raise ProtocolError(
                f"{name!r} is a symlink; command files must be regular files written into inbox/ by a client",
                type="NotAFile",
            )
        if not stat.S_ISREG(st.st_mode):
            what = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
            raise ProtocolError(f"{name!r} is {what}; the inbox takes one command file each", type="NotAFile")
        if st.st_uid != os.getuid():
            raise ProtocolError(
                f"{name!r} belongs to uid {st.st_uid}, not to the bridge's user (uid {os.getuid()}); commands are "
                "taken only from the user who runs training",
                type="NotOwned",
            )
        if st.st_size > protocol.MAX_COMMAND_BYTES:
            raise ProtocolError(
                f"{name!r} is {st.st_size} bytes; the limit is {protocol.MAX_COMMAND_BYTES}", type="TooLarge"
            )
        if not protocol.is_command_filename(name):
            raise ProtocolError(
                f"command files are named <milliseconds>-<32 hex id>.json; received {name!r}", type="BadFileName"
            )
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):  # swapped between the lstat and the open
                raise ProtocolError(f"{name!r} is not a regular file", type="NotAFile")
            return os.read(fd, protocol.MAX_COMMAND_BYTES + 1)
        finally:
            os.close(fd)

    def remove_command(self, name: str) -> None:
        """Take a handled command file out of the inbox; anything that is not a file is moved into tmp/."""
        file = self.inbox / name
        try:
            os.unlink(file)
        except FileNotFoundError:
            pass
        except OSError:  # a directory, or something else unlink refuses: out of the inbox all the same
            os.rename(file, self.tmp / f"quarantine-{time.time_ns()}-{name[:80]}")

    def has_response(self, command_id: str) -> bool:
        return (self.outbox / f"{command_id}.json").exists()

    def remove_response(self, command_id: str) -> None:
        try:
            os.unlink(self.outbox / f"{command_id}.json")
        except OSError:
            pass

    def prune(self, outbox_before: float | None, tmp_before: float) -> None:
        """Responses older than `outbox_before` (None: none); leftovers in tmp/ older than `tmp_before` (a claim
        lives as long as its command file is in the inbox: its mtime is its command's)."""
        if outbox_before is not None:
            _prune_dir(self.outbox, outbox_before, lambda name: False)
        _prune_dir(self.tmp, tmp_before, self._claimed)

    def _claimed(self, name: str) -> bool:
        prefix = self.claim_path("").name
        return name.startswith(prefix) and os.path.lexists(self.inbox / name[len(prefix) :])

    def open_journal(self) -> JournalFile:
        return JournalFile(self.journal_path)

    def journal_tail(self) -> Iterator[dict[str, Any] | None]:
        """The journal's lines from its last checkpoint (None for one that does not parse)."""
        return read_lines(self.journal_path, last_checkpoint(self.journal_path))


class OwnerLock:
    """The one live consumer of a mailbox.

    On one host an exclusive `flock` on `owner` decides (the kernel drops it when the process dies, so a
    crashed bridge never blocks a restart). The file's content (pid, host) lets a bridge on another host
    sharing the directory see a live owner by its heartbeat.
    """

    def __init__(self, mailbox: BridgeFiles) -> None:
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
            try:
                state = self.mailbox.read_state()
            except StateError:
                state = None  # an unreadable state shows no live heartbeat of the other host's bridge
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

    def held(self) -> bool:
        """Always: the kernel keeps the flock until this process dies."""
        return True

    def release(self) -> None:
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)
            except OSError:
                pass
            os.close(self._fd)  # closing drops the flock
            self._fd = None


def network_filesystem(path: str | os.PathLike[str], mountinfo: str | None = None) -> str | None:
    """The type of the network file system `path` is on (`nfs4`, `cifs`, `fuse.sshfs`...), or None: a local one, or
    no way to tell (no /proc/self/mountinfo: not Linux). `mountinfo` is that file's text, read when not given."""
    if mountinfo is None:
        try:
            with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
                mountinfo = f.read()
        except OSError:
            return None
    where = os.path.realpath(path)
    best, kind = "", ""
    for line in mountinfo.splitlines():
        before, sep, after = line.partition(" - ")
        fields = before.split()
        if not sep or len(fields) < 5 or not after.split():
            continue
        point = _unescape(fields[4])
        inside = where == point or where.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):  # the last of equal mount points is the one on top
            best, kind = point, after.split()[0]
    if kind in NETWORK_FILESYSTEMS or kind.startswith("fuse."):
        return kind
    return None


def _unescape(field: str) -> str:
    """A mountinfo path: space, tab, newline and backslash are written as octal escapes (\\040...)."""
    for code in ("040", "011", "012", "134"):
        field = field.replace("\\" + code, chr(int(code, 8)))
    return field


def _prune_dir(directory: Path, before: float, keep: Callable[[str], bool]) -> None:
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return
    for entry in entries:
        if keep(entry.name):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
            if st.st_mtime >= before:
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                os.unlink(entry.path)
        except OSError:
            continue


def last_checkpoint(path: Path) -> int:
    """The byte offset of the journal's last checkpoint line (0 when it has none), found reading backwards."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return 0
    with f:
        end = f.seek(0, 2)
        tail = b""
        while end > 0:
            start = max(0, end - _CHUNK)
            f.seek(start)
            block = f.read(end - start) + tail
            at = block.rfind(b"\n" + CHECKPOINT_MARK)
            if at >= 0:
                return start + at + 1
            if start == 0 and block.startswith(CHECKPOINT_MARK):
                return 0
            tail = block[: len(CHECKPOINT_MARK) + 1]  # a mark cut by the chunk boundary
            end = start
    return 0


def read_lines(path: Path, offset: int = 0) -> Iterator[dict[str, Any] | None]:
    """Each line of a journal from `offset` as a dict, or None for one that does not parse (a cut line, an edit)."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return
    with f:
        f.seek(offset)
        for raw in f:
            try:
                entry = json.loads(raw)
            except (ValueError, RecursionError):
                yield None
                continue
            yield entry if isinstance(entry, dict) else None
