"""End-to-end: the COLO frame with the test guest.

  soak         the pair stays in COLO for 60 s with the memory dirtier and the
               counter client running; the checkpoint rate follows
               x-checkpoint-delay, also when it changes at run time; after a
               checkpoint taken with the primary stopped, both memories are
               equal.
  broken       the replication stream is cut, corrupted or fed garbage in
               the middle of a checkpoint (by stream_proxy.py): the secondary
               reports the error and its VM is exactly the previous
               checkpoint's; the primary carries on alone.  A cut stream
               (the primary looks dead) makes the secondary take over; a
               corrupt one (the primary is alive) leaves it down.
  hostile      a well-framed checkpoint whose device state is a migration
               command, or whose page change is against another page or
               does not decode: refused, the secondary stays down.
  filter       the output-commit filter cannot be deleted by hand; a deleted
               netdev takes it along safely.
  stop_cont    cont and stop are refused on a secondary in COLO; a primary
               stopped at any instant stays stopped across checkpoints.
  paused       a primary paused before migrate is protected paused; leaving
               COLO does not resume it.
  shutdown     a guest that powers off in COLO takes both QEMUs down cleanly.
  precopy      with hot memory, most dirty pages are copied while the VM
               runs, those written again over their copy; the pages written
               since the last pass are copied at the stop, and the memories
               are equal.
  input        50 redis clients, output-driven: the checkpoints' stops
               lose none of the clients' packets (no TCP timeout); the
               guest is busy, so its checkpoints are spaced.

Results (checkpoint statistics) go to colo-*.json in the results dir.
"""

import json
import os
import re
import sys
import time

import pytest

from colo_pair import (checkpoint_stopped, checkpoints, colo_status,
                       differing_pages, query_guest, save_memory, start_pair,
                       wait_checkpoints, wait_until)
from counter_client import CounterLog
from vm import GUEST_IP, GUEST_MAC

HERE = os.path.dirname(os.path.abspath(__file__))

SOAK_WINDOW_S = 30      # per delay: 2 x 30 s in COLO


def assert_client_ok(log):
    assert log.errors() == [], "client errors: %s" % log.errors()
    assert log.reconnects() == []
    assert log.never_backwards(), log.first_violation(strict=False)
    assert log.strictly_increasing(), log.first_violation(strict=True)
    assert log.skips() == [], log.skips()[:10]


def count_over(pvm, seconds):
    """Checkpoints the primary completes in SECONDS (a bounded wait)."""
    n0 = checkpoints(pvm)
    t0 = time.monotonic()
    time.sleep(seconds)
    return (checkpoints(pvm) - n0) / (time.monotonic() - t0)


def test_soak(bed, vm_factory, workdir, counter, results_dir):
    # Periodic: the rates below are the periods'.
    pvm, svm, _ = start_pair(bed, vm_factory, workdir,
                             append="colo.dirty_mbps=5 colo.dirty_mb=64",
                             delay_ms=200, output_delay_us=0)
    client = counter(interval=0.02, timeout=30, duration=600)
    client.wait_replies(20, 60)

    rate_200 = count_over(pvm, SOAK_WINDOW_S)
    pvm.qmp("migrate-set-parameters", {"x-checkpoint-delay": 1000})
    # The new period applies from the next checkpoint on.
    time.sleep(1.5)
    rate_1000 = count_over(pvm, SOAK_WINDOW_S)
    stats = colo_status(pvm)["stats"]
    sstats = colo_status(svm)["stats"]

    client.stop()
    log = CounterLog(client.out)
    gap = log.longest_gap()[0]

    checkpoint_stopped(pvm, svm)
    diff = differing_pages(save_memory(pvm, os.path.join(workdir, "p.mem")),
                           save_memory(svm, os.path.join(workdir, "s.mem")))
    result = {"rate_delay_200_per_s": rate_200,
              "rate_delay_1000_per_s": rate_1000,
              "primary": stats, "secondary": sstats,
              "client_replies": log.count, "client_longest_gap_s": gap}
    with open(os.path.join(results_dir, "colo-soak.json"), "w") as f:
        json.dump(result, f, indent=2)
    print("\ncolo soak: %s" % result)

    assert colo_status(pvm)["mode"] == "primary"
    assert colo_status(svm)["mode"] == "secondary"
    # A period of 200 ms allows at most 5 checkpoints a second, 1000 ms one;
    # each takes some time on top, so expect no less than half of that.
    assert 2.5 <= rate_200 <= 5.5, rate_200
    assert 0.5 <= rate_1000 <= 1.1, rate_1000
    assert stats["checkpoints"] == sstats["checkpoints"]
    assert stats["pages-total"] > 0 and stats["bytes-total"] > 0
    assert_client_ok(log)
    assert diff == [], "pages differ after a checkpoint: %s" % diff[:20]


