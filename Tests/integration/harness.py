"""Integration-test harness: an isolated ejabberd 23.01 and real Megaphone (Swift) nodes.

Everything here starts processes by PID and stops them by PID: never by name, never
`ejabberdctl stopped`, never `epmd -kill` (see ../shared/research/ejabberd-23.01.md, section 7).
Everything started is registered and torn down at interpreter exit too, so a failing or
interrupted test leaves nothing running.

Main pieces:
  free_port(), free_port_range(n)
  ErlHelper      one long-lived hidden Erlang node; evaluates expressions locally or in a node
  Ejabberd       $RUN tree, ejabberd.yml / ejabberdctl.cfg, start/stop/kill/restart, ctl, rpc
  MegaphoneNode  the Swift binary: start/stop/kill/restart, sighup, fd_count, stats (through the helper)
  make_test_pki  root CA -> intermediate CA -> server certs for localhost, with the openssl CLI
  s_client       runs `openssl s_client` (direct TLS or -starttls xmpp) and picks its output apart
"""
from __future__ import annotations

import atexit
import base64
import errno
import os
import pwd
import secrets
import select
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
import weakref
import zlib
from pathlib import Path
from typing import Any, Callable, Iterable

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
MEGAPHONE_BIN = Path(os.environ.get("MEGAPHONE_BIN", ROOT / ".build" / "debug" / "megaphone"))
MEGAPHONE_EBIN = Path(os.environ.get("MEGAPHONE_EBIN", ROOT / "_build" / "default" / "lib" / "megaphone" / "ebin"))
EJABBERDCTL = "/usr/sbin/ejabberdctl"
EJABBERD_USER = "ejabberd"
XMPP_HOST = "localhost"
EPMD_PORT = int(os.environ.get("ERL_EPMD_PORT", "4369"))


class HarnessError(RuntimeError):
    pass


class Abort(HarnessError):
    """Raised inside a wait_for condition to stop waiting at once."""


# --------------------------------------------------------------------------------------------
# small utilities

def wait_for(cond: Callable[[], Any], timeout: float, what: str = "condition",
             interval: float = 0.05, on_timeout: Callable[[], str] | None = None) -> Any:
    """Polls cond() until it returns something truthy; returns that. Raises on the deadline."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            v = cond()
            if v:
                return v
            last_exc = None
        except Abort:
            raise
        except Exception as e:  # noqa: BLE001 - reported below
            last_exc = e
        if time.monotonic() >= deadline:
            extra = f" (last error: {last_exc!r})" if last_exc else ""
            if on_timeout:
                extra += "\n" + on_timeout()
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}{extra}")
        time.sleep(interval)


def vm_rss(pid: int) -> int:
    """Resident set size of a process, in bytes (VmRSS in /proc/PID/status)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise HarnessError(f"no VmRSS for pid {pid}")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (bound to port 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def hang_up_storm(port: int, count: int, burst: int = 50, host: str = "127.0.0.1") -> None:
    """Opens `count` TCP connections to host:port, `burst` at a time, each closed at once: half with
    FIN, half with RST (SO_LINGER 0), as port scanners and load-balancer health checks do."""
    done = 0
    while done < count:
        socks = []
        try:
            for _ in range(min(burst, count - done)):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(s)
                s.connect((host, port))
        finally:
            for i, s in enumerate(socks):
                if i % 2:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.close()
        done += len(socks)


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("0.0.0.0", port))
            return True
        except OSError:
            return False


