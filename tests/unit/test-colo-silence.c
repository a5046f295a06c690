/*
 * Unit tests of COLO's silence rule (migration/colo/silence.c): when a
 * side judges its peer silent, when it knows it was frozen itself, and
 * when a stream that ends may be taken for the peer's death.  Times are
 * given, not read: every bound is checked to the millisecond.
 *
 * unit-test-sources: migration/colo/silence.c
 * unit-test-qemu: yes
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include <check.h>
#include "check-run.h"
#include "migration/colo/silence.h"

#define T 1500

static ColoSilence s;

/* Tick every @step ms from @from to @to (inclusive); the last verdict. */
static ColoSilenceVerdict tick_until(int64_t from, int64_t to, int64_t step)
{
    ColoSilenceVerdict v = COLO_SILENCE_OK;

    for (int64_t t = from; t <= to; t += step) {
        ColoSilenceVerdict now = colo_silence_tick(&s, t);

        if (now != COLO_SILENCE_OK) {
            v = now;
        }
    }
    return v;
}

static void setup(void)
{
    colo_silence_init(&s, T, 1000);
}

START_TEST(test_silent_exactly_after_the_timeout)
{
    colo_silence_wait_begin(&s, 1000);
    ck_assert_int_eq(tick_until(1000, 1000 + T, 100), COLO_SILENCE_OK);
    ck_assert(!colo_silence_is_silent(&s));
    ck_assert_int_eq(colo_silence_tick(&s, 1000 + T + 1),
                     COLO_SILENCE_PEER_SILENT);
    ck_assert(colo_silence_is_silent(&s));
    /* The verdict is given once, and stands. */
    ck_assert_int_eq(colo_silence_tick(&s, 1000 + T + 50), COLO_SILENCE_OK);
    colo_silence_heard(&s, 1000 + T + 60);
    ck_assert(colo_silence_is_silent(&s));
}
END_TEST

START_TEST(test_hearing_renews)
{
    colo_silence_wait_begin(&s, 1000);
    for (int64_t t = 1000; t < 20000; t += 100) {
        if (t % 1000 == 0) {
            colo_silence_heard(&s, t);
        }
        ck_assert_int_eq(colo_silence_tick(&s, t), COLO_SILENCE_OK);
    }
    ck_assert(!colo_silence_is_silent(&s));
}
END_TEST

START_TEST(test_not_waiting_is_never_silent)
{
    ck_assert_int_eq(tick_until(1000, 60000, 100), COLO_SILENCE_OK);
    /* A wait that begins late counts from its beginning. */
    colo_silence_wait_begin(&s, 60000);
    ck_assert_int_eq(tick_until(60000, 60000 + T, 100), COLO_SILENCE_OK);
    ck_assert_int_eq(tick_until(60000 + T + 100, 60000 + T + 100, 100),
                     COLO_SILENCE_PEER_SILENT);
}
END_TEST

START_TEST(test_wait_end_stops_the_judgement)
{
    colo_silence_wait_begin(&s, 1000);
    colo_silence_wait_end(&s, 1000);
    ck_assert_int_eq(tick_until(1000, 10000, 100), COLO_SILENCE_OK);
}
END_TEST

/* A renewal that races with the tick: heard at the very last moment. */
START_TEST(test_heard_at_the_bound_is_in_time)
{
    colo_silence_wait_begin(&s, 1000);
    ck_assert_int_eq(tick_until(1000, 1000 + T - 100, 100), COLO_SILENCE_OK);
    colo_silence_heard(&s, 1000 + T);
    ck_assert_int_eq(colo_silence_tick(&s, 1000 + T), COLO_SILENCE_OK);
    ck_assert_int_eq(tick_until(1000 + T + 100, 1000 + 2 * T, 100),
                     COLO_SILENCE_OK);
    ck_assert_int_eq(colo_silence_tick(&s, 1000 + 2 * T + 1),
                     COLO_SILENCE_PEER_SILENT);
}
END_TEST

