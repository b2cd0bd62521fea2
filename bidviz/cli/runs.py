"""Verbs that look at runs without steering them: `status` (every run under a log directory), `journal` (one run)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import deque
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from bidviz.channel import Mailbox, find_runs
from bidviz.cli.errors import EXIT_OK, EXIT_USAGE, CliError
from bidviz.cli.output import _age, _error_line, _number, _print_json, _short, _table
from bidviz.cli.reading import _mailbox


def _steps_per_sec(state: Mapping[str, Any]) -> Any:
    for key in ("steps_per_sec", "steps_per_second", "steps_per_s"):
        if key in state:
            return state[key]
    return None


def _status_row(name: str, mailbox: Mailbox) -> dict[str, Any]:
    state = mailbox.read_state()
    known = state or {}  # liveness gets the raw state: given None, it reads state.json again
    heartbeat = known.get("heartbeat")
    return {
        "run": name,
        "path": str(mailbox.run_dir),
        "state": mailbox.liveness(state),
        "step": known.get("step"),
        "steps_per_sec": _steps_per_sec(known),
        "heartbeat": heartbeat,
        "heartbeat_age": time.time() - float(heartbeat) if isinstance(heartbeat, (int, float)) else None,
        "pid": known.get("pid"),
        "host": known.get("host"),
        "paused": known.get("paused"),
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