def free_port_range(n: int = 10, low: int = 20000, high: int = 32000) -> tuple[int, int]:
    """n consecutive free ports below the kernel's ephemeral range (for FIREWALL_WINDOW)."""
    for _ in range(200):
        base = low + secrets.randbelow((high - low) // n) * n
        if all(_port_free(p) for p in range(base, base + n)):
            return base, base + n - 1
    raise HarnessError("no free port range found")


def unique(prefix: str) -> str:
    return f"{prefix}{os.getpid()}_{secrets.token_hex(3)}"


def tail(path: Path | str, lines: int = 60) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            data = f.read().decode("utf-8", "replace")
        return "\n".join(data.splitlines()[-lines:])
    except OSError as e:
        return f"<{path}: {e}>"


def pid_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (works for non-children too)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return False
    state = stat[stat.rindex(")") + 2:].split()[0]
    return state not in ("Z", "X")


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def kill_pid(pid: int, sig: int = signal.SIGKILL) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def epmd_names() -> dict[str, int]:
    """Names registered in the local epmd (NAMES_REQ), name -> port. {} if epmd is not up."""
    try:
        with socket.create_connection(("127.0.0.1", EPMD_PORT), timeout=2) as s:
            s.sendall(struct.pack(">HB", 1, 110))
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return {}
    names = {}
    for line in data[4:].decode("latin-1").splitlines():
        # "name foo at port 12345"
        parts = line.split()
        if len(parts) == 5 and parts[0] == "name":
            names[parts[1]] = int(parts[4])
    return names


def pids_with_arg_pair(flag: str, value: str, only: Iterable[int] | None = None) -> list[int]:
    """PIDs (among `only`, else all) whose argv contains `flag value` exactly."""
    out = []
    for d in (map(str, only) if only is not None else os.listdir("/proc")):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        for i in range(len(argv) - 1):
            if argv[i] == flag.encode() and argv[i + 1] == value.encode():
                out.append(int(d))
                break
    return out


# --------------------------------------------------------------------------------------------
# Erlang terms: quoting (Python -> Erlang source) and the external term format (Erlang -> Python)

def atom(s: str) -> str:
    """Erlang source for the atom s."""
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def binary(s: str | bytes) -> str:
    """Erlang source for the binary s (UTF-8)."""
    if isinstance(s, bytes):
        return "<<" + ",".join(str(b) for b in s) + ">>"
    return '<<"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"/utf8>>'


class Atom(str):
    """An Erlang atom (true and false decode to Python booleans)."""

    def __repr__(self) -> str:
        return f"Atom({str.__repr__(self)})"


class Opaque:
    """A pid, port, reference or fun; compared by its encoding."""

    def __init__(self, kind: str, node: str, raw: bytes):
        self.kind, self.node, self.raw = kind, node, raw

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Opaque) and (self.kind, self.raw) == (other.kind, other.raw)

    def __hash__(self) -> int:
        return hash((self.kind, self.raw))

    def __repr__(self) -> str:
        return f"<{self.kind} {self.node}>"


class ImproperList(list):
    def __init__(self, items, tail):
        super().__init__(items)
        self.tail = tail


def _hashable(v):
    return tuple(_hashable(x) for x in v) if isinstance(v, list) else v


def binary_to_term(data: bytes) -> Any:
    if not data or data[0] != 131:
        raise ValueError("not an external term")
    v, pos = _decode(data, 1)
    return v


_BOOLS = {"true": True, "false": False}


def _atom(name: str) -> Any:
    return _BOOLS[name] if name in _BOOLS else Atom(name)


