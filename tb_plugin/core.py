"""The control-plane core: every HTTP route of DESIGN.md as a plain method over the log directory's mailboxes.

No HTTP here. The TensorBoard plugin (werkzeug) and the standalone server (Starlette) are thin shells: they run
`security.Guard.check` on the request, call one method, and turn its value or its `bidviz.errors.BIDVizError`
(a `PublicError` or a mailbox's `StateError`: each carries its `http_status`) into a response.

Runs come from a `RunSource` (TensorBoard's data provider in the plugin, a walk of the log directory in the
standalone server); a run is addressable only when its source lists it *and* its directory resolves strictly
inside the log directory.
"""

from __future__ import annotations

import ast
import json
import os
import stat
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from bidviz import kinds, protocol, tailing
from bidviz.channel import DIRNAME, Mailbox, is_url, mailbox_for, run_names
from bidviz.errors import ChannelError, PublicError
from bidviz.outcomes import outcome, who
from bidviz.runs import command_label, ended, no_status, status_row
from bidviz.series import Points, SeriesError, point_dicts, read_series, to_csv
from bidviz.tb_plugin.downloads import Downloads

DOWNLOADS = Downloads()  # the series read so far, for every ControlPlane of this process
JOURNAL_LIMIT = 500
PENDING = "pending"  # the status of `GET response` while the bridge has not answered (HTTP 202)
REPR_SHOWN = 4000
MAX_BODY = 2 * protocol.MAX_COMMAND_BYTES


class RunSource(Protocol):
    """Where the core learns which runs exist and which scalar tags they hold."""

    def run_names(self) -> Sequence[str]: ...

    def scalar_tags(self, run: str) -> Sequence[str] | None:
        """The run's scalar tags, or None to have the core read them from the event files."""
        ...


class DirectoryRuns:
    """Runs found by walking a local log directory: every directory holding event files or a BIDViz mailbox."""

    def __init__(self, logdir: str | os.PathLike[str]) -> None:
        self.logdir = Path(logdir)

    def run_names(self) -> list[str]:
        return run_names(self.logdir, event_files=True)

    def scalar_tags(self, run: str) -> None:
        return None


STORE_CHECK_SECONDS = 60.0


def _is_remote(logdir: str) -> bool:
    return "://" in logdir


