"""megaphone-load (issue 14), the Swift XMPP load client, driven over its line protocol: commands on
its stdin, one event line per event on its stdout (`word key=value ...`), logs in a file. Started and
stopped by PID; registered, so that a failing test leaves no client behind."""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, Iterable

from .env import MEGAPHONE_LOAD_BIN
from .errors import HarnessError
from .files import tail
from .registry import register


def parse_line(line: str) -> dict:
    """`word k=v k=v` -> {"event": word, k: v, ...}; integer values become ints."""
    words = line.split(" ")
    out: dict = {"event": words[0]}
    for w in words[1:]:
        k, sep, v = w.partition("=")
        if not sep:
            out.setdefault("args", []).append(w)
            continue
        try:
            out[k] = int(v)
        except ValueError:
            out[k] = v
    return out


class LoadClient:
    """One megaphone-load process: users first..first+count-1 of `host:port`."""

    def __init__(self, log_dir: Path, port: int, *, first: int, count: int, host: str = "127.0.0.1",
                 binary: Path = MEGAPHONE_LOAD_BIN, args: Iterable[str] = (), log_level: str = "info"):
        self.first, self.count = first, count
        self.log_path = Path(log_dir) / f"megaphone-load-{first}-{count}-{os.getpid()}-{time.monotonic_ns()}.log"
        argv = [str(binary), "--connect", f"{host}:{port}", "--first", str(first), "--count", str(count),
                "--log-level", log_level, *args]
        self._cond = threading.Condition()
        self._lines: list[str] = []
        self._taken: set[int] = set()
        self._eof = False
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                                         start_new_session=True)
        register(self)
        threading.Thread(target=self._read, daemon=True).start()
        self.ready = self.expect("ready", timeout=15)
        if self.ready.get("pid") != self.proc.pid:
            raise HarnessError(f"megaphone-load says pid {self.ready.get('pid')}, started {self.proc.pid}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self._cond:
                self._lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def command(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def expect(self, event: str, timeout: float = 30, where: Callable[[dict], bool] = lambda _: True) -> dict:
        """The first line not taken yet whose word is `event` (and that `where` accepts), waiting
        for it; the line is taken. Lines of other words stay for later."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for i, line in enumerate(self._lines):
                    if i in self._taken:
                        continue
                    d = parse_line(line)
                    if d["event"] == event and where(d):
                        self._taken.add(i)
                        return d
                left = deadline - time.monotonic()
                if left <= 0 or self._eof:
                    raise HarnessError(f"megaphone-load {self.first}+{self.count}: no `{event}` line "
                                       f"{'before its stdout ended' if self._eof else f'within {timeout} s'}; "
                                       f"lines: {self._lines[-20:]}\n{self.logs_tail()}")
                self._cond.wait(left)

    def lines(self, event: str) -> list[dict]:
        """Every line so far with that word, taken or not."""
        with self._cond:
            return [d for d in map(parse_line, self._lines) if d["event"] == event]

    def login(self, timeout: float = 120) -> dict:
        """`login`, then waits for `login-done`; returns it with `failures` {reason: count}."""
        self.command("login")
        done = self.expect("login-done", timeout=timeout)
        done["failures"] = {d["reason"]: d["count"] for d in self.lines("failure")}
        return done

    def status(self, timeout: float = 10) -> dict:
        self.command("status")
        return self.expect("status", timeout=timeout)

    def close_sessions(self, timeout: float = 30) -> int:
        self.command("close")
        return self.expect("closed", timeout=timeout)["n"]

    def finish(self, timeout: float = 30) -> int:
        """End of stdin: the client closes what is open and exits; its exit status."""
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        return self.proc.wait(timeout)

    def logs_tail(self, lines: int = 30) -> str:
        return f"--- {self.log_path} (last {lines} lines)\n{tail(self.log_path, lines)}"

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def __repr__(self) -> str:
        return f"LoadClient(users {self.first}+{self.count}, pid={self.pid})"
