"""One `megaphone-load` process (Sources/megaphone-load) driven over its line protocol, for a run
of a hundred of them (the tests' harness.load_client.LoadClient keeps every line; this keeps only
the counts, the tokens received and the replies waited for):
commands on stdin, one event per line on stdout ("kind key=value ..."). A reader thread keeps the
latest progress, the tokens of received chat messages and the replies the caller waits for."""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections import deque
from pathlib import Path

from harness.load_client import parse_line


def parse_event(line: str) -> tuple[str, dict]:
    """"progress t=1.5 logged_in=3" -> ("progress", {"t": "1.5", "logged_in": 3}): the harness's
    parser of the same protocol (Tests/integration/harness/load_client.py), split."""
    fields = parse_line(line.strip())
    return fields.pop("event", ""), fields


class LoadClient:
    # Replies a caller waits for; every other kind is folded into the state below.
    REPLIES = ("status", "ping-done", "closed", "login-done")

    def __init__(self, binary: Path, idx: int, workdir: Path, args: list[str]):
        self.binary, self.idx, self.args = Path(binary), idx, list(args)
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.first = int(args[args.index("--first") + 1])
        self.count = int(args[args.index("--count") + 1])
        self.proc: subprocess.Popen | None = None
        self.lock = threading.Condition()
        self.replies: dict[str, deque] = {k: deque() for k in self.REPLIES}
        self.logged_in = self.failed = self.down = self.in_flight = 0
        self.login_done = False
        self.login_secs = 0.0
        self.failures: dict[str, int] = {}
        self.got: dict[str, tuple[int, int]] = {}
        self.send_failed = 0
        self.errors: list[str] = []
        self.stderr_path = self.workdir / "stderr.log"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self, timeout: float = 30) -> None:
        self._stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen([str(self.binary)] + self.args, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._stderr, cwd=self.workdir,
                                     start_new_session=True)
        self.ready = threading.Event()
        threading.Thread(target=self._reader, daemon=True).start()
        if not self.ready.wait(timeout):
            raise RuntimeError(f"client {self.idx} did not print `ready` in {timeout} s:\n{self.stderr_tail()}")

    def _reader(self) -> None:
        assert self.proc and self.proc.stdout
        for raw in self.proc.stdout:
            kind, f = parse_event(raw.decode("utf-8", "replace"))
            with self.lock:
                if kind == "ready":
                    self.ready.set()
                elif kind == "progress":
                    self.logged_in, self.failed = f.get("logged_in", 0), f.get("failed", 0)
                    self.down, self.in_flight = f.get("down", 0), f.get("in_flight", 0)
                elif kind == "failure":
                    self.failures[str(f.get("reason"))] = f.get("count", 0)
                elif kind == "got":
                    self.got[str(f.get("token"))] = (f.get("to"), f.get("from"))
                elif kind == "send-failed":
                    self.send_failed += 1
                elif kind == "error":
                    self.errors.append(raw.decode("utf-8", "replace").strip())
                if kind == "login-done":
                    self.logged_in, self.failed = f.get("logged_in", 0), f.get("failed", 0)
                    self.login_secs = float(f.get("secs", 0))
                    self.login_done = True
                if kind == "status":
                    self.logged_in, self.failed = f.get("logged_in", self.logged_in), f.get("failed", self.failed)
                    self.down = f.get("down", self.down)
                if kind in self.replies:
                    self.replies[kind].append(f)
                self.lock.notify_all()
        with self.lock:
            self.lock.notify_all()

    def command(self, line: str) -> None:
        assert self.proc and self.proc.stdin
        self.proc.stdin.write((line + "\n").encode())
        self.proc.stdin.flush()

    def wait_event(self, kind: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        with self.lock:
            while not self.replies[kind]:
                left = deadline - time.monotonic()
                if left <= 0 or not self.alive():
                    raise TimeoutError(f"client {self.idx}: no `{kind}` within {timeout} s "
                                       f"(alive: {self.alive()})\n{self.stderr_tail()}")
                self.lock.wait(min(left, 1.0))
            return self.replies[kind].popleft()

    def poll_event(self, kind: str) -> dict | None:
        with self.lock:
            return self.replies[kind].popleft() if self.replies[kind] else None

    def got_snapshot(self) -> dict:
        with self.lock:
            return dict(self.got)

    def users(self) -> range:
        """The users this process logs in (all of them live once the run's checks passed)."""
        return range(self.first, self.first + self.count)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stderr_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.stderr_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 60) -> int | None:
        """EOF on stdin (the client closes what is left and exits 0); SIGKILL by PID past timeout."""
        if self.proc is None:
            return None
        try:
            if self.proc.stdin:
                self.proc.stdin.close()
        except OSError:
            pass
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            return -signal.SIGKILL
