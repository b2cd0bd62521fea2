"""Verbs that steer the training run: `set` hyperparameters, add `diagnostics`, `eval` code, `pause`/`resume`/`stop`."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Mapping
from typing import Any

from bidviz import kinds
from bidviz.cli.errors import EXIT_USAGE, CliError
from bidviz.cli.output import at_step, say, typed
from bidviz.cli.sending import send
from bidviz.cli.types import Args, Response
from bidviz.errors import ProtocolError

_NO_OLD: Any = object()


def parse_assignment(text: str) -> tuple[str, Any]:
    """`NAME=VALUE` with VALUE as JSON when it parses (0.01, true, [0.9, 0.99], "x"), else as a plain string."""
    name, sep, raw = text.partition("=")
    if not sep or not name:
        raise CliError(f"expected NAME=VALUE, e.g. lr=0.01; received {text!r}", EXIT_USAGE)
    try:
        kinds.check_name(name, "hyperparameter name")
    except ProtocolError as e:
        raise CliError(str(e), EXIT_USAGE) from None
    try:
        value = json.loads(raw, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        value = raw
    return name, value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # NaN/Infinity: keep them as the plain string the user typed


def set_args(assignments: list[tuple[str, Any]]) -> Args:
    """The args of the one `set_hparam` command for `assignments`: name and value for one, else values (so the
    bridge validates them all first and applies all of them, or none)."""
    values: dict[str, Any] = {}
    for name, value in assignments:
        if name in values:
            raise CliError(f"{name} is given twice; give each hyperparameter once", EXIT_USAGE)
        values[name] = value
    if len(values) == 1:
        ((name, value),) = values.items()
        return {"name": name, "value": value}
    return {"values": values}


def _changes(args: Args, result: Any) -> Iterator[tuple[str, Any, Any]]:
    """(name, new value, old value or _NO_OLD) of each hyperparameter an applied set_hparam changed."""
    sent = args["values"] if "values" in args else {args["name"]: args["value"]}
    if isinstance(result, Mapping) and result and all(isinstance(v, Mapping) for v in result.values()):
        result = [{"name": n, **v} for n, v in result.items()]  # several: {name: {name, value, old}}
    elif isinstance(result, Mapping) and "name" in result:
        result = [result]  # one: {name, value, old}
    if not isinstance(result, list) or not all(isinstance(r, Mapping) and "name" in r for r in result):
        result = [{"name": n, "value": v} for n, v in sent.items()]
    for change in result:
        name = str(change["name"])
        yield name, change.get("value", sent.get(name)), change.get("old", _NO_OLD)


def _show_set(args: Args, response: Response) -> None:
    for name, value, old in _changes(args, response.get("result")):
        was = f" (was {typed(old)})" if old is not _NO_OLD else ""
        say(f"{name} = {typed(value)}{was}{at_step(response)}")


def cmd_set(opts: argparse.Namespace) -> int:
    args = set_args([parse_assignment(a) for a in opts.assignments])
    return send(opts, [(kinds.SET_HPARAM.name, args)], _show_set, many=True)


def _show_diagnostics(args: Args, response: Response) -> None:
    names = response.get("result")
    names = [str(n) for n in names] if isinstance(names, list) else []
    listed = f": {', '.join(names)}" if names else ""
    say(f"added {len(names)} diagnostic metric(s){at_step(response)}{listed}")


def cmd_diagnostics(opts: argparse.Namespace) -> int:
    return send(opts, [(kinds.ADD_DIAGNOSTICS.name, {"every": opts.every})], _show_diagnostics)


def _show_eval(args: Args, response: Response) -> None:
    text = response.get("repr")
    say(text if isinstance(text, str) else typed(response.get("result")))


def cmd_eval(opts: argparse.Namespace) -> int:
    code = sys.stdin.read() if opts.code == "-" else opts.code
    args = {"code": code, "now": opts.now, **({"ranks": opts.ranks} if opts.ranks else {})}
    return send(opts, [(kinds.EVAL.name, args)], _show_eval)


#: what each control kind did, as printed when it is applied
CONTROL_DONE = {
    kinds.PAUSE.name: "paused{at}; training waits in bridge.step() until `bidviz resume`",
    kinds.RESUME.name: "resumed{at}",
    kinds.STOP.name: "stop requested{at}; the training loop ends when it checks bridge.should_stop",
}


def cmd_control(opts: argparse.Namespace) -> int:
    kind: kinds.Kind = opts.control_kind

    def show(args: Args, response: Response) -> None:
        say(CONTROL_DONE[kind.name].format(at=at_step(response)))

    return send(opts, [(kind.name, {})], show)
