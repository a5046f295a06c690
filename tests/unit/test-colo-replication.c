/*
 * Unit tests of COLO's replication block driver (block/colo/replication.c)
 * and its registry, on small images in a temporary directory, with the
 * block layer linked in.
 *
 * Secondary: the chain replication -> active -> hidden -> disk; a
 * BlockBackend on the disk stands for the NBD export through which the
 * primary writes, one on the replication node for the SVM.  Primary: the
 * replication node over a raw image standing for the NBD client.  The
 * fence at failover (closing NBD exports) is stubbed: there are none.
 *
 * unit-test-sources: block/colo/replication.c block/colo/registry.c @BUILD@/qemu/trace/trace-block_colo.c
 * unit-test-block: yes
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include <check.h>
#include "check-run.h"
#include "qapi/error.h"
#include "qapi/qapi-commands-block-export.h"
#include "qobject/qdict.h"
#include "qemu/main-loop.h"
#include "qemu/units.h"
#include "block/block.h"
#include "block/export.h"
#include "block/replication.h"
#include "system/block-backend.h"

#define SIZE (4 * MiB)
#define CHUNK (64 * KiB)

/* No NBD server here: the failover's fence finds no export. */
BlockExportInfoList *qmp_query_block_exports(Error **errp)
{
    return NULL;
}

BlockExport *blk_exp_find(const char *id)
{
    return NULL;
}

void blk_exp_request_shutdown(BlockExport *exp)
{
}

static char *dir;

static char *image(const char *name, const char *fmt, uint8_t fill)
{
    char *path = g_strdup_printf("%s/%s", dir, name);

    bdrv_img_create(path, fmt, NULL, NULL, NULL, SIZE, 0, true,
                    &error_abort);
    if (fill) {
        g_autofree uint8_t *buf = g_malloc(SIZE);
        int fd = open(path, O_WRONLY);

        memset(buf, fill, SIZE);
        ck_assert_int_eq(pwrite(fd, buf, SIZE, 0), SIZE);
        close(fd);
    }
    return path;
}

static uint8_t file_byte(const char *path, off_t offset)
{
    uint8_t b = 0;
    int fd = open(path, O_RDONLY);

    ck_assert_int_eq(pread(fd, &b, 1, offset), 1);
    close(fd);
    return b;
}

static BlockDriverState *open_node(const char *name, const char *driver,
                                   const char *filename, const char *file,
                                   const char *backing, const char *mode)
{
    QDict *opts = qdict_new();

    qdict_put_str(opts, "node-name", name);
    qdict_put_str(opts, "driver", driver);
    if (filename) {
        qdict_put_str(opts, "file.driver", "file");
        qdict_put_str(opts, "file.filename", filename);
    }
    if (file) {
        qdict_put_str(opts, "file", file);
    }
    if (backing) {
        qdict_put_str(opts, "backing", backing);
    }
    if (mode) {
        qdict_put_str(opts, "mode", mode);
    }
    return bdrv_open(NULL, NULL, opts, BDRV_O_RDWR, &error_abort);
}

static BlockBackend *backend_sharing(BlockDriverState *bs, uint64_t shared)
{
    BlockBackend *blk = blk_new(qemu_get_aio_context(),
                                BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE,
                                shared);

    blk_insert_bs(blk, bs, &error_abort);
    return blk;
}

static BlockBackend *backend(BlockDriverState *bs)
{
    return backend_sharing(bs, BLK_PERM_ALL);
}

/* A primary's guest disk: one writer, which lets no other write. */
static BlockBackend *guest_backend(BlockDriverState *bs)
{
    return backend_sharing(bs, BLK_PERM_ALL & ~BLK_PERM_WRITE);
}

static int write_pattern(BlockBackend *blk, int64_t offset, uint8_t fill)
{
    g_autofree uint8_t *buf = g_malloc(CHUNK);

    memset(buf, fill, CHUNK);
    return blk_pwrite(blk, offset, CHUNK, buf, 0);
}

static uint8_t read_byte(BlockBackend *blk, int64_t offset)
{
    uint8_t buf[512];

    ck_assert_int_eq(blk_pread(blk, offset, sizeof(buf), buf, 0), 0);
    return buf[0];
}

