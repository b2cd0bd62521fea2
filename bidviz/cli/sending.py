"""Sending: every command goes through the Python client (`bidviz.client`: build and sign, deliver, wait,
withdraw what no one waits for any more), and this module says what happened the CLI's way: messages and exit
statuses.

`send` is what every steering verb calls; it returns the exit status.
"""

from __future__ import annotations

import argparse
import errno
import time
from collections.abc import Mapping, Sequence

from bidviz import protocol
from bidviz.channel import Mailbox
from bidviz.cli.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_NO_RESPONSE, EXIT_OK, EXIT_USAGE, CliError
from bidviz.cli.output import age, print_error, print_json, say
from bidviz.cli.reading import run_mailbox
from bidviz.cli.types import Args, Response, Show
from bidviz.client import Run, make_commands
from bidviz.errors import ChannelError, StateError
from bidviz.runs import UNREADABLE, status_row
from bidviz.runs import ended as ended_reason


def _sender() -> str:
    return f"cli:{protocol.default_sender()}"


def _make_commands(
    requests: Sequence[tuple[str, Args]], labels: Sequence[str] | None, expires_in: float | None
) -> list[protocol.Command]:
    """Build (and sign) every command before sending any (the client's `make_commands`), so one bad argument sends
    nothing: a usage error naming it."""
    try:
        return make_commands(requests, sender=_sender(), expires_in=expires_in, labels=labels)
    except protocol.ProtocolError as e:
        raise CliError(str(e), EXIT_USAGE) from None


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


def _deliver(run: Run, commands: Sequence[protocol.Command]) -> None:
    try:
        run.deliver(commands)
    except protocol.ProtocolError as e:
        raise CliError(str(e), EXIT_USAGE) from None
    except ChannelError as e:
        raise CliError(str(e), EXIT_NO_RESPONSE) from None
    except OSError as e:
        raise CliError(os_failure(run.mailbox.inbox, e), EXIT_USAGE) from None


def _wait_all(run: Run, commands: Sequence[protocol.Command], wait: float) -> list[Response | None]:
    try:
        return run.responses(commands, wait)
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


def expires_in(opts: argparse.Namespace) -> float | None:
    """Seconds a command may wait for a bridge to claim it: `--expires`, none with `--queue`, else the sender's
    own patience (`--wait`, 30 s with `--no-wait`)."""
    if opts.queue:
        return None
    return float(opts.expires) if opts.expires is not None else float(opts.wait)


def _refuse_ended(why: str, run: str) -> None:
    raise CliError(
        f"nothing was sent to {run}: {why}, so no bridge would apply the command. Start training again (resume "
        "this run explicitly, e.g. `examples/train_torch.py --resume RUN`), or add --queue to leave the "
        "command for a Bridge that resumes this run (or --expires 1h to give up after an hour)",
        EXIT_FAILED,
    )


#: what `Mailbox.withdraw` found, as told to the user
_GAVE_UP = {
    "withdrawn": "withdrawn: it was not applied and never will be; send it again when the bridge answers",
    "claimed": "the bridge took it before it expired, so it will still be applied and answered; its outcome "
    "will be in `bidviz journal {run}`",
}


def _fates(mailbox: Mailbox, commands: Sequence[protocol.Command], fate: Mapping[str, str]) -> str:
    """One line per command without a response: what became of it."""
    lines = []
    for command in commands:
        what = fate.get(command.id, "queued")
        if what == "queued":
            until = time.strftime("%H:%M:%S", time.localtime(command.expires_at)) if command.expires_at else None
            text = f"queued in {mailbox.inbox}: applied if a bridge claims it" + (
                f" before {until}, else answered Expired" if until else " (no expiry: --queue)"
            )
        else:
            text = _GAVE_UP[what].format(run=mailbox.run_dir)
        lines.append(f"  {command.id} ({command.kind}): {text}")
    return "\n".join(lines)


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
    expiry = expires_in(opts)
    commands = _make_commands(requests, labels, expiry)
    mailbox = run_mailbox(opts.run)
    run = Run(opts.run, mailbox=mailbox, sender=_sender())  # the client's sending, waiting and withdrawing
    deliberate = opts.queue or opts.expires is not None  # left queued on purpose: never withdrawn
    ended = ended_reason(mailbox)
    if ended is not None and not deliberate:
        _refuse_ended(ended, opts.run)
    _deliver(run, commands)
    if opts.no_wait:
        return _report_sent(commands, opts.json, many)
    if ended is not None:  # queued on purpose for a bridge that resumes this run: nothing to wait for now
        say(f"{opts.run}: {ended}; sent anyway, as asked:\n{_fates(mailbox, commands, {})}", err=True)
        return _report_sent(commands, opts.json, many)
    try:
        responses = _wait_all(run, commands, opts.wait)
    except KeyboardInterrupt:
        if deliberate:
            say("interrupted; the command(s) stay queued, as --queue/--expires asked", err=True)
            return EXIT_INTERRUPTED
        for cid, what in run.withdraw(commands).items():
            say(f"interrupted; {cid}: {_GAVE_UP.get(what, 'answered: see the journal').format(run=opts.run)}", err=True)
        return EXIT_INTERRUPTED
    fate = run.give_up(commands, responses) if not deliberate and None in responses else {}
    if opts.json:
        _print_responses_json(commands, responses, many, fate)
    status = EXIT_OK
    for i, (command, response) in enumerate(zip(commands, responses, strict=True)):
        if response is None:
            continue
        if response.get("status") == "applied":
            shown = None if opts.json else show(command.args, response)
            status = max(status, shown or EXIT_OK)
        else:
            print_error(response, labels[i] if labels else None)
            status = EXIT_FAILED
    pending = [c for c, r in zip(commands, responses, strict=True) if r is None]
    if pending:
        why = _why_no_response(mailbox, opts.wait)
        say(
            f"error: no response from {opts.run} within {opts.wait:g}s: {why}.\n{_fates(mailbox, pending, fate)}",
            err=True,
        )
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
    commands: Sequence[protocol.Command], responses: Sequence[Response | None], many: bool, fate: Mapping[str, str]
) -> None:
    """A command without a response shows what became of it: `withdrawn`, `claimed` or (sent with --queue or
    --expires) `pending`."""
    shown = [
        r if r is not None else {"id": c.id, "kind": c.kind, "status": fate.get(c.id, "pending")}
        for c, r in zip(commands, responses, strict=True)
    ]
    print_json(shown if many else shown[0])
