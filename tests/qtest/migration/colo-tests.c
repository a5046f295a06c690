/*
 * QTest testcases for COLO: checkpoints from a primary to a secondary.
 *
 * The framework's guest increments a byte in every page of 100 MB in a
 * loop, so every checkpoint carries many dirty pages.  After each
 * checkpoint taken with the primary stopped, the secondary's memory must
 * equal the primary's byte for byte.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "libqtest.h"
#include "qobject/qdict.h"
#include "migration/framework.h"
#include "migration/migration-qmp.h"
#include "migration/migration-util.h"

static char *tmpfs;

/* Every wait below is bounded by this. */
#define COLO_TEST_TIMEOUT_S 60

static uint64_t colo_checkpoints(QTestState *who)
{
    QDict *rsp = qtest_qmp_assert_success_ref(who,
                                   "{ 'execute': 'query-colo-status' }");
    QDict *stats = qdict_get_qdict(rsp, "stats");
    uint64_t n = qdict_get_int(stats, "checkpoints");

    qobject_unref(rsp);
    return n;
}

static char *colo_mode(QTestState *who)
{
    QDict *rsp = qtest_qmp_assert_success_ref(who,
                                   "{ 'execute': 'query-colo-status' }");
    char *mode = g_strdup(qdict_get_str(rsp, "mode"));

    qobject_unref(rsp);
    return mode;
}

/* Wait until @who has completed more than @n checkpoints. */
static void colo_wait_checkpoints(QTestState *who, uint64_t n)
{
    gint64 deadline = g_get_monotonic_time() +
                      COLO_TEST_TIMEOUT_S * G_USEC_PER_SEC;

    while (colo_checkpoints(who) <= n) {
        g_assert_cmpint(g_get_monotonic_time(), <, deadline);
        g_usleep(5 * 1000);
    }
}

static void colo_wait_mode(QTestState *who, const char *mode)
{
    gint64 deadline = g_get_monotonic_time() +
                      COLO_TEST_TIMEOUT_S * G_USEC_PER_SEC;

    for (;;) {
        g_autofree char *now = colo_mode(who);

        if (g_str_equal(now, mode)) {
            return;
        }
        g_assert_cmpint(g_get_monotonic_time(), <, deadline);
        g_usleep(10 * 1000);
    }
}

static void colo_save_memory(QTestState *who, const char *name)
{
    g_autofree char *path = g_strdup_printf("%s/%s", tmpfs, name);

    qtest_qmp_assert_success(who, "{ 'execute': 'pmemsave', 'arguments':"
                             " { 'val': 0, 'size': %" PRIu64 ","
                             "   'filename': %s } }",
                             (uint64_t)150 * 1024 * 1024, path);
}

static void colo_assert_memory_equal(void)
{
    g_autofree char *ppath = g_strdup_printf("%s/colo-pvm.mem", tmpfs);
    g_autofree char *spath = g_strdup_printf("%s/colo-svm.mem", tmpfs);
    g_autofree char *pmem = NULL, *smem = NULL;
    gsize plen, slen, differ = 0;

    g_assert(g_file_get_contents(ppath, &pmem, &plen, NULL));
    g_assert(g_file_get_contents(spath, &smem, &slen, NULL));
    g_assert_cmpuint(plen, ==, slen);
    for (gsize i = 0; i < plen; i += 4096) {
        gsize n = MIN(4096, plen - i);

        if (memcmp(pmem + i, smem + i, n)) {
            for (gsize j = 0; j < n; j++) {
                if (pmem[i + j] != smem[i + j]) {
                    g_test_message("page at 0x%zx differs first at +0x%zx:"
                                   " %02x on the primary, %02x here", i, j,
                                   (uint8_t)pmem[i + j], (uint8_t)smem[i + j]);
                    break;
                }
            }
            differ++;
        }
    }
    g_assert_cmpuint(differ, ==, 0);
    unlink(ppath);
    unlink(spath);
}

/*
 * Start a primary and a secondary and bring them into COLO; @args gives
 * both extra options, if set.
 */
static void colo_start_args(QTestState **from, QTestState **to, int delay_ms,
                            MigrateStart *args);

static void colo_start(QTestState **from, QTestState **to, int delay_ms)
{
    MigrateStart args = { };

    colo_start_args(from, to, delay_ms, &args);
}

