"""Commands sent over HTTP (the tab, `bidviz serve`) expire like the CLI's: `expires_in` (default 120 s, what the tab
waits), null to queue on purpose; a run whose bridge has ended refuses at once. Through the real control plane."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from bidviz.channel import Mailbox
from bidviz.errors import PublicError
from bidviz.tb_plugin.core import COMMAND_EXPIRES, ControlPlane, DirectoryRuns


def _plane(tmp_path: Path, state: dict[str, Any]) -> tuple[ControlPlane, Mailbox]:
    mailbox = Mailbox(tmp_path / "logs" / "exp")
    mailbox.create()
    mailbox.write_state({"v": 1, "pid": os.getpid(), "host": socket.gethostname(), **state})
    return ControlPlane(str(tmp_path / "logs"), DirectoryRuns(tmp_path / "logs")), mailbox


def _sent(mailbox: Mailbox) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(mailbox.inbox.iterdir())]


def test_a_command_over_http_expires_after_what_the_tab_waits_unless_asked(tmp_path: Path) -> None:
    plane, mailbox = _plane(tmp_path, {"heartbeat": time.time()})
    body = {"run": "exp", "kind": "pause", "args": {}}
    plane.command(json.dumps(body).encode(), sender="test")
    plane.command(json.dumps({**body, "expires_in": 5}).encode(), sender="test")
    plane.command(json.dumps({**body, "expires_in": None}).encode(), sender="test")
    default, five, never = _sent(mailbox)
    assert default["expires_at"] == pytest.approx(default["sent_at"] + COMMAND_EXPIRES) and COMMAND_EXPIRES == 120
    assert five["expires_at"] == pytest.approx(five["sent_at"] + 5)
    assert "expires_at" not in never
    for bad in (0, -1, "1h", True, 1e12, [1]):
        with pytest.raises(PublicError, match="expires_in must be") as e:
            plane.command(json.dumps({**body, "expires_in": bad}).encode(), sender="test")
        assert e.value.http_status == 400
    assert len(_sent(mailbox)) == 3


def test_a_run_whose_bridge_ended_refuses_at_once_unless_queued_on_purpose(tmp_path: Path) -> None:
    plane, mailbox = _plane(tmp_path, {"heartbeat": time.time() - 30, "closed": True})
    body = {"run": "exp", "kind": "stop", "args": {}}
    with pytest.raises(PublicError, match="nothing was sent: its bridge has ended") as e:
        plane.command(json.dumps(body).encode(), sender="test")
    assert e.value.http_status == 409 and not _sent(mailbox)
    plane.command(json.dumps({**body, "expires_in": 3600}).encode(), sender="test")
    (queued,) = _sent(mailbox)
    assert queued["kind"] == "stop" and queued["expires_at"] == pytest.approx(queued["sent_at"] + 3600)
