/*
 * colo-manager: its configuration file
 *
 * Copyright (c) 2026 The COLO project authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "config.h"

static char *config_string(GKeyFile *kf, const char *group, const char *key,
                           Error **errp)
{
    g_autoptr(GError) gerr = NULL;
    char *v = g_key_file_get_string(kf, group, key, &gerr);

    if (!v || !*v) {
        error_setg(errp, "[%s] %s is missing", group, key);
        g_free(v);
        return NULL;
    }
    return v;
}

/* [group] key as an integer in [min, max], or @def when absent. */
static bool config_int(GKeyFile *kf, const char *group, const char *key,
                       int64_t def, int64_t min, int64_t max, int64_t *out,
                       Error **errp)
{
    g_autoptr(GError) gerr = NULL;
    int64_t v;

    if (!g_key_file_has_key(kf, group, key, NULL)) {
        *out = def;
        return true;
    }
    v = g_key_file_get_int64(kf, group, key, &gerr);
    if (gerr) {
        error_setg(errp, "[%s] %s: %s", group, key, gerr->message);
        return false;
    }
    if (v < min || v > max) {
        error_setg(errp, "[%s] %s is %" PRId64 ", it must be between %"
                   PRId64 " and %" PRId64, group, key, v, min, max);
        return false;
    }
    *out = v;
    return true;
}

/* [qemu] and the addresses the peer's QEMU reaches this host's on. */
static bool manager_config_load_qemu(ManagerConfig *cfg, GKeyFile *kf,
                                     Error **errp)
{
    ERRP_GUARD();
    g_autofree char *args = NULL;
    g_autoptr(GError) gerr = NULL;

    cfg->qemu_binary = config_string(kf, "qemu", "binary", errp);
    args = *errp ? NULL : config_string(kf, "qemu", "args", errp);
    cfg->disk = *errp ? NULL : config_string(kf, "qemu", "disk", errp);
    cfg->workdir = *errp ? NULL : config_string(kf, "qemu", "workdir", errp);
    cfg->address = *errp ? NULL : config_string(kf, "host", "address", errp);
    if (*errp ||
        !config_int(kf, "host", "migrate-port", 0, 1, 65535,
                    &cfg->migrate_port, errp) ||
        !config_int(kf, "host", "nbd-port", 0, 1, 65535, &cfg->nbd_port,
                    errp) ||
        !config_int(kf, "qemu", "checkpoint-delay-ms", -1, -1, 3600000,
                    &cfg->checkpoint_delay_ms, errp)) {
        return false;
    }
    if (!cfg->migrate_port || !cfg->nbd_port) {
        error_setg(errp, "[host] migrate-port and nbd-port are needed with "
                   "[qemu]");
        return false;
    }
    if (!g_shell_parse_argv(args, NULL, &cfg->qemu_args, &gerr)) {
        error_setg(errp, "[qemu] args: %s", gerr->message);
        return false;
    }
    g_free(args);
    args = g_key_file_get_string(kf, "qemu", "wrapper", NULL);
    if (args && *args &&
        !g_shell_parse_argv(args, NULL, &cfg->qemu_wrapper, &gerr)) {
        error_setg(errp, "[qemu] wrapper: %s", gerr->message);
        return false;
    }
    cfg->qemu_img = g_key_file_get_string(kf, "qemu", "img", NULL);
    if (!cfg->qemu_img || !*cfg->qemu_img) {
        g_autofree char *dir = g_path_get_dirname(cfg->qemu_binary);

        g_free(cfg->qemu_img);
        cfg->qemu_img = g_build_filename(dir, "qemu-img", NULL);
    }
    cfg->disk_device = g_key_file_get_string(kf, "qemu", "disk-device",
                                             NULL);
    if (!cfg->disk_device || !*cfg->disk_device) {
        g_free(cfg->disk_device);
        cfg->disk_device = g_strdup("virtio-blk-pci");
    }
    return true;
}