/* The secondary's chain over a disk filled with 0x11. */
typedef struct Secondary {
    char *disk_path;
    BlockDriverState *disk, *hidden, *active, *repl;
    BlockBackend *primary;      /* the NBD export's writes */
    BlockBackend *svm;
} Secondary;

static void secondary_open(Secondary *s)
{
    g_autofree char *hidden = image("hidden.qcow2", "qcow2", 0);
    g_autofree char *active = image("active.qcow2", "qcow2", 0);

    s->disk_path = image("disk.raw", "raw", 0x11);
    s->disk = open_node("disk", "raw", s->disk_path, NULL, NULL, NULL);
    s->hidden = open_node("hidden", "qcow2", hidden, NULL, "disk", NULL);
    s->active = open_node("active", "qcow2", active, NULL, "hidden", NULL);
    s->repl = open_node("repl", "replication", NULL, "active", NULL,
                        "secondary");
    s->primary = backend(s->disk);
    s->svm = backend(s->repl);
}

static Error *start(ReplicationMode mode)
{
    Error *err = NULL;

    replication_start_all(mode, &err);
    return err;
}

static Error *checkpoint(void)
{
    Error *err = NULL;

    replication_do_checkpoint_all(&err);
    return err;
}

static Error *stop(bool failover)
{
    Error *err = NULL;

    replication_stop_all(failover, &err);
    return err;
}

#define ck_assert_error(err, text) do {                                  \
        Error *err_ = (err);                                             \
        ck_assert_msg(err_, "no error, expected \"%s\"", (text));        \
        ck_assert_msg(strstr(error_get_pretty(err_), (text)),            \
                      "\"%s\" does not say \"%s\"",                      \
                      error_get_pretty(err_), (text));                   \
        error_free(err_);                                                \
    } while (0)

static bool allocated(BlockDriverState *bs, int64_t offset)
{
    int64_t pnum;
    int ret;

    bdrv_graph_rdlock_main_loop();
    ret = bdrv_is_allocated(bs, offset, CHUNK, &pnum);
    bdrv_graph_rdunlock_main_loop();
    ck_assert_int_ge(ret, 0);
    return ret;
}

START_TEST(secondary_cycle)
{
    Secondary s;

    secondary_open(&s);
    ck_assert_ptr_null(start(REPLICATION_MODE_SECONDARY));

    /* The primary overwrites: the SVM still reads the checkpoint. */
    ck_assert_int_eq(write_pattern(s.primary, 0, 0x22), 0);
    ck_assert_int_eq(file_byte(s.disk_path, 0), 0x22);
    ck_assert_int_eq(read_byte(s.svm, 0), 0x11);
    ck_assert(allocated(s.hidden, 0));

    /* A checkpoint: the disk as the primary wrote it, overlays empty. */
    ck_assert_ptr_null(checkpoint());
    ck_assert_int_eq(read_byte(s.svm, 0), 0x22);
    ck_assert(!allocated(s.hidden, 0));

    /* Again, and a write of the SVM's own, which stays in the overlay. */
    ck_assert_int_eq(write_pattern(s.primary, 0, 0x33), 0);
    ck_assert_int_eq(write_pattern(s.svm, MiB, 0x44), 0);
    ck_assert_int_eq(file_byte(s.disk_path, MiB), 0x11);
    ck_assert(allocated(s.active, MiB));
    ck_assert_int_eq(read_byte(s.svm, 0), 0x22);

    /* Failover: the checkpoint plus the SVM's write, in the image. */
    ck_assert_ptr_null(stop(true));
    ck_assert_int_eq(file_byte(s.disk_path, 0), 0x22);
    ck_assert_int_eq(file_byte(s.disk_path, MiB), 0x44);
    ck_assert(!allocated(s.active, MiB));
    /* From now on the node writes the image itself. */
    ck_assert_int_eq(write_pattern(s.svm, 2 * MiB, 0x55), 0);
    ck_assert_int_eq(file_byte(s.disk_path, 2 * MiB), 0x55);
    /* A failed-over node is an ordinary disk: COLO leaves it alone. */
    ck_assert_ptr_null(start(REPLICATION_MODE_PRIMARY));
    ck_assert_ptr_null(start(REPLICATION_MODE_SECONDARY));
}
END_TEST

