"""Jepsen-style: a pair run by colo-manager alone (one `colo-manager run`
per host with a [qemu] group), each host a network namespace of its own
(test_manager_bringup.py's bed), one nemesis per round drawn at random,
at a random instant, held for a random time, then healed:

  kill -9 or SIGSTOP of either QEMU and of either manager (a killed
  manager is restarted at the heal: it adopts its QEMU), the replication
  (migration and NBD) cut both ways or one way by iptables in the
  secondary host's namespace, a host cut off etcd, a host isolated (its
  LAN and backbone links down, cut off etcd: clients cannot reach it
  either), etcd stopped.

Invariants, every round, on everything the client saw and on what is
left: the client's counter never goes backwards nor skips, and the
survivor stands behind every value the client saw; who answered, byte by
byte, from a capture on each host's link (wire_capture.py): no two
emissions of a stream position differ, and in stream order the old
primary answered, then (after a take-over only) the survivor; after the heal
exactly one QEMU runs the guest and may release its output, still so a
moment later; a side that took over did so only through etcd's key; the
pair is protected again, with no command, within REPROTECT_S of the
heal; no write the guest saw complete is lost (the survivor's disk is
checked after its guest powers off).

COLO_NEMESIS_ROUNDS rounds (default 10; make check-slow: 100), drawn
from COLO_NEMESIS_SEED (default 13): a failing round is replayed by its
seed and index.  Each round's nemesis, timings and outcome go to
manager-nemesis-N.json in the results dir, and the take-over and
re-protection times to the summary printed at the end of the module.
"""

import datetime
import json
import os
import random
import signal
import subprocess
import time

import pytest

import colo_env
from colo_manager import TTL_S, pair_protected
from colo_pair import BOOT_TIMEOUT, query_guest, wait_until
from counter_client import CounterLog
from test_disk import guest_stats, wait_writing
from test_failover import assert_client_ok
from test_manager import keys
from wire_capture import WireCapture

ROUNDS = int(os.environ.get("COLO_NEMESIS_ROUNDS", "10"))
SEED = int(os.environ.get("COLO_NEMESIS_SEED", "13"))
HOLD_S = (1.0, 8.0)         # how long a fault lasts
INSTANT_S = (0.0, 2.0)      # when it comes, after the pair is serving
SETTLE_S = TTL_S + 20       # from the heal until one side serves
REPROTECT_S = 120           # from the heal until protected again


def _signal_qemu(h, sig):
    pid = h.qemu_pid()
    os.kill(pid, sig)
    return pid


def _pause_qemu(h):
    pid = _signal_qemu(h, signal.SIGSTOP)
    return lambda: os.kill(pid, signal.SIGCONT)


def _pause(proc):
    proc.send_signal(signal.SIGSTOP)
    return lambda: proc.send_signal(signal.SIGCONT)


def _cut(c, direction):
    """The replication, at the secondary host: packets to its migration
    and NBD ports (p2s), from them (s2p), or both."""
    s = c["s"]
    return s.host.drop_ports((s.migrate_port, s.nbd_port),
                             {"p2s": "in", "s2p": "out",
                              "both": "both"}[direction])


def _cut_gate(h):
    h.manager.gate.cut()
    return h.manager.gate.heal


def _isolate(h):
    h.host.links_down()
    h.manager.gate.cut()

    def heal():
        h.manager.gate.heal()
        h.host.links_up()
    return heal


def _kill_manager(h):
    h.manager.kill()
    return h.manager.start      # a restarted manager adopts its QEMU


NEMESES = {
    "kill-primary-qemu": lambda c: (_signal_qemu(c["p"], signal.SIGKILL),
                                    lambda: None)[1],
    "stop-primary-qemu": lambda c: _pause_qemu(c["p"]),
    "kill-primary-manager": lambda c: _kill_manager(c["p"]),
    "stop-primary-manager": lambda c: _pause(c["p"].manager.proc),
    "kill-secondary-qemu": lambda c: (_signal_qemu(c["s"], signal.SIGKILL),
                                      lambda: None)[1],
    "stop-secondary-qemu": lambda c: _pause_qemu(c["s"]),
    "kill-secondary-manager": lambda c: _kill_manager(c["s"]),
    "stop-secondary-manager": lambda c: _pause(c["s"].manager.proc),
    "cut-both": lambda c: _cut(c, "both"),
    "cut-p2s": lambda c: _cut(c, "p2s"),
    "cut-s2p": lambda c: _cut(c, "s2p"),
    "cut-primary-manager-etcd": lambda c: _cut_gate(c["p"]),
    "cut-secondary-manager-etcd": lambda c: _cut_gate(c["s"]),
    "isolate-primary-host": lambda c: _isolate(c["p"]),
    "isolate-secondary-host": lambda c: _isolate(c["s"]),
    "stop-etcd": lambda c: (c["etcd"].stop(), c["etcd"].start)[1],
}

