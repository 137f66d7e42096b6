#!/usr/bin/env python3
"""Plots a soak's CSV (tests/soak.rs) as a PNG, and prints the memory drift.

usage: soak_plot.py SOAK.csv OUT.png

Top: each instance's resident memory (MiB) by minute. Middle: the
pipeline's lag (records not yet committed) once a minute, with each fault
marked. Bottom: each fault's recovery time, against the 30 s target. The
drift is instance A's resident memory at the last minute against minute 10,
and the median of the last 11 minutes against that of minutes 5-15
(A is never killed, so one process's memory across the whole run); B is
killed and paused by the faults, so its line starts again.
"""

import csv
import statistics
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> int:
    source, out = sys.argv[1], sys.argv[2]
    with open(source, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        print("soak_plot: no rows", file=sys.stderr)
        return 1
    minutes = [int(r["minute"]) for r in rows]
    rss_a = [int(r["rss_a_kib"]) / 1024 for r in rows]
    rss_b = [int(r["rss_b_kib"]) / 1024 for r in rows]
    lag = [int(r["lag"]) for r in rows]
    faults = [(int(r["minute"]), r["fault"], r["recovery_s"]) for r in rows if r["fault"]]

    fig, (top, middle, bottom) = plt.subplots(
        3, 1, sharex=True, figsize=(10, 9), height_ratios=[3, 2, 2]
    )
    top.plot(minutes, rss_a, label="instance A")
    top.plot(minutes, rss_b, label="instance B")
    top.set_ylabel("resident memory (MiB)")
    top.set_ylim(bottom=0)
    top.legend()
    middle.plot(minutes, lag, color="tab:red")
    middle.set_ylabel("lag (records)")
    middle.set_ylim(bottom=0)
    bottom.bar(
        [m for m, _, _ in faults],
        [float(r) for _, _, r in faults],
        color="tab:grey",
    )
    bottom.axhline(30, color="tab:red", linestyle="--", linewidth=1)
    bottom.set_ylabel("recovery (s)")
    bottom.set_xlabel("minute (a bar per fault)")
    for minute, fault, recovery in faults:
        middle.axvline(minute, color="grey", alpha=0.4)
        bottom.annotate(
            fault,
            (minute, 0),
            xytext=(0, 2),
            textcoords="offset points",
            rotation=90,
            fontsize=6,
            va="bottom",
            ha="center",
        )
    fig.suptitle(f"leadflow soak: {len(rows)} minutes on a 3-broker cluster")
    fig.tight_layout()
    fig.savefig(out, dpi=110)

    recoveries = [float(r) for _, _, r in faults]
    print(f"soak: {len(rows)} minutes, {len(faults)} faults, worst recovery "
          f"{max(recoveries, default=0):.1f} s")
    at = {int(r["minute"]): int(r["rss_a_kib"]) for r in rows}
    last = minutes[-1]
    if 10 in at and last > 10 and at[10] > 0:
        drift = (at[last] - at[10]) / at[10] * 100
        print(f"soak: instance A's memory {at[10] / 1024:.1f} MiB at minute 10, "
              f"{at[last] / 1024:.1f} MiB at minute {last}: drift {drift:+.1f}%")
    # One sample can land on a fault's backlog, which is memory in use, not
    # drift: the medians of the 11 minutes around minute 10 and of the last
    # 11 say whether the level itself moved.
    early = [at[m] for m in range(5, 16) if m in at]
    late = [at[m] for m in range(last - 10, last + 1) if m in at and m > 15]
    if len(early) == 11 and len(late) == 11:
        early_median, late_median = statistics.median(early), statistics.median(late)
        drift = (late_median - early_median) / early_median * 100
        print(f"soak: instance A's median memory {early_median / 1024:.1f} MiB over minutes "
              f"5-15, {late_median / 1024:.1f} MiB over minutes {last - 10}-{last}: "
              f"drift {drift:+.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
