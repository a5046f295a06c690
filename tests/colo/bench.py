#!/usr/bin/env python3
"""`make bench`: our COLO side by side with the base's own COLO.

Both are built from the same pinned QEMU source (the base's with its
replication and colo-proxy options, see scripts/build-base-colo.sh) and
run the same scenarios with the same test guest under the same
accelerator, alternating ours and theirs so that machine noise hits both
alike:

  pause       the primary's VM pause per checkpoint, median and p99, for a
              guest dirtying 0, 5, 20 and 50 MB/s at delays of 100 and
              1000 ms.  The base's from each QMP STOP event to the next
              RESUME event of the primary (their timestamps are taken by
              QEMU's core inside vm_stop/vm_start, after the vCPUs paused
              and before they resume).  Ours announces no checkpoint's
              stop, so its pause is read from its trace event
              colo_checkpoint_resume, which times the whole of it, from
              before the vCPUs pause to after they resume: a longer span
              than the base's events give;
  rate        checkpoints per second at x-checkpoint-delay 1 ms, with the
              guest's counter service still answering (its replies/s shown);
  bytes       replication traffic per checkpoint: what the primary's TCP
              connection to the secondary sent meanwhile (ss's bytes_sent),
              the same for both;
  latency     the counter client's request/response time (output commit:
              ours holds replies until the covering checkpoint; the base's
              periodic mode has no output commit at all).

  failover    from killing the primary (SIGKILL) to the first reply the
              client gets from the survivor: ours fails over by itself when
              the stream breaks; the base's secondary is told at once with
              x-colo-lost-heartbeat (and its tap put back on the bridge).

It writes a JSON file and prints a table with our figure, theirs and the
ratio.

    sudo /usr/bin/python3 tests/colo/bench.py [--out FILE] [--seconds N]
        [--rates 0,5,20,50] [--delays 100,1000] [--quick]
"""

import argparse
import json
import os
import re
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import colo_env  # noqa: E402
from bench_pause import PAUSE_RE, client_rtts, percentile  # noqa: E402
from colo_pair import checkpoints, standalone_bed, start_pair  # noqa: E402
from counter_client import CounterClient  # noqa: E402

BASE_QEMU = os.path.join(colo_env.BUILD_DIR, "base-colo", "qemu",
                         "qemu-system-x86_64")
IMPLS = ("ours", "base")


def ts(ev):
    t = ev["timestamp"]
    return t["seconds"] + t["microseconds"] / 1e6


def pauses(vm, since):
    """Pauses (ms) from the primary's STOP/RESUME events after SINCE."""
    # Read every event that came meanwhile (bounded).
    for _ in range(200):
        n = len(vm.events)
        vm._collect_events(wait=0.05)
        if len(vm.events) == n:
            break
    out = []
    stop = None
    for ev in vm.events:
        if ts(ev) < since:
            continue
        if ev["event"] == "STOP":
            stop = ts(ev)
        elif ev["event"] == "RESUME" and stop is not None:
            out.append((ts(ev) - stop) * 1000)
            stop = None
    return out


def trace_args(impl):
    return ["-trace", "colo_checkpoint_resume"] if impl == "ours" else []


def traced_pauses(vm, after, upto):
    """Pauses (ms) of checkpoints AFTER < seq <= UPTO, from our primary's
    trace event colo_checkpoint_resume."""
    with open(vm.stderr_path) as f:
        return [int(us) / 1000 for seq, us in PAUSE_RE.findall(f.read())
                if after < int(seq) <= upto]


def periodic(impl):
    """Ours periodic like the base's: x-colo-output-delay 0 (the base has
    no such parameter)."""
    return 0 if impl == "ours" else None


