"""What each command kind does inside training: the behaviours `bidviz.kinds` names for each kind.

- `admit` runs in the mailroom thread: checks against the registry and compiles code, raising ProtocolError.
- `apply` runs in the training thread at a step boundary (an `eval` with `now` in the mailroom thread) and returns
  the command's result.
- `replay` folds one applied command of a journal into what a resumed run restores (`replay.Restored`).

Nothing here dispatches on a kind's name: `BEHAVIOURS` resolves the table's names once.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bidviz import kinds, protocol
from bidviz.errors import MetricTimeout, ProtocolError, ValuesRefused
from bidviz.protocol import Command

from .diagnostics import PACK
from .metrics import compile_eval, compile_metric, describe_failure, emit

if TYPE_CHECKING:
    from .admission import Admitted
    from .guard import Guard
    from .interrupt import HookTimer
    from .ranks import Ranks
    from .registry import Control, Registry
    from .replay import Restored
    from .rules import Rules
    from .safety import Safety

RESULT_LIMIT = 64_000  # characters of a result's repr, and of its JSON, in a response


@dataclass
class Runtime:
    """What an effect may touch: the registry, the loop's control flags, the hook budget."""

    registry: Registry
    control: Control
    timer: HookTimer
    ranks: Ranks | None = None  # the ranks of a distributed job, None for one process
    safety: Safety | None = None  # snapshots and rewinds
    rules: Rules | None = None
    guard: Guard | None = None  # the divergence guard (the leader's), re-armed by resume and rewind


@dataclass(frozen=True)
class Rendered:
    """A user's value made safe to send: its JSON (None when JSON cannot hold it) and its repr, both bounded.
    Made inside the hook budget, since `repr` and conversions run user code."""

    result: Any
    text: str


# -- errors every client sees the same way -------------------------------------------------------------------------


def unknown_hparam(name: str, known: Iterable[str]) -> ProtocolError:
    return ProtocolError(
        f"no hyperparameter {name!r}; registered: {', '.join(sorted(known)) or '(none)'}", type="UnknownName"
    )


def unknown_metric(name: str, known: Iterable[str]) -> ProtocolError:
    return ProtocolError(f"no metric {name!r}; metrics: {', '.join(sorted(known)) or '(none)'}", type="UnknownName")


def metric_exists(name: str) -> ProtocolError:
    return ProtocolError(
        f"a metric named {name!r} exists; pass replace=true (CLI: --replace) to change its code", type="NameTaken"
    )


def render(value: Any) -> Rendered:
    """The JSON and repr of a result, each within RESULT_LIMIT (with a note of the full size when cut)."""
    try:
        result = protocol.to_json_value(value)
        if len(protocol.dumps(result)) > RESULT_LIMIT:
            result = None
    except KeyboardInterrupt:
        raise
    except BaseException:  # noqa: BLE001 - not JSON, or a container whose methods raise: the repr still says it
        result = None
    try:
        text = repr(value)
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # noqa: BLE001 - a broken __repr__ (even one raising SystemExit) is not a failure
        text = f"<repr failed: {type(e).__name__}: {e}>"
    if not isinstance(text, str):
        text = f"<repr returned {type(text).__name__}, not str>"
    if len(text) > RESULT_LIMIT:
        text = f"{text[:RESULT_LIMIT]}... (cut: {len(text)} characters in all)"
    return Rendered(result, text)


# -- set_hparam --------------------------------------------------------------------------------------------------------


def _values(args: Mapping[str, Any]) -> dict[str, Any]:
    return dict(args["values"]) if "values" in args else {args["name"]: args["value"]}


def admit_values(rt: Registry, cmd: Command) -> None:
    known = rt.hparam_names()
    if known is None:
        return None  # before the first step the loop may still register them: checked when applied
    unknown = {name: unknown_hparam(name, known) for name in _values(cmd.args) if name not in known}
    if unknown:
        raise ValuesRefused(unknown)
    return None


