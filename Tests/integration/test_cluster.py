"""Issue 15: an ejabberd cluster behind Megaphone. Two real ejabberd 23.01 nodes joined into one
cluster (`ejabberdctl join_cluster`), two real Megaphone nodes, each listed in both ejabberd nodes'
mod_megaphone config, so each Megaphone node has two controllers. Every process has a short
net_ticktime (TICK) as in test_faults.py, so that a frozen node is dropped within seconds.

  * 200 users log in through the two Megaphone nodes (megaphone-load) and spread evenly over the
    ejabberd nodes (least_sessions); they chat across ejabberd nodes and with a native user on each;
    `ejabberdctl megaphone_status` on either node shows both Megaphone nodes with their sessions per
    ejabberd node;
  * SIGKILL of one ejabberd node under load (raw clients that reconnect, xmpp_load.py): only its
    sessions end, the Megaphone nodes notice within TICK, a connect loop never sees a refusal, the
    clients are back on the survivor within seconds, nothing leaks (sessions, c2s, Megaphone
    connections, fds); restarted, the node is a controller again and takes the next logins;
  * SIGSTOP of one ejabberd node for longer than TICK: the other node's clients keep chatting (p99
    latency bound), the frozen node is dropped by net_ticktime and its clients land on the other;
    after SIGCONT it is attached again as a controller at once, but its Mnesia is partitioned from
    the other's (ejabberd 23.01 does not heal that): the test heals it as an operator must and
    checks that it rejoins (see the comments in the test). It runs last;
  * a third Megaphone node that the two ejabberd nodes configure with different listeners: the
    second `start` gets config_mismatch (in both logs), the first configuration is kept;
  * a rolling restart of both ejabberd nodes under load and a connect loop: no refusal at any
    moment, the clients of the node not being restarted are not touched;
  * an ejabberd node that has begun to stop (ejabberd_stopping run, listeners and ejabberd_sm
    stopped, mod_megaphone not yet) is detached already: new logins go to the other node.

Runs in the suite's parser mode (MEGAPHONE_PARSER); `scripts/test-integration -k test_cluster`.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import socket
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import conftest
from harness.ejabberd import Ejabberd
from harness.load_client import LoadClient
from harness.megaphone_node import MegaphoneNode
from harness.net import can_connect, free_port
from harness.processes import unique, wait_for
from xmpp_load import ClientSpec, Load

TICK = 4            # net_ticktime of every node, s
USERS = 230         # registered: xb1..xb230, password pwI
N_MP = 60           # raw clients through the Megaphone nodes in the fault tests (half through each)
N_NATIVE = 2        # raw clients on the surviving node's own c2s port


@dataclass
class ClusterEnv:
    """N ejabberd nodes in one Mnesia cluster (`ejs`, N >= 2) and two Megaphone nodes (a, b) that
    every one of them configures: each Megaphone node has N controllers."""
    base: Path
    ejs: list[Ejabberd]
    a: MegaphoneNode
    b: MegaphoneNode
    ports: dict[str, int]
    extra: list = field(default_factory=list)   # processes a test started (stopped at the end)

    @property
    def ej1(self) -> Ejabberd:
        return self.ejs[0]

    @property
    def ej2(self) -> Ejabberd:
        return self.ejs[1]

    @property
    def nodes(self) -> list[MegaphoneNode]:
        return [self.a, self.b]

    def port(self, node: MegaphoneNode) -> int:
        return self.ports[node.node]

    def logs(self) -> str:
        return "\n".join([e.logs_tail(60) for e in self.ejs] + [n.logs_tail(40) for n in self.nodes])

    # ---- observations
    def local_users(self, ej: Ejabberd) -> list[str]:
        """Users with a session on this ejabberd node (#session.usr = {U, S, R})."""
        return sorted(u.decode() for u in ej.rpc(
            "[element(1, element(3, S)) || S <- ejabberd_sm:dirty_get_my_sessions_list()]."))

    def counts(self, ej: Ejabberd) -> dict:
        """Local sessions, live c2s processes, mod_megaphone's session and monitor tables."""
        c = ej.session_counts()
        return {k: c[k] for k in ("sm", "c2s", "mp_sessions", "mp_monitors")}

    def per_node(self, node: MegaphoneNode) -> dict[str, int]:
        """The Megaphone node's open connections per attached ejabberd node (stats controller_nodes)."""
        return {str(k): v["connections"] for k, v in node.stats()["controller_nodes"].items()}

    def running_db_nodes(self, ej: Ejabberd) -> list[str]:
        return sorted(str(n) for n in ej.rpc("mnesia:system_info(running_db_nodes)."))

    def attached(self, n_controllers: int | None = None) -> bool:
        """Every Megaphone node has n_controllers controllers (default: one per ejabberd node)."""
        want = len(self.ejs) if n_controllers is None else n_controllers
        return all(n.stats(timeout=2)["controllers"] == want for n in self.nodes)

    def ensure_healthy(self) -> None:
        for n in self.nodes:
            if not n.alive():
                pytest.fail(f"{n.node} died\n{n.logs_tail()}", pytrace=False)
        for e in self.ejs:
            if not e.is_running():
                e._after_exit()
                e.start()
        every = sorted(e.node for e in self.ejs)
        wait_for(lambda: all(self.running_db_nodes(e) == every for e in self.ejs),
                 60, "every ejabberd node in one running Mnesia cluster", on_timeout=self.logs)
        wait_for(self.attached, 30, "every ejabberd node attached to both Megaphone nodes", on_timeout=self.logs)
        wait_for(lambda: self.ej1.rpc("ejabberd_sm:connected_users_number().") == 0, 30,
                 "no session left from an earlier test", on_timeout=self.logs)
        for n in self.nodes:
            wait_for(lambda: n.connections() == 0, 10, f"{n.node} to hold no connection")

    # ---- clients
    def load(self, n_mp: int = N_MP, n_native: int = N_NATIVE, native_on: Ejabberd | None = None) -> Load:
        """Raw reconnecting clients: users 1..n_mp alternately through a and b, then n_native on
        native_on's own c2s port (ej1 by default); started, and stopped at the end of the test."""
        native_on = native_on or self.ej1
        specs = [ClientSpec(f"xb{i}", f"pw{i}", self.port(self.nodes[i % 2]), "megaphone")
                 for i in range(1, n_mp + 1)]
        specs += [ClientSpec(f"xb{i}", f"pw{i}", native_on.c2s_port, "native")
                  for i in range(n_mp + 1, n_mp + n_native + 1)]
        load = Load(specs, seed=15)
        self.extra.append(load)
        load.start()
        wait_for(lambda: load.online() == len(specs), 120, f"all {len(specs)} load clients to log in",
                 interval=0.2, on_timeout=lambda: load.offline_summary() + "\n" + self.logs())
        return load

    def load_client(self, port: int, first: int, count: int, *args: str) -> LoadClient:
        c = LoadClient(self.base, port, first=first, count=count, args=args)
        self.extra.append(c)
        return c

    def stop_extra(self) -> None:
        while self.extra:
            x = self.extra.pop()
            if isinstance(x, Load):
                x.stop()
            elif isinstance(x, ConnectLoop):
                x.stop()
            else:
                x.cleanup()


class ConnectLoop:
    """A thread that connects to each port in turn (and hangs up at once) until stopped, recording
    every failure with its time: a refusal means no listener was open at that moment."""

    def __init__(self, ports: list[int], interval: float = 0.05):
        self.ports, self.interval = ports, interval
        self.attempts = 0
        self.failures: list[tuple[float, int, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="connect-loop", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            port = self.ports[i % len(self.ports)]
            i += 1
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=5):
                    pass
            except OSError as e:
                self.failures.append((time.monotonic(), port, repr(e)))
            self.attempts += 1
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def _percentile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


async def _timed_messages(load: Load, pairs: list[tuple[int, int]], seconds: float, gap: float = 0.05,
                          timeout: float = 10) -> list[float]:
    """Sends one message at a time over `pairs` (client indexes), round robin, for `seconds`; returns
    each one's send-to-delivery time (inf: not delivered within `timeout`). Runs on the load's loop."""
    loop = asyncio.get_running_loop()
    out: list[float] = []
    end = time.monotonic() + seconds
    k = 0
    while time.monotonic() < end:
        i, j = pairs[k % len(pairs)]
        k += 1
        token = f"probe {secrets.token_hex(8)}"
        fut = loop.create_future()
        load._expected[token] = fut
        t = time.monotonic()
        if not load.clients[i].send(load.clients[j].jid, token):
            load._expected.pop(token, None)
            out.append(float("inf"))
        else:
            try:
                await asyncio.wait_for(fut, timeout)
                out.append(time.monotonic() - t)
            except asyncio.TimeoutError:
                load._expected.pop(token, None)
                out.append(float("inf"))
        await asyncio.sleep(gap)
    return out


def timed_messages(load: Load, pairs, seconds: float) -> list[float]:
    return load._call(_timed_messages(load, pairs, seconds), seconds + 30)


def _ms(xs: list[float]) -> str:
    return (f"n={len(xs)} p50={_percentile(xs, 0.5) * 1000:.1f} ms p99={_percentile(xs, 0.99) * 1000:.1f} ms "
            f"max={max(xs) * 1000:.1f} ms")


# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def running_cluster(n_ej: int, prefix: str = "mpcl"):
    """Two Megaphone nodes and n_ej ejabberd nodes, each configuring both, joined one by one into
    ej1's cluster, with USERS registered; every process stopped (by PID) at the end."""
    conftest._check_built()
    base = Path(tempfile.mkdtemp(prefix=f"megaphone-it-cluster{n_ej}-"))
    os.chmod(base, 0o755)
    ejs: list[Ejabberd] = []
    a = b = None
    env = None
    failed = True
    try:
        cookie = secrets.token_hex(16)
        names = [unique(f"{prefix}_a_"), unique(f"{prefix}_b_")]
        ports = {f"{n}@localhost": free_port() for n in names}
        # Same cookie and the same megaphone nodes: what every node of a cluster reads from a shared
        # ejabberd.yml.
        ejs = [Ejabberd(base, ports, cookie=cookie, connect_retry=1, net_ticktime=TICK) for _ in range(n_ej)]
        a, b = (MegaphoneNode(base / "nodes", cookie, ejs[0].helper, name=n,
                              extra_args=["--net-ticktime", str(TICK)]) for n in names)
        a.start()
        b.start()
        for ej in ejs:
            ej.start()
        env = ClusterEnv(base, ejs, a, b, ports)
        wait_for(env.attached, 60, "every ejabberd node attached to both Megaphone nodes", on_timeout=env.logs)
        # The join restarts ejabberd (not the beam) on the joining node; its controller detaches
        # and comes back.
        for ej in ejs[1:]:
            ej.ctl("join_cluster", ejs[0].node, timeout=120)
        r = ejs[0].register_numbered(USERS, timeout=120)
        assert r == [], r
        env.ensure_healthy()
        yield env
        failed = False
    finally:
        if env is not None:
            env.stop_extra()
        conftest._tear_down(base, (*reversed(ejs), b, a), f"{n_ej}-node cluster integration")
        if failed:
            print(f"\ncluster temp tree: {base}")


@pytest.fixture(scope="module")
def cluster_module():
    with running_cluster(2) as env:
        yield env


@pytest.fixture
def cluster(cluster_module: ClusterEnv):
    cluster_module.ensure_healthy()
    yield cluster_module
    cluster_module.stop_extra()


# --------------------------------------------------------------------------------------------


def spread_and_chat(c: ClusterEnv) -> None:
    """200 users through the two Megaphone nodes (100 each) and one native user on every ejabberd
    node: the users spread evenly over the ejabberd nodes, chat across all of them, and
    megaphone_status on every node agrees with the Megaphone nodes' own counts."""
    n_ej = len(c.ejs)
    assert sorted(str(n) for n in c.ej1.rpc("ejabberd_cluster:get_nodes().")) == sorted(e.node for e in c.ejs)
    la = c.load_client(c.port(c.a), 1, 100)
    lb = c.load_client(c.port(c.b), 101, 100)
    # one native user on each ejabberd node's own port: xb201, xb202, ...
    natives = [c.load_client(ej.c2s_port, 201 + k, 1) for k, ej in enumerate(c.ejs)]
    for cl, n in [(la, 100), (lb, 100)] + [(nc, 1) for nc in natives]:
        done = cl.login()
        assert (done["logged_in"], done["failed"]) == (n, 0), cl.logs_tail()

    mp: list[list[str]] = []   # Megaphone users per ejabberd node
    for k, ej in enumerate(c.ejs):
        local = c.local_users(ej)
        assert f"xb{201 + k}" in local, (ej.node, local)
        mp.append([u for u in local if u != f"xb{201 + k}"])
    print("sessions: " + ", ".join(f"{ej.node} {len(m)} + native 1" for ej, m in zip(c.ejs, mp)))
    assert sum(len(m) for m in mp) == 200 and len(set().union(*map(set, mp))) == 200
    assert c.ej1.rpc("ejabberd_sm:connected_users_number().") == 200 + n_ej  # cluster-wide
    # least_sessions: each Megaphone node gives a new connection to the ejabberd node that owns
    # fewer of its connections, ties in turn, and nothing closed during the logins: each node's
    # 100 split evenly give or take one (a race between its reactors), so the cluster's within 2 + 2.
    sizes = [len(m) for m in mp]
    assert max(sizes) - min(sizes) <= 4, sizes
    for n, lo, hi in ((c.a, 1, 100), (c.b, 101, 200)):
        per = c.per_node(n)
        mine = {f"xb{i}" for i in range(lo, hi + 1)}
        assert per == {ej.node: len(mine & set(m)) for ej, m in zip(c.ejs, mp)}, per
        assert max(per.values()) - min(per.values()) <= 2, per
        assert n.connections() == 100

    # Chat: one user of each (Megaphone node, ejabberd node) pair and each native user sends to all
    # the others: every message between ejabberd nodes crosses the cluster.
    def first(users, lo, hi):
        return next(int(u[2:]) for u in sorted(users, key=lambda u: int(u[2:])) if lo <= int(u[2:]) <= hi)
    ends = {}
    for k, m in enumerate(mp):
        ends[f"a/ej{k + 1}"] = (la, first(m, 1, 100))
        ends[f"b/ej{k + 1}"] = (lb, first(m, 101, 200))
        ends[f"native/ej{k + 1}"] = (natives[k], 201 + k)
    sent = []
    for src, (scl, si) in ends.items():
        for dst, (dcl, di) in ends.items():
            if src != dst:
                token = f"{src}->{dst}".replace("/", "_")
                scl.command(f"send {si} {di} {token}")
                sent.append((dcl, di, si, token))
    for dcl, di, si, token in sent:
        got = dcl.expect("got", timeout=30, where=lambda d, t=token: d["token"] == t)
        assert (got["to"], got["from"]) == (di, si)
    print(f"chat: {len(sent)} messages between {len(ends)} ends delivered")

    # megaphone_status on every node: both Megaphone nodes, started, with their connections per
    # ejabberd node (the same numbers as the nodes' own stats) and the sessions of this node.
    per = {n.node: c.per_node(n) for n in c.nodes}
    for ej, mine in zip(c.ejs, mp):
        out = ej.ctl("megaphone_status").stdout
        rows = {line.split("\t")[0]: line.split("\t") for line in out.splitlines() if line.strip()}
        assert set(rows) == {c.a.node, c.b.node}, out
        for n, lo, hi in ((c.a, 1, 100), (c.b, 101, 200)):
            row = rows[n.node]
            assert row[1] == "started"
            assert int(row[2]) == len([u for u in mine if lo <= int(u[2:]) <= hi]), out
            assert int(row[3]) == 100
            assert row[8] == " ".join(f"{k}={v}" for k, v in sorted(per[n.node].items())), out
        print(f"{ej.node} megaphone_status:\n{out}")

    for cl in [la, lb] + natives:
        assert cl.finish() == 0
    wait_for(lambda: c.ej1.rpc("ejabberd_sm:connected_users_number().") == 0, 30, "every session to end")


def test_users_spread_over_the_cluster_and_chat_across_it(cluster: ClusterEnv):
    spread_and_chat(cluster)


def _other_fds(n: MegaphoneNode) -> int:
    """The node's fds that are not client connections (listeners, epoll, eventfds, distribution)."""
    return n.fd_count() - n.connections()


def test_a_killed_ejabberd_node_ends_only_its_sessions(cluster: ClusterEnv):
    c = cluster
    victim, survivor = c.ej2, c.ej1
    other0 = {n.node: _other_fds(n) for n in c.nodes}   # no client yet
    load = c.load()
    n_all = N_MP + N_NATIVE
    on_victim = set(c.local_users(victim))
    on_survivor = set(c.local_users(survivor))
    assert len(on_victim) + len(on_survivor) == n_all and on_victim and len(on_survivor) > N_NATIVE
    survivors_c2s = survivor.rpc("[list_to_binary(pid_to_list(P)) || {_, {P, _}} <- "
                                 "maps:to_list(element(5, sys:get_state(mod_megaphone, 5000)))].")
    idx = {cl.user: k for k, cl in enumerate(load.clients)}
    losses0 = [cl.losses for cl in load.clients]
    closed0 = {n.node: n.stats()["closed"].get("node_down", 0) for n in c.nodes}
    per0 = {n.node: c.per_node(n) for n in c.nodes}
    loop = ConnectLoop([c.port(c.a), c.port(c.b)])
    noticed: dict[str, float] = {}
    try:
        wait_for(lambda: loop.attempts >= 10, 30, "the connect loop to run")
        t0 = time.monotonic()
        victim.kill()   # SIGKILL the beam, by PID

        def dropped() -> bool:
            for n in c.nodes:
                if n.node not in noticed:
                    st = n.stats(timeout=2)
                    if st["controllers"] == 1 and victim.node not in {str(k) for k in st["controller_nodes"]}:
                        noticed[n.node] = time.monotonic() - t0
            return len(noticed) == 2
        wait_for(dropped, 30, "both Megaphone nodes to drop the killed ejabberd node", interval=0.1,
                 on_timeout=c.logs)
        wait_for(lambda: load.online() == n_all, 60, "every client logged in again", interval=0.1,
                 on_timeout=lambda: load.offline_summary() + "\n" + c.logs())
        back = time.monotonic() - t0
        # the loop covers the whole span: from before the kill to after every client is back
        n = loop.attempts
        wait_for(lambda: loop.attempts >= n + 10, 30, "the connect loop to run on")
    finally:
        loop.stop()
    print(f"kill: noticed by the Megaphone nodes after {', '.join(f'{v:.2f}s' for v in noticed.values())}; "
          f"{len(on_victim)} clients of the killed node, all {n_all} logged in again {back:.2f}s after the kill; "
          f"connect loop: {loop.attempts} connects, {len(loop.failures)} failures")
    assert max(noticed.values()) <= TICK, "a killed node's links close at once, well within net_ticktime"
    assert loop.failures == [], f"the listeners closed: {loop.failures[:5]}"
    # Only the killed node's sessions ended: its clients lost their connection once, the others never.
    for user in on_survivor:
        assert load.clients[idx[user]].losses == losses0[idx[user]], f"{user} on the survivor was cut off"
    for user in on_victim:
        assert load.clients[idx[user]].losses == losses0[idx[user]] + 1, f"{user} lost {load.clients[idx[user]].losses}"
    for n in c.nodes:
        assert n.stats()["closed"].get("node_down", 0) - closed0[n.node] == per0[n.node][victim.node]
    assert len(survivors_c2s) == len(on_survivor) - N_NATIVE
    ended = survivor.rpc("[P || S <- [" + ",".join(f'"{p.decode()}"' for p in survivors_c2s)
                         + "], P <- [list_to_pid(S)], not is_process_alive(P)].")
    assert ended == [], "sessions of the surviving node ended"

    # Everything is on the survivor, one session, c2s and mod_megaphone entry per client, one
    # Megaphone connection per Megaphone client, and no fd beyond them (the killed node's link gone).
    want = {"sm": n_all, "c2s": n_all, "mp_sessions": N_MP, "mp_monitors": N_MP}
    got: dict = {}

    def settled() -> bool:
        got.clear()
        got.update(c.counts(survivor))
        got["connections"] = [n.connections() for n in c.nodes]
        got["per_node"] = [c.per_node(n) for n in c.nodes]
        got["other_fds"] = [_other_fds(n) for n in c.nodes]
        return (all(got[k] == v for k, v in want.items()) and sum(got["connections"]) == N_MP
                and all(p == {survivor.node: k} for p, k in zip(got["per_node"], got["connections"]))
                and got["other_fds"] == [other0[n.node] - 1 for n in c.nodes])
    try:
        wait_for(settled, 20, "the survivor and the Megaphone nodes to settle", interval=0.5)
    except TimeoutError:
        pytest.fail(f"leak or missing sessions: want {want}, {N_MP} connections and "
                    f"{[other0[n.node] - 1 for n in c.nodes]} other fds; got {got}\n{c.logs()}", pytrace=False)
    assert set(c.local_users(survivor)) == on_victim | on_survivor
    assert load.round(timeout=30) == []

    # Restarted, the node rejoins the cluster and is a controller again; the fds are as before the
    # kill, and (least_sessions) the next logins go to it until it holds as many as the survivor.
    t1 = time.monotonic()
    victim.start()
    wait_for(c.attached, 60, "the restarted node to be attached again", on_timeout=c.logs)
    print(f"restarted ejabberd node attached again after {time.monotonic() - t1:.1f}s")
    for n in c.nodes:
        wait_for(lambda: _other_fds(n) == other0[n.node], 10, f"{n.node}'s fds back to baseline + clients")
    extra = c.load_client(c.port(c.a), 201, 20)
    assert extra.login()["logged_in"] == 20
    assert sorted(c.local_users(victim)) == sorted(f"xb{i}" for i in range(201, 221))
    assert extra.finish() == 0


def test_a_disagreeing_controller_gets_config_mismatch_and_the_first_config_stays(cluster: ClusterEnv):
    """A third Megaphone node that ej1 configures with one port and ej2 with another (a cluster whose
    ejabberd.yml files differ): ej1 attaches it first; ej2's `start` is refused with
    config_mismatch, logged on both sides, and the node keeps ej1's listener and serves clients."""
    c = cluster
    first, second = c.ej1, c.ej2
    n = MegaphoneNode(c.base / "nodes", first.cookie, first.helper, name=unique("mpcl_c_"),
                      extra_args=["--net-ticktime", str(TICK)])
    p1, p2 = free_port(), free_port()
    n.start()
    c.extra.append(n)
    try:
        first.megaphone_nodes[n.node] = p1
        first._write_config()
        first.ctl("reload_config")
        wait_for(lambda: n.stats(timeout=2)["controllers"] == 1 and can_connect(p1), 30,
                 "the first ejabberd node to attach the third node", on_timeout=c.logs)
        second.megaphone_nodes[n.node] = p2
        second._write_config()
        second.ctl("reload_config")
        wait_for(lambda: "set the same mod_megaphone options on every node of the cluster"
                 in second.log_path.read_text(errors="replace"), 30,
                 "ejabberd's config_mismatch error on the second node", on_timeout=c.logs)
        wait_for(lambda: "Refused a start that asks for another configuration" in n.log_path.read_text(errors="replace"),
                 10, "the node's warning")
        err = [line for line in second.log_path.read_text(errors="replace").splitlines()
               if "set the same mod_megaphone options" in line][0]
        assert "[error]" in err and n.node in err and "listen" in err, err
        warn = [line for line in n.log_path.read_text(errors="replace").splitlines()
                if "Refused a start" in line][0]
        assert "listen" in warn and second.node.split("@")[0] in warn, warn
        print(f"ejabberd: {err[:400]}\nnode: {warn[:400]}")
        st = n.stats()
        assert st["controllers"] == 1 and {str(k) for k in st["controller_nodes"]} == {first.node}
        assert sorted(port for _t, _ip, port in st["listeners"]) == [p1]
        assert not can_connect(p2)
        status = {line.split("\t")[0]: line.split("\t")[1] for line in
                  second.ctl("megaphone_status").stdout.splitlines() if line.strip()}
        assert status[n.node] != "started" and status[c.a.node] == "started"
        cl = c.load_client(p1, 1, 3)
        assert cl.login()["logged_in"] == 3
        assert sorted(c.local_users(first)) == ["xb1", "xb2", "xb3"]
        assert cl.finish() == 0
    finally:
        for ej in (second, first):
            if ej.megaphone_nodes.pop(n.node, None) is not None:
                ej._write_config()
                ej.ctl("reload_config")


def test_a_rolling_restart_of_the_cluster_never_closes_a_listener(cluster: ClusterEnv):
    """ejabberdctl stop and start of each ejabberd node in turn, under load and a connect loop: the
    stopping node's mod_megaphone detaches from both Megaphone nodes, which keep their listeners for
    the other; its clients move to the other node and the others are not touched."""
    c = cluster
    load = c.load(native_on=c.ej1)
    idx = {cl.user: k for k, cl in enumerate(load.clients)}
    both = sorted(e.node for e in c.ejs)
    loop = ConnectLoop([c.port(c.a), c.port(c.b)])
    figures = []
    try:
        wait_for(lambda: loop.attempts >= 10, 30, "the connect loop to run")
        for ej, other in ((c.ej1, c.ej2), (c.ej2, c.ej1)):
            on_other = set(c.local_users(other))
            on_ej = set(c.local_users(ej))
            losses0 = [cl.losses for cl in load.clients]
            t0 = time.monotonic()
            ej.restart()
            t_up = time.monotonic() - t0
            wait_for(lambda: c.running_db_nodes(other) == both, 60, f"{ej.node} to rejoin the cluster")
            wait_for(c.attached, 60, f"{ej.node} to be attached again", on_timeout=c.logs)
            wait_for(lambda: load.online() == len(load.clients), 60, "every client logged in again",
                     interval=0.2, on_timeout=lambda: load.offline_summary() + "\n" + c.logs())
            figures.append(f"{ej.node}: restarted in {t_up:.1f}s, attached and every client back after "
                           f"{time.monotonic() - t0:.1f}s, {len(on_ej)} clients moved")
            for user in on_other:
                assert load.clients[idx[user]].losses == losses0[idx[user]], f"{user} of {other.node} was cut off"
            moved = {u for u in on_ej if load.kinds[idx[u]] == "megaphone"}   # natives come back to ej
            assert set(c.local_users(other)) == moved | on_other
        n = loop.attempts
        wait_for(lambda: loop.attempts >= n + 10, 30, "the connect loop to run on")
    finally:
        loop.stop()
    print("rolling restart: " + "; ".join(figures) + f"; connect loop: {loop.attempts} connects, "
          f"{len(loop.failures)} failures")
    assert loop.failures == [], f"no listener at some moment: {loop.failures[:5]}"
    wait_for(lambda: sum(nd.connections() for nd in c.nodes) == N_MP, 20, "one connection per Megaphone client")
    assert load.round(timeout=30) == []


def test_a_stopping_ejabberd_node_is_offered_no_connection(cluster: ClusterEnv):
    """What ejabberd_app:prep_stop/1 does before gen_mod:stop/0 stops mod_megaphone (run the
    ejabberd_stopping hook, stop the listeners, stop ejabberd_sm), done by hand on ej2 so that the
    moment lasts: ej2 must already be detached from both Megaphone nodes, and every new login goes
    to ej1. Before mod_megaphone detached on ejabberd_stopping, ej2 stayed a controller until its
    module stopped, least_sessions gave it half of these logins, and they hung (no ejabberd_sm)."""
    c = cluster
    stopping, other = c.ej2, c.ej1
    assert stopping.rpc("ejabberd_hooks:run(ejabberd_stopping, []), ejabberd_listener:stop(), "
                        "ejabberd_sm:stop(), ok.") == "ok"
    try:
        wait_for(lambda: all({str(k) for k in n.stats(timeout=2)["controller_nodes"]} == {other.node}
                             for n in c.nodes), 10, f"{stopping.node} to be detached from both Megaphone nodes",
                 on_timeout=c.logs)
        assert stopping.rpc("mod_megaphone:status().") == []
        cl = c.load_client(c.port(c.a), 1, 10)
        done = cl.login(timeout=30)
        assert (done["logged_in"], done["failed"]) == (10, 0), cl.logs_tail()
        assert sorted(c.local_users(other)) == sorted(f"xb{i}" for i in range(1, 11))
        assert cl.finish() == 0
    finally:
        stopping.restart()   # the rest of prep_stop, and back: ensure_healthy waits for it to attach


def test_a_frozen_ejabberd_node_is_dropped_and_the_other_keeps_chatting(cluster: ClusterEnv):
    c = cluster
    victim, survivor = c.ej2, c.ej1
    load = c.load()
    idx = {cl.user: k for k, cl in enumerate(load.clients)}
    on_survivor = set(c.local_users(survivor))
    on_victim = set(c.local_users(victim))
    assert on_victim and len(on_survivor) > N_NATIVE
    # pairs of clients that both live on the survivor: through a, through b and native, mixed
    ks = sorted(idx[u] for u in on_survivor)
    pairs = [(ks[i], ks[(i + 7) % len(ks)]) for i in range(len(ks))]
    normal = timed_messages(load, pairs, 3)
    losses0 = [cl.losses for cl in load.clients]
    ticks0 = {n.node: n.stats()["net_tick_timeouts"] for n in c.nodes}
    pid = victim.beam_pid()
    noticed: dict[str, float] = {}
    stop_watch = threading.Event()

    def watch() -> None:
        while not stop_watch.is_set() and len(noticed) < 2:
            for n in c.nodes:
                if n.node not in noticed:
                    try:
                        if n.stats(timeout=2)["controllers"] == 1:
                            noticed[n.node] = time.monotonic() - t0
                    except Exception:  # noqa: BLE001 - the next poll tells
                        pass
            stop_watch.wait(0.1)

    frozen_for = 2 * TICK + 2   # past the Megaphone nodes' and ejabberd's net_ticktime (up to 1.25 T)
    watcher = threading.Thread(target=watch, daemon=True)
    t0 = time.monotonic()
    os.kill(pid, signal.SIGSTOP)
    try:
        watcher.start()
        during = timed_messages(load, pairs, frozen_for)
    finally:
        os.kill(pid, signal.SIGCONT)
        stop_watch.set()
        watcher.join(10)
    frozen = time.monotonic() - t0
    print(f"freeze {frozen:.1f}s: dropped by the Megaphone nodes after "
          f"{', '.join(f'{v:.2f}s' for v in noticed.values())}; latency between clients of the other node: "
          f"before {_ms(normal)}; during {_ms(during)}")
    assert len(noticed) == 2, f"the frozen node was not dropped by both Megaphone nodes: {noticed}\n{c.logs()}"
    assert max(noticed.values()) <= 1.25 * TICK + 2
    for n in c.nodes:
        assert n.stats()["net_tick_timeouts"] - ticks0[n.node] == 1, "dropped for silence"
    # The other node's clients chatted throughout: every message delivered, none slow.
    assert all(x != float("inf") for x in during), f"{sum(x == float('inf') for x in during)} messages lost"
    # "Latency within a few ms of normal throughout" (issue 15): the median moves by less than 5 ms
    # and the 99th percentile by less than 50 ms, a margin for a loaded 2-core CI machine's
    # scheduling (measured on a quiet one: p50 1.4 -> 1.4 ms, p99 4.4 -> 6.6 ms, max 6.9 ms).
    assert _percentile(during, 0.5) < _percentile(normal, 0.5) + 0.005, f"before {_ms(normal)}; during {_ms(during)}"
    assert _percentile(during, 0.99) < _percentile(normal, 0.99) + 0.050, f"before {_ms(normal)}; during {_ms(during)}"
    for user in on_survivor:
        assert load.clients[idx[user]].losses == losses0[idx[user]], f"{user} on the other node was cut off"
    # The frozen node's clients were cut off by the Megaphone nodes and are back, on the other node.
    wait_for(lambda: load.online() == len(load.clients), 60, "every client logged in again", interval=0.2,
             on_timeout=lambda: load.offline_summary() + "\n" + c.logs())
    for user in on_victim:
        assert load.clients[idx[user]].losses >= losses0[idx[user]] + 1

    # After SIGCONT. The node finds its links to the Megaphone nodes and to the other ejabberd node
    # closed (it was dropped by net_ticktime): its Megaphone sessions ended (monitor_node), and its
    # mod_megaphone connects and sends `start` again, so both Megaphone nodes attach it at once. Its
    # Mnesia, though, ran partitioned from the other's: each has only itself running (and both log
    # `inconsistent_database, running_partitioned_network` once the nodes meet again); ejabberd 23.01
    # does not merge them, so sessions on one are
    # invisible to the other. Decided: nothing in Megaphone can heal that. A plain restart of the
    # thawed node did not either (its Mnesia reported `starting_partitioned_network` and ejabberd
    # had not started 60 s later, waiting for its tables). The operator tells it to load every table from the
    # other node (mnesia:set_master_nodes/1, kept on disk), restarts it, and clears the setting.
    t1 = time.monotonic()
    wait_for(c.attached, 60, "the thawed node to be attached again", on_timeout=c.logs)
    print(f"thawed node attached again after {time.monotonic() - t1:.1f}s")
    wait_for(lambda: c.counts(victim) == {"sm": 0, "c2s": 0, "mp_sessions": 0, "mp_monitors": 0}, 20,
             "no session left on the thawed node", on_timeout=c.logs)
    # (a wait: the thawed node's Mnesia may not have handled its nodedown yet)
    wait_for(lambda: c.running_db_nodes(victim) == [victim.node] and c.running_db_nodes(survivor) == [survivor.node],
             20, "each ejabberd node's Mnesia to run alone (partitioned)", on_timeout=c.logs)
    assert victim.rpc(f"mnesia:set_master_nodes(['{survivor.node}']).") == "ok"
    victim.restart()
    assert victim.rpc("mnesia:set_master_nodes([]).") == "ok"
    both = sorted(e.node for e in c.ejs)
    wait_for(lambda: c.running_db_nodes(survivor) == both, 60, "the restarted node to rejoin the cluster")
    wait_for(c.attached, 60, "the restarted node to be attached again", on_timeout=c.logs)
    # It takes the next logins (least_sessions), and they chat with the other node's users.
    extra = c.load_client(c.port(c.b), 201, 10)
    assert extra.login()["logged_in"] == 10
    assert sorted(c.local_users(victim)) == sorted(f"xb{i}" for i in range(201, 211))
    assert load.round(timeout=30) == []
    # both ways between a user on the restarted node and a native user of the other
    native = c.load_client(survivor.c2s_port, 221, 1)
    assert native.login()["logged_in"] == 1
    extra.command("send 201 221 to-the-survivor")
    native.command("send 221 202 to-the-restarted")
    assert native.expect("got", where=lambda d: d["token"] == "to-the-survivor")["from"] == 201
    assert extra.expect("got", where=lambda d: d["token"] == "to-the-restarted")["to"] == 202
    assert native.finish() == 0
    assert extra.finish() == 0
