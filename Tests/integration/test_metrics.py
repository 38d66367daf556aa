"""The metrics endpoint (`--metrics-listen`) scraped by a real Prometheus.

Debian's `prometheus` binary runs on loopback, by PID, with a temp TSDB and a scrape config that
names the node's metrics port (1 s interval). A controller in a plain `erl` node opens a tcp
listener with `megaphone:start` and echoes every chunk back. After a known number of client
connections and bytes, the test asks Prometheus's HTTP API (`/api/v1/query`) for the node's series
and checks them against the known numbers and against what `megaphone:stats/1` reports.
"""

import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from harness import MEGAPHONE_EBIN, Abort, ErlHelper, MegaphoneNode, atom, free_port, make_test_pki, wait_for

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
SCRAPE_INTERVAL = "1s"

# Each client sends an HTTP request for /metrics to the clients' listener: the node must treat it
# as client bytes (echoed back by the controller), never answer it with metrics.
CLIENT_SIZES = [100, 2_000, 30_000, 65_536 + 17, 5]
CLOSED_BY_CLIENT = 3   # the first three hang up; the rest stay open
TLS_CLIENTS = 2        # direct TLS clients that complete their handshake and stay open
TLS_FAILED = 1         # one that sends garbage instead of a ClientHello

# The controller: arms every connection, echoes each chunk and arms again.
CONTROLLER = """
Node = {node},
Parent = self(),
Pid = spawn(fun() ->
    {{ok, #{{listeners := [{{tcp, _, Port}}, {{tls, _, TLSPort}}]}}}} =
        megaphone:start(Node, [{{listen, [{{tcp, {{127,0,0,1}}, 0}}, {{tls, {{127,0,0,1}}, 0}}]}},
                               {{certfile, "{certfile}"}}]),
    Parent ! {{port, {{Port, TLSPort}}}},
    Loop = fun L() ->
        receive
            {{megaphone_connect, _, Id, _, _, _}} ->
                megaphone:get_data(Node, Id),
                L();
            {{tcp, Id, Bin}} ->
                megaphone:send_data(Node, Id, Bin),
                megaphone:get_data(Node, Id),
                L();
            _ ->
                L()
        end
    end,
    Loop()
end),
register(metrics_controller, Pid),
receive {{port, P}} -> P after 10000 -> timeout end.
"""


def client_payload(size: int) -> bytes:
    head = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    return (head + b"x" * size)[:size] if size >= len(head) else b"y" * size


class Prometheus:
    """Debian's prometheus server on loopback with its own config and TSDB, stopped by PID."""

    def __init__(self, workdir: Path, target: str):
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.config = self.dir / "prometheus.yml"
        self.config.write_text(
            "global:\n"
            f"  scrape_interval: {SCRAPE_INTERVAL}\n"
            f"  evaluation_interval: {SCRAPE_INTERVAL}\n"
            "scrape_configs:\n"
            "  - job_name: megaphone\n"
            f"    scrape_interval: {SCRAPE_INTERVAL}\n"
            f"    scrape_timeout: {SCRAPE_INTERVAL}\n"
            "    static_configs:\n"
            f"      - targets: ['{target}']\n")
        self.log_path = self.dir / "prometheus.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [PROMETHEUS, f"--config.file={self.config}", f"--storage.tsdb.path={self.dir / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=self.dir, start_new_session=True)
        wait_for(self._ready, 30, "prometheus to be ready", on_timeout=self.logs)

    def _ready(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise Abort(f"prometheus exited\n{self.logs()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def query(self, expr: str) -> list[dict]:
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=5) as r:
            body = json.load(r)
        assert body["status"] == "success", body
        return body["data"]["result"]

    def series(self, expr: str) -> dict[tuple, float]:
        """{(name, (label, value), ...): value} for an instant query, without job/instance."""
        out = {}
        for s in self.query(expr):
            labels = {k: v for k, v in s["metric"].items() if k not in ("job", "instance")}
            name = labels.pop("__name__", "")
            out[(name, *sorted(labels.items()))] = float(s["value"][1])
        return out

    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self) -> None:
        p, self.proc = self.proc, None
        if p is None or p.poll() is not None:
            return
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGKILL)
            p.wait(10)


@pytest.fixture
def metrics_setup(tmp_path):
    if not os.path.exists(PROMETHEUS):
        pytest.fail("prometheus is not installed (scripts/test-integration installs it)", pytrace=False)
    cookie = secrets.token_hex(16)
    ctl = ErlHelper(cookie, tmp_path / "ctl", code_paths=[MEGAPHONE_EBIN])
    metrics_port = free_port()
    node = MegaphoneNode(tmp_path / "nodes", cookie, ctl, threads=2,
                         extra_args=["--metrics-listen", f"127.0.0.1:{metrics_port}"])
    prom = Prometheus(tmp_path / "prometheus", f"127.0.0.1:{metrics_port}")
    pki = make_test_pki(tmp_path / "pki")
    try:
        ctl.start()
        node.start()
        prom.start()
        yield ctl, node, prom, metrics_port, pki
    finally:
        prom.stop()
        node.cleanup()
        ctl.stop()


def echo(sock: socket.socket, payload: bytes) -> bytes:
    sock.sendall(payload)
    got = b""
    deadline = time.monotonic() + 10
    while len(got) < len(payload) and time.monotonic() < deadline:
        chunk = sock.recv(1 << 16)
        if not chunk:
            break
        got += chunk
    return got


