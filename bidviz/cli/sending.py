"""Sending: build and sign every command, deliver them to a run's inbox, wait for the responses and report them.

`send` is what every steering verb calls; it returns the exit status.
"""

from __future__ import annotations

import argparse
import errno
import time
from collections.abc import Sequence

from bidviz import protocol
from bidviz.channel import Mailbox
from bidviz.cli.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_NO_RESPONSE, EXIT_OK, EXIT_USAGE, CliError
from bidviz.cli.output import age, print_error, print_json, say
from bidviz.cli.reading import checked_mailbox
from bidviz.cli.types import Args, Response, Show
from bidviz.errors import ChannelError, StateError
from bidviz.runs import UNREADABLE, status_row


def _sender() -> str:
    return f"cli:{protocol.default_sender()}"


def _make_commands(requests: Sequence[tuple[str, Args]], labels: Sequence[str] | None) -> list[protocol.Command]:
    """Build (and sign) every command before sending any, so one bad argument sends nothing."""
    secret = protocol.env_secret()
    sender = _sender()
    commands: list[protocol.Command] = []
    last_ms = -1
    for i, (kind, args) in enumerate(requests):
        # Inbox names start with the sending millisecond; distinct ones keep the bridge applying in our order.
        while int(time.time() * 1000) <= last_ms:
            time.sleep(0.0005)
        try:
            command = protocol.make_command(kind, args, sender=sender, secret=secret)
        except protocol.ProtocolError as e:
            where = f"{labels[i]}: " if labels else ""
            raise CliError(f"{where}{e}", EXIT_USAGE) from None
        last_ms = int(command.sent_at * 1000)
        commands.append(command)
    return commands


def os_failure(path: object, error: OSError, action: str = "write into") -> str:
    """One sentence for a failed file operation on `path`: what happened and what to do."""
    code = error.errno
    what = f"cannot {action} {path}: {error.strerror or error}"
    if code == errno.EROFS:
        return (
            f"{what}: the file system is read-only here; run `bidviz` where the log directory is writable "
            "(e.g. on the training machine) or mount it read-write"
        )
    if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return f"{what} (disk full or quota reached); free some space and try again"
    if code in (errno.EACCES, errno.EPERM):
        return f"{what}; run `bidviz` as the user that runs the training"
    return f"{what}; check that the run's .bidviz/ is intact (a Bridge recreates it when it starts)"


def _deliver(mailbox: Mailbox, commands: Sequence[protocol.Command]) -> None:
    for command in commands:
        try:
            mailbox.send(command)
        except protocol.ProtocolError as e:
            raise CliError(str(e), EXIT_USAGE) from None
        except ChannelError as e:
            raise CliError(str(e), EXIT_NO_RESPONSE) from None
        except OSError as e:
            raise CliError(os_failure(mailbox.inbox, e), EXIT_USAGE) from None


def _wait_all(mailbox: Mailbox, commands: Sequence[protocol.Command], wait: float) -> list[Response | None]:
    deadline = time.monotonic() + wait
    try:
        return [mailbox.wait_response(c.id, max(0.0, deadline - time.monotonic())) for c in commands]
    except StateError as e:
        raise CliError(str(e), EXIT_FAILED) from None


def _why_no_response(mailbox: Mailbox, wait: float) -> str:
    """Why a bridge may not have answered, from its state.json."""
    row = status_row(mailbox)
    liveness = row["live"]
    ago = age(row["heartbeat_age"]) if row["heartbeat_age"] is not None else "?"
    who = f"pid {row['pid'] if row['pid'] is not None else '?'} on {row['host'] or '?'}"
    if liveness == "live":
        return (
            f"its bridge ({who}) is live (heartbeat {ago} ago) but did not answer within {wait:g}s; it may be in a "
            "long step or a slow metric: try a longer --wait"
        )
    if liveness == "stale":
        return f"its bridge ({who}) is stale: no heartbeat for {ago}; the training process hung, crashed or was killed"
    if liveness == "ended":
        return f"its bridge ({who}) has ended: training closed it {ago} ago"
    if liveness == UNREADABLE:
        return f"its state cannot be read ({row['problem']})"
    return "no bridge has ever written its state there: training has not started a Bridge on this run yet"


def _no_response_message(mailbox: Mailbox, pending: Sequence[protocol.Command], wait: float) -> str:
    ids = ", ".join(c.id for c in pending)
    many = len(pending) > 1
    never = status_row(mailbox)["live"] == "none"
    when = "when a Bridge starts on that run" if never else "if that run's bridge comes back"
    return (
        f"no response from {mailbox.run_dir} within {wait:g}s: {_why_no_response(mailbox, wait)}. "
        f"The command{'s' if many else ''} ({ids}) stay{'' if many else 's'} queued in {mailbox.inbox} and will be "
        f"applied {when}"
    )


def send(
    opts: argparse.Namespace,
    requests: Sequence[tuple[str, Args]],
    show: Show,
    *,
    many: bool = False,
    labels: Sequence[str] | None = None,
) -> int:
    """Send `requests` to run `opts.run`, wait for their responses and report them; returns the exit status.

    `many`: `--json` prints a list; with `labels`, errors name the command they belong to.
    """
    commands = _make_commands(requests, labels)
    mailbox = checked_mailbox(opts.run)
    _deliver(mailbox, commands)
    if opts.no_wait:
        return _report_sent(commands, opts.json, many)
    try:
        responses = _wait_all(mailbox, commands, opts.wait)
    except KeyboardInterrupt:
        ids = ", ".join(c.id for c in commands)
        say(f"interrupted; the command(s) {ids} stay queued and will still be applied", err=True)
        return EXIT_INTERRUPTED
    if opts.json:
        _print_responses_json(commands, responses, many)
    status = EXIT_OK
    for i, (command, response) in enumerate(zip(commands, responses, strict=True)):
        if response is None:
            continue
        if response.get("status") == "applied":
            if not opts.json:
                show(command.args, response)
        else:
            print_error(response, labels[i] if labels else None)
            status = EXIT_FAILED
    pending = [c for c, r in zip(commands, responses, strict=True) if r is None]
    if pending:
        say(f"error: {_no_response_message(mailbox, pending, opts.wait)}", err=True)
        status = EXIT_NO_RESPONSE
    return status


def _report_sent(commands: Sequence[protocol.Command], as_json: bool, many: bool) -> int:
    if as_json:
        sent = [{"id": c.id, "kind": c.kind, "status": "sent"} for c in commands]
        print_json(sent if many else sent[0])
    else:
        for c in commands:
            say(c.id)
    return EXIT_OK


def _print_responses_json(
    commands: Sequence[protocol.Command], responses: Sequence[Response | None], many: bool
) -> None:
    shown = [
        r if r is not None else {"id": c.id, "kind": c.kind, "status": "pending"}
        for c, r in zip(commands, responses, strict=True)
    ]
    print_json(shown if many else shown[0])
