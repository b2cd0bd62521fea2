"""One error hierarchy for all of BIDViz. Depends on nothing of ours.

Every error raised on purpose is a `BIDVizError`. It carries what a response, an HTTP answer or an exit status
needs: `type` (the name a response's `error.type` shows), `status` (`rejected`: refused before running; `failed`:
raised while running) and `http_status` (for the control-plane routes). Messages say what was received and what
is expected, or what to do.
"""

from __future__ import annotations

from typing import Any, ClassVar


class BIDVizError(Exception):
    """Base of every error BIDViz raises on purpose."""

    default_type: ClassVar[str] = "BIDVizError"
    default_status: ClassVar[str] = "failed"
    default_http_status: ClassVar[int] = 500

    def __init__(
        self,
        message: str = "",
        *,
        type: str | None = None,
        status: str | None = None,
        http_status: int | None = None,
        line: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.type = type or self.default_type
        self.status = status or self.default_status
        self.http_status = http_status or self.default_http_status
        self.line = line

    def as_error(self) -> dict[str, Any]:
        """The `error` object of a response."""
        return {"type": self.type, "message": str(self), "traceback": "", "line": self.line}


class ProtocolError(BIDVizError, ValueError):
    """A command that cannot be accepted; the message says what was received and what is expected."""

    default_type = "ProtocolError"
    default_status = "rejected"
    default_http_status = 400


class ValuesRefused(ProtocolError):
    """Values of one `set_hparam` refused, all named: the error's `refused` maps each name to its type and
    message. One refusal keeps its own type and message; several are of type `ValuesRefused` unless all share one."""

    def __init__(self, refused: dict[str, ProtocolError]) -> None:
        assert refused, "ValuesRefused needs at least one refused value"
        types = {e.type for e in refused.values()}
        if len(refused) == 1:
            message = str(next(iter(refused.values())))
        else:
            message = f"{len(refused)} values refused, none applied: " + "; ".join(map(str, refused.values()))
        super().__init__(message, type=types.pop() if len(types) == 1 else "ValuesRefused")
        self.refused = refused

    def as_error(self) -> dict[str, Any]:
        refused = {name: {"type": e.type, "message": str(e)} for name, e in self.refused.items()}
        return {**super().as_error(), "refused": refused}


class ChannelError(BIDVizError, RuntimeError):
    """A mailbox problem a person must act on; the message says what to do."""

    default_type = "ChannelError"
    default_status = "rejected"
    default_http_status = 409


class BridgeBusyError(ChannelError):
    """Another live Bridge owns this run's mailbox."""

    default_type = "BridgeBusy"


class StateError(ChannelError):
    """A mailbox file (state.json, a response) exists but cannot be read or parsed; names the file and why."""

    default_type = "StateError"


class PublicError(BIDVizError):
    """An HTTP request refused or not served: `http_status` is its status, the message says what to do."""

    default_type = "Refused"
    default_status = "rejected"

    def __init__(self, http_status: int, message: str) -> None:
        super().__init__(message, http_status=http_status)


class MetricTimeout(BIDVizError):
    """Raised inside a hook that ran past its time budget (delivered as an asynchronous exception)."""

    default_type = "MetricTimeout"


class UserCodeExit(BIDVizError):
    """User code raised SystemExit, KeyboardInterrupt or another BaseException that is not an Exception: it is
    the hook's failure, never the training loop's end."""

    default_type = "UserCodeExit"
