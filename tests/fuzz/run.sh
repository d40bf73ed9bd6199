#!/bin/bash
# Runs the libFuzzer targets for a while each.
#
#   tests/fuzz/run.sh [SECONDS] [TARGET...]
#
# SECONDS defaults to 60; TARGETs are config, token-answer, query, assertion,
# dropin, proxy-path, snapshot, keys, seal, guard, head (all when none is named). Configures
# build-fuzz (clang, ASan, UBSan) when it is not configured yet, builds, and
# runs each target on a scratch copy of its seed corpus, at most FUZZ_JOBS (default 2) at once. Nothing is written into
# the source tree: new inputs and crash artifacts go to the scratch directory
# (FUZZ_SCRATCH, default a fresh mktemp -d), kept when something was found.
# Exits non-zero when any target crashed, leaked, timed out or broke an
# invariant.
#
# Environment: FUZZ_BUILD_DIR (default <source>/build-fuzz), FUZZ_JOBS,
# FUZZ_SCRATCH, FUZZ_SETUP_ARGS (extra arguments for meson setup).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
all_targets=(config token-answer query assertion dropin proxy-path snapshot keys seal guard head fleet-reply)

usage() {
    echo "usage: $0 [SECONDS] [TARGET...]; targets: ${all_targets[*]}" >&2
    exit 2
}

seconds=60
if [[ $# -gt 0 && $1 =~ ^[0-9]+$ ]]; then
    seconds=$1
    shift
fi
[[ $seconds -ge 1 ]] || usage
targets=()
for t in "$@"; do
    t=${t#fuzz-}
    [[ " ${all_targets[*]} " == *" $t "* ]] || usage
    targets+=("$t")
done
[[ ${#targets[@]} -gt 0 ]] || targets=("${all_targets[@]}")

build=${FUZZ_BUILD_DIR:-$root/build-fuzz}
jobs=${FUZZ_JOBS:-2}
[[ $jobs =~ ^[1-9][0-9]*$ ]] || usage

if [[ ! -f $build/build.ninja ]]; then
    # shellcheck disable=SC2086 # FUZZ_SETUP_ARGS is a list of arguments
    CC=clang meson setup "$build" "$root" -Dfuzz=true -Db_sanitize=address,undefined \
        -Db_lundef=false ${FUZZ_SETUP_ARGS:-}
fi
ninja -C "$build" "${targets[@]/#/tests/fuzz/fuzz-}"

if [[ -n ${FUZZ_SCRATCH:-} ]]; then
    scratch=$FUZZ_SCRATCH
    mkdir -p "$scratch"
else
    scratch=$(mktemp -d "${TMPDIR:-/tmp}/tokend-fuzz.XXXXXX")
fi

# Starts one target in the background, on a scratch corpus seeded from the
# repository, artifacts beside it; the background pid is the fuzzer itself.
start_one() {
    local t=$1 dir=$scratch/$1
    local -a dict=()

    rm -rf "$dir"
    mkdir -p "$dir/corpus" "$dir/artifacts"
    cp "$here/corpus/$t"/* "$dir/corpus/"
    if [[ -f $here/dict/$t.dict ]]; then
        dict=("-dict=$here/dict/$t.dict")
    fi
    "$build/tests/fuzz/fuzz-$t" "${dict[@]}" -max_total_time="$seconds" -timeout=10 \
        -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$dir/artifacts/" \
        "$dir/corpus" >"$dir/log" 2>&1 &
    pid_target[$!]=$t
}

report() {
    local t=$1 rc=$2 dir=$scratch/$1 f

    if [[ $rc -eq 0 ]]; then
        echo "== fuzz-$t: ok, $(grep -E '^#[0-9]+[[:space:]]+DONE' "$dir/log" | tail -n 1)"
        grep -E '^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)' "$dir/log" |
            sed 's/^/   /'
        return
    fi
    echo "== fuzz-$t: FAILED (exit $rc); log follows"
    tail -n 60 "$dir/log"
    for f in "$dir/artifacts"/*; do
        [[ -f $f ]] || continue
        echo "-- artifact $f ($(stat -c %s "$f") bytes), base64:"
        head -c 4096 "$f" | base64
    done
}

failed=0
declare -A pid_target=()
# an interrupted run (CI timeout, ^C) leaves no fuzzer behind
stop_all() {
    local p
    for p in "${!pid_target[@]}"; do
        kill "$p" 2>/dev/null || true
    done
}
trap stop_all EXIT
trap 'exit 130' INT TERM
finish_one() {
    local pid rc=0
    wait -n -p pid || rc=$?
    report "${pid_target[$pid]}" "$rc"
    [[ $rc -eq 0 ]] || failed=1
    unset "pid_target[$pid]"
}

echo "fuzzing ${targets[*]} for ${seconds}s each, $jobs at a time, in $scratch"
for t in "${targets[@]}"; do
    while [[ ${#pid_target[@]} -ge $jobs ]]; do
        finish_one
    done
    start_one "$t"
done
while [[ ${#pid_target[@]} -gt 0 ]]; do
    finish_one
done

if [[ $failed -ne 0 ]]; then
    echo "fuzzing found something: inputs and logs are in $scratch" >&2
    exit 1
fi
[[ -n ${FUZZ_SCRATCH:-} ]] || rm -rf "$scratch"
echo "all targets ran ${seconds}s without a finding"
