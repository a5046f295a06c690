"""End-to-end: a COLO pair with an arbiter (capability x-colo-arbitrated),
the test playing the arbiter (arbiter.py) by the lease rule of
docs/devel/migration/colo.rst, "An arbiter".  The counter client runs
throughout and the guest writes a replicated disk.

  primary_frozen      SIGSTOP the primary: the secondary reports it silent
                      and waits; once the primary's lease has run out by
                      the arbiter's count, the arbiter hands over and the
                      secondary serves.  SIGCONT: the primary finds its
                      lease lapsed and fences itself (VM stopped, nothing
                      released, "cont" and grants refused).
  secondary_frozen    SIGSTOP the secondary: the primary serves alone,
                      holding what no checkpoint covers until the arbiter
                      has recorded it alone and made its lease sole.
                      SIGCONT: the secondary never serves.
  partition           the replication link dropped both ways or one way
                      (the arbiter still reaches both): the primary serves
                      alone on a sole lease, the secondary is never handed
                      over, before or after the heal.
  arbiter_down        the arbiter stops: the pair goes on protected (every
                      release is covered) past the lease's lapse; then the
                      secondary dies: the primary, alone without a lease,
                      fences itself.

Each asserts that the client's counter never goes backwards, that the
survivor stands behind every value the client saw, that at most one QEMU
runs the guest, and that no write the guest saw complete is lost.
Timings go to lease-*.json in the results dir.
"""

import json
import os
import signal
import socket
import time

import pytest

from arbiter import Arbiter, qmp_args
from colo_disk import ReplicatedDisk
from colo_pair import (colo_status, query_guest, start_arbitrated_pair,
                       wait_until)
from counter_client import CounterLog
from test_disk import guest_stats, poweroff, wait_writing
from test_failover import assert_client_ok, survivor_disk_ok
from test_silence import drop, event_time

# Well above the silence timeout: a primary waiting on a silent secondary
# may not answer its monitor (nor a renewal) for up to that long.
VALIDITY_MS = 4000
HOLD_S = 8


def arbitrated_pair(bed, vm_factory, workdir, counter):
    disk = ReplicatedDisk(workdir)
    pvm, svm, socks = start_arbitrated_pair(bed, vm_factory, workdir,
                                            delay_ms=100, disk=disk,
                                            append=disk.guest_append())
    arb = Arbiter(socks[0], socks[1], VALIDITY_MS).start()
    wait_until(lambda: colo_status(pvm)["x-lease"]["state"] == "valid", 10,
               "the primary's first lease")
    client = counter(interval=0.02, timeout=30, duration=600)
    client.wait_replies(25, 60)
    wait_writing(bed, 10)
    return disk, pvm, svm, arb, client


def record(results_dir, name, result):
    with open(os.path.join(results_dir, "lease-%s.json" % name), "w") as f:
        json.dump(result, f, indent=2)
    print("\nlease[%s]: %s" % (name, result))


def primary_served_on(bed, disk, pvm, log, timeout, detect, results_dir,
                      name):
    """The secondary was the silent one: record the figures, check them
    against their bounds, and check that the primary's disk holds every
    write the guest saw complete."""
    gap, _, _, _ = log.longest_gap()
    record(results_dir, name, {"detect_s": round(detect, 3),
                               "longest_gap_s": round(gap, 3),
                               "replies": log.count})
    assert detect <= 2.0, detect
    # The silence timeout and its grace, then one arbiter round.
    assert gap <= timeout + 1 + VALIDITY_MS / 4e3 + 0.5, gap
    assert guest_stats(bed)["disk_errors"] == 0
    disk.drop_replica(pvm)
    final = poweroff(bed, pvm)
    ok, report = disk.verify(disk.primary_image, final)
    assert ok, report


