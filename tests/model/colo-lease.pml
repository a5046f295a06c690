/*
 * Who serves when a COLO pair has an arbiter: a model of the arbitrated
 * mode (x-colo-arbitrated: leases granted by x-colo-lease-grant), checked
 * by spin (scripts/run-checks.sh model).  The standalone mode is
 * colo-silence.pml; its silence rule is abstracted here: a primary may
 * leave COLO (P_ALONE) at any time (the peer silent, the stream ended, the
 * operator), a secondary may stop receiving (S_CUT_OFF) at any time (its
 * stream ended, or silent), which covers every partition and delay of the
 * replication link.  Under arbitration a secondary never takes over by
 * itself: only the arbiter's hand-over (a grant on the secondary) does.
 *
 * Time is a clock that advances on its own (Clock): one global tick, in
 * which the primary's local clock and the arbiter's each advance by one,
 * or fall behind by one: a clock falls behind at most once in any W ticks
 * (its rate is between 1 - 1/W and 1 of the other's: the drift bound).  A
 * clock runs on while its process is paused (SIGSTOP stops no clock):
 * only a timer of the paused process does not fire.  Leases are kept as
 * what is left of them on the clock that counts them, which stops at 0,
 * so the state space stays finite while the clock runs for ever.
 *
 * The lease: the arbiter grants or renews the primary's lease (one QMP
 * command at a time, on a link of its own, FIFO each way, that Nemesis may
 * cut both ways or one way and heal: what is held back arrives after the
 * heal, as TCP does), sole only once it has recorded that the primary is
 * alone (the primary's event, on the same link, which may come late).
 * QEMU counts V from when it receives the grant, on its clock; the
 * arbiter counts V + M from when it gets QEMU's answer, on its own clock,
 * and a grant not yet answered counts as running (it may still arrive).
 * A killed primary's QMP connection ends (EOF behind its data): a dead
 * process takes no grant.  The arbiter hands over to the secondary only
 * when its record has run out and it never granted a sole lease; it may
 * withhold a renewal at any time (a decision, or lost contact), and
 * grants nothing to the primary after a hand-over.
 *
 * Names follow the spec and the code: P_COLO (releases output of
 * checkpoint N on RECEIVED(N) only, whatever its lease), P_ALONE (releases
 * uncovered output only while a sole lease is valid on its clock, checked
 * at each release; holds it under a non-sole lease; fences when the lease
 * lapses: its timer at the lapse, or its check when it runs again),
 * P_FENCED (final: held output purged, grants refused), P_GONE (killed);
 * S_RECV, S_CUT_OFF (waits for the arbiter), S_TOOK_OVER (then serves
 * under its own lease: modelled as simply serving), S_DOWN (an ERROR came:
 * refuses the grant), S_DEAD.  The units are ticks:
 *
 *   V       the lease's validity, in ticks of the clock that counts it
 *   W       the drift window: a clock falls behind by at most one tick in
 *           any W ticks
 *   M       the arbiter's margin: V local ticks of the primary last at
 *           most V + M ticks of the arbiter (V = 3, W = 3: at most 5 ticks:
 *           behind at the first and the fourth, M = 2 = V/W + 1, the
 *           spec's V*rho and its eps for the phase)
 *
 * Safety, asserted wherever output is released or a side takes over:
 *   ONE_SERVES   never both sides serving: at every release of uncovered
 *                output by the primary the secondary has not taken over
 *                (once it has, the old primary releases nothing uncovered
 *                ever again), and when the secondary takes over the
 *                primary may not release any;
 *   COVERED      a secondary that took over stands behind every output a
 *                client saw: released_max <= s_have.
 * And the lease's own promise ("QEMU's lease always lapses first"),
 * asserted at every tick, grant, answer and hand-over, and at every
 * release of uncovered output:
 *   LEASE        while the primary holds a valid lease (on its clock), the
 *                arbiter's record of it runs (on its clock), and the
 *                primary releases uncovered output only while that record
 *                runs.
 * ONE_SERVES and COVERED do not rest on the clocks: the sole rule and the
 * arbiter's one record (sole, or handed over, never both) keep them, with
 * any drift, margin or pause, even if the arbiter did not wait for the
 * record to run out (build with -DNO_LEASE_ASSERT to check them alone:
 * the timing mutants below then find nothing).  The lease's timing keeps
 * LEASE, which is what ONE_SERVES falls back on if that record is lost (a
 * hand-over after a sole grant breaks COVERED whatever the timing, and
 * ONE_SERVES only with a timing mutant too: -DNO_LEASE_ASSERT
 * -DNO_SOLE_RECORD -DNO_DRIFT_MARGIN), and what an arbiter that acts on
 * the record's expiry otherwise (a restart elsewhere) relies on.
 *
 * Mutants, each of which must produce a violation:
 *   NO_SOLE_RULE     a primary alone releases uncovered output under any
 *                    valid lease, sole or not (COVERED);
 *   NO_SOLE_RECORD   the arbiter hands over although it granted a sole
 *                    lease (COVERED);
 *   NO_HANDED_RECORD the arbiter still grants the primary after it handed
 *                    over: sole, once the primary says it is alone
 *                    (ONE_SERVES, COVERED);
 *   NO_DRIFT_MARGIN  the arbiter counts the lease from when it sent the
 *                    grant, without margin (LEASE);
 *   FROM_SEND        ... from when it sent the grant, with the margin: a
 *                    grant that waits on the way outlives it (LEASE);
 *   SHORT_MARGIN     ... from the answer, with a margin one tick short:
 *                    drift (LEASE);
 *   NO_FENCE_CHECK   a primary alone that resumes from a pause releases
 *                    output before checking its lease: it trusts a timer
 *                    that did not fire while it was frozen (LEASE);
 *   FORGET_GRANT     the arbiter gives up on a grant not answered (a QMP
 *                    timeout) and counts from its old record: the grant
 *                    arrives late (LEASE).
 *
 * Faults, one per run, at any instant, healed at any later instant (or
 * never): a pause of the primary, the secondary or the arbiter (arbiter
 * down: it keeps its record, as etcd does), the arbiter's link or the
 * replication link cut both ways or one way, the primary or the
 * secondary killed.  A side may wait for ever: an end in a wait is no
 * deadlock.
 *
 * model-mutants: NO_SOLE_RULE NO_SOLE_RECORD NO_HANDED_RECORD NO_DRIFT_MARGIN FROM_SEND SHORT_MARGIN NO_FENCE_CHECK FORGET_GRANT
 * model-pan-flags: -E
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#define V       3
#define W       3
#define M       2
#define MAXE    2       /* checkpoints the primary takes at most */
#ifndef FAULTS
#define FAULTS  1       /* faults per run (-DFAULTS=2: see above) */
#endif

