"""End-to-end: failover with output commit; the client never notices.

The counter client talks to the guest through one TCP connection the whole
time.  After every failover:
  - the connection survived (no error, no reconnect),
  - the counter never went backwards and no value was skipped,
  - the survivor's counter is at least the last value the client saw: no
    reply it got is unknown to the survivor.

  lost_heartbeat  the primary vanishes without its connections closing (the
                  stream proxy freezes, the primary is killed); the
                  secondary is told with x-colo-lost-heartbeat
  broken_stream   the primary is killed: the secondary fails over by itself;
                  the documented failover commands still succeed after
  secondary_dies  the secondary is killed: the primary carries on alone
  primary_quits   the primary is shut down (quit, SIGTERM): it releases no
                  output the secondary's checkpoint does not cover
  ack_lost        the connection resets between a checkpoint's commit on
                  the secondary and its ack: the SVM still loads it
  primary_leaves  migrate_cancel or x-colo-lost-heartbeat on the primary of
                  a live pair (cancel also with the secondary frozen): the
                  primary serves on, the secondary is told and stays down
  kill_at_random  the primary is killed at random instants, half of them
                  inside a checkpoint: the stream proxy lets a random part
                  of one through and then goes silent, as a dying host
                  would (COLO_FAULT_RUNS runs; make check-slow: 20).  The
                  guest's disk writer runs on a replicated disk too: the
                  survivor's disk holds every write seen complete before
                  the kill, intact, with no hole or torn block
  reprotect       after a failover the survivor is protected by a fresh
                  secondary, and survives a second failover; [disk]: with
                  a replicated disk, the survivor's (a quorum over its
                  replication node) copied to the fresh secondary and
                  replicated again, after the second failover the third
                  side's disk holds every write
  wrong_state     failover commands where they make no sense

Takeover time (kill to the first reply from the survivor) and the client's
longest gap go to failover-*.json in the results dir.
"""

import json
import os
import random
import signal
import time

import pytest

from colo_disk import ReplicatedDisk
from colo_pair import (X_COLO, checkpoints, colo_status, query_guest,
                       start_pair, wait_until)
from counter_client import CounterLog
from test_disk import guest_stats

FAULT_RUNS = int(os.environ.get("COLO_FAULT_RUNS", "3"))


def assert_client_ok(log, survivor_value):
    assert log.errors() == [], "client errors: %s" % log.errors()
    assert log.reconnects() == []
    assert log.never_backwards(), log.first_violation(strict=False)
    assert log.strictly_increasing(), log.first_violation(strict=True)
    assert log.skips() == [], log.skips()[:10]
    assert survivor_value >= log.last_value(), \
        "the client saw %d, the survivor has %d" % (log.last_value(),
                                                    survivor_value)


def kill(vm):
    vm.proc.send_signal(signal.SIGKILL)
    vm.proc.wait(timeout=30)


def takeover(client, t_kill, results_dir, name, extra=None):
    """Let the client run on the survivor, stop it, check it, record."""
    client.wait_replies(50, 120, after=t_kill)
    client.stop()
    log = CounterLog(client.out)
    first_t, _ = log.replies_after(t_kill)[0]
    gap, ta, tb, _ = log.longest_gap()
    result = {"takeover_s": round(first_t - t_kill, 3),
              "longest_gap_s": round(gap, 3), "replies": log.count}
    result.update(extra or {})
    with open(os.path.join(results_dir, "failover-%s.json" % name), "w") as f:
        json.dump(result, f, indent=2)
    print("\nfailover[%s]: %s" % (name, result))
    return log


def survivor_disk_ok(bed, svm, disk, acked_disk_seq):
    """The secondary that took over powers its guest off: its disk holds
    every write the guest saw complete, up to ACKED_DISK_SEQ at least."""
    svm.qmp("nbd-server-stop")
    final = int(query_guest(bed, "poweroff").split("disk_seq=")[1])
    svm.proc.wait(timeout=60)
    ok, report = disk.verify(disk.secondary_image, acked_disk_seq)
    assert ok and final >= acked_disk_seq, report


