#!/usr/bin/env python3
"""`make demo`: a COLO-protected test guest, run by colo-manager, shown
working and failing over.

An etcd member (on loopback) and two hosts, each a network namespace of
its own (its LAN and backbone links to the client's namespace, its link
to etcd), and on each host one command: `colo-manager run CONFIG`.  The first manager boots the test guest, the
other starts a secondary; the primary's copies the guest's disk to it,
replicates it, and enters COLO, with nothing else typed.  A client counts
through the guest's service every 20 ms while the pair's checkpoint
statistics are printed every second: periodic checkpoints (200 ms, then
1000 ms), then output-driven ones (the default).  A checkpoint taken with
the primary stopped leaves both memories equal.  Then the primary *host*
dies (its QEMU and its manager killed): after the etcd lease's TTL the
secondary's manager takes the key and hands over, the client carrying on
on the same TCP connection; the dead host's manager, started again,
starts a secondary there, which the survivor protects by itself.  Then
the new primary's QEMU is killed (its manager alive: the key passes at
once) and the pair is protected a third time.  Last, the guest is
powered off and the survivor's disk checked against every write the
guest saw complete.  Everything it made is removed at the end, also on
Ctrl-C.

    sudo /usr/bin/python3 tests/colo/demo.py [--seconds N]
"""

import argparse
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import colo_env  # noqa: E402
from colo_pair import (checkpoint_stopped, differing_pages,  # noqa: E402
                       query_guest, save_memory, standalone_bed, wait_until)
from colo_manager import (ManagedHost, managed_disks,  # noqa: E402
                          pair_protected)
from hostbed import HostNs  # noqa: E402
from counter_client import CounterClient, CounterLog  # noqa: E402
from etcd_member import EtcdMember  # noqa: E402


def show(pvm, svm, client, t0):
    p = pvm.colo_status()
    s = svm.colo_status()
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

    with standalone_bed("colo-demo-") as (bed, _, workdir):
        return run_demo(bed, workdir, args.seconds)


def status(host):
    return "  " + host.manager.status(as_json=False).strip().replace(
        "\n", "\n  ")


def protected(etcd, hosts, since, what):
    pair = wait_until(lambda: pair_protected(etcd, hosts), 300,
                      "the pair protected")
    print("demo: %s: protected %.1f s later, %s primary, %s secondary "
          "(successor)" % (what, time.monotonic() - since, pair[0].name,
                           pair[1].name), flush=True)
    return pair


def failover(etcd, hosts, client, pvm, svm, whole_host):
    """Kill PVM's QEMU (WHOLE_HOST: and its manager); wait for SVM to
    serve; returns the instant of the kill."""
    seen = CounterLog(client.out).last_value()
    t_kill = time.monotonic()
    if whole_host:
        pvm.manager.kill()
    pid = pvm.kill_qemu()
    print("demo: %s dies (%s, QEMU pid %d killed); the client has seen %d"
          % (pvm.name, "its manager killed too: no one revokes its etcd "
             "lease" if whole_host else "its manager alive", pid, seen),
          flush=True)
    wait_until(lambda: (etcd.get("colo/vm0/primary") or [None])[0] ==
               svm.name, 60, "the key passing")
    client.wait_replies(1, 60, after=t_kill)
    first_t, first_v = CounterLog(client.out).replies_after(t_kill)[0]
    print("demo: %.1f s later %s's manager held the key and handed over; "
          "first reply from the survivor %.0f ms after the kill: %d" % (
              time.monotonic() - t_kill, svm.name,
              (first_t - t_kill) * 1000, first_v), flush=True)
    return t_kill


def run_demo(bed, workdir, seconds):
    client = None
    etcd = None
    hosts = []
    nets = []
    try:
        etcd = EtcdMember(workdir)
        disks = managed_disks(workdir)
        for n, (name, peer) in enumerate((("host-a", "host-b"),
                                          ("host-b", "host-a")), 1):
            nets.append(HostNs(bed, n))
            hosts.append(ManagedHost(bed, workdir, etcd.url, name, peer,
                                     "tap-%s" % name[-1], disks[n - 1],
                                     append="colo.dirty_mbps=5 "
                                     "colo.dirty_mb=64", host=nets[-1]))
        print("demo: etcd at %s; the client in namespace %s; %s" % (
            etcd.url, bed.ns, ", ".join("%s in namespace %s (%s)" % (
                h.name, h.host.ns, h.host.addr) for h in hosts)), flush=True)
        print("demo: on each host one command:", flush=True)
        t0 = time.monotonic()
        for h in hosts:
            print("  colo-manager run %s" % h.manager.config, flush=True)
            h.manager.start()
        pvm, svm = protected(etcd, hosts, t0, "started")
        print("demo: 'colo-manager status' on %s:\n%s" % (pvm.name,
                                                        status(pvm)),
              flush=True)
        # Protected before the guest finished booting: wait for its service.
        pvm.wait_guest(120)
        client = CounterClient(bed, os.path.join(workdir, "client.jsonl"),
                               interval=0.02, timeout=30, duration=900)
        client.wait_replies(10, 120)
        print("demo: the guest dirties 5 MB/s and writes its disk "
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

        t_kill = failover(etcd, hosts, client, pvm, svm, whole_host=True)
        client.wait_replies(20, 60, after=time.monotonic())
        print("demo: %s comes back: its manager, started again, finds the "
              "key on %s and starts a secondary" % (pvm.name, svm.name),
              flush=True)
        t_back = time.monotonic()
        pvm.manager.start()
        pvm, svm = protected(etcd, hosts, t_back, "re-protection")
        client.wait_replies(20, 60, after=time.monotonic())

        t_kill = failover(etcd, hosts, client, pvm, svm, whole_host=False)
        pvm, svm = protected(etcd, hosts, t_kill, "re-protection by itself")
        print("demo: 'colo-manager status' on %s:\n%s" % (pvm.name,
                                                        status(pvm)),
              flush=True)
        client.wait_replies(50, 120, after=time.monotonic())
        acked = int(query_guest(bed, "disk"))
        client.stop()
        log = CounterLog(client.out)
        survivor = int(query_guest(bed, "get"))
        print("demo: %d replies in all, never backwards: %s, one connection: "
              "%s, longest gap %.0f ms; the survivor's counter %d >= %d seen"
              % (log.count, log.never_backwards(), not log.reconnects() and
                 not log.errors(), log.longest_gap()[0] * 1000, survivor,
                 log.last_value()), flush=True)
        ok = (not diff and log.never_backwards() and not log.errors()
              and survivor >= log.last_value())
        for h in hosts:
            h.manager.close()       # a QEMU exiting is a failure to them
        print("demo: managers stopped; powering the guest off: %s"
              % query_guest(bed, "poweroff"), flush=True)
        wait_until(lambda: pvm.colo_status() is None, 60, "the QEMU's exit")
        r = subprocess.run([colo_env.tool("colo-disk-verify"), pvm.disk,
                            str(acked)], capture_output=True, text=True,
                           timeout=60)
        disk_ok = r.returncode == 0
        print("demo: the survivor's disk (%s's) %s every write seen complete"
              " (up to %d): %s" % (pvm.name, "holds" if disk_ok else
                                   "DOES NOT HOLD", acked, r.stdout.strip()),
              flush=True)
        return 0 if ok and disk_ok else 1
    finally:
        if client is not None:
            client.stop(timeout=5)
        for h in hosts:
            h.manager.close()
        for net in nets:
            net.close()
        if etcd is not None:
            etcd.close()


if __name__ == "__main__":
    sys.exit(main())