#define P_COLO   0
#define P_ALONE  1
#define P_FENCED 2
#define P_GONE   3

#define S_RECV      0
#define S_CUT_OFF   1
#define S_TOOK_OVER 2
#define S_DOWN      3
#define S_DEAD      4

mtype = { CKPT, ACK, ERR, GRANT, ANSWER, ALONE, HANDOVER };

chan fwd = [1] of { mtype, byte };      /* primary -> secondary */
chan back = [MAXE] of { mtype, byte };  /* secondary -> primary: RECEIVED */
chan a2p = [1] of { mtype, bool };      /* arbiter -> primary: grants (sole) */
chan p2a = [2] of { mtype, bool };      /* primary -> arbiter: answers, ALONE */
chan a2s = [1] of { mtype, bool };      /* arbiter -> secondary: hand-over */
bool fwd_cut = false;
bool back_cut = false;
bool a2p_cut = false;
bool p2a_cut = false;
bool p_eof = false;         /* the primary died: EOF behind p2a's data */
bool p_frozen = false;      /* SIGSTOP: the loop and its timers stand */
bool s_frozen = false;
bool a_frozen = false;      /* the arbiter down or paused */

byte p_state = P_COLO;
byte p_epoch = 0;           /* last checkpoint sent */
byte released_max = 0;      /* newest epoch whose output clients saw */
byte p_left = 0;            /* lease left, on the primary's clock */
bool p_sole = false;        /* the lease held is sole */
byte p_lag = W - 1;         /* ticks since the primary's clock fell behind */

byte s_state = S_RECV;
byte s_have = 0;            /* last checkpoint fully received */

