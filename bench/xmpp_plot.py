#!/usr/bin/python3
"""Draws bench/xmpp's results (the JSON it saves beside its report) as PNG charts, native against
each Megaphone setup. Run with Debian's python3, where `python3-matplotlib` installs (bench/xmpp
does, and runs this itself):
    /usr/bin/python3 bench/xmpp_plot.py RESULTS.json OUTDIR [PREFIX]

Writes into OUTDIR, for what the run measured (--only, --no-native, --smoke):
  PREFIX-memory.png    memory per idle session by part: erlang:memory's processes, ets, binary and the
                       rest of system stacked (they sum to erlang:memory(total)), the beam's RSS as a
                       marker, and the Swift nodes' RSS per connection beside them; after the logins
                       and, when measured, after the idle spell (issue 13)
  PREFIX-messages.png  delivered msgs/s, and CPU per message (ejabberd and Swift stacked)
  PREFIX-latency.png   latency percentiles (p50, p90, p99, max; what the run has), unloaded and loaded
PREFIX defaults to the JSON's stem. Bars are the median over the reps, whiskers min–max. Prints
the paths written, one a line. The JSON: {"meta": {...}, "results": {"mem"|"msg"|"lat": {setup:
[run, ...]}}} (bench/xmpp's save_results)."""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# erlang:memory parts stacked; "other" = total - processes - ets - binary (atom, code and the rest
# of system), so the stack is erlang:memory(total).
PARTS = [("processes", "processes", "#4c72b0"), ("ets", "ets", "#55a868"),
         ("binary", "binary", "#c44e52"), ("other system", None, "#8172b2")]
SWIFT_COLOR = "#dd8452"
PCTS = [("p50", "p50_us"), ("p90", "p90_us"), ("p99", "p99_us"), ("max", "max_us")]
# A setup keeps its colour whatever else the run has (--no-native, --parser): native grey, raw blue,
# parsed orange; variants (raw@1, parsed@infinity, ...) from the rest.
BASE_COLORS = {"native": "#7f7f7f", "raw": "#1f77b4", "parsed": "#ff7f0e"}
MORE_COLORS = ["#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"]


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def span(xs, m):
    """(below, above) the median for an error bar: min–max over reps."""
    xs = [x for x in xs if x is not None]
    return (m - min(xs), max(xs) - m) if xs else (0, 0)


def yerr(xs, m):
    """An error bar's yerr for one bar: min–max over reps, None for one rep (no whisker)."""
    lo, hi = span(xs, m)
    return [[lo], [hi]] if lo or hi else None


def value_label(ax, x: float, vals, top: float, text: str, size: float = 7.5) -> None:
    """The bar's value, above its top and its whisker."""
    ys = [v for v in vals if v is not None] + [top]
    ax.annotate(text, (x, max(ys)), xytext=(0, 2), textcoords="offset points", ha="center",
                va="bottom", fontsize=size)


def label(meta: dict, s: str) -> str:
    return meta.get("labels", {}).get(s, s)


def subtitle(meta: dict, extra: str = "") -> str:
    commit = meta.get("commit", "?") + (" (+ uncommitted)" if meta.get("dirty") else "")
    bits = [meta.get("date", "?"), f"commit {commit}"]
    if meta.get("tls"):
        bits.append("STARTTLS")
    reps = meta.get("reps")
    if reps:
        bits.append(f"{reps} reps: median, whiskers min–max" if reps > 1 else "1 rep")
    lines = ["; ".join(bits)]
    if meta.get("smoke"):
        lines.append("SMOKE RUN: correctness only, the numbers are not judged")
    return "\n".join(lines + ([extra] if extra else []))


def measured(res: dict, kind: str, setups: list[str]) -> list[str]:
    return [s for s in setups if res.get(kind, {}).get(s)]


def colors(setups: list[str]) -> dict:
    out, more = {}, iter(MORE_COLORS * 3)
    for s in setups:
        out[s] = BASE_COLORS.get(s) or next(more)
    return out


def setup_axis(ax, meta: dict, setups: list[str]) -> None:
    """A bar per setup; one or two setups keep the width of three."""
    ax.set_xticks(range(len(setups)), [label(meta, s) for s in setups], fontsize=9)
    pad = max(0.0, (3 - len(setups)) / 2)
    ax.set_xlim(-0.5 - pad, len(setups) - 0.5 + pad)


def _finish(fig, title: str, sub: str, path: Path, legend_ax=None) -> Path:
    """Title, subtitle (the run), one legend under the panels (legend_ax's entries), saved."""
    fig.suptitle(title, fontsize=13, fontweight="bold", y=0.99)
    fig.text(0.5, 0.935, sub, ha="center", va="top", fontsize=8.5, color="#444444")
    top = 0.91 - 0.035 * sub.count("\n")
    bottom = 0.0
    if legend_ax is not None:
        h, lb = legend_ax.get_legend_handles_labels()
        fig.legend(h, lb, loc="lower center", ncol=min(len(lb), 6), fontsize=8.5, frameon=False)
        bottom = 0.07
    fig.tight_layout(rect=(0, bottom, 1, top))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _parts(run: dict, key: str) -> dict | None:
    p = run.get(key)
    if not p or p.get("total") is None:
        return None
    out = {k: p.get(k, 0) for k in ("processes", "ets", "binary")}
    out["other system"] = p["total"] - sum(out.values())
    return out


