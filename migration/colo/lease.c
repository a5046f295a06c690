/*
 * COLO: the lease rule (lease.h).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "lease.h"

void colo_lease_init(ColoLease *l)
{
    *l = (ColoLease) { .latest_ms = INT64_MIN };
}

/* The time as this machine sees it: never earlier than one already seen. */
static int64_t colo_lease_now(const ColoLease *l, int64_t now)
{
    return MAX(now, l->latest_ms);
}

bool colo_lease_grant(ColoLease *l, int64_t now, int64_t start,
                      int64_t validity_ms, bool sole, Error **errp)
{
    if (l->fenced) {
        error_setg(errp, "This side is fenced: its lease lapsed while it "
                   "served alone, and it never serves again");
        return false;
    }
    if (validity_ms < COLO_LEASE_MIN_MS || validity_ms > COLO_LEASE_MAX_MS) {
        error_setg(errp, "A lease runs from %d to %d ms, not %" PRId64,
                   COLO_LEASE_MIN_MS, COLO_LEASE_MAX_MS, validity_ms);
        return false;
    }
    if (now < l->latest_ms) {
        error_setg(errp, "The clock went back %" PRId64 " ms: the lease is "
                   "not renewed", l->latest_ms - now);
        return false;
    }
    if (start > now) {
        error_setg(errp, "A lease cannot start %" PRId64 " ms from now: the "
                   "start is a reading of this side's lease clock",
                   start - now);
        return false;
    }
    if (now - start >= validity_ms) {
        error_setg(errp, "The lease ran out on its way (it started %" PRId64
                   " ms ago and runs %" PRId64 " ms)", now - start,
                   validity_ms);
        return false;
    }
    l->granted = true;
    l->sole = sole;
    l->validity_ms = validity_ms;
    l->expires_ms = start + validity_ms;
    l->latest_ms = now;
    l->warned = false;
    l->lapse_told = false;
    return true;
}

bool colo_lease_valid(const ColoLease *l, int64_t now)
{
    return l->granted && !l->fenced &&
           colo_lease_now(l, now) < l->expires_ms;
}

ColoLeaseGate colo_lease_gate(const ColoLease *l, int64_t now)
{
    if (!colo_lease_valid(l, now)) {
        return COLO_LEASE_FENCE;
    }
    return l->sole ? COLO_LEASE_RELEASE : COLO_LEASE_HOLD;
}

static int64_t colo_lease_warn_ms(const ColoLease *l)
{
    return l->expires_ms - l->validity_ms * COLO_LEASE_WARN / 1000;
}

ColoLeaseEvent colo_lease_tick(ColoLease *l, int64_t now)
{
    now = colo_lease_now(l, now);
    l->latest_ms = now;
    if (!l->granted || l->lapse_told) {
        return COLO_LEASE_QUIET;
    }
    if (now >= l->expires_ms) {
        l->lapse_told = true;
        l->warned = true;
        return COLO_LEASE_LAPSED;
    }
    if (!l->warned && now >= colo_lease_warn_ms(l)) {
        l->warned = true;
        return COLO_LEASE_EXPIRING;
    }
    return COLO_LEASE_QUIET;
}

int64_t colo_lease_next_event_ms(const ColoLease *l)
{
    if (!l->granted || l->lapse_told) {
        return INT64_MAX;
    }
    return l->warned ? l->expires_ms : colo_lease_warn_ms(l);
}

int64_t colo_lease_remaining_ms(const ColoLease *l, int64_t now)
{
    if (!colo_lease_valid(l, now)) {
        return 0;
    }
    return l->expires_ms - colo_lease_now(l, now);
}

void colo_lease_fence(ColoLease *l)
{
    l->fenced = true;
}
