"""The Swift node: the real `megaphone` binary, started, stopped and inspected by PID."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Iterable

from .env import MEGAPHONE_BIN
from .erl_helper import ErlError, ErlHelper
from .errors import Abort, HarnessError
from .files import tail
from .net import epmd_names
from .processes import raise_now, unique, vm_rss, wait_for
from .registry import register
from .terms import atom


class MegaphoneNode:
    """The real `megaphone` binary, registered in epmd as NAME@HOST (localhost by default).

    host: the node name's host part (`--host`; dotted: a long name).
    netns: run it inside this network namespace (`ip netns exec`, which execs the binary: the PID is
        the node's); then `epmd_host` is the address where that namespace's epmd answers."""

    def __init__(self, base_dir: Path, cookie: str, helper: ErlHelper, *, name: str | None = None,
                 binary: Path = MEGAPHONE_BIN, log_level: str | None = "info", threads: int | None = None,
                 extra_args: Iterable[str] = (), host: str = "localhost", netns: str | None = None,
                 epmd_host: str = "127.0.0.1"):
        self.name = name or unique("mpit_mp_")
        self.threads = threads
        self.extra_args = list(extra_args)
        self.host, self.netns, self.epmd_host = host, netns, epmd_host
        self.node = f"{self.name}@{host}"
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
        register(self)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self, timeout: float = 15) -> None:
        if self.alive():
            raise HarnessError(f"{self.node} is already running")
        wait_for(lambda: self.name not in epmd_names(self.epmd_host), 10, f"{self.node} to leave epmd")
        self.starts += 1
        self.expect_running = True
        with open(self.log_path, "ab") as log:
            log.write(f"==== start #{self.starts} at {time.strftime('%H:%M:%S')}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                (["ip", "netns", "exec", self.netns] if self.netns else [])
                + [str(self.binary), "--name", self.name, "--host", self.host,
                 "--cookie-file", str(self.cookie_file)]
                + (["--log-level", self.log_level] if self.log_level else [])
                + (["--threads", str(self.threads)] if self.threads else []) + self.extra_args,
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=self.dir, start_new_session=True)
        try:
            wait_for(lambda: self.name in epmd_names(self.epmd_host) or
                     (self.proc.poll() is not None and raise_now(Abort(f"exited with {self.proc.returncode}"))),
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
        wait_for(lambda: self.name not in epmd_names(self.epmd_host), 10, f"{self.node} to leave epmd")

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
        wait_for(lambda: self.name not in epmd_names(self.epmd_host), 10, f"{self.node} to leave epmd")
        return self.proc.returncode

    def restart(self, graceful: bool = True) -> None:
        self.stop() if graceful else self.kill()
        self.start()

    def fd_count(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def rss_bytes(self) -> int:
        return vm_rss(self.pid)

    def sighup(self) -> None:
        """SIGHUP, by PID: the node reloads its certificate and its options file's log level."""
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
