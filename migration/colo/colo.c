/*
 * COLO: coarse-grain lock-stepping of a primary and a secondary VM.
 *
 * This file is the include/migration/colo.h interface and the state both
 * sides share: which mode this QEMU is in, why it left COLO, checkpoint
 * statistics, and the QMP/HMP commands.  The checkpoint loops are in
 * primary.c and secondary.c, the wire format in protocol.h.
 * docs/devel/migration/colo.rst explains the design.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qapi/qapi-commands-migration.h"
#include "qapi/qapi-events-migration.h"
#include "qapi/qapi-events-run-state.h"
#include "qemu/error-report.h"
#include "qemu/main-loop.h"
#include "qemu/module.h"
#include "qemu/notify.h"
#include "qemu/timer.h"
#include "qobject/qdict.h"
#include "io/channel.h"
#include "monitor/hmp.h"
#include "monitor/monitor.h"
#include "system/runstate.h"
#include "migration/colo.h"
#include "migration/failover.h"
#include "migration/misc.h"
#include "migration/migration.h"
#include "migration/options.h"
#include "migration/qemu-file.h"
#include "colo-internal.h"
#include "fencing.h"
#include "heartbeat.h"
#include "trace.h"

ColoState colo_state;

static void colo_shutdown_notify(Notifier *n, void *data);
static Notifier colo_shutdown_notifier = { .notify = colo_shutdown_notify };

static void colo_init(void)
{
    qemu_mutex_init(&colo_state.lock);
    qemu_sem_init(&colo_state.kick, 0);
    qemu_sem_init(&colo_state.primary_exited, 0);
    qemu_register_shutdown_notifier(&colo_shutdown_notifier);
}
migration_init(colo_init);

bool colo_caps_check(const bool *new_caps, Error **errp)
{
    static const MigrationCapability incompatible[] = {
        MIGRATION_CAPABILITY_POSTCOPY_RAM,
        MIGRATION_CAPABILITY_MULTIFD,
        MIGRATION_CAPABILITY_MAPPED_RAM,
        MIGRATION_CAPABILITY_BACKGROUND_SNAPSHOT,
        /*
         * COLO runs its own exchange on the return direction of the
         * stream; migration's return-path thread would read it as its own
         * messages, fail the migration and leave both sides running.
         * switchover-ack needs return-path, so it is refused with it.
         */
        MIGRATION_CAPABILITY_RETURN_PATH,
        /*
         * A checkpoint carries RAM and the devices' state, not the state
         * that only iterates (block dirty bitmaps): a secondary taking
         * over would run with bitmaps of the initial migration, stale.
         */
        MIGRATION_CAPABILITY_DIRTY_BITMAPS,
    };

    for (size_t i = 0; i < ARRAY_SIZE(incompatible); i++) {
        if (new_caps[incompatible[i]]) {
            error_setg(errp, "x-colo cannot be combined with %s",
                       MigrationCapability_str(incompatible[i]));
            return false;
        }
    }
    return true;
}

COLOMode get_colo_mode(void)
{
    COLOMode mode;

    qemu_mutex_lock(&colo_state.lock);
    mode = colo_state.mode;
    qemu_mutex_unlock(&colo_state.lock);
    return mode;
}

bool migration_in_colo_state(void)
{
    return migrate_get_current()->state == MIGRATION_STATUS_COLO;
}

bool migration_incoming_in_colo_state(void)
{
    MigrationIncomingState *mis = migration_incoming_get_current();

    return mis && mis->state == MIGRATION_STATUS_COLO;
}

/* Wake whatever is blocked on the replication channel (lock held). */
static void colo_channel_shutdown_locked(void)
{
    if (colo_state.to_peer) {
        qemu_file_shutdown(colo_state.to_peer);
    }
    if (colo_state.from_peer) {
        qemu_file_shutdown(colo_state.from_peer);
    }
}