def _decode(d: bytes, p: int) -> tuple[Any, int]:
    tag = d[p]
    p += 1
    if tag == 97:  # SMALL_INTEGER_EXT
        return d[p], p + 1
    if tag == 98:  # INTEGER_EXT
        return struct.unpack(">i", d[p:p + 4])[0], p + 4
    if tag == 70:  # NEW_FLOAT_EXT
        return struct.unpack(">d", d[p:p + 8])[0], p + 8
    if tag in (110, 111):  # SMALL_BIG_EXT, LARGE_BIG_EXT
        if tag == 110:
            n, p = d[p], p + 1
        else:
            n, p = struct.unpack(">I", d[p:p + 4])[0], p + 4
        sign = d[p]
        v = int.from_bytes(d[p + 1:p + 1 + n], "little")
        return (-v if sign else v), p + 1 + n
    if tag in (100, 118):  # ATOM_EXT, ATOM_UTF8_EXT
        n = struct.unpack(">H", d[p:p + 2])[0]
        return _atom(d[p + 2:p + 2 + n].decode("utf-8")), p + 2 + n
    if tag in (115, 119):  # SMALL_ATOM_EXT, SMALL_ATOM_UTF8_EXT
        n = d[p]
        return _atom(d[p + 1:p + 1 + n].decode("utf-8")), p + 1 + n
    if tag in (104, 105):  # SMALL_TUPLE_EXT, LARGE_TUPLE_EXT
        if tag == 104:
            n, p = d[p], p + 1
        else:
            n, p = struct.unpack(">I", d[p:p + 4])[0], p + 4
        items = []
        for _ in range(n):
            v, p = _decode(d, p)
            items.append(v)
        return tuple(items), p
    if tag == 106:  # NIL_EXT
        return [], p
    if tag == 107:  # STRING_EXT: a list of small integers
        n = struct.unpack(">H", d[p:p + 2])[0]
        return list(d[p + 2:p + 2 + n]), p + 2 + n
    if tag == 108:  # LIST_EXT
        n = struct.unpack(">I", d[p:p + 4])[0]
        p += 4
        items = []
        for _ in range(n):
            v, p = _decode(d, p)
            items.append(v)
        t, p = _decode(d, p)
        return (items if t == [] else ImproperList(items, t)), p
    if tag == 109:  # BINARY_EXT
        n = struct.unpack(">I", d[p:p + 4])[0]
        return d[p + 4:p + 4 + n], p + 4 + n
    if tag == 77:  # BIT_BINARY_EXT
        n = struct.unpack(">I", d[p:p + 4])[0]
        return d[p + 5:p + 5 + n], p + 5 + n
    if tag == 116:  # MAP_EXT
        n = struct.unpack(">I", d[p:p + 4])[0]
        p += 4
        m = {}
        for _ in range(n):
            k, p = _decode(d, p)
            v, p = _decode(d, p)
            m[_hashable(k)] = v
        return m, p
    if tag in (88, 103):  # NEW_PID_EXT, PID_EXT
        start = p
        node, p = _decode(d, p)
        p += 12 if tag == 88 else 9
        return Opaque("pid", node, d[start:p]), p
    if tag in (89, 102, 120):  # NEW_PORT_EXT, PORT_EXT, V4_PORT_EXT
        start = p
        node, p = _decode(d, p)
        p += {89: 8, 102: 5, 120: 12}[tag]
        return Opaque("port", node, d[start:p]), p
    if tag in (90, 114):  # NEWER_REFERENCE_EXT, NEW_REFERENCE_EXT
        n = struct.unpack(">H", d[p:p + 2])[0]
        start = p
        node, p = _decode(d, p + 2)
        p += (4 if tag == 90 else 1) + 4 * n
        return Opaque("ref", node, d[start:p]), p
    if tag == 112:  # NEW_FUN_EXT
        size = struct.unpack(">I", d[p:p + 4])[0]
        return Opaque("fun", "", d[p:p + size]), p + size
    if tag == 113:  # EXPORT_EXT
        start = p
        for _ in range(3):
            _, p = _decode(d, p)
        return Opaque("fun", "", d[start:p]), p
    if tag == 80:  # compressed
        size = struct.unpack(">I", d[p:p + 4])[0]
        inner = zlib.decompress(d[p + 4:])
        assert len(inner) == size
        v, _ = _decode(inner, 0)
        return v, len(d)
    raise ValueError(f"unsupported external term tag {tag}")


def proplist(v: Any) -> dict:
    """[{K, V}, ...] (or a map) -> dict."""
    if isinstance(v, dict):
        return v
    return {t[0]: t[1] for t in v if isinstance(t, tuple) and len(t) == 2}


# --------------------------------------------------------------------------------------------
# process registry: whatever is started is torn down at exit, in reverse order

_live: "weakref.WeakSet[Any]" = weakref.WeakSet()
_live_order: list[weakref.ref] = []


def _register(obj: Any) -> None:
    _live.add(obj)
    _live_order.append(weakref.ref(obj))


def cleanup_all() -> None:
    for ref in reversed(_live_order):
        obj = ref()
        if obj is not None:
            try:
                obj.cleanup()
            except Exception as e:  # noqa: BLE001
                print(f"harness cleanup of {obj!r} failed: {e!r}")
    _live_order.clear()


atexit.register(cleanup_all)


# --------------------------------------------------------------------------------------------
# the helper Erlang node

class ErlError(HarnessError):
    def __init__(self, expr: str, term: Any):
        self.term = term
        self.reason = term[1] if isinstance(term, tuple) and len(term) == 3 else term
        text = term[2].decode("utf-8", "replace") if isinstance(term, tuple) and len(term) == 3 else repr(term)
        super().__init__(f"Erlang expression failed: {expr.strip()}\n  -> {text}")


