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
