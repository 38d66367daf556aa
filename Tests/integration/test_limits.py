"""Limits at the edge and backpressure, through ejabberd 23.01 with slixmpp and raw sockets.

One module environment: a Megaphone node with one tcp listener and its own ejabberd, whose
mod_megaphone sets tight limits (stream_header_timeout 1 s, max_connections_per_ip 8). Each test
checks that the limit holds, that the node counts it (`stats`, `ejabberdctl megaphone_status`), and,
for the backpressure tests, that the node's RSS stays bounded while another pair keeps chatting.
The pure node behaviour (1 GB pushed, rates) is in erlang_src/test/megaphone_limits_tests.erl.
"""
from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import pytest

import conftest
import harness
from clients import Client, Session, run, until
from harness.processes import wait_for

STREAM_HEADER_TIMEOUT = 1    # s
MAX_CONNECTIONS_PER_IP = 8
RSS_BOUND_KB = 64 * 1024     # what the node may grow by over its RSS before a flood
# mod_megaphone's options in this environment (tests that change them restore these)
BASE_MODULE_OPTS = {"stream_header_timeout": STREAM_HEADER_TIMEOUT,
                    "max_connections_per_ip": MAX_CONNECTIONS_PER_IP}
HEADER = (f"<?xml version='1.0'?><stream:stream to='{harness.XMPP_HOST}' xmlns='jabber:client' "
          "xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>").encode()


class LimitsEnv(conftest.OneNodeEnv):
    def base_module_opts(self) -> dict:
        return dict(BASE_MODULE_OPTS)

    def reconfigure(self, **opts) -> None:
        merged = {**self.base_module_opts(), **opts}
        self.ej.megaphone_opts = {k: v for k, v in merged.items() if v is not None}
        self.ej._write_config()
        self.ej.ctl("reload_config")

    def closed(self, reason: str) -> int:
        return self.node.stats()["closed"][reason]

    def status_row(self) -> list[str]:
        """This node's `ejabberdctl megaphone_status` line, split at tabs."""
        for line in self.ej.ctl("megaphone_status").stdout.splitlines():
            cols = line.split("\t")
            if cols[0] == self.node.node:
                return cols
        raise AssertionError("no megaphone_status line for the node")

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.node.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def logs(self) -> str:
        return "\n".join([self.ej.logs_tail(80), self.node.logs_tail(60)])

    def ensure_healthy(self) -> None:
        if not self.node.alive() or not self.ej.is_running():
            pytest.fail(f"a process of the limits environment died\n{self.logs()}", pytrace=False)
        wait_for(self.node.listening, 30, "mod_megaphone to start the node", on_timeout=self.logs)
        # leftovers of an earlier test: header timeouts and flush timeouts end them
        wait_for(lambda: self.node.connections() == 0, 15,
                 "the node to hold no connection at the start of the test", on_timeout=self.logs)


@pytest.fixture(scope="module")
def limits_env():
    yield from conftest.one_node_env(LimitsEnv, "limits", "limits integration",
                                     megaphone_opts=dict(BASE_MODULE_OPTS))


@pytest.fixture
def lenv(limits_env: LimitsEnv) -> LimitsEnv:
    limits_env.ensure_healthy()
    return limits_env


