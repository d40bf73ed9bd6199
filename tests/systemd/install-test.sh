#!/usr/bin/env bash
# meson install as an upgrade does it: installing twice into the same tree
# (meson install --destdir) keeps the operator's edited configuration, and
# the second install still delivers the sample beside it and the units.
#
#   install-test.sh BUILD_DIR
set -euo pipefail

BUILD=$(cd "${1:?usage: install-test.sh BUILD_DIR}" && pwd)
D=$(mktemp -d "${TMPDIR:-/tmp}/tokend-install.XXXXXX")
trap 'rm -rf "$D"' EXIT
fail() {
    echo "FAIL: $*" >&2
    exit 1
}
install_once() {
    meson install -C "$BUILD" --destdir "$D" --no-rebuild >"$D.log" 2>&1 || {
        cat "$D.log"
        rm -f "$D.log"
        fail "meson install failed"
    }
    cat "$D.log"
    rm -f "$D.log"
}

install_once
units=$(find "$D" -name 'instacart-tokend*.service' -o -name 'instacart-tokend*.socket' | sort)
[[ -n $units ]] || fail "no unit installed"
conf=$(find "$D" -path '*/instacart-tokend/tokend.conf' -type f)
[[ -n $conf ]] || fail "no tokend.conf installed on a first install"
sample=$conf.sample
[[ -f $sample ]] || fail "no sample beside $conf"
cmp -s "$conf" "$sample" || fail "a first install's tokend.conf is not the sample"
[[ $(stat -c %a "$conf") == 644 ]] || fail "tokend.conf has mode $(stat -c %a "$conf"), not 644"
echo "first install: ${conf#"$D"} from the sample; units: $(echo "$units" | sed "s|^$D||" | tr '\n' ' ')"

# the operator edits the configuration; the sample and the units are lost
# or changed meanwhile (an older release's)
printf '[upstream]\nclient_id = edited-by-the-operator\n' >"$conf"
chmod 0640 "$conf"
rm -f "$sample"
while read -r u; do echo "# an older release" >"$u"; done <<<"$units"

install_once
grep -qx 'client_id = edited-by-the-operator' "$conf" || fail "the second install overwrote the edited ${conf#"$D"}"
[[ $(stat -c %a "$conf") == 640 ]] || fail "the second install changed the mode of ${conf#"$D"}"
[[ -f $sample ]] || fail "the second install did not deliver the sample"
grep -q '^\[upstream\]' "$sample" && ! grep -q edited-by-the-operator "$sample" || fail "the sample is not the sample"
while read -r u; do
    grep -q '^\[Unit\]' "$u" || fail "the second install did not deliver ${u#"$D"}"
done <<<"$units"
# the four units (plain and template, service and socket) and both man pages
[[ $(echo "$units" | wc -l) == 4 ]] || fail "$(echo "$units" | wc -l) units installed, not the plain and template pairs"
for page in man8/instacart-tokend.8 man5/instacart-tokend.conf.5; do
    [[ -n $(find "$D" -path "*/man/$page" -type f) ]] || fail "the man page $page was not installed"
done
echo "second install: the edited configuration kept; the sample, the 4 units and both man pages delivered"
