#!/usr/bin/env bash
# Builds the fuzz preset (clang, libFuzzer, address+undefined) and runs the fuzzers.
#
#   fuzz/run.sh [--ci] [--time SECONDS] [--jobs N] [TARGET...]
#
# Long mode (default): each target FUZZ_SECONDS (600) with FUZZ_JOBS parallel workers
# (libFuzzer -fork), carrying on past findings so one run collects them all; the corpus
# grows in build/fuzz/corpus/<target> (seeded from fuzz/corpus/<target>), findings land
# in build/fuzz/artifacts/<target>/. Exits non-zero when anything was found.
#
# CI mode (--ci): replays seeds and reproducers (ctest, label fuzz), then each target for
# FUZZ_SECONDS (default 60; 4 targets fit in 5 minutes) in one process that stops at the
# first crash, leak or timeout; exits non-zero on any.
set -euo pipefail
cd "$(dirname "$0")/.."

ci=0
seconds=${FUZZ_SECONDS:-}
jobs=${FUZZ_JOBS:-1}
targets=()
while (($#)); do
  case $1 in
    --ci) ci=1 ;;
    --time) seconds=$2; shift ;;
    --jobs) jobs=$2; shift ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) targets+=("$1") ;;
  esac
  shift
done
((${#targets[@]})) || targets=(fuzz_frame fuzz_registration fuzz_control fuzz_segment)
[[ -n $seconds ]] || seconds=$((ci ? 60 : 600))

cmake --preset fuzz >/dev/null
cmake --build --preset fuzz
bin=build/fuzz/bin

# Per target: the longest input that makes sense and the time one input may take.
flags_for() {
  case $1 in
    fuzz_segment) echo "-max_len=512 -timeout=30" ;;  # a script of operations; hangs are bounded inside
    fuzz_registration) echo "-max_len=8192 -timeout=10" ;;
    *) echo "-timeout=10" ;;
  esac
}

failed=()
if ((ci)); then
  ctest --preset fuzz || failed+=("ctest (seeds and reproducers)")
fi
for t in "${targets[@]}"; do
  corpus=build/fuzz/corpus/$t
  artifacts=build/fuzz/artifacts/$t
  mkdir -p "$corpus" "$artifacts"
  echo "== $t: $seconds s"
  # shellcheck disable=SC2046
  if ((ci)); then
    # The committed seeds are read, never written: new inputs go to the build tree.
    "$bin/$t" $(flags_for "$t") -max_total_time="$seconds" -print_final_stats=1 \
      -artifact_prefix="$artifacts/" "$corpus" "fuzz/corpus/$t" 2>&1 | tail -n 40 ||
      failed+=("$t")
  else
    "$bin/$t" $(flags_for "$t") -max_total_time="$seconds" -fork="$jobs" \
      -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1 -print_final_stats=1 \
      -artifact_prefix="$artifacts/" "$corpus" "fuzz/corpus/$t" || true
    if compgen -G "$artifacts/*" >/dev/null; then failed+=("$t"); fi
  fi
done

if ((${#failed[@]})); then
  echo "== findings: ${failed[*]}; inputs in build/fuzz/artifacts/<target>/" >&2
  echo "   a finding that is kept goes to fuzz/regressions/<target>/ with a line in its README" >&2
  exit 1
fi
echo "== no findings"
