#!/usr/bin/env python3
"""`make demo`: a COLO-protected test guest, shown working.

Starts a primary and a secondary QEMU with the test guest in a private
network namespace, puts them in COLO, runs the counter client against the
guest's service, and prints the pair's checkpoint statistics every second:
first with a 200 ms checkpoint period, then 1000 ms.  The guest's disk is
protected by block replication and written all along by the guest's disk
writer.  Each QEMU has its colo-manager, which decide through an etcd
member (on loopback) which side serves.  Then it checks that a checkpoint
taken with the primary stopped leaves both memories equal, hangs the
primary (SIGSTOP: a pair without an arbiter would wait for an operator)
and shows the managers handing over to the secondary while the client
carries on, on the same TCP connection; the hung primary, continued,
fences itself.  It powers the guest off and checks the survivor's disk.
Everything it made is removed at the end, also on Ctrl-C.

    sudo /usr/bin/python3 tests/colo/demo.py [--seconds N]
"""

import argparse
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from colo_pair import (checkpoint_stopped, colo_status,  # noqa: E402
                       differing_pages, query_guest, save_memory,
                       standalone_bed, start_arbitrated_pair, wait_until)
from colo_disk import ReplicatedDisk  # noqa: E402
from colo_manager import ManagerProc  # noqa: E402
from counter_client import CounterClient, CounterLog  # noqa: E402
from etcd_member import EtcdMember  # noqa: E402


def show(pvm, svm, client, t0):
    p = colo_status(pvm)
    s = colo_status(svm)
    st = p["stats"]
    log = CounterLog(client.out)
    now = time.monotonic()
    answers = len(log.replies_after(now - 1))
    print("%5.1fs  %-9s %-9s  checkpoints %5d  pause last %5.2f ms mean %5.2f"
          " max %5.2f  %7.1f kB/ckpt  counter %s (%d answers/s)" % (
              now - t0, p["mode"], s["mode"], st["checkpoints"],
              st["pause-last-us"] / 1000, st["pause-mean-us"] / 1000,
              st["pause-max-us"] / 1000, st["bytes-last"] / 1024,
              log.last_value(), answers), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=6,
                    help="seconds to show at each checkpoint period")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("demo: needs root (network namespaces and taps)")

    with standalone_bed("colo-demo-") as (bed, make_vm, workdir):
        return run_demo(bed, make_vm, workdir, args.seconds)


