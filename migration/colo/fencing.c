/*
 * COLO under an arbiter: the lease this QEMU holds, and fencing
 * (fencing.h; the rule is lease.h's).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qapi/qapi-commands-migration.h"
#include "qapi/qapi-events-migration.h"
#include "qemu/lockable.h"
#include "qemu/main-loop.h"
#include "qemu/timer.h"
#include "migration/colo.h"
#include "migration/failover.h"
#include "migration/options.h"
#include "net/colo-output.h"
#include "system/runstate.h"
#include "colo-internal.h"
#include "fencing.h"
#include "lease.h"
#include "trace.h"

/*
 * The lease is granted and read out-of-band, in the monitor's I/O thread
 * (x-colo-lease-grant, x-query-colo-lease), and judged in the main loop:
 * @lock guards it and the flags the grant reads.  What a grant starts
 * in the main loop (the gate of output held alone) goes by @gate_bh.
 */
static struct {
    QemuMutex lock;
    ColoLease lease;
    bool alone;                 /* serving alone: output goes by the lease */
    bool handed_over;           /* a secondary the arbiter handed over to */
    QEMUTimer *timer;           /* the next warning or lapse */
    QEMUBH *gate_bh;            /* judges held output after a grant */
    QEMUBH *stop_bh;            /* stops a fenced VM that was started */
    VMChangeStateEntry *vmstate;
} fc = {
    .lease = { .latest_ms = INT64_MIN },
};

static void __attribute__((__constructor__)) colo_fencing_init(void)
{
    qemu_mutex_init(&fc.lock);
}

/*
 * A clock that counts a suspended host's sleep too: a lease must not
 * outlive its time because the host slept through it.
 */
static int64_t colo_fencing_now(void)
{
#ifdef CLOCK_BOOTTIME
    struct timespec ts;

    if (clock_gettime(CLOCK_BOOTTIME, &ts) == 0) {
        return ts.tv_sec * 1000LL + ts.tv_nsec / 1000000;
    }
#endif
    return qemu_clock_get_ms(QEMU_CLOCK_REALTIME);
}

static void colo_fencing_stop_bh(void *opaque)
{
    vm_stop(RUN_STATE_COLO);
}

/* Whatever starts a fenced VM (the end of a migration, say), it stops. */
static void colo_fencing_vm_state(void *opaque, bool running, RunState state)
{
    if (running) {
        qemu_bh_schedule(fc.stop_bh);
    }
}

/*
 * This side served alone without a valid lease: the arbiter may have
 * handed over already.  Nothing it held may go, and it never serves again.
 */
static void colo_fencing_fenced(void)
{
    trace_colo_fencing_fence();
    colo_output_gate_update();
    if (runstate_is_live(runstate_get())) {
        vm_stop(RUN_STATE_COLO);
    } else if (runstate_check(RUN_STATE_PAUSED)) {
        /* "cont" refuses run state colo; it would resume a paused VM. */
        runstate_set(RUN_STATE_COLO);
    }
    fc.stop_bh = qemu_bh_new(colo_fencing_stop_bh, NULL);
    fc.vmstate = qemu_add_vm_change_state_handler(colo_fencing_vm_state,
                                                  NULL);
    qapi_event_send_x_colo_lease_lapsed(true);
}

static void colo_fencing_fence(void)
{
    bool fenced;

    qemu_mutex_lock(&fc.lock);
    fenced = fc.lease.fenced;
    colo_lease_fence(&fc.lease);
    qemu_mutex_unlock(&fc.lock);
    if (!fenced) {
        colo_fencing_fenced();
    }
}

/* What output that no checkpoint covers becomes, asked at every packet. */
static ColoOutputVerdict colo_fencing_judge(void)
{
    ColoLeaseGate gate;
    bool fenced;

    qemu_mutex_lock(&fc.lock);
    gate = colo_lease_gate(&fc.lease, colo_fencing_now());
    fenced = fc.lease.fenced;
    if (gate == COLO_LEASE_FENCE) {
        /* No grant may come between the verdict and the fence. */
        colo_lease_fence(&fc.lease);
    }
    qemu_mutex_unlock(&fc.lock);
    switch (gate) {
    case COLO_LEASE_RELEASE:
        return COLO_OUTPUT_PASS;
    case COLO_LEASE_HOLD:
        return COLO_OUTPUT_HOLD;
    case COLO_LEASE_FENCE:
        break;
    }
    if (!fenced) {
        colo_fencing_fenced();
    }
    return COLO_OUTPUT_DROP;
}

/* Lock held. */
static void colo_fencing_arm_locked(void)
{
    int64_t next = colo_lease_next_event_ms(&fc.lease);

    if (next == INT64_MAX || fc.lease.fenced) {
        timer_del(fc.timer);
        return;
    }
    /* The timer's clock is not the lease's: wait what is left on it. */
    timer_mod(fc.timer, qemu_clock_get_ms(QEMU_CLOCK_REALTIME) +
              MAX(next - colo_fencing_now(), 0));
}

