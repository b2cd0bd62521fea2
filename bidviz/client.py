"""A Python client of a run, for notebooks and scripts: `run = bidviz.connect("runs/exp")`.

It speaks the same files as the CLI and the tab (commands into `.bidviz/inbox/`, responses from `outbox/`,
`state.json`, the journal, the event files) and imports nothing heavier than the standard library until a series
is read (then numpy, and pandas when it is installed).

    run = bidviz.connect("runs/exp")
    run.set(lr=0.01)                        # {'name': 'lr', 'value': 0.01, 'old': 0.1}
    run.add_metric("gnorm", "sum(p.grad.norm()**2 for p in model.parameters())**0.5")
    run.eval("optimizer.param_groups[0]['lr']")
    for tag, step, value in run.watch("bidviz/gnorm", timeout=10):
        ...
    run.rewind(before=change_id); run.resume()
    run.rules.add("halve", "if metrics['gnorm'] > 10: set(lr=hparams['lr'] / 2)", cooldown=50)

A command that is rejected raises `CommandRejected`, one that failed in training `CommandFailed` (with the
training-side `traceback`), no answer in time `NoResponse`. In Jupyter the run, its state and its rules render as
HTML tables.
"""

from __future__ import annotations

import fnmatch
import html
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from . import kinds, protocol
from .channel import Mailbox, mailbox_for
from .errors import BIDVizError, ChannelError

__all__ = ["CommandError", "CommandFailed", "CommandRejected", "NoResponse", "Run", "connect"]


class CommandError(BIDVizError):
    """A command that was not applied; `response` is the bridge's answer, `traceback` the training side's."""

    def __init__(self, response: Mapping[str, Any]) -> None:
        raw = response.get("error")
        error: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
        self.response = dict(response)
        self.error_type = str(error.get("type") or "Error")
        self.traceback = str(error.get("traceback") or "")
        self.step = response.get("step")
        message = f"{response.get('kind')} {response.get('status')}: {self.error_type}: {error.get('message', '')}"
        if self.traceback:
            message += "\n--- traceback in training ---\n" + self.traceback.rstrip()
        super().__init__(message, type=self.error_type, status=str(response.get("status")), line=error.get("line"))


class CommandRejected(CommandError):
    """Refused before it ran: a bad name or value, a syntax error, no such snapshot."""


class CommandFailed(CommandError):
    """Raised while it ran in training (an `eval` that raised, a setter that refused)."""


class NoResponse(BIDVizError):
    """No answer within the wait: the command stays queued (the message says whether the bridge looks live)."""

    default_type = "NoResponse"


def connect(run_dir: str | os.PathLike[str], *, wait: float = 30.0, sender: str | None = None) -> Run:
    """The run at `run_dir` (a directory a Bridge writes `.bidviz/` in, or an fsspec URL such as `s3://b/runs/x`).
    `wait`: seconds to wait for an answer."""
    return Run(run_dir, wait=wait, sender=sender)


CLAIMED_GRACE = 1.0  # seconds a sender still waits for a command the bridge took just before it gave up


def make_commands(
    requests: Sequence[tuple[str, Mapping[str, Any]]],
    *,
    sender: str,
    expires_in: float | None = None,
    labels: Sequence[str] | None = None,
) -> list[protocol.Command]:
    """Build (and sign, with BIDVIZ_SECRET) every command before any is sent, so one bad argument sends none
    (ProtocolError, prefixed with its label); each gets its own sending millisecond, which keeps the bridge applying
    them in this order."""
    secret = protocol.env_secret()
    out: list[protocol.Command] = []
    last_ms = -1
    for i, (kind, args) in enumerate(requests):
        while int(time.time() * 1000) <= last_ms:
            time.sleep(0.0005)
        try:
            command = protocol.make_command(kind, args, sender=sender, secret=secret, expires_in=expires_in)
        except protocol.ProtocolError as e:
            if not labels:
                raise
            raise protocol.ProtocolError(f"{labels[i]}: {e}", type=e.type) from None
        last_ms = int(command.sent_at * 1000)
        out.append(command)
    return out


