#!/bin/sh
# meson install's last step: installs the sample configuration as the
# configuration only where there is none yet, so installing again (an
# upgrade) never overwrites what the operator wrote. The sample itself is
# always installed beside it (tokend.conf.sample), by meson.
#
#   install-config.sh CONFDIR
#
# CONFDIR is absolute; meson's DESTDIR (--destdir) is put in front of it.
set -eu
confdir=${1:?usage: install-config.sh CONFDIR}
# DESTDIR is what meson put in front of the prefix
destdir=
if [ -n "${MESON_INSTALL_DESTDIR_PREFIX:-}" ] && [ -n "${MESON_INSTALL_PREFIX:-}" ]; then
    destdir=${MESON_INSTALL_DESTDIR_PREFIX%"$MESON_INSTALL_PREFIX"}
fi
conf=$destdir$confdir/tokend.conf
sample=$destdir$confdir/tokend.conf.sample
if [ -n "${MESON_INSTALL_DRY_RUN:-}" ]; then
    echo "would install $sample as $conf if absent"
    exit 0
fi
if [ -e "$conf" ] || [ -L "$conf" ]; then
    echo "Keeping $conf (the new sample is $sample)"
    exit 0
fi
install -m 0644 "$sample" "$conf"
echo "Installing $sample as $conf"
