"""Connection identity: one Megaphone node's clients never touch another's (issue 10).

A ConnId is a reference the node mints (it carries the node's name and creation). These tests
reproduce what integer ConnIds got wrong, each with real ejabberd 23.01, real Megaphone nodes and
slixmpp clients (see conftest.py): every node numbered its connections from the same start, so a
hang-up that reached mod_megaphone ended the session with the same number on another node, and a
restarted node handed a new client the number of a session still waiting for resumption.
"""
from __future__ import annotations

import asyncio
import socket
import time

from clients import Session, run, until
from harness.net import hang_up_storm
from test_ejabberd import chat, user_of


def test_hang_ups_on_one_node_never_end_sessions_on_another(env):
    """Hundreds of instant hang-ups on node A while users on node B chat: none of them is
    disconnected. Each hang-up reaches mod_megaphone as a tcp_closed for a connection whose session
    has not asked for data yet; with integer ConnIds node A's numbers were node B's too."""
    async def body():
        alice_jid, alice_pw = env.new_user("alice")
        bob_jid, bob_pw = env.new_user("bob")
        async with Session() as s:
            alice = await s.login(alice_jid, alice_pw, env.port(env.b))
            bob = await s.login(bob_jid, bob_pw, env.port(env.b))
            await chat(alice, bob, "before the storm")
            alice_res, bob_res = alice.boundjid.resource.encode(), bob.boundjid.resource.encode()
            # Enough hang-ups on node A to give out every number node B has used: half of them (the
            # FIN ones) get to mod_megaphone, spread over node A's two reactors.
            count = max(300, 4 * env.b.stats()["accepted"] + 100)
            closed_before = sum(env.a.stats()["closed"].values())
            storm = asyncio.create_task(asyncio.to_thread(hang_up_storm, env.port(env.a), count))
            sent = 0
            while not storm.done():
                await chat(alice, bob, f"during the storm {sent}")
                await chat(bob, alice, f"still here {sent}")
                sent += 1
            await storm
            # (a client gone before getpeername() is closed without being accepted)
            await until(lambda: sum(env.a.stats()["closed"].values()) - closed_before >= count, 20,
                        f"node A to close the {count} hung-up connections")
            assert env.a.connections() == 0
            assert not alice.lost.is_set() and not bob.lost.is_set(), (alice.disconnects, bob.disconnects)
            assert env.ej.user_resources(user_of(alice_jid)) == [alice_res]
            assert env.ej.user_resources(user_of(bob_jid)) == [bob_res]
            assert env.b.connections() == 2
            await chat(alice, bob, "after the storm")
            await chat(bob, alice, "nobody left")
            print(f"{count} hang-ups on node A, {sent} round trips on node B meanwhile")
    run(body(), timeout=180)


def test_a_restarted_node_never_touches_sessions_of_its_earlier_run(env):
    """A stream-management session waits for resumption after its node was killed; the node comes
    back and a new client logs in through it; the old session then expires. The new client stays.
    With integer ConnIds the new client got the old session's number (both were the first
    connection of their run) and the expiry closed the new client."""
    async def body():
        alice_jid, alice_pw = env.new_user("alice")
        carol_jid, carol_pw = env.new_user("carol")
        bob_jid, bob_pw = env.new_user("bob")
        # A fresh run of node B: alice's connection is its first.
        await asyncio.to_thread(env.b.kill)
        await asyncio.to_thread(env.b.start)
        await until(env.b.listening, 20, "mod_megaphone to reattach node B")
        async with Session() as s:
            bob = await s.login(bob_jid, bob_pw, env.ej.c2s_port)
            # XEP-0198 with a 3 s resumption window (the client's `max`).
            alice = await s.login(alice_jid, alice_pw, env.port(env.b), sm=True, sm_max=3)
            await asyncio.wait_for(alice.sm_enabled.wait(), 10)
            alice_res = alice.boundjid.resource.encode()
            await chat(alice, bob, "before the node dies")

            await asyncio.to_thread(env.b.kill)
            await alice.wait_lost(5)
            # ejabberd keeps alice's session, waiting for her to resume.
            assert env.ej.user_resources(user_of(alice_jid)) == [alice_res]

            await asyncio.to_thread(env.b.start)
            await until(env.b.listening, 20, "mod_megaphone to reattach node B")
            # carol is the first connection of the new run
            carol = await s.login(carol_jid, carol_pw, env.port(env.b))
            carol_res = carol.boundjid.resource.encode()
            await chat(carol, bob, "new run")
            def closes():
                st = env.b.stats()
                return st["unknown_connection"], st["closed"]["requested"]
            unknown0, requested0 = closes()
            expired = time.monotonic()
            await until(lambda: env.ej.user_resources(user_of(alice_jid)) == [], 15,
                        "alice's session to expire")
            expired = time.monotonic() - expired
            # mod_megaphone closes the connection of an ended session: that close names the old
            # run's ConnId. Once it has reached node B, it has closed nothing of the new run.
            await until(lambda: sum(closes()) > unknown0 + requested0, 10,
                        "the close of alice's connection to reach node B")
            assert closes()[1] == requested0, "the close of the old run's connection closed one of the new run"
            await chat(bob, carol, "after alice expired")
            await chat(carol, bob, "still connected")
            assert not carol.lost.is_set(), carol.disconnects
            assert env.ej.user_resources(user_of(carol_jid)) == [carol_res]
            assert env.b.connections() == 1
            assert [p for p, _, _ in env.megaphone_c2s(env.b)] == [env.session_pid_of(carol)]
            print(f"alice's session expired {expired:.1f}s after carol logged in")
    run(body(), timeout=120)


def _count(path, needle: str, start: int) -> int:
    with open(path, "rb") as f:
        f.seek(start)
        return f.read().decode(errors="replace").count(needle)


def test_failed_starts_then_node_loss_is_one_node_down(env):
    """Node A's start fails a few times (its listen port is taken), then succeeds; when the node is
    then lost, mod_megaphone handles the loss once: one warning, one reconnect. Each connect used to
    add a monitor_node, and monitors stack: one node_down per failed start too."""
    port = env.port(env.a)
    log = env.ej.log_path
    down = f"Megaphone node {env.a.node} is down"
    refused = f"Megaphone node {env.a.node} refused to start"
    env.a.kill()
    blocker = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # Earlier tests' connections may hold the port in TIME_WAIT; a listener still refuses the node.
    blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        blocker.bind(("127.0.0.1", port))
        blocker.listen(1)
        mark = log.stat().st_size
        env.a.start()
        # connect_retry is 1 s: a few failed starts in a few seconds
        run(until(lambda: _count(log, refused, mark) >= 3, 60, "three failed starts of node A"))
    finally:
        blocker.close()
    run(until(env.a.listening, 20, "node A to start once its port is free"))
    mark = log.stat().st_size
    env.a.kill()
    run(until(lambda: _count(log, down, mark) >= 1, 10, "mod_megaphone to see node A down"))
    # Once node A is back and started, every nodedown that was queued has been handled.
    env.a.start()
    run(until(env.a.listening, 20, "mod_megaphone to reattach node A"))
    assert _count(log, down, mark) == 1, env.ej.logs_tail(40)