bool manager_config_load(ManagerConfig *cfg, const char *path, Error **errp)
{
    ERRP_GUARD();
    g_autoptr(GKeyFile) kf = g_key_file_new();
    g_autoptr(GError) gerr = NULL;
    g_autofree char *endpoints = NULL;

    memset(cfg, 0, sizeof(*cfg));
    if (!g_key_file_load_from_file(kf, path, G_KEY_FILE_NONE, &gerr)) {
        error_setg(errp, "cannot read %s: %s", path, gerr->message);
        return false;
    }
    cfg->vm = config_string(kf, "vm", "name", errp);
    cfg->host = *errp ? NULL : config_string(kf, "host", "name", errp);
    cfg->peer = *errp ? NULL : config_string(kf, "host", "peer", errp);
    cfg->qmp = *errp ? NULL : config_string(kf, "host", "qmp", errp);
    endpoints = *errp ? NULL : config_string(kf, "etcd", "endpoints", errp);
    if (*errp) {
        goto fail;
    }
    if (!strcmp(cfg->host, cfg->peer)) {
        error_setg(errp, "[host] name and peer are both '%s'", cfg->host);
        goto fail;
    }
    if (strchr(cfg->vm, '/')) {
        error_setg(errp, "[vm] name '%s' holds a '/'", cfg->vm);
        goto fail;
    }
    cfg->state_file = g_key_file_get_string(kf, "host", "state-file", NULL);
    if (!cfg->state_file || !*cfg->state_file) {
        g_free(cfg->state_file);
        cfg->state_file = g_strdup_printf("/run/colo-manager/%s.json",
                                          cfg->vm);
    }
    cfg->etcd_endpoints = g_strsplit(endpoints, ";", -1);
    /*
     * etcd raises a TTL below 1.5 election timeouts (rounded up to a
     * second): 2 s with its default election timeout.  Longer is safe.
     */
    if (!config_int(kf, "etcd", "ttl", 1, 1, 3600, &cfg->ttl_s, errp) ||
        !config_int(kf, "etcd", "timeout-ms", 300, 10, 60000,
                    &cfg->etcd_timeout_ms, errp) ||
        !config_int(kf, "lease", "validity-ms", 900, 100, 3600000,
                    &cfg->validity_ms, errp) ||
        !config_int(kf, "lease", "renew-ms", cfg->validity_ms / 5, 10,
                    3600000, &cfg->renew_ms, errp) ||
        !config_int(kf, "lease", "qmp-timeout-ms", 200, 10, 60000,
                    &cfg->qmp_timeout_ms, errp)) {
        goto fail;
    }
    /*
     * QEMU's lease, counted from a reading taken before the keep-alive
     * that makes etcd run its TTL, must lapse before etcd's lease can
     * expire, drift included: the key passes only once QEMU stopped.
     */
    if (cfg->ttl_s * 1000 < cfg->validity_ms * (1 + MANAGER_CLOCK_RHO) +
                            MANAGER_CLOCK_EPS_MS) {
        error_setg(errp, "[etcd] ttl (%" PRId64 " s) must exceed [lease] "
                   "validity-ms (%" PRId64 ") by %.0f %% and %d ms",
                   cfg->ttl_s, cfg->validity_ms, MANAGER_CLOCK_RHO * 100,
                   MANAGER_CLOCK_EPS_MS);
        goto fail;
    }
    if (g_key_file_has_group(kf, "qemu") &&
        !manager_config_load_qemu(cfg, kf, errp)) {
        goto fail;
    }
    if (cfg->renew_ms * 2 > cfg->validity_ms) {
        error_setg(errp, "[lease] renew-ms (%" PRId64 ") must be at most "
                   "half of validity-ms (%" PRId64 ")", cfg->renew_ms,
                   cfg->validity_ms);
        goto fail;
    }
    return true;

fail:
    error_prepend(errp, "%s: ", path);
    manager_config_free(cfg);
    return false;
}

void manager_config_free(ManagerConfig *cfg)
{
    g_free(cfg->vm);
    g_free(cfg->host);
    g_free(cfg->peer);
    g_free(cfg->qmp);
    g_free(cfg->state_file);
    g_strfreev(cfg->etcd_endpoints);
    g_free(cfg->qemu_binary);
    g_free(cfg->qemu_img);
    g_strfreev(cfg->qemu_args);
    g_strfreev(cfg->qemu_wrapper);
    g_free(cfg->disk);
    g_free(cfg->disk_device);
    g_free(cfg->workdir);
    g_free(cfg->address);
    memset(cfg, 0, sizeof(*cfg));
}

char *manager_config_key(const ManagerConfig *cfg, const char *what)
{
    return g_strdup_printf("colo/%s/%s", cfg->vm, what);
}
