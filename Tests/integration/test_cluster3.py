"""Issue 15 with three ejabberd nodes: the same two Megaphone nodes in front of a 3-node ejabberd
23.01 cluster (test_cluster.py's ClusterEnv, built with n_ej=3), so each Megaphone node has three
controllers.

  * 200 users log in through the two Megaphone nodes and spread over the three ejabberd nodes
    (least_sessions), chat with each other across every pair of nodes and with a native user on
    each; `megaphone_status` on every node agrees with the Megaphone nodes' counts;

Only what a third node adds is here: the fault tests of test_cluster.py (SIGKILL, SIGSTOP, rolling
restart, config mismatch) are about one node of several and run with two. Runs in the suite's parser
mode (MEGAPHONE_PARSER); `scripts/test-integration -k test_cluster3`.
"""
from __future__ import annotations

import pytest

from test_cluster import ClusterEnv, running_cluster, spread_and_chat


@pytest.fixture(scope="module")
def cluster3_module():
    with running_cluster(3, prefix="mpc3") as env:
        yield env


@pytest.fixture
def cluster3(cluster3_module: ClusterEnv):
    cluster3_module.ensure_healthy()
    yield cluster3_module
    cluster3_module.stop_extra()


def test_users_spread_over_three_ejabberd_nodes_and_chat_across_them(cluster3: ClusterEnv):
    spread_and_chat(cluster3)

