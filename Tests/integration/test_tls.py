"""TLS at the edge: STARTTLS and direct TLS terminated by the Megaphone node, end to end.

Every test runs against the module's `tls_env` (see conftest.py): one Megaphone node with a tcp,
a starttls and a tls listener, attached to its own ejabberd 23.01 whose mod_megaphone passes a
certfile from a test PKI (root CA -> intermediate CA -> server cert for localhost),
handshake_timeout 2 s and max_handshakes_per_ip 3. tls_env.ej.c2s_port is ejabberd's own plain
c2s listener (the "native" users), tls_env.ej.c2s_tls_port its own STARTTLS listener.

Clients: slixmpp (clients.py) with tls="starttls" | "direct", `openssl s_client`, and raw asyncio
sockets for the bad-input cases. Raw sockets that must stay within the per-IP handshake limit
use their own loopback source addresses (127.0.0.x). Waits are polled conditions or reads with
deadlines, never fixed sleeps.
"""
from __future__ import annotations

import asyncio
import secrets
import ssl
import time
from base64 import b64encode
from pathlib import Path

import pytest

from clients import Client, Session, run, until
from harness.env import XMPP_HOST
from harness.files import write_private_file
from harness.processes import wait_for
from harness.s_client import s_client
from harness.terms import proplist

STREAM_HEADER = ("<?xml version='1.0'?><stream:stream to='localhost' xmlns='jabber:client' "
                 "xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>").encode()
STARTTLS = b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
PROCEED = b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
POLICY_VIOLATION = (b"<stream:error><policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
                    b"</stream:error></stream:stream>")
GARBAGE = b"this is not TLS, not XML either\r\n" * 8

# How precisely a handshake timeout must hit: not before T - EARLY, not after T + LATE.
EARLY = 0.5
LATE = 2.0
# "At once" / "quickly": a close that needs no timer.
QUICK = 1.0


def user_of(jid: str) -> str:
    return jid.split("@", 1)[0]


async def chat(sender: Client, receiver: Client, body: str, timeout: float = 20) -> float:
    """sender -> receiver (full JID); the body arrives intact. Returns the delivery time."""
    t0 = time.monotonic()
    sender.send_message(mto=receiver.boundjid.full, mbody=body, mtype="chat")
    msg = await receiver.next_message(timeout, frm=sender.boundjid.bare)
    got = msg["body"]
    assert got == body, (f"{receiver.label} got a body of {len(got)} chars from {sender.label}, "
                         f"expected {len(body)}")
    return time.monotonic() - t0


def closed_counts(node) -> dict[str, int]:
    return {str(k): v for k, v in node.stats()["closed"].items()}


def closed_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after.get(k, 0) - before.get(k, 0) for k in set(before) | set(after)
            if after.get(k, 0) != before.get(k, 0)}


def tls_login(env, jid: str, pw: str, mode: str, mech: str | None = None, **kw) -> dict:
    """Session.login kwargs for a client of the Megaphone node over STARTTLS or direct TLS."""
    port = env.port("starttls" if mode == "starttls" else "tls")
    return dict(jid=jid, password=pw, port=port, mech=mech, tls=mode, ca_file=env.ca,
                alpn=["xmpp-client"] if mode == "direct" else None, **kw)


def client_hello(ca: Path, alpn: list[str] | None = None) -> bytes:
    """The bytes of a real ClientHello (Python's ssl, through memory BIOs), for localhost."""
    ctx = ssl.create_default_context(cafile=str(ca))
    if alpn:
        ctx.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=XMPP_HOST)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    hello = outgoing.read()
    assert hello[:1] == b"\x16" and len(hello) > 100, hello[:16]
    return hello


