"""Records real client-to-server XMPP byte streams for the differential XML-parser corpus.

An isolated ejabberd 23.01 (Tests/integration/harness: its own temp tree, node name, cookie and
ports; stopped by PID) gets a small recording proxy in front of each of its c2s ports. Real
clients (slixmpp, go-sendxmpp) log in through the proxy. The proxy relays both directions and keeps
the client-to-server bytes exactly as the client sent them (after TLS, if any), cut into one file
per XML stream: a new stream starts after the server's <proceed/> (STARTTLS) and after its
<success/> (SASL). The cut is made before the server's answer is passed on, so no byte the client
sends in reply can land in the old stream.

TLS: the proxy ends the client's TLS itself with a certificate of a throwaway test CA
(harness/pki.py) and opens its own TLS to ejabberd, in step with the client: for STARTTLS it
watches for ejabberd's <proceed/>, stops reading from the client, passes the <proceed/> on, and
then runs both handshakes; for direct TLS (XEP-0368) it accepts TLS and talks plain to ejabberd.

Output: Tests/corpus/xmpp-streams/recorded/<client>-<scenario>-<n>.xml, n = 1, 2, ... the streams
of one connection in order. Old files of that pattern are removed first.

Usage (root, as ejabberdctl needs): scripts/record-corpus [--out DIR] [--server-log DIR]
[--only SCENARIO ...]. --server-log also writes the server-to-client side, for reading.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "Tests" / "integration"))

import slixmpp  # noqa: E402

from clients import Client  # noqa: E402
from harness.ejabberd import Ejabberd  # noqa: E402
from harness.env import XMPP_HOST  # noqa: E402
from harness.pki import TestPKI  # noqa: E402
from harness.processes import kill_pid  # noqa: E402

DEFAULT_OUT = HERE / "xmpp-streams" / "recorded"

# Fixed test accounts (the passwords end up in the recorded PLAIN <auth>: test passwords only).
USERS = {"alice": "alice-test-pw", "bob": "bob-test-pw"}
ALICE = f"alice@{XMPP_HOST}"
BOB = f"bob@{XMPP_HOST}"

# Tags in the server's stream whose arrival starts a new client stream (see the module doc).
PROCEED = b"<proceed"
SUCCESS = b"<success"


# ---------------------------------------------------------------------------------------------
# The recording proxy

@dataclass
class Recording:
    """One proxied connection: the client's bytes, one bytearray per XML stream."""
    label: str
    streams: list[bytearray] = field(default_factory=lambda: [bytearray()])
    server_side: bytearray = field(default_factory=bytearray)
    events: list[str] = field(default_factory=list)  # restarts (and why), errors
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    def restart(self, why: str) -> None:
        self.events.append(why)
        self.streams.append(bytearray())


