#!/usr/bin/python3
"""Unit test of bench/xmpp_plot.py on fixed results (no ejabberd, no Swift; a few seconds): every
chart the results have data for is written as a PNG, and only those (--only, --no-native).
Run by scripts/test with Debian's python3 (python3-matplotlib):
    /usr/bin/python3 bench/test_xmpp_plot.py"""
from __future__ import annotations

import copy
import json
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import xmpp_plot  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"


def mem_run(scale: float) -> dict:
    parts = {"total": 6000 * scale, "processes": 3500 * scale, "system": 2500 * scale,
             "binary": 300 * scale, "ets": 900 * scale, "atom": 0, "code": 0}
    return {"n": 10000, "logins_s": 3000, "ej_rss_b": 9000 * scale, "mp_rss_b": 2000 * (scale < 1),
            "mem_parts_b": parts, "idle_parts_b": {k: v / 2 for k, v in parts.items()},
            "idle_ej_rss_b": 7000 * scale, "idle_mp_rss_b": 1900 * (scale < 1), "idle_secs": 60}


def msg_run(rate: float, ej: float, mp: float, lat: float, p90: bool = True) -> dict:
    r = {"msgs_s": rate, "ej_us": ej, "mp_us": mp, "p50_us": lat, "p99_us": lat * 4}
    if p90:
        r.update(p90_us=lat * 2, max_us=lat * 20)
    return r


RESULTS = {
    "meta": {"date": "2026-12-03 16:00 UTC", "commit": "abc1234", "dirty": False, "smoke": False,
             "tls": False, "reps": 2, "pairs": 100, "inflight": 10, "secs": 10, "body": 100,
             "setups": ["native", "raw", "parsed"],
             "labels": {"native": "native", "raw": "Megaphone raw", "parsed": "Megaphone parsed"}},
    "results": {
        "mem": {"native": [mem_run(1.0), mem_run(1.05)], "raw": [mem_run(0.8), mem_run(0.82)],
                "parsed": [mem_run(0.5), mem_run(0.55)]},
        "msg": {"native": [msg_run(20000, 40, 0, 900), msg_run(21000, 39, 0, 950)],
                "raw": [msg_run(24000, 30, 8, 800), msg_run(23000, 31, 8, 820)],
                "parsed": [msg_run(27000, 22, 12, 700), msg_run(26500, 23, 12, 720)]},
        # An older run's results: only p50 and p99.
        "lat": {"native": [msg_run(3000, 50, 0, 120, False)] * 2,
                "raw": [msg_run(2800, 40, 10, 130, False)] * 2,
                "parsed": [msg_run(2900, 35, 12, 125, False)] * 2},
    },
}


class PlotTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="xmpp-plot-test.")
        self.dir = Path(self.tmp.name)

    def tearDown(self):
        self.tmp.cleanup()

    def names(self, paths) -> set[str]:
        for p in paths:
            self.assertEqual(Path(p).read_bytes()[:8], PNG, p)
        return {Path(p).name for p in paths}

    def test_all_charts(self):
        got = xmpp_plot.plot(copy.deepcopy(RESULTS), self.dir, "run")
        self.assertEqual(self.names(got), {"run-memory.png", "run-messages.png", "run-latency.png"})

    def test_only_msg_no_native(self):
        data = copy.deepcopy(RESULTS)
        data["meta"]["setups"] = ["raw", "parsed"]
        data["results"] = {"mem": {"raw": [], "parsed": []},
                           "msg": {s: data["results"]["msg"][s] for s in ("raw", "parsed")},
                           "lat": {"raw": [], "parsed": []}}
        got = xmpp_plot.plot(data, self.dir, "run")
        # Latency: the loaded percentiles of the message runs.
        self.assertEqual(self.names(got), {"run-messages.png", "run-latency.png"})

    def test_smoke_shape(self):
        # --smoke: one rep, no "lat" key at all, and no idle figures in older results.
        data = copy.deepcopy(RESULTS)
        data["meta"].update(smoke=True, reps=1)
        data["results"] = {"mem": {s: rs[:1] for s, rs in data["results"]["mem"].items()},
                           "msg": {s: rs[:1] for s, rs in data["results"]["msg"].items()}}
        for rs in data["results"]["mem"].values():
            del rs[0]["idle_parts_b"]
        got = xmpp_plot.plot(data, self.dir, "smoke")
        self.assertEqual(len(self.names(got)), 3)

    def test_command_line(self):
        src = self.dir / "saved.json"
        src.write_text(json.dumps(RESULTS))
        out = subprocess.run([sys.executable, str(HERE / "xmpp_plot.py"), str(src), str(self.dir / "png")],
                             check=True, capture_output=True, text=True).stdout.split()
        self.assertEqual(self.names(out), {"saved-memory.png", "saved-messages.png", "saved-latency.png"})


if __name__ == "__main__":
    unittest.main()
