"""Who is on the other end of a loopback connection: the peer's uid, from the kernel's socket table.

TensorBoard sees only a TCP peer, and on a shared machine every user can connect to 127.0.0.1. On Linux the
kernel lists every TCP socket with its owner's uid in `/proc/net/tcp` and `/proc/net/tcp6`: the client's socket
is the one whose local address is the request's remote address and port, connected to our port. Its uid is the
user who opened the connection (the browser or `curl` of that user). Framework-free; no dependencies.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from pathlib import Path

TABLES = (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))
_ESTABLISHED = "01"


def is_loopback(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def _encode(address: str, port: int) -> set[str]:
    """The `ADDR:PORT` spellings a socket of (address, port) has in the tables (IPv4, and IPv4 mapped in IPv6)."""
    ip = ipaddress.ip_address(address.strip("[]"))
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    out = set()
    if isinstance(ip, ipaddress.IPv4Address):
        out.add(f"{struct.unpack('<I', ip.packed)[0]:08X}:{port:04X}")
        mapped = ipaddress.IPv6Address(f"::ffff:{ip}")
        out.add(_v6(mapped.packed) + f":{port:04X}")
    else:
        out.add(_v6(ip.packed) + f":{port:04X}")
    return out


def _v6(packed: bytes) -> str:
    # Four 32-bit words, each in host (little-endian) byte order.
    return "".join(f"{struct.unpack('<I', packed[i : i + 4])[0]:08X}" for i in range(0, 16, 4))


def peer_uid(remote_addr: str, remote_port: int, local_port: int, local_addr: str | None = None) -> int | None:
    """The uid owning the client socket of a connection from (remote_addr, remote_port) to our `local_port` (and
    `local_addr` when known), or None when it cannot be told (not Linux, not loopback, the connection already gone,
    or sockets of different users that fit: a guess would be worse than asking for the control token)."""
    if not is_loopback(remote_addr):
        return None
    try:
        wanted = _encode(remote_addr, int(remote_port))
        ours = _encode(local_addr, int(local_port)) if local_addr else None
        port = f":{int(local_port):04X}"
    except ValueError:
        return None
    uids = set()
    for table in TABLES:
        try:
            lines = table.read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 8 or fields[1] not in wanted or fields[3] != _ESTABLISHED:
                continue
            if not fields[2].endswith(port) or (ours is not None and fields[2] not in ours):
                continue
            try:
                uids.add(int(fields[7]))
            except ValueError:
                return None
    return uids.pop() if len(uids) == 1 else None


def connected_uid(sock: socket.socket) -> int | None:
    """The uid of the peer of an accepted loopback TCP socket (for servers that hold the socket itself)."""
    try:
        host, port = sock.getpeername()[:2]
        local_host, local_port = sock.getsockname()[:2]
    except OSError:
        return None
    return peer_uid(host, port, local_port, local_host)
