"""End-to-end: colo-manager (tools/colo-manager/) arbitrates a COLO pair
through Debian's etcd, one manager per QEMU, by the rule of
docs/devel/migration/colo.rst, "Arbitration through etcd" (model:
tests/model/colo-manager.pml).  The pair is set up by the test bed
(capability x-colo-arbitrated, a replicated disk the guest writes); the
counter client runs throughout.

  config           a configuration that breaks the lease rule is refused
                   with a clear error, and nothing runs.
  primary_killed   kill -9 the primary's QEMU: its manager gets no
                   reading and renews nothing, etcd's lease expires, the
                   secondary's manager takes the key and hands over; the
                   client carries on; the disk holds every write.
  manager_killed   kill -9 the primary's manager, its QEMU healthy: the
                   key passes the same way, and the old primary, its
                   lease lapsed and its secondary gone, fences itself:
                   never two serving.
  secondary_killed kill -9 the secondary's QEMU: the primary's manager
                   removes the successor key, then grants sole leases;
                   the primary serves on and the secondary's manager
                   never takes the key.
  partition_then_manager_killed
                   the replication link cut both ways: the primary serves
                   alone on sole leases, the successor key removed; then
                   its manager is killed: the key expires, and the
                   secondary, which stands at an older checkpoint than
                   what clients saw, is never handed over: the primary
                   fences itself and nobody serves (safe, not available).
  primary_isolated the primary's host cut off (replication link, etcd,
                   clients): alone, it cannot remove the successor; its
                   lease lapses and it fences itself.  Healed then, its
                   manager, which still holds the key, lets it go at once
                   (a fenced QEMU takes no grant), and the secondary, still
                   the successor, takes over well before the key's TTL.
  endpoints        the first etcd endpoint answers every request with a
                   server error, the second refuses connections: the
                   managers go on to the third, the real member.
  etcd_down        etcd stopped for longer than its TTL: the pair goes on
                   protected (no lease needed for covered output), nobody
                   takes over; etcd back, the primary's leases resume.

Each checks the client's counter (never backwards, the survivor behind
every value seen).  Timings go to manager-*.json in the results dir.
"""

import http.server
import json
import os
import socket
import subprocess
import threading
import time


from colo_disk import ReplicatedDisk
from colo_manager import MANAGER_BIN, RENEW_MS, TTL_S, ManagerProc
from colo_pair import (colo_status, query_guest, start_arbitrated_pair,
                       wait_until)
from counter_client import CounterLog
from test_disk import guest_stats, poweroff, wait_writing
from test_failover import assert_client_ok, survivor_disk_ok
from test_lease import assert_fenced
from test_silence import drop

PRIMARY = "colo/vm0/primary"
SUCCESSOR = "colo/vm0/successor"
# etcd checks for expired leases every 500 ms; a watching manager tries
# once a round.
TAKEOVER_BOUND_S = TTL_S + 0.5 + RENEW_MS / 1e3 + 1.0


def record(results_dir, name, result):
    with open(os.path.join(results_dir, "manager-%s.json" % name), "w") as f:
        json.dump(result, f, indent=2)
    print("\nmanager[%s]: %s" % (name, result))


def keys(etcd):
    p, s = etcd.get(PRIMARY), etcd.get(SUCCESSOR)
    return (p and p[0], s and s[0])


