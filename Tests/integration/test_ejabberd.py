"""Megaphone + ejabberd 23.01 + slixmpp, end to end.

Every test runs against the session's ejabberd (see conftest.py) with two Megaphone nodes
attached (env.a, env.b); env.ej.c2s_port is ejabberd's own (native) c2s listener. Waits are
polled conditions with deadlines, never fixed sleeps.
"""
from __future__ import annotations

import asyncio
import secrets
import time

import pytest

from clients import Client, Session, run, until
from harness.env import XMPP_HOST
from harness.net import free_port
from harness.processes import wait_for
from harness.terms import proplist


def user_of(jid: str) -> str:
    return jid.split("@", 1)[0]


async def chat(sender: Client, receiver: Client, body: str, timeout: float = 20) -> None:
    """sender -> receiver (full JID), and the body arrives intact."""
    sender.send_message(mto=receiver.boundjid.full, mbody=body, mtype="chat")
    msg = await receiver.next_message(timeout, frm=sender.boundjid.bare)
    got = msg["body"]
    assert got == body, (f"{receiver.label} got a body of {len(got)} chars from {sender.label}, "
                         f"expected {len(body)}")


async def roster_items(c: Client) -> dict:
    iq = await c.get_roster(timeout=10)
    return {str(j): dict(item) for j, item in iq["roster"]["items"].items()}


async def until_async(cond, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        v = await cond()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {v!r})")
        await asyncio.sleep(interval)


def status_rows(env) -> dict[str, list[str]]:
    """`ejabberdctl megaphone_status` -> {node: [state, sessions, connections, bytes_in, bytes_out]}"""
    out = env.ej.ctl("megaphone_status").stdout
    rows = {}
    for line in out.splitlines():
        cols = line.split("\t")
        if len(cols) >= 3:
            rows[cols[0]] = cols[1:]
    return rows


# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mech", ["PLAIN", "SCRAM-SHA-1"])
def test_megaphone_and_native_users_log_in_see_presence_and_chat(env, mech):
    """A user through Megaphone and one on the native port: SASL, rosters, presence, messages
    both ways including 200 kB bodies."""
    async def body():
        alice_jid, alice_pw = env.new_user("alice")
        bob_jid, bob_pw = env.new_user("bob")
        before = env.a.stats()
        async with Session() as s:
            alice = await s.login(alice_jid, alice_pw, env.port(env.a), mech=mech, presence=False, roster=False)
            bob = await s.login(bob_jid, bob_pw, env.ej.c2s_port, mech=mech, presence=False, roster=False)
            assert alice.mech_used == mech, f"alice authenticated with {alice.mech_used}"
            assert bob.mech_used == mech, f"bob authenticated with {bob.mech_used}"

            # alice's session is a c2s over a Megaphone connection; bob's is not
            mp = env.megaphone_c2s(env.a)
            assert len(mp) == 1, mp
            assert env.session_pid_of(alice) == mp[0][0]
            assert env.a.connections() == 1

            # rosters: empty, then mutual subscription (slixmpp auto-authorizes and subscribes back)
            assert await roster_items(alice) == {}
            assert await roster_items(bob) == {}
            alice.send_presence()
            bob.send_presence()
            alice.send_presence_subscription(pto=bob_jid)

            async def mutual():
                a, b = await roster_items(alice), await roster_items(bob)
                return (a.get(bob_jid, {}).get("subscription") == "both"
                        and b.get(alice_jid, {}).get("subscription") == "both")
            await until_async(mutual, 15, "alice and bob to be subscribed both ways")

            # presence: each sees the other's available presence
            alice.send_presence(pstatus="via megaphone")
            bob.send_presence(pstatus="native")
            await until(lambda: bob.boundjid.full in alice.available, 10, "alice to see bob available")
            await until(lambda: alice.boundjid.full in bob.available, 10, "bob to see alice available")

            # messages both ways, small and 200 kB
            await chat(alice, bob, "hello from megaphone")
            await chat(bob, alice, "hello from the native port")
            big_a = "A" + secrets.token_hex(100_000)
            big_b = "B" + secrets.token_hex(100_000)
            await chat(alice, bob, big_a, timeout=30)
            await chat(bob, alice, big_b, timeout=30)

            after = env.a.stats()
            assert after["bytes_in"] - before["bytes_in"] >= 200_000, (before, after)
            assert after["bytes_out"] - before["bytes_out"] >= 200_000, (before, after)
    run(body())


