"""Issue 15: long node names and a Megaphone node on another host address, as an operator deploys
it. A network namespace stands in for the front-end host (harness/netns.py: a veth pair, root side
10.200.N.1, namespace side 10.200.N.2, an epmd of its own in the namespace). Inside it runs the real
Megaphone node, `--host 10.200.N.2 --dist-interface 10.200.N.2`; outside, in the root namespace, two
ejabberd 23.01 nodes with long names (`-name mpit_ej_...@10.200.N.1`, numeric host parts: no
/etc/hosts entry needed) joined into one cluster, each configuring the Megaphone node with a
listener on 10.200.N.2. Clients connect to that address from outside the namespace.

  * every node runs with long names, the Megaphone node is in the other namespace, both ejabberd
    nodes are its controllers; 40 users log in through it and spread over the two ejabberd nodes,
    and chat both ways with a native user on each;
  * SIGKILL of one ejabberd node: the Megaphone node drops it within net_ticktime, exactly its
    sessions end (the others stay live and chat on), and the listener keeps serving logins.

Needs root (ip netns); `scripts/test-integration -k test_cross_host`.
"""
from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

import conftest
from harness.ejabberd import Ejabberd
from harness.load_client import LoadClient
from harness.megaphone_node import MegaphoneNode
from harness.net import can_connect, free_port
from harness.netns import NetNamespace
from harness.processes import unique, wait_for

TICK = 4      # net_ticktime of every node, s
USERS = 60    # registered: xb1..xb60
N_MP = 40     # users through the Megaphone node


@dataclass
class CrossHost:
    base: Path
    ns: NetNamespace
    ej1: Ejabberd
    ej2: Ejabberd
    mp: MegaphoneNode
    port: int

    @property
    def ejs(self) -> list[Ejabberd]:
        return [self.ej1, self.ej2]

    def logs(self) -> str:
        return "\n".join([e.logs_tail(40) for e in self.ejs] + [self.mp.logs_tail(40)])

    def per_node(self) -> dict[str, int]:
        return {str(k): v["connections"] for k, v in self.mp.stats()["controller_nodes"].items()}

    def local_users(self, ej: Ejabberd) -> list[str]:
        return sorted(u.decode() for u in ej.rpc(
            "[element(1, element(3, S)) || S <- ejabberd_sm:dirty_get_my_sessions_list()]."))


@pytest.fixture(scope="module")
def cross_host():
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 (ip netns)")
    conftest._check_built()
    base = Path(tempfile.mkdtemp(prefix="megaphone-it-crosshost-"))
    os.chmod(base, 0o755)
    ns = NetNamespace(base)
    ej1 = ej2 = mp = None
    try:
        ns.start()
        cookie = secrets.token_hex(16)
        name = unique("mpx_")
        mp_node = f"{name}@{ns.ns_addr}"
        port = free_port()   # free here; in the namespace nothing else listens
        listeners = {mp_node: [("tcp", ns.ns_addr, port)]}
        ej1, ej2 = (Ejabberd(base, listeners, cookie=cookie, connect_retry=1, net_ticktime=TICK, host=ns.root_addr)
                    for _ in range(2))
        mp = MegaphoneNode(base / "nodes", cookie, ej1.helper, name=name, host=ns.ns_addr, netns=ns.name,
                           epmd_host=ns.ns_addr,
                           extra_args=["--net-ticktime", str(TICK), "--dist-interface", ns.ns_addr])
        mp.start()
        ej1.start()
        ej2.start()
        ej2.ctl("join_cluster", ej1.node, timeout=120)
        env = CrossHost(base, ns, ej1, ej2, mp, port)
        wait_for(lambda: sorted(str(n) for n in ej1.rpc("mnesia:system_info(running_db_nodes).")) ==
                 sorted([ej1.node, ej2.node]), 60, "one running Mnesia cluster", on_timeout=env.logs)
        wait_for(lambda: mp.stats(timeout=2)["controllers"] == 2, 60,
                 "both ejabberd nodes attached to the Megaphone node", on_timeout=env.logs)
        assert ej1.register_numbered(USERS, timeout=120) == []
        yield env
    finally:
        conftest._tear_down(base, (ej2, ej1, mp), "cross-host integration")
        ns.cleanup()


