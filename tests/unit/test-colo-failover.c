/*
 * Unit tests of the COLO failover state machine (migration/colo/failover.c):
 * a failover happens exactly once per COLO session, whether asked for or
 * caused by a broken stream; a request repeated, or made after the side
 * failed over by itself, succeeds and changes nothing; a request is refused
 * where no failover can be: never in COLO, or a secondary that stayed down.
 *
 * An arbitrated secondary refuses it: only the arbiter's lease hands over.
 *
 * failover.c wakes the running side through colo_state_interrupt(), asks
 * the mode with get_colo_mode() and colo_last_mode() and the capability
 * with migrate_colo_arbitrated(); they are stand-ins here that record what
 * happened.
 *
 * unit-test-sources: migration/colo/failover.c @BUILD@/qemu/trace/trace-migration_colo.c
 * unit-test-qemu: yes
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include <check.h>
#include "check-run.h"
#include "qapi/error.h"
#include "qapi/qapi-commands-migration.h"
#include "migration/colo.h"
#include "migration/failover.h"
#include "migration/colo/colo-internal.h"

static int interrupts;
static COLOMode mode = COLO_MODE_SECONDARY;
static COLOMode last_mode = COLO_MODE_SECONDARY;
static bool stayed_down;
static bool arbitrated;

bool migrate_colo_arbitrated(void)
{
    return arbitrated;
}

COLOMode colo_last_mode(bool *down)
{
    *down = stayed_down;
    return last_mode;
}

void colo_state_interrupt(void)
{
    interrupts++;
}

COLOMode get_colo_mode(void)
{
    return mode;
}

static void setup(void)
{
    interrupts = 0;
    mode = COLO_MODE_SECONDARY;
    last_mode = COLO_MODE_SECONDARY;
    stayed_down = false;
    arbitrated = false;
    failover_init_state();
}

START_TEST(test_request_runs_once)
{
    ck_assert(!failover_request_is_active());
    qmp_x_colo_lost_heartbeat(&error_abort);
    ck_assert_int_eq(failover_get_state(), FAILOVER_STATUS_REQUIRE);
    ck_assert_int_eq(interrupts, 1);

    /* Said again while the first is pending: success, the same request. */
    qmp_x_colo_lost_heartbeat(&error_abort);
    ck_assert_int_eq(failover_get_state(), FAILOVER_STATUS_REQUIRE);
}
END_TEST

/* The loop ends with the channel error the request caused: not an error. */
START_TEST(test_requested_failover_is_a_request)
{
    Error *err = NULL;

    qmp_x_colo_lost_heartbeat(&error_abort);
    error_setg(&err, "channel shut down");
    ck_assert_int_eq(colo_failover_begin(&err), COLO_EXIT_REASON_REQUEST);
    ck_assert_ptr_null(err);
    ck_assert_int_eq(failover_get_state(), FAILOVER_STATUS_ACTIVE);

    /* Asked again while it runs, and after: success, nothing new starts. */
    qmp_x_colo_lost_heartbeat(&error_abort);
    ck_assert_int_eq(failover_get_state(), FAILOVER_STATUS_ACTIVE);
    colo_failover_end();
    ck_assert_int_eq(failover_get_state(), FAILOVER_STATUS_COMPLETED);
    mode = COLO_MODE_NONE;
    qmp_x_colo_lost_heartbeat(&error_abort);
    ck_assert_int_eq(failover_get_state(), FAILOVER_STATUS_COMPLETED);
}
END_TEST

/*
 * A management tool's failover sequence arrives after the secondary took
 * over by itself on the broken stream: it succeeds.
 */
START_TEST(test_request_after_failover_succeeds)
{
    Error *err = NULL;

    error_setg(&err, "connection reset");
    colo_failover_begin(&err);
    error_free(err);
    colo_failover_end();
    mode = COLO_MODE_NONE;
    qmp_x_colo_lost_heartbeat(&error_abort);
    ck_assert_int_eq(failover_get_state(), FAILOVER_STATUS_COMPLETED);
    ck_assert_int_eq(interrupts, 0);
}
END_TEST