static void colo_fencing_tick(void *opaque)
{
    int64_t now = colo_fencing_now();
    ColoLeaseEvent ev;
    int64_t remaining;
    bool alone, fenced;

    qemu_mutex_lock(&fc.lock);
    ev = colo_lease_tick(&fc.lease, now);
    remaining = colo_lease_remaining_ms(&fc.lease, now);
    alone = fc.alone;
    fenced = fc.lease.fenced;
    colo_fencing_arm_locked();
    qemu_mutex_unlock(&fc.lock);

    switch (ev) {
    case COLO_LEASE_EXPIRING:
        trace_colo_fencing_expiring(remaining);
        qapi_event_send_x_colo_lease_expiring(remaining);
        break;
    case COLO_LEASE_LAPSED:
        trace_colo_fencing_lapsed(alone);
        if (alone) {
            colo_fencing_fence();
        } else if (!fenced) {
            /* Every release is covered: the pair goes on. */
            qapi_event_send_x_colo_lease_lapsed(false);
        }
        break;
    case COLO_LEASE_QUIET:
        break;
    }
}

static void colo_fencing_gate_bh(void *opaque)
{
    colo_output_gate_update();
}

bool colo_fencing_serve_alone(Error **errp)
{
    qemu_mutex_lock(&fc.lock);
    fc.alone = true;
    qemu_mutex_unlock(&fc.lock);
    trace_colo_fencing_serve_alone();
    if (!colo_output_gate(colo_fencing_judge, errp)) {
        /* Output that cannot be gated must not go out at all. */
        colo_output_stop(false);
        colo_fencing_fence();
        return false;
    }
    return true;
}

bool colo_fencing_protected(Error **errp)
{
    QEMU_LOCK_GUARD(&fc.lock);

    if (fc.lease.fenced) {
        error_setg(errp, "COLO: this side is fenced, it cannot be protected "
                   "again");
        return false;
    }
    if (fc.alone && colo_lease_gate(&fc.lease, colo_fencing_now()) !=
        COLO_LEASE_RELEASE) {
        /*
         * What it holds is covered for the new secondary only: the
         * arbiter may still hand over to the old one.
         */
        error_setg(errp, "COLO: this side serves alone without a sole "
                   "lease; it can be protected again only once the arbiter "
                   "has made its lease sole");
        return false;
    }
    /* Protected again: the arbiter's record of it alone no longer holds. */
    fc.alone = false;
    fc.handed_over = false;
    fc.lease.sole = false;
    return true;
}

/* Out-of-band: no BQL, nothing that waits on the main loop. */
void qmp_x_colo_lease_grant(uint32_t validity_ms, int64_t clock_ms,
                            bool has_sole, bool sole, Error **errp)
{
    bool stayed_down;
    bool handover;
    bool alone;

    if (!migrate_colo_arbitrated()) {
        error_setg(errp, "A lease needs the migration capability "
                   "x-colo-arbitrated");
        return;
    }
    /* A secondary in COLO is handed over: it serves alone from then. */
    handover = get_colo_mode() == COLO_MODE_SECONDARY;
    if (handover) {
        colo_last_mode(&stayed_down);
        if (stayed_down) {
            error_setg(errp, "This secondary left COLO without taking over: "
                       "it cannot serve");
            return;
        }
    }
    WITH_QEMU_LOCK_GUARD(&fc.lock) {
        /* A secondary handed over serves alone: its lease is sole. */
        sole = handover || fc.handed_over || (has_sole && sole);
        if (!colo_lease_grant(&fc.lease, colo_fencing_now(), clock_ms,
                              validity_ms, sole, errp)) {
            return;
        }
        if (!fc.timer) {
            fc.timer = timer_new_ms(QEMU_CLOCK_REALTIME, colo_fencing_tick,
                                    NULL);
            fc.gate_bh = qemu_bh_new(colo_fencing_gate_bh, NULL);
        }
        colo_fencing_arm_locked();
        fc.handed_over |= handover;
        alone = fc.alone;
    }
    trace_colo_fencing_grant(validity_ms, sole, handover);
    if (handover) {
        failover_request_active(errp);
    } else if (alone) {
        qemu_bh_schedule(fc.gate_bh);
    }
}

/* Lock held. */
static COLOLease *colo_fencing_status_locked(void)
{
    COLOLease *st = g_new0(COLOLease, 1);
    int64_t now = colo_fencing_now();

    st->clock_ms = now;
    st->arbitrated = migrate_colo_arbitrated();
    st->alone = fc.alone;
    st->remaining_ms = colo_lease_remaining_ms(&fc.lease, now);
    if (fc.lease.fenced) {
        st->state = COLO_LEASE_STATE_FENCED;
    } else if (!fc.lease.granted) {
        st->state = COLO_LEASE_STATE_NONE;
    } else if (!colo_lease_valid(&fc.lease, now)) {
        st->state = COLO_LEASE_STATE_LAPSED;
    } else {
        st->state = fc.lease.sole ? COLO_LEASE_STATE_SOLE
                                  : COLO_LEASE_STATE_VALID;
    }
    st->mode = get_colo_mode();
    return st;
}

COLOLease *colo_fencing_status(void)
{
    QEMU_LOCK_GUARD(&fc.lock);
    return colo_fencing_status_locked();
}

/* Out-of-band, as x-colo-lease-grant. */
COLOLease *qmp_x_query_colo_lease(Error **errp)
{
    return colo_fencing_status();
}
