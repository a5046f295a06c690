#!/usr/bin/env python3
"""Measure our COLO's checkpoint pause and added latency with the test guest.

For each dirty rate (MB/s, the guest's memory dirtier over a 64 MiB working
set) and each checkpoint delay, it brings a pair into COLO, runs it for a
while with the counter client sending a request every 20 ms, and reads
  - the pause of every checkpoint (VM stopped to VM resumed) from the
    primary's trace event colo_checkpoint_resume,
  - the client's request/response times, which output commit lengthens:
    a reply waits for the checkpoint that covers it.
A first row measures the same guest without COLO, for the latency baseline.
It prints median, p99 and max per scenario and writes them as JSON.
With --qemu-b, every COLO scenario runs again right after with that QEMU
(another build of ours, e.g. before a change): rows marked "-b".

    sudo /usr/bin/python3 tests/colo/bench_pause.py [--out FILE]
        [--rates 0,20] [--delays 100,1000] [--seconds 30] [--rounds 1]
        [--qemu-b PATH]
"""

import argparse
import json
import os
import re
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from colo_pair import (READY_RE, BOOT_TIMEOUT, checkpoints,  # noqa: E402
                       colo_status, standalone_bed, start_pair)
from counter_client import CounterClient  # noqa: E402

PAUSE_RE = re.compile(r"colo_checkpoint_resume checkpoint (\d+): VM resumed "
                      r"after (\d+) us")
# The pause's phases (builds since the event gave them).
PHASES = ("stop", "ram", "devices", "resume")
PHASES_RE = re.compile(r"colo_checkpoint_resume checkpoint (\d+): VM resumed "
                       r"after \d+ us \(stop (\d+), RAM (\d+), "
                       r"devices (\d+), resume (\d+)\)")


def percentile(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def client_rtts(path):
    rtts = []
    with open(path) as f:
        for line in f:
            d = json.loads(line)
            if "rtt" in d:
                rtts.append(d["rtt"] * 1000)
    return rtts


def latency(rtts):
    return {"rtt_median_ms": round(statistics.median(rtts), 2),
            "rtt_p99_ms": round(percentile(rtts, 99), 2)}


def run_scenario(rate, delay, seconds, qemu=None):
    """DELAY None: no COLO, the guest alone (latency baseline)."""
    with standalone_bed("colo-bench-") as (bed, make_vm, workdir):
        return measure(bed, make_vm, workdir, rate, delay, seconds, qemu)


def measure(bed, make_vm, workdir, rate, delay, seconds, qemu=None):
    client = None
    try:
        append = "colo.dirty_mbps=%d colo.dirty_mb=64" % rate if rate else ""
        if delay is None:
            pvm = make_vm("alone", tap="tap-p", append=append)
            pvm.wait_serial(READY_RE, BOOT_TIMEOUT)
        else:
            pvm, svm, _ = start_pair(bed, make_vm, workdir, append=append,
                                     delay_ms=delay, output_delay_us=0,
                                     qemu=qemu,
                                     primary_args=["-trace",
                                                   "colo_checkpoint_resume"])
            # Skip the first checkpoints: they carry what the initial
            # migration's last pass left.
            first = checkpoints(pvm) + 2
        client = CounterClient(bed, os.path.join(workdir, "client.jsonl"),
                               interval=0.02, timeout=30, duration=600)
        client.wait_replies(5, 60)
        time.sleep(seconds)
        client.stop()
        row = {"dirty_mb_s": rate, "delay_ms": delay, "seconds": seconds}
        row.update(latency(client_rtts(client.out)))
        if delay is None:
            return row
        stats = colo_status(pvm)["stats"]
        with open(pvm.stderr_path) as f:
            log = f.read()
        pauses = [int(us) for seq, us in PAUSE_RE.findall(log)
                  if int(seq) > first]
        phases = [m[1:] for m in PHASES_RE.findall(log) if int(m[0]) > first]
        for i, name in enumerate(PHASES):
            if phases:
                row[name + "_median_ms"] = statistics.median(
                    int(p[i]) for p in phases) / 1000
        row.update({
            "checkpoints": len(pauses),
            "pause_median_ms": statistics.median(pauses) / 1000,
            "pause_p99_ms": percentile(pauses, 99) / 1000,
            "pause_max_ms": max(pauses) / 1000,
            "bytes_per_checkpoint": stats["bytes-total"] // max(1, stats["checkpoints"]),
        })
        return row
    finally:
        if client is not None:
            client.stop(timeout=5)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rates", default="0,20")
    ap.add_argument("--delays", default="100,1000")
    ap.add_argument("--seconds", type=int, default=30)
    ap.add_argument("--out", default=None)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--qemu-b", default=None)
    args = ap.parse_args()
    runs = [(None, "")]
    if args.qemu_b:
        runs.append((args.qemu_b, "-b"))
    scenarios = [(rate, delay, qemu, label)
                 for _ in range(args.rounds)
                 for rate in [int(x) for x in args.rates.split(",")]
                 for delay in [None] + [int(x) for x in args.delays.split(",")]
                 for qemu, label in runs
                 if delay is not None or qemu is None]
    rows = []
    for rate, delay, qemu, label in scenarios:
        row = run_scenario(rate, delay, args.seconds, qemu)
        row["qemu"] = qemu or "ours"
        rows.append(row)
        if delay is None:
            print("dirty %3d MB/s  no COLO         request/response median"
                  " %6.2f ms p99 %6.2f ms" % (rate, row["rtt_median_ms"],
                                              row["rtt_p99_ms"]),
                  flush=True)
            continue
        print("dirty %3d MB/s  delay %5d%-2s ms  %4d checkpoints  pause median"
              " %6.2f ms  p99 %6.2f ms  max %6.2f ms  %9d bytes/ckpt  "
              "request/response median %7.2f ms p99 %7.2f ms" % (
                  rate, delay, label, row["checkpoints"],
                  row["pause_median_ms"], row["pause_p99_ms"],
                  row["pause_max_ms"], row["bytes_per_checkpoint"],
                  row["rtt_median_ms"], row["rtt_p99_ms"]), flush=True)
        if "stop_median_ms" in row:
            print("    pause phases, medians: " +
                  ", ".join("%s %.2f ms" % (name, row[name + "_median_ms"])
                            for name in PHASES), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
