"""Jepsen-style: a pair arbitrated by colo-manager through etcd
(test_manager.py's bed), one nemesis per round drawn at random, at a
random instant, held for a random time, then healed:

  kill -9 or SIGSTOP of either QEMU and of either manager (a killed
  manager is restarted at the heal: it rejoins), the replication link cut
  both ways or one way, a manager cut off etcd, a host isolated (its
  manager cut off etcd, the replication link cut, its tap down: clients
  cannot reach it either), etcd stopped.

Invariants, every round, on everything the client saw and on what is
left: the client's counter never goes backwards nor skips, and the
survivor stands behind every value the client saw; after the heal
exactly one QEMU runs the guest (the other is dead, fenced, or a
secondary that was never handed over), and a side that took over did so
only through etcd's key; no write the guest saw complete is lost (the
survivor's disk is checked after its guest powers off).

COLO_NEMESIS_ROUNDS rounds (default 10; make check-slow: 100), drawn
from COLO_NEMESIS_SEED (default 13): a failing round is replayed by its
seed and index.  Each round's nemesis, timings and outcome go to
manager-nemesis-N.json in the results dir, and the take-over times to
the summary printed at the end of the module.
"""

import json
import os
import random
import signal
import time

import pytest

from colo_manager import TTL_S
from colo_pair import colo_status, query_guest, wait_until
from counter_client import CounterLog
from test_disk import guest_stats, poweroff
from test_failover import assert_client_ok, survivor_disk_ok
from test_manager import keys, managed_pair
from test_silence import drop

ROUNDS = int(os.environ.get("COLO_NEMESIS_ROUNDS", "10"))
SEED = int(os.environ.get("COLO_NEMESIS_SEED", "13"))
HOLD_S = (1.0, 8.0)         # how long a fault lasts
INSTANT_S = (0.0, 2.0)      # when it comes, after the pair is serving
SETTLE_S = TTL_S + 20       # from the heal until one side serves


def _pause(proc):
    proc.send_signal(signal.SIGSTOP)
    return lambda: proc.send_signal(signal.SIGCONT)


def _kill_vm(vm):
    vm.kill()
    return lambda: None


def _cut_gate(m):
    m.gate.cut()
    return m.gate.heal


def _isolate(c, m, tap):
    heal_link = drop(c["bed"], c["svm"].incoming_port, "both")
    c["bed"].ip("link", "set", tap, "down")
    m.gate.cut()

    def heal():
        m.gate.heal()
        c["bed"].ip("link", "set", tap, "up")
        heal_link()
    return heal


def _kill_manager(m):
    m.kill()
    return m.start          # a restarted manager rejoins


NEMESES = {
    "kill-primary-qemu": lambda c: _kill_vm(c["pvm"]),
    "stop-primary-qemu": lambda c: _pause(c["pvm"].proc),
    "kill-primary-manager": lambda c: _kill_manager(c["mp"]),
    "stop-primary-manager": lambda c: _pause(c["mp"].proc),
    "kill-secondary-qemu": lambda c: _kill_vm(c["svm"]),
    "stop-secondary-qemu": lambda c: _pause(c["svm"].proc),
    "kill-secondary-manager": lambda c: _kill_manager(c["ms"]),
    "stop-secondary-manager": lambda c: _pause(c["ms"].proc),
    "cut-both": lambda c: drop(c["bed"], c["svm"].incoming_port, "both"),
    "cut-p2s": lambda c: drop(c["bed"], c["svm"].incoming_port, "p2s"),
    "cut-s2p": lambda c: drop(c["bed"], c["svm"].incoming_port, "s2p"),
    "cut-primary-manager-etcd": lambda c: _cut_gate(c["mp"]),
    "cut-secondary-manager-etcd": lambda c: _cut_gate(c["ms"]),
    "isolate-primary-host": lambda c: _isolate(c, c["mp"],
                                               "tap-p"),
    "isolate-secondary-host": lambda c: _isolate(c, c["ms"],
                                                 "tap-s"),
    "stop-etcd": lambda c: (c["etcd"].stop(), c["etcd"].start)[1],
}

_summary = []


def _alive(vm):
    return vm.proc.poll() is None


