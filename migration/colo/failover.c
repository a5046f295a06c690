/*
 * COLO failover: the request, and its state machine.
 *
 * A failover is asked for by x-colo-lost-heartbeat on either side, or
 * happens by itself when the replication stream breaks.  It runs exactly
 * once per COLO session:
 *
 *   none --request--> require --the loop takes it--> active --> completed
 *   none --the stream breaks-----------------------> active --> completed
 *
 * The request itself only records the wish and shuts the replication
 * channel down, so that a loop blocked on it wakes at once.  The loop (in
 * primary.c or secondary.c) does the work when it is at a safe point: the
 * secondary never between flushing a checkpoint's RAM and loading its
 * devices.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qapi/qapi-commands-migration.h"
#include "qemu/atomic.h"
#include "migration/colo.h"
#include "migration/failover.h"
#include "migration/options.h"
#include "migration/qemu-file.h"
#include "colo-internal.h"
#include "trace.h"

static FailoverStatus failover_state;

void failover_init_state(void)
{
    qatomic_set(&failover_state, FAILOVER_STATUS_NONE);
}

FailoverStatus failover_set_state(FailoverStatus old_state,
                                  FailoverStatus new_state)
{
    FailoverStatus was = qatomic_cmpxchg(&failover_state, old_state,
                                         new_state);

    if (was == old_state) {
        trace_colo_failover_set_state(FailoverStatus_str(new_state));
    }
    return was;
}

FailoverStatus failover_get_state(void)
{
    return qatomic_read(&failover_state);
}

bool failover_request_is_active(void)
{
    return failover_get_state() != FAILOVER_STATUS_NONE;
}

void failover_request_active(Error **errp)
{
    /* A request already made, or a failover under way, stands. */
    failover_set_state(FAILOVER_STATUS_NONE, FAILOVER_STATUS_REQUIRE);
    colo_state_interrupt();
}

void colo_do_failover(void)
{
    /* Already requested or under way: nothing more to start. */
    failover_set_state(FAILOVER_STATUS_NONE, FAILOVER_STATUS_REQUIRE);
    colo_state_interrupt();
}

COLOExitReason colo_failover_begin(Error **errp)
{
    if (failover_set_state(FAILOVER_STATUS_REQUIRE, FAILOVER_STATUS_ACTIVE) ==
        FAILOVER_STATUS_REQUIRE) {
        /* Asked for: the channel error is only the shutdown it caused. */
        error_free(*errp);
        *errp = NULL;
        return COLO_EXIT_REASON_REQUEST;
    }
    if (*errp) {
        failover_set_state(FAILOVER_STATUS_NONE, FAILOVER_STATUS_ACTIVE);
        return COLO_EXIT_REASON_ERROR;
    }
    return COLO_EXIT_REASON_REQUEST;
}

void colo_failover_end(void)
{
    failover_set_state(FAILOVER_STATUS_ACTIVE, FAILOVER_STATUS_COMPLETED);
}

/*
 * Idempotent, as a management tool that follows its documented failover
 * sequence needs: a side that has already failed over (by itself, on a
 * broken stream, or at an earlier request) answers success, and
 * COLO_EXIT and query-colo-status tell what happened.
 */
void qmp_x_colo_lost_heartbeat(Error **errp)
{
    bool stayed_down;
    COLOMode last = colo_last_mode(&stayed_down);

    if (stayed_down) {
        error_setg(errp, "This secondary left COLO without taking over "
                   "(the primary went on alone, or the SVM is not a whole "
                   "checkpoint): it cannot take over");
        return;
    }
    if (get_colo_mode() == COLO_MODE_SECONDARY && migrate_colo_arbitrated()) {
        error_setg(errp, "This secondary's pair has an arbiter: it takes "
                   "over when granted the lease (x-colo-lease-grant)");
        return;
    }
    if (get_colo_mode() != COLO_MODE_NONE) {
        failover_request_active(errp);
        return;
    }
    if (last == COLO_MODE_NONE) {
        error_setg(errp, "VM is not in COLO mode");
    }
}