void colo_state_enter(COLOMode mode, QEMUFile *to, QEMUFile *from)
{
    qemu_mutex_lock(&colo_state.lock);
    colo_state.mode = mode;
    colo_state.last_mode = mode;
    colo_state.reason = COLO_EXIT_REASON_NONE;
    colo_state.stayed_down = false;
    memset(&colo_state.stats, 0, sizeof(colo_state.stats));
    colo_state.to_peer = to;
    colo_state.from_peer = from;
    qatomic_set(&colo_state.checkpoint_requested, false);
    qatomic_set(&colo_state.output_due_us, 0);
    qatomic_set(&colo_state.output_pressure, false);
    colo_state.arbitrated = migrate_colo_arbitrated();
    /* A cancel that came since the migration reached COLO state stands. */
    qatomic_set(&colo_state.exit_requested,
                qatomic_read(&colo_state.cancel_requested));
    qatomic_set(&colo_state.guest_shutdown, false);
    qatomic_set(&colo_state.quitting, false);
    failover_init_state();
    while (!qemu_sem_timedwait(&colo_state.primary_exited, 0)) {
        /* drain a post left by an earlier COLO run */
    }
    qemu_mutex_unlock(&colo_state.lock);
    colo_heartbeat_start(mode);
    trace_colo_enter(COLOMode_str(mode));
}

void colo_state_exit(COLOExitReason reason, Error *err)
{
    COLOMode mode;

    /* Its verdict stays readable (colo_heartbeat_peer_silent()). */
    colo_heartbeat_stop();
    qemu_mutex_lock(&colo_state.lock);
    mode = colo_state.mode;
    colo_state.mode = COLO_MODE_NONE;
    colo_state.reason = reason;
    colo_channel_shutdown_locked();
    colo_state.to_peer = NULL;
    colo_state.from_peer = NULL;
    if (colo_state.interrupt_grace) {
        timer_del(colo_state.interrupt_grace);
    }
    qatomic_set(&colo_state.cancel_requested, false);
    qemu_mutex_unlock(&colo_state.lock);

    trace_colo_exit(COLOMode_str(mode), COLOExitReason_str(reason));
    if (err) {
        error_report_err(err);
    }
    qapi_event_send_colo_exit(mode, reason);
}

void colo_state_mark_down(void)
{
    qemu_mutex_lock(&colo_state.lock);
    colo_state.stayed_down = true;
    qemu_mutex_unlock(&colo_state.lock);
}


COLOMode colo_last_mode(bool *stayed_down)
{
    COLOMode mode;

    qemu_mutex_lock(&colo_state.lock);
    mode = colo_state.last_mode;
    *stayed_down = colo_state.stayed_down;
    qemu_mutex_unlock(&colo_state.lock);
    return mode;
}

void colo_state_shutdown_channel(void)
{
    qemu_mutex_lock(&colo_state.lock);
    colo_channel_shutdown_locked();
    qemu_mutex_unlock(&colo_state.lock);
}

/* The primary's loop is still blocked writing to a silent secondary. */
static void colo_interrupt_grace_expired(void *opaque)
{
    colo_state_shutdown_channel();
}

#define COLO_INTERRUPT_GRACE_MS 1000

void colo_state_interrupt(void)
{
    qatomic_set(&colo_state.exit_requested, true);
    qemu_mutex_lock(&colo_state.lock);
    if (colo_state.mode == COLO_MODE_PRIMARY && colo_state.from_peer) {
        /*
         * The primary serves on after it leaves: its loop must be able to
         * tell the secondary (ERROR), or a secondary that still hears it
         * would take the closed stream for a dead primary and take over.
         * Shut only the read side now (a blocked wait for the secondary
         * returns; the peer sees nothing), and the whole channel if the
         * loop is still blocked writing after a grace period.
         */
        qio_channel_shutdown(qemu_file_get_ioc(colo_state.from_peer),
                             QIO_CHANNEL_SHUTDOWN_READ, NULL);
        if (!colo_state.interrupt_grace) {
            colo_state.interrupt_grace =
                timer_new_ms(QEMU_CLOCK_REALTIME,
                             colo_interrupt_grace_expired, NULL);
        }
        timer_mod(colo_state.interrupt_grace,
                  qemu_clock_get_ms(QEMU_CLOCK_REALTIME) +
                  COLO_INTERRUPT_GRACE_MS);
    } else {
        colo_channel_shutdown_locked();
    }
    qemu_mutex_unlock(&colo_state.lock);
    qemu_sem_post(&colo_state.kick);
}