/* A late "heard" with an older time does not move the clock back. */
START_TEST(test_clock_going_backwards_is_refused)
{
    colo_silence_wait_begin(&s, 1000);
    ck_assert_int_eq(tick_until(1000, 2000, 100), COLO_SILENCE_OK);
    colo_silence_heard(&s, 500);
    ck_assert_int_eq(colo_silence_tick(&s, 900), COLO_SILENCE_OK);
    /* Judged from 1000 still, and from the tick at 2000 on. */
    ck_assert_int_eq(tick_until(2100, 1000 + T, 100), COLO_SILENCE_OK);
    ck_assert_int_eq(colo_silence_tick(&s, 1000 + T + 1),
                     COLO_SILENCE_PEER_SILENT);
}
END_TEST

/*
 * A side that did not tick for more than half the timeout was frozen:
 * it does not blame the peer for what it missed, and a stream that ends
 * in the next two timeouts is not the peer's death.
 */
START_TEST(test_frozen_side_blames_no_one)
{
    colo_silence_wait_begin(&s, 1000);
    ck_assert_int_eq(tick_until(1000, 1500, 100), COLO_SILENCE_OK);
    ck_assert(colo_silence_could_be_death(&s, 1500));
    /* Frozen 12 s. */
    ck_assert_int_eq(colo_silence_tick(&s, 13500), COLO_SILENCE_OK);
    ck_assert(!colo_silence_is_silent(&s));
    ck_assert(!colo_silence_could_be_death(&s, 13500));
    /* Heard steadily since: the freeze is forgotten after 2T. */
    for (int64_t t = 13550; t < 13500 + 2 * T; t += 50) {
        if (t % 250 == 0) {
            colo_silence_heard(&s, t);
        }
        ck_assert_int_eq(colo_silence_tick(&s, t), COLO_SILENCE_OK);
        ck_assert(!colo_silence_could_be_death(&s, t));
    }
    ck_assert_int_eq(colo_silence_tick(&s, 13500 + 2 * T), COLO_SILENCE_OK);
    ck_assert(colo_silence_could_be_death(&s, 13500 + 2 * T));
}
END_TEST

/* Half the timeout without a tick is a freeze; a little less is not. */
START_TEST(test_freeze_bound)
{
    ck_assert_int_eq(colo_silence_tick(&s, 1000 + T / 2), COLO_SILENCE_OK);
    colo_silence_heard(&s, 1000 + T / 2);
    ck_assert(colo_silence_could_be_death(&s, 1000 + T / 2));
    ck_assert_int_eq(colo_silence_tick(&s, 1000 + T + 1), COLO_SILENCE_OK);
    ck_assert(!colo_silence_could_be_death(&s, 1000 + T + 1));
}
END_TEST

/* The watchdog has not ticked for half the timeout: frozen right now. */
START_TEST(test_stale_watchdog_means_no_death)
{
    ck_assert_int_eq(colo_silence_tick(&s, 1100), COLO_SILENCE_OK);
    colo_silence_heard(&s, 1100 + T / 2);
    ck_assert(colo_silence_could_be_death(&s, 1100 + T / 2));
    ck_assert(!colo_silence_could_be_death(&s, 1100 + T / 2 + 1));
    ck_assert(!colo_silence_could_be_death(&s, 1000));
}
END_TEST

/*
 * A wait of more than COLO_SILENCE_GAP of the timeout that ends with a
 * word casts doubt on a stream end for two timeouts; a steady peer
 * (a word every heartbeat) casts none.
 */
