/*
 * COLO secondary: receive and load checkpoints.
 *
 * Once the initial migration has been loaded, the incoming coroutine hands
 * over to a thread that reads checkpoints from the primary.  In periodic
 * mode the SVM does not run: it stands at the last loaded checkpoint, its
 * output silent, until a failover starts it.  A checkpoint is received
 * whole and checked before anything of it is applied (ram-cache.c), and it
 * is acknowledged twice: RECEIVED once it is held whole (the primary may
 * then release the output it covers: the secondary will load it even if
 * the primary dies now) and LOADED once the SVM stands at it.
 *
 * Standing at a checkpoint means its RAM and disks: every checkpoint
 * carries the whole device state, and the SVM does not run between
 * checkpoints, so only the last device state matters, and only once the
 * SVM is to run.  It is kept, and loaded into the devices at failover.
 * On the way, the latest one is loaded once COLO_DEVICE_LOAD_INTERVAL_US
 * have passed since the last load, and at a heartbeat (the primary has
 * nothing to send): a device state that will not load is found while the
 * primary serves, unless a newer one that loads replaces it first, and
 * the newer one is what a failover would load.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qemu/bswap.h"
#include "qemu/coroutine.h"
#include "qemu/main-loop.h"
#include "qemu/timer.h"
#include "qemu/rcu.h"
#include "qemu/units.h"
#include "block/aio.h"
#include "io/channel-buffer.h"
#include "block/replication.h"
#include "exec/memory.h"
#include "system/runstate.h"
#include "system/system.h"
#include "migration/colo.h"
#include "migration/failover.h"
#include "migration/migration.h"
#include "migration/options.h"
#include "migration/qemu-file.h"
#include "migration/savevm.h"
#include "colo-internal.h"
#include "fencing.h"
#include "heartbeat.h"
#include "protocol.h"
#include "ram.h"
#include "trace.h"

typedef struct ColoSecondary {
    QEMUFile *from;             /* forward channel */
    QEMUFile *to;               /* return channel */
    Coroutine *co;              /* the incoming coroutine, parked */
    QemuThread thread;
    ColoBuf msg;                /* the message being received */
    uint64_t checkpoint_max;    /* the longest checkpoint this VM can have */
    uint64_t loaded;            /* last checkpoint the SVM stands at */
    ColoBuf devices;            /* its device state, if not loaded yet */
    bool devices_pending;       /* devices stand behind c->loaded */
    int64_t devices_loaded_us;  /* when the devices were last loaded */
    GByteArray *layout;         /* the RAM layout agreed at HELLO */
    bool shutdown;              /* the primary's guest shut down */
    bool unusable;              /* the SVM or its disks are inconsistent */
    bool primary_alone;         /* the primary carries on without us */
    bool cut_off;               /* silent primary: the operator decides */
    Error *err;
    Error *disk_err;            /* the disks could not fail over */
} ColoSecondary;

/*
 * The longest device state a checkpoint may carry: far above what
 * devices serialise (their RAM travels as RAM), far below what would let
 * a broken stream exhaust this host's memory.
 */
#define COLO_DEVICE_STATE_MAX (256 * MiB)

/*
 * While checkpoints come, the latest device state is loaded once this
 * long has passed since the last load (and at a heartbeat when they stop
 * coming, and at failover).  Loading them costs about a millisecond
 * (a machine reset and every device's state), which back-to-back
 * checkpoints would pay hundreds of times a second for nothing.
 */
#define COLO_DEVICE_LOAD_INTERVAL_US (100 * 1000)

static bool colo_secondary_load_devices(const uint8_t *buf, size_t len,
                                        Error **errp)
{
    g_autoptr(QIOChannelBuffer) bioc = qio_channel_buffer_new(len);
    g_autoptr(QEMUFile) f = NULL;
    int ret;

    memcpy(bioc->data, buf, len);
    bioc->usage = len;
    f = qemu_file_new_input(QIO_CHANNEL(bioc));
    ret = qemu_load_device_state(f);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "COLO: loading the device state failed");
        return false;
    }
    return true;
}

