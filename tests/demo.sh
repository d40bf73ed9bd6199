#!/usr/bin/env bash
# The README's first command: install what tokend needs, build it, and run it
# in the foreground against the local stand-in of Instacart. Arguments go to
# tokend (e.g. --allow-core-dumps: the demo's secret is a throwaway).
set -euo pipefail
cd "$(dirname "$0")/.."
tests/deps.sh build
[[ -d build ]] || meson setup build
ninja -C build

dir=$(mktemp -d /tmp/tokend-demo.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$dir"' EXIT
(umask 077; echo demo-secret > "$dir/client-secret")
build/tests/stub/instacart-stub --listen 127.0.0.1:0 --port-file "$dir/stub.port" \
    --client-id demo-client --client-secret-file "$dir/client-secret" > "$dir/stub.log" &
for _ in $(seq 100); do [[ -s $dir/stub.port ]] && break; sleep 0.05; done
cat > "$dir/tokend.conf" <<CONF
[upstream]
base_url = http://127.0.0.1:$(cat "$dir/stub.port")
client_id = demo-client
client_secret_file = $dir/client-secret
[server]
listen = 127.0.0.1:8787
CONF
echo
echo "tokend is starting on 127.0.0.1:8787 against the local Instacart stand-in. Fetch a token with:"
echo
echo "    curl -s 'http://127.0.0.1:8787/v1/token?user_id=kamalsingh1234'"
echo
echo "Ctrl-C stops it."
build/src/instacart-tokend --config "$dir/tokend.conf" "$@"
