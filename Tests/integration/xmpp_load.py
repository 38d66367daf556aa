"""A light XMPP load over real sockets: many raw asyncio clients in one background thread.

Each LoadClient speaks plain XMPP over TCP itself (no library): stream header, SASL PLAIN, stream
restart, resource bind, then messages. That is all a session needs on ejabberd 23.01 (no TLS, no
presence, no roster), so a hundred of them cost little CPU. A client whose connection is lost (EOF,
RST, stream end, login failure or timeout) connects again after a short random back-off, for as
long as the load runs: what a real client does after a server fault.

Load runs the clients on an asyncio loop in its own thread, so the caller (the fault run) can block
on subprocesses and Erlang calls meanwhile:
  Load(specs).start()           specs: [(user, password, port)]
  load.online()                 clients logged in now
  load.round(timeout)           every online client sends a unique token to the next; -> missing
  load.stop()
Clients also chatter: each sends a message to a random other client every `chatter` seconds.
"""
from __future__ import annotations

import asyncio
import base64
import random
import secrets
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any

DOMAIN = "localhost"
RESOURCE = "load"
NS_STREAM = "http://etherx.jabber.org/streams"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_BIND = "urn:ietf:params:xml:ns:xmpp-bind"
NS_CLIENT = "jabber:client"
HEADER = (f"<?xml version='1.0'?><stream:stream to='{DOMAIN}' xmlns='{NS_CLIENT}' "
          f"xmlns:stream='{NS_STREAM}' version='1.0'>").encode()


class StreamClosed(Exception):
    pass


class LoginError(Exception):
    pass


