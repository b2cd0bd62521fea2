"""Reading a run's mailbox without sending anything: it must exist, and its state.json must be readable."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bidviz.channel import Mailbox
from bidviz.cli.errors import EXIT_NO_RESPONSE, CliError


def _mailbox(run: str) -> Mailbox:
    mailbox = Mailbox(run)
    if not mailbox.root.is_dir():
        raise CliError(
            f"{run} has no BIDViz mailbox ({mailbox.root} is missing): no Bridge has run there. "
            "Start training with a Bridge on this run directory, or check the path",
            EXIT_NO_RESPONSE,
        )
    return mailbox


def _state(run: str) -> dict[str, Any]:
    state = _mailbox(run).read_state()
    if state is None:
        raise CliError(
            f"{run} has no readable state.json yet: its Bridge has not started (or is writing it); try again",
            EXIT_NO_RESPONSE,
        )
    return state


def _metrics(state: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    metrics = state.get("metrics") or {}
    return {str(k): v for k, v in metrics.items() if isinstance(v, dict)} if isinstance(metrics, dict) else {}
