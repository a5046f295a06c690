/*
 * Who serves when a COLO peer goes silent: a model of the heartbeat and
 * the silence rule (migration/colo/heartbeat.h, silence.h;
 * docs/devel/migration/colo.rst, "A silent peer"), checked by spin
 * (scripts/run-checks.sh model).  Standalone mode: no arbiter.
 *
 * Time is a clock that advances on its own (Clock); each side's watchdog
 * (heartbeat.c) ticks with it.  Times are kept as ages that stop growing
 * once past every bound that reads them, so that the clock may run for
 * ever over a finite state space.  A side's loop (primary.c, secondary.c)
 * may be delayed without bound: a starved thread is any interleaving in
 * which it takes no step while the clock runs.  A pause (SIGSTOP, by
 * Nemesis) stops a side's loop and watchdog both.  The link is
 * one TCP connection: FIFO each way, with what the sender's kernel holds
 * (fwd has room for one message: a sender blocks when it is full); a
 * partition (Nemesis, both ways or one way, healed, in any order) holds
 * back everything in that direction, as TCP does, and delivers it after
 * the heal; FIN travels behind the data.
 *
 * Names follow the code: P_COLO, P_ALONE (serves on, releases all it
 * held), P_GONE (killed); S_RECV, S_CUT_OFF (waits for the operator's
 * x-colo-lost-heartbeat), S_TOOK_OVER, S_DOWN (stayed down).  The units
 * are tenths of the silence timeout, as the code's fractions:
 *
 *   T       the silence timeout: waited this long unheard, the peer is
 *           silent (colo_silence_tick())
 *   GAP     a wait longer than this casts doubt, whether a word or the
 *           stream's end ends it, and a stream end is death only this
 *           soon after the peer's last word (COLO_SILENCE_GAP,
 *           colo_silence_heard(), colo_silence_wait_end())
 *   GRACE   after its verdict, a primary still blocked writing shuts the
 *           channel whole (COLO_SILENCE_GRACE)
 *   FROZEN  a watchdog tick this late means this side was frozen
 *   DOUBT   how long doubt lasts: a stream end then is not death
 *
 * The operator takes a cut-off secondary over only once the primary is
 * dead, as QEMU's documentation asks.
 *
 * Safety, asserted wherever a side starts to serve or output is
 * released:
 *   ONE_SERVES   never the primary alone and the secondary taken over;
 *   COVERED      a secondary that took over stands behind every output a
 *                client saw: released_max <= s_have.
 *
 * Mutants, each of which must produce a violation:
 *   NO_SILENCE_RULE  a secondary takes every stream end for the primary's
 *                    death (the rule before the heartbeat);
 *   NO_GAP_RULE      a long wait casts no doubt.
 * NO_FREEZE_RULE (a late watchdog tick casts no doubt) is not among them:
 * in the model the gap rule covers a frozen secondary too (its wait, which
 * goes on from the last word, is long when it thaws); the code keeps both.
 *
 * A side may wait for ever (a cut-off secondary for its operator): an
 * end in a wait is no deadlock.
 *
 * model-mutants: NO_SILENCE_RULE NO_GAP_RULE
 * model-pan-flags: -E
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#define T       4
#define GAP     1
#define GRACE   3
#define FROZEN  2
#define DOUBT   8
#define CANCEL_GRACE 3  /* colo_state_interrupt()'s 1 s, at T = 1.5 s */
#define MAXE    2       /* checkpoints the primary takes at most */
#define MAXMSG  2       /* messages (checkpoints, heartbeats) at most */

#define P_COLO  0
#define P_ALONE 1
#define P_GONE  2

#define S_RECV      0
#define S_CUT_OFF   1
#define S_TOOK_OVER 2
#define S_DOWN      3
#define S_DEAD      4

mtype = { CKPT, HEARTBEAT, ERR, ACK, END };

chan fwd = [1] of { mtype, byte };      /* primary -> secondary */
chan back = [2] of { mtype, byte };     /* secondary -> primary */
bool fwd_fin = false;       /* the primary closed: FIN behind fwd's data */
bool back_fin = false;      /* the secondary closed */
bool fwd_cut = false;
bool back_cut = false;
bool p_frozen = false;      /* SIGSTOP: the loop and the watchdog stand */
bool s_frozen = false;

