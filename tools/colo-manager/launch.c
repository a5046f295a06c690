/*
 * colo-manager: its host's QEMU (launch.h)
 *
 * Who starts what is decided by etcd's keys alone:
 *   - the VM never booted (no primary key, no booted key): take both in
 *     one transaction (arbitration_claim_boot()) and boot it here, the
 *     guest's disk a one-child quorum over this host's image;
 *   - the primary key names the peer: start a secondary, its disk the
 *     replication stack under a quorum (a survivor's replica for the next
 *     secondary joins that quorum), its image exported over NBD for the
 *     primary's copy, waiting for the migration; then announce it in the
 *     standby key, under this host's etcd lease, for the primary's
 *     manager (protect.c);
 *   - anything else (the key still names this host, whose QEMU is gone;
 *     the VM booted once but nobody holds the key): wait.  A VM booted
 *     once is never booted again by a manager: its last state may live
 *     only in a QEMU this host cannot see.
 *
 * Copyright (c) 2026 The COLO project authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include <sys/wait.h>
#include "qapi/error.h"
#include "qemu/error-report.h"
#include "qemu/timer.h"
#include "qobject/qdict.h"
#include "qobject/qjson.h"
#include "qobject/qlist.h"
#include "launch.h"

/* How long a started QEMU may take to answer its monitor. */
#define LAUNCH_MONITOR_WAIT_MS  10000

const char *launch_role_name(LaunchRole role)
{
    static const char *const names[] = {
        [LAUNCH_NONE] = "none", [LAUNCH_PRIMARY] = "primary",
        [LAUNCH_SECONDARY] = "secondary", [LAUNCH_ATTACHED] = "attached",
    };

    return names[role];
}

void launcher_init(Launcher *l, const ManagerConfig *cfg, Arbitration *a)
{
    memset(l, 0, sizeof(*l));
    l->cfg = cfg;
    l->a = a;
}

void launcher_cleanup(Launcher *l)
{
    g_free(l->standby);
    g_free(l->waiting);
}

/* Report why nothing starts, once per reason. */
static void launcher_wait(Launcher *l, const char *why)
{
    if (g_strcmp0(why, l->waiting)) {
        info_report("no QEMU started: %s", why);
        g_free(l->waiting);
        l->waiting = g_strdup(why);
    }
}

static char *blockdev_json(QDict *opts)
{
    g_autoptr(GString) s = qobject_to_json(QOBJECT(opts));

    qobject_unref(opts);
    return g_strdup(s->str);
}

static QDict *file_node(const char *node, const char *driver,
                        const char *path, const char *backing)
{
    QDict *d = qdict_new();
    QDict *file = qdict_new();

    qdict_put_str(file, "driver", "file");
    qdict_put_str(file, "filename", path);
    qdict_put_str(d, "node-name", node);
    qdict_put_str(d, "driver", driver);
    qdict_put(d, "file", file);
    if (backing) {
        qdict_put_str(d, "backing", backing);
    }
    return d;
}

/* The guest's disk: a quorum of one, @child; its replica joins it. */
static QDict *quorum_node(const char *child)
{
    QDict *d = qdict_new();
    QList *children = qlist_new();

    qlist_append_str(children, child);
    qdict_put_str(d, "node-name", LAUNCH_DISK_NODE);
    qdict_put_str(d, "driver", "quorum");
    qdict_put_str(d, "read-pattern", "fifo");
    qdict_put_int(d, "vote-threshold", 1);
    qdict_put(d, "children", children);
    return d;
}

static bool launcher_create_overlay(Launcher *l, const char *path,
                                    int64_t size, Error **errp)
{
    g_autofree char *size_str = g_strdup_printf("%" PRId64, size);
    const char *argv[] = { l->cfg->qemu_img, "create", "-q", "-f", "qcow2",
                           path, size_str, NULL };
    g_autofree char *err_out = NULL;
    g_autoptr(GError) gerr = NULL;
    int status;

    if (!g_spawn_sync(NULL, (char **)argv, NULL, G_SPAWN_STDOUT_TO_DEV_NULL,
                      NULL, NULL, NULL, &err_out, &status, &gerr)) {
        error_setg(errp, "cannot run %s: %s", l->cfg->qemu_img,
                   gerr->message);
        return false;
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status)) {
        error_setg(errp, "%s create %s failed%s%s", l->cfg->qemu_img, path,
                   err_out && *err_out ? ": " : "",
                   err_out ? g_strstrip(err_out) : "");
        return false;
    }
    return true;
}

