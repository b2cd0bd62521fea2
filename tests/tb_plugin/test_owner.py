"""Only TensorBoard's own user may read or steer runs through BIDViz, tested as an attacker would.

Through a real `tensorboard` subprocess and real clients: `curl` as uid 65534 (a stranger on the same machine, who
can connect to 127.0.0.1 like anyone) is refused on every data route, even with a valid CSRF token the owner got,
and nothing reaches training; the same requests as the owner (root here) pass without anything more. A peer that is
not loopback (TensorBoard bound to this machine's non-loopback address) needs the owner's control token from
`bidviz tab-link`. The token rules themselves are tested on `security.Guard` and `control_token`.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from tab_support import clean_env, non_loopback_address, wait_for

from bidviz.errors import PublicError
from bidviz.tb_plugin import control_token, security
from bidviz.tb_plugin.control_token import TOKEN_HEADER, TokenFileError, TokenSource, ensure_token, read_token

P = "/data/plugin/bidviz"
CURL = "/usr/bin/curl"
STRANGER = 65534
ID = "0123456789abcdef0123456789abcdef"

needs_root = pytest.mark.skipif(os.getuid() != 0, reason="acting as another user needs root (CI runs as root)")
needs_proc = pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="needs Linux's /proc/net/tcp")
needs_curl = pytest.mark.skipif(not os.path.exists(CURL), reason=f"needs {CURL}")


def curl(
    url: str, *, user: int | None = None, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    """One request by the real `curl`, as `user`; everything on the command line (a stranger cannot read /root)."""
    cmd = [CURL, "-q", "-sS", "--noproxy", "*", "--max-time", "30", "-o", "-", "-w", "\n%{http_code}"]
    for name, value in (headers or {}).items():
        cmd += ["-H", f"{name}: {value}"]
    if body is not None:
        cmd += ["-H", "Content-Type: application/json", "--data-binary", json.dumps(body)]
    cmd.append(url)
    out = subprocess.run(
        cmd, user=user, cwd="/", env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    text, _, code = out.stdout.rpartition("\n")
    try:
        return int(code), json.loads(text)
    except ValueError:
        return int(code), text


def _live(url: str, **kw: Any) -> Any:
    status, body = curl(f"{url}{P}/runs", **kw)
    assert status == 200, body
    return [r for r in body["runs"] if r["run"] == "exp" and r["live"] == "live"]


def _answered(url: str, command_id: str, **kw: Any) -> Any:
    status, body = curl(f"{url}{P}/response?run=exp&id={command_id}", **kw)
    return status == 200 and body


def _journal(run_dir: Path) -> str:
    return (run_dir / ".bidviz" / "journal.jsonl").read_text()


# -- a stranger on this machine ----------------------------------------------------------------------------------


@needs_root
@needs_proc
@needs_curl
def test_a_stranger_on_this_machine_can_neither_read_nor_steer(
    tmp_path: Path, start_training: Any, start_tensorboard: Any
) -> None:
    logdir = tmp_path / "logs"
    run_dir = logdir / "exp"
    training = start_training(run_dir)
    tb = start_tensorboard(logdir)
    wait_for(lambda: _live(tb.url), "run exp listed as live", 60)
    csrf = curl(f"{tb.url}{P}/csrf")[1]["token"]  # the owner's, handed to the stranger
    marker = tmp_path / "pwned"
    attack = {"run": "exp", "kind": "eval", "args": {"code": f"open({str(marker)!r}, 'w').write('pwned')"}}

    reads = ["csrf", "runs", "state?run=exp", "journal?run=exp", "kinds", "tags?run=exp", f"response?run=exp&id={ID}"]
    reads += ["data?run=exp&tag=hparams/lr&format=csv"]
    for route in reads:
        for headers in ({}, {TOKEN_HEADER: "guess"}):
            status, body = curl(f"{tb.url}{P}/{route}", user=STRANGER, headers=headers)
            assert status == 403, (route, body)
            assert "uid 65534" in body["error"] and "uid 0" in body["error"], (route, body)
            assert csrf not in json.dumps(body) and '"step"' not in json.dumps(body), route
    for route in ("command", "check"):
        status, body = curl(f"{tb.url}{P}/{route}", user=STRANGER, body=attack, headers={"X-BIDViz-CSRF": csrf})
        assert status == 403 and "uid 65534" in body["error"], (route, body)
    # The tab's own code is no secret: a stranger's tab loads and can say why it shows nothing.
    status, module = curl(f"{tb.url}{P}/static/index.js", user=STRANGER)
    assert status == 200 and "export async function render" in module

    # The owner (the user TensorBoard runs as) needs nothing more than before.
    for route in reads[:-2]:
        status, body = curl(f"{tb.url}{P}/{route}")
        assert status == 200, (route, body)
    status, body = curl(
        f"{tb.url}{P}/command", body={**attack, "args": {"code": "1 + 1"}}, headers={"X-BIDViz-CSRF": csrf}
    )
    assert status == 200, body
    resp = wait_for(lambda: _answered(tb.url, body["id"]), "the owner's command applied")
    assert resp["status"] == "applied" and resp["result"] == 2
    # Inbox files are applied in the order they were sent: had the stranger's eval arrived, it would have run by now.
    assert not marker.exists()
    assert "pwned" not in _journal(run_dir)
    assert training.proc.poll() is None
    assert "uid 65534" in tb.proc.output()  # refusals are logged with who was refused


# -- a peer the kernel cannot vouch for: the control token -------------------------------------------------------


def tab_link(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bidviz", "tab-link", *args], capture_output=True, text=True, env=clean_env(), timeout=60
    )


@needs_curl
def test_a_peer_that_is_not_loopback_needs_the_owners_control_token(
    tmp_path: Path, start_training: Any, start_tensorboard: Any
) -> None:
    address = non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback address to bind TensorBoard to")
    logdir = tmp_path / "logs"
    run_dir = logdir / "exp"
    start_training(run_dir)
    tb = start_tensorboard(logdir, host=address)
    assert tb.url.startswith(f"http://{address}:")

    status, body = curl(f"{tb.url}{P}/runs")
    assert status == 403 and "cannot tell who sent" in body["error"] and "bidviz tab-link" in body["error"], body
    status, body = curl(f"{tb.url}{P}/runs", headers={TOKEN_HEADER: "guess"})
    assert status == 403 and "no control token yet" in body["error"], body

    out = tab_link("--host", address, "--port", tb.url.rsplit(":", 1)[1])
    assert out.returncode == 0, out.stderr
    link = out.stdout.strip()
    assert link.startswith(f"{tb.url}/#bidviz&token=")
    token = link.split("token=", 1)[1]
    assert token == read_token()

    status, body = curl(f"{tb.url}{P}/runs", headers={TOKEN_HEADER: token[:-1] + ("A" if token[-1] != "A" else "B")})
    assert status == 403 and f"wrong {TOKEN_HEADER}" in body["error"], body
    owner = {TOKEN_HEADER: token}
    wait_for(lambda: _live(tb.url, headers=owner), "run exp listed as live", 60)
    csrf = curl(f"{tb.url}{P}/csrf", headers=owner)[1]["token"]
    command = {"run": "exp", "kind": "eval", "args": {"code": "2 + 3"}}
    status, body = curl(f"{tb.url}{P}/command", body=command, headers={"X-BIDViz-CSRF": csrf})
    assert status == 403 and "cannot tell who sent" in body["error"]
    status, body = curl(f"{tb.url}{P}/command", body=command, headers={"X-BIDViz-CSRF": csrf, **owner})
    assert status == 200, body
    resp = wait_for(lambda: _answered(tb.url, body["id"], headers=owner), "the command applied")
    assert resp["result"] == 5
    if os.getuid() == 0:  # a stranger with the token would pass: it is the owner's secret, kept in a 0600 file
        status, body = curl(f"{tb.url}{P}/runs", user=STRANGER)
        assert status == 403


# -- the Guard -------------------------------------------------------------------------------------------------


def _request(**kw: Any) -> security.Request:
    return security.Request(method=kw.pop("method", "GET"), host="localhost:6006", **kw)


def _refused(guard: security.Guard, req: security.Request, needle: str) -> None:
    with pytest.raises(PublicError, match=needle) as info:
        guard.check(req)
    assert info.value.http_status == 403


def test_the_guard_passes_the_owner_by_uid_and_refuses_other_uids() -> None:
    guard = security.Guard(owner_uid=1000, owner_token=lambda: "the-token")
    guard.check(_request(peer_uid=1000))
    guard.check(_request(peer_uid=1000, control_token="wrong"))  # the kernel vouches; a stale token is no matter
    _refused(guard, _request(peer_uid=1001), r"request from uid 1001.*refused.*runs as uid 1000")
    _refused(guard, _request(peer_uid=0, method="POST", content_type="application/json"), "from uid 0")
    _refused(guard, _request(peer_uid=1001, control_token="wrong"), "request from uid 1001")
    # A proxy on this machine (another uid) in front of the owner's browser: the owner's token still proves it.
    guard.check(_request(peer_uid=33, control_token="the-token"))
    # The tab's static code holds no secret: served to anyone this server would serve at all.
    guard.check(_request(peer_uid=1001), owner=False)
    guard.check(_request(), owner=False)


def test_without_a_peer_uid_only_the_right_token_passes() -> None:
    guard = security.Guard(owner_uid=1000, owner_token=lambda: "the-token")
    _refused(guard, _request(peer="10.0.0.5:5000"), r"cannot tell who sent this request \(from 10\.0\.0\.5:5000\)")
    _refused(guard, _request(control_token=""), "cannot tell who sent")
    _refused(guard, _request(control_token="the-toke"), "wrong X-BIDViz-Token")
    _refused(guard, _request(control_token="the-token-and-more"), "wrong X-BIDViz-Token")
    guard.check(_request(control_token="the-token"))
    post = {"method": "POST", "content_type": "application/json", "csrf": guard.token}
    _refused(guard, _request(**post), "cannot tell who sent")
    guard.check(_request(control_token="the-token", **post))
    # The token proves the owner; a POST still needs this server's CSRF token.
    _refused(guard, _request(control_token="the-token", **{**post, "csrf": "guess"}), "wrong X-BIDViz-CSRF")
    # The owner has no token yet: nothing passes without the kernel's word.
    _refused(security.Guard(owner_uid=1000, owner_token=lambda: None), _request(control_token="x"), "no control token")


def test_the_guard_reads_the_owners_token_file(config_home: Path) -> None:
    path = control_token.token_path()
    assert path == config_home / "bidviz" / "token"
    guard = security.Guard(owner_uid=os.getuid() + 1)  # so that no peer is the owner
    _refused(guard, _request(control_token="x"), "no control token yet")
    token = ensure_token()
    guard.check(_request(control_token=token))
    path.chmod(0o644)
    with pytest.raises(TokenFileError, match=r"mode 0644: other users may have read the control token"):
        guard.check(_request(control_token=token))
    path.chmod(0o600)
    guard.check(_request(control_token=token))
    path.unlink()
    new = ensure_token()  # a new token replaces the old at once: no TensorBoard restart
    assert new != token
    _refused(guard, _request(control_token=token), "wrong X-BIDViz-Token")
    guard.check(_request(control_token=new))


# -- the token file ------------------------------------------------------------------------------------------------


def test_the_token_file_is_made_once_private_and_honours_xdg(tmp_path: Path, config_home: Path) -> None:
    token = ensure_token()
    path = config_home / "bidviz" / "token"
    assert len(token) >= 40 and path.read_text().strip() == token
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert ensure_token() == token == read_token()
    assert [p.name for p in path.parent.iterdir()] == ["token"]  # no temporary file left behind
    assert control_token.token_path({"HOME": "/home/alice"}) == Path("/home/alice/.config/bidviz/token")
    assert control_token.token_path({"XDG_CONFIG_HOME": "", "HOME": "/h"}) == Path("/h/.config/bidviz/token")
    assert control_token.token_path({"XDG_CONFIG_HOME": "rel", "HOME": "/h"}) == Path("/h/.config/bidviz/token")
    assert control_token.token_path({"XDG_CONFIG_HOME": "/x"}) == Path("/x/bidviz/token")


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o666])
def test_a_token_file_others_can_read_or_write_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "token"
    ensure_token(path)
    path.chmod(mode)
    with pytest.raises(TokenFileError, match=f"mode {mode:04o}.*refused.*rm {path}") as info:
        read_token(path)
    assert info.value.http_status == 403
    with pytest.raises(TokenFileError):
        ensure_token(path)  # never silently replaced
    with pytest.raises(TokenFileError):
        TokenSource(path)()


def test_a_token_file_that_is_a_symlink_or_empty_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    ensure_token(real)
    link = tmp_path / "token"
    link.symlink_to(real)
    with pytest.raises(TokenFileError, match="symlink"):
        read_token(link)
    empty = tmp_path / "empty"
    empty.touch(mode=0o600)
    with pytest.raises(TokenFileError, match="does not hold a control token"):
        read_token(empty)
    assert read_token(tmp_path / "missing") is None


@needs_root
def test_a_token_file_of_another_user_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "token"
    ensure_token(path)
    os.chown(path, STRANGER, STRANGER)
    with pytest.raises(TokenFileError, match="belongs to uid 65534, not to this user"):
        read_token(path)


def test_the_plugin_refuses_a_client_the_kernel_cannot_vouch_for(tmp_path: Path) -> None:
    """werkzeug's test client has no socket: exactly the case of a peer that is not loopback."""
    from tab_support import wsgi_app
    from werkzeug.test import Client

    (tmp_path / "logs").mkdir()
    client = Client(wsgi_app(tmp_path / "logs"))
    token = ensure_token()

    def error(r: Any) -> str:
        return str(json.loads(r.get_data(as_text=True))["error"])

    for route in ("csrf", "runs", "kinds", "state?run=exp", "journal?run=exp", "tags?run=exp", "data?run=e&tag=t"):
        r = client.get(f"{P}/{route}")
        assert r.status_code == 403 and "bidviz tab-link" in error(r), route
        r = client.get(f"{P}/{route}", headers={TOKEN_HEADER: "guess"})
        assert r.status_code == 403 and f"wrong {TOKEN_HEADER}" in error(r), route
        r = client.get(f"{P}/{route}", headers={TOKEN_HEADER: token})
        assert r.status_code != 403, (route, r.get_data(as_text=True))
    assert client.get(f"{P}/static/index.js").status_code == 200
    r = client.post(f"{P}/command", json={"run": "exp", "kind": "stop", "args": {}})
    assert r.status_code == 403 and "bidviz tab-link" in error(r)
