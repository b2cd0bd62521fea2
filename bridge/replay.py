"""Replay: what a resumed run gets back from its journal. A pure function of the journal's lines.

The recorder appends a `checkpoint` line now and then (and at close) holding what a replay up to it gives; a
resume starts from the last checkpoint and reads only the lines after it, so its time follows what it restores,
not the journal's length. The journal is outside data too (a person may edit it, a crash may cut it): a line that
does not parse or does not fit is skipped and counted, never fatal.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from bidviz import kinds
from bidviz.mailfiles import last_checkpoint, read_lines  # noqa: F401 - re-exported: tests and tools read them here

from .effects import BEHAVIOURS


@dataclass
class Restored:
    """What the journal says, as far as a restart needs it."""

    done: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> response, for the ids asked about
    interrupted: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> {kind, args, sender, step}
    hparams: dict[str, Any] = field(default_factory=dict)  # name -> last applied value
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> add_metric args, status, sender
    rules: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> add_rule args, status, sender
    skipped: int = 0  # lines that did not parse or did not fit


def replay(lines: Iterable[dict[str, Any] | None], *, wanted: set[str], restore: bool = True) -> Restored:
    """Responses of the `wanted` ids (commands still in the inbox), commands that were applying when the process
    died, and, with `restore`, the tuned hyperparameters and the metric set as the journal leaves them."""
    out = Restored()
    for entry in lines:
        try:
            if entry is None or not _fold(out, entry, wanted, restore):
                out.skipped += entry is None
        except Exception:  # noqa: BLE001 - a line that does not fit its kind's schema
            out.skipped += 1
    return out


def checkpoint(state: Restored) -> dict[str, Any]:
    """The line that stands for every line before it."""
    return {
        "event": "checkpoint",
        "hparams": state.hparams,
        "metrics": state.metrics,
        "rules": state.rules,
        "interrupted": state.interrupted,
    }


def fold(out: Restored, entry: dict[str, Any], *, restore: bool = True) -> None:
    """One line into `out` (the recorder keeps its running checkpoint with this)."""
    try:
        _fold(out, entry, set(), restore)
    except Exception:  # noqa: BLE001 - our own lines fit; a line that does not is left out of the checkpoint
        out.skipped += 1


def _fold(out: Restored, entry: dict[str, Any], wanted: set[str], restore: bool) -> bool:
    event = entry.get("event")
    if event == "checkpoint":
        hparams, metrics, interrupted = entry.get("hparams"), entry.get("metrics"), entry.get("interrupted")
        if isinstance(interrupted, dict):
            out.interrupted = {k: v for k, v in interrupted.items() if isinstance(v, dict)}
        if restore and isinstance(hparams, dict) and isinstance(metrics, dict):
            out.hparams = dict(hparams)
            out.metrics = {n: _metric_spec(m) for n, m in metrics.items()}
            rules = entry.get("rules")
            out.rules = {n: _rule_spec(r) for n, r in rules.items()} if isinstance(rules, dict) else {}
        return True
    if event == "applying":
        for c in entry.get("commands") or ():
            if isinstance(c, dict) and isinstance(c.get("id"), str):
                out.interrupted[c["id"]] = {**c, "step": entry.get("step")}
        return True
    if event == "metric_error" and entry.get("metric") in out.metrics and isinstance(entry.get("error"), dict):
        out.metrics[entry["metric"]]["last_error"] = entry["error"]
        return True
    if event == "metric_disabled" and entry.get("metric") in out.metrics:
        spec = out.metrics[entry["metric"]]
        spec["status"] = "disabled"
        spec["last_error"] = {**(spec.get("last_error") or {}), "disabled": str(entry.get("reason") or "disabled")}
        return True
    if event == "rule_disabled" and entry.get("rule") in out.rules:
        out.rules[entry["rule"]]["status"] = "disabled"
        return True
    if event == "rewound" and restore and isinstance(entry.get("hparams"), dict):
        out.hparams.update(entry["hparams"])  # what a rewind restored outlives the changes it undid
        return True
    if event != "command" or not isinstance(entry.get("response"), dict):
        return True
    cid = entry.get("id")
    out.interrupted.pop(cid, None)  # type: ignore[arg-type]
    if cid in wanted:
        out.done[cid] = entry["response"]  # type: ignore[index]
    if not restore or entry.get("status") != "applied":
        return True
    behaviour = BEHAVIOURS.get(entry.get("kind"))  # type: ignore[arg-type]
    if behaviour is None or behaviour.replay is None:
        return True
    args = kinds.get(behaviour.kind.name).parse_args(entry.get("args"))  # as strict as a command file
    sender = entry.get("sender")
    behaviour.replay(out, args, sender if isinstance(sender, str) else "")
    return True


def _metric_spec(spec: Any) -> dict[str, Any]:
    """A metric of a checkpoint line, as strict as an add_metric command."""
    fields = (*kinds.METRIC_SET_FIELDS, "guard")
    args = kinds.ADD_METRIC.parse_args({k: spec[k] for k in fields if spec.get(k) is not None})
    status, sender, last_error = spec.get("status"), spec.get("sender"), spec.get("last_error")
    return {
        **args,
        "status": status if status in ("running", "paused", "disabled") else "running",
        "sender": sender if isinstance(sender, str) else "",
        **({"last_error": last_error} if isinstance(last_error, dict) else {}),
    }


def _rule_spec(spec: Any) -> dict[str, Any]:
    """A rule of a checkpoint line, as strict as an add_rule command."""
    args = kinds.ADD_RULE.parse_args({k: spec[k] for k in ("name", "code", "every", "cooldown") if k in spec})
    status, sender = spec.get("status"), spec.get("sender")
    return {
        **args,
        "status": status if status in ("running", "paused", "disabled") else "running",
        "sender": sender if isinstance(sender, str) else "",
    }