def _serving(vm):
    """VM runs its guest and its output may leave: a primary in COLO
    under a valid lease, or a side alone under a sole one.  A lapsed
    lease does not count: such a side is fenced at its next packet, or
    at the next exchange with a secondary that is gone.  (A paused
    process counts as what it was: it is continued before this is
    asked.)"""
    if not _alive(vm):
        return False
    try:
        if vm.qmp("query-status")["status"] != "running":
            return False
        st = colo_status(vm)
    except Exception:
        return False
    lease = st["x-lease"]
    if lease["state"] == "sole":
        return True
    return (lease["state"] == "valid" and not lease["alone"] and
            st["mode"] == "primary")


@pytest.fixture(scope="module", autouse=True)
def summary():
    yield
    if not _summary:
        return
    by = {}
    for r in _summary:
        if r.get("takeover_s") is not None:
            by.setdefault(r["nemesis"], []).append(r["takeover_s"])
    lines = ["nemesis rounds: %d" % len(_summary)]
    for name, ts in sorted(by.items()):
        ts.sort()
        lines.append("  %s: take-over median %.2f s, worst %.2f s (%d)"
                     % (name, ts[len(ts) // 2], ts[-1], len(ts)))
    print("\n" + "\n".join(lines))


@pytest.mark.parametrize("index", range(ROUNDS))
def test_nemesis(index, bed, vm_factory, workdir, counter, etcd, managers,
                 results_dir):
    rng = random.Random("%d-%d" % (SEED, index))
    name = rng.choice(sorted(NEMESES))
    instant = rng.uniform(*INSTANT_S)
    hold = rng.uniform(*HOLD_S)
    disk, pvm, svm, mp, ms, client = managed_pair(bed, vm_factory, workdir,
                                                  counter, etcd, managers)
    ctx = {"bed": bed, "pvm": pvm, "svm": svm, "mp": mp, "ms": ms,
           "etcd": etcd}
    acked_disk_seq = int(query_guest(bed, "disk"))
    time.sleep(instant)  # a phase: a random instant
    t_wall = time.time()
    heal = NEMESES[name](ctx)
    try:
        time.sleep(hold)  # a phase: the fault lasts
    finally:
        heal()
    t_heal = time.monotonic()

    def settled():
        serving = [vm for vm in (pvm, svm) if _serving(vm)]
        return len(serving) == 1 and serving
    try:
        survivor = wait_until(settled, SETTLE_S,
                              "exactly one side serving")[0]
    except AssertionError:
        raise AssertionError("round %d (%s, hold %.1f s): %s" % (
            index, name, hold, [(vm.name, _alive(vm) and
                                 colo_status(vm)) for vm in (pvm, svm)]))
    client.wait_replies(25, 60, after=time.monotonic())
    took_over = survivor is svm
    takeover = None
    if took_over:
        # Handed over by its manager, holding etcd's key.
        ev = svm.wait_event("COLO_EXIT", 1)
        assert ev["data"] == {"mode": "secondary", "reason": "request"}
        takeover = (ev["timestamp"]["seconds"] +
                    ev["timestamp"]["microseconds"] / 1e6 - t_wall)
        assert "MS_TOOK" in ms.log()
        assert keys(etcd)[0] == "host-b"
    else:
        assert "MS_TOOK" not in ms.log()
    # Still exactly one, a moment later (a phase: one renewal round).
    time.sleep(1)
    assert [vm for vm in (pvm, svm) if _serving(vm)] == [survivor]
    client.stop()
    log = CounterLog(client.out)
    assert_client_ok(log, int(query_guest(bed, "get")))
    gap, _, _, _ = log.longest_gap()
    result = {"round": index, "seed": SEED, "nemesis": name,
              "instant_s": round(instant, 3), "hold_s": round(hold, 3),
              "survivor": survivor.name,
              "takeover_s": takeover and round(takeover, 3),
              "settled_after_heal_s": round(time.monotonic() - t_heal, 3),
              "longest_gap_s": round(gap, 3), "replies": log.count}
    _summary.append(result)
    with open(os.path.join(results_dir, "manager-nemesis-%d.json" % index),
              "w") as f:
        json.dump(result, f, indent=2)
    print("\nnemesis[%d]: %s" % (index, result))
    assert guest_stats(bed)["disk_errors"] == 0
    if took_over:
        survivor_disk_ok(bed, svm, disk, acked_disk_seq)
    else:
        if colo_status(pvm)["mode"] == "none":
            disk.drop_replica(pvm)
        final = poweroff(bed, pvm)
        ok, report = disk.verify(disk.primary_image, final)
        assert ok and final >= acked_disk_seq, report
