#!/usr/bin/env bash
# tokend under a real systemd: a minimal Debian booted with
# systemd-nspawn, tokend installed into it with `meson install --destdir`, the
# Instacart stand-in running beside it as a unit of its own, driven from the
# host with nsenter (machinectl and systemctl -M do not work on these
# machines).
#
#   run-container-test.sh SOURCE_DIR BUILD_DIR
#
# Checks: the units verify without a warning; the socket starts the service;
# `systemctl status` shows it active with its status line; a token is served;
# the journal gets structured mint events; a reload with a rotated secret
# takes effect; a refused reload (an unknown key, an empty secret) fails
# `systemctl reload` with the reason while tokend keeps serving, and a good
# one is applied when `systemctl reload` returns; `systemctl restart` keeps
# 1,000 cached tokens (the stand-in counts the mints); a SIGSTOPped daemon
# is killed and restarted by the watchdog; whether `systemctl stop` then
# `start` keeps the cache, against what the unit says; a drop-in's
# ListenStream= moves the port, and a listen that differs is warned about;
# two template instances side by side (own client id, socket, journal
# identity, reload, cache); `systemctl stop` is clean; the security
# exposure score. It also
# measures whether this systemd re-reads LoadCredential= on `systemctl
# reload` by itself (none up to 257 does), which is why the unit copies a
# rotated secret with its own ExecReload= line.
#
# The Debian release booted is the host's (Debian 12 bookworm, or 13
# trixie); TOKEND_CT_SUITE names another. The build must then come from that
# release too: TOKEND_CT_DESTDIR names a tree that `meson install --destdir`
# filled there (tests/debian13/run.sh does this), and BUILD_DIR is only where
# the stand-in's binary is taken from.
#
# Exit 77 (skipped) only without root or without systemd-nspawn/debootstrap
# (Debian: systemd-container, debootstrap). The debootstrapped root is kept
# in $TOKEND_CT_ROOT_CACHE (default /var/tmp/tokend-ct-root.tar for
# bookworm, /var/tmp/tokend-ct-root-SUITE.tar for the others) for the next
# run; without it the root is built from the mirror apt is configured with.
set -euo pipefail

SRC=$(cd "${1:?usage: run-container-test.sh SOURCE_DIR BUILD_DIR}" && pwd)
BUILD=$(cd "${2:?usage: run-container-test.sh SOURCE_DIR BUILD_DIR}" && pwd)
HERE=$SRC/tests/systemd
# shellcheck disable=SC1091 # os-release is not ours
SUITE=${TOKEND_CT_SUITE:-$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")}
case $SUITE in
bookworm)
    PACKAGES=systemd,systemd-sysv,dbus,procps,libcurl4,libcjson1,libmicrohttpd12,libsystemd0,libinih1,libhiredis0.14
    CACHE_TAR=${TOKEND_CT_ROOT_CACHE:-/var/tmp/tokend-ct-root.tar}
    ;;
trixie) # the 64-bit time_t transition renamed libcurl4 and libmicrohttpd12; hiredis is 1.2 (soname 1.1.0)
    PACKAGES=systemd,systemd-sysv,dbus,procps,libcurl4t64,libcjson1,libmicrohttpd12t64,libsystemd0,libinih1,libhiredis1.1.0
    CACHE_TAR=${TOKEND_CT_ROOT_CACHE:-/var/tmp/tokend-ct-root-$SUITE.tar}
    ;;
*)
    echo "run-container-test.sh: no package list for Debian '$SUITE' (bookworm, trixie)" >&2
    exit 2
    ;;
esac
DESTDIR=${TOKEND_CT_DESTDIR:-}
STAMP="suite=$SUITE packages=$PACKAGES"
USERS=1000
WATCHDOG_SEC=5 # the shipped unit says 30 s; a drop-in shortens it for the test

skip() {
    echo "SKIP: $*"
    exit 77
}
[[ $(id -u) == 0 ]] || skip "needs root (debootstrap, systemd-nspawn)"
for tool in systemd-nspawn debootstrap nsenter python3; do
    command -v "$tool" >/dev/null || skip "$tool is missing (Debian packages: systemd-container debootstrap)"
done

start=$SECONDS
step() { printf '\n=== [%3d s] %s\n' $((SECONDS - start)) "$*"; }
fail() {
    echo "FAIL: $*" >&2
    exit 1
}

WORK=$(mktemp -d /var/tmp/tokend-ct.XXXXXX)
ROOT=$WORK/root
NSPAWN_PID=
LEADER=

