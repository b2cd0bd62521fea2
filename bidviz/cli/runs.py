"""Verbs that look at runs without steering them: `status` (every run under a log directory), `journal` (one run)."""

from __future__ import annotations

import argparse
import time
from collections import deque
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from bidviz.channel import find_runs, is_url
from bidviz.cli.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, CliError
from bidviz.cli.output import age, clean, error_line, number, print_json, say, short, table
from bidviz.cli.reading import run_mailbox
from bidviz.errors import StateError
from bidviz.runs import command_label, status_row


def cmd_status(opts: argparse.Namespace) -> int:
    if not is_url(opts.logdir) and not Path(opts.logdir).is_dir():
        raise CliError(f"{opts.logdir} is not a directory; give the log directory that holds the runs", EXIT_USAGE)
    rows = []
    for name, mailbox in find_runs(opts.logdir):
        status = status_row(mailbox)
        rows.append({"run": name, "path": str(mailbox.run_dir), "state": status.pop("live"), **status})
    if opts.json:
        print_json(rows)
        return EXIT_OK
    if not rows:
        say(f"no runs with a BIDViz mailbox under {opts.logdir}", err=True)
        return EXIT_OK
    table(
        ["RUN", "STATE", "STEP", "STEPS/S", "HEARTBEAT", "PID", "PAUSED"],
        (
            [
                r["run"],
                r["state"],
                number(r["step"]),
                f"{r['steps_per_sec']:.1f}" if r["steps_per_sec"] is not None else "-",
                f"{age(r['heartbeat_age'])} ago" if r["heartbeat_age"] is not None else "-",
                number(r["pid"]),
                {True: "yes", False: "no"}.get(r["paused"], "-"),
            ]
            for r in rows
        ),
    )
    for r in rows:
        if r.get("problem"):
            say(f"{clean(r['run'], multiline=False)}: {r['problem']}", err=True)
        if r.get("guard"):
            say(guard_line(r["path"], r["guard"]))
    return EXIT_OK


def guard_line(run: str, trip: Mapping[str, Any]) -> str:
    """What the divergence guard did to a run, and the command that rewinds it to its last snapshot."""
    line = f"{run}: held by the divergence guard at step {number(trip['step'])}: {trip['reason']}"
    if trip.get("before"):
        line += (
            f"; the last snapshot is {trip['snapshot']} (step {number(trip['snapshot_step'])}): "
            f"`bidviz rewind {run} --before {trip['before']}`, set a better value, then `bidviz resume {run}`"
        )
    return line


def _journal_what(entry: Mapping[str, Any]) -> str:
    event = str(entry.get("event", "?"))
    if event != "command" and isinstance(entry.get("label"), str):
        return short(entry["label"], 200)  # what the bridge said of it: a guard trip, a rewind, a rule that fired
    if event == "command":
        outcome = f" -> {entry.get('status', '?')}"
        if entry.get("status") not in (None, "applied") and entry.get("error"):
            outcome += f": {error_line(entry['error'])}"
        return f"{short(command_label(entry), 120)}{outcome}"
    named = entry.get("metric", entry.get("rule"))  # a metric's or a rule's error
    metric = f" {named}" if named is not None else ""
    reason = f": {entry['reason']}" if entry.get("reason") else ""
    error = f" -> {error_line(entry['error'])}" if entry.get("error") else ""
    return f"{event}{metric}{reason}{error}"


def _journal_time(entry: Mapping[str, Any]) -> str:
    t = entry.get("time")
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError, OSError):  # missing, not a number, NaN or out of range
        return "????-??-?? ??:??:??"


def cmd_journal(opts: argparse.Namespace) -> int:
    mailbox = run_mailbox(opts.run)
    entries: Iterable[dict[str, Any]] = mailbox.iter_journal()
    try:
        if opts.tail is not None:
            entries = deque(entries, maxlen=opts.tail)
        entries = list(entries)
    except StateError as e:
        raise CliError(str(e), EXIT_FAILED) from None
    if opts.json:
        print_json(entries)
        return EXIT_OK
    if not entries:
        say(f"the journal of {opts.run} is empty: no command has reached its bridge yet", err=True)
    rows = [[_journal_time(e), number(e.get("step")), str(e.get("sender") or "-"), _journal_what(e)] for e in entries]
    rows = [[clean(cell, multiline=False) for cell in row] for row in rows]
    step_w = max((len(r[1]) for r in rows), default=0)
    sender_w = max((len(r[2]) for r in rows), default=0)
    for when, step, sender, what in rows:
        say(f"{when}  {step.rjust(step_w)}  {sender.ljust(sender_w)}  {what}")
    return EXIT_OK