class ErlHelper:
    """One hidden `erl` node, kept running, that evaluates expressions sent on its stdin.

    local(expr)      evaluates in the helper itself (it has megaphone.beam on its code path)
    rpc(node, expr)  evaluates inside `node` (erl_eval runs there; about 1 ms per call)
    """

    def __init__(self, cookie: str, workdir: Path, code_paths: Iterable[Path] = (),
                 erl_args: Iterable[str] = ()):
        self.cookie = cookie
        self.erl_args = list(erl_args)  # further emulator flags (bench/xmpp's client nodes)
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.name = unique("mpit_helper_")
        self.node = f"{self.name}@localhost"
        self.code_paths = [str(p) for p in code_paths]
        self.proc: subprocess.Popen | None = None
        self._buf = b""
        self.stderr_path = self.workdir / f"{self.name}.stderr"
        self._lock = threading.RLock()
        _register(self)

    def _compile(self) -> Path:
        out = self.workdir / "helper_ebin"
        out.mkdir(exist_ok=True)
        beam = out / "megaphone_it_helper.beam"
        src = HERE / "megaphone_it_helper.erl"
        if not beam.exists() or beam.stat().st_mtime < src.stat().st_mtime:
            subprocess.run(["erlc", "-o", str(out), str(src)], check=True, cwd=self.workdir)
        return out

    def start(self) -> None:
        ebin = self._compile()
        args = ["erl", "-sname", self.node, "-hidden", "-setcookie", self.cookie, "-noshell",
                "-pa", str(ebin)]
        for p in self.code_paths:
            args += ["-pa", p]
        args += self.erl_args
        args += ["-s", "megaphone_it_helper", "main"]
        self._buf = b""
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=open(self.stderr_path, "ab"), cwd=self.workdir,
                                     start_new_session=True)
        # The helper is usable once it answers.
        self.local("ok.", timeout=30)

    def _ensure(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            self.start()

    def _readline(self, deadline: float) -> bytes:
        assert self.proc and self.proc.stdout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("helper node did not answer")
            r, _, _ = select.select([fd], [], [], left)
            if r:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    raise HarnessError(f"helper node exited; stderr:\n{tail(self.stderr_path)}")
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line

    def _call(self, mode: str, node: str, expr: str, timeout: float) -> Any:
        with self._lock:
            return self._call_locked(mode, node, expr, timeout)

    def _call_locked(self, mode: str, node: str, expr: str, timeout: float) -> Any:
        self._ensure()
        assert self.proc and self.proc.stdin
        src = expr.strip()
        if not src.endswith("."):
            src += "."
        req = f"{mode} {node} {int(timeout * 1000)} {base64.b64encode(src.encode()).decode()}\n"
        try:
            self.proc.stdin.write(req.encode())
            self.proc.stdin.flush()
            deadline = time.monotonic() + timeout + 5
            while True:
                line = self._readline(deadline)
                if line.startswith(b"@@mpit "):
                    break
        except (TimeoutError, BrokenPipeError, HarnessError):
            self.stop()  # out of sync or dead: the next call starts a fresh helper
            raise
        _, status, payload = line.decode().split(" ", 2)
        term = binary_to_term(base64.b64decode(payload))
        if status != "ok":
            raise ErlError(expr, term)
        return term

    def local(self, expr: str, timeout: float = 10) -> Any:
        return self._call("local", "none", expr, timeout)

    def rpc(self, node: str, expr: str, timeout: float = 10) -> Any:
        return self._call("rpc", node, expr, timeout)

    def stop(self) -> None:
        with self._lock:
            self._stop_locked()

    def _stop_locked(self) -> None:
        p, self.proc = self.proc, None
        if p is None:
            return
        try:
            if p.stdin:
                p.stdin.close()  # EOF: the helper halts
        except OSError:
            pass
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)
        if p.stdout:
            p.stdout.close()

    cleanup = stop


# --------------------------------------------------------------------------------------------
# ejabberd

def _ejabberd_ids() -> tuple[int, int]:
    pw = pwd.getpwnam(EJABBERD_USER)
    return pw.pw_uid, pw.pw_gid