byte p_state = P_COLO;
byte p_epoch = 0;           /* last checkpoint sent */
byte p_sent = 0;
byte released_max = 0;      /* newest epoch whose output clients saw */
bool p_waiting = false;
byte p_age = 0;             /* since heard, or began waiting */
byte p_missed = 0;          /* watchdog ticks missed (frozen) */
bool p_silent = false;      /* the verdict */
byte p_verdict_age = 0;
bool p_hard = false;        /* the channel is shut whole */
bool p_cancelled = false;   /* migrate_cancel: a soft interrupt */
byte p_cancel_age = 0;

byte s_state = S_RECV;
byte s_have = 0;            /* checkpoint the secondary holds */
bool s_waiting = false;
byte s_age = 0;             /* since heard, or began waiting */
byte s_heard_age = 0;       /* since the primary's last word */
byte s_doubt = 0;           /* a stream end is no death while > 0 */
byte s_missed = 0;          /* watchdog ticks missed (frozen) */
bool s_silent = false;
bool s_end_ok = false;      /* colo_silence_end_is_death()'s snapshot */

#define ONE_SERVES  (!(p_state == P_ALONE && s_state == S_TOOK_OVER))
#define COVERED     (s_state != S_TOOK_OVER || released_max <= s_have)

/* Ages stop growing past what any bound reads. */
#define AGE(v, cap) if :: v < cap -> v++ :: else -> skip fi

/* colo_silence_could_be_death(), taken when the wait that saw the end ends */
#ifdef NO_SILENCE_RULE
#define COULD_BE_DEATH true
#else
#define COULD_BE_DEATH (!s_silent && s_missed <= FROZEN && s_doubt == 0 && \
                        s_heard_age <= GAP)
#endif

/* colo_silence_wait_begin() */
inline p_wait_begin()
{
    if
    :: !p_waiting -> p_waiting = true; p_age = 0
    :: else -> skip
    fi
}

/*
 * colo_silence_listen_begin(): a receive goes on with the wait that this
 * side's last word (or the peer's) began: the time this side spent not
 * listening counts, data may have waited for it.
 */
inline s_listen_begin()
{
    s_waiting = true
}

/* A wait longer than GAP casts doubt, whether a word ends it or not. */
inline s_gap_check()
{
#ifndef NO_GAP_RULE
    if
    :: s_waiting && s_age > GAP -> s_doubt = DOUBT
    :: else -> skip
    fi
#else
    skip
#endif
}

/* colo_silence_heard() */
inline s_heard()
{
    s_gap_check();
    s_age = 0;
    s_heard_age = 0
}

/* heartbeat.c's watchdog of the primary: one tick */
inline p_watchdog_tick()
{
    if
    :: p_missed > FROZEN -> p_age = 0   /* frozen: nobody's fault */
    :: else -> skip
    fi;
    p_missed = 0;
    if
    :: p_state == P_COLO && !p_silent && p_waiting && p_age > T ->
        p_silent = true; p_verdict_age = 0
    :: else -> skip
    fi;
    if
    :: p_silent && !p_hard && p_waiting && p_verdict_age >= GRACE ->
        p_hard = true
    :: p_cancelled && !p_hard && p_waiting &&
       p_cancel_age >= CANCEL_GRACE -> p_hard = true
    :: else -> skip
    fi
}

/* heartbeat.c's watchdog of the secondary: one tick (colo_silence_tick()) */
inline s_watchdog_tick()
{
    if
    :: s_state == S_RECV ->
#ifndef NO_FREEZE_RULE
        if
        :: s_missed > FROZEN ->
            /* frozen: the peer is not to blame for what we missed */
            s_doubt = DOUBT;
            s_age = 0
        :: else -> skip
        fi;
#endif
        s_missed = 0;
        if
        :: s_waiting && !s_silent && s_age > T -> s_silent = true
        :: else -> skip
        fi
    :: else -> skip
    fi
}

/*
 * Time, and the watchdogs: a thread of each side that ticks with it,
 * unless that side is frozen (then it misses the ticks, and notices).
 */
active proctype Clock()
{
end:
    do
    :: atomic {
        AGE(p_age, T + 1);
        AGE(p_verdict_age, GRACE);
        AGE(p_cancel_age, CANCEL_GRACE);
        AGE(s_age, T + 1);
        AGE(s_heard_age, GAP + 1);
        if
        :: s_doubt > 0 -> s_doubt--
        :: else -> skip
        fi;
        if
        :: !p_frozen -> p_watchdog_tick()
        :: else -> AGE(p_missed, FROZEN + 1)
        fi;
        if
        :: !s_frozen -> s_watchdog_tick()
        :: else -> AGE(s_missed, FROZEN + 1)
        fi
       }
    od
}