# nsenter into every namespace of the container's PID 1, bounded in time.
ct() { timeout "${CT_TIMEOUT:-60}" nsenter -t "$LEADER" -a env SYSTEMD_PAGER= SYSTEMD_COLORS=0 "$@"; }
# The host's python3 in the container's network only: HTTP to its loopback.
client() { timeout "${CT_TIMEOUT:-120}" nsenter -t "$LEADER" -n /usr/bin/python3 "$HERE/ct_client.py" "$@"; }
# The unit's journal, or with JOURNAL_TAG set, that journal identity's.
journal() {
    if [[ -n ${JOURNAL_TAG:-} ]]; then
        ct journalctl --no-pager -t "$JOURNAL_TAG" "$@"
    else
        ct journalctl --no-pager -u "${JOURNAL_UNIT:-instacart-tokend.service}" "$@"
    fi
}
# Whether the unit's journal has a line matching $1 now. Not `journal | grep -q`:
# grep's early exit would kill journalctl with SIGPIPE, a failure under pipefail.
journal_has_now() {
    local text
    text=$(journal -o cat)
    grep -qi -- "$1" <<<"$text"
}
# Whether such a line arrives within 15 s. journald takes a service's lines
# asynchronously: one written just before `systemctl reload` returned may not
# be readable yet when it does (a CI run on a slow machine saw exactly that).
journal_has() {
    local deadline=$((SECONDS + 15))
    until journal_has_now "$1"; do
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
}

cleanup() {
    local rc=$?
    trap - EXIT
    set +e
    if ((rc != 0 && rc != 77)) && [[ -n $LEADER ]]; then
        echo "--- the container's view, for the failure above"
        CT_TIMEOUT=20 ct systemctl --no-pager status instacart-tokend.service instacart-stub.service 2>&1 | tail -30
        CT_TIMEOUT=20 journal -n 60 2>&1
    fi
    if [[ -n $NSPAWN_PID ]] && kill -0 "$NSPAWN_PID" 2>/dev/null; then
        step "power off the container"
        # nspawn turns SIGTERM into a clean poweroff of the container
        kill -TERM "$NSPAWN_PID"
        for _ in $(seq 1 150); do
            kill -0 "$NSPAWN_PID" 2>/dev/null || break
            sleep 0.2
        done
        if kill -0 "$NSPAWN_PID" 2>/dev/null; then
            echo "the container did not power off within 30 s: killing it"
            kill -KILL "$NSPAWN_PID"
        fi
        wait "$NSPAWN_PID" 2>/dev/null
    fi
    if ((rc != 0 && rc != 77)) && [[ -f $WORK/console.log ]]; then
        echo "--- container console (last lines)"
        tail -20 "$WORK/console.log"
    fi
    rm -rf --one-file-system "$WORK"
    echo "container test: exit $rc after $((SECONDS - start)) s"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

# Polls a command until it succeeds, or fails the test at the deadline.
wait_until() {
    local secs=$1 what=$2
    shift 2
    local deadline=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || fail "timed out after ${secs} s waiting for $what"
        sleep 0.2
    done
}

# The Debian mirror apt on this machine uses, for $SUITE.
mirror() { python3 "$HERE/mirror.py" "$SUITE"; }

# ------------------------------------------------------------------ the root
step "root file system"
mkdir -p "$ROOT"
if [[ -f $CACHE_TAR ]] && [[ $(tar -xOf "$CACHE_TAR" ./.tokend-ct-stamp 2>/dev/null) == "$STAMP" ]] &&
    tar -C "$ROOT" --numeric-owner -xf "$CACHE_TAR"; then
    echo "from the cached root $CACHE_TAR"
else
    rm -rf --one-file-system "$ROOT" && mkdir -p "$ROOT"
    MIRROR=$(mirror)
    echo "debootstrap $SUITE from $MIRROR (the cache $CACHE_TAR is absent or stale)"
    timeout 900 debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$ROOT" "$MIRROR" \
        >"$WORK/debootstrap.log" 2>&1 || {
        tail -30 "$WORK/debootstrap.log"
        fail "debootstrap failed"
    }
    echo "$STAMP" >"$ROOT/.tokend-ct-stamp"
    rm -f "$ROOT"/var/cache/apt/archives/*.deb "$ROOT"/var/lib/apt/lists/*_Packages
    # cached for the next run; never required
    if tar -C "$ROOT" --numeric-owner -cf "$CACHE_TAR.tmp.$$" . 2>/dev/null; then
        mv "$CACHE_TAR.tmp.$$" "$CACHE_TAR"
    else
        rm -f "$CACHE_TAR.tmp.$$"
    fi
fi

# ------------------------------------------------------------------ install
if [[ -n $DESTDIR ]]; then
    step "copy the tree installed in $SUITE ($DESTDIR) into the root"
    cp -a "$DESTDIR/." "$ROOT/"
else
    step "meson install --destdir into the root"
    meson install -C "$BUILD" --destdir "$ROOT" --no-rebuild --quiet >"$WORK/install.log" 2>&1 || {
        cat "$WORK/install.log"
        fail "meson install failed"
    }
fi
install -m 0755 "$BUILD/tests/stub/instacart-stub" "$ROOT/usr/local/bin/instacart-stub"
UNIT_FILE=$(find "$ROOT/lib/systemd/system/" "$ROOT/usr/lib/systemd/system/" "$ROOT/usr/local/lib/systemd/system/" \
    -maxdepth 1 -name instacart-tokend.service 2>/dev/null | head -1 || true)
[[ -n $UNIT_FILE ]] || fail "meson install put no instacart-tokend.service in a unit directory"
UNIT_DIR=${UNIT_FILE#"$ROOT"}
UNIT_DIR=${UNIT_DIR%/*}
[[ -f $ROOT$UNIT_DIR/instacart-tokend.socket ]] || fail "no instacart-tokend.socket beside the service"
CONFIG=$(sed -n 's/^ExecStart=.*--config \([^ ]*\).*/\1/p' "$UNIT_FILE")
SECRET=$(sed -n 's/^LoadCredential=client_secret:\(.*\)$/\1/p' "$UNIT_FILE")
[[ -n $CONFIG && -n $SECRET ]] || fail "cannot read the configuration and secret paths from the unit"
[[ -f $ROOT$CONFIG ]] || fail "meson install did not install the sample configuration at $CONFIG"
grep -q '^\[upstream\]' "$ROOT$CONFIG" || fail "$CONFIG is not the sample configuration"
echo "units in $UNIT_DIR; configuration $CONFIG; secret $SECRET"

