"""End-to-end: plain live migration of the test guest under client load.

This proves the bed (namespace, bridge, taps, two QEMUs, QMP, the counter
client) before any COLO scenario builds on it.

    source QEMU (tap-p) --migrate tcp:127.0.0.1:PORT--> destination (tap-s)
           \\                                              /
            +---------------- br0 10.77.0.1 ---------------+
                                  |
                        counter client: one TCP connection,
                        `inc` every 20 ms, throughout

Cases:
  plain  the guest is idle apart from the counter service
  dirty  the guest also dirties memory (colo.dirty_mbps=5 over a 64 MiB
         working set), so RAM must be re-sent while the migration runs

Migration parameters (set on the source before `migrate`):
  max-bandwidth  256 MiB/s.  QEMU's default is 128 MiB/s; the stream only
                 crosses the namespace's loopback, so a higher cap shortens
                 the bulk copy.  It stays capped so that the migration thread
                 does not starve the TCG vCPU threads of the two QEMUs on a
                 small (2-core) host.
  downtime-limit 300 ms (QEMU's default, set explicitly so the test does not
                 depend on it).  With 5 MiB/s dirtied against >= 128 MiB/s
                 sent, the dirty set left after each pass is far below
                 bandwidth x downtime-limit, so the migration converges
                 within a few passes; no auto-converge or postcopy needed.

Results (longest gap between two replies, where it was relative to the
`migrate` command, migration statistics) are printed and written to
migration-<case>.json in $COLO_RESULTS_DIR, or pytest's tmp_path.
"""

import json
import os
import time

import pytest

from colo_pair import query_guest
from counter_client import CounterLog
from vm import GUEST_MAC


READY_RE = r"COLO-GUEST READY ip=\S+ port=\d+"
BOOT_TIMEOUT = float(os.environ.get("COLO_BOOT_TIMEOUT", "180"))
MIGRATION_TIMEOUT = float(os.environ.get("COLO_MIGRATION_TIMEOUT", "300"))
INTERVAL = 0.02          # one `inc` every 20 ms
REQUEST_TIMEOUT = 30.0   # per request: rides out the switch-over pause
REPLIES_BEFORE = 50      # replies seen on the source before migrating
REPLIES_AFTER = 150      # replies seen on the destination after (~3 s)

CASES = {
    "plain": "",
    "dirty": "colo.dirty_mbps=5 colo.dirty_mb=64",
}

MIGRATION_PARAMS = {
    "max-bandwidth": 256 << 20,     # bytes/s
    "downtime-limit": 300,          # ms
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_live_migration(case, bed, vm_factory, counter, results_dir):
    t_begin = time.monotonic()
    append = CASES[case]

    src = vm_factory("source", tap="tap-p", append=append)
    src.wait_serial(READY_RE, BOOT_TIMEOUT)
    t_ready = time.monotonic()

    client = counter(interval=INTERVAL, timeout=REQUEST_TIMEOUT,
                     duration=MIGRATION_TIMEOUT + 300)
    client.wait_replies(REPLIES_BEFORE, 60)

    port = bed.free_port()
    dst = vm_factory("destination", tap="tap-s", append=append,
                     incoming="tcp:127.0.0.1:%d" % port)
    assert dst.qmp("query-status")["status"] == "inmigrate"

    src.qmp("migrate-set-parameters", MIGRATION_PARAMS)
    t_mig = time.monotonic()
    src.qmp("migrate", uri="tcp:127.0.0.1:%d" % port)
    info = src.wait_migration({"completed"}, MIGRATION_TIMEOUT)
    t_done = time.monotonic()
    dst.wait_status({"running"}, 60)
    t_dst_running = time.monotonic()
    assert src.qmp("query-status")["status"] == "postmigrate"

    client.wait_replies(REPLIES_AFTER, 120, after=t_done)
    # The bridge has moved the guest's MAC to the destination's tap.
    fdb_port = bed.fdb_port(GUEST_MAC)
    client.stop()
    log = CounterLog(client.out)
    final = query_guest(bed, "get")
    stats = query_guest(bed, "stats")

    gap, ta, tb, gap_value = log.longest_gap()
    value_at_mig = log.value_at(t_mig)
    value_at_done = log.value_at(t_done)
    ram = info.get("ram", {})
    result = {
        "case": case,
        "append": append,
        "accel": src.accel,
        "migration_params": MIGRATION_PARAMS,
        "boot_s": round(t_ready - t_begin, 3),
        "migration_s": round(t_done - t_mig, 3),
        "dst_running_after_migrate_s": round(t_dst_running - t_mig, 3),
        "qemu_total_time_ms": info.get("total-time"),
        "qemu_downtime_ms": info.get("downtime"),
        "qemu_setup_time_ms": info.get("setup-time"),
        "ram_transferred": ram.get("transferred"),
        "ram_dirty_sync_count": ram.get("dirty-sync-count"),
        "ram_normal_pages": ram.get("normal"),
        "value_at_migrate": value_at_mig,
        "value_at_completed": value_at_done,
        "replies": log.count,
        "replies_after_completed": len(log.replies_after(t_done)),
        "last_value": log.last_value(),
        "final_get": final,
        "guest_stats": stats,
        "longest_gap_s": round(gap, 4),
        "longest_gap_from_s": round(ta - t_mig, 3) if ta else None,
        "longest_gap_to_s": round(tb - t_mig, 3) if tb else None,
        "longest_gap_after_value": gap_value,
        "longest_gap_in_migration": bool(ta and ta >= t_mig - 1
                                         and ta <= t_dst_running + 1),
        "fdb_port_after": fdb_port,
        "errors": log.errors(),
        "reconnects": len(log.reconnects()),
        "skips": log.skips()[:10],
        "test_runtime_s": None,
    }
    result["test_runtime_s"] = round(time.monotonic() - t_begin, 3)
    path = os.path.join(results_dir, "migration-%s.json" % case)
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    print("\nmigration[%s]: longest gap %.3f s, from %+.3f s to %+.3f s "
          "(relative to migrate; completed at %+.3f s, qemu downtime %s ms, "
          "total %s ms); %d replies; results in %s" % (
              case, gap, ta - t_mig, tb - t_mig, t_done - t_mig,
              info.get("downtime"), info.get("total-time"), log.count, path))

    # The TCP connection survived the migration.
    assert log.errors() == [], "client errors: %s" % log.errors()
    assert log.reconnects() == []
    assert not log.garbage, log.garbage
    # The counter never went backwards and each reply increased it.
    assert log.never_backwards(), log.first_violation(strict=False)
    assert log.strictly_increasing(), log.first_violation(strict=True)
    # One client, one `inc` per reply: nothing lost, nothing doubled.
    assert log.skips() == [], log.skips()[:10]
    # Replies came from the destination after the migration.
    assert value_at_mig is not None
    assert log.last_value() > value_at_done >= value_at_mig
    assert fdb_port == "tap-s", bed.fdb()
    # The guest's own view on the destination.
    assert int(final) >= log.last_value()
