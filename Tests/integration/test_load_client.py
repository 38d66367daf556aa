"""megaphone-load (issue 14): the Swift XMPP load client against a real ejabberd 23.01 and a real
Megaphone node, in the suite's parser mode (MEGAPHONE_PARSER; scripts/test runs both).

  * 200 users log in through Megaphone in one client process, a second process holds 20 more: the
    clients' `status` counts are ejabberd's (`ejabberdctl connected_users`, ejabberd_sm);
  * a ping ejabberd sends to a session (ejabberd_router:route_iq) gets the session's result, and the
    client counts it;
  * chat messages between users of the two processes arrive as `got` lines;
  * `ping 50` gets 200 results; a kicked session counts as down;
  * `close` ends every session (ejabberd back to 0), and the end of stdin exits 0;
  * a wrong password is `failure reason=sasl-failure`;
  * the same client logs in on ejabberd's own c2s port: it is a plain XMPP client.
"""
from __future__ import annotations

import pytest

import conftest
from harness.env import XMPP_HOST
from harness.load_client import LoadClient
from harness.net import free_port
from harness.processes import wait_for

USERS = 220  # registered: xb1..xb220, password pwI


class LoadEnv(conftest.OneNodeEnv):
    def client(self, port: int, first: int, count: int, *args: str) -> LoadClient:
        return LoadClient(self.base, port, first=first, count=count, args=args)

    def sessions(self) -> int:
        """ejabberd's session count, as the session manager has it."""
        return self.ej.rpc("ejabberd_sm:connected_users_number().")

    def connected_users(self) -> list[str]:
        """`ejabberdctl connected_users`: one full JID a line."""
        return [line for line in self.ej.ctl("connected_users").stdout.splitlines() if line.strip()]

    def server_ping(self, full_jid: str) -> object:
        """ejabberd sends an XEP-0199 ping to `full_jid` and waits for the answer: the answer's type
        (`result`), or `timeout`."""
        return self.ej.rpc(f"""
            IQ = xmpp:decode(fxml_stream:parse_element(
                   <<"<iq xmlns='jabber:client' type='get' id='srv-ping' from='{XMPP_HOST}' to='{full_jid}'>"
                     "<ping xmlns='urn:xmpp:ping'/></iq>">>)),
            ejabberd_router:route_iq(IQ, srv_ping, self(), 10000),
            receive
                {{iq_reply, timeout, srv_ping}} -> timeout;
                {{iq_reply, Reply, srv_ping}} -> xmpp:get_type(Reply)
            after 15000 -> no_reply
            end.""", timeout=20)


@pytest.fixture(scope="module")
def lenv_module():
    yield from conftest.one_node_env(LoadEnv, "load", "load client integration")


@pytest.fixture
def lenv(lenv_module: LoadEnv) -> LoadEnv:
    lenv_module.ensure_healthy()
    if not getattr(lenv_module, "registered", False):
        r = lenv_module.ej.register_numbered(USERS, timeout=60)
        assert r == [], r
        lenv_module.registered = True
    wait_for(lambda: lenv_module.sessions() == 0, 10, "no session left from an earlier test")
    return lenv_module