def memory_chart(meta: dict, res: dict, out: Path) -> Path | None:
    setups = measured(res, "mem", meta["setups"])
    if not setups:
        return None
    mem = res["mem"]
    # (panel title, erlang:memory parts key, beam RSS key, Swift RSS key)
    panels = [("after the logins (settled)", "mem_parts_b", "ej_rss_b", "mp_rss_b")]
    if any(r.get("idle_parts_b") for s in setups for r in mem[s]):
        idle = next((r.get("idle_secs") for s in setups for r in mem[s] if r.get("idle_secs")), None)
        panels.append((f"after {idle} s idle (issue 13; hibernated where it applies)" if idle else "after the idle spell",
                       "idle_parts_b", "idle_ej_rss_b", "idle_mp_rss_b"))
    fig, axes = plt.subplots(1, len(panels), figsize=(max(10, 6.2 * len(panels) + 1), 5.8), squeeze=False)
    w = 0.38
    for ax, (ptitle, pk, rk, sk) in zip(axes[0], panels):
        for i, s in enumerate(setups):
            parts = [p for p in (_parts(r, pk) for r in mem[s]) if p]
            if parts:
                bottom = 0.0
                for name, _, col in PARTS:
                    v = med([p[name] for p in parts])
                    ax.bar(i - w / 2, v, w, bottom=bottom, color=col, edgecolor="white", linewidth=0.5,
                           label=f"erlang:memory {name}" if i == 0 else None)
                    bottom += v
                totals = [r[pk]["total"] for r in mem[s] if r.get(pk)]
                if yerr(totals, bottom):  # erlang:memory(total)'s min–max around the stack's top
                    ax.errorbar(i - w / 2, bottom, yerr=[[max(0, bottom - min(totals))],
                                                        [max(0, max(totals) - bottom)]],
                                fmt="none", ecolor="#555555", capsize=3)
                value_label(ax, i - w / 2, totals, bottom, f"{bottom:,.0f}")
            rss = [r.get(rk) for r in mem[s]]
            m = med(rss)
            if m is not None:
                ax.errorbar(i - w / 2, m, yerr=yerr(rss, m), fmt="D", color="black",
                            markersize=6, capsize=4, label="ejabberd beam RSS" if i == 0 else None)
                ax.annotate(f"RSS {m:,.0f}", (i - w / 2, m), xytext=(7, 0), textcoords="offset points",
                            fontsize=7.5, va="center",
                            bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.85))
            sw = [r.get(sk) for r in mem[s]]
            m = med(sw)
            if m is not None:
                ax.bar(i + w / 2, m, w, yerr=yerr(sw, m), capsize=3, color=SWIFT_COLOR,
                       hatch="//", edgecolor="white", label="Swift RSS per connection" if i == 0 else None)
                value_label(ax, i + w / 2, sw, m, f"{m:,.0f}")
        setup_axis(ax, meta, setups)
        ax.set_ylabel("bytes per session")
        ax.set_ylim(bottom=min(0, ax.get_ylim()[0]))
        ax.axhline(0, color="black", linewidth=0.6)
        ax.yaxis.set_major_formatter(matplotlib.ticker.StrMethodFormatter("{x:,.0f}"))
        ax.set_title(ptitle, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    n = next(r["n"] for s in setups for r in mem[s] if r.get("n"))
    return _finish(fig, f"Memory per idle session by part ({n:,} sessions; deltas from before the logins)",
                   subtitle(meta, "left bar: ejabberd's erlang:memory, stacked to its total, ◆ the beam's "
                            "RSS; right bar: the Megaphone nodes' RSS per connection (native: nodes unused)"),
                   out, axes[0][0])


def messages_chart(meta: dict, res: dict, out: Path) -> Path | None:
    setups = measured(res, "msg", meta["setups"])
    if not setups:
        return None
    msg = res["msg"]
    col = colors(meta["setups"])
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 5.8))
    for i, s in enumerate(setups):
        v = [r.get("msgs_s") for r in msg[s]]
        m = med(v)
        a1.bar(i, m, 0.6, yerr=yerr(v, m), capsize=4, color=col[s])
        value_label(a1, i, v, m, f"{m:,.0f}", 8)
        ej = [r.get("ej_us") for r in msg[s]]
        mp = [r.get("mp_us") for r in msg[s]]
        tot = [a + b for a, b in zip(ej, mp) if a is not None and b is not None]
        me, mm = med(ej) or 0, med(mp) or 0
        a2.bar(i, me, 0.6, color="#4c72b0", label="ejabberd (beam)" if i == 0 else None)
        a2.bar(i, mm, 0.6, bottom=me, color=SWIFT_COLOR, hatch="//", edgecolor="white",
               label="Swift (Megaphone nodes)" if i == 0 else None)
        if len(tot) > 1:  # the sums' min–max, around the stack's top (the medians' sum)
            top = me + mm
            a2.errorbar(i, top, yerr=[[max(0, top - min(tot))], [max(0, max(tot) - top)]], fmt="none",
                        ecolor="black", capsize=4)
        value_label(a2, i, tot, me + mm, f"{me + mm:.1f}", 8)
    for ax in (a1, a2):
        setup_axis(ax, meta, setups)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
        ax.margins(y=0.12)
    a1.set_ylabel("delivered messages per second")
    a1.yaxis.set_major_formatter(matplotlib.ticker.StrMethodFormatter("{x:,.0f}"))
    a1.set_title("throughput (higher is better)", fontsize=10)
    a2.set_ylabel("CPU µs per delivered message")
    a2.set_title("CPU per message (lower is better; whiskers: the sum)", fontsize=10)
    load = ("smoke: 10 pairs until 1,000 messages" if meta.get("smoke") else
            f"{meta.get('pairs')} pairs, {meta.get('inflight')} in flight each way, {meta.get('secs')} s, "
            f"{meta.get('body')}-byte bodies")
    return _finish(fig, "Messages: throughput and CPU per message", subtitle(meta, load), out, a2)


