/*
 * COLO primary: the periodic checkpoint loop.
 *
 * Runs in the migration thread once the initial migration has reached
 * COLO state.  Each checkpoint stops the VM only for as long as it takes
 * to copy the pages dirtied since the last pre-copy pass and serialise the
 * device state into a buffer; the VM resumes before the buffer is sent.
 * While it waits for the next checkpoint, the thread pre-copies dirty
 * pages every few milliseconds (ram-capture.c).  The next checkpoint starts
 * once the secondary has loaded this one and the period has elapsed, or
 * at once when one is requested.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qapi/qapi-events-run-state.h"
#include "qemu/bswap.h"
#include "qemu/iov.h"
#include "qemu/units.h"
#include "qemu/main-loop.h"
#include "qemu/timer.h"
#include "io/channel-buffer.h"
#include "block/replication.h"
#include "system/runstate.h"
#include "system/system.h"
#include "migration/colo.h"
#include "migration/migration.h"
#include "migration/options.h"
#include "migration/qemu-file.h"
#include "migration/savevm.h"
#include "net/colo-output.h"
#include "colo-internal.h"
#include "fencing.h"
#include "heartbeat.h"
#include "protocol.h"
#include "ram.h"
#include "trace.h"

typedef struct ColoPrimary {
    MigrationState *s;
    QEMUFile *to;               /* forward channel */
    QEMUFile *from;             /* return channel */
    ColoAcks acks;              /* checkpoints sent and acknowledged */
    ColoBuf ram;                /* RAM records as captured */
    ColoRamStats ram_stats;     /* of the records in ram */
    ColoRamCapture *capture;
    ColoBuf sent;               /* RAM records as sent, if rewritten */
    ColoRamDelta *delta;        /* what the secondary holds */
    int64_t precopy_due_us;     /* the next pre-copy pass */
    int64_t output_not_before_us; /* a busy guest's output waits for this */
    ColoBuf reply;              /* last message from the secondary */
    bool resumed;               /* COLO gave the VM its run state back */
} ColoPrimary;

/*
 * Serialise the device state (BQL held, VM stopped) into a buffer; the
 * returned file must stay open while the buffer is used, since closing
 * it frees the buffer.
 */
static QEMUFile *colo_primary_save_devices(QIOChannelBuffer *bioc,
                                           Error **errp)
{
    QEMUFile *f = qemu_file_new_output(QIO_CHANNEL(bioc));
    int ret;

    ret = qemu_save_device_state(f);
    if (!ret) {
        ret = qemu_fflush(f);
    }
    if (ret) {
        error_setg_errno(errp, -ret, "COLO: saving the device state failed");
        qemu_fclose(f);
        return NULL;
    }
    return f;
}

/*
 * Read the secondary's messages until @type about checkpoint @seq.  On the
 * way, acknowledgements of earlier checkpoints are recorded: the LOADED of
 * a checkpoint comes after the primary went on at its RECEIVED.
 */
static bool colo_primary_await(ColoPrimary *p, ColoMsgType type,
                               uint64_t seq, Error **errp)
{
    ColoMsgHeader hdr;

    for (;;) {
        if ((type == COLO_MSG_RECEIVED && p->acks.received >= seq) ||
            (type == COLO_MSG_LOADED && p->acks.loaded >= seq)) {
            return true;
        }
        /* Only control messages come this way: no checkpoint. */
        if (!colo_msg_recv(p->from, &hdr, &p->reply, 0, errp)) {
            return false;
        }
        if (hdr.type == COLO_MSG_ERROR) {
            error_setg(errp, "COLO peer failed: %.*s", (int)p->reply.len,
                       (const char *)p->reply.data);
            return false;
        }
        if (hdr.type == COLO_MSG_RECEIVED || hdr.type == COLO_MSG_LOADED) {
            if (!colo_acks_take(&p->acks, hdr.type, hdr.seq, errp)) {
                return false;
            }
            colo_stats_set_in_flight(p->acks.sent - p->acks.loaded);
            continue;
        }
        if (hdr.type != type || hdr.seq != seq) {
            error_setg(errp, "COLO expected %s %" PRIu64 ", got %s %" PRIu64,
                       colo_msg_name(type), seq, colo_msg_name(hdr.type),
                       hdr.seq);
            return false;
        }
        return true;
    }
}

