#!/usr/bin/env bash
# The README's second command: the whole test suite (unit, integration,
# fuzz seed replay, systemd, benchmark self-test) on a build in build/.
set -euo pipefail
cd "$(dirname "$0")/.."
tests/deps.sh test
[[ -d build ]] || meson setup build
meson test -C build --print-errorlogs "$@"
