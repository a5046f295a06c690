#!/bin/sh
# Show that the build contains none of the base's own COLO modules.
#
# Three independent checks: the staged source tree does not hold them, the
# build's compile database compiles none of them, and the binaries define
# none of the functions that only they define.
set -eu
build=${1:-build}
fail=0
say() { printf 'check-no-base-colo: %s\n' "$*"; }

while read -r f; do
    case "$f" in ''|'#'*) continue ;; esac
    if [ -e "$build/src/$f" ] && [ ! -L "$build/src/$f" ]; then
        say "FAIL: the staged tree holds the base's $f"; fail=1
    fi
    if grep -q "\"file\": \"[^\"]*/src/$f\"" "$build/qemu/compile_commands.json"; then
        say "FAIL: the build compiles the base's $f"; fail=1
    fi
done < "$(dirname "$0")/base-colo-modules.txt"

# Functions, global or static, that only the base's COLO modules and its
# RAM-cache helpers define (names of the kept interfaces are not listed:
# our own modules implement those).
syms="colo_init_ram_cache colo_flush_ram_cache colo_release_ram_cache
colo_record_bitmap colo_incoming_start_dirty_log colo_compare_cleanup
colo_notify_compares_event colo_process_checkpoint
colo_do_checkpoint_transaction colo_wait_handle_message colo_old_packet_check
colo_compare_packet_payload replication_co_writev replication_co_readv
colo_rewriter_receive_iov"
for bin in "$build/qemu/qemu-system-x86_64" "$build/qemu/qemu-img" "$build/qemu/qemu-nbd"; do
    defined=$(nm --defined-only "$bin" | awk '{print $3}')
    for s in $syms; do
        if printf '%s\n' "$defined" | grep -qx "$s"; then
            say "FAIL: $(basename "$bin") defines $s"; fail=1
        fi
    done
done
if [ $fail -eq 0 ]; then
    say "ok: none of the base's COLO modules is staged, compiled or linked"
fi
exit $fail
