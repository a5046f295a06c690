/*
 * Unit tests of COLO's lease rule (migration/colo/lease.c): when a lease
 * is valid, what becomes of output no checkpoint covers, the warning and
 * the lapse, renewals that race the lapse, fencing, and a clock that goes
 * backwards.  Times are given, not read: every bound is checked to the
 * millisecond.
 *
 * unit-test-sources: migration/colo/lease.c
 * unit-test-qemu: yes
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include <check.h>
#include "qapi/error.h"
#include "check-run.h"
#include "migration/colo/lease.h"

#define V 3000

static ColoLease l;

static void setup(void)
{
    colo_lease_init(&l);
}

/* A grant arriving at @now that runs from @start, which must be taken. */
static void grant_at(int64_t now, int64_t start, int64_t validity, bool sole)
{
    Error *err = NULL;

    ck_assert(colo_lease_grant(&l, now, start, validity, sole, &err));
    ck_assert_ptr_null(err);
}

/* A grant that runs from its arrival. */
static void grant(int64_t now, int64_t validity, bool sole)
{
    grant_at(now, now, validity, sole);
}

/* A grant that must be refused with an error. */
static void grant_at_refused(int64_t now, int64_t start, int64_t validity,
                             bool sole)
{
    Error *err = NULL;

    ck_assert(!colo_lease_grant(&l, now, start, validity, sole, &err));
    ck_assert_ptr_nonnull(err);
    error_free(err);
}

static void grant_refused(int64_t now, int64_t validity, bool sole)
{
    grant_at_refused(now, now, validity, sole);
}

START_TEST(test_never_granted_is_no_lease)
{
    ck_assert(!colo_lease_valid(&l, 0));
    ck_assert_int_eq(colo_lease_gate(&l, 0), COLO_LEASE_FENCE);
    ck_assert_int_eq(colo_lease_tick(&l, 1000000), COLO_LEASE_QUIET);
    ck_assert_int_eq(colo_lease_next_event_ms(&l), INT64_MAX);
    ck_assert_int_eq(colo_lease_remaining_ms(&l, 5), 0);
}
END_TEST

START_TEST(test_expires_exactly_at_the_bound)
{
    grant(1000, V, true);
    ck_assert(colo_lease_valid(&l, 1000));
    ck_assert(colo_lease_valid(&l, 1000 + V - 1));
    ck_assert_int_eq(colo_lease_remaining_ms(&l, 1000 + V - 1), 1);
    ck_assert(!colo_lease_valid(&l, 1000 + V));
    ck_assert_int_eq(colo_lease_remaining_ms(&l, 1000 + V), 0);
    ck_assert_int_eq(colo_lease_gate(&l, 1000 + V - 1), COLO_LEASE_RELEASE);
    ck_assert_int_eq(colo_lease_gate(&l, 1000 + V), COLO_LEASE_FENCE);
}
END_TEST

START_TEST(test_sole_releases_and_shared_holds)
{
    grant(1000, V, false);
    ck_assert_int_eq(colo_lease_gate(&l, 2000), COLO_LEASE_HOLD);
    grant(2000, V, true);
    ck_assert_int_eq(colo_lease_gate(&l, 2001), COLO_LEASE_RELEASE);
    /* The arbiter's word is taken as given, back to shared too. */
    grant(2500, V, false);
    ck_assert_int_eq(colo_lease_gate(&l, 2501), COLO_LEASE_HOLD);
    ck_assert_int_eq(colo_lease_gate(&l, 2500 + V), COLO_LEASE_FENCE);
}
END_TEST

