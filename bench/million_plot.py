#!/usr/bin/python3
"""Plots bench/million's time series (its CSV) as a PNG: sessions and the memory of each part over
time. Run with Debian's python3, where `python3-matplotlib` installs (bench/million does):
    /usr/bin/python3 bench/million_plot.py SERIES.csv OUT.png [TITLE]"""
from __future__ import annotations

import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# (label, CSV column, divisor to GiB); the machine's total memory is drawn as a line.
SERIES = [("ejabberd beam RSS", "ej_rss_kb", 2**20), ("erlang:memory total", "ej_mem_total", 2**30),
          ("kernel slab", "slab_kb", 2**20), ("Megaphone nodes RSS", "mp_rss_kb", 2**20),
          ("load clients RSS", "cl_rss_kb", 2**20), ("machine used", "used_kb", 2**20)]


def main(src: str, out: str, title: str) -> None:
    with open(src) as f:
        rows = [r for r in csv.DictReader(f) if r["ej_mem_total"]]
    if not rows:
        raise SystemExit(f"{src}: no samples")
    t = [float(r["t"]) / 60 for r in rows]
    fig, ax1 = plt.subplots(figsize=(10, 5.5))
    ax1.plot(t, [int(r["sessions"]) / 1e3 for r in rows], color="black", linewidth=2,
             label="sessions (thousands, left axis)")
    ax1.set_xlabel("minutes since start")
    ax1.set_ylabel("sessions (thousands)")
    ax1.set_ylim(bottom=0)
    ax2 = ax1.twinx()
    for name, col, div in SERIES:
        ax2.plot(t, [float(r[col]) / div for r in rows], label=name,
                 linestyle="--" if col == "used_kb" else "-")
    ax2.set_ylabel("GiB")
    ax2.set_ylim(bottom=0)
    h1, l1 = ax1.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax1.legend(h1 + h2, l1 + l2, loc="upper left", fontsize=8)
    ax1.set_title(title)
    fig.tight_layout()
    fig.savefig(out, dpi=100)


if __name__ == "__main__":
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    main(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else "bench/million")
