/*
 * COLO: the lease rule, as a pure state machine (no clock, no timer).
 *
 * With an arbiter (capability x-colo-arbitrated), who serves is the
 * arbiter's decision, carried by a lease it grants with
 * x-colo-lease-grant and renews before it lapses.  Output that a
 * checkpoint the secondary acknowledged covers is always safe to
 * release, lease or not.  Output that none covers (this side serves
 * alone) is released only under a valid *sole* lease: the arbiter has
 * recorded that this side serves alone and will never hand over to a
 * secondary that stands at an older checkpoint.  Under a valid lease
 * that is not sole, such output is held, waiting for the arbiter to
 * make it sole.  A side serving alone whose lease is not valid is
 * fenced: its VM stops, what it held is dropped, and no grant is taken
 * from then on.
 *
 * The lease runs from a reading of this side's own clock that the
 * arbiter took before it decided (query-colo-status), not from when the
 * grant arrives: a grant held up on its way (this side frozen with the
 * grant in its socket, say) runs out no later than the arbiter counts.
 * The arbiter counts it from when it got that reading, plus a margin for
 * the clocks' drift, so this side's lease always lapses first
 * (docs/devel/migration/colo.rst, "An arbiter").
 *
 * The caller passes the time (milliseconds of a clock that counts a
 * host's suspension too) to every function; fencing.c feeds it.  A
 * clock that goes backwards is refused: a grant at an earlier time than
 * one already seen fails, and validity is judged at the latest time
 * seen, so a lease never grows back.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef MIGRATION_COLO_LEASE_H
#define MIGRATION_COLO_LEASE_H

/* What a lease may run for, in ms. */
#define COLO_LEASE_MIN_MS 100
#define COLO_LEASE_MAX_MS (3600 * 1000)

/* A lease is about to lapse with this much of it left, per mille. */
#define COLO_LEASE_WARN 250

typedef enum ColoLeaseGate {
    COLO_LEASE_RELEASE,         /* a valid sole lease: release */
    COLO_LEASE_HOLD,            /* a valid lease, not sole: hold */
    COLO_LEASE_FENCE,           /* no valid lease: drop, and stop */
} ColoLeaseGate;

typedef enum ColoLeaseEvent {
    COLO_LEASE_QUIET,
    COLO_LEASE_EXPIRING,        /* COLO_LEASE_WARN of it is left */
    COLO_LEASE_LAPSED,
} ColoLeaseEvent;

typedef struct ColoLease {
    bool granted;               /* a lease was granted at least once */
    bool sole;                  /* the last grant said this side is alone */
    int64_t validity_ms;        /* of the last grant */
    int64_t expires_ms;         /* valid while the time is before this */
    int64_t latest_ms;          /* the latest time seen */
    bool warned;                /* this grant's EXPIRING was given */
    bool lapse_told;            /* this grant's LAPSED was given */
    bool fenced;                /* final: no grant is taken any more */
} ColoLease;

void colo_lease_init(ColoLease *l);

/*
 * Grant or renew the lease, arriving at @now: it runs from @start (a
 * reading of this clock, not after @now) for @validity_ms, @sole or not.
 * A renewal replaces the lease, shorter or longer.  Refused (false, with
 * @errp set) when fenced, when @validity_ms is out of bounds, when @now
 * is before a time already seen, when @start is after @now, or when the
 * lease ran out on its way.
 */
bool colo_lease_grant(ColoLease *l, int64_t now, int64_t start,
                      int64_t validity_ms, bool sole, Error **errp);

/* Is the lease valid at @now (at the latest time seen, if later)? */
bool colo_lease_valid(const ColoLease *l, int64_t now);

/* What becomes of output that no checkpoint covers, at @now. */
ColoLeaseGate colo_lease_gate(const ColoLease *l, int64_t now);

/*
 * The time has come to @now: returns EXPIRING or LAPSED, each once per
 * grant, when it happened (LAPSED wins if both did).
 */
ColoLeaseEvent colo_lease_tick(ColoLease *l, int64_t now);

/*
 * When colo_lease_tick() next has something to tell (the warning, then
 * the lapse); INT64_MAX if nothing.
 */
int64_t colo_lease_next_event_ms(const ColoLease *l);

/* What is left of the lease at @now: 0 once lapsed or if never granted. */
int64_t colo_lease_remaining_ms(const ColoLease *l, int64_t now);

/* This side served alone when its lease lapsed: it is fenced for good. */
void colo_lease_fence(ColoLease *l);

#endif
