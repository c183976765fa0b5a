#!/usr/bin/env bash
# Packs the release build's benchmark programs, insideoutd and the shared libraries they
# load into .devbench/, to run ./bench.sh --prebuilt on a machine that has none of
# Debian's packages (the lent multi-core box):
#   bench/device_bundle.sh
#   # there: LD_LIBRARY_PATH=$PWD/.devbench/lib PATH=$PWD/.devbench/bin:$PATH \
#   #        ./bench.sh --quick --prebuilt .devbench/bin
set -euo pipefail
cd "$(dirname "$0")/.."
[[ -x build/release/bin/bench_insideout ]] || { echo "build the release preset first" >&2; exit 1; }
rm -rf .devbench
mkdir -p .devbench/bin .devbench/lib
cp build/release/bin/bench_* build/release/bin/insideoutd .devbench/bin/
if command -v iox-roudi >/dev/null; then cp "$(command -v iox-roudi)" .devbench/bin/; fi
for f in .devbench/bin/*; do ldd "$f"; done | awk '/=>/ {print $3}' | sort -u |
  grep -vE '/(libc|libm|libpthread|libdl|librt)\.so|ld-linux' | xargs -I{} cp -L {} .devbench/lib/
grep -qx '/.devbench/' .git/info/exclude 2>/dev/null || echo '/.devbench/' >>.git/info/exclude
du -sh .devbench
