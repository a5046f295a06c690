/*
 * COLO block replication: the 'replication' block driver.
 *
 * Primary mode sits under the guest disk's quorum, over an NBD client to
 * the secondary: every guest write reaches the secondary's image before it
 * completes.  Because the primary resumes the VM before its checkpoint has
 * reached the secondary, writes issued after a checkpoint's stop are held
 * here until the secondary holds that checkpoint (hold_writes and
 * release_writes); otherwise they would land in the secondary's image
 * before it has set the checkpoint's contents aside.
 *
 * Secondary mode is the top of the SVM's disk:
 *
 *   replication -> active (qcow2) -> hidden (qcow2) -> secondary disk
 *                                                       ^
 *                      copy-before-write (target: hidden)
 *                                                       ^
 *                                              NBD export: primary writes
 *
 * While COLO runs, a copy-before-write filter above the secondary disk saves
 * what each of the primary's writes overwrites into the hidden disk, and
 * the SVM's own writes go to the active disk, so the chain below this node
 * reads as the disk at the last checkpoint.  Each checkpoint empties both
 * overlays: the secondary disk then is the primary's disk at that
 * checkpoint.  Failover fences the primary's writes, commits the overlays
 * into the secondary disk and makes it this node's child: the VM runs on
 * it as on an ordinary disk.
 *
 * docs/devel/migration/colo.rst describes the protocol around it.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qapi/qapi-commands-block-export.h"
#include "qapi/qapi-commands-yank.h"
#include "qemu/coroutine.h"
#include "qemu/main-loop.h"
#include "qemu/memalign.h"
#include "qemu/module.h"
#include "qemu/option.h"
#include "qemu/timer.h"
#include "qemu/units.h"
#include "qemu/yank.h"
#include "block/block_int.h"
#include "block/block-copy.h"
#include "block/copy-before-write.h"
#include "block/dirty-bitmap.h"
#include "block/export.h"
#include "block/replication.h"
#include "system/block-backend.h"
#include "trace.h"

typedef enum ColoReplicationStage {
    COLO_REPL_IDLE,         /* not started: I/O passes through */
    COLO_REPL_RUNNING,      /* in COLO */
    COLO_REPL_STOPPED,      /* primary: the secondary is dropped */
    COLO_REPL_FAILED_OVER,  /* secondary: runs on the secondary disk */
} ColoReplicationStage;

static const char *const colo_repl_stage_name[] = {
    [COLO_REPL_IDLE] = "idle",
    [COLO_REPL_RUNNING] = "running",
    [COLO_REPL_STOPPED] = "stopped",
    [COLO_REPL_FAILED_OVER] = "failed-over",
};

typedef struct BDRVColoReplicationState {
    BlockDriverState *bs;
    ReplicationState *rs;
    ReplicationMode mode;
    char *top_id;
    ColoReplicationStage stage;

    /* Primary mode */
    bool holding;               /* writes wait for release_writes */
    CoQueue held;
    QEMUTimer *drained_hold;    /* bounds a hold while drained */
    bool abandoned;             /* held too long, or the secondary silent */
    char *replica_node;         /* yanked if the secondary goes silent */
    int write_error;            /* first failed write to the secondary */

    /* Secondary mode, while running */
    BlockDriverState *disk;     /* the secondary disk */
    BlockBackend *active_blk;   /* write access for emptying */
    BlockBackend *hidden_blk;
    BlockDriverState *cbw;      /* copy-before-write above @disk */
    BlockCopyState *bcs;
    bool svm_wrote;             /* the active disk took a write */
} BDRVColoReplicationState;

#define COLO_REPL_OPT_MODE "mode"
#define COLO_REPL_COMMIT_CHUNK (1 * MiB)
/*
 * How long a drained node keeps writes held for a checkpoint the
 * secondary has not acknowledged before it gives the secondary up.
 */
#define COLO_REPL_DRAINED_HOLD_MS 2000
#define COLO_REPL_OPT_TOP_ID "top-id"

static QemuOptsList colo_repl_runtime_opts = {
    .name = "replication",
    .head = QTAILQ_HEAD_INITIALIZER(colo_repl_runtime_opts.head),
    .desc = {
        {
            .name = COLO_REPL_OPT_MODE,
            .type = QEMU_OPT_STRING,
        },
        {
            .name = COLO_REPL_OPT_TOP_ID,
            .type = QEMU_OPT_STRING,
        },
        { /* end of list */ }
    },
};

