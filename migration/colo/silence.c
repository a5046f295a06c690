/*
 * COLO: the silence rule (see silence.h).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "silence.h"

void colo_silence_init(ColoSilence *s, int64_t timeout_ms, int64_t now)
{
    *s = (ColoSilence) {
        .timeout_ms = timeout_ms,
        .since_ms = now,
        .heard_ms = now,
        .last_tick_ms = now,
        .doubt_until_ms = now,
    };
}

void colo_silence_set_timeout(ColoSilence *s, int64_t timeout_ms)
{
    s->timeout_ms = timeout_ms;
}

void colo_silence_wait_begin(ColoSilence *s, int64_t now)
{
    if (!s->waiting) {
        s->waiting = true;
        s->since_ms = MAX(s->since_ms, now);
    }
}

/* For twice the timeout from @now, a stream end is not death. */
static void colo_silence_doubt(ColoSilence *s, int64_t now)
{
    s->doubt_until_ms = MAX(s->doubt_until_ms, now + 2 * s->timeout_ms);
}

void colo_silence_listen_begin(ColoSilence *s)
{
    s->waiting = true;
}

static void colo_silence_check_gap(ColoSilence *s, int64_t now)
{
    if (s->waiting &&
        now - s->since_ms > s->timeout_ms * COLO_SILENCE_GAP / 1000) {
        colo_silence_doubt(s, now);
    }
}

void colo_silence_heard(ColoSilence *s, int64_t now)
{
    colo_silence_check_gap(s, now);
    s->since_ms = MAX(s->since_ms, now);
    s->heard_ms = MAX(s->heard_ms, now);
}

void colo_silence_wait_end(ColoSilence *s, int64_t now)
{
    colo_silence_check_gap(s, now);
    s->end_ok = colo_silence_could_be_death(s, now);
    s->waiting = false;
}

ColoSilenceVerdict colo_silence_tick(ColoSilence *s, int64_t now)
{
    if (now < s->last_tick_ms) {
        /* A clock going backwards proves nothing either way. */
        return COLO_SILENCE_OK;
    }
    if (now - s->last_tick_ms > s->timeout_ms / 2) {
        /* This side did not run: frozen, not a silent peer. */
        s->since_ms = MAX(s->since_ms, now);
        colo_silence_doubt(s, now);
    }
    s->last_tick_ms = now;
    if (s->silent || !s->waiting || now - s->since_ms <= s->timeout_ms) {
        return COLO_SILENCE_OK;
    }
    s->silent = true;
    return COLO_SILENCE_PEER_SILENT;
}

bool colo_silence_is_silent(const ColoSilence *s)
{
    return s->silent;
}

bool colo_silence_declare(ColoSilence *s)
{
    bool was = s->silent;

    s->silent = true;
    return !was;
}

bool colo_silence_end_is_death(const ColoSilence *s)
{
    return !s->silent && s->end_ok;
}

bool colo_silence_could_be_death(const ColoSilence *s, int64_t now)
{
    return !s->silent &&
           now >= s->heard_ms &&
           now - s->heard_ms <= s->timeout_ms * COLO_SILENCE_GAP / 1000 &&
           now >= s->last_tick_ms &&
           now - s->last_tick_ms <= s->timeout_ms / 2 &&
           now >= s->doubt_until_ms;
}

int64_t colo_silence_heartbeat_ms(int64_t timeout_ms)
{
    /*
     * Well inside COLO_SILENCE_GAP: a steady peer casts no doubt, even
     * with a checkpoint's capture between two words.
     */
    return MAX(timeout_ms / 10, 1);
}

int64_t colo_silence_tick_ms(int64_t timeout_ms)
{
    return MAX(timeout_ms / 10, 1);
}

int64_t colo_silence_grace_ms(int64_t timeout_ms)
{
    return timeout_ms * COLO_SILENCE_GRACE / 1000;
}