void colo_stats_add(uint64_t pause_us, uint64_t bytes, uint64_t pages,
                    uint64_t received_us)
{
    ColoStats *st = &colo_state.stats;

    qemu_mutex_lock(&colo_state.lock);
    st->checkpoints++;
    st->pause_last_us = pause_us;
    st->pause_total_us += pause_us;
    st->pause_max_us = MAX(st->pause_max_us, pause_us);
    st->bytes_last = bytes;
    st->bytes_total += bytes;
    st->pages_last = pages;
    st->pages_total += pages;
    st->received_last_us = received_us;
    qemu_mutex_unlock(&colo_state.lock);
}

void colo_stats_add_output(ColoCheckpointCause cause, uint64_t packets,
                           uint64_t hold_total_us, uint64_t hold_max_us)
{
    ColoStats *st = &colo_state.stats;

    qemu_mutex_lock(&colo_state.lock);
    st->by_cause[cause]++;
    st->held_packets += packets;
    st->hold_total_us += hold_total_us;
    st->hold_max_us = MAX(st->hold_max_us, hold_max_us);
    qemu_mutex_unlock(&colo_state.lock);
}

void colo_stats_set_in_flight(uint64_t in_flight)
{
    qemu_mutex_lock(&colo_state.lock);
    colo_state.stats.in_flight = in_flight;
    qemu_mutex_unlock(&colo_state.lock);
}

/* A new x-checkpoint-delay applies at once: wake the primary to re-plan. */
void colo_checkpoint_delay_set(void)
{
    if (get_colo_mode() == COLO_MODE_PRIMARY) {
        qemu_sem_post(&colo_state.kick);
    }
}

/*
 * A guest that shuts down in COLO takes its secondary with it: the primary
 * tells the secondary before this QEMU exits (see colo_shutdown()).
 */
static void colo_shutdown_notify(Notifier *n, void *data)
{
    ShutdownCause cause = *(ShutdownCause *)data;

    if (cause != SHUTDOWN_CAUSE_GUEST_SHUTDOWN ||
        get_colo_mode() != COLO_MODE_PRIMARY) {
        return;
    }
    qatomic_set(&colo_state.guest_shutdown, true);
    qatomic_set(&colo_state.exit_requested, true);
    qemu_sem_post(&colo_state.kick);
}

/*
 * QEMU is exiting.  The primary's loop runs in the migration thread,
 * which migration_shutdown() cancels next: let it leave COLO first, and
 * tell the secondary if the guest shut down.  The wait is bounded, and
 * drops the BQL, which a checkpoint in progress needs to finish.
 */
#define COLO_SHUTDOWN_WAIT_MS 5000

void colo_shutdown(void)
{
    if (get_colo_mode() != COLO_MODE_PRIMARY) {
        return;
    }
    qatomic_set(&colo_state.quitting, true);
    qatomic_set(&colo_state.exit_requested, true);
    qemu_sem_post(&colo_state.kick);

    bql_unlock();
    if (qemu_sem_timedwait(&colo_state.primary_exited,
                           COLO_SHUTDOWN_WAIT_MS)) {
        /* The loop is stuck on a silent secondary: unblock it. */
        colo_state_shutdown_channel();
        qemu_sem_timedwait(&colo_state.primary_exited, COLO_SHUTDOWN_WAIT_MS);
    }
    bql_lock();
}

RunState colo_state_take_run_state(RunState as_before)
{
    switch (qatomic_xchg(&colo_state.run_request, COLO_RUN_AS_BEFORE)) {
    case COLO_RUN_PAUSED:
        return RUN_STATE_PAUSED;
    case COLO_RUN_RUNNING:
        return RUN_STATE_RUNNING;
    default:
        return as_before;
    }
}