static ReplicationOps colo_repl_ops;
static void colo_repl_drained_hold_expired(void *opaque);

static int colo_repl_open(BlockDriverState *bs, QDict *options, int flags,
                          Error **errp)
{
    ERRP_GUARD();
    BDRVColoReplicationState *s = bs->opaque;
    g_autoptr(QemuOpts) opts = NULL;
    g_autofree char *top_id = NULL;
    const char *mode;
    int ret;

    opts = qemu_opts_create(&colo_repl_runtime_opts, NULL, 0, &error_abort);
    if (!qemu_opts_absorb_qdict(opts, options, errp)) {
        return -EINVAL;
    }
    mode = qemu_opt_get(opts, COLO_REPL_OPT_MODE);
    if (!mode) {
        error_setg(errp, "replication: 'mode' is required "
                   "('primary' or 'secondary')");
        return -EINVAL;
    }
    s->mode = qapi_enum_parse(&ReplicationMode_lookup, mode, -1, NULL);
    if ((int)s->mode < 0) {
        error_setg(errp, "replication: invalid mode '%s' "
                   "(expected 'primary' or 'secondary')", mode);
        return -EINVAL;
    }
    top_id = g_strdup(qemu_opt_get(opts, COLO_REPL_OPT_TOP_ID));
    if (top_id && s->mode == REPLICATION_MODE_PRIMARY) {
        error_setg(errp, "replication: 'top-id' is only for secondary mode");
        return -EINVAL;
    }

    /* The mode decides the child's permissions: set it before opening. */
    ret = bdrv_open_file_child(NULL, options, "file", bs, errp);
    if (ret < 0) {
        return ret;
    }

    s->bs = bs;
    s->top_id = g_steal_pointer(&top_id);
    qemu_co_queue_init(&s->held);
    s->drained_hold = aio_timer_new(bdrv_get_aio_context(bs),
                                    QEMU_CLOCK_REALTIME, SCALE_MS,
                                    colo_repl_drained_hold_expired, s);
    s->rs = replication_new(bs, &colo_repl_ops);
    trace_colo_repl_open(bdrv_get_node_name(bs),
                         ReplicationMode_str(s->mode));
    return 0;
}

static void colo_repl_child_perm(BlockDriverState *bs, BdrvChild *c,
                                 BdrvChildRole role,
                                 BlockReopenQueue *reopen_queue,
                                 uint64_t perm, uint64_t shared,
                                 uint64_t *nperm, uint64_t *nshared)
{
    BDRVColoReplicationState *s = bs->opaque;

    bdrv_default_perms(bs, c, role, reopen_queue, perm, shared,
                       nperm, nshared);
    if (s->mode == REPLICATION_MODE_SECONDARY) {
        /*
         * Below the active disk, the primary writes the secondary disk
         * and copy-before-write the hidden disk: by design, the chain is
         * written by others while this node reads it.
         */
        *nshared |= BLK_PERM_WRITE | BLK_PERM_RESIZE;
    }
}

static int64_t coroutine_fn GRAPH_RDLOCK
colo_repl_co_getlength(BlockDriverState *bs)
{
    return bdrv_co_getlength(bs->file->bs);
}

/* Primary mode: the secondary is dropped, nothing reaches it any more. */
static bool colo_repl_detached(BDRVColoReplicationState *s)
{
    return s->mode == REPLICATION_MODE_PRIMARY &&
           (s->stage == COLO_REPL_STOPPED || s->abandoned);
}

/* Primary mode: a replicated request may go on to the secondary. */
static int coroutine_fn colo_repl_primary_gate(BDRVColoReplicationState *s)
{
    if (s->mode != REPLICATION_MODE_PRIMARY) {
        return 0;
    }
    while (qatomic_read(&s->holding)) {
        qemu_co_queue_wait(&s->held, NULL);
    }
    return colo_repl_detached(s) ? -EIO : 0;
}

