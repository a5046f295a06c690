"""COLO block replication, end to end: the guest's disk writer runs
throughout (sequence-numbered, checksummed blocks, tests/guest/blockfmt.h)
and the disks are checked on the host.

  rollback          after failover the secondary's disk is the primary's
                    at the last checkpoint, byte for byte, although the
                    primary wrote on after it
  acknowledged      kill the primary while a client reads the writer's
                    progress: every write the client saw complete is on
                    the survivor's disk, intact, with no hole or torn block
  secondary_dies    the primary drops the replica and carries on, with no
                    disk error in the guest
  overlays_empty    under heavy writing, each checkpoint leaves the
                    secondary's overlays empty (and they fill between)
  other_writers     during COLO, no one but the guest may write its disk
  shared_writable   a guest disk that lets others write it is refused
"""

import re
import time

import os

import pytest

from colo_disk import DEVICE, NODE, REPLICA, ReplicatedDisk
from colo_pair import (BOOT_TIMEOUT, READY_RE, X_COLO, checkpoint_stopped,
                       checkpoints, colo_status, query_guest, start_pair,
                       wait_checkpoints, wait_until)


def guest_stats(bed):
    line = query_guest(bed, "stats")
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line)}


def disk_seq(bed):
    v = query_guest(bed, "disk")
    return int(v) if v.isdigit() else 0


def read(path):
    with open(path, "rb") as f:
        return f.read()


def image_still(path, seconds=0.3):
    """The image did not change over SECONDS (the writer writes every few
    ms while it can)."""
    a = read(path)
    time.sleep(seconds)
    return read(path) == a


def wait_writing(bed, above, timeout=60):
    return wait_until(lambda: disk_seq(bed) > above and disk_seq(bed), timeout,
                      "the guest's disk writer to pass %d" % above, poll=0.1)


def poweroff(bed, vm, timeout=60):
    """Power the guest off; returns its writer's last seq (final)."""
    m = re.search(r"disk_seq=(\d+)", query_guest(bed, "poweroff"))
    assert m, "no answer to poweroff"
    vm.proc.wait(timeout=timeout)
    return int(m.group(1))


def test_rollback(bed, vm_factory, workdir):
    disk = ReplicatedDisk(workdir)
    pvm, svm, _ = start_pair(bed, vm_factory, workdir, delay_ms=100,
                             append=disk.guest_append(),
                             secondary_args=["-S"], disk=disk)
    wait_writing(bed, 20)
    # Both sides at one checkpoint, the primary stopped: its disk now is
    # what the secondary must hold after a failover.
    checkpoint_stopped(pvm, svm)
    at_checkpoint = read(disk.primary_image)
    pvm.qmp("cont")
    wait_until(lambda: read(disk.primary_image) != at_checkpoint, 30,
               "the primary to write after the checkpoint", poll=0.05)
    pvm.kill()
    svm.wait_event("COLO_EXIT", 30)
    assert colo_status(svm)["mode"] == "none"
    svm.qmp("nbd-server-stop")
    assert read(disk.secondary_image) == at_checkpoint, \
        "the secondary's disk is not the primary's at the checkpoint"
    # The survivor runs on its own disk from there.
    seq = disk_seq_after_cont(bed, svm)
    final = poweroff(bed, svm)
    assert final >= seq
    ok, report = disk.verify(disk.secondary_image, final)
    assert ok, report


def disk_seq_after_cont(bed, svm):
    svm.qmp("cont")
    return wait_writing(bed, 0)


def test_acknowledged(bed, vm_factory, workdir):
    disk = ReplicatedDisk(workdir)
    pvm, svm, _ = start_pair(bed, vm_factory, workdir, delay_ms=100,
                             append=disk.guest_append(), disk=disk)
    # Each answer comes out once the checkpoint covering it is safe.
    acked = [disk_seq(bed) for _ in range(15)]
    assert acked == sorted(acked) and acked[-1] > acked[0], acked
    pvm.kill()
    svm.wait_event("COLO_EXIT", 30)
    svm.wait_status({"running"}, 30)
    svm.qmp("nbd-server-stop")
    assert wait_writing(bed, acked[-1]) > acked[-1]
    final = poweroff(bed, svm)
    ok, report = disk.verify(disk.secondary_image, acked[-1])
    assert ok, report
    assert report["max_seq"] >= acked[-1] and final >= acked[-1]


