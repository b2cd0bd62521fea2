"""The `bidviz` command line: send commands to a run's bridge, read its state and journal, export its series.

It imports only the shared contract (`bidviz.protocol`, `bidviz.channel`) and the standard library, so it
starts fast and never needs torch or tensorboard; `export` loads the event-file reader when it runs.

Exit status: 0 applied, 1 rejected or failed, 2 usage, 3 no response in time (or no mailbox at all).
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import json
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from bidviz import __version__, protocol
from bidviz.channel import ChannelError, Mailbox, find_runs

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NO_RESPONSE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
SECRET_ENV = "BIDVIZ_SECRET"
EXPORT_FORMAT = "bidviz_metrics"
DEFAULT_WAIT = 30.0

Args = dict[str, Any]
Response = dict[str, Any]
#: prints what an applied command did, given the args it was sent with and its response
Show = Callable[[Args, Response], None]


class CliError(Exception):
    """Ends the command: `error: <message>` on stderr and exit status `code`."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


# -- formatting ----------------------------------------------------------------------------------------


def _value(value: Any) -> str:
    """A value as it would be typed on the command line (JSON), e.g. 0.01, [0.9, 0.99], "adam", true."""
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def _short(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.0f}h"
    return f"{seconds / 86400:.0f}d"


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return _value(value)


def _at_step(response: Response) -> str:
    step = response.get("step")
    return f" at step {step}" if step is not None else ""


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]], out: TextIO) -> None:
    rows = [list(headers), *(list(r) for r in rows)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(headers))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip(), file=out)


def _print_json(obj: Any, out: TextIO | None = None) -> None:
    print(json.dumps(obj, indent=2), file=out or sys.stdout)


def _error_line(error: Mapping[str, Any] | None) -> str:
    """`<type>: <message>` of a response's or journal entry's error, with the user's line when known."""
    if not error:
        return "unknown error (the response carries no error details)"
    etype = str(error.get("type") or "Error")
    message = str(error.get("message") or "").strip()
    text = message if message.startswith(f"{etype}:") else f"{etype}: {message}".rstrip(": ")
    line = error.get("line")
    if line is not None and f"line {line}" not in text:
        text += f" (line {line})"
    return text


def _print_error(response: Response, label: str | None = None) -> None:
    where = f" (in {label})" if label else ""
    status = response.get("status")
    if status not in protocol.STATUSES:
        print(f"error: the bridge answered with unknown status {status!r}{where}", file=sys.stderr)
        return
    error = response.get("error")
    print(f"error: {_error_line(error)}{where}", file=sys.stderr)
    traceback = str((error or {}).get("traceback") or "").rstrip()
    if traceback:
        print(traceback, file=sys.stderr)


# -- sending -------------------------------------------------------------------------------------------


def _sender() -> str:
    return f"cli:{protocol.default_sender()}"


def _make_commands(requests: Sequence[tuple[str, Args]], labels: Sequence[str] | None) -> list[protocol.Command]:
    """Build (and sign) every command before sending any, so one bad argument sends nothing."""
    secret = os.environ.get(SECRET_ENV) or None
    sender = _sender()
    commands: list[protocol.Command] = []
    last_ms = -1
    for i, (kind, args) in enumerate(requests):
        # Inbox names start with the sending millisecond; distinct ones keep the bridge applying in our order.
        while int(time.time() * 1000) <= last_ms:
            time.sleep(0.0005)
        try:
            command = protocol.make_command(kind, args, sender=sender, secret=secret)
        except protocol.ProtocolError as e:
            where = f"{labels[i]}: " if labels else ""
            raise CliError(f"{where}{e}", EXIT_USAGE) from None
        last_ms = int(command.sent_at * 1000)
        commands.append(command)
    return commands


def _deliver(mailbox: Mailbox, commands: Sequence[protocol.Command]) -> None:
    for command in commands:
        try:
            mailbox.send(command)
        except protocol.ProtocolError as e:
            raise CliError(str(e), EXIT_USAGE) from None
        except ChannelError as e:
            raise CliError(str(e), EXIT_NO_RESPONSE) from None


def _wait_all(mailbox: Mailbox, commands: Sequence[protocol.Command], wait: float) -> list[Response | None]:
    deadline = time.monotonic() + wait
    return [mailbox.wait_response(c.id, max(0.0, deadline - time.monotonic())) for c in commands]