class Run:
    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        *,
        wait: float = 30.0,
        sender: str | None = None,
        mailbox: Mailbox | None = None,
    ) -> None:
        """`mailbox`: one already checked (the CLI's, which explains a path that is not a run its own way)."""
        if mailbox is None:
            mailbox = mailbox_for(run_dir)
            mailbox.check_root()  # ChannelError: a symlink, another user's, writable by others
            if not mailbox.exists():
                raise ChannelError(
                    f"{run_dir} has no BIDViz mailbox ({mailbox.root} is missing): no Bridge has run there; start "
                    "training with a Bridge on this directory, or check the path"
                )
        self.mailbox = mailbox
        self.run_dir = mailbox.run_dir
        self.wait = wait
        self.sender = sender or f"python:{protocol.default_sender()}"
        self.last: dict[str, Any] | None = None  # the last response: its "id" is what `rewind(before=...)` takes

    # -- sending: the one path every verb takes, the CLI's too ----------------------------------------------------

    def make(
        self, requests: Sequence[tuple[str, Mapping[str, Any]]], *, expires_in: float | None = None
    ) -> list[protocol.Command]:
        return make_commands(requests, sender=self.sender, expires_in=expires_in)

    def deliver(self, commands: Sequence[protocol.Command]) -> None:
        """Into the inbox, in order (ChannelError without a mailbox, OSError from the file system)."""
        for command in commands:
            self.mailbox.send(command)

    def responses(self, commands: Sequence[protocol.Command], wait: float) -> list[dict[str, Any] | None]:
        """Each command's response, or None for those without one within `wait` seconds (all share the wait);
        StateError for a response file that is corrupt."""
        deadline = time.monotonic() + wait
        return [self.mailbox.wait_response(c.id, max(0.0, deadline - time.monotonic())) for c in commands]

    def withdraw(self, commands: Sequence[protocol.Command]) -> dict[str, str]:
        """Take back commands no one waits for any more: by id, 'withdrawn' (never applied), 'claimed' (the bridge
        took it first: it will be answered) or 'answered'."""
        fate: dict[str, str] = {}
        for command in commands:
            try:
                fate[command.id] = self.mailbox.withdraw(command)
            except OSError:
                fate[command.id] = "claimed"  # cannot tell: say no more than that it may still be applied
        return fate

    def give_up(self, commands: Sequence[protocol.Command], responses: list[dict[str, Any] | None]) -> dict[str, str]:
        """Withdraw each command still without a response, filling `responses` with the answers that came
        meanwhile; a command the bridge took first gets CLAIMED_GRACE seconds to be answered. Its fate by id."""
        fate = self.withdraw([c for c, r in zip(commands, responses, strict=True) if r is None])
        for i, command in enumerate(commands):
            what = fate.get(command.id)
            if what in ("answered", "claimed"):
                responses[i] = self.mailbox.wait_response(command.id, CLAIMED_GRACE if what == "claimed" else 0.0)
        return fate

    def request(self, kind: str, args: Mapping[str, Any] | None = None, *, wait: float | None = None) -> dict[str, Any]:
        """Send one command and return its applied response; CommandRejected, CommandFailed or NoResponse."""
        wait = self.wait if wait is None else wait
        (command,) = self.make([(kind, dict(args or {}))], expires_in=wait)
        self.deliver([command])
        responses = self.responses([command], wait)
        fate = self.give_up([command], responses) if responses[0] is None else {}
        self.last = response = responses[0]
        if response is None:
            gone = (
                "it was withdrawn, never to be applied"
                if fate.get(command.id) == "withdrawn"
                else "it may still be applied: see run.journal()"
            )
            raise NoResponse(
                f"no response from {self.run_dir} within {wait:g}s to {kind} ({command.id}); the bridge "
                f"{self._liveness()}; {gone}"
            )
        return checked(response)

    def _liveness(self) -> str:
        try:
            return f"is {self.mailbox.liveness()}"
        except ChannelError as e:
            return f"cannot be read ({e})"

    # -- verbs -----------------------------------------------------------------------------------------------------

    def set(self, **values: Any) -> Any:
        """Set hyperparameters (all checked first, then applied together at the next step, or none)."""
        if not values:
            raise TypeError("set() needs name=value pairs, e.g. run.set(lr=0.01)")
        args = (
            {"values": values}
            if len(values) > 1
            else {"name": next(iter(values)), "value": next(iter(values.values()))}
        )
        return self.request(kinds.SET_HPARAM.name, args)["result"]

    def add_metric(
        self, name: str, code: str, *, every: int = 1, kind: str = "auto", replace: bool = False, guard: bool = False
    ) -> dict[str, Any]:
        """Add a metric; `guard=True`: the divergence guard watches its values too."""
        args = {"name": name, "code": code, "every": every, "kind": kind, "replace": replace}
        return self.request(kinds.ADD_METRIC.name, {**args, "guard": True} if guard else args)["result"]  # type: ignore

    def remove_metric(self, name: str) -> Any:
        return self.request(kinds.REMOVE_METRIC.name, {"name": name})["result"]

    def eval(self, code: str, now: bool = False) -> Any:
        """Run code in training; its value (when JSON can hold it; else its repr, a str)."""
        response = self.request(kinds.EVAL.name, {"code": code, "now": now})
        return response["result"] if response.get("result") is not None else _repr_value(response)

    def pause(self, reason: str | None = None) -> Any:
        return self.request(kinds.PAUSE.name, {"reason": reason} if reason else {})["result"]

    def resume(self) -> Any:
        return self.request(kinds.RESUME.name)["result"]

    def stop(self, reason: str | None = None) -> Any:
        return self.request(kinds.STOP.name, {"reason": reason} if reason else {})["result"]

    def snapshot(self, reason: str | None = None) -> dict[str, Any]:
        return self.request(kinds.SNAPSHOT.name, {"reason": reason} if reason else {})["result"]  # type: ignore

    def rewind(self, *, to: int | None = None, before: str | None = None) -> dict[str, Any]:
        """Restore the snapshot before command `before`, or the newest at or before step `to`, or the newest."""
        args = {k: v for k, v in (("to", to), ("before", before)) if v is not None}
        return self.request(kinds.REWIND.name, args)["result"]  # type: ignore[no-any-return]

    @property
    def rules(self) -> RuleSet:
        return RuleSet(self)

    # -- reading ---------------------------------------------------------------------------------------------------

    @property
    def state(self) -> State:
        """The bridge's state.json as it is now (an empty State while none was written)."""
        return State(self.mailbox.read_state() or {})

    def journal(self, tail: int | None = None) -> list[dict[str, Any]]:
        entries = list(self.mailbox.iter_journal())
        return entries[-tail:] if tail else entries

    def series(self, tag: str) -> Any:
        """One scalar series: a pandas DataFrame (step, wall_time, value) when pandas is installed, else a numpy
        structured array with those fields. KeyError naming the tags there are."""
        import numpy as np

        from .series import read_series

        found, _ = read_series(self.run_dir)
        if tag not in found:
            raise KeyError(
                f"no scalar series {tag!r} in {self.run_dir}; there are: {', '.join(sorted(found)) or 'none'}"
            )
        array = np.array(list(found[tag]), dtype=[("step", "i8"), ("wall_time", "f8"), ("value", "f8")])
        try:
            import pandas as pd  # type: ignore[import-untyped,unused-ignore]
        except ImportError:
            return array
        return pd.DataFrame(array)

    def watch(
        self, tags: str | Sequence[str], timeout: float | None = None, *, interval: float = 0.1
    ) -> Iterator[tuple[str, int, float]]:
        """(tag, step, value) of each new point of the `tags` (names or shell patterns) as it is written, in the
        order written; ends after `timeout` seconds (None: when the run ends)."""
        from .writers.tail import EventTail

        patterns = [tags] if isinstance(tags, str) else list(tags)
        tail = EventTail(self.run_dir)
        tail.poll()  # what is there already is not new
        deadline = None if timeout is None else time.monotonic() + timeout
        while deadline is None or time.monotonic() < deadline:
            ended = self.state.get("closed") is True
            update = tail.poll()
            for tag, points in update.points.items():
                if any(fnmatch.fnmatchcase(tag, p) for p in patterns):
                    for step, _, value in points:
                        yield tag, step, value
            if ended and not update:
                return
            time.sleep(interval if deadline is None else max(0.0, min(interval, deadline - time.monotonic())))

    def _repr_html_(self) -> str:
        state = self.state
        return f"<b>BIDViz run</b> <code>{html.escape(str(self.run_dir))}</code>" + state._repr_html_()

    def __repr__(self) -> str:
        return f"bidviz.connect({str(self.run_dir)!r})"