START_TEST(test_warning_then_lapse_once_each)
{
    int64_t warn = 1000 + V - V * COLO_LEASE_WARN / 1000;

    grant(1000, V, true);
    ck_assert_int_eq(colo_lease_next_event_ms(&l), warn);
    ck_assert_int_eq(colo_lease_tick(&l, warn - 1), COLO_LEASE_QUIET);
    ck_assert_int_eq(colo_lease_tick(&l, warn), COLO_LEASE_EXPIRING);
    ck_assert_int_eq(colo_lease_tick(&l, warn + 1), COLO_LEASE_QUIET);
    ck_assert_int_eq(colo_lease_next_event_ms(&l), 1000 + V);
    ck_assert_int_eq(colo_lease_tick(&l, 1000 + V - 1), COLO_LEASE_QUIET);
    ck_assert_int_eq(colo_lease_tick(&l, 1000 + V), COLO_LEASE_LAPSED);
    ck_assert_int_eq(colo_lease_tick(&l, 1000 + V + 1), COLO_LEASE_QUIET);
    ck_assert_int_eq(colo_lease_next_event_ms(&l), INT64_MAX);
}
END_TEST

START_TEST(test_late_tick_tells_only_the_lapse)
{
    /* A side frozen through the warning and the lapse: one event. */
    grant(1000, V, true);
    ck_assert_int_eq(colo_lease_tick(&l, 1000 + 10 * V), COLO_LEASE_LAPSED);
    ck_assert_int_eq(colo_lease_tick(&l, 1000 + 11 * V), COLO_LEASE_QUIET);
}
END_TEST

START_TEST(test_renewal_before_the_lapse_extends)
{
    int64_t t = 1000;

    grant(t, V, true);
    /* Renewed at each third for a long while: always valid, never told. */
    for (int i = 0; i < 1000; i++) {
        t += V / 3;
        ck_assert(colo_lease_valid(&l, t));
        ck_assert_int_eq(colo_lease_tick(&l, t), COLO_LEASE_QUIET);
        grant(t, V, true);
    }
    ck_assert_int_eq(colo_lease_remaining_ms(&l, t), V);
}
END_TEST

START_TEST(test_renewal_racing_the_lapse)
{
    grant(1000, V, false);
    /* Just in time: the lease never lapsed. */
    grant(1000 + V - 1, V, false);
    ck_assert(colo_lease_valid(&l, 1000 + 2 * V - 2));
    ck_assert(!colo_lease_valid(&l, 1000 + 2 * V - 1));
    /*
     * Just too late: lapsed at 1000 + 2V - 1.  A side that was not
     * serving alone is not fenced by it and takes the renewal; the warning
     * and the lapse are told again for the new grant.
     */
    ck_assert_int_eq(colo_lease_tick(&l, 1000 + 2 * V - 1), COLO_LEASE_LAPSED);
    grant(1000 + 2 * V - 1, V, false);
    ck_assert(colo_lease_valid(&l, 1000 + 2 * V - 1));
    ck_assert_int_eq(colo_lease_tick(&l, 1000 + 3 * V - 1), COLO_LEASE_LAPSED);
}
END_TEST

START_TEST(test_shorter_renewal_shortens)
{
    grant(1000, V, true);
    grant(1100, COLO_LEASE_MIN_MS, true);
    ck_assert(!colo_lease_valid(&l, 1100 + COLO_LEASE_MIN_MS));
}
END_TEST

START_TEST(test_fenced_for_good)
{
    grant(1000, V, true);
    ck_assert_int_eq(colo_lease_tick(&l, 1000 + V), COLO_LEASE_LAPSED);
    colo_lease_fence(&l);
    grant_refused(1000 + V + 1, V, true);
    ck_assert(!colo_lease_valid(&l, 1000 + V + 2));
    ck_assert_int_eq(colo_lease_gate(&l, 1000 + V + 2), COLO_LEASE_FENCE);
    /* Fenced while still valid (an order from above): the same. */
    colo_lease_init(&l);
    grant(1000, V, true);
    colo_lease_fence(&l);
    ck_assert(!colo_lease_valid(&l, 1001));
    ck_assert_int_eq(colo_lease_gate(&l, 1001), COLO_LEASE_FENCE);
}
END_TEST