# This test's configuration: the stand-in on loopback, the unit's socket.
cat >"$ROOT$CONFIG" <<'EOF'
[upstream]
base_url = http://127.0.0.1:9797
client_id = ct-client
[server]
listen = 127.0.0.1:8787
[log]
level = info
EOF
chmod 0644 "$ROOT$CONFIG"
write_secret() { # root-only, as the unit expects: LoadCredential= copies it
    install -m 0600 /dev/null "$ROOT$1.tmp"
    printf '%s\n' "$2" >"$ROOT$1.tmp"
    mv "$ROOT$1.tmp" "$ROOT$1"
}
mkdir -p "$ROOT${SECRET%/*}" "$ROOT/etc/instacart-stub"
write_secret "$SECRET" ct-secret-1
write_secret /etc/instacart-stub/secret ct-secret-1
cat >"$ROOT/etc/systemd/system/instacart-stub.service" <<'EOF'
[Unit]
Description=Instacart stand-in for the container test
[Service]
ExecStart=/usr/local/bin/instacart-stub --listen 127.0.0.1:9797 --client-id ct-client --client-secret-file /etc/instacart-stub/secret
EOF
mkdir -p "$ROOT/etc/systemd/system/instacart-tokend.service.d"
printf '[Service]\nWatchdogSec=%ss\n' "$WATCHDOG_SEC" >"$ROOT/etc/systemd/system/instacart-tokend.service.d/test-watchdog.conf"
# A unit of nothing but a credential, to see whether this systemd re-reads
# LoadCredential= on reload by itself.
install -m 0600 /dev/null "$ROOT/etc/ct-probe-secret"
echo probe-1 >"$ROOT/etc/ct-probe-secret"
cat >"$ROOT/etc/systemd/system/ct-credential-probe.service" <<'EOF'
[Service]
ExecStart=/bin/sleep infinity
ExecReload=/bin/true
LoadCredential=probe:/etc/ct-probe-secret
EOF
# a quiet boot: nothing the test does not need
: >"$ROOT/etc/machine-id"
echo tokend-ct >"$ROOT/etc/hostname"

# ------------------------------------------------------------------ boot
step "boot the container"
systemd-nspawn -b --register=no --keep-unit --private-network --console=read-only \
    -D "$ROOT" --machine="tokend-ct-$$" >"$WORK/console.log" 2>&1 </dev/null &
NSPAWN_PID=$!
find_leader() {
    LEADER=$(pgrep -P "$NSPAWN_PID" -x systemd | head -1)
    [[ -n $LEADER ]]
}
wait_until 60 "the container's systemd to start" find_leader
echo "nspawn $NSPAWN_PID, the container's PID 1 is host PID $LEADER"
# systemctl needs PID 1's private socket, which comes a moment after exec
wait_until 60 "the container's systemd to take commands" ct test -S /run/systemd/private
state=$(CT_TIMEOUT=120 ct systemctl is-system-running --wait 2>&1) || true
echo "system: $state"
[[ $state == running || $state == degraded ]] || fail "the container did not boot: $state"
if [[ $state == degraded ]]; then
    ct systemctl --no-pager --failed || true
fi

