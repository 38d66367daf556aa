"""Integration-test harness: an isolated ejabberd 23.01 and real Megaphone (Swift) nodes.

Everything here starts processes by PID and stops them by PID: never by name, never
`ejabberdctl stopped`, never `epmd -kill` (see ../shared/research/ejabberd-23.01.md, section 7).
Everything started is registered and torn down at interpreter exit too, so a failing or
interrupted test leaves nothing running.

One module per job:
  env             where things are: ROOT, MEGAPHONE_BIN, MEGAPHONE_EBIN, EJABBERDCTL, XMPP_HOST, EPMD_PORT
  errors          HarnessError, Abort (stops a wait_for at once)
  processes       wait_for, unique, and processes by PID through /proc: pid_alive, kill_pid, vm_rss
  files           write_private_file, chown_tree, tail
  net             free_port(), free_port_range(n), can_connect, hang_up_storm, epmd_names
  terms           Erlang source for Python values (atom, binary) and binary_to_term
  registry        what was started, torn down at exit (cleanup_all)
  erl_helper      ErlHelper: one long-lived hidden Erlang node; evaluates expressions locally or in a node
  ejabberd        Ejabberd: $RUN tree, ejabberd.yml / ejabberdctl.cfg, start/stop/kill/restart, ctl, rpc
  megaphone_node  MegaphoneNode: the Swift binary: start/stop/kill/restart, sighup, fd_count, stats
  pki             make_test_pki: root CA -> intermediate CA -> server certs for localhost (openssl CLI)
  s_client        s_client: runs `openssl s_client` (direct TLS or -starttls xmpp), picks its output apart

This file re-exports the names callers used when the harness was one module (`from harness import
Ejabberd`, `harness.XMPP_HOST`); new code may import from the module that does the job.
"""
from __future__ import annotations

from .ejabberd import ALLOC_FLAGS, Ejabberd, chown_tree
from .env import (EJABBERD_USER, EJABBERDCTL, EPMD_PORT, HERE, MEGAPHONE_BIN, MEGAPHONE_EBIN, ROOT,
                  XMPP_HOST)
from .erl_helper import ErlError, ErlHelper
from .errors import Abort, HarnessError
from .files import tail, write_private_file
from .megaphone_node import MegaphoneNode
from .net import can_connect, epmd_names, free_port, free_port_range, hang_up_storm, port_free
from .pki import ServerCert, TestPKI, cert_serial, make_test_pki
from .processes import kill_pid, pid_alive, pids_with_arg_pair, unique, vm_rss, wait_for
from .registry import cleanup_all
from .s_client import SClient, s_client
from .terms import Atom, ImproperList, Opaque, atom, binary, binary_to_term, proplist

__all__ = [
    "ROOT", "HERE", "MEGAPHONE_BIN", "MEGAPHONE_EBIN", "EJABBERDCTL", "EJABBERD_USER", "XMPP_HOST",
    "EPMD_PORT",
    "HarnessError", "Abort",
    "wait_for", "unique", "pid_alive", "kill_pid", "pids_with_arg_pair", "vm_rss",
    "write_private_file", "chown_tree", "tail",
    "free_port", "free_port_range", "port_free", "can_connect", "hang_up_storm", "epmd_names",
    "atom", "binary", "Atom", "Opaque", "ImproperList", "binary_to_term", "proplist",
    "cleanup_all",
    "ErlError", "ErlHelper", "Ejabberd", "MegaphoneNode",
    "ServerCert", "TestPKI", "make_test_pki", "cert_serial", "SClient", "s_client",
]