/* The command line: the user's, the manager's monitor, the disk. */
static GPtrArray *launcher_argv(Launcher *l, bool secondary, Error **errp)
{
    const ManagerConfig *cfg = l->cfg;
    GPtrArray *argv = g_ptr_array_new_with_free_func(g_free);
    struct stat st;

    for (char **arg = cfg->qemu_wrapper; arg && *arg; arg++) {
        g_ptr_array_add(argv, g_strdup(*arg));
    }
    g_ptr_array_add(argv, g_strdup(cfg->qemu_binary));
    for (char **arg = cfg->qemu_args; *arg; arg++) {
        g_ptr_array_add(argv, g_strdup(*arg));
    }
    g_ptr_array_add(argv, g_strdup("-chardev"));
    g_ptr_array_add(argv, g_strdup_printf("socket,id=colo-manager,path=%s,"
                                          "server=on,wait=off", cfg->qmp));
    g_ptr_array_add(argv, g_strdup("-mon"));
    g_ptr_array_add(argv, g_strdup("chardev=colo-manager,mode=control"));
    g_ptr_array_add(argv, g_strdup("-blockdev"));
    g_ptr_array_add(argv, blockdev_json(file_node(LAUNCH_BASE_NODE, "raw",
                                                  cfg->disk, NULL)));
    if (secondary) {
        g_autofree char *hidden = g_build_filename(cfg->workdir,
                                                   "hidden.qcow2", NULL);
        g_autofree char *active = g_build_filename(cfg->workdir,
                                                   "active.qcow2", NULL);
        QDict *repl;

        if (stat(cfg->disk, &st) < 0) {
            error_setg_errno(errp, errno, "[qemu] disk %s", cfg->disk);
            g_ptr_array_free(argv, true);
            return NULL;
        }
        if (!launcher_create_overlay(l, hidden, st.st_size, errp) ||
            !launcher_create_overlay(l, active, st.st_size, errp)) {
            g_ptr_array_free(argv, true);
            return NULL;
        }
        repl = qdict_new();
        qdict_put_str(repl, "node-name", "colo-disk0-secondary");
        qdict_put_str(repl, "driver", "replication");
        qdict_put_str(repl, "mode", "secondary");
        qdict_put_str(repl, "file", "colo-active");
        qdict_put_str(repl, "top-id", LAUNCH_DISK_NODE);
        g_ptr_array_add(argv, g_strdup("-blockdev"));
        g_ptr_array_add(argv, blockdev_json(file_node("colo-hidden", "qcow2",
                                                      hidden,
                                                      LAUNCH_BASE_NODE)));
        g_ptr_array_add(argv, g_strdup("-blockdev"));
        g_ptr_array_add(argv, blockdev_json(file_node("colo-active", "qcow2",
                                                      active,
                                                      "colo-hidden")));
        g_ptr_array_add(argv, g_strdup("-blockdev"));
        g_ptr_array_add(argv, blockdev_json(repl));
        g_ptr_array_add(argv, g_strdup("-blockdev"));
        g_ptr_array_add(argv, blockdev_json(quorum_node(
                                                "colo-disk0-secondary")));
        g_ptr_array_add(argv, g_strdup("-incoming"));
        g_ptr_array_add(argv, g_strdup("defer"));
    } else {
        g_ptr_array_add(argv, g_strdup("-blockdev"));
        g_ptr_array_add(argv, blockdev_json(quorum_node(LAUNCH_BASE_NODE)));
    }
    g_ptr_array_add(argv, g_strdup("-device"));
    g_ptr_array_add(argv, g_strdup_printf("%s,drive=%s", cfg->disk_device,
                                          LAUNCH_DISK_NODE));
    g_ptr_array_add(argv, NULL);
    return argv;
}