# ------------------------------------------------------------------ checks
step "systemd-analyze verify"
for u in instacart-tokend@.service instacart-tokend@.socket; do
    [[ -f $ROOT$UNIT_DIR/$u ]] || fail "meson install put no $u beside the plain units"
done
# --man=no: the root has no man(1) to look the Documentation= pages up with
out=$(ct systemd-analyze verify --man=no "$UNIT_DIR/instacart-tokend.service" "$UNIT_DIR/instacart-tokend.socket" \
    "$UNIT_DIR/instacart-tokend@.service" "$UNIT_DIR/instacart-tokend@.socket" 2>&1) ||
    fail "systemd-analyze verify failed: $out"
[[ -z $out ]] || fail "systemd-analyze verify warned: $out"
echo "no warning"

step "does $(ct systemctl --version | head -1) refresh credentials on reload by itself?"
ct systemctl start ct-credential-probe.service
probe() { ct cat /run/credentials/ct-credential-probe.service/probe; }
[[ $(probe) == probe-1 ]] || fail "the probe unit did not get its credential"
echo probe-2 >"$ROOT/etc/ct-probe-secret"
ct systemctl reload ct-credential-probe.service
native=no
[[ $(probe) == probe-2 ]] && native=yes
ct systemctl stop ct-credential-probe.service
echo "RESULT: systemd re-reads LoadCredential= on reload: $native"
# The unit's root ExecReload= line copies the rotated secret because systemd
# does not. Where systemd does it itself, the line must go.
if grep -q '^ExecReload=+' "$UNIT_FILE"; then
    [[ $native == no ]] || fail "systemd refreshes credentials itself, yet the unit still copies the secret"
    echo "so the unit's ExecReload=+ copy of the secret is needed here"
else
    [[ $native == yes ]] || fail "the unit has no ExecReload=+ copy and systemd does not refresh credentials"
fi

step "the socket starts the service on the first connection"
ct systemctl start instacart-stub.service
wait_until 20 "the stand-in to answer" client stub-stats
ct systemctl start instacart-tokend.socket
[[ $(ct systemctl is-active instacart-tokend.service) == inactive ]] || fail "the service ran before any connection"
read -r status how _ < <(client token first-user)
[[ $status == 200 && $how == miss ]] || fail "first token: $status $how"
[[ $(ct systemctl is-active instacart-tokend.service) == active ]] || fail "the service is not active after a connection"
echo "first token served (HTTP $status, $how); the service is active"

step "systemctl status"
wait_until 10 "the status line to count the mint" sh -c \
    "nsenter -t $LEADER -a systemctl show -p StatusText --value instacart-tokend.service | grep -q '1 ok'"
status_out=$(ct systemctl --no-pager status instacart-tokend.service 2>&1 || true)
echo "$status_out" | sed -n '1,6p'
grep -q 'Active: active (running)' <<<"$status_out" || fail "status does not say active (running)"
grep -q 'Status: ".*tokens\? cached; mints: 1 ok' <<<"$status_out" || fail "status has no status line"

step "the journal: structured mint events"
events=$(journal -o verbose MESSAGE_ID=ad808c4429fd4af99c549760518e4f5c 2>&1)
for field in USER_FINGERPRINT= UPSTREAM_STATUS=200 LATENCY_MS= PRIORITY=6; do
    grep -q "$field" <<<"$events" || fail "no $field in the journal's mint event: $events"
done
if journal_has_now ct-secret; then fail "the secret is in the journal"; fi
echo "MESSAGE_ID, USER_FINGERPRINT, UPSTREAM_STATUS, LATENCY_MS present; no secret"

step "reload with a rotated secret"
client stub-credentials ct-client ct-secret-2 # Instacart now knows only the new one
read -r status _ < <(client token rotation-before)
[[ $status == 502 ]] || fail "the old secret still works at the stand-in ($status)"
write_secret "$SECRET" ct-secret-2
pid_before=$(ct systemctl show -p MainPID --value instacart-tokend.service)
ct systemctl reload instacart-tokend.service
client wait-token rotation-after 20 || fail "no token with the rotated secret after the reload"
[[ $(ct systemctl show -p MainPID --value instacart-tokend.service) == "$pid_before" ]] ||
    fail "the reload restarted the process"
read -r status how _ < <(client token first-user)
[[ $status == 200 && $how == hit ]] || fail "the reload lost the cache ($status $how)"
journal_has 'reloaded' || fail "no reload in the journal"
echo "new mints use the rotated secret; same process; cache kept"

step "a refused reload fails systemctl reload with the reason; tokend keeps serving"
cp -p "$ROOT$CONFIG" "$WORK/config.good"
printf '[server]\nno_such_key = 1\n' >>"$ROOT$CONFIG"
pid_before=$(ct systemctl show -p MainPID --value instacart-tokend.service)
if out=$(ct systemctl reload instacart-tokend.service 2>&1); then
    fail "systemctl reload succeeded with an unknown key in the configuration"
