"""The command line's grammar (one argparse sub-parser per verb, each naming its handler) and `main`, which runs it."""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from bidviz import __version__, protocol
from bidviz.cli.errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, CliError
from bidviz.cli.export import cmd_export
from bidviz.cli.metrics import (
    _METRIC_ACTIONS,
    cmd_metric_add,
    cmd_metric_export,
    cmd_metric_import,
    cmd_metric_ls,
    cmd_metric_simple,
)
from bidviz.cli.runs import cmd_journal, cmd_status
from bidviz.cli.steering import cmd_control, cmd_diagnostics, cmd_eval, cmd_set

DEFAULT_WAIT = 30.0

N = TypeVar("N", int, float)
#: a verb's handler: runs it from the parsed options and returns the exit status
Handler = Callable[[argparse.Namespace], int]


def _checked(parse: Callable[[str], N], ok: Callable[[N], bool], expected: str, expected_ok: str) -> Callable[[str], N]:
    """An argparse `type`: `parse` the text, then require `ok(value)`; each failure says what was expected."""

    def convert(text: str) -> N:
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{expected}; received {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{expected_ok}; received {text!r}")
        return value

    return convert


# `0 <= v < inf` is false for NaN too.
_seconds = _checked(
    float, lambda v: 0 <= v < math.inf, "expected a number of seconds", "expected a finite number of seconds >= 0"
)
_positive = _checked(int, lambda v: v >= 1, "expected an integer >= 1", "expected an integer >= 1")


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


def _add_verb(
    sub: Any,
    name: str,
    what: str,
    handler: Handler,
    *,
    parents: Sequence[argparse.ArgumentParser] = (),
    aliases: Sequence[str] = (),
    run: bool = True,
    **defaults: Any,
) -> argparse.ArgumentParser:
    """A verb's sub-parser: its help line, its RUN argument first (unless `run=False`), the handler `main` calls."""
    parser: argparse.ArgumentParser = sub.add_parser(name, parents=list(parents), aliases=list(aliases), help=what)
    if run:
        _add_run(parser)
    parser.set_defaults(handler=handler, **defaults)
    return parser


def _add_metric_parsers(sub: Any, send: argparse.ArgumentParser) -> None:
    metric = sub.add_parser("metric", help="add, remove, pause, list, export or import metrics")
    actions = metric.add_subparsers(dest="action", metavar="ACTION", required=True)

    add = _add_verb(actions, "add", "add a metric from Python code", cmd_metric_add, parents=[send])
    add.add_argument("name", metavar="NAME", help="the metric's name; its series is bidviz/NAME")
    add.add_argument("code", metavar="CODE", nargs="?", help="an expression or a function body; - reads stdin")
    add.add_argument("--file", metavar="FILE", help="read CODE from FILE")
    add.add_argument("--every", type=_positive, default=1, metavar="N", help="run it every Nth step (default 1)")
    add.add_argument("--replace", action="store_true", help="replace a metric of the same name")
    add.add_argument("--kind", choices=protocol.METRIC_KINDS, default="auto", help="how values are written")

    for action, (_, _, what) in _METRIC_ACTIONS.items():
        aliases = ["remove"] if action == "rm" else []
        p = _add_verb(actions, action, what, cmd_metric_simple, parents=[send], aliases=aliases, metric_action=action)
        p.add_argument("name", metavar="NAME")

    ls = _add_verb(actions, "ls", "list a run's metrics from its state.json", cmd_metric_ls, aliases=["list"])
    ls.add_argument("--json", action="store_true", help="print the metrics mapping as JSON")

    what = "write a run's metric set (name, code, every, kind) to FILE"
    export = _add_verb(actions, "export", what, cmd_metric_export)
    export.add_argument("file", metavar="FILE", help="- for stdout")

    what = "add (replacing) every metric of a metric-set FILE"
    imp = _add_verb(actions, "import", what, cmd_metric_import, parents=[send])
    imp.add_argument("file", metavar="FILE", help="as `metric export` writes it; - for stdin")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bidviz",
        description="Steer a training run that uses a BIDViz Bridge: hyperparameters, metrics, eval, pause/stop. "
        "Exit status: 0 applied, 1 rejected or failed, 2 usage, 3 no response (no live bridge).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    send = _sending_options()

    what = "every run with a bridge under LOGDIR: live/stale/ended, step, steps/s"
    status = _add_verb(sub, "status", what, cmd_status, run=False)
    status.add_argument("logdir", metavar="LOGDIR")
    status.add_argument("--json", action="store_true", help="print a list of runs as JSON")

    what = "set hyperparameters: NAME=VALUE (VALUE as JSON)"
    set_ = _add_verb(sub, "set", what, cmd_set, parents=[send])
    set_.add_argument("assignments", metavar="NAME=VALUE", nargs="+", help="e.g. lr=0.01 betas=[0.9,0.99]")

    _add_metric_parsers(sub, send)

    diag = _add_verb(sub, "diagnostics", "add the standard diagnostic metrics", cmd_diagnostics, parents=[send])
    diag.add_argument("--every", type=_positive, default=1, metavar="N", help="run them every Nth step")

    what = "run Python code against the live model; prints the result"
    ev = _add_verb(sub, "eval", what, cmd_eval, parents=[send])
    ev.add_argument("code", metavar="CODE", help="statements and/or an expression; - reads stdin")
    ev.add_argument("--now", action="store_true", help="run at once in the watcher thread (for a stuck run)")

    for verb, what in (("pause", "pause training"), ("resume", "resume training"), ("stop", "stop training")):
        _add_verb(sub, verb, what, cmd_control, parents=[send])

    journal = _add_verb(sub, "journal", "who changed what, at which step (oldest first)", cmd_journal)
    journal.add_argument("--json", action="store_true", help="print the entries as JSON")
    journal.add_argument("--tail", type=_positive, metavar="N", help="only the last N entries")

    what = "scalar series from the run's event files (csv: tag,step,wall_time,value)"
    export = _add_verb(sub, "export", what, cmd_export)
    export.add_argument("--tag", action="append", metavar="T", help="a tag or shell pattern (repeatable)")
    export.add_argument("--format", choices=("csv", "json"), default="csv")
    export.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")
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
