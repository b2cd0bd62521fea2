"""The peer's uid of a loopback connection, read from the kernel's socket table: real sockets, real users."""

from __future__ import annotations

import os
import socket
import subprocess

import pytest

from bidviz.tb_plugin.peer import connected_uid, is_loopback, peer_uid

# bash's /dev/tcp: a client any user can run (another user cannot read this interpreter under /root)
CLIENT = 'exec 3<>"/dev/tcp/$0/$1"; sleep 30'


def _accept_from(family: int, host: str, user: int | None) -> tuple[int | None, socket.socket, subprocess.Popen]:
    with socket.socket(family, socket.SOCK_STREAM) as server:
        server.bind((host, 0))
        server.listen(1)
        server.settimeout(20)
        port = server.getsockname()[1]
        proc = subprocess.Popen(["/bin/bash", "-c", CLIENT, host, str(port)], user=user)
        conn, _ = server.accept()
    return connected_uid(conn), conn, proc


@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="needs Linux's /proc/net/tcp")
@pytest.mark.parametrize("family, host", [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")])
def test_the_uid_of_a_loopback_peer_is_its_user(family, host):
    if family == socket.AF_INET6 and not socket.has_ipv6:
        pytest.skip("no IPv6")
    users = [None] + ([65534] if os.getuid() == 0 else [])
    for user in users:
        try:
            uid, conn, proc = _accept_from(family, host, user)
        except OSError as e:
            pytest.skip(f"cannot listen on {host}: {e}")
        try:
            assert uid == (os.getuid() if user is None else user)
        finally:
            conn.close()
            proc.kill()
            proc.wait()


def test_not_loopback_is_never_looked_up():
    assert not is_loopback("10.0.0.5") and not is_loopback("example.com")
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("::ffff:127.0.0.1")
    assert peer_uid("10.0.0.5", 5000, 6006) is None
    assert peer_uid("127.0.0.1", 1, 1) is None  # no such connection
    assert peer_uid("not an address", 1, 1) is None


def _row(local: str, remote: str, uid: int, state: str = "01") -> str:
    return f"   0: {local} {remote} {state} 00000000:00000000 00:00000000 00000000 {uid:>5}        0 1 1 0 0 0 0 0"


def test_sockets_of_different_users_that_fit_tell_nothing(tmp_path, monkeypatch):
    """127.0.0.2:5000 -> 127.0.0.1:6006 and 127.0.0.2:5000 -> 127.0.0.3:6006 can both exist (SO_REUSEADDR): a
    stranger's connection must not pass for the owner's socket of the same client end."""
    header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode"
    client = "0200007F:1388"  # 127.0.0.2:5000
    table = tmp_path / "tcp"
    monkeypatch.setattr("bidviz.tb_plugin.peer.TABLES", (table,))

    table.write_text("\n".join([header, _row(client, "0100007F:1776", 65534), _row(client, "0300007F:1776", 0)]))
    assert peer_uid("127.0.0.2", 5000, 6006) is None  # ambiguous: refuse to guess
    assert peer_uid("127.0.0.2", 5000, 6006, "127.0.0.1") == 65534  # the server's own address settles it
    assert peer_uid("127.0.0.2", 5000, 6006, "127.0.0.3") == 0

    table.write_text("\n".join([header, _row(client, "0100007F:1776", 1000), _row(client, "0100007F:1776", 1000)]))
    assert peer_uid("127.0.0.2", 5000, 6006) == 1000
    table.write_text("\n".join([header, _row(client, "0100007F:1776", 1000, state="06")]))  # TIME_WAIT: gone
    assert peer_uid("127.0.0.2", 5000, 6006) is None