class RecordingProxy:
    """Listens on 127.0.0.1:port and relays each connection to ejabberd on upstream_port.

    client_tls: a server-side SSLContext for direct TLS from the first byte, else None.
    upstream_tls: the client-side SSLContext the proxy uses towards ejabberd after <proceed/>.
    """

    def __init__(self, upstream_port: int, *, client_tls: ssl.SSLContext | None,
                 starttls_server: ssl.SSLContext, upstream_tls: ssl.SSLContext):
        self.upstream_port = upstream_port
        self.client_tls = client_tls
        self.starttls_server = starttls_server
        self.upstream_tls = upstream_tls
        self.label = "unlabelled"
        self.recordings: list[Recording] = []
        self.server: asyncio.base_events.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.client_tls)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server:
            self.server.close()
            await self.server.wait_closed()

    async def _handle(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        rec = Recording(self.label)
        self.recordings.append(rec)
        try:
            ureader, uwriter = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            cwriter.close()
            rec.closed.set()
            return
        tls = self.client_tls is not None
        authed = False
        tail = b""  # the end of the server's previous chunk: a tag may be split across reads

        async def client_to_server() -> None:
            try:
                while True:
                    data = await creader.read(65536)
                    if not data:
                        break
                    rec.streams[-1] += data
                    uwriter.write(data)
                    await uwriter.drain()
            except (OSError, ssl.SSLError) as e:
                # e.g. a client that drops TCP under TLS without close_notify
                rec.events.append(f"client: {e!r}")
            # Pass the client's half-close on (on TLS only a close is possible); if ejabberd does
            # not hang up in turn, cut it off so that the recording ends.
            if uwriter.can_write_eof():
                uwriter.write_eof()
            else:
                uwriter.close()
            asyncio.get_running_loop().call_later(5, uwriter.transport.abort)

        c2s = asyncio.create_task(client_to_server())
        try:
            while True:
                data = await ureader.read(65536)
                if not data:
                    break
                rec.server_side += data
                window = tail + data
                tail = data[-16:]
                if not tls and PROCEED in window:
                    # Stop reading from the client before it can see <proceed/>: its ClientHello
                    # must stay in the kernel for the TLS layer, not land in the plain reader.
                    c2s.cancel()
                    await asyncio.gather(c2s, return_exceptions=True)
                    cwriter.transport.pause_reading()
                    rec.restart("starttls")
                    cwriter.write(data)
                    await cwriter.drain()
                    await uwriter.start_tls(self.upstream_tls, server_hostname=XMPP_HOST)
                    await cwriter.start_tls(self.starttls_server)
                    tls, tail = True, b""
                    c2s = asyncio.create_task(client_to_server())
                    continue
                if not authed and SUCCESS in window:
                    authed = True
                    rec.restart("sasl")
                cwriter.write(data)
                await cwriter.drain()
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError) as e:
            rec.events.append(f"error: {e!r}")
        finally:
            # the server is done: give the client a moment to finish sending, then close both
            try:
                await asyncio.wait_for(asyncio.shield(c2s), 3)
            except (asyncio.TimeoutError, Exception):  # noqa: BLE001 - closing anyway
                c2s.cancel()
            for w in (cwriter, uwriter):
                try:
                    w.close()
                except Exception:  # noqa: BLE001
                    pass
            rec.closed.set()

    async def take(self, count: int = 1, timeout: float = 20) -> list[Recording]:
        """The connections made since the last take (waits until count of them have closed)."""
        async def all_closed():
            while len(self.recordings) < count:
                await asyncio.sleep(0.05)
            for r in self.recordings:
                await r.closed.wait()
        await asyncio.wait_for(all_closed(), timeout)
        out, self.recordings = self.recordings, []
        return out


# ---------------------------------------------------------------------------------------------
# Scenarios

@dataclass
class Lab:
    ej: Ejabberd
    plain: RecordingProxy      # -> ejabberd's plain c2s port (no TLS offered)
    starttls: RecordingProxy   # -> ejabberd's STARTTLS-required port
    direct: RecordingProxy     # direct TLS from the client, plain to ejabberd
    ca: Path
    home: Path


BODIES = [
    "Fish & chips <b>not bold</b> \"double\" 'single' a > b",
    "line one\nline two\n\nline four\n",
    "crlf one\r\ncrlf two\r\n",
    "caf\u00e9 \u00e9t\u00e9 \u65e5\u672c\u8a9e \U0001F389 \U0001F44D\U0001F3FD",
    "tab\there, ]]> and &amp; literally, <![CDATA[x]]>",
]


def slix(jid: str, *, resource: str, **kw) -> Client:
    return Client(f"{jid}/{resource}", USERS[jid.split("@")[0]], **kw)


async def bob_online(lab: Lab) -> Client:
    """bob, straight to ejabberd (not recorded), so that messages have someone to reach."""
    bob = slix(BOB, resource="bob-direct")
    await bob.login(lab.ej.c2s_port)
    bob.send_presence()
    return bob


async def close(c: Client) -> None:
    """Ends the stream the way an application does: </stream:stream>, then wait for the server."""
    await c.disconnect(wait=5)