class ControlPlane:
    """List runs, read a run's state and journal, send it commands and read their responses, export its series."""

    def __init__(self, logdir: str | None, source: RunSource, *, secret: str | None = None) -> None:
        self.logdir = logdir or ""
        self.source = source
        self.secret = secret if secret is not None else protocol.env_secret()

    # -- why control may be impossible -----------------------------------------------------------------------

    def control_problem(self) -> str | None:
        """Why no run of this log directory can be controlled, or None when it can."""
        if not self.logdir:
            return (
                "TensorBoard was started without a single --logdir (e.g. with --logdir_spec), so BIDViz cannot tell "
                "which directory a run lives in; start it with --logdir DIR to control runs (reading still works)"
            )
        if _is_remote(self.logdir):
            return self._store_problem()
        if not os.path.isdir(self.logdir):
            return f"the log directory {self.logdir} does not exist (yet); start training into it"
        return None

    def _store_problem(self) -> str | None:
        """Why runs on the store at `logdir` cannot be steered from here (no fsspec driver, no write access with
        this TensorBoard's credentials), or None; found by writing and removing a probe object, once a minute."""
        now = time.monotonic()
        cached = getattr(self, "_store_checked", None)
        if cached is not None and now - cached[0] < STORE_CHECK_SECONDS:
            return cached[1]
        problem = None
        try:
            from bidviz.remote import filesystem

            fs, base = filesystem(self.logdir)
            probe = f"{base.rstrip('/')}/.bidviz-write-probe-{os.getpid()}"
            fs.pipe_file(probe, b"")
            fs.rm_file(probe)
        except Exception as e:  # noqa: BLE001 - whatever the store says, the tab shows it and stays read-only
            problem = (
                f"the runs in {self.logdir} are read-only here: this TensorBoard cannot write there "
                f"({type(e).__name__}: {protocol.printable(str(e), 200)}). Give it credentials that can write the "
                "bucket (AWS_* variables or a profile; AWS_ENDPOINT_URL for another S3 API), install "
                "'tensorboard-bidviz[remote]', or run `bidviz` where they can"
            )
        self._store_checked = (now, problem)
        return problem

    # -- runs --------------------------------------------------------------------------------------------------

    def _listed(self) -> list[str]:
        try:
            return sorted(set(self.source.run_names()))
        except Exception as e:  # a data provider hiccup must not break the tab
            raise PublicError(503, f"TensorBoard could not list its runs yet ({e}); try again in a moment") from e

    def resolve(self, run: object) -> Any:
        """The directory of a listed run, strictly inside the log directory, or a PublicError saying why not."""
        if not isinstance(run, str) or not run:
            raise PublicError(400, "give the run: ?run=NAME, a run name as TensorBoard lists it")
        problem = self.control_problem()
        if problem:
            raise PublicError(409, problem)
        _check_name(run)
        names = self._listed()
        if run not in names:
            shown = ", ".join(names[:20]) + (" ..." if len(names) > 20 else "")
            raise PublicError(404, f"no run {_shown(run)} in {self.logdir}; runs: {shown or '(none yet)'}")
        where = self._run_path(run, None if _is_remote(self.logdir) else os.path.realpath(self.logdir))
        return where if _is_remote(self.logdir) else Path(where)

    def _run_path(self, run: str, root: str | None) -> str:
        """Where a run whose name passed `_check_name` lives: a URL on a store (`root` None), else its real path,
        refused when it resolves outside `root` (the log directory's real path)."""
        if root is None:
            return self.logdir.rstrip("/") + ("" if run == "." else "/" + run)  # a URL: a run on the store
        path = _real_path_under(root, run)
        if path != root and not path.startswith(root.rstrip(os.sep) + os.sep):
            raise PublicError(403, f"run {_shown(run)} refused: it resolves outside the log directory (a symlink?)")
        return path

    def _mailbox(self, run: object, *, write: bool = False) -> Mailbox:
        mailbox = mailbox_for(self.resolve(run))
        try:
            mailbox.check_root()
        except ChannelError as e:
            raise PublicError(403, str(e)) from None
        if write and not mailbox.exists():
            raise PublicError(
                409,
                f"run {_shown(run)} has no bridge: attach one in the training script "
                "(`from bidviz import Bridge`; `bridge = Bridge(run_dir)`; `bridge.step(step, loss=loss)`)",
            )
        if write and not is_url(mailbox.run_dir) and not os.access(mailbox.inbox, os.W_OK):
            raise PublicError(
                403,
                f"{mailbox.inbox} is not writable by this TensorBoard (uid {os.getuid()}); the log directory may "
                "be read-only here: run TensorBoard as the training user or use `bidviz` where it is writable",
            )
        return mailbox

    def runs(self) -> dict[str, Any]:
        """Every listed run's status row, in one pass: per run an lstat per part of its name and one for its
        mailbox, and state.json read only where a mailbox is (10,000 runs, one in ten with a bridge: ~0.45 s)."""
        problem = self.control_problem()
        names = self._listed()
        rows = []
        now = time.time()
        root = None if problem or _is_remote(self.logdir) else os.path.realpath(self.logdir)
        for name in names:
            row: dict[str, Any] = {"run": name, "live": "none", "controllable": False}
            rows.append(row)
            if problem is not None:
                continue
            try:
                _check_name(name)
                where = self._run_path(name, root)
            except PublicError as e:
                row["problem"] = e.message
                continue
            if root is not None and not os.path.lexists(os.path.join(where, DIRNAME)):
                row.update(no_status())  # no mailbox: nothing more to read
                continue
            mailbox = mailbox_for(where)
            row.update(status_row(mailbox, now=now))
            row["controllable"] = mailbox.exists() and "problem" not in row
        return {"runs": rows, "logdir": self.logdir, "problem": problem, "now": now}

    # -- reading -----------------------------------------------------------------------------------------------

    def state(self, run: object) -> dict[str, Any]:
        """The run's state.json; a corrupt or unreadable one is a StateError (its message names the file)."""
        return state_reply(run, self._mailbox(run))

    def journal(self, run: object, limit: object = JOURNAL_LIMIT, since: object = None) -> dict[str, Any]:
        """The last `limit` entries, read from the journal's end, and its `version`; given the `version` of an
        earlier answer as `since`, only `{"unchanged": true}` while nothing was appended (one stat)."""
        try:
            n = int(limit)  # type: ignore[call-overload]
        except (TypeError, ValueError):
            raise PublicError(400, f"limit must be a whole number; received {_shown(limit)}") from None
        n = max(1, min(n, 10_000))
        mailbox = self._mailbox(run)
        if is_url(mailbox.run_dir):  # a store's journal is objects: one LIST says whether it changed
            try:
                token, segments = mailbox.journal_version()
                version = f"{token}-{n}"
                if since == version:
                    return {"run": run, "version": version, "unchanged": True}
                entries = [slim_entry(e) for e in mailbox.last_entries(n, segments)]
            except OSError as e:
                raise PublicError(500, f"could not read the journal of {mailbox.run_dir}: {e}") from None
            return {"run": run, "version": version, "entries": entries}
        version = f"{tailing.file_version(mailbox.journal_path)}-{n}"
        if since == version:
            return {"run": run, "version": version, "unchanged": True}
        try:
            entries = [slim_entry(e) for e in tailing.last_entries(mailbox.journal_path, n)]
        except OSError as e:
            raise PublicError(500, f"could not read {mailbox.journal_path}: {e.strerror or e}") from None
        return {"run": run, "version": version, "entries": entries}

    def response(self, run: object, command_id: object) -> dict[str, Any]:
        """The response to a command, or `{"status": "pending"}` (answered 202) while the bridge has not applied it;
        a corrupt response file is a StateError naming it, not a response that stays pending forever."""
        if not isinstance(command_id, str) or not protocol.is_command_id(command_id):
            shown = _shown(command_id)
            raise PublicError(400, f"id must be a command id (32 hex digits) as POST command returns: {shown}")
        mailbox = self._mailbox(run)
        resp = mailbox.read_response(command_id)
        if resp is None:
            return {"id": command_id, "status": PENDING}
        if resp.get("status") not in protocol.STATUSES:  # a hand-made file must not pass for one (or for pending)
            raise PublicError(
                409,
                f"{mailbox.outbox / command_id}.json is not a response: its status is {_shown(resp.get('status'))}, "
                f"not one of {', '.join(protocol.STATUSES)}; remove the file",
            )
        return resp

    @staticmethod
    def kinds() -> dict[str, Any]:
        """GET kinds: the command kinds, metric kinds and metric-set format, from the one table."""
        return kinds.public_table()

    def scalar_tags(self, run: object) -> dict[str, Any]:
        run_dir = self.resolve(run)
        tags = self.source.scalar_tags(str(run))
        if tags is None:
            tags = sorted(self._read_scalars(run_dir))
        return {"run": run, "tags": sorted(tags)}

    def data(self, run: object, tag: object, fmt: object = "json") -> tuple[bytes, str, str]:
        """A series' points for download: (body, content type, file name)."""
        if fmt not in ("csv", "json"):
            raise PublicError(400, f"format must be csv or json; received {fmt!r}")
        if not isinstance(tag, str) or not tag:
            raise PublicError(400, "give the series: ?tag=NAME (see GET tags?run=)")
        run_dir = self.resolve(run)
        stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{run}_{tag}").strip("._") or "series"
        kind = "application/json" if fmt == "json" else "text/csv"
        if not is_url(run_dir):  # kept between requests: only what was appended is read and encoded
            try:
                body = DOWNLOADS.body(run_dir, str(run), tag, str(fmt))
            except (OSError, ValueError) as e:
                raise PublicError(500, f"cannot read the event files of {run_dir}: {e}") from None
            if body is not None:
                return body, kind, f"{stem}.{fmt}"
        series = self._read_scalars(run_dir)
        if tag not in series:
            shown = ", ".join(sorted(series)[:30])
            raise PublicError(404, f"run {run!r} has no scalar series {tag!r}; it has: {shown or '(none)'}")
        points = series[tag]
        if fmt == "json":
            body = {"run": run, "tag": tag, "points": point_dicts(points)}
            return protocol.dumps(body), "application/json", f"{stem}.json"
        return to_csv({tag: points}, [tag], tag_column=False).encode(), "text/csv", f"{stem}.csv"

    @staticmethod
    def _read_scalars(run_dir: Any) -> Mapping[str, Points]:
        if not is_url(run_dir):
            try:
                return DOWNLOADS.series(run_dir)
            except (OSError, ValueError) as e:
                raise PublicError(500, f"cannot read the event files of {run_dir}: {e}") from None
        try:
            series, _ = read_series(run_dir)
        except SeriesError as e:
            raise PublicError(500, str(e)) from e
        return series

    # -- writing -----------------------------------------------------------------------------------------------

    def command(self, body: bytes, *, sender: str) -> dict[str, Any]:
        """POST command: body {"run", "kind", "args"}; drops one command in the run's inbox, returns {"id"}."""
        request = _json_body(body)
        unknown = sorted(set(request) - {"run", "kind", "args", "expires_in"})
        if unknown:
            raise PublicError(
                400,
                f"a command takes run, kind, args and expires_in; unknown {protocol.printable(', '.join(unknown))}",
            )
        mailbox = self._mailbox(request.get("run"), write=True)
        kind = request.get("kind")
        if not isinstance(kind, str):
            raise PublicError(400, f"kind must be one of {', '.join(protocol.KINDS)}; received {_shown(kind)}")
        expires_in = _expires_in(request)
        why = ended(mailbox) if "expires_in" not in request else None  # an explicit expiry queues on purpose
        if why is not None:
            raise PublicError(
                409,
                f"nothing was sent: {why}, so no bridge would apply the command. Start training again, or send it "
                'with "expires_in" (seconds, or null for never) to leave it for a bridge that resumes this run',
            )
        try:
            command = protocol.make_command(
                kind, request.get("args") or {}, sender=sender, secret=self.secret, expires_in=expires_in
            )
            command_id = mailbox.send(command)
        except protocol.ProtocolError as e:
            raise PublicError(413 if e.type == "TooLarge" else 400, str(e)) from None
        except RecursionError:
            raise PublicError(400, "the command's args are nested too deeply") from None
        except ChannelError as e:
            raise PublicError(409, str(e)) from None
        except OSError as e:
            raise PublicError(
                503, f"could not write the command into {mailbox.inbox}: {e.strerror or e}; is the disk full?"
            ) from None
        return {"id": command_id, "live": status_row(mailbox)["live"]}

    def check(self, body: bytes) -> dict[str, Any]:
        """Syntax-check metric or terminal code without running it: {"ok"} or the error with its line."""
        request = _json_body(body)
        code = request.get("code")
        if not isinstance(code, str):
            raise PublicError(400, 'check takes {"code": "..."}')
        if len(code) > kinds.MAX_CODE_CHARS:
            return {"ok": False, "error": f"the code is longer than {kinds.MAX_CODE_CHARS} characters", "line": None}
        try:
            ast.parse(code, "<metric>", "exec")
        except SyntaxError as e:
            return {"ok": False, "error": f"{type(e).__name__}: {e.msg}", "line": e.lineno, "column": e.offset}
        except ValueError as e:  # null bytes
            return {"ok": False, "error": f"ValueError: {e}", "line": None, "column": None}
        except (RecursionError, MemoryError):  # nested past what the compiler takes
            return {"ok": False, "error": "the code is nested too deeply to compile", "line": None, "column": None}
        if not code.strip():
            return {"ok": False, "error": "the code is empty", "line": None, "column": None}
        return {"ok": True}