_summary = []


def _serving(h):
    """The QEMU the host's manager runs now runs the guest and its output
    may leave: a primary in COLO under a valid lease, or a side alone
    under a sole one.  A lapsed lease does not count: such a side is
    fenced at its next packet, or at the next exchange with a secondary
    that is gone.  (A paused process counts as what it was: it is
    continued before this is asked.)  None: its QEMU did not answer."""
    try:
        status = h.qmp("query-status")["status"]
    except Exception:
        return None             # no QEMU, or its monitor did not answer
    st = h.colo_status()
    if st is None:
        return None             # its main loop busy (a checkpoint, say)
    # A primary in COLO is in run state "colo" while a checkpoint stops it
    # (the monitor may answer while the vCPUs are being paused).
    if status != "running" and not (status == "colo" and
                                    st["mode"] == "primary"):
        return False
    lease = st["x-lease"]
    if lease["state"] == "sole":
        return True
    return (lease["state"] == "valid" and not lease["alone"] and
            st["mode"] == "primary")


def _took_over_at(h):
    """Wall time of the host's manager's take-over, or None."""
    for line in h.manager.log().splitlines():
        if "MS_WATCH -> MS_TOOK" in line:
            ts = line.split()[0].rstrip("Z")
            return datetime.datetime.fromisoformat(ts).replace(
                tzinfo=datetime.timezone.utc).timestamp()
    return None


