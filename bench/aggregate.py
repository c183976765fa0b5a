#!/usr/bin/python3
"""Aggregates bench rows from many runs: medians, a results CSV, a terminal table, plot data.

Reads rows `scenario,system,metric,value,unit` (no header; other lines are ignored) from
the files given, or stdin. Writes OUT/results.csv with the header
`scenario,system,metric,value,unit,runs,min,max` (value is the median over runs), the
gnuplot data files OUT/plot_*.dat that plot.gp draws, and prints one table per scenario
and metric with each system's median and its ratio to a reference system.

Standard library only.
"""

import argparse
import collections
import csv
import math
import os
import re
import statistics
import sys

ROW = re.compile(r"^([a-z0-9_]+),([a-z0-9_]+),([a-z0-9_]+),(-?[0-9.]+(?:e[-+]?[0-9]+)?),([A-Za-z/]+)$")
BATCHES = (1, 8, 64, 512)
PERCENTILES = ("p50", "p99", "p999")
# The floor, where insideout has no rows yet: the spinning ring, or the futex-blocking one
# in the scenarios the spinning one does not run (rtt_sleep).
FALLBACK_REFS = ("raw_ring", "raw_ring_futex")


def read_rows(paths):
    """Yields (scenario, system, metric, value, unit) from the files (or stdin)."""
    streams = [open(p, encoding="utf-8", errors="replace") for p in paths] if paths else [sys.stdin]
    for stream in streams:
        with stream:
            for line in stream:
                m = ROW.match(line.strip())
                if m:
                    value = float(m.group(4))
                    if math.isfinite(value):
                        yield m.group(1), m.group(2), m.group(3), value, m.group(5)


def scenario_key(scenario):
    """Orders scenarios: throughput by batch, rtt, dispatch by threads, limits, the rest."""
    m = re.fullmatch(r"throughput_batch(\d+)", scenario)
    if m:
        return (0, int(m.group(1)), scenario)
    if scenario.startswith("rtt_"):
        return (1, 0 if scenario == "rtt_busy" else 1, scenario)
    m = re.fullmatch(r"dispatch_threads(\d+)", scenario)
    if m:
        return (2, int(m.group(1)), scenario)
    return (3 if scenario == "limits" else 4, 0, scenario)


def metric_key(metric):
    return (PERCENTILES.index(metric) if metric in PERCENTILES else -1, metric)


def higher_is_better(metric, unit):
    return metric.endswith("_per_s") or unit.endswith("/s")


def fmt(value):
    if value == 0:
        return "0"
    if abs(value) >= 1e6:
        return f"{value / 1e6:,.2f}M"
    if abs(value) >= 1e4:
        return f"{value / 1e3:,.1f}k"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"


def fmt_ratio(r):
    return f"{r:.0f}" if r >= 100 else f"{r:.2f}" if r >= 1 else f"{r:.3g}"


def write_results(path, stats):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["scenario", "system", "metric", "value", "unit", "runs", "min", "max"])
        for (scenario, system, metric), s in sorted(
            stats.items(), key=lambda kv: (scenario_key(kv[0][0]), metric_key(kv[0][2]), kv[0][1])
        ):
            w.writerow([scenario, system, metric, f"{s['median']:.6g}", s["unit"], s["runs"],
                        f"{s['min']:.6g}", f"{s['max']:.6g}"])


def print_tables(stats, refs, note="", out=sys.stdout):
    """One table per scenario and metric; ratios against the first of `refs` present."""
    groups = collections.defaultdict(dict)
    for (scenario, system, metric), s in stats.items():
        groups[(scenario, metric)][system] = s
    print(f"ratio = system / {' (else '.join(refs)}{')' * (len(refs) - 1)}, the reference (*)"
          f"{note}, in the same scenario and metric; '-' where no reference ran.", file=out)
    for scenario, metric in sorted(groups, key=lambda k: (scenario_key(k[0]), metric_key(k[1]))):
        systems = groups[(scenario, metric)]
        unit = next(iter(systems.values()))["unit"]
        better_high = higher_is_better(metric, unit)
        print(f"\n== {scenario} {metric} ({unit}, {'higher' if better_high else 'lower'} is better)",
              file=out)
        print(f"   {'system':<18}{'median':>12}  {'runs':>4}  {'spread':>7}  {'ratio':>7}", file=out)
        ref = next((r for r in refs if r in systems), None)
        ref_value = systems[ref]["median"] if ref else None
        for system, s in sorted(systems.items(), key=lambda kv: kv[1]["median"], reverse=better_high):
            spread = (s["max"] - s["min"]) / s["median"] * 100 if s["median"] else 0.0
            ratio = fmt_ratio(s["median"] / ref_value) if ref_value else "-"
            mark = " *" if system == ref else ""
            print(f"   {system:<18}{fmt(s['median']):>12}  {s['runs']:>4}  {spread:>6.1f}%  "
                  f"{ratio:>7}{mark}", file=out)