def busy_pair_with_disk(bed, vm_factory, workdir):
    """A pair through the stream proxy, with a replicated disk the guest
    writes, and a busy guest, so that checkpoints carry megabytes."""
    disk = ReplicatedDisk(workdir)
    return disk, start_pair(bed, vm_factory, workdir, delay_ms=100,
                            append="colo.dirty_mbps=20 colo.dirty_mb=64 "
                            + disk.guest_append(), via_proxy=True, disk=disk)


def test_lost_heartbeat(bed, vm_factory, workdir, counter, results_dir):
    pvm, svm, proxy = start_pair(bed, vm_factory, workdir, delay_ms=100,
                                 via_proxy=True)
    try:
        client = counter(interval=0.02, timeout=30, duration=600)
        client.wait_replies(50, 60)
        assert proxy.command("freeze") == "ok"
        t_kill = time.monotonic()
        kill(pvm)
        # The secondary's loop is blocked on a silent connection...
        time.sleep(0.5)
        assert colo_status(svm)["mode"] == "secondary"
        # ...until it is told.
        svm.qmp("x-colo-lost-heartbeat")
        ev = svm.wait_event("COLO_EXIT", 30)
        assert ev["data"] == {"mode": "secondary", "reason": "request"}
        svm.wait_status({"running"}, 30)
        log = takeover(client, t_kill, results_dir, "lost-heartbeat")
        assert_client_ok(log, int(query_guest(bed, "get")))
        # Said again: success, nothing changes.
        svm.qmp("x-colo-lost-heartbeat")
        assert colo_status(svm)["reason"] == "request"
        assert svm.qmp("query-status")["status"] == "running"
    finally:
        proxy.close()


def test_broken_stream(bed, vm_factory, workdir, counter, results_dir):
    disk = ReplicatedDisk(workdir)
    pvm, svm, _ = start_pair(bed, vm_factory, workdir, delay_ms=100,
                             append=disk.guest_append(), disk=disk)
    client = counter(interval=0.02, timeout=30, duration=600)
    client.wait_replies(50, 60)
    t_kill = time.monotonic()
    kill(pvm)
    ev = svm.wait_event("COLO_EXIT", 30)
    assert ev["data"] == {"mode": "secondary", "reason": "error"}
    svm.wait_status({"running"}, 30)
    # QEMU's COLO-FT.txt, "Secondary Failover", as a management tool sends
    # it once it notices (the yank of the migration first): the secondary
    # has already taken over by itself, and every command still succeeds.
    svm.qmp("yank", {"instances": [{"type": "migration"}]})
    svm.qmp("nbd-server-stop")
    svm.qmp("x-colo-lost-heartbeat")
    assert colo_status(svm)["reason"] == "error"
    log = takeover(client, t_kill, results_dir, "broken-stream")
    assert_client_ok(log, int(query_guest(bed, "get")))


def test_ack_lost_after_commit(bed, vm_factory, workdir):
    """The secondary's disks move to a checkpoint before it acknowledges
    it; if the acknowledgement cannot be sent (the connection is reset
    just then), the SVM still loads that checkpoint before it takes over:
    memory and disks stand at the same one."""
    disk, (pvm, svm, proxy) = busy_pair_with_disk(bed, vm_factory, workdir)
    try:
        pvm.qmp("migrate-set-parameters", {"x-checkpoint-delay": 3600 * 1000,
                                           "x-colo-output-delay": 0})
        # The proxy holds the whole checkpoint back, then resets: the
        # secondary's long wait would rightly make it doubt that the end
        # is the primary's death (test_silence.py).  This test is about
        # the commit, not the heartbeat.
        for vm in (pvm, svm):
            vm.qmp("migrate-set-parameters",
                   {"x-colo-silence-timeout": 20000})
        answer = "late"
        # The reset must beat the secondary's ack; a big checkpoint (its
        # checksum alone takes milliseconds) gives it the time.  Bounded.
        for _ in range(10):
            wait_until(lambda: checkpoints(pvm) == checkpoints(svm), 30,
                       "no checkpoint in flight")
            time.sleep(0.5)
            conn = proxy.arm("reset")
            pvm.qmp("x-colo-checkpoint")
            answer = proxy.answer(conn)
            if answer != "late":
                break
        assert answer.startswith("reset "), answer
        seq = int(answer.split()[1])
        ev = svm.wait_event("COLO_EXIT", 30)
        assert ev["data"] == {"mode": "secondary", "reason": "error"}
        svm.wait_status({"running"}, 30)
        assert checkpoints(svm) == seq
    finally:
        proxy.close()