/*
 * One fault per run, at any instant, healed at any later instant (or
 * never): the link cut both ways or one way, or a side frozen.
 */
active proctype Nemesis()
{
    if
    :: atomic { fwd_cut = true; back_cut = true }
    :: fwd_cut = true
    :: back_cut = true
    :: p_frozen = true
    :: s_frozen = true
    fi;
    atomic { fwd_cut = false; back_cut = false;
             p_frozen = false; s_frozen = false }
}

active proctype Primary() provided (!p_frozen)
{
    mtype m;
    byte e;

    do
    :: p_state == P_COLO && p_sent < MAXMSG && !p_silent ->
        p_sent++;
        /* the next checkpoint, or a heartbeat when idle */
        if
        :: p_epoch < MAXE -> p_epoch++; m = CKPT
        :: m = HEARTBEAT
        fi;
        p_wait_begin();
        /* the write blocks while the kernel's buffer is full */
        if
        :: atomic { nfull(fwd) && !p_hard -> fwd ! m(p_epoch); p_age = 0 }
        :: p_hard -> p_waiting = false; goto alone
        :: goto gone
        fi;
        /* the secondary's answer: RECEIVED covers the checkpoint */
        if
        :: atomic { !back_cut && nempty(back) && !p_silent -> back ? ACK(e);
                    p_waiting = false; p_age = 0;
                    if
                    :: m == CKPT -> released_max = e
                    :: else -> skip
                    fi;
                    assert(COVERED) }
        :: atomic { !back_cut && empty(back) && back_fin } ->
            p_waiting = false; goto alone          /* the secondary died */
        :: p_silent -> p_waiting = false; goto alone   /* read side shut */
        :: goto gone                            /* killed */
        :: atomic { p_cancelled = true; p_cancel_age = 0;
                    p_waiting = false }; goto alone     /* migrate_cancel */
        fi
    :: p_state == P_COLO && p_sent == MAXMSG -> goto gone  /* the end */
    :: p_state == P_COLO && p_silent -> goto alone  /* the verdict: leave */
    od;

alone:
    /* tell the secondary (ERROR), unless blocked until the hard shut */
    p_wait_begin();
    if
    :: atomic { nfull(fwd) && !p_hard -> fwd ! ERR(0) }
    :: p_hard -> skip
    fi;
    atomic {
        p_waiting = false;
        fwd_fin = true;
        released_max = p_epoch + 1;     /* held output goes out */
        p_state = P_ALONE;
        assert(ONE_SERVES && COVERED)
    }
    goto done;

gone:
    atomic { fwd_fin = true; p_state = P_GONE };
done:
    skip
}

active proctype Secondary() provided (!s_frozen)
{
    mtype m;
    byte e;

    do
    :: s_state == S_RECV ->
        s_listen_begin();
        if
        :: atomic { !fwd_cut && nempty(fwd) -> fwd ? m(e); s_heard();
                    s_waiting = false }
        :: atomic { !fwd_cut && empty(fwd) && fwd_fin -> m = END;
                    s_gap_check(); s_end_ok = COULD_BE_DEATH;
                    s_waiting = false }
        :: atomic { s_silent -> m = END; s_gap_check();
                    s_end_ok = COULD_BE_DEATH; s_waiting = false } /* shut */
        :: atomic { back ! END(0); back_fin = true; s_state = S_DEAD };
            break                                         /* killed */
        fi;
        if
        :: m == CKPT || m == HEARTBEAT ->
            if
            :: m == CKPT -> s_have = e
            :: else -> skip
            fi;
            if
            :: atomic { nfull(back) -> back ! ACK(e); s_age = 0 } /* spoke */
            :: atomic { s_silent -> s_end_ok = false }; goto ended
            fi
        :: m == ERR -> s_state = S_DOWN
        :: m == END -> goto ended
        fi
    :: s_state != S_RECV -> break
    od;
    goto done;

ended:
    if
    :: atomic { !s_silent && s_end_ok -> s_state = S_TOOK_OVER;
                assert(ONE_SERVES && COVERED) }
    :: else ->
        s_state = S_CUT_OFF;
        /* the operator, once the primary is dead */
        atomic { p_state == P_GONE -> s_state = S_TOOK_OVER;
                 assert(ONE_SERVES && COVERED) }
    fi;
done:
    skip
}