static void colo_start_args(QTestState **from, QTestState **to, int delay_ms,
                            MigrateStart *argsp)
{
    MigrateStart args = *argsp;

    g_assert(!migrate_start(from, to, "tcp:127.0.0.1:0", &args));
    migrate_set_capability(*from, "x-colo", true);
    migrate_set_capability(*to, "x-colo", true);
    migrate_set_parameter_int(*from, "x-checkpoint-delay", delay_ms);
    migrate_ensure_converge(*from);

    /* The guest is running and dirtying memory before COLO starts. */
    wait_for_serial("src_serial");
    migrate_qmp(*from, *to, NULL, NULL, "{}");
    colo_wait_mode(*from, "primary");
    colo_wait_mode(*to, "secondary");
    wait_for_migration_status(*from, "colo", NULL);
    wait_for_migration_status(*to, "colo", NULL);
}

/* The test's name ends in "delay-MS": the checkpoint period. */
static void test_colo_memory_equal(void *name)
{
    const char *delay = strrchr(name, '-');
    int delay_ms = atoi(delay + 1);
    QTestState *from, *to;

    g_assert(delay_ms > 0);
    colo_start(&from, &to, delay_ms);
    for (int round = 0; round < 3; round++) {
        uint64_t n;

        /* Periodic checkpoints happen while the guest runs... */
        colo_wait_checkpoints(to, colo_checkpoints(to) + 1);

        /*
         * ...and one taken with the primary stopped fixes its memory.  A
         * checkpoint may have been captured just before the stop; the
         * one after it certainly was captured after.  No periodic one
         * may start meanwhile: the secondary's monitor could read its
         * devices half loaded (QEMU's core drops the BQL briefly while
         * resetting them).
         */
        migrate_set_parameter_int(from, "x-checkpoint-delay", 3600 * 1000);
        qtest_qmp_assert_success(from, "{ 'execute': 'stop' }");
        n = colo_checkpoints(to);
        for (int i = 1; i <= 2; i++) {
            qtest_qmp_assert_success(from,
                                     "{ 'execute': 'x-colo-checkpoint' }");
            colo_wait_checkpoints(to, n + i - 1);
        }
        colo_save_memory(from, "colo-pvm.mem");
        colo_save_memory(to, "colo-svm.mem");
        colo_assert_memory_equal();
        qtest_qmp_assert_success(from, "{ 'execute': 'cont' }");
        migrate_set_parameter_int(from, "x-checkpoint-delay", delay_ms);
    }
    g_assert_cmpuint(colo_checkpoints(from), >=, 6);
    migrate_end(from, to, false);
}

/* Stop the primary and take two checkpoints: both sides then stand still. */
static void colo_checkpoint_stopped(QTestState *from, QTestState *to)
{
    uint64_t n;

    migrate_set_parameter_int(from, "x-checkpoint-delay", 3600 * 1000);
    qtest_qmp_assert_success(from, "{ 'execute': 'stop' }");
    n = colo_checkpoints(to);
    for (int i = 1; i <= 2; i++) {
        qtest_qmp_assert_success(from, "{ 'execute': 'x-colo-checkpoint' }");
        colo_wait_checkpoints(to, n + i - 1);
    }
}

/*
 * The secondary resets its machine before it loads each checkpoint's
 * devices.  A reset that wrote guest RAM (here: a generic loader's blob,
 * as -kernel/-initrd/-dtb blobs are on other targets) would put back boot
 * content in pages the guest changed in an earlier epoch, which no later
 * checkpoint carries: the SVM would differ from the PVM.
 */
#define COLO_BLOB_ADDR 0x80000

static void test_colo_reset_keeps_ram(void)
{
    g_autofree char *blob = g_strdup_printf("%s/colo-blob.bin", tmpfs);
    g_autofree char *opts = g_strdup_printf(
        "-device loader,file=%s,addr=0x%x,force-raw=on", blob,
        COLO_BLOB_ADDR);
    g_autofree uint8_t *content = g_malloc(4096);
    MigrateStart args = { .opts_source = opts, .opts_target = opts };
    QTestState *from, *to;

    memset(content, 0xab, 4096);
    g_assert(g_file_set_contents(blob, (char *)content, 4096, NULL));
    colo_start_args(&from, &to, 50, &args);
    /* The guest (here: the test, on its behalf) changes the blob's page. */
    qtest_writeb(from, COLO_BLOB_ADDR, 0x5a);
    colo_checkpoint_stopped(from, to);
    qtest_qmp_assert_success(from, "{ 'execute': 'cont' }");
    /* More checkpoints, none of which carries that page. */
    colo_checkpoint_stopped(from, to);
    g_assert_cmpuint(qtest_readb(to, COLO_BLOB_ADDR), ==, 0x5a);
    colo_save_memory(from, "colo-pvm.mem");
    colo_save_memory(to, "colo-svm.mem");
    colo_assert_memory_equal();

    /* A reset of the primary's guest does restore the blob, on both. */
    qtest_qmp_assert_success(from, "{ 'execute': 'system_reset' }");
    colo_checkpoint_stopped(from, to);
    g_assert_cmpuint(qtest_readb(from, COLO_BLOB_ADDR), ==, 0xab);
    g_assert_cmpuint(qtest_readb(to, COLO_BLOB_ADDR), ==, 0xab);
    migrate_end(from, to, false);
    unlink(blob);
}

