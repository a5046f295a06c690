/*
 * colo-manager: who serves, decided through etcd
 *
 * Every round, in this order (the model's, tests/model/colo-manager.pml):
 *   1. a reading C of QEMU's lease clock (x-query-colo-lease);
 *   2. then a keep-alive of this host's etcd lease, which etcd runs its
 *      TTL from when it handles it, after C;
 *   3. then, holding the primary key, a grant to QEMU of validity-ms
 *      from C: QEMU's lease lapses before etcd's can expire
 *      (manager_config_load() checks TTL against validity).
 * Reading and grant run out-of-band: QEMU answers them even while its
 * main loop waits (a checkpoint's stop waits for the guest's disk
 * writes), so the lease need not outlast such waits.
 * No reading, no keep-alive: a QEMU that is dead or hung lets the key
 * go.  A keep-alive that finds the lease expired means the key is gone
 * for good (MP_LOST).  So does a QEMU that fenced itself, or one that
 * has not answered since its lease ran out by this manager's count:
 * its manager revokes the etcd lease rather than keep the successor
 * waiting for the TTL.
 *
 * Copyright (c) 2026 The COLO project authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qemu/error-report.h"
#include "qemu/cutils.h"
#include "qemu/timer.h"
#include "qobject/qdict.h"
#include "arbitration.h"

/* What a reading of QEMU's COLO status says. */
typedef struct ColoReading {
    char mode[16];              /* primary, secondary, none */
    int64_t clock_ms;           /* x-lease.clock-ms */
    bool alone;                 /* x-lease.alone */
    char lease_state[16];       /* x-lease.state */
    int64_t remaining_ms;       /* x-lease.remaining-ms */
    int64_t taken_ms;           /* when, on this host's monotonic clock */
} ColoReading;

const char *manager_state_name(ManagerState s)
{
    static const char *const names[] = {
        [M_JOIN] = "M_JOIN", [MP_HOLD] = "MP_HOLD", [MP_LOST] = "MP_LOST",
        [MS_WATCH] = "MS_WATCH", [MS_TOOK] = "MS_TOOK",
    };

    return names[s];
}

void arbitration_init(Arbitration *a, const ManagerConfig *cfg,
                      EtcdClient *etcd, QmpClient *qmp)
{
    memset(a, 0, sizeof(*a));
    a->cfg = cfg;
    a->etcd = etcd;
    a->qmp = qmp;
    a->state = M_JOIN;
    a->key_primary = manager_config_key(cfg, "primary");
    a->key_successor = manager_config_key(cfg, "successor");
    a->key_booted = manager_config_key(cfg, "booted");
    a->key_standby = manager_config_key(cfg, "standby");
}

void arbitration_cleanup(Arbitration *a)
{
    g_free(a->key_primary);
    g_free(a->key_successor);
    g_free(a->key_booted);
    g_free(a->key_standby);
    g_free(a->last_error);
    qobject_unref(a->colo);
}

QDict *arbitration_describe(const Arbitration *a)
{
    QDict *d = qdict_new();
    g_autofree char *lease = g_strdup_printf("%" PRIx64, a->lease);

    qdict_put_str(d, "state", manager_state_name(a->state));
    qdict_put_str(d, "etcd-lease", lease);
    qdict_put_bool(d, "sole", a->sole);
    qdict_put_str(d, "last-error", a->last_error ?: "");
    if (a->colo) {
        qdict_put(d, "colo", qobject_ref(a->colo));
    }
    return d;
}

static void arbitration_set_state(Arbitration *a, ManagerState s,
                                  const char *why)
{
    info_report("%s -> %s: %s", manager_state_name(a->state),
                manager_state_name(s), why);
    a->state = s;
}

/* Report @err unless the last round reported the same; frees it. */
static void arbitration_report(Arbitration *a, Error *err)
{
    const char *msg = error_get_pretty(err);

    if (g_strcmp0(msg, a->last_error)) {
        warn_report("%s: %s", manager_state_name(a->state), msg);
        g_free(a->last_error);
        a->last_error = g_strdup(msg);
    }
    error_free(err);
}

static bool arbitration_read(Arbitration *a, ColoReading *r, Error **errp)
{
    g_autoptr(QDict) lease = qmp_client_call_oob(a->qmp,
                                                 "x-query-colo-lease", NULL,
                                                 errp);

    if (!lease) {
        return false;
    }
    if (!qdict_get_try_bool(lease, "arbitrated", false)) {
        error_setg(errp, "QEMU's COLO is not arbitrated: set capability "
                   "x-colo-arbitrated before migrating");
        return false;
    }
    pstrcpy(r->mode, sizeof(r->mode), qdict_get_try_str(lease, "mode") ?: "");
    pstrcpy(r->lease_state, sizeof(r->lease_state),
            qdict_get_try_str(lease, "state") ?: "");
    r->clock_ms = qdict_get_try_int(lease, "clock-ms", 0);
    r->remaining_ms = qdict_get_try_int(lease, "remaining-ms", 0);
    r->taken_ms = get_clock() / SCALE_MS;
    a->read_ms = r->taken_ms;
    r->alone = qdict_get_try_bool(lease, "alone", false);
    return true;
}