async def slix_login(lab: Lab, port: int, *, mech: str, tls: str | None) -> None:
    c = slix(ALICE, resource="corpus", mech=mech, tls=tls, ca_file=lab.ca)
    await c.login(port)
    await c.get_roster(timeout=10)
    c.send_presence()
    await asyncio.sleep(0.3)
    await close(c)


async def s_plain(lab: Lab) -> None:
    await slix_login(lab, lab.plain.port, mech="PLAIN", tls=None)


async def s_starttls_scram(lab: Lab) -> None:
    await slix_login(lab, lab.starttls.port, mech="SCRAM-SHA-1", tls="starttls")


async def s_messages(lab: Lab) -> None:
    bob = await bob_online(lab)
    try:
        c = slix(ALICE, resource="corpus", mech="PLAIN", tls="starttls", ca_file=lab.ca)
        await c.login(lab.starttls.port)
        await c.get_roster(timeout=10)
        c.send_presence(pstatus="Away & <busy> \u2014 \u2615 \"soon\"", pshow="away")
        for body in BODIES:
            c.send_message(mto=BOB, mbody=body, mtype="chat")
        c.send_message(mto=BOB, mbody="with subject", msubject="S\u00fcbject & more", mtype="normal")
        for _ in BODIES:
            await bob.next_message(timeout=10, frm=ALICE)
        bob.send_message(mto=f"{ALICE}/corpus", mbody="reply from bob", mtype="chat")
        await c.next_message(timeout=10, frm=BOB)
        await close(c)
    finally:
        await close(bob)


async def s_stream_management(lab: Lab) -> None:
    bob = await bob_online(lab)
    try:
        # window 1: slixmpp asks for an ack (<r/>) after every stanza it sends
        c = slix(ALICE, resource="corpus", mech="SCRAM-SHA-1", tls=None, sm=True)
        await c.login(lab.plain.port)
        await asyncio.wait_for(c.sm_enabled.wait(), 10)
        c.send_presence()
        c.send_message(mto=BOB, mbody="sm one", mtype="chat")
        c.send_message(mto=BOB, mbody="sm two & three", mtype="chat")
        # ejabberd follows each stanza to alice with <r/>; slixmpp answers <a h='n'/>
        for i in range(2):
            bob.send_message(mto=f"{ALICE}/corpus", mbody=f"to alice {i}", mtype="chat")
            await c.next_message(timeout=10, frm=BOB)
        c.plugin["xep_0198"].request_ack()
        await asyncio.sleep(0.5)
        await close(c)
    finally:
        await close(bob)


async def s_ping_disco_vcard(lab: Lab) -> None:
    c = slix(ALICE, resource="corpus", mech="SCRAM-SHA-1", tls="starttls", ca_file=lab.ca)
    for p in ("xep_0030", "xep_0054", "xep_0199"):
        c.register_plugin(p)
    await c.login(lab.starttls.port)
    await c.plugin["xep_0199"].ping(timeout=10)
    await c.plugin["xep_0030"].get_info(jid=XMPP_HOST, timeout=10)
    await c.plugin["xep_0030"].get_items(jid=XMPP_HOST, timeout=10)
    try:
        await c.plugin["xep_0054"].get_vcard(jid=ALICE, timeout=10)
    except slixmpp.exceptions.IqError:
        pass  # no mod_vcard in the test server: the request is what we are after
    await c.plugin["xep_0199"].ping(jid=ALICE, timeout=10)
    await close(c)


async def s_keepalive(lab: Lab) -> None:
    c = slix(ALICE, resource="corpus", mech="PLAIN", tls=None)
    c.whitespace_keepalive_interval = 1  # slixmpp's default is 300 s
    await c.login(lab.plain.port)
    await asyncio.sleep(3.5)
    await close(c)