/*
 * Stop and drain as @state, with a STOP event if @announce.  The drain
 * waits for writes to the secondary's disk too: a wait on the secondary,
 * which the heartbeat bounds (a silent secondary's NBD connection is
 * yanked).
 */
static void colo_primary_stop_drain(RunState state, bool announce)
{
    colo_heartbeat_wait_begin();
    vm_stop_drain(state, announce);
    colo_heartbeat_wait_end();
}

/*
 * Pre-copy passes run this often between checkpoints, and not when one is
 * due sooner than the margin: the stop would copy as much.
 */
#define COLO_PRECOPY_INTERVAL_US 10000
#define COLO_PRECOPY_MARGIN_US 3000

/* Start the next checkpoint's RAM part. */
static void colo_primary_ram_reset(ColoPrimary *p, int64_t now)
{
    p->ram.len = 0;
    memset(&p->ram_stats, 0, sizeof(p->ram_stats));
    p->precopy_due_us = now + COLO_PRECOPY_INTERVAL_US;
}

/*
 * A busy guest's checkpoints are spaced.  When the next checkpoint's
 * output was held before this one was safe, the guest answers faster than
 * checkpoints complete: its requests queue in the guest, and a checkpoint
 * at once would shorten no reply's wait, only the VM's run.  So the
 * output of a busy guest waits until the VM has run nine times its last
 * pause (stopped a tenth of the time at most), and no more than
 * COLO_BUSY_WAIT_MAX_US.  A guest that answers one request at a time has
 * held nothing by then, and its next reply is checkpointed at once.
 */
#define COLO_BUSY_RUN_PER_PAUSE 9
#define COLO_BUSY_WAIT_MAX_US 3000

static void colo_primary_pace(ColoPrimary *p, uint64_t seq, int64_t t_stop,
                              int64_t t_resume)
{
    int64_t wait_us;

    if (!qatomic_read(&colo_state.output_due_us)) {
        p->output_not_before_us = 0;
        return;
    }
    wait_us = MIN((t_resume - t_stop) * COLO_BUSY_RUN_PER_PAUSE,
                  COLO_BUSY_WAIT_MAX_US);
    p->output_not_before_us = t_resume + wait_us;
    trace_colo_checkpoint_busy(seq, wait_us);
}