def _why_no_response(mailbox: Mailbox, wait: float) -> str:
    """Why a bridge may not have answered, from its state.json."""
    state = mailbox.read_state()
    liveness = mailbox.liveness(state)
    state = state or {}
    age = _age(time.time() - float(state.get("heartbeat") or 0))
    who = f"pid {state.get('pid', '?')} on {state.get('host', '?')}"
    if liveness == "live":
        return (
            f"its bridge ({who}) is live (heartbeat {age} ago) but did not answer within {wait:g}s; it may be in a "
            "long step or a slow metric: try a longer --wait"
        )
    if liveness == "stale":
        return f"its bridge ({who}) is stale: no heartbeat for {age}; the training process hung, crashed or was killed"
    if liveness == "ended":
        return f"its bridge ({who}) has ended: training closed it {age} ago"
    return "no bridge has ever written its state there: training has not started a Bridge on this run yet"


def _no_response_message(mailbox: Mailbox, pending: Sequence[protocol.Command], wait: float) -> str:
    ids = ", ".join(c.id for c in pending)
    many = len(pending) > 1
    when = "when a Bridge starts on that run" if mailbox.liveness() == "none" else "if that run's bridge comes back"
    return (
        f"no response from {mailbox.run_dir} within {wait:g}s: {_why_no_response(mailbox, wait)}. "
        f"The command{'s' if many else ''} ({ids}) stay{'' if many else 's'} queued in {mailbox.inbox} and will be "
        f"applied {when}"
    )


def _send(
    opts: argparse.Namespace,
    requests: Sequence[tuple[str, Args]],
    show: Show,
    *,
    many: bool = False,
    labels: Sequence[str] | None = None,
) -> int:
    """Send `requests` to run `opts.run`, wait for their responses and report them; returns the exit status.

    `many`: the verb sends several commands, so `--json` prints a list and errors name the command.
    """
    mailbox = Mailbox(opts.run)
    commands = _make_commands(requests, labels if many else None)
    _deliver(mailbox, commands)
    if opts.no_wait:
        return _report_sent(commands, opts.json, many)
    try:
        responses = _wait_all(mailbox, commands, opts.wait)
    except KeyboardInterrupt:
        ids = ", ".join(c.id for c in commands)
        print(f"interrupted; the command(s) {ids} stay queued and will still be applied", file=sys.stderr)
        return EXIT_INTERRUPTED
    if opts.json:
        _print_responses_json(commands, responses, many)
    status = EXIT_OK
    for i, (command, response) in enumerate(zip(commands, responses, strict=True)):
        if response is None:
            continue
        if response.get("status") == "applied":
            if not opts.json:
                show(command.args, response)
        else:
            _print_error(response, labels[i] if labels and many else None)
            status = EXIT_FAILED
    pending = [c for c, r in zip(commands, responses, strict=True) if r is None]
    if pending:
        print(f"error: {_no_response_message(mailbox, pending, opts.wait)}", file=sys.stderr)
        status = EXIT_NO_RESPONSE
    return status


def _report_sent(commands: Sequence[protocol.Command], as_json: bool, many: bool) -> int:
    if as_json:
        sent = [{"id": c.id, "kind": c.kind, "status": "sent"} for c in commands]
        _print_json(sent if many else sent[0])
    else:
        for c in commands:
            print(c.id)
    return EXIT_OK


def _print_responses_json(
    commands: Sequence[protocol.Command], responses: Sequence[Response | None], many: bool
) -> None:
    shown = [
        r if r is not None else {"id": c.id, "kind": c.kind, "status": "pending"}
        for c, r in zip(commands, responses, strict=True)
    ]
    _print_json(shown if many else shown[0])


# -- reading the mailbox -------------------------------------------------------------------------------


def _mailbox(run: str) -> Mailbox:
    mailbox = Mailbox(run)
    if not mailbox.root.is_dir():
        raise CliError(
            f"{run} has no BIDViz mailbox ({mailbox.root} is missing): no Bridge has run there. "
            "Start training with a Bridge on this run directory, or check the path",
            EXIT_NO_RESPONSE,
        )
    return mailbox