/* Start QEMU in its own session, its output to workdir/qemu.log. */
static bool launcher_spawn(Launcher *l, char **argv, Error **errp)
{
    g_autofree char *log = g_build_filename(l->cfg->workdir, "qemu.log",
                                            NULL);
    int fd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    pid_t pid;

    if (fd < 0) {
        error_setg_errno(errp, errno, "cannot open %s", log);
        return false;
    }
    pid = fork();
    if (pid < 0) {
        error_setg_errno(errp, errno, "fork");
        close(fd);
        return false;
    }
    if (pid == 0) {
        /* A manager that dies or is restarted leaves its QEMU running. */
        setsid();
        dup2(fd, STDOUT_FILENO);
        dup2(fd, STDERR_FILENO);
        execvp(argv[0], argv);
        _exit(127);
    }
    close(fd);
    l->pid = pid;
    return true;
}

static bool launcher_qmp(Launcher *l, const char *cmd, QDict *args,
                         Error **errp)
{
    g_autoptr(QDict) ret = qmp_client_call(l->a->qmp, cmd, args, errp);

    return ret != NULL;
}

QDict *launch_capability_args(const char *cap)
{
    QDict *args = qdict_new();
    QList *caps = qlist_new();
    QDict *c = qdict_new();

    qdict_put_str(c, "capability", cap);
    qdict_put_bool(c, "state", true);
    qlist_append(caps, c);
    qdict_put(args, "capabilities", caps);
    return args;
}

static bool launcher_set_cap(Launcher *l, const char *cap, Error **errp)
{
    return launcher_qmp(l, "migrate-set-capabilities",
                        launch_capability_args(cap), errp);
}

/* Wait for the started QEMU's monitor, as long as the QEMU lives. */
static bool launcher_wait_monitor(Launcher *l, Error **errp)
{
    int64_t deadline = get_clock() / SCALE_MS + LAUNCH_MONITOR_WAIT_MS;

    for (;;) {
        Error *err = NULL;
        int status;

        if (launcher_qmp(l, "query-status", NULL, &err)) {
            return true;
        }
        if (waitpid(l->pid, &status, WNOHANG) == l->pid) {
            l->pid = 0;
            error_free(err);
            error_setg(errp, "QEMU exited at its start (see %s/qemu.log)",
                       l->cfg->workdir);
            return false;
        }
        if (get_clock() / SCALE_MS > deadline) {
            error_propagate_prepend(errp, err, "QEMU's monitor: ");
            return false;
        }
        error_free(err);
        g_usleep(50 * 1000);
    }
}

/* The secondary's side of the disk copy and of the migration. */
static bool launcher_secondary_setup(Launcher *l, Error **errp)
{
    const ManagerConfig *cfg = l->cfg;
    QDict *args = qdict_new();
    QDict *addr = qdict_new();
    QDict *data = qdict_new();
    g_autofree char *port = g_strdup_printf("%" PRId64, cfg->nbd_port);
    g_autofree char *uri = g_strdup_printf("tcp:%s:%" PRId64, cfg->address,
                                           cfg->migrate_port);

    qdict_put_str(data, "host", cfg->address);
    qdict_put_str(data, "port", port);
    qdict_put_str(addr, "type", "inet");
    qdict_put(addr, "data", data);
    qdict_put(args, "addr", addr);
    if (!launcher_set_cap(l, "x-colo", errp) ||
        !launcher_qmp(l, "nbd-server-start", args, errp)) {
        return false;
    }
    args = qdict_new();
    qdict_put_str(args, "type", "nbd");
    qdict_put_str(args, "id", LAUNCH_EXPORT);
    qdict_put_str(args, "node-name", LAUNCH_BASE_NODE);
    qdict_put_str(args, "name", LAUNCH_EXPORT);
    qdict_put_bool(args, "writable", true);
    if (!launcher_qmp(l, "block-export-add", args, errp)) {
        return false;
    }
    args = qdict_new();
    qdict_put_str(args, "uri", uri);
    return launcher_qmp(l, "migrate-incoming", args, errp);
}