def managed_pair(bed, vm_factory, workdir, counter, etcd, managers,
                 endpoints=None, **manager_kw):
    """A pair in COLO, arbitrated, with a manager per side; ENDPOINTS, the
    managers' etcd endpoints, else etcd's through a gate each."""
    disk = ReplicatedDisk(workdir)
    pvm, svm, socks = start_arbitrated_pair(bed, vm_factory, workdir,
                                            delay_ms=100, disk=disk,
                                            append=disk.guest_append())
    mp = ManagerProc(workdir, "host-a", "host-b", socks[0],
                     endpoints or etcd.url, gated=not endpoints, **manager_kw)
    ms = ManagerProc(workdir, "host-b", "host-a", socks[1],
                     endpoints or etcd.url, gated=not endpoints, **manager_kw)
    managers.extend([mp.start(), ms.start()])
    wait_until(lambda: colo_status(pvm)["x-lease"]["state"] == "valid", 15,
               "the primary's first lease")
    assert keys(etcd) == ("host-a", "host-b")
    wait_until(lambda: "MS_WATCH" in ms.log(), 15, "the secondary's manager")
    client = counter(interval=0.02, timeout=30, duration=600)
    client.wait_replies(25, 60)
    wait_writing(bed, 10)
    return disk, pvm, svm, mp, ms, client