@pytest.mark.parametrize("how", ["quit", "sigterm"])
def test_primary_quits(how, bed, vm_factory, workdir, counter, results_dir):
    """A primary that is shut down (quit, SIGTERM: host maintenance) lets
    no output out that the checkpoint the secondary takes over from does
    not cover: the client's counter never repeats or goes back."""
    pvm, svm, _ = start_pair(bed, vm_factory, workdir, delay_ms=200)
    client = counter(interval=0.01, timeout=30, duration=600)
    client.wait_replies(50, 60)
    t_kill = time.monotonic()
    if how == "quit":
        pvm.qmp("quit")
    else:
        pvm.proc.send_signal(signal.SIGTERM)
    pvm.proc.wait(timeout=30)
    ev = svm.wait_event("COLO_EXIT", 30)
    assert ev["data"]["mode"] == "secondary"
    svm.wait_status({"running"}, 30)
    log = takeover(client, t_kill, results_dir, "primary-" + how)
    assert_client_ok(log, int(query_guest(bed, "get")))


def assert_stayed_down(svm):
    """The secondary left COLO without taking over, and says so."""
    ev = svm.wait_event("COLO_EXIT", 30)
    assert ev["data"] == {"mode": "secondary", "reason": "error"}
    assert svm.qmp("query-status")["status"] == "colo"
    with pytest.raises(Exception, match="without taking over"):
        svm.qmp("x-colo-lost-heartbeat")


@pytest.mark.parametrize("command", ["migrate_cancel", "x-colo-lost-heartbeat"])
def test_primary_leaves(command, bed, vm_factory, workdir, counter):
    """migrate_cancel, or x-colo-lost-heartbeat, on the primary of a live
    pair: the primary serves on alone and tells the secondary, which stays
    down (two copies never serve)."""
    pvm, svm, _ = start_pair(bed, vm_factory, workdir, delay_ms=100)
    client = counter(interval=0.02, timeout=30, duration=600)
    client.wait_replies(25, 60)
    pvm.qmp(command)
    assert_stayed_down(svm)
    ev = pvm.wait_event("COLO_EXIT", 30)
    assert ev["data"] == {"mode": "primary", "reason": "request"}
    # The VM did not move: never "completed".
    pvm.wait_migration({"cancelled"}, 30)
    assert pvm.qmp("query-status")["status"] == "running"
    client.wait_replies(25, 60, after=time.monotonic())
    client.stop()
    assert_client_ok(CounterLog(client.out), int(query_guest(bed, "get")))


def test_cancel_with_silent_secondary(bed, vm_factory, workdir, counter):
    """migrate_cancel while the secondary is frozen (SIGSTOP): the primary
    leaves COLO and serves on at once; the secondary, thawed, finds the
    primary's ERROR and stays down."""
    pvm, svm, _ = start_pair(bed, vm_factory, workdir, delay_ms=100)
    client = counter(interval=0.02, timeout=30, duration=600)
    client.wait_replies(25, 60)
    svm.proc.send_signal(signal.SIGSTOP)
    try:
        # Let a checkpoint or two start against the frozen secondary (the
        # loop then blocks on its ack); the assertions hold wherever the
        # loop is when the cancel comes, so this is no condition to wait
        # for, only a phase to be in.
        time.sleep(0.5)
        t_cancel = time.monotonic()
        pvm.qmp("migrate_cancel")
        pvm.wait_event("COLO_EXIT", 30)
        pvm.wait_migration({"cancelled"}, 30)
        client.wait_replies(10, 30, after=time.monotonic())
        resumed_s = time.monotonic() - t_cancel
    finally:
        svm.proc.send_signal(signal.SIGCONT)
    assert_stayed_down(svm)
    assert pvm.qmp("query-status")["status"] == "running"
    client.stop()
    assert_client_ok(CounterLog(client.out), int(query_guest(bed, "get")))
    assert resumed_s < 10, resumed_s