class Raw:
    """A raw TCP connection to the node, from a chosen loopback source address."""

    def __init__(self, label: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, t0: float):
        self.label, self.reader, self.writer, self.t0 = label, reader, writer, t0
        self.received = b""

    @classmethod
    async def connect(cls, label: str, port: int, src: str = "127.0.0.1") -> "Raw":
        t0 = time.monotonic()
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, local_addr=(src, 0)), 5)
        return cls(label, reader, writer, t0)

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def read_until(self, marker: bytes, timeout: float = 5) -> bytes:
        """Reads until `marker` has been received; returns everything received so far."""
        deadline = time.monotonic() + timeout
        while marker not in self.received:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{self.label}: no {marker!r} within {timeout}s; got {self.received!r}")
            try:
                chunk = await asyncio.wait_for(self.reader.read(65536), left)
            except asyncio.TimeoutError:
                continue
            if not chunk:
                raise AssertionError(f"{self.label}: closed before {marker!r}; got {self.received!r}")
            self.received += chunk
        return self.received

    async def read_some(self, timeout: float = 5) -> bytes:
        chunk = await asyncio.wait_for(self.reader.read(65536), timeout)
        self.received += chunk
        return chunk

    async def wait_closed(self, timeout: float) -> float:
        """Reads until EOF or reset; returns seconds from connect to the close. Fails after timeout
        (counted from connect)."""
        while True:
            left = self.t0 + timeout - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{self.label}: still open {timeout}s after connect "
                                     f"(received {self.received[:200]!r})")
            try:
                chunk = await asyncio.wait_for(self.reader.read(65536), left)
            except asyncio.TimeoutError:
                continue
            except (ConnectionResetError, BrokenPipeError):
                return time.monotonic() - self.t0
            if not chunk:
                return time.monotonic() - self.t0
            self.received += chunk

    def abort(self) -> None:
        self.writer.transport.abort()


async def tls_handshake(port: int, ca: Path, src: str = "127.0.0.1", timeout: float = 5) -> dict:
    """A complete TLS handshake with Python's ssl; returns version and the server's serial."""
    ctx = ssl.create_default_context(cafile=str(ca))
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=XMPP_HOST,
                                local_addr=(src, 0), ssl_handshake_timeout=timeout), timeout + 1)
    try:
        obj = writer.get_extra_info("ssl_object")
        return {"version": obj.version(), "serial": int(obj.getpeercert()["serialNumber"], 16)}
    finally:
        writer.transport.abort()


def serial_seen(port: int, ca: Path, starttls: bool = False) -> int | None:
    r = s_client(port, "-verify_return_error", ca=ca, starttls=starttls)
    return r.leaf_serial if r.handshake_ok and r.verify_code == 0 else None


# ---------------------------------------------------------------------------------------------
# logging in over TLS

@pytest.mark.parametrize("mech", ["PLAIN", "SCRAM-SHA-1"])
@pytest.mark.parametrize("mode", ["starttls", "direct"])
def test_slixmpp_logs_in_over_tls_and_chats_with_a_native_user(tls_env, mode, mech):
    env = tls_env

    async def body():
        alice_jid, alice_pw = env.new_user("alice")
        bob_jid, bob_pw = env.new_user("bob")
        async with Session() as s:
            alice = await s.login(**tls_login(env, alice_jid, alice_pw, mode, mech))
            bob = await s.login(bob_jid, bob_pw, env.ej.c2s_port, mech=mech)
            assert alice.mech_used == mech, f"alice authenticated with {alice.mech_used}"

            # TLS as negotiated by slixmpp, with the test CA and host name checked by its context
            assert alice.tls_version in ("TLSv1.2", "TLSv1.3"), alice.tls_version
            assert alice.peer_serial == env.pki.server.serial, alice.peer_cert
            if mode == "direct":
                assert alice.tls_alpn == "xmpp-client", alice.tls_alpn

            # the streams alice saw
            feats = alice.features_seen
            if mode == "starttls":
                first = feats[0]
                assert not first["encrypted"] and first["starttls_required"], first
                assert first["mechanisms"] == [], f"SASL offered before TLS: {first['xml']}"
                after_tls = feats[1]
            else:
                after_tls = feats[0]
            assert after_tls["encrypted"] and not after_tls["starttls"], after_tls
            mechs = alice.mechanisms_offered()
            assert {"PLAIN", "SCRAM-SHA-1"} <= set(mechs), mechs
            assert [m for m in mechs if m.endswith("-PLUS")] == [], \
                f"channel-binding mechanisms offered through Megaphone: {mechs}"

            # ejabberd's view: a TLS c2s over a Megaphone connection, with the client's address
            info = proplist(env.ej.session_info(user_of(alice_jid), alice.boundjid.resource))
            assert info.get("conn") == "c2s_tls", info
            assert info.get("ip") == ((127, 0, 0, 1), alice.sockname[1]), info
            mp = env.megaphone_c2s()
            assert len(mp) == 1, mp
            pid, _sockmod, sock = mp[0]
            assert pid == env.session_pid_of(alice)
            assert sock[3] == "tls", sock
            assert env.node.connections() == 1

            await chat(alice, bob, f"hello over {mode}")
            await chat(bob, alice, "hello from the native port")
            # far beyond one TLS record (16 KiB) in each direction
            await chat(alice, bob, "A" + secrets.token_hex(60_000), timeout=30)
            await chat(bob, alice, "B" + secrets.token_hex(60_000), timeout=30)
    run(body())