START_TEST(checkpoint_discards_svm_writes)
{
    Secondary s;

    secondary_open(&s);
    ck_assert_ptr_null(start(REPLICATION_MODE_SECONDARY));
    /* Nothing written: a checkpoint has nothing to empty. */
    ck_assert_ptr_null(checkpoint());
    /* Only the SVM wrote: the checkpoint brings it back to the primary's. */
    ck_assert_int_eq(write_pattern(s.svm, MiB, 0x44), 0);
    ck_assert(allocated(s.active, MiB));
    ck_assert_ptr_null(checkpoint());
    ck_assert(!allocated(s.active, MiB));
    ck_assert_int_eq(read_byte(s.svm, MiB), 0x11);
    /* Only the primary wrote: its pre-image goes, its data shows. */
    ck_assert_int_eq(write_pattern(s.primary, MiB, 0x22), 0);
    ck_assert(allocated(s.hidden, MiB));
    ck_assert_ptr_null(checkpoint());
    ck_assert(!allocated(s.hidden, MiB));
    ck_assert_int_eq(read_byte(s.svm, MiB), 0x22);
}
END_TEST

START_TEST(secondary_stop_without_failover)
{
    Secondary s;

    secondary_open(&s);
    ck_assert_ptr_null(start(REPLICATION_MODE_SECONDARY));
    ck_assert_int_eq(write_pattern(s.primary, 0, 0x22), 0);
    ck_assert_ptr_null(stop(false));
    /* Nothing was rolled back, and it can start again. */
    ck_assert_int_eq(file_byte(s.disk_path, 0), 0x22);
    ck_assert_error(checkpoint(), "is not started");
    ck_assert_ptr_null(start(REPLICATION_MODE_SECONDARY));
    ck_assert(!allocated(s.hidden, 0));
    ck_assert_int_eq(read_byte(s.svm, 0), 0x22);
}
END_TEST

START_TEST(secondary_missing_overlays)
{
    g_autofree char *disk = image("disk.raw", "raw", 0x11);
    g_autofree char *lone = image("lone.qcow2", "qcow2", 0);
    g_autofree char *top = image("top.qcow2", "qcow2", 0);

    open_node("disk", "raw", disk, NULL, NULL, NULL);
    open_node("over-raw", "replication", NULL, "disk", NULL, "secondary");
    ck_assert_error(start(REPLICATION_MODE_SECONDARY), "cannot be emptied");
    bdrv_unref(bdrv_find_node("over-raw"));

    open_node("lone", "qcow2", lone, NULL, NULL, NULL);
    open_node("over-lone", "replication", NULL, "lone", NULL, "secondary");
    ck_assert_error(start(REPLICATION_MODE_SECONDARY),
                    "no backing (hidden) disk");
    bdrv_unref(bdrv_find_node("over-lone"));

    open_node("top", "qcow2", top, NULL, "lone", NULL);
    open_node("over-top", "replication", NULL, "top", NULL, "secondary");
    ck_assert_error(start(REPLICATION_MODE_SECONDARY),
                    "no backing (secondary) disk");
}
END_TEST

START_TEST(wrong_mode_and_state)
{
    Secondary s;

    secondary_open(&s);
    ck_assert_error(start(REPLICATION_MODE_PRIMARY),
                    "is in secondary mode, but COLO starts it as primary");
    ck_assert_error(checkpoint(), "is not started");
    ck_assert_error(stop(false), "is not started");
    ck_assert_ptr_null(start(REPLICATION_MODE_SECONDARY));
    ck_assert_error(start(REPLICATION_MODE_SECONDARY), "already started");
    /* The refused second start changed nothing. */
    ck_assert_ptr_null(checkpoint());
    ck_assert_ptr_null(stop(true));
}
END_TEST

