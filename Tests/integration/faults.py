"""Fault injection against a real ejabberd 23.01 + mod_megaphone + a real Megaphone node, under load.

World: one isolated ejabberd and one Swift node, both with a short net_ticktime (T seconds, the node
through --net-ticktime, ejabberd and the harness's helper node through `-kernel net_ticktime`), and a
Load (xmpp_load.py) of raw XMPP clients: n_mp through the node's plain-TCP listener, n_native on
ejabberd's own c2s port, all with SASL PLAIN, chattering.

Faults (FAULTS), each with the time it took the other side to notice, bounded:
  kill_megaphone        SIGKILL the Swift node; ejabberd ends its sessions; restart it
  kill_ejabberd         SIGKILL the beam; the node closes its clients and listeners; restart it
  stop_megaphone_short  SIGSTOP the node for T/3, then SIGCONT: nothing may drop
  stop_megaphone_long   SIGSTOP the node for 1.5 T + 2 s: ejabberd drops it (net_ticktime); SIGCONT
  stop_ejabberd_short   SIGSTOP the beam for T/3: nothing may drop
  stop_ejabberd_long    SIGSTOP the beam for 1.5 T + 2 s: the node drops it (frozen-peer detection)
  cut_distribution      `ss -K` both ends of the distribution connection between the two PIDs
  hangup_storm          hundreds of TCP connections opened and closed at once (FIN and RST) on a
                        second Megaphone node of the same ejabberd: no client of the first may drop
  probe_dist_port       6 silent and 6 slow-drip connections held on the node's distribution port
                        (what a port scan or a stuck peer does): nobody may notice, no client drops,
                        message rings keep their speed, the node closes them at its handshake deadline

After every fault, check(): every client logged in again (deadline), ejabberd holds exactly one
session and one c2s process per connected client and mod_megaphone's session table one entry per
Megaphone client, the node holds one connection per Megaphone client and as many other fds as at the
start, a ring of messages through all clients is delivered, and neither log has an error (apart
from Erlang's "node not responding" for a frozen peer). Memory (VmRSS of the node and of the
beam) is sampled at every check; the caller compares the end with the start.
"""
from __future__ import annotations

import os
import random
import secrets
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from harness.ejabberd import Ejabberd
from harness.errors import HarnessError
from harness.megaphone_node import MegaphoneNode
from harness.net import epmd_names, free_port, hang_up_storm
from harness.processes import unique, wait_for
from harness.terms import binary
from xmpp_load import ClientSpec, Load

FAULTS = ["kill_megaphone", "kill_ejabberd", "stop_megaphone_short", "stop_megaphone_long",
          "stop_ejabberd_short", "stop_ejabberd_long", "cut_distribution", "hangup_storm",
          "probe_dist_port"]

# Faults after which no client may have been cut off.
HARMLESS = {"stop_megaphone_short", "stop_ejabberd_short", "hangup_storm", "probe_dist_port"}


class FaultCheckFailed(AssertionError):
    pass


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise HarnessError(f"no VmRSS for {pid}")


@dataclass
class Sample:
    label: str
    mp_pid: int
    ej_pid: int
    mp_fds: int
    mp_connections: int
    mp_rss_kb: int
    ej_rss_kb: int

    @property
    def mp_other_fds(self) -> int:
        """fds that are not client connections: listeners, epoll, eventfds, distribution, logs."""
        return self.mp_fds - self.mp_connections


@dataclass
class FaultResult:
    fault: str
    detect_s: float | None      # time until the other side noticed (None: nothing to notice)
    bound_s: float | None       # what it had to be within
    recover_s: float            # from the fault's end until every client was logged in again
    losses_mp: int              # Megaphone clients cut off by this fault
    losses_native: int
    sample: Sample
    note: str = ""


