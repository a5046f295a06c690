#!/bin/bash
# Build the COLO test guest into OUTDIR:
#   vmlinuz            Debian cloud kernel (whatever linux-image-cloud-amd64
#                      currently depends on), extracted with dpkg-deb -x
#   initrd.img         gzip'd newc cpio: busybox, /init, virtio modules (only
#                      those that are modules in that kernel), the agent
#   initrd-redis.img   initrd.img with a second archive appended: Debian's
#                      redis server (redis-tools' redis-check-rdb, which the
#                      redis-server package links as /usr/bin/redis-server)
#                      and the libraries it needs, for the key-value
#                      benchmark (built when that binary is installed)
#   colo-guest-agent   the static guest agent (also inside the initrd)
#   colo-disk-verify   host-side disk image verifier
#   guest-info         kernel package/version/release and module load order
#
# Idempotent and quiet: each artifact carries a fingerprint of its inputs in
# OUTDIR/.stamp-*; nothing is rebuilt (and nothing printed) when it matches.
# Downloads are cached in ${COLO_CACHE:-$HOME/.cache/colo-qemu}/guest.
#
# Environment knobs:
#   COLO_CACHE              cache root (default $HOME/.cache/colo-qemu)
#   COLO_GUEST_KERNEL_META  meta package to resolve (linux-image-cloud-amd64)
#   COLO_GUEST_KERNEL_DEB   use this kernel .deb instead of resolving one
#   COLO_GUEST_BUSYBOX      static busybox binary (default /bin/busybox)
#   COLO_GUEST_REDIS        redis server binary (default /usr/bin/redis-check-rdb)
#   GUEST_CC                compiler for the static agent (default gcc)
#   CC                      compiler for colo-disk-verify (default cc)
set -eu

