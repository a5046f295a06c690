/*
 * Who serves when colo-manager arbitrates through etcd (#13): the
 * arbiter of colo-lease.pml split into what runs it, a manager beside
 * each QEMU and one etcd, checked by spin (scripts/run-checks.sh model).
 * The QEMUs are colo-lease.pml's (arbitrated mode, x-colo-lease-grant),
 * unchanged: P_COLO releases output of checkpoint N on RECEIVED(N) only,
 * P_ALONE releases uncovered output only under a valid *sole* lease,
 * fences when its lease lapses; the secondary never takes over by itself
 * (S_CUT_OFF waits) and takes over when its manager grants it a lease
 * (S_TOOK_OVER).
 *
 * etcd holds, for the protected VM:
 *   primary    the key naming the host that serves, attached to that
 *              host's etcd lease (TTL): it goes when the lease expires;
 *   successor  the key naming the host that may take over: it stands at
 *              the last checkpoint the primary's output waited for.
 * Requests are linearizable (one step each, in arrival order), on links
 * that keep order and may be cut (what is held back arrives after the
 * heal, as TCP does).  An etcd that is down or paused keeps its leases
 * running no shorter: the model stops its clock (etcd restores leases with
 * their full TTL on a new leader, which is longer still).
 *
 * The primary's manager, MP_HOLD while it holds the key (MP_LOST once its
 * etcd lease is gone: it never grants again), repeats:
 *   1. a reading C of its QEMU's lease clock (query-colo-status);
 *   2. then a keep-alive of its etcd lease, which etcd runs TTL from
 *      when it handles it, after C;
 *   3. on its answer, a grant to QEMU of V from C: V on QEMU's clock ends
 *      before TTL on etcd's, drift included (TTL >= V + M, colo-lease's
 *      margin).  Expired: MP_LOST.
 * When its QEMU says it is alone (COLO ended), the manager removes the
 * successor in a transaction that holds only while it still owns the
 * primary key, and only then grants sole leases.  A reading that says
 * its QEMU fenced itself (for good: no grant takes any more) makes it
 * revoke its etcd lease, so that the key passes at once (MP_LOST); so
 * does a manager whose QEMU exited (its child, reaped: P_GONE for sure),
 * and one that counts every lease it granted run out (LAPSED_BY_COUNT;
 * the code does it only while QEMU is silent, the model at any time).
 * The code counts validity-ms and the TTL rule's margin on its own clock
 * from its last reading of QEMU's clock, which no grant's reading is
 * newer than; by the TTL rule's argument, V has then passed on QEMU's
 * clock since that reading (p_read_age >= V): QEMU's lease lapsed and
 * every grant on its way ran out.
 *
 * The secondary's manager (MS_WATCH) asks etcd, at any time, to take the
 * primary key in a transaction: the key is gone (its lease expired) and
 * this host is the successor; the successor key goes with it.  Only when
 * etcd says yes does it grant its QEMU a lease (MS_TOOK): the hand-over.
 *
 * Safety, as in colo-lease.pml:
 *   ONE_SERVES  never the primary releasing uncovered output while the
 *               secondary has taken over;
 *   COVERED     a secondary that took over stands behind every output a
 *               client saw: released_max <= s_have;
 *   LEASE       while the primary's QEMU holds a valid lease (its clock),
 *               its etcd lease runs (etcd's clock), so the key cannot
 *               pass before QEMU's lease lapses.
 *
 * Re-protection (REPROTECT, colo-manager-reprotect.pml): the run starts
 * with the primary alone under a sole lease, having released output no
 * checkpoint covers, no successor, and a fresh secondary waiting
 * (S_WAIT); the migration into COLO (MIGRATE) gives the secondary the
 * whole state, and QEMU drops the lease's sole flag as it enters COLO.
 * Then the manager names the successor (TXN_PROTECT) only on a reading
 * that shows QEMU in COLO under a lease that is not sole
 * (READING_COLO(true)), and never grants sole leases to a QEMU it read
 * in COLO.  The second rule is for progress, not safety (the model finds
 * no violation without it: the successor is named before any grant from
 * the same reading): without it, a sole grant that reached QEMU after
 * the migration would be renewed sole for ever, and the successor never
 * named.
 *
 * Mutants, each of which must produce a violation:
 *   NO_SUCCESSOR_CHECK  the take-over transaction does not ask that this
 *                       host be the successor (COVERED);
 *   SOLE_WITHOUT_TXN    the primary's manager grants sole leases once its
 *                       QEMU is alone, without removing the successor
 *                       (COVERED);
 *   KEEPALIVE_FIRST     the manager renews the etcd lease, then reads
 *                       QEMU's clock and grants from that reading: a
 *                       keep-alive that waits in a cut link lets QEMU's
 *                       lease outlast etcd's (LEASE);
 *   SHORT_TTL           TTL = V + M - 1: drift (LEASE);
 *   REVOKE_ALONE        the manager revokes its etcd lease when its QEMU
 *                       serves alone, not only once it is fenced (LEASE);
 *   REVOKE_EARLY        the manager's count one tick short, drift
 *                       forgotten (LEASE);
 *   PROTECT_WHILE_SOLE  (REPROTECT) the successor is named on any reading
 *                       in COLO, even under a sole lease granted just
 *                       before the migration (COVERED).
 *
 * Faults.  Any step may be delayed without bound: the model may leave any
 * message in its channel, and any process unscheduled, for as long as it
 * likes.  That is already every cut link (both ways, one way, a host
 * isolated), every pause of a manager or the secondary, and a killed
 * manager (one paused for ever), as far as safety goes: what a cut holds
 * back arrives after the heal or never, as a delayed message does.  What
 * delay does not cover is drawn, one per run, at any instant, healed at
 * any later instant or never: a pause of the primary's QEMU (its lease
 * timer stands while its clock runs), a pause of etcd (its lease clock
 * stands), either QEMU killed.  (Spelling the cuts and pauses out as
 * faults changes no verdict and takes 49 million states, seven minutes
 * and 5.6 GB.)
 *
 * model-mutants: NO_SUCCESSOR_CHECK SOLE_WITHOUT_TXN KEEPALIVE_FIRST SHORT_TTL REVOKE_ALONE REVOKE_EARLY
 * model-pan-flags: -E
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#define V       3
#define W       3
#define M       2
#ifdef SHORT_TTL
#define TTL     (V + M - 1)
#else
#define TTL     (V + M)
#endif
#define MAXE    2       /* checkpoints the primary takes at most */