def test_session_records_the_clients_real_address(env):
    async def body():
        alice_jid, alice_pw = env.new_user("alice")
        bob_jid, bob_pw = env.new_user("bob")
        async with Session() as s:
            alice = await s.login(alice_jid, alice_pw, env.port(env.a))
            bob = await s.login(bob_jid, bob_pw, env.ej.c2s_port)
            for c in (alice, bob):
                info = proplist(env.ej.session_info(user_of(c.boundjid.bare), c.boundjid.resource))
                ip, port = c.sockname
                assert ip == "127.0.0.1"
                assert info.get("ip") == ((127, 0, 0, 1), port), f"{c.label}: session info {info}"
                assert info.get("conn") == "c2s", info
    run(body())


def test_oversized_stanza_gets_policy_violation_and_others_are_unaffected(env):
    async def body():
        alice_jid, alice_pw = env.new_user("alice")
        carol_jid, carol_pw = env.new_user("carol")
        bob_jid, bob_pw = env.new_user("bob")
        async with Session() as s:
            alice = await s.login(alice_jid, alice_pw, env.port(env.a))
            carol = await s.login(carol_jid, carol_pw, env.port(env.a))
            bob = await s.login(bob_jid, bob_pw, env.ej.c2s_port)
            await until(lambda: env.a.connections() == 2, 5, "2 connections on node A")

            too_big = "z" * 300_000  # > max_stanza_size 262144
            alice.send_raw(f"<message to='{bob.boundjid.full}' type='chat'><body>{too_big}</body></message>")
            await alice.wait_lost(15)
            assert ("policy-violation" in [c for c, _ in alice.stream_errors]), alice.stream_errors

            await until(lambda: env.ej.user_resources(user_of(alice_jid)) == [], 5, "alice's session to end")
            await until(lambda: env.a.connections() == 1, 5, "node A to close alice's connection")
            assert bob.messages.empty(), "bob received part of the oversized stanza"

            # the other sessions go on: carol (Megaphone) and bob (native) chat
            await chat(carol, bob, "still here")
            await chat(bob, carol, "me too")
            assert len(env.megaphone_c2s(env.a)) == 1
    run(body())


@pytest.mark.parametrize("how", ["client_disconnect", "server_kick", "stream_end"])
def test_either_side_closing_closes_both_ends(env, how):
    async def body():
        alice_jid, alice_pw = env.new_user("alice")
        user = user_of(alice_jid)
        fds_before = env.a.fd_count()
        async with Session() as s:
            alice = await s.login(alice_jid, alice_pw, env.port(env.a))
            res = alice.boundjid.resource
            assert env.ej.user_resources(user) == [res.encode()]
            assert env.a.connections() == 1
            assert len(env.megaphone_c2s(env.a)) == 1

            if how == "client_disconnect":
                alice.abort()  # TCP close, no </stream:stream>
            elif how == "server_kick":
                r = await asyncio.to_thread(env.ej.ctl, "kick_session", user, XMPP_HOST, res, "kicked by the test")
                await alice.wait_lost(10)
            else:
                await asyncio.wait_for(alice.disconnect(wait=5), 10)  # sends </stream:stream>
                # the server answered with its own </stream:stream> before closing
                assert alice.disconnects and alice.disconnects[-1] == "End of stream", alice.disconnects

            await alice.wait_lost(10)
            await until(lambda: env.ej.user_resources(user) == [], 5, "the ejabberd session to end")
            await until(lambda: env.a.connections() == 0, 5, "node A to drop the connection")
            await until(lambda: env.megaphone_c2s(env.a) == [], 5, "the c2s process to exit")
            await until(lambda: env.a.fd_count() <= fds_before, 5,
                        f"node A's fds to return to {fds_before}")
            if how == "server_kick":
                assert r.returncode == 0, r
                assert alice.stream_errors == [("conflict", "kicked by the test")], alice.stream_errors
    run(body())


