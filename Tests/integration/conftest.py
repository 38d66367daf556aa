"""pytest fixtures: isolated ejabberd 23.01 instances with mod_megaphone and Megaphone nodes.

`env` (test_ejabberd.py): the session starts two Swift nodes (A and B) and an ejabberd whose
mod_megaphone attaches both, each with its own tcp listen port. Tests may kill or restart any of
them; before every test the `env` fixture puts everything back (nodes running, mod_megaphone
attached, no connection left over from an earlier test).

`tls_env` (test_tls.py, one per module): a test PKI (root CA -> intermediate -> server certs for
localhost), one Swift node with a tcp, a starttls and a tls listener, and its own ejabberd whose
mod_megaphone passes the certfile and a short handshake timeout; ejabberd also has a native
STARTTLS listener with the same certificate, for comparison.

Everything is stopped by PID at the end, also on failure or Ctrl-C; the temp trees are removed
unless a test failed (then their paths are printed).

Environment: MEGAPHONE_BIN (Swift binary, default .build/debug/megaphone), MEGAPHONE_EBIN
(beams, default _build/default/lib/megaphone/ebin), MEGAPHONE_IT_KEEP=1 keeps the temp tree.
"""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness.ejabberd import Ejabberd  # noqa: E402
from harness.env import MEGAPHONE_BIN, MEGAPHONE_EBIN, XMPP_HOST  # noqa: E402
from harness.megaphone_node import MegaphoneNode  # noqa: E402
from harness.net import free_port  # noqa: E402
from harness.pki import TestPKI, make_test_pki  # noqa: E402
from harness.processes import unique, wait_for  # noqa: E402

_failed = False


def _sigterm(_signo, _frame):
    # pytest turns KeyboardInterrupt into an orderly stop: finalizers and atexit still run.
    raise KeyboardInterrupt("SIGTERM")


if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
    signal.signal(signal.SIGTERM, _sigterm)


class _Users:
    """Users and sessions of an environment with an `ej` (Ejabberd) and a `users` list."""

    def new_user(self, prefix: str = "u") -> tuple[str, str]:
        """Registers a fresh user; returns (bare JID, password)."""
        user = f"{prefix}{secrets.token_hex(4)}"
        password = secrets.token_urlsafe(12)
        self.ej.register(user, password)
        self.users.append(user)
        return f"{user}@{XMPP_HOST}", password

    def session_pid_of(self, client):
        return self.ej.session_pid(client.boundjid.user, client.boundjid.resource)


@dataclass
class Env(_Users):
    base: Path
    ej: Ejabberd
    a: MegaphoneNode
    b: MegaphoneNode
    ports: dict[str, int]
    users: list[str] = field(default_factory=list)

    @property
    def nodes(self) -> list[MegaphoneNode]:
        return [self.a, self.b]

    def port(self, node: MegaphoneNode) -> int:
        return self.ports[node.node]

    def megaphone_c2s(self, node: MegaphoneNode) -> list:
        """Live c2s processes whose socket is a Megaphone connection on `node`."""
        return [s for s in self.ej.c2s_sockets()
                if s[1] == "megaphone_socket" and isinstance(s[2], tuple) and len(s[2]) >= 2
                and s[2][1] == node.node]

    def logs(self) -> str:
        parts = [self.ej.logs_tail(80)]
        for n in self.nodes:
            parts.append(n.logs_tail(40))
        return "\n".join(parts)

    def ensure_healthy(self) -> None:
        """Both Swift nodes running, ejabberd running, both attached, no connection left over.
        A process that died on its own (not stopped by a test) is a failure, reported with its log,
        and is started again so that the following tests still run."""
        crashed = []
        for n in self.nodes:
            if n.died_unexpectedly():
                crashed.append(f"{n.node} exited on its own with status {n.proc.returncode}\n{n.logs_tail()}")
        if self.ej.died_unexpectedly():
            crashed.append(f"ejabberd {self.ej.node} died on its own\n{self.ej.logs_tail()}")
        for n in self.nodes:
            if not n.alive():
                n.start()
        if not self.ej.is_running():
            self.ej._after_exit()
            self.ej.start()
        if crashed:
            pytest.fail("\n".join(crashed), pytrace=False)
        for n in self.nodes:
            wait_for(n.listening, 30, f"mod_megaphone to attach {n.node}",
                     on_timeout=self.logs)
        for n in self.nodes:
            wait_for(lambda: n.connections() == 0, 10,
                     f"{n.node} to hold no connection at the start of the test (leak from an earlier test?)")