def test_native_tls_listener_offers_plus_mechanisms_for_comparison(tls_env):
    """The reference for the -PLUS check above: ejabberd's own STARTTLS listener, same ejabberd,
    same certificate, does offer SCRAM-*-PLUS; so their absence through Megaphone is the
    module's doing, not the client's failure to see them."""
    env = tls_env

    async def body():
        bob_jid, bob_pw = env.new_user("bob")
        async with Session() as s:
            bob = await s.login(bob_jid, bob_pw, env.ej.c2s_tls_port, mech="PLAIN", tls="starttls",
                                ca_file=env.ca)
            mechs = bob.mechanisms_offered()
            assert any(m.endswith("-PLUS") for m in mechs), mechs
            info = proplist(env.ej.session_info(user_of(bob_jid), bob.boundjid.resource))
            assert info.get("conn") == "c2s_tls", info
    run(body())


# ---------------------------------------------------------------------------------------------
# openssl s_client: chain, versions, ALPN

@pytest.mark.parametrize("listener", ["tls", "starttls"])
def test_s_client_verifies_the_chain(tls_env, listener):
    env = tls_env
    starttls = listener == "starttls"
    r = s_client(env.port(listener), "-verify_return_error", "-verify_hostname", XMPP_HOST,
                 "-verify_ip", "127.0.0.1", ca=env.ca, starttls=starttls)
    assert r.handshake_ok and r.verify_code == 0, str(r)
    assert r.leaf_serial == env.pki.server.serial, str(r)
    # leaf then intermediate, as the certfile holds them (the root is the client's business)
    subjects = r.chain_subjects
    assert len(r.chain_pems) == 2 and len(subjects) == 2, str(r)
    assert "CN = localhost" in subjects[0] and "OU = server " in subjects[0], subjects
    assert "Intermediate CA" in subjects[1], subjects

    # the control: without the test CA the same chain does not verify
    r2 = s_client(env.port(listener), starttls=starttls)
    assert r2.verify_code not in (None, 0), str(r2)


@pytest.mark.parametrize("listener", ["tls", "starttls"])
@pytest.mark.parametrize("flag,expected", [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3"),
                                           ("-tls1_1", None), ("-tls1", None)])
def test_protocol_versions(tls_env, listener, flag, expected):
    env = tls_env
    # SECLEVEL=0 so that the client itself is willing to speak TLS 1.0/1.1: a refusal is the server's
    extra = ["-cipher", "DEFAULT:@SECLEVEL=0"] if expected is None else []
    r = s_client(env.port(listener), flag, *extra, ca=env.ca, starttls=listener == "starttls")
    if expected:
        assert r.handshake_ok and r.protocol == expected, str(r)
        assert r.verify_code == 0, str(r)
    else:
        assert not r.handshake_ok, str(r)
        assert "alert protocol version" in r.output, f"refused, but not with a protocol_version alert:\n{r}"


def test_alpn_xmpp_client_is_selected_when_offered(tls_env):
    env = tls_env
    port = env.port("tls")
    r = s_client(port, "-alpn", "xmpp-client", ca=env.ca)
    assert r.handshake_ok and r.alpn == "xmpp-client", str(r)
    r = s_client(port, "-alpn", "x-something-else,xmpp-client", ca=env.ca)
    assert r.handshake_ok and r.alpn == "xmpp-client", str(r)
    r = s_client(port, ca=env.ca)
    assert r.handshake_ok and r.alpn is None and "No ALPN negotiated" in r.output, str(r)


# ---------------------------------------------------------------------------------------------
# bad input