static bool colo_primary_checkpoint(ColoPrimary *p, ColoCheckpointCause cause,
                                    Error **errp)
{
    ERRP_GUARD();
    g_autoptr(QIOChannelBuffer) bioc = qio_channel_buffer_new(256 * KiB);
    g_autoptr(QEMUFile) devices = NULL;
    ColoRamStats ram_stats;
    ColoOutputHoldTimes held = { 0 };
    bool was_live, ok;
    int64_t t_stop, t_stopped, t_ram = 0, t_devices = 0, t_resume, t_received;
    struct iovec iov[3];
    const ColoBuf *ram;
    uint64_t ram_len;
    uint64_t seq = p->acks.sent + 1;

    /*
     * The secondary may still be loading the previous checkpoint; one
     * more may be on its way, not two (colo_acks_may_send()).
     */
    while (!colo_acks_may_send(&p->acks)) {
        if (!colo_primary_await(p, COLO_MSG_LOADED, p->acks.loaded + 1,
                                errp)) {
            return false;
        }
    }

    bql_lock();
    t_stop = qemu_clock_get_us(QEMU_CLOCK_REALTIME);
    was_live = runstate_is_live(runstate_get());
    /*
     * Stop and drain, even a VM that is not running: a write of this
     * epoch must have reached both sides before the secondary takes the
     * checkpoint.  Completed is enough, durable is not needed: no flush.
     * Nor is the stop announced: it is a step of the checkpoint, not a
     * change of run state (vm_stop_drain()).  A "stop" or "cont" while
     * it holds the VM is announced at once (colo_stop_request()).
     */
    colo_state.checkpoint_stopped_live = was_live;
    colo_primary_stop_drain(RUN_STATE_COLO, false);
    t_stopped = qemu_clock_get_us(QEMU_CLOCK_REALTIME);
    trace_colo_checkpoint_stop(seq);
    /*
     * A write the secondary missed is known now, and ends COLO before
     * this checkpoint.
     */
    replication_get_error_all(errp);
    ok = !*errp &&
         colo_ram_capture(p->capture, &p->ram, &p->ram_stats, errp);
    if (ok) {
        t_ram = qemu_clock_get_us(QEMU_CLOCK_REALTIME);
        devices = colo_primary_save_devices(bioc, errp);
        ok = devices != NULL;
        t_devices = qemu_clock_get_us(QEMU_CLOCK_REALTIME);
    }
    /*
     * Output so far is this checkpoint's; from now on, the next one's.
     * The same goes for disk writes: the VM's writes so far have all
     * reached the secondary (stopping drained them), the next ones wait
     * until the secondary holds this checkpoint.
     */
    colo_output_seal();
    if (ok) {
        replication_hold_writes_all();
    }
    /*
     * The next checkpoint captures whatever the VM does from here on;
     * whatever it emits meanwhile is held until this one is safe.
     */
    colo_state.checkpoint_stopped_live = false;
    if (colo_state_take_run_state(runstate_get()) == RUN_STATE_PAUSED) {
        /* "stop" came while the VM was stopped for this checkpoint. */
        runstate_set(RUN_STATE_PAUSED);
    } else if (was_live) {
        vm_start_unannounced();
    }
    t_resume = qemu_clock_get_us(QEMU_CLOCK_REALTIME);
    bql_unlock();
    if (!ok) {
        return false;
    }
    trace_colo_checkpoint_resume(seq, t_resume - t_stop, t_stopped - t_stop,
                                 t_ram - t_stopped, t_devices - t_ram,
                                 t_resume - t_devices);

    /* Pages as changes of what the secondary holds; the length first. */
    p->sent.len = 0;
    ram = colo_ram_delta_encode(p->delta, p->ram.data, p->ram.len, &p->sent)
          ? &p->sent : &p->ram;
    ram_len = cpu_to_be64(ram->len);
    iov[0].iov_base = &ram_len;
    iov[0].iov_len = sizeof(ram_len);
    iov[1].iov_base = ram->data;
    iov[1].iov_len = ram->len;
    iov[2].iov_base = bioc->data;
    iov[2].iov_len = bioc->usage;
    if (!colo_msg_send(p->to, COLO_MSG_CHECKPOINT, seq, iov, 3, errp)) {
        return false;
    }
    ram_stats = p->ram_stats;
    colo_primary_ram_reset(p, t_resume);
    colo_acks_sent(&p->acks, seq);
    colo_stats_set_in_flight(p->acks.sent - p->acks.loaded);
    if (!colo_primary_await(p, COLO_MSG_RECEIVED, seq, errp)) {
        return false;
    }
    t_received = qemu_clock_get_us(QEMU_CLOCK_REALTIME);
    /* Not under the BQL: a drain in the main loop may be waiting for it. */
    replication_release_writes_all();
    bql_lock();
    colo_output_release(&held);
    bql_unlock();
    colo_primary_pace(p, seq, t_stop, t_resume);
    /*
     * Pipelined: the next checkpoint may be captured while the secondary
     * loads this one; its LOADED is read on the way to the next RECEIVED.
     */
    colo_stats_add(t_resume - t_stop,
                   iov_size(iov, 3) + COLO_MSG_HEADER_SIZE +
                   COLO_MSG_TRAILER_SIZE,
                   ram_stats.pages, t_received - t_stop);
    colo_stats_add_output(cause, held.packets, held.total_us, held.max_us);
    trace_colo_checkpoint_done(seq, iov_size(iov, 3), ram_stats.pages,
                               ram_stats.precopied, t_received - t_stop);
    return true;
}