def test_megaphone_node_killed_ends_its_sessions_and_is_reattached_when_back(env):
    async def body():
        dave_jid, dave_pw = env.new_user("dave")
        erin_jid, erin_pw = env.new_user("erin")
        frank_jid, frank_pw = env.new_user("frank")
        bob_jid, bob_pw = env.new_user("bob")
        ej_pid = env.ej.pid
        async with Session() as s:
            dave = await s.login(dave_jid, dave_pw, env.port(env.b))
            erin = await s.login(erin_jid, erin_pw, env.port(env.b))
            frank = await s.login(frank_jid, frank_pw, env.port(env.a))
            bob = await s.login(bob_jid, bob_pw, env.ej.c2s_port)
            await until(lambda: env.b.connections() == 2, 5, "2 connections on node B")
            assert len(env.megaphone_c2s(env.b)) == 2

            env.b.kill()  # SIGKILL
            t0 = time.monotonic()
            await until(lambda: env.megaphone_c2s(env.b) == []
                        and env.ej.user_resources(user_of(dave_jid)) == []
                        and env.ej.user_resources(user_of(erin_jid)) == [],
                        5, "node B's sessions and c2s processes to be gone")
            gone_after = time.monotonic() - t0
            await dave.wait_lost(5)
            await erin.wait_lost(5)

            # native and node-A sessions are untouched
            assert env.ej.user_resources(user_of(bob_jid)) == [bob.boundjid.resource.encode()]
            assert env.ej.user_resources(user_of(frank_jid)) == [frank.boundjid.resource.encode()]
            assert not bob.lost.is_set() and not frank.lost.is_set()
            await chat(bob, frank, "node B died")
            await chat(frank, bob, "node A did not")
            rows = await asyncio.to_thread(status_rows, env)
            assert rows[env.b.node][0] != "started", rows
            assert rows[env.a.node][0] == "started", rows

            # back with the same name: mod_megaphone reattaches it by itself
            await asyncio.to_thread(env.b.start)
            await until(env.b.listening, 15, "mod_megaphone to reattach node B")
            gina_jid, gina_pw = env.new_user("gina")
            gina = await s.login(gina_jid, gina_pw, env.port(env.b))
            await chat(gina, bob, "through the restarted node")
            await chat(bob, gina, "welcome back")
            assert len(env.megaphone_c2s(env.b)) == 1
            assert env.ej.beam_pid() == ej_pid, "ejabberd was restarted"
            print(f"sessions of the killed node gone after {gone_after:.2f}s")
    run(body())


@pytest.mark.parametrize("how", ["stop", "sigkill"])
def test_ejabberd_restart_drops_megaphone_clients_and_nodes_serve_again(env, how):
    """ejabberd stopped (ejabberdctl stop) or killed (SIGKILL), then started again."""
    async def body():
        alice_jid, alice_pw = env.new_user("alice")
        bob_jid, bob_pw = env.new_user("bob")
        carol_jid, carol_pw = env.new_user("carol")
        pids = (env.a.pid, env.b.pid)
        async with Session() as s:
            alice = await s.login(alice_jid, alice_pw, env.port(env.a))
            bob = await s.login(bob_jid, bob_pw, env.port(env.b))
            carol = await s.login(carol_jid, carol_pw, env.ej.c2s_port)
            assert env.a.connections() == 1 and env.b.connections() == 1

            await asyncio.to_thread(env.ej.stop if how == "stop" else env.ej.kill)
            for c in (alice, bob, carol):
                await c.wait_lost(10)
            if how == "stop":
                # ejabberd said goodbye to everyone alike: its system-shutdown stream error and
                # </stream:stream> reached the Megaphone clients before their sockets were closed
                for c in (alice, bob, carol):
                    assert [e for e, _ in c.stream_errors] == ["system-shutdown"], (c.label, c.stream_errors)
                    assert c.disconnects == ["End of stream"], (c.label, c.disconnects)
            else:
                # nobody could say goodbye: the Megaphone clients just see their sockets closed
                for c in (alice, bob):
                    assert c.eof, f"{c.label}: the connection ended without EOF ({c.disconnects})"
            await until(lambda: env.a.connections() == 0 and env.b.connections() == 0, 10,
                        "the Megaphone nodes to drop their clients")
            assert env.a.alive() and env.b.alive(), "a Megaphone node exited with ejabberd"
            assert (env.a.pid, env.b.pid) == pids
            assert not env.a.listening() and not env.b.listening(), \
                "a Megaphone node kept listening without its controller"

            await asyncio.to_thread(env.ej.start)
            await until(lambda: env.a.listening() and env.b.listening(), 20,
                        "mod_megaphone to reattach both nodes after the restart")
            assert (env.a.pid, env.b.pid) == pids
            # fresh users: after a SIGKILL, mnesia's disc tables may have lost the last writes
            dave_jid, dave_pw = env.new_user("dave")
            erin_jid, erin_pw = env.new_user("erin")
            dave = await s.login(dave_jid, dave_pw, env.port(env.a))
            erin = await s.login(erin_jid, erin_pw, env.port(env.b))
            await chat(dave, erin, "after the restart")
            await chat(erin, dave, "still works")
    run(body(), timeout=180)


