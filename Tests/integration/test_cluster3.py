"""Issue 15 with three ejabberd nodes: the same two Megaphone nodes in front of a 3-node ejabberd
23.01 cluster (test_cluster.py's ClusterEnv, built with n_ej=3), so each Megaphone node has three
controllers.

  * 200 users log in through the two Megaphone nodes and spread over the three ejabberd nodes
    (least_sessions), chat with each other across every pair of nodes and with a native user on
    each; `megaphone_status` on every node agrees with the Megaphone nodes' counts;

Only what a third node adds is here: the fault tests of test_cluster.py (SIGKILL, SIGSTOP, rolling
restart, config mismatch) are about one node of several and run with two. Runs in the suite's parser
mode (MEGAPHONE_PARSER); `scripts/test-integration -k test_cluster3`.
"""
from __future__ import annotations

import time

import pytest

from harness.processes import pid_alive, wait_for
from test_cluster import N_MP, N_NATIVE, ClusterEnv, ConnectLoop, _other_fds, running_cluster, spread_and_chat


@pytest.fixture(scope="module")
def cluster3_module():
    with running_cluster(3, prefix="mpc3") as env:
        yield env


@pytest.fixture
def cluster3(cluster3_module: ClusterEnv):
    cluster3_module.ensure_healthy()
    yield cluster3_module
    cluster3_module.stop_extra()


def test_users_spread_over_three_ejabberd_nodes_and_chat_across_them(cluster3: ClusterEnv):
    spread_and_chat(cluster3)