def _escape(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("'", "&apos;")


class _Stream:
    """An XML stream parser that yields each complete top-level element (child of <stream:stream>)."""

    def __init__(self):
        self.parser = ET.XMLPullParser(events=("start", "end"))
        self.depth = 0
        self.root: ET.Element | None = None
        self.ready: list[ET.Element] = []

    def feed(self, data: bytes) -> None:
        self.parser.feed(data)
        for event, elem in self.parser.read_events():
            if event == "start":
                if self.depth == 0:
                    self.root = elem
                self.depth += 1
            else:
                self.depth -= 1
                if self.depth == 0:
                    raise StreamClosed("</stream:stream>")
                if self.depth == 1:
                    self.ready.append(elem)
                    if self.root is not None:
                        self.root.remove(elem)  # keep memory flat over a long session


class LoadClient:
    """One client: user@localhost/load on 127.0.0.1:port, logging in again whenever it is cut off."""

    def __init__(self, load: "Load", index: int, user: str, password: str, port: int):
        self.load, self.index = load, index
        self.user, self.password, self.port = user, password, port
        self.jid = f"{user}@{DOMAIN}/{RESOURCE}"
        self.online = False
        self.logins = 0
        self.losses = 0
        self.failed_logins = 0
        self.last_error = ""
        self.online_since = 0.0
        self.writer: asyncio.StreamWriter | None = None

    async def run(self) -> None:
        rng = random.Random(self.load.seed * 100003 + self.index)
        while not self.load.stopping:
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except (OSError, StreamClosed, LoginError, asyncio.TimeoutError, ET.ParseError) as e:
                self.last_error = f"{type(e).__name__}: {e}"
            finally:
                if self.online:
                    self.losses += 1
                self.online = False
                if self.writer is not None:
                    self.writer.transport.abort()
                    self.writer = None
            await asyncio.sleep(0.2 + rng.random() * 0.5)

    async def _session(self) -> None:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.port), 5)
        self.writer = writer
        stream = _Stream()

        async def next_element() -> ET.Element:
            while not stream.ready:
                data = await reader.read(65536)
                if not data:
                    raise StreamClosed("EOF")
                stream.feed(data)
            return stream.ready.pop(0)

        async def login() -> None:
            nonlocal stream
            writer.write(HEADER)
            features = await next_element()
            mechs = [m.text for m in features.iter(f"{{{NS_SASL}}}mechanism")]
            if "PLAIN" not in mechs:
                raise LoginError(f"no PLAIN in {mechs}")
            token = base64.b64encode(f"\0{self.user}\0{self.password}".encode()).decode()
            writer.write(f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{token}</auth>".encode())
            answer = await next_element()
            if answer.tag != f"{{{NS_SASL}}}success":
                raise LoginError(f"SASL: {answer.tag}")
            stream = _Stream()
            writer.write(HEADER)
            await next_element()  # features (bind)
            writer.write(f"<iq type='set' id='bind'><bind xmlns='{NS_BIND}'><resource>{RESOURCE}"
                         f"</resource></bind></iq>".encode())
            while True:
                el = await next_element()
                if el.tag == f"{{{NS_CLIENT}}}iq" and el.get("id") == "bind":
                    if el.get("type") != "result":
                        raise LoginError(f"bind: {ET.tostring(el)[:200]!r}")
                    return

        try:
            await asyncio.wait_for(login(), self.load.login_timeout)
        except (LoginError, asyncio.TimeoutError):
            self.failed_logins += 1
            raise
        self.online, self.logins, self.online_since = True, self.logins + 1, time.monotonic()
        while True:
            el = await next_element()
            if el.tag == f"{{{NS_CLIENT}}}message" and el.get("type") != "error":
                body = el.find(f"{{{NS_CLIENT}}}body")
                if body is not None and body.text:
                    self.load._received(body.text)

    def send(self, to_jid: str, body: str) -> bool:
        if not self.online or self.writer is None or self.writer.transport.is_closing():
            return False
        self.writer.write(f"<message to='{_escape(to_jid)}' type='chat'><body>{_escape(body)}"
                          f"</body></message>".encode())
        return True


@dataclass
class ClientSpec:
    user: str
    password: str
    port: int
    kind: str  # "megaphone" or "native"


class Load:
    """The clients of `specs` on an asyncio loop in a background thread."""

    def __init__(self, specs: list[ClientSpec], seed: int, chatter: float = 2.0, login_timeout: float = 20):
        self.specs = specs
        self.seed = seed
        self.chatter = chatter
        self.login_timeout = login_timeout
        self.stopping = False
        self.clients = [LoadClient(self, i, s.user, s.password, s.port) for i, s in enumerate(specs)]
        self.kinds = [s.kind for s in specs]
        self.chatter_sent = 0
        self.chatter_received = 0
        self._expected: dict[str, asyncio.Future] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._tasks: list[asyncio.Task] = []

    # ---- thread
    def start(self) -> None:
        ready = threading.Event()

        def main() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            self._tasks = [loop.create_task(c.run()) for c in self.clients]
            self._tasks.append(loop.create_task(self._chatter()))
            ready.set()
            try:
                loop.run_forever()
            finally:
                for t in self._tasks:
                    t.cancel()
                loop.run_until_complete(asyncio.gather(*self._tasks, return_exceptions=True))
                loop.close()

        self._thread = threading.Thread(target=main, name="xmpp-load", daemon=True)
        self._thread.start()
        ready.wait(10)

    def stop(self) -> None:
        self.stopping = True
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(15)

    def _call(self, coro, timeout: float) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    # ---- state (read from the caller's thread: plain attribute reads)
    def online(self, kind: str | None = None) -> int:
        return sum(1 for c, k in zip(self.clients, self.kinds) if c.online and (kind is None or k == kind))

    def count(self, kind: str | None = None) -> int:
        return sum(1 for k in self.kinds if kind is None or k == kind)

    def losses(self, kind: str | None = None) -> int:
        return sum(c.losses for c, k in zip(self.clients, self.kinds) if kind is None or k == kind)

    def logins(self) -> int:
        return sum(c.logins for c in self.clients)

    def offline_summary(self, limit: int = 5) -> str:
        off = [c for c in self.clients if not c.online]
        return f"{len(off)} offline; e.g. " + "; ".join(f"{c.jid}: {c.last_error or '-'}" for c in off[:limit])

    # ---- messages
    def _received(self, body: str) -> None:
        fut = self._expected.pop(body, None)
        if fut is not None and not fut.done():
            fut.set_result(True)
        else:
            self.chatter_received += 1

    async def _chatter(self) -> None:
        rng = random.Random(self.seed)
        n = len(self.clients)
        while True:
            await asyncio.sleep(self.chatter / max(1, n))
            a, b = rng.randrange(n), rng.randrange(n)
            if a != b and self.clients[a].send(self.clients[b].jid, f"chatter {secrets.token_hex(4)}"):
                self.chatter_sent += 1

    async def _round(self, timeout: float) -> list[str]:
        """Each online client sends one token to the next client in the ring (megaphone and native
        alternate in the ring only if the specs do); returns "a -> b" for each token not delivered."""
        loop = asyncio.get_running_loop()
        waits = []
        n = len(self.clients)
        for i, c in enumerate(self.clients):
            peer = self.clients[(i + 1) % n]
            token = f"round {secrets.token_hex(8)}"
            fut = loop.create_future()
            self._expected[token] = fut
            if c.send(peer.jid, token):
                waits.append((f"{c.jid} -> {peer.jid}", token, fut))
            else:
                self._expected.pop(token, None)
                waits.append((f"{c.jid} (offline) -> {peer.jid}", token, None))
        pending = [f for _, _, f in waits if f is not None]
        if pending:
            await asyncio.wait(pending, timeout=timeout)
        missing = []
        for what, token, fut in waits:
            if fut is None or not fut.done():
                missing.append(what)
            self._expected.pop(token, None)
        return missing

    def round(self, timeout: float = 15) -> list[str]:
        return self._call(self._round(timeout), timeout + 5)