/* QEMU is a primary in COLO: its output waits for checkpoints. */
static bool arbitration_in_colo(const ColoReading *r)
{
    return !strcmp(r->mode, "primary") && !r->alone;
}

/*
 * Renew this host's etcd lease.  One that expired is gone with what it
 * held: holding the key, that is MP_LOST; otherwise a new one is taken.
 * True when the lease runs TTL from now.
 */
static bool arbitration_keepalive(Arbitration *a, Error **errp)
{
    bool alive = false;

    if (a->lease &&
        !etcd_lease_keepalive(a->etcd, a->lease, &alive, errp)) {
        return false;
    }
    if (alive) {
        return true;
    }
    if (a->state == MP_HOLD) {
        arbitration_set_state(a, MP_LOST, "the etcd lease expired: the "
                              "primary key is gone, no more grants");
        return false;
    }
    if (a->lease) {
        info_report("etcd lease %" PRIx64 " expired; taking a new one",
                    a->lease);
    }
    a->lease = 0;
    return etcd_lease_grant(a->etcd, a->cfg->ttl_s, &a->lease, errp);
}

/*
 * QEMU's state after this round's grant (status, launch.c, protect.c),
 * in-band: none while QEMU's main loop is busy.
 */
static void arbitration_refresh(Arbitration *a)
{
    qobject_unref(a->colo);
    a->colo = qmp_client_call(a->qmp, "query-colo-status", NULL, NULL);
}

/*
 * Grants are sole only while the successor key is absent, and only to a
 * QEMU that is not in COLO: in COLO its output waits for checkpoints,
 * and a sole grant would outlast the successor's return.
 */
static bool arbitration_grant(Arbitration *a, const ColoReading *r,
                              Error **errp)
{
    QDict *args = qdict_new();
    g_autoptr(QDict) ret = NULL;

    qdict_put_int(args, "validity-ms", a->cfg->validity_ms);
    qdict_put_int(args, "clock-ms", r->clock_ms);
    qdict_put_bool(args, "sole", a->sole && !arbitration_in_colo(r));
    ret = qmp_client_call_oob(a->qmp, "x-colo-lease-grant", args, errp);
    return ret != NULL;
}

/*
 * M_JOIN: a QEMU primary in COLO claims the primary key, free or already
 * this host's (a restarted manager), and names its peer successor when
 * it takes it free: the secondary stands at every checkpoint whose
 * output the primary released.  A secondary's manager watches.
 */
static bool arbitration_join(Arbitration *a, const ColoReading *r,
                             Error **errp)
{
    g_autoptr(EtcdTxn) claim = NULL;
    g_autoptr(EtcdTxn) again = NULL;
    g_autofree char *holder = NULL;
    bool ok;

    if (!strcmp(r->mode, "secondary")) {
        arbitration_set_state(a, MS_WATCH, "QEMU is the secondary");
        return true;
    }
    if (!strcmp(r->mode, "none")) {
        g_autoptr(QDict) run = qmp_client_call(a->qmp, "query-status", NULL,
                                               errp);

        if (!run) {
            return false;
        }
        if (qdict_get_try_bool(run, "running", false)) {
            goto again;         /* unprotected, or a survivor: its key */
        }
        return true;            /* a secondary waiting for the migration */
    }
    if (strcmp(r->mode, "primary")) {
        return true;            /* not in COLO yet */
    }
    claim = etcd_txn_new();
    etcd_txn_if_absent(claim, a->key_primary);
    etcd_txn_put(claim, a->key_primary, a->cfg->host, a->lease);
    etcd_txn_put(claim, a->key_successor, a->cfg->peer, 0);
    if (!etcd_txn_commit(a->etcd, claim, &ok, errp)) {
        return false;
    }
    if (ok) {
        arbitration_set_state(a, MP_HOLD, "took the free primary key");
        return true;
    }
again:
    again = etcd_txn_new();
    etcd_txn_if_equal(again, a->key_primary, a->cfg->host);
    etcd_txn_put(again, a->key_primary, a->cfg->host, a->lease);
    if (!etcd_txn_commit(a->etcd, again, &ok, errp)) {
        return false;
    }
    if (ok) {
        /* A sole grant is never made before the successor is gone. */
        if (!etcd_get(a->etcd, a->key_successor, &holder, errp)) {
            return false;
        }
        a->sole = !holder;
        arbitration_set_state(a, MP_HOLD, "the primary key already names "
                              "this host");
        return true;
    }
    if (etcd_get(a->etcd, a->key_primary, &holder, NULL) && holder) {
        error_setg(errp, "QEMU runs the guest, but the primary key names %s: "
                   "no lease for it", holder);
    } else {
        error_setg(errp, "the primary key changed hands; trying again");
    }
    return false;
}