def write_table(path, header, rows):
    """A gnuplot data file: a header line, then `name v1 v2 ...` with '?' for missing."""
    if not rows:
        if os.path.exists(path):
            os.remove(path)
        return
    with open(path, "w", encoding="utf-8") as f:
        f.write(" ".join(header) + "\n")
        for name, values in rows:
            f.write(name + " " + " ".join("?" if v is None else f"{v:.6g}" for v in values) + "\n")


def write_plot_data(out_dir, stats):
    def median(scenario, system, metric):
        s = stats.get((scenario, system, metric))
        return None if s is None else s["median"]

    systems = sorted({k[1] for k in stats})
    # Throughput by batch size, millions of messages per second.
    rows = []
    for system in systems:
        values = [median(f"throughput_batch{b}", system, "msgs_per_s") for b in BATCHES]
        if any(v is not None for v in values):
            rows.append((system, [None if v is None else v / 1e6 for v in values]))
    write_table(os.path.join(out_dir, "plot_throughput.dat"),
                ["system"] + [f"batch{b}" for b in BATCHES], rows)
    # Latency percentiles per system, microseconds.
    for scenario in ("rtt_busy", "rtt_sleep"):
        rows = []
        for system in systems:
            values = [median(scenario, system, p) for p in PERCENTILES]
            if any(v is not None for v in values):
                rows.append((system, values))
        write_table(os.path.join(out_dir, f"plot_{scenario}.dat"), ["system", *PERCENTILES], rows)
    # Dispatch rate by thread count, millions of tasks per second.
    threads = sorted({int(k[0][len("dispatch_threads"):]) for k in stats
                      if re.fullmatch(r"dispatch_threads\d+", k[0])})
    rows = []
    for system in systems:
        values = [median(f"dispatch_threads{t}", system, "tasks_per_s") for t in threads]
        if any(v is not None for v in values):
            rows.append((system, [None if v is None else v / 1e6 for v in values]))
    write_table(os.path.join(out_dir, "plot_dispatch.dat"),
                ["system"] + [f"threads={t}" for t in threads], rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="*", help="row files (default: stdin)")
    parser.add_argument("--ref", default="insideout",
                        help="reference system for the ratio column (default: insideout; "
                             f"{' or '.join(FALLBACK_REFS)} where it has no rows)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "out"),
                        help="output directory (default: bench/out)")
    args = parser.parse_args()

    values = collections.defaultdict(list)
    units = {}
    for scenario, system, metric, value, unit in read_rows(args.files):
        values[(scenario, system, metric)].append(value)
        units[(scenario, system, metric)] = unit
    if not values:
        print("aggregate: no rows found", file=sys.stderr)
        return 1
    stats = {
        key: {"median": statistics.median(v), "min": min(v), "max": max(v), "runs": len(v),
              "unit": units[key]}
        for key, v in values.items()
    }

    refs, note = [args.ref], ""
    if args.ref not in {k[1] for k in stats}:
        note = f", as there are no {args.ref} rows yet"
        refs = list(FALLBACK_REFS)

    os.makedirs(args.out, exist_ok=True)
    results = os.path.join(args.out, "results.csv")
    write_results(results, stats)
    write_plot_data(args.out, stats)
    print_tables(stats, refs, note)
    print(f"\naggregate: {len(stats)} figures from {max(s['runs'] for s in stats.values())} "
          f"run(s) -> {results}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