def test_bad_tls_input_is_closed_and_other_clients_are_unaffected(tls_env):
    """Garbage is closed at once; clients that stall anywhere before the end of the handshake
    are closed after handshake_timeout (not much earlier, not much later); meanwhile two
    Megaphone TLS clients and a native one keep chatting."""
    env = tls_env
    T = env.handshake_timeout
    tls_port, st_port = env.port("tls"), env.port("starttls")
    hello = client_hello(env.ca)

    async def body():
        alice_jid, alice_pw = env.new_user("alice")
        carol_jid, carol_pw = env.new_user("carol")
        bob_jid, bob_pw = env.new_user("bob")
        async with Session() as s:
            alice = await s.login(**tls_login(env, alice_jid, alice_pw, "direct"))
            carol = await s.login(**tls_login(env, carol_jid, carol_pw, "starttls"))
            bob = await s.login(bob_jid, bob_pw, env.ej.c2s_port)
            await until(lambda: env.node.connections() == 2, 5, "the node to hold alice and carol")
            fds_before = env.node.fd_count()
            before = closed_counts(env.node)

            raws: list[Raw] = []
            # each bad client from its own source address: the per-IP handshake limit is 3
            src = iter(f"127.0.0.{i}" for i in range(20, 40))

            async def connect(label, port):
                r = await Raw.connect(label, port, next(src))
                raws.append(r)
                return r

            async def garbage_on_tls():
                r = await connect("garbage on the tls port", tls_port)
                r.send(GARBAGE)
                return r.label, await r.wait_closed(QUICK), "quick"

            async def garbage_after_proceed():
                r = await connect("garbage after <proceed/>", st_port)
                r.send(STREAM_HEADER)
                await r.read_until(b"</stream:features>")
                r.send(STARTTLS)
                await r.read_until(PROCEED)
                r.t0 = time.monotonic()
                r.send(GARBAGE)
                return r.label, await r.wait_closed(QUICK), "quick"

            async def silent_on_tls():
                r = await connect("TCP connect, then nothing, on the tls port", tls_port)
                return r.label, await r.wait_closed(T + LATE), "timeout"

            async def truncated_hello():
                r = await connect("first 20 bytes of a ClientHello", tls_port)
                r.send(hello[:20])
                return r.label, await r.wait_closed(T + LATE), "timeout"

            async def stall_after_server_flight():
                r = await connect("ClientHello, server's answer read, then nothing", tls_port)
                r.send(hello)
                first = await r.read_some(5)
                assert first[:1] == b"\x16", f"{r.label}: no handshake record from the server: {first[:40]!r}"
                return r.label, await r.wait_closed(T + LATE), "timeout"

            async def stall_before_starttls():
                r = await connect("stream header, features read, then nothing", st_port)
                r.send(STREAM_HEADER)
                await r.read_until(b"</stream:features>")
                return r.label, await r.wait_closed(T + LATE), "timeout"

            async def stall_after_proceed():
                r = await connect("<starttls/>, <proceed/> read, then nothing", st_port)
                r.send(STREAM_HEADER)
                await r.read_until(b"</stream:features>")
                r.send(STARTTLS)
                await r.read_until(PROCEED)
                return r.label, await r.wait_closed(T + LATE), "timeout"

            bad = asyncio.gather(garbage_on_tls(), garbage_after_proceed(), silent_on_tls(),
                                 truncated_hello(), stall_after_server_flight(),
                                 stall_before_starttls(), stall_after_proceed(),
                                 return_exceptions=True)
            # chat while the bad clients are being dealt with
            latencies = []
            i = 0
            try:
                while not bad.done():
                    latencies.append(await chat(alice, bob, f"a{i}", timeout=5))
                    latencies.append(await chat(bob, carol, f"b{i}", timeout=5))
                    latencies.append(await chat(carol, alice, f"c{i}", timeout=5))
                    i += 1
                    await asyncio.wait({bad}, timeout=0.1)  # pace the rounds
                results = await bad
            finally:
                bad.cancel()
                for r in raws:
                    r.abort()
            errors = [r for r in results if isinstance(r, BaseException)]
            assert not errors, errors
            report = []
            for label, took, kind in results:
                report.append(f"{label}: closed after {took:.2f}s")
                if kind == "quick":
                    assert took < QUICK, report
                else:
                    assert T - EARLY <= took <= T + LATE, \
                        f"{label}: closed after {took:.2f}s, handshake_timeout is {T}s"
            print("\n".join(report))

            assert i >= 3 and max(latencies) < 2, (i, latencies)
            assert not alice.lost.is_set() and not carol.lost.is_set()
            await chat(alice, carol, "after the bad clients")
            await until(lambda: env.node.connections() == 2, 5, "the node to be back to alice and carol")
            await until(lambda: env.node.fd_count() <= fds_before, 5, f"the node's fds back to {fds_before}")
            delta = closed_delta(before, closed_counts(env.node))
            assert delta == {"tls_error": 2, "handshake_timeout": 5}, delta
    run(body())