/*
 * MP_HOLD, its QEMU serving alone: remove the successor, only while
 * this host holds the primary key, before any sole grant.
 *
 * Only with time to spare: the sole grant must reach QEMU while the lease
 * of reading @r still runs.  Removed too late, the successor would be
 * gone while QEMU, its lease lapsed alone, fences itself, and nobody
 * could serve.  Short of time, a plain grant renews the lease first (it
 * holds QEMU's uncovered output, as before) and the next round removes
 * the successor; a QEMU that fences meanwhile leaves the successor to
 * take over.
 */
static bool arbitration_alone_in_time(Arbitration *a, const ColoReading *r)
{
    int64_t spent = get_clock() / SCALE_MS - r->taken_ms;

    return !strcmp(r->lease_state, "valid") &&
           spent + a->cfg->etcd_timeout_ms + a->cfg->qmp_timeout_ms <
           r->remaining_ms;
}

/*
 * MP_HOLD, its QEMU serving alone (arbitration_alone_in_time()): remove
 * the successor, then grants are sole.
 */
static bool arbitration_alone(Arbitration *a, Error **errp)
{
    g_autoptr(EtcdTxn) alone = etcd_txn_new();
    bool ok;

    etcd_txn_if_equal(alone, a->key_primary, a->cfg->host);
    etcd_txn_delete(alone, a->key_successor);
    if (!etcd_txn_commit(a->etcd, alone, &ok, errp)) {
        return false;
    }
    if (!ok) {
        arbitration_set_state(a, MP_LOST, "the primary key is no longer "
                              "this host's");
        return false;
    }
    info_report("QEMU serves alone: successor removed, leases are sole");
    a->sole = true;
    return true;
}

/*
 * MP_HOLD with sole grants, its QEMU in COLO again (protected by a new
 * secondary, protect.c): name the peer successor, so that it may take
 * over.  Only once a reading shows the lease no longer sole: then no
 * sole grant is in force or on its way, and every output QEMU released
 * alone is covered by the state the secondary received (the migration
 * into COLO), so the pair stands where the model starts.
 */
static bool arbitration_protected(Arbitration *a, Error **errp)
{
    g_autoptr(EtcdTxn) named = etcd_txn_new();
    bool ok;

    etcd_txn_if_equal(named, a->key_primary, a->cfg->host);
    etcd_txn_put(named, a->key_successor, a->cfg->peer, 0);
    if (!etcd_txn_commit(a->etcd, named, &ok, errp)) {
        return false;
    }
    if (!ok) {
        arbitration_set_state(a, MP_LOST, "the primary key is no longer "
                              "this host's");
        return false;
    }
    info_report("QEMU is protected: %s is the successor, leases are not "
                "sole", a->cfg->peer);
    a->sole = false;
    return true;
}

/*
 * MP_HOLD, its QEMU fenced (its lease lapsed while it served alone: its
 * VM is stopped for good and it takes no grant), or silent with every
 * lease it was granted run out (arbitration_lapsed_unanswered()):
 * holding the key would only keep the successor from taking over.  Let
 * it go now.
 */
static void arbitration_let_go(Arbitration *a, const char *why)
{
    g_autofree char *what = g_strdup_printf("%s: letting the primary key "
                                            "go", why);
    Error *err = NULL;

    arbitration_set_state(a, MP_LOST, what);
    if (!etcd_lease_revoke(a->etcd, a->lease, &err)) {
        /* Then it expires: nothing renews it any more. */
        arbitration_report(a, err);
    }
}

/*
 * MP_HOLD, its QEMU silent: has every lease granted to it run out, by
 * this host's clock?  Each ran from a reading QEMU took no later than
 * the last one (@read_ms), drift allowed for as etcd's TTL allows
 * for it (manager_config_load()).  Then QEMU releases
 * nothing more that no checkpoint covers: should it wake alone, it
 * fences itself.  (The model's LAPSED_BY_COUNT.)
 */
static bool arbitration_lapsed_unanswered(const Arbitration *a)
{
    int64_t now = get_clock() / SCALE_MS;

    return a->state == MP_HOLD && a->read_ms &&
           now > a->read_ms +
                 a->cfg->validity_ms * (1 + MANAGER_CLOCK_RHO) +
                 MANAGER_CLOCK_EPS_MS;
}

/*
 * MS_WATCH: take the primary key, in one transaction, only if it is gone
 * (its holder's etcd lease expired) and this host is the successor; the
 * successor key goes with it.  Only then hand over.
 */