def test_prometheus_scrapes_what_stats_reports(metrics_setup):
    ctl, node, prom, metrics_port, pki = metrics_setup
    ports = ctl.local(CONTROLLER.format(node=atom(node.node), certfile=pki.server.bundle), timeout=20)
    assert isinstance(ports, tuple), ports
    port, tls_port = ports

    # The endpoint is up for Prometheus before any client (controllers = 1 once start was sent).
    wait_for(lambda: prom.series('up{job="megaphone"}').get(("up",)) == 1.0, 20,
             "prometheus to scrape the node", on_timeout=prom.logs)

    # A silent and a garbage HTTP client on the metrics port for the whole test: scrapes go on.
    silent = socket.create_connection(("127.0.0.1", metrics_port))
    garbage = socket.create_connection(("127.0.0.1", metrics_port))
    garbage.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(64))

    clients = []
    try:
        for size in CLIENT_SIZES:
            s = socket.create_connection(("127.0.0.1", port))
            s.settimeout(10)
            clients.append(s)
            payload = client_payload(size)
            assert echo(s, payload) == payload, "the clients' listener gives client bytes, never metrics"
        for s in clients[:CLOSED_BY_CLIENT]:
            s.close()
        tls = ssl.create_default_context(cafile=str(pki.ca))
        for i in range(TLS_CLIENTS):
            raw = socket.create_connection(("127.0.0.1", tls_port))
            s = tls.wrap_socket(raw, server_hostname="localhost")
            s.settimeout(10)
            clients.append(s)
            assert echo(s, b"<tls %d/>" % i) == b"<tls %d/>" % i
        bad = socket.create_connection(("127.0.0.1", tls_port))
        clients.append(bad)
        bad.sendall(b"this is not a ClientHello" * 4)
        open_tcp = len(CLIENT_SIZES) - CLOSED_BY_CLIENT
        open_clients = open_tcp + TLS_CLIENTS
        wait_for(lambda: node.stats()["connections"] == open_clients
                 and node.stats()["closed"]["client_closed"] == CLOSED_BY_CLIENT
                 and node.stats()["closed"]["tls_error"] == TLS_FAILED, 10,
                 "the node to see the hang-ups and the failed handshake")

        stats = node.stats()
        total = sum(CLIENT_SIZES) + sum(len(b"<tls %d/>" % i) for i in range(TLS_CLIENTS))
        # The known numbers, as the node counts them.
        assert stats["accepted"] == len(CLIENT_SIZES) + TLS_CLIENTS + TLS_FAILED
        assert stats["connections"] == open_clients
        assert stats["connections_by_transport"] == {"tcp": open_tcp, "starttls": 0, "tls": TLS_CLIENTS}
        assert stats["tls_handshakes"] == TLS_CLIENTS
        assert stats["bytes_in"] == total
        assert stats["bytes_out"] == total
        assert stats["controllers"] == 1

        expected = {
            ("megaphone_connections", ("transport", "tcp")): open_tcp,
            ("megaphone_connections", ("transport", "starttls")): 0,
            ("megaphone_connections", ("transport", "tls")): TLS_CLIENTS,
            # Every chunk a client sent reached the controller through the distribution link, so each
            # has its read-to-send time in the histogram.
            ("megaphone_read_to_send_seconds_count",): stats["chunks_delivered"],
            ("megaphone_tls_handshakes_total", ("result", "ok")): stats["tls_handshakes"],
            ("megaphone_connections_accepted_total",): stats["accepted"],
            ("megaphone_bytes_received_total",): stats["bytes_in"],
            ("megaphone_bytes_sent_total",): stats["bytes_out"],
            ("megaphone_chunks_delivered_total",): stats["chunks_delivered"],
            ("megaphone_controllers",): stats["controllers"],
            ("megaphone_dist_queue_bytes",): stats["dist_queue_bytes"],
            ("megaphone_dist_queue_peak_bytes",): stats["dist_queue_peak"],
            ("megaphone_dist_handshakes_total", ("result", "ok")): stats["dist_handshakes"],
            ("megaphone_dist_handshakes_total", ("result", "failed")): stats["dist_handshakes_failed"],
            ("megaphone_tls_handshakes_total", ("result", "failed")): stats["closed"]["tls_error"],
        }
        for reason, count in stats["closed"].items():
            expected[("megaphone_connections_closed_total", ("reason", str(reason)))] = count
        assert len([k for k in expected if k[0] == "megaphone_connections_closed_total"]) >= 17

        seen: dict = {}

        def matches() -> bool:
            seen.clear()
            seen.update(prom.series('{job="megaphone", __name__=~"megaphone_.*"}'))
            return all(seen.get(k) == float(v) for k, v in expected.items())

        wait_for(matches, 15, "prometheus to hold the values that megaphone:stats/1 reports",
                 on_timeout=lambda: "\n".join(f"{k}: prometheus {seen.get(k)!r}, stats {v!r}"
                                              for k, v in expected.items() if seen.get(k) != float(v)))

        # The process basics are there and plausible.
        rss = prom.series('process_resident_memory_bytes{job="megaphone"}')[("process_resident_memory_bytes",)]
        assert rss > 1 << 20
        fds = prom.series('process_open_fds{job="megaphone"}')[("process_open_fds",)]
        assert fds >= 10
        start = prom.series('process_start_time_seconds{job="megaphone"}')[("process_start_time_seconds",)]
        assert time.time() - 600 < start <= time.time()
        assert prom.series('up{job="megaphone"}')[("up",)] == 1.0
    finally:
        for s in clients + [silent, garbage]:
            s.close()
