"""Where things are: the repository, the Megaphone binary and beams, the load client, ejabberdctl, the
XMPP domain and the epmd port (MEGAPHONE_BIN, MEGAPHONE_EBIN, MEGAPHONE_LOAD_BIN and ERL_EPMD_PORT
override the defaults)."""
from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
# Tests/integration: megaphone_it_helper.erl lives there.
HERE = Path(__file__).resolve().parents[1]
MEGAPHONE_BIN = Path(os.environ.get("MEGAPHONE_BIN", ROOT / ".build" / "debug" / "megaphone"))
MEGAPHONE_LOAD_BIN = Path(os.environ.get("MEGAPHONE_LOAD_BIN", ROOT / ".build" / "debug" / "megaphone-load"))
MEGAPHONE_EBIN = Path(os.environ.get("MEGAPHONE_EBIN", ROOT / "_build" / "default" / "lib" / "megaphone" / "ebin"))
EJABBERDCTL = "/usr/sbin/ejabberdctl"
EJABBERD_USER = "ejabberd"
XMPP_HOST = "localhost"
EPMD_PORT = int(os.environ.get("ERL_EPMD_PORT", "4369"))