START_TEST(test_long_wait_casts_doubt)
{
    int64_t gap = T * COLO_SILENCE_GAP / 1000;

    ck_assert_int_eq(gap, 600);

    colo_silence_wait_begin(&s, 1000);
    for (int64_t t = 1000; t <= 5000; t += 50) {
        if (t % 250 == 0) {
            colo_silence_heard(&s, t);
        }
        ck_assert_int_eq(colo_silence_tick(&s, t), COLO_SILENCE_OK);
        ck_assert(colo_silence_could_be_death(&s, t));
    }
    ck_assert_int_eq(tick_until(5050, 5000 + gap, 50), COLO_SILENCE_OK);
    colo_silence_heard(&s, 5000 + gap);
    ck_assert(colo_silence_could_be_death(&s, 5000 + gap));
    ck_assert_int_eq(tick_until(5000 + gap + 50, 5000 + 2 * gap, 50),
                     COLO_SILENCE_OK);
    colo_silence_heard(&s, 5000 + 2 * gap + 1);
    ck_assert(!colo_silence_could_be_death(&s, 5000 + 2 * gap + 1));
    ck_assert(!colo_silence_could_be_death(&s, 5000 + 2 * gap + 2 * T - 1));
    /* A wait that began late counts from its beginning. */
    colo_silence_wait_end(&s, 1000);
    colo_silence_wait_begin(&s, 20000);
    ck_assert_int_eq(tick_until(5000 + 2 * gap + 50, 20000, 50),
                     COLO_SILENCE_OK);
    colo_silence_heard(&s, 20100);
    ck_assert(colo_silence_could_be_death(&s, 20100));
}
END_TEST

/*
 * The end is judged when the wait that saw it ended: a side starved
 * after it saw the end in doubt does not outlive the doubt (found by
 * spin in tests/model/colo-silence.pml).
 */
START_TEST(test_end_judged_when_seen)
{
    colo_silence_wait_begin(&s, 1000);
    colo_silence_wait_end(&s, 1000 + T * COLO_SILENCE_GAP / 1000 + 1);
    ck_assert(!colo_silence_end_is_death(&s));
    ck_assert_int_eq(tick_until(1100, 1000 + 10 * T, 100), COLO_SILENCE_OK);
    colo_silence_heard(&s, 1000 + 10 * T);
    ck_assert(colo_silence_could_be_death(&s, 1000 + 10 * T));
    ck_assert(!colo_silence_end_is_death(&s));

    /* A short wait, heard steadily before: death. */
    colo_silence_init(&s, T, 1000);
    colo_silence_wait_begin(&s, 1000);
    colo_silence_wait_end(&s, 1100);
    ck_assert(colo_silence_end_is_death(&s));
    /* ...unless the peer has been judged silent since. */
    colo_silence_declare(&s);
    ck_assert(!colo_silence_end_is_death(&s));
}
END_TEST

/* A stream end is death only soon after the peer's last word. */
START_TEST(test_end_long_after_the_last_word)
{
    int64_t gap = T * COLO_SILENCE_GAP / 1000;

    ck_assert_int_eq(tick_until(1000, 1000 + gap, 50), COLO_SILENCE_OK);
    ck_assert(colo_silence_could_be_death(&s, 1000 + gap));
    ck_assert_int_eq(colo_silence_tick(&s, 1000 + gap + 1), COLO_SILENCE_OK);
    ck_assert(!colo_silence_could_be_death(&s, 1000 + gap + 1));
    colo_silence_heard(&s, 1000 + gap + 1);
    ck_assert(colo_silence_could_be_death(&s, 1000 + gap + 1));
}
END_TEST

/*
 * Listening goes on from the last word: a side that did not listen for
 * a while (starved after its ack) finds the wait long, and doubts (found
 * by spin in tests/model/colo-silence.pml).
 */