@pytest.mark.parametrize("what", ["auth", "iq", "message"])
def test_plaintext_client_on_starttls_listener_is_refused(tls_env, what):
    """No STARTTLS, straight to SASL (with the right password), to a legacy-auth iq, or to a
    message: policy-violation, the stream closed, and ejabberd never sees the connection."""
    env = tls_env

    async def body():
        jid, pw = env.new_user("plain")
        user = user_of(jid)
        before = closed_counts(env.node)
        accepted = env.node.stats()["accepted"]
        r = await Raw.connect("plaintext client", env.port("starttls"))
        try:
            r.send(STREAM_HEADER)
            got = await r.read_until(b"</stream:features>")
            assert got.startswith(b"<?xml version='1.0'?>"), got
            assert b"<stream:stream" in got and b"version='1.0'" in got, got
            assert (b"<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/>"
                    b"</starttls></stream:features>") in got, got
            assert b"mechanisms" not in got, got
            n = len(got)
            if what == "auth":
                creds = b64encode(b"\0" + user.encode() + b"\0" + pw.encode()).decode()
                r.send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{creds}</auth>".encode())
            elif what == "iq":
                r.send(f"<iq type='set' id='a1'><query xmlns='jabber:iq:auth'><username>{user}</username>"
                       f"<password>{pw}</password><resource>r</resource></query></iq>".encode())
            else:
                r.send(f"<message to='{jid}' type='chat'><body>hi</body></message>".encode())
            took = await r.wait_closed(5)
            answer = r.received[n:]
            assert answer == POLICY_VIOLATION, (answer, took)
        finally:
            r.abort()
        assert env.ej.user_resources(user) == []
        assert env.megaphone_c2s() == []
        await until(lambda: env.node.stats()["accepted"] == accepted + 1, 5, "the node to count the connection")
        delta = closed_delta(before, closed_counts(env.node))
        assert delta == {"starttls_refused": 1}, delta
        assert env.node.connections() == 0
    run(body())


def test_per_ip_handshake_limit(tls_env):
    """max_handshakes_per_ip = 3: a 4th unfinished handshake from the same address is closed at
    once; another address is not affected; once the stalled ones time out, handshakes work."""
    env = tls_env
    T, limit = env.handshake_timeout, env.max_handshakes_per_ip
    port = env.port("tls")
    hello = client_hello(env.ca)

    async def body():
        before = closed_counts(env.node)
        accepted = env.node.stats()["accepted"]
        stalled: list[Raw] = []
        try:
            for i in range(limit):
                r = await Raw.connect(f"stalled {i}", port, "127.0.0.1")
                r.send(hello[:20])
                stalled.append(r)
            await until(lambda: env.node.stats()["accepted"] >= accepted + limit, 5,
                        f"the node to accept the {limit} stalled connections")

            extra = await Raw.connect("one too many", port, "127.0.0.1")
            stalled.append(extra)
            extra.send(hello[:20])
            took = await extra.wait_closed(QUICK)
            await until(lambda: closed_delta(before, closed_counts(env.node)).get("handshake_limit") == 1,
                        2, "handshake_limit to be counted")

            # another address is not limited
            other = await tls_handshake(port, env.ca, src="127.0.0.2")
            assert other["serial"] == env.pki.server.serial, other

            # the stalled ones are still open, and are closed by the timeout
            for r in stalled[:limit]:
                t = await r.wait_closed(T + LATE)
                assert t >= T - EARLY, f"{r.label} closed after {t:.2f}s, handshake_timeout is {T}s"
        finally:
            for r in stalled:
                r.abort()
        again = await tls_handshake(port, env.ca, src="127.0.0.1")
        assert again["serial"] == env.pki.server.serial, again
        delta = closed_delta(before, closed_counts(env.node))
        assert delta.get("handshake_limit") == 1 and delta.get("handshake_timeout") == limit, delta
        print(f"the connection past the limit was closed after {took:.3f}s")
    run(body())


# ---------------------------------------------------------------------------------------------
# options and certificate reload (these change the module config and put it back)

