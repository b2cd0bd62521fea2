"""The `export` verb: a run's scalar series from its event files, as CSV or JSON (the exporter of `bidviz.series`,
which the plugin's `GET data` uses too). The event-file reader is imported only when the verb runs."""

from __future__ import annotations

import argparse
import fnmatch
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from bidviz.channel import is_url
from bidviz.cli.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, CliError
from bidviz.cli.output import say, short
from bidviz.series import Points, SeriesError, latest_session, point_dicts, read_series, to_csv


def _select_tags(series: Mapping[str, Points], patterns: Sequence[str] | None, run: str) -> list[str]:
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
            raise CliError(f"no scalar series {pattern!r} in {run}; it has: {short(', '.join(tags), 600)}", EXIT_FAILED)
        chosen += [t for t in matched if t not in chosen]
    return chosen


def _latest_sessions(series: Mapping[str, Points], tags: Sequence[str]) -> dict[str, Points]:
    """Each tag's latest session only, saying what was left out (the steps restarted: the run was resumed)."""
    kept: dict[str, Points] = dict(series)
    dropped: dict[str, int] = {}
    for tag in tags:
        kept[tag], left_out = latest_session(series[tag])
        if left_out:
            dropped[tag] = left_out
    if dropped:
        total = sum(dropped.values())
        say(
            f"warning: the step count restarted in {len(dropped)} series (a run resumed at step 0), so only each "
            f"one's latest session is exported: {total} earlier point(s) left out (e.g. {next(iter(dropped))}); "
            "--all-sessions exports every point",
            err=True,
        )
    return kept


def _render(series: Mapping[str, Points], tags: Sequence[str], fmt: str) -> str:
    if fmt == "json":
        data = {tag: point_dicts(series[tag]) for tag in tags}
        return json.dumps(data, indent=1, allow_nan=False) + "\n"
    return to_csv(series, tags)


def cmd_export(opts: argparse.Namespace) -> int:
    if not is_url(opts.run) and not Path(opts.run).exists():
        raise CliError(f"{opts.run} does not exist; give a run directory (or an event file)", EXIT_USAGE)
    try:
        series, warnings = read_series(opts.run)
    except SeriesError as e:
        raise CliError(str(e), EXIT_FAILED) from None
    for warning in warnings:  # a record cut short: a live or killed writer; what came before it is exported
        say(f"warning: {warning}", err=True)
    tags = _select_tags(series, opts.tag, opts.run)
    if not opts.all_sessions:
        series = _latest_sessions(series, tags)
    text = _render(series, tags, opts.format)
    if opts.output in (None, "-"):
        sys.stdout.write(text)
        return EXIT_OK
    try:
        with open(opts.output, "w", newline="") as f:
            f.write(text)
    except OSError as e:
        raise CliError(f"cannot write {opts.output}: {e.strerror or e}", EXIT_FAILED) from None
    say(f"exported {len(tags)} series to {opts.output}", err=True)
    return EXIT_OK