def test_stream_management_session_resumes_through_megaphone(env):
    async def body():
        alice_jid, alice_pw = env.new_user("alice")
        bob_jid, bob_pw = env.new_user("bob")
        user = user_of(alice_jid)
        async with Session() as s:
            alice = await s.login(alice_jid, alice_pw, env.port(env.a), sm=True)
            await asyncio.wait_for(alice.sm_enabled.wait(), 10)
            bob = await s.login(bob_jid, bob_pw, env.ej.c2s_port)
            await chat(bob, alice, "before the drop")
            res = alice.boundjid.resource
            assert alice.binds == 1

            alice.drop_connection()  # RST, no </stream:stream>
            await alice.wait_lost(5)
            await until(lambda: env.a.connections() == 0, 5, "node A to see the connection gone")
            # ejabberd keeps the session, waiting for a resumption
            assert env.ej.user_resources(user) == [res.encode()]

            bob.send_message(mto=f"{alice_jid}/{res}", mbody="while you were away", mtype="chat")
            got = await alice.login(env.port(env.a))
            assert got == "session_resumed", got
            assert alice.resumed == 1 and alice.binds == 1, (alice.resumed, alice.binds)
            assert alice.boundjid.resource == res
            msg = await alice.next_message(10, frm=bob_jid)
            assert msg["body"] == "while you were away"
            await chat(alice, bob, "resumed")
            assert env.ej.user_resources(user) == [res.encode()]
            assert env.a.connections() == 1
            assert len(env.megaphone_c2s(env.a)) == 1

            # a clean </stream:stream> ends the session for good (no resumption left pending)
            await asyncio.wait_for(alice.disconnect(wait=5), 10)
            await until(lambda: env.ej.user_resources(user) == [], 5, "alice's session to end")
            await until(lambda: env.megaphone_c2s(env.a) == [], 5, "alice's c2s to exit")
    run(body())


def test_two_megaphone_nodes_on_one_ejabberd(env):
    async def body():
        alice_jid, alice_pw = env.new_user("alice")
        bob_jid, bob_pw = env.new_user("bob")
        async with Session() as s:
            alice = await s.login(alice_jid, alice_pw, env.port(env.a))
            bob = await s.login(bob_jid, bob_pw, env.port(env.b))
            assert [p for p, _, _ in env.megaphone_c2s(env.a)] == [env.session_pid_of(alice)]
            assert [p for p, _, _ in env.megaphone_c2s(env.b)] == [env.session_pid_of(bob)]
            for i in range(3):
                await chat(alice, bob, f"A->B {i}")
                await chat(bob, alice, f"B->A {i}")
            await chat(alice, bob, "x" * 100_000)
            assert env.a.connections() == 1 and env.b.connections() == 1
    run(body())