def assign_values(rt: Runtime, item: Admitted) -> Any:
    """All values coerced and checked first; then assigned together (each setter and `on_change` inside the hook
    budget); if one assignment raises, the ones before it are put back, so a change applies whole or not at all."""
    reg = rt.registry
    values = _values(item.command.args)
    coerced, refused = {}, {}
    for name, value in values.items():
        hp = reg.hparams.get(name)
        try:
            if hp is None:
                raise unknown_hparam(name, reg.hparams)
            coerced[name] = hp.coerce(value)
        except ProtocolError as e:  # every refusal named, not only the first
            refused[name] = e
    if refused:
        raise ValuesRefused(refused)
    if rt.safety is not None:  # so that `rewind --before ID` undoes this change
        _snapshot(rt, f"before {kinds.SET_HPARAM.describe(item.command.args)} (from {item.command.sender})", item)
    done: list[tuple[str, Any]] = []
    results = []
    try:
        for name, value in coerced.items():
            old = reg.hparams[name].current()
            results.append(rt.timer.call(reg.assign, name, value, item.command.sender))
            done.append((name, old))
    except BaseException:
        for name, old in reversed(done):
            try:
                rt.timer.call(reg.assign, name, old, f"{item.command.sender} (undone: a later value failed)")
            except BaseException:  # noqa: BLE001, S110 - the original error is the answer; keep undoing the rest
                pass
        raise
    return results[0] if "values" not in item.command.args else {r["name"]: r for r in results}


def restore_values(state: Restored, args: Mapping[str, Any], sender: str) -> None:
    state.hparams.update(_values(args))


# -- metrics -------------------------------------------------------------------------------------------------------


def compile_metric_code(rt: Registry, cmd: Command) -> types.CodeType:
    args = cmd.args
    if args["name"] in rt.metric_names() and not args["replace"]:
        raise metric_exists(args["name"])
    return compile_metric(args["name"], args["code"])


def install_metric(rt: Runtime, item: Admitted) -> Any:
    """Install the metric, then run it once as a check (with a scratch `state`, writing nothing): the result
    carries its first value, or the error of that first run, and then the metric stays installed, paused."""
    args = item.command.args
    reg = rt.registry
    with reg.lock:
        if args["name"] in reg.metrics and not args["replace"]:
            raise metric_exists(args["name"])
        metric = reg.install(args, item.code, item.command.sender)
    if rt.guard is not None:
        rt.guard.watch(args["name"], bool(args.get("guard")))
    added = {"name": args["name"], "tag": f"bidviz/{args['name']}"}
    try:
        return {**added, "first_value": rt.timer.call(first_run, metric, rt.control.at)}
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # noqa: BLE001 - the metric's failure, told to its sender; training goes on
        info = describe_failure(rt.timer, e, "<metric")
        if isinstance(e, MetricTimeout):
            info.update(message=f"metric {metric.name!r} {e}", traceback="", line=None)
    with reg.lock:
        metric.status, metric.last_error, metric.first_error = "paused", info, {**info, "step": rt.control.at}
        reg.refresh()
    return {**added, "status": "paused", "first_error": info}


def first_run(metric: Any, step: int | None) -> Any:
    """A metric's value once, with a scratch `state` and no writer: what its first step would show."""
    from .lockstep import NullWriter  # here: lockstep imports this module

    value = metric.fn({})
    return None if value is None else emit(NullWriter(), f"bidviz/{metric.name}", value, metric.kind, step or 0)


def restore_metric(state: Restored, args: Mapping[str, Any], sender: str) -> None:
    state.metrics[args["name"]] = {**args, "status": "running", "sender": sender}


def require_metric(rt: Registry, cmd: Command) -> None:
    if cmd.args["name"] not in rt.metric_names():
        raise unknown_metric(cmd.args["name"], rt.metric_names())


def _set_status(rt: Runtime, item: Admitted, status: str) -> Any:
    reg = rt.registry
    with reg.lock:
        m = reg.metric(item.command.args["name"])
        if status == "removed":
            del reg.metrics[m.name]
            if rt.guard is not None:
                rt.guard.watch(m.name, False)
        else:
            m.status = status
            m.errors_in_row = 0
            if status == "running":
                m.first_error = None  # resumed as it is: its own runs say how it does from now on
        reg.refresh()
    return {"name": m.name, "status": status}