/*
 * Checkpoints name RAM blocks by their index in the layout agreed at
 * HELLO.  RAM hot-plugged or unplugged on the SVM since (BQL held: only
 * the main loop changes the layout) would shift the indices and send a
 * checkpoint's pages to the wrong blocks.
 */
static bool colo_secondary_layout_unchanged(ColoSecondary *c, Error **errp)
{
    if (!colo_ram_layout_check(c->layout->data, c->layout->len, errp)) {
        error_prepend(errp, "the SVM's RAM changed since COLO started, it "
                      "can no longer follow the primary: ");
        return false;
    }
    return true;
}

/*
 * Bring the devices to the device state kept last (BQL held).  Devices
 * load their state into a freshly reset machine, as on any incoming
 * migration: some set up memory mappings or timers on load that must not
 * be set up twice.  The reset leaves RAM alone on a secondary in COLO
 * (patches/reset-colo-secondary-keeps-ram.patch), so it may come after
 * the checkpoints' RAM was flushed.
 */
static bool colo_secondary_load(ColoSecondary *c, Error **errp)
{
    int64_t t_start = qemu_clock_get_us(QEMU_CLOCK_REALTIME);
    bool ok;

    /*
     * The reset unmaps what the load maps again (BARs, ROM aliases, the
     * APIC's page): one memory transaction makes that one update of the
     * address spaces instead of dozens, about a third of the load.
     * Meanwhile accesses see the map of the last checkpoint, whose RAM is
     * where this one's is.
     */
    memory_region_transaction_begin();
    qemu_system_reset(SHUTDOWN_CAUSE_NONE);
    ok = colo_secondary_load_devices(c->devices.data, c->devices.len, errp);
    memory_region_transaction_commit();
    c->devices_pending = false;
    c->devices_loaded_us = qemu_clock_get_us(QEMU_CLOCK_REALTIME);
    trace_colo_devices_loaded(c->loaded, c->devices.len,
                              c->devices_loaded_us - t_start);
    return ok;
}

/*
 * Load the devices if they stand behind the RAM.  A device state that
 * does not load leaves the SVM unusable: its RAM is a checkpoint ahead.
 */
static bool colo_secondary_load_pending(ColoSecondary *c, Error **errp)
{
    bool ok;

    if (!c->devices_pending) {
        return true;
    }
    bql_lock();
    ok = colo_secondary_load(c, errp);
    bql_unlock();
    if (!ok) {
        error_prepend(errp, "the SVM is inconsistent and will not run: ");
        c->unusable = true;
    }
    return ok;
}

