"""Idle sessions hibernate (issue 13), and a hibernated session behaves like any other.

One ejabberd 23.01 with `hibernate_after: 1` (second) and `max_fsm_queue: 300`, one Megaphone
node; the parser mode is the suite's (MEGAPHONE_PARSER: scripts/test runs both). A session whose
connection moved no byte for 1-2 s is told `{megaphone_idle, ConnId}` by the node and hibernates
(megaphone_c2s); every test first waits until its session is in `erlang:hibernate/3`, then checks
that it wakes for what a session must handle: messages, presence, roster pushes, pings, XEP-0198
acks and resumption, kicks, `max_fsm_queue`, a wake-up storm, `sys:get_state` and ejabberdctl.
"""
from __future__ import annotations

import asyncio

import pytest

import conftest
from clients import Client, Session, run, until
from harness.env import XMPP_HOST
from test_ejabberd import chat

MAX_FSM_QUEUE = 300


def session_pid(ej, client: Client) -> str:
    """The client's session pid in `ej`, as an Erlang expression."""
    u = client.boundjid
    text = ej.rpc(f'pid_to_list(ejabberd_sm:get_session_pid(<<"{u.user}">>, <<"{u.domain}">>, <<"{u.resource}">>)).')
    return f'list_to_pid("{text if isinstance(text, str) else "".join(map(chr, text))}")'


def is_hibernating(ej, pid: str) -> bool:
    return ej.rpc(f"process_info({pid}, current_function) == "
                  "{current_function, {erlang, hibernate, 3}}.") in (True, "true")


async def until_hibernating(ej, node, client: Client, timeout: float = 10) -> str:
    """Waits until the client's session is in erlang:hibernate/3; returns its pid expression."""
    pid = session_pid(ej, client)
    try:
        await until(lambda: is_hibernating(ej, pid), timeout, f"{client.label}'s session to hibernate")
    except AssertionError as e:
        why = ej.rpc(f"{{process_info({pid}, current_function), "
                     f"maps:get(stream_timeout, sys:get_state({pid})), "
                     f"maps:get(stream_state, sys:get_state({pid}))}}.")
        raise AssertionError(f"{e}; node idle_notices={node.stats().get('idle_notices')}; {why}") from None
    return pid


class HibernationEnv(conftest.OneNodeEnv):
    def pid_of(self, client: Client) -> str:
        return session_pid(self.ej, client)

    def memory(self, pid: str) -> int:
        return self.ej.rpc(f"element(2, process_info({pid}, memory)).")

    async def until_hibernating(self, client: Client, timeout: float = 10) -> str:
        return await until_hibernating(self.ej, self.node, client, timeout)


@pytest.fixture(scope="module")
def henv_module():
    yield from conftest.one_node_env(HibernationEnv, "hib", "hibernation integration", resume_timeout=30,
                                     megaphone_opts={"hibernate_after": 1, "max_fsm_queue": MAX_FSM_QUEUE})


@pytest.fixture
def henv(henv_module: HibernationEnv) -> HibernationEnv:
    henv_module.ensure_healthy()
    return henv_module


def test_idle_session_hibernates_small_and_wakes_for_messages_and_presence(henv):
    async def body():
        alice_u, bob_u = henv.new_user("alice"), henv.new_user("bob")
        async with Session() as s:
            alice = await s.login(*alice_u, henv.port)
            bob = await s.login(*bob_u, henv.ej.c2s_port)
            awake = henv.memory(henv.pid_of(alice))
            pid = await henv.until_hibernating(alice)
            asleep = henv.memory(pid)
            print(f"\nalice's c2s: {awake} bytes awake after login, {asleep} hibernated")
            assert asleep < awake and asleep < 16_384, (awake, asleep)
            assert henv.node.stats()["idle_notices"] >= 1
            # state and admin tools answer a hibernated session
            assert henv.ej.rpc(f"is_map(sys:get_state({pid})).") in (True, "true")
            assert f"{alice.boundjid.full}".encode() in henv.ej.ctl("connected_users").stdout.encode()
            await chat(bob, alice, "wake up")
            await chat(alice, bob, "awake")
            await henv.until_hibernating(alice)
            bob.send_presence(pto=alice.boundjid.full)
            await until(lambda: bob.boundjid.full in alice.available, 10, "bob's presence to reach alice")
    run(body())