@dataclass
class World:
    base: Path
    n_mp: int
    n_native: int
    ticktime: int
    seed: int
    log: Callable[[str], None] = print
    ej: Ejabberd | None = None
    mp: MegaphoneNode | None = None
    # A second node of the same ejabberd with no clients: the hang-up storm's target.
    storm: MegaphoneNode | None = None
    storm_port: int = 0
    load: Load | None = None
    port: int = 0
    baseline: Sample | None = None
    samples: list[Sample] = field(default_factory=list)
    results: list[FaultResult] = field(default_factory=list)

    # ---- set-up
    def start(self) -> None:
        cookie = secrets.token_hex(16)
        name = unique("mpft_")
        node = f"{name}@localhost"
        storm_name = unique("mpft_storm_")
        self.port, self.storm_port = free_port(), free_port()
        self.ej = Ejabberd(self.base, {node: self.port, f"{storm_name}@localhost": self.storm_port},
                           cookie=cookie, connect_retry=1, net_ticktime=self.ticktime)
        self.mp = MegaphoneNode(self.base / "nodes", cookie, self.ej.helper, name=name,
                                extra_args=["--net-ticktime", str(self.ticktime)])
        self.storm = MegaphoneNode(self.base / "nodes", cookie, self.ej.helper, name=storm_name,
                                   extra_args=["--net-ticktime", str(self.ticktime)])
        self.mp.start()
        self.storm.start()
        self.ej.start()
        wait_for(self.mp.listening, 30, "mod_megaphone to attach the node", on_timeout=self.logs)
        wait_for(self.storm.listening, 30, "mod_megaphone to attach the storm node", on_timeout=self.logs)
        self._start_load("ft")
        self.log(f"baseline: {self.describe(self.baseline)}")

    def _start_load(self, prefix: str) -> None:
        """Registers the clients' users (PREFIXi_...) and starts the load: natives spread evenly,
        so that the message ring crosses between Megaphone and native clients; then the baseline."""
        total = self.n_mp + self.n_native
        natives = {k * total // self.n_native for k in range(self.n_native)} if self.n_native else set()
        users = [(f"{prefix}{i}_{secrets.token_hex(3)}", secrets.token_urlsafe(9)) for i in range(total)]
        specs = [ClientSpec(u, p, self.ej.c2s_port, "native") if i in natives else
                 ClientSpec(u, p, self.port, "megaphone") for i, (u, p) in enumerate(users)]
        self.ej.rpc("[ok = ejabberd_auth:try_register(U, <<\"localhost\">>, P) || {U, P} <- "
                    + "[" + ",".join(f"{{{binary(u)}, {binary(p)}}}" for u, p in users) + "]], ok.",
                    timeout=120)
        self.load = Load(specs, seed=self.seed)
        self.load.start()
        self.baseline = self.check("baseline", deadline=120)

    def stop(self) -> None:
        if self.load:
            self.load.stop()
        for obj in (self.ej, self.mp, self.storm):
            if obj is not None:
                try:
                    obj.cleanup()
                except Exception as e:  # noqa: BLE001
                    self.log(f"cleanup of {obj!r}: {e!r}")

    def logs(self) -> str:
        return "\n".join([self.ej.logs_tail(60), self.mp.logs_tail(40)])

    # ---- observations
    def ej_counts(self) -> dict:
        """Sessions in ejabberd_sm, live c2s processes, mod_megaphone's session and monitor tables and
        its per-node session count."""
        return self.ej.session_counts()

    def mp_stats(self) -> dict:
        return self.mp.stats(timeout=5)

    def sample(self, label: str) -> Sample:
        st = self.mp_stats()
        fds = self.mp.fd_count()
        return Sample(label, self.mp.pid, self.ej.beam_pid() or 0, fds, st["connections"],
                      rss_kb(self.mp.pid), rss_kb(self.ej.beam_pid()))

    @staticmethod
    def describe(s: Sample) -> str:
        return (f"node pid {s.mp_pid} fds {s.mp_fds} ({s.mp_connections} clients + {s.mp_other_fds} other) "
                f"RSS {s.mp_rss_kb} kB; beam pid {s.ej_pid} RSS {s.ej_rss_kb} kB")

    # Log lines that are expected under these faults: Erlang's own report of a frozen or lost node.
    EXPECTED_ERRORS = ("not responding",)

    def log_problems(self) -> list[str]:
        """Error entries in ejabberd's error.log (one per entry header) and error, critical or
        `Cannot listen` lines in the node's log, apart from EXPECTED_ERRORS."""
        out = []
        for path, marks in ((self.ej.error_log_path, ("[error]", "[critical]")),
                            (self.mp.log_path, (" error ", " critical ", "Cannot listen"))):
            try:
                text = Path(path).read_text(errors="replace")
            except FileNotFoundError:
                continue
            out += [line.strip() for line in text.splitlines()
                    if any(m in line for m in marks) and not any(e in line for e in self.EXPECTED_ERRORS)]
        return out

    # ---- the check after every fault
    def check(self, label: str, deadline: float = 90) -> Sample:
        load, n_mp, n_all = self.load, self.load.count("megaphone"), self.load.count()
        wait_for(lambda: load.online() == n_all, deadline, f"[{label}] all {n_all} clients logged in",
                 interval=0.2, on_timeout=lambda: load.offline_summary() + "\n" + self.logs())
        want = {"sm": n_all, "c2s": n_all, "mp_sessions": n_mp, "mp_monitors": n_mp, "mp_status_sessions": n_mp}
        got: dict = {}

        def settled() -> bool:
            got.clear()
            got.update(self.ej_counts())
            got["node_connections"] = self.mp_stats()["connections"]
            return all(got[k] == v for k, v in want.items()) and got["node_connections"] == n_mp

        try:
            wait_for(settled, 20, f"[{label}] one session per client", interval=0.5)
        except TimeoutError as e:
            raise FaultCheckFailed(f"[{label}] leaked or missing sessions: want {want} and {n_mp} node "
                                   f"connections, got {got}\n{self.logs()}") from e
        missing = load.round(timeout=20)
        if missing:
            raise FaultCheckFailed(f"[{label}] {len(missing)} of {n_all} ring messages not delivered, "
                                   f"e.g. {missing[:3]}")
        problems = self.log_problems()
        if problems:
            raise FaultCheckFailed(f"[{label}] errors logged: " + "\n  ".join(problems[:10]))
        s = self.sample(label)
        if self.baseline is not None and s.mp_other_fds != self.baseline.mp_other_fds:
            # one more look: a connection may have been counted a moment before its fd was closed
            time.sleep(0.5)
            s = self.sample(label)
            if s.mp_other_fds != self.baseline.mp_other_fds:
                raise FaultCheckFailed(f"[{label}] node fds leaked: {s.mp_other_fds} non-client fds, "
                                       f"{self.baseline.mp_other_fds} at the start ({self.describe(s)})")
        self.samples.append(s)
        return s

    # ---- faults
    def inject(self, fault: str) -> FaultResult:
        los_mp0, los_nat0 = self.load.losses("megaphone"), self.load.losses("native")
        self._before()
        detect, bound, note = getattr(self, f"_{fault}")()
        t_end = time.monotonic()
        s = self.check(fault)
        r = FaultResult(fault, detect, bound, time.monotonic() - t_end,
                        self.load.losses("megaphone") - los_mp0, self.load.losses("native") - los_nat0, s, note)
        if detect is not None and bound is not None and detect > bound:
            raise FaultCheckFailed(f"[{fault}] noticed after {detect:.1f}s, bound {bound:.1f}s")
        if fault in HARMLESS and (r.losses_mp or r.losses_native):
            raise FaultCheckFailed(f"[{fault}] cut off {r.losses_mp} Megaphone and {r.losses_native} native "
                                   "clients, and should have cut off none")
        self.results.append(r)
        return r

    def _mp_session_pids(self) -> list[str]:
        """The c2s pids of mod_megaphone's sessions, as text (pid_to_list)."""
        return [bytes(p).decode() if isinstance(p, list) else p for p in self.ej.rpc(
            "[pid_to_list(P) || {_, {P, _}} <- maps:to_list(element(5, sys:get_state(mod_megaphone, 5000)))].")]

    def _before(self) -> None:
        """What the detection waits are measured against (taken before every fault)."""
        st = self.mp_stats()
        self._node_down0, self._conns0 = st["closed"]["node_down"], st["connections"]
        self._sessions0 = self._mp_session_pids()

    def _noticed_by_ejabberd(self, t0: float, bound: float, what: str) -> float:
        """Waits until every session (c2s process) mod_megaphone had for the node has ended. Measured
        on the pids from before the fault: clients that log in again meanwhile do not hide it."""
        pids = "[" + ",".join(f'"{p}"' for p in self._sessions0) + "]"
        wait_for(lambda: self.ej.rpc(f"[P || S <- {pids}, P <- [list_to_pid(S)], is_process_alive(P)].") == [],
                 bound + 10, what, interval=0.1, on_timeout=self.logs)
        return time.monotonic() - t0

    def _noticed_by_node(self, t0: float, bound: float, what: str) -> float:
        """Waits until the node has closed, for node_down, every client it held before the fault."""
        wait_for(lambda: self.mp_stats()["closed"]["node_down"] - self._node_down0 >= self._conns0,
                 bound + 10, what, interval=0.1, on_timeout=self.logs)
        return time.monotonic() - t0

    def _kill_megaphone(self):
        t0 = time.monotonic()
        self.mp.kill()
        d = self._noticed_by_ejabberd(t0, 5, "ejabberd to end the killed node's sessions")
        self.mp.start()
        return d, 5.0, ""

    def _kill_ejabberd(self):
        t0 = time.monotonic()
        self.ej.kill()
        d = self._noticed_by_node(t0, 5, "the node to drop ejabberd's clients and listeners")
        t1 = time.monotonic()
        self.ej.start()
        return d, 5.0, f"ejabberd restart {time.monotonic() - t1:.1f}s"

    def _stop(self, pid: int, seconds: float) -> None:
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(seconds)  # the fault itself: a process frozen for this long
        finally:
            os.kill(pid, signal.SIGCONT)

    def _short(self) -> float:
        return self.ticktime / 3

    def _long(self) -> float:
        return 1.5 * self.ticktime + 2

    def _stop_megaphone_short(self):
        self._stop(self.mp.pid, self._short())
        return None, None, f"stopped {self._short():.1f}s"

    def _stop_ejabberd_short(self):
        self._stop(self.ej.beam_pid(), self._short())
        return None, None, f"stopped {self._short():.1f}s"

    def _stop_megaphone_long(self):
        # Erlang declares a silent node dead between T and 1.25 T; the rpc poll adds its round trip.
        pid, t0 = self.mp.pid, time.monotonic()
        os.kill(pid, signal.SIGSTOP)
        try:
            bound = 1.25 * self.ticktime + 2
            d = self._noticed_by_ejabberd(t0, bound, "ejabberd to drop the frozen node")
        finally:
            os.kill(pid, signal.SIGCONT)
        return d, bound, ""

    def _stop_ejabberd_long(self):
        # The node's own detection: nothing heard for T (checked every loop turn, <= 1 s).
        pid, t0 = self.ej.beam_pid(), time.monotonic()
        ticks0 = self.mp_stats().get("net_tick_timeouts", 0)
        os.kill(pid, signal.SIGSTOP)
        try:
            bound = self.ticktime + 2
            d = self._noticed_by_node(t0, bound, "the node to drop the frozen ejabberd")
            ticks = self.mp_stats().get("net_tick_timeouts", 0) - ticks0
            # keep it frozen past its own ticktime too, as in a real hang
            left = self._long() - (time.monotonic() - t0)
            if left > 0:
                time.sleep(left)
        finally:
            os.kill(pid, signal.SIGCONT)
        if ticks < 1:
            raise FaultCheckFailed("[stop_ejabberd_long] the node dropped ejabberd, but not for silence "
                                   f"(net_tick_timeouts +{ticks})")
        return d, bound, f"net_tick_timeouts +{ticks}"

    def _hangup_storm(self):
        """Hundreds of instant hang-ups on the storm node. Each reaches mod_megaphone as a tcp_closed
        for a connection whose session has not asked for data yet; it must end that session alone
        (with integer ConnIds it ended the sessions with the same numbers on the first node). Enough
        of them that the FIN half, spread over the storm node's reactors, covers every number the
        first node has given out."""
        closed = lambda: sum(self.storm.stats()["closed"].values())
        count = max(500, 4 * self.mp_stats()["accepted"] + 100)
        closed0, t0 = closed(), time.monotonic()
        hang_up_storm(self.storm_port, count)
        wait_for(lambda: closed() - closed0 >= count and self.storm.connections() == 0, 30,
                 "the storm node to close every hung-up connection", on_timeout=self.logs)
        return None, None, f"{count} hang-ups, all closed after {time.monotonic() - t0:.2f}s"

    def dist_sockets(self) -> tuple[int, int]:
        """(dist port of the node, local port of the beam's connection to it), from ss -tnp."""
        node_port = epmd_names()[self.mp.name]
        beam = self.ej.beam_pid()
        out = subprocess.run(["ss", "-tnpH", "state", "established", f"( dport = :{node_port} )"],
                             capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if f"pid={beam}," in line:
                local = line.split()[2]  # Recv-Q Send-Q Local Peer Process (state filtered out)
                return node_port, int(local.rsplit(":", 1)[1])
        raise FaultCheckFailed(f"no distribution connection from beam {beam} to port {node_port}:\n{out}")

    def _cut_distribution(self):
        node_port, beam_port = self.dist_sockets()
        t0 = time.monotonic()
        flt = (f"( sport = :{beam_port} and dport = :{node_port} ) or "
               f"( sport = :{node_port} and dport = :{beam_port} )")
        r = subprocess.run(["ss", "-K", "-tnH", "state", "established", flt], capture_output=True, text=True)
        # Usually one line: destroying one end sends an RST (tcp_abort), so the other end is already
        # closed when ss reaches it. Either way both processes see their socket fail.
        killed = len(r.stdout.splitlines())
        if r.returncode != 0 or killed < 1:
            raise FaultCheckFailed(f"ss -K killed no socket: {r.stdout}{r.stderr}")
        d1 = self._noticed_by_node(t0, 3, "the node to notice the cut")
        d2 = self._noticed_by_ejabberd(t0, 3, "ejabberd to notice the cut")
        return max(d1, d2), 3.0, f"ss -K destroyed {killed} socket(s); node {d1:.2f}s, ejabberd {d2:.2f}s"

    # The node's handshake deadline (Erlang's net_setuptime default) and the probes' drip interval.
    SETUP_S = 7.0
    DRIP_S = 0.3

    def _probe_dist_port(self):
        """Holds 6 silent and 6 slow-drip (a handshake length, then a byte every 0.3 s) connections on
        the node's distribution port until the node closes them, timing message rings meanwhile: a
        ring may not take more than 2 s (it takes tens of ms; a node that waits for a handshake on its
        distribution thread holds every client for seconds per probe). Noticed = the node closed the
        last probe; bound = its deadline + 3 s."""
        port = epmd_names()[self.mp.name]
        rings = [self._timed_ring()]
        stop = threading.Event()
        closed: list[float] = []
        errors: list[str] = []

        def probe(drip: bool) -> None:
            t0 = time.monotonic()
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                    s.settimeout(self.DRIP_S)
                    if drip:
                        s.sendall(b"\x00\x20")
                    while not stop.is_set():
                        try:
                            if not s.recv(64):
                                break  # closed by the node
                        except socket.timeout:
                            if drip:
                                s.sendall(b"n")
                        except OSError:
                            break  # reset by the node
            except OSError as e:
                errors.append(repr(e))
            closed.append(time.monotonic() - t0)

        threads = [threading.Thread(target=probe, args=(i % 2 == 1,), daemon=True) for i in range(12)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        try:
            while len(closed) < len(threads) and time.monotonic() - t0 < self.SETUP_S + 10:
                rings.append(self._timed_ring())
                time.sleep(0.2)
        finally:
            stop.set()
            for t in threads:
                t.join(5)
        if errors:
            raise FaultCheckFailed(f"[probe_dist_port] probes could not connect: {errors[:3]}")
        if len(closed) < len(threads) or max(closed) > self.SETUP_S + 3:
            raise FaultCheckFailed(f"[probe_dist_port] the node did not close the probes at its deadline: "
                                   f"{sorted(round(c, 1) for c in closed)}")
        slowest = max(rings[1:], default=0.0)
        if slowest > 2.0:
            raise FaultCheckFailed(f"[probe_dist_port] a message ring took {slowest:.2f}s while the "
                                   f"distribution port was probed (before: {rings[0]:.2f}s)")
        return max(closed), self.SETUP_S + 3, (f"{len(rings) - 1} rings during the probes, slowest "
                                               f"{slowest * 1000:.0f} ms (before {rings[0] * 1000:.0f} ms)")

    def _timed_ring(self) -> float:
        t = time.monotonic()
        missing = self.load.round(timeout=20)
        if missing:
            raise FaultCheckFailed(f"[probe_dist_port] {len(missing)} ring messages not delivered, "
                                   f"e.g. {missing[:3]}")
        return time.monotonic() - t


def plan(cycles: int, rng: random.Random, faults: list[str] = FAULTS) -> list[str]:
    """`cycles` faults, balanced: shuffled rounds of every kind (20 cycles of the 9 kinds: each 2 or 3
    times), so every kind is exercised whatever the seed."""
    seq: list[str] = []
    while len(seq) < cycles:
        round_ = list(faults)
        rng.shuffle(round_)
        seq += round_
    return seq[:cycles]


def memory_verdict(first: Sample, last: Sample, mp_tol: float, ej_tol: float) -> list[str]:
    """Problems (empty: fine): RSS at the end above the start by more than the tolerance (fraction)."""
    bad = []
    if last.mp_rss_kb > first.mp_rss_kb * (1 + mp_tol):
        bad.append(f"node RSS {first.mp_rss_kb} -> {last.mp_rss_kb} kB (> +{mp_tol:.0%})")
    if last.ej_rss_kb > first.ej_rss_kb * (1 + ej_tol):
        bad.append(f"beam RSS {first.ej_rss_kb} -> {last.ej_rss_kb} kB (> +{ej_tol:.0%})")
    return bad


def format_results(world: World) -> str:
    lines = ["fault                 noticed  bound  recover  cut(mp/native)  note"]
    for r in world.results:
        det = f"{r.detect_s:6.2f}s" if r.detect_s is not None else "     - "
        bnd = f"{r.bound_s:5.1f}s" if r.bound_s is not None else "    - "
        lines.append(f"{r.fault:21s} {det} {bnd} {r.recover_s:7.1f}s  {r.losses_mp:5d}/{r.losses_native:<5d}    {r.note}")
    return "\n".join(lines)



# ---- an ejabberd cluster (issue 15) --------------------------------------------------------

CLUSTER_FAULTS = ["kill_cluster_node", "stop_cluster_node_long"]


@dataclass
class ClusterWorld(World):
    """Two ejabberd nodes joined into one cluster (`join_cluster`), one Megaphone node listed in both
    (two controllers), the Megaphone clients spread over both ejabberd nodes by least_sessions and
    the native clients on the first. The faults hit the second ejabberd node only; World.check()
    holds with every count summed over the cluster's nodes.

      kill_cluster_node       SIGKILL the second beam: the node closes only the clients it owned
                              (bound 5 s), keeps its listeners, its clients land on the first; restart
      stop_cluster_node_long  SIGSTOP it for 1.5 T + 2 s: the node drops it for silence (bound T + 2 s)
                              with the same outcome; after SIGCONT its Mnesia is partitioned from the
                              first's (ejabberd 23.01 does not merge them), so it is healed as an
                              operator must (mnesia:set_master_nodes([First]), restart, clear)
    """
    ej2: Ejabberd | None = None
    # A frozen node's partition as Mnesia reports it once the nodes meet again, and the late lock
    # grants that ejabberd's router gets for transactions that gave up on the frozen node meanwhile
    # (`ejabberd_router_mnesia ... Unexpected info: {mnesia_locker, Node, granted}`): ejabberd's.
    EXPECTED_ERRORS = ("not responding", "inconsistent_database", "{mnesia_locker,")

    def start(self) -> None:
        cookie = secrets.token_hex(16)
        name = unique("mpcf_")
        self.port = free_port()
        nodes = {f"{name}@localhost": self.port}
        self.ej = Ejabberd(self.base, nodes, cookie=cookie, connect_retry=1, net_ticktime=self.ticktime)
        self.ej2 = Ejabberd(self.base, nodes, cookie=cookie, connect_retry=1, net_ticktime=self.ticktime)
        self.mp = MegaphoneNode(self.base / "nodes", cookie, self.ej.helper, name=name,
                                extra_args=["--net-ticktime", str(self.ticktime)])
        self.mp.start()
        self.ej.start()
        self.ej2.start()
        self.ej2.ctl("join_cluster", self.ej.node, timeout=120)
        self._wait_attached("the cluster's nodes to attach the node")
        self._start_load("cf")
        self.log(f"baseline: {self.describe(self.baseline)}; on the second node: {self._owned_by_ej2()}")

    def stop(self) -> None:
        super().stop()
        if self.ej2 is not None:
            try:
                self.ej2.cleanup()
            except Exception as e:  # noqa: BLE001
                self.log(f"cleanup of {self.ej2!r}: {e!r}")

    def logs(self) -> str:
        return "\n".join([self.ej.logs_tail(40), self.ej2.logs_tail(40), self.mp.logs_tail(40)])

    def log_problems(self) -> list[str]:
        """World's, plus the second ejabberd node's error.log."""
        out = super().log_problems()
        try:
            text = self.ej2.error_log_path.read_text(errors="replace")
        except FileNotFoundError:
            return out
        return out + [line.strip() for line in text.splitlines()
                      if any(m in line for m in ("[error]", "[critical]"))
                      and not any(e in line for e in self.EXPECTED_ERRORS)]

    def _wait_attached(self, what: str) -> None:
        wait_for(lambda: self.mp_stats()["controllers"] == 2, 60, what, interval=0.2, on_timeout=self.logs)

    def _owned_by_ej2(self) -> int:
        per = {str(k): v["connections"] for k, v in self.mp_stats()["controller_nodes"].items()}
        return per.get(self.ej2.node, 0)

    def ej_counts(self) -> dict:
        total: dict = {}
        for ej in (self.ej, self.ej2):
            for k, v in ej.session_counts().items():
                total[str(k)] = total.get(str(k), 0) + v
        return total

    def _cluster_fault(self, freeze: bool):
        owned, node_down0 = self._owned_by_ej2(), self.mp_stats()["closed"]["node_down"]
        if owned == 0:
            raise FaultCheckFailed("no client on the second ejabberd node before the fault")
        # the first node's clients, with their losses so far: none may be cut off
        on_first = {u.decode() for u in self.ej.rpc(
            "[element(1, element(3, S)) || S <- ejabberd_sm:dirty_get_my_sessions_list()].", timeout=20)}
        kept = {c.user: c.losses for c in self.load.clients if c.user in on_first}
        loop_failures: list[str] = []
        stop_loop = threading.Event()

        def connect_loop() -> None:
            while not stop_loop.is_set():
                try:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=5):
                        pass
                except OSError as e:
                    loop_failures.append(repr(e))
                stop_loop.wait(0.1)
        loop = threading.Thread(target=connect_loop, daemon=True)
        loop.start()
        pid, t0 = self.ej2.beam_pid(), time.monotonic()
        bound = self.ticktime + 2 if freeze else 5.0
        try:
            if freeze:
                os.kill(pid, signal.SIGSTOP)
                try:
                    wait_for(lambda: self.mp_stats()["closed"]["node_down"] - node_down0 >= owned, bound + 10,
                             "the node to drop the frozen ejabberd node", interval=0.1, on_timeout=self.logs)
                    d = time.monotonic() - t0
                    left = self._long() - d
                    if left > 0:
                        time.sleep(left)  # the fault itself: frozen past its own ticktime too
                finally:
                    os.kill(pid, signal.SIGCONT)
                # healed as an operator must: a plain restart waits for its tables forever
                self.ej2.rpc(f"ok = mnesia:set_master_nodes(['{self.ej.node}']).", timeout=30)
                self.ej2.restart()
                self.ej2.rpc("ok = mnesia:set_master_nodes([]).")
            else:
                self.ej2.kill()
                wait_for(lambda: self.mp_stats()["closed"]["node_down"] - node_down0 >= owned, bound + 10,
                         "the node to drop the killed ejabberd node", interval=0.1, on_timeout=self.logs)
                d = time.monotonic() - t0
                self.ej2.start()
            self._wait_attached("the second ejabberd node to be attached again")
        finally:
            stop_loop.set()
            loop.join(10)
        if loop_failures:
            raise FaultCheckFailed(f"the listener refused connections: {loop_failures[:3]}")
        cut = [u for u, n in kept.items() if self._client(u).losses != n]
        if cut:
            raise FaultCheckFailed(f"{len(cut)} clients of the first node were cut off, e.g. {cut[:3]}")
        dropped = self.mp_stats()["closed"]["node_down"] - node_down0
        if dropped != owned:
            raise FaultCheckFailed(f"the node closed {dropped} connections for node_down, owned {owned}")
        moved = self._rebalance()
        return d, bound, (f"{owned} clients of the second node cut off, 0 of the first's {len(kept)}; no "
                          f"refusal; then {moved} clients dropped by the load to spread them again")

    def _client(self, user: str):
        return next(c for c in self.load.clients if c.user == user)

    def _rebalance(self) -> int:
        """Every Megaphone client is on the first node now (they logged in again while the second was
        away): half of them hang up, log in again and, by least_sessions, land on the second node, so
        that the next fault has clients to cut off."""
        wait_for(lambda: self.load.online() == self.load.count(), 90, "every client logged in again",
                 interval=0.2, on_timeout=lambda: self.load.offline_summary() + "\n" + self.logs())
        victims = [c for c, k in zip(self.load.clients, self.load.kinds) if k == "megaphone"][::2]

        async def drop() -> None:
            for c in victims:
                if c.writer is not None:
                    c.writer.transport.abort()
        self.load._call(drop(), 10)
        return len(victims)

    def _kill_cluster_node(self):
        return self._cluster_fault(freeze=False)

    def _stop_cluster_node_long(self):
        return self._cluster_fault(freeze=True)
