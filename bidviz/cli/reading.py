"""Reading a run's mailbox without sending anything: it must exist and be this user's, its state.json readable."""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bidviz.channel import Mailbox, find_runs, is_url, mailbox_for
from bidviz.cli.errors import EXIT_FAILED, EXIT_NO_RESPONSE, EXIT_USAGE, CliError
from bidviz.errors import ChannelError, StateError


def checked_mailbox(run: str) -> Mailbox:
    """The mailbox of `run`, refused (exit 2) when it is a symlink, another user's or writable by others."""
    mailbox = mailbox_for(run)
    try:
        mailbox.check_root()
    except ChannelError as e:
        raise CliError(f"refusing the mailbox of {run}: {e}", EXIT_USAGE) from None
    return mailbox


def run_mailbox(run: str) -> Mailbox:
    """The checked mailbox of `run`, which must exist: a path that is not a run is a usage error (exit 2) naming
    the runs under it (the log directory given instead of a run) or near it (a typo)."""
    mailbox = checked_mailbox(run)
    if not (mailbox.exists() if is_url(run) else mailbox.root.is_dir()):
        raise CliError(not_a_run(run), EXIT_USAGE)
    return mailbox


SHOWN_RUNS = 8


def not_a_run(run: str) -> str:
    """Why `run` is not a run, and which runs the user may have meant."""
    path = Path(run)
    if path.is_dir():
        under = [str(path / name) for name, _ in find_runs(path) if name != "."]
        if under:
            latest = max(under, key=_last_active)
            return (
                f"{run} is not a run but holds {len(under)}: {_listed(under)}. Give one of them, e.g. "
                f"`{latest}` (the most recently active)"
            )
        return (
            f"{run} is not a run: it has no BIDViz mailbox ({Mailbox(run).root} is missing), so no Bridge has run "
            "there. Start training with a Bridge on this directory, or check the path"
        )
    parent = path.parent if path.parent.is_dir() else None
    near = [str(parent / name) for name, _ in find_runs(parent) if name != "."] if parent is not None else []
    close = difflib.get_close_matches(str(path), near, n=3, cutoff=0.6)
    if close:
        return f"{run} does not exist; did you mean {' or '.join(close)}?"
    if near:
        return f"{run} does not exist; the runs in {parent}: {_listed(near)}"
    return f"{run} does not exist; give the directory of a run (one its Bridge writes .bidviz/ into)"


def _listed(runs: list[str]) -> str:
    more = f" (and {len(runs) - SHOWN_RUNS} more)" if len(runs) > SHOWN_RUNS else ""
    return ", ".join(runs[:SHOWN_RUNS]) + more


def _last_active(run: str) -> float:
    try:
        return os.stat(Mailbox(run).state_path).st_mtime
    except OSError:
        return 0.0


def read_state(run: str) -> dict[str, Any]:
    """The run's state.json (exit 3 while there is none, exit 1 when it is corrupt or unreadable)."""
    try:
        state = run_mailbox(run).read_state()
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
