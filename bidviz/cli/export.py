"""The `export` verb: a run's scalar series from its event files, as CSV or JSON.

The event-file reader (`bidviz.writers`) is imported only when the verb runs, so the CLI starts without it. It reads
whatever wrote the run: tensorboardX, torch, TF2 (`tf.summary`, flax, JAX) or our EventWriter.
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import json
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from bidviz import protocol
from bidviz.cli.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, CliError
from bidviz.cli.output import _short


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
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            series: Mapping[str, Any] = read_scalars(run)
    except (OSError, ValueError) as e:
        raise CliError(f"cannot read the event files of {run}: {e}", EXIT_FAILED) from None
    for warning in caught:  # a record cut short: a live or killed writer; what came before it is exported
        print(f"warning: {warning.message}", file=sys.stderr)
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
