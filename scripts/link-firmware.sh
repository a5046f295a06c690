#!/bin/sh
# Make the firmware findable by QEMU run from its build folder.
#
# A QEMU run from its build tree looks in qemu-bundle/PREFIX/share/qemu.  The
# base's source ships no prebuilt blobs, so link SeaBIOS (package seabios),
# iPXE's ROMs (package ipxe-qemu) and the option ROMs that the build made
# from pc-bios/optionrom (linuxboot_dma.bin for -kernel boots).
set -eu
build=${1:?usage: link-firmware.sh BUILD_DIR}
prefix=$(sed -n 's/^PREFIX := //p' "$build/config.mak")
dest="$build/qemu/qemu-bundle$prefix/share/qemu"
mkdir -p "$dest"
for f in /usr/share/seabios/*.bin /usr/lib/ipxe/qemu/*.rom \
         "$(cd "$build/qemu/pc-bios/optionrom" && pwd)"/*.bin; do
    [ -e "$f" ] || continue
    ln -sfn "$f" "$dest/$(basename "$f")"
done
for need in bios-256k.bin linuxboot_dma.bin efi-virtio.rom; do
    if [ ! -e "$dest/$need" ]; then
        echo "link-firmware: error: $need not found (run scripts/install-deps.sh; is pc-bios/optionrom built?)" >&2
        exit 1
    fi
done