static int colo_repl_write_done(BDRVColoReplicationState *s, int ret)
{
    if (s->mode == REPLICATION_MODE_SECONDARY) {
        s->svm_wrote = true;
    }
    /*
     * From the moment the replica is in the quorum (idle: the initial
     * migration), a failed write leaves the secondary's disk short of it.
     */
    if (ret < 0 && s->mode == REPLICATION_MODE_PRIMARY &&
        (s->stage == COLO_REPL_RUNNING || s->stage == COLO_REPL_IDLE) &&
        !s->write_error) {
        s->write_error = ret;
        trace_colo_repl_write_error(bdrv_get_node_name(s->bs), ret);
    }
    return ret;
}

static int coroutine_fn GRAPH_RDLOCK
colo_repl_co_preadv_part(BlockDriverState *bs, int64_t offset, int64_t bytes,
                         QEMUIOVector *qiov, size_t qiov_offset,
                         BdrvRequestFlags flags)
{
    BDRVColoReplicationState *s = bs->opaque;

    if (colo_repl_detached(s)) {
        return -EIO;
    }
    return bdrv_co_preadv_part(bs->file, offset, bytes, qiov, qiov_offset,
                               flags);
}

static int coroutine_fn GRAPH_RDLOCK
colo_repl_co_pwritev_part(BlockDriverState *bs, int64_t offset, int64_t bytes,
                          QEMUIOVector *qiov, size_t qiov_offset,
                          BdrvRequestFlags flags)
{
    BDRVColoReplicationState *s = bs->opaque;
    int ret = colo_repl_primary_gate(s);

    if (ret < 0) {
        return ret;
    }
    return colo_repl_write_done(s, bdrv_co_pwritev_part(bs->file, offset,
                                                        bytes, qiov,
                                                        qiov_offset, flags));
}

static int coroutine_fn GRAPH_RDLOCK
colo_repl_co_pwrite_zeroes(BlockDriverState *bs, int64_t offset,
                           int64_t bytes, BdrvRequestFlags flags)
{
    BDRVColoReplicationState *s = bs->opaque;
    int ret = colo_repl_primary_gate(s);

    if (ret < 0) {
        return ret;
    }
    return colo_repl_write_done(s, bdrv_co_pwrite_zeroes(bs->file, offset,
                                                         bytes, flags));
}

static int coroutine_fn GRAPH_RDLOCK
colo_repl_co_pdiscard(BlockDriverState *bs, int64_t offset, int64_t bytes)
{
    BDRVColoReplicationState *s = bs->opaque;
    int ret = colo_repl_primary_gate(s);

    if (ret < 0) {
        return ret;
    }
    return colo_repl_write_done(s, bdrv_co_pdiscard(bs->file, offset, bytes));
}

static int coroutine_fn GRAPH_RDLOCK colo_repl_co_flush(BlockDriverState *bs)
{
    BDRVColoReplicationState *s = bs->opaque;

    if (colo_repl_detached(s)) {
        /* Nothing was written since the secondary was dropped. */
        return 0;
    }
    return bdrv_co_flush(bs->file->bs);
}

/* ---- primary mode --------------------------------------------------- */

static void colo_repl_wake_bh(void *opaque)
{
    BDRVColoReplicationState *s = opaque;

    /* Writes held again meanwhile go back to waiting. */
    qemu_co_enter_all(&s->held, NULL);
    bdrv_dec_in_flight(s->bs);
}

/*
 * Let held writes go on.  They are woken in the node's own context;
 * counting the wake-up as in flight keeps the node (and @s) alive until
 * it has run, and makes a drain wait for it.
 */
static void colo_repl_release(BDRVColoReplicationState *s)
{
    if (!qatomic_read(&s->holding)) {
        return;
    }
    trace_colo_repl_release(bdrv_get_node_name(s->bs));
    qatomic_set(&s->holding, false);
    bdrv_inc_in_flight(s->bs);
    aio_bh_schedule_oneshot(bdrv_get_aio_context(s->bs), colo_repl_wake_bh,
                            s);
}

/*
 * A drain waits for the held writes.  Draining for a checkpoint's stop or
 * a "stop" is short: the release does not need the BQL.  But a drain while
 * the secondary is silent (removing the replica before failing over)
 * would wait for ever, with the BQL held, so the hold is bounded then:
 * the held writes fail, which the quorum absorbs, and the secondary is
 * dropped (the next checkpoint reports it).
 */
