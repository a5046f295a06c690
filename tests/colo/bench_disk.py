#!/usr/bin/env python3
"""`make bench` (block replication part): what replicating a disk costs.

  write latency   the guest's disk writer issues back-to-back 4 KiB
                  O_DIRECT|O_DSYNC writes; the mean time per write is the
                  window divided by the writes completed in it, for
                    local       a plain virtio-blk disk on a raw image
                    replica     the quorum with the replica child (every
                                write also goes over NBD to the secondary),
                                COLO not started
                    colo-100    in COLO at x-checkpoint-delay 100 ms (writes
                                issued between a checkpoint's stop and the
                                secondary's RECEIVED are held)
                    colo-1000   the same at 1000 ms
                  run in turns, ROUNDS times, so that machine noise hits
                  all alike; the median of the rounds is reported.
  pause           in the colo-* runs, the primary's mean and longest pause
                  per checkpoint (query-colo-status) with the disk writer
                  busy: the stop drains the replicated disk.  With
                  --qemu-b PATH the colo-* runs are repeated, in turns,
                  with that QEMU binary: two builds side by side (e.g. a
                  stop that flushes against one that does not).
  failover commit the secondary's failover with N MB of pre-images in the
                  hidden disk (the primary overwrote N MB since the last
                  checkpoint), timed around xen-set-replication
                  failover, on a QEMU without a guest.

    sudo /usr/bin/python3 tests/colo/bench_disk.py [--seconds N]
        [--rounds N] [--sizes 16,64,256] [--out FILE] [--quick]
        [--qemu-b PATH]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import colo_env  # noqa: E402
from colo_disk import ReplicatedDisk  # noqa: E402
from colo_pair import (READY_RE, BOOT_TIMEOUT, query_guest,  # noqa: E402
                       standalone_bed, start_pair)


def disk_seq(bed):
    return int(query_guest(bed, "disk"))


def write_window(bed, seconds):
    """Mean ms per write over SECONDS (answers may be held by output
    commit; both ends of the window are, alike)."""
    t0, s0 = time.monotonic(), disk_seq(bed)
    time.sleep(seconds)
    t1, s1 = time.monotonic(), disk_seq(bed)
    assert s1 > s0, "the disk writer did not progress"
    return (t1 - t0) * 1000 / (s1 - s0), s1 - s0


def latency_setup(kind, seconds, qemu=None):
    """(ms per write, writes, (mean, max) pause in us or None) for KIND,
    with QEMU binary QEMU (default: the build's)."""
    pvm = None
    with standalone_bed("colo-bench-disk-") as (bed, make_vm, workdir):
        disk = ReplicatedDisk(workdir)
        append = disk.guest_append(interval_ms=0)
        if kind == "local":
            vm = make_vm("primary", tap="tap-p", append=append,
                         extra_args=["-drive", "if=none,id=d0,format=raw,"
                                     "file=%s" % disk.primary_image,
                                     "-device", "virtio-blk-pci,drive=d0"])
            vm.wait_serial(READY_RE, BOOT_TIMEOUT)
        elif kind == "replica":
            pvm = make_vm("primary", tap="tap-p", append=append,
                          extra_args=disk.primary_args())
            pvm.wait_serial(READY_RE, BOOT_TIMEOUT)
            port = bed.free_port()
            svm = make_vm("secondary", tap="tap-s", append=append,
                          incoming="tcp:127.0.0.1:%d" % port,
                          extra_args=disk.secondary_args())
            disk.protect(pvm, svm)
        else:
            delay = int(kind.split("-")[1])
            # Periodic, as named (ours: x-colo-output-delay 0).
            pvm, _, _ = start_pair(bed, make_vm, workdir, delay_ms=delay,
                                   append=append, disk=disk, qemu=qemu,
                                   output_delay_us=0 if qemu is None
                                   else None)
        time.sleep(1)
        ms, n = write_window(bed, seconds)
        pause = None
        if kind.startswith("colo"):
            st = pvm.qmp("query-colo-status")["stats"]
            pause = (st["pause-mean-us"], st["pause-max-us"])
        return ms, n, pause


def commit_time(size_mb):
    """Seconds the secondary's failover takes with SIZE_MB in the hidden
    disk, and the bytes it held."""
    with standalone_bed("colo-bench-commit-") as (bed, make_vm, workdir):
        img = colo_env.tool("qemu-img")
        size = 1 << 30
        paths = {n: os.path.join(workdir, n) for n in
                 ("disk.raw", "hidden.qcow2", "active.qcow2")}
        subprocess.run([img, "create", "-q", "-f", "raw", paths["disk.raw"],
                        str(size)], check=True)
        for n in ("hidden.qcow2", "active.qcow2"):
            subprocess.run([img, "create", "-q", "-f", "qcow2", paths[n],
                            str(size)], check=True)
        vm = make_vm("blk", machine="none")

        def node(name, path, drv, **kw):
            d = {"node-name": name, "driver": drv,
                 "file": {"driver": "file", "filename": path}}
            d.update(kw)
            vm.qmp("blockdev-add", d)

        node("disk", paths["disk.raw"], "raw")
        node("hidden", paths["hidden.qcow2"], "qcow2", backing="disk")
        node("active", paths["active.qcow2"], "qcow2", backing="hidden")
        vm.qmp("blockdev-add", {"node-name": "repl", "driver": "replication",
                                "mode": "secondary", "file": "active"})
        sock = os.path.join(workdir, "nbd.sock")
        vm.qmp("nbd-server-start",
               addr={"type": "unix", "data": {"path": sock}})
        vm.qmp("block-export-add", {"type": "nbd", "id": "disk",
                                    "node-name": "disk", "writable": True})
        vm.qmp("xen-set-replication", enable=True, primary=False)
        subprocess.run([colo_env.tool("qemu-io"), "-f", "raw",
                        "nbd+unix:///disk?socket=%s" % sock, "-c",
                        "write -P 0x5a 0 %dM" % size_mb],
                       check=True, capture_output=True, timeout=300)
        t0 = time.monotonic()
        vm.qmp("xen-set-replication", enable=False, primary=False,
               failover=True)
        return time.monotonic() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sizes", default="16,64,256")
    ap.add_argument("--quick", action="store_true",
                    help="--seconds 5 --rounds 1 --sizes 16,64")
    ap.add_argument("--out", default=os.path.join(
        colo_env.BUILD_DIR, "results", "bench-disk.json"))
    ap.add_argument("--qemu-b", default=None,
                    help="a second QEMU binary for the colo-* runs")
    args = ap.parse_args()
    if args.quick:
        args.seconds, args.rounds, args.sizes = 5, 1, "16,64"
    if os.geteuid() != 0:
        sys.exit("bench_disk: needs root (network namespaces and taps)")

    kinds = ["local", "replica", "colo-100", "colo-1000"]
    runs = [(k, None) for k in kinds]
    if args.qemu_b:
        runs += [(k + "-b", args.qemu_b) for k in kinds if k.startswith("colo")]
    lat = {k: [] for k, _ in runs}
    pauses = {k: [] for k, _ in runs}
    for r in range(args.rounds):
        for k, qemu in runs:
            ms, n, pause = latency_setup(k.removesuffix("-b"), args.seconds,
                                         qemu)
            lat[k].append(ms)
            line = "round %d %-12s %7.3f ms/write (%d writes)" % (r, k, ms, n)
            if pause:
                pauses[k].append(pause)
                line += ", pause mean %d us, max %d us" % pause
            print(line, flush=True)
    commits = {}
    for mb in [int(x) for x in args.sizes.split(",")]:
        commits[mb] = commit_time(mb)
        print("failover commit of %4d MB: %6.0f ms" % (mb, commits[mb] * 1000),
              flush=True)

    base = statistics.median(lat["local"])
    print("\nwrite latency (median of %d rounds of %d s, 4 KiB O_DSYNC)"
          % (args.rounds, args.seconds))
    for k, _ in runs:
        m = statistics.median(lat[k])
        line = "  %-12s %7.3f ms  x%.2f of local" % (k, m, m / base)
        if pauses[k]:
            line += ", pause mean %.0f us (median of rounds), max %d us" % (
                statistics.median(p[0] for p in pauses[k]),
                max(p[1] for p in pauses[k]))
        print(line)
    if args.qemu_b:
        print("  (-b: %s)" % args.qemu_b)
    print("failover commit")
    for mb, t in commits.items():
        print("  %4d MB in the hidden disk: %6.0f ms (%.0f MB/s)"
              % (mb, t * 1000, mb / t))
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"write_ms": lat, "pause_us": pauses, "commit_s": commits,
                   "seconds": args.seconds, "rounds": args.rounds}, f,
                  indent=1)
    print("results: %s" % args.out)


if __name__ == "__main__":
    main()