static void test_colo_incompatible_caps(void)
{
    QTestState *from, *to;
    MigrateStart args = { .hide_stderr = true };

    g_assert(!migrate_start(&from, &to, "tcp:127.0.0.1:0", &args));
    migrate_set_capability(from, "x-colo", true);
    qtest_qmp_assert_failure_ref(from,
        "{ 'execute': 'migrate-set-capabilities', 'arguments':"
        " { 'capabilities': [ { 'capability': 'postcopy-ram',"
        "                       'state': true } ] } }");
    /*
     * The return direction is COLO's: with migration's return-path thread
     * reading it too, the pair would end with both VMs running.
     */
    qtest_qmp_assert_failure_ref(from,
        "{ 'execute': 'migrate-set-capabilities', 'arguments':"
        " { 'capabilities': [ { 'capability': 'return-path',"
        "                       'state': true } ] } }");
    /* Checkpoints do not carry dirty bitmaps: they would go stale. */
    qtest_qmp_assert_failure_ref(from,
        "{ 'execute': 'migrate-set-capabilities', 'arguments':"
        " { 'capabilities': [ { 'capability': 'dirty-bitmaps',"
        "                       'state': true } ] } }");
    migrate_set_capability(to, "return-path", true);
    qtest_qmp_assert_failure_ref(to,
        "{ 'execute': 'migrate-set-capabilities', 'arguments':"
        " { 'capabilities': [ { 'capability': 'x-colo',"
        "                       'state': true } ] } }");
    qtest_qmp_assert_failure_ref(from,
        "{ 'execute': 'x-colo-checkpoint' }");
    qtest_qmp_assert_failure_ref(from,
        "{ 'execute': 'migrate-set-parameters', 'arguments':"
        " { 'checkpoint-delay': 100, 'x-checkpoint-delay': 200 } }");
    migrate_end(from, to, false);
}

static int64_t colo_checkpoint_delay(QTestState *who)
{
    QDict *rsp = qtest_qmp_assert_success_ref(who,
                                   "{ 'execute': 'query-migrate-parameters' }");
    int64_t delay = qdict_get_int(rsp, "x-checkpoint-delay");

    qobject_unref(rsp);
    return delay;
}

static void test_colo_delay_alias(void)
{
    QTestState *from, *to;
    MigrateStart args = { };

    g_assert(!migrate_start(&from, &to, "tcp:127.0.0.1:0", &args));
    qtest_qmp_assert_success(from, "{ 'execute': 'migrate-set-parameters',"
                             " 'arguments': { 'checkpoint-delay': 1234 } }");
    g_assert_cmpint(colo_checkpoint_delay(from), ==, 1234);
    g_free(qtest_hmp(from, "migrate_set_parameter checkpoint-delay 4321"));
    g_assert_cmpint(colo_checkpoint_delay(from), ==, 4321);
    migrate_end(from, to, false);
}

/*
 * x-colo on the destination only: it must not start a second copy of
 * the guest, so its incoming migration fails and it exits.
 */
static void test_colo_secondary_only(void)
{
    QTestState *from, *to;
    MigrateStart args = { .hide_stderr = true };

    g_assert(!migrate_start(&from, &to, "tcp:127.0.0.1:0", &args));
    migrate_set_capability(to, "x-colo", true);
    migrate_ensure_converge(from);
    qtest_set_expected_status(to, EXIT_FAILURE);
    wait_for_serial("src_serial");
    migrate_qmp(from, to, NULL, NULL, "{}");
    qtest_wait_qemu(to);
    migrate_end(from, to, false);
}

/* x-colo on the source only: the destination refuses and exits. */
static void test_colo_primary_only(void)
{
    QTestState *from, *to;
    MigrateStart args = { .hide_stderr = true };

    g_assert(!migrate_start(&from, &to, "tcp:127.0.0.1:0", &args));
    migrate_set_capability(from, "x-colo", true);
    qtest_set_expected_status(to, EXIT_FAILURE);
    wait_for_serial("src_serial");
    migrate_qmp(from, to, NULL, NULL, "{}");
    wait_for_migration_fail(from, true);
    qtest_wait_qemu(to);
    /* The source's guest keeps running. */
    wait_for_serial("src_serial");
    migrate_end(from, to, false);
}