START_TEST(test_listening_counts_from_the_last_word)
{
    int64_t gap = T * COLO_SILENCE_GAP / 1000;

    colo_silence_wait_begin(&s, 1000);      /* our ack */
    colo_silence_wait_end(&s, 1001);
    ck_assert_int_eq(tick_until(1050, 1000 + gap, 50), COLO_SILENCE_OK);
    colo_silence_listen_begin(&s);          /* late */
    colo_silence_heard(&s, 1000 + gap + 10);
    ck_assert(!colo_silence_could_be_death(&s, 1000 + gap + 10));
    /* The same, listening at once: no doubt. */
    colo_silence_init(&s, T, 1000);
    colo_silence_wait_begin(&s, 1000);
    colo_silence_wait_end(&s, 1001);
    colo_silence_listen_begin(&s);
    ck_assert_int_eq(tick_until(1050, 1000 + gap - 50, 50), COLO_SILENCE_OK);
    colo_silence_heard(&s, 1000 + gap - 50);
    ck_assert(colo_silence_could_be_death(&s, 1000 + gap - 50));
}
END_TEST

START_TEST(test_silent_peer_means_no_death)
{
    colo_silence_wait_begin(&s, 1000);
    ck_assert_int_eq(tick_until(1000, 1000 + T + 100, 100),
                     COLO_SILENCE_PEER_SILENT);
    ck_assert(!colo_silence_could_be_death(&s, 1000 + T + 100));
}
END_TEST

/* A timeout changed live applies at the next tick. */
START_TEST(test_timeout_changes_live)
{
    colo_silence_wait_begin(&s, 1000);
    ck_assert_int_eq(tick_until(1000, 1400, 100), COLO_SILENCE_OK);
    colo_silence_set_timeout(&s, 300);
    ck_assert_int_eq(colo_silence_tick(&s, 1400), COLO_SILENCE_PEER_SILENT);
}
END_TEST

START_TEST(test_heartbeat_and_tick_periods)
{
    ck_assert_int_eq(colo_silence_heartbeat_ms(1500), 150);
    ck_assert_int_eq(colo_silence_tick_ms(1500), 150);
    /*
     * A primary blocked writing shuts the channel after the grace: by
     * then the secondary has waited longer than the gap, and a tick has
     * passed.
     */
    ck_assert_int_gt(colo_silence_grace_ms(1500),
                     1500 * COLO_SILENCE_GAP / 1000 +
                     colo_silence_tick_ms(1500));
    ck_assert_int_lt(colo_silence_heartbeat_ms(1500) + 400,
                     1500 * COLO_SILENCE_GAP / 1000);
    /* The client's longest wait for a silent secondary: under T + 1 s. */
    ck_assert_int_lt(1500 + colo_silence_grace_ms(1500) +
                     colo_silence_tick_ms(1500), 1500 + 1000);
    ck_assert_int_ge(colo_silence_heartbeat_ms(1), 1);
    ck_assert_int_ge(colo_silence_tick_ms(1), 1);
}
END_TEST

int main(void)
{
    Suite *su = suite_create("colo-silence");
    TCase *tc = tcase_create("rule");

    tcase_add_checked_fixture(tc, setup, NULL);
    tcase_add_test(tc, test_silent_exactly_after_the_timeout);
    tcase_add_test(tc, test_hearing_renews);
    tcase_add_test(tc, test_not_waiting_is_never_silent);
    tcase_add_test(tc, test_wait_end_stops_the_judgement);
    tcase_add_test(tc, test_heard_at_the_bound_is_in_time);
    tcase_add_test(tc, test_clock_going_backwards_is_refused);
    tcase_add_test(tc, test_frozen_side_blames_no_one);
    tcase_add_test(tc, test_freeze_bound);
    tcase_add_test(tc, test_stale_watchdog_means_no_death);
    tcase_add_test(tc, test_long_wait_casts_doubt);
    tcase_add_test(tc, test_end_judged_when_seen);
    tcase_add_test(tc, test_end_long_after_the_last_word);
    tcase_add_test(tc, test_listening_counts_from_the_last_word);
    tcase_add_test(tc, test_silent_peer_means_no_death);
    tcase_add_test(tc, test_timeout_changes_live);
    tcase_add_test(tc, test_heartbeat_and_tick_periods);
    suite_add_tcase(su, tc);
    return check_run(su);
}
