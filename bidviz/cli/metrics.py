"""The `metric` verbs: add, remove, pause and resume a run's metrics, list them, export and import a metric set."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bidviz.cli.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, CliError
from bidviz.cli.output import _at_step, _error_line, _number, _print_json, _short, _table
from bidviz.cli.reading import _metrics, _state
from bidviz.cli.sending import _send
from bidviz.cli.types import Args, Response

EXPORT_FORMAT = "bidviz_metrics"


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
