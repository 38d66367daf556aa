"""Ports and sockets: free ports, connect probes, connection storms, and epmd's name table."""
from __future__ import annotations

import secrets
import socket
import struct

from .env import EPMD_PORT
from .errors import HarnessError


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (bound to port 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("0.0.0.0", port))
            return True
        except OSError:
            return False


def free_port_range(n: int = 10, low: int = 20000, high: int = 32000) -> tuple[int, int]:
    """n consecutive free ports below the kernel's ephemeral range (for FIREWALL_WINDOW)."""
    for _ in range(200):
        base = low + secrets.randbelow((high - low) // n) * n
        if all(port_free(p) for p in range(base, base + n)):
            return base, base + n - 1
    raise HarnessError("no free port range found")


def can_connect(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def hang_up_storm(port: int, count: int, burst: int = 50, host: str = "127.0.0.1") -> None:
    """Opens `count` TCP connections to host:port, `burst` at a time, each closed at once: half with
    FIN, half with RST (SO_LINGER 0), as port scanners and load-balancer health checks do."""
    done = 0
    while done < count:
        socks = []
        try:
            for _ in range(min(burst, count - done)):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(s)
                s.connect((host, port))
        finally:
            for i, s in enumerate(socks):
                if i % 2:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.close()
        done += len(socks)


def epmd_names(host: str = "127.0.0.1") -> dict[str, int]:
    """Names registered in the epmd at host (the local one by default; NAMES_REQ), name -> port.
    {} if epmd is not up."""
    try:
        with socket.create_connection((host, EPMD_PORT), timeout=2) as s:
            s.sendall(struct.pack(">HB", 1, 110))
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return {}
    names = {}
    for line in data[4:].decode("latin-1").splitlines():
        # "name foo at port 12345"
        parts = line.split()
        if len(parts) == 5 and parts[0] == "name":
            names[parts[1]] = int(parts[4])
    return names