#define P_COLO   0
#define P_ALONE  1
#define P_FENCED 2
#define P_GONE   3

#define S_RECV      0
#define S_CUT_OFF   1
#define S_TOOK_OVER 2
#define S_DOWN      3
#define S_DEAD      4
#define S_WAIT      5   /* REPROTECT: started, waiting for the migration */

#define MP_HOLD  0
#define MP_LOST  1

#define MS_WATCH 0
#define MS_TOOK  1

#define OWNER_NONE 0
#define OWNER_P    1
#define OWNER_S    2

mtype = { CKPT, ACK, ERR, QUERY, READING, GRANT, ANSWER, ALONE, HANDOVER,
          KEEPALIVE, KEPT, TXN_ALONE, TXN_ALONE_DONE, TXN_TAKE, TAKEN,
          REVOKE, READING_COLO, TXN_PROTECT, TXN_PROTECT_DONE };

chan fwd = [1] of { mtype, byte };      /* primary -> secondary */
chan back = [MAXE] of { mtype, byte };  /* secondary -> primary: RECEIVED */
chan a2p = [2] of { mtype, bool };      /* primary's manager -> QEMU */
chan p2a = [3] of { mtype, bool };      /* QEMU -> primary's manager */
chan a2s = [1] of { mtype, bool };      /* secondary's manager -> QEMU */
chan mp2e = [2] of { mtype, bool };     /* primary's manager -> etcd */
chan e2mp = [2] of { mtype, bool };
chan ms2e = [1] of { mtype, bool };     /* secondary's manager -> etcd */
chan e2ms = [1] of { mtype, bool };
bool p_frozen = false;      /* SIGSTOP: the loop and its timers stand */
bool e_frozen = false;      /* etcd down or paused */

#ifdef REPROTECT
/* Alone under a sole lease, output released beyond checkpoint 0. */
byte p_state = P_ALONE;
byte p_epoch = 0;
byte released_max = 1;
byte p_left = V;
bool p_sole = true;
#else
byte p_state = P_COLO;
byte p_epoch = 0;           /* last checkpoint sent */
byte released_max = 0;      /* newest epoch whose output clients saw */
byte p_left = 0;            /* lease left, on the primary's clock */
bool p_sole = false;        /* the lease held is sole */
#endif
byte p_lag = W - 1;         /* ticks since the primary's clock fell behind */
#ifdef REPROTECT
byte p_read_age = 0;        /* its lease granted from a reading just taken */
#else
byte p_read_age = V;        /* its clock's ticks since its last reading */
#endif

