"""A network namespace on this machine standing in for another host: joined to the root namespace by
a veth pair (root side 10.200.N.1/24, namespace side 10.200.N.2/24, N free on this machine), with
its loopback up and an epmd of its own, so that an Erlang or C node started inside it
(`ip netns exec NAME ...`) is `name@10.200.N.2` to the nodes outside. Everything it creates it
removes in cleanup(): its epmd by PID, the veth pair, the namespace. Needs root."""
from __future__ import annotations

import ipaddress
import secrets
import signal
import subprocess
from pathlib import Path

from .env import EPMD_PORT
from .errors import Abort, HarnessError
from .net import can_connect
from .processes import raise_now, unique, wait_for
from .registry import register


def _ip(*args: str) -> None:
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
    if r.returncode != 0:
        raise HarnessError(f"ip {' '.join(args)} -> exit {r.returncode}: {r.stderr.strip()}")


def _used_ipv4_networks() -> list[ipaddress.IPv4Network]:
    out = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True, check=True).stdout
    return [ipaddress.ip_interface(line.split()[3]).network for line in out.splitlines()]


class NetNamespace:
    def __init__(self, log_dir: Path):
        self.name = unique("mpns_")
        tag = secrets.token_hex(3)
        # interface names: at most 15 bytes
        self.veth_root, self.veth_ns = f"mpv{tag}r", f"mpv{tag}n"
        used = _used_ipv4_networks()
        free = [n for n in range(1, 255)
                if not any(ipaddress.ip_network(f"10.200.{n}.0/24").overlaps(u) for u in used)]
        if not free:
            raise HarnessError("no free 10.200.N.0/24 on this machine")
        n = free[secrets.randbelow(len(free))]
        self.root_addr, self.ns_addr = f"10.200.{n}.1", f"10.200.{n}.2"
        self.log_path = Path(log_dir) / f"{self.name}-epmd.log"
        self.created = self.linked = False
        self.epmd: subprocess.Popen | None = None
        register(self)

    def start(self) -> None:
        try:
            _ip("netns", "add", self.name)
            self.created = True
            _ip("link", "add", self.veth_root, "type", "veth", "peer", "name", self.veth_ns)
            self.linked = True
            _ip("link", "set", self.veth_ns, "netns", self.name)
            _ip("addr", "add", f"{self.root_addr}/24", "dev", self.veth_root)
            _ip("link", "set", self.veth_root, "up")
            _ip("-n", self.name, "addr", "add", f"{self.ns_addr}/24", "dev", self.veth_ns)
            _ip("-n", self.name, "link", "set", self.veth_ns, "up")
            _ip("-n", self.name, "link", "set", "lo", "up")
            # Its own epmd, in the foreground (no -daemon: its PID is ours to stop). It listens on
            # every address of the namespace, so nodes outside reach it on ns_addr.
            with open(self.log_path, "ab") as log:
                self.epmd = subprocess.Popen(["ip", "netns", "exec", self.name, "epmd", "-port", str(EPMD_PORT)],
                                             stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                             start_new_session=True)
            wait_for(lambda: can_connect(EPMD_PORT, self.ns_addr) or
                     (self.epmd.poll() is not None and raise_now(Abort(f"epmd exited with {self.epmd.returncode}"))),
                     10, f"epmd in {self.name} on {self.ns_addr}")
        except Exception:
            self.cleanup()
            raise

    def exec_args(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]

    def cleanup(self) -> None:
        p, self.epmd = self.epmd, None
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        if self.linked:
            # deleting one end deletes the pair (the other end may already be gone with the namespace)
            subprocess.run(["ip", "link", "del", self.veth_root], capture_output=True, timeout=20)
            self.linked = False
        if self.created:
            _ip("netns", "del", self.name)
            self.created = False

    def __repr__(self) -> str:
        return f"NetNamespace({self.name}, {self.root_addr} <-> {self.ns_addr})"