def run(impl, rate, delay, seconds):
    qemu = BASE_QEMU if impl == "base" else None
    with standalone_bed("colo-bench-") as (bed, make_vm, workdir):
        append = "colo.dirty_mbps=%d colo.dirty_mb=64" % rate if rate else ""
        # The base's secondary runs between checkpoints and, without
        # colo-compare, nothing holds its output: keep it off the network.
        pvm, svm, _ = start_pair(bed, make_vm, workdir, append=append,
                                 delay_ms=max(delay, 100), qemu=qemu,
                                 isolate_secondary=impl == "base",
                                 output_delay_us=periodic(impl),
                                 primary_args=trace_args(impl))
        client = CounterClient(bed, os.path.join(workdir, "client.jsonl"),
                               interval=0.02, timeout=30, duration=600)
        try:
            client.wait_replies(3, 120)
            pvm.qmp("migrate-set-parameters", {"x-checkpoint-delay": delay})
            # Settle past what the initial migration left behind.
            time.sleep(2)
            t0 = time.time()
            seq0 = checkpoints(pvm) if impl == "ours" else None
            bytes0 = bytes_sent(bed, svm.incoming_port)
            time.sleep(seconds)
            if impl == "ours":
                p = traced_pauses(pvm, seq0, checkpoints(pvm))
            else:
                p = pauses(pvm, t0)
            bytes1 = bytes_sent(bed, svm.incoming_port)
            ok = colo_alive(pvm, svm)
        finally:
            client.stop(timeout=5)
        r = client_rtts(client.out)
        return {
            "impl": impl, "dirty_mb_s": rate, "delay_ms": delay,
            "seconds": seconds, "checkpoints": len(p),
            "checkpoints_per_s": round(len(p) / seconds, 2),
            "pause_median_ms": round(statistics.median(p), 3) if p else None,
            "pause_p99_ms": round(percentile(p, 99), 3) if p else None,
            "bytes_per_checkpoint": ((bytes1 - bytes0) // len(p)
                                     if p and None not in (bytes0, bytes1)
                                     else None),
            "replies_per_s": round(len(r) / (seconds + 2), 2),
            "rtt_median_ms": round(statistics.median(r), 2) if r else None,
            "still_in_colo": ok,
        }


def failover(impl, runs):
    """Kill-to-first-reply times (s) of RUNS failovers; None for a run in
    which the client got no reply from the survivor within 30 s (its TCP
    connection did not survive)."""
    qemu = BASE_QEMU if impl == "base" else None
    out = []
    for _ in range(runs):
        with standalone_bed("colo-bench-") as (bed, make_vm, workdir):
            pvm, svm, _ = start_pair(bed, make_vm, workdir, delay_ms=100,
                                     qemu=qemu,
                                     isolate_secondary=impl == "base",
                                     output_delay_us=periodic(impl))
            client = CounterClient(bed, os.path.join(workdir, "client.jsonl"),
                                   interval=0.02, timeout=30, duration=600)
            try:
                client.wait_replies(20, 120)
                t_kill = time.monotonic()
                pvm.proc.kill()
                if impl == "base":
                    bed.ip("link", "set", "tap-s", "master", "br0")
                    svm.qmp("x-colo-lost-heartbeat")
                try:
                    client.wait_replies(1, 60, after=t_kill)
                except AssertionError:
                    pass
            finally:
                client.stop(timeout=5)
            after = client.log().replies_after(t_kill)
            out.append(after[0][0] - t_kill if after else None)
    return out


def failover_summary(times):
    ok = [t for t in times if t is not None]
    return "%8.3f s (worst %.3f) %d/%d" % (
        statistics.median(ok) if ok else -1, max(ok) if ok else -1,
        len(ok), len(times))


def bytes_sent(bed, port):
    """Bytes the primary has sent on its connection to PORT (ss)."""
    out = bed.run(["ss", "-tinH", "dport", "=", ":%d" % port]).stdout
    m = re.findall(r"bytes_sent:(\d+)", out)
    return int(m[0]) if m else None


def colo_alive(pvm, svm):
    return (pvm.qmp("query-colo-status")["mode"] == "primary" and
            svm.qmp("query-colo-status")["mode"] == "secondary")