START_TEST(test_clock_going_backwards_is_refused)
{
    grant(5000, V, true);
    ck_assert_int_eq(colo_lease_tick(&l, 7300), COLO_LEASE_EXPIRING);
    /* A grant stamped before a time already seen is refused... */
    grant_refused(7299, V, true);
    ck_assert(colo_lease_valid(&l, 7300));
    /* ...and validity is judged at the latest time seen. */
    ck_assert_int_eq(colo_lease_tick(&l, 5000 + V), COLO_LEASE_LAPSED);
    ck_assert(!colo_lease_valid(&l, 5000));
    ck_assert(!colo_lease_valid(&l, 5000 + V - 1));
    ck_assert_int_eq(colo_lease_gate(&l, 6000), COLO_LEASE_FENCE);
    ck_assert_int_eq(colo_lease_tick(&l, 6000), COLO_LEASE_QUIET);
    /* Time going on again, a renewal is taken. */
    grant(5000 + V, V, true);
    ck_assert(colo_lease_valid(&l, 5000 + V));
}
END_TEST

START_TEST(test_delayed_grant_runs_from_its_reading)
{
    /*
     * The arbiter read this clock at 4000 and granted V; the grant sat in
     * a frozen side's socket until 5000: it runs out at 4000 + V, as the
     * arbiter counts, not at 5000 + V.
     */
    grant_at(5000, 4000, V, true);
    ck_assert(colo_lease_valid(&l, 4000 + V - 1));
    ck_assert(!colo_lease_valid(&l, 4000 + V));
    /* One held up for the whole of it is refused: it lapsed on its way. */
    colo_lease_init(&l);
    grant_at_refused(4000 + V, 4000, V, true);
    ck_assert(!colo_lease_valid(&l, 4000 + V));
    grant_at(4000 + V - 1, 4000, V, true);
    ck_assert(colo_lease_valid(&l, 4000 + V - 1));
    ck_assert(!colo_lease_valid(&l, 4000 + V));
}
END_TEST

START_TEST(test_grant_from_the_future_is_refused)
{
    grant_at_refused(1000, 1001, V, true);
    ck_assert(!colo_lease_valid(&l, 1001));
    grant_at(1000, 1000, V, true);
}
END_TEST

START_TEST(test_validity_bounds)
{
    grant_refused(1000, COLO_LEASE_MIN_MS - 1, true);
    grant_refused(1000, 0, true);
    grant_refused(1000, -V, true);
    grant_refused(1000, COLO_LEASE_MAX_MS + 1, true);
    ck_assert(!colo_lease_valid(&l, 1000));
    grant(1000, COLO_LEASE_MIN_MS, true);
    grant(1000, COLO_LEASE_MAX_MS, true);
    ck_assert(colo_lease_valid(&l, 1000 + COLO_LEASE_MAX_MS - 1));
}
END_TEST

int main(void)
{
    Suite *su = suite_create("colo-lease");
    TCase *tc = tcase_create("rule");

    tcase_add_checked_fixture(tc, setup, NULL);
    tcase_add_test(tc, test_never_granted_is_no_lease);
    tcase_add_test(tc, test_expires_exactly_at_the_bound);
    tcase_add_test(tc, test_sole_releases_and_shared_holds);
    tcase_add_test(tc, test_warning_then_lapse_once_each);
    tcase_add_test(tc, test_late_tick_tells_only_the_lapse);
    tcase_add_test(tc, test_renewal_before_the_lapse_extends);
    tcase_add_test(tc, test_renewal_racing_the_lapse);
    tcase_add_test(tc, test_shorter_renewal_shortens);
    tcase_add_test(tc, test_fenced_for_good);
    tcase_add_test(tc, test_clock_going_backwards_is_refused);
    tcase_add_test(tc, test_delayed_grant_runs_from_its_reading);
    tcase_add_test(tc, test_grant_from_the_future_is_refused);
    tcase_add_test(tc, test_validity_bounds);
    suite_add_tcase(su, tc);
    return check_run(su);
}
