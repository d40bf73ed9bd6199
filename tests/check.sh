#!/usr/bin/env bash
# The README's second command: the whole test suite (unit, integration,
# fuzz seed replay, benchmark self-test, and tokend under a real systemd in
# a container) on a build in build/. Arguments go to `meson test`.
set -euo pipefail
cd "$(dirname "$0")/.."
tests/deps.sh test
[[ -d build ]] || meson setup build
ninja -C build
if (($#)); then
    exec meson test -C build --no-rebuild --print-errorlogs "$@"
fi
# The container test spends most of its time downloading a minimal Debian
# the first time: it runs beside the rest rather than after it.
meson test -C build --no-rebuild --print-errorlogs --suite systemd --logbase systemd-testlog \
    >build/systemd-suite.out 2>&1 &
container=$!
rc=0
meson test -C build --no-rebuild --print-errorlogs --no-suite systemd || rc=$?
wait "$container" || rc=$?
cat build/systemd-suite.out
exit "$rc"
