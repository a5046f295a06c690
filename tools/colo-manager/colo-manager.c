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

    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    arbitration_init(&a, cfg, etcd, qmp);
    info_report("VM %s, host %s, peer %s: etcd lease %" PRId64 " s, QEMU "
                "lease %" PRId64 " ms renewed every %" PRId64 " ms",
                cfg->vm, cfg->host, cfg->peer, cfg->ttl_s, cfg->validity_ms,
                cfg->renew_ms);
    while (!manager_quit) {
        int64_t start = get_clock() / SCALE_MS;
        int64_t left;

        arbitration_round(&a);
        left = start + cfg->renew_ms - get_clock() / SCALE_MS;
        if (left > 0) {
            poll(NULL, 0, left);    /* a signal ends it early */
        }
    }
    info_report("leaving in state %s", manager_state_name(a.state));
    arbitration_cleanup(&a);
    qmp_client_free(qmp);
    etcd_client_free(etcd);
    return 0;
}

/* The pair as etcd and this host's QEMU see it. */
static int manager_status(const ManagerConfig *cfg, bool json)
{
    EtcdClient *etcd = etcd_client_new(cfg->etcd_endpoints,
                                       cfg->etcd_timeout_ms);
    QmpClient *qmp = qmp_client_new(cfg->qmp, cfg->qmp_timeout_ms);
    g_autofree char *key_p = manager_config_key(cfg, "primary");
    g_autofree char *key_s = manager_config_key(cfg, "successor");
    g_autofree char *primary = NULL;
    g_autofree char *successor = NULL;
    g_autoptr(QDict) st = NULL;
    Error *etcd_err = NULL;
    Error *qmp_err = NULL;
    int ret = 0;

    if (!etcd_get(etcd, key_p, &primary, &etcd_err) ||
        !etcd_get(etcd, key_s, &successor, &etcd_err)) {
        ret = 1;
    }
    st = qmp_client_call(qmp, "query-colo-status", NULL, &qmp_err);
    if (!st) {
        ret = 1;
    }
    if (json) {
        g_autoptr(QDict) out = qdict_new();
        g_autoptr(GString) s = NULL;

        qdict_put_str(out, "vm", cfg->vm);
        qdict_put_str(out, "host", cfg->host);
        qdict_put_str(out, "peer", cfg->peer);
        if (etcd_err) {
            qdict_put_str(out, "etcd-error", error_get_pretty(etcd_err));
        } else {
            qdict_put_str(out, "primary", primary ?: "");
            qdict_put_str(out, "successor", successor ?: "");
        }
        if (st) {
            qdict_put(out, "colo", qobject_ref(st));
        } else {
            qdict_put_str(out, "qemu-error", error_get_pretty(qmp_err));
        }
        s = qobject_to_json(QOBJECT(out));
        printf("%s\n", s->str);
    } else {
        printf("VM %s, this host %s, peer %s\n", cfg->vm, cfg->host,
               cfg->peer);
        if (etcd_err) {
            printf("etcd: %s\n", error_get_pretty(etcd_err));
        } else {
            printf("etcd: primary %s, successor %s\n",
                   primary ?: "(none)", successor ?: "(none)");
        }
        if (st) {
            QDict *lease = qdict_get_qdict(st, "x-lease");
            QDict *stats = qdict_get_qdict(st, "stats");

            printf("QEMU: COLO mode %s (last %s, reason %s)\n",
                   qdict_get_try_str(st, "mode") ?: "?",
                   qdict_get_try_str(st, "last-mode") ?: "?",
                   qdict_get_try_str(st, "reason") ?: "?");
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
        } else {
            printf("QEMU: %s\n", error_get_pretty(qmp_err));
        }
    }
    error_free(etcd_err);
    error_free(qmp_err);
    qmp_client_free(qmp);
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