static bool launcher_start(Launcher *l, bool secondary, Error **errp)
{
    ERRP_GUARD();
    g_autoptr(GPtrArray) argv = NULL;

    if (g_mkdir_with_parents(l->cfg->workdir, 0755) < 0) {
        error_setg_errno(errp, errno, "cannot create %s", l->cfg->workdir);
        return false;
    }
    argv = launcher_argv(l, secondary, errp);
    if (!argv || !launcher_spawn(l, (char **)argv->pdata, errp) ||
        !launcher_wait_monitor(l, errp) ||
        !launcher_set_cap(l, "x-colo-arbitrated", errp)) {
        goto fail;
    }
    if (secondary && !launcher_secondary_setup(l, errp)) {
        goto fail;
    }
    if (!secondary && l->cfg->checkpoint_delay_ms >= 0) {
        QDict *args = qdict_new();

        qdict_put_int(args, "x-checkpoint-delay",
                      l->cfg->checkpoint_delay_ms);
        if (!launcher_qmp(l, "migrate-set-parameters", args, errp)) {
            goto fail;
        }
    }
    l->role = secondary ? LAUNCH_SECONDARY : LAUNCH_PRIMARY;
    info_report("started QEMU (pid %d) as the %s", l->pid,
                launch_role_name(l->role));
    return true;

fail:
    if (l->pid) {
        /* Half set up, it would only stand in the way of the next one. */
        kill(l->pid, SIGKILL);
        waitpid(l->pid, NULL, 0);
        l->pid = 0;
    }
    error_prepend(errp, "starting QEMU as the %s: ",
                  secondary ? "secondary" : "primary");
    return false;
}

/* No QEMU here: start one if etcd's keys say which. */
static void launcher_decide(Launcher *l, Error **errp)
{
    Arbitration *a = l->a;
    g_autofree char *primary = NULL;
    g_autofree char *booted = NULL;
    g_autofree char *why = NULL;

    /*
     * The boot transaction writes both keys at once.  Read booted first:
     * the primary key, read after it, is no older, so "booted, no
     * primary" is never a boot this host raced with.
     */
    if (!etcd_get(a->etcd, a->key_booted, &booted, errp) ||
        !etcd_get(a->etcd, a->key_primary, &primary, errp)) {
        return;
    }
    if (primary && !strcmp(primary, l->cfg->peer)) {
        launcher_start(l, true, errp);
        return;
    }
    if (!primary && !booted) {
        Error *err = NULL;

        if (!arbitration_claim_boot(a, &err)) {
            if (err) {
                error_propagate(errp, err);
            }
            return;             /* the peer was first */
        }
        if (!launcher_start(l, false, errp)) {
            /* Nothing runs: let the key go rather than block the peer. */
            arbitration_qemu_exited(a);
        }
        return;
    }
    why = primary ? g_strdup_printf("the primary key still names %s",
                                    primary)
                  : g_strdup_printf("the VM was booted (by %s) and no host "
                                    "holds its primary key: a person "
                                    "decides", booted);
    launcher_wait(l, why);
}

/* At the manager's start: a QEMU already answering is adopted. */
static void launcher_adopt(Launcher *l)
{
    g_autoptr(QDict) st = NULL;

    l->checked = true;
    st = qmp_client_call(l->a->qmp, "query-status", NULL, NULL);
    if (!st) {
        return;
    }
    l->role = !g_strcmp0(qdict_get_try_str(st, "status"), "inmigrate")
              ? LAUNCH_SECONDARY : LAUNCH_ATTACHED;
    info_report("QEMU already runs (%s): adopted as %s",
                qdict_get_try_str(st, "status") ?: "?",
                launch_role_name(l->role));
}

/* A waiting secondary is the standby, under this host's etcd lease. */
static void launcher_announce(Launcher *l, Error **errp)
{
    const ManagerConfig *cfg = l->cfg;
    Arbitration *a = l->a;
    g_autoptr(EtcdTxn) t = etcd_txn_new();
    g_autoptr(QDict) v = NULL;
    g_autoptr(GString) json = NULL;
    bool ok;

    if (a->state == MS_WATCH && l->announced) {
        /* In COLO now: withdrawn, if it is still this announcement. */
        etcd_txn_if_equal(t, a->key_standby, l->standby);
        etcd_txn_delete(t, a->key_standby);
        if (etcd_txn_commit(a->etcd, t, &ok, errp)) {
            l->announced = 0;
        }
        return;
    }
    if (a->state != M_JOIN || !a->lease || a->lease == l->announced) {
        return;
    }
    v = qdict_new();
    qdict_put_str(v, "host", cfg->host);
    qdict_put_str(v, "address", cfg->address);
    qdict_put_int(v, "migrate-port", cfg->migrate_port);
    qdict_put_int(v, "nbd-port", cfg->nbd_port);
    qdict_put_int(v, "pid", l->pid);
    qdict_put_int(v, "since-ms", g_get_real_time() / 1000);
    json = qobject_to_json(QOBJECT(v));
    etcd_txn_put(t, a->key_standby, json->str, a->lease);
    if (etcd_txn_commit(a->etcd, t, &ok, errp)) {
        g_free(l->standby);
        l->standby = g_strdup(json->str);
        l->announced = a->lease;
        info_report("announced as the standby: %s", json->str);
    }
}

