#!/usr/bin/env bash
# The benchmark of instacart-tokend: tokend beside nginx, in one run.
#
#   tests/bench/run.sh            the whole benchmark (about 12 minutes)
#   tests/bench/run.sh --quick    3 s runs, 5,000 miss-path users, memory to 100,000 users
#   tests/bench/run.sh --selftest a one-second miniature of every step (the test suite runs it)
#
# Other options go to bench.py: --no-pin, --only hit,coalesce,miss,memory,startup,instructions,tls,fleet,
# --json FILE (raw figures), --keep (keep the temporary directory), --wait-quiet S.
#
# Builds tokend optimised in its own build directory, build-bench
# (-Dbuildtype=release), unless TOKEND_BUILD_DIR names a build to use (the
# test suite does). Needs wrk, nginx, openssl, valgrind and redis-server (tests/deps.sh test installs them):
#   apt-get install wrk nginx-light openssl valgrind redis-server
# Everything runs on 127.0.0.1; nothing is left running afterwards. See README.md here.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)

mode=full
pass=()
for arg in "$@"; do
    case $arg in
    --quick) mode=quick ;;
    --selftest) mode=selftest ;;
    -h | --help)
        sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *) pass+=("$arg") ;;
    esac
done

if [[ -n ${TOKEND_BUILD_DIR:-} ]]; then
    build=$TOKEND_BUILD_DIR
else
    build=$root/build-bench
    if [[ ! -f $build/build.ninja ]]; then
        # werror off: this build measures; the suite's own build is the one that lints
        meson setup "$build" "$root" -Dbuildtype=release -Db_ndebug=true -Dwerror=false >/dev/null
    fi
    ninja -C "$build" src/instacart-tokend tests/stub/instacart-stub tests/bench/bench-client tests/bench/link-floor >/dev/null
fi

if [[ $mode != selftest ]]; then
    missing=()
    command -v wrk >/dev/null || missing+=(wrk)
    command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || missing+=(nginx-light)
    if ((${#missing[@]})); then
        echo "run.sh: missing ${missing[*]}: apt-get install ${missing[*]}" >&2
        exit 2
    fi
fi

# wrk at 1,000 connections, and tokend and nginx serving them, need descriptors
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

export PATH=$PATH:/usr/sbin
exec /usr/bin/python3 "$here/bench.py" --build-dir "$build" --mode "$mode" \
    --command "tests/bench/run.sh $*" ${pass[@]+"${pass[@]}"}