def checked(response: Mapping[str, Any]) -> dict[str, Any]:
    status = response.get("status")
    if status == "applied":
        return dict(response)
    raise (CommandRejected if status == "rejected" else CommandFailed)(response)


def _repr_value(response: Mapping[str, Any]) -> Any:
    text = response.get("repr")
    return None if text in (None, "None") else text


class State(dict):  # type: ignore[type-arg]
    """state.json, as a dict that renders as tables in Jupyter."""

    def _repr_html_(self) -> str:
        if not self:
            return "<p>no state yet: the bridge has not started</p>"
        guard = self.get("guard") or {}
        tripped = (guard.get("tripped") or {}) if isinstance(guard, dict) else {}
        head = {
            "step": self.get("step"),
            "steps/s": self.get("steps_per_sec"),
            "paused": self.get("paused"),
            "ended": self.get("closed"),
            "guard": tripped.get("reason") if tripped.get("active") else (guard.get("mode") if guard else "off"),
        }
        hparams = {n: h.get("value") for n, h in (self.get("hparams") or {}).items() if isinstance(h, dict)}
        metrics = {n: m.get("last_value") for n, m in (self.get("metrics") or {}).items() if isinstance(m, dict)}
        snaps = (self.get("snapshots") or {}).get("kept") or []
        return (
            _table("run", head)
            + _table("hyperparameters", hparams)
            + _table("metrics (last value)", metrics)
            + RuleSet.html(self.get("rules") or {})
            + _table("snapshots", {s.get("id"): f"step {s.get('step')}: {s.get('reason')}" for s in snaps})
        )


