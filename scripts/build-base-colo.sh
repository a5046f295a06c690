#!/bin/sh
# Build the base's own COLO, the reference that `make bench` measures ours
# against: the same pinned QEMU 10.0 source, unmodified but for
# bench/*.patch, configured with its replication and colo-proxy options and
# trimmed like ours.  Nothing of it is compiled into our build.
#
# Usage: build-base-colo.sh BUILD_DIR   (e.g. build/base-colo)
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
dst=${1:?usage: build-base-colo.sh BUILD_DIR}
mkdir -p "$dst"
dst=$(cd "$dst" && pwd)
base=$("$top/scripts/fetch-base.sh" "${COLO_CACHE:-$HOME/.cache/colo-qemu}")

if [ ! -f "$dst/src/.staged" ] || [ "$(cat "$dst/src/.staged")" != "$base" ]; then
    rm -rf "$dst/src"
    mkdir -p "$dst/src"
    (cd "$base" && tar -cf - --exclude=./debian --exclude=./.pc \
        --exclude='./roms/*' .) | (cd "$dst/src" && tar -xf -)
    for p in "$top"/bench/*.patch; do
        patch -d "$dst/src" -p1 -s < "$p"
    done
    cp "$top/configs/devices/x86_64-softmmu/colo.mak" \
       "$dst/src/configs/devices/x86_64-softmmu/colo.mak"
    echo "$base" > "$dst/src/.staged"
fi

if [ ! -f "$dst/qemu/build.ninja" ]; then
    cc=cc
    [ -x /usr/lib/ccache/gcc ] && cc=/usr/lib/ccache/gcc
    mkdir -p "$dst/qemu"
    (cd "$dst/qemu" && "$dst/src/configure" --target-list=x86_64-softmmu \
        --prefix=/usr/local --cc="$cc" --python=/usr/bin/python3 \
        --disable-download --disable-install-blobs \
        --without-default-features --without-default-devices \
        --with-devices-x86_64=colo --enable-tools --enable-fdt=system \
        --enable-tcg --enable-kvm --enable-linux-aio --disable-docs \
        --enable-replication --enable-colo-proxy) > "$dst/configure.log" 2>&1 || {
        tail -n 20 "$dst/configure.log" >&2
        exit 1
    }
    printf 'PREFIX := /usr/local\n' > "$dst/config.mak"
fi
make --no-print-directory -C "$dst/qemu" qemu-system-x86_64 >&2
# The option ROMs of our build are the same source's.
mkdir -p "$dst/qemu/pc-bios"
rm -rf "$dst/qemu/pc-bios/optionrom"
ln -s "$top/build/qemu/pc-bios/optionrom" "$dst/qemu/pc-bios/optionrom"
sh "$top/scripts/link-firmware.sh" "$dst"