static bool colo_secondary_checkpoint(ColoSecondary *c, uint64_t seq,
                                      Error **errp)
{
    ERRP_GUARD();
    const uint8_t *body = c->msg.data;
    uint64_t len = c->msg.len, ram_len, dev_len;
    ColoRamStats ram_stats;
    Error *ack_err = NULL;
    int64_t t_start;
    bool ok;

    if (seq != c->loaded + 1) {
        error_setg(errp, "COLO: checkpoint %" PRIu64 " arrived after %" PRIu64,
                   seq, c->loaded);
        return false;
    }
    ram_len = len < 8 ? 0 : ldq_be_p(body);
    if (len < 8 || ram_len > len - 8) {
        error_setg(errp, "COLO checkpoint %" PRIu64 " is malformed", seq);
        return false;
    }
    if (!colo_ram_cache_check(body + 8, ram_len, errp)) {
        return false;
    }
    dev_len = len - 8 - ram_len;
    if (dev_len > COLO_DEVICE_STATE_MAX) {
        error_setg(errp, "COLO checkpoint %" PRIu64 " carries %" PRIu64
                   " bytes of device state, more than a VM has", seq,
                   dev_len);
        return false;
    }
    /*
     * Room for its device state, before anything of it is applied; the
     * kept one stays as it is until then.
     */
    if (dev_len > c->devices.size) {
        size_t kept = c->devices.len;

        if (!colo_buf_resize(&c->devices, dev_len, errp)) {
            return false;
        }
        c->devices.len = kept;
    }
    /*
     * The disks move to this checkpoint before it is acknowledged: the
     * primary holds its next writes until RECEIVED.
     */
    bql_lock();
    if (!colo_secondary_layout_unchanged(c, errp)) {
        bql_unlock();
        /* Still whole at the last checkpoint, but it cannot go on. */
        c->unusable = true;
        return false;
    }
    replication_do_checkpoint_all(errp);
    bql_unlock();
    if (*errp) {
        error_prepend(errp, "the SVM's disks are inconsistent: ");
        c->unusable = true;
        return false;
    }
    /*
     * The disks stand at this checkpoint now: it is committed, and the
     * SVM must reach it too, acknowledged or not.  A failed RECEIVED
     * (the primary died, or a failover request shut the channel) ends
     * COLO once it is loaded.
     */
    colo_msg_send_empty(c->to, COLO_MSG_RECEIVED, seq, &ack_err);

    t_start = qemu_clock_get_us(QEMU_CLOCK_REALTIME);
    bql_lock();
    ok = colo_secondary_layout_unchanged(c, errp);
    if (ok) {
        /* Room was made above: this only sets the length. */
        colo_buf_resize(&c->devices, dev_len, &error_abort);
        if (dev_len) {
            memcpy(c->devices.data, body + 8 + ram_len, dev_len);
        }
        c->devices_pending = true;
        colo_ram_cache_flush(body + 8, ram_len, &ram_stats);
    }
    bql_unlock();
    if (!ok) {
        /* Disks at this checkpoint, RAM not: this SVM cannot take over. */
        error_prepend(errp, "the SVM is inconsistent and will not run: ");
        error_free(ack_err);
        c->unusable = true;
        return false;
    }
    c->loaded = seq;
    if (t_start - c->devices_loaded_us >= COLO_DEVICE_LOAD_INTERVAL_US &&
        !colo_secondary_load_pending(c, errp)) {
        error_free(ack_err);
        return false;
    }
    colo_stats_add(qemu_clock_get_us(QEMU_CLOCK_REALTIME) - t_start,
                   len + COLO_MSG_HEADER_SIZE + COLO_MSG_TRAILER_SIZE,
                   ram_stats.pages, 0);
    trace_colo_checkpoint_loaded(seq, len, ram_stats.pages);
    if (ack_err) {
        error_propagate(errp, ack_err);
        return false;
    }
    return colo_msg_send_empty(c->to, COLO_MSG_LOADED, seq, errp);
}

/*
 * Did the stream end (closed, reset, shut down by a failover request),
 * rather than carry a message that makes no sense?
 */
static bool colo_secondary_stream_ended(ColoSecondary *c)
{
    return qemu_file_get_error(c->from) || qemu_file_get_error(c->to);
}

/*
 * An acknowledgement could not be sent: the connection is gone, but what
 * the primary sent before it closed may still wait to be read.  A
 * primary that left COLO and serves on said so (ERROR) before closing,
 * and must not be taken for dead.  The reads return at once: the
 * connection is closed or reset.
 */
static void colo_secondary_read_last_word(ColoSecondary *c)
{
    ColoMsgHeader hdr;

    /* What a closed connection still holds: a few messages at most. */
    for (int i = 0; i < 16 &&
         colo_msg_recv(c->from, &hdr, &c->msg, c->checkpoint_max, NULL); i++) {
        if (hdr.type == COLO_MSG_ERROR) {
            error_free(c->err);
            c->err = NULL;
            error_setg(&c->err, "COLO primary left: %.*s",
                       (int)MIN(c->msg.len, INT_MAX),
                       (const char *)c->msg.data);
            c->primary_alone = true;
            return;
        }
        if (hdr.type == COLO_MSG_SHUTDOWN) {
            c->shutdown = true;
            return;
        }
    }
}

/*
 * Cut off from the primary: only an operator who has made sure that the
 * primary is dead may make this side take over (x-colo-lost-heartbeat),
 * or, in a pair with an arbiter, the arbiter's lease (x-colo-lease-grant).
 * The SVM and its disks stay at the last checkpoint meanwhile.
 */
static void colo_secondary_wait_for_operator(ColoSecondary *c)
{
    trace_colo_secondary_cut_off(c->loaded);
    colo_heartbeat_declare_silent();
    while (failover_get_state() != FAILOVER_STATUS_REQUIRE) {
        qemu_sem_wait(&colo_state.kick);
    }
}

