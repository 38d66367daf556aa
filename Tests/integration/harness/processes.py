"""Waiting for conditions and looking at processes by PID, through /proc (never by name)."""
from __future__ import annotations

import os
import secrets
import signal
import time
from typing import Any, Callable, Iterable

from .errors import Abort, HarnessError


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


def name_flag(host: str) -> str:
    """erl's flag for a node on `host`: -name for a dotted host (long names), else -sname."""
    return "-name" if "." in host else "-sname"


def unique(prefix: str) -> str:
    return f"{prefix}{os.getpid()}_{secrets.token_hex(3)}"


def pid_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (works for non-children too)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return False
    state = stat[stat.rindex(")") + 2:].split()[0]
    return state not in ("Z", "X")


def comm(pid: int) -> str:
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


def raise_now(e: BaseException):
    """Raises e: lets a wait_for lambda give up at once (`... or raise_now(Abort(...))`)."""
    raise e
