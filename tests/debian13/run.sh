#!/usr/bin/env bash
# The test suite on Debian 13 (trixie), from a Debian 12 machine.
#
#   tests/debian13/run.sh [--asan] [--bench [BENCH ARGS...]]
#   tests/debian13/run.sh --bench-only [BENCH ARGS...]
#
# 1. A minimal trixie root (debootstrap from the mirror apt is configured
#    with), or the cached one: $TOKEND_DEB13_ROOT_CACHE, default
#    /var/tmp/tokend-deb13-root.tar, keyed by the package list. The
#    container test keeps its own in $TOKEND_DEB13_CT_ROOT_CACHE (default
#    /var/tmp/tokend-ct-root-trixie.tar).
# 2. A copy of this source tree in it (/src; build directories and .git left
#    out), and there, as a user would on a fresh Debian 13: the README's test
#    command, `tests/check.sh`, which installs trixie's own packages with
#    tests/deps.sh, builds with the default options (werror, gcc 14) and runs
#    every suite but the container test: unit, integration (nginx 1.26
#    included), the fuzz corpora, the benchmark's self-test.
# 3. The container test, booted on trixie's systemd 257, driven from this
#    host by tests/systemd/run-container-test.sh with the units and the
#    binary built in step 2 (a container inside systemd-nspawn would need
#    nesting; this needs none).
# 3b. The fleet's tests (test_fleet, test_fleet_faults) again, against
#    Valkey 8.1 instead of Redis 8.0.
# 4. --asan: the suite again built with AddressSanitizer and UBSan, in trixie.
# 5. --bench: tests/bench/run.sh inside the root (default arguments:
#    --quick --only hit), tokend against trixie's nginx. --bench-only skips
#    steps 2 to 4 (the packages are still installed when missing).
#
# Steps 2 to 5 run with systemd-nspawn (not booted, the host's network).
# Exits non-zero when any step failed; the root is thrown away at the end
# (TOKEND_DEB13_KEEP=1 keeps it and says where).
set -euo pipefail

SRC=$(cd "$(dirname "$0")/../.." && pwd)
SUITE=trixie
CACHE_TAR=${TOKEND_DEB13_ROOT_CACHE:-/var/tmp/tokend-deb13-root.tar}