COMMAND_EXPIRES = 120.0  # seconds a command sent over HTTP waits to be claimed: the tab waits that long for it


def _expires_in(request: dict[str, Any]) -> float | None:
    """`expires_in` of a POST command: seconds (> 0) after which an unclaimed command is answered Expired and never
    applied; null for never; COMMAND_EXPIRES when absent."""
    value = request.get("expires_in", COMMAND_EXPIRES)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1e9:
        raise PublicError(400, f"expires_in must be a number of seconds > 0, or null; received {_shown(value)}")
    return float(value)


def _check_name(run: str) -> None:
    """Refuse (400) a run name that is not a relative path inside the log directory, whoever listed it."""
    try:
        run.encode("utf-8")
    except UnicodeEncodeError:
        raise PublicError(400, f"run {_shown(run)} refused: a run name is valid Unicode text") from None
    parts = run.replace(os.altsep or os.sep, os.sep).split(os.sep)
    if "\x00" in run or os.path.isabs(run) or run.startswith(("/", "\\")) or ".." in parts:
        raise PublicError(400, f"run {_shown(run)} refused: a run is a relative name inside the log directory")


def _real_path_under(root: str, run: str) -> str:
    """`os.path.realpath(root/run)` for a real `root` and a name that passed `_check_name`, in one lstat per part
    of the name instead of one per part of the whole path: realpath proper only once a part is a symlink."""
    path = root
    for part in run.replace(os.altsep or os.sep, os.sep).split(os.sep):
        if part in ("", "."):
            continue
        path = os.path.join(path, part)
        try:
            link = stat.S_ISLNK(os.lstat(path).st_mode)
        except OSError:
            link = False  # missing (realpath keeps it as written) or unreadable (its check refuses it later)
        if link:
            return os.path.realpath(os.path.join(root, run))
    return path


