#!/bin/sh
# Fetch and unpack the base (QEMU 10.0 from Debian's source package) into a cache.
#
# Usage: fetch-base.sh CACHE_DIR
# Prints the path of the unpacked tree (with Debian's patches applied) on stdout.
#
# The pinned version (scripts/base.pin) is verified against its SHA-256 sums.
# When apt no longer serves it, the newest 10.0.x it serves is taken instead
# with a loud warning; the checksums of those files cannot be verified then,
# and patches/series must still apply (configure fails clearly if not).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
. "$here/base.pin"
cache=${1:?usage: fetch-base.sh CACHE_DIR}
mkdir -p "$cache"
cache=$(cd "$cache" && pwd)

log() { echo "fetch-base: $*" >&2; }
loud() {
    echo "fetch-base: ******************************************************" >&2
    for l in "$@"; do echo "fetch-base: *** $l" >&2; done
    echo "fetch-base: ******************************************************" >&2
}

served=$(apt-cache showsrc "$BASE_PACKAGE" 2>/dev/null |
         sed -n 's/^Version: //p' | grep -E '^(1:)?10\.0\.' | sort -V -r | head -n 1 || true)
version=$BASE_VERSION
verify=yes
if ! apt-cache showsrc "$BASE_PACKAGE" 2>/dev/null | grep -qx "Version: $BASE_VERSION"; then
    if [ -z "$served" ]; then
        log "error: apt serves no $BASE_PACKAGE 10.0.x source (is deb-src for trixie set up? run scripts/install-deps.sh)"
        exit 1
    fi
    loud "the pinned base $BASE_VERSION is no longer served;" \
         "using $served instead: checksums NOT verified," \
         "patches/series must still apply.  Update scripts/base.pin."
    version=$served
    verify=no
fi

noepoch=${version#*:}
tree="$cache/qemu-$noepoch"
if [ -f "$tree/.unpacked" ]; then
    echo "$tree"
    exit 0
fi

dl="$cache/dl"
mkdir -p "$dl"
if [ "$verify" = yes ]; then
    ok=yes
    echo "$BASE_FILES" | while read -r sum f; do
        [ -n "$f" ] || continue
        [ -f "$dl/$f" ] && echo "$sum  $dl/$f" | sha256sum -c --status || exit 1
    done || ok=no
    if [ "$ok" = no ]; then
        log "downloading $BASE_PACKAGE $version source"
        (cd "$dl" && apt-get source -qq --download-only "$BASE_PACKAGE=$version" >/dev/null)
    fi
    echo "$BASE_FILES" | while read -r sum f; do
        [ -n "$f" ] || continue
        if ! echo "$sum  $dl/$f" | sha256sum -c --status; then
            log "error: checksum mismatch for $f"
            exit 1
        fi
    done
else
    (cd "$dl" && apt-get source -qq --download-only "$BASE_PACKAGE=$version" >/dev/null)
fi

dsc=$(ls "$dl"/"${BASE_PACKAGE}_${noepoch}".dsc)
rm -rf "$tree.tmp"
log "unpacking $dsc"
dpkg-source --no-check -q -x "$dsc" "$tree.tmp" >/dev/null
rm -rf "$tree"
mv "$tree.tmp" "$tree"
touch "$tree/.unpacked"
echo "$tree"
