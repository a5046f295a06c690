/*
 * colo-manager: the manager of one host of a COLO pair
 *
 *   colo-manager run CONFIG          keep the lease rule through etcd
 *   colo-manager status CONFIG [--json]
 *
 * docs/system/colo-manager.rst is the user's guide, config.h the
 * configuration file, arbitration.c the rule.
 *
 * Copyright (c) 2026 The COLO project authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include <poll.h>
#include "qapi/error.h"
#include "qemu/error-report.h"
#include "qemu/timer.h"
#include "qobject/qdict.h"
#include "qobject/qjson.h"
#include "arbitration.h"
#include "launch.h"
#include "protect.h"

static volatile sig_atomic_t manager_quit;

static void manager_signal(int sig)
{
    manager_quit = 1;
}

static void usage(FILE *f)
{
    fprintf(f,
            "Usage: colo-manager run CONFIG\n"
            "       colo-manager status CONFIG [--json]\n"
            "\n"
            "The manager of one host of a COLO pair: it decides through\n"
            "etcd which side serves and grants that side's QEMU its lease\n"
            "(docs/system/colo-manager.rst).\n");
}

/* What status shows: the manager's state, written after every round. */
static void manager_write_state(const ManagerConfig *cfg,
                                const Arbitration *a, const Launcher *l,
                                const Protection *p)
{
    g_autoptr(QDict) d = arbitration_describe(a);
    g_autoptr(GString) json = NULL;
    g_autofree char *dir = g_path_get_dirname(cfg->state_file);
    g_autoptr(GError) gerr = NULL;
    static bool reported;

    qdict_put_str(d, "vm", cfg->vm);
    qdict_put_str(d, "host", cfg->host);
    qdict_put_str(d, "peer", cfg->peer);
    qdict_put_int(d, "pid", getpid());
    if (cfg->qemu_binary) {
        qdict_put_str(d, "qemu-role", launch_role_name(l->role));
        qdict_put_int(d, "qemu-pid", l->pid);
        qdict_put(d, "protection", protection_describe(p));
    }
    qdict_put_int(d, "written-ms", g_get_real_time() / 1000);
    json = qobject_to_json(QOBJECT(d));
    g_string_append_c(json, '\n');
    /* Written whole, then renamed: a reader never sees half of it. */
    if ((g_mkdir_with_parents(dir, 0755) < 0 ||
         !g_file_set_contents(cfg->state_file, json->str, json->len,
                              &gerr)) && !reported) {
        warn_report("cannot write the state file %s: %s", cfg->state_file,
                    gerr ? gerr->message : g_strerror(errno));
        reported = true;
    }
}

/*
 * Rounds every renew-ms until SIGTERM or SIGINT.  Leaving renews
 * nothing more and revokes nothing: a primary's key goes when its etcd
 * lease expires, after its QEMU's lease lapsed.
 */
static int manager_run(const ManagerConfig *cfg)
{
    struct sigaction sa = { .sa_handler = manager_signal };
    EtcdClient *etcd = etcd_client_new(cfg->etcd_endpoints,
                                       cfg->etcd_timeout_ms);
    QmpClient *qmp = qmp_client_new(cfg->qmp, cfg->qmp_timeout_ms);
    Arbitration a;
    Launcher l;
    Protection p;

    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    arbitration_init(&a, cfg, etcd, qmp);
    launcher_init(&l, cfg, &a);
    protection_init(&p, cfg, &a);
    info_report("VM %s, host %s, peer %s: etcd lease %" PRId64 " s, QEMU "
                "lease %" PRId64 " ms renewed every %" PRId64 " ms",
                cfg->vm, cfg->host, cfg->peer, cfg->ttl_s, cfg->validity_ms,
                cfg->renew_ms);
    while (!manager_quit) {
        int64_t start = get_clock() / SCALE_MS;
        int64_t left;

        launcher_round(&l);
        arbitration_round(&a);
        protection_round(&p);
        manager_write_state(cfg, &a, &l, &p);
        left = start + cfg->renew_ms - get_clock() / SCALE_MS;
        if (left > 0) {
            poll(NULL, 0, left);    /* a signal ends it early */
        }
    }
    info_report("leaving in state %s", manager_state_name(a.state));
    protection_cleanup(&p);
    launcher_cleanup(&l);
    arbitration_cleanup(&a);
    qmp_client_free(qmp);
    etcd_client_free(etcd);
    return 0;
}

