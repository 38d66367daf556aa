"""Parsing at the edge (`parser: megaphone`): what only that mode has.

The rest of the suite runs in both modes (scripts/test runs it once per MEGAPHONE_PARSER); these
tests need parsed mode whatever the suite's mode is, so they bring up their own ejabberd 23.01 with
`parser: megaphone` and one Megaphone node (one tcp listener).

  * the session keeps no XML parser (xmpp_socket's xml_stream is undefined);
  * the SASL restart: a raw client that sends its new stream header (and its bind) the moment it
    reads <success/>, split in two writes at every byte, always logs in;
  * credit: while its c2s is suspended, a client flooding stanzas gets at most the window into
    the c2s's mailbox, and TCP pushes back on it; resumed, the session goes on;
  * restricted XML (RFC 6120 §11) after the header: <restricted-xml/>, sent by the session.
"""
from __future__ import annotations

import base64
import os

import pytest

import conftest
from clients import Session, run, until
from harness.env import XMPP_HOST
from test_tls import Raw

HEADER = (f"<stream:stream to='{XMPP_HOST}' xmlns='jabber:client' "
          "xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>").encode()
WINDOW = 16  # megaphone_socket's window

# Parsed mode whatever the suite's mode: run once, in the default (parsed) pass of scripts/test.
pytestmark = pytest.mark.skipif(os.environ.get("MEGAPHONE_PARSER") == "ejabberd",
                                reason="parsed-mode tests run in the suite's parsed pass")


class ParsedEnv(conftest.OneNodeEnv):
    def session_pids(self) -> list[str]:
        """mod_megaphone's sessions, as Erlang expressions (list_to_pid(...))."""
        return [f'list_to_pid("{p if isinstance(p, str) else "".join(map(chr, p))}")' for p in self.ej.rpc(
            "[pid_to_list(P) || {_, {P, _}} <- maps:to_list(element(5, sys:get_state(mod_megaphone, 5000)))].")]


@pytest.fixture(scope="module")
def penv():
    yield from conftest.one_node_env(ParsedEnv, "parsed", "parsed-mode integration",
                                     megaphone_opts={"parser": "megaphone"})


@pytest.fixture
def parsed(penv: ParsedEnv) -> ParsedEnv:
    penv.ensure_healthy()
    return penv


async def open_stream(env: ParsedEnv) -> Raw:
    raw = await Raw.connect("raw", env.port)
    raw.send(HEADER)
    await raw.read_until(b"</stream:features>")
    return raw


async def authenticate(env: ParsedEnv, user: str, password: str) -> Raw:
    raw = await open_stream(env)
    token = base64.b64encode(b"\0" + user.split("@")[0].encode() + b"\0" + password.encode()).decode()
    raw.send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>".encode())
    await raw.read_until(b"<success")
    return raw


def test_session_keeps_no_xml_parser(parsed):
    async def body():
        jid, pw = parsed.new_user("nop")
        async with Session() as s:
            await s.login(jid, pw, parsed.port)
            [p] = parsed.session_pids()
            # xmpp_socket's #socket_state{socket = {megaphone, Node, ConnId, tcp, NodePid},
            # xml_stream}: fxml's parser, created only when the c2s owns the socket
            size, stream = parsed.ej.rpc(
                f"S = maps:get(socket, sys:get_state({p})), {{tuple_size(element(3, S)), element(5, S)}}.")
            assert size == 5 and stream == "undefined", (size, stream)
    run(body())


def test_restart_right_after_success_at_every_split(parsed):
    """xmpp_stream_in calls reset_stream before it sends <success/>; the client's next header can
    only come after it read that, so it reaches the new parser however its bytes are cut."""
    jid, pw = parsed.new_user("rst")
    after = (HEADER + b"<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
             b"<resource>r</resource></bind></iq>")

    async def one(split: int) -> None:
        raw = await authenticate(parsed, jid, pw)
        raw.received = b""
        raw.send(after[:split])
        await raw.writer.drain()
        raw.send(after[split:])
        await raw.read_until(b"</jid>")
        assert f"{jid}/r".encode() in raw.received, (split, raw.received)
        raw.writer.close()

    async def body():
        for split in range(len(after) + 1):  # ~190 logins, a few seconds
            await one(split)
        await until(lambda: parsed.node.connections() == 0, 10, "every client gone")
    run(body(), timeout=300)


def test_flood_reaches_the_mailbox_only_within_the_window(parsed):
    async def body():
        jid, pw = parsed.new_user("fld")
        raw = await authenticate(parsed, jid, pw)
        raw.send(HEADER + b"<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>")
        await raw.read_until(b"</jid>")
        [p] = parsed.session_pids()
        before = parsed.node.stats()["elements_delivered"]
        parsed.ej.rpc(f"sys:suspend({p}).")
        try:
            stanza = b"<iq type='get' id='p'><ping xmlns='urn:xmpp:ping'/></iq>"
            chunk = stanza * 16384  # ~0.9 MB
            # Until TCP pushes back on the client (write() keeps what the kernel refuses): what
            # the node did not read stays in the kernel, and the client's own buffer fills.
            for _ in range(128):
                raw.send(chunk)
                if raw.writer.transport.get_write_buffer_size() > 0:
                    break
            assert raw.writer.transport.get_write_buffer_size() > 0, "the kernel took ~115 MB"
            # the node has sent what the credit left allows (at least half the window: credit
            # comes back every half window), and stopped
            await until(lambda: parsed.node.stats()["elements_delivered"] - before >= WINDOW // 2, 10,
                        "the window's elements to reach the c2s")
            delivered = parsed.node.stats()["elements_delivered"] - before
            queued = parsed.ej.rpc(f"element(2, process_info({p}, message_queue_len)).")
            assert delivered <= WINDOW, delivered
            assert queued <= WINDOW + 2, queued
        finally:
            parsed.ej.rpc(f"sys:resume({p}).")
        # resumed, the session takes the rest at its own pace and answers
        await raw.read_until(b"id='p'", timeout=20)
        await until(lambda: parsed.node.stats()["elements_delivered"] - before > 4 * WINDOW, 20,
                    "the session to take more elements once resumed")
        raw.writer.transport.abort()
    run(body())


@pytest.mark.parametrize("what,payload", [
    ("comment", b"<!-- hello -->"),
    ("processing-instruction", b"<?foo bar?>"),
    ("entity", b"<message to='x@localhost'><body>&nbsp;</body></message>"),
])
def test_restricted_xml_after_the_header(parsed, what, payload):
    async def body():
        before = parsed.node.stats()["stream_errors"]
        raw = await open_stream(parsed)
        raw.send(payload)
        await raw.read_until(b"</stream:stream>", timeout=10)
        assert b"<restricted-xml" in raw.received, raw.received[-300:]
        await until(lambda: parsed.node.stats()["stream_errors"] == before + 1, 5, "the refusal counted")
        await until(lambda: parsed.node.connections() == 0, 10, "the client closed")
    run(body())


def test_doctype_before_the_header_is_not_well_formed(parsed):
    async def body():
        raw = await Raw.connect("raw", parsed.port)
        raw.send(b"<?xml version='1.0'?><!DOCTYPE stream [<!ENTITY a 'b'>]>" + HEADER)
        await raw.read_until(b"</stream:stream>", timeout=10)
        assert b"<not-well-formed" in raw.received, raw.received[-300:]
        await until(lambda: parsed.node.connections() == 0, 10, "the client closed")
    run(body())
