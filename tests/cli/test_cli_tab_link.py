"""`bidviz tab-link`: the link that hands the tab its owner's control token, and the token file it makes."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable
from pathlib import Path
from subprocess import CompletedProcess

import pytest

Cli = Callable[..., CompletedProcess[str]]
TOKEN = r"[A-Za-z0-9_-]{40,}"


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "config"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    return home


def test_prints_the_link_and_makes_a_private_token_once(cli: Cli, config: Path) -> None:
    out = cli("tab-link")
    assert out.returncode == 0, out.stderr
    link = out.stdout.strip()
    assert re.fullmatch(rf"http://127\.0\.0\.1:6006/#bidviz&token={TOKEN}", link), link
    token = link.split("token=", 1)[1]
    path = config / "bidviz" / "token"
    assert path.read_text().strip() == token
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert "Keep the link to yourself" in out.stderr and str(path) in out.stderr

    again = cli("tab-link", "--port", "7007", "--host", "box.lan")
    assert again.returncode == 0 and again.stdout.strip() == f"http://box.lan:7007/#bidviz&token={token}"
    assert cli("tab-link", "--host", "::1").stdout.strip() == f"http://[::1]:6006/#bidviz&token={token}"
    behind = cli("tab-link", "--url", "https://box.lan/tb")
    assert behind.stdout.strip() == f"https://box.lan/tb/#bidviz&token={token}"


def test_honours_home_without_xdg(cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    out = cli("tab-link")
    assert out.returncode == 0, out.stderr
    assert (tmp_path / ".config" / "bidviz" / "token").read_text().strip() == out.stdout.split("token=", 1)[1].strip()


def test_a_token_file_others_can_read_is_refused_not_replaced(cli: Cli, config: Path) -> None:
    token = cli("tab-link").stdout.strip().split("token=", 1)[1]
    path = config / "bidviz" / "token"
    path.chmod(0o644)
    out = cli("tab-link")
    assert out.returncode == 2 and out.stdout == ""
    assert f"{path} has mode 0644: other users may have read the control token" in out.stderr
    assert f"rm {path}" in out.stderr
    assert path.read_text().strip() == token  # left for the user to remove: never silently replaced
    path.unlink()
    fresh = cli("tab-link")
    assert fresh.returncode == 0 and fresh.stdout.strip().split("token=", 1)[1] != token


@pytest.mark.skipif(os.getuid() != 0, reason="giving the file to another user needs root")
def test_a_token_file_of_another_user_is_refused(cli: Cli, config: Path) -> None:
    assert cli("tab-link").returncode == 0
    os.chown(config / "bidviz" / "token", 65534, 65534)
    out = cli("tab-link")
    assert out.returncode == 2 and "belongs to uid 65534, not to this user" in out.stderr


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--port", "0"], "port number from 1 to 65535"),
        (["--port", "http"], "expected a port number"),
        (["--host", "evil/path#"], "--host expects a host name"),
        (["--url", "javascript:alert(1)"], "--url expects TensorBoard's address"),
    ],
)
def test_bad_options_are_usage_errors(cli: Cli, config: Path, args: list[str], needle: str) -> None:
    out = cli("tab-link", *args)
    assert out.returncode == 2 and needle in out.stderr, out.stderr
    assert not (config / "bidviz" / "token").exists()  # nothing made for a command that failed
