"""colo-manager runs the pair by itself: one `colo-manager run CONFIG` per
host, each config with a [qemu] group (the VM's options, this host's copy
of the disk), and nothing else typed.

  bringup      the first manager to take the key boots the VM; the other
               starts a secondary and announces it; the primary's manager
               copies the disk to it, replicates it and migrates into COLO
               (protected: the successor key names the secondary)
  failover     the primary's QEMU killed: its manager revokes its etcd
               lease (QEMU is gone for sure), the successor takes over;
               the killed host's manager starts a new secondary, which the
               survivor protects again (re-protection, disk copied back);
               twice, so that each host serves once after a failover.
               Invariants: the client's counter never goes backwards nor
               skips, and after the last failover the survivor's disk holds
               every write the guest saw complete.

Each host is a network namespace of its own (hostbed.HostNs): its manager
and the QEMU it runs (the [qemu] wrapper) inside, the replication on the
hosts' backbone, the guest's tap on the host's LAN bridge, linked to the
client's; each QEMU has a second monitor for the test (the manager holds
its own).  Take-over and re-protection times go to manager-bringup.json in the
results dir.
"""

import json
import os
import subprocess
import time

import colo_env
from colo_manager import pair_protected
from colo_pair import BOOT_TIMEOUT, query_guest, wait_until
from counter_client import CounterLog
from test_disk import guest_stats, wait_writing
from test_failover import assert_client_ok
from test_manager import keys

PROTECT_TIMEOUT_S = 180


def test_bringup_failover_reprotect(bed, workdir, etcd, managed_hosts,
                                    counter, results_dir):
    hosts = managed_hosts
    t0 = time.monotonic()
    for h in hosts:
        h.manager.start()
    primary, secondary = wait_until(lambda: pair_protected(etcd, hosts),
                                    PROTECT_TIMEOUT_S, "the pair protected")
    result = {"bringup_s": round(time.monotonic() - t0, 3), "rounds": []}
    assert etcd.get("colo/vm0/booted")[0] == primary.name
    assert "the VM was never booted" in primary.manager.log()
    primary.wait_guest(BOOT_TIMEOUT)
    client = counter(interval=0.02, timeout=30, duration=900)
    client.wait_replies(25, 60)
    wait_writing(bed, 10)

    for _ in range(2):
        client.wait_replies(25, 60, after=time.monotonic())
        t_kill = time.monotonic()
        primary.kill_qemu()
        wait_until(lambda: keys(etcd)[0] == secondary.name, 30,
                   "the key passed to %s" % secondary.name)
        client.wait_replies(10, 60, after=t_kill)
        replies = CounterLog(client.out).replies_after(t_kill)
        takeover = replies[0][0] - t_kill
        pair = wait_until(lambda: pair_protected(etcd, hosts),
                          PROTECT_TIMEOUT_S, "the pair protected again")
        assert pair == (secondary, primary)
        result["rounds"].append({
            "killed": primary.name,
            "takeover_s": round(takeover, 3),
            "reprotected_s": round(time.monotonic() - t_kill, 3)})
        assert "QEMU exited: revoking etcd lease" in primary.manager.log()
        primary, secondary = pair

    client.wait_replies(25, 60, after=time.monotonic())
    acked_disk_seq = int(query_guest(bed, "disk"))
    client.stop()
    log = CounterLog(client.out)
    assert_client_ok(log, int(query_guest(bed, "get")))
    assert guest_stats(bed)["disk_errors"] == 0
    result["longest_gap_s"] = round(log.longest_gap()[0], 3)
    with open(os.path.join(results_dir, "manager-bringup.json"), "w") as f:
        json.dump(result, f, indent=2)
    print("\nmanager-bringup: %s" % result)

    # The survivor's disk holds every write the guest saw complete: the
    # managers stopped first (a QEMU exiting under one is a failure).
    for h in hosts:
        h.manager.close()
    final = int(query_guest(bed, "poweroff").split("disk_seq=")[1])
    wait_until(lambda: primary.colo_status() is None, 60,
               "the survivor's QEMU to exit")
    r = subprocess.run([colo_env.tool("colo-disk-verify"), primary.disk,
                        str(acked_disk_seq)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and final >= acked_disk_seq, r.stdout + r.stderr