/* Its QEMU is gone: start afresh (a new secondary, if the keys say so). */
static void launcher_gone(Launcher *l)
{
    l->pid = 0;
    l->role = LAUNCH_NONE;
    l->announced = 0;
    l->named = false;
    arbitration_qemu_exited(l->a);
}

/*
 * Why this host's QEMU can never serve again, or NULL, from the last
 * round's reading:
 *   - it fenced itself (a lapsed lease alone: for good);
 *   - a secondary that left COLO without being handed over (a handed
 *     over one holds a sole lease from before its failover): QEMU
 *     refuses it a lease;
 *   - a secondary in COLO that the pair left behind: the successor key
 *     named this host and no longer does, while the primary key names
 *     the peer: the primary went alone, and only a new secondary,
 *     protected anew, will be named again.
 */
static const char *launcher_useless(Launcher *l, Error **errp)
{
    Arbitration *a = l->a;
    QDict *st = a->colo;            /* the last round's reading */
    g_autofree char *successor = NULL;
    g_autofree char *primary = NULL;
    QDict *lease;
    const char *lease_state, *mode, *last;

    if (!st) {
        return NULL;
    }
    lease = qdict_get_qdict(st, "x-lease");
    lease_state = lease ? qdict_get_try_str(lease, "state") : NULL;
    mode = qdict_get_try_str(st, "mode");
    last = qdict_get_try_str(st, "last-mode");
    if (!g_strcmp0(lease_state, "fenced")) {
        return "it fenced itself";
    }
    if (!g_strcmp0(mode, "none") && !g_strcmp0(last, "secondary") &&
        !g_strcmp0(lease_state, "none")) {
        return "a secondary that left COLO without being handed over";
    }
    if (g_strcmp0(mode, "secondary") || a->state != MS_WATCH ||
        !etcd_get(a->etcd, a->key_successor, &successor, errp) ||
        !etcd_get(a->etcd, a->key_primary, &primary, errp)) {
        return NULL;
    }
    if (!g_strcmp0(successor, l->cfg->host)) {
        l->named = true;
    } else if (l->named && !g_strcmp0(primary, l->cfg->peer)) {
        return "the primary went on alone: this secondary is no longer "
               "its successor";
    }
    return NULL;
}

/* Stop a QEMU that can never serve again; the next round replaces it. */
static void launcher_replace(Launcher *l, const char *why)
{
    int status;

    info_report("QEMU (%s) can never serve again: %s; replacing it",
                launch_role_name(l->role), why);
    if (l->pid) {
        kill(l->pid, SIGKILL);
        waitpid(l->pid, &status, 0);
    } else {
        /* Adopted, not a child: asked to quit. */
        g_autoptr(QDict) ret = qmp_client_call(l->a->qmp, "quit", NULL,
                                               NULL);
    }
    launcher_gone(l);
}

void launcher_round(Launcher *l)
{
    Error *err = NULL;
    int status;

    if (!l->cfg->qemu_binary) {
        return;
    }
    if (l->pid && waitpid(l->pid, &status, WNOHANG) == l->pid) {
        info_report("QEMU (pid %d, the %s) exited (status 0x%x)", l->pid,
                    launch_role_name(l->role), status);
        launcher_gone(l);
        return;
    }
    if (l->role != LAUNCH_NONE) {
        const char *why = launcher_useless(l, &err);

        if (why) {
            launcher_replace(l, why);
            return;
        }
        error_free(err);
        err = NULL;
    }
    if (l->role == LAUNCH_NONE && !l->checked) {
        launcher_adopt(l);
    }
    if (l->role == LAUNCH_NONE) {
        launcher_decide(l, &err);
    } else if (l->role == LAUNCH_SECONDARY) {
        launcher_announce(l, &err);
    }
    if (err) {
        launcher_wait(l, error_get_pretty(err));
        error_free(err);
    }
}
