"""The bound on client bytes waiting for the distribution link (`--dist-queue-limit`).

The controller is a real `erl` node in its own OS process; stopping it with SIGSTOP is "ejabberd, or the
link to it, slower than the clients": its socket fills, the node's distribution thread blocks on it,
and the reactors must stop reading client sockets instead of queueing without bound. After SIGCONT
every byte arrives, in order, and the reads go on.
"""

import os
import secrets
import select
import signal
import socket
import threading
import time
import zlib

import pytest

from harness.env import MEGAPHONE_EBIN
from harness.erl_helper import ErlHelper
from harness.megaphone_node import MegaphoneNode
from harness.processes import wait_for
from harness.terms import atom

CLIENTS = 400
PAYLOAD = 256 * 1024         # per client: more than one chunk plus what the kernel buffers hold
SNDBUF = 16 * 1024           # the clients' socket send buffer, fixed (no autotuning)
LIMIT = 1 << 20              # --dist-queue-limit
MAX_CHUNK = 65_536
THREADS = 2

# The controller: arms every connection, re-arms after each chunk, keeps a byte count and a CRC-32
# per connection, and answers `{counts, From}`.
CONTROLLER = """
Node = {node},
Parent = self(),
Pid = spawn(fun() ->
    {{ok, #{{listeners := [{{tcp, _, Port}}]}}}} =
        megaphone:start(Node, [{{listen, [{{tcp, {{127,0,0,1}}, 0}}]}}, {{max_chunk, {chunk}}}]),
    Parent ! {{port, Port}},
    Loop = fun L(Counts) ->
        receive
            {{megaphone_connect, _, Id, _, _, _}} ->
                megaphone:get_data(Node, Id),
                L(Counts#{{Id => {{0, 0}}}});
            {{tcp, Id, Bin}} ->
                {{N, Crc}} = maps:get(Id, Counts, {{0, 0}}),
                megaphone:get_data(Node, Id),
                L(Counts#{{Id => {{N + byte_size(Bin), erlang:crc32(Crc, Bin)}}}});
            {{counts, From}} ->
                From ! {{counts, Counts}},
                L(Counts);
            _ ->
                L(Counts)
        end
    end,
    Loop(#{{}})
end),
register(dq_controller, Pid),
receive {{port, P}} -> P after 10000 -> timeout end.
"""

COUNTS = """
dq_controller ! {counts, self()},
receive {counts, C} -> [{N, Crc} || {_, {N, Crc}} <- lists:sort(maps:to_list(C))] after 5000 -> timeout end.
"""


COMMON = bytes(range(256)) * (PAYLOAD // 256)


def header(i: int) -> bytes:
    return i.to_bytes(4, "big") * 16


def payload(i: int) -> bytes:
    """What client i sends: its own 64-byte header, then bytes all clients share (one copy in memory)."""
    return header(i) + COMMON[len(header(i)):]


class Pump(threading.Thread):
    """Writes each client's payload as fast as the kernel takes it; `progress` counts bytes written."""

    def __init__(self, socks: list[socket.socket]):
        super().__init__(daemon=True)
        self.socks = socks
        common = memoryview(COMMON)
        # Per client: the segments still to write.
        self.left = {s.fileno(): [memoryview(header(i)), common[len(header(i)):]] for i, s in enumerate(socks)}
        self.by_fd = {s.fileno(): s for s in socks}
        self.progress = 0
        self.error: Exception | None = None
        self.stop = False

    def run(self) -> None:
        try:
            while self.left and not self.stop:
                _, writable, _ = select.select([], [self.by_fd[fd] for fd in self.left], [], 0.2)
                for s in writable:
                    fd = s.fileno()
                    segments = self.left[fd]
                    try:
                        n = s.send(segments[0])
                    except BlockingIOError:
                        continue
                    self.progress += n
                    segments[0] = segments[0][n:]
                    if not segments[0]:
                        segments.pop(0)
                    if not segments:
                        del self.left[fd]
        except Exception as e:  # surfaced by the test
            self.error = e


@pytest.fixture
def stopped_controller_setup(tmp_path):
    cookie = secrets.token_hex(16)
    ctl = ErlHelper(cookie, tmp_path / "ctl", code_paths=[MEGAPHONE_EBIN])
    node = MegaphoneNode(tmp_path / "nodes", cookie, ctl, threads=THREADS, log_level="warning",
                         extra_args=["--dist-queue-limit", str(LIMIT)])
    socks: list[socket.socket] = []
    try:
        ctl.start()
        node.start()
        yield ctl, node, socks
    finally:
        if ctl.proc and ctl.proc.poll() is None:
            os.kill(ctl.proc.pid, signal.SIGCONT)
        for s in socks:
            s.close()
        node.kill()
        ctl.stop()


def test_a_stalled_controller_stops_client_reads_at_the_limit(stopped_controller_setup):
    ctl, node, socks = stopped_controller_setup
    port = ctl.local(CONTROLLER.format(node=atom(node.node), chunk=MAX_CHUNK), timeout=20)
    assert isinstance(port, int), port
    for _ in range(CLIENTS):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SNDBUF)
        s.connect(("127.0.0.1", port))
        s.setblocking(False)
        socks.append(s)
    wait_for(lambda: len(ctl.local(COUNTS)) == CLIENTS, 20, "every connection armed")
    rss_before = node.rss_bytes()

    os.kill(ctl.proc.pid, signal.SIGSTOP)
    pump = Pump(socks)
    pump.start()
    # Wait until the clients can write no more: the node has stopped reading them.
    last, still_since = -1, time.monotonic()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if pump.progress != last:
            last, still_since = pump.progress, time.monotonic()
        elif time.monotonic() - still_since > 1.5:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the clients never stopped making progress")
    assert pump.error is None, pump.error
    assert pump.left, "every payload was taken while the controller was stopped: nothing pushed back"
    rss_stalled = node.rss_bytes()

    os.kill(ctl.proc.pid, signal.SIGCONT)
    total = CLIENTS * PAYLOAD
    wait_for(lambda: sum(n for n, _ in ctl.local(COUNTS)) == total, 60, "every byte at the controller")
    pump.join(10)
    assert not pump.left and pump.error is None
    counts = ctl.local(COUNTS)
    expected = sorted((PAYLOAD, zlib.crc32(payload(i))) for i in range(CLIENTS))
    assert sorted(counts) == expected, "bytes lost, duplicated or reordered"

    stats = node.stats()
    assert stats["reads_paused"] > 0
    # One chunk per reactor may pass the check at once.
    assert stats["dist_queue_peak"] <= LIMIT + THREADS * MAX_CHUNK, stats["dist_queue_peak"]
    assert stats["dist_queue_bytes"] == 0
    # The queue held what it may, and no more: RSS grew by far less than the 100 MB the clients push.
    assert rss_stalled - rss_before < 16 << 20, (rss_before, rss_stalled)
