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
 * Time is a clock that advances on its own (Clock): one tick of the
 * arbiter's clock, in which the primary's clock advances by one, or falls
 * behind by one, at most once in any W ticks (the drift bound: its rate
 * is within (W-1)/W and 1 of the arbiter's; a primary's clock that runs
 * fast lapses its lease sooner, which is safe, and only the two clocks'
 * ratio counts).  A clock runs on while its process is paused (SIGSTOP
 * stops no clock): only a timer of the paused process does not fire.
 * Leases are kept as what is left of them on the clock that counts them,
 * which stops at 0, and ages stop past what reads them, so the state
 * space stays finite while the clock runs for ever.
 *
 * The lease: the arbiter grants or renews the primary's lease, on a link
 * of its own (QMP: FIFO each way, that Nemesis may cut both ways or one
 * way and heal: what is held back arrives after the heal, as TCP does).
 * It asks for a reading C of QEMU's lease clock (query-colo-status), then
 * grants with it (x-colo-lease-grant clock-ms=C), sole only once it has
 * recorded that the primary is alone (the primary's event, on the same
 * link, which may come late).  QEMU's lease runs V from C, on its clock,
 * whenever the grant arrives (one that ran out on its way is refused);
 * the arbiter counts V + M from when it got the reading, on its own clock,
 * and records that when it sends the grant (whose answer may never come:
 * it ignores it).  The model keeps the age of one reading, so the arbiter
 * grants with its latest reading, once, before it asks again (C is a
 * clock value in QEMU: an older reading would do, for a shorter lease).
 * The arbiter hands over to the secondary only when its record has run
 * out and it never granted a sole lease; it may withhold a renewal at any
 * time (a decision, or lost contact), and grants nothing to the primary
 * after a hand-over.
 *
 * Names follow the spec and the code: P_COLO (releases output of
 * checkpoint N on RECEIVED(N) only, whatever its lease), P_ALONE (releases
 * uncovered output only while a sole lease is valid on its clock, checked
 * at each release; holds it under a non-sole lease; fences when the lease
 * lapses: its timer at the lapse, or its check when it runs again),
 * P_FENCED (final: held output purged, grants refused), P_GONE (killed);
 * S_RECV, S_CUT_OFF (waits for the arbiter), S_TOOK_OVER (then serves
 * under its own lease: modelled as simply serving), S_DOWN (an ERROR came:
 * refuses the grant), S_DEAD.  A secondary records a checkpoint as
 * received before it acknowledges it, with no hand-over in between.  The
 * units are ticks:
 *
 *   V       the lease's validity, in ticks of the clock that counts it
 *   W       the drift window: the primary's clock falls behind the
 *           arbiter's by at most one tick in any W ticks
 *   M       the arbiter's margin: V ticks of the primary's clock last at
 *           most V + M of the arbiter's (V = 3, W = 3: at most 5, behind
 *           at the first and the fourth; M = 2 is the spec's V*rho, 1.5
 *           with rho = 1/(W-1), and its eps, the phase of the reading in
 *           a tick; M - 1 is short: SHORT_MARGIN)
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
 * asserted at every tick, grant and hand-over, and at every release of
 * uncovered output:
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
 *                    grant, without margin: drift (LEASE);
 *   SHORT_MARGIN     ... from the reading, with a margin one tick short:
 *                    drift (LEASE);
 *   FROM_QUERY       ... from when it asked for the reading, not when it
 *                    got it: a query that waits in QEMU's socket (LEASE);
 *   RECORD_AT_ANSWER ... records it when the grant's answer comes, not
 *                    when it sends the grant: the answer comes late or
 *                    never, the grant took effect (LEASE);
 *   RECEIPT_START    QEMU runs the lease from the grant's arrival, not
 *                    from C (the first spec): a renewal that waits in a
 *                    frozen primary's socket revives it on thaw (LEASE);
 *   NO_FENCE_CHECK   a primary alone that resumes from a pause releases
 *                    output before checking its lease: it trusts a timer
 *                    that did not fire while it was frozen (LEASE).
 *
 * Faults, FAULTS per run (1), at any instant, healed at any later instant
 * (or never): a pause of the primary, the secondary or the arbiter
 * (arbiter down: it keeps its record, as etcd does), the arbiter's link or
 * the replication link cut both ways or one way, the primary or the
 * secondary killed.  Any step may also be delayed without bound (a
 * starved thread, a slow link), so that a cut, or a pause of the
 * secondary or the arbiter, adds little; a pause of the primary (its timer
 * stands) and the kills do.  -DFAULTS=2 holds too (57 million states,
 * five minutes and 4.5 GB).  A side may wait for ever: an end in a wait
 * is no deadlock.  Liveness (who serves, and how soon) is not checked.
 *
 * model-mutants: NO_SOLE_RULE NO_SOLE_RECORD NO_HANDED_RECORD NO_DRIFT_MARGIN SHORT_MARGIN FROM_QUERY RECORD_AT_ANSWER RECEIPT_START NO_FENCE_CHECK
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

