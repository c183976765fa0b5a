#!/usr/bin/python3
"""Markdown summary of a results.csv (bench/aggregate.py's output) for docs/BENCHMARKS.md:
one row per scenario and metric with insideout's median, the best peer's and their ratio.

Standard library only. Usage: bench/summary.py bench/out/results.csv
"""

import csv
import sys

HIGHER = {"msgs_per_s", "tasks_per_s"}


def human(v, unit):
    if unit in ("msg/s", "task/s"):
        return f"{v / 1e6:.2f} M/s"
    if unit == "us":
        return f"{v:.2f} µs"
    if unit == "ns":
        return f"{v:.1f} ns"
    if unit == "pct":
        return f"{v:.2f}% of a core"
    return f"{v:g} {unit}"


FLOORS = ("raw_ring", "raw_ring_futex", "futex_pingpong", "cacheline_pingpong", "futex_wake",
          "clock", "syscall")
# Not systems: the targets (bench_trust prints them as system `target`) and
# insideout measured in another setting of the same run (B alone, the serialized path).
NOT_PEERS = ("target",)


def pick(rs, higher):
    if not rs:
        return None
    return (max if higher else min)(rs, key=lambda r: float(r["value"]))


def cell(r):
    return f"{human(float(r['value']), r['unit'])} ({r['system']})" if r else "-"


def main(path):
    rows = list(csv.DictReader(open(path, encoding="utf-8")))
    groups = {}
    for r in rows:
        groups.setdefault((r["scenario"], r["metric"]), []).append(r)
    print("| scenario | metric | insideout | best peer | insideout / best peer | raw ring (floor) |")
    print("|---|---|---|---|---|---|")
    for (scenario, metric), rs in groups.items():
        mine = [r for r in rs if r["system"] == "insideout"]
        if not mine:
            continue
        higher = metric in HIGHER
        m = mine[0]
        best = pick([r for r in rs if r["system"] != "insideout" and r["system"] not in FLOORS
                     and r["system"] not in NOT_PEERS and not r["system"].startswith("insideout")],
                    higher)
        floor = pick([r for r in rs if r["system"] in ("raw_ring", "raw_ring_futex", "futex_pingpong")],
                     higher)
        ratio = f"{float(m['value']) / float(best['value']):.2f}" if best and float(best["value"]) else "-"
        print(f"| {scenario} | {metric} | {human(float(m['value']), m['unit'])} | {cell(best)} | {ratio} | "
              f"{cell(floor)} |")


if __name__ == "__main__":
    main(sys.argv[1])