def test_secondary_dies(bed, vm_factory, workdir, counter, results_dir):
    pvm, svm, _ = start_pair(bed, vm_factory, workdir, delay_ms=100)
    client = counter(interval=0.02, timeout=30, duration=600)
    client.wait_replies(50, 60)
    t_kill = time.monotonic()
    kill(svm)
    ev = pvm.wait_event("COLO_EXIT", 30)
    assert ev["data"]["mode"] == "primary"
    assert pvm.qmp("query-status")["status"] == "running"
    # COLO-FT.txt's "Primary Failover", with the yank of the migration
    # first: every command succeeds on a primary that already serves alone.
    pvm.qmp("yank", {"instances": [{"type": "migration"}]})
    pvm.qmp("x-colo-lost-heartbeat")
    log = takeover(client, t_kill, results_dir, "secondary-dies")
    assert_client_ok(log, int(query_guest(bed, "get")))


@pytest.mark.parametrize("run", range(3))
def test_kill_output_driven(run, bed, vm_factory, workdir, counter,
                            results_dir):
    """Output-driven checkpoints (x-colo-output-delay): the primary killed
    at a random instant while every reply starts a checkpoint.  The
    client's counter never goes backwards, the survivor stands behind
    every value it saw, no acknowledged disk write is lost."""
    rng = random.Random(1000 + run)
    disk = ReplicatedDisk(workdir)
    pvm, svm, _ = start_pair(bed, vm_factory, workdir, delay_ms=1000,
                             append=disk.guest_append(), disk=disk)
    pvm.qmp("migrate-set-parameters", {"x-colo-output-delay": 1})
    client = counter(interval=0.02, timeout=30, duration=600)
    client.wait_replies(50, 60)
    time.sleep(rng.uniform(0.0, 1.0))
    acked_disk_seq = int(query_guest(bed, "disk"))
    t_kill = time.monotonic()
    kill(pvm)
    svm.wait_event("COLO_EXIT", 30)
    svm.wait_status({"running"}, 30)
    log = takeover(client, t_kill, results_dir, "output-driven-%d" % run)
    assert_client_ok(log, int(query_guest(bed, "get")))
    survivor_disk_ok(bed, svm, disk, acked_disk_seq)


@pytest.mark.parametrize("run", range(FAULT_RUNS))
def test_kill_at_random(run, bed, vm_factory, workdir, counter, results_dir):
    rng = random.Random(run)
    mid_checkpoint = run % 2 == 1
    disk, (pvm, svm, proxy) = busy_pair_with_disk(bed, vm_factory, workdir)
    try:
        client = counter(interval=0.02, timeout=30, duration=600)
        client.wait_replies(20, 60)
        time.sleep(rng.uniform(0.0, 1.5))
        # Released by output commit: on the secondary's disk from here.
        acked_disk_seq = int(query_guest(bed, "disk"))
        assert acked_disk_seq > 0
        if mid_checkpoint:
            # The next checkpoint gets this far, then the host goes silent.
            pvm.qmp("migrate-set-parameters",
                    {"x-checkpoint-delay": 3600 * 1000,
                     "x-colo-output-delay": 0})
            n = checkpoints(svm)
            wait_until(lambda: checkpoints(pvm) >= n, 30, "the last ack")
            # Somewhere inside it: after 0.5 s at 20 MB/s it carries more
            # than 1 MB of pages, then the device state.
            time.sleep(0.5)
            assert proxy.command("freeze %d" % rng.randrange(64, 1 << 20)) \
                == "ok"
            pvm.qmp("x-colo-checkpoint")
            time.sleep(0.3)
        # The kill's instant: the primary stops dead here (SIGSTOP, then
        # SIGKILL), so that what the secondary holds is read after it;
        # hundreds of checkpoints a second would go on in between.
        t_kill = time.monotonic()
        pvm.proc.send_signal(signal.SIGSTOP)
        n = checkpoints(svm)
        kill(pvm)
        if mid_checkpoint:
            svm.qmp("x-colo-lost-heartbeat")
        svm.wait_event("COLO_EXIT", 30)
        svm.wait_status({"running"}, 30)
        log = takeover(client, t_kill, results_dir, "random-%d" % run,
                       {"mid_checkpoint": mid_checkpoint,
                        "checkpoints_before_kill": n,
                        "checkpoints_loaded": checkpoints(svm)})
        if mid_checkpoint:
            # The partial checkpoint was never applied.
            assert checkpoints(svm) == n
        else:
            # Those in flight at the kill (at most two: sent, not yet
            # loaded) are loaded if they arrived whole.
            assert n <= checkpoints(svm) <= n + 2
        assert_client_ok(log, int(query_guest(bed, "get")))
        survivor_disk_ok(bed, svm, disk, acked_disk_seq)
    finally:
        proxy.close()


