"""The command line's grammar (one argparse sub-parser per verb, each naming its handler) and `main`, which runs it."""

from __future__ import annotations

import argparse
import io
import math
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from bidviz import __version__, kinds
from bidviz.cli.errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, CliError
from bidviz.cli.export import cmd_export
from bidviz.cli.metrics import (
    METRIC_ACTIONS,
    cmd_metric_add,
    cmd_metric_export,
    cmd_metric_import,
    cmd_metric_ls,
    cmd_metric_simple,
)
from bidviz.cli.output import say
from bidviz.cli.runs import cmd_journal, cmd_status
from bidviz.cli.safety import add_parsers as add_safety_parsers
from bidviz.cli.sending import os_failure
from bidviz.cli.serve import add_serve_parser
from bidviz.cli.steering import cmd_control, cmd_diagnostics, cmd_eval, cmd_set
from bidviz.cli.tablink import DEFAULT_HOST, DEFAULT_PORT, cmd_tab_link

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
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _parse_duration(text: str) -> float:
    number, unit = (text[:-1], text[-1]) if text[-1:] in _UNITS else (text, "s")
    return float(number) * _UNITS[unit]


_duration = _checked(
    _parse_duration,
    lambda v: 0 < v < math.inf,
    "expected a duration: seconds, or a number with s, m, h or d (90s, 30m, 1h)",
    "expected a finite duration > 0",
)
_positive = _checked(int, lambda v: v >= 1, "expected an integer >= 1", "expected an integer >= 1")
_port = _checked(int, lambda v: 1 <= v <= 65535, "expected a port number", "expected a port number from 1 to 65535")


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
    queue = parent.add_mutually_exclusive_group()
    queue.add_argument(
        "--queue",
        action="store_true",
        help="never expire: leave the command for a bridge that resumes this run (by default a command expires "
        "when the sender stops waiting, after --wait, and is then never applied)",
    )
    queue.add_argument(
        "--expires",
        type=_duration,
        metavar="DURATION",
        help="expire after DURATION (90s, 30m, 1h, 2d) instead of --wait; queued until then, even for an ended run",
    )
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


def _arg_help(kind: kinds.Kind, name: str) -> str:
    """The help of one of a kind's args, from the table."""
    return next(a.help for a in kind.args if a.name == name)


def _arg_default(kind: kinds.Kind, name: str) -> Any:
    return next(a.default for a in kind.args if a.name == name)