def _state(run: str) -> dict[str, Any]:
    state = _mailbox(run).read_state()
    if state is None:
        raise CliError(
            f"{run} has no readable state.json yet: its Bridge has not started (or is writing it); try again",
            EXIT_NO_RESPONSE,
        )
    return state


def _metrics(state: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    metrics = state.get("metrics") or {}
    return {str(k): v for k, v in metrics.items() if isinstance(v, dict)} if isinstance(metrics, dict) else {}


# -- verbs: status -------------------------------------------------------------------------------------


def _steps_per_sec(state: Mapping[str, Any]) -> Any:
    for key in ("steps_per_sec", "steps_per_second", "steps_per_s"):
        if key in state:
            return state[key]
    return None


def _status_row(name: str, mailbox: Mailbox) -> dict[str, Any]:
    state = mailbox.read_state()
    heartbeat = (state or {}).get("heartbeat")
    return {
        "run": name,
        "path": str(mailbox.run_dir),
        "state": mailbox.liveness(state),
        "step": (state or {}).get("step"),
        "steps_per_sec": _steps_per_sec(state or {}),
        "heartbeat": heartbeat,
        "heartbeat_age": time.time() - float(heartbeat) if isinstance(heartbeat, (int, float)) else None,
        "pid": (state or {}).get("pid"),
        "host": (state or {}).get("host"),
        "paused": (state or {}).get("paused"),
    }


def cmd_status(opts: argparse.Namespace) -> int:
    if not Path(opts.logdir).is_dir():
        raise CliError(f"{opts.logdir} is not a directory; give the log directory that holds the runs", EXIT_USAGE)
    rows = [_status_row(name, mailbox) for name, mailbox in find_runs(opts.logdir)]
    if opts.json:
        _print_json(rows)
        return EXIT_OK
    if not rows:
        print(f"no runs with a BIDViz mailbox under {opts.logdir}", file=sys.stderr)
        return EXIT_OK
    _table(
        ["RUN", "STATE", "STEP", "STEPS/S", "HEARTBEAT", "PID", "PAUSED"],
        (
            [
                r["run"],
                r["state"],
                _number(r["step"]),
                f"{r['steps_per_sec']:.1f}" if isinstance(r["steps_per_sec"], (int, float)) else "-",
                f"{_age(r['heartbeat_age'])} ago" if r["heartbeat_age"] is not None else "-",
                _number(r["pid"]),
                {True: "yes", False: "no"}.get(r["paused"], "-"),
            ]
            for r in rows
        ),
        sys.stdout,
    )
    return EXIT_OK


# -- verbs: hyperparameters ----------------------------------------------------------------------------


def parse_assignment(text: str) -> tuple[str, Any]:
    """`NAME=VALUE` with VALUE as JSON when it parses (0.01, true, [0.9, 0.99], "x"), else as a plain string."""
    name, sep, raw = text.partition("=")
    if not sep or not name:
        raise CliError(f"expected NAME=VALUE, e.g. lr=0.01; received {text!r}", EXIT_USAGE)
    try:
        protocol.check_name(name, "hyperparameter name")
    except protocol.ProtocolError as e:
        raise CliError(str(e), EXIT_USAGE) from None
    try:
        value = json.loads(raw, parse_constant=_no_constant)
    except ValueError:
        value = raw
    return name, value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # NaN/Infinity: keep them as the plain string the user typed


def _show_set(args: Args, response: Response) -> None:
    result = response.get("result")
    result = result if isinstance(result, dict) else {}
    name = result.get("name", args["name"])
    value = result.get("value", args["value"])
    was = f" (was {_value(result['old'])})" if "old" in result else ""
    print(f"{name} = {_value(value)}{was}{_at_step(response)}")


def cmd_set(opts: argparse.Namespace) -> int:
    assignments = [parse_assignment(a) for a in opts.assignments]
    requests = [("set_hparam", {"name": n, "value": v}) for n, v in assignments]
    return _send(opts, requests, _show_set, many=True, labels=[f"set {n}" for n, _ in assignments])


# -- verbs: metrics ------------------------------------------------------------------------------------


def _read_code(opts: argparse.Namespace) -> str:
    if opts.file is not None and opts.code is not None:
        raise CliError("give the metric's CODE or --file FILE, not both", EXIT_USAGE)
    if opts.file is not None:
        try:
            return Path(opts.file).read_text()
        except OSError as e:
            raise CliError(f"cannot read --file {opts.file}: {e.strerror or e}", EXIT_USAGE) from None
    if opts.code is None:
        raise CliError("give the metric's CODE (or - to read it from stdin, or --file FILE)", EXIT_USAGE)
    return sys.stdin.read() if opts.code == "-" else str(opts.code)


def _show_metric_added(args: Args, response: Response) -> None:
    print(f"metric {args['name']} added (every {args['every']}, kind {args['kind']}){_at_step(response)}")


def cmd_metric_add(opts: argparse.Namespace) -> int:
    args = {
        "name": opts.name,
        "code": _read_code(opts),
        "every": opts.every,
        "replace": opts.replace,
        "kind": opts.kind,
    }
    return _send(opts, [("add_metric", args)], _show_metric_added)


#: action -> (command kind, what it did, help)
_METRIC_ACTIONS = {
    "rm": ("remove_metric", "removed", "remove a metric (its series stay in the event files)"),
    "pause": ("pause_metric", "paused", "stop running a metric until `metric resume`"),
    "resume": ("resume_metric", "resumed", "run a paused or disabled metric again"),
}


def cmd_metric_simple(opts: argparse.Namespace) -> int:
    kind, done, _ = _METRIC_ACTIONS[opts.metric_action]

    def show(args: Args, response: Response) -> None:
        print(f"metric {args['name']} {done}{_at_step(response)}")

    return _send(opts, [(kind, {"name": opts.name})], show)


def _metric_row(name: str, m: Mapping[str, Any]) -> list[str]:
    return [
        name,
        str(m.get("status", "-")),
        str(m.get("kind", "-")),
        str(m.get("every", "-")),
        _number(m.get("last_step")),
        _short(_number(m.get("last_value")), 24),
        str(m.get("error_count", 0)),
        _short(str(m.get("code", "")), 48),
    ]


def cmd_metric_ls(opts: argparse.Namespace) -> int:
    metrics = _metrics(_state(opts.run))
    if opts.json:
        _print_json(metrics)
        return EXIT_OK
    if not metrics:
        print(f"no metrics on {opts.run}", file=sys.stderr)
        return EXIT_OK
    headers = ["NAME", "STATUS", "KIND", "EVERY", "STEP", "VALUE", "ERRORS", "CODE"]
    _table(headers, (_metric_row(n, m) for n, m in metrics.items()), sys.stdout)
    for name, m in metrics.items():
        if m.get("last_error"):
            print(f"{name}: last error: {_error_line(m['last_error'])}")
    return EXIT_OK


def metric_set(state: Mapping[str, Any]) -> dict[str, Any]:
    """The portable description of a run's metrics, as `metric export` writes and `metric import` reads it."""
    return {
        EXPORT_FORMAT: 1,
        "metrics": [
            {"name": n, "code": m.get("code", ""), "every": m.get("every", 1), "kind": m.get("kind", "auto")}
            for n, m in _metrics(state).items()
        ],
    }


def cmd_metric_export(opts: argparse.Namespace) -> int:
    data = metric_set(_state(opts.run))
    text = json.dumps(data, indent=2) + "\n"
    if opts.file == "-":
        sys.stdout.write(text)
        return EXIT_OK
    try:
        Path(opts.file).write_text(text)
    except OSError as e:
        raise CliError(f"cannot write {opts.file}: {e.strerror or e}", EXIT_FAILED) from None
    print(f"exported {len(data['metrics'])} metric(s) to {opts.file}")
    return EXIT_OK


def _load_metric_set(file: str) -> list[dict[str, Any]]:
    try:
        text = sys.stdin.read() if file == "-" else Path(file).read_text()
        data = json.loads(text)
    except OSError as e:
        raise CliError(f"cannot read {file}: {e.strerror or e}", EXIT_USAGE) from None
    except ValueError as e:
        raise CliError(f"{file} is not JSON: {e}", EXIT_USAGE) from None
    if not isinstance(data, dict) or data.get(EXPORT_FORMAT) != 1 or not isinstance(data.get("metrics"), list):
        raise CliError(
            f'{file} is not a metric set: expected {{"{EXPORT_FORMAT}": 1, "metrics": [...]}} '
            "as `bidviz metric export` writes it",
            EXIT_USAGE,
        )
    metrics: list[dict[str, Any]] = data["metrics"]
    for i, m in enumerate(metrics):
        if not isinstance(m, dict) or not isinstance(m.get("name"), str) or not isinstance(m.get("code"), str):
            raise CliError(f"{file}: metrics[{i}] needs a string 'name' and 'code'; received {m!r}", EXIT_USAGE)
    return metrics


def cmd_metric_import(opts: argparse.Namespace) -> int:
    metrics = _load_metric_set(opts.file)
    if not metrics:
        print(f"{opts.file} holds no metrics; nothing to import", file=sys.stderr)
        return EXIT_OK
    fields = ("name", "code", "every", "kind")
    requests = [("add_metric", {**{k: m[k] for k in fields if k in m}, "replace": True}) for m in metrics]
    labels = [f"metric {m['name']}" for m in metrics]
    return _send(opts, requests, _show_metric_added, many=True, labels=labels)


# -- verbs: diagnostics, eval, run control -------------------------------------------------------------


def _show_diagnostics(args: Args, response: Response) -> None:
    names = response.get("result")
    names = [str(n) for n in names] if isinstance(names, list) else []
    listed = f": {', '.join(names)}" if names else ""
    print(f"added {len(names)} diagnostic metric(s){_at_step(response)}{listed}")


def cmd_diagnostics(opts: argparse.Namespace) -> int:
    return _send(opts, [("add_diagnostics", {"every": opts.every})], _show_diagnostics)


def _show_eval(args: Args, response: Response) -> None:
    text = response.get("repr")
    print(text if isinstance(text, str) else _value(response.get("result")))


def cmd_eval(opts: argparse.Namespace) -> int:
    code = sys.stdin.read() if opts.code == "-" else opts.code
    return _send(opts, [("eval", {"code": code, "now": opts.now})], _show_eval)


_CONTROL_DONE = {
    "pause": "paused{at}; training waits in bridge.step() until `bidviz resume`",
    "resume": "resumed{at}",
    "stop": "stop requested{at}; the training loop ends when it checks bridge.should_stop",
}


def cmd_control(opts: argparse.Namespace) -> int:
    def show(args: Args, response: Response) -> None:
        print(_CONTROL_DONE[opts.verb].format(at=_at_step(response)))

    return _send(opts, [(opts.verb, {})], show)


# -- verbs: journal ------------------------------------------------------------------------------------


def _journal_what(entry: Mapping[str, Any]) -> str:
    event = str(entry.get("event", "?"))
    if event == "command":
        args = entry.get("args")
        args_text = f" {_short(json.dumps(args, separators=(',', ':')), 120)}" if args else ""
        outcome = f" -> {entry.get('status', '?')}"
        if entry.get("status") not in (None, "applied") and entry.get("error"):
            outcome += f": {_error_line(entry['error'])}"
        return f"{entry.get('kind', '?')}{args_text}{outcome}"
    metric = f" {entry['metric']}" if "metric" in entry else ""
    reason = f": {entry['reason']}" if entry.get("reason") else ""
    error = f" -> {_error_line(entry['error'])}" if entry.get("error") else ""
    return f"{event}{metric}{reason}{error}"


def _journal_time(entry: Mapping[str, Any]) -> str:
    t = entry.get("time")
    if not isinstance(t, (int, float)):
        return "????-??-?? ??:??:??"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def cmd_journal(opts: argparse.Namespace) -> int:
    mailbox = _mailbox(opts.run)
    entries: Iterable[dict[str, Any]] = mailbox.iter_journal()
    if opts.tail is not None:
        entries = deque(entries, maxlen=opts.tail)
    entries = list(entries)
    if opts.json:
        _print_json(entries)
        return EXIT_OK
    if not entries:
        print(f"the journal of {opts.run} is empty: no command has reached its bridge yet", file=sys.stderr)
    rows = [(_journal_time(e), _number(e.get("step")), str(e.get("sender") or "-"), _journal_what(e)) for e in entries]
    step_w = max((len(r[1]) for r in rows), default=0)
    sender_w = max((len(r[2]) for r in rows), default=0)
    for when, step, sender, what in rows:
        print(f"{when}  {step.rjust(step_w)}  {sender.ljust(sender_w)}  {what}")
    return EXIT_OK


# -- verbs: export -------------------------------------------------------------------------------------


def _select_tags(series: Mapping[str, Any], patterns: Sequence[str] | None, run: str) -> list[str]:
    """Tags to export: all, or those equal to or matching (shell-style, e.g. 'bidviz/*') each --tag."""
    tags = sorted(series)
    if not tags:
        raise CliError(f"{run} holds no scalar series in its event files", EXIT_FAILED)
    if not patterns:
        return tags
    chosen: list[str] = []
    for pattern in patterns:
        matched = [t for t in tags if t == pattern or fnmatch.fnmatchcase(t, pattern)]
        if not matched:
            raise CliError(
                f"no scalar series {pattern!r} in {run}; it has: {_short(', '.join(tags), 600)}", EXIT_FAILED
            )
        chosen += [t for t in matched if t not in chosen]
    return chosen


def _write_csv(series: Mapping[str, Any], tags: Sequence[str], out: TextIO) -> None:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["tag", "step", "wall_time", "value"])
    for tag in tags:
        for step, wall_time, value in series[tag]:
            writer.writerow([tag, step, repr(float(wall_time)), repr(float(value))])


