/*
 * colo-manager: protecting a primary (protect.h)
 *
 * The steps a person types for QEMU's COLO, one per round so that the
 * lease goes on being renewed while the disk is copied:
 *
 *   IDLE       a standby naming the peer appears: an old replica left in
 *              the guest's quorum is removed, the peer's NBD export is
 *              opened and a mirror job copies the guest's disk into it;
 *   COPYING    the copy is ready: with the VM stopped (no write between
 *              the two), the mirror is completed and the replica (a
 *              primary-mode replication node over the same export) joins
 *              the quorum; x-colo set, the migration started, the VM
 *              continued;
 *   MIGRATING  QEMU is a primary in COLO: done (the arbitration names the
 *              successor).  A failed migration removes the replica.
 *
 * An attempt that fails is not tried again against the same standby:
 * the secondary announces itself anew when it is started anew.
 *
 * Copyright (c) 2026 The COLO project authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qemu/error-report.h"
#include "qemu/timer.h"
#include "qobject/qdict.h"
#include "qobject/qjson.h"
#include "qobject/qlist.h"
#include "launch.h"
#include "protect.h"

#define PROTECT_TARGET_NODE     "colo-copy-target"
#define PROTECT_JOB             "colo-copy"
/* A migration into COLO that takes longer than this is given up. */
#define PROTECT_MIGRATE_MAX_MS  (10 * 60 * 1000)
/*
 * Connecting to the standby's export blocks QEMU's main loop (monitor
 * included) for as long as the connection takes: against a host that
 * drops packets, minutes, while QEMU serves alone under a lease it
 * could not have renewed.  NBD's open-timeout bounds it (seconds).
 */
#define PROTECT_NBD_OPEN_S      1
/* After a failed start, the standby is tried again this much later. */
#define PROTECT_RETRY_MS        5000

void protection_init(Protection *p, const ManagerConfig *cfg,
                     Arbitration *a)
{
    memset(p, 0, sizeof(*p));
    p->cfg = cfg;
    p->a = a;
}

void protection_cleanup(Protection *p)
{
    g_free(p->standby);
    g_free(p->failed);
    g_free(p->last_error);
}

QDict *protection_describe(const Protection *p)
{
    static const char *const steps[] = {
        [PROTECT_IDLE] = "idle", [PROTECT_COPYING] = "copying",
        [PROTECT_MIGRATING] = "migrating",
    };
    QDict *d = qdict_new();

    qdict_put_str(d, "step", steps[p->step]);
    qdict_put_int(d, "protected", p->protected_count);
    qdict_put_int(d, "last-ms", p->last_protect_ms);
    return d;
}

/*
 * Block commands may wait for I/O to drain (a replica's NBD connection
 * to a secondary that went away): they get a quarter of QEMU's lease,
 * which a round so delayed still renews in time.
 */
static QObject *protect_qmp(Protection *p, const char *cmd, QDict *args,
                            Error **errp)
{
    return qmp_client_execute(p->a->qmp, cmd, args,
                              MAX(p->cfg->qmp_timeout_ms,
                                  p->cfg->validity_ms / 4), errp);
}

static bool protect_do(Protection *p, const char *cmd, QDict *args,
                       Error **errp)
{
    QObject *ret = protect_qmp(p, cmd, args, errp);

    qobject_unref(ret);
    return ret != NULL;
}

/* An NBD client of the standby's export. */
static QDict *protect_nbd(QDict *standby)
{
    QDict *d = qdict_new();
    QDict *server = qdict_new();
    g_autofree char *port = g_strdup_printf(
        "%" PRId64, qdict_get_try_int(standby, "nbd-port", 0));

    qdict_put_str(server, "type", "inet");
    qdict_put_str(server, "host", qdict_get_try_str(standby, "address"));
    qdict_put_str(server, "port", port);
    qdict_put_str(d, "driver", "nbd");
    qdict_put_str(d, "export", LAUNCH_EXPORT);
    qdict_put(d, "server", server);
    qdict_put_int(d, "open-timeout", PROTECT_NBD_OPEN_S);
    return d;
}