#ifdef REPROTECT
byte s_state = S_WAIT;
#else
byte s_state = S_RECV;
#endif
byte s_have = 0;            /* last checkpoint fully received */

byte e_owner = OWNER_P;     /* the primary key */
byte e_left = TTL;          /* the primary's etcd lease, etcd's clock */
#ifdef REPROTECT
bool e_successor = false;
#else
bool e_successor = true;    /* the successor key names the secondary */
#endif

byte mp_state = MP_HOLD;
bool mp_query_out = false;  /* a reading asked for, not come */
bool mp_read_ok = false;    /* a reading to grant from */
bool mp_kept = false;       /* KEEPALIVE_FIRST: renewed, reading next */
bool mp_ka_out = false;     /* a keep-alive sent, its answer not come */
bool mp_read_colo = false;  /* the reading to grant from: QEMU in COLO */
#ifdef REPROTECT
bool mp_alone = true;
bool mp_txn_out = false;
bool mp_sole = true;
#else
bool mp_alone = false;      /* its QEMU said it is alone */
bool mp_txn_out = false;
bool mp_sole = false;       /* the successor is removed: grants are sole */
#endif

byte ms_state = MS_WATCH;
bool ms_txn_out = false;

/* The primary alone may release uncovered output: its check at release. */
#define P_MAY_RELEASE (p_state == P_ALONE && p_sole && p_left > 0)

#define ONE_SERVES  (!(P_MAY_RELEASE && s_state == S_TOOK_OVER))
#define COVERED     (s_state != S_TOOK_OVER || released_max <= s_have)
#define LEASE       (p_state == P_FENCED || p_state == P_GONE || \
                     p_left == 0 || e_left > 0)

/* On a reading in COLO (NOT_SOLE: its lease is not sole): name the peer. */
#ifdef PROTECT_WHILE_SOLE
#define MAY_PROTECT(not_sole) (mp_state == MP_HOLD && mp_sole && !mp_txn_out)
#else
#define MAY_PROTECT(not_sole) (not_sole && mp_state == MP_HOLD && mp_sole && \
                               !mp_txn_out)
#endif

/* V since the manager's last reading: every lease granted ran out. */
#ifdef REVOKE_EARLY
#define LAPSED_BY_COUNT (p_read_age >= V - 1)
#else
#define LAPSED_BY_COUNT (p_read_age >= V)
#endif

/* A grant whose lease ran out on its way, from C (QEMU refuses it). */
#define RAN_OUT (p_read_age >= V)

#define AGE(v, cap) if :: v < cap -> v++ :: else -> skip fi
#define DOWN(v)     if :: v > 0 -> v-- :: else -> skip fi

/*
 * Time: a tick of etcd's clock; the primary's advances, or falls behind
 * (at most once in W ticks); its lease timer fires unless the primary is
 * frozen.  An expired etcd lease takes the primary key with it.
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
        if
        :: !e_frozen ->
            DOWN(e_left);
            if
            :: e_left == 0 && e_owner == OWNER_P -> e_owner = OWNER_NONE
            :: else -> skip
            fi
        :: else -> skip
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

byte faults = 0;
active proctype Nemesis()
{
    do
    :: faults < 1 ->
        faults++;
        if
        :: p_frozen = true
        :: e_frozen = true
        :: atomic { (p_state == P_COLO || p_state == P_ALONE) ->
                    p_state = P_GONE }
        :: atomic { (s_state == S_RECV || s_state == S_CUT_OFF ||
                     s_state == S_WAIT) ->
                    s_state = S_DEAD }
        fi
    :: atomic { p_frozen = false; e_frozen = false }
    :: break
    od
}

active proctype Etcd() provided (!e_frozen)
{
    mtype m;
    bool b;

end:
    do
    :: atomic { nempty(mp2e) && nfull(e2mp) -> mp2e ? m(b);
        if
        :: m == KEEPALIVE ->
            /* an expired lease stays expired */
            if
            :: e_left > 0 -> e_left = TTL; e2mp ! KEPT(true)
            :: else -> e2mp ! KEPT(false)
            fi
        :: m == REVOKE ->
            /* the lease and the key it holds go at once */
            e_left = 0;
            if
            :: e_owner == OWNER_P -> e_owner = OWNER_NONE
            :: else -> skip
            fi
        :: m == TXN_ALONE ->
            /* if primary == this host: delete successor */
            if
            :: e_owner == OWNER_P -> e_successor = false;
                                     e2mp ! TXN_ALONE_DONE(true)
            :: else -> e2mp ! TXN_ALONE_DONE(false)
            fi
        :: m == TXN_PROTECT ->
            /* if primary == this host: put successor = the peer */
            if
            :: e_owner == OWNER_P -> e_successor = true;
                                     e2mp ! TXN_PROTECT_DONE(true)
            :: else -> e2mp ! TXN_PROTECT_DONE(false)
            fi
        fi;
        assert(LEASE) }
    :: atomic { nempty(ms2e) && nfull(e2ms) -> ms2e ? m(b);
        /* if no primary and successor == this host: take both */
#ifdef NO_SUCCESSOR_CHECK
        if
        :: e_owner == OWNER_NONE ->
#else
        if
        :: e_owner == OWNER_NONE && e_successor ->
#endif
            e_owner = OWNER_S; e_successor = false; e2ms ! TAKEN(true)
        :: else -> e2ms ! TAKEN(false)
        fi;
        assert(LEASE) }
    od
}