fi
echo "systemctl reload: $out"
status_out=$(ct systemctl --no-pager -n 20 status instacart-tokend.service 2>&1 || true)
grep -q "$CONFIG:.*no_such_key" <<<"$status_out" || fail "systemctl status does not show why: $status_out"
grep "no_such_key" <<<"$status_out" | tail -1
[[ $(ct systemctl is-active instacart-tokend.service) == active ]] || fail "a refused reload stopped tokend"
[[ $(ct systemctl show -p MainPID --value instacart-tokend.service) == "$pid_before" ]] ||
    fail "a refused reload restarted tokend"
read -r status how _ < <(client token first-user)
[[ $status == 200 && $how == hit ]] || fail "after a refused reload: $status $how"
cp -p "$WORK/config.good" "$ROOT$CONFIG"

step "an empty secret fails systemctl reload, naming the operator's file"
write_secret "$SECRET" ""
if ct systemctl reload instacart-tokend.service >/dev/null 2>&1; then
    fail "systemctl reload succeeded with an empty secret"
fi
journal_has "$SECRET: the client secret is empty" || fail "the journal does not name $SECRET as empty"
if journal_has_now "/run/instacart-tokend/client_secret"; then fail "a message names the runtime copy"; fi
[[ -z $(ct find /run/instacart-tokend -type f ! -name reload-result) ]] || fail "staged copies were left behind"
echo "refused, naming $SECRET; no copy left in /run/instacart-tokend"
write_secret "$SECRET" ct-secret-2
read -r status _ < <(client token after-refusals)
[[ $status == 200 ]] || fail "no token after the refused reloads ($status)"

step "a good reload is applied when systemctl reload returns"
level() { client status | python3 -c 'import json,sys; print(json.load(sys.stdin)["config"]["log"]["level"])'; }
[[ $(level) == info ]] || fail "the log level is not info before the reload: $(level)"
sed -i 's/^level = info$/level = debug/' "$ROOT$CONFIG"
ct systemctl reload instacart-tokend.service || fail "systemctl reload of a good configuration failed"
now=$(level)
echo "right after systemctl reload: [log] level = $now"
[[ $now == debug ]] || fail "systemctl reload returned before tokend applied the new level ($now)"
cp -p "$WORK/config.good" "$ROOT$CONFIG"
ct systemctl reload instacart-tokend.service || fail "reloading the original configuration failed"

step "systemctl restart keeps $USERS cached tokens"
read -r line < <(client fetch "$USERS" user-)
echo "first fetch: $line"
[[ $line == "ok=$USERS "* ]] || fail "fetching $USERS users: $line"
mints_before=$(client stub-stats | python3 -c 'import json,sys; print(json.load(sys.stdin)["mints"])')
pid_before=$(ct systemctl show -p MainPID --value instacart-tokend.service)
CT_TIMEOUT=90 ct systemctl restart instacart-tokend.service
[[ $(ct systemctl show -p MainPID --value instacart-tokend.service) != "$pid_before" ]] || fail "not restarted"
text=$(journal -o cat)
grep 'handed .* cached tokens' <<<"$text" | tail -1
grep 'restored .* cached tokens' <<<"$text" | tail -1
read -r line < <(client fetch "$USERS" user-)
mints_after=$(client stub-stats | python3 -c 'import json,sys; print(json.load(sys.stdin)["mints"])')
echo "after the restart: $line"
echo "RESULT: new mints after systemctl restart with $USERS cached users: $((mints_after - mints_before))"
[[ $line == "ok=$USERS hit=$USERS miss=0 failed=0" ]] || fail "tokens were lost over the restart: $line"
((mints_after == mints_before)) || fail "$((mints_after - mints_before)) new mints after the restart"

step "the watchdog kills and restarts a stopped process (WatchdogSec=${WATCHDOG_SEC}s)"
pid_before=$(ct systemctl show -p MainPID --value instacart-tokend.service)
restarts_before=$(ct systemctl show -p NRestarts --value instacart-tokend.service)
ct kill -STOP "$pid_before"
restarted() {
    local pid state
    pid=$(ct systemctl show -p MainPID --value instacart-tokend.service)
    state=$(ct systemctl is-active instacart-tokend.service)
    [[ $pid != 0 && $pid != "$pid_before" && $state == active ]]
}
wait_until $((WATCHDOG_SEC * 4 + 30)) "the watchdog to restart tokend" restarted
journal_has 'watchdog timeout' || fail "systemd logged no watchdog timeout"
echo "killed after the watchdog timeout and restarted: NRestarts $restarts_before -> $(ct systemctl show -p NRestarts --value instacart-tokend.service)"
read -r status _ < <(client token after-watchdog)
[[ $status == 200 ]] || fail "no token after the watchdog restart ($status)"