static void colo_repl_drained_hold_expired(void *opaque)
{
    BDRVColoReplicationState *s = opaque;

    if (qatomic_read(&s->holding)) {
        trace_colo_repl_drained_hold_expired(bdrv_get_node_name(s->bs));
        s->abandoned = true;
        colo_repl_release(s);
    }
}

static void colo_repl_drain_begin(BlockDriverState *bs)
{
    BDRVColoReplicationState *s = bs->opaque;

    /* (Opening the child drains before the timer exists.) */
    if (s->drained_hold && qatomic_read(&s->holding)) {
        timer_mod(s->drained_hold, qemu_clock_get_ms(QEMU_CLOCK_REALTIME) +
                  COLO_REPL_DRAINED_HOLD_MS);
    }
}

static void colo_repl_drain_end(BlockDriverState *bs)
{
    BDRVColoReplicationState *s = bs->opaque;

    if (s->drained_hold) {
        timer_del(s->drained_hold);
    }
}

static void colo_repl_hold_writes(ReplicationState *rs)
{
    BDRVColoReplicationState *s = ((BlockDriverState *)rs->opaque)->opaque;

    if (s->mode == REPLICATION_MODE_PRIMARY &&
        s->stage == COLO_REPL_RUNNING && !s->abandoned) {
        trace_colo_repl_hold(bdrv_get_node_name(s->bs));
        qatomic_set(&s->holding, true);
    }
}

static void colo_repl_release_writes(ReplicationState *rs)
{
    colo_repl_release(((BlockDriverState *)rs->opaque)->opaque);
}

/*
 * The secondary is silent (COLO's heartbeat, without the BQL).  Held
 * writes fail, and so do those in flight: yanking the NBD connection to
 * the secondary's disk fails them at once, where TCP would take
 * minutes.  The quorum above absorbs the failures; the guest's writes
 * complete on the primary's own disk.
 */
static void colo_repl_drop_peer(ReplicationState *rs)
{
    BDRVColoReplicationState *s = ((BlockDriverState *)rs->opaque)->opaque;

    if (s->mode != REPLICATION_MODE_PRIMARY || !s->replica_node) {
        return;
    }
    trace_colo_repl_drop_peer(s->replica_node);
    qatomic_set(&s->abandoned, true);
    colo_repl_release(s);
    /* A replica that is not an NBD node has nothing to yank. */
    qmp_yank(&(YankInstanceList) {
                 .value = BLOCKDEV_YANK_INSTANCE(s->replica_node) },
             NULL);
}

/* ---- secondary mode ------------------------------------------------- */

static BlockBackend *colo_repl_writer(BlockDriverState *bs, Error **errp)
{
    BlockBackend *blk = blk_new(bdrv_get_aio_context(bs), BLK_PERM_WRITE,
                                BLK_PERM_ALL);

    if (blk_insert_bs(blk, bs, errp) < 0) {
        blk_unref(blk);
        return NULL;
    }
    return blk;
}

/*
 * Empty both overlays and re-arm copy-before-write: the secondary disk is
 * the primary's disk at this checkpoint.  An overlay nothing was written to
 * since it was last emptied is left alone: emptying a qcow2 costs
 * milliseconds, and this runs before the secondary acknowledges.
 */
static bool colo_repl_empty_overlays(BDRVColoReplicationState *s, bool all,
                                     Error **errp)
{
    BdrvDirtyBitmap *to_copy = s->bcs ? block_copy_dirty_bitmap(s->bcs)
                                      : NULL;
    bool hidden_written, ok;

    bdrv_drain_all_begin();
    hidden_written = !to_copy || bdrv_get_dirty_count(to_copy) <
                                 bdrv_dirty_bitmap_size(to_copy);
    ok = (!(all || s->svm_wrote) ||
          blk_make_empty(s->active_blk, errp) == 0) &&
         (!(all || hidden_written) ||
          blk_make_empty(s->hidden_blk, errp) == 0);
    if (ok) {
        s->svm_wrote = false;
        if (to_copy && hidden_written) {
            bdrv_set_dirty_bitmap(to_copy, 0,
                                  bdrv_dirty_bitmap_size(to_copy));
        }
    }
    bdrv_drain_all_end();
    return ok;
}