active proctype ManagerP()
{
    mtype m;
    bool ok;

end:
    do
#ifndef KEEPALIVE_FIRST
    :: atomic { mp_state == MP_HOLD && !mp_query_out && !mp_read_ok &&
                nfull(a2p) ->
        a2p ! QUERY(false); mp_query_out = true }
    :: atomic { mp_state == MP_HOLD && mp_read_ok && !mp_ka_out &&
                nfull(mp2e) ->
        /* after the reading: etcd's TTL runs from later than C */
        mp2e ! KEEPALIVE(false); mp_ka_out = true }
#else
    :: atomic { mp_state == MP_HOLD && !mp_kept && !mp_ka_out &&
                nfull(mp2e) ->
        mp2e ! KEEPALIVE(false); mp_ka_out = true }
    :: atomic { mp_state == MP_HOLD && mp_kept && !mp_query_out &&
                nfull(a2p) ->
        a2p ! QUERY(false); mp_query_out = true }
#endif
    :: atomic { nempty(p2a) -> p2a ? m(ok);
        if
        :: m == READING && ok && mp_state == MP_HOLD ->
            /* fenced: no grant will take; let the key go at once */
            mp_query_out = false;
            mp_state = MP_LOST;
            if
            :: nfull(mp2e) -> mp2e ! REVOKE(false)
            :: true -> skip     /* lost: the lease expires instead */
            fi
        :: m == READING && !(ok && mp_state == MP_HOLD) ->
            mp_query_out = false;
#ifdef KEEPALIVE_FIRST
            if
            :: mp_state == MP_HOLD && nfull(a2p) ->
                a2p ! GRANT(mp_sole)
            :: else -> skip
            fi;
            mp_kept = false
#else
            mp_read_ok = true;
            mp_read_colo = false
#endif
        :: m == READING_COLO ->
            /* in COLO; ok: its lease is not sole */
            mp_query_out = false;
            mp_alone = false;           /* a later ALONE says otherwise */
#ifdef KEEPALIVE_FIRST
            mp_kept = false
#else
            mp_read_ok = true;
            mp_read_colo = true;
            if
            :: MAY_PROTECT(ok) && nfull(mp2e) ->
                mp2e ! TXN_PROTECT(false); mp_txn_out = true
            :: !MAY_PROTECT(ok) -> skip
            :: full(mp2e) -> skip
            fi
#endif
        :: m == ANSWER -> skip          /* may never come: ignored */
        :: m == ALONE ->
            mp_alone = true;
#ifdef SOLE_WITHOUT_TXN
            mp_sole = true
#endif
        fi }
    :: atomic { nempty(e2mp) -> e2mp ? m(ok);
        if
        :: m == KEPT ->
            mp_ka_out = false;
            if
            :: !ok -> mp_state = MP_LOST     /* the key is gone for good */
            :: ok -> skip
            fi;
#ifdef KEEPALIVE_FIRST
            mp_kept = ok
#else
            /* grant from the reading taken before the keep-alive */
            if
            :: ok && mp_read_ok && mp_state == MP_HOLD && nfull(a2p) ->
                a2p ! GRANT(mp_sole && !mp_read_colo)
            :: !(ok && mp_read_ok && mp_state == MP_HOLD) || full(a2p) ->
                skip
            fi;
            mp_read_ok = false
#endif
        :: m == TXN_ALONE_DONE ->
            mp_txn_out = false;
            if
            :: ok -> mp_sole = true
            :: !ok -> mp_state = MP_LOST
            fi
        :: m == TXN_PROTECT_DONE ->
            mp_txn_out = false;
            if
            :: ok -> mp_sole = false
            :: !ok -> mp_state = MP_LOST
            fi
        fi }
    :: atomic { mp_state == MP_HOLD && p_state == P_GONE && nfull(mp2e) ->
        /* its QEMU exited: let the key go at once */
        mp_state = MP_LOST; mp2e ! REVOKE(false) }
#ifndef KEEPALIVE_FIRST
    :: atomic { mp_state == MP_HOLD && LAPSED_BY_COUNT && nfull(mp2e) ->
        /* silent, every lease granted ran out: let the key go at once */
        mp_state = MP_LOST; mp2e ! REVOKE(false) }
#endif
    :: atomic { mp_state == MP_HOLD && mp_alone && !mp_sole && !mp_txn_out &&
                nfull(mp2e) ->
        mp2e ! TXN_ALONE(false); mp_txn_out = true }
    od
}