SLIXMPP = {
    "plain-login": (s_plain, "plain"),
    "starttls-scram": (s_starttls_scram, "starttls"),
    "messages": (s_messages, "starttls"),
    "stream-management": (s_stream_management, "plain"),
    "ping-disco-vcard": (s_ping_disco_vcard, "starttls"),
    "keepalive": (s_keepalive, "plain"),
}


async def go_sendxmpp(lab: Lab, port: int, args: list[str], stdin: bytes, *,
                      stop_after: float = 20) -> None:
    """Runs go-sendxmpp as alice against the proxy on port, with stdin given and then closed. If
    it is still running after stop_after seconds it gets SIGINT (by PID), as Ctrl-C would, and
    SIGKILL if it lingers after that."""
    env = dict(os.environ, HOME=str(lab.home), SSL_CERT_FILE=str(lab.ca))
    proc = await asyncio.create_subprocess_exec(
        "go-sendxmpp", "-u", ALICE, "-p", USERS["alice"], "-j", f"127.0.0.1:{port}", *args,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    how = "exited"
    try:
        proc.stdin.write(stdin)
        await proc.stdin.drain()
        proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), stop_after)
        except asyncio.TimeoutError:
            how = "stopped with SIGINT"
            proc.send_signal(signal.SIGINT)
            await asyncio.wait_for(proc.wait(), 10)
    finally:
        if proc.returncode is None:
            how = "killed"
            kill_pid(proc.pid)
            await proc.wait()
    out, err = await proc.stdout.read(), await proc.stderr.read()
    print(f"    go-sendxmpp {' '.join(args)}: {how}, status {proc.returncode}"
          + (f"; stdout {out.decode(errors='replace').strip()!r}" if out.strip() else "")
          + (f"; stderr {err.decode(errors='replace').strip()!r}" if err.strip() else ""))


GO_MESSAGE = "Hello from go-sendxmpp & co <3 \"quoted\"\nsecond line: caf\u00e9 \u65e5\u672c \U0001F389\n"


async def g_message(lab: Lab) -> None:
    bob = await bob_online(lab)
    try:
        await go_sendxmpp(lab, lab.starttls.port, [BOB], GO_MESSAGE.encode())
    finally:
        await close(bob)


async def g_directtls_message(lab: Lab) -> None:
    await go_sendxmpp(lab, lab.direct.port, ["-t", BOB], b"over direct TLS & <plain> to ejabberd\n")


async def g_interactive(lab: Lab) -> None:
    lines = "first line\nsecond & <second>\nr\u00e9sum\u00e9 \u65e5\u672c \U0001F44B\n"
    # -i sends one message per line of stdin and ends at end of input
    await go_sendxmpp(lab, lab.starttls.port, ["-i", BOB], lines.encode(), stop_after=10)


async def g_listen(lab: Lab) -> None:
    bob = await bob_online(lab)
    try:
        # -l runs until interrupted
        task = asyncio.create_task(go_sendxmpp(lab, lab.starttls.port, ["-l"], b"", stop_after=4))
        await asyncio.sleep(2)
        bob.send_message(mto=ALICE, mbody="to the listener & <co>", mtype="chat")
        await task
    finally:
        await close(bob)


async def g_raw(lab: Lab) -> None:
    raw = (f"<iq type='get' id='raw-ping-1' to='{XMPP_HOST}'><ping xmlns='urn:xmpp:ping'/></iq>\n")
    await go_sendxmpp(lab, lab.starttls.port, ["--raw", BOB], raw.encode())


GO = {
    "message": (g_message, "starttls"),
    "directtls-message": (g_directtls_message, "direct"),
    "interactive": (g_interactive, "starttls"),
    "listen": (g_listen, "starttls"),
    "raw": (g_raw, "starttls"),
}


# ---------------------------------------------------------------------------------------------