/* Nothing else to say for a while: HEARTBEAT, and the secondary's answer. */
static bool colo_primary_heartbeat(ColoPrimary *p, Error **errp)
{
    return colo_msg_send_empty(p->to, COLO_MSG_HEARTBEAT, p->acks.sent,
                               errp) &&
           colo_primary_await(p, COLO_MSG_HEARTBEAT, p->acks.sent, errp);
}

/* Whether a checkpoint is due at @now, and why. */
static bool colo_primary_due(int64_t now, int64_t period_due,
                             int64_t output_due, ColoCheckpointCause *cause)
{
    if (qatomic_xchg(&colo_state.checkpoint_requested, false)) {
        *cause = COLO_CAUSE_REQUEST;
    } else if (output_due && now >= output_due) {
        *cause = COLO_CAUSE_OUTPUT;
    } else if (now >= period_due) {
        *cause = COLO_CAUSE_PERIOD;
    } else {
        return false;
    }
    return true;
}

/*
 * Wait until the next checkpoint is due: the period since the start of
 * the previous one has elapsed, output is held (x-colo-output-delay), or
 * one was requested.  Meanwhile, keep the secondary hearing from us, and
 * hear from it.  Returns false when COLO is to end instead, with @errp set
 * if the secondary failed us.  Times are in microseconds: an output-driven
 * checkpoint is due a millisecond or so after the reply it covers, which
 * a wait in whole milliseconds would double.
 */
static bool colo_primary_wait(ColoPrimary *p, int64_t last_start_us,
                              ColoCheckpointCause *cause, Error **errp)
{
    for (;;) {
        int64_t now = qemu_clock_get_us(QEMU_CLOCK_REALTIME);
        int64_t due = last_start_us +
                      (int64_t)migrate_checkpoint_delay() * 1000;
        int64_t output_due = qatomic_read(&colo_state.output_due_us);
        /* The heartbeat counts every message as a word. */
        int64_t beat = now + (colo_heartbeat_interval_ms() -
                              (int64_t)colo_heartbeat_quiet_ms()) * 1000;
        int64_t wait_us;

        if (qatomic_read(&colo_state.exit_requested)) {
            return false;
        }
        if (output_due && !qatomic_read(&colo_state.output_pressure)) {
            output_due = MAX(output_due, p->output_not_before_us);
        }
        if (colo_primary_due(now, due, output_due, cause)) {
            /* Output held from here on is this checkpoint's, or after. */
            qatomic_set(&colo_state.output_due_us, 0);
            qatomic_set(&colo_state.output_pressure, false);
            return true;
        }
        if (now >= beat) {
            if (!colo_primary_heartbeat(p, errp)) {
                return false;
            }
            continue;
        }
        if (output_due) {
            due = MIN(due, output_due);
        }
        if (now >= p->precopy_due_us) {
            if (due - now >= COLO_PRECOPY_MARGIN_US && runstate_is_running()) {
                colo_ram_precopy(p->capture, &p->ram, &p->ram_stats);
            }
            p->precopy_due_us = now + COLO_PRECOPY_INTERVAL_US;
            continue;
        }
        wait_us = MIN(MIN(due, beat), p->precopy_due_us) - now;
        if (wait_us < 1000) {
            if (due - now < 1000) {
                /* Less than the semaphore's millisecond: sleep it out. */
                g_usleep(due - now);
                continue;
            }
            /*
             * A heartbeat or pre-copy pass may come a little late; held
             * output must not wait for it in an uninterruptible sleep.
             */
            wait_us = 1000;
        }
        /* x-checkpoint-delay is 32-bit unsigned: more than an int holds. */
        qemu_sem_timedwait(&colo_state.kick, MIN(wait_us / 1000, INT_MAX));
    }
}

