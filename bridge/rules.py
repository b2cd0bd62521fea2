"""Live rules: code like a metric's, run every Nth step in the training thread, that may act on what it sees.

In scope: everything metric code sees, `metrics` (each metric's latest value, by name) and the actions `set(**values)`,
`pause(reason)`, `stop(reason)`, `snapshot(reason)` and `rewind(to=None, before=None)`. A rule's actions are
collected while it runs and sent only when it returns (a rule that raises does nothing); each becomes a command from
`rule:<name>` and goes the way every command goes (validation, the applier at the next step boundary, the journal,
the `hparams/<name>` curve). Before them the journal gets a `rule_fired` line with the values the rule read (the
`metrics` it looked up) and the commands it sent. After acting, a rule rests `cooldown` steps, so a rule that would
fire on every step fires once per cool-down. A rule that raises is reported like a metric (`rule_error`), and is
disabled after ERRORS_TO_DISABLE errors in a row or when it runs past the hook budget.

Rules run on the leader of a distributed job only; the commands they send reach every rank at a sync point.
"""

from __future__ import annotations

import json
import threading
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bidviz import kinds
from bidviz.errors import MetricTimeout, ProtocolError

from .interrupt import HookTimer
from .metrics import ERRORS_TO_DISABLE, compile_metric, describe_failure, failure_info, make_function
from .registry import Registry

#: sends one command on a rule's behalf: (kind, args, sender) -> its id
Act = Callable[[str, dict[str, Any], str], str]


