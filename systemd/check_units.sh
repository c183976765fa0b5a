#!/usr/bin/env bash
# ctest systemd_units: the unit files parse (`systemd-analyze verify`, with stand-ins for
# the programs they run, which a build does not install) and the service's exposure
# (`systemd-analyze security --offline=yes`) is at most 2.0. Exit 77 (SKIP) without
# systemd-analyze.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
command -v systemd-analyze >/dev/null || { echo "SKIP: no systemd-analyze"; exit 77; }
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/usr/lib/systemd/system" "$root/usr/sbin" "$root/usr/bin"
cp -an /usr/lib/systemd/system/. "$root/usr/lib/systemd/system/" 2>/dev/null || true
cp "$here"/insideoutd.service "$here"/insideoutd.socket "$here"/insideoutd-control.socket \
  "$root/usr/lib/systemd/system/"
printf '#!/bin/sh\n' >"$root/usr/sbin/insideoutd" && chmod +x "$root/usr/sbin/insideoutd"
cp /usr/bin/kill "$root/usr/bin/kill" && ln -s usr/bin "$root/bin"
units=("$root"/usr/lib/systemd/system/insideoutd{.service,.socket,-control.socket})
if ! out=$(systemd-analyze verify --man=no --root="$root" "${units[@]}" 2>&1) || [[ -n $out ]]; then
  echo "FAIL: systemd-analyze verify: $out"
  exit 1
fi
score=$(systemd-analyze security --offline=yes "$here/insideoutd.service" 2>&1 |
  sed -n 's/.*Overall exposure level for insideoutd.service: \([0-9.]*\).*/\1/p')
echo "exposure: ${score:-none}"
[[ -n $score ]] && awk -v s="$score" 'BEGIN { exit !(s <= 2.0) }'