asan=no
bench=no
suite=yes
bench_args=(--quick --only hit)
while (($#)); do
    case $1 in
    --asan) asan=yes ;;
    --bench | --bench-only)
        bench=yes
        [[ $1 == --bench ]] || suite=no
        shift
        ((!$#)) || bench_args=("$@")
        break
        ;;
    *)
        sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
        exit 2
        ;;
    esac
    shift
done

[[ $(id -u) == 0 ]] || {
    echo "debian13/run.sh: needs root (debootstrap, systemd-nspawn)" >&2
    exit 2
}
PACKAGES=$(DEBIAN_RELEASE=$SUITE "$SRC/tests/deps.sh" list test)
STAMP="suite=$SUITE packages=$PACKAGES"

start=$SECONDS
step() { printf '\n=== [debian13 %4d s] %s\n' $((SECONDS - start)) "$*"; }
WORK=$(mktemp -d /var/tmp/tokend-deb13.XXXXXX)
ROOT=$WORK/root
failed=()

cleanup() {
    local rc=$?
    if [[ ${TOKEND_DEB13_KEEP:-} == 1 ]]; then
        echo "the trixie root is kept in $ROOT"
    else
        rm -rf --one-file-system "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

# A command in the root as root, /src the working directory. Not booted;
# the host's network, so apt and the tests' loopback work as on a machine.
in_root() {
    systemd-nspawn --quiet --register=no --keep-unit --machine="tokend-deb13-$$" -D "$ROOT" --pipe \
        --chdir=/src --setenv=DEBIAN_FRONTEND=noninteractive --setenv=LC_ALL=C.UTF-8 \
        --setenv=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$@" </dev/null
}
run_step() { # name command...: runs it, records a failure, goes on
    local name=$1 t=$SECONDS rc=0
    shift
    "$@" || rc=$?
    echo "--- debian13 $name: exit $rc after $((SECONDS - t)) s"
    ((rc == 0)) || failed+=("$name")
    return 0
}

# ------------------------------------------------------------------ the root
step "the trixie root"
mkdir -p "$ROOT"
if [[ -f $CACHE_TAR ]] && [[ $(tar -xOf "$CACHE_TAR" ./.tokend-deb13-stamp 2>/dev/null) == "$STAMP" ]] &&
    tar -C "$ROOT" --numeric-owner -xf "$CACHE_TAR"; then
    echo "from the cached root $CACHE_TAR"
    fresh=no
else
    rm -rf --one-file-system "$ROOT" && mkdir -p "$ROOT"
    MIRROR=$(python3 "$SRC/tests/systemd/mirror.py" "$SUITE")
    SECURITY=$(python3 "$SRC/tests/systemd/mirror.py" "$SUITE-security")
    echo "debootstrap $SUITE from $MIRROR (the cache $CACHE_TAR is absent or stale)"
    timeout 900 debootstrap --variant=minbase "$SUITE" "$ROOT" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 || {
        tail -30 "$WORK/debootstrap.log"
        echo "FAIL: debootstrap failed" >&2
        exit 1
    }
    cat >"$ROOT/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY $SUITE-security main
EOF
    fresh=yes
fi
grep PRETTY_NAME "$ROOT/etc/os-release"

step "the source tree into /src"
mkdir -p "$ROOT/src"
tar -C "$SRC" --exclude='./build*' --exclude=./.git --exclude=__pycache__ -cf - . | tar -C "$ROOT/src" -xf -

# ------------------------------------------------------------------ the suite
# On a fresh root this is where trixie's packages are installed, by the
# README's own command.
if [[ $suite == yes ]]; then
    step "the README's test command in trixie: tests/check.sh --no-suite systemd"
    run_step "tests/check.sh" in_root tests/check.sh --no-suite systemd
else
    step "trixie's packages: tests/deps.sh test"
    run_step "tests/deps.sh" in_root tests/deps.sh test
fi
# shellcheck disable=SC2016 # expanded in the root, by its sh
in_root sh -c 'echo "gcc $(gcc -dumpversion), meson $(meson --version), libmicrohttpd $(pkg-config --modversion libmicrohttpd), libcurl $(pkg-config --modversion libcurl), systemd $(pkg-config --modversion libsystemd), nginx $(nginx -v 2>&1 | sed "s/.*nginx\///")"' || true

# cached for the next run once every package is in (tests/deps.sh test
# does nothing then), whatever the tests said; never required
if [[ $fresh == yes ]] && in_root tests/deps.sh test >/dev/null 2>&1; then
    echo "$STAMP" >"$ROOT/.tokend-deb13-stamp"
    in_root apt-get clean >/dev/null 2>&1 || true
    if tar -C "$ROOT" --numeric-owner --exclude=./src -cf "$CACHE_TAR.tmp.$$" . 2>/dev/null; then
        mv "$CACHE_TAR.tmp.$$" "$CACHE_TAR"
        echo "cached the root in $CACHE_TAR ($(du -h "$CACHE_TAR" | cut -f1))"
    else
        rm -f "$CACHE_TAR.tmp.$$"
    fi
fi

# ------------------------------------------------------------------ systemd 257
container_test() {
    step "the container test, booted on trixie's systemd"
    [[ -x $ROOT/src/build/src/instacart-tokend ]] || {
        echo "no trixie build to test"
        return 1
    }
    rm -rf "$ROOT/ct-destdir"
    in_root meson install -C /src/build --destdir /ct-destdir --no-rebuild --quiet >/dev/null
    TOKEND_CT_SUITE=$SUITE TOKEND_CT_DESTDIR=$ROOT/ct-destdir \
        TOKEND_CT_ROOT_CACHE=${TOKEND_DEB13_CT_ROOT_CACHE:-/var/tmp/tokend-ct-root-$SUITE.tar} \
        "$SRC/tests/systemd/run-container-test.sh" "$ROOT/src" "$ROOT/src/build"
}
[[ $suite == no ]] || run_step "container test (systemd)" container_test

# ------------------------------------------------------------------ Valkey
# The README says fleet mode works with Valkey 8.1 (Debian 13's): the
# fleet's tests, the fault test's short form included, against it.
if [[ $suite == yes ]]; then
    step "the fleet's tests against Valkey 8.1 (valkey-server, valkey-sentinel)"
    run_step "fleet on valkey" in_root env TOKEND_REDIS_SERVER=/usr/bin/valkey-server \
        TOKEND_REDIS_SENTINEL=/usr/bin/valkey-sentinel sh -c '/usr/bin/valkey-server --version &&
        meson test -C build --print-errorlogs test_fleet test_fleet_faults'
fi

# ------------------------------------------------------------------ options
if [[ $asan == yes ]]; then
    step "the suite built with AddressSanitizer and UndefinedBehaviorSanitizer, in trixie"
    run_step "asan" in_root sh -c 'meson setup build-asan -Db_sanitize=address,undefined >/dev/null &&
        ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
        meson test -C build-asan --print-errorlogs --no-suite systemd --no-suite bench'
fi

if [[ $bench == yes ]]; then
    step "the benchmark in trixie: tests/bench/run.sh ${bench_args[*]}"
    run_step "bench" in_root tests/bench/run.sh "${bench_args[@]}"
fi

step "done"
if ((${#failed[@]})); then
    echo "debian13: FAILED: ${failed[*]} (after $((SECONDS - start)) s)"
    exit 1
fi
echo "debian13: every step passed in $((SECONDS - start)) s"