def _check_built() -> None:
    for p in (MEGAPHONE_BIN, MEGAPHONE_EBIN / "mod_megaphone.beam",
              MEGAPHONE_EBIN / "megaphone_socket.beam", MEGAPHONE_EBIN / "megaphone.beam"):
        if not Path(p).exists():
            pytest.fail(f"missing {p}: build first (swift build; rebar3 compile) or run scripts/test-integration",
                        pytrace=False)


def _tear_down(base: Path, processes, what: str) -> None:
    """Stops each started process (ejabberd first) by PID; removes the temp tree unless a test failed
    or MEGAPHONE_IT_KEEP is set."""
    for obj in processes:
        if obj is not None:
            try:
                obj.cleanup()
            except Exception as e:  # noqa: BLE001
                print(f"cleanup of {obj!r} failed: {e!r}")
    if _failed or os.environ.get("MEGAPHONE_IT_KEEP"):
        print(f"\n{what} temp tree kept: {base}")
    else:
        shutil.rmtree(base, ignore_errors=True)


def _bring_up(ej: Ejabberd, node: MegaphoneNode, env) -> None:
    """Starts a one-node environment whose mod_megaphone options come from env.base_module_opts()."""
    ej.megaphone_opts = env.base_module_opts()
    ej._write_config()  # as root into ejabberd's file: the owner stays ejabberd
    node.start()
    ej.start()
    env.ensure_healthy()


@pytest.fixture(scope="session")
def _session_env():
    global _failed
    _check_built()
    base = Path(tempfile.mkdtemp(prefix="megaphone-it-"))
    os.chmod(base, 0o755)
    ej = a = b = None
    try:
        cookie = secrets.token_hex(16)
        names = [unique("mpit_a_"), unique("mpit_b_")]
        ports = {f"{n}@localhost": free_port() for n in names}
        ej = Ejabberd(base, ports, cookie=cookie, connect_retry=1)
        # a runs two reactors on threads of their own (asked for: the default is one reactor on
        # machines of up to 7 cores), b its one reactor on the distribution thread: both event
        # loops are exercised.
        a = MegaphoneNode(base / "nodes", cookie, ej.helper, name=names[0], threads=2)
        b = MegaphoneNode(base / "nodes", cookie, ej.helper, name=names[1], threads=1)
        a.start()
        b.start()
        ej.start()
        env = Env(base, ej, a, b, ports)
        env.ensure_healthy()
        yield env
    finally:
        _tear_down(base, (ej, b, a), "integration")


@pytest.fixture
def env(_session_env: Env) -> Env:
    _session_env.ensure_healthy()
    return _session_env


# --------------------------------------------------------------------------------------------
# One ejabberd and one Megaphone node (one tcp listener), with module options of the test's own


@dataclass
class OneNodeEnv(_Users):
    base: Path
    ej: Ejabberd
    node: MegaphoneNode
    port: int
    users: list[str] = field(default_factory=list)

    def ensure_healthy(self) -> None:
        if self.node.died_unexpectedly() or self.ej.died_unexpectedly():
            pytest.fail(f"a process died:\n{self.node.logs_tail()}\n{self.ej.logs_tail()}", pytrace=False)
        wait_for(self.node.listening, 30, "mod_megaphone to attach the node")
        wait_for(lambda: self.node.connections() == 0, 10, "no connection left from an earlier test")


def one_node_env(cls, prefix: str, what: str, **ejabberd_opts):
    """Yields a `cls` (a OneNodeEnv) over a fresh ejabberd and Megaphone node; stops both by PID
    and removes the tree afterwards (kept if a test failed). For module-scoped fixtures."""
    _check_built()
    base = Path(tempfile.mkdtemp(prefix=f"megaphone-it-{prefix}-"))
    os.chmod(base, 0o755)
    ej = node = None
    try:
        cookie = secrets.token_hex(16)
        name = unique(f"mpit_{prefix}_")
        port = free_port()
        ej = Ejabberd(base, {f"{name}@localhost": port}, cookie=cookie, connect_retry=1, **ejabberd_opts)
        node = MegaphoneNode(base / "nodes", cookie, ej.helper, name=name)
        node.start()
        ej.start()
        env = cls(base, ej, node, port)
        env.ensure_healthy()
        yield env
    finally:
        _tear_down(base, (ej, node), what)


# --------------------------------------------------------------------------------------------
# TLS: one ejabberd and one Megaphone node with tcp, starttls and tls listeners

HANDSHAKE_TIMEOUT = 2        # s: mod_megaphone's handshake_timeout in the TLS tests
MAX_HANDSHAKES_PER_IP = 3    # mod_megaphone's max_handshakes_per_ip in the TLS tests