static void colo_run_request(ColoRunRequest request, Error **errp)
{
    ColoRunRequest last;

    /*
     * A primary's outgoing migration is in COLO state from the initial
     * migration's end until the primary's loop ends, which covers every
     * instant its VM is in run state "colo" (BQL held).
     */
    if (migrate_get_current()->state != MIGRATION_STATUS_COLO) {
        error_setg(errp, "The VM is stopped by COLO");
        return;
    }
    last = qatomic_xchg(&colo_state.run_request, request);
    /*
     * Inside a checkpoint's stop of a running VM, announce each change as
     * a stop or cont outside of one would, at once: several may come
     * before the checkpoint resumes the VM, which then only follows the
     * last.  The initial migration announced its own stop.
     */
    if (colo_state.checkpoint_stopped_live &&
        (last == COLO_RUN_PAUSED) != (request == COLO_RUN_PAUSED)) {
        if (request == COLO_RUN_PAUSED) {
            qapi_event_send_stop();
        } else {
            qapi_event_send_resume();
        }
    }
}

void colo_stop_request(Error **errp)
{
    colo_run_request(COLO_RUN_PAUSED, errp);
}

void colo_cont_request(Error **errp)
{
    colo_run_request(COLO_RUN_RUNNING, errp);
}

/*
 * migrate_cancel (or an internal cancel) while the migration is in COLO
 * state.  The loop leaves and tells the secondary to stay down before the
 * channel closes: a secondary that only saw the stream end would take
 * over while this side serves on.  A cancel before the loop entered COLO
 * is kept for it (colo_state_enter()).
 */
void colo_cancel(void)
{
    qatomic_set(&colo_state.cancel_requested, true);
    if (get_colo_mode() == COLO_MODE_PRIMARY) {
        colo_state_interrupt();
    }
}

void migrate_start_colo_process(MigrationState *s)
{
    bool resumed;

    /*
     * The VM stopped for the migration's end; from here until COLO gives
     * it its run state back, it is stopped by COLO: a "stop" or "cont"
     * meanwhile is kept for later (colo_stop_request()).  In run state
     * finish-migrate, a "stop" would be ignored and then undone.
     */
    qatomic_set(&colo_state.run_request, COLO_RUN_AS_BEFORE);
    if (runstate_check(RUN_STATE_FINISH_MIGRATE)) {
        runstate_set(RUN_STATE_COLO);
    }
    bql_unlock();
    resumed = colo_primary_run(s);
    bql_lock();
    /*
     * What the migration's end restores, read under the BQL it holds
     * until then, so that no "stop" falls in between: the run state COLO
     * left the VM in; for a VM that COLO never gave its state back, the
     * one before migrate, or the one a "stop" or "cont" asked for since.
     */
    if (resumed) {
        s->vm_old_state = runstate_get();
    } else if (runstate_check(RUN_STATE_COLO)) {
        s->vm_old_state = colo_state_take_run_state(s->vm_old_state);
        if (!runstate_is_live(s->vm_old_state)) {
            runstate_set(s->vm_old_state);
        }
    }
}

void coroutine_fn colo_incoming_co(void)
{
    colo_secondary_run(migration_incoming_get_current());
}

void qmp_x_colo_checkpoint(Error **errp)
{
    if (get_colo_mode() != COLO_MODE_PRIMARY) {
        error_setg(errp, "A checkpoint can only be requested on the primary"
                   " of a COLO pair");
        return;
    }
    qatomic_set(&colo_state.checkpoint_requested, true);
    qemu_sem_post(&colo_state.kick);
}