def chown_tree(path: Path, uid: int, gid: int) -> None:
    os.chown(path, uid, gid)
    for dirpath, dirnames, filenames in os.walk(path):
        for n in dirnames + filenames:
            try:
                os.chown(os.path.join(dirpath, n), uid, gid, follow_symlinks=False)
            except FileNotFoundError:
                pass


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
                 net_ticktime: int | None = None):
        self.name = unique("mpit_ej_")
        # a short net_ticktime makes lost nodes noticed within seconds (fault tests); the helper
        # node gets the same one, or one of the two would drop the other when idle
        self.net_ticktime = net_ticktime
        self.node = f"{self.name}@localhost"
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
                                erl_args=self._ticktime_args())
        _register(self)

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
            lines += [f"    {k}: {_yaml_value(v)}" for k, v in self.megaphone_opts.items()]
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
"""
        (self.etc / "ejabberd.yml").write_text(f"""\
# Generated by Tests/integration/harness.py
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
# Generated by Tests/integration/harness.py
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
                  {xmpp_stream_in, init, _} ->
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
        return (pid is not None and pid_alive(pid) and _comm(pid).startswith("beam")
                and pid in pids_with_arg_pair("-sname", self.node, only=[pid]))

    def beam_pid(self) -> int | None:
        try:
            pid = int(self.pid_path.read_text().strip())
            if self._is_our_beam(pid):
                return pid
        except (OSError, ValueError):
            pass
        # Not written yet: find the beam by its exact node name (ctl clients use other names;
        # su, sh and erlexec, which carry the same arguments for a moment, are not beam.smp).
        pids = [p for p in pids_with_arg_pair("-sname", self.node) if self._is_our_beam(p)]
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
                                                   _raise(Abort("ejabberd exited during start"))),
                     timeout, f"ejabberd {self.node} to start", interval=0.2)
            wait_for(lambda: _can_connect(self.c2s_port), 10, "the native c2s listener")
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


def _raise(e: BaseException):
    raise e


