#!/usr/bin/env bash
# Installs what is missing, builds the dev preset and runs every test (unit, stress,
# integration, benchmark smoke runs). INSIDEOUT_WERROR=ON turns warnings into errors.
set -euo pipefail
cd "$(dirname "$0")"
source deploy/install-deps.sh
insideout_install_deps
cmake --preset dev -DINSIDEOUT_WERROR="${INSIDEOUT_WERROR:-OFF}" >/dev/null
cmake --build --preset dev
ctest --preset dev -j"$(nproc)" "$@"