static void *colo_secondary_thread(void *opaque)
{
    ColoSecondary *c = opaque;
    g_autoptr(GByteArray) hello = g_byte_array_new();
    struct iovec iov;
    bool running = true;
    bool death;

    /* RAM blocks, FlatViews and virtio's caches are read under RCU here. */
    rcu_register_thread();

    /*
     * Protect the disks before the primary may write them (HELLO).  The
     * block graph is changed outside the incoming coroutine.
     */
    bql_lock();
    replication_start_all(REPLICATION_MODE_SECONDARY, &c->err);
    bql_unlock();
    if (c->err) {
        /* Nothing protects this SVM's disks: it must never run. */
        c->unusable = true;
        running = false;
    } else {
        colo_ram_layout_encode(hello);
        c->layout = hello;
        iov.iov_base = hello->data;
        iov.iov_len = hello->len;
        running = colo_msg_send(c->to, COLO_MSG_HELLO, 0, &iov, 1, &c->err);
    }

    while (running) {
        ColoMsgHeader hdr;

        if (!colo_msg_recv(c->from, &hdr, &c->msg, c->checkpoint_max,
                           &c->err)) {
            break;
        }
        switch (hdr.type) {
        case COLO_MSG_CHECKPOINT:
            running = colo_secondary_checkpoint(c, hdr.seq, &c->err);
            break;
        case COLO_MSG_HEARTBEAT:
            if (hdr.seq != c->loaded) {
                error_setg(&c->err, "COLO: heartbeat about checkpoint %"
                           PRIu64 " while the SVM stands at %" PRIu64,
                           hdr.seq, c->loaded);
                running = false;
                break;
            }
            /*
             * The primary has nothing to send: the time to load devices
             * that stand behind, so that an idle pair finds a device
             * state that will not load within a heartbeat.
             */
            running = colo_secondary_load_pending(c, &c->err) &&
                      colo_msg_send_empty(c->to, COLO_MSG_HEARTBEAT,
                                          c->loaded, &c->err);
            break;
        case COLO_MSG_SHUTDOWN:
            c->shutdown = true;
            running = false;
            break;
        case COLO_MSG_ERROR:
            error_setg(&c->err, "COLO primary failed: %.*s",
                       (int)MIN(c->msg.len, INT_MAX),
                       (const char *)c->msg.data);
            c->primary_alone = true;
            running = false;
            break;
        default:
            error_setg(&c->err, "COLO: unexpected %s message from the primary",
                       colo_msg_name(hdr.type));
            running = false;
            break;
        }
    }
    /* Judged as the stream ended, before the reads below. */
    death = colo_heartbeat_end_is_death();
    if (!c->shutdown && !c->primary_alone && !c->unusable &&
        qemu_file_get_error(c->to) && !qemu_file_get_error(c->from)) {
        colo_secondary_read_last_word(c);
    }
    if (!c->shutdown && !c->primary_alone && !c->unusable) {
        /* This SVM may run from now on: its devices too at c->loaded. */
        Error *load_err = NULL;

        if (!colo_secondary_load_pending(c, &load_err)) {
            error_free(c->err);
            c->err = load_err;
        }
    }
    if (c->shutdown || c->primary_alone || c->unusable) {
        /* decided by the primary's word, or by this SVM's state */
    } else if (!colo_secondary_stream_ended(c)) {
        /*
         * A well-framed stream that is wrong (checksum, type, order,
         * bounds) comes from a primary that is alive: it serves on alone,
         * and this side must not take over.
         */
        c->primary_alone = true;
        colo_msg_send_error(c->to, c->loaded, c->err);
    } else if (failover_get_state() != FAILOVER_STATUS_REQUIRE &&
               (!death || colo_state.arbitrated)) {
        /*
         * The stream ended, but the primary went silent, or this side was
         * frozen or waited long just before: the primary may well be
         * alive and serving.  With an arbiter, only its lease hands over.
         */
        c->cut_off = true;
    }
    if (c->unusable && !c->primary_alone) {
        /* The primary must not wait for us, nor count on us. */
        colo_msg_send_error(c->to, c->loaded, c->err);
    }
    if (c->shutdown || c->unusable || c->primary_alone) {
        /* Decided: a failover request from now on is refused. */
        colo_state_mark_down();
    } else if (c->cut_off) {
        colo_secondary_wait_for_operator(c);
    }
    /*
     * The disks leave COLO here, outside the incoming coroutine: on a
     * failover, back at the last checkpoint and the SVM's own.
     */
    bql_lock();
    if (c->shutdown || c->unusable || c->primary_alone) {
        replication_stop_all(false, NULL);
    } else {
        replication_stop_all(true, &c->disk_err);
        if (c->disk_err) {
            /* The disks are not back at the checkpoint: no takeover. */
            colo_state_mark_down();
        }
    }
    bql_unlock();
    rcu_unregister_thread();
    aio_co_schedule(qemu_get_aio_context(), c->co);
    return NULL;
}