/* The name of the guest quorum's edge to @node, or NULL. */
static char *protect_quorum_child(Protection *p, const char *node,
                                  Error **errp)
{
    g_autoptr(QDict) graph = qmp_client_call(p->a->qmp,
                                             "x-debug-query-block-graph",
                                             NULL, errp);
    QList *nodes = graph ? qdict_get_qlist(graph, "nodes") : NULL;
    QList *edges = graph ? qdict_get_qlist(graph, "edges") : NULL;
    int64_t quorum = -1, child = -1;
    QListEntry *e;

    if (!nodes || !edges) {
        return NULL;
    }
    QLIST_FOREACH_ENTRY(nodes, e) {
        QDict *n = qobject_to(QDict, qlist_entry_obj(e));
        const char *name = n ? qdict_get_try_str(n, "name") : NULL;

        if (!g_strcmp0(name, LAUNCH_DISK_NODE)) {
            quorum = qdict_get_try_int(n, "id", -1);
        } else if (!g_strcmp0(name, node)) {
            child = qdict_get_try_int(n, "id", -1);
        }
    }
    QLIST_FOREACH_ENTRY(edges, e) {
        QDict *edge = qobject_to(QDict, qlist_entry_obj(e));

        if (edge && quorum >= 0 && child >= 0 &&
            qdict_get_try_int(edge, "parent", -2) == quorum &&
            qdict_get_try_int(edge, "child", -2) == child) {
            return g_strdup(qdict_get_try_str(edge, "name"));
        }
    }
    return NULL;
}

/* A replica of an earlier secondary, left in the quorum: removed. */
static bool protect_drop_replica(Protection *p, Error **errp)
{
    ERRP_GUARD();
    g_autofree char *child = protect_quorum_child(p, LAUNCH_REPLICA_NODE,
                                                  errp);
    QDict *args;

    if (*errp) {
        return false;
    }
    if (child) {
        args = qdict_new();
        qdict_put_str(args, "parent", LAUNCH_DISK_NODE);
        qdict_put_str(args, "child", child);
        if (!protect_do(p, "x-blockdev-change", args, errp)) {
            return false;
        }
    }
    args = qdict_new();
    qdict_put_str(args, "node-name", LAUNCH_REPLICA_NODE);
    if (!protect_do(p, "blockdev-del", args, NULL) && child) {
        error_setg(errp, "the old replica %s cannot be deleted",
                   LAUNCH_REPLICA_NODE);
        return false;
    }
    return true;
}

/* The copy job, ended whatever it is doing (a ready one completes). */
static bool protect_cancel_job(Protection *p, Error **errp)
{
    QDict *args = qdict_new();

    qdict_put_str(args, "device", PROTECT_JOB);
    return protect_do(p, "block-job-cancel", args, errp);
}

static void protect_drop_target(Protection *p)
{
    QDict *args = qdict_new();

    qdict_put_str(args, "node-name", PROTECT_TARGET_NODE);
    protect_do(p, "blockdev-del", args, NULL);
}

/* The attempt is over: it failed, or QEMU no longer may be protected. */
static void protect_abandon(Protection *p, const char *why)
{
    warn_report("protection by %s given up: %s", p->standby, why);
    protect_cancel_job(p, NULL);
    protect_drop_target(p);
    protect_drop_replica(p, NULL);
    g_free(p->failed);
    p->failed = g_steal_pointer(&p->standby);
    p->step = PROTECT_IDLE;
}

/* This host holds the key with sole leases; its QEMU serves alone. */
static bool protect_allowed(Protection *p)
{
    Arbitration *a = p->a;
    QDict *lease = a->colo ? qdict_get_qdict(a->colo, "x-lease") : NULL;

    return a->state == MP_HOLD && a->sole && lease &&
           g_strcmp0(qdict_get_try_str(lease, "state"), "fenced") &&
           !g_strcmp0(qdict_get_try_str(a->colo, "mode"), "none");
}