def run_demo(bed, make_vm, workdir, seconds):
    client = None
    etcd = None
    managers = []
    try:
        etcd = EtcdMember(workdir)
        print("demo: etcd at %s; booting the primary and entering COLO "
              "(namespace %s)" % (etcd.url, bed.ns), flush=True)
        disk = ReplicatedDisk(workdir)
        pvm, svm, socks = start_arbitrated_pair(
            bed, make_vm, workdir, delay_ms=200, disk=disk,
            append="colo.dirty_mbps=5 colo.dirty_mb=64 " +
            disk.guest_append())
        managers = [ManagerProc(workdir, "host-a", "host-b", socks[0],
                                etcd.url).start(),
                    ManagerProc(workdir, "host-b", "host-a", socks[1],
                                etcd.url).start()]
        wait_until(lambda: colo_status(pvm)["x-lease"]["state"] == "valid",
                   30, "the primary's first lease")
        print("demo: colo-manager on each side; 'colo-manager status' on "
              "the primary's:\n  " +
              managers[0].status(as_json=False).strip().replace(
                  "\n", "\n  "), flush=True)
        client = CounterClient(bed, os.path.join(workdir, "client.jsonl"),
                               interval=0.02, timeout=30, duration=600)
        client.wait_replies(10, 60)
        print("demo: in COLO; the guest dirties 5 MB/s and writes its disk "
              "(replicated over NBD) every 5 ms; a client counts through its "
              "service every 20 ms", flush=True)
        t0 = time.monotonic()
        # Periodic: each reply waits for the next checkpoint; then
        # output-driven (the default): a held reply starts one at once.
        for delay, output in ((200, 0), (1000, 0), (1000, 1)):
            pvm.qmp("migrate-set-parameters",
                    {"x-checkpoint-delay": delay,
                     "x-colo-output-delay": output})
            print("demo: x-checkpoint-delay %d ms, %s" % (
                delay, "output-driven (x-colo-output-delay 1 us)" if output
                else "periodic (x-colo-output-delay 0)"), flush=True)
            for _ in range(seconds):
                time.sleep(1)
                show(pvm, svm, client, t0)
        checkpoint_stopped(pvm, svm)
        diff = differing_pages(save_memory(pvm, os.path.join(workdir, "p")),
                               save_memory(svm, os.path.join(workdir, "s")))
        print("demo: primary stopped, checkpoint taken: the secondary's "
              "memory %s the primary's" % ("EQUALS" if not diff else
                                          "DIFFERS FROM (%d pages)" % len(diff)),
              flush=True)
        pvm.qmp("cont")
        pvm.qmp("migrate-set-parameters", {"x-checkpoint-delay": 200,
                                           "x-colo-output-delay": 1})
        client.wait_replies(20, 60, after=time.monotonic())

        seen = CounterLog(client.out).last_value()
        acked = int(query_guest(bed, "disk"))
        print("demo: the primary hangs (SIGSTOP); the client has seen %d, "
              "and disk write %d complete" % (seen, acked), flush=True)
        t_kill = time.monotonic()
        pvm.proc.send_signal(signal.SIGSTOP)
        ev = svm.wait_event("COLO_EXIT", 60)
        svm.wait_status({"running"}, 30)
        svm.qmp("nbd-server-stop")
        print("demo: %.1f s later, its etcd lease expired: the secondary's "
              "manager took the key and handed over (COLO_EXIT %s); the "
              "secondary runs the guest" % (time.monotonic() - t_kill,
                                            ev["data"]["reason"]),
              flush=True)
        pvm.proc.send_signal(signal.SIGCONT)
        lapsed = pvm.wait_event("X_COLO_LEASE_LAPSED", 30,
                                match=lambda e: e["data"]["fenced"])
        print("demo: the hung primary, continued, found its lease lapsed "
              "and fenced itself (X_COLO_LEASE_LAPSED fenced=%s; its VM is "
              "%s): never two serving" % (
                  lapsed["data"]["fenced"],
                  pvm.qmp("query-status")["status"]), flush=True)
        print("demo: 'colo-manager status' on the secondary's:\n  " +
              managers[1].status(as_json=False).strip().replace(
                  "\n", "\n  "), flush=True)
        pvm.proc.kill()
        pvm.proc.wait(timeout=30)
        client.wait_replies(50, 120, after=t_kill)
        client.stop()
        log = CounterLog(client.out)
        first_t, first_v = log.replies_after(t_kill)[0]
        survivor = int(query_guest(bed, "get"))
        print("demo: first reply from the survivor %.0f ms after the hang: %d;"
              " %d replies in all, never backwards: %s, one connection: %s, "
              "longest gap %.0f ms; the survivor's counter %d >= %d seen"
              % ((first_t - t_kill) * 1000, first_v, log.count,
                 log.never_backwards(), not log.reconnects() and
                 not log.errors(), log.longest_gap()[0] * 1000, survivor,
                 seen), flush=True)
        ok = (not diff and log.never_backwards() and not log.errors()
              and survivor >= log.last_value())
        print("demo: powering the guest off: %s"
              % query_guest(bed, "poweroff"), flush=True)
        wait_until(lambda: not svm.is_running(), 60, svm.name)
        print("demo: the survivor exited with status %d"
              % svm.proc.returncode, flush=True)
        disk_ok, report = disk.verify(disk.secondary_image, acked)
        print("demo: the survivor's disk %s every write seen complete before "
              "the hang (up to %d; it now ends at %d): %d valid blocks, "
              "%d torn, %d missing, %d holes"
              % ("holds" if disk_ok else "DOES NOT HOLD", acked,
                 report["max_seq"], report["valid"], report["torn"],
                 report["missing"], report["holes"]), flush=True)
        return 0 if ok and disk_ok else 1
    finally:
        if client is not None:
            client.stop(timeout=5)
        for m in managers:
            m.close()
        if etcd is not None:
            etcd.close()


if __name__ == "__main__":
    sys.exit(main())