def test_long_names_and_a_megaphone_node_on_another_host_address(cross_host: CrossHost):
    c = cross_host
    # Long names everywhere; the Megaphone node really runs in the other namespace.
    for ej in c.ejs:
        assert ej.rpc("net_kernel:longnames().") is True
        assert ej.rpc("node().") == ej.node
    st = c.mp.stats()
    assert str(st["node"]) == c.mp.node and c.mp.node.endswith("@" + c.ns.ns_addr)
    assert os.stat(f"/proc/{c.mp.pid}/ns/net").st_ino == os.stat(f"/run/netns/{c.ns.name}").st_ino
    assert os.stat(f"/proc/{c.mp.pid}/ns/net").st_ino != os.stat("/proc/self/ns/net").st_ino
    assert [tuple(x[1:]) for x in st["listeners"]] == [(tuple(int(b) for b in c.ns.ns_addr.split(".")), c.port)], st
    assert not can_connect(c.port, "127.0.0.1"), "the listener is in the other namespace only"

    la = LoadClient(c.base, c.port, first=1, count=N_MP, host=c.ns.ns_addr)
    natives = [LoadClient(c.base, ej.c2s_port, first=N_MP + 1 + k, count=1) for k, ej in enumerate(c.ejs)]
    try:
        for cl, n in [(la, N_MP)] + [(nc, 1) for nc in natives]:
            done = cl.login()
            assert (done["logged_in"], done["failed"]) == (n, 0), cl.logs_tail()
        on = [set(c.local_users(ej)) - {f"xb{N_MP + 1 + k}"} for k, ej in enumerate(c.ejs)]
        assert c.per_node() == {ej.node: len(o) for ej, o in zip(c.ejs, on)}
        assert len(on[0]) + len(on[1]) == N_MP and abs(len(on[0]) - len(on[1])) <= 1, on
        print(f"{c.mp.node} in {c.ns.name}: {c.per_node()}")
        # The Megaphone sessions' peer is the root namespace's end of the veth pair; the natives' loopback.
        ips = dict(c.ej1.rpc("[{U, element(1, ejabberd_sm:get_user_ip(U, S, R))} || "
                             "{U, S, R} <- [element(3, X) || X <- ejabberd_sm:dirty_get_my_sessions_list()]]."))
        root_ip = tuple(int(b) for b in c.ns.root_addr.split("."))
        assert {u.decode(): tuple(ip) for u, ip in ips.items()} == \
            {**{u: root_ip for u in on[0]}, f"xb{N_MP + 1}": (127, 0, 0, 1)}, ips

        # Chat both ways between a Megaphone user on each ejabberd node and the native user of the other.
        u1, u2 = (min(int(u[2:]) for u in o) for o in on)
        n1, n2 = N_MP + 1, N_MP + 2
        pairs = [(la, u1, natives[1], n2), (la, u2, natives[0], n1)]
        for scl, si, dcl, di in pairs:
            scl.command(f"send {si} {di} mp{si}-to-native{di}")
            dcl.command(f"send {di} {si} native{di}-to-mp{si}")
        for scl, si, dcl, di in pairs:
            assert dcl.expect("got", where=lambda d, t=f"mp{si}-to-native{di}": d["token"] == t)["from"] == si
            assert scl.expect("got", where=lambda d, t=f"native{di}-to-mp{si}": d["token"] == t)["from"] == di

        # SIGKILL ej2: the Megaphone node drops it, exactly its sessions end, the rest chat on.
        closed0 = c.mp.stats()["closed"].get("node_down", 0)
        t0 = time.monotonic()
        c.ej2.kill()
        wait_for(lambda: set(c.per_node()) == {c.ej1.node}, 2 * TICK, "the Megaphone node to drop the killed node",
                 interval=0.1, on_timeout=c.logs)
        noticed = time.monotonic() - t0
        wait_for(lambda: la.status()["live"] == len(on[0]), 10, "the killed node's sessions to end",
                 on_timeout=lambda: la.logs_tail() + "\n" + c.logs())
        st = la.status()
        print(f"killed {c.ej2.node}: dropped after {noticed:.2f}s; client status {st}")
        assert st["down"] == len(on[1]), st
        assert c.mp.stats()["closed"].get("node_down", 0) - closed0 == len(on[1])
        assert c.mp.connections() == len(on[0]) == c.per_node()[c.ej1.node]
        la.command(f"send {u1} {n1} after-the-kill")
        assert natives[0].expect("got", where=lambda d: d["token"] == "after-the-kill")["from"] == u1
        # The listener still serves: a new login lands on the survivor.
        late = LoadClient(c.base, c.port, first=N_MP + 3, count=1, host=c.ns.ns_addr)
        try:
            assert late.login()["logged_in"] == 1
            assert f"xb{N_MP + 3}" in c.local_users(c.ej1)
            assert late.finish() == 0
        finally:
            late.cleanup()
    finally:
        for cl in [la] + natives:
            cl.cleanup()