/* query-colo-status's x-lease member, with its @clock reading. */
static QDict *colo_lease(QTestState *who, int64_t *clock)
{
    QDict *rsp = qtest_qmp_assert_success_ref(who,
                     "{ 'execute': 'query-colo-status' }");
    QDict *lease = qdict_get_qdict(rsp, "x-lease");

    qobject_ref(lease);
    qobject_unref(rsp);
    *clock = qdict_get_int(lease, "clock-ms");
    return lease;
}

static void colo_lease_grant_expect(QTestState *who, int64_t validity,
                                    int64_t clock, const char *error)
{
    QDict *rsp = qtest_qmp(who, "{ 'execute': 'x-colo-lease-grant',"
                           " 'arguments': { 'validity-ms': %" PRId64 ","
                           " 'clock-ms': %" PRId64 " } }", validity, clock);
    g_autofree char *err = NULL;

    if (qdict_haskey(rsp, "error")) {
        err = g_strdup(qdict_get_str(qdict_get_qdict(rsp, "error"), "desc"));
    }
    qobject_unref(rsp);
    if (error) {
        g_assert_nonnull(err);
        if (!strstr(err, error)) {
            g_error("expected an error with \"%s\", got: %s", error, err);
        }
    } else {
        g_assert_null(err);
    }
}

/*
 * x-colo-lease-grant: only with x-colo-arbitrated; a lease runs from a
 * reading of this QEMU's lease clock, never from the future, and one
 * that ran out on its way is refused.  Outside COLO a lease guards
 * nothing: its lapse fences no one.
 */
static void test_colo_lease_grant(void)
{
    QTestState *from, *to;
    MigrateStart args = { };
    QDict *lease;
    int64_t clock, clock2;

    g_assert(!migrate_start(&from, &to, "tcp:127.0.0.1:0", &args));
    lease = colo_lease(from, &clock);
    g_assert_false(qdict_get_bool(lease, "arbitrated"));
    g_assert_cmpstr(qdict_get_str(lease, "state"), ==, "none");
    qobject_unref(lease);
    colo_lease_grant_expect(from, 3000, clock, "x-colo-arbitrated");

    migrate_set_capability(from, "x-colo-arbitrated", true);
    lease = colo_lease(from, &clock);
    g_assert_true(qdict_get_bool(lease, "arbitrated"));
    qobject_unref(lease);
    colo_lease_grant_expect(from, 99, clock, "runs from 100");
    colo_lease_grant_expect(from, 3000, clock + 60000, "from now");
    colo_lease_grant_expect(from, 3000, clock - 3000, "ran out on its way");
    colo_lease_grant_expect(from, 3000, clock, NULL);
    lease = colo_lease(from, &clock2);
    g_assert_cmpstr(qdict_get_str(lease, "state"), ==, "valid");
    g_assert_cmpint(qdict_get_int(lease, "remaining-ms"), <=, 3000);
    g_assert_cmpint(qdict_get_int(lease, "remaining-ms"), >,
                    3000 - (clock2 - clock) - 1);
    g_assert_false(qdict_get_bool(lease, "alone"));
    qobject_unref(lease);

    /* A short lease lapses; not alone, nothing is fenced: renewals go. */
    colo_lease_grant_expect(from, 100, clock2, NULL);
    qtest_qmp_eventwait(from, "X_COLO_LEASE_LAPSED");
    lease = colo_lease(from, &clock);
    g_assert_cmpstr(qdict_get_str(lease, "state"), ==, "lapsed");
    qobject_unref(lease);
    colo_lease_grant_expect(from, 3000, clock, NULL);
    migrate_end(from, to, false);
}

void migration_test_add_colo(MigrationTestEnv *env)
{
    tmpfs = env->tmpfs;

    if (!env->is_x86) {
        return;
    }
    migration_test_add_suffix("/migration/colo/memory-equal/", "delay-50",
                              test_colo_memory_equal);
    migration_test_add_suffix("/migration/colo/memory-equal/", "delay-500",
                              test_colo_memory_equal);
    migration_test_add("/migration/colo/reset-keeps-ram",
                       test_colo_reset_keeps_ram);
    migration_test_add("/migration/colo/incompatible-caps",
                       test_colo_incompatible_caps);
    migration_test_add("/migration/colo/checkpoint-delay-alias",
                       test_colo_delay_alias);
    migration_test_add("/migration/colo/secondary-only",
                       test_colo_secondary_only);
    migration_test_add("/migration/colo/primary-only",
                       test_colo_primary_only);
    migration_test_add("/migration/colo/lease-grant",
                       test_colo_lease_grant);
}