def _can_connect(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------------------------
# the Swift node

class MegaphoneNode:
    """The real `megaphone` binary, registered in epmd as NAME@localhost."""

    def __init__(self, base_dir: Path, cookie: str, helper: ErlHelper, *, name: str | None = None,
                 binary: Path = MEGAPHONE_BIN, log_level: str = "info", threads: int | None = None,
                 extra_args: Iterable[str] = ()):
        self.name = name or unique("mpit_mp_")
        self.threads = threads
        self.extra_args = list(extra_args)
        self.node = f"{self.name}@localhost"
        self.dir = Path(base_dir) / self.name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.cookie_file = self.dir / "cookie"
        fd = os.open(self.cookie_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(cookie)
        self.binary = Path(binary)
        self.log_level = log_level
        self.log_path = self.dir / "megaphone.log"
        self.helper = helper
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.expect_running = False  # False after our own kill()/stop(): a death then is no news
        _register(self)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self, timeout: float = 15) -> None:
        if self.alive():
            raise HarnessError(f"{self.node} is already running")
        wait_for(lambda: self.name not in epmd_names(), 10, f"{self.node} to leave epmd")
        self.starts += 1
        self.expect_running = True
        with open(self.log_path, "ab") as log:
            log.write(f"==== start #{self.starts} at {time.strftime('%H:%M:%S')}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [str(self.binary), "--name", self.name, "--host", "localhost",
                 "--cookie-file", str(self.cookie_file), "--log-level", self.log_level]
                + (["--threads", str(self.threads)] if self.threads else []) + self.extra_args,
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=self.dir, start_new_session=True)
        try:
            wait_for(lambda: self.name in epmd_names() or
                     (self.proc.poll() is not None and _raise(Abort(f"exited with {self.proc.returncode}"))),
                     timeout, f"{self.node} to register in epmd")
        except Exception as e:
            self.kill()
            raise HarnessError(f"megaphone node did not start: {e}\n{self.logs_tail()}") from e

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def died_unexpectedly(self) -> bool:
        return self.expect_running and not self.alive()

    def kill(self) -> None:
        """SIGKILL, by PID; waits for the exit and for epmd to drop the name."""
        self.expect_running = False
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        wait_for(lambda: self.name not in epmd_names(), 10, f"{self.node} to leave epmd")

    def stop(self, timeout: float = 20) -> int | None:
        """SIGTERM (graceful shutdown), by PID; SIGKILL after the deadline. Returns the exit status."""
        self.expect_running = False
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGKILL)
                self.proc.wait(10)
        wait_for(lambda: self.name not in epmd_names(), 10, f"{self.node} to leave epmd")
        return self.proc.returncode

    def restart(self, graceful: bool = True) -> None:
        self.stop() if graceful else self.kill()
        self.start()

    def fd_count(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def rss_bytes(self) -> int:
        return vm_rss(self.pid)

    def sighup(self) -> None:
        """SIGHUP, by PID: the node reloads its certificate."""
        if not self.alive():
            raise HarnessError(f"{self.node} is not running")
        self.proc.send_signal(signal.SIGHUP)

    def stats(self, timeout: float = 5) -> dict:
        """megaphone:stats/2 from the helper node (works whether or not ejabberd is up)."""
        r = self.helper.local(f"megaphone:stats({atom(self.node)}, {int(timeout * 1000)}).", timeout=timeout + 2)
        if not (isinstance(r, tuple) and r and r[0] == "ok"):
            raise HarnessError(f"megaphone:stats({self.node}) -> {r!r}")
        return r[1]

    def connections(self) -> int:
        return self.stats()["connections"]

    def listening(self) -> bool:
        """True once a controller (mod_megaphone) has sent `start` and listeners are open."""
        try:
            return bool(self.stats(timeout=2).get("listeners"))
        except (HarnessError, ErlError, TimeoutError):
            return False

    def logs_tail(self, lines: int = 60) -> str:
        return f"--- {self.log_path} (last {lines} lines)\n{tail(self.log_path, lines)}"

    def cleanup(self) -> None:
        """Graceful (SIGTERM) with a short deadline, then SIGKILL; warns on an unclean exit."""
        if self.alive():
            code = self.stop(timeout=10)
            if code not in (0, None):
                print(f"{self.node} exited with status {code} on SIGTERM; log: {self.log_path}")

    def __enter__(self) -> "MegaphoneNode":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.cleanup()

    def __repr__(self) -> str:
        return f"MegaphoneNode({self.node}, pid={self.pid})"


# --------------------------------------------------------------------------------------------
# a test PKI, made with the openssl command line: root CA -> intermediate CA -> server certs

_CA_EXTENSIONS = """\
[ req ]
distinguished_name = dn
prompt = no
[ dn ]
[ root_ca ]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[ intermediate_ca ]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
[ server ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
subjectAltName = @server_names
[ server_names ]
DNS.1 = localhost
IP.1 = 127.0.0.1
"""


def _openssl(*args: str, cwd: Path, input: bytes | None = None) -> bytes:
    r = subprocess.run(["openssl", *args], cwd=cwd, input=input, capture_output=True, timeout=60)
    if r.returncode != 0:
        raise HarnessError(f"openssl {' '.join(args)} -> exit {r.returncode}\n"
                           f"{r.stderr.decode('utf-8', 'replace')}")
    return r.stdout


def write_private_file(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Writes data to path (replacing it in place if it exists) with the given mode."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)


class ServerCert:
    """One server certificate for `localhost` (SAN DNS:localhost, IP:127.0.0.1), signed by the
    intermediate CA.

    bundle   the PEM a server loads (certfile): leaf, then intermediate, then the private key; mode 600
    cert     the leaf alone (PEM), key: the private key alone (mode 600)
    serial   the leaf's serial number (int), subject: its subject as openssl prints it
    """

    def __init__(self, name: str, bundle: Path, cert: Path, key: Path, serial: int, subject: str):
        self.name, self.bundle, self.cert, self.key = name, bundle, cert, key
        self.serial, self.subject = serial, subject

    def bundle_bytes(self) -> bytes:
        return self.bundle.read_bytes()

    def __repr__(self) -> str:
        return f"ServerCert({self.name}, serial={self.serial:#x}, {self.subject})"


class TestPKI:
    """A throwaway CA hierarchy in `dir`, made with the `openssl` command line:

      ca.pem            root CA (self-signed): what clients trust (-CAfile, ca_certs)
      intermediate.pem  intermediate CA, signed by the root (pathlen 0)
      <name>.pem        server bundles from issue(): leaf + intermediate + key, mode 600

    make_test_pki() also issues `server` and `server2` (different serials and subjects).
    Keys are RSA 2048. Everything is owned by the caller (root in the tests), keys mode 600.
    """

    __test__ = False  # not a pytest test class

    def __init__(self, dir: Path):
        self.dir = Path(dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o755)
        self.tag = secrets.token_hex(3)
        self.cnf = self.dir / "openssl.cnf"
        self.cnf.write_text(_CA_EXTENSIONS)
        self.ca = self.dir / "ca.pem"
        self.ca_key = self.dir / "ca.key"
        self.intermediate = self.dir / "intermediate.pem"
        self.intermediate_key = self.dir / "intermediate.key"
        self.certs: dict[str, ServerCert] = {}
        self._used_serials: set[int] = set()
        self._make_cas()

    def _serial(self) -> int:
        while True:
            s = secrets.randbits(63) | (1 << 62)  # positive, 63 bits, never a repeat
            if s not in self._used_serials:
                self._used_serials.add(s)
                return s

    def _key(self, path: Path) -> None:
        _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
                 "-out", str(path), cwd=self.dir)
        os.chmod(path, 0o600)

    def _make_cas(self) -> None:
        d = self.dir
        self._key(self.ca_key)
        _openssl("req", "-x509", "-new", "-config", str(self.cnf), "-extensions", "root_ca",
                 "-key", str(self.ca_key), "-subj", f"/O=Megaphone tests/CN=Megaphone Test Root CA {self.tag}",
                 "-days", "30", "-sha256", "-set_serial", str(self._serial()), "-out", str(self.ca), cwd=d)
        self._key(self.intermediate_key)
        csr = d / "intermediate.csr"
        _openssl("req", "-new", "-config", str(self.cnf), "-key", str(self.intermediate_key),
                 "-subj", f"/O=Megaphone tests/CN=Megaphone Test Intermediate CA {self.tag}",
                 "-out", str(csr), cwd=d)
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(self.ca), "-CAkey", str(self.ca_key),
                 "-set_serial", str(self._serial()), "-days", "30", "-sha256",
                 "-extfile", str(self.cnf), "-extensions", "intermediate_ca", "-out", str(self.intermediate),
                 cwd=d)
        for p in (self.ca, self.intermediate):
            os.chmod(p, 0o644)

    def issue(self, name: str, cn: str = XMPP_HOST) -> ServerCert:
        """A new server certificate for `localhost`, with a fresh serial and a subject that names it."""
        d = self.dir
        key, csr, cert = d / f"{name}.key", d / f"{name}.csr", d / f"{name}.crt"
        self._key(key)
        subject = f"/O=Megaphone tests/OU={name} {self.tag}/CN={cn}"
        _openssl("req", "-new", "-config", str(self.cnf), "-key", str(key), "-subj", subject,
                 "-out", str(csr), cwd=d)
        serial = self._serial()
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(self.intermediate),
                 "-CAkey", str(self.intermediate_key), "-set_serial", str(serial), "-days", "30",
                 "-sha256", "-extfile", str(self.cnf), "-extensions", "server", "-out", str(cert), cwd=d)
        os.chmod(cert, 0o644)
        bundle = d / f"{name}.pem"
        write_private_file(bundle, cert.read_bytes() + self.intermediate.read_bytes() + key.read_bytes())
        printed = _openssl("x509", "-in", str(cert), "-noout", "-subject", "-nameopt", "RFC2253",
                           cwd=d).decode().strip()
        c = ServerCert(name, bundle, cert, key, serial, printed.removeprefix("subject=").strip())
        self.certs[name] = c
        return c

    @property
    def server(self) -> ServerCert:
        return self.certs["server"]

    @property
    def server2(self) -> ServerCert:
        return self.certs["server2"]