def test_megaphone_status_command(env):
    async def body():
        users = [env.new_user(p) for p in ("alice", "carol", "bob")]
        async with Session() as s:
            await s.login(*users[0], env.port(env.a))
            await s.login(*users[1], env.port(env.a))
            await s.login(*users[2], env.port(env.b))
            rows = await asyncio.to_thread(status_rows, env)
            assert set(rows) == {env.a.node, env.b.node}, rows
            # name, state, sessions (live c2s processes, including any waiting for an XEP-0198
            # resumption), connections (the node's own count), bytes_in, bytes_out
            state_a, sessions_a, conns_a, in_a, out_a = rows[env.a.node][:5]
            state_b, sessions_b, conns_b, in_b, out_b = rows[env.b.node][:5]
            assert (state_a, conns_a) == ("started", "2"), rows
            assert (state_b, conns_b) == ("started", "1"), rows
            assert int(sessions_a) == len(env.megaphone_c2s(env.a)) >= 2, rows
            assert int(sessions_b) == len(env.megaphone_c2s(env.b)) >= 1, rows
            stats_a = env.a.stats()
            assert 0 < int(in_a) <= stats_a["bytes_in"] and 0 < int(out_a) <= stats_a["bytes_out"], (rows, stats_a)
            # per node, for monitoring scripts
            for node, sessions in ((env.a, sessions_a), (env.b, sessions_b)):
                got = (await asyncio.to_thread(env.ej.ctl, "megaphone_sessions", node.node)).stdout.strip()
                assert got == sessions, (node.node, got, rows)
            unknown = await asyncio.to_thread(env.ej.ctl, "megaphone_sessions", "nobody@nowhere")
            assert unknown.stdout.strip() == "0"
    run(body())


def _listen_ports(node) -> list[int]:
    """The ports the node listens on (from its own stats)."""
    return sorted(port for _transport, _ip, port in node.stats(timeout=5).get("listeners", []))


def _reload(env, nodes: dict[str, int]) -> None:
    env.ej.megaphone_nodes = dict(nodes)
    env.ej._write_config()
    env.ej.ctl("reload_config")


def test_reload_applies_changed_listeners_and_removing_the_module_closes_them(env):
    original = dict(env.ej.megaphone_nodes)
    old_port, new_port = env.port(env.b), free_port()
    try:
        # 1. B's listener moves to another port; A is untouched.
        _reload(env, {**original, env.b.node: new_port})
        wait_for(lambda: _listen_ports(env.b) == [new_port], 15, "B to listen on the new port")
        assert _listen_ports(env.a) == [env.port(env.a)]

        async def chat_through_new_port():
            (alice_jid, alice_pw), (bob_jid, bob_pw) = env.new_user("alice"), env.new_user("bob")
            async with Session() as s:
                alice = await s.login(alice_jid, alice_pw, new_port)
                bob = await s.login(bob_jid, bob_pw, env.ej.c2s_port)
                await chat(alice, bob, "through the moved listener")
                await chat(bob, alice, "and back")
        run(chat_through_new_port())

        # 2. The module removed: both nodes close their listeners and keep running.
        async def removal_ends_sessions():
            alice_jid, alice_pw = env.new_user("alice")
            async with Session() as s:
                alice = await s.login(alice_jid, alice_pw, env.port(env.a))
                await asyncio.to_thread(_reload, env, {})
                await until(lambda: not env.a.listening() and not env.b.listening(), 15,
                            "the nodes to close their listeners")
                await until(lambda: env.a.connections() == 0, 10, "A's session to end")
                await until(lambda: alice.disconnects, 10, "alice to be disconnected")
        run(removal_ends_sessions())
        assert env.a.alive() and env.b.alive()
        assert env.ej.rpc("gen_mod:is_loaded(<<\"localhost\">>, mod_megaphone)") is False
    finally:
        # 3. Back as it was, for the tests after this one.
        _reload(env, original)
        for node, port in ((env.a, env.port(env.a)), (env.b, old_port)):
            wait_for(lambda: _listen_ports(node) == [port], 30, f"{node.node} back on port {port}")