active proctype ManagerS()
{
    mtype m;
    bool ok;

end:
    do
    :: atomic { ms_state == MS_WATCH && !ms_txn_out && nfull(ms2e) ->
        ms2e ! TXN_TAKE(false); ms_txn_out = true }
    :: atomic { nempty(e2ms) -> e2ms ? m(ok);
        ms_txn_out = false;
        if
        :: ok && nfull(a2s) -> ms_state = MS_TOOK; a2s ! HANDOVER(true)
        :: !ok || full(a2s) -> skip
        fi }
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
    :: atomic { p_state == P_COLO && nempty(back) ->
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
        :: nfull(p2a) -> p2a ! ALONE(false)   /* X_COLO event */
        :: full(p2a) -> skip
        fi }
#ifdef REPROTECT
    :: atomic { p_state == P_ALONE && p_sole && p_left > 0 &&
                s_state == S_WAIT && p_epoch < MAXE ->
        /* MIGRATE into COLO: the secondary gets the whole state, */
        p_epoch++; s_have = p_epoch; s_state = S_RECV;
        /* and QEMU's lease is no longer sole */
        p_state = P_COLO; p_sole = false }
#endif
    :: atomic { P_MAY_RELEASE ->
        /* uncovered output: held at the switch, and emitted since */
        released_max = p_epoch + 1;
        assert(ONE_SERVES && COVERED && LEASE) }
    :: atomic { p_state == P_ALONE && p_left == 0 ->
        p_state = P_FENCED }            /* its check: the lease lapsed */
    :: atomic { p_state != P_GONE && nempty(a2p) && nfull(p2a) ->
        a2p ? m(sole);
        if
        :: m == QUERY ->
            /* clock-ms now, and whether it is fenced (for good) */
            p_read_age = 0;
#ifdef REPROTECT
            if
            :: p_state == P_COLO -> p2a ! READING_COLO(!p_sole)
            :: else ->
#endif
#ifdef REVOKE_ALONE
            p2a ! READING(p_state == P_FENCED || p_state == P_ALONE)
#else
            p2a ! READING(p_state == P_FENCED)
#endif
#ifdef REPROTECT
            fi
#endif
        :: m == GRANT && (p_state == P_FENCED || RAN_OUT) ->
            p2a ! ANSWER(false)     /* fenced, or it ran out on its way */
        :: m == GRANT && p_state != P_FENCED && !RAN_OUT ->
            p_left = V - p_read_age;    /* from the reading C */
            p_sole = sole;
            p2a ! ANSWER(true)
        fi;
        assert(LEASE) }
    od
}

active proctype Secondary()
{
    mtype m;
    byte e;
    bool b;

end:
    do
    :: atomic { s_state == S_RECV && nempty(fwd) ->
        fwd ? m(e);
        if
        :: m == CKPT -> s_have = e; back ! ACK(e)
        :: m == ERR -> s_state = S_DOWN
        fi }
    :: atomic { s_state == S_RECV ->
        s_state = S_CUT_OFF }   /* its stream ended, or silent: waits */
    :: atomic { (s_state == S_RECV || s_state == S_CUT_OFF) &&
                nempty(a2s) ->
        /* its manager holds the key: at the last checkpoint received */
        a2s ? m(b);
        s_state = S_TOOK_OVER;
        assert(ONE_SERVES && COVERED) }
    :: atomic { s_state == S_DOWN && nempty(a2s) ->
        a2s ? m(b) }            /* refused */
    od
}
