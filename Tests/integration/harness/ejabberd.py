"""An isolated ejabberd 23.01 (the Debian package) in its own $RUN tree: ejabberd.yml and
ejabberdctl.cfg, start/stop/kill/restart by PID (never `ejabberdctl stopped`), ctl and rpc."""
from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Iterable

from .env import EJABBERD_USER, EJABBERDCTL, MEGAPHONE_EBIN, XMPP_HOST
from .erl_helper import ErlError, ErlHelper
from .errors import Abort, HarnessError
from .files import chown_tree, tail, write_private_file
from .net import can_connect, epmd_names, free_port, free_port_range
from .processes import comm, kill_pid, name_flag, pid_alive, pids_with_arg_pair, raise_now, unique, wait_for
from .registry import register
from .terms import binary

# Allocator flags for ejabberd's beam (issue 13; BENCHMARKS.md, "Issue 13: idle sessions"): process
# heaps (eheap_alloc, +MH) and binaries (+MB) in age-ordered first-fit carriers of at most 512 KB.
# After a login burst the sessions' grown heaps are freed (hibernation, or any shrink) in between
# the live ones; with OTP's defaults (best fit, carriers up to 5 MB) nearly no carrier empties and
# beam RSS stays ~3x erlang:memory (10,000 hibernated sessions: 19.5 KB against 6.4 KB each). Age
# order keeps allocations in the oldest carriers, so younger ones empty and go back to the OS
# (6.3 KB against 6.2 KB). scripts/run and the benches start ejabberd with them; README's "With an
# existing ejabberd" gives operators the same ERL_OPTIONS line. bench/lib.sh holds a copy for the
# shell benches.
ALLOC_FLAGS = "+MHas ageffcbf +MBas ageffcbf +MHlmbcs 512 +MBlmbcs 512"


def _ejabberd_ids() -> tuple[int, int]:
    pw = pwd.getpwnam(EJABBERD_USER)
    return pw.pw_uid, pw.pw_gid


def _yaml_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _yaml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_yaml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_yaml_value(x)}" for k, x in v.items()) + "}"
    return _yaml_str(str(v))


def _listeners(spec: Any) -> list[tuple[str, str, int]]:
    """A megaphone_nodes value -> [(transport, ip, port)]: a bare port is one tcp listener on
    127.0.0.1; otherwise a list of (transport, port) or (transport, ip, port)."""
    if isinstance(spec, int):
        return [("tcp", "127.0.0.1", spec)]
    out = []
    for item in spec:
        if len(item) == 2:
            out.append((item[0], "127.0.0.1", int(item[1])))
        elif len(item) == 3:
            out.append((item[0], item[1], int(item[2])))
        else:
            raise ValueError(f"bad listener {item!r}: (transport, port) or (transport, ip, port)")
    return out