step "systemctl stop then start: does the cache survive?"
read -r line < <(client fetch 20 stopstart-)
[[ $line == "ok=20 "* ]] || fail "fetching 20 users: $line"
CT_TIMEOUT=90 ct systemctl stop instacart-tokend.service
ct systemctl start instacart-tokend.service
read -r line < <(client fetch 20 stopstart-)
kept=no
[[ $line == "ok=20 hit=20 "* ]] && kept=yes
echo "RESULT: the cache survives systemctl stop then start: $kept ($line)"
if grep -q '^FileDescriptorStorePreserve=yes' "$UNIT_FILE"; then
    [[ $kept == yes ]] || fail "the unit keeps the fd store over a stop, yet the cache was lost"
else
    [[ $kept == no ]] || fail "the cache survived a stop although the unit says it does not"
    grep -q 'loses the cache' "$UNIT_FILE" || fail "the unit does not say that stop then start loses the cache"
fi

step "a listen other than the socket's: warned about; a drop-in changes the port"
warnings() { journal -o cat | grep -c 'systemd passed a socket' || true; }
w0=$(warnings)
mkdir -p "$ROOT/etc/systemd/system/instacart-tokend.socket.d"
printf '[Socket]\nListenStream=\nListenStream=127.0.0.1:8788\n' >"$ROOT/etc/systemd/system/instacart-tokend.socket.d/port.conf"
ct systemctl daemon-reload
CT_TIMEOUT=90 ct systemctl restart instacart-tokend.socket instacart-tokend.service
read -r status _ < <(TOKEND_CT_ADDR=127.0.0.1:8788 client token new-port)
[[ $status == 200 ]] || fail "no token on the drop-in's port 8788 ($status)"
if TOKEND_CT_ADDR=127.0.0.1:8787 client token old-port >/dev/null 2>&1; then fail "still served on 8787"; fi
((w0 < $(warnings))) || fail "no warning that listen (8787) is not the socket systemd passed (8788)"
journal -o cat | grep 'systemd passed a socket' | tail -1
served=$(TOKEND_CT_ADDR=127.0.0.1:8788 client status | python3 -c 'import json,sys; print(*json.load(sys.stdin)["listening"])')
echo "/v1/status listening: $served"
[[ $served == "http://127.0.0.1:8788" ]] || fail "/v1/status reports $served, not the address served"
sed -i 's/^listen = 127.0.0.1:8787$/listen = 127.0.0.1:8788/' "$ROOT$CONFIG"
w1=$(warnings)
CT_TIMEOUT=90 ct systemctl restart instacart-tokend.service
read -r status _ < <(TOKEND_CT_ADDR=127.0.0.1:8788 client token new-port)
[[ $status == 200 ]] || fail "no token on 8788 after the restart ($status)"
((w1 == $(warnings))) || fail "warned although listen now says what the socket does"
echo "listen = 127.0.0.1:8788 as well: no warning"
rm -r "$ROOT/etc/systemd/system/instacart-tokend.socket.d"
cp -p "$WORK/config.good" "$ROOT$CONFIG"
ct systemctl daemon-reload
CT_TIMEOUT=90 ct systemctl restart instacart-tokend.socket instacart-tokend.service
read -r status _ < <(client token back-on-8787)
[[ $status == 200 ]] || fail "no token on 8787 after the drop-in went ($status)"

step "two template instances side by side"
client stub-credentials ct-client ct-secret-2 ct-client-a secret-a-1 ct-client-b secret-b-1
for name in a b; do
    cat >"$ROOT${CONFIG%/*}/$name.conf" <<EOF
[upstream]
base_url = http://127.0.0.1:9797
client_id = ct-client-$name
[server]
listen = unix:/run/instacart-tokend-$name.sock
[log]
level = info
EOF
    write_secret "${CONFIG%/*}/$name.client-secret" "secret-$name-1"
done
ct systemctl start instacart-tokend@a.socket instacart-tokend@b.socket
at() { TOKEND_CT_ADDR=unix:/proc/$LEADER/root/run/instacart-tokend-$1.sock client "${@:2}"; }
inst_status() { at "$1" status | python3 -c "import json,sys; s=json.load(sys.stdin); print($2)"; }
read -r sa ha fa < <(at a token shared-user)
read -r sb hb fb < <(at b token shared-user)
[[ $sa == 200 && $sb == 200 ]] || fail "the instances do not both serve: a $sa, b $sb"
[[ $fa != "$fb" ]] || fail "both instances handed out the same token"
[[ $(inst_status a 's["config"]["upstream"]["client_id"]') == ct-client-a ]] || fail "instance a is not client a"
[[ $(inst_status b 's["config"]["upstream"]["client_id"]') == ct-client-b ]] || fail "instance b is not client b"
for name in a b; do
    [[ $(ct systemctl is-active "instacart-tokend@$name.service") == active ]] || fail "instance $name is not active"
    JOURNAL_TAG=instacart-tokend-$name journal_has "listening on unix:/run/instacart-tokend-$name.sock" ||
        fail "no 'listening' line under the journal identity instacart-tokend-$name"
    ct test -d "/run/instacart-tokend-$name" || fail "no runtime directory /run/instacart-tokend-$name"