static void colo_repl_secondary_release(BDRVColoReplicationState *s)
{
    if (s->cbw) {
        bdrv_cbw_drop(s->cbw);
        s->cbw = NULL;
        s->bcs = NULL;
    }
    g_clear_pointer(&s->active_blk, blk_unref);
    g_clear_pointer(&s->hidden_blk, blk_unref);
    s->disk = NULL;
}

static bool colo_repl_check_overlay(BlockDriverState *overlay,
                                    const char *what, const char *below,
                                    Error **errp)
{
    GRAPH_RDLOCK_GUARD_MAINLOOP();

    if (!overlay->drv->bdrv_make_empty) {
        error_setg(errp, "replication: the %s disk '%s' (%s) cannot be "
                   "emptied at checkpoints; use qcow2", what,
                   bdrv_get_node_name(overlay), overlay->drv->format_name);
        return false;
    }
    if (!bdrv_cow_bs(overlay)) {
        error_setg(errp, "replication: the %s disk '%s' has no backing "
                   "(%s) disk", what, bdrv_get_node_name(overlay), below);
        return false;
    }
    return true;
}

static bool colo_repl_secondary_start(BDRVColoReplicationState *s,
                                      Error **errp)
{
    ERRP_GUARD();
    BlockDriverState *active, *hidden, *disk;
    int64_t len;

    /*
     * An incoming migration activates its disks only once it ends; this
     * chain is written from now on.  Only this chain: a disk the pair
     * shares stays with the primary until failover.
     */
    bdrv_graph_rdlock_main_loop();
    bdrv_activate(s->bs, errp);
    bdrv_graph_rdunlock_main_loop();
    if (*errp) {
        error_prepend(errp, "replication: ");
        return false;
    }
    bdrv_graph_rdlock_main_loop();
    active = s->bs->file->bs;
    bdrv_graph_rdunlock_main_loop();
    if (!colo_repl_check_overlay(active, "active", "hidden", errp)) {
        return false;
    }
    bdrv_graph_rdlock_main_loop();
    hidden = bdrv_cow_bs(active);
    bdrv_graph_rdunlock_main_loop();
    if (!colo_repl_check_overlay(hidden, "hidden", "secondary", errp)) {
        return false;
    }
    bdrv_graph_rdlock_main_loop();
    disk = bdrv_cow_bs(hidden);
    len = bdrv_getlength(disk);
    if (len < 0 || bdrv_getlength(active) != len ||
        bdrv_getlength(hidden) != len) {
        bdrv_graph_rdunlock_main_loop();
        error_setg(errp, "replication: the active, hidden and secondary "
                   "disks must have the same size");
        return false;
    }
    bdrv_graph_rdunlock_main_loop();

    if (s->top_id && !bdrv_lookup_bs(s->top_id, s->top_id, errp)) {
        error_prepend(errp, "replication: top-id: ");
        return false;
    }
    /* Backing files open read-only; these two are written from now on. */
    if (bdrv_is_read_only(hidden) &&
        bdrv_reopen_set_read_only(hidden, false, errp) < 0) {
        return false;
    }
    if (bdrv_is_read_only(disk) &&
        bdrv_reopen_set_read_only(disk, false, errp) < 0) {
        return false;
    }

    s->disk = disk;
    s->active_blk = colo_repl_writer(active, errp);
    s->hidden_blk = s->active_blk ? colo_repl_writer(hidden, errp) : NULL;
    if (!s->hidden_blk || !colo_repl_empty_overlays(s, true, errp)) {
        goto fail;
    }
    s->cbw = bdrv_cbw_append(disk, hidden, NULL, false, 0, &s->bcs, errp);
    if (!s->cbw) {
        goto fail;
    }
    return true;

fail:
    error_prepend(errp, "replication: ");
    colo_repl_secondary_release(s);
    return false;
}

/*
 * Fence the primary: close the exports through which it writes the
 * secondary disk (on the disk, its copy-before-write filter, or any other
 * filter above it), so that a primary that is not quite dead cannot write
 * to the disk the VM now runs on, and no half-received write of it can
 * hold up the drains that follow.
 */