def _write_json(series: Mapping[str, Any], tags: Sequence[str], out: TextIO) -> None:
    data = {
        tag: [
            {"step": step, "wall_time": wall_time, "value": protocol.to_json_value(float(value))}
            for step, wall_time, value in series[tag]
        ]
        for tag in tags
    }
    json.dump(data, out, indent=1, allow_nan=False)
    out.write("\n")


def _read_series(run: str) -> Mapping[str, Any]:
    if not Path(run).exists():
        raise CliError(f"{run} does not exist; give a run directory (or an event file)", EXIT_USAGE)
    try:
        from bidviz.writers import read_scalars
    except ImportError as e:
        raise CliError(f"cannot read event files: {e}", EXIT_FAILED) from None
    try:
        series: Mapping[str, Any] = read_scalars(run)
    except (OSError, ValueError) as e:
        raise CliError(f"cannot read the event files of {run}: {e}", EXIT_FAILED) from None
    return series


def cmd_export(opts: argparse.Namespace) -> int:
    series = _read_series(opts.run)
    tags = _select_tags(series, opts.tag, opts.run)
    write = _write_json if opts.format == "json" else _write_csv
    if opts.output in (None, "-"):
        write(series, tags, sys.stdout)
        return EXIT_OK
    try:
        with open(opts.output, "w", newline="") as f:
            write(series, tags, f)
    except OSError as e:
        raise CliError(f"cannot write {opts.output}: {e.strerror or e}", EXIT_FAILED) from None
    print(f"exported {len(tags)} series to {opts.output}", file=sys.stderr)
    return EXIT_OK