/* IDLE: a new standby on the peer: copy the disk to it. */
static bool protect_start(Protection *p, Error **errp)
{
    ERRP_GUARD();
    Arbitration *a = p->a;
    g_autofree char *value = NULL;
    g_autoptr(QDict) standby = NULL;
    g_autoptr(QDict) st = NULL;
    QDict *args;

    if (!etcd_get(a->etcd, a->key_standby, &value, errp) || !value ||
        !g_strcmp0(value, p->failed)) {
        return !*errp;
    }
    standby = qobject_to(QDict, qobject_from_json(value, NULL));
    if (!standby || g_strcmp0(qdict_get_try_str(standby, "host"),
                              p->cfg->peer) ||
        !qdict_get_try_str(standby, "address")) {
        error_setg(errp, "the standby key holds '%s', not the peer %s",
                   value, p->cfg->peer);
        return false;
    }
    st = qmp_client_call(a->qmp, "query-status", NULL, errp);
    if (!st || !qdict_get_try_bool(st, "running", false)) {
        return !*errp;          /* a VM not running is protected later */
    }
    /* What an attempt whose commands timed out may have left. */
    protect_cancel_job(p, NULL);
    if (!protect_drop_replica(p, errp)) {
        return false;
    }
    protect_drop_target(p);
    args = protect_nbd(standby);
    qdict_put_str(args, "node-name", PROTECT_TARGET_NODE);
    if (!protect_do(p, "blockdev-add", args, errp)) {
        return false;
    }
    args = qdict_new();
    qdict_put_str(args, "job-id", PROTECT_JOB);
    qdict_put_str(args, "device", LAUNCH_DISK_NODE);
    qdict_put_str(args, "target", PROTECT_TARGET_NODE);
    qdict_put_str(args, "sync", "full");
    if (!protect_do(p, "blockdev-mirror", args, errp)) {
        protect_drop_target(p);
        return false;
    }
    g_free(p->standby);
    p->standby = g_steal_pointer(&value);
    p->started_ms = get_clock() / SCALE_MS;
    p->step = PROTECT_COPYING;
    info_report("protecting: copying the disk to %s", p->standby);
    return true;
}

/* The copy job's entry in query-block-jobs, or NULL once it is gone. */
static QDict *protect_job(Protection *p, Error **errp)
{
    QObject *jobs = protect_qmp(p, "query-block-jobs", NULL, errp);
    QList *list = qobject_to(QList, jobs);
    QDict *found = NULL;
    QListEntry *e;

    QLIST_FOREACH_ENTRY(list, e) {
        QDict *job = qobject_to(QDict, qlist_entry_obj(e));

        if (job && !g_strcmp0(qdict_get_try_str(job, "device"),
                              PROTECT_JOB)) {
            found = qobject_ref(job);
            break;
        }
    }
    qobject_unref(jobs);
    return found;
}

/*
 * The VM this manager stopped runs on, whatever else failed; a "cont"
 * that timed out is tried again every round (protection_round()).
 */
static void protect_cont(Protection *p)
{
    if (p->stopped && protect_do(p, "cont", NULL, NULL)) {
        p->stopped = false;
    }
}

/*
 * COPYING, the copy ready: with the VM stopped, complete the mirror (a
 * ready mirror cancelled completes: the copy is exact), put the replica
 * in the quorum, start the migration.  The VM continues either way.
 */
static bool protect_switch(Protection *p, Error **errp)
{
    ERRP_GUARD();
    g_autoptr(QDict) standby = qobject_to(QDict,
                                          qobject_from_json(p->standby,
                                                            NULL));
    g_autoptr(QDict) job = NULL;
    g_autofree char *uri = g_strdup_printf(
        "tcp:%s:%" PRId64, qdict_get_try_str(standby, "address"),
        qdict_get_try_int(standby, "migrate-port", 0));
    /*
     * The completion waits for the copy's last writes to reach the
     * standby.  The round waits with it, and QEMU (alone, under a sole
     * lease) is renewed only after it: a quarter of the lease at most.
     */
    int64_t budget_ms = p->cfg->validity_ms / 4;
    int64_t deadline;
    QDict *args;
    bool ok = false;

    if (!protect_do(p, "stop", NULL, errp)) {
        return false;
    }
    p->stopped = true;
    if (!protect_cancel_job(p, errp)) {
        goto cont;
    }
    deadline = get_clock() / SCALE_MS + budget_ms;
    while ((job = protect_job(p, errp))) {
        if (get_clock() / SCALE_MS > deadline) {
            error_setg(errp, "the disk copy did not complete within %"
                       PRId64 " ms", budget_ms);
            goto cont;
        }
        qobject_unref(job);
        g_usleep(10 * 1000);
    }
    if (*errp) {
        goto cont;
    }
    protect_drop_target(p);
    args = qdict_new();
    qdict_put_str(args, "node-name", LAUNCH_REPLICA_NODE);
    qdict_put_str(args, "driver", "replication");
    qdict_put_str(args, "mode", "primary");
    qdict_put(args, "file", protect_nbd(standby));
    if (!protect_do(p, "blockdev-add", args, errp)) {
        goto cont;
    }
    args = qdict_new();
    qdict_put_str(args, "parent", LAUNCH_DISK_NODE);
    qdict_put_str(args, "node", LAUNCH_REPLICA_NODE);
    if (!protect_do(p, "x-blockdev-change", args, errp) ||
        !protect_do(p, "migrate-set-capabilities",
                    launch_capability_args("x-colo"), errp)) {
        goto cont;
    }
    args = qdict_new();
    qdict_put_str(args, "uri", uri);
    ok = protect_do(p, "migrate", args, errp);

cont:
    protect_cont(p);
    return ok;
}

