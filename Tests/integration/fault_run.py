"""The scripted fault run (scripts/fault-run): a seeded sequence of faults under XMPP load.

See faults.py for the world, the faults and the checks. Prints the seed first, one line per fault as
it happens, and a summary; exit status 0 when every check held, 1 otherwise. Bounded in time: no
new fault starts after --seconds.
"""
from __future__ import annotations

import argparse
import os
import random
import secrets
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from faults import CLUSTER_FAULTS, FAULTS, ClusterWorld, World, format_results, memory_verdict, plan  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(prog="scripts/fault-run", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cycles", type=int, default=20, help="faults to inject (default 20)")
    ap.add_argument("--clients", type=int, default=100, help="clients through Megaphone (default 100)")
    ap.add_argument("--native", type=int, default=None, help="clients on ejabberd's own port (default clients/5)")
    ap.add_argument("--seconds", type=float, default=900, help="start no fault after this (default 900)")
    ap.add_argument("--ticktime", type=int, default=6, help="net_ticktime of every node, s (default 6)")
    ap.add_argument("--seed", type=int, default=None, help="seed (default: random, printed)")
    ap.add_argument("--faults", default=None, help="comma-separated subset of " + ",".join(FAULTS)
                    + " (with --cluster: of " + ",".join(CLUSTER_FAULTS) + "); default: all of them")
    ap.add_argument("--cluster", action="store_true",
                    help="two ejabberd nodes in one cluster sharing the Megaphone node; faults hit the second")
    ap.add_argument("--mp-rss-tolerance", type=float, default=0.25, help="node RSS growth allowed (0.25)")
    ap.add_argument("--ej-rss-tolerance", type=float, default=0.25, help="beam RSS growth allowed (0.25)")
    ap.add_argument("--keep", action="store_true", help="keep the temp tree")
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else secrets.randbelow(1 << 31)
    native = args.native if args.native is not None else max(1, args.clients // 5)
    known = CLUSTER_FAULTS if args.cluster else FAULTS
    faults = [f for f in (args.faults or ",".join(known)).split(",") if f]
    unknown = set(faults) - set(known)
    if unknown:
        ap.error(f"unknown faults: {sorted(unknown)}")
    print(f"fault-run: seed {seed}, {args.cycles} cycles, {args.clients} Megaphone + {native} native clients, "
          f"net_ticktime {args.ticktime}s, at most {args.seconds:.0f}s"
          f"{', a 2-node ejabberd cluster' if args.cluster else ''}", flush=True)
    rng = random.Random(seed)
    base = Path(tempfile.mkdtemp(prefix="megaphone-faults-"))
    os.chmod(base, 0o755)
    t_start = time.monotonic()
    world = (ClusterWorld if args.cluster else World)(base, args.clients, native, args.ticktime, seed,
                  log=lambda m: print(f"[{time.monotonic() - t_start:7.1f}s] {m}", flush=True))
    ok = False
    try:
        world.start()
        for i, fault in enumerate(plan(args.cycles, rng, faults), 1):
            if time.monotonic() - t_start > args.seconds:
                world.log(f"time is up after {i - 1} cycles")
                break
            pause = rng.uniform(0.5, 4.0)
            time.sleep(pause)  # a random point in the load: clients chatter meanwhile
            r = world.inject(fault)
            det = f"noticed in {r.detect_s:.2f}s (bound {r.bound_s:.1f}s), " if r.detect_s is not None else ""
            world.log(f"cycle {i}: {fault} after {pause:.1f}s of load: {det}all clients back in "
                      f"{r.recover_s:.1f}s, cut off {r.losses_mp} Megaphone / {r.losses_native} native. "
                      f"{r.note} | {world.describe(r.sample)}")
        final = world.check("final")
        problems = memory_verdict(world.baseline, final, args.mp_rss_tolerance, args.ej_rss_tolerance)
        print("\n" + format_results(world))
        b = world.baseline
        print(f"\nnode fds:  {b.mp_fds} ({b.mp_other_fds} non-client) at the start, {final.mp_fds} "
              f"({final.mp_other_fds} non-client) at the end, {final.mp_connections} clients")
        print(f"node RSS:  {b.mp_rss_kb} kB -> {final.mp_rss_kb} kB (pid {b.mp_pid} -> {final.mp_pid})")
        print(f"beam RSS:  {b.ej_rss_kb} kB -> {final.ej_rss_kb} kB (pid {b.ej_pid} -> {final.ej_pid})")
        for who, pid_of, rss_of in (("node", lambda x: x.mp_pid, lambda x: x.mp_rss_kb),
                                    ("beam", lambda x: x.ej_pid, lambda x: x.ej_rss_kb)):
            for pid, (s0, s1, n) in _lifetimes(world.samples, pid_of).items():
                print(f"  {who} pid {pid} over {n} checks ({s0.label} .. {s1.label}): "
                      f"{rss_of(s0)} -> {rss_of(s1)} kB")
        print(f"logins {world.load.logins()}, chatter sent {world.load.chatter_sent} "
              f"received {world.load.chatter_received}")
        for p in problems:
            print(f"MEMORY: {p}")
        ok = not problems
        print(f"\nfault-run: {'PASS' if ok else 'FAIL'} (seed {seed}, {len(world.results)} faults, "
              f"{time.monotonic() - t_start:.0f}s)")
    except Exception as e:  # noqa: BLE001 - a failed check or a harness error: reported, exit 1
        traceback.print_exc()
        print("\n" + format_results(world))
        first = (str(e).splitlines() or [type(e).__name__])[0]
        print(f"\nfault-run: FAIL (seed {seed}, after {len(world.results)} faults): {first}")
    finally:
        world.stop()
        if ok and not args.keep:
            shutil.rmtree(base, ignore_errors=True)
        else:
            print(f"temp tree kept: {base}")
    return 0 if ok else 1


def _lifetimes(samples, pid_of):
    """pid -> (first sample, last sample, number of samples), for processes checked more than once."""
    out = {}
    for s in samples:
        first, _, n = out.get(pid_of(s), (s, s, 0))
        out[pid_of(s)] = (first, s, n + 1)
    return {p: v for p, v in out.items() if v[2] > 1}


if __name__ == "__main__":
    sys.exit(main())