/* A secondary that stayed down (the primary went on alone) cannot. */
START_TEST(test_request_after_staying_down_is_refused)
{
    Error *err = NULL;

    mode = COLO_MODE_NONE;
    stayed_down = true;
    qmp_x_colo_lost_heartbeat(&err);
    ck_assert(strstr(error_get_pretty(err), "without taking over"));
    error_free(err);
    ck_assert_int_eq(interrupts, 0);
}
END_TEST

START_TEST(test_broken_stream_fails_over_by_itself)
{
    Error *err = NULL;

    error_setg(&err, "connection reset");
    ck_assert_int_eq(colo_failover_begin(&err), COLO_EXIT_REASON_ERROR);
    ck_assert_ptr_nonnull(err);
    error_free(err);
    ck_assert_int_eq(failover_get_state(), FAILOVER_STATUS_ACTIVE);
    colo_failover_end();
    ck_assert_int_eq(failover_get_state(), FAILOVER_STATUS_COMPLETED);
}
END_TEST

/* Leaving COLO without a failover (shutdown): the state stays none. */
START_TEST(test_clean_exit_is_no_failover)
{
    Error *err = NULL;

    ck_assert_int_eq(colo_failover_begin(&err), COLO_EXIT_REASON_REQUEST);
    ck_assert_int_eq(failover_get_state(), FAILOVER_STATUS_NONE);
    colo_failover_end();
    ck_assert_int_eq(failover_get_state(), FAILOVER_STATUS_NONE);
}
END_TEST

START_TEST(test_request_outside_colo_is_refused)
{
    Error *err = NULL;

    mode = COLO_MODE_NONE;
    last_mode = COLO_MODE_NONE;
    qmp_x_colo_lost_heartbeat(&err);
    ck_assert(strstr(error_get_pretty(err), "not in COLO mode"));
    error_free(err);
    ck_assert_int_eq(failover_get_state(), FAILOVER_STATUS_NONE);
    ck_assert_int_eq(interrupts, 0);
}
END_TEST

START_TEST(test_arbitrated_secondary_refuses)
{
    Error *err = NULL;

    arbitrated = true;
    qmp_x_colo_lost_heartbeat(&err);
    ck_assert(strstr(error_get_pretty(err), "x-colo-lease-grant"));
    error_free(err);
    ck_assert_int_eq(failover_get_state(), FAILOVER_STATUS_NONE);
    ck_assert_int_eq(interrupts, 0);
    /* Its primary is told as before: it serves on alone, under the lease. */
    mode = COLO_MODE_PRIMARY;
    qmp_x_colo_lost_heartbeat(&error_abort);
    ck_assert_int_eq(failover_get_state(), FAILOVER_STATUS_REQUIRE);
    ck_assert_int_eq(interrupts, 1);
}
END_TEST

/* Only the expected old state moves the machine. */
START_TEST(test_transitions_need_the_old_state)
{
    ck_assert_int_eq(failover_set_state(FAILOVER_STATUS_ACTIVE,
                                        FAILOVER_STATUS_COMPLETED),
                     FAILOVER_STATUS_NONE);
    ck_assert_int_eq(failover_get_state(), FAILOVER_STATUS_NONE);
    ck_assert_int_eq(failover_set_state(FAILOVER_STATUS_NONE,
                                        FAILOVER_STATUS_ACTIVE),
                     FAILOVER_STATUS_NONE);
    ck_assert_int_eq(failover_get_state(), FAILOVER_STATUS_ACTIVE);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("colo-failover");
    TCase *tc = tcase_create("state machine");

    tcase_add_checked_fixture(tc, setup, NULL);
    tcase_add_test(tc, test_request_runs_once);
    tcase_add_test(tc, test_requested_failover_is_a_request);
    tcase_add_test(tc, test_request_after_failover_succeeds);
    tcase_add_test(tc, test_request_after_staying_down_is_refused);
    tcase_add_test(tc, test_broken_stream_fails_over_by_itself);
    tcase_add_test(tc, test_clean_exit_is_no_failover);
    tcase_add_test(tc, test_request_outside_colo_is_refused);
    tcase_add_test(tc, test_transitions_need_the_old_state);
    tcase_add_test(tc, test_arbitrated_secondary_refuses);
    suite_add_tcase(s, tc);
    return check_run(s);
}