def _shown(value: object, limit: int = 80) -> str:
    """A value from a request, safe to put in a message: its repr, printable and bounded."""
    return protocol.printable(repr(value), limit)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON; send numbers as finite numbers or strings")


def _json_body(body: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or a 400/413 PublicError whatever the bytes are (nested 100k deep,
    4301-digit numbers, NaN, invalid UTF-8); lone surrogates inside strings are refused where they are used."""
    if len(body) > MAX_BODY:
        raise PublicError(413, f"request body is {len(body)} bytes; the limit is {MAX_BODY}")
    try:
        obj = json.loads(body.decode("utf-8"), parse_constant=_no_constant)
    except RecursionError:
        raise PublicError(400, "the body must be a JSON object; it is nested too deeply") from None
    except ValueError as e:  # UnicodeDecodeError and JSONDecodeError included
        raise PublicError(400, f"the body must be a JSON object: {protocol.printable(str(e), 200)}") from None
    if not isinstance(obj, dict):
        raise PublicError(400, f"the body must be a JSON object; received {type(obj).__name__}")
    return obj


def state_reply(run: object, mailbox: Mailbox) -> dict[str, Any]:
    """`GET state`'s answer (and the live server's `state` event): the run's state.json and its liveness."""
    state = mailbox.read_state() if mailbox.exists() else None
    if state is None:
        return {"run": run, "live": "none", "state": None, "now": time.time()}
    return {"run": run, "live": mailbox.liveness(state), "state": state, "now": time.time()}


def slim_entry(entry: dict[str, Any]) -> dict[str, Any]:
    """A journal entry for the tab: its label (for a line written before labels, from its kind), the response's
    status and a bounded repr, not its whole result."""
    out = {k: v for k, v in entry.items() if k != "response"}
    if entry.get("event") == "command":
        out["label"] = command_label(entry)
    resp = entry.get("response")
    if isinstance(resp, dict):
        text = resp.get("repr")
        if isinstance(text, str) and len(text) > REPR_SHOWN:
            text = text[:REPR_SHOWN] + "..."
        out["repr"] = text
    if entry.get("event") == "command":
        out["outcome"] = outcome(entry, resp.get("result") if isinstance(resp, dict) else None)
        out["who"] = who(entry.get("sender"))
    return out