COLOStatus *qmp_query_colo_status(Error **errp)
{
    COLOStatus *st = g_new0(COLOStatus, 1);
    COLOCheckpointStats *cs = g_new0(COLOCheckpointStats, 1);
    ColoStats *s = &colo_state.stats;

    qemu_mutex_lock(&colo_state.lock);
    st->mode = colo_state.mode;
    st->last_mode = colo_state.last_mode;
    st->reason = colo_state.reason;
    cs->checkpoints = s->checkpoints;
    cs->pause_last_us = s->pause_last_us;
    cs->pause_mean_us = s->checkpoints ? s->pause_total_us / s->checkpoints : 0;
    cs->pause_max_us = s->pause_max_us;
    cs->bytes_last = s->bytes_last;
    cs->bytes_total = s->bytes_total;
    cs->pages_last = s->pages_last;
    cs->pages_total = s->pages_total;
    if (colo_state.last_mode == COLO_MODE_PRIMARY) {
        COLOOutputStats *os = g_new0(COLOOutputStats, 1);

        cs->has_received_last_us = true;
        cs->received_last_us = s->received_last_us;
        os->by_period = s->by_cause[COLO_CAUSE_PERIOD];
        os->by_output = s->by_cause[COLO_CAUSE_OUTPUT];
        os->by_request = s->by_cause[COLO_CAUSE_REQUEST];
        os->held_packets = s->held_packets;
        os->hold_mean_us = s->held_packets ?
                           s->hold_total_us / s->held_packets : 0;
        os->hold_max_us = s->hold_max_us;
        os->in_flight = colo_state.mode == COLO_MODE_PRIMARY ?
                        s->in_flight : 0;
        st->x_output = os;
    }
    qemu_mutex_unlock(&colo_state.lock);
    st->stats = cs;
    st->x_liveness = g_new0(COLOLiveness, 1);
    st->x_liveness->silence_timeout = migrate_colo_silence_timeout();
    st->x_liveness->peer_silent = colo_heartbeat_peer_silent();
    st->x_liveness->quiet_ms = colo_heartbeat_quiet_ms();
    st->x_lease = colo_fencing_status();
    return st;
}

void hmp_info_colo(Monitor *mon, const QDict *qdict)
{
    g_autoptr(COLOStatus) st = qmp_query_colo_status(NULL);
    COLOCheckpointStats *cs = st->stats;

    monitor_printf(mon, "COLO mode: %s (last: %s, exit reason: %s)\n",
                   COLOMode_str(st->mode), COLOMode_str(st->last_mode),
                   COLOExitReason_str(st->reason));
    monitor_printf(mon, "checkpoints: %" PRIu64 "\n", cs->checkpoints);
    monitor_printf(mon, "pause: last %" PRIu64 " us, mean %" PRIu64
                   " us, max %" PRIu64 " us\n",
                   cs->pause_last_us, cs->pause_mean_us, cs->pause_max_us);
    monitor_printf(mon, "bytes: last %" PRIu64 ", total %" PRIu64 "\n",
                   cs->bytes_last, cs->bytes_total);
    monitor_printf(mon, "dirty pages: last %" PRIu64 ", total %" PRIu64 "\n",
                   cs->pages_last, cs->pages_total);
    if (cs->has_received_last_us) {
        monitor_printf(mon, "secondary's ack: %" PRIu64 " us after the stop\n",
                       cs->received_last_us);
    }
    if (st->x_output) {
        COLOOutputStats *os = st->x_output;

        monitor_printf(mon, "checkpoints by cause: period %" PRIu64
                       ", output %" PRIu64 ", request %" PRIu64
                       "; in flight %" PRIu64 "\n", os->by_period,
                       os->by_output, os->by_request, os->in_flight);
        monitor_printf(mon, "output held: %" PRIu64 " packets, mean %" PRIu64
                       " us, max %" PRIu64 " us\n", os->held_packets,
                       os->hold_mean_us, os->hold_max_us);
    }
    monitor_printf(mon, "silence timeout: %u ms; peer %s (last heard %"
                   PRIu64 " ms ago)\n", st->x_liveness->silence_timeout,
                   st->x_liveness->peer_silent ? "silent" : "heard",
                   st->x_liveness->quiet_ms);
    monitor_printf(mon, "lease: %s, %" PRIu64 " ms left%s (%s)\n",
                   COLOLeaseState_str(st->x_lease->state),
                   st->x_lease->remaining_ms,
                   st->x_lease->alone ? ", serving alone" : "",
                   st->x_lease->arbitrated ? "arbitrated" : "standalone");
}

void hmp_x_colo_checkpoint(Monitor *mon, const QDict *qdict)
{
    Error *err = NULL;

    qmp_x_colo_checkpoint(&err);
    hmp_handle_error(mon, err);
}
