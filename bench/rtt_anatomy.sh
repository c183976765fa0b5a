#!/usr/bin/env bash
# Where the time of an rtt_sleep round trip goes: records the scheduler's switch and
# wake-up tracepoints and every system call while one bench program runs
# `--scenario rtt_sleep --quick`, then splits each round trip into its six stages
# (bench/rtt_anatomy.py). Needs root and perf (linux-perf); the VM must expose the
# sched and raw_syscalls tracepoints (hardware counters are not needed).
#   bench/rtt_anatomy.sh [DIR] [PROGRAM...]   default: build/release-native/bin, insideout raw_ring
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${1:-build/release-native/bin}"
shift || true
programs=("$@")
((${#programs[@]})) || programs=(insideout raw_ring)
command -v perf >/dev/null || { echo "rtt_anatomy: perf is missing (apt-get install linux-perf)" >&2; exit 1; }
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
for p in "${programs[@]}"; do
  echo "== $p"
  perf record -q -o "$tmp/$p.data" -e sched:sched_switch,sched:sched_waking,raw_syscalls:sys_enter \
    -a -- "$dir/bench_$p" --scenario rtt_sleep --quick | grep -v '^#' || true
  perf script --ns -i "$tmp/$p.data" -F comm,tid,cpu,time,event,trace 2>/dev/null |
    python3 bench/rtt_anatomy.py "bench_$p"
done