@pytest.fixture(scope="module", autouse=True)
def summary():
    yield
    if not _summary:
        return
    by = {}
    for r in _summary:
        if r.get("takeover_s") is not None:
            by.setdefault(r["nemesis"], []).append(
                (r["takeover_s"], r.get("first_survivor_segment_s")))
    lines = ["nemesis rounds: %d" % len(_summary)]
    for name, pairs in sorted(by.items()):
        ts = sorted(t for t, _ in pairs)
        fs = sorted(f for _, f in pairs if f is not None)
        lines.append("  %s: take-over median %.2f s, worst %.2f s (%d);"
                     " first reply from the survivor median %s, worst %s"
                     % (name, ts[len(ts) // 2], ts[-1], len(ts),
                        "%.2f s" % fs[len(fs) // 2] if fs else "-",
                        "%.2f s" % fs[-1] if fs else "-"))
    rp = sorted(r["reprotected_after_heal_s"] for r in _summary)
    lines.append("  protected again after the heal: median %.2f s, worst "
                 "%.2f s" % (rp[len(rp) // 2], rp[-1]))
    print("\n" + "\n".join(lines))


@pytest.mark.parametrize("index", range(ROUNDS))
def test_nemesis(index, bed, workdir, counter, etcd, managed_hosts,
                 results_dir):
    hosts = managed_hosts
    rng = random.Random("%d-%d" % (SEED, index))
    name = rng.choice(sorted(NEMESES))
    instant = rng.uniform(*INSTANT_S)
    hold = rng.uniform(*HOLD_S)
    for h in hosts:
        h.manager.start()
    p, s = wait_until(lambda: pair_protected(etcd, hosts), REPROTECT_S,
                      "the pair protected")
    p.wait_guest(BOOT_TIMEOUT)      # it booted the guest
    client = counter(interval=0.02, timeout=30, duration=600)
    client.wait_replies(25, 120)
    wait_writing(bed, 10)
    ctx = {"bed": bed, "p": p, "s": s, "etcd": etcd}
    acked_disk_seq = int(query_guest(bed, "disk"))
    wire = WireCapture({h.name: h.host for h in hosts}).start()
    try:
        result = _round(index, name, instant, hold, hosts, p, s, bed, etcd,
                        client, ctx, wire)
    finally:
        wire.stop()
    survivor = p if result["survivor"] == p.name else s
    _check_wire(wire, result, p, s)
    result["acked_disk_seq"] = acked_disk_seq
    _finish_round(index, result, hosts, survivor, bed, results_dir)


def _check_wire(wire, result, p, s):
    """Who answered, byte by byte, from the capture on each host's link:
    no byte of any stream sent differently by two emissions, and the first
    emitters in stream order are the old primary, then (after a take-over
    only) the survivor: never back, never both at once."""
    v = wire.verdict()
    order = [p.name, s.name] if result["takeover_s"] is not None \
        else [result["survivor"]]
    for cport, st in v["streams"].items():
        assert not st["conflicts"], (cport, st["conflicts"][:5])
        hosts = [h for h, _ in st["runs"]]
        assert hosts == [h for h in order if h in hosts], (cport, st["runs"])
    result["segments_by_host"] = v["segments"]
    if result["takeover_s"] is not None:
        first = wire.first_from(s.name, result["t_fault"])
        result["first_survivor_segment_s"] = first and round(
            first - result["t_fault"], 3)


def _round(index, name, instant, hold, hosts, p, s, bed, etcd, client, ctx,
           wire):
    """The fault, the heal and the checks up to the pair protected
    again; the round's figures."""
    time.sleep(instant)  # a phase: a random instant
    t_wall = time.time()
    heal = NEMESES[name](ctx)
    try:
        time.sleep(hold)  # a phase: the fault lasts
    finally:
        heal()
    t_heal = time.monotonic()

    def settled():
        serving = [h for h in hosts if _serving(h)]
        return len(serving) == 1 and serving
    try:
        survivor = wait_until(settled, SETTLE_S,
                              "exactly one side serving")[0]
    except AssertionError:
        raise AssertionError("round %d (%s, hold %.1f s): %s" % (
            index, name, hold, [(h.name, h.colo_status()) for h in hosts]))
    client.wait_replies(25, 60, after=time.monotonic())
    took_over = survivor is s
    takeover = None
    if took_over:
        # Handed over by its manager, holding etcd's key.
        t_took = _took_over_at(s)
        assert t_took is not None, s.manager.log()
        takeover = t_took - t_wall
        assert keys(etcd)[0] == s.name
    else:
        assert _took_over_at(s) is None, s.manager.log()
    pair = wait_until(lambda: pair_protected(etcd, hosts), REPROTECT_S,
                      "the pair protected again")
    reprotected = time.monotonic() - t_heal
    assert pair[0] is survivor
    # Still exactly one, a moment later (a phase: two renewal rounds),
    # once every QEMU answered its monitor.
    time.sleep(1)

    def sample():
        seen = [(h, _serving(h)) for h in hosts]
        return [h for h, v in seen if v is None and h.qemu_pid()] == [] \
            and ([h for h, v in seen if v],)
    assert wait_until(sample, 10, "both QEMUs answering")[0] == [survivor]
    client.wait_replies(25, 60, after=time.monotonic())
    acked_end = int(query_guest(bed, "disk"))
    client.stop()
    log = CounterLog(client.out)
    assert_client_ok(log, int(query_guest(bed, "get")))
    gap, _, _, _ = log.longest_gap()
    return {"round": index, "seed": SEED, "nemesis": name,
            "instant_s": round(instant, 3), "hold_s": round(hold, 3),
            "survivor": survivor.name, "t_fault": t_wall,
            "takeover_s": takeover and round(takeover, 3),
            "reprotected_after_heal_s": round(reprotected, 3),
            "longest_gap_s": round(gap, 3), "replies": log.count,
            "acked_end": acked_end}


def _finish_round(index, result, hosts, survivor, bed, results_dir):
    """Record the round; check the survivor's disk."""
    acked_disk_seq = result.pop("acked_disk_seq")
    acked_end = result.pop("acked_end")
    _summary.append(result)
    with open(os.path.join(results_dir, "manager-nemesis-%d.json" % index),
              "w") as f:
        json.dump(result, f, indent=2)
    print("\nnemesis[%d]: %s" % (index, result))
    assert guest_stats(bed)["disk_errors"] == 0
    # The survivor's disk holds every write the guest saw complete: the
    # managers stopped first (a QEMU exiting under one is a failure).
    for h in hosts:
        h.manager.close()
    final = int(query_guest(bed, "poweroff").split("disk_seq=")[1])
    wait_until(lambda: survivor.colo_status() is None, 60,
               "the survivor's QEMU to exit")
    r = subprocess.run([colo_env.tool("colo-disk-verify"), survivor.disk,
                        str(acked_end)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and final >= acked_end >= acked_disk_seq, \
        r.stdout + r.stderr