START_TEST(failed_start_undoes)
{
    Secondary s;
    Error *err;

    /* Nodes start newest first: "repl" starts, then "bad" fails. */
    s.disk_path = image("disk.raw", "raw", 0x11);
    s.disk = open_node("disk", "raw", s.disk_path, NULL, NULL, NULL);
    open_node("bad", "replication", NULL, "disk", NULL, "secondary");
    {
        g_autofree char *hidden = image("hidden.qcow2", "qcow2", 0);
        g_autofree char *active = image("active.qcow2", "qcow2", 0);
        g_autofree char *disk2 = image("disk2.raw", "raw", 0x11);

        open_node("disk2", "raw", disk2, NULL, NULL, NULL);
        open_node("hidden", "qcow2", hidden, NULL, "disk2", NULL);
        open_node("active", "qcow2", active, NULL, "hidden", NULL);
        open_node("repl", "replication", NULL, "active", NULL, "secondary");
    }
    ck_assert_error(start(REPLICATION_MODE_SECONDARY), "cannot be emptied");
    err = checkpoint();
    ck_assert_error(err, "'repl' is not started");
}
END_TEST

/* ---- primary mode ----------------------------------------------------- */

static bool write_done;
static int write_ret;

static void write_cb(void *opaque, int ret)
{
    write_done = true;
    write_ret = ret;
}

/* A primary node over a raw image, started, writes held. */
static BlockBackend *primary_held(const char *target)
{
    BlockBackend *blk;

    open_node("target", "raw", target, NULL, NULL, NULL);
    blk = guest_backend(open_node("repl", "replication", NULL, "target",
                                  NULL, "primary"));
    ck_assert_ptr_null(start(REPLICATION_MODE_PRIMARY));
    replication_hold_writes_all();
    return blk;
}

static void write_async(BlockBackend *blk, int64_t offset, uint8_t *buf,
                        QEMUIOVector *qiov)
{
    memset(buf, 0x77, CHUNK);
    qemu_iovec_init_buf(qiov, buf, CHUNK);
    write_done = false;
    blk_aio_pwritev(blk, offset, qiov, 0, write_cb, NULL);
}

static void poll_until_done(void)
{
    for (int i = 0; i < 10000 && !write_done; i++) {
        aio_poll(qemu_get_aio_context(), true);
    }
    ck_assert(write_done);
}

/* A primary node whose every write to the secondary fails (EIO). */
static BlockBackend *primary_failing_writes(void)
{
    g_autofree char *target = image("target.raw", "raw", 0);
    QDict *opts = qdict_new();

    qdict_put_str(opts, "node-name", "repl");
    qdict_put_str(opts, "driver", "replication");
    qdict_put_str(opts, "mode", "primary");
    qdict_put_str(opts, "file.driver", "blkdebug");
    qdict_put_str(opts, "file.inject-error.0.event", "pwritev");
    qdict_put_str(opts, "file.inject-error.0.errno", "5");
    qdict_put_str(opts, "file.image.driver", "file");
    qdict_put_str(opts, "file.image.filename", target);
    return guest_backend(bdrv_open(NULL, NULL, opts, BDRV_O_RDWR,
                                   &error_abort));
}

/*
 * A writer above a primary node that lets others write (share-rw=on, an
 * export allowing writers) could write between a checkpoint's stop and
 * the hold: the node refuses to start; with that writer gone, it starts.
 */
START_TEST(primary_refuses_shared_writers)
{
    g_autofree char *target = image("target.raw", "raw", 0);
    BlockBackend *blk;
    Error *err;

    open_node("target", "raw", target, NULL, NULL, NULL);
    blk = backend(open_node("repl", "replication", NULL, "target", NULL,
                            "primary"));
    err = start(REPLICATION_MODE_PRIMARY);
    ck_assert_ptr_nonnull(err);
    ck_assert(strstr(error_get_pretty(err), "lets others write"));
    error_free(err);
    blk_set_perm(blk, BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE,
                 BLK_PERM_ALL & ~BLK_PERM_WRITE, &error_abort);
    ck_assert_ptr_null(start(REPLICATION_MODE_PRIMARY));
    ck_assert_ptr_null(stop(0));
    blk_unref(blk);
}
END_TEST