def test_idle_tls_sessions_hibernate_and_wake(tls_env):
    """Issue 13 over TLS: the node sees the decrypted traffic's silence, the session hibernates,
    and a message wakes it, over STARTTLS and direct TLS."""
    from test_hibernation import until_hibernating
    env = tls_env

    async def body():
        bob_jid, bob_pw = env.new_user("bob")
        async with Session() as s:
            bob = await s.login(bob_jid, bob_pw, env.ej.c2s_port)
            for mode in ("starttls", "direct"):
                jid, pw = env.new_user(f"hib{mode}")
                alice = await s.login(**tls_login(env, jid, pw, mode))
                await until_hibernating(env.ej, env.node, alice)
                await chat(bob, alice, f"wake up over {mode}")
                await chat(alice, bob, "awake")
    try:
        env.reconfigure(hibernate_after=1)
        wait_for(lambda: env.ej.rpc("mod_megaphone_opt:hibernate_after(global).") == 1000, 15,
                 "hibernate_after: 1 to be loaded", on_timeout=env.logs)
        run(body())
    finally:
        env.reconfigure()

def test_tls_min_version_and_ciphers_options(tls_env):
    env = tls_env
    port = env.port("tls")
    try:
        env.reconfigure(tls_min_version="tlsv1.3")
        wait_for(lambda: not s_client(port, "-tls1_2", ca=env.ca).handshake_ok, 15,
                 "TLS 1.2 to be refused with tls_min_version: tlsv1.3", on_timeout=env.logs)
        r = s_client(port, "-tls1_2", ca=env.ca)
        assert "alert protocol version" in r.output, str(r)
        r = s_client(port, "-tls1_3", ca=env.ca)
        assert r.handshake_ok and r.protocol == "TLSv1.3", str(r)

        env.reconfigure(ciphers="ECDHE-RSA-AES128-GCM-SHA256")
        wait_for(lambda: s_client(port, "-tls1_2", ca=env.ca).handshake_ok, 15,
                 "TLS 1.2 to be accepted again (tls_min_version back to its default)", on_timeout=env.logs)
        r = s_client(port, "-tls1_2", ca=env.ca)
        assert r.cipher == "ECDHE-RSA-AES128-GCM-SHA256", str(r)
        r = s_client(port, "-tls1_2", "-cipher", "ECDHE-RSA-AES256-GCM-SHA384", ca=env.ca)
        assert not r.handshake_ok, str(r)
        r = s_client(port, "-tls1_3", ca=env.ca)  # the TLS 1.2 cipher list leaves TLS 1.3 alone
        assert r.handshake_ok and r.protocol == "TLSv1.3", str(r)
    finally:
        env.reconfigure()
        wait_for(lambda: s_client(port, "-tls1_2", "-cipher", "ECDHE-RSA-AES256-GCM-SHA384",
                                  ca=env.ca).handshake_ok, 15, "the default options back")


