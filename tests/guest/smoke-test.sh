#!/bin/bash
# Boot the COLO test guest once under TCG and exercise it end to end:
#   1. boot with virtio-net (tap in a private network namespace) and a raw
#      virtio-blk disk, time the boot up to "COLO-GUEST READY";
#   2. concurrent long-lived clients doing inc/get/disk/stats, check that the
#      memory dirtier and the disk writer make progress;
#   3. "poweroff" request, wait for QEMU to exit, colo-disk-verify the image;
#   4. boot again and power off from the serial console shell (busybox
#      poweroff -> SIGUSR2 to /init).
#
# usage: smoke-test.sh [GUESTDIR [QEMU]]   (needs root: netns + tap)
# Defaults: GUESTDIR=build/guest, QEMU=build/qemu/qemu-system-x86_64.
# All traffic stays inside a network namespace created (and deleted) here.
set -eu

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
GUESTDIR=${1:-$ROOT/build/guest}
QEMU=${2:-$ROOT/build/qemu/qemu-system-x86_64}
QEMU_DIR=$(dirname "$QEMU")
GUEST_IP=10.77.0.10
HOST_IP=10.77.0.1
PORT=7777

fail() {
    echo "smoke-test: FAIL: $*" >&2
    exit 1
}

[ "$(id -u)" -eq 0 ] || fail "needs root (network namespace, tap)"
for f in vmlinuz initrd.img colo-disk-verify; do
    [ -e "$GUESTDIR/$f" ] || fail "missing $GUESTDIR/$f (run tests/guest/build-guest.sh)"
done
[ -x "$QEMU" ] || fail "no QEMU at $QEMU"

# Firmware: SeaBIOS, our option ROMs (linuxboot_dma.bin), iPXE.
optionrom=$(dirname "$(find "$QEMU_DIR" -name linuxboot_dma.bin -print -quit)")
[ "$optionrom" != . ] || fail "linuxboot_dma.bin not found under $QEMU_DIR"
FW=(-L /usr/share/seabios -L "$optionrom" -L /usr/lib/ipxe/qemu)

NS=cologuest-smoke-$$
WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/colo-guest-smoke.XXXXXX")
QPID=
CATPID=