def write_recording(out: Path, client: str, scenario: str, rec: Recording,
                    server_log: Path | None) -> list[Path]:
    written = []
    for n, stream in enumerate(rec.streams, 1):
        if not stream:
            continue  # nothing was sent after the last restart (e.g. the client hung up)
        p = out / f"{client}-{scenario}-{n}.xml"
        p.write_bytes(bytes(stream))
        written.append(p)
    if server_log is not None:
        (server_log / f"{client}-{scenario}.server.xml").write_bytes(bytes(rec.server_side))
    print(f"  {client}-{scenario}: {len(rec.streams)} stream(s), events {rec.events}, "
          f"files {[p.name for p in written]}")
    return written


async def record_all(lab: Lab, out: Path, server_log: Path | None, only: set[str] | None) -> list[Path]:
    written: list[Path] = []
    for client, table in (("slixmpp", SLIXMPP), ("go-sendxmpp", GO)):
        for scenario, (fn, via) in table.items():
            if only and scenario not in only and f"{client}-{scenario}" not in only:
                continue
            proxy: RecordingProxy = getattr(lab, via)
            proxy.label = f"{client}-{scenario}"
            print(f"==> {client} {scenario} (via {via} proxy on port {proxy.port})")
            await fn(lab)
            recs = await proxy.take(1)
            if len(recs) != 1:
                raise RuntimeError(f"{client}-{scenario}: expected one connection, got {len(recs)}")
            written += write_recording(out, client, scenario, recs[0], server_log)
    return written


def tls_contexts(ca: Path, bundle: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(str(bundle))
    upstream = ssl.create_default_context(cafile=str(ca))
    return server, upstream


async def amain(ej: Ejabberd, ca: Path, bundle: Path, home: Path, out: Path,
                server_log: Path | None, only: set[str] | None) -> list[Path]:
    server_ctx, upstream_ctx = tls_contexts(ca, bundle)
    plain = RecordingProxy(ej.c2s_port, client_tls=None, starttls_server=server_ctx, upstream_tls=upstream_ctx)
    starttls = RecordingProxy(ej.c2s_tls_port, client_tls=None, starttls_server=server_ctx,
                              upstream_tls=upstream_ctx)
    direct = RecordingProxy(ej.c2s_port, client_tls=server_ctx, starttls_server=server_ctx,
                            upstream_tls=upstream_ctx)
    for p in (plain, starttls, direct):
        await p.start()
    try:
        return await record_all(Lab(ej, plain, starttls, direct, ca, home), out, server_log, only)
    finally:
        for p in (plain, starttls, direct):
            await p.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the .xml files go")
    ap.add_argument("--server-log", type=Path, help="also write the server-to-client bytes here")
    ap.add_argument("--only", nargs="*", help="scenarios to record (e.g. messages go-sendxmpp-listen)")
    ap.add_argument("--keep", action="store_true", help="keep the temp tree (ejabberd logs)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("record_corpus.py must run as root (ejabberdctl runs only as root or ejabberd)", file=sys.stderr)
        return 1
    if shutil.which("go-sendxmpp") is None:
        print("go-sendxmpp is not installed (apt-get install go-sendxmpp)", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    if args.server_log:
        args.server_log.mkdir(parents=True, exist_ok=True)
    only = set(args.only) if args.only else None
    if only is None:
        for old in args.out.glob("*-*-*.xml"):
            old.unlink()

    base = Path(tempfile.mkdtemp(prefix="mp-corpus-"))
    ej = None
    try:
        print(f"==> test PKI and isolated ejabberd in {base}")
        pki = TestPKI(base / "pki")
        cert = pki.issue("server")
        home = base / "home"  # go-sendxmpp's $HOME: no config file of the machine's user is read
        home.mkdir()
        ej = Ejabberd(base, native_tls_certfile=cert.bundle)
        ej.start()
        for user, password in USERS.items():
            ej.register(user, password)
        written = asyncio.run(amain(ej, pki.ca, cert.bundle, home, args.out, args.server_log, only))
        print(f"==> {len(written)} files in {args.out}")
        return 0
    finally:
        if ej is not None:
            ej.cleanup()  # ejabberdctl stop, then the beam and the helper node by PID
        if args.keep:
            print(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