def assert_fenced(vm):
    """VM stopped for good, output dropped, nothing more granted."""
    st = colo_status(vm)
    assert st["x-lease"]["state"] == "fenced", st
    assert vm.qmp("query-status")["status"] == "colo"
    with pytest.raises(Exception, match="stopped by COLO"):
        vm.qmp("cont")
    with pytest.raises(Exception, match="fenced"):
        vm.qmp("x-colo-lease-grant", {"validity-ms": VALIDITY_MS,
                                      "clock-ms": st["x-lease"]["clock-ms"],
                                      "sole": True})
    assert "lease: fenced" in vm.hmp("info colo")


def test_primary_frozen(bed, vm_factory, workdir, counter, results_dir):
    disk, pvm, svm, arb, client = arbitrated_pair(bed, vm_factory, workdir,
                                                  counter)
    try:
        acked_disk_seq = int(query_guest(bed, "disk"))
        t_wall, t_fault = time.time(), time.monotonic()
        pvm.proc.send_signal(signal.SIGSTOP)
        try:
            ev = svm.wait_event("X_COLO_PEER_SILENT", 10)
            detect = event_time(ev) - t_wall
            # Standalone it would wait for an operator; here the arbiter
            # hands over once the primary's lease has run out.
            ev = svm.wait_event("COLO_EXIT", 20)
            assert ev["data"] == {"mode": "secondary", "reason": "request"}
            assert arb.handover_t is not None
            assert arb.handover_t >= arb.expiry["primary"]
            handover = arb.handover_t - t_fault
            svm.wait_status({"running"}, 30)
            client.wait_replies(25, 60, after=time.monotonic())
            st = colo_status(svm)["x-lease"]
            assert st["state"] == "sole" and st["alone"], st
            # A phase: the primary stays frozen as long as the fault lasts.
            time.sleep(max(0, t_fault + HOLD_S - time.monotonic()))
        finally:
            pvm.proc.send_signal(signal.SIGCONT)
        # Thawed, it finds its lease lapsed (its timer may tell that first,
        # while it still counts itself in COLO: fenced false), then the
        # secondary gone: alone without a lease, it fences itself.
        pvm.wait_event("X_COLO_LEASE_LAPSED", 30,
                       match=lambda e: e["data"]["fenced"])
        assert_fenced(pvm)
        client.wait_replies(25, 60, after=time.monotonic())
        client.stop()
    finally:
        arb.stop()
    log = CounterLog(client.out)
    assert_client_ok(log, int(query_guest(bed, "get")))
    gap, _, _, _ = log.longest_gap()
    record(results_dir, "primary-frozen",
           {"detect_s": round(detect, 3), "handover_s": round(handover, 3),
            "longest_gap_s": round(gap, 3), "replies": log.count})
    assert detect <= 2.0, detect
    # The lease and its margin from the last reading (the fault may come
    # right after one), then the arbiter's round: its period and the QMP
    # timeout of the frozen primary's query.
    assert handover <= VALIDITY_MS / 1e3 * 1.01 + 0.05 + 1.0 + 0.3 + 0.5, \
        handover
    assert guest_stats(bed)["disk_errors"] == 0
    survivor_disk_ok(bed, svm, disk, acked_disk_seq)


