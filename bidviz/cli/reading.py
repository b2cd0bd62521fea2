"""Reading a run's mailbox without sending anything: it must exist and be this user's, its state.json readable."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bidviz.channel import Mailbox
from bidviz.cli.errors import EXIT_FAILED, EXIT_NO_RESPONSE, EXIT_USAGE, CliError
from bidviz.errors import ChannelError, StateError


def checked_mailbox(run: str) -> Mailbox:
    """The mailbox of `run`, refused (exit 2) when it is a symlink, another user's or writable by others."""
    mailbox = Mailbox(run)
    try:
        mailbox.check_root()
    except ChannelError as e:
        raise CliError(f"refusing the mailbox of {run}: {e}", EXIT_USAGE) from None
    return mailbox


def open_mailbox(run: str) -> Mailbox:
    """The checked mailbox of `run`, which must exist (exit 3 when no Bridge ever ran there)."""
    mailbox = checked_mailbox(run)
    if not mailbox.root.is_dir():
        raise CliError(
            f"{run} has no BIDViz mailbox ({mailbox.root} is missing): no Bridge has run there. "
            "Start training with a Bridge on this run directory, or check the path",
            EXIT_NO_RESPONSE,
        )
    return mailbox


def read_state(run: str) -> dict[str, Any]:
    """The run's state.json (exit 3 while there is none, exit 1 when it is corrupt or unreadable)."""
    try:
        state = open_mailbox(run).read_state()
    except StateError as e:
        raise CliError(str(e), EXIT_FAILED) from None
    if state is None:
        raise CliError(
            f"{run} has no state.json yet: its Bridge has not started (or is writing it); try again",
            EXIT_NO_RESPONSE,
        )
    return state


def metrics_of(state: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The metrics mapping of a state.json, keeping only well-formed entries."""
    metrics = state.get("metrics") or {}
    return {str(k): v for k, v in metrics.items() if isinstance(v, dict)} if isinstance(metrics, dict) else {}