def drop_metric(rt: Runtime, item: Admitted) -> Any:
    return _set_status(rt, item, "removed")


def hold_metric(rt: Runtime, item: Admitted) -> Any:
    return _set_status(rt, item, "paused")


def rerun_metric(rt: Runtime, item: Admitted) -> Any:
    return _set_status(rt, item, "running")


def restore_drop(state: Restored, args: Mapping[str, Any], sender: str) -> None:
    state.metrics.pop(args["name"], None)


def _restore_status(specs: dict[str, dict[str, Any]], name: str, status: str) -> None:
    """A metric's or a rule's status as a paused or resumed one was journaled."""
    if name in specs:
        specs[name]["status"] = status


def restore_hold(state: Restored, args: Mapping[str, Any], sender: str) -> None:
    _restore_status(state.metrics, args["name"], "paused")


def restore_rerun(state: Restored, args: Mapping[str, Any], sender: str) -> None:
    _restore_status(state.metrics, args["name"], "running")


def _pack_specs(every: int) -> list[dict[str, Any]]:
    """The diagnostics pack as add_metric args: the one place it is spelled out."""
    return [{"name": name, "code": src, "every": every, "kind": "auto", "replace": True} for name, src in PACK.items()]


def compile_pack(rt: Registry, cmd: Command) -> dict[str, types.CodeType]:
    return {spec["name"]: compile_metric(spec["name"], spec["code"]) for spec in _pack_specs(1)}


def install_pack(rt: Runtime, item: Admitted) -> Any:
    with rt.registry.lock:
        for spec in _pack_specs(item.command.args["every"]):
            rt.registry.install(spec, item.code[spec["name"]], item.command.sender)
    return list(item.code)


def restore_pack(state: Restored, args: Mapping[str, Any], sender: str) -> None:
    for spec in _pack_specs(args.get("every", 1)):
        state.metrics[spec["name"]] = {**spec, "status": "running", "sender": sender}


def install_pack_now(registry: Registry, every: int, sender: str) -> list[str]:
    """`Bridge.enable_diagnostics`: the pack from code."""
    with registry.lock:
        for spec in _pack_specs(every):
            registry.install(spec, compile_metric(spec["name"], spec["code"]), sender)
    return list(PACK)


# -- eval ----------------------------------------------------------------------------------------------------------


def compile_terminal(rt: Registry, cmd: Command) -> Any:
    return compile_eval(cmd.args["code"])


def run_code(code: tuple[types.CodeType | None, types.CodeType | None], namespace: dict[str, Any]) -> Rendered:
    """Statements, then the last expression's value, rendered: all of it user code, run inside the budget."""
    stmts, expr = code
    if stmts is not None:
        exec(stmts, namespace)
    return render(eval(expr, namespace) if expr is not None else None)


def run_terminal(rt: Runtime, item: Admitted) -> Any:
    if rt.ranks is None or item.command.args.get("ranks") != "all":
        return rt.timer.call(run_code, item.code, rt.registry.namespace)
    # Every rank runs it and every rank's answer is gathered, a failure included: the ranks must all gather.
    try:
        mine = rt.timer.call(run_code, item.code, rt.registry.namespace).text
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # noqa: BLE001 - this rank's failure is its answer
        info = describe_failure(rt.timer, e, "<eval")
        mine = f"<failed: {info['type']}: {info['message']}>"[:RESULT_LIMIT]
    answers = rt.ranks.gather(mine, rt.control.step)
    if answers is None:
        return None
    result = {str(rank): text for rank, text in enumerate(answers)}
    return Rendered(result, repr(result)[:RESULT_LIMIT])


# -- pause, resume, stop -------------------------------------------------------------------------------------------


def hold_training(rt: Runtime, item: Admitted) -> Any:
    rt.control.paused = True
    rt.registry.changed = True
    return True


def release_training(rt: Runtime, item: Admitted) -> Any:
    rt.control.paused = False
    if rt.guard is not None:
        rt.guard.rearm()
    rt.registry.changed = True
    return False


def end_training(rt: Runtime, item: Admitted) -> Any:
    rt.control.should_stop = True
    rt.control.paused = False
    rt.registry.changed = True
    return True