done
echo "a and b serve their own client ids on their own sockets, each under its own journal identity"
at a fetch 30 a-user- >/dev/null
at b fetch 10 b-user- >/dev/null

step "a reload of one instance leaves the other alone"
pid_b=$(ct systemctl show -p MainPID --value instacart-tokend@b.service)
client stub-credentials ct-client ct-secret-2 ct-client-a secret-a-2 ct-client-b secret-b-1
write_secret "${CONFIG%/*}/a.client-secret" secret-a-2
sed -i 's/^level = info$/level = debug/' "$ROOT${CONFIG%/*}/a.conf"
ct systemctl reload instacart-tokend@a.service || fail "reloading instance a failed"
[[ $(inst_status a 's["config"]["log"]["level"]') == debug ]] || fail "instance a's reload is not applied"
read -r status _ < <(at a token after-a-rotation)
[[ $status == 200 ]] || fail "instance a does not mint with its rotated secret ($status)"
[[ $(inst_status b 's["config"]["log"]["level"]') == info ]] || fail "instance b's configuration changed"
[[ $(ct systemctl show -p MainPID --value instacart-tokend@b.service) == "$pid_b" ]] || fail "instance b was restarted"
if JOURNAL_TAG=instacart-tokend-b journal_has_now reloaded; then fail "instance b reloaded"; fi
[[ -z $(ct find /run/instacart-tokend-b -type f) ]] || fail "something was staged in instance b's runtime directory"
read -r status _ < <(at b token after-a-rotation)
[[ $status == 200 ]] || fail "instance b stopped minting ($status)"
echo "a reloaded with its rotated secret; b untouched (same process, level info, nothing staged)"

step "a restart of one instance keeps that instance's cache only"
entries() { inst_status "$1" 's["cache"]["entries"]'; }
ea=$(entries a)
eb=$(entries b)
pid_a=$(ct systemctl show -p MainPID --value instacart-tokend@a.service)
CT_TIMEOUT=90 ct systemctl restart instacart-tokend@a.service
[[ $(ct systemctl show -p MainPID --value instacart-tokend@a.service) != "$pid_a" ]] || fail "a was not restarted"
[[ $(entries a) == "$ea" ]] || fail "instance a restored $(entries a) tokens, not its own $ea"
read -r sa2 ha2 fa2 < <(at a token shared-user)
[[ $sa2 == 200 && $ha2 == hit && $fa2 == "$fa" ]] || fail "instance a's own token was not restored ($sa2 $ha2)"
[[ $(ct systemctl show -p MainPID --value instacart-tokend@b.service) == "$pid_b" ]] || fail "b was restarted"
[[ $(entries b) -ge $eb ]] || fail "instance b lost tokens"
read -r sb2 hb2 fb2 < <(at b token shared-user)
[[ $sb2 == 200 && $hb2 == hit && $fb2 == "$fb" ]] || fail "instance b's token changed ($sb2 $hb2)"
echo "a restored its $ea tokens (its own: the same token for shared-user); b untouched with $(entries b)"
ct systemctl stop instacart-tokend@a.socket instacart-tokend@b.socket instacart-tokend@a.service instacart-tokend@b.service

