#!/usr/bin/env bash
# A local fleet: one redis-server on a Unix socket, no persistence,
# and three tokend processes on 127.0.0.1:8787-8789 sharing it, against the
# local stand-in of Instacart. Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
tests/deps.sh fleet
[[ -d build ]] || meson setup build
ninja -C build

dir=$(mktemp -d /tmp/tokend-fleet.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; wait || true; rm -rf "$dir"' EXIT
trap 'exit 0' INT TERM
(
    umask 077
    echo demo-secret > "$dir/client-secret"
    od -An -N32 -tx1 /dev/urandom | tr -d ' \n' > "$dir/shared-key"
    echo >> "$dir/shared-key"
)
redis-server --port 0 --unixsocket "$dir/redis.sock" --unixsocketperm 700 --dir "$dir" \
    --save '' --appendonly no --logfile "$dir/redis.log" &
build/tests/stub/instacart-stub --listen 127.0.0.1:0 --port-file "$dir/stub.port" \
    --client-id demo-client --client-secret-file "$dir/client-secret" > "$dir/stub.log" &
for _ in $(seq 100); do [[ -s $dir/stub.port && -S $dir/redis.sock ]] && break; sleep 0.05; done
for port in 8787 8788 8789; do
    cat > "$dir/tokend-$port.conf" <<CONF
[upstream]
base_url = http://127.0.0.1:$(cat "$dir/stub.port")
client_id = demo-client
client_secret_file = $dir/client-secret
[server]
listen = 127.0.0.1:$port
[shared]
redis = unix:$dir/redis.sock
key_file = $dir/shared-key
CONF
    build/src/instacart-tokend --config "$dir/tokend-$port.conf" > "$dir/tokend-$port.log" 2>&1 &
done
for port in 8787 8788 8789; do
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/healthz" > /dev/null && break; sleep 0.05; done
    curl -sf "http://127.0.0.1:$port/healthz" > /dev/null || { cat "$dir/tokend-$port.log" >&2; exit 1; }
done
echo
echo "A fleet of three: tokend on 127.0.0.1:8787, :8788 and :8789, sharing redis at $dir/redis.sock."
echo "Mint on one host, then see the second serve the same token (X-Cache: shared):"
echo
echo "    for p in 8787 8788; do curl -si \"http://127.0.0.1:\$p/v1/token?user_id=kamalsingh1234\" | grep -iE '^x-cache|access_token'; done"
echo
echo "Logs are in $dir. Ctrl-C stops everything."
wait