byte a_left = 0;            /* the record: lease left, on the arbiter's clock */
byte a_lag = W - 1;         /* ticks since the arbiter's clock fell behind */
bool a_pending = false;     /* a grant sent, not answered */
bool a_alone = false;       /* recorded: the secondary is no successor */
bool a_sole = false;        /* ever granted a sole lease */
bool a_handed = false;      /* handed over to the secondary */

#ifdef NO_DRIFT_MARGIN
#define MARGIN 0
#define COUNT_AT_SEND
#elif defined(SHORT_MARGIN)
#define MARGIN (M - 1)
#else
#define MARGIN M
#endif
#ifdef FROM_SEND
#define COUNT_AT_SEND
#endif

/* The arbiter's record of the primary's lease runs. */
#ifdef COUNT_AT_SEND
#define A_RUNS (a_left > 0)
#else
#define A_RUNS (a_left > 0 || a_pending)
#endif

/* The arbiter's condition (b): it never granted a sole lease. */
#ifdef NO_SOLE_RECORD
#define NEVER_SOLE true
#else
#define NEVER_SOLE (!a_sole)
#endif

/* After a hand-over the primary is granted nothing (the record is one). */
#ifdef NO_HANDED_RECORD
#define MAY_GRANT true
#else
#define MAY_GRANT (!a_handed)
#endif

/* The primary alone may release uncovered output: its check at release. */
#if defined(NO_SOLE_RULE)
#define P_MAY_RELEASE (p_state == P_ALONE && p_left > 0)
#elif defined(NO_FENCE_CHECK)
#define P_MAY_RELEASE (p_state == P_ALONE && p_sole)   /* its timer's word */
#else
#define P_MAY_RELEASE (p_state == P_ALONE && p_sole && p_left > 0)
#endif

#define ONE_SERVES  (!(P_MAY_RELEASE && s_state == S_TOOK_OVER))
#define COVERED     (s_state != S_TOOK_OVER || released_max <= s_have)
#ifdef NO_LEASE_ASSERT
#define LEASE       true
#define IN_LEASE    true
#else
#define LEASE       (p_state == P_FENCED || p_state == P_GONE || \
                     p_left == 0 || A_RUNS)
#define IN_LEASE    A_RUNS
#endif

/* Ages stop growing past what any bound reads; leases stop at 0. */
#define AGE(v, cap) if :: v < cap -> v++ :: else -> skip fi
#define DOWN(v)     if :: v > 0 -> v-- :: else -> skip fi

/*
 * Time: each local clock advances, or falls behind (at most once in W
 * ticks); the primary's lease timer fires unless the primary is frozen.
 */
active proctype Clock()
{
end:
    do
    :: atomic {
        if
        :: p_lag == W - 1 -> p_lag = 0
        :: true -> AGE(p_lag, W - 1); DOWN(p_left)
        fi;
        if
        :: a_lag == W - 1 -> a_lag = 0
        :: true -> AGE(a_lag, W - 1); DOWN(a_left)
        fi;
        if
        :: !p_frozen && p_state == P_ALONE && p_left == 0 ->
            p_state = P_FENCED          /* the timer: held output purged */
        :: else -> skip
        fi;
        assert(LEASE)
       }
    od
}

/*
 * FAULTS faults per run, each at any instant; a heal, at any later
 * instant (or never), ends every pause and cut (a kill is never healed).
 */
byte faults = 0;
active proctype Nemesis()
{
    do
    :: faults < FAULTS ->
        faults++;
        if
        :: p_frozen = true
        :: s_frozen = true
        :: a_frozen = true
        :: atomic { a2p_cut = true; p2a_cut = true }
        :: a2p_cut = true
        :: p2a_cut = true
        :: atomic { fwd_cut = true; back_cut = true }
        :: fwd_cut = true
        :: back_cut = true
        :: atomic { (p_state == P_COLO || p_state == P_ALONE) ->
                    p_state = P_GONE; p_eof = true }
        :: atomic { (s_state == S_RECV || s_state == S_CUT_OFF) ->
                    s_state = S_DEAD }
        fi
    :: atomic { p_frozen = false; s_frozen = false; a_frozen = false;
                a2p_cut = false; p2a_cut = false;
                fwd_cut = false; back_cut = false }
    :: break
    od
}