class Ejabberd:
    """An isolated ejabberd 23.01 (Debian package) in its own $RUN tree.

    megaphone_nodes -> a mod_megaphone section (omitted when empty or None), one entry per node:
        {"mp_x@localhost": 5322}                              one tcp listener on 127.0.0.1
        {"mp_x@localhost": [("tcp", 5322), ("starttls", 5323), ("tls", "127.0.0.1", 5324)]}
                                                              listeners as (transport, [ip,] port)
    megaphone_opts: further module-level options of mod_megaphone, written as given, e.g.
        {"certfile": "/path/server.pem", "handshake_timeout": 2, "max_handshakes_per_ip": 3,
         "ciphers": "ECDHE-RSA-AES256-GCM-SHA384", "tls_min_version": "tlsv1.2"}
    native_tls_certfile: a PEM (chain + key); when given, ejabberd gets it as `certfiles` (a copy
        owned by user ejabberd) and a second native c2s listener on `c2s_tls_port` with
        `starttls_required: true` (a reference for what ejabberd itself offers over TLS).
    c2s_opts: further options of the native c2s listeners (both, when there are two).
    Both megaphone_nodes and megaphone_opts may be changed and written again (_write_config) before
    `ctl("reload_config")`. Every name, port, cookie and directory is unique to this instance.
    """

    def __init__(self, base_dir: Path, megaphone_nodes: dict[str, Any] | None = None, *,
                 cookie: str | None = None, connect_retry: int = 1, resume_timeout: int = 60,
                 loglevel: str = "info", extra_beams: Iterable[Path] | None = None,
                 megaphone_opts: dict[str, Any] | None = None,
                 native_tls_certfile: Path | None = None,
                 c2s_opts: dict[str, Any] | None = None,
                 ctl_env: dict[str, Any] | None = None, erl_options: str = "",
                 net_ticktime: int | None = None, host: str = "localhost"):
        self.name = unique("mpit_ej_")
        # a short net_ticktime makes lost nodes noticed within seconds (fault tests); the helper
        # node gets the same one, or one of the two would drop the other when idle
        self.net_ticktime = net_ticktime
        # A dotted host (`10.200.0.1`, `ejabberd.example`) makes a long name: ejabberdctl then runs
        # the node and its ctl nodes with -name, and the helper node must use long names too.
        self.host = host
        self.node = f"{self.name}@{host}"
        # ejabberdctl runs ejabberd as user ejabberd: every parent must be traversable.
        os.chmod(base_dir, 0o755)
        # Not "ejabberd-*": with $RUN/ebin on the code path, code:lib_dir(ejabberd) would take
        # $RUN for ejabberd's own directory (a dir named App-Vsn) and look for priv/ there.
        self.run_dir = Path(tempfile.mkdtemp(prefix="ejrun_", dir=base_dir))
        self.etc, self.spool, self.logs, self.ebin = (self.run_dir / d for d in ("etc", "spool", "logs", "ebin"))
        self.scratch = self.run_dir / "scratch"
        for d in (self.etc, self.spool, self.logs, self.ebin, self.scratch):
            d.mkdir(parents=True, exist_ok=True)
        self.cookie = cookie or secrets.token_hex(16)
        self.c2s_port = free_port()
        self.fw_window = free_port_range(10)
        self.megaphone_nodes = dict(megaphone_nodes or {})
        self.megaphone_opts = dict(megaphone_opts or {})
        self.native_tls_certfile: Path | None = None
        self.c2s_tls_port: int | None = None
        if native_tls_certfile is not None:
            self.native_tls_certfile = self.etc / "native-tls.pem"
            write_private_file(self.native_tls_certfile, Path(native_tls_certfile).read_bytes())
            self.c2s_tls_port = free_port()
        # Further options of the native c2s listener (e.g. backlog), ejabberdctl.cfg settings
        # (e.g. ERL_PROCESSES) and emulator flags: used by bench/xmpp.
        self.c2s_opts = dict(c2s_opts or {})
        self.ctl_env = dict(ctl_env or {})
        self.erl_options = erl_options
        self.connect_retry = connect_retry
        self.resume_timeout = resume_timeout
        self.loglevel = loglevel
        self.pid_path = self.run_dir / "ejabberd.pid"
        self.pid: int | None = None
        self.expect_running = False  # False after our own stop()/kill()
        beams = list(extra_beams) if extra_beams is not None else (
            sorted(MEGAPHONE_EBIN.glob("*.beam")) if self.megaphone_nodes else [])
        for b in beams:
            shutil.copy2(b, self.ebin / Path(b).name)
        self._write_config()
        uid, gid = _ejabberd_ids()
        chown_tree(self.run_dir, uid, gid)
        self.helper = ErlHelper(self.cookie, base_dir / "helper", code_paths=[self.ebin, MEGAPHONE_EBIN],
                                erl_args=self._ticktime_args(), host=host)
        register(self)

    def _ticktime_args(self) -> list[str]:
        return ["-kernel", "net_ticktime", str(self.net_ticktime)] if self.net_ticktime else []

    # ---- files
    def listeners_of(self, node: str) -> list[tuple[str, str, int]]:
        """The listeners configured for node, as [(transport, ip, port)]."""
        return _listeners(self.megaphone_nodes[node])

    def port_of(self, node: str, transport: str = "tcp") -> int:
        """The port of node's first listener with that transport."""
        for t, _ip, port in self.listeners_of(node):
            if t == transport:
                return port
        raise KeyError(f"{node} has no {transport} listener: {self.megaphone_nodes[node]!r}")

    def _write_config(self) -> None:
        mp = ""
        if self.megaphone_nodes:
            lines = ["  mod_megaphone:", "    nodes:"]
            for node, spec in self.megaphone_nodes.items():
                lines += [f"      {_yaml_str(node)}:",
                          "        listen:"]
                for transport, ip, port in _listeners(spec):
                    lines += [f"          - transport: {transport}",
                              f"            ip: {_yaml_str(ip)}",
                              f"            port: {port}"]
            lines += ["    access: c2s",
                      "    shaper: c2s_shaper",
                      "    max_stanza_size: 262144",
                      f"    connect_retry: {self.connect_retry}"]
            opts = dict(self.megaphone_opts)
            # The suite runs in both modes: MEGAPHONE_PARSER picks who parses the clients' XML
            # where a test does not set it itself.
            if os.environ.get("MEGAPHONE_PARSER") and "parser" not in opts:
                opts["parser"] = os.environ["MEGAPHONE_PARSER"]
            lines += [f"    {k}: {_yaml_value(v)}" for k, v in opts.items()]
            mp = "\n".join(lines) + "\n"
        native_tls = certfiles = ""
        c2s_extra = "".join(f"    {k}: {_yaml_value(v)}\n" for k, v in self.c2s_opts.items())
        if self.native_tls_certfile is not None:
            certfiles = f"certfiles:\n  - {_yaml_str(str(self.native_tls_certfile))}\n"
            native_tls = f"""\
  -
    port: {self.c2s_tls_port}
    ip: "127.0.0.1"
    module: ejabberd_c2s
    max_stanza_size: 262144
    shaper: c2s_shaper
    access: c2s
    starttls_required: true
{c2s_extra}"""
        (self.etc / "ejabberd.yml").write_text(f"""\
# Generated by Tests/integration/harness/ejabberd.py
hosts:
  - {XMPP_HOST}
loglevel: {self.loglevel}
log_rotate_count: 0
listen:
  -
    port: {self.c2s_port}
    ip: "127.0.0.1"
    module: ejabberd_c2s
    max_stanza_size: 262144
    shaper: c2s_shaper
    access: c2s
{c2s_extra}{native_tls}{certfiles}auth_method: internal
auth_password_format: plain
{f"net_ticktime: {self.net_ticktime}" + chr(10) if self.net_ticktime else ""}acl:
  local:
    user_regexp: ""
  loopback:
    ip:
      - 127.0.0.0/8
      - ::1/128
access_rules:
  local:
    allow: local
  c2s:
    deny: blocked
    allow: all
api_permissions:
  "console commands":
    from:
      - ejabberd_ctl
    who: all
    what: "*"
shaper:
  normal:
    rate: 3000
    burst_size: 20000
  fast: 1000000
shaper_rules:
  c2s_shaper:
    fast: all
modules:
  mod_admin_extra: {{}}
  mod_disco: {{}}
  mod_ping: {{}}
  mod_roster: {{}}
  mod_stream_mgmt:
    resume_timeout: {self.resume_timeout}
{mp}""")
        lo, hi = self.fw_window
        (self.etc / "ejabberdctl.cfg").write_text(f"""\
# Generated by Tests/integration/harness/ejabberd.py
ERLANG_NODE={self.node}
ERL_OPTIONS="-setcookie {self.cookie} -pa {self.ebin} {self.erl_options}{''.join(' ' + a for a in self._ticktime_args())}"
FIREWALL_WINDOW="{lo}-{hi}"
EJABBERD_PID_PATH={self.pid_path}
EJABBERD_BYPASS_WARNINGS=true
""" + "".join(f"{k}={v}\n" for k, v in self.ctl_env.items()))
        shutil.copy2("/etc/ejabberd/inetrc", self.etc / "inetrc")

    @property
    def log_path(self) -> Path:
        return self.logs / "ejabberd.log"

    @property
    def error_log_path(self) -> Path:
        return self.logs / "error.log"

    def logs_tail(self, lines: int = 60) -> str:
        out = [f"--- {self.log_path} (last {lines} lines)", tail(self.log_path, lines)]
        if self.error_log_path.exists() and self.error_log_path.stat().st_size:
            out += [f"--- {self.error_log_path}", tail(self.error_log_path, lines)]
        for dump in self.logs.glob("erl_crash*.dump"):
            out.append(f"--- crash dump: {dump}")
        return "\n".join(out)

    # ---- ejabberdctl
    def ctl(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        cmd = [EJABBERDCTL, "--config-dir", str(self.etc), "--ctl-config", str(self.etc / "ejabberdctl.cfg"),
               "--spool", str(self.spool), "--logs", str(self.logs), *args]
        r = subprocess.run(cmd, cwd=self.scratch, capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise HarnessError(f"ejabberdctl {' '.join(args)} -> exit {r.returncode}\n"
                               f"stdout: {r.stdout}\nstderr: {r.stderr}")
        return r

    # ---- Erlang
    def rpc(self, expr: str, timeout: float = 10) -> Any:
        """Evaluates Erlang expressions inside the ejabberd node; returns the value."""
        return self.helper.rpc(self.node, expr, timeout)

    def is_started(self) -> bool:
        try:
            return self.rpc("{started, _} = init:get_status(), "
                            "lists:keymember(ejabberd, 1, application:which_applications()).",
                            timeout=3) is True
        except (ErlError, TimeoutError):
            return False

    def register(self, user: str, password: str) -> None:
        r = self.rpc(f"ejabberd_auth:try_register({binary(user)}, {binary(XMPP_HOST)}, {binary(password)}).")
        if r != "ok":
            raise HarnessError(f"register {user}: {r!r}")

    def register_numbered(self, n: int, *, prefix: str = "xb", password_prefix: str = "pw",
                          timeout: float = 600) -> list:
        """Registers users PREFIX1..PREFIXn (password PASSWORD_PREFIXi; the load clients' and the
        benches' accounts) in one rpc: a loop that ejabberd evaluates (erl_eval; no code of ours is
        loaded into it). An existing user counts as registered. Returns [{I, Error}] of the rest."""
        return self.rpc(f"""
            Reg = fun Reg(I, Bad) when I > {int(n)} -> Bad;
                      Reg(I, Bad) ->
                          S = integer_to_binary(I),
                          case ejabberd_auth:try_register(<<{binary(prefix)}/binary, S/binary>>, {binary(XMPP_HOST)},
                                                          <<{binary(password_prefix)}/binary, S/binary>>) of
                              ok -> Reg(I + 1, Bad);
                              {{error, exists}} -> Reg(I + 1, Bad);
                              E -> Reg(I + 1, [{{I, E}} | Bad])
                          end
                  end,
            Reg(1, []).""", timeout=timeout)

    # Local sessions (ejabberd_sm), live c2s processes, mod_megaphone's session and monitor tables
    # (#state{} fields 5 and 6) and its per-node session count (what megaphone_status reports).
    SESSION_COUNTS_EXPR = """
            C2S = length([P || P <- erlang:processes(),
                               case catch proc_lib:initial_call(P) of
                                   {xmpp_stream_in, init, _} -> true;
                                   {megaphone_c2s, init, _} -> true;
                                   _ -> false
                               end]),
            S = sys:get_state(mod_megaphone, 5000),
            #{sm => length(ejabberd_sm:dirty_get_my_sessions_list()), c2s => C2S,
              mp_sessions => map_size(element(5, S)), mp_monitors => map_size(element(6, S)),
              mp_status_sessions => lists:sum([N || #{sessions := N} <- mod_megaphone:status()])}."""

    def session_counts(self) -> dict:
        """What must agree on this node: sessions, c2s processes and mod_megaphone's tables
        (SESSION_COUNTS_EXPR)."""
        return self.rpc(self.SESSION_COUNTS_EXPR, timeout=20)

    def user_resources(self, user: str) -> list[bytes]:
        return self.rpc(f"ejabberd_sm:get_user_resources({binary(user)}, {binary(XMPP_HOST)}).")

    def session_info(self, user: str, resource: str) -> Any:
        return self.rpc(f"ejabberd_sm:get_user_info({binary(user)}, {binary(XMPP_HOST)}, {binary(resource)}).")

    def session_pid(self, user: str, resource: str) -> Any:
        return self.rpc(f"ejabberd_sm:get_session_pid({binary(user)}, {binary(XMPP_HOST)}, {binary(resource)}).")

    def c2s_sockets(self) -> list[tuple[Any, Any, Any]]:
        """[(C2SPid, SockMod, SocketTerm)] for every live c2s process in the node."""
        return self.rpc("""
            lists:filtermap(
              fun(P) ->
                case catch proc_lib:initial_call(P) of
                  {M, init, _} when M == xmpp_stream_in; M == megaphone_c2s ->
                    case catch sys:get_state(P, 1000) of
                      #{socket := S} when is_tuple(S), tuple_size(S) >= 3 ->
                        {true, {P, element(2, S), element(3, S)}};
                      _ -> {true, {P, unknown, unknown}}
                    end;
                  _ -> false
                end
              end, erlang:processes()).""", timeout=20)

    # ---- lifecycle
    def _is_our_beam(self, pid: int | None) -> bool:
        """pid is alive and is this node's beam (guards against a stale pid file / reused PID)."""
        return (pid is not None and pid_alive(pid) and comm(pid).startswith("beam")
                and pid in pids_with_arg_pair(name_flag(self.host), self.node, only=[pid]))

    def beam_pid(self) -> int | None:
        try:
            pid = int(self.pid_path.read_text().strip())
            if self._is_our_beam(pid):
                return pid
        except (OSError, ValueError):
            pass
        # Not written yet: find the beam by its exact node name (ctl clients use other names;
        # su, sh and erlexec, which carry the same arguments for a moment, are not beam.smp).
        pids = [p for p in pids_with_arg_pair(name_flag(self.host), self.node) if self._is_our_beam(p)]
        return pids[0] if pids else None

    def start(self, timeout: float = 60) -> None:
        if self.name in epmd_names():
            raise HarnessError(f"{self.node} is still registered in epmd; refusing to start "
                               "(ejabberdctl would call epmd -kill or fail)")
        try:
            self.pid_path.unlink()
        except FileNotFoundError:
            pass
        self.ctl("start")
        self.expect_running = True
        try:
            wait_for(self.beam_pid, 20, f"the beam of {self.node}")
            self.pid = self.beam_pid()
            wait_for(lambda: self.is_started() or (not pid_alive(self.pid) and
                                                   raise_now(Abort("ejabberd exited during start"))),
                     timeout, f"ejabberd {self.node} to start", interval=0.2)
            wait_for(lambda: can_connect(self.c2s_port), 10, "the native c2s listener")
        except Exception as e:
            self.kill()
            raise HarnessError(f"ejabberd did not start: {e}\n{self.logs_tail()}") from e

    def stop(self, timeout: float = 30) -> None:
        """ejabberdctl stop, then wait for the beam (by PID) to exit; SIGKILL after the deadline."""
        pid = self.beam_pid()
        if pid is None:
            self.pid = None
            return
        try:
            self.ctl("stop", check=False, timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        try:
            wait_for(lambda: not pid_alive(pid), timeout, f"ejabberd beam {pid} to exit", interval=0.1)
        except TimeoutError:
            kill_pid(pid)
            wait_for(lambda: not pid_alive(pid), 10, f"ejabberd beam {pid} to die")
        self._after_exit()

    def kill(self) -> None:
        """SIGKILL the beam, by PID."""
        pid = self.beam_pid()
        if pid is not None:
            kill_pid(pid)
            wait_for(lambda: not pid_alive(pid), 10, f"ejabberd beam {pid} to die")
        self._after_exit()

    def _after_exit(self) -> None:
        self.pid = None
        self.expect_running = False
        # epmd drops the name when the beam's connection to it closes.
        wait_for(lambda: self.name not in epmd_names(), 10, f"{self.node} to leave epmd")

    def restart(self) -> None:
        self.stop()
        self.start()

    def is_running(self) -> bool:
        return self.beam_pid() is not None

    def died_unexpectedly(self) -> bool:
        return self.expect_running and not self.is_running()

    def cleanup(self) -> None:
        try:
            if self.is_running():
                self.stop(timeout=15)
        finally:
            self.helper.stop()

    def __enter__(self) -> "Ejabberd":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.cleanup()

    def __repr__(self) -> str:
        return f"Ejabberd({self.node}, c2s={self.c2s_port}, run={self.run_dir})"
