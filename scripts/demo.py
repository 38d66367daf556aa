#!/usr/bin/env python3
"""The main job (scripts/run calls this): an isolated ejabberd 23.01 from the Debian package, with
mod_megaphone loaded, and one Megaphone node attached to it, all on loopback.

Everything is unique to this run and lives in a temp dir: ejabberd's config dir, spool and logs, its
node name, the cookie, the ports. The system ejabberd service is never used, and nothing is stopped
by name: on exit (Ctrl-C, or the end of the scripted check without a terminal) each process is
stopped by its PID and the temp dir is removed (MEGAPHONE_RUN_KEEP=1 keeps it).

Usage: scripts/demo.py [--port N] [--name NAME]     (normally through scripts/run)
"""
from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import signal
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "Tests" / "integration"))

from harness.ejabberd import ALLOC_FLAGS, Ejabberd  # noqa: E402
from harness.env import MEGAPHONE_EBIN  # noqa: E402
from harness.errors import HarnessError  # noqa: E402
from harness.megaphone_node import MegaphoneNode  # noqa: E402
from harness.net import free_port, port_free  # noqa: E402
from harness.pki import make_test_pki  # noqa: E402
from harness.processes import wait_for  # noqa: E402

USERS = {"alice": "alice-secret", "bob": "bob-secret"}


def port_or_free(wanted: int) -> int:
    return wanted if port_free(wanted) else free_port()


async def check(starttls_port: int, native_port: int, ca_file: Path) -> None:
    """Alice through Megaphone over STARTTLS, Bob on the native port: log in, exchange a message."""
    from clients import Session  # slixmpp, from the venv scripts/run prepared

    async with Session() as s:
        alice = await s.login("alice@localhost", USERS["alice"], starttls_port, tls="starttls", ca_file=ca_file)
        bob = await s.login("bob@localhost", USERS["bob"], native_port)
        alice.send_message(mto="bob@localhost", mbody="hello Bob, from behind Megaphone", mtype="chat")
        bob.send_message(mto="alice@localhost", mbody="hello Alice, from port 5222's twin", mtype="chat")
        to_bob = await bob.next_message(10)
        to_alice = await alice.next_message(10)
        print(f"  bob   got: {to_bob['body']!r}")
        print(f"  alice got: {to_alice['body']!r}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=5322,
                        help="Megaphone's STARTTLS port; the direct TLS port is the next one, the plain one the "
                             "one after (any free port where taken)")
    parser.add_argument("--name", default="megaphone", help="the Megaphone node's name")
    parser.add_argument("--pa", action="store_true",
                        help="load the beams from MEGAPHONE_EBIN through -pa in ejabberd's ERL_OPTIONS, as "
                             "README.Debian does (scripts/test-package), instead of copying them to its run dir")
    args = parser.parse_args()

    base = Path(tempfile.mkdtemp(prefix="megaphone-run-"))
    os.chmod(base, 0o755)
    cookie = secrets.token_hex(16)
    node = f"{args.name}@localhost"
    starttls_port, tls_port, plain_port = (port_or_free(args.port + i) for i in range(3))
    # A throwaway CA and a certificate for localhost; a real deployment uses ejabberd's certfile.
    pki = make_test_pki(base / "pki")
    # The allocator flags README's "With an existing ejabberd" recommends (harness.ejabberd.ALLOC_FLAGS).
    beams = {"extra_beams": [], "erl_options": f"-pa {MEGAPHONE_EBIN} {ALLOC_FLAGS}"} if args.pa else \
        {"erl_options": ALLOC_FLAGS}
    ej = Ejabberd(base, {node: [("starttls", starttls_port), ("tls", tls_port), ("tcp", plain_port)]},
                  cookie=cookie, connect_retry=1, megaphone_opts={"certfile": str(pki.server.bundle)}, **beams)
    mp = MegaphoneNode(base / "nodes", cookie, ej.helper, name=args.name)
    try:
        print(f"==> starting Megaphone node {node} and ejabberd {ej.node} (run dir {base})")
        mp.start()
        ej.start()
        wait_for(mp.listening, 30, f"mod_megaphone to attach {node}", on_timeout=ej.logs_tail)
        for user, password in USERS.items():
            ej.register(user, password)
        print(f"""
ejabberd 23.01 runs with mod_megaphone, isolated under {base}:
  through Megaphone, STARTTLS : 127.0.0.1:{starttls_port}   (the port-5222 way)
  through Megaphone, TLS      : 127.0.0.1:{tls_port}   (XEP-0368 direct TLS)
  through Megaphone, plain    : 127.0.0.1:{plain_port}
  ejabberd's own c2s port     : 127.0.0.1:{ej.c2s_port}
  XMPP domain                 : localhost
  users                       : alice / {USERS['alice']},  bob / {USERS['bob']}
  CA of the test certificate  : {pki.ca}   (trust it in the client, or accept the certificate)
Point any XMPP client at 127.0.0.1 port {starttls_port}, e.g.
  profanity: /connect alice@localhost server 127.0.0.1 port {starttls_port}
Status : ejabberdctl --config-dir {ej.etc} --ctl-config {ej.etc}/ejabberdctl.cfg megaphone_status
Logs   : {ej.log_path}   and   {mp.log_path}
Shell  : erl -sname sh@localhost -hidden -setcookie {cookie} -pa {MEGAPHONE_EBIN}
         then megaphone:stats('{node}'). or rpc:call('{ej.node}', mod_megaphone, status, []).
""")
        print("==> scripted check: alice through Megaphone over STARTTLS, bob on the native port")
        asyncio.run(asyncio.wait_for(check(starttls_port, ej.c2s_port, pki.ca), 60))
        print(f"  megaphone_status: {ej.ctl('megaphone_status').stdout.strip()}")
        if args.pa:
            beam = MEGAPHONE_EBIN / "mod_megaphone.beam"
            if ej.rpc(f'code:which(mod_megaphone) =:= "{beam}".') is not True:
                raise HarnessError(f"ejabberd did not load mod_megaphone from {beam}")
            print(f"  ejabberd loaded mod_megaphone from {beam} (ERL_OPTIONS -pa)")
        if sys.stdin.isatty():
            print("\nRunning. Ctrl-C stops ejabberd and the Megaphone node.")
            try:
                while True:
                    signal.pause()
            except KeyboardInterrupt:
                print()
        return 0
    finally:
        for obj in (ej, mp):
            try:
                obj.cleanup()
            except Exception as e:  # noqa: BLE001
                print(f"cleanup of {obj!r} failed: {e!r}", file=sys.stderr)
        if os.environ.get("MEGAPHONE_RUN_KEEP"):
            print(f"run dir kept: {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


def _stop(_signo, _frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _stop)
    sys.exit(main())