/* Output of this epoch piles up: end the epoch now (BQL held). */
static void colo_primary_output_pressure(void)
{
    /* Due now: output-driven, whatever x-colo-output-delay says. */
    qatomic_set(&colo_state.output_pressure, true);
    qatomic_set(&colo_state.output_due_us,
                qemu_clock_get_us(QEMU_CLOCK_REALTIME));
    qemu_sem_post(&colo_state.kick);
}

/*
 * Output-driven checkpoints (x-colo-output-delay): the first packet held
 * in an epoch makes a checkpoint due that much later (BQL held).
 */
static void colo_primary_output_held(void)
{
    uint32_t delay = migrate_colo_output_delay();

    if (delay &&
        !qatomic_cmpxchg(&colo_state.output_due_us, 0,
                         qemu_clock_get_us(QEMU_CLOCK_REALTIME) + delay)) {
        qemu_sem_post(&colo_state.kick);
    }
}

static const ColoOutputHooks colo_primary_output_hooks = {
    .first_held = colo_primary_output_held,
    .pressure = colo_primary_output_pressure,
};

static bool colo_primary_start(ColoPrimary *p, Error **errp)
{
    ERRP_GUARD();
    bool ok;

    p->to = p->s->to_dst_file;
    /* x-colo excludes return-path: the return direction is COLO's. */
    p->from = qemu_file_get_return_path(p->to);
    if (!p->from) {
        error_setg(errp, "COLO: no return path to the secondary");
        return false;
    }
    /* Control messages are small and latency-bound: no Nagle. */
    qio_channel_set_delay(qemu_file_get_ioc(p->to), false);

    colo_state_enter(COLO_MODE_PRIMARY, p->to, p->from);
    p->capture = colo_ram_capture_new();
    p->delta = colo_ram_delta_new();
    colo_primary_ram_reset(p, qemu_clock_get_us(QEMU_CLOCK_REALTIME));
    if (qatomic_read(&colo_state.exit_requested)) {
        /* Cancelled between the migration's end and here. */
        error_setg(errp, "COLO: cancelled before it started");
        return false;
    }
    if (!colo_msg_expect(p->from, COLO_MSG_HELLO, 0, &p->reply, errp) ||
        !colo_ram_layout_check(p->reply.data, p->reply.len, errp)) {
        return false;
    }
    /*
     * The pair is in lock-step from here: the VM may run, held.  The
     * secondary protects its disks before it says HELLO, so the primary's
     * writes may reach them from now on.
     */
    bql_lock();
    replication_start_all(REPLICATION_MODE_PRIMARY, errp);
    ok = !*errp && colo_fencing_protected(errp) &&
         colo_output_start(&colo_primary_output_hooks, errp);
    if (ok) {
        /*
         * As it was before the migration: a paused VM stays paused, and
         * the one a "stop" or "cont" asked for since wins
         * (migrate_start_colo_process()).
         */
        vm_resume(colo_state_take_run_state(p->s->vm_old_state));
        p->resumed = true;
    }
    bql_unlock();
    return ok;
}

