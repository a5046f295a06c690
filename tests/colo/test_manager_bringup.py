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

The QEMUs run in the bed's namespace (the [qemu] wrapper), their taps on
its bridge; each has a second monitor for the test (the manager holds its
own).  Take-over and re-protection times go to manager-bringup.json in the
results dir.
"""

import json
import os
import re
import signal
import subprocess
import time

import pytest

import colo_env
from colo_manager import ManagerProc
from colo_pair import READY_RE, BOOT_TIMEOUT, query_guest, wait_until
from counter_client import CounterLog
from test_disk import guest_stats, wait_writing
from test_failover import assert_client_ok
from test_manager import keys
from vm import GUEST_MAC, GUEST_IP, QEMUMonitorProtocol

DISK_MB = 64
PROTECT_TIMEOUT_S = 180


class Host:
    """A host of the pair: its manager, its QEMU (started by the manager)
    and a monitor of the test's own on that QEMU."""

    def __init__(self, bed, workdir, etcd, name, peer, tap, disk):
        self.name = name
        self.bed = bed
        self.dir = os.path.join(workdir, name)
        os.makedirs(self.dir, exist_ok=True)
        self.disk = disk
        self.test_sock = os.path.join(self.dir, "test-qmp.sock")
        self.serial = os.path.join(self.dir, "serial.log")
        bed.add_tap(tap)
        kernel, initrd = colo_env.guest_images()
        append = ("console=ttyS0 quiet colo.ip=%s/24 colo.port=7777 "
                  "colo.disk=/dev/vda colo.disk_interval_ms=5" % GUEST_IP)
        args = (["-name", name, "-machine", "pc", "-nodefaults",
                 "-no-user-config", "-display", "none",
                 "-accel", colo_env.ACCEL, "-m", "256", "-smp", "1",
                 "-serial", "file:%s" % self.serial,
                 "-kernel", kernel, "-initrd", initrd, "-append", append] +
                colo_env.firmware_args() +
                ["-netdev", "tap,id=hn0,ifname=%s,script=no,downscript=no"
                 % tap,
                 "-device", "virtio-net-pci,netdev=hn0,mac=%s" % GUEST_MAC,
                 "-chardev", "socket,id=test,path=%s,server=on,wait=off"
                 % self.test_sock, "-mon", "chardev=test,mode=control"])
        quote = subprocess.list2cmdline
        migrate_port, nbd_port = bed.free_port(), bed.free_port()
        while nbd_port == migrate_port:
            nbd_port = bed.free_port()
        self.manager = ManagerProc(
            workdir, name, peer, os.path.join(self.dir, "manager-qmp.sock"),
            etcd.url,
            host_extra="address = 127.0.0.1\nmigrate-port = %d\n"
                       "nbd-port = %d\n" % (migrate_port, nbd_port),
            extra="\n[qemu]\nbinary = %s\nimg = %s\nwrapper = %s\n"
                  "args = %s\ndisk = %s\nworkdir = %s\n"
                  "checkpoint-delay-ms = 100\n"
                  % (colo_env.qemu_binary(), colo_env.tool("qemu-img"),
                     quote(bed.wrap([])), quote(args), disk, self.dir))

    def qmp(self, cmd, args=None):
        mon = QEMUMonitorProtocol(self.test_sock, nickname=self.name)
        try:
            mon.connect(negotiate=True)
            mon.settimeout(30)
            r = mon.cmd_raw(cmd, args or {})
        finally:
            mon.close()
        if "error" in r:
            raise RuntimeError("%s: %s: %s" % (self.name, cmd, r["error"]))
        return r["return"]

    def colo_status(self):
        try:
            return self.qmp("query-colo-status")
        except Exception:
            return None

    def qemu_pid(self):
        return self.manager.state().get("qemu-pid", 0)

    def kill_qemu(self):
        pid = self.qemu_pid()
        assert pid, self.manager.state()
        os.kill(pid, signal.SIGKILL)
        return pid


@pytest.fixture
def hosts(bed, workdir, etcd):
    disk_a = os.path.join(workdir, "disk-a.raw")
    disk_b = os.path.join(workdir, "disk-b.raw")
    subprocess.run([colo_env.tool("qemu-img"), "create", "-q", "-f", "raw",
                    disk_a, "%dM" % DISK_MB], check=True, timeout=30)
    with open(disk_b, "wb") as f:
        f.truncate(DISK_MB << 20)   # overwritten by the copy
    pair = [Host(bed, workdir, etcd, "host-a", "host-b", "tap-p", disk_a),
            Host(bed, workdir, etcd, "host-b", "host-a", "tap-s", disk_b)]
    try:
        yield pair
    finally:
        for h in pair:
            h.manager.close()
        # The managers' QEMUs run in their own sessions: by their paths.
        subprocess.run(["pkill", "-KILL", "-f", workdir], timeout=30)


def protected(etcd, hosts):
    """(primary host, secondary host) once the successor key names the
    other host and its QEMU is a secondary in COLO, else None."""
    p, s = keys(etcd)
    if not p or not s:
        return None
    by = {h.name: h for h in hosts}
    st = by[s].colo_status()
    if st and st["mode"] == "secondary" and \
            (by[p].colo_status() or {}).get("mode") == "primary":
        return by[p], by[s]
    return None


def test_bringup_failover_reprotect(bed, workdir, etcd, hosts, counter,
                                    results_dir):
    t0 = time.monotonic()
    for h in hosts:
        h.manager.start()
    primary, secondary = wait_until(lambda: protected(etcd, hosts),
                                    PROTECT_TIMEOUT_S, "the pair protected")
    result = {"bringup_s": round(time.monotonic() - t0, 3), "rounds": []}
    assert etcd.get("colo/vm0/booted")[0] == primary.name
    assert "the VM was never booted" in primary.manager.log()

    def booted():
        with open(primary.serial) as f:
            return re.search(READY_RE, f.read())
    wait_until(booted, BOOT_TIMEOUT, "the guest's service")
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
        pair = wait_until(lambda: protected(etcd, hosts), PROTECT_TIMEOUT_S,
                          "the pair protected again")
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