def test_hibernated_session_gets_roster_pushes_pings_and_kicks(henv):
    async def body():
        alice_u, bob_u = henv.new_user("alice"), henv.new_user("bob")
        carol = henv.new_user("carol")[0].split("@")[0]
        async with Session() as s:
            alice = await s.login(*alice_u, henv.port)
            alice.register_plugin("xep_0199")
            bob = await s.login(*bob_u, henv.ej.c2s_port)
            bob.register_plugin("xep_0199")
            await henv.until_hibernating(alice)
            henv.ej.ctl("add_rosteritem", alice.boundjid.user, XMPP_HOST, carol, XMPP_HOST, "Carol", "Friends", "both")
            await until(lambda: f"{carol}@{XMPP_HOST}" in alice.client_roster, 10, "the roster push to reach alice")

            await henv.until_hibernating(alice)
            rtt = await bob.plugin["xep_0199"].ping(alice.boundjid.full, timeout=10)
            assert rtt is not None and rtt < 10

            await henv.until_hibernating(alice)
            henv.ej.ctl("kick_session", alice.boundjid.user, XMPP_HOST, alice.boundjid.resource, "bye")
            await alice.wait_lost(10)
            await until(lambda: henv.node.connections() == 0, 10, "the node to close alice's connection")
    run(body())


def test_hibernated_stream_management_session_acks_and_resumes(henv):
    async def body():
        alice_u, bob_u = henv.new_user("alice"), henv.new_user("bob")
        async with Session() as s:
            alice = await s.login(*alice_u, henv.port, sm=True)
            await asyncio.wait_for(alice.sm_enabled.wait(), 10)
            bob = await s.login(*bob_u, henv.ej.c2s_port)
            await henv.until_hibernating(alice)
            # slixmpp acks every stanza (window 1): the message and its ack cross a woken session
            await chat(bob, alice, "acked")
            await henv.until_hibernating(alice)
            res = alice.boundjid.resource
            alice.drop_connection()
            await alice.wait_lost(5)
            bob.send_message(mto=f"{alice_u[0]}/{res}", mbody="while away", mtype="chat")
            assert await alice.login(henv.port) == "session_resumed"
            msg = await alice.next_message(10, frm=bob_u[0])
            assert msg["body"] == "while away"
            await henv.until_hibernating(alice)
            await chat(bob, alice, "resumed and woken")
    run(body())


def test_wake_up_storm_delivers_everything(henv):
    async def body():
        bob_u = henv.new_user("bob")
        users = [henv.new_user("u") for _ in range(30)]
        async with Session() as s:
            bob = await s.login(*bob_u, henv.ej.c2s_port)
            clients = [await s.login(*u, henv.port) for u in users]
            for c in clients:
                await henv.until_hibernating(c)
            for round_ in range(3):
                for c in clients:
                    bob.send_message(mto=c.boundjid.full, mbody=f"storm {round_}", mtype="chat")
            for c in clients:
                for round_ in range(3):
                    msg = await c.next_message(20, frm=bob_u[0])
                    assert msg["body"] == f"storm {round_}"
    run(body(), timeout=240)


def test_max_fsm_queue_holds_for_a_hibernated_session(henv):
    async def body():
        alice_u = henv.new_user("alice")
        async with Session() as s:
            alice = await s.login(*alice_u, henv.port)
            pid = await henv.until_hibernating(alice)
            # More than max_fsm_queue messages land in its mailbox at once: as for any c2s, the
            # process limit ends the session when it wakes.
            stanza = (f"<message xmlns='jabber:client' type='chat' from='x@{XMPP_HOST}' "
                      f"to='{alice.boundjid.full}'><body>x</body></message>")
            henv.ej.rpc(f"M = xmpp:decode(fxml_stream:parse_element(<<\"{stanza}\">>)), "
                        f"[{pid} ! {{route, M}} || _ <- lists:seq(1, {3 * MAX_FSM_QUEUE})], ok.")
            await alice.wait_lost(15)
            await until(lambda: henv.ej.user_resources(alice.boundjid.user) == [], 10, "the session to end")
            await until(lambda: henv.node.connections() == 0, 10, "the node to close the connection")
    run(body())