def ratio(ours, theirs, better_lower=True):
    if ours in (None, 0) or theirs in (None, 0):
        return None
    return round(theirs / ours if better_lower else ours / theirs, 1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rates", default="0,5,20,50")
    ap.add_argument("--delays", default="100,1000")
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--quick", action="store_true",
                    help="idle and 20 MB/s at 100 ms, 10 s each, and the rate")
    ap.add_argument("--out", default=os.path.join(colo_env.BUILD_DIR,
                                                  "results", "bench.json"))
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench: needs root (network namespaces and taps)")
    if not os.access(BASE_QEMU, os.X_OK):
        sys.exit("bench: the base's COLO is not built (%s); run make bench"
                 % BASE_QEMU)
    rates = [int(x) for x in args.rates.split(",")]
    delays = [int(x) for x in args.delays.split(",")]
    seconds = args.seconds
    if args.quick:
        rates, delays, seconds = [0, 20], [100], 10
    scenarios = [(r, d) for r in rates for d in delays] + [(5, 1)]

    rows = []
    print("%-10s %6s %6s | %-26s | %-26s | %s" % (
        "scenario", "MB/s", "delay", "ours", "base", "base/ours"), flush=True)
    for rate, delay in scenarios:
        pair = {}
        for impl in IMPLS:
            pair[impl] = run(impl, rate, delay, seconds)
            rows.append(pair[impl])
        o, b = pair["ours"], pair["base"]
        if delay == 1:
            print("%-10s %6d %6s | %8.1f ckpt/s %5.1f rep/s | %8.1f ckpt/s "
                  "%5.1f rep/s | %s x" % (
                      "max rate", rate, "1", o["checkpoints_per_s"],
                      o["replies_per_s"], b["checkpoints_per_s"],
                      b["replies_per_s"],
                      ratio(o["checkpoints_per_s"], b["checkpoints_per_s"],
                            better_lower=False)), flush=True)
            continue
        print("%-10s %6d %6d | %7.2f / %7.2f ms p99 | %7.2f / %7.2f ms p99 |"
              " median %s x, p99 %s x; %s / %s bytes per ckpt" % (
                  "pause", rate, delay, o["pause_median_ms"] or -1,
                  o["pause_p99_ms"] or -1, b["pause_median_ms"] or -1,
                  b["pause_p99_ms"] or -1,
                  ratio(o["pause_median_ms"], b["pause_median_ms"]),
                  ratio(o["pause_p99_ms"], b["pause_p99_ms"]),
                  o["bytes_per_checkpoint"], b["bytes_per_checkpoint"]),
              flush=True)
    print("%-10s %6s %6s | %-26s | %-26s | %s" % (
        "", "", "", "ours", "base", "base/ours"), flush=True)
    for rate, delay in [(r, d) for r in rates for d in delays]:
        o = next(x for x in rows if x["impl"] == "ours" and
                 x["dirty_mb_s"] == rate and x["delay_ms"] == delay)
        b = next(x for x in rows if x["impl"] == "base" and
                 x["dirty_mb_s"] == rate and x["delay_ms"] == delay)
        print("%-10s %6d %6d | %7.2f ms rtt, %9s B | %7.2f ms rtt, %9s B |"
              " output commit holds ours" % (
                  "rtt/bytes", rate, delay, o["rtt_median_ms"],
                  o["bytes_per_checkpoint"], b["rtt_median_ms"],
                  b["bytes_per_checkpoint"]), flush=True)

    runs = 1 if args.quick else 5
    fo = {impl: failover(impl, runs) for impl in IMPLS}
    for impl in IMPLS:
        rows.append({"impl": impl, "failover_s": fo[impl]})
    print("%-10s %6s %6s | %-26s | %-26s | runs with a reply" % (
        "failover", "", "", failover_summary(fo["ours"]),
        failover_summary(fo["base"])), flush=True)

    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"date": time.strftime("%Y-%m-%d %H:%M:%S"),
                   "accel": colo_env.ACCEL, "rows": rows}, f, indent=2)
    print("bench: results in %s" % args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
