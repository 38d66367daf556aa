"""bench/xmpp --cluster K: forming a K-node ejabberd cluster out of isolated ejabberd instances
(harness.ejabberd.Ejabberd, one cookie, each its own name, spool, ports) with `ejabberdctl
join_cluster`, and waiting until Megaphone nodes have every ejabberd node as a controller.

Kept here rather than in Tests/integration/harness, whose cluster helpers (test_cluster.py) are
being reworked at the same time; the two can be merged later. Every wait is on a condition."""
from __future__ import annotations

from typing import Sequence

from harness.ejabberd import Ejabberd
from harness.megaphone_node import MegaphoneNode
from harness.processes import wait_for


def running_db_nodes(ej: Ejabberd) -> list[str]:
    """The Mnesia nodes this ejabberd node runs with (itself included), sorted."""
    return sorted(str(n) for n in ej.rpc("mnesia:system_info(running_db_nodes).", timeout=10))


def form_cluster(ejs: Sequence[Ejabberd], log=lambda _m: None, timeout: float = 120) -> None:
    """Starts every instance, then joins the second and later ones to the first (`ejabberdctl
    join_cluster`, which restarts ejabberd in the joining node, not its beam, and copies the first
    node's tables), and waits until every node runs Mnesia with all of them."""
    for ej in ejs:
        ej.start()
    first = ejs[0]
    for ej in ejs[1:]:
        log(f"ejabberdctl join_cluster: {ej.node} joins {first.node}")
        ej.ctl("join_cluster", first.node, timeout=timeout)
    everyone = sorted(ej.node for ej in ejs)
    wait_for(lambda: all(running_db_nodes(ej) == everyone for ej in ejs), timeout,
             f"the ejabberd nodes {everyone} to run one Mnesia cluster")
    # The joining node's ejabberd restarted: wait until each is started again.
    wait_for(lambda: all(ej.is_started() for ej in ejs), timeout, "every ejabberd node to be started")


def controllers(mp: MegaphoneNode) -> int:
    """How many controllers (ejabberd nodes) the Megaphone node has attached (stats `controllers`)."""
    return int(mp.stats(timeout=2).get("controllers", 0))


def await_controllers(mps: Sequence[MegaphoneNode], k: int, timeout: float = 60) -> None:
    """Waits until every Megaphone node reports k controllers and open listeners."""
    wait_for(lambda: all(controllers(mp) == k and mp.listening() for mp in mps), timeout,
             f"every Megaphone node to have {k} controllers (one per ejabberd node)")