/* The pair as etcd and this host's manager see it. */
static int manager_status(const ManagerConfig *cfg, bool json)
{
    EtcdClient *etcd = etcd_client_new(cfg->etcd_endpoints,
                                       cfg->etcd_timeout_ms);
    g_autofree char *key_p = manager_config_key(cfg, "primary");
    g_autofree char *key_s = manager_config_key(cfg, "successor");
    g_autofree char *primary = NULL;
    g_autofree char *successor = NULL;
    g_autofree char *text = NULL;
    g_autoptr(QDict) out = qdict_new();
    QDict *state = NULL;
    QDict *colo = NULL;
    Error *etcd_err = NULL;
    int64_t age_ms = -1;
    int ret = 0;

    qdict_put_str(out, "vm", cfg->vm);
    qdict_put_str(out, "host", cfg->host);
    qdict_put_str(out, "peer", cfg->peer);
    if (etcd_get(etcd, key_p, &primary, &etcd_err) &&
        etcd_get(etcd, key_s, &successor, &etcd_err)) {
        qdict_put_str(out, "primary", primary ?: "");
        qdict_put_str(out, "successor", successor ?: "");
    } else {
        qdict_put_str(out, "etcd-error", error_get_pretty(etcd_err));
        ret = 1;
    }
    if (g_file_get_contents(cfg->state_file, &text, NULL, NULL)) {
        state = qobject_to(QDict, qobject_from_json(text, NULL));
    }
    if (state) {
        age_ms = g_get_real_time() / 1000 -
                 qdict_get_try_int(state, "written-ms", 0);
        qdict_put_int(state, "age-ms", age_ms);
        colo = qdict_get_qdict(state, "colo");
        qdict_put(out, "manager", state);
    } else {
        ret = 1;
    }

    if (json) {
        g_autoptr(GString) s = qobject_to_json(QOBJECT(out));

        printf("%s\n", s->str);
        goto done;
    }
    printf("VM %s, this host %s, peer %s\n", cfg->vm, cfg->host, cfg->peer);
    if (etcd_err) {
        printf("etcd: %s\n", error_get_pretty(etcd_err));
    } else {
        printf("etcd: primary %s, successor %s\n",
               primary ?: "(none)", successor ?: "(none)");
    }
    if (!state) {
        printf("manager: no state in %s (not running here?)\n",
               cfg->state_file);
        goto done;
    }
    printf("manager: %s%s, last round %.1f s ago%s%s\n",
           qdict_get_try_str(state, "state") ?: "?",
           qdict_get_try_bool(state, "sole", false) ? " (sole leases)" : "",
           age_ms / 1e3,
           *(qdict_get_try_str(state, "last-error") ?: "") ? ": " : "",
           qdict_get_try_str(state, "last-error") ?: "");
    if (colo) {
        QDict *lease = qdict_get_qdict(colo, "x-lease");
        QDict *stats = qdict_get_qdict(colo, "stats");

        printf("QEMU: COLO mode %s (last %s, reason %s)\n",
               qdict_get_try_str(colo, "mode") ?: "?",
               qdict_get_try_str(colo, "last-mode") ?: "?",
               qdict_get_try_str(colo, "reason") ?: "?");
        if (lease) {
            printf("lease: %s, %" PRId64 " ms left%s\n",
                   qdict_get_try_str(lease, "state") ?: "?",
                   qdict_get_try_int(lease, "remaining-ms", 0),
                   qdict_get_try_bool(lease, "alone", false)
                   ? ", serving alone" : "");
        }
        if (stats) {
            printf("checkpoints: %" PRId64 ", pause mean %" PRId64
                   " us, max %" PRId64 " us\n",
                   qdict_get_try_int(stats, "checkpoints", 0),
                   qdict_get_try_int(stats, "pause-mean-us", 0),
                   qdict_get_try_int(stats, "pause-max-us", 0));
        }
    }

done:
    error_free(etcd_err);
    etcd_client_free(etcd);
    return ret;
}

int main(int argc, char **argv)
{
    ManagerConfig cfg;
    Error *err = NULL;
    bool json = false;
    int ret;

    error_init(argv[0]);
    if (argc == 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        usage(stdout);
        return 0;
    }
    if (argc == 4 && !strcmp(argv[1], "status") &&
        !strcmp(argv[3], "--json")) {
        json = true;
    } else if (argc != 3 || (strcmp(argv[1], "run") &&
                             strcmp(argv[1], "status"))) {
        usage(stderr);
        return 2;
    }
    if (!manager_config_load(&cfg, argv[2], &err)) {
        error_report_err(err);
        return 1;
    }
    if (!strcmp(argv[1], "run")) {
        message_with_timestamp = true;
        ret = manager_run(&cfg);
    } else {
        ret = manager_status(&cfg, json);
    }
    manager_config_free(&cfg);
    return ret;
}