def test_secondary_frozen(bed, vm_factory, workdir, counter, results_dir):
    disk, pvm, svm, arb, client = arbitrated_pair(bed, vm_factory, workdir,
                                                  counter)
    try:
        timeout = pvm.qmp("query-migrate-parameters")[
            "x-colo-silence-timeout"] / 1e3
        t_wall, t_fault = time.time(), time.monotonic()
        svm.proc.send_signal(signal.SIGSTOP)
        try:
            ev = pvm.wait_event("X_COLO_PEER_SILENT", timeout + 5)
            detect = event_time(ev) - t_wall
            ev = pvm.wait_event("COLO_EXIT", 10)
            t_exit = t_fault + event_time(ev) - t_wall
            # Alone: released once the arbiter has made the lease sole.
            try:
                wait_until(lambda: colo_status(pvm)["x-lease"]["state"] ==
                           "sole", 10, "a sole lease")
            except AssertionError:
                raise AssertionError("no sole lease: %s; arbiter: %s" % (
                    colo_status(pvm), [(round(t - t_fault, 3), w)
                                       for t, w in arb.log]))
            assert arb.primary_alone and arb.handover_t is None
            client.wait_replies(25, 30, after=time.monotonic())
            time.sleep(max(0, t_fault + HOLD_S - time.monotonic()))
        finally:
            svm.proc.send_signal(signal.SIGCONT)
        # The arbiter never hands over to a secondary the primary left.
        time.sleep(2)  # a phase: renewals go on after the thaw
        assert arb.handover_t is None
        assert svm.qmp("query-status")["status"] != "running"
        assert pvm.qmp("query-status")["status"] == "running"
        client.stop()
    finally:
        arb.stop()
    log = CounterLog(client.out)
    assert_client_ok(log, int(query_guest(bed, "get")))
    # Alone, the primary held its uncovered output until the sole grant.
    # (What an acknowledgement covered may still leave just after the exit.)
    held = [round(t - t_exit, 3) for t, _ in log.replies
            if t_exit + 0.05 < t < arb.sole_grant_t]
    assert held == [], (held, arb.sole_grant_t - t_exit)
    primary_served_on(bed, disk, pvm, log, timeout, detect, results_dir,
                      "secondary-frozen")


@pytest.mark.parametrize("direction", ["both", "p2s", "s2p"])
def test_partition(direction, bed, vm_factory, workdir, counter,
                   results_dir):
    disk, pvm, svm, arb, client = arbitrated_pair(bed, vm_factory, workdir,
                                                  counter)
    try:
        timeout = pvm.qmp("query-migrate-parameters")[
            "x-colo-silence-timeout"] / 1e3
        t_wall, t_fault = time.time(), time.monotonic()
        heal = drop(bed, svm.incoming_port, direction)
        try:
            ev = pvm.wait_event("COLO_EXIT", timeout + 5)
            detect = event_time(ev) - t_wall
            wait_until(lambda: colo_status(pvm)["x-lease"]["state"] ==
                       "sole", 10, "a sole lease")
            client.wait_replies(25, 30, after=time.monotonic())
            time.sleep(max(0, t_fault + HOLD_S - time.monotonic()))
        finally:
            heal()
        time.sleep(2 * timeout)  # a phase: two timeouts after the heal
        assert arb.primary_alone and arb.handover_t is None
        assert svm.qmp("query-status")["status"] != "running"
        assert pvm.qmp("query-status")["status"] == "running"
        client.wait_replies(25, 30, after=time.monotonic())
        client.stop()
    finally:
        arb.stop()
    log = CounterLog(client.out)
    assert_client_ok(log, int(query_guest(bed, "get")))
    primary_served_on(bed, disk, pvm, log, timeout, detect, results_dir,
                      "partition-" + direction)


def test_arbiter_down(bed, vm_factory, workdir, counter, results_dir):
    disk, pvm, svm, arb, client = arbitrated_pair(bed, vm_factory, workdir,
                                                  counter)
    try:
        arb.down = True
        ev = pvm.wait_event("X_COLO_LEASE_EXPIRING", 10)
        assert 0 < ev["data"]["remaining-ms"] <= VALIDITY_MS / 4
        ev = pvm.wait_event("X_COLO_LEASE_LAPSED", 10)
        assert ev["data"] == {"fenced": False}
        # Protected and serving on, every release covered.
        n = colo_status(svm)["stats"]["checkpoints"]
        client.wait_replies(50, 30, after=time.monotonic())
        assert colo_status(svm)["stats"]["checkpoints"] >= n + 10
        assert colo_status(pvm)["x-lease"]["state"] == "lapsed"
        assert colo_status(pvm)["mode"] == "primary"
        # The secondary dies: alone and without a lease, the primary stops.
        t_kill = time.monotonic()
        svm.proc.send_signal(signal.SIGKILL)
        svm.proc.wait(timeout=30)
        ev = pvm.wait_event("X_COLO_LEASE_LAPSED", 10)
        assert ev["data"] == {"fenced": True}
        fenced_after = time.monotonic() - t_kill
        assert_fenced(pvm)
        # Nothing more reaches the client; what it saw was covered.
        n_before = CounterLog(client.out).count
        time.sleep(1)  # a phase: a fenced primary stays silent
        assert CounterLog(client.out).count == n_before
        client.stop()
    finally:
        arb.stop()
    log = CounterLog(client.out)
    assert log.never_backwards(), log.first_violation(strict=False)
    assert log.strictly_increasing(), log.first_violation(strict=True)
    record(results_dir, "arbiter-down", {"fenced_after_kill_s":
                                         round(fenced_after, 3),
                                         "replies": log.count})


