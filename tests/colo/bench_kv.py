#!/usr/bin/env python3
"""`make bench`, key-value part: a real server and a real client.

Debian's redis server runs in the test guest (initrd-redis.img,
colo.redis=PORT); redis-benchmark (Debian's redis-tools) runs on the host,
in the test's namespace, with 1 and with 50 clients, SET and GET over a
keyspace of 1000 keys.  Configurations, alternated within each round so
that machine noise hits all alike:

  unprotected     the same guest on the same QEMU, no COLO
  ours-periodic   ours, a checkpoint every 100 ms (x-colo-output-delay 0)
  ours-output     ours, output-driven (x-colo-output-delay 1 us, the
                  default): a held reply starts a checkpoint at once; the
                  period (100 ms) stays
  base-compare    the base's COLO in its documented compare mode
                  (colo-compare, filter-mirror, filter-redirector and
                  filter-rewriter as in its docs/COLO-FT.txt), periodic
                  checkpoint 1000 ms
  ours-output-b   as ours-output, with the QEMU that --qemu-b names (a
                  build to compare with, side by side)
  ours-output@US  as ours-output, with x-colo-output-delay US

Every configuration uses the same NIC (virtio-net on a tap without vnet
headers, which the base's proxy filters would otherwise need told).  Per
row: requests/s, p50 and p99 latency (redis-benchmark's own figures), the
ratio of the requests/s to the unprotected VM's of the same round,
checkpoints per second and the share of time the primary VM was stopped:
ours from query-colo-status (checkpoints, mean pause) before and after,
the base's from its QMP STOP and RESUME events.  Ours are not read from
events: at hundreds of checkpoints a second, reading two events per
checkpoint took a fifth of this machine's two cores from the VMs under
test.  Each run is sized from a short probe to last about --seconds.

    sudo /usr/bin/python3 tests/colo/bench_kv.py [--rounds N]
        [--seconds S] [--quick] [--configs A,B] [--qemu-b QEMU]
        [--out FILE]
"""

import argparse
import csv
import io
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import colo_env  # noqa: E402
from colo_pair import (READY_RE, colo_status, standalone_bed,  # noqa: E402
                       start_pair)
from vm import GUEST_IP  # noqa: E402

BASE_QEMU = os.path.join(colo_env.BUILD_DIR, "base-colo", "qemu",
                         "qemu-system-x86_64")
REDIS_PORT = 6379
CONFIGS = ("unprotected", "ours-periodic", "ours-output", "base-compare")
CLIENTS = (1, 50)
TAP_OPTS = "vnet_hdr=off"


def ts(ev):
    t = ev["timestamp"]
    return t["seconds"] + t["microseconds"] / 1e6


def pauses_between(vm, t0, t1):
    """The primary's pauses (ms) that began between T0 and T1 (wall
    clock), from its STOP and RESUME events."""
    out, stop = [], None
    for ev in vm.events:
        if ev["event"] == "STOP":
            stop = ts(ev)
        elif ev["event"] == "RESUME" and stop is not None:
            if t0 <= stop <= t1:
                out.append((ts(ev) - stop) * 1000)
            stop = None
    return out


def ours_pauses(vm):
    """Ours: (checkpoints, total pause in ms, bytes, pages) so far."""
    st = colo_status(vm)["stats"]
    return (st["checkpoints"], st["checkpoints"] * st["pause-mean-us"] / 1000,
            st["bytes-total"], st["pages-total"])


def redis_images():
    kernel, initrd = colo_env.guest_images()
    initrd = os.path.join(os.path.dirname(initrd), "initrd-redis.img")
    if not os.path.isfile(initrd):
        raise colo_env.SetupError("%s is not built: install redis-tools "
                                  "and run make guest" % initrd)
    return kernel, initrd


