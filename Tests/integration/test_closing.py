"""How a client connection ends, through ejabberd 23.01, with raw sockets.

The `env` environment (two Megaphone nodes on one ejabberd, plain tcp listeners, and ejabberd's own
c2s listener for comparison):
* a client that sends `</stream:stream>` and shuts down its side (as clients do on logout) reads
  ejabberd's own `</stream:stream>`: through Megaphone as on the native listener (half-close);
  Megaphone also when the FIN comes in the same read as the stream end, where the native listener
  closes without answering;
* a client still sending a stanza over max_stanza_size when ejabberd refuses it completes its sends
  and reads the whole `policy-violation` stream error, then EOF, never a reset (lingering close).
The node-only parts (RSS of half-closed clients, announce_timeout) are in
erlang_src/test/megaphone_closing_tests.erl.
"""
from __future__ import annotations

import socket
import time

import pytest

import harness
from harness.processes import wait_for

HEADER = (f"<?xml version='1.0'?><stream:stream to='{harness.XMPP_HOST}' xmlns='jabber:client' "
          "xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>").encode()
MAX_STANZA_SIZE = 262144     # harness/ejabberd.py's c2s option


def open_stream(port: int) -> socket.socket:
    """A raw client that sent a stream header and read the features."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(HEADER)
    got = b""
    deadline = time.monotonic() + 10
    while b"</stream:features>" not in got:
        assert time.monotonic() < deadline, f"no stream features: {got!r}"
        part = s.recv(65536)
        assert part, f"closed before the features: {got!r}"
        got += part
    return s


def read_to_end(s: socket.socket, timeout: float) -> tuple[bytes, str]:
    """Everything until EOF ('eof'), a reset ('reset') or the timeout ('timeout')."""
    s.settimeout(timeout)
    got = b""
    while True:
        try:
            part = s.recv(65536)
        except socket.timeout:
            return got, "timeout"
        except ConnectionResetError:
            return got, "reset"
        if not part:
            return got, "eof"
        got += part


# "apart": the FIN follows the stream end after a moment (the client's own pace, not a wait for
# anything); "together": at once, so the server reads both in one go. ejabberd's own listener answers
# only "apart" (measured: with both in one read gen_tcp reports the close with the data and the c2s
# ends without writing); Megaphone answers both.
@pytest.mark.parametrize("way,timing", [("native", "apart"), ("megaphone", "apart"), ("megaphone", "together")])
def test_half_closed_client_reads_the_servers_stream_end(env, way, timing):
    port = env.ej.c2s_port if way == "native" else env.port(env.a)
    s = open_stream(port)
    try:
        s.sendall(b"</stream:stream>")
        if timing == "apart":
            time.sleep(0.5)
        s.shutdown(socket.SHUT_WR)
        got, end = read_to_end(s, 10)
        assert end == "eof", f"{way}: {end} after {got!r}"
        assert got.endswith(b"</stream:stream>"), f"{way}: the server's stream end is missing: {got!r}"
    finally:
        s.close()
    if way == "megaphone":
        wait_for(lambda: env.a.connections() == 0, 10, "node A to close the connection")


def test_client_still_sending_reads_the_whole_stream_error(env):
    closed_before = env.a.stats()["closed"]
    s = open_stream(env.port(env.a))
    try:
        # Three times max_stanza_size, in one go: ejabberd refuses the stanza after the first
        # quarter, while most of it is still on its way. The node shuts its side and drains the
        # rest, so the client's send completes instead of failing with a reset.
        body = b"z" * (3 * MAX_STANZA_SIZE)
        try:
            s.sendall(b"<message to='nobody@" + harness.XMPP_HOST.encode() + b"'><body>" + body)
        except (ConnectionResetError, BrokenPipeError) as e:
            pytest.fail(f"the client's send failed before it could read the stream error: {e!r}")
        got, end = read_to_end(s, 10)
        assert end == "eof", f"{end} after {got[-300:]!r}"
        assert b"<policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in got, got[-300:]
        assert got.endswith(b"</stream:stream>"), got[-300:]
    finally:
        s.close()
    wait_for(lambda: env.a.connections() == 0, 10, "node A to close the connection")
    closed = env.a.stats()["closed"]
    assert closed["requested"] == closed_before["requested"] + 1, closed