def raw(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    return s


def read_until_closed(s: socket.socket, timeout: float) -> tuple[bytes, bool]:
    """Everything the server sends until it closes (True) or the timeout (False)."""
    s.settimeout(0.2)
    got = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            part = s.recv(65536)
        except socket.timeout:
            continue
        except ConnectionResetError:
            return got, True
        if not part:
            return got, True
        got += part
    return got, False


def read_until(s: socket.socket, marker: bytes, timeout: float) -> tuple[bytes, bool]:
    """What the server sends until marker appears, and whether it closed first."""
    s.settimeout(0.2)
    got = b""
    deadline = time.monotonic() + timeout
    while marker not in got and time.monotonic() < deadline:
        try:
            part = s.recv(65536)
        except socket.timeout:
            continue
        if not part:
            return got, True
        got += part
    return got, False


# ---------------------------------------------------------------------------------------------

def test_silent_client_gets_connection_timeout(lenv):
    before = lenv.closed("stream_header_timeout")
    silent, partial = raw(lenv.port), raw(lenv.port)
    partial.sendall(HEADER[:30])          # a header that never ends
    t0 = time.monotonic()
    for s in (silent, partial):
        got, closed = read_until_closed(s, 10)
        assert closed, got
        assert b"<connection-timeout xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in got, got
        assert got.endswith(b"</stream:stream>"), got
        s.close()
    elapsed = time.monotonic() - t0
    # the node's clock (1 s), well before ejabberd's negotiation_timeout (30 s)
    assert STREAM_HEADER_TIMEOUT * 0.9 <= elapsed < 5, elapsed
    assert lenv.closed("stream_header_timeout") == before + 2
    row = lenv.status_row()
    assert int(row[6]) >= 2 and "stream_header_timeout=" in row[7], row
    # ejabberd ended both sessions
    wait_for(lambda: lenv.node.connections() == 0, 10, "both connections to be gone")


def test_client_with_a_header_is_not_timed_out(lenv):
    async def body():
        u = lenv.new_user("hdr")
        async with Session() as s:
            c = await s.login(*u, lenv.port)
            await asyncio.sleep(STREAM_HEADER_TIMEOUT + 0.5)
            assert not c.lost.is_set() and not c.stream_errors
            assert lenv.node.connections() == 1
    run(body())


def test_max_connections_per_ip(lenv):
    before = lenv.closed("max_connections_per_ip")
    held = []
    try:
        for _ in range(MAX_CONNECTIONS_PER_IP):
            s = raw(lenv.port)
            s.sendall(HEADER)
            held.append(s)
        wait_for(lambda: lenv.node.connections() == MAX_CONNECTIONS_PER_IP, 10, "all admitted")
        extra = raw(lenv.port)
        got, closed = read_until_closed(extra, 5)
        assert closed and got == b"", got     # closed unannounced: ejabberd never saw it
        extra.close()
        assert lenv.closed("max_connections_per_ip") == before + 1
        assert "max_connections_per_ip=" in lenv.status_row()[7]
        # the ones held are served: ejabberd answered their headers
        got, closed = read_until(held[0], b"</stream:features>", 5)
        assert not closed and b"<stream:features" in got, got
    finally:
        for s in held:
            s.close()


def test_connection_rate_per_ip(lenv):
    lenv.reconfigure(connection_rate_per_ip={"count": 3, "period": 60})
    held = []
    try:
        wait_for(lambda: lenv.node.stats().get("listeners"), 10, "the node restarted")
        before = lenv.closed("connection_rate_per_ip")
        for _ in range(3):
            s = raw(lenv.port)
            s.sendall(HEADER)
            held.append(s)
        wait_for(lambda: lenv.node.connections() == 3, 10, "three admitted")
        extra = raw(lenv.port)
        got, closed = read_until_closed(extra, 5)
        assert closed and got == b"", got
        extra.close()
        assert lenv.closed("connection_rate_per_ip") == before + 1
        assert "connection_rate_per_ip=" in lenv.status_row()[7]
    finally:
        for s in held:
            s.close()
        lenv.reconfigure()


async def sample_rss(lenv: LimitsEnv, stop: asyncio.Event) -> int:
    peak = 0
    while not stop.is_set():
        peak = max(peak, lenv.rss_kb())
        await asyncio.sleep(0.05)
    return max(peak, lenv.rss_kb())


async def keep_chatting(a: Client, b: Client, stop: asyncio.Event) -> int:
    """a <-> b, one message at a time, each within 10 s; returns how many went."""
    n = 0
    while not stop.is_set():
        body = f"still here {n}"
        a.send_message(mto=b.boundjid.full, mbody=body, mtype="chat")
        msg = await b.next_message(10, frm=a.boundjid.bare)
        assert msg["body"] == body
        a, b = b, a
        n += 1
        await asyncio.sleep(0.02)
    return n


def test_client_that_never_reads_is_closed_with_a_stream_error(lenv):
    """bob (on ejabberd's own port) floods alice, who stopped reading; carol and dave chat."""
    async def body():
        alice_u, bob_u, carol_u, dave_u = (lenv.new_user(p) for p in ("alice", "bob", "carol", "dave"))
        before = lenv.closed("send_queue_full")
        async with Session() as s:
            alice = await s.login(*alice_u, lenv.port)
            bob = await s.login(*bob_u, lenv.ej.c2s_port)
            carol = await s.login(*carol_u, lenv.port)
            dave = await s.login(*dave_u, lenv.port)
            alice.transport.pause_reading()
            baseline = lenv.rss_kb()
            stop = asyncio.Event()
            sampler = asyncio.create_task(sample_rss(lenv, stop))
            chatter = asyncio.create_task(keep_chatting(carol, dave, stop))
            big = "x" * 16384
            sent = 0
            # kernel buffers (a few MB each way) + the 1 MiB send queue: a few hundred of these
            # The owner (alice's c2s) hears send_queue_full at once and ends the session; the node
            # counts the close when the queue drains or the flush timeout (5 s) ends it.
            alice_user = alice_u[0].split("@")[0]
            # bob's own c2s passes ~1 MB/s (c2s_shaper), so the time the flood takes, not the number
            # of messages, decides whether alice's queue overflows: flood until it does (at most 60 s).
            deadline = time.monotonic() + 60
            while lenv.ej.user_resources(alice_user) and time.monotonic() < deadline:
                if sent < 8000:
                    for _ in range(50):
                        bob.send_message(mto=alice.boundjid.full, mbody=big, mtype="chat")
                    sent += 50
                await asyncio.sleep(0.05)
            assert not lenv.ej.user_resources(alice_user), "alice's session outlived the flood"
            # alice reads at last: what was queued, then the stream error, then the close
            alice.transport.resume_reading()
            await alice.wait_lost(30)
            assert ("policy-violation", "Too much unread data") in alice.stream_errors, alice.stream_errors
            await until(lambda: lenv.closed("send_queue_full") == before + 1, 10, "send_queue_full counted")
            await until(lambda: lenv.node.connections() == 2, 10, "alice's connection gone")
            await asyncio.sleep(0.5)          # the chat goes on after the close
            stop.set()
            peak, rounds = await sampler, await chatter
            print(f"\nnever reads: {sent} x 16 KiB sent; RSS {baseline} KiB -> peak {peak} KiB; "
                  f"{rounds} chat messages meanwhile")
            assert peak - baseline < RSS_BOUND_KB
            assert rounds >= 5
            assert "send_queue_full=" in lenv.status_row()[7]
    run(body())


def test_client_that_floods_is_held_back(lenv):
    """carol writes 32 MB of whitespace as fast as the kernel takes it; ejabberd's shaper (1 MB/s)
    reads slowly, so the node reads slowly, so TCP pushes back on carol. alice and bob chat."""
    async def body():
        alice_u, bob_u, carol_u = (lenv.new_user(p) for p in ("alice", "bob", "carol"))
        async with Session() as s:
            alice = await s.login(*alice_u, lenv.port)
            bob = await s.login(*bob_u, lenv.port)
            carol = await s.login(*carol_u, lenv.port)
            baseline = lenv.rss_kb()
            stop = asyncio.Event()
            sampler = asyncio.create_task(sample_rss(lenv, stop))
            chatter = asyncio.create_task(keep_chatting(alice, bob, stop))
            total = 32 << 20
            for _ in range(32):
                carol.transport.write(b" " * (1 << 20))
            await asyncio.sleep(3)
            buffered = carol.transport.get_write_buffer_size()
            stop.set()
            peak, rounds = await sampler, await chatter
            print(f"\nfloods: {(total - buffered) >> 10} KiB of {total >> 10} taken in 3 s; "
                  f"RSS {baseline} KiB -> peak {peak} KiB; {rounds} chat messages meanwhile")
            # held back: most of it is still in carol's own buffer
            assert buffered > total // 2, buffered
            assert peak - baseline < RSS_BOUND_KB
            assert rounds >= 5
            assert lenv.node.connections() == 3
    run(body())
