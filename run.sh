#!/usr/bin/env bash
# Installs what is missing, builds the release preset and starts insideoutd in the
# foreground on its built-in defaults. Extra arguments go to insideoutd (see --help).
set -euo pipefail
cd "$(dirname "$0")"
source deploy/install-deps.sh
insideout_install_deps
cmake --preset release >/dev/null
cmake --build --preset release --target insideoutd insideoutctl insideout_tour
exec build/release/bin/insideoutd "$@"
