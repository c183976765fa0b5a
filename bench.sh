#!/usr/bin/env bash
# Benchmarks insideout beside its peers: installs what is missing, builds the
# release-native preset, runs every bench_* program in build/release-native/bin for every
# scenario, interleaved
# run by run (A B C, A B C, ...) so that drift hits all of them alike, then aggregates
# (bench/out/results.csv, a table on the terminal) and plots (bench/out/*.png).
set -euo pipefail
cd "$(dirname "$0")"

usage() {
  cat <<'EOF'
usage: ./bench.sh [--runs N] [--quick] [--scenario NAME] [--ref SYSTEM] [--prebuilt DIR] [--help]
  --runs N         runs of every program (default 7; 3 with --quick)
  --quick          small counts: the whole thing in a few minutes
  --scenario NAME  only this scenario (throughput_batch1, rtt_busy, dispatch_threads2,
                   idle_clients, noisy_neighbour, ...)
  --ref SYSTEM     reference of the ratio column (default insideout, else raw_ring)
  --prebuilt DIR   run the bench_* programs already built in DIR: no install, no build
                   (for a machine without the packages, e.g. a lent multi-core box)
Environment: BENCH_JOBS (build jobs, default nproc).
Output: bench/out/results.csv, bench/out/table.txt, bench/out/*.png, raw rows in
bench/out/raw/, programs' stderr in bench/out/bench.log.
EOF
}

runs=""
quick=0
scenario="all"
ref="insideout"
prebuilt=""
while (($#)); do
  case "$1" in
    --runs) runs="${2:?--runs needs a number}"; shift 2 ;;
    --quick) quick=1; shift ;;
    --scenario) scenario="${2:?--scenario needs a name}"; shift 2 ;;
    --ref) ref="${2:?--ref needs a system}"; shift 2 ;;
    --prebuilt) prebuilt="${2:?--prebuilt needs a directory}"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
  esac
done
[[ -z $runs ]] && runs=$((quick ? 3 : 7))
[[ $runs =~ ^[1-9][0-9]*$ ]] || { echo "bench.sh: --runs wants a positive number" >&2; exit 2; }
jobs="${BENCH_JOBS:-$(nproc)}"

# ---- packages ----
if [[ -n $prebuilt ]]; then
  insideout_install_deps() { :; }
else
  source deploy/install-deps.sh
fi
insideout_install_deps

# ---- build ----
# The release-native preset (release plus -march=native: figures of this machine, binaries
# for it alone) builds the whole project, insideout's own benchmark included;
# INSIDEOUT_BENCH_PRESET=release measures the portable build. Where it cannot be
# configured or built (a tree without the main project), the peers alone are built
# standalone from bench/.
preset="${INSIDEOUT_BENCH_PRESET:-release-native}"
mkdir -p build
if [[ -n $prebuilt ]]; then
  bin="$prebuilt"
elif cmake --preset "$preset" >"build/$preset-configure.log" 2>&1 \
    && cmake --build --preset "$preset" --parallel "$jobs"; then
  bin="build/$preset/bin"
else
  echo "bench.sh: warning: the $preset preset did not configure or build" \
       "(see build/$preset-configure.log or the output above); building the peers alone" >&2
  cmake -S bench -B build/bench -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build build/bench --parallel "$jobs"
  bin=build/bench/bin
fi

mapfile -t programs < <(find "$bin" -maxdepth 1 -type f -name 'bench_*' -perm -u+x | sort)
((${#programs[@]})) || { echo "bench.sh: no bench_* programs in $bin" >&2; exit 1; }

# ---- runs ----
out=bench/out
rm -rf "$out/raw"
rm -f "$out"/*.png "$out"/plot_*.dat "$out/results.csv" "$out/table.txt"
mkdir -p "$out/raw"
: >"$out/bench.log"
{
  echo "date: $(date -Is)"
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo none)$(git diff --quiet 2>/dev/null || echo ' (modified)')"
  echo "kernel: $(uname -r)"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //') x $(nproc)"
  echo "runs: $runs, quick: $quick, scenario: $scenario, programs: ${programs[*]##*/}"
} >"$out/env.txt"

args=(--scenario "$scenario")
((quick)) && args+=(--quick)
limit=$((quick ? 180 : 1000))  # seconds a program may take; each also has its own watchdog
failed=()
skipped=()
start=$SECONDS
for ((r = 1; r <= runs; r++)); do
  line="run $r/$runs:"
  for prog in "${programs[@]}"; do
    name="${prog##*/}"
    name="${name#bench_}"
    t0=$SECONDS
    rc=0
    echo "== run $r $name" >>"$out/bench.log"
    timeout --kill-after=10 "$limit" "$prog" "${args[@]}" >"$out/raw/run${r}_${name}.csv" \
      2>>"$out/bench.log" || rc=$?
    case $rc in
      0) line+=" $name($((SECONDS - t0))s)" ;;
      77) line+=" $name(skipped)"; [[ " ${skipped[*]} " == *" $name "* ]] || skipped+=("$name") ;;
      *) line+=" $name(FAILED rc=$rc)"; failed+=("run $r $name rc=$rc") ;;
    esac
  done
  echo "$line"
done
echo "bench.sh: ${runs} run(s) of ${#programs[@]} programs in $((SECONDS - start)) s"

# ---- results ----
if ! grep -qs , "$out"/raw/*.csv; then
  echo "bench.sh: no rows at all (is '$scenario' a scenario?)" >&2
  exit 1
fi
python3 bench/aggregate.py --ref "$ref" --out "$out" "$out"/raw/*.csv | tee "$out/table.txt"
if command -v gnuplot >/dev/null; then
  gnuplot -e "dir='$out'" bench/plot.gp && ls "$out"/*.png 2>/dev/null | sed 's/^/plot: /'
else
  echo "bench.sh: gnuplot not found, no plots" >&2
fi
((${#skipped[@]})) && echo "bench.sh: skipped (see $out/bench.log): ${skipped[*]}" >&2
if ((${#failed[@]})); then
  echo "bench.sh: FAILED (see $out/bench.log): ${failed[*]}" >&2
  exit 1
fi
exit 0