def test_soak_output_driven(bed, vm_factory, workdir, counter):
    """Output-driven and pipelined (the default): the secondary loads one
    checkpoint while the next is taken.  Under a client and a guest
    dirtying 5 MB/s, both sides count the same checkpoints, the client's
    counter never goes back, and once the primary is stopped at a
    checkpoint the secondary's memory is the primary's."""
    pvm, svm, _ = start_pair(bed, vm_factory, workdir,
                             append="colo.dirty_mbps=5 colo.dirty_mb=64",
                             delay_ms=1000)
    client = counter(interval=0.02, timeout=30, duration=600)
    client.wait_replies(20, 60)
    t0, n0 = time.monotonic(), checkpoints(pvm)
    client.wait_replies(300, 120, after=t0)
    rate = (checkpoints(pvm) - n0) / (time.monotonic() - t0)
    out = colo_status(pvm)["x-output"]
    client.stop()
    checkpoint_stopped(pvm, svm)
    diff = differing_pages(save_memory(pvm, os.path.join(workdir, "p.mem")),
                           save_memory(svm, os.path.join(workdir, "s.mem")))
    print("\noutput-driven soak: %.1f checkpoints/s, %s" % (rate, out))
    # Replies every 20 ms start checkpoints well beyond the 1 s period.
    assert rate > 10, rate
    assert out["by-output"] > out["by-period"], out
    assert checkpoints(pvm) == checkpoints(svm)
    assert_client_ok(CounterLog(client.out))
    assert diff == [], "pages differ after a checkpoint: %s" % diff[:20]


DONE_RE = re.compile(r"colo_checkpoint_done checkpoint (\d+): \d+ bytes, "
                     r"(\d+) pages \((\d+) copied before the stop\)")


PRECOPY_RE = re.compile(r"colo_ram_precopy \d+ dirty pages \(\d+ zero\), "
                        r"(\d+) copied again in place")
SKIPPED_RE = re.compile(r"colo_ram_precopy_skipped ")


def precopy_run(bed, vm_factory, workdir, counter, append):
    """Periodic at 1000 ms with the guest's dirtier as APPEND sets it:
    once the primary stops at a checkpoint, the secondary's memory is the
    primary's.  Returns the steady checkpoints' (seq, page copies, of
    which before the stop) and the pages pre-copy copied again in place."""
    pvm, svm, _ = start_pair(bed, vm_factory, workdir, append=append,
                             delay_ms=1000, output_delay_us=0,
                             primary_args=["-trace", "colo_checkpoint_done",
                                           "-trace", "colo_ram_precopy*"])
    client = counter(interval=0.02, timeout=30, duration=600)
    client.wait_replies(5, 60)
    # The first checkpoints carry what the initial migration left.
    wait_checkpoints(pvm, checkpoints(pvm) + 8, timeout=60)
    client.stop()
    checkpoint_stopped(pvm, svm)
    diff = differing_pages(save_memory(pvm, os.path.join(workdir, "p.mem")),
                           save_memory(svm, os.path.join(workdir, "s.mem")))
    with open(pvm.stderr_path) as f:
        trace = f.read()
    done = [(int(seq), int(pages), int(pre))
            for seq, pages, pre in DONE_RE.findall(trace)]
    recopied = sum(int(n) for n in PRECOPY_RE.findall(trace))
    steady = done[2:-1]     # not the first ones, nor the stopped one
    # Passes skipped for want of a vCPU thread's sync (a loaded host).
    print("\nprecopy: %d checkpoints, %d page copies, %d before the stop, "
          "%d copied again in place, %d passes skipped"
          % (len(steady), sum(d[1] for d in steady), sum(d[2] for d in steady),
             recopied, len(SKIPPED_RE.findall(trace))))
    assert len(steady) >= 5, done
    assert checkpoints(pvm) == checkpoints(svm)
    assert_client_ok(CounterLog(client.out))
    assert diff == [], "pages differ after a checkpoint: %s" % diff[:20]
    return steady, recopied


def test_precopy_hot_memory(bed, vm_factory, workdir, counter):
    """The guest sweeping 64 MiB at 40 MB/s: most dirty pages are copied
    while the VM runs, so the pause holds only the pages dirtied since the
    last pass.  A page written during or after its copy must be copied
    again at the stop."""
    steady, _ = precopy_run(bed, vm_factory, workdir, counter,
                            "colo.dirty_mbps=40 colo.dirty_mb=64")
    pages = sum(d[1] for d in steady)
    # ~10000 pages dirtied a second, passes every 10 ms: nearly all are
    # copied before the stop.
    assert pages > 5000 * len(steady), steady
    assert sum(d[2] for d in steady) > 0.8 * pages, steady


