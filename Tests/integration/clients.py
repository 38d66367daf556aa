"""slixmpp clients for the integration tests, plus asyncio helpers.

By default the client speaks plain XMPP over TCP (Megaphone's tcp listener and the test's native
c2s listener offer no TLS); with tls="starttls" or tls="direct" it speaks TLS only. It may be
forced to one SASL mechanism. The slixmpp knobs this takes (slixmpp 1.17):
  enable_direct_tls / enable_starttls / enable_plaintext
      with connect(host, port) slixmpp tries exactly the enabled ways on that port: plain TCP
      (default here), STARTTLS only (tls="starttls"), or TLS from the first byte (tls="direct");
  feature_mechanisms: unencrypted_plain / unencrypted_scram
      True for plain TCP; False with tls=..., so PLAIN and SCRAM are sent only over a stream
      that slixmpp itself knows is encrypted;
  ca_certs = Path(ca_file)
      the test CA is trusted (slixmpp's context checks the chain and the host name `localhost`);
  sasl_mech="PLAIN" | "SCRAM-SHA-1"
      forces the mechanism (ClientXMPP's use_mech).
Every <stream:features> the client received is kept in `features_seen` (one dict per stream),
and after TLS the negotiated version, cipher, ALPN and the server's certificate are recorded.
"""
from __future__ import annotations

import asyncio
import secrets
import socket
import ssl
import struct
import time
from pathlib import Path
from typing import Any, Callable

import slixmpp
from slixmpp.plugins.xep_0198.stanza import Enable as SMEnable
from slixmpp.exceptions import IqError, IqTimeout  # noqa: F401 - re-exported for tests


class LoginFailed(AssertionError):
    pass