def make_test_pki(dir: Path) -> TestPKI:
    """Root CA, intermediate CA, and two server certificates (`server`, `server2`) for localhost."""
    pki = TestPKI(dir)
    pki.issue("server")
    pki.issue("server2")
    return pki


def cert_serial(pem: bytes | str) -> int:
    """The serial number of the first certificate in pem."""
    if isinstance(pem, str):
        pem = pem.encode()
    out = subprocess.run(["openssl", "x509", "-noout", "-serial"], input=pem, capture_output=True,
                         timeout=10)
    if out.returncode != 0:
        raise HarnessError(f"openssl x509 -serial: {out.stderr.decode('utf-8', 'replace')}")
    return int(out.stdout.decode().strip().split("=", 1)[1], 16)


class SClient:
    """What `openssl s_client` printed, picked apart."""

    def __init__(self, args: list[str], proc: subprocess.CompletedProcess):
        self.args = args
        self.returncode = proc.returncode
        self.stdout = proc.stdout.decode("utf-8", "replace")
        self.stderr = proc.stderr.decode("utf-8", "replace")
        self.output = self.stdout + self.stderr

    def _line(self, prefix: str) -> str | None:
        for line in self.output.splitlines():
            line = line.strip()
            if line.startswith(prefix):
                return line[len(prefix):].strip()
        return None

    @property
    def verify_code(self) -> int | None:
        """`Verify return code: N (...)` -> N (the last one printed)."""
        codes = [line.split(":", 1)[1].split()[0] for line in self.output.splitlines()
                 if line.strip().startswith("Verify return code:")]
        return int(codes[-1]) if codes else None

    def _new_line(self) -> tuple[str, str] | None:
        """("TLSv1.3", "TLS_AES_256_GCM_SHA384") from `New, TLSv1.3, Cipher is ...`; None if the
        handshake did not complete (`New, (NONE), Cipher is (NONE)`, or no such line). The
        `Protocol  :` and `Verify return code:` lines of the session block are printed even for a
        failed handshake, so they prove nothing alone."""
        for line in self.output.splitlines():
            if line.startswith("New, ") and "Cipher is" in line:
                proto = line.split(",")[1].strip()
                cipher = line.split("Cipher is", 1)[1].strip()
                if proto == "(NONE)" or cipher == "(NONE)":
                    return None
                return proto, cipher
        return None

    @property
    def protocol(self) -> str | None:
        """The negotiated protocol (TLSv1.2, TLSv1.3), or None when no session was established."""
        n = self._new_line()
        return n[0] if n else None

    @property
    def cipher(self) -> str | None:
        n = self._new_line()
        return n[1] if n else None

    @property
    def alpn(self) -> str | None:
        """`ALPN protocol: X` -> X; None for `No ALPN negotiated` or nothing printed."""
        return self._line("ALPN protocol:")

    @property
    def handshake_ok(self) -> bool:
        return self._new_line() is not None

    @property
    def chain_pems(self) -> list[str]:
        """The certificates the server sent (with -showcerts: all of them), PEM, leaf first."""
        out, cur = [], None
        for line in self.stdout.splitlines():
            if line.startswith("-----BEGIN CERTIFICATE-----"):
                cur = [line]
            elif cur is not None:
                cur.append(line)
                if line.startswith("-----END CERTIFICATE-----"):
                    out.append("\n".join(cur) + "\n")
                    cur = None
        return out

    @property
    def leaf_serial(self) -> int | None:
        pems = self.chain_pems
        return cert_serial(pems[0]) if pems else None

    @property
    def chain_subjects(self) -> list[str]:
        """` 0 s:CN = localhost` lines of the `Certificate chain` section, in order."""
        return [line.split("s:", 1)[1].strip() for line in self.stdout.splitlines()
                if line.lstrip()[:1].isdigit() and " s:" in line]

    def __str__(self) -> str:
        return f"$ openssl {' '.join(self.args)}\n(exit {self.returncode})\n{self.output}"


def s_client(port: int, *args: str, host: str = "127.0.0.1", ca: Path | None = None,
             starttls: bool = False, timeout: float = 15, stdin: bytes = b"") -> SClient:
    """Runs `openssl s_client -connect host:port [-CAfile ca] [-starttls xmpp -xmpphost localhost]
    -servername localhost -showcerts ARGS` with stdin (default: nothing, so it closes right after
    the handshake). Never raises for a failed handshake: look at the result."""
    argv = ["s_client", "-connect", f"{host}:{port}", "-servername", XMPP_HOST, "-showcerts"]
    if ca is not None:
        argv += ["-CAfile", str(ca)]
    if starttls:
        argv += ["-starttls", "xmpp", "-xmpphost", XMPP_HOST]
    argv += list(args)
    try:
        proc = subprocess.run(["openssl", *argv], input=stdin, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        proc = subprocess.CompletedProcess(e.cmd, -1, e.stdout or b"", (e.stderr or b"") +
                                           f"\n<s_client timed out after {timeout}s>".encode())
    return SClient(argv, proc)