def test_leave_cluster_drains_the_leaving_node(cluster3: ClusterEnv):
    """`ejabberdctl leave_cluster ej3` on ej1, under load and a connect loop. In ejabberd 23.01
    (ejabberd_cluster_mnesia:leave/1) the leaving node stops the ejabberd application (so
    mod_megaphone detaches from both Megaphone nodes), stops Mnesia, is deleted from the others'
    schema and halts. Its clients lose their connection once and log in again on ej1 and ej2; the
    others are not touched; the listeners refuse nothing; ej3 is no controller afterwards, so no new
    session goes to it; nothing leaks. Then ej3, started afresh, joins again and (least_sessions)
    takes the next logins: what `join_cluster` must do without restarting anything else. Runs
    last in the module (the cluster is whole again at the end)."""
    c = cluster3
    leaver, stay = c.ejs[2], c.ejs[:2]
    other0 = {n.node: _other_fds(n) for n in c.nodes}   # no client yet
    load = c.load()
    n_all = N_MP + N_NATIVE
    idx = {cl.user: k for k, cl in enumerate(load.clients)}
    on_leaver = set(c.local_users(leaver))
    on_stay = set().union(*(c.local_users(e) for e in stay))
    assert on_leaver and len(on_leaver) + len(on_stay) == n_all, (on_leaver, on_stay)
    losses0 = [cl.losses for cl in load.clients]
    node_down0 = {n.node: n.stats()["closed"].get("node_down", 0) for n in c.nodes}
    pid = leaver.beam_pid()
    seen_after: list[dict] = []   # the Megaphone nodes' controller nodes, polled after the leave
    loop = ConnectLoop([c.port(c.a), c.port(c.b)])
    try:
        wait_for(lambda: loop.attempts >= 10, 30, "the connect loop to run")
        t0 = time.monotonic()
        r = c.ej1.ctl("leave_cluster", leaver.node, timeout=120)
        t_ctl = time.monotonic() - t0
        wait_for(lambda: not pid_alive(pid), 60, f"{leaver.node} to halt after leaving", on_timeout=c.logs)
        t_halt = time.monotonic() - t0
        leaver._after_exit()
        wait_for(lambda: c.attached(2), 30, "both Megaphone nodes to have the two remaining controllers",
                 on_timeout=c.logs)
        wait_for(lambda: load.online() == n_all, 60, "every client logged in again", interval=0.1,
                 on_timeout=lambda: load.offline_summary() + "\n" + c.logs())
        back = time.monotonic() - t0
        for n in c.nodes:
            seen_after.append(c.per_node(n))
        n = loop.attempts
        wait_for(lambda: loop.attempts >= n + 10, 30, "the connect loop to run on")
    finally:
        loop.stop()
    print(f"leave_cluster: ejabberdctl returned after {t_ctl:.1f}s ({r.stdout.strip()!r}), the node halted "
          f"after {t_halt:.1f}s; {len(on_leaver)} of its clients, all {n_all} logged in again after {back:.1f}s; "
          f"connect loop: {loop.attempts} connects, {len(loop.failures)} failures")
    assert loop.failures == [], f"the listeners closed: {loop.failures[:5]}"
    assert c.running_db_nodes(c.ej1) == sorted(e.node for e in stay)
    assert sorted(str(x) for x in c.ej1.rpc("ejabberd_cluster:get_nodes().")) == sorted(e.node for e in stay)
    for per in seen_after:
        assert leaver.node not in per, per
    # Drained, not dropped: its mod_megaphone detached before the node halted, so the Megaphone
    # nodes closed its connections on request, none for a lost link.
    for n in c.nodes:
        assert n.stats()["closed"].get("node_down", 0) == node_down0[n.node], n.stats()["closed"]
    # Its clients lost their connection exactly once (none was offered to it again while it
    # stopped); the others never.
    for user in on_stay:
        assert load.clients[idx[user]].losses == losses0[idx[user]], f"{user} on a remaining node was cut off"
    for user in on_leaver:
        assert load.clients[idx[user]].losses == losses0[idx[user]] + 1, \
            f"{user} of the leaving node lost {load.clients[idx[user]].losses - losses0[idx[user]]} connections"

    # Every client on the remaining nodes, one session, c2s and mod_megaphone entry each; one
    # Megaphone connection per Megaphone client; no fd beyond them (the leaver's link gone).
    got: dict = {}

    def settled() -> bool:
        got.clear()
        counts = [c.counts(e) for e in stay]
        got.update({k: sum(x[k] for x in counts) for k in counts[0]})
        got["connections"] = [n.connections() for n in c.nodes]
        got["per_node"] = [c.per_node(n) for n in c.nodes]
        got["other_fds"] = [_other_fds(n) for n in c.nodes]
        return (got["sm"] == got["c2s"] == n_all and got["mp_sessions"] == got["mp_monitors"] == N_MP
                and sum(got["connections"]) == N_MP
                and all(set(p) <= {e.node for e in stay} and sum(p.values()) == k
                        for p, k in zip(got["per_node"], got["connections"]))
                and got["other_fds"] == [other0[n.node] - 1 for n in c.nodes])
    try:
        wait_for(settled, 20, "the remaining nodes and the Megaphone nodes to settle", interval=0.5)
    except TimeoutError:
        pytest.fail(f"leak or missing sessions: want {n_all} sessions, {N_MP} connections and "
                    f"{[other0[n.node] - 1 for n in c.nodes]} other fds; got {got}\n{c.logs()}", pytrace=False)
    assert set().union(*(c.local_users(e) for e in stay)) == on_leaver | on_stay
    assert load.round(timeout=30) == []
    # New logins after the leave go to the remaining nodes only.
    late = c.load_client(c.port(c.b), 201, 10)
    assert late.login()["logged_in"] == 10
    assert {f"xb{i}" for i in range(201, 211)} <= set().union(*(c.local_users(e) for e in stay))
    assert late.finish() == 0

    # Back: its schema was deleted, so it starts as a cluster of its own and joins again; it is a
    # controller again and, holding no session, takes the next logins of a Megaphone node.
    t1 = time.monotonic()
    leaver.start()
    leaver.ctl("join_cluster", c.ej1.node, timeout=120)
    wait_for(lambda: c.running_db_nodes(c.ej1) == sorted(e.node for e in c.ejs), 60, "the node to join again")
    wait_for(c.attached, 60, "the node to be attached again", on_timeout=c.logs)
    print(f"started afresh and joined again after {time.monotonic() - t1:.1f}s")
    extra = c.load_client(c.port(c.a), 211, 10)
    assert extra.login()["logged_in"] == 10
    assert sorted(c.local_users(leaver)) == sorted(f"xb{i}" for i in range(211, 221))
    assert extra.finish() == 0
    assert load.round(timeout=30) == []