def _add_metric_parsers(sub: Any, send: argparse.ArgumentParser) -> None:
    metric = sub.add_parser("metric", help="add, remove, pause, list, export or import metrics")
    actions = metric.add_subparsers(dest="action", metavar="ACTION", required=True)

    add_metric = kinds.ADD_METRIC
    add = _add_verb(actions, "add", add_metric.help, cmd_metric_add, parents=[send])
    add.add_argument("name", metavar="NAME", help=_arg_help(add_metric, "name"))
    add.add_argument("code", metavar="CODE", nargs="?", help=_arg_help(add_metric, "code") + "; - reads stdin")
    add.add_argument("--file", metavar="FILE", help="read CODE from FILE")
    every = _arg_default(add_metric, "every")
    add.add_argument(
        "--every",
        type=_positive,
        default=every,
        metavar="N",
        help=f"{_arg_help(add_metric, 'every')} (default {every})",
    )
    add.add_argument("--replace", action="store_true", help=_arg_help(add_metric, "replace"))
    add.add_argument("--guard", action="store_true", help=_arg_help(add_metric, "guard"))
    add.add_argument(
        "--kind",
        choices=kinds.METRIC_KINDS,
        default=_arg_default(add_metric, "kind"),
        help=_arg_help(add_metric, "kind"),
    )
    add.add_argument("--reduce", choices=kinds.REDUCTIONS, help=_arg_help(add_metric, "reduce") + " (default rank0)")

    for action, (kind, _) in METRIC_ACTIONS.items():
        aliases = ["remove"] if action == "rm" else []
        p = _add_verb(
            actions, action, kind.help, cmd_metric_simple, parents=[send], aliases=aliases, metric_action=action
        )
        p.add_argument("name", metavar="NAME", help=_arg_help(kind, "name"))

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
        "Exit status: 0 applied, 1 rejected or failed (or the run has ended), 2 usage (or a path that is not a run), "
        "3 no response in time from a bridge that looked live.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    send = _sending_options()

    what = "every run with a bridge under LOGDIR: live/stale/ended, step, steps/s"
    status = _add_verb(sub, "status", what, cmd_status, run=False)
    status.add_argument("logdir", metavar="LOGDIR")
    status.add_argument("--json", action="store_true", help="print a list of runs as JSON")

    set_ = _add_verb(sub, kinds.SET_HPARAM.verb, kinds.SET_HPARAM.help, cmd_set, parents=[send])
    set_.add_argument("assignments", metavar="NAME=VALUE", nargs="+", help="e.g. lr=0.01 betas=[0.9,0.99]")

    _add_metric_parsers(sub, send)
    add_safety_parsers(sub, send, _add_verb, _positive)

    diagnostics = kinds.ADD_DIAGNOSTICS
    diag = _add_verb(sub, diagnostics.verb, diagnostics.help, cmd_diagnostics, parents=[send])
    every = _arg_default(diagnostics, "every")
    diag.add_argument(
        "--every",
        type=_positive,
        default=every,
        metavar="N",
        help=f"{_arg_help(diagnostics, 'every')} (default {every})",
    )

    ev = _add_verb(sub, kinds.EVAL.verb, kinds.EVAL.help, cmd_eval, parents=[send])
    ev.add_argument("code", metavar="CODE", help=_arg_help(kinds.EVAL, "code") + "; - reads stdin")
    ev.add_argument("--now", action="store_true", help=_arg_help(kinds.EVAL, "now"))
    ev.add_argument("--ranks", choices=kinds.EVAL_RANKS, help=_arg_help(kinds.EVAL, "ranks") + " (default 0)")

    for kind in (kinds.PAUSE, kinds.RESUME, kinds.STOP):
        _add_verb(sub, kind.verb, kind.help, cmd_control, parents=[send], control_kind=kind)

    journal = _add_verb(sub, "journal", "who changed what, at which step (oldest first)", cmd_journal)
    journal.add_argument("--json", action="store_true", help="print the entries as JSON")
    journal.add_argument("--tail", type=_positive, metavar="N", help="only the last N entries")

    what = "scalar series from the run's event files (csv: tag,step,wall_time,value)"
    export = _add_verb(sub, "export", what, cmd_export)
    export.add_argument("--tag", action="append", metavar="T", help="a tag or shell pattern (repeatable)")
    export.add_argument("--format", choices=("csv", "json"), default="csv")
    export.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")
    export.add_argument(
        "--all-sessions",
        action="store_true",
        help="every point, even those of earlier sessions of a resumed run whose step count restarted (by default "
        "only each series' latest session is exported)",
    )

    what = "print the link that opens the BIDViz tab with your control token (needed where TensorBoard cannot tell "
    what += "who you are: another host, a proxy)"
    link = _add_verb(sub, "tab-link", what, cmd_tab_link, run=False)
    link.add_argument(
        "--host", default=DEFAULT_HOST, help=f"TensorBoard's host as you browse to it (default {DEFAULT_HOST})"
    )
    link.add_argument("--port", type=_port, default=DEFAULT_PORT, help=f"TensorBoard's port (default {DEFAULT_PORT})")
    link.add_argument(
        "--url",
        metavar="URL",
        help="TensorBoard's full address, instead of --host and --port (behind a proxy: https://box/tb/)",
    )
    add_serve_parser(sub, _port)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        opts = parser.parse_args(argv)
    except SystemExit as e:  # argparse: --help/--version (0) or a usage error (2)
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):  # a terminal or pipe that cannot encode a character: escape it
            stream.reconfigure(errors="backslashreplace")
    try:
        return int(opts.handler(opts))
    except CliError as e:
        say(f"error: {e}", err=True)
        return e.code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`bidviz journal RUN | head`); silence the flush at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except OSError as e:
        # A file operation no verb expected to fail (a read-only or full file system): one line, no traceback.
        say(f"error: {os_failure(e.filename or 'a file of the run', e, 'use')}", err=True)
        return EXIT_USAGE
