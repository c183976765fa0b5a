#!/usr/bin/env bash
# Installs the Debian packages in deploy/debian-packages.txt that are missing. Sourced
# by run.sh, test.sh, bench.sh and .ci/run; runs apt-get update at most once.
insideout_install_deps() {
  local list here missing=() pkg sudo=""
  here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
  list="$here/debian-packages.txt"
  while read -r pkg; do
    pkg="${pkg%%#*}"; pkg="${pkg// /}"
    [[ -z $pkg ]] && continue
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done <"$list"
  ((${#missing[@]} == 0)) && return 0
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || { echo "insideout: need root (or sudo) to install: ${missing[*]}" >&2; return 1; }
    sudo="sudo"
  fi
  echo "insideout: installing ${missing[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}
