"""The helper Erlang node: one hidden `erl` node, kept running, that evaluates expressions."""
from __future__ import annotations

import base64
import os
import select
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Iterable

from .env import HERE
from .errors import HarnessError
from .files import tail
from .processes import name_flag, unique
from .registry import register
from .terms import binary_to_term


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
                 erl_args: Iterable[str] = (), host: str = "localhost"):
        self.cookie = cookie
        self.erl_args = list(erl_args)  # further emulator flags (bench/xmpp's client nodes)
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.name = unique("mpit_helper_")
        self.node = f"{self.name}@{host}"   # a dotted host: long names (-name), as the nodes it talks to
        self.host = host
        self.code_paths = [str(p) for p in code_paths]
        self.proc: subprocess.Popen | None = None
        self._buf = b""
        self.stderr_path = self.workdir / f"{self.name}.stderr"
        self._lock = threading.RLock()
        register(self)

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
        args = ["erl", name_flag(self.host), self.node, "-hidden", "-setcookie", self.cookie, "-noshell",
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