# -- the parser ----------------------------------------------------------------------------------------


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds; received {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number of seconds >= 0; received {text!r}")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1; received {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1; received {text!r}")
    return value


def _sending_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    wait = parent.add_mutually_exclusive_group()
    wait.add_argument(
        "--wait",
        type=_seconds,
        default=DEFAULT_WAIT,
        metavar="SECONDS",
        help=f"how long to wait for the bridge's response (default {DEFAULT_WAIT:g}); exit 3 when none comes",
    )
    wait.add_argument("--no-wait", action="store_true", help="print the command id and return at once")
    parent.add_argument("--json", action="store_true", help="print the response as JSON")
    return parent


def _add_run(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help="the run directory (where its Bridge writes .bidviz/)")


def _add_metric_parsers(sub: Any, send: argparse.ArgumentParser) -> None:
    metric = sub.add_parser("metric", help="add, remove, pause, list, export or import metrics")
    actions = metric.add_subparsers(dest="action", metavar="ACTION", required=True)

    add = actions.add_parser("add", parents=[send], help="add a metric from Python code")
    _add_run(add)
    add.add_argument("name", metavar="NAME", help="the metric's name; its series is bidviz/NAME")
    add.add_argument("code", metavar="CODE", nargs="?", help="an expression or a function body; - reads stdin")
    add.add_argument("--file", metavar="FILE", help="read CODE from FILE")
    add.add_argument("--every", type=_positive, default=1, metavar="N", help="run it every Nth step (default 1)")
    add.add_argument("--replace", action="store_true", help="replace a metric of the same name")
    add.add_argument("--kind", choices=protocol.METRIC_KINDS, default="auto", help="how values are written")
    add.set_defaults(handler=cmd_metric_add)

    for action, (_, _, what) in _METRIC_ACTIONS.items():
        p = actions.add_parser(
            action,
            parents=[send],
            aliases=["remove"] if action == "rm" else [],
            help=what,
        )
        _add_run(p)
        p.add_argument("name", metavar="NAME")
        p.set_defaults(handler=cmd_metric_simple, metric_action=action)

    ls = actions.add_parser("ls", aliases=["list"], help="list a run's metrics from its state.json")
    _add_run(ls)
    ls.add_argument("--json", action="store_true", help="print the metrics mapping as JSON")
    ls.set_defaults(handler=cmd_metric_ls)

    export = actions.add_parser("export", help="write a run's metric set (name, code, every, kind) to FILE")
    _add_run(export)
    export.add_argument("file", metavar="FILE", help="- for stdout")
    export.set_defaults(handler=cmd_metric_export)

    imp = actions.add_parser("import", parents=[send], help="add (replacing) every metric of a metric-set FILE")
    _add_run(imp)
    imp.add_argument("file", metavar="FILE", help="as `metric export` writes it; - for stdin")
    imp.set_defaults(handler=cmd_metric_import)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bidviz",
        description="Steer a training run that uses a BIDViz Bridge: hyperparameters, metrics, eval, pause/stop. "
        "Exit status: 0 applied, 1 rejected or failed, 2 usage, 3 no response (no live bridge).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    send = _sending_options()

    status = sub.add_parser("status", help="every run with a bridge under LOGDIR: live/stale/ended, step, steps/s")
    status.add_argument("logdir", metavar="LOGDIR")
    status.add_argument("--json", action="store_true", help="print a list of runs as JSON")
    status.set_defaults(handler=cmd_status)

    set_ = sub.add_parser("set", parents=[send], help="set hyperparameters: NAME=VALUE (VALUE as JSON)")
    _add_run(set_)
    set_.add_argument("assignments", metavar="NAME=VALUE", nargs="+", help="e.g. lr=0.01 betas=[0.9,0.99]")
    set_.set_defaults(handler=cmd_set)

    _add_metric_parsers(sub, send)

    diag = sub.add_parser("diagnostics", parents=[send], help="add the standard diagnostic metrics")
    _add_run(diag)
    diag.add_argument("--every", type=_positive, default=1, metavar="N", help="run them every Nth step")
    diag.set_defaults(handler=cmd_diagnostics)

    ev = sub.add_parser("eval", parents=[send], help="run Python code against the live model; prints the result")
    _add_run(ev)
    ev.add_argument("code", metavar="CODE", help="statements and/or an expression; - reads stdin")
    ev.add_argument("--now", action="store_true", help="run at once in the watcher thread (for a stuck run)")
    ev.set_defaults(handler=cmd_eval)

    for verb, what in (("pause", "pause training"), ("resume", "resume training"), ("stop", "stop training")):
        p = sub.add_parser(verb, parents=[send], help=what)
        _add_run(p)
        p.set_defaults(handler=cmd_control)

    journal = sub.add_parser("journal", help="who changed what, at which step (oldest first)")
    _add_run(journal)
    journal.add_argument("--json", action="store_true", help="print the entries as JSON")
    journal.add_argument("--tail", type=_positive, metavar="N", help="only the last N entries")
    journal.set_defaults(handler=cmd_journal)

    export = sub.add_parser("export", help="scalar series from the run's event files (csv: tag,step,wall_time,value)")
    _add_run(export)
    export.add_argument("--tag", action="append", metavar="T", help="a tag or shell pattern (repeatable)")
    export.add_argument("--format", choices=("csv", "json"), default="csv")
    export.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")
    export.set_defaults(handler=cmd_export)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        opts = parser.parse_args(argv)
    except SystemExit as e:  # argparse: --help/--version (0) or a usage error (2)
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    try:
        return int(opts.handler(opts))
    except CliError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`bidviz journal RUN | head`); silence the flush at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