static void colo_repl_fence_primary(BDRVColoReplicationState *s)
{
    g_autoptr(BlockExportInfoList) exports = qmp_query_block_exports(NULL);
    BlockExportInfoList *e;

    for (e = exports; e; e = e->next) {
        BlockDriverState *node = bdrv_find_node(e->value->node_name);
        BlockExport *exp = blk_exp_find(e->value->id);
        bool writes_disk;

        if (!node || !exp) {
            continue;
        }
        bdrv_graph_rdlock_main_loop();
        writes_disk = bdrv_skip_filters(node) == s->disk;
        bdrv_graph_rdunlock_main_loop();
        if (writes_disk) {
            trace_colo_repl_fence(bdrv_get_node_name(s->bs), e->value->id);
            blk_exp_request_shutdown(exp);
        }
    }
}

/*
 * Write what @top holds itself (not its backing chain) into @disk.
 * bdrv_commit() cannot be used: the overlays are named nodes whose
 * backing links block committing from the middle of the chain.
 */
static bool colo_repl_commit_layer(BlockBackend *top, BlockBackend *disk,
                                   Error **errp)
{
    BlockDriverState *bs = blk_bs(top);
    int64_t len = blk_getlength(top), offset, pnum;
    uint8_t *buf;
    bool ok = false;
    int ret;

    if (len < 0) {
        error_setg_errno(errp, -len, "cannot get the size of '%s'",
                         bdrv_get_node_name(bs));
        return false;
    }
    /* Aligned memory is freed with qemu_vfree(), never g_free(). */
    buf = blk_blockalign(top, COLO_REPL_COMMIT_CHUNK);
    for (offset = 0; offset < len; offset += pnum) {
        bdrv_graph_rdlock_main_loop();
        ret = bdrv_is_allocated(bs, offset,
                                MIN(len - offset, COLO_REPL_COMMIT_CHUNK),
                                &pnum);
        bdrv_graph_rdunlock_main_loop();
        if (ret < 0) {
            error_setg_errno(errp, -ret, "cannot read the allocation of '%s'",
                             bdrv_get_node_name(bs));
            goto out;
        }
        if (!ret) {
            continue;
        }
        ret = blk_pread(top, offset, pnum, buf, 0);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "reading '%s' failed",
                             bdrv_get_node_name(bs));
            goto out;
        }
        ret = blk_pwrite(disk, offset, pnum, buf, 0);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "writing '%s' failed",
                             bdrv_get_node_name(blk_bs(disk)));
            goto out;
        }
    }
    ok = true;
out:
    qemu_vfree(buf);
    return ok;
}

static bool colo_repl_secondary_failover(BDRVColoReplicationState *s,
                                         Error **errp)
{
    ERRP_GUARD();
    int64_t t_start = qemu_clock_get_us(QEMU_CLOCK_REALTIME);
    BlockDriverState *disk = s->disk;
    BlockBackend *disk_blk;
    bool ok = false;

    colo_repl_fence_primary(s);
    bdrv_cbw_drop(s->cbw);
    s->cbw = NULL;
    s->bcs = NULL;

    /*
     * The pre-images the primary's writes overwrote, then the SVM's own
     * writes over them: the disk is back at the checkpoint plus what the
     * SVM wrote since.
     */
    disk_blk = colo_repl_writer(disk, errp);
    if (!disk_blk ||
        !colo_repl_commit_layer(s->hidden_blk, disk_blk, errp) ||
        !colo_repl_commit_layer(s->active_blk, disk_blk, errp) ||
        blk_flush(disk_blk) < 0) {
        error_prepend(errp, "replication: committing the overlays failed: ");
        goto out;
    }
    if (!colo_repl_empty_overlays(s, true, errp)) {
        goto out;
    }
    if (bdrv_replace_child_bs(s->bs->file, disk, errp) < 0) {
        error_prepend(errp, "replication: ");
        goto out;
    }
    ok = true;
    trace_colo_repl_failover(bdrv_get_node_name(s->bs),
                             qemu_clock_get_us(QEMU_CLOCK_REALTIME) - t_start);
out:
    if (disk_blk) {
        blk_unref(disk_blk);
    }
    colo_repl_secondary_release(s);
    return ok;
}

/* ---- ReplicationOps ------------------------------------------------- */

static void colo_repl_set_stage(BDRVColoReplicationState *s,
                                ColoReplicationStage stage)
{
    trace_colo_repl_stage(bdrv_get_node_name(s->bs),
                          colo_repl_stage_name[s->stage],
                          colo_repl_stage_name[stage]);
    s->stage = stage;
}