class Client(slixmpp.ClientXMPP):
    """One XMPP client, with everything it saw recorded for assertions."""

    def __init__(self, jid: str, password: str, *, mech: str | None = None, sm: bool = False,
                 sm_max: int | None = None, tls: str | None = None, ca_file: Path | str | None = None,
                 alpn: list[str] | None = None):
        super().__init__(jid, password, sasl_mech=mech)
        self.label = jid
        if tls not in (None, "starttls", "direct"):
            raise ValueError(f"tls must be None, 'starttls' or 'direct', not {tls!r}")
        self.tls_mode = tls
        self.enable_direct_tls = tls == "direct"
        self.enable_starttls = tls == "starttls"
        self.enable_plaintext = tls is None
        self.use_ipv6 = False
        if ca_file is not None:
            self.ca_certs = Path(ca_file)
        if alpn:
            self.ssl_context.set_alpn_protocols(alpn)
        fm = self.plugin["feature_mechanisms"]
        fm.unencrypted_plain = tls is None
        fm.unencrypted_scram = tls is None
        if sm:
            # ack every stanza: the resumption test then knows what the server holds
            self.register_plugin("xep_0198", {"window": 1})
            if sm_max is not None:
                # XEP-0198's `max`: the client's preferred resumption time, which ejabberd grants up
                # to its max_resume_timeout. slixmpp never sets it; an outgoing filter does.
                def ask_max(stanza):
                    if isinstance(stanza, SMEnable):
                        stanza["max"] = str(sm_max)
                    return stanza
                self.add_filter("out", ask_max)
        self.messages: asyncio.Queue = asyncio.Queue()
        self.available: set[str] = set()        # full JIDs seen available
        self.stream_errors: list[tuple[str, str]] = []
        self.connection_failures: list[Any] = [] # e.g. a TLS handshake that failed on connect
        self.disconnects: list[Any] = []         # reasons, one per lost connection
        self.binds = 0
        self.eof = False                         # the server side closed with FIN (not RST)
        self.resumed = 0
        self.sm_enabled = asyncio.Event()
        self.lost = asyncio.Event()
        self.sockname: tuple[str, int] | None = None
        self.mech_used: str | None = None
        self.features_seen: list[dict] = []      # one summary per <stream:features> received
        self.tls_version: str | None = None      # after TLS: "TLSv1.3", ...
        self.tls_cipher: str | None = None
        self.tls_alpn: str | None = None
        self.peer_cert: dict | None = None       # ssl.SSLObject.getpeercert() of the server
        self._ready: asyncio.Future | None = None
        self.add_event_handler("connected", self._on_connected)
        self.add_event_handler("session_start", self._on_session_start)
        self.add_event_handler("session_resumed", self._on_session_resumed)
        self.add_event_handler("session_bind", self._on_bind)
        self.add_event_handler("auth_success", self._on_auth_success)
        self.add_event_handler("failed_all_auth", lambda _e: self._fail("SASL authentication failed"))
        self.add_event_handler("failed_auth", lambda _e: self._fail("SASL authentication failed"))
        self.add_event_handler("stream_error", self._on_stream_error)
        self.add_event_handler("disconnected", self._on_disconnected)
        self.add_event_handler("message", self._on_message)
        self.add_event_handler("presence_available", self._on_available)
        self.add_event_handler("sm_enabled", lambda _e: self.sm_enabled.set())
        self.add_event_handler("eof_received", self._on_eof)
        self.add_event_handler("connection_failed", self.connection_failures.append)

    # ---- events
    def _on_connected(self, _e) -> None:
        self.lost.clear()
        self.eof = False

    def connection_made(self, transport, *args, **kw) -> None:
        super().connection_made(transport, *args, **kw)
        # the client's own address: what ejabberd should record as the session's ip
        self.sockname = transport.get_extra_info("sockname")[:2]
        # called again by slixmpp after STARTTLS, with the TLS transport
        tls = transport.get_extra_info("ssl_object")
        if tls is not None:
            self.tls_version = tls.version()
            self.tls_cipher = (tls.cipher() or (None,))[0]
            self.tls_alpn = tls.selected_alpn_protocol()
            self.peer_cert = tls.getpeercert()

    async def _handle_stream_features(self, features):
        encrypted = isinstance(self.socket, (ssl.SSLObject, ssl.SSLSocket))
        self.features_seen.append(summarize_features(features, encrypted=encrypted))
        return await super()._handle_stream_features(features)

    def mechanisms_offered(self) -> list[str]:
        """The SASL mechanisms of the last <stream:features> that offered any."""
        for f in reversed(self.features_seen):
            if f["mechanisms"]:
                return f["mechanisms"]
        return []

    @property
    def peer_serial(self) -> int | None:
        return int(self.peer_cert["serialNumber"], 16) if self.peer_cert else None

    def _on_eof(self, _e) -> None:
        self.eof = True

    def _on_auth_success(self, _e) -> None:
        mech = self.plugin["feature_mechanisms"].mech
        self.mech_used = mech.name if mech else None

    def _on_session_start(self, _e) -> None:
        if self._ready and not self._ready.done():
            self._ready.set_result("session_start")

    def _on_session_resumed(self, _e) -> None:
        self.resumed += 1
        if self._ready and not self._ready.done():
            self._ready.set_result("session_resumed")

    def _on_bind(self, _jid) -> None:
        self.binds += 1

    def _on_stream_error(self, err) -> None:
        self.stream_errors.append((err["condition"], err["text"]))

    def _on_disconnected(self, reason) -> None:
        self.disconnects.append(reason)
        self.lost.set()
        self._fail(f"disconnected before the session started ({reason!r})")

    def _on_message(self, msg) -> None:
        if msg["type"] in ("chat", "normal"):
            self.messages.put_nowait(msg)

    def _on_available(self, pres) -> None:
        self.available.add(str(pres["from"]))

    def _fail(self, why: str) -> None:
        if self._ready and not self._ready.done():
            self._ready.set_exception(LoginFailed(f"{self.label}: {why}; stream errors: {self.stream_errors}"))

    # ---- actions
    async def login(self, port: int, host: str = "127.0.0.1", timeout: float = 15) -> str:
        """Connects and waits for the session (or its resumption). Returns which one happened."""
        self._ready = asyncio.get_running_loop().create_future()
        self.connect(host, port)
        try:
            return await asyncio.wait_for(asyncio.shield(self._ready), timeout)
        except asyncio.TimeoutError:
            self.cancel_connection_attempt()
            raise LoginFailed(f"{self.label}: no session within {timeout}s on {host}:{port}; "
                              f"disconnects: {self.disconnects}, stream errors: {self.stream_errors}, "
                              f"connection failures: {self.connection_failures}, "
                              f"features seen: {[f['xml'] for f in self.features_seen]}")

    async def next_message(self, timeout: float = 10, frm: str | None = None):
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{self.label}: no message{' from ' + frm if frm else ''} within {timeout}s")
            try:
                msg = await asyncio.wait_for(self.messages.get(), left)
            except asyncio.TimeoutError:
                continue
            if frm is None or msg["from"].bare == frm or str(msg["from"]) == frm:
                return msg

    async def wait_lost(self, timeout: float = 10) -> None:
        try:
            await asyncio.wait_for(self.lost.wait(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"{self.label}: the connection was not closed within {timeout}s")

    def drop_connection(self) -> None:
        """Loses the TCP connection abruptly: RST (SO_LINGER 0), no </stream:stream>."""
        sock = self.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.abort()

    async def close(self) -> None:
        """Best-effort teardown for fixtures: no waiting on a dead server."""
        if self.transport:
            self.abort()
        self.cancel_connection_attempt()
        await asyncio.sleep(0)


NS_TLS = "urn:ietf:params:xml:ns:xmpp-tls"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"


def summarize_features(features, encrypted: bool) -> dict:
    """A <stream:features> stanza -> {"encrypted": bool (TLS was up when it arrived),
    "starttls": bool, "starttls_required": bool, "mechanisms": [names], "xml": str}."""
    xml = features.xml
    st = xml.find(f"{{{NS_TLS}}}starttls")
    mechs = xml.find(f"{{{NS_SASL}}}mechanisms")
    return {
        "encrypted": encrypted,
        "starttls": st is not None,
        "starttls_required": st is not None and st.find(f"{{{NS_TLS}}}required") is not None,
        "mechanisms": [m.text for m in mechs.findall(f"{{{NS_SASL}}}mechanism")] if mechs is not None else [],
        "xml": str(features),
    }


async def until(cond: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Polls a quick, blocking cond() without starving the event loop; returns its truthy value."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            v = cond()
            if v:
                return v
            last_exc = None
        except Exception as e:  # noqa: BLE001
            last_exc = e
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}"
                                 + (f" (last error: {last_exc!r})" if last_exc else ""))
        await asyncio.sleep(interval)


class Session:
    """The clients of one test: each is aborted at the end, whatever happened."""

    def __init__(self):
        self.clients: list[Client] = []

    def client(self, jid: str, password: str, **kw) -> Client:
        c = Client(jid, password, **kw)
        self.clients.append(c)
        return c

    async def login(self, jid: str, password: str, port: int, *, resource: str | None = None,
                    presence: bool = True, roster: bool = True, **kw) -> Client:
        """A logged-in client (roster fetched and initial presence sent, unless told not to)."""
        c = self.client(f"{jid}/{resource or 'r' + secrets.token_hex(3)}", password, **kw)
        await c.login(port)
        if roster:
            await c.get_roster(timeout=10)
        if presence:
            c.send_presence()
        return c

    async def __aenter__(self) -> "Session":
        return self

    async def __aexit__(self, *exc) -> None:
        for c in self.clients:
            try:
                await c.close()
            except Exception:  # noqa: BLE001
                pass
        await asyncio.sleep(0.05)


def run(coro, timeout: float = 120):
    """Runs one test body on a fresh event loop, with an overall deadline."""
    async def main():
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(main())
