#!/bin/sh
# Install every build and test dependency of the project from Debian's packages.
#
# Idempotent and quiet when everything is already there.  Needs root (or sudo)
# on a Debian bookworm (or newer) machine.  Adds two apt sources when missing:
#   - deb-src for trixie, where the pinned QEMU 10.0 source package lives;
#   - bookworm-backports, for meson >= 1.5 (bookworm itself has 1.0).
set -eu

# Binary packages needed on the host.  Keep sorted by purpose.
BUILD_PKGS="build-essential pkg-config ninja-build ccache dpkg-dev python3 python3-venv
 libglib2.0-dev libpixman-1-dev zlib1g-dev libfdt-dev libaio-dev
 libcurl4-gnutls-dev
 flex bison check quilt gcc-multilib"
FIRMWARE_PKGS="seabios ipxe-qemu"
TEST_PKGS="busybox-static cpio gzip xz-utils kmod iproute2 procps psmisc e2fsprogs
 python3-pytest spin iptables redis-tools etcd-server"

SUDO=
if [ "$(id -u)" -ne 0 ]; then
    SUDO=sudo
fi

log() { echo "install-deps: $*" >&2; }

codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
mirror=$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' |
         grep -v security | head -n 1)
if [ -z "$mirror" ]; then
    mirror=$(grep -hs '^deb ' /etc/apt/sources.list | awk '{print $2}' | head -n 1)
fi
mirror=${mirror:-http://deb.debian.org/debian}

list=/etc/apt/sources.list.d/colo-project.sources
want="Types: deb-src
URIs: $mirror
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg"
if [ "$codename" = bookworm ]; then
    want="$want

Types: deb
URIs: $mirror
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg"
fi

need_update=
if [ ! -f "$list" ] || [ "$(cat "$list")" != "$want" ]; then
    log "adding apt sources in $list"
    printf '%s\n' "$want" | $SUDO tee "$list" >/dev/null
    need_update=1
fi
# Lists missing (fresh machine) or older than a day: refresh.
if [ -z "$need_update" ] &&
   ! ls /var/lib/apt/lists/*trixie*Sources* >/dev/null 2>&1; then
    need_update=1
fi
if [ -n "$need_update" ]; then
    log "apt-get update"
    $SUDO apt-get update -qq >/dev/null
fi

missing=
for p in $BUILD_PKGS $FIRMWARE_PKGS $TEST_PKGS; do
    if ! dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
        missing="$missing $p"
    fi
done
export DEBIAN_FRONTEND=noninteractive
if [ -n "$missing" ]; then
    log "installing:$missing"
    $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

# meson >= 1.5 (QEMU 10.0 requires it).
meson_ok() {
    v=$(/usr/bin/meson --version 2>/dev/null) || return 1
    [ "$(printf '%s\n1.5.0\n' "$v" | sort -V | head -n 1)" = 1.5.0 ]
}
if ! meson_ok; then
    log "installing meson >= 1.5"
    if [ "$codename" = bookworm ]; then
        $SUDO apt-get install -y -qq --no-install-recommends -t bookworm-backports meson >/dev/null
    else
        $SUDO apt-get install -y -qq --no-install-recommends meson >/dev/null
    fi
    meson_ok || { log "error: meson >= 1.5 is not available"; exit 1; }
fi
exit 0