mtype = { CKPT, ACK, ERR, QUERY, READING, GRANT, ANSWER, ALONE, HANDOVER };

chan fwd = [1] of { mtype, byte };      /* primary -> secondary */
chan back = [MAXE] of { mtype, byte };  /* secondary -> primary: RECEIVED */
chan a2p = [2] of { mtype, bool };      /* arbiter -> primary: QUERY, GRANT */
chan p2a = [3] of { mtype, bool };      /* primary -> arbiter: READING, ... */
chan a2s = [1] of { mtype, bool };      /* arbiter -> secondary: hand-over */
bool fwd_cut = false;
bool back_cut = false;
bool a2p_cut = false;
bool p2a_cut = false;
bool p_frozen = false;      /* SIGSTOP: the loop and its timers stand */
bool s_frozen = false;
bool a_frozen = false;      /* the arbiter down or paused */

byte p_state = P_COLO;
byte p_epoch = 0;           /* last checkpoint sent */
byte released_max = 0;      /* newest epoch whose output clients saw */
byte p_left = 0;            /* lease left, on the primary's clock */
bool p_sole = false;        /* the lease held is sole */
byte p_lag = W - 1;         /* ticks since the primary's clock fell behind */
byte p_read_age = V;        /* its clock's ticks since its last reading */

byte s_state = S_RECV;
byte s_have = 0;            /* last checkpoint fully received */

byte a_left = 0;            /* the record: lease left, arbiter's clock */
byte a_read_left = 0;       /* V + M from the reading, arbiter's clock */
bool a_read_ok = false;     /* a reading to grant with */
bool a_query_out = false;   /* a query sent, its reading not come */
bool a_alone = false;       /* recorded: the secondary is no successor */
bool a_sole = false;        /* ever granted a sole lease */
bool a_handed = false;      /* handed over to the secondary */

#if defined(SHORT_MARGIN)
#define MARGIN (M - 1)
#else
#define MARGIN M
#endif

/* The arbiter's record of the primary's lease runs. */
#define A_RUNS (a_left > 0)

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

/* A grant whose lease ran out on its way, from C (QEMU refuses it). */
#ifdef RECEIPT_START
#define RAN_OUT false
#else
#define RAN_OUT (p_read_age >= V)
#endif

/* Ages stop growing past what any bound reads; leases stop at 0. */
#define AGE(v, cap) if :: v < cap -> v++ :: else -> skip fi
#define DOWN(v)     if :: v > 0 -> v-- :: else -> skip fi

/*
 * Time: a tick of the arbiter's clock; the primary's advances, or falls
 * behind (at most once in W ticks); its lease timer fires unless the
 * primary is frozen.
 */
active proctype Clock()
{
end:
    do
    :: atomic {
        if
        :: p_lag == W - 1 -> p_lag = 0
        :: true -> AGE(p_lag, W - 1); DOWN(p_left); AGE(p_read_age, V)
        fi;
        DOWN(a_left); DOWN(a_read_left);
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
                    p_state = P_GONE }
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
    :: atomic { MAY_GRANT && !a_query_out && nfull(a2p) ->
        /* query-colo-status: a reading of the primary's lease clock */
        a2p ! QUERY(false);
        a_query_out = true;
        a_read_ok = false;
#ifdef FROM_QUERY
        a_read_left = V + MARGIN
#endif
       }
    :: atomic { MAY_GRANT && a_read_ok && !a_query_out && nfull(a2p) ->
        /* grant or renew from it: sole once the primary is recorded alone */
        a2p ! GRANT(a_alone);
        a_read_ok = false;
        if
        :: a_alone -> a_sole = true
        :: else -> skip
        fi;
#if defined(NO_DRIFT_MARGIN)
        a_left = V;                 /* from now, no margin */
#elif !defined(RECORD_AT_ANSWER)
        a_left = a_read_left;       /* recorded before it goes out */
#endif
        assert(LEASE) }
    :: atomic { !p2a_cut && nempty(p2a) -> p2a ? m(ok);
        if
        :: m == READING ->
            a_query_out = false;
            a_read_ok = true;
#ifndef FROM_QUERY
            a_read_left = V + MARGIN    /* from the reading, + margin */
#endif
        :: m == ANSWER ->
#ifdef RECORD_AT_ANSWER
            if
            :: ok -> a_left = a_read_left
            :: else -> skip
            fi
#else
            skip                        /* may never come: ignored */
#endif
        :: m == ALONE -> a_alone = true /* no successor any more */
        fi;
        assert(LEASE) }
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
        :: m == QUERY ->
            p_read_age = 0; p2a ! READING(false)   /* clock-ms now */
        :: m == GRANT && (p_state == P_FENCED || RAN_OUT) ->
            p2a ! ANSWER(false)     /* fenced, or it ran out on its way */
        :: m == GRANT && p_state != P_FENCED && !RAN_OUT ->
#ifdef RECEIPT_START
            p_left = V;             /* from its arrival */
#else
            p_left = V - p_read_age;    /* from the reading C */
#endif
            p_sole = sole;
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