START_TEST(primary_passes_through_before_start)
{
    g_autofree char *target = image("target.raw", "raw", 0);
    BlockBackend *blk;

    open_node("target", "raw", target, NULL, NULL, NULL);
    blk = guest_backend(open_node("repl", "replication", NULL, "target",
                                  NULL, "primary"));
    /* Before COLO (the initial migration): writes go straight through. */
    replication_hold_writes_all();
    ck_assert_int_eq(write_pattern(blk, 0, 0x66), 0);
    ck_assert_int_eq(file_byte(target, 0), 0x66);
}
END_TEST

START_TEST(primary_holds_writes)
{
    g_autofree char *target = image("target.raw", "raw", 0);
    BlockBackend *blk;
    QEMUIOVector qiov;
    g_autofree uint8_t *buf = g_malloc(CHUNK);

    blk = primary_held(target);
    write_async(blk, CHUNK, buf, &qiov);
    for (int i = 0; i < 100; i++) {
        aio_poll(qemu_get_aio_context(), false);
    }
    /* Held: the secondary does not have the checkpoint yet. */
    ck_assert(!write_done);
    ck_assert_int_eq(file_byte(target, CHUNK), 0);

    replication_release_writes_all();
    poll_until_done();
    ck_assert_int_eq(write_ret, 0);
    ck_assert_int_eq(file_byte(target, CHUNK), 0x77);
    ck_assert_ptr_null(checkpoint());
    ck_assert_ptr_null(stop(false));
}
END_TEST

START_TEST(primary_stop_releases_and_detaches)
{
    g_autofree char *target = image("target.raw", "raw", 0);
    BlockBackend *blk;
    QEMUIOVector qiov;
    g_autofree uint8_t *buf = g_malloc(CHUNK);

    blk = primary_held(target);
    write_async(blk, 0, buf, &qiov);
    aio_poll(qemu_get_aio_context(), false);
    ck_assert(!write_done);

    /* The secondary is gone: the held write fails, as do later ones. */
    ck_assert_ptr_null(stop(true));
    poll_until_done();
    ck_assert_int_eq(write_ret, -EIO);
    ck_assert_int_eq(write_pattern(blk, CHUNK, 0x88), -EIO);
    ck_assert_int_eq(file_byte(target, 0), 0);
    ck_assert_int_eq(file_byte(target, CHUNK), 0);
}
END_TEST

START_TEST(primary_drained_hold_is_bounded)
{
    g_autofree char *target = image("target.raw", "raw", 0);
    g_autofree uint8_t *buf = g_malloc(CHUNK);
    BlockDriverState *bs;
    BlockBackend *blk;
    QEMUIOVector qiov;
    Error *err = NULL;

    blk = primary_held(target);
    bs = bdrv_find_node("repl");
    write_async(blk, 0, buf, &qiov);
    aio_poll(qemu_get_aio_context(), false);
    ck_assert(!write_done);

    /*
     * Draining waits for the held write; with no release coming (a silent
     * secondary) the hold gives up after a bound instead of for ever.
     */
    bdrv_drained_begin(bs);
    ck_assert(write_done);
    ck_assert_int_eq(write_ret, -EIO);
    bdrv_drained_end(bs);
    ck_assert_int_eq(file_byte(target, 0), 0);
    replication_get_error_all(&err);
    ck_assert_error(err, "the secondary is dropped");
    ck_assert_int_eq(write_pattern(blk, CHUNK, 0x88), -EIO);
}
END_TEST

START_TEST(primary_write_error_is_reported)
{
    BlockBackend *blk = primary_failing_writes();
    Error *err = NULL;


    ck_assert_ptr_null(start(REPLICATION_MODE_PRIMARY));
    replication_get_error_all(&err);
    ck_assert_ptr_null(err);
    ck_assert_int_lt(write_pattern(blk, 0, 0x99), 0);
    replication_get_error_all(&err);
    ck_assert_error(err, "a write to the secondary");
    err = NULL;
    /* A new COLO session starts without the old error. */
    ck_assert_ptr_null(stop(true));
    ck_assert_ptr_null(start(REPLICATION_MODE_PRIMARY));
    replication_get_error_all(&err);
    ck_assert_ptr_null(err);
}
END_TEST