class OobMonitor:
    """A QMP monitor with out-of-band execution enabled: requests go out
    without waiting, answers are matched by id."""

    def __init__(self, path, timeout):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.file = self.sock.makefile("rb")
        greeting = self._line()
        assert "oob" in greeting["QMP"]["capabilities"], greeting
        self.sock.sendall(b'{"execute": "qmp_capabilities", '
                          b'"arguments": {"enable": ["oob"]}}\n')
        assert "return" in self._line()
        self.next_id = 0
        self.answers = {}

    def _line(self):
        line = self.file.readline()
        if not line:
            raise ConnectionError("QMP closed")
        return json.loads(line)

    def send(self, name, args=None, oob=False):
        self.next_id += 1
        req = {"exec-oob" if oob else "execute": name, "id": self.next_id,
               "arguments": args or {}}
        self.sock.sendall(json.dumps(req).encode() + b"\n")
        return self.next_id

    def answer(self, req_id):
        """The answer to request REQ_ID; raises socket.timeout when none
        comes within the timeout."""
        while req_id not in self.answers:
            r = self._line()
            if "id" in r:
                self.answers[r["id"]] = r
        return self.answers.pop(req_id)

    def close(self):
        self.file.close()
        self.sock.close()


def test_renewed_out_of_band(vm_factory, workdir):
    """The lease is read and renewed out-of-band while the main loop
    waits: an in-band blockdev-add of an NBD node whose server accepts
    and never speaks blocks the main loop (and in-band commands) until
    the server goes; x-query-colo-lease and x-colo-lease-grant answer
    meanwhile and the lease runs from the grant."""
    mon_path = os.path.join(workdir, "oob.sock")
    vm = vm_factory("oob", machine="none", extra_args=qmp_args(mon_path))
    vm.qmp("migrate-set-capabilities", {"capabilities": [
        {"capability": "x-colo", "state": True},
        {"capability": "x-colo-arbitrated", "state": True}]})
    mon = OobMonitor(mon_path, timeout=10)
    mute = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        mute.bind(os.path.join(workdir, "mute-nbd.sock"))
        mute.listen(1)
        blocked = mon.send("blockdev-add", {
            "driver": "nbd", "node-name": "mute",
            "server": {"type": "unix",
                       "path": os.path.join(workdir, "mute-nbd.sock")}})
        in_band = mon.send("query-status")
        reading = mon.answer(mon.send("x-query-colo-lease", oob=True))
        lease = reading["return"]
        assert lease["state"] == "none" and lease["mode"] == "none", lease
        grant = mon.answer(mon.send("x-colo-lease-grant", {
            "validity-ms": 2000, "clock-ms": lease["clock-ms"]}, oob=True))
        assert grant.get("return") == {}, grant
        lease = mon.answer(mon.send("x-query-colo-lease",
                                    oob=True))["return"]
        assert lease["state"] == "valid", lease
        assert 0 < lease["remaining-ms"] <= 2000
        # All of it while the main loop waited: no in-band answer yet.
        assert blocked not in mon.answers and in_band not in mon.answers
        mute.close()
        assert "error" in mon.answer(blocked)
        assert mon.answer(in_band)["return"]["running"] is True
        # In-band, the same lease.
        st = colo_status(vm)["x-lease"]
        assert st["state"] == "valid" and st["mode"] == "none", st
    finally:
        mute.close()
        mon.close()
