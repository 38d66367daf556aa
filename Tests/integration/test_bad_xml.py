"""Bad XML before login: oversized, deeply nested or invalid input, over every way in.

Each case runs against the module's `tls_env` (conftest.py: one Megaphone node with a tcp, a
starttls and a tls listener, attached to a real ejabberd 23.01 whose c2s options include
max_stanza_size 262144). A raw client sends the bad input

  * over plain TCP (ejabberd's parser sees it through the node),
  * over STARTTLS before TLS (the node's own negotiator sees it),
  * over STARTTLS after the handshake (ejabberd sees it, decrypted by the node),
  * over direct TLS (ejabberd sees it, decrypted by the node),

while alice (through the node, STARTTLS) and bob (ejabberd's own port) chat with slixmpp. What
must hold: the bad client is closed, with a stream error naming the reason where one is sent; alice
and bob chat before and after, on the same connections; no c2s session and no node connection is
left behind; the node's fd count returns to what it was.
"""
from __future__ import annotations

import asyncio
import ssl
import time

import pytest

from clients import Session, run, until
from harness.env import XMPP_HOST
from test_tls import PROCEED, STARTTLS, Raw, chat, closed_counts, closed_delta, tls_login

HEADER = ("<?xml version='1.0'?><stream:stream to='localhost' xmlns='jabber:client' "
          "xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>").encode()
MAX_STANZA = 262144
# How long a refused client may take to be closed (ejabberd reads at c2s_shaper speed: fast).
CLOSE_WITHIN = 15

# name -> (bytes after the stream header, the stream error ejabberd sends, or None for "closed,
# any error"). The bytes never complete a stanza that ejabberd would accept.
PAYLOADS = {
    "not-well-formed": (b"<message to='x@localhost'><body>a</bod></message>", b"not-well-formed"),
    "oversized": (b"<message><body>" + b"A" * (2 * MAX_STANZA), b"policy-violation"),
    "deeply-nested": (b"<a>" * 120_000, b"policy-violation"),
    "huge-attribute": (b"<message to='" + b"x" * (2 * MAX_STANZA), b"policy-violation"),
    "binary-garbage": (bytes(range(256)) * 16, b"not-well-formed"),
}
# The stream header itself is wrong (sent instead of HEADER).
BAD_HEADERS = {
    "wrong-namespace": (b"<stream:stream to='localhost' xmlns='jabber:client' "
                        b"xmlns:stream='urn:wrong' version='1.0'>", b"invalid-namespace"),
    # ejabberd closes it (max_stanza_size) with nothing received, or a stream error lost to the
    # reset that closing with unread input causes: only the close is asserted.
    "header-without-end": (b"<stream:stream to='" + b"l" * (2 * MAX_STANZA), None),
}
WAYS = ["tcp", "starttls-before-tls", "starttls-after-tls", "tls"]


async def open_way(env, way: str) -> Raw:
    """A raw client that is past whatever comes before the stream ejabberd parses."""
    if way == "tls":
        ctx = ssl.create_default_context(cafile=str(env.ca))
        t0 = time.monotonic()
        connecting = asyncio.open_connection("127.0.0.1", env.port("tls"), ssl=ctx, server_hostname=XMPP_HOST)
        reader, writer = await asyncio.wait_for(connecting, 5)
        return Raw(way, reader, writer, t0)
    if way == "tcp":
        return await Raw.connect(way, env.port("tcp"))
    raw = await Raw.connect(way, env.port("starttls"))
    if way == "starttls-after-tls":
        raw.send(HEADER)
        await raw.read_until(b"</stream:features>")
        raw.send(STARTTLS)
        await raw.read_until(PROCEED)
        ctx = ssl.create_default_context(cafile=str(env.ca))
        await asyncio.wait_for(raw.writer.start_tls(ctx, server_hostname=XMPP_HOST), 5)
        raw.received = b""
    return raw


async def send_all(raw: Raw, data: bytes) -> None:
    """Writes data; the peer may close midway (that is a refusal too, seen by wait_closed)."""
    raw.send(data)
    try:
        await asyncio.wait_for(raw.writer.drain(), CLOSE_WITHIN)
    except (ConnectionResetError, BrokenPipeError, asyncio.TimeoutError):
        pass


def expected_error(way: str, name: str, error: bytes | None) -> bytes | None:
    """The node answers bad input before TLS itself: bad-format for a header that is not one,
    policy-violation for anything but <starttls/> (or too much of it)."""
    if way != "starttls-before-tls":
        return error
    return b"bad-format" if name == "wrong-namespace" else b"policy-violation"


CASES = [(way, name) for way in WAYS for name in list(PAYLOADS) + list(BAD_HEADERS)]


@pytest.mark.parametrize("way,name", CASES, ids=[f"{w}-{n}" for w, n in CASES])
def test_bad_xml_before_login_closes_only_that_client(tls_env, way, name):
    env = tls_env

    async def body():
        alice_jid, alice_pw = env.new_user("alice")
        bob_jid, bob_pw = env.new_user("bob")
        async with Session() as s:
            alice = await s.login(**tls_login(env, alice_jid, alice_pw, "starttls"))
            bob = await s.login(bob_jid, bob_pw, env.ej.c2s_port)
            await chat(alice, bob, "before")
            await until(lambda: env.node.connections() == 1, 5, "the node to hold alice alone")
            sessions_before = env.megaphone_c2s()
            fds_before = env.node.fd_count()
            closed_before = closed_counts(env.node)

            raw = await open_way(env, way)
            if name in PAYLOADS:
                payload, error = PAYLOADS[name]
                raw.send(HEADER)
                if way != "starttls-before-tls":
                    await raw.read_until(b"<stream:features")
            else:
                payload, error = BAD_HEADERS[name]
            # Read while writing: a stream error that arrives mid-write is kept even if a reset
            # follows (a peer that closes with our input unread resets the connection).
            closed = asyncio.create_task(raw.wait_closed(CLOSE_WITHIN))
            await send_all(raw, payload)
            await closed
            want = expected_error(way, name, error)
            if way == "starttls-before-tls":
                # Refused by the node itself, and counted. The node closes with the client's input
                # unread, so the kernel sends a reset, which may discard the stream error before
                # the client reads it: it is asserted only for input small enough to have been
                # read whole (one segment on loopback) before the node decided.
                def refused() -> int | None:
                    return closed_delta(closed_before, closed_counts(env.node)).get("starttls_refused")
                await until(lambda: refused() == 1, 5, "the refusal to be counted as starttls_refused")
                if len(HEADER) + len(payload) > 1024:
                    want = None
            if want is not None:
                assert b"<stream:error>" in raw.received and want in raw.received, \
                    f"{way}/{name}: closed without a {want!r} stream error: {raw.received[-300:]!r}"
            raw.abort()

            # the others never noticed
            await chat(alice, bob, "after")
            await chat(bob, alice, "back")
            assert not alice.lost.is_set() and not bob.lost.is_set()
            await until(lambda: env.megaphone_c2s() == sessions_before, 10,
                        "the bad client's c2s session to end")
            await until(lambda: env.node.connections() == 1, 10, "the node to drop the bad client")
            await until(lambda: env.node.fd_count() <= fds_before, 10, "the node's fds to return")
    run(body())