/*
 * Closing a node whose writes are held (a replica removed and deleted
 * while the secondary is silent) leaves nothing behind that would use it
 * after it is freed: no wake-up still scheduled.
 */
START_TEST(primary_close_while_holding)
{
    g_autofree char *target = image("target.raw", "raw", 0);
    BlockBackend *blk;

    blk = primary_held(target);
    blk_unref(blk);
    bdrv_unref(bdrv_find_node("repl"));
    ck_assert_ptr_null(bdrv_find_node("repl"));
    /* A release after the close finds no node to act on. */
    replication_release_writes_all();
    ck_assert(!aio_poll(qemu_get_aio_context(), false));
}
END_TEST

/*
 * A write that failed to reach the secondary before COLO started (the
 * replica sits in the quorum during the initial migration, whose quorum
 * hides the failure) means the secondary's disk lacks it: COLO must not
 * start on it.
 */
START_TEST(primary_error_before_start_refuses_start)
{
    BlockBackend *blk = primary_failing_writes();
    Error *err;


    ck_assert_int_lt(write_pattern(blk, 0, 0x99), 0);
    err = start(REPLICATION_MODE_PRIMARY);
    ck_assert_error(err, "failed before COLO started");
}
END_TEST

START_TEST(bad_options)
{
    g_autofree char *disk = image("disk.raw", "raw", 0x11);
    const char *modes[] = { NULL, "tertiary" };
    Error *err = NULL;
    QDict *opts;

    open_node("disk", "raw", disk, NULL, NULL, NULL);
    for (int i = 0; i < ARRAY_SIZE(modes); i++) {
        opts = qdict_new();
        qdict_put_str(opts, "driver", "replication");
        qdict_put_str(opts, "file", "disk");
        if (modes[i]) {
            qdict_put_str(opts, "mode", modes[i]);
        }
        ck_assert_ptr_null(bdrv_open(NULL, NULL, opts, BDRV_O_RDWR, &err));
        ck_assert_error(err, "mode");
        err = NULL;
    }
    opts = qdict_new();
    qdict_put_str(opts, "driver", "replication");
    qdict_put_str(opts, "file", "disk");
    qdict_put_str(opts, "mode", "primary");
    qdict_put_str(opts, "top-id", "x");
    ck_assert_ptr_null(bdrv_open(NULL, NULL, opts, BDRV_O_RDWR, &err));
    ck_assert_error(err, "top-id");
}
END_TEST

static void setup(void)
{
    dir = g_dir_make_tmp("colo-repl-XXXXXX", NULL);
    ck_assert_ptr_nonnull(dir);
}

static void teardown(void)
{
    g_autofree char *cmd = g_strdup_printf("rm -rf '%s'", dir);

    ck_assert_int_eq(system(cmd), 0);
    g_free(dir);
}

static Suite *replication_suite(void)
{
    Suite *s = suite_create("colo-replication");
    TCase *tc = tcase_create("driver");

    /* Each test runs in its own process (Check's fork mode). */
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, secondary_cycle);
    tcase_add_test(tc, checkpoint_discards_svm_writes);
    tcase_add_test(tc, secondary_stop_without_failover);
    tcase_add_test(tc, secondary_missing_overlays);
    tcase_add_test(tc, wrong_mode_and_state);
    tcase_add_test(tc, failed_start_undoes);
    tcase_add_test(tc, primary_passes_through_before_start);
    tcase_add_test(tc, primary_refuses_shared_writers);
    tcase_add_test(tc, primary_holds_writes);
    tcase_add_test(tc, primary_stop_releases_and_detaches);
    tcase_add_test(tc, primary_drained_hold_is_bounded);
    tcase_add_test(tc, primary_close_while_holding);
    tcase_add_test(tc, primary_error_before_start_refuses_start);
    tcase_add_test(tc, primary_write_error_is_reported);
    tcase_add_test(tc, bad_options);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    qemu_init_main_loop(&error_fatal);
    bdrv_init();
    return check_run(replication_suite());
}
