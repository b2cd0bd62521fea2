"""What a journal line says, as people read it: a command's outcome (`lr 0.1 → 0.03`, `paused`) and who sent it.
Shared by every client that shows the journal (the tab, `bidviz serve`); depends on nothing of ours."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

__all__ = ["outcome", "who"]


def _shown(value: Any, limit: int = 60) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=repr) if _plain(value) else repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _plain(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, list, dict))


_DONE = {"pause": "paused", "resume": "resumed", "stop": "stop requested"}
_METRIC_DONE = {"remove_metric": "removed", "pause_metric": "paused", "resume_metric": "resumed"}
_METRIC_DONE.update(remove_rule="removed", pause_rule="paused", resume_rule="resumed")  # by name, as for metrics


def outcome(entry: Mapping[str, Any], result: Any = None) -> str:
    """What an answered command did, as a person reads it: `lr 0.1 → 0.03`, `paused`, `series bidviz/gnorm`, an
    eval's value, or `failed: ZeroDivisionError: division by zero`. `result` is its response's result."""
    status = entry.get("status")
    if status != "applied":
        error = entry.get("error") if isinstance(entry.get("error"), Mapping) else {}
        detail = ": ".join(str(p) for p in (error.get("type"), error.get("message")) if p)
        return f"{status}: {detail}" if detail else str(status)
    kind = entry.get("kind")
    try:
        if kind == "set_hparam" and isinstance(result, Mapping):
            changes = [result] if "name" in result else [{"name": n, **v} for n, v in result.items()]
            return ", ".join(f"{c['name']} {_shown(c.get('old'), 20)} → {_shown(c.get('value'), 20)}" for c in changes)
        if kind == "add_metric" and isinstance(result, Mapping) and result.get("tag"):
            return f"series {result['tag']}"
        if kind == "rewind" and isinstance(result, Mapping) and isinstance(result.get("note"), str):
            return result["note"]
        if kind == "snapshot" and isinstance(result, Mapping):
            return f"snapshot {result['id']} of step {result['step']}"
        if kind == "add_rule" and isinstance(result, Mapping):
            return f"rule {result['name']}, every {result['every']}, rests {result['cooldown']} steps after acting"
        if kind == "add_diagnostics" and isinstance(result, list):
            return f"{len(result)} metrics: {_shown(', '.join(map(str, result)), 80)}"
    except (TypeError, KeyError, AttributeError):  # a hand-edited or hostile line: shown as it is below
        pass
    if kind in _DONE:
        return _DONE[kind]
    if kind in _METRIC_DONE:
        return _METRIC_DONE[kind]
    return _shown(result, 200) if result is not None else "ok"


def who(sender: Any) -> str:
    """A command's sender as the journal shows it: `cli:alice@box` -> `alice@box (cli)`; the bridge when none."""
    if not isinstance(sender, str) or not sender:
        return "bridge"
    client, sep, rest = sender.partition(":")
    return f"{rest} ({client})" if sep and rest and client.isalpha() else sender
