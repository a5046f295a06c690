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

static struct {
    ColoLease lease;
    QEMUTimer *timer;           /* the next warning or lapse */
    bool alone;                 /* serving alone: output goes by the lease */
    bool handed_over;           /* a secondary the arbiter handed over to */
    QEMUBH *stop_bh;            /* stops a fenced VM that was started */
    VMChangeStateEntry *vmstate;
} fc = {
    .lease = { .latest_ms = INT64_MIN },
};

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
static void colo_fencing_fence(void)
{
    if (fc.lease.fenced) {
        return;
    }
    colo_lease_fence(&fc.lease);
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

/* What output that no checkpoint covers becomes, asked at every packet. */
static ColoOutputVerdict colo_fencing_judge(void)
{
    switch (colo_lease_gate(&fc.lease, colo_fencing_now())) {
    case COLO_LEASE_RELEASE:
        return COLO_OUTPUT_PASS;
    case COLO_LEASE_HOLD:
        return COLO_OUTPUT_HOLD;
    case COLO_LEASE_FENCE:
        break;
    }
    colo_fencing_fence();
    return COLO_OUTPUT_DROP;
}

static void colo_fencing_arm(void)
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

    switch (colo_lease_tick(&fc.lease, now)) {
    case COLO_LEASE_EXPIRING:
        trace_colo_fencing_expiring(colo_lease_remaining_ms(&fc.lease, now));
        qapi_event_send_x_colo_lease_expiring(
            colo_lease_remaining_ms(&fc.lease, now));
        break;
    case COLO_LEASE_LAPSED:
        trace_colo_fencing_lapsed(fc.alone);
        if (fc.alone) {
            colo_fencing_fence();
        } else if (!fc.lease.fenced) {
            /* Every release is covered: the pair goes on. */
            qapi_event_send_x_colo_lease_lapsed(false);
        }
        break;
    case COLO_LEASE_QUIET:
        break;
    }
    colo_fencing_arm();
}

bool colo_fencing_serve_alone(Error **errp)
{
    fc.alone = true;
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

void qmp_x_colo_lease_grant(uint32_t validity_ms, int64_t clock_ms,
                            bool has_sole, bool sole, Error **errp)
{
    bool stayed_down;
    bool handover;

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
    /* A secondary handed over serves alone: its lease is sole. */
    sole = handover || fc.handed_over || (has_sole && sole);
    if (!colo_lease_grant(&fc.lease, colo_fencing_now(), clock_ms,
                          validity_ms, sole, errp)) {
        return;
    }
    trace_colo_fencing_grant(validity_ms, sole, handover);
    if (!fc.timer) {
        fc.timer = timer_new_ms(QEMU_CLOCK_REALTIME, colo_fencing_tick, NULL);
    }
    colo_fencing_arm();
    if (handover) {
        fc.handed_over = true;
        failover_request_active(errp);
    } else if (fc.alone) {
        colo_output_gate_update();
    }
}

COLOLease *colo_fencing_status(void)
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
    return st;
}
