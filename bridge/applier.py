"""The applier: runs admitted commands at a step boundary, in the training thread, through the kinds table.

Every outcome is an answer: `applied` with the rendered result, `rejected` (a ProtocolError: a name or value
that does not fit), or `failed` (anything user code raised, a BaseException included). Only the process's own
Ctrl-C leaves, after its command is answered.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bidviz.errors import MetricTimeout, ProtocolError

from .admission import Admitted
from .effects import BEHAVIOURS, Rendered, Runtime, render
from .handoff import Handoff
from .interrupt import HookTimer
from .metrics import describe_failure, error_info

Outcome = tuple[str, Rendered | None, dict[str, Any] | None]
#: answers one command: (item, status, rendered result, error)
Answer = Callable[[Admitted, str, Rendered | None, dict[str, Any] | None], None]


def outcome(run: Callable[[], Any], timer: HookTimer) -> Outcome:
    """Run one command's effect; its status, rendered result and error (described under `timer`'s budget: that
    runs user code too). KeyboardInterrupt (the user's own Ctrl-C: the hook timer turns any other into a failure)
    is the only exception that leaves."""
    try:
        result = run()
    except ProtocolError as e:
        return "rejected", None, e.as_error()
    except MetricTimeout as e:
        return "failed", None, error_info(MetricTimeout(f"eval {e}"), "<eval")
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # noqa: BLE001 - any failure of user code is its answer
        return "failed", None, describe_failure(timer, e, "<eval")
    return "applied", result if isinstance(result, Rendered) else render(result), None


class Applier:
    def __init__(
        self,
        runtime: Runtime,
        handoff: Handoff,
        answer: Answer,
        journal_ahead: Callable[..., None],
        held: Callable[[], bool] = lambda: True,
    ) -> None:
        self.runtime = runtime
        self.handoff = handoff
        self._answer = answer
        self._journal_ahead = journal_ahead
        self._held = held  # False: the run's owner lease is not this bridge's now (a store): apply nothing

    def apply_pending(self) -> None:
        """Everything handed off so far, in order."""
        batch = []
        while (item := self.handoff.take()) is not None:
            batch.append(item)
        if batch:
            self.apply_items(batch)

    def apply_items(self, batch: list[Admitted]) -> None:
        """`batch` in order; a risky kind is journaled as `applying` right before it runs (write-ahead), so a crash
        answers Interrupted the one command it cut short, not the ones after it that never ran."""
        timer = self.runtime.timer
        for n, item in enumerate(batch):
            if not self._held():  # kept, not answered: the bridge that took the run over applies and answers them
                self.handoff.put_back(batch[n:])
                return
            behaviour = BEHAVIOURS[item.command.kind]
            if not behaviour.kind.idempotent:
                self._journal_ahead([item], self.runtime.control.at)
            try:
                status, rendered, error = outcome(lambda: behaviour.apply(self.runtime, item), timer)  # noqa: B023
            except KeyboardInterrupt as e:
                self._answer(item, "failed", None, describe_failure(timer, e, "<eval"))
                self.handoff.put_back(batch[n + 1 :])
                raise
            self._answer(item, status, rendered, error)