static bool arbitration_take(Arbitration *a, const ColoReading *r,
                             Error **errp)
{
    g_autoptr(EtcdTxn) take = NULL;
    bool ok;

    if (strcmp(r->mode, "secondary")) {
        error_setg(errp, "QEMU is no longer a secondary in COLO (mode %s): "
                   "it cannot take over", r->mode);
        return false;
    }
    take = etcd_txn_new();
    etcd_txn_if_absent(take, a->key_primary);
    etcd_txn_if_equal(take, a->key_successor, a->cfg->host);
    etcd_txn_put(take, a->key_primary, a->cfg->host, a->lease);
    etcd_txn_delete(take, a->key_successor);
    if (!etcd_txn_commit(a->etcd, take, &ok, errp)) {
        return false;
    }
    if (ok) {
        arbitration_set_state(a, MS_TOOK, "the primary key was free and "
                              "this host the successor: taking over");
        a->sole = true;
    }
    return true;
}

void arbitration_round(Arbitration *a)
{
    Error *err = NULL;
    bool answered = false;
    ColoReading r;

    /* No answer, no status: nothing acts on an old one. */
    qobject_unref(a->colo);
    a->colo = NULL;
    if (a->state == MP_LOST) {
        arbitration_refresh(a);     /* what status and the launcher see */
        return;
    }
    if (!arbitration_read(a, &r, &err)) {
        if (arbitration_lapsed_unanswered(a)) {
            arbitration_let_go(a, "QEMU has not answered since its lease "
                               "ran out");
        }
        goto fail;
    }
    answered = true;
    if (a->state == MP_HOLD && !strcmp(r.lease_state, "fenced")) {
        arbitration_let_go(a, "QEMU fenced itself");
        goto out;
    }
    if (!arbitration_keepalive(a, &err)) {
        goto fail;
    }
    switch (a->state) {
    case M_JOIN:
        if (!arbitration_join(a, &r, &err) || a->state != MP_HOLD) {
            goto fail;
        }
        break;
    case MS_WATCH:
        if (!arbitration_take(a, &r, &err) || a->state != MS_TOOK) {
            goto fail;
        }
        break;
    case MP_HOLD:
        if (r.alone && !a->sole && arbitration_alone_in_time(a, &r) &&
            !arbitration_alone(a, &err)) {
            goto fail;
        }
        if (a->sole && arbitration_in_colo(&r) &&
            !strcmp(r.lease_state, "valid") &&
            !arbitration_protected(a, &err)) {
            goto fail;
        }
        break;
    case MS_TOOK:
        break;                  /* the hand-over's grant failed: again */
    default:
        g_assert_not_reached();
    }
    if (!arbitration_grant(a, &r, &err)) {
        goto fail;
    }
    if (a->state == MS_TOOK) {
        arbitration_set_state(a, MP_HOLD, "handed over: QEMU serves alone");
    }
    g_clear_pointer(&a->last_error, g_free);
out:
    arbitration_refresh(a);
    return;

fail:
    if (err) {
        arbitration_report(a, err);
    }
    if (answered) {
        arbitration_refresh(a);
    }
}

bool arbitration_claim_boot(Arbitration *a, Error **errp)
{
    g_autoptr(EtcdTxn) boot = NULL;
    bool ok;

    /* No QEMU, nothing to cover: the keep-alive needs no reading. */
    if (!arbitration_keepalive(a, errp)) {
        return false;
    }
    boot = etcd_txn_new();
    etcd_txn_if_absent(boot, a->key_primary);
    etcd_txn_if_absent(boot, a->key_booted);
    etcd_txn_put(boot, a->key_primary, a->cfg->host, a->lease);
    etcd_txn_put(boot, a->key_booted, a->cfg->host, 0);
    if (!etcd_txn_commit(a->etcd, boot, &ok, errp) || !ok) {
        return false;
    }
    a->sole = true;
    arbitration_set_state(a, MP_HOLD, "the VM was never booted: took the "
                          "primary key to boot it here");
    return true;
}

void arbitration_qemu_exited(Arbitration *a)
{
    const ManagerConfig *cfg = a->cfg;
    EtcdClient *etcd = a->etcd;
    QmpClient *qmp = a->qmp;
    Error *err = NULL;

    if (a->lease) {
        info_report("%s: QEMU exited: revoking etcd lease %" PRIx64
                    " and what it holds", manager_state_name(a->state),
                    a->lease);
        if (!etcd_lease_revoke(a->etcd, a->lease, &err)) {
            /* Then it expires: nothing renews it any more. */
            arbitration_report(a, err);
        }
    }
    arbitration_cleanup(a);
    arbitration_init(a, cfg, etcd, qmp);
}