usage() {
    echo "usage: $0 OUTDIR" >&2
    exit 2
}
[ $# -eq 1 ] || usage

die() {
    echo "build-guest: $*" >&2
    exit 1
}

SRCDIR=$(cd "$(dirname "$0")" && pwd)
SCRIPT="$SRCDIR/$(basename "$0")"
mkdir -p "$1"
OUTDIR=$(cd "$1" && pwd)
CACHE=${COLO_CACHE:-$HOME/.cache/colo-qemu}/guest
KMETA=${COLO_GUEST_KERNEL_META:-linux-image-cloud-amd64}
BUSYBOX=${COLO_GUEST_BUSYBOX:-/bin/busybox}
REDIS=${COLO_GUEST_REDIS:-/usr/bin/redis-check-rdb}
GUEST_CC=${GUEST_CC:-gcc}
HOST_CC=${CC:-cc}
AGENT_CFLAGS="-O2 -static -Wall -Wextra -Werror -pthread"
VERIFY_CFLAGS="-O2 -Wall"
# Drivers the guest needs: virtio-pci transport, virtio-net, virtio-blk.
WANT_MODULES="virtio_pci virtio_net virtio_blk"

for tool in dpkg-deb modinfo cpio gzip sha256sum flock; do
    command -v "$tool" >/dev/null 2>&1 || die "missing host tool: $tool"
done
[ -x "$BUSYBOX" ] || die "missing $BUSYBOX (install busybox-static)"

mkdir -p "$CACHE"
exec 9>"$OUTDIR/.lock"
flock 9

tmpdirs=()
cleanup() {
    if [ ${#tmpdirs[@]} -gt 0 ]; then
        rm -rf "${tmpdirs[@]}"
    fi
}
trap cleanup EXIT
mktmp() { # mktmp DIR: TMPD=new temp dir inside DIR (removed on exit)
    TMPD=$(mktemp -d "$1/.tmp.XXXXXX")
    tmpdirs+=("$TMPD")
}

# Run a command, showing its output only if it fails.
quiet() {
    local log rc=0
    log=$(mktemp)
    "$@" >"$log" 2>&1 || rc=$?
    if [ $rc -ne 0 ]; then
        cat "$log" >&2
        rm -f "$log"
        die "failed ($rc): $*"
    fi
    rm -f "$log"
}

script_sum=$(sha256sum <"$SCRIPT" | cut -d' ' -f1)

# fingerprint STRING... FILE... -> sha256 over the build script, the strings
# and the contents of the files (arguments that are existing files).
fingerprint() {
    {
        echo "$script_sum"
        for a in "$@"; do
            if [ -f "$a" ]; then
                echo "file $(basename "$a") $(sha256sum <"$a" | cut -d' ' -f1)"
            else
                echo "str $a"
            fi
        done
    } | sha256sum | cut -d' ' -f1
}

# up_to_date NAME FP ARTIFACT...: stamp matches and all artifacts exist.
up_to_date() {
    local name=$1 fp=$2
    shift 2
    for f in "$@"; do
        [ -e "$f" ] || return 1
    done
    [ "$(cat "$OUTDIR/.stamp-$name" 2>/dev/null)" = "$fp" ]
}

stamp() { echo "$2" >"$OUTDIR/.stamp-$1"; }

# ---- kernel package -------------------------------------------------------

resolve_kernel_deb() {
    local pkg ver debdir=$CACHE/debs f tmp
    mkdir -p "$debdir"
    if [ -n "${COLO_GUEST_KERNEL_DEB:-}" ]; then
        [ -f "$COLO_GUEST_KERNEL_DEB" ] || die "no such file: $COLO_GUEST_KERNEL_DEB"
        KDEB=$(cd "$(dirname "$COLO_GUEST_KERNEL_DEB")" && pwd)/$(basename "$COLO_GUEST_KERNEL_DEB")
        return
    fi
    # apt-cache takes ~1 s: reuse the last answer while apt's lists are
    # unchanged (apt-get update renames files there).
    local key memo=$CACHE/resolved
    apt_key() {
        { echo "$KMETA"; ls -l --time-style=+%s /var/lib/apt/lists 2>/dev/null; } |
            sha256sum | cut -d' ' -f1
    }
    key=$(apt_key)
    lookup() {
        if [ -f "$memo" ] && [ "$(sed -n 1p "$memo")" = "$key" ]; then
            pkg=$(sed -n 2p "$memo")
            ver=$(sed -n 3p "$memo")
            return
        fi
        pkg=$(apt-cache depends "$KMETA" 2>/dev/null |
              awk '$1 == "Depends:" && $2 ~ /^linux-image-/ { print $2; exit }')
        ver=
        if [ -n "$pkg" ]; then
            ver=$(apt-cache policy "$pkg" 2>/dev/null |
                  awk '$1 == "Candidate:" { print $2; exit }')
            [ "$ver" != "(none)" ] || ver=
        fi
        if [ -n "$ver" ]; then
            printf '%s\n%s\n%s\n' "$key" "$pkg" "$ver" >"$memo.tmp"
            mv "$memo.tmp" "$memo"
        fi
    }
    lookup
    if [ -z "$ver" ] && [ "$(id -u)" -eq 0 ]; then
        apt-get update -q >/dev/null 2>&1 || true
        key=$(apt_key)
        lookup
    fi
    if [ -z "$ver" ]; then
        # Offline: fall back to the newest kernel already in the cache.
        f=$(ls -1 "$debdir"/linux-image-*.deb 2>/dev/null | sort -V | tail -n 1 || true)
        [ -n "$f" ] || die "cannot resolve $KMETA with apt-cache (run apt-get update)"
        KDEB=$f
        return
    fi
    # apt-get download names files PKG_VERSION_ARCH.deb, epoch ':' as %3a.
    f=$(ls -1 "$debdir/${pkg}_${ver//:/%3a}_"*.deb 2>/dev/null | head -n 1 || true)
    if [ -z "$f" ]; then
        mktmp "$debdir"
        tmp=$TMPD
        (cd "$tmp" && quiet apt-get download -q "$pkg=$ver")
        f=$(ls -1 "$tmp"/*.deb 2>/dev/null | head -n 1 || true)
        [ -n "$f" ] || die "apt-get download $pkg=$ver produced no .deb"
        # Keep only this kernel in the cache.
        rm -f "$debdir"/linux-image-*.deb
        mv "$f" "$debdir/"
        f=$debdir/$(basename "$f")
    fi
    KDEB=$f
}

extract_kernel() {
    local name tmp
    name=$(basename "$KDEB" .deb)
    KTREE=$CACHE/kernel/$name
    if [ ! -f "$KTREE/.extracted" ]; then
        mkdir -p "$CACHE/kernel"
        rm -rf "$KTREE"
        mktmp "$CACHE/kernel"
        tmp=$TMPD
        quiet dpkg-deb -x "$KDEB" "$tmp"
        touch "$tmp/.extracted"
        # Keep only this kernel's tree in the cache.
        find "$CACHE/kernel" -mindepth 1 -maxdepth 1 ! -name '.tmp.*' \
            -exec rm -rf {} +
        mv "$tmp" "$KTREE"
    fi
    KVMLINUZ=$(ls -1 "$KTREE"/boot/vmlinuz-* 2>/dev/null | head -n 1 || true)
    [ -n "$KVMLINUZ" ] || die "no boot/vmlinuz-* in $KDEB"
    KREL=${KVMLINUZ##*/vmlinuz-}
    KMODDIR=$KTREE/lib/modules/$KREL
    [ -d "$KMODDIR" ] || die "no lib/modules/$KREL in $KDEB"
}

# ---- module load order ----------------------------------------------------

norm() { echo "${1//-/_}"; }

# Paths (relative to KMODDIR) of all .ko files in the kernel package.
list_modules() {
    (cd "$KMODDIR" && find kernel -name '*.ko' -o -name '*.ko.*' | LC_ALL=C sort)
}

is_builtin() { # NAME
    [ -f "$KMODDIR/modules.builtin" ] || return 1
    sed -e 's,.*/,,' -e 's,\.ko$,,' -e 's,-,_,g' "$KMODDIR/modules.builtin" |
        grep -qx "$1"
}

declare -A MOD_PATH=() VISIT=()
MOD_ORDER=()

find_module() { # NAME -> prints path or nothing
    echo "${MOD_PATH[$1]:-}"
}

visit() { # NAME
    local name path dep deps soft
    name=$(norm "$1")
    case "${VISIT[$name]:-}" in
    "done") return ;;
    active) die "module dependency cycle at $name" ;;
    esac
    path=$(find_module "$name")
    if [ -z "$path" ]; then
        if is_builtin "$name"; then
            VISIT[$name]="done"
            return
        fi
        die "module $name is neither built in nor a module in $KREL"
    fi
    VISIT[$name]=active
    deps=$(modinfo -F depends "$KMODDIR/$path")
    # softdep "pre:" modules must be loaded first too (if they exist).
    soft=$(modinfo -F softdep "$KMODDIR/$path" |
           awk '{ for (i = 1; i <= NF; i++) { if ($i == "pre:") p = 1;
                  else if ($i ~ /:$/) p = 0; else if (p) print $i } }')
    for dep in ${deps//,/ }; do
        visit "$dep"
    done
    for dep in $soft; do
        if [ -n "$(find_module "$(norm "$dep")")" ]; then
            visit "$dep"
        fi
    done
    VISIT[$name]="done"
    MOD_ORDER+=("$path")
}

compute_module_order() {
    local p n
    while read -r p; do
        n=${p##*/}
        n=$(norm "${n%%.ko*}")
        MOD_PATH[$n]=$p
    done < <(list_modules)
    for n in $WANT_MODULES; do
        visit "$n"
    done
}

# ---- newc helpers ---------------------------------------------------------

# A tiny newc archive with /dev and the /dev/console node (5,1), so that
# the kernel can open the console for /init without root to mknod it.
newc_entry() { # NAME MODE RDEVMAJOR RDEVMINOR INO
    local name=$1 namesize=$((${#1} + 1)) pad
    printf '070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X' \
        "$5" "$2" 0 0 1 0 0 0 0 "$3" "$4" "$namesize" 0
    printf '%s\0' "$name"
    pad=$(((4 - (110 + namesize) % 4) % 4))
    [ $pad -eq 0 ] || head -c $pad /dev/zero
}

dev_console_cpio() {
    newc_entry dev $((0040755)) 0 0 1
    newc_entry dev/console $((0020600)) 5 1 2
    newc_entry TRAILER!!! 0 0 0 0
}

# ---- build steps ----------------------------------------------------------

# The cache may be shared by builds into other OUTDIRs.
exec 8>"$CACHE/.lock"
flock 8
resolve_kernel_deb
extract_kernel
flock -u 8

# vmlinuz
fp=$(fingerprint "$(basename "$KDEB")" "$KVMLINUZ")
if ! up_to_date vmlinuz "$fp" "$OUTDIR/vmlinuz"; then
    cp "$KVMLINUZ" "$OUTDIR/.vmlinuz.tmp"
    mv "$OUTDIR/.vmlinuz.tmp" "$OUTDIR/vmlinuz"
    stamp vmlinuz "$fp"
fi

# guest agent (static)
agent_srcs=("$SRCDIR/colo-guest-agent.c" "$SRCDIR/blockfmt.c" "$SRCDIR/blockfmt.h")
fp=$(fingerprint "$GUEST_CC $AGENT_CFLAGS" "$("$GUEST_CC" --version | head -n 1)" \
     "${agent_srcs[@]}")
if ! up_to_date agent "$fp" "$OUTDIR/colo-guest-agent"; then
    # shellcheck disable=SC2086
    "$GUEST_CC" $AGENT_CFLAGS -o "$OUTDIR/.colo-guest-agent.tmp" \
        "$SRCDIR/colo-guest-agent.c" "$SRCDIR/blockfmt.c"
    mv "$OUTDIR/.colo-guest-agent.tmp" "$OUTDIR/colo-guest-agent"
    stamp agent "$fp"
fi

# host verifier
verify_srcs=("$SRCDIR/colo-disk-verify.c" "$SRCDIR/blockfmt.c" "$SRCDIR/blockfmt.h")
fp=$(fingerprint "$HOST_CC $VERIFY_CFLAGS" "$("$HOST_CC" --version | head -n 1)" \
     "${verify_srcs[@]}")
if ! up_to_date verify "$fp" "$OUTDIR/colo-disk-verify"; then
    # shellcheck disable=SC2086
    "$HOST_CC" $VERIFY_CFLAGS -o "$OUTDIR/.colo-disk-verify.tmp" \
        "$SRCDIR/colo-disk-verify.c" "$SRCDIR/blockfmt.c"
    mv "$OUTDIR/.colo-disk-verify.tmp" "$OUTDIR/colo-disk-verify"
    stamp verify "$fp"
fi

# initrd
fp=$(fingerprint "$(basename "$KDEB")" "$WANT_MODULES" "$BUSYBOX" \
     "$SRCDIR/init" "$OUTDIR/colo-guest-agent")
if ! up_to_date initrd "$fp" "$OUTDIR/initrd.img" "$OUTDIR/guest-info"; then
    compute_module_order
    mktmp "$OUTDIR"
    root=$TMPD/root
    mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,lib/modules,etc,proc,sys,dev,tmp,run,root}
    cp "$BUSYBOX" "$root/bin/busybox"
    while read -r applet; do
        [ "$applet" != bin/busybox ] || continue
        mkdir -p "$root/$(dirname "$applet")"
        ln -sf /bin/busybox "$root/$applet"
    done < <("$BUSYBOX" --list-full)
    install -m 0755 "$SRCDIR/init" "$root/init"
    install -m 0755 "$OUTDIR/colo-guest-agent" "$root/bin/colo-guest-agent"
    : >"$root/lib/modules/load-order"
    for m in "${MOD_ORDER[@]}"; do
        install -m 0644 "$KMODDIR/$m" "$root/lib/modules/${m##*/}"
        echo "${m##*/}" >>"$root/lib/modules/load-order"
    done
    printf 'root:x:0:0:root:/root:/bin/sh\n' >"$root/etc/passwd"
    printf 'root:x:0:\n' >"$root/etc/group"
    printf 'export PS1="colo-guest# "\n' >"$root/etc/profile"
    find "$root" -exec touch -h -d @0 {} +
    {
        dev_console_cpio
        (cd "$root" && find . -mindepth 1 | LC_ALL=C sort |
            cpio --quiet -o -H newc -R 0:0 --reproducible)
    } | gzip -n -9 >"$OUTDIR/.initrd.img.tmp"
    mv "$OUTDIR/.initrd.img.tmp" "$OUTDIR/initrd.img"
    {
        echo "KERNEL_DEB=$(basename "$KDEB")"
        echo "KERNEL_PACKAGE=$(dpkg-deb -f "$KDEB" Package)"
        echo "KERNEL_VERSION=$(dpkg-deb -f "$KDEB" Version)"
        echo "KERNEL_RELEASE=$KREL"
        mods=("${MOD_ORDER[@]##*/}")
        echo "MODULES=${mods[*]}"
    } >"$OUTDIR/guest-info"
    stamp initrd "$fp"
fi

# initrd-redis: the initrd, then an archive with the redis server and the
# host's copies of its libraries (the same Debian release).
if [ -x "$REDIS" ]; then
    redis_libs=$(ldd "$REDIS" | awk '$2 == "=>" && $3 ~ /^\// { print $3 }
                                      $1 ~ /^\// { print $1 }' | LC_ALL=C sort -u)
    # shellcheck disable=SC2086
    fp=$(fingerprint "$REDIS" $redis_libs "$OUTDIR/initrd.img")
    if ! up_to_date redis "$fp" "$OUTDIR/initrd-redis.img"; then
        mktmp "$OUTDIR"
        root=$TMPD/root
        mkdir -p "$root/usr/bin"
        install -m 0755 "$REDIS" "$root/usr/bin/redis-server"
        for lib in $redis_libs; do
            mkdir -p "$root$(dirname "$lib")"
            cp -L "$lib" "$root$lib"
        done
        find "$root" -exec touch -h -d @0 {} +
        {
            cat "$OUTDIR/initrd.img"
            (cd "$root" && find . -mindepth 1 | LC_ALL=C sort |
                cpio --quiet -o -H newc -R 0:0 --reproducible) | gzip -n -6
        } >"$OUTDIR/.initrd-redis.img.tmp"
        mv "$OUTDIR/.initrd-redis.img.tmp" "$OUTDIR/initrd-redis.img"
        stamp redis "$fp"
    fi
fi