bool colo_primary_run(MigrationState *s)
{
    ColoPrimary p = { .s = s };
    Error *err = NULL;
    COLOExitReason reason;
    bool serving;

    if (colo_primary_start(&p, &err)) {
        int64_t start = qemu_clock_get_us(QEMU_CLOCK_REALTIME);
        ColoCheckpointCause cause;

        while (colo_primary_wait(&p, start, &cause, &err)) {
            start = qemu_clock_get_us(QEMU_CLOCK_REALTIME);
            if (!colo_primary_checkpoint(&p, cause, &err)) {
                break;
            }
        }
    }
    if (qatomic_read(&colo_state.cancel_requested)) {
        /* A channel error is only the wake-up the cancel caused. */
        error_free(err);
        err = NULL;
    } else if (colo_heartbeat_peer_silent()) {
        /* The channel error is the heartbeat's doing: say why. */
        error_free(err);
        err = NULL;
        error_setg(&err, "COLO: the secondary was silent for %u ms; the "
                   "primary serves on alone", migrate_colo_silence_timeout());
    }
    reason = colo_failover_begin(&err);
    /*
     * Whether this side goes on serving decides what becomes of the
     * output no checkpoint covers yet, and what the secondary is told.
     */
    serving = !qatomic_read(&colo_state.guest_shutdown) &&
              !qatomic_read(&colo_state.quitting);
    if (!serving) {
        /*
         * This QEMU goes away.  After a guest shutdown the secondary goes
         * too (best effort: it takes over otherwise); after a quit it
         * sees the stream end and takes over, from the last checkpoint.
         */
        if (qatomic_read(&colo_state.guest_shutdown)) {
            colo_msg_send_empty(p.to, COLO_MSG_SHUTDOWN, p.acks.sent, NULL);
        }
    } else {
        /*
         * This side carries on alone, whatever the cause (an error, a
         * cancel, a failover request): a secondary that can still hear
         * must not take over too.  A leave asked for shuts only the read
         * side at first (colo_state_interrupt()), so that this goes out.
         */
        g_autoptr(Error) why = NULL;

        if (!err) {
            error_setg(&why, "the primary left COLO (%s) and serves on",
                       qatomic_read(&colo_state.cancel_requested)
                       ? "migration cancelled" : "failover requested");
        }
        colo_msg_send_error(p.to, p.acks.sent, err ? err : why);
    }
    if (err) {
        migrate_set_error(s, err);
    }
    /*
     * Output held now is covered by no checkpoint the secondary is known
     * to hold.  A side that serves on stands behind it: release it.  A
     * side that goes away must not: the secondary takes over from a
     * checkpoint before it, and a client would have seen what the
     * survivor never did.
     */
    bql_lock();
    if (!serving) {
        /*
         * Stop the guest before its output is let loose: QEMU's exit
         * stops it only later, and what it sent meanwhile would reach
         * clients unheld.
         */
        colo_primary_stop_drain(RUN_STATE_SHUTDOWN, true);
    }
    /*
     * The replica first: a fence's stop then flushes only local disks,
     * never an NBD connection to a secondary that may be silent.  Held
     * output stays held meanwhile.
     */
    replication_stop_all(true, NULL);
    if (serving && colo_state.arbitrated) {
        /* Output no checkpoint covers goes by the arbiter's lease. */
        g_autoptr(Error) gate_err = NULL;

        if (!colo_fencing_serve_alone(&gate_err)) {
            /* No gate (COLO failed before its filters): fenced. */
            error_report_err(g_steal_pointer(&gate_err));
        }
    } else {
        colo_output_stop(serving);
    }
    bql_unlock();
    colo_state_exit(reason, err);
    colo_failover_end();
    /*
     * The VM did not move: this migration failed or was abandoned, never
     * "completed" (which would tell listeners, SPICE among them, that
     * the VM now runs on the other side).
     */
    migrate_set_state(&s->state, MIGRATION_STATUS_COLO,
                      reason == COLO_EXIT_REASON_ERROR
                      ? MIGRATION_STATUS_FAILED
                      : MIGRATION_STATUS_CANCELLING);
    if (p.from) {
        qemu_fclose(p.from);
    }
    colo_buf_free(&p.ram);
    colo_ram_capture_free(p.capture);
    colo_buf_free(&p.sent);
    colo_ram_delta_free(p.delta);
    colo_buf_free(&p.reply);
    qemu_sem_post(&colo_state.primary_exited);
    return p.resumed;
}