cleanup() {
    if [ -n "$QPID" ] && kill -0 "$QPID" 2>/dev/null; then
        kill "$QPID" 2>/dev/null || true
        for _ in 1 2 3 4 5 6 7 8 9 10; do
            kill -0 "$QPID" 2>/dev/null || break
            sleep 0.2
        done
        kill -9 "$QPID" 2>/dev/null || true
    fi
    if [ -n "$CATPID" ]; then
        kill "$CATPID" 2>/dev/null || true
    fi
    ip netns del "$NS" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ip netns add "$NS"
ip -n "$NS" link set lo up
ip -n "$NS" tuntap add tap0 mode tap
ip -n "$NS" addr add "$HOST_IP/24" dev tap0
ip -n "$NS" link set tap0 up

now() { date +%s.%N; }

# boot NAME APPEND [extra qemu args...]: start QEMU in the namespace with the
# serial console on $WORK/NAME.serial.{in,out}, log in $WORK/NAME.log.
boot() {
    local name=$1 append=$2
    shift 2
    mkfifo "$WORK/$name.serial.in" "$WORK/$name.serial.out"
    : >"$WORK/$name.log"
    T0=$(now)
    ip netns exec "$NS" "$QEMU" -accel tcg -m 256 -nodefaults -display none \
        -no-reboot -no-user-config "${FW[@]}" \
        -kernel "$GUESTDIR/vmlinuz" -initrd "$GUESTDIR/initrd.img" \
        -append "$append" \
        -chardev "pipe,id=ser0,path=$WORK/$name.serial" -serial chardev:ser0 \
        -netdev tap,id=n0,ifname=tap0,script=no,downscript=no \
        -device virtio-net-pci,netdev=n0,mac=52:54:00:77:00:10 \
        "$@" </dev/null >"$WORK/$name.qemu.log" 2>&1 &
    QPID=$!
    cat "$WORK/$name.serial.out" >"$WORK/$name.log" &
    CATPID=$!
    # Keep a writer open on the input fifo so the guest never sees EOF.
    exec 8<>"$WORK/$name.serial.in"
}

# wait_ready NAME: wait (60 s max) for the READY line, sets BOOT_S.
wait_ready() {
    local name=$1 i
    for ((i = 0; i < 1200; i++)); do
        if grep -q "^COLO-GUEST READY ip=$GUEST_IP port=$PORT" "$WORK/$name.log"; then
            BOOT_S=$(awk -v a="$(now)" -v b="$T0" 'BEGIN { printf "%.2f", a - b }')
            return 0
        fi
        kill -0 "$QPID" 2>/dev/null || break
        sleep 0.05
    done
    cat "$WORK/$name.qemu.log" "$WORK/$name.log" >&2
    fail "$name: guest not ready"
}

# wait_exit NAME: wait (30 s max) for QEMU to exit on its own.
wait_exit() {
    local name=$1 i
    for ((i = 0; i < 300; i++)); do
        if ! kill -0 "$QPID" 2>/dev/null; then
            wait "$QPID" 2>/dev/null || true
            QPID=
            kill "$CATPID" 2>/dev/null || true
            wait "$CATPID" 2>/dev/null || true
            CATPID=
            exec 8>&-
            return 0
        fi
        sleep 0.1
    done
    cat "$WORK/$name.log" >&2
    fail "$name: QEMU did not exit after poweroff"
}

cat >"$WORK/client.py" <<'EOF'
import socket, sys, threading, time
host, port = sys.argv[1], int(sys.argv[2])

def conn():
    s = socket.create_connection((host, port), timeout=30)
    return s, s.makefile("rw")

def req(f, line):
    f.write(line + "\n")
    f.flush()
    return f.readline().rstrip("\n")

def stats(f):
    return dict(kv.split("=", 1) for kv in req(f, "stats").split())

s, f = conn()
base = int(req(f, "get"))
assert base == 0, base
N, T = 200, 8
res, errs = {}, []
def worker(i):
    try:
        ws, wf = conn()
        res[i] = [int(req(wf, "inc")) for _ in range(N)]
        ws.close()
    except Exception as e:
        errs.append(repr(e))
t0 = time.time()
threads = [threading.Thread(target=worker, args=(i,)) for i in range(T)]
for t in threads: t.start()
for t in threads: t.join()
dt = time.time() - t0
assert not errs, errs
vals = sorted(v for l in res.values() for v in l)
assert vals == list(range(1, N * T + 1)), "inc values not a permutation"
for l in res.values():
    assert l == sorted(l), "per-connection values not increasing"
print("incs: %d over %d connections in %.2fs (%.0f req/s)" % (N * T, T, dt, N * T / dt))
assert req(f, "get") == str(N * T)
assert req(f, "bogus") == "error unknown request"
assert req(f, "ping") == "pong"
a = stats(f)
time.sleep(3)
b = stats(f)
print("stats:", req(f, "stats"))
dmb = int(b["dirtied_mb"]) - int(a["dirtied_mb"])
dseq = int(b["disk_seq"]) - int(a["disk_seq"])
print("in 3 s: dirtied %d MiB, %d disk writes" % (dmb, dseq))
assert dmb >= 5, "dirtier too slow"
assert dseq >= 50, "disk writer too slow"
assert int(req(f, "disk")) >= int(b["disk_seq"])
off = req(f, "poweroff")
assert off.startswith("ok disk_seq="), off
s.close()
print("LAST_SEQ=" + off.split("=", 1)[1])
EOF

# ---- run 1: network, counter, dirtier, disk writer, poweroff request -----
IMG=$WORK/disk.img
truncate -s 16M "$IMG"
boot run1 "console=ttyS0 quiet colo.ip=$GUEST_IP/24 colo.port=$PORT colo.dirty_mbps=5 colo.disk=/dev/vda colo.shell=0" \
    -drive "if=none,id=d0,file=$IMG,format=raw,cache=none" \
    -device virtio-blk-pci,drive=d0
wait_ready run1
BOOT1=$BOOT_S
echo "run1: READY after ${BOOT1}s"
ip netns exec "$NS" python3 "$WORK/client.py" "$GUEST_IP" "$PORT" >"$WORK/client.out" 2>&1 ||
    { cat "$WORK/client.out" "$WORK/run1.log" >&2; fail "run1: client"; }
sed 's/^/run1: /' "$WORK/client.out"
LAST=$(sed -n 's/^LAST_SEQ=//p' "$WORK/client.out")
wait_exit run1
grep -q "^COLO-GUEST POWEROFF disk_seq=$LAST " "$WORK/run1.log" ||
    { cat "$WORK/run1.log" >&2; fail "run1: no POWEROFF line"; }
VERIFY=$("$GUESTDIR/colo-disk-verify" "$IMG" "$LAST") ||
    fail "run1: colo-disk-verify: $VERIFY"
echo "run1: colo-disk-verify: $VERIFY"
case "$VERIFY" in
*"\"max_seq\":$LAST,"*) ;;
*) fail "run1: writes after the final disk_seq" ;;
esac

# ---- run 2: poweroff typed on the serial console shell --------------------
boot run2 "console=ttyS0 quiet colo.ip=$GUEST_IP/24"
wait_ready run2
BOOT2=$BOOT_S
echo "run2: READY after ${BOOT2}s"
sleep 1
echo poweroff >&8
wait_exit run2
echo "run2: console poweroff ok"
# With colo.shell=0 and quiet, the console should only carry our lines.
other=$(tr -d '\r' <"$WORK/run1.log" | grep -vE '^(COLO-GUEST |$)|reboot: Power down' || true)
if [ -n "$other" ]; then
    echo "smoke-test: note: other console output in run1:"
    echo "$other" | head -20
fi
echo "smoke-test: ok (boot to READY: ${BOOT1}s, ${BOOT2}s)"