/* Whether @bs is @top or below it. */
static bool GRAPH_RDLOCK colo_repl_below(BlockDriverState *top,
                                          BlockDriverState *bs)
{
    BdrvChild *c;

    if (top == bs) {
        return true;
    }
    QLIST_FOREACH(c, &top->children, next) {
        if (colo_repl_below(c->bs, bs)) {
            return true;
        }
    }
    return false;
}

/*
 * Primary mode: only the guest may write the disk above this node.  A
 * checkpoint covers what the guest wrote because its completions reach
 * the guest, and so its output, only after the checkpoint that holds them;
 * another writer (an NBD export, a block job) is answered at once and
 * could write between a checkpoint's stop and the hold.  A writer that
 * shares no write permission keeps every other one out, for as long as
 * COLO runs: so refuse a writer that shares it (a device with
 * share-rw=on, an export or job that allows others).
 */
static bool colo_repl_primary_writers_check(BlockDriverState *bs,
                                            Error **errp)
{
    GRAPH_RDLOCK_GUARD_MAINLOOP();

    for (BlockBackend *blk = blk_all_next(NULL); blk;
         blk = blk_all_next(blk)) {
        g_autofree char *dev = NULL;
        uint64_t perm, shared;

        if (!blk_bs(blk) || !colo_repl_below(blk_bs(blk), bs)) {
            continue;
        }
        blk_get_perm(blk, &perm, &shared);
        if (!(perm & BLK_PERM_WRITE) || !(shared & BLK_PERM_WRITE)) {
            continue;
        }
        if (blk_get_attached_dev(blk)) {
            dev = blk_get_attached_dev_id(blk);
            error_setg(errp, "replication: device '%s' lets others write "
                       "the disk above node '%s' (share-rw=on): their "
                       "writes would escape the checkpoints", dev,
                       bdrv_get_node_name(bs));
        } else {
            error_setg(errp, "replication: a writer of the disk above node "
                       "'%s' (block export or job '%s') lets others write "
                       "it: their writes would escape the checkpoints",
                       bdrv_get_node_name(bs), blk_name(blk));
        }
        return false;
    }
    return true;
}

static void colo_repl_start(ReplicationState *rs, ReplicationMode mode,
                            Error **errp)
{
    BlockDriverState *bs = rs->opaque;
    BDRVColoReplicationState *s = bs->opaque;

    if (s->stage == COLO_REPL_FAILED_OVER) {
        /* An ordinary disk now: a new COLO session protects it anew. */
        return;
    }
    if (s->mode != mode) {
        error_setg(errp, "replication: node '%s' is in %s mode, but COLO "
                   "starts it as %s", bdrv_get_node_name(bs),
                   ReplicationMode_str(s->mode), ReplicationMode_str(mode));
        return;
    }
    if (s->stage == COLO_REPL_RUNNING) {
        error_setg(errp, "replication: node '%s' is already started",
                   bdrv_get_node_name(bs));
        return;
    }
    if (s->stage == COLO_REPL_IDLE && s->write_error) {
        error_setg_errno(errp, -s->write_error, "replication: a write to "
                         "the secondary through '%s' failed before COLO "
                         "started: the secondary's disk is not a copy of "
                         "this one", bdrv_get_node_name(bs));
        return;
    }
    if (mode == REPLICATION_MODE_SECONDARY &&
        !colo_repl_secondary_start(s, errp)) {
        return;
    }
    if (mode == REPLICATION_MODE_PRIMARY &&
        !colo_repl_primary_writers_check(bs, errp)) {
        return;
    }
    s->write_error = 0;
    s->abandoned = false;
    if (mode == REPLICATION_MODE_PRIMARY) {
        g_free(s->replica_node);
        s->replica_node = g_strdup(bdrv_get_node_name(bs->file->bs));
    }
    colo_repl_set_stage(s, COLO_REPL_RUNNING);
}

static bool colo_repl_running(BlockDriverState *bs, Error **errp)
{
    BDRVColoReplicationState *s = bs->opaque;

    if (s->stage != COLO_REPL_RUNNING) {
        error_setg(errp, "replication: node '%s' is not started",
                   bdrv_get_node_name(bs));
        return false;
    }
    return true;
}