def test_certificate_reload_keeps_established_connections(tls_env):
    """A new certfile through reload_config (a repeated start), then the same file rewritten in
    place and SIGHUP: new connections get the new certificate each time, established ones chat on."""
    env = tls_env
    tls_port, st_port = env.port("tls"), env.port("starttls")
    server2 = env.pki.server2
    server3 = env.pki.certs.get("server3") or env.pki.issue("server3")
    reload_pem = env.base / "pki" / "reload.pem"
    write_private_file(reload_pem, server2.bundle_bytes())
    pid = env.node.pid

    async def body():
        alice_jid, alice_pw = env.new_user("alice")
        carol_jid, carol_pw = env.new_user("carol")
        bob_jid, bob_pw = env.new_user("bob")
        async with Session() as s:
            alice = await s.login(**tls_login(env, alice_jid, alice_pw, "direct"))
            carol = await s.login(**tls_login(env, carol_jid, carol_pw, "starttls"))
            bob = await s.login(bob_jid, bob_pw, env.ej.c2s_port)
            assert alice.peer_serial == carol.peer_serial == env.pki.server.serial
            assert await asyncio.to_thread(serial_seen, tls_port, env.ca) == env.pki.server.serial

            # 1. reload_config with another certfile: mod_megaphone sends start again
            await asyncio.to_thread(env.reconfigure, certfile=str(reload_pem))
            await until(lambda: serial_seen(tls_port, env.ca) == server2.serial, 15,
                        "the tls listener to serve server2")
            assert serial_seen(st_port, env.ca, starttls=True) == server2.serial
            for a, b in ((alice, bob), (bob, alice), (carol, bob), (bob, carol)):
                await chat(a, b, "after reload_config")

            # 2. the same file rewritten in place, then SIGHUP
            write_private_file(reload_pem, server3.bundle_bytes())
            loads = env.node.stats()["certificate_loads"]
            env.node.sighup()
            await until(lambda: serial_seen(tls_port, env.ca) == server3.serial, 15,
                        "the tls listener to serve server3 after SIGHUP")
            assert env.node.stats()["certificate_loads"] == loads + 1
            assert serial_seen(st_port, env.ca, starttls=True) == server3.serial
            assert env.node.alive() and env.node.pid == pid, "the node restarted"
            for a, b in ((alice, bob), (bob, alice), (carol, bob), (bob, carol)):
                await chat(a, b, "after SIGHUP")
            assert not alice.lost.is_set() and not carol.lost.is_set()
            assert env.node.connections() == 2

            # a new XMPP client verifies and logs in with the new certificate
            dave_jid, dave_pw = env.new_user("dave")
            dave = await s.login(**tls_login(env, dave_jid, dave_pw, "direct"))
            assert dave.peer_serial == server3.serial
            await chat(dave, alice, "new certificate, old friend")

            # 3. a file that does not load, then SIGHUP: the certificate in use stays (README)
            write_private_file(reload_pem, b"-----BEGIN CERTIFICATE-----\nnot a certificate\n")
            failures = env.node.stats()["certificate_load_failures"]
            env.node.sighup()
            await until(lambda: env.node.stats()["certificate_load_failures"] == failures + 1,
                        5, "the node to count the failed reload")
            for _ in range(3):
                assert serial_seen(tls_port, env.ca) == server3.serial
            assert env.node.alive() and env.node.pid == pid, "the node died on an unloadable certfile"
            await chat(alice, dave, "still up")
    try:
        run(body())
    finally:
        env.reconfigure()
        wait_for(lambda: serial_seen(tls_port, env.ca) == env.pki.server.serial, 15,
                 "the original certificate back")


# ---------------------------------------------------------------------------------------------
# stream_header_timeout after TLS (the limits themselves: test_limits.py)

async def silent_after_tls(port: int, ca: Path, starttls: bool, wait: float) -> tuple[bytes, float | None]:
    """Finishes the TLS handshake (direct, or STARTTLS after the node's plaintext opening), then
    says nothing. Returns what the server sent over TLS and when it closed (None: still open)."""
    ctx = ssl.create_default_context(cafile=str(ca))
    if starttls:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(STREAM_HEADER)
        got = b""
        while b"</stream:features>" not in got:
            got += await asyncio.wait_for(reader.read(4096), 5)
        writer.write(STARTTLS)
        got = b""
        while PROCEED not in got:
            got += await asyncio.wait_for(reader.read(4096), 5)
        await writer.start_tls(ctx, server_hostname=XMPP_HOST)
    else:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=XMPP_HOST)
    t0 = time.monotonic()
    got = b""
    try:
        while True:
            chunk = await asyncio.wait_for(reader.read(4096), max(0.01, wait - (time.monotonic() - t0)))
            if not chunk:
                return got, time.monotonic() - t0
            got += chunk
    except (asyncio.TimeoutError, ConnectionResetError, ssl.SSLError):
        return got, None if not got.endswith(b"</stream:stream>") else time.monotonic() - t0
    finally:
        writer.transport.abort()


def test_stream_header_timeout_runs_after_the_handshake(tls_env):
    """stream_header_timeout 1 s: a client silent after direct TLS or after STARTTLS gets a
    connection-timeout stream error over TLS; the handshake itself is under handshake_timeout."""
    env = tls_env
    try:
        env.reconfigure(stream_header_timeout=1)
        before = closed_counts(env.node)

        async def body():
            for starttls, port in ((False, env.port("tls")), (True, env.port("starttls"))):
                # the reload reaches the node shortly after reload_config returns: poll
                deadline = time.monotonic() + 15
                while True:
                    got, closed_after = await silent_after_tls(port, env.ca, starttls, wait=3)
                    if closed_after is not None or time.monotonic() > deadline:
                        break
                assert closed_after is not None, got
                assert b"<connection-timeout xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in got, got
                assert 1 - EARLY <= closed_after <= 1 + LATE, closed_after
        run(body())
        assert closed_delta(before, closed_counts(env.node)).get("stream_header_timeout", 0) >= 2
    finally:
        env.reconfigure()