def test_secondary_dies(bed, vm_factory, workdir):
    disk = ReplicatedDisk(workdir)
    pvm, svm, _ = start_pair(bed, vm_factory, workdir, delay_ms=100,
                             append=disk.guest_append(), disk=disk)
    before = wait_writing(bed, 20)
    svm.kill()
    ev = pvm.wait_event("COLO_EXIT", 30)
    assert ev["data"]["mode"] == "primary", ev
    # Alone: the replica is of no use any more; the guest never noticed.
    disk.drop_replica(pvm)
    assert REPLICA not in disk.node_names(pvm)
    after = wait_writing(bed, before + 50)
    stats = guest_stats(bed)
    assert stats["disk_errors"] == 0, stats
    final = poweroff(bed, pvm)
    assert final >= after
    ok, report = disk.verify(disk.primary_image, final)
    assert ok, report


def test_overlays_empty(bed, vm_factory, workdir):
    disk = ReplicatedDisk(workdir)
    pvm, svm, _ = start_pair(bed, vm_factory, workdir, delay_ms=100,
                             append=disk.guest_append(interval_ms=0),
                             disk=disk)
    wait_writing(bed, 20)
    pvm.qmp("migrate-set-parameters", {"x-checkpoint-delay": 3600 * 1000,
                                       "x-colo-output-delay": 0})
    for _ in range(3):
        # Between checkpoints the primary's writes push what they
        # overwrite into the hidden disk ...
        wait_until(lambda: disk.overlay_bytes(svm)["colo-hidden"] > 0, 30,
                   "the hidden disk to take pre-images", poll=0.1)
        pvm.qmp("stop")
        n = checkpoints(svm)
        pvm.qmp("x-colo-checkpoint")
        wait_checkpoints(svm, n)
        # ... and a checkpoint empties both overlays.
        assert disk.overlay_bytes(svm) == {"colo-hidden": 0,
                                           "colo-active": 0}
        pvm.qmp("cont")


def test_stop_during_checkpoints(bed, vm_factory, workdir):
    """'stop' on the primary drains its disks; landing while writes are
    held for a checkpoint it must wait for that checkpoint, not hang."""
    disk = ReplicatedDisk(workdir)
    pvm, svm, _ = start_pair(bed, vm_factory, workdir, delay_ms=10,
                             append=disk.guest_append(interval_ms=0),
                             disk=disk)
    wait_writing(bed, 20)
    n = checkpoints(svm)
    for _ in range(40):
        pvm.qmp("stop")
        pvm.qmp("cont")
        wait_checkpoints(svm, n)
        n = checkpoints(svm)
    assert colo_status(pvm)["mode"] == "primary"
    assert colo_status(svm)["mode"] == "secondary"
    assert guest_stats(bed)["disk_errors"] == 0


def test_replica_removed_before_failover(bed, vm_factory, workdir):
    """A management tool that removes the replica before telling the
    primary the secondary is gone (the order of QEMU's COLO-FT guide):
    the secondary is silent, writes are held for its acknowledgement, and
    removing the child drains them.  The drain ends (the hold is bounded
    then), the secondary is dropped and the guest sees no disk error.
    The heartbeat would drop the silent secondary by itself first
    (test_silence.py): a long silence timeout leaves the tool's sequence
    to act."""
    disk = ReplicatedDisk(workdir)
    pvm, svm, proxy = start_pair(
        bed, vm_factory, workdir, delay_ms=100, append=disk.guest_append(),
        disk=disk, via_proxy=True,
        primary_args=["-trace", "colo_repl_*", "-trace", "colo_checkpoint_*"],
        before_migrate=lambda p, s: p.qmp(
            "migrate-set-parameters", {"x-colo-silence-timeout": 600000}))
    try:
        before = wait_writing(bed, 20)
        # No checkpoint in flight (the primary stopped, periodic ones off,
        # both sides counted the last one), then the network goes silent.
        checkpoint_stopped(pvm, svm)
        wait_until(lambda: checkpoints(pvm) == checkpoints(svm), 30,
                   "the primary to count the last checkpoint")
        assert proxy.command("freeze") == "ok"
        # This checkpoint is never acknowledged: the guest's next write is
        # held on the replica, and the writer (one write at a time) stops,
        # on the primary's own image too.
        pvm.qmp("x-colo-checkpoint")
        pvm.qmp("cont")
        try:
            wait_until(lambda: image_still(disk.primary_image), 30,
                       "the guest's writes to be held")
        except AssertionError:
            raise AssertionError("writes not held; primary's trace:\n"
                                 + pvm.log_tail(4000))
        svm.kill()
        disk.drop_replica(pvm)
        assert REPLICA not in disk.node_names(pvm)
        with open(pvm.stderr_path) as f:
            assert "colo_repl_drained_hold_expired" in f.read()
        pvm.qmp("x-colo-lost-heartbeat")
        pvm.wait_event("COLO_EXIT", 30)
        after = wait_writing(bed, before + 50)
        assert guest_stats(bed)["disk_errors"] == 0
        final = poweroff(bed, pvm)
        assert final >= after
        ok, report = disk.verify(disk.primary_image, final)
        assert ok, report
    finally:
        proxy.close()