static void colo_repl_checkpoint(ReplicationState *rs, Error **errp)
{
    BlockDriverState *bs = rs->opaque;
    BDRVColoReplicationState *s = bs->opaque;

    if (!colo_repl_running(bs, errp)) {
        return;
    }
    if (s->mode == REPLICATION_MODE_SECONDARY &&
        colo_repl_empty_overlays(s, false, errp)) {
        trace_colo_repl_checkpoint(bdrv_get_node_name(bs));
    }
}

static void colo_repl_get_error(ReplicationState *rs, Error **errp)
{
    BlockDriverState *bs = rs->opaque;
    BDRVColoReplicationState *s = bs->opaque;

    if (s->abandoned) {
        error_setg(errp, "replication: node '%s' was drained while its "
                   "writes waited for a checkpoint the secondary did not "
                   "acknowledge, or the secondary went silent; the "
                   "secondary is dropped", bdrv_get_node_name(bs));
    } else if (s->write_error) {
        error_setg_errno(errp, -s->write_error, "replication: a write to "
                         "the secondary through '%s' failed",
                         bdrv_get_node_name(bs));
    }
}

static void colo_repl_do_stop(BlockDriverState *bs, bool failover,
                              Error **errp)
{
    BDRVColoReplicationState *s = bs->opaque;

    if (!colo_repl_running(bs, errp)) {
        return;
    }
    if (s->mode == REPLICATION_MODE_PRIMARY) {
        colo_repl_set_stage(s, COLO_REPL_STOPPED);
        colo_repl_release(s);
        return;
    }
    if (!failover) {
        colo_repl_secondary_release(s);
        colo_repl_set_stage(s, COLO_REPL_IDLE);
        return;
    }
    /* Whatever happens, this node is out of COLO. */
    colo_repl_set_stage(s, colo_repl_secondary_failover(s, errp)
                        ? COLO_REPL_FAILED_OVER : COLO_REPL_IDLE);
}

static void colo_repl_stop(ReplicationState *rs, bool failover, Error **errp)
{
    colo_repl_do_stop(rs->opaque, failover, errp);
}

static ReplicationOps colo_repl_ops = {
    .start = colo_repl_start,
    .stop = colo_repl_stop,
    .checkpoint = colo_repl_checkpoint,
    .get_error = colo_repl_get_error,
    .hold_writes = colo_repl_hold_writes,
    .release_writes = colo_repl_release_writes,
    .drop_peer = colo_repl_drop_peer,
};

static void colo_repl_close(BlockDriverState *bs)
{
    BDRVColoReplicationState *s = bs->opaque;

    /*
     * Out of the registry first: the migration thread's release (which
     * does not take the BQL) cannot reach this node any more.
     */
    replication_remove(s->rs);
    if (s->stage == COLO_REPL_RUNNING) {
        colo_repl_do_stop(bs, false, NULL);
    }
    /*
     * A release (that stop's, or one the migration thread made before the
     * removal) runs its wake-up in a bottom half that uses @s and @bs; it
     * counts as in flight: let it run before they are freed.
     */
    BDRV_POLL_WHILE(bs, qatomic_read(&bs->in_flight) > 0);
    timer_free(s->drained_hold);
    g_free(s->top_id);
    g_free(s->replica_node);
}

static BlockDriver bdrv_colo_replication = {
    .format_name                = "replication",
    .instance_size              = sizeof(BDRVColoReplicationState),
    .is_filter                  = true,

    .bdrv_open                  = colo_repl_open,
    .bdrv_close                 = colo_repl_close,
    .bdrv_child_perm            = colo_repl_child_perm,
    .bdrv_drain_begin           = colo_repl_drain_begin,
    .bdrv_drain_end             = colo_repl_drain_end,

    .bdrv_co_getlength          = colo_repl_co_getlength,
    .bdrv_co_preadv_part        = colo_repl_co_preadv_part,
    .bdrv_co_pwritev_part       = colo_repl_co_pwritev_part,
    .bdrv_co_pwrite_zeroes      = colo_repl_co_pwrite_zeroes,
    .bdrv_co_pdiscard           = colo_repl_co_pdiscard,
    .bdrv_co_flush              = colo_repl_co_flush,
};

static void bdrv_colo_replication_init(void)
{
    bdrv_register(&bdrv_colo_replication);
}

block_init(bdrv_colo_replication_init);
