"""Replay: what a resumed run gets back from its journal. A pure function of the journal's lines.

The journal is outside data too (a person may edit it, a crash may cut it): a line that does not parse or does
not fit is skipped and counted, never fatal.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bidviz import kinds

from .effects import BEHAVIOURS


@dataclass
class Restored:
    """What the journal says, as far as a restart needs it."""

    done: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> response, for the ids asked about
    interrupted: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> {kind, args, sender, step}
    hparams: dict[str, Any] = field(default_factory=dict)  # name -> last applied value
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> add_metric args, status, sender
    skipped: int = 0  # lines that did not parse or did not fit


def read_lines(path: Path) -> Iterator[dict[str, Any] | None]:
    """Each line of a journal as a dict, or None for one that does not parse (a cut last line, an edit)."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return
    with f:
        for raw in f:
            try:
                entry = json.loads(raw)
            except (ValueError, RecursionError):
                yield None
                continue
            yield entry if isinstance(entry, dict) else None


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


def _fold(out: Restored, entry: dict[str, Any], wanted: set[str], restore: bool) -> bool:
    event = entry.get("event")
    if event == "applying":
        for c in entry.get("commands") or ():
            if isinstance(c, dict) and isinstance(c.get("id"), str):
                out.interrupted[c["id"]] = {**c, "step": entry.get("step")}
        return True
    if event == "metric_disabled" and entry.get("metric") in out.metrics:
        out.metrics[entry["metric"]]["status"] = "disabled"
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
