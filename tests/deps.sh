#!/usr/bin/env bash
# The Debian packages tokend needs, in one place. `tests/deps.sh build` or
# `tests/deps.sh test` installs what is missing (as root, or through sudo);
# `tests/deps.sh list test` prints the list.
#
# Debian 12 (bookworm) and Debian 13 (trixie) are supported; the release is
# read from /etc/os-release (DEBIAN_RELEASE=bookworm|trixie overrides it, to
# print another release's list). Where package names differ it is said below.
set -euo pipefail

release=${DEBIAN_RELEASE:-}
if [[ -z $release ]]; then
    # shellcheck disable=SC1091 # os-release is not ours
    release=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
fi
valkey=()
case $release in
# clang's runtime (libFuzzer, the sanitizers) is versioned with the default
# clang of the release: 14 on Debian 12, 19 on Debian 13.
bookworm) clang_rt=libclang-rt-14-dev ;;
trixie)
    clang_rt=libclang-rt-19-dev
    valkey=(valkey-server valkey-sentinel)
    ;;
*)
    echo "deps.sh: Debian 12 (bookworm) and 13 (trixie) are supported, not '${release:-unknown}';" \
        "DEBIAN_RELEASE=trixie $0 $* picks the nearest" >&2
    exit 2
    ;;
esac

# libhiredis-dev is fleet mode's Redis client: 0.14.1 on Debian 12,
# 1.2.0 (with hiredis_ssl) on Debian 13, same package name on both.
build=(meson ninja-build gcc pkg-config libcurl4-openssl-dev libcjson-dev libmicrohttpd-dev
       libsystemd-dev libinih-dev libssl-dev libhiredis-dev curl ca-certificates)
# python3-pytest runs the integration tests; nginx-light is the reverse proxy
# in front, the TLS (HTTP/1.1 and HTTP/2) front of the stand-in and the
# benchmark's reference; openssl makes the tests' throwaway certificates; prometheus brings promtool; clang
# and its runtime build the fuzzers; valgrind checks leaks; debootstrap and
# systemd-container boot a real systemd for the systemctl tests; tinyproxy is
# the real forward proxy of the [upstream] proxy test; python3-requests-oauthlib
# is a standard OAuth 2.0 client driving the drop-in; chromium (headless, driven
# over its DevTools protocol with python3-websocket) is the real browser whose
# CORS, cookies and Sec-Fetch-Site test_access's page-on-another-origin test uses;
# redis-server and redis-sentinel are the real Redis (and Sentinel trio) the
# fleet tests start, and python3-redis is how those tests read and tamper with
# it (same names on Debian 12, Redis 7.0, and Debian 13, Redis 8.0); on
# Debian 13 the fleet's tests run against Valkey 8.1 too (valkey-server,
# valkey-sentinel: tests/debian13/run.sh);
# python3-yaml reads the alerting rules for test_observability; groff-base
# renders the man pages for the test that they have no warning.
test=("${build[@]}" python3 python3-pytest nginx-light openssl prometheus clang "$clang_rt" valgrind
      debootstrap systemd-container wrk hyperfine iproute2 procps tinyproxy python3-requests-oauthlib
      chromium python3-websocket redis-server redis-sentinel python3-redis python3-yaml groff-base
      ${valkey[@]+"${valkey[@]}"})

# tests/fleet-demo.sh: the build, and a Redis for the fleet to share
fleet=("${build[@]}" redis-server)

mode=${1:-build}
if [[ $mode == list ]]; then
    eval "echo \${${2:-build}[@]}"
    exit 0
fi
eval "pkgs=(\"\${${mode}[@]}\")"
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
((${#missing[@]} == 0)) && exit 0
sudo=()
[[ $(id -u) == 0 ]] || sudo=(sudo)
"${sudo[@]}" apt-get update -q
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q -o DPkg::Lock::Timeout=600 "${missing[@]}"
