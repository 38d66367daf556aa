"""bench/million's report (markdown); the plot is bench/million_plot.py's."""
from __future__ import annotations

from pathlib import Path

MEM_PARTS = ("total", "processes", "system", "binary", "ets", "atom", "code")


def _b(x: float) -> str:
    return f"{x:,.0f}"


def _gib(kb: float) -> str:
    return f"{kb / 2**20:,.2f}"


def report(res: dict, samples: list[dict], failures: list[str], a, plot_path: Path | None) -> str:
    n = res.get("logged_in", 0)
    out = [f"## bench/million: {res['n']:,} sessions on one ejabberd node ({res['started']})", "",
           f"Command: `bench/million --sessions {a.sessions} --per-node {a.per_node} --per-client {a.per_client} --hold {a.hold} "
           f"--pairs {a.pairs} --parser {a.parser} --tables {a.tables}`; {res['m']} Megaphone nodes (`--threads 1`) and "
           f"{res.get('c', res['m'])} `megaphone-load` processes; mod_megaphone `parser: {a.parser}`, hibernate_after "
           "the module's default; the login tables' storage: "
           + ", ".join(f"{t} {v}" for t, v in res.get("tables", {}).items())
           + (" before --tables disc_copies moved them" if a.tables == "disc_copies" else "") + ".", ""]
    out += ["**Result: " + ("passed" if not failures else "FAILED") + "**", ""]
    for f in failures:
        out.append(f"- {f}")
    if failures:
        out.append("")
    if "login_secs" in res:
        out += ["| login | |", "|---|---:|",
                f"| sessions logged in | {n:,} of {res['n']:,} |",
                f"| failed logins | {res['failed']:,} {res.get('failure_reasons') or ''} |",
                f"| time to log in all (s) | {res['login_secs']:,.0f} |",
                f"| mean logins/s | {n / max(1e-9, res['login_secs']):,.0f} |",
                f"| ejabberd CPU per login (µs) | {res['ej_us_login']:,.0f} |",
                f"| Megaphone CPU per login (µs, all nodes) | {res['mp_us_login']:,.0f} |",
                f"| client CPU per login (µs, all clients) | {res['cl_us_login']:,.0f} |",
                f"| registering {res['n']:,} users (s, one rpc) | {res.get('register_secs', 0):,.0f} |", ""]
    rates = login_rates(samples)
    if rates:
        out += ["Logins over time (from the progress readings):", "",
                "| minute | sessions at its end | logins/s in it | beam RSS (GiB) | machine used (GiB) |",
                "|---:|---:|---:|---:|---:|"]
        out += [f"| {m} | {s:,} | {r:,.0f} | {_gib(ej)} | {_gib(u)} |" for m, s, r, ej, u in rates]
        out.append("")
    mem = res.get("mem")
    if mem:
        r0, ri = res["r0"], res["r_idle"]
        out += [f"Memory per session after the {a.hold} s hold (idle, no forced GC), against the "
                "reading before the logins:", "",
                "| part | per session (B) | before (GiB) | idle (GiB) |", "|---|---:|---:|---:|",
                f"| ejabberd beam RSS | {_b(mem['ej_rss'])} | {_gib(r0['ej_rss_kb'])} | {_gib(ri['ej_rss_kb'])} |"]
        for k in MEM_PARTS:
            if k in mem["ej_mem"]:
                out.append(f"| — erlang:memory `{k}` | {_b(mem['ej_mem'][k])} | "
                           f"{r0['ej_mem'][k] / 2**30:,.2f} | {ri['ej_mem'][k] / 2**30:,.2f} |")
        out += [f"| Megaphone nodes' RSS (all) | {_b(mem['mp_rss'])} | {_gib(r0['mp_rss_kb'])} | {_gib(ri['mp_rss_kb'])} |",
                f"| load clients' RSS (all) | {_b(mem['cl_rss'])} | {_gib(r0['cl_rss_kb'])} | {_gib(ri['cl_rss_kb'])} |",
                f"| kernel slab (both socket ends) | {_b(mem['slab'])} | {_gib(r0['slab_kb'])} | {_gib(ri['slab_kb'])} |",
                f"| machine's used memory (MemTotal − MemAvailable) | {_b(mem['used'])} | {_gib(r0['used_kb'])} | {_gib(ri['used_kb'])} |",
                ""]
        rss_ratio = (ri["ej_rss_kb"] * 1024) / max(1, ri["ej_mem"]["total"])
        out += [f"Beam RSS / erlang:memory(total) when idle: {rss_ratio:.2f}. TCP buffer pages in use "
                f"(/proc/net/sockstat): {ri.get('tcp_mem_pages', 0):,}.", ""]
    checks = res.get("hold_checks")
    if checks:
        bad = [c for c in checks if not (c["ejabberd_sm"] == c["c2s"] == c["connections"] == c["live"] == n)]
        out += [f"Hold: {len(checks)} checks, every {a.check} s, of ejabberd's session count "
                "(`ejabberd_sm:connected_users_number/0`), c2s processes (mod_megaphone's monitored "
                "sessions), Megaphone connections (`megaphone:stats/2` of every node) and live client "
                f"sessions: {len(checks) - len(bad)} all equal to {n:,}"
                + (f", {len(bad)} not" if bad else "") + ".", ""]
    if "pairs" in res:
        p = res["pairs"]
        out += [f"Random pairs: {p['pairs']:,} pairs, {p['delivered']:,} of {p['messages']:,} messages "
                f"delivered and verified (token, sender, receiver) in {p['secs']:.1f} s; "
                f"{p['missing']} missing, {p['wrong']} misdelivered.", ""]
    if "ping" in res:
        p = res["ping"]
        out += [f"Pings (XEP-0199, ejabberd to every session through `ejabberd_router:route_iq/4`, "
                f"{a.ping_inflight} in flight): {p['ok']:,} answered, {p['error']:,} errors, "
                f"{p['timeout']:,} timeouts, in {p['secs']:.0f} s ({p['ok'] / max(1e-9, p['secs']):,.0f}/s); "
                f"the clients counted {p['clients_answered']:,} pings answered.", ""]
    if "final_counts" in res:
        k = res["final_counts"]
        out += [f"After pairs and pings: ejabberd_sm {k['ejabberd_sm']:,}, c2s {k['c2s']:,}, connections "
                f"{k['connections']:,}, live {k['live']:,}.", ""]
    if "close" in res:
        out += [f"Close: {res['close']['closed']:,} sessions closed by their clients; ejabberd at 0 "
                f"sessions {res['close']['secs']:.0f} s after.", ""]
    if "stop" in res:
        odd = ", ".join(f"{k} {v}" for k, v in res["stop"].items() if v != 0)
        out += [f"Every part stopped by PID; exit statuses: {odd or 'all 0'}.", ""]
    peak = max((s["used_kb"] for s in samples), default=0)
    if peak:
        out += [f"Peak used memory of the machine: {_gib(peak)} GiB.", ""]
    if plot_path:
        out += [f"![sessions and memory over time]({plot_path.name})", ""]
    return "\n".join(out)


def login_rates(samples: list[dict]) -> list[tuple]:
    """(minute, sessions, logins/s, beam RSS kB, used kB) for each whole minute of the login phase."""
    xs = [s for s in samples if s.get("phase") in ("baseline", "login", "logged in")]
    if len(xs) < 2:
        return []
    t0 = xs[0]["t"]
    out, prev, minute = [], xs[0], 1
    for s in xs[1:]:
        if s["t"] - t0 >= 60 * minute or s is xs[-1]:
            dt = s["t"] - prev["t"]
            out.append((minute, s["sessions"], (s["sessions"] - prev["sessions"]) / dt if dt > 0 else 0,
                        s["ej_rss_kb"], s["used_kb"]))
            prev, minute = s, minute + 1
    return out
