"""Safety: snapshots before changes, and rewinds to them, in the training thread at a step boundary.

A `set_hparam` takes a snapshot right before it assigns (so `rewind --before ID` undoes that change), as does
`snapshot` on demand; a `rewind` first takes one of the present (so the rewind is undoable in turn), then restores
the chosen snapshot: the targets' states, the RNG states and the hyperparameters' values. The step counter is the
user's loop's and goes on: series continue at later steps from the restored weights; the rewind is marked in the
event file (scalar `bidviz/rewinds`: the step restored from; text `bidviz/rewind_notes`) and in the journal (a
`rewound` event, which a resumed run replays so it keeps the restored values).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from bidviz.errors import ProtocolError

from .registry import Registry, plain_json
from .snapshots import DEFAULT_BYTES, DEFAULT_COUNT, SnapshotStore

REWIND_TAG = "bidviz/rewinds"
REWIND_TEXT_TAG = "bidviz/rewind_notes"


class Safety:
    def __init__(
        self,
        registry: Registry,
        journal: Callable[[dict[str, Any]], None],
        *,
        max_bytes: int = DEFAULT_BYTES,
        max_count: int = DEFAULT_COUNT,
        spill_dir: Path | None = None,
    ) -> None:
        self.registry = registry
        self._journal = journal
        self.tracked: dict[str, Any] = {}
        self.store = SnapshotStore(self.targets, max_bytes=max_bytes, max_count=max_count, spill_dir=spill_dir)
        self.rewinds = 0

    def track(self, obj: Any, name: str | None = None) -> str:
        """Keep `obj` (anything with `state_dict` and `load_state_dict`) in every snapshot; returns its name."""
        if not (callable(getattr(obj, "state_dict", None)) and callable(getattr(obj, "load_state_dict", None))):
            raise TypeError(
                f"bridge.track needs an object with state_dict() and load_state_dict() (a module, an optimizer, a "
                f"scheduler, a GradScaler...); received {type(obj).__name__}"
            )
        name = name or f"{type(obj).__name__.lower()}{len(self.tracked) or ''}"
        self.tracked[name] = obj
        return name

    def targets(self) -> dict[str, Any]:
        """What a snapshot holds: the namespace's `model` (when it has a state), then what was tracked or bound."""
        out: dict[str, Any] = {}
        model = self.registry.namespace.get("model")
        if callable(getattr(model, "state_dict", None)) and callable(getattr(model, "load_state_dict", None)):
            out["model"] = model
        for name, obj in self.tracked.items():
            if obj is not None and all(obj is not o for o in out.values()):
                out[name] = obj
        return out

    def _values(self) -> dict[str, Any]:
        with self.registry.lock:
            return {name: hp.current() for name, hp in self.registry.hparams.items()}

    def take(self, step: int | None, reason: str, command: str | None) -> dict[str, Any] | None:
        """A snapshot (its public description), or None with a journal note when it was skipped or failed. A
        snapshot that fails never stops what it was taken for."""
        try:
            snap = self.store.take(step, reason, command, self._values())
        except KeyboardInterrupt:
            raise
        except BaseException as e:  # noqa: BLE001 - a target's state_dict() is user code
            self._journal({"event": "snapshot_failed", "reason": f"{reason}: {type(e).__name__}: {e}"[:500]})
            return None
        finally:
            self.registry.changed = True
        if snap is None:
            self._journal({"event": "snapshot_skipped", "reason": self.store.note})
            return None
        return snap.public()

    def rewind(self, step: int, *, to: int | None, before: str | None, command: str, sender: str) -> dict[str, Any]:
        """Restore the chosen snapshot (ProtocolError NoSnapshot when there is none); what was restored."""
        snap = self.store.find(to=to, before=before)
        was = self._values()
        undo = self.take(step, f"before rewind to {snap.id} (step {snap.step})", command)
        restored = self.store.restore(snap)
        changed = self._restore_values(snap.hparams, was, step, f"{sender} (rewind to {snap.id})")
        self.rewinds += 1
        writer = self.registry.writer
        writer.add_scalar(REWIND_TAG, float(snap.step if snap.step is not None else -1), step)
        note = (
            f"rewound at step {step} to snapshot {snap.id} of step {snap.step} ({snap.reason}); restored "
            f"{', '.join(restored) or 'no objects'}"
            + (f"; values: {', '.join(f'{n}={v!r}' for n, v in changed.items())}" if changed else "")
        )
        writer.add_text(REWIND_TEXT_TAG, note, step)
        self.registry.wrote = self.registry.changed = True
        result = {
            "snapshot": snap.id,
            "from_step": snap.step,
            "reason": snap.reason,
            "restored": restored,
            "hparams": changed,
            "undo": undo["id"] if undo else None,
            "note": note,
        }
        self._journal({"event": "rewound", "label": note, **result})
        return result

    def _restore_values(
        self, saved: Mapping[str, Any], was: Mapping[str, Any], step: int, sender: str
    ) -> dict[str, Any]:
        """The hyperparameters as the snapshot had them. A bound optimizer's values came back with its state; the
        others are assigned (setters and on_change run). Every value that changed is a step on its curve."""
        reg = self.registry
        changed: dict[str, Any] = {}
        with reg.lock:
            hparams = dict(reg.hparams)
        for name, value in saved.items():
            hp = hparams.get(name)
            if hp is None:
                continue
            now = hp.current()
            if now != value:
                try:
                    reg.assign(name, hp.coerce(value), sender)
                except ProtocolError:
                    continue  # its bounds changed since: it keeps its value (the result says what came back)
            elif was.get(name) != now:
                hp.record(plain_json(was.get(name)), plain_json(now), step, sender)
                reg.write_value(name, now)
            if was.get(name) != hp.current():
                changed[name] = plain_json(hp.current())
        return changed

    def describe(self) -> dict[str, Any]:
        return {**self.store.describe(), "rewinds": self.rewinds}