class RuleSet(Mapping[str, Any]):
    """A run's live rules: read them like a dict (name -> what state.json says), change them with the methods."""

    def __init__(self, run: Run) -> None:
        self._run = run
        self._rules = run.state.get("rules") or {}

    def __getitem__(self, name: str) -> Any:
        return self._rules[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._rules)

    def __len__(self) -> int:
        return len(self._rules)

    def add(self, name: str, code: str, *, every: int = 1, cooldown: int = 100, replace: bool = False) -> Any:
        args = {"name": name, "code": code, "every": every, "cooldown": cooldown, "replace": replace}
        return self._run.request(kinds.ADD_RULE.name, args)["result"]

    def remove(self, name: str) -> Any:
        return self._run.request(kinds.REMOVE_RULE.name, {"name": name})["result"]

    def pause(self, name: str) -> Any:
        return self._run.request(kinds.PAUSE_RULE.name, {"name": name})["result"]

    def resume(self, name: str) -> Any:
        return self._run.request(kinds.RESUME_RULE.name, {"name": name})["result"]

    def _repr_html_(self) -> str:
        return self.html(self._rules)

    @staticmethod
    def html(rules: Mapping[str, Any]) -> str:
        return _table(
            "rules",
            {
                n: f"{r.get('status')}, fired {r.get('fired')}x: {r.get('code')}"
                for n, r in rules.items()
                if isinstance(r, dict)
            },
        )


def _table(title: str, rows: Mapping[Any, Any]) -> str:
    if not rows:
        return ""
    body = "".join(
        f"<tr><td><code>{html.escape(str(k))}</code></td><td>{html.escape(str(v))}</td></tr>" for k, v in rows.items()
    )
    return f"<table><caption style='text-align:left'><b>{html.escape(title)}</b></caption>{body}</table>"