# -- snapshots and rewind -------------------------------------------------------------------------------------------


def _safety(rt: Runtime) -> Safety:
    if rt.safety is None:
        raise ProtocolError("this bridge keeps no snapshots (Bridge(snapshots=False))", type="NoSnapshot")
    return rt.safety


def _snapshot(rt: Runtime, reason: str, item: Admitted) -> Any:
    """A snapshot under the hook budget (a target's state_dict is user code); one that runs past it is noted."""
    safety = _safety(rt)
    try:
        return rt.timer.call(lambda: safety.take(rt.control.step, reason, item.command.id))
    except MetricTimeout as e:
        safety.registry.changed = True
        safety.store.note = f"snapshot at step {rt.control.step} {e}"
        return None


def take_snapshot(rt: Runtime, item: Admitted) -> Any:
    reason = item.command.args.get("reason") or f"taken by {item.command.sender or 'a command'}"
    snap = _snapshot(rt, reason, item)
    if snap is None:
        raise ProtocolError(_safety(rt).store.note or "the snapshot failed: see the journal", type="SnapshotSkipped")
    return snap


def rewind_to_snapshot(rt: Runtime, item: Admitted) -> Any:
    safety, cmd = _safety(rt), item.command
    done = rt.timer.call(
        lambda: safety.rewind(
            rt.control.step, to=cmd.args.get("to"), before=cmd.args.get("before"), command=cmd.id, sender=cmd.sender
        )
    )
    if rt.guard is not None:
        rt.guard.rearm()
    return done


# -- rules -----------------------------------------------------------------------------------------------------------


def _rules(rt: Runtime) -> Rules:
    if rt.rules is None:
        raise ProtocolError("rules run on the leader (rank 0) only", type="NoRules")
    return rt.rules


def compile_rule_code(rt: Registry, cmd: Command) -> types.CodeType:
    from .rules import compile_rule

    return compile_rule(cmd.args["name"], cmd.args["code"])


def install_rule(rt: Runtime, item: Admitted) -> Any:
    rules, args = _rules(rt), item.command.args
    with rules.lock:
        if args["name"] in rules.rules and not args["replace"]:
            raise ProtocolError(
                f"a rule named {args['name']!r} exists; pass replace=true (CLI: --replace) to change it",
                type="NameTaken",
            )
        rules.install(args, item.code, item.command.sender)
    return {"name": args["name"], "every": args["every"], "cooldown": args["cooldown"]}


def drop_rule(rt: Runtime, item: Admitted) -> Any:
    return _rules(rt).set_status(item.command.args["name"], "removed")


def hold_rule(rt: Runtime, item: Admitted) -> Any:
    return _rules(rt).set_status(item.command.args["name"], "paused")


def rerun_rule(rt: Runtime, item: Admitted) -> Any:
    return _rules(rt).set_status(item.command.args["name"], "running")


def restore_rule(state: Restored, args: Mapping[str, Any], sender: str) -> None:
    state.rules[args["name"]] = {**args, "status": "running", "sender": sender}


def restore_rule_drop(state: Restored, args: Mapping[str, Any], sender: str) -> None:
    state.rules.pop(args["name"], None)


def restore_rule_hold(state: Restored, args: Mapping[str, Any], sender: str) -> None:
    _restore_status(state.rules, args["name"], "paused")


def restore_rule_rerun(state: Restored, args: Mapping[str, Any], sender: str) -> None:
    _restore_status(state.rules, args["name"], "running")


# -- the table's names, resolved once ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Behaviour:
    kind: kinds.Kind
    admit: Callable[[Registry, Command], Any] | None
    apply: Callable[[Runtime, Admitted], Any]
    replay: Callable[[Restored, Mapping[str, Any], str], None] | None


def _resolve(name: str | None) -> Any:
    if name is None:
        return None
    fn = globals().get(name)
    assert callable(fn), f"bidviz.kinds names {name!r}, which bidviz.bridge.effects does not define"
    return fn


BEHAVIOURS: dict[str, Behaviour] = {
    k.name: Behaviour(k, _resolve(k.admit), _resolve(k.apply), _resolve(k.replay)) for k in kinds.KINDS.values()
}