class _Seen(dict):  # type: ignore[type-arg]
    """The `metrics` a rule sees: remembers which values it read, for the journal."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        super().__init__(values)
        self.read: dict[str, Any] = {}

    def __getitem__(self, key: Any) -> Any:
        value = super().__getitem__(key)
        self.read[str(key)] = value
        return value

    def get(self, key: Any, default: Any = None) -> Any:
        return self[key] if key in self else default


@dataclass
class Rule:
    name: str
    code: str
    every: int
    cooldown: int
    fn: Callable[[dict[str, Any]], Any]
    scope: dict[str, Any]
    sender: str = ""
    status: str = "running"  # running | paused | disabled
    state: dict[str, Any] = field(default_factory=dict)
    fired: int = 0
    last_fired: int | None = None
    rest_until: int = -1
    error_count: int = 0
    errors_in_row: int = 0
    last_error: dict[str, Any] | None = None
    last_actions: list[str] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "every": self.every,
            "cooldown": self.cooldown,
            "status": self.status,
            "fired": self.fired,
            "last_fired": self.last_fired,
            "resting_until": self.rest_until if self.rest_until >= 0 else None,
            "error_count": self.error_count,
            "last_error": self.last_error,
            "last_actions": self.last_actions,
            "sender": self.sender,
        }


class Rules:
    def __init__(self, registry: Registry, timer: HookTimer, act: Act, journal: Callable[[dict[str, Any]], None]):
        self.registry = registry
        self.timer = timer
        self._act = act
        self._journal = journal
        self.lock = threading.RLock()
        self.rules: dict[str, Rule] = {}
        self.active: list[Rule] = []

    def names(self) -> set[str]:
        with self.lock:
            return set(self.rules)

    def install(self, args: Mapping[str, Any], code: types.CodeType, sender: str, status: str = "running") -> Rule:
        scope: dict[str, Any] = {}
        rule = Rule(args["name"], args["code"], args["every"], args["cooldown"], make_function(code, scope), scope)
        rule.sender, rule.status = sender, status
        with self.lock:
            self.rules[rule.name] = rule
            self._refresh()
        return rule

    def set_status(self, name: str, status: str) -> dict[str, Any]:
        with self.lock:
            rule = self.get(name)
            if status == "removed":
                del self.rules[name]
            else:
                rule.status, rule.errors_in_row = status, 0
            self._refresh()
        return {"name": name, "status": status}

    def get(self, name: str) -> Rule:
        rule = self.rules.get(name)
        if rule is None:
            raise ProtocolError(
                f"no rule {name!r}; rules: {', '.join(sorted(self.rules)) or '(none)'}", type="UnknownName"
            )
        return rule

    def _refresh(self) -> None:
        self.active = [r for r in self.rules.values() if r.status == "running"]
        self.registry.changed = True
        if self.registry.on_metrics_changed is not None:
            self.registry.on_metrics_changed()  # the step pacing: rules need the slow path, as metrics do

    # -- running, in the training thread ----------------------------------------------------------------------------

    def run(self, step: int) -> None:
        for rule in self.active:
            if step % rule.every or step < rule.rest_until:
                continue
            self._run_one(rule, step)

    def _run_one(self, rule: Rule, step: int) -> None:
        with self.registry.lock:
            seen = _Seen({n: m.last_value for n, m in self.registry.metrics.items() if m.last_value is not None})
        actions: list[tuple[str, dict[str, Any]]] = []
        rule.scope.update(self.registry.namespace)
        rule.scope.update(_actions(actions, self.registry), metrics=seen)
        try:
            self.timer.call(rule.fn, rule.state)
        except KeyboardInterrupt:
            raise
        except MetricTimeout as e:
            info = failure_info(e, "<metric")
            self._failed(
                rule, step, {**info, "message": f"rule {rule.name!r} {e}", "traceback": "", "line": None}, True
            )
            return
        except BaseException as e:  # noqa: BLE001 - SystemExit from user code included: the rule's failure
            self._failed(rule, step, describe_failure(self.timer, e, "<metric"))
            return
        rule.errors_in_row = 0
        if not actions:
            return
        sender = f"rule:{rule.name}"
        ids = []
        for kind, args in actions:
            try:
                ids.append(self._act(kind, args, sender))
            except ProtocolError as e:  # refused on its way in (the bridge is closing...): nothing more was sent
                self._failed(rule, step, e.as_error())
                return
        rule.fired += 1
        rule.last_fired, rule.rest_until = step, step + rule.cooldown
        rule.last_actions = [kinds.get(k).describe(a) for k, a in actions]
        self._journal(
            {
                "event": "rule_fired",
                "rule": rule.name,
                "label": f"rule {rule.name} fired: {'; '.join(rule.last_actions)}",
                "values": {k: _plain(v) for k, v in list(seen.read.items())[:20]},
                "commands": ids,
                "resting_until": rule.rest_until,
            }
        )
        self.registry.changed = True

    def _failed(self, rule: Rule, step: int, info: dict[str, Any], timed_out: bool = False) -> None:
        info["step"] = step
        rule.error_count += 1
        rule.errors_in_row += 1
        rule.last_error = info
        self._journal({"event": "rule_error", "rule": rule.name, "error": info})
        if timed_out or rule.errors_in_row >= ERRORS_TO_DISABLE:
            with self.lock:
                rule.status = "disabled"
                self._refresh()
            reason = "ran past its time budget" if timed_out else f"{rule.errors_in_row} errors in a row"
            self._journal({"event": "rule_disabled", "rule": rule.name, "reason": f"disabled: {reason}"})
        self.registry.changed = True

    def describe(self) -> dict[str, Any]:
        with self.lock:
            return {n: r.describe() for n, r in self.rules.items()}


def compile_rule(name: str, code: str) -> types.CodeType:
    return compile_metric(f"rule {name}", code)


MAX_ACTIONS = 16  # actions of one run of a rule: a loop of set() calls is the rule's error, not a flood of commands


def _actions(out: list[tuple[str, dict[str, Any]]], registry: Registry) -> dict[str, Any]:
    """The action functions of one run of a rule; each checks its arguments at once (a bad call is the rule's
    error) and is sent when the rule returns."""

    def add(kind: str, args: dict[str, Any]) -> None:
        if len(out) >= MAX_ACTIONS:
            raise ProtocolError(
                f"a rule may act at most {MAX_ACTIONS} times a run; this one tried more (nothing was sent)",
                type="TooManyActions",
            )
        out.append((kind, _as_sent(args)))

    def set(**values: Any) -> None:  # noqa: A001 - the name rules use
        if not values:
            raise TypeError("set() needs name=value pairs, e.g. set(lr=hparams['lr'] / 2)")
        one = {"name": next(iter(values)), "value": next(iter(values.values()))}
        args = kinds.SET_HPARAM.parse_args(one if len(values) == 1 else {"values": values})
        known = set_names()
        for name in values:
            if name not in known:
                raise ProtocolError(
                    f"set({name}=...): no hyperparameter {name!r}; registered: {', '.join(sorted(known))}"
                )
        add(kinds.SET_HPARAM.name, args)

    def set_names() -> frozenset[str]:
        with registry.lock:
            return frozenset(registry.hparams)

    def pause(reason: str = "") -> None:
        add(kinds.PAUSE.name, kinds.PAUSE.parse_args({"reason": reason} if reason else {}))

    def stop(reason: str = "") -> None:
        add(kinds.STOP.name, kinds.STOP.parse_args({"reason": reason} if reason else {}))

    def snapshot(reason: str = "") -> None:
        add(kinds.SNAPSHOT.name, kinds.SNAPSHOT.parse_args({"reason": reason} if reason else {}))

    def rewind(to: int | None = None, before: str | None = None) -> None:
        args = {k: v for k, v in (("to", to), ("before", before)) if v is not None}
        add(kinds.REWIND.name, kinds.REWIND.parse_args(args))

    return {"set": set, "pause": pause, "stop": stop, "snapshot": snapshot, "rewind": rewind}


def _as_sent(args: dict[str, Any]) -> dict[str, Any]:
    """`args` as a command file would carry them: plain JSON data, made while the rule's budget holds. A value of
    the user's own type (a float whose `__repr__` or `__format__` loops for ever) would run its methods later, in
    the label and the journal, where nothing stops it."""
    try:
        return json.loads(json.dumps(args))  # type: ignore[no-any-return]
    except TypeError as e:
        raise TypeError(f"an action's arguments must be plain values (numbers, str, bool): {e}") from None


def _plain(value: Any) -> Any:
    return value if isinstance(value, (int, float, str, bool)) or value is None else repr(value)[:200]