active proctype Arbiter() provided (!a_frozen)
{
    mtype m;
    bool ok;

end:
    do
    :: atomic { MAY_GRANT && !a_pending && nfull(a2p) ->
        /* grant or renew: sole once the primary is recorded alone */
        a2p ! GRANT(a_alone);
        a_pending = true;
        if
        :: a_alone -> a_sole = true
        :: else -> skip
        fi;
#ifdef COUNT_AT_SEND
        a_left = V + MARGIN;
#endif
        assert(LEASE) }
    :: atomic { !p2a_cut && nempty(p2a) -> p2a ? m(ok);
        if
        :: m == ANSWER ->
            a_pending = false;
#ifndef COUNT_AT_SEND
            if
            :: ok -> a_left = V + MARGIN    /* from the answer, + margin */
            :: else -> skip                 /* refused: fenced */
            fi
#else
            skip
#endif
        :: m == ALONE -> a_alone = true     /* no successor any more */
        fi;
        assert(LEASE) }
    :: atomic { !p2a_cut && empty(p2a) && p_eof && a_pending ->
        a_pending = false;      /* the connection ended: a dead process */
        assert(LEASE) }
#ifdef FORGET_GRANT
    :: atomic { a_pending -> a_pending = false; assert(LEASE) }
#endif
    :: atomic { !a_handed && !A_RUNS && NEVER_SOLE && nfull(a2s) ->
        a_handed = true; a2s ! HANDOVER(true); assert(LEASE) }
    od
}

active proctype Primary() provided (!p_frozen)
{
    mtype m;
    byte e;
    bool sole;

end:
    do
    :: atomic { p_state == P_COLO && p_epoch < MAXE && nfull(fwd) ->
        p_epoch++; fwd ! CKPT(p_epoch) }
    :: atomic { p_state == P_COLO && !back_cut && nempty(back) ->
        back ? m(e);
        /* RECEIVED(e): the output of checkpoint e goes out, covered */
        if
        :: e > released_max -> released_max = e
        :: else -> skip
        fi;
        assert(COVERED) }
    :: atomic { p_state == P_COLO ->
        /* the peer silent, the stream ended, or the operator: alone */
        p_state = P_ALONE;
        if
        :: nfull(fwd) -> fwd ! ERR(0)   /* tells the secondary */
        :: true -> skip                 /* blocked: shut whole */
        fi;
        if
        :: nfull(p2a) -> p2a ! ALONE(false)   /* the manager tells */
        :: full(p2a) -> skip
        fi }
    :: atomic { P_MAY_RELEASE ->
        /* uncovered output: held at the switch, and emitted since */
        released_max = p_epoch + 1;
        assert(ONE_SERVES && COVERED && IN_LEASE) }
    :: atomic { p_state == P_ALONE && p_left == 0 ->
        p_state = P_FENCED }            /* its check: the lease lapsed */
    :: atomic { p_state != P_GONE && !a2p_cut && nempty(a2p) &&
                nfull(p2a) ->
        a2p ? m(sole);
        if
        :: p_state == P_FENCED -> p2a ! ANSWER(false)
        :: else ->
            p_left = V; p_sole = sole; /* from receipt, on its clock */
            p2a ! ANSWER(true)
        fi;
        assert(LEASE) }
    od
}

active proctype Secondary() provided (!s_frozen)
{
    mtype m;
    byte e;
    bool b;

end:
    do
    :: atomic { s_state == S_RECV && !fwd_cut && nempty(fwd) ->
        fwd ? m(e);
        if
        :: m == CKPT -> s_have = e; back ! ACK(e)
        :: m == ERR -> s_state = S_DOWN
        fi }
    :: atomic { s_state == S_RECV ->
        s_state = S_CUT_OFF }   /* its stream ended, or silent: waits */
    :: atomic { (s_state == S_RECV || s_state == S_CUT_OFF) &&
                nempty(a2s) ->
        /* the arbiter hands over: at the last checkpoint received */
        a2s ? m(b);
        s_state = S_TOOK_OVER;
        assert(ONE_SERVES && COVERED) }
    :: atomic { s_state == S_DOWN && nempty(a2s) ->
        a2s ? m(b) }            /* refused */
    od
}