def test_config(workdir):
    """A TTL that QEMU's lease could outlast is refused before anything
    runs, with the rule in the message."""
    m = ManagerProc(workdir, "host-a", "host-b", "/nonexistent",
                    "http://127.0.0.1:9", ttl_s=2, validity_ms=4000)
    out = subprocess.run([MANAGER_BIN, "run", m.config],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 1
    assert "ttl (2 s) must exceed [lease] validity-ms (4000)" in out.stderr
    with open(m.config, "a") as f:
        f.write("[host]\nname = host-b\n")
    out = subprocess.run([MANAGER_BIN, "status", m.config],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and out.stderr.strip(), out


def test_primary_killed(bed, vm_factory, workdir, counter, etcd, managers,
                        results_dir):
    disk, pvm, svm, mp, ms, client = managed_pair(bed, vm_factory, workdir,
                                                  counter, etcd, managers)
    acked_disk_seq = int(query_guest(bed, "disk"))
    t_wall, t_kill = time.time(), time.monotonic()
    pvm.kill()
    ev = svm.wait_event("COLO_EXIT", TAKEOVER_BOUND_S + 10)
    assert ev["data"] == {"mode": "secondary", "reason": "request"}
    takeover = ev["timestamp"]["seconds"] + \
        ev["timestamp"]["microseconds"] / 1e6 - t_wall
    svm.wait_status({"running"}, 30)
    client.wait_replies(25, 60, after=time.monotonic())
    assert keys(etcd) == ("host-b", None)
    st = colo_status(svm)["x-lease"]
    assert st["state"] == "sole" and st["alone"], st
    assert "MS_TOOK" in ms.log()
    status = ms.status()
    assert status["primary"] == "host-b" and status["successor"] == ""
    assert status["manager"]["state"] == "MP_HOLD"
    assert status["manager"]["colo"]["mode"] == "none"
    text = ms.status(as_json=False)
    assert "etcd: primary host-b, successor (none)" in text, text
    assert "manager: MP_HOLD (sole leases)" in text, text
    client.stop()
    log = CounterLog(client.out)
    assert_client_ok(log, int(query_guest(bed, "get")))
    first_reply = min(t for t, _ in log.replies if t > t_kill)
    gap, _, _, _ = log.longest_gap()
    record(results_dir, "primary-killed",
           {"takeover_s": round(takeover, 3),
            "first_reply_s": round(first_reply - t_kill, 3),
            "longest_gap_s": round(gap, 3), "replies": log.count})
    assert takeover <= TAKEOVER_BOUND_S, takeover
    assert guest_stats(bed)["disk_errors"] == 0
    survivor_disk_ok(bed, svm, disk, acked_disk_seq)


def test_manager_killed(bed, vm_factory, workdir, counter, etcd, managers,
                        results_dir):
    disk, pvm, svm, mp, ms, client = managed_pair(bed, vm_factory, workdir,
                                                  counter, etcd, managers)
    acked_disk_seq = int(query_guest(bed, "disk"))
    t_wall = time.time()
    mp.kill()
    ev = svm.wait_event("COLO_EXIT", TAKEOVER_BOUND_S + 10)
    assert ev["data"] == {"mode": "secondary", "reason": "request"}
    takeover = ev["timestamp"]["seconds"] + \
        ev["timestamp"]["microseconds"] / 1e6 - t_wall
    # Its lease had lapsed before the key passed; its secondary gone, it
    # is alone without a sole lease: it fences itself.
    pvm.wait_event("X_COLO_LEASE_LAPSED", 30,
                   match=lambda e: e["data"]["fenced"])
    assert_fenced(pvm)
    svm.wait_status({"running"}, 30)
    client.wait_replies(25, 60, after=time.monotonic())
    assert keys(etcd) == ("host-b", None)
    client.stop()
    log = CounterLog(client.out)
    assert_client_ok(log, int(query_guest(bed, "get")))
    gap, _, _, _ = log.longest_gap()
    record(results_dir, "manager-killed",
           {"takeover_s": round(takeover, 3), "longest_gap_s": round(gap, 3),
            "replies": log.count})
    assert takeover <= TAKEOVER_BOUND_S, takeover
    survivor_disk_ok(bed, svm, disk, acked_disk_seq)


def test_secondary_killed(bed, vm_factory, workdir, counter, etcd, managers,
                          results_dir):
    disk, pvm, svm, mp, ms, client = managed_pair(bed, vm_factory, workdir,
                                                  counter, etcd, managers)
    t_kill = time.monotonic()
    svm.kill()
    wait_until(lambda: colo_status(pvm)["x-lease"]["state"] == "sole", 30,
               "a sole lease for the primary alone")
    sole_after = time.monotonic() - t_kill
    assert keys(etcd) == ("host-a", None)
    client.wait_replies(25, 30, after=time.monotonic())
    # The secondary's manager, its QEMU gone, never takes the key.
    time.sleep(TTL_S + 1)  # a phase: longer than the etcd lease
    assert keys(etcd) == ("host-a", None)
    assert "MS_TOOK" not in ms.log()
    assert pvm.qmp("query-status")["status"] == "running"
    client.stop()
    log = CounterLog(client.out)
    assert_client_ok(log, int(query_guest(bed, "get")))
    record(results_dir, "secondary-killed",
           {"sole_after_s": round(sole_after, 3), "replies": log.count})
    assert guest_stats(bed)["disk_errors"] == 0
    disk.drop_replica(pvm)
    final = poweroff(bed, pvm)
    ok, report = disk.verify(disk.primary_image, final)
    assert ok, report


def test_partition_then_manager_killed(bed, vm_factory, workdir, counter,
                                      etcd, managers):
    disk, pvm, svm, mp, ms, client = managed_pair(bed, vm_factory, workdir,
                                                  counter, etcd, managers)
    heal = drop(bed, svm.incoming_port, "both")
    try:
        wait_until(lambda: colo_status(pvm)["x-lease"]["state"] == "sole",
                   30, "a sole lease for the primary alone")
        assert keys(etcd) == ("host-a", None)
        client.wait_replies(25, 30, after=time.monotonic())
        mp.kill()
        pvm.wait_event("X_COLO_LEASE_LAPSED", 30,
                       match=lambda e: e["data"]["fenced"])
        assert_fenced(pvm)
        wait_until(lambda: keys(etcd) == (None, None), TTL_S + 5,
                   "the dead manager's key to expire")
        t_free = time.monotonic()
    finally:
        heal()
    # The key is free, but this host is not the successor: no take-over.
    time.sleep(max(0, t_free + 3 * RENEW_MS / 1e3 - time.monotonic()))
    assert keys(etcd) == (None, None)
    assert "MS_TOOK" not in ms.log()
    assert svm.qmp("query-status")["status"] != "running"
    client.stop()
    log = CounterLog(client.out)
    assert log.never_backwards(), log.first_violation(strict=False)
    assert log.strictly_increasing(), log.first_violation(strict=True)


def test_primary_isolated(bed, vm_factory, workdir, counter, etcd, managers,
                          results_dir):
    ttl_s = 10      # a wide window between the fence and the key's expiry
    disk, pvm, svm, mp, ms, client = managed_pair(
        bed, vm_factory, workdir, counter, etcd, managers, ttl_s=ttl_s)
    acked_disk_seq = int(query_guest(bed, "disk"))
    t_fault = time.monotonic()
    heal_link = drop(bed, svm.incoming_port, "both")
    bed.ip("link", "set", "tap-p", "down")
    mp.gate.cut()
    try:
        pvm.wait_event("X_COLO_LEASE_LAPSED", 30,
                       match=lambda e: e["data"]["fenced"])
        assert keys(etcd) == ("host-a", "host-b")
    finally:
        mp.gate.heal()
        bed.ip("link", "set", "tap-p", "up")
        heal_link()
    ev = svm.wait_event("COLO_EXIT", 30)
    took = time.monotonic() - t_fault
    assert ev["data"] == {"mode": "secondary", "reason": "request"}
    assert "letting the primary key go" in mp.log()
    assert took < ttl_s, took
    assert_fenced(pvm)
    svm.wait_status({"running"}, 30)
    client.wait_replies(25, 60, after=time.monotonic())
    assert keys(etcd) == ("host-b", None)
    client.stop()
    log = CounterLog(client.out)
    assert_client_ok(log, int(query_guest(bed, "get")))
    record(results_dir, "primary-isolated", {"takeover_s": round(took, 3),
                                             "replies": log.count})
    survivor_disk_ok(bed, svm, disk, acked_disk_seq)


class _Unavailable(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.send_response(503)
        self.end_headers()
        self.wfile.write(b'{"error": "etcdserver: no leader", "code": 14}')

    def log_message(self, *args):
        pass


def test_endpoints(bed, vm_factory, workdir, counter, etcd, managers):
    server = http.server.HTTPServer(("127.0.0.1", 0), _Unavailable)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    try:
        endpoints = "http://127.0.0.1:%d;http://127.0.0.1:%d;%s" % (
            server.server_address[1], closed, etcd.url)
        disk, pvm, svm, mp, ms, client = managed_pair(
            bed, vm_factory, workdir, counter, etcd, managers,
            endpoints=endpoints)
        pvm.kill()
        ev = svm.wait_event("COLO_EXIT", TAKEOVER_BOUND_S + 10)
        assert ev["data"] == {"mode": "secondary", "reason": "request"}
        client.wait_replies(25, 60, after=time.monotonic())
        assert keys(etcd) == ("host-b", None)
        client.stop()
        assert_client_ok(CounterLog(client.out), int(query_guest(bed, "get")))
    finally:
        server.shutdown()
        server.server_close()


def test_etcd_down(bed, vm_factory, workdir, counter, etcd, managers):
    disk, pvm, svm, mp, ms, client = managed_pair(bed, vm_factory, workdir,
                                                  counter, etcd, managers)
    etcd.stop()
    t_down = time.monotonic()
    pvm.wait_event("X_COLO_LEASE_LAPSED", 30,
                   match=lambda e: not e["data"]["fenced"])
    # Protected and serving on: every release is covered.
    n = colo_status(svm)["stats"]["checkpoints"]
    client.wait_replies(50, 30, after=time.monotonic())
    assert colo_status(svm)["stats"]["checkpoints"] >= n + 10
    time.sleep(max(0, t_down + TTL_S + 1 - time.monotonic()))  # a phase
    assert colo_status(pvm)["mode"] == "primary"
    assert colo_status(svm)["mode"] == "secondary"
    etcd.start()
    # etcd restores its leases at their full TTL: the key stays the
    # primary's and its grants resume.
    wait_until(lambda: colo_status(pvm)["x-lease"]["state"] == "valid", 30,
               "the primary's lease again")
    assert keys(etcd) == ("host-a", "host-b")
    assert "MS_TOOK" not in ms.log() and "MP_LOST" not in mp.log()
    client.wait_replies(25, 30, after=time.monotonic())
    client.stop()
    log = CounterLog(client.out)
    assert_client_ok(log, int(query_guest(bed, "get")))