static void protect_copying(Protection *p)
{
    Error *err = NULL;
    g_autoptr(QDict) job = protect_job(p, &err);

    if (err) {
        warn_report_err(err);   /* the next round asks again */
        return;
    }
    if (!job) {
        protect_abandon(p, "the disk copy ended before it was ready");
        return;
    }
    if (!qdict_get_try_bool(job, "ready", false)) {
        return;
    }
    if (!protect_switch(p, &err)) {
        protect_abandon(p, error_get_pretty(err));
        error_free(err);
        return;
    }
    info_report("protecting: disk copied and replicated, migrating");
    p->step = PROTECT_MIGRATING;
}

static void protect_migrating(Protection *p)
{
    Arbitration *a = p->a;
    g_autoptr(QDict) mig = NULL;
    const char *status;

    if (!a->colo) {
        return;     /* QEMU's main loop is busy (the migration's end) */
    }
    if (!g_strcmp0(qdict_get_try_str(a->colo, "mode"), "primary")) {
        p->last_protect_ms = get_clock() / SCALE_MS - p->started_ms;
        p->protected_count++;
        info_report("protected: in COLO with %s after %" PRId64 " ms",
                    p->cfg->peer, p->last_protect_ms);
        g_clear_pointer(&p->standby, g_free);
        p->step = PROTECT_IDLE;
        return;
    }
    mig = qmp_client_call(a->qmp, "query-migrate", NULL, NULL);
    status = mig ? qdict_get_try_str(mig, "status") : NULL;
    if (!g_strcmp0(status, "failed") || !g_strcmp0(status, "cancelled")) {
        protect_abandon(p, "the migration failed");
    } else if (get_clock() / SCALE_MS - p->started_ms >
               PROTECT_MIGRATE_MAX_MS) {
        protect_do(p, "migrate_cancel", NULL, NULL);
        protect_abandon(p, "the migration took too long");
    }
}

void protection_round(Protection *p)
{
    Error *err = NULL;

    if (!p->cfg->qemu_binary) {
        return;
    }
    if (p->a->state == M_JOIN || p->a->state == MS_WATCH) {
        /* Not a primary's manager (its QEMU replaced, say): nothing left. */
        g_clear_pointer(&p->standby, g_free);
        p->step = PROTECT_IDLE;
        p->stopped = false;
        return;
    }
    protect_cont(p);
    switch (p->step) {
    case PROTECT_IDLE:
        if (get_clock() / SCALE_MS < p->retry_ms) {
            break;
        }
        if (protect_allowed(p) && !protect_start(p, &err)) {
            p->retry_ms = get_clock() / SCALE_MS + PROTECT_RETRY_MS;
            if (g_strcmp0(error_get_pretty(err), p->last_error)) {
                warn_report("protecting: %s", error_get_pretty(err));
                g_free(p->last_error);
                p->last_error = g_strdup(error_get_pretty(err));
            }
            error_free(err);
        }
        break;
    case PROTECT_COPYING:
        if (!protect_allowed(p)) {
            protect_abandon(p, "this host may no longer protect");
        } else {
            protect_copying(p);
        }
        break;
    case PROTECT_MIGRATING:
        if (p->a->state != MP_HOLD) {
            /* Leaving COLO or the migration is QEMU's: fenced or lost. */
            protect_abandon(p, "this host no longer holds the key");
        } else {
            protect_migrating(p);
        }
        break;
    }
}
