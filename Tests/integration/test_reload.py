"""SIGHUP and the options file (`megaphone --config FILE`): the log level changes while the node runs.

The probe is a message the node cannot read, sent to it by name from a plain `erl` node: the node
counts it (`malformed_requests` in `megaphone:stats/1`) and logs "Malformed request" at debug only.
So whether the line appears after a counted probe says which level the node runs at.
"""

import secrets

import pytest

from harness import ErlHelper, MegaphoneNode, MEGAPHONE_EBIN, atom, wait_for

PROBE_LINE = "Malformed request"


class Reloadable:
    def __init__(self, tmp_path, file_text: str, log_level: str | None):
        cookie = secrets.token_hex(16)
        self.ctl = ErlHelper(cookie, tmp_path / "ctl", code_paths=[MEGAPHONE_EBIN])
        self.config = tmp_path / "megaphone.conf"
        self.config.write_text(file_text)
        self.node = MegaphoneNode(tmp_path / "nodes", cookie, self.ctl, log_level=log_level,
                                  extra_args=["--config", str(self.config)])
        self.probes = 0

    def log(self) -> str:
        return self.node.log_path.read_text(errors="replace")

    def probe(self) -> None:
        """One unreadable message, waited for until the node has counted it."""
        self.ctl.local(f"erlang:send({{megaphone, {atom(self.node.node)}}}, not_a_request), ok.")
        self.probes += 1
        wait_for(lambda: self.node.stats()["malformed_requests"] == self.probes, 10,
                 "the node to count the probe")

    def reload(self, file_text: str, expect: str) -> None:
        before = self.log().count(expect)
        self.config.write_text(file_text)
        self.node.sighup()
        wait_for(lambda: self.log().count(expect) > before, 10, f"{expect!r} in the log",
                 on_timeout=self.node.logs_tail)


@pytest.fixture
def reloadable(tmp_path, request):
    text, level = request.param
    r = Reloadable(tmp_path, text, level)
    try:
        r.ctl.start()
        r.node.start()
        yield r
    finally:
        r.node.cleanup()
        r.ctl.stop()


@pytest.mark.parametrize("reloadable", [("# the node's options\nlog-level = info\nthreads = 2\n", None)],
                         indirect=True)
def test_sighup_sets_the_log_level_from_the_options_file(reloadable):
    r = reloadable
    r.probe()
    assert PROBE_LINE not in r.log(), "at info the probe is not logged"

    r.reload("log-level = debug\nthreads = 2\n", "SIGHUP: log level set")
    r.probe()
    assert r.log().count(PROBE_LINE) == 1, "at debug it is"

    # Back to warning, and an option that only a restart can apply: named in a warning.
    r.reload("log-level = warning\nthreads = 1\n", "changed options take effect at the next start")
    assert "options=threads" in r.log()
    r.probe()
    assert r.log().count(PROBE_LINE) == 1, "at warning it is not logged again"

    # A file that does not parse changes nothing: still warning.
    r.reload("log-level debug\n", "cannot read the options file")
    r.probe()
    assert r.log().count(PROBE_LINE) == 1
    assert r.node.alive()


@pytest.mark.parametrize("reloadable", [("log-level = warning\n", "debug")], indirect=True)
def test_the_command_line_wins_over_the_options_file(reloadable):
    r = reloadable
    r.probe()
    assert r.log().count(PROBE_LINE) == 1, "--log-level debug on the command line beats the file's warning"
    r.reload("log-level = error\n", "the command line wins over the options file")
    r.probe()
    assert r.log().count(PROBE_LINE) == 2, "and a reload does not change it"