def test_users_log_in_through_megaphone_answer_pings_chat_and_close(lenv):
    a = lenv.client(lenv.port, 1, 200)
    b = lenv.client(lenv.port, 201, 20, "--concurrency", "7", "--progress-secs", "0.5")
    before = a.status()
    assert (before["logged_in"], before["live"], before["failed"], before["down"]) == (0, 0, 0, 0)
    done_a, done_b = a.login(), b.login()
    assert (done_a["logged_in"], done_a["failed"], done_a["failures"]) == (200, 0, {}), a.logs_tail()
    assert (done_b["logged_in"], done_b["failed"]) == (20, 0), b.logs_tail()
    progress = a.lines("progress")
    assert progress and progress[-1]["logged_in"] == 200 and progress[-1]["in_flight"] == 0
    assert progress[-1]["rss_kb"] > 0

    # The clients' counts are ejabberd's: every session is routable and bound as xbI@localhost/r.
    sa, sb = a.status(), b.status()
    assert (sa["logged_in"], sa["live"], sa["failed"], sa["down"]) == (200, 200, 0, 0)
    assert (sb["logged_in"], sb["live"]) == (20, 20)
    assert lenv.sessions() == 220
    users = lenv.connected_users()
    assert len(users) == 220 and f"xb1@{XMPP_HOST}/r" in users and f"xb220@{XMPP_HOST}/r" in users
    assert lenv.node.connections() == 220  # through the node, not around it

    # A ping from the server is answered, and counted.
    assert lenv.server_ping(f"xb1@{XMPP_HOST}/r") == "result"
    assert lenv.server_ping(f"xb150@{XMPP_HOST}/r") == "result"
    assert a.status()["pings_answered"] == 2

    # Chat between the two processes, both ways, and within one.
    a.command("send 1 201 hello-b")
    b.command("send 220 2 hello-a")
    a.command("send 3 4 same-process")
    assert b.expect("got", where=lambda d: d["token"] == "hello-b") == \
        {"event": "got", "to": 201, "from": 1, "token": "hello-b"}
    assert a.expect("got", where=lambda d: d["token"] == "hello-a") == \
        {"event": "got", "to": 2, "from": 220, "token": "hello-a"}
    assert a.expect("got", where=lambda d: d["token"] == "same-process")["to"] == 4
    a.command("send 201 1 x")  # not one of a's users
    assert a.expect("send-failed") == {"event": "send-failed", "from": 201, "token": "x", "reason": "not-local"}

    # Every live session pings the server, 50 at a time.
    a.command("ping 50")
    pd = a.expect("ping-done", timeout=60)
    assert (pd["ok"], pd["failed"]) == (200, 0)

    # A session ejabberd ends is down, with the others still live.
    lenv.ej.ctl("kick_session", "xb7", XMPP_HOST, "r", "kicked")
    wait_for(lambda: a.status()["down"] == 1, 10, "the kicked session to count as down")
    s = a.status()
    assert (s["live"], s["logged_in"]) == (199, 200)
    a.command("send 7 1 late")
    assert a.expect("send-failed")["reason"] == "not-live"

    assert a.close_sessions() == 199
    assert b.close_sessions() == 20
    wait_for(lambda: lenv.sessions() == 0, 20, "ejabberd to end every session after close")
    assert a.status()["live"] == 0
    assert a.finish() == 0 and b.finish() == 0
    wait_for(lambda: lenv.node.connections() == 0, 10, "the node to close every connection")


def test_wrong_password_is_a_sasl_failure(lenv):
    c = lenv.client(lenv.port, 1, 3, "--password-prefix", "wrong")
    done = c.login()
    assert (done["logged_in"], done["failed"], done["failures"]) == (0, 3, {"sasl-failure": 3})
    assert c.status()["failed"] == 3
    assert lenv.sessions() == 0
    assert c.finish() == 0


def test_unknown_users_and_a_closed_port_fail_with_their_reason(lenv):
    c = lenv.client(lenv.port, USERS + 1, 2, "--login-timeout", "20")
    done = c.login()
    assert done["failures"] == {"sasl-failure": 2}
    assert c.finish() == 0
    closed = lenv.client(free_port(), 1, 2)
    done = closed.login()
    assert done["failures"] == {"connect-refused": 2}
    closed.command("no-such-command 1")
    assert closed.expect("error")["args"] == ["unknown-command", "no-such-command", "1"]
    assert closed.finish() == 0


def test_logs_in_on_ejabberds_own_listener(lenv):
    """The same client against ejabberd's native c2s port: a plain XMPP client, no Megaphone needed."""
    c = lenv.client(lenv.ej.c2s_port, 11, 5)
    done = c.login()
    assert (done["logged_in"], done["failed"]) == (5, 0), c.logs_tail()
    assert lenv.sessions() == 5
    assert lenv.node.connections() == 0
    assert lenv.server_ping(f"xb12@{XMPP_HOST}/r") == "result"
    c.command("ping 2")
    assert c.expect("ping-done")["ok"] == 5
    c.command("send 11 15 native")
    assert c.expect("got") == {"event": "got", "to": 15, "from": 11, "token": "native"}
    assert c.finish() == 0
    wait_for(lambda: lenv.sessions() == 0, 20, "ejabberd to end the sessions at the client's exit")