@dataclass
class TlsEnv(_Users):
    base: Path
    ej: Ejabberd
    node: MegaphoneNode
    pki: TestPKI
    handshake_timeout: float = HANDSHAKE_TIMEOUT
    max_handshakes_per_ip: int = MAX_HANDSHAKES_PER_IP
    users: list[str] = field(default_factory=list)

    @property
    def nodes(self) -> list[MegaphoneNode]:
        return [self.node]

    @property
    def ca(self) -> Path:
        return self.pki.ca

    def port(self, transport: str) -> int:
        """The node's listen port for transport tcp, starttls or tls."""
        return self.ej.port_of(self.node.node, transport)

    def base_module_opts(self) -> dict:
        """The mod_megaphone options the module starts with (tests that change them restore these)."""
        return {"certfile": str(self.pki.server.bundle),
                "handshake_timeout": self.handshake_timeout,
                "max_handshakes_per_ip": self.max_handshakes_per_ip}

    def reconfigure(self, **opts) -> None:
        """Rewrites mod_megaphone's module-level options as base_module_opts() updated with opts
        (a value of None drops the option), then `ejabberdctl reload_config`."""
        merged = {**self.base_module_opts(), **opts}
        self.ej.megaphone_opts = {k: v for k, v in merged.items() if v is not None}
        self.ej._write_config()
        self.ej.ctl("reload_config")

    def megaphone_c2s(self) -> list:
        """Live c2s processes whose socket is a connection of the node: (Pid, SockMod, Socket)."""
        return [s for s in self.ej.c2s_sockets()
                if s[1] == "megaphone_socket" and isinstance(s[2], tuple) and len(s[2]) >= 2
                and s[2][1] == self.node.node]

    def logs(self) -> str:
        return "\n".join([self.ej.logs_tail(80), self.node.logs_tail(60)])

    def ensure_healthy(self) -> None:
        crashed = []
        if self.node.died_unexpectedly():
            crashed.append(f"{self.node.node} exited on its own with status {self.node.proc.returncode}\n"
                           f"{self.node.logs_tail()}")
        if self.ej.died_unexpectedly():
            crashed.append(f"ejabberd {self.ej.node} died on its own\n{self.ej.logs_tail()}")
        if not self.node.alive():
            self.node.start()
        if not self.ej.is_running():
            self.ej._after_exit()
            self.ej.start()
        if crashed:
            pytest.fail("\n".join(crashed), pytrace=False)
        wait_for(lambda: len(self.node.stats(timeout=2).get("listeners", [])) == 3, 30,
                 f"mod_megaphone to open the 3 listeners of {self.node.node}", on_timeout=self.logs)
        # stalled handshakes of an earlier test end within handshake_timeout
        wait_for(lambda: self.node.connections() == 0, 10 + self.handshake_timeout,
                 f"{self.node.node} to hold no connection at the start of the test (leak from an earlier test?)",
                 on_timeout=self.logs)


@pytest.fixture(scope="module")
def _tls_module_env():
    global _failed
    _check_built()
    base = Path(tempfile.mkdtemp(prefix="megaphone-it-tls-"))
    os.chmod(base, 0o755)
    ej = node = None
    try:
        # root-owned, mode 600 keys: only the Swift node (root) reads the bundle; ejabberd gets its
        # own copy for its native listener
        pki = make_test_pki(base / "pki")
        cookie = secrets.token_hex(16)
        name = unique("mpit_tls_")
        node_name = f"{name}@localhost"
        listeners = [("tcp", free_port()), ("starttls", free_port()), ("tls", free_port())]
        ej = Ejabberd(base, {node_name: listeners}, cookie=cookie, connect_retry=1,
                      native_tls_certfile=pki.server.bundle)
        node = MegaphoneNode(base / "nodes", cookie, ej.helper, name=name)
        env = TlsEnv(base, ej, node, pki)
        _bring_up(ej, node, env)
        yield env
    finally:
        _tear_down(base, (ej, node), "TLS integration")


@pytest.fixture
def tls_env(_tls_module_env: TlsEnv) -> TlsEnv:
    _tls_module_env.ensure_healthy()
    return _tls_module_env


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    global _failed
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        _failed = True
        funcargs = item.funcargs if hasattr(item, "funcargs") else {}
        env = funcargs.get("env") or funcargs.get("tls_env") or funcargs.get("cluster")
        if env is not None:
            try:
                rep.sections.append(("megaphone / ejabberd logs", env.logs()))
            except Exception as e:  # noqa: BLE001
                rep.sections.append(("logs", f"could not collect logs: {e!r}"))
