"""The safety net of one Bridge: snapshots and rewinds (`safety`), the divergence guard (`guard`) and live rules
(`rules`), wired into the runtime the kinds' behaviours see.

What the guard and the rules decide becomes a command (`act`): made and validated like one from a client, admitted
through its kind, handed to the applier and journaled with its sender (`guard`, `rule:<name>`). On a distributed job
that is what makes it reach every rank at the same step: the leader's handoff is the batch of the next sync point.
So the guard and the rules run on the leader only; every rank keeps its own snapshots (taken and restored by the
same commands at the same steps, so their ids agree).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bidviz import kinds, protocol

from .admission import admit_command
from .effects import Runtime
from .guard import Guard
from .handoff import Handoff
from .interrupt import HookTimer
from .replay import Restored
from .rules import Rules
from .safety import Safety
from .snapshots import DEFAULT_BYTES, DEFAULT_COUNT


@dataclass(frozen=True)
class NetOptions:
    """What `Bridge(...)` says about the safety net."""

    guard: bool | str = True  # True/"pause", "stop", or False
    guard_spike: float | None = None  # trip when the loss exceeds this factor of its recent median
    snapshots: bool = True
    snapshot_bytes: int = DEFAULT_BYTES
    snapshot_count: int = DEFAULT_COUNT
    snapshot_spill: bool = False


class SafetyNet:
    def __init__(
        self,
        runtime: Runtime,
        handoff: Handoff,
        timer: HookTimer,
        journal: Any,
        snapshot_dir: Path,
        options: NetOptions,
        *,
        leader: bool,
    ) -> None:
        self.runtime = runtime
        self.handoff = handoff
        self._journal = journal
        registry = runtime.registry
        self.safety: Safety | None = None
        if options.snapshots:
            spill = snapshot_dir if options.snapshot_spill else None
            self.safety = Safety(
                registry, journal, max_bytes=options.snapshot_bytes, max_count=options.snapshot_count, spill_dir=spill
            )
        self.guard: Guard | None = None
        self.rules: Rules | None = None
        if leader:
            if options.guard:
                mode = "pause" if options.guard is True else str(options.guard)
                self.guard = Guard(self._tripped, mode=mode, spike=options.guard_spike)
            self.rules = Rules(registry, timer, self.act, journal)
        runtime.safety, runtime.rules, runtime.guard = self.safety, self.rules, self.guard

    def act(self, kind: str, args: dict[str, Any], sender: str) -> str:
        """Send a command from inside the bridge (the guard, a rule): validated and admitted like a client's, applied
        at the next step boundary (on a distributed job, at the next sync point on every rank). Its id."""
        cmd = protocol.make_command(kind, args, sender=sender)
        self.handoff.put(admit_command(cmd, self.runtime.registry, None, time.time()))
        return cmd.id

    def _tripped(self, what: str, step: int, reason: str, value: float) -> None:
        assert self.guard is not None
        kind = kinds.PAUSE if self.guard.mode == "pause" else kinds.STOP
        cid = self.act(kind.name, {"reason": f"divergence guard: {reason}"}, "guard")
        last = self.safety.store.describe()["kept"][-1:] if self.safety is not None else []
        self.guard.tripped = {**(self.guard.tripped or {}), "command": cid, "snapshot": last[0] if last else None}
        self._journal(
            {
                "event": "guard_tripped",
                "label": f"divergence guard: {reason}; {kind.name}d",
                "what": what,
                "value": protocol.to_json_value(value),
                "at_step": step,
                "command": cid,
                "snapshot": last[0] if last else None,
            }
        )
        self.runtime.registry.changed = True

    def run_rules(self, step: int) -> None:
        """After the metrics of a step: the guarded metrics' values, then the rules (which see those values)."""
        if self.guard is not None and self.guard.metrics:
            self.guard.check_metrics(self.runtime.registry.metrics, step)
        if self.rules is not None and self.rules.active:
            self.rules.run(step)

    @property
    def active(self) -> bool:
        """Whether every step must take the slow path (rules to run, guarded metrics to check)."""
        return bool(self.rules is not None and self.rules.active) or bool(self.guard and self.guard.metrics)

    def restore(self, restored: Restored) -> None:
        """A resumed run's rules and guarded metrics, from its journal."""
        if self.guard is not None:
            for name, spec in restored.metrics.items():
                self.guard.watch(name, bool(spec.get("guard")))
        self.restore_rules(restored.rules)

    def restore_rules(self, restored: dict[str, dict[str, Any]]) -> None:
        if self.rules is None:
            return
        from .rules import compile_rule

        for name, spec in restored.items():
            try:
                code = compile_rule(name, spec["code"])
            except (ValueError, SyntaxError, RecursionError) as e:
                self._journal(
                    {
                        "event": "restore_failed",
                        "what": f"rule {name}",
                        "label": f"not restored: rule {name}",
                        "message": str(e),
                    }
                )
                continue
            self.rules.install(spec, code, spec.get("sender", ""), status=spec.get("status", "running"))

    def describe(self) -> dict[str, Any]:
        return {
            "snapshots": self.safety.describe() if self.safety is not None else None,
            "guard": self.guard.describe() if self.guard is not None else None,
            "rules": self.rules.describe() if self.rules is not None else {},
        }


__all__ = ["NetOptions", "SafetyNet"]