def latency_chart(meta: dict, res: dict, out: Path) -> Path | None:
    panels = []
    if measured(res, "lat", meta["setups"]):
        panels.append(("unloaded: 1 pair, 1 in flight", "lat"))
    if measured(res, "msg", meta["setups"]):
        panels.append((("loaded (smoke: 10 pairs x 5 in flight)" if meta.get("smoke") else
                        f"loaded: {meta.get('pairs')} pairs x {meta.get('inflight')} in flight"), "msg"))
    if not panels:
        return None
    col = colors(meta["setups"])
    fig, axes = plt.subplots(1, len(panels), figsize=(max(10, 6.2 * len(panels) + 1), 5.6), squeeze=False)
    for ax, (ptitle, kind) in zip(axes[0], panels):
        setups = measured(res, kind, meta["setups"])
        runs = res[kind]
        pcts = [(n, k) for n, k in PCTS if any(r.get(k) is not None for s in setups for r in runs[s])]
        # One line per setup over the percentiles (markers side by side, whiskers min–max).
        for j, s in enumerate(setups):
            xs, ms, errs = [], [], [[], []]
            for i, (_, k) in enumerate(pcts):
                v = [r.get(k) for r in runs[s]]
                m = med(v)
                if m is None:
                    continue
                lo, hi = span(v, m)
                xs.append(i + 0.08 * (j - (len(setups) - 1) / 2))
                ms.append(m)
                errs[0].append(lo)
                errs[1].append(hi)
            ax.errorbar(xs, ms, yerr=errs, fmt="-o", color=col[s], markersize=6, capsize=3,
                        linewidth=1.5, label=label(meta, s))
        ax.set_yscale("log")
        lo, hi = ax.get_ylim()
        ax.set_ylim(lo / 1.3, hi * 1.3)  # a labelled tick inside even when the values are close
        ax.set_xticks(range(len(pcts)), [n for n, _ in pcts])
        ax.set_xlim(-0.4, len(pcts) - 0.6)
        ax.set_xlabel("percentile (client to client; histogram buckets ~5% wide)")
        ax.set_ylabel("latency (µs, log scale)")
        fmt = matplotlib.ticker.FuncFormatter(lambda y, _: f"{y:,.0f}")
        ax.yaxis.set_major_formatter(fmt)
        lo, hi = ax.get_ylim()
        digits = "235" if hi / lo < 20 else "25"  # minor ticks labelled: more when under ~a decade
        ax.yaxis.set_minor_formatter(matplotlib.ticker.FuncFormatter(
            lambda y, _, d=digits: f"{y:,.0f}" if str(round(y))[0] in d else ""))
        ax.tick_params(axis="y", which="minor", labelsize=7.5)
        ax.set_title(ptitle, fontsize=10)
        ax.grid(axis="y", alpha=0.3, which="both")
        ax.set_axisbelow(True)
    return _finish(fig, "Message latency percentiles (lower is better)", subtitle(meta), out, axes[0][0])


CHARTS = [("memory", memory_chart), ("messages", messages_chart), ("latency", latency_chart)]


def plot(data: dict, outdir: Path, prefix: str) -> list[Path]:
    """Every chart the results have data for; returns the paths written."""
    meta, res = data["meta"], data["results"]
    outdir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, fn in CHARTS:
        p = fn(meta, res, outdir / f"{prefix}-{name}.png")
        if p is not None:
            written.append(p)
    return written


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    src = Path(argv[0])
    data = json.loads(src.read_text())
    for p in plot(data, Path(argv[1]), argv[2] if len(argv) > 2 else src.stem):
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
