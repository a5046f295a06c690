#!/bin/sh
# Stage the source tree that QEMU's configure and meson build.
#
# Usage: stage.sh BASE_TREE STAGED_TREE
#
# The staged tree is the base (QEMU 10.0 with Debian's patches), minus the
# base's own COLO modules (scripts/base-colo-modules.txt), plus a symbolic link
# to every project file (so that editing it in the repo rebuilds only what
# changed), plus patches/series applied with quilt.  Running it again is cheap:
# links are refreshed, and the series is re-applied only when patches/ changed,
# which touches only the files the patches touch.
set -eu

top=$(cd "$(dirname "$0")/.." && pwd)
base=${1:?usage: stage.sh BASE_TREE STAGED_TREE}
src=${2:?usage: stage.sh BASE_TREE STAGED_TREE}
base=$(cd "$base" && pwd)

log() { echo "stage: $*" >&2; }
die() { echo "stage: error: $*" >&2; exit 1; }

# Directories of the repo whose files are part of QEMU's tree.
overlay_dirs="block configs docs include migration net qapi stubs system tests/qtest tools hw util"

quilt_q() {
    (cd "$src" && quilt --quiltrc="$top/scripts/quiltrc" "$@")
}

# 1. A fresh copy of the base when there is none or the base changed.
if [ ! -f "$src/.colo-base" ] || [ "$(cat "$src/.colo-base")" != "$base" ]; then
    log "copying the base from $base"
    rm -rf "$src" "$src.tmp"
    mkdir -p "$src.tmp"
    # Debian's packaging, its quilt state and the firmware sources are not
    # needed to build QEMU itself.
    (cd "$base" && tar -cf - --exclude=./debian --exclude=./.pc \
        --exclude='./roms/*' .) | (cd "$src.tmp" && tar -xf -)
    while read -r f; do
        case "$f" in ''|'#'*) continue ;; esac
        rm -f "$src.tmp/$f"
    done < "$top/scripts/base-colo-modules.txt"
    ln -s "$top/patches" "$src.tmp/patches"
    mv "$src.tmp" "$src"
    echo "$base" > "$src/.colo-base"
fi

# 2. Links to the project's files; stale links are removed.
find "$src" -type l -lname "$top/*" | while read -r l; do
    [ -e "$l" ] || rm -f "$l"
done
for d in $overlay_dirs; do
    [ -d "$top/$d" ] || continue
    (cd "$top" && find "$d" -type f ! -name '*~' ! -name '.*') | while read -r f; do
        dst="$src/$f"
        if [ -L "$dst" ]; then
            [ "$(readlink "$dst")" = "$top/$f" ] && continue
            rm -f "$dst"
        elif [ -e "$dst" ]; then
            die "project file $f would replace the base's $f; change base files through patches/ (see README.md)"
        fi
        mkdir -p "$(dirname "$dst")"
        ln -s "$top/$f" "$dst"
    done
done

# 3. The series, re-applied when patches/ changed.
sum=$(cd "$top/patches" && cat series $(grep -v '^#' series) | sha256sum | cut -d' ' -f1)
if [ ! -f "$src/.colo-patches" ] || [ "$(cat "$src/.colo-patches")" != "$sum" ]; then
    if [ -d "$src/.pc" ]; then
        quilt_q pop -a -f -q >/dev/null 2>&1 || true
    fi
    rm -f "$src/.colo-patches"
    if grep -q '^[^#]' "$top/patches/series" &&
       ! out=$(quilt_q push -a -q 2>&1); then
        printf '%s\n' "$out" >&2
        die "patches/series does not apply to the base in $base: refresh the failing patch (README.md, 'Editing a base file')"
    fi
    echo "$sum" > "$src/.colo-patches"
    log "applied patches/series ($(grep -vc '^#' "$top/patches/series") patches)"
fi