void colo_secondary_run(MigrationIncomingState *mis)
{
    ColoSecondary c = {
        .from = mis->from_src_file,
        .co = qemu_coroutine_self(),
        /* RAM records, and as much again for the device state at most */
        .checkpoint_max = colo_ram_checkpoint_max() + COLO_DEVICE_STATE_MAX,
    };
    COLOExitReason reason;
    Error *gate_err = NULL;

    if (!mis->to_src_file) {
        mis->to_src_file = qemu_file_get_return_path(c.from);
    }
    c.to = mis->to_src_file;
    /* The loop blocks in its own thread, not in this coroutine. */
    qemu_file_set_blocking(c.from, true);
    qio_channel_set_delay(qemu_file_get_ioc(c.to), false);

    runstate_set(RUN_STATE_COLO);
    migrate_set_state(&mis->state, MIGRATION_STATUS_ACTIVE,
                      MIGRATION_STATUS_COLO);
    colo_state_enter(COLO_MODE_SECONDARY, c.to, c.from);

    qemu_thread_create(&c.thread, MIGRATION_THREAD_DST_COLO,
                       colo_secondary_thread, &c, QEMU_THREAD_JOINABLE);
    qemu_coroutine_yield();
    qemu_thread_join(&c.thread);
    colo_buf_free(&c.msg);
    colo_buf_free(&c.devices);

    if (c.shutdown || c.unusable || c.primary_alone) {
        /*
         * The pair's guest powered off, this SVM is not a consistent
         * checkpoint, or the primary carries on alone: it must not run.
         * The incoming migration stays parked here; a shut-down pair ends
         * this QEMU too.
         */
        colo_state_exit(c.shutdown ? COLO_EXIT_REASON_REQUEST
                                   : COLO_EXIT_REASON_ERROR, c.err);
        if (c.shutdown) {
            qemu_system_shutdown_request(SHUTDOWN_CAUSE_GUEST_SHUTDOWN);
        }
        qemu_coroutine_yield();
        return;
    }
    /*
     * Failover, asked for or because the replication stream is gone: take
     * over from the last loaded checkpoint.  The incoming migration
     * finishes as usual from here, which starts the SVM (or leaves it
     * paused under -S).
     */
    reason = colo_failover_begin(&c.err);
    if (c.disk_err) {
        /* A disk not back at the checkpoint: running would corrupt it. */
        error_prepend(&c.disk_err, "failover aborted, the SVM will not run: ");
        error_free(c.err);
        colo_state_exit(COLO_EXIT_REASON_ERROR, c.disk_err);
        colo_failover_end();
        qemu_coroutine_yield();
        return;
    }
    if (colo_state.arbitrated && !colo_fencing_serve_alone(&gate_err)) {
        /* Its output could not be held to the lease: it must not run. */
        error_prepend(&gate_err, "failover aborted, the SVM will not run: ");
        error_free(c.err);
        colo_state_exit(COLO_EXIT_REASON_ERROR, gate_err);
        colo_failover_end();
        qemu_coroutine_yield();
        return;
    }
    colo_state_exit(reason, c.err);
    migrate_set_state(&mis->state, MIGRATION_STATUS_COLO,
                      MIGRATION_STATUS_ACTIVE);
    colo_failover_end();
}
