"""Faults, bounded for CI: each fault of faults.py once, under a small XMPP load.

The full run (20 seeded cycles, 100 + 20 clients) is scripts/fault-run; this file runs each fault
twice (18 kill/stop/cut/storm/probe cycles, about a minute and a half) against one world (an ejabberd 23.01 and a Megaphone node with net_ticktime 4 s, 20 clients
through the node and 5 native), then checks that neither process grew. Every fault is followed by
World.check(): all clients logged in again, one session, c2s process and mod_megaphone entry per
client, the node's non-client fds as at the start, a message ring delivered. Each side must notice
within its bound (World.inject raises otherwise).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from faults import FAULTS, HARMLESS, FaultResult, World, memory_verdict

TICKTIME = 4
N_MP, N_NATIVE = 20, 5
SEED = 6


@pytest.fixture(scope="module")
def world():
    base = Path(tempfile.mkdtemp(prefix="megaphone-it-faults-"))
    os.chmod(base, 0o755)
    w = World(base, N_MP, N_NATIVE, TICKTIME, SEED)
    failed = True
    try:
        w.start()
        yield w
        failed = False
    finally:
        w.stop()
        if failed or os.environ.get("MEGAPHONE_IT_KEEP"):
            print(f"\nfaults temp tree kept: {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def healthy(world: World) -> World:
    """Whatever an earlier failed test left: both processes running, every client back."""
    if not world.mp.alive():
        world.mp.start()
    if not world.ej.is_running():
        world.ej._after_exit()
        world.ej.start()
    world.check("before the test")
    return world


@pytest.mark.parametrize("round", [1, 2])
@pytest.mark.parametrize("fault", FAULTS)
def test_fault_is_noticed_and_everything_recovers(healthy: World, fault: str, round: int):
    r: FaultResult = healthy.inject(fault)
    print(f"{fault}: noticed {r.detect_s}, bound {r.bound_s}, recovered {r.recover_s:.1f}s, "
          f"cut off {r.losses_mp}/{r.losses_native}; {r.note}; {healthy.describe(r.sample)}")
    if fault in HARMLESS:
        assert (r.losses_mp, r.losses_native) == (0, 0)  # also checked by inject
    if fault == "probe_dist_port":
        assert r.detect_s is not None and r.detect_s <= r.bound_s
    elif fault not in HARMLESS:
        assert r.detect_s is not None and r.detect_s <= r.bound_s
        assert r.losses_mp == N_MP, "every Megaphone client was cut off and came back"
    if fault == "stop_ejabberd_long":
        # the node's own detection, not a socket error: nothing was heard for net_ticktime
        assert r.detect_s >= 0.75 * TICKTIME - 0.5
        assert "net_tick_timeouts +1" in r.note
    if fault == "stop_megaphone_long":
        assert r.detect_s >= 0.75 * TICKTIME - 0.5


def test_no_fd_or_memory_growth_after_the_faults(healthy: World):
    final = healthy.check("final")
    b = healthy.baseline
    assert final.mp_other_fds == b.mp_other_fds
    assert final.mp_connections == N_MP
    # generous: a small world, and the beam's RSS moves with its garbage collections
    assert memory_verdict(b, final, mp_tol=0.25, ej_tol=0.5) == []
