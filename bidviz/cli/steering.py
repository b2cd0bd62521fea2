"""Verbs that steer the training run: `set` hyperparameters, add `diagnostics`, `eval` code, `pause`/`resume`/`stop`."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from bidviz import protocol
from bidviz.cli.errors import EXIT_USAGE, CliError
from bidviz.cli.output import _at_step, _value
from bidviz.cli.sending import _send
from bidviz.cli.types import Args, Response


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