def test_other_writers(bed, vm_factory, workdir):
    """Review M6: a writer other than the guest (an NBD export, a block
    job) would be answered at once, its writes covered by no checkpoint,
    and could write between a checkpoint's stop and the hold.  During
    COLO the block layer refuses it: the guest's device shares no write
    permission on its disk.  COLO goes on."""
    disk = ReplicatedDisk(workdir)
    pvm, svm, _ = start_pair(bed, vm_factory, workdir, delay_ms=100,
                             append=disk.guest_append(), disk=disk)
    pvm.qmp("nbd-server-start",
            addr={"type": "unix",
                  "data": {"path": os.path.join(workdir, "pvm-nbd.sock")}})
    with pytest.raises(Exception, match="permission"):
        pvm.qmp("block-export-add", {"type": "nbd", "id": "e1",
                                     "node-name": NODE, "writable": True})
    pvm.qmp("blockdev-add", {"node-name": "src", "driver": "null-co",
                             "size": disk.size})
    with pytest.raises(Exception, match="permission"):
        pvm.qmp("blockdev-mirror", {"job-id": "j1", "device": "src",
                                    "target": NODE, "sync": "full"})
    n = checkpoints(svm)
    wait_checkpoints(svm, n + 5)
    assert colo_status(pvm)["mode"] == "primary"
    assert guest_stats(bed)["disk_errors"] == 0


def test_shared_writable(bed, vm_factory, workdir):
    """A guest disk with share-rw=on lets others write it at any time:
    the primary refuses to start COLO over it, with an error that names
    the device; the secondary stays down, its VM never ran, and the
    primary serves on."""
    disk = ReplicatedDisk(workdir, primary_device=[
        DEVICE[0], DEVICE[1] + ",share-rw=on"])
    pvm = vm_factory("primary", tap="tap-p", append=disk.guest_append(),
                     extra_args=disk.primary_args())
    pvm.wait_serial(READY_RE, BOOT_TIMEOUT)
    port = bed.free_port()
    svm = vm_factory("secondary", tap="tap-s", append=disk.guest_append(),
                     incoming="tcp:127.0.0.1:%d" % port,
                     extra_args=disk.secondary_args())
    disk.protect(pvm, svm)
    for vm in (pvm, svm):
        vm.qmp("migrate-set-capabilities", X_COLO)
    pvm.qmp("migrate", uri="tcp:127.0.0.1:%d" % port)
    ev = pvm.wait_event("COLO_EXIT", 120)
    assert ev["data"] == {"mode": "primary", "reason": "error"}, ev
    assert "share-rw" in pvm.qmp("query-migrate").get("error-desc", "")
    ev = svm.wait_event("COLO_EXIT", 30)
    assert ev["data"] == {"mode": "secondary", "reason": "error"}, ev
    assert svm.qmp("query-status")["status"] != "running"
    assert pvm.qmp("query-status")["status"] == "running"
    before = wait_writing(bed, 0)
    assert wait_writing(bed, before + 20) > before
