"""The `metric` verbs: add, remove, pause and resume a run's metrics, list them, export and import a metric set.

A metric set is the format of `bidviz.kinds` (`metric_set` writes it, `read_metric_set` reads and validates it),
the same the tab exports and imports.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bidviz import kinds
from bidviz.cli.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, CliError
from bidviz.cli.output import at_step, clean, error_line, number, print_json, say, short, table
from bidviz.cli.reading import metrics_of, read_state
from bidviz.cli.safety import rules_of
from bidviz.cli.sending import send
from bidviz.cli.types import Args, Response
from bidviz.errors import ProtocolError


def _read_code(opts: argparse.Namespace) -> str:
    if opts.file is not None and opts.code is not None:
        raise CliError("give the metric's CODE or --file FILE, not both", EXIT_USAGE)
    if opts.file is not None:
        try:
            return Path(opts.file).read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise CliError(f"cannot read --file {opts.file}: {getattr(e, 'strerror', None) or e}", EXIT_USAGE) from None
    if opts.code is None:
        raise CliError("give the metric's CODE (or - to read it from stdin, or --file FILE)", EXIT_USAGE)
    return sys.stdin.read() if opts.code == "-" else str(opts.code)


def _show_metric_added(args: Args, response: Response) -> int | None:
    """The metric added and its first value; or, when its first run failed, that error (exit 1): it stays
    installed, paused."""
    result = response.get("result")
    result = result if isinstance(result, Mapping) else {}
    name, added = args["name"], f"metric {args['name']} added (every {args['every']}, kind {args['kind']})"
    error = result.get("first_error")
    if not error:
        first = result.get("first_value")
        shown = f"; first value {short(number(first), 60)}" if first is not None else ""
        say(f"{added}{at_step(response)}{shown}")
        return None
    say(f"error: {added}{at_step(response)} but failed at its first run: {error_line(error)}", err=True)
    traceback = str((error if isinstance(error, Mapping) else {}).get("traceback") or "").rstrip()
    if traceback:
        say(traceback, err=True)
    say(
        f"It stays installed, paused: fix it with `bidviz metric add RUN {name} CODE --replace`, remove it with "
        f"`bidviz metric rm RUN {name}`, or run it as it is with `bidviz metric resume RUN {name}`",
        err=True,
    )
    return EXIT_FAILED


def cmd_metric_add(opts: argparse.Namespace) -> int:
    args = {
        "name": opts.name,
        "code": _read_code(opts),
        "every": opts.every,
        "replace": opts.replace,
        "kind": opts.kind,
        **({"guard": True} if opts.guard else {}),
        **({"reduce": opts.reduce} if opts.reduce else {}),
    }
    return send(opts, [(kinds.ADD_METRIC.name, args)], _show_metric_added)


#: `metric ACTION` -> (its command kind, what it did); the verb and its help come from the kind
METRIC_ACTIONS: dict[str, tuple[kinds.Kind, str]] = {
    kind.verb.removeprefix("metric "): (kind, done)
    for kind, done in (
        (kinds.REMOVE_METRIC, "removed"),
        (kinds.PAUSE_METRIC, "paused"),
        (kinds.RESUME_METRIC, "resumed"),
    )
}


def cmd_metric_simple(opts: argparse.Namespace) -> int:
    kind, done = METRIC_ACTIONS[opts.metric_action]

    def show(args: Args, response: Response) -> None:
        say(f"metric {args['name']} {done}{at_step(response)}")

    return send(opts, [(kind.name, {"name": opts.name})], show)


def _metric_row(name: str, m: Mapping[str, Any]) -> list[str]:
    return [
        name,
        str(m.get("status", "-")),
        str(m.get("kind", "-")),
        str(m.get("every", "-")),
        number(m.get("last_step")),
        short(number(m.get("last_value")), 24),
        str(m.get("error_count", 0)),
        short(str(m.get("code", "")), 48),
    ]


def cmd_metric_ls(opts: argparse.Namespace) -> int:
    metrics = metrics_of(read_state(opts.run))
    if opts.json:
        print_json(metrics)
        return EXIT_OK
    if not metrics:
        say(f"no metrics on {opts.run}", err=True)
        return EXIT_OK
    headers = ["NAME", "STATUS", "KIND", "EVERY", "STEP", "VALUE", "ERRORS", "CODE"]
    table(headers, (_metric_row(n, m) for n, m in metrics.items()))
    for name, m in metrics.items():
        if m.get("last_error"):
            say(f"{clean(name, multiline=False)}: last error: {clean(error_line(m['last_error']), multiline=False)}")
    return EXIT_OK


def cmd_metric_export(opts: argparse.Namespace) -> int:
    state = read_state(opts.run)
    data = kinds.metric_set(metrics_of(state), rules_of(state))
    text = json.dumps(data, indent=2) + "\n"
    if opts.file == "-":
        sys.stdout.write(text)
        return EXIT_OK
    try:
        Path(opts.file).write_text(text)
    except OSError as e:
        raise CliError(f"cannot write {opts.file}: {e.strerror or e}", EXIT_FAILED) from None
    rules = f" and {len(data['rules'])} rule(s)" if data.get("rules") else ""
    say(f"exported {len(data['metrics'])} metric(s){rules} to {opts.file}")
    return EXIT_OK


def _load_metric_set(file: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The add_metric args of every metric and the add_rule args of every rule of a metric-set file, all validated
    before any is sent."""
    try:
        text = sys.stdin.read() if file == "-" else Path(file).read_text()
        data = json.loads(text)
    except OSError as e:
        raise CliError(f"cannot read {file}: {e.strerror or e}", EXIT_USAGE) from None
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError included
        raise CliError(f"{file} is not JSON: {e}", EXIT_USAGE) from None
    try:
        return kinds.read_metric_set(data), kinds.read_rule_set(data)
    except ProtocolError as e:
        raise CliError(f"{file} is not a metric set: {e}", EXIT_USAGE) from None


def cmd_metric_import(opts: argparse.Namespace) -> int:
    metrics, rules = _load_metric_set(opts.file)
    if not metrics and not rules:
        say(f"{opts.file} holds no metrics or rules; nothing to import", err=True)
        return EXIT_OK
    requests = [(kinds.ADD_METRIC.name, args) for args in metrics] + [(kinds.ADD_RULE.name, a) for a in rules]
    labels = [f"metric {args['name']}" for args in metrics] + [f"rule {args['name']}" for args in rules]

    def show(args: Args, response: Response) -> None:
        if "cooldown" in args:
            say(f"rule {args['name']} added (every {args['every']}, cool-down {args['cooldown']}){at_step(response)}")
        else:
            _show_metric_added(args, response)

    return send(opts, requests, show, many=True, labels=labels)