def test_precopy_hot_pages_again(bed, vm_factory, workdir, counter):
    """The guest writing each page of 4 MiB every 100 ms: a pass copies a
    page written since its copy over that copy, so the stop holds what the
    last pass left (3-13 ms of writes), not the whole working set.  The
    memories must be equal: under TCG, a sync that cleared the log of a
    page already in the bitmap left its later writes unlogged until
    patches/ram-addr-sync-resets-tlb-for-every-cleared-bit.patch."""
    steady, recopied = precopy_run(bed, vm_factory, workdir, counter,
                                   "colo.dirty_mbps=40 colo.dirty_mb=4")
    at_stop = sorted(d[1] - d[2] for d in steady)
    assert recopied > 1024 * len(steady), (recopied, steady)
    # 1024 pages in the working set, all of them at the stop otherwise.
    assert at_stop[len(at_stop) // 2] < 512, steady


def tcp_timeouts(bed):
    """The namespace's TCP retransmission timeouts so far (TcpExt)."""
    lines = bed.run(["cat", "/proc/net/netstat"]).stdout.splitlines()
    for names, values in zip(lines[::2], lines[1::2]):
        if names.startswith("TcpExt:"):
            row = dict(zip(names.split()[1:], values.split()[1:]))
            return int(row["TCPTimeouts"])
    raise AssertionError("no TcpExt in /proc/net/netstat")


BUSY_RE = re.compile(r"@(\d+\.\d+):colo_checkpoint_busy checkpoint (\d+): "
                     r".* runs (\d+) us")
STOP_RE = re.compile(r"@(\d+\.\d+):colo_checkpoint_stop checkpoint (\d+):")


def test_input_kept_across_checkpoints(bed, vm_factory, workdir):
    """Output-driven with 50 redis clients: hundreds of checkpoints a
    second, each stopping the VM while the tap holds input for the NIC.
    A stop used to drop that input (QEMU completes a stopped NIC's queue by
    purging it), one packet in a hundred, each a 200 ms TCP retransmission
    timeout for its client; none may be lost.

    The guest is busy (the next checkpoint's replies are held before this
    one is safe), so the next stop waits until the VM ran nine times its
    pause (at most 3 ms): checked from the trace, a checkpoint marked busy
    and the next one's stop."""
    import bench_kv
    kernel, initrd = bench_kv.redis_images()
    pvm, svm, _ = start_pair(bed, vm_factory, workdir,
                             append="colo.redis=%d" % bench_kv.REDIS_PORT,
                             delay_ms=100,
                             primary_args=["-msg", "timestamp=on",
                                           "-trace", "colo_checkpoint_busy",
                                           "-trace", "colo_checkpoint_stop"],
                             vm_kw={"kernel": kernel, "initrd": initrd,
                                    "tap_opts": bench_kv.TAP_OPTS})
    bench_kv.wait_redis(bed)
    t0, n0 = tcp_timeouts(bed), checkpoints(pvm)
    res, _, _ = bench_kv.redis_benchmark(bed, 50, 10000, (pvm,))
    timeouts, n = tcp_timeouts(bed) - t0, checkpoints(pvm) - n0
    print("\ninput: %d checkpoints, %d TCP timeouts, %s" % (n, timeouts, res))
    # 20000 requests over 50 connections, a reply each: with the stops
    # dropping input, about a hundred timeouts.
    assert n > 500, n
    assert timeouts == 0, timeouts
    assert colo_status(pvm)["mode"] == "primary"
    assert colo_status(svm)["mode"] == "secondary"

    with open(pvm.stderr_path) as f:
        log = f.read()
    stops = {int(seq): float(t) for t, seq in STOP_RE.findall(log)}
    busy = [(int(seq), int(run_us)) for _, seq, run_us in BUSY_RE.findall(log)
            if int(seq) + 1 in stops and int(seq) in stops]
    print("busy: %d of %d checkpoints" % (len(busy), len(stops)))
    assert len(busy) >= n // 10, (len(busy), n)
    for seq, run_us in busy:
        assert 0 < run_us <= 3000, (seq, run_us)
        # The stop traces come after the drain: N+1's stop is at least
        # N's resume plus the run, and N's resume is after N's stop.
        gap_us = (stops[seq + 1] - stops[seq]) * 1e6
        assert gap_us >= run_us - 1, (seq, run_us, gap_us)


FAULTS = {
    "cut": "cut 20000",         # the connection closes mid-checkpoint
    "flip": "flip 20000",       # one byte of the checkpoint is corrupted
    "inject": "inject 64",      # garbage before the next message
}
# A stream that ends is a primary that died: the secondary takes over.  A
# stream that is well framed but wrong comes from a primary that is alive:
# the secondary says ERROR and stays down, and the primary serves alone.
TAKES_OVER = {"cut": True, "flip": False, "inject": False}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_broken_stream(fault, bed, vm_factory, workdir, counter):
    # -S: after the stream breaks, a secondary that takes over stays
    # paused, so that its memory can be compared with the checkpoint's.
    pvm, svm, proxy = start_pair(bed, vm_factory, workdir, delay_ms=100,
                                 secondary_args=["-S"], via_proxy=True)
    try:
        client = counter(interval=0.02, timeout=30, duration=600)
        client.wait_replies(25, 60)
        # From here on, only the checkpoint asked for below.
        n = checkpoint_stopped(pvm, svm)
        reference = save_memory(pvm, os.path.join(workdir, "p.mem"))

        # The guest runs on (the client's requests change its memory),
        # then the next checkpoint is broken.
        pvm.qmp("cont")
        time.sleep(0.5)
        assert proxy.command(FAULTS[fault]) == "ok"
        pvm.qmp("x-colo-checkpoint")

        ev = svm.wait_event("COLO_EXIT", 60)
        assert ev["data"] == {"mode": "secondary", "reason": "error"}
        status = colo_status(svm)
        assert status["mode"] == "none" and status["reason"] == "error"
        assert status["stats"]["checkpoints"] == n
        if TAKES_OVER[fault]:
            wait_until(lambda: svm.qmp("query-status")["status"] == "paused",
                       30, "the secondary to finish taking over (paused, -S)")
            # A management tool's failover command after the fact succeeds.
            svm.qmp("x-colo-lost-heartbeat")
        else:
            # Decided before COLO_EXIT: it stays down and says so.
            with pytest.raises(Exception, match="without taking over"):
                svm.qmp("x-colo-lost-heartbeat")
            assert svm.qmp("query-status")["status"] == "colo"
            with pytest.raises(Exception, match="stopped by COLO"):
                svm.qmp("cont")
        diff = differing_pages(reference,
                               save_memory(svm, os.path.join(workdir,
                                                             "s.mem")))
        assert diff == [], "the SVM is not the last checkpoint's: %s" % diff[:20]

        # The primary left COLO and serves on alone, and its memory has
        # moved on since the reference (so the broken checkpoint carried
        # changes, which the secondary did not apply).
        ev = pvm.wait_event("COLO_EXIT", 60)
        assert ev["data"] == {"mode": "primary", "reason": "error"}
        assert colo_status(pvm)["mode"] == "none"
        assert pvm.qmp("query-status")["status"] == "running"
        # Not "completed": the VM did not move.
        assert pvm.wait_migration({"failed"}, 30, fail_set=())
        client.wait_replies(25, 60, after=time.monotonic())
        assert differing_pages(reference, save_memory(
            pvm, os.path.join(workdir, "p-now.mem"))) != []
        client.stop()
        assert_client_ok(CounterLog(client.out))
    finally:
        proxy.close()


# A well-framed checkpoint whose device state is a migration command (a
# PING, which would write a PONG into COLO's return channel), then EOF.
HOSTILE_DEVICE_STATE = "08" "0002" "0004" "12345678" "00"


def forge_refused(bed, vm_factory, workdir, counter, command, check):
    """Replace the next checkpoint by the proxy's COMMAND (a forged one);
    the secondary must refuse it and stay down, the primary serve on.
    CHECK(svm, n, t_forged) asserts what the case adds; N is the
    secondary's checkpoint count before the forgery."""
    pvm, svm, proxy = start_pair(bed, vm_factory, workdir, delay_ms=100,
                                 via_proxy=True)
    try:
        client = counter(interval=0.02, timeout=30, duration=600)
        client.wait_replies(10, 60)
        pvm.qmp("migrate-set-parameters", {"x-checkpoint-delay": 3600 * 1000,
                                           "x-colo-output-delay": 0})
        wait_until(lambda: checkpoints(pvm) == checkpoints(svm), 30,
                   "no checkpoint in flight")
        n = checkpoints(svm)
        conn = proxy.arm(command)
        pvm.qmp("x-colo-checkpoint")
        assert proxy.answer(conn) == "ok"
        t_forged = time.monotonic()
        ev = svm.wait_event("COLO_EXIT", 60)
        assert ev["data"] == {"mode": "secondary", "reason": "error"}
        check(svm, n, t_forged)
        with pytest.raises(Exception, match="without taking over"):
            svm.qmp("x-colo-lost-heartbeat")
        assert svm.qmp("query-status")["status"] == "colo"
        pvm.wait_event("COLO_EXIT", 60)
        assert pvm.qmp("query-status")["status"] == "running"
        client.wait_replies(25, 60, after=time.monotonic())
        client.stop()
        assert_client_ok(CounterLog(client.out))
    finally:
        proxy.close()


def test_hostile_device_state(bed, vm_factory, workdir, counter):
    """A checkpoint's device state is loaded as whole device sections only:
    a command in it is refused, and the secondary stays down.  The devices
    are loaded lazily (once 100 ms have passed since the last load, or at
    the next heartbeat when nothing else comes, as here): the refusal
    comes then, not at some later failover."""
    def check(svm, n, t_forged):
        # Within a heartbeat (silence timeout / 10) and the test's own
        # QMP round trips, not at some later failover.
        assert time.monotonic() - t_forged < 5
        # Its RAM (none) may be acknowledged; no later one is.
        assert checkpoints(svm) in (n, n + 1)
    forge_refused(bed, vm_factory, workdir, counter,
                  "forge " + HOSTILE_DEVICE_STATE, check)


# RAM records (migration/colo/ram.h) of a forged checkpoint: one DELTA of
# the first page of the first block (pc.ram), whose change sets its first
# byte.  "base": well encoded, but against a page whose CRC-32C is not the
# SVM's (0); "garbled": its run of changed bytes is empty, which no XBZRLE
# encoding has.
DELTA_RECORD = "03" "00" "0000" "00000001" "0000000000000000"
HOSTILE_DELTAS = {
    "base": (DELTA_RECORD + "00000000" "00000003" "0001aa",
             "is not the one the primary changed"),
    "garbled": (DELTA_RECORD + "00000000" "00000002" "0000",
                "does not decode"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_DELTAS))
def test_hostile_delta(case, bed, vm_factory, workdir, counter):
    """A page sent as a change (ram-delta.c) is checked against the SVM's
    own page, and must decode, before anything of the checkpoint is
    flushed: a delta against another page, or one that does not decode,
    refuses the checkpoint (not acknowledged); the secondary stays down,
    the primary serves on."""
    records, message = HOSTILE_DELTAS[case]

    def check(svm, n, t_forged):
        assert checkpoints(svm) == n
        with open(svm.stderr_path) as f:
            assert message in f.read()
    forge_refused(bed, vm_factory, workdir, counter, "forge-ram " + records,
                  check)


def test_output_filter_owned_by_colo(bed, vm_factory, workdir):
    """The output-commit filter is COLO's: object-del refuses it; deleting
    its netdev takes it along, and checkpoints go on without it."""
    pvm, svm, _ = start_pair(bed, vm_factory, workdir, delay_ms=50)
    with pytest.raises(Exception, match="in use"):
        pvm.qmp("object-del", id="colo-output-hn0")
    pvm.qmp("netdev_del", id="hn0")
    n = checkpoints(svm)
    wait_until(lambda: checkpoints(svm) >= n + 5, 60, "5 more checkpoints")
    assert colo_status(pvm)["mode"] == "primary"
    assert pvm.is_running() and svm.is_running()


def test_output_beyond_the_hold(bed, vm_factory, workdir):
    """More output in one checkpoint period than a held queue takes (a
    NetQueue drops beyond 10000 packets): the primary is asked for a
    checkpoint at half of it, so every reply gets out, each covered by
    the checkpoint after it.  Periodic: what starts the checkpoints here
    must be the pressure alone."""
    pvm, svm, _ = start_pair(bed, vm_factory, workdir, delay_ms=100,
                             output_delay_us=0)
    # The flood must reach the guest and its replies leave whole: what is
    # tested is the hold.  Each side knows the other's MAC first (an ARP
    # answer held for a long period would leave the replies queued on an
    # unresolved neighbour, which keeps few).
    bed.ip("link", "set", "tap-p", "txqueuelen", "20000")
    bed.ip("neigh", "replace", GUEST_IP, "lladdr", GUEST_MAC, "dev", "br0")
    warm = bed.run([sys.executable, os.path.join(HERE, "icmp_flood.py"),
                    GUEST_IP, "10", "100", "10"], timeout=60)
    assert json.loads(warm.stdout)["received"] == 10, warm.stdout
    pvm.qmp("migrate-set-parameters", {"x-checkpoint-delay": 30000})
    wait_checkpoints(pvm, checkpoints(pvm) + 1)
    n = checkpoints(pvm)
    count = 12000
    out = bed.run([sys.executable, os.path.join(HERE, "icmp_flood.py"),
                   GUEST_IP, str(count), "3000", "40"], timeout=120)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    took = checkpoints(pvm) - n
    print("\noutput beyond the hold: %s, %d checkpoints" % (r, took))
    # Well inside the 30 s period, yet the pressure took checkpoints.
    assert took >= 2, took
    assert r["received"] >= count - 50, r
    assert colo_status(pvm)["mode"] == "primary"


def test_svm_ram_hotplug(bed, vm_factory, workdir, counter):
    """RAM hot-plugged on the secondary during COLO (review L2):
    checkpoints name RAM blocks by their index in the layout agreed at
    HELLO, which the new block shifts.  The secondary refuses the next
    checkpoint and stays down, its VM never runs; the primary serves on
    alone, its client unharmed."""
    mem = ["-m", "256,slots=2,maxmem=1G"]
    pvm, svm, _ = start_pair(bed, vm_factory, workdir, delay_ms=100,
                             primary_args=mem, secondary_args=mem)
    client = counter(interval=0.02, timeout=30, duration=600)
    client.wait_replies(25, 60)
    svm.qmp("object-add", {"qom-type": "memory-backend-ram", "id": "m1",
                           "size": 128 << 20})
    svm.qmp("device_add", {"driver": "pc-dimm", "id": "dimm1",
                           "memdev": "m1"})
    ev = svm.wait_event("COLO_EXIT", 30)
    assert ev["data"] == {"mode": "secondary", "reason": "error"}
    ev = pvm.wait_event("COLO_EXIT", 30)
    assert ev["data"]["mode"] == "primary"
    client.wait_replies(25, 30, after=time.monotonic())
    assert svm.qmp("query-status")["status"] != "running"
    assert pvm.qmp("query-status")["status"] == "running"
    with pytest.raises(Exception):
        svm.qmp("x-colo-lost-heartbeat")
    client.stop()
    assert_client_ok(CounterLog(client.out))


def test_pvm_ram_hotplug(bed, vm_factory, workdir):
    """RAM hot-plug on the primary during COLO (review L7) is refused, as
    during any outgoing migration, and so is a NIC's, whose output no
    filter would hold (review M7); COLO goes on."""
    mem = ["-m", "256,slots=2,maxmem=1G"]
    pvm, svm, _ = start_pair(bed, vm_factory, workdir, delay_ms=100,
                             primary_args=mem, secondary_args=mem)
    pvm.qmp("object-add", {"qom-type": "memory-backend-ram", "id": "m1",
                           "size": 128 << 20})
    with pytest.raises(Exception, match="not allowed while migrating"):
        pvm.qmp("device_add", {"driver": "pc-dimm", "id": "dimm1",
                               "memdev": "m1"})
    pvm.qmp("netdev_add", {"type": "hubport", "id": "hp9", "hubid": 9})
    with pytest.raises(Exception, match="not allowed while migrating"):
        pvm.qmp("device_add", {"driver": "virtio-net-pci", "id": "nic9",
                               "netdev": "hp9"})
    n = checkpoints(svm)
    wait_checkpoints(svm, n + 5)
    assert colo_status(pvm)["mode"] == "primary"


def reply_times(path, t0, t1):
    """The client's round-trip times of replies between T0 and T1."""
    rtts = []
    with open(path) as f:
        for line in f:
            try:
                d = json.loads(line)
            except ValueError:
                continue
            if "rtt" in d and t0 <= d["t"] <= t1:
                rtts.append(d["rtt"])
    return sorted(rtts)


def test_output_driven(bed, vm_factory, workdir, counter, results_dir):
    """x-colo-output-delay: a held reply starts a checkpoint at once, so
    it waits for one checkpoint's round trip instead of up to a period; an
    idle guest costs no more checkpoints than the period asks."""
    pvm, svm, _ = start_pair(bed, vm_factory, workdir, delay_ms=1000)
    # Output-driven, at once, by default; periodic first here.
    assert pvm.qmp("query-migrate-parameters")["x-colo-output-delay"] == 1
    pvm.qmp("migrate-set-parameters", {"x-colo-output-delay": 0})
    with pytest.raises(Exception):
        pvm.qmp("migrate-set-parameters", {"x-colo-output-delay": 1000001})
    client = counter(interval=0.02, timeout=30, duration=600)
    client.wait_replies(3, 60)
    t0 = time.monotonic()
    client.wait_replies(5, 60, after=t0)
    periodic = reply_times(client.out, t0, time.monotonic())
    pvm.hmp("migrate_set_parameter x-colo-output-delay 1")
    assert "x-colo-output-delay: 1 us" in pvm.hmp("info migrate_parameters")
    client.wait_replies(3, 30, after=time.monotonic())
    t1, n1 = time.monotonic(), checkpoints(pvm)
    out1 = colo_status(pvm)["x-output"]
    client.wait_replies(100, 60, after=t1)
    t2, n2 = time.monotonic(), checkpoints(pvm)
    out2 = colo_status(pvm)["x-output"]
    driven = reply_times(client.out, t1, t2)
    # Why each checkpoint was taken, and how long output was held.
    by_output = out2["by-output"] - out1["by-output"]
    by_period = out2["by-period"] - out1["by-period"]
    assert by_output >= 0.9 * (n2 - n1) and by_period <= 0.1 * (n2 - n1) + 1, \
        (out1, out2, n2 - n1)
    assert out1["by-period"] >= 3, out1
    # Each of the 100 replies is at least one held packet; the first may
    # have been released between t1 and the reading of out1, and the last
    # may have reached the client before its release was counted (the
    # count follows the release).
    assert out2["held-packets"] >= out1["held-packets"] + 98, (out1, out2)
    assert out2["in-flight"] <= 2, out2
    info = pvm.hmp("info colo")
    assert "checkpoints by cause: period" in info and "output held:" in info
    assert colo_status(svm).get("x-output") is None
    client.stop()
    assert_client_ok(CounterLog(client.out))
    # Idle (no client): the period alone, 1 s.
    n3 = checkpoints(pvm)
    time.sleep(5)  # a phase: five periods of an idle guest
    idle = checkpoints(pvm) - n3
    result = {"periodic_rtt_median_s": periodic[len(periodic) // 2],
              "driven_rtt_median_s": driven[len(driven) // 2],
              "driven_rtt_max_s": driven[-1],
              "driven_checkpoints_per_s": round((n2 - n1) / (t2 - t1), 1),
              "driven_hold_mean_ms": round(
                  (out2["hold-mean-us"] * out2["held-packets"] -
                   out1["hold-mean-us"] * out1["held-packets"]) /
                  (out2["held-packets"] - out1["held-packets"]) / 1000, 2),
              "idle_checkpoints_in_5s": idle}
    with open(os.path.join(results_dir, "output-driven.json"), "w") as f:
        json.dump(result, f, indent=2)
    print("\noutput-driven: %s" % result)
    assert result["periodic_rtt_median_s"] > 0.5, result
    assert result["driven_rtt_median_s"] < 0.1, result
    assert idle <= 7, result


def test_output_through_hub(bed, vm_factory, workdir, counter):
    """NIC and tap joined through a hub (review M7): output is held once,
    at the tap, and the guest's input not at all.  Output-driven with a
    30 s period, every checkpoint is started by held output: a filter on
    each hub port too would hold each reply twice (two checkpoints) and
    each request once more (a third)."""
    def output_driven(pvm, svm):
        pvm.qmp("migrate-set-parameters", {"x-colo-output-delay": 1})

    pvm, svm, _ = start_pair(bed, vm_factory, workdir, delay_ms=30000,
                             vm_kw={"net_hub": True},
                             before_migrate=output_driven)
    filters = sorted(o["name"] for o in pvm.qmp("qom-list", path="/objects")
                     if o["name"].startswith("colo-output-"))
    assert filters == ["colo-output-hn0"], filters
    client = counter(interval=0.2, timeout=30, duration=600)
    client.wait_replies(3, 60)
    t0, n0 = time.monotonic(), checkpoints(pvm)
    client.wait_replies(20, 60, after=t0)
    took = checkpoints(pvm) - n0
    replies = [t for t, _ in CounterLog(client.out).replies if t > t0]
    rtts = reply_times(client.out, t0, time.monotonic())
    client.stop()
    assert_client_ok(CounterLog(client.out))
    print("\nthrough a hub: %d replies, %d checkpoints, rtt median %.1f ms"
          % (len(replies), took, 1000 * rtts[len(rtts) // 2]))
    assert took <= 1.5 * len(replies) + 2, (took, len(replies))
    assert rtts[len(rtts) // 2] < 0.1, rtts


@pytest.mark.parametrize("mode", ["periodic", "output-driven"])
def test_no_release_before_received(mode, bed, vm_factory, workdir,
                                    counter):
    """Output is never released before the RECEIVED of the checkpoint
    that covers it.  The client asks once every 200 ms, one request at a
    time; right after a reply (whose checkpoint was acknowledged), the
    replication link is frozen both ways (the silence timeout set long,
    so that the primary keeps waiting).  The next reply is emitted and
    sealed into a checkpoint (periodic: up to 2 s later; output-driven:
    at once) whose RECEIVED cannot come: the client gets nothing more.
    Thawed, the replies come again, none lost or repeated."""
    pvm, svm, proxy = start_pair(bed, vm_factory, workdir, delay_ms=2000,
                                 via_proxy=True)
    try:
        for vm in (pvm, svm):
            vm.qmp("migrate-set-parameters",
                   {"x-colo-silence-timeout": 60000})
        pvm.qmp("migrate-set-parameters",
                {"x-colo-output-delay": 1 if mode == "output-driven" else 0})
        client = counter(interval=0.2, timeout=30, duration=600)
        client.wait_replies(3, 60)
        n = CounterLog(client.out).count
        wait_until(lambda: CounterLog(client.out).count > n, 30,
                   "a reply", poll=0.002)
        # A phase, well inside the 200 ms before the next request: the
        # primary goes on at RECEIVED (pipelined), and seals the next
        # epoch, with the next reply, into a checkpoint while frozen.
        time.sleep(0.05)
        assert proxy.command("freeze") == "ok"
        t_freeze = time.monotonic()
        time.sleep(3)  # a phase: the link stays frozen 3 s
        after = [round(t - t_freeze, 3)
                 for t, _ in CounterLog(client.out).replies if t > t_freeze]
        assert after == [], after
        assert proxy.command("thaw") == "ok"
        client.wait_replies(5, 30, after=time.monotonic())
        client.stop()
        assert_client_ok(CounterLog(client.out))
        assert colo_status(pvm)["mode"] == "primary"
    finally:
        proxy.close()


def run_state_events(vm, since):
    """The STOP and RESUME events VM sent after the first SINCE events."""
    vm._collect_events()
    return [e["event"] for e in vm.events[since:]
            if e["event"] in ("STOP", "RESUME")]


def test_stop_cont_in_colo(bed, vm_factory, workdir):
    """A secondary's VM runs only after a failover: cont and stop are
    refused in COLO.  A primary's stop holds across checkpoints, and is
    announced (STOP, then RESUME at cont); a checkpoint's is not."""
    pvm, svm, _ = start_pair(bed, vm_factory, workdir, delay_ms=1)
    for cmd in ("cont", "stop"):
        with pytest.raises(Exception, match="stopped by COLO"):
            svm.qmp(cmd)
    assert svm.qmp("query-status")["status"] == "colo"
    pvm._collect_events()
    since = len(pvm.events)
    n = checkpoints(svm)
    wait_until(lambda: checkpoints(svm) >= n + 10, 30, "10 checkpoints")
    assert run_state_events(pvm, since) == []
    # Stops that land anywhere in the period, inside a checkpoint's stop
    # or not, leave the primary paused.
    for i in range(30):
        pvm.qmp("stop")
        n = checkpoints(svm)
        wait_until(lambda: checkpoints(svm) >= n + 2, 30, "2 checkpoints")
        assert pvm.qmp("query-status")["status"] == "paused", i
        pvm.qmp("cont")
        time.sleep(0.001 * (i % 7))
    # A stop and a cont back to back, either or both of which may land in
    # a checkpoint's stop, several in the same one: each is announced as
    # outside of one, and the VM follows the last.
    for i in range(300):
        pvm.qmp("stop")
        pvm.qmp("cont")
    # The last cont may be given at the next checkpoint's resume.  A
    # checkpoint every millisecond: query-status may see run state colo.
    wait_until(lambda: pvm.qmp("query-status")["status"] == "running", 30,
               "the primary to run")
    wait_until(lambda: len(run_state_events(pvm, since)) >= 660, 30,
               "a STOP and a RESUME per stop and cont")
    assert run_state_events(pvm, since) == ["STOP", "RESUME"] * 330
    assert colo_status(pvm)["mode"] == "primary"


def test_paused_primary_stays_paused(bed, vm_factory, workdir):
    """A primary paused before migrate is protected paused, and leaving
    COLO leaves it in the run state it is in."""
    pvm, svm, _ = start_pair(bed, vm_factory, workdir, delay_ms=50,
                             before_migrate=lambda p, s: p.qmp("stop"))
    # COLO gives the VM its run state back once the secondary said HELLO.
    pvm.wait_status({"paused"}, 30)
    n = checkpoints(svm)
    pvm.qmp("x-colo-checkpoint")
    wait_until(lambda: checkpoints(svm) > n, 30, "a checkpoint")
    assert pvm.qmp("query-status")["status"] == "paused"
    pvm.qmp("cont")
    pvm.wait_status({"running"}, 10)
    pvm.qmp("stop")
    pvm.qmp("migrate_cancel")
    pvm.wait_migration({"cancelled"}, 30)
    assert pvm.qmp("query-status")["status"] == "paused"


def test_guest_shutdown(bed, vm_factory, workdir):
    pvm, svm, _ = start_pair(bed, vm_factory, workdir, delay_ms=100)
    wait_until(lambda: checkpoints(svm) >= 2, 60, "2 checkpoints")
    assert query_guest(bed, "poweroff").startswith("ok")
    for vm in (pvm, svm):
        wait_until(lambda: not vm.is_running(), 60, "%s to exit" % vm.name)
        assert vm.proc.returncode == 0, (vm.name, vm.log_tail())