def wait_redis(bed, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = bed.run(["redis-cli", "-h", GUEST_IP, "-p", str(REDIS_PORT),
                     "ping"], check=False, timeout=30)
        if r.stdout.strip() == "PONG":
            return
        time.sleep(0.2)
    raise AssertionError("the guest's redis server did not answer in %d s"
                         % timeout)


def redis_benchmark(bed, clients, requests, watch=()):
    """SET then GET, REQUESTS each over CLIENTS connections; returns
    {test: {rps, p50, p99}} and the run's (start, end) wall-clock times.
    The VMs in WATCH have their QMP events read meanwhile."""
    argv = bed.wrap(["redis-benchmark", "-h", GUEST_IP, "-p",
                     str(REDIS_PORT), "-t", "set,get", "-r", "1000",
                     "-c", str(clients), "-n", str(requests), "--csv"])
    t0 = time.time()
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    deadline = time.monotonic() + 600
    while p.poll() is None:
        if time.monotonic() > deadline:
            p.kill()
            p.wait()
            raise AssertionError("redis-benchmark ran for over 600 s")
        for vm in watch:
            vm._collect_events(wait=0.2)
        if not watch:
            time.sleep(0.2)
    out, err = p.communicate()
    t1 = time.time()
    if p.returncode != 0:
        raise AssertionError("redis-benchmark failed (%d): %s"
                             % (p.returncode, err[-500:]))
    res = {}
    for row in csv.DictReader(io.StringIO(out)):
        res[row["test"]] = {"rps": float(row["rps"]),
                            "p50_ms": float(row["p50_latency_ms"]),
                            "p99_ms": float(row["p99_latency_ms"])}
    if set(res) != {"SET", "GET"}:
        raise AssertionError("redis-benchmark printed no SET/GET rows: %r"
                             % out)
    return res, t0, t1


def compare_mode_args(bed):
    """The base's compare mode, as its docs/COLO-FT.txt sets it up, on
    loopback ports of the test's namespace."""
    port = {n: bed.free_port() for n in
            ("mirror", "compare1", "compare0", "compare_out")}
    pri = [
        "-chardev", "socket,id=mirror0,host=127.0.0.1,port=%d,server=on,"
        "wait=off" % port["mirror"],
        "-chardev", "socket,id=compare1,host=127.0.0.1,port=%d,server=on,"
        "wait=off" % port["compare1"],
        "-chardev", "socket,id=compare0,host=127.0.0.1,port=%d,server=on,"
        "wait=off" % port["compare0"],
        "-chardev", "socket,id=compare0-0,host=127.0.0.1,port=%d"
        % port["compare0"],
        "-chardev", "socket,id=compare_out,host=127.0.0.1,port=%d,server=on,"
        "wait=off" % port["compare_out"],
        "-chardev", "socket,id=compare_out0,host=127.0.0.1,port=%d"
        % port["compare_out"],
        "-object", "filter-mirror,id=m0,netdev=hn0,queue=tx,outdev=mirror0",
        "-object", "filter-redirector,netdev=hn0,id=redire0,queue=rx,"
        "indev=compare_out",
        "-object", "filter-redirector,netdev=hn0,id=redire1,queue=rx,"
        "outdev=compare0",
        "-object", "iothread,id=iothread1",
        "-object", "colo-compare,id=comp0,primary_in=compare0-0,"
        "secondary_in=compare1,outdev=compare_out0,iothread=iothread1",
    ]
    sec = [
        "-chardev", "socket,id=red0,host=127.0.0.1,port=%d,reconnect-ms=1000"
        % port["mirror"],
        "-chardev", "socket,id=red1,host=127.0.0.1,port=%d,reconnect-ms=1000"
        % port["compare1"],
        "-object", "filter-redirector,id=f1,netdev=hn0,queue=tx,indev=red0",
        "-object", "filter-redirector,id=f2,netdev=hn0,queue=rx,outdev=red1",
        "-object", "filter-rewriter,id=rew0,netdev=hn0,queue=all",
    ]
    return pri, sec


def output_delay_us(config):
    """x-colo-output-delay for one of ours: ours-output@USEC sets it."""
    if config == "ours-periodic":
        return 0
    if "@" in config:
        return int(config.split("@", 1)[1])
    return 1


def start_config(config, bed, make_vm, workdir, qemu_b=None):
    """Start CONFIG; returns the VM whose pauses count (None: none)."""
    kernel, initrd = redis_images()
    append = "colo.redis=%d" % REDIS_PORT
    vm_kw = {"kernel": kernel, "initrd": initrd, "tap_opts": TAP_OPTS}
    if config == "unprotected":
        vm = make_vm("primary", tap="tap-p", append=append, **vm_kw)
        vm.wait_serial(READY_RE, 180)
        return None
    if config == "base-compare":
        pri, sec = compare_mode_args(bed)
        pvm, _, _ = start_pair(bed, make_vm, workdir, append=append,
                               delay_ms=1000, qemu=BASE_QEMU,
                               primary_args=pri, secondary_args=sec,
                               isolate_secondary=True, vm_kw=vm_kw)
        return pvm

    pvm, _, _ = start_pair(bed, make_vm, workdir, append=append,
                           delay_ms=100, vm_kw=vm_kw,
                           qemu=(qemu_b if config == "ours-output-b"
                                 else None),
                           output_delay_us=output_delay_us(config))
    return pvm


def measure(config, seconds, qemu_b=None):
    """Rows of CONFIG: one per (clients, test)."""
    rows = []
    with standalone_bed("colo-bench-kv-") as (bed, make_vm, workdir):
        pvm = start_config(config, bed, make_vm, workdir, qemu_b)
        wait_redis(bed)
        ours = config.startswith("ours")
        # The base's events are read as they come (two a second); ours
        # wait in the socket until the run is over.
        watch = (pvm,) if pvm and not ours else ()
        for clients in CLIENTS:
            # A short probe sizes the run to about SECONDS per test.
            probe, _, _ = redis_benchmark(bed, clients, clients * 20, watch)
            rps = min(r["rps"] for r in probe.values())
            n = int(min(max(rps * seconds, clients * 20), 200000))
            before = ours_pauses(pvm) if ours else None
            res, t0, t1 = redis_benchmark(bed, clients, n, watch)
            if ours:
                after = ours_pauses(pvm)
                count, stopped_ms = (after[0] - before[0],
                                     after[1] - before[1])
                per_ckpt = {"kb_per_ckpt": round((after[2] - before[2]) /
                                                 max(count, 1) / 1024, 1),
                            "pages_per_ckpt": round((after[3] - before[3]) /
                                                    max(count, 1), 1)}
            elif pvm:
                p = pauses_between(pvm, t0, t1)
                count, stopped_ms = len(p), sum(p)
            else:
                count, stopped_ms = 0, 0
            if not ours:
                per_ckpt = {}
            for test, r in res.items():
                rows.append(dict(r, **per_ckpt, config=config, clients=clients,
                                 test=test, requests=n,
                                 checkpoints_per_s=round(count / (t1 - t0),
                                                         1),
                                 stopped_share=round(stopped_ms / 1000 /
                                                     (t1 - t0), 4)))
        if pvm:
            st = pvm.qmp("query-migrate")["status"]
            for r in rows:
                r["still_in_colo"] = st == "colo"
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=8)
    ap.add_argument("--quick", action="store_true",
                    help="one round, 3 s per run")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--qemu-b", default=None,
                    help="another build's qemu-system-x86_64, run as "
                    "ours-output-b right after ours-output")
    ap.add_argument("--out", default=os.path.join(colo_env.BUILD_DIR,
                                                  "results", "bench-kv.json"))
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench-kv: needs root (network namespaces and taps)")
    configs = args.configs.split(",")
    if args.qemu_b:
        if "ours-output-b" not in configs:
            configs.insert(configs.index("ours-output") + 1
                           if "ours-output" in configs else len(configs),
                           "ours-output-b")
    elif "ours-output-b" in configs:
        sys.exit("bench-kv: ours-output-b needs --qemu-b")
    if "base-compare" in configs and not os.access(BASE_QEMU, os.X_OK):
        sys.exit("bench-kv: the base's COLO is not built (%s); run make "
                 "bench" % BASE_QEMU)
    rounds, seconds = args.rounds, args.seconds
    if args.quick:
        rounds, seconds = 1, 3
    rows = []
    for rnd in range(rounds):
        for config in configs:
            for r in measure(config, seconds, args.qemu_b):
                r["round"] = rnd
                rows.append(r)
                print("round %d %-14s c=%-2d %-3s %9.1f req/s p50 %7.2f ms "
                      "p99 %7.2f ms  %6.1f ckpt/s stopped %5.1f %%%s" % (
                          rnd, config, r["clients"], r["test"], r["rps"],
                          r["p50_ms"], r["p99_ms"], r["checkpoints_per_s"],
                          100 * r["stopped_share"],
                          "  %.1f KiB, %.1f pages/ckpt" % (
                              r["kb_per_ckpt"], r["pages_per_ckpt"])
                          if "kb_per_ckpt" in r else ""), flush=True)
    # Ratios within a round, then the median over rounds.
    for r in rows:
        base = next((x for x in rows if x["config"] == "unprotected" and
                     x["round"] == r["round"] and
                     x["clients"] == r["clients"] and
                     x["test"] == r["test"]), None)
        r["vs_unprotected"] = (round(r["rps"] / base["rps"], 4)
                               if base else None)
    print("\nkey-value (redis), median of %d round(s), TCG" % rounds)
    print("%-14s %7s %4s | %9s %8s %8s %9s | %7s %8s" % (
        "config", "clients", "test", "req/s", "p50 ms", "p99 ms",
        "vs unprot", "ckpt/s", "stopped"))
    for config in configs:
        for clients in CLIENTS:
            for test in ("SET", "GET"):
                sel = [r for r in rows if r["config"] == config and
                       r["clients"] == clients and r["test"] == test]
                if not sel:
                    continue

                def med(k):
                    vals = [r[k] for r in sel if r[k] is not None]
                    return statistics.median(vals) if vals else float("nan")
                print("%-14s %7d %4s | %9.1f %8.2f %8.2f %8.1f%% | %7.1f "
                      "%7.1f%%" % (config, clients, test, med("rps"),
                                   med("p50_ms"), med("p99_ms"),
                                   100 * med("vs_unprotected"),
                                   med("checkpoints_per_s"),
                                   100 * med("stopped_share")))
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"date": time.strftime("%Y-%m-%d %H:%M:%S"),
                   "accel": colo_env.ACCEL, "rows": rows}, f, indent=2)
    print("bench-kv: results in %s" % args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