@pytest.mark.parametrize("with_disk", [False, True], ids=["plain", "disk"])
def test_reprotect(bed, vm_factory, workdir, counter, results_dir,
                   with_disk):
    """WITH_DISK: the survivor's disk (a quorum over its replication
    node) is copied to the fresh secondary and replicated again."""
    disk = ReplicatedDisk(workdir, reprotectable=True) if with_disk else None
    append = disk.guest_append() if disk else ""
    pvm, svm, _ = start_pair(bed, vm_factory, workdir, delay_ms=100,
                             disk=disk, append=append)
    client = counter(interval=0.02, timeout=30, duration=600)
    client.wait_replies(30, 60)
    kill(pvm)
    svm.wait_event("COLO_EXIT", 30)
    svm.wait_status({"running"}, 30)
    client.wait_replies(30, 60, after=time.monotonic())
    # The management tool's yank succeeds, and does not stand in the way
    # of the next migration's.
    svm.qmp("yank", {"instances": [{"type": "migration"}]})

    # A fresh secondary for the survivor (its x-colo is still set).
    disk3 = ReplicatedDisk(workdir, subdir="disk3", reprotectable=True) \
        if disk else None
    port = bed.free_port()
    third = vm_factory("third", tap="tap-p", append=append,
                       incoming="tcp:127.0.0.1:%d" % port,
                       extra_args=disk3.secondary_args() if disk3 else ())
    if disk3:
        disk3.protect(svm, third)
    third.qmp("migrate-set-capabilities", X_COLO)
    svm.qmp("migrate-set-parameters", {"x-checkpoint-delay": 100})
    svm.qmp("migrate", uri="tcp:127.0.0.1:%d" % port)
    wait_until(lambda: colo_status(svm)["mode"] == "primary", 300,
               "the survivor to enter COLO as primary")
    wait_until(lambda: checkpoints(third) >= 3, 60, "3 checkpoints")
    client.wait_replies(30, 60, after=time.monotonic())
    acked_disk_seq = int(query_guest(bed, "disk")) if disk else None

    t_kill = time.monotonic()
    kill(svm)
    third.wait_event("COLO_EXIT", 30)
    third.wait_status({"running"}, 30)
    log = takeover(client, t_kill, results_dir,
                   "reprotect-disk" if disk else "reprotect")
    assert_client_ok(log, int(query_guest(bed, "get")))
    if disk:
        assert guest_stats(bed)["disk_errors"] == 0
        survivor_disk_ok(bed, third, disk3, acked_disk_seq)


def test_wrong_state(bed, vm_factory, workdir):
    pvm = vm_factory("primary", tap="tap-p")
    for cmd in ("x-colo-lost-heartbeat", "x-colo-checkpoint"):
        with pytest.raises(Exception):
            pvm.qmp(cmd)
    assert colo_status(pvm)["mode"] == "none"
