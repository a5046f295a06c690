/*
 * COLO: the silence rule, as a pure state machine (no clock, no thread).
 *
 * A side judges its peer by what it hears on the replication channel.
 * The peer is silent when this side has been waiting on it (for a
 * message, for a write to drain, for an ack) and has heard nothing for
 * the silence timeout.
 *
 * A stream that ends is the peer's death only when this side has been
 * hearing it steadily.  Not so when this side was frozen (SIGSTOP, a
 * hung host that came back, a starved process: its own watchdog did not
 * tick for half the timeout), nor when it waited on the peer for more
 * than COLO_SILENCE_GAP of the timeout without a word: what it reads
 * after that may be stale, and a peer that judged *it* silent may have
 * ended the stream while serving on (a primary blocked writing to us
 * shuts the channel whole after COLO_SILENCE_GRACE of the timeout, which
 * is more than that gap plus a tick).  For twice the timeout after
 * either, a stream end is no proof that the peer died.
 *
 * The caller passes the time (milliseconds of a monotonic clock) to
 * every function; heartbeat.c feeds it from a watchdog thread.  A clock
 * that goes backwards is refused: the judgement stands still.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef MIGRATION_COLO_SILENCE_H
#define MIGRATION_COLO_SILENCE_H

/*
 * Fractions of the timeout, per mille.  GRACE must exceed GAP plus a
 * tick (a tenth), and T + GRACE + a tick stays under T + 1 s at the
 * default T: the client's longest wait when the secondary goes silent.
 */
#define COLO_SILENCE_GAP 400    /* a wait this long casts doubt */
#define COLO_SILENCE_GRACE 550  /* see colo_silence_grace_ms() */

typedef enum ColoSilenceVerdict {
    COLO_SILENCE_OK,            /* heard recently, or not waiting */
    COLO_SILENCE_PEER_SILENT,   /* waited a whole timeout, heard nothing */
} ColoSilenceVerdict;

typedef struct ColoSilence {
    int64_t timeout_ms;
    bool waiting;               /* this side waits on the peer */
    int64_t since_ms;           /* heard from the peer, or began waiting */
    int64_t heard_ms;           /* heard from the peer */
    int64_t last_tick_ms;       /* the watchdog's last tick */
    int64_t doubt_until_ms;     /* a stream end before this is not death */
    bool silent;                /* the verdict was given: it stands */
    bool end_ok;                /* the last wait could end in death */
} ColoSilence;

/* Start judging at @now with @timeout_ms. */
void colo_silence_init(ColoSilence *s, int64_t timeout_ms, int64_t now);

/* The timeout may change at any time (a live parameter). */
void colo_silence_set_timeout(ColoSilence *s, int64_t timeout_ms);

/*
 * This side begins to wait on the peer, or stops waiting.  A wait longer
 * than COLO_SILENCE_GAP of the timeout casts doubt, whether a word or the
 * stream's end ends it; the end of a wait also records whether a stream
 * end right then could be the peer's death (colo_silence_end_is_death()).
 */
void colo_silence_wait_begin(ColoSilence *s, int64_t now);
void colo_silence_wait_end(ColoSilence *s, int64_t now);

/*
 * This side listens for the peer's answer: the wait goes on from this
 * side's last word (or the peer's), so that time spent not listening
 * counts (what the peer sent meanwhile waited for us: it may be stale).
 */
void colo_silence_listen_begin(ColoSilence *s);

/*
 * Something arrived from the peer, or the peer took bytes we sent.  A
 * wait longer than COLO_SILENCE_GAP of the timeout ends in doubt.
 */
void colo_silence_heard(ColoSilence *s, int64_t now);

/*
 * The watchdog's tick.  A tick that comes more than half the timeout
 * after the last one means this side was frozen: the wait starts again
 * from @now (what this side missed while frozen is not the peer's
 * fault), and until twice the timeout from now a stream end is not
 * taken as the peer's death.  Returns the verdict; PEER_SILENT is given
 * once, and colo_silence_is_silent() tells it from then on.
 */
ColoSilenceVerdict colo_silence_tick(ColoSilence *s, int64_t now);

bool colo_silence_is_silent(const ColoSilence *s);

/*
 * Judge the peer silent now, whatever the clock says (this side was cut
 * off by a freeze).  Returns false if it already was.
 */
bool colo_silence_declare(ColoSilence *s);

/*
 * Could a stream that ends at @now be the peer's death?  Only if the
 * peer spoke last less than COLO_SILENCE_GAP of the timeout ago.  Not
 * when the peer was judged silent, nor right after this side was frozen
 * or waited long, nor when the watchdog has not ticked for half the
 * timeout (this side is frozen now, or has just been thawed).
 */
bool colo_silence_could_be_death(const ColoSilence *s, int64_t now);

/*
 * The stream has ended (the wait that saw it has ended): is it the
 * peer's death?  Judged when that wait ended, not now: a side starved
 * between seeing the end and deciding must not outlive its doubt.
 */
bool colo_silence_end_is_death(const ColoSilence *s);

/* How often the primary sends HEARTBEAT while idle, and the watchdog ticks. */
int64_t colo_silence_heartbeat_ms(int64_t timeout_ms);
int64_t colo_silence_tick_ms(int64_t timeout_ms);

/*
 * How long after its verdict a primary still blocked writing to a silent
 * secondary shuts the channel whole (and the secondary may see the end).
 */
int64_t colo_silence_grace_ms(int64_t timeout_ms);

#endif