step "fleet mode's key as a credential under the unit"
# Redis need not answer for this: the key is read at start and at reload
CONFDIR=${CONFIG%/*}
cat >"$ROOT$CONFDIR/c.conf" <<EOF
[upstream]
base_url = http://127.0.0.1:9797
client_id = ct-client-c
[server]
listen = unix:/run/instacart-tokend-c.sock
[shared]
redis = 127.0.0.1:6379
key_file = $CONFDIR/c.shared-key
EOF
write_secret "$CONFDIR/c.client-secret" secret-c-1
write_secret "$CONFDIR/c.shared-key" "$(printf 'ab%.0s' $(seq 32))"
# a root-only key_file: the dynamic user cannot read it
if CT_TIMEOUT=60 ct systemctl start instacart-tokend@c.service 2>/dev/null; then
    fail "instance c started with a root-only key_file, which its dynamic user cannot read"
fi
JOURNAL_UNIT=instacart-tokend@c.service journal_has "c.shared-key.*Permission denied" ||
    fail "the journal does not say why the root-only key_file failed"
echo "a root-only key_file: refused at start, as expected (Permission denied)"
# the supported way: the key as the credential shared_key
sed -i '/^key_file/d' "$ROOT$CONFDIR/c.conf"
mkdir -p "$ROOT/etc/systemd/system/instacart-tokend@c.service.d"
printf '[Service]\nLoadCredential=shared_key:%s\n' "$CONFDIR/c.shared-key" \
    >"$ROOT/etc/systemd/system/instacart-tokend@c.service.d/fleet.conf"
ct systemctl daemon-reload
ct systemctl reset-failed instacart-tokend@c.service
CT_TIMEOUT=60 ct systemctl start instacart-tokend@c.service || fail "instance c does not start with the key as a credential"
redis=$(at c status | python3 -c 'import json,sys; print(json.load(sys.stdin)["config"]["shared"]["redis"])')
[[ $redis == 127.0.0.1:6379 ]] || fail "instance c is not in fleet mode ($redis)"
ct instacart-tokend --check-config --config "$CONFDIR/c.conf" --unit instacart-tokend@c.service ||
    fail "--check-config --unit does not accept the credentials the unit names"
write_secret "$CONFDIR/c.shared-key" short
if out=$(ct instacart-tokend --check-config --config "$CONFDIR/c.conf" --unit instacart-tokend@c.service 2>&1); then
    fail "--check-config --unit accepted a broken shared key"
fi
grep -q "$CONFDIR/c.shared-key: the fleet's shared key must be" <<<"$out" || fail "--check-config --unit: $out"
[[ -z $(ct find /run -maxdepth 1 -name 'instacart-tokend-check.*') ]] || fail "--check-config --unit left its copies"
write_secret "$CONFDIR/c.shared-key" "$(printf 'ab%.0s' $(seq 32))"
echo "the key as LoadCredential=shared_key: started in fleet mode; --check-config --unit checks the unit's files"
# a reload copies the credential afresh: a broken key is refused, naming the operator's file
write_secret "$CONFDIR/c.shared-key" not-a-key
if ct systemctl reload instacart-tokend@c.service 2>/dev/null; then fail "a reload took a broken shared key"; fi
JOURNAL_UNIT=instacart-tokend@c.service journal_has "$CONFDIR/c.shared-key: the fleet's shared key must be exactly 64 hex digits" ||
    fail "the refused reload does not name $CONFDIR/c.shared-key"
[[ $(ct systemctl is-active instacart-tokend@c.service) == active ]] || fail "a refused reload stopped instance c"
write_secret "$CONFDIR/c.shared-key" "$(printf 'cd%.0s' $(seq 32))"
ct systemctl reload instacart-tokend@c.service || fail "a reload with a new good shared key failed"
echo "a reload re-reads the credential: a broken key refused naming $CONFDIR/c.shared-key, a new one applied"
ct systemctl stop instacart-tokend@c.socket instacart-tokend@c.service

step "systemctl stop is clean"
CT_TIMEOUT=90 ct systemctl stop instacart-tokend.socket instacart-tokend.service
show=$(ct systemctl show -p ActiveState -p Result -p ExecMainStatus instacart-tokend.service)
echo "$show" | tr '\n' ' '
echo
grep -qx 'ActiveState=inactive' <<<"$show" && grep -qx 'Result=success' <<<"$show" &&
    grep -qx 'ExecMainStatus=0' <<<"$show" || fail "not a clean stop: $show"
journal -o cat | tail -3

step "systemd-analyze security"
security=$(ct systemd-analyze security --no-pager instacart-tokend.service 2>&1 | tail -1)
echo "$security"
score=$(grep -o 'level for instacart-tokend.service: [0-9.]*' <<<"$security" | grep -o '[0-9.]*$')
[[ -n $score ]] || fail "no exposure score"
echo "RESULT: exposure score $score"
python3 -c "import sys; sys.exit(0 if float('$score') <= 2.0 else 1)" || fail "exposure $score is above 2.0"
# the template unit's instance scores as the plain unit does
tsecurity=$(ct systemd-analyze security --no-pager instacart-tokend@a.service 2>&1 | tail -1)
echo "$tsecurity"
tscore=$(grep -o 'level for instacart-tokend@a.service: [0-9.]*' <<<"$tsecurity" | grep -o '[0-9.]*$')
[[ -n $tscore ]] || fail "no exposure score for the template unit"
[[ $tscore == "$score" ]] || fail "the template unit's exposure $tscore differs from the plain unit's $score"
echo "RESULT: template unit exposure score $tscore"

step "passed"
echo "RESULT: container test took $((SECONDS - start)) s"
