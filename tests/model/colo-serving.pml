/*
 * Who serves when a COLO pair comes apart: a model of the rules in
 * docs/devel/migration/colo.rst, "Failure handling", checked by spin
 * (scripts/run-checks.sh model).  The names follow the code:
 *
 *   primary.c    P_COLO (the checkpoint loop), P_ALONE (left COLO and
 *                serves on: held output released), P_GONE (quit, guest
 *                shutdown or killed: held output dropped)
 *   secondary.c  S_RECV (the receive loop), S_TOOK_OVER (failover),
 *                S_DOWN (stayed down: its SVM never runs), S_DEAD
 *
 * The channel is one TCP connection: FIFO both ways; a side that closes
 * queues FIN behind what it sent (a killed process too: its kernel does);
 * the secondary's sends fail once the primary has closed (back_closed).
 * The primary's epochs: output of epoch e is covered by checkpoint e;
 * RECEIVED(e) releases what is sealed (colo_output_release()).
 * Pipelined, as in primary.c: the primary goes on at RECEIVED and reads
 * LOADED on its way (colo_primary_await()); it captures the next
 * checkpoint only once the last is RECEIVED and the SVM is at most one
 * behind (colo_acks_may_send()).  A capture (the epoch sealed) and its
 * send are two steps: a primary killed in between, or mid-send, leaves a
 * torn checkpoint the secondary never holds.  Standalone mode and a link
 * that neither drops nor stalls: silent peers and partitions are the
 * heartbeat's and the lease's to model.
 *
 * Safety, checked in every state:
 *   ONE_SERVES   never the primary alone and the secondary taken over;
 *   COVERED      a secondary that took over stands behind every output a
 *                client saw: released_max <= s_committed.
 *
 * Each mutant below takes one rule out; the checker must then find a
 * violation, which shows that the model sees the failure the rule guards
 * against (scripts/run-checks.sh checks both ways):
 *   NO_LAST_WORD   the secondary does not read what the primary left in a
 *                  closed connection when its ack fails
 *                  (colo_secondary_read_last_word());
 *   HARD_LEAVE     a primary that serves on closes without telling the
 *                  secondary (colo_state_interrupt() shutting the channel
 *                  down whole at once);
 *   QUIT_RELEASES  a primary that goes away releases what it held
 *                  (colo_output_stop(true) on quit: review finding H4);
 *   NO_ACK_BOUND   the primary captures the next checkpoint before the
 *                  last one's RECEIVED: that RECEIVED then releases
 *                  output of a checkpoint the secondary may never hold.
 *
 * model-mutants: NO_LAST_WORD HARD_LEAVE QUIT_RELEASES NO_ACK_BOUND
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#define MAXE 2          /* checkpoints the primary takes at most */

#define P_COLO  0
#define P_ALONE 1
#define P_GONE  2

#define S_RECV      0
#define S_TOOK_OVER 1
#define S_DOWN      2
#define S_DEAD      3

mtype = { CKPT, ERR, SHUT, GARBAGE, FIN, RECEIVED, LOADED, SERR };

chan fwd = [8] of { mtype, byte };     /* primary -> secondary */
chan back = [8] of { mtype, byte };    /* secondary -> primary */

bool back_closed = false;
byte p_state = P_COLO;
byte s_state = S_RECV;
byte p_epoch = 0;           /* last checkpoint captured (sealed) */
byte p_sent = 0;            /* last checkpoint sent whole */
byte p_received = 0;        /* last RECEIVED */
byte p_loaded = 0;          /* last LOADED */
byte released_max = 0;      /* newest epoch whose output clients saw */
byte s_committed = 0;       /* the secondary's disks stand here: it loads it */

#define ONE_SERVES  (!(p_state == P_ALONE && s_state == S_TOOK_OVER))
#define COVERED     (s_state != S_TOOK_OVER || released_max <= s_committed)

/* The primary leaves COLO and serves on: it tells the secondary first. */
inline leave_serving()
{
    atomic {
#ifndef HARD_LEAVE
        fwd ! ERR(p_epoch);
#endif
        fwd ! FIN(0);
        back_closed = true;
        /* what it held, covered or not, goes out now */
        released_max = p_epoch + 1;
        p_state = P_ALONE
    }
}

/* The primary goes away: the guest stops first, held output is dropped. */
inline leave_gone()
{
    atomic {
#ifdef QUIT_RELEASES
        released_max = p_epoch + 1;
#endif
        fwd ! FIN(0);
        back_closed = true;
        p_state = P_GONE
    }
}

#ifdef NO_ACK_BOUND
#define MAY_CAPTURE (p_sent == p_epoch)
#else
#define MAY_CAPTURE (p_received == p_epoch && p_loaded + 1 >= p_received)
#endif

active proctype Primary()
{
    byte m, e;

    do
    :: p_state == P_COLO && p_epoch < MAXE && MAY_CAPTURE ->
        p_epoch++                       /* stop, capture, seal, resume */
    :: p_state == P_COLO && p_sent < p_epoch ->
        p_sent++;
        fwd ! CKPT(p_sent)
    :: p_state == P_COLO && nempty(back) ->
        /* colo_primary_await(): acknowledgements, in order */
        back ? m(e);
        if
        :: m == RECEIVED -> p_received = e; released_max = p_epoch
        :: m == LOADED -> p_loaded = e
        :: else -> leave_serving()      /* SERR, FIN */
        fi
    :: p_state == P_COLO -> leave_serving()  /* cancel, lost-heartbeat */
    :: p_state == P_COLO -> leave_gone()     /* quit, SIGTERM, SIGKILL */
    :: p_state == P_COLO ->
        /* the guest powers off: both sides end */
        atomic { fwd ! SHUT(0); fwd ! FIN(0); back_closed = true;
                 p_state = P_GONE }
    :: p_state == P_COLO -> fwd ! GARBAGE(0)   /* a corrupt message */
    :: p_state != P_COLO -> break
    od
}

active proctype Secondary()
{
    byte m, e;

    do
    :: s_state == S_RECV ->
        fwd ? m(e);
        if
        :: m == CKPT ->
            s_committed = e;                    /* the overlays are emptied */
            if
            :: back_closed -> goto ack_failed
            :: else -> back ! RECEIVED(e)
            fi;
            if
            :: back_closed -> goto ack_failed
            :: else -> back ! LOADED(e)
            fi
        :: m == ERR || m == SHUT -> s_state = S_DOWN
        :: m == GARBAGE ->
            /* well framed but wrong: the primary is alive */
            if
            :: !back_closed -> back ! SERR(0)
            :: else -> skip
            fi;
            s_state = S_DOWN
        :: m == FIN -> s_state = S_TOOK_OVER    /* the stream ended */
        fi
    :: s_state == S_RECV ->
        /* killed */
        atomic { back ! FIN(0); s_state = S_DEAD }
    :: s_state != S_RECV -> break
    od;
    goto done;

ack_failed:
#ifdef NO_LAST_WORD
    s_state = S_TOOK_OVER;
#else
    /* colo_secondary_read_last_word(): what the closed connection holds */
    do
    :: fwd ? m(e) ->
        if
        :: m == ERR || m == SHUT -> s_state = S_DOWN; break
        :: m == FIN -> s_state = S_TOOK_OVER; break
        :: else -> skip
        fi
    od;
#endif
done:
    skip
}

active proctype Invariants()
{
end:
    do
    :: assert(ONE_SERVES && COVERED)
    od
}
