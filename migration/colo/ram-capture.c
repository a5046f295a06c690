/*
 * COLO primary: capture the pages dirtied since the previous checkpoint.
 *
 * Most of the copy happens while the VM runs (colo_ram_precopy(), called
 * every few milliseconds between checkpoints): each pass takes the pages
 * dirtied since the last one, clears their dirty bits and copies them into
 * the checkpoint buffer.  A page written again after its copy is copied
 * by the next pass over that copy, in place, where the buffer has room
 * for it (not for a page that was zero, which has no contents there).  A
 * page written during or after the last pass is dirtied again, so the
 * stop (colo_ram_capture(), VM stopped, BQL held) copies it once more:
 * the secondary applies records in order, the last copy wins, and the
 * checkpoint is exact.  The pause then holds only the pages dirtied since
 * the last pass, not since the last checkpoint, and a checkpoint holds
 * each page at most twice (colo_ram_checkpoint_max()).  Zero pages are
 * sent as ranges without contents.
 *
 * The dirty log is the one the initial migration started (ram.c keeps it,
 * and its per-block bitmap rb->bmap, running while the migration is in
 * COLO state); once in COLO, nobody but this file consumes it.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qemu/bitops.h"
#include "qemu/bswap.h"
#include "qemu/cutils.h"
#include "qemu/main-loop.h"
#include "qemu/timer.h"
#include "qemu/rcu.h"
#include "exec/ram_addr.h"
#include "exec/ramblock.h"
#include "exec/memory.h"
#include "hw/core/cpu.h"
#include "system/tcg.h"
#include "migration/misc.h"
#include "migration/ram.h"
#include "protocol.h"
#include "ram.h"
#include "trace.h"

struct ColoRamCapture {
    /*
     * Per block, by layout index: the pages this checkpoint already holds
     * a copy of, taken while the VM ran.
     */
    unsigned long **precopied;
    /*
     * Per block, for each page with its bit in precopied: where its copy
     * sits in the checkpoint buffer, or COLO_RAM_COPY_ZERO (it went as a
     * zero page, without contents), or COLO_RAM_COPY_OUT_OF_REACH (past
     * what 32 bits say).  4 bytes a page, a thousandth of the guest's RAM.
     */
    uint32_t **copy_at;
    unsigned int nblocks;
    unsigned long *scratch;     /* as long as the longest block */
};

/*
 * A dirty-log sync that a pre-copy pass asks of a vCPU thread (TCG).  The
 * vCPU thread runs it only once it holds the BQL, which the main loop may
 * keep for long, so the pass waits a bounded time; one that stops waiting
 * cancels the work, unless it has started, and then waits for its end
 * (the sync itself, short).  Either way, no sync runs after the pass
 * returns, in particular none concurrently with a checkpoint's capture.
 * Shared by the pass and the work, freed by the last to let go.
 */
enum {
    COLO_SYNC_WAITING,
    COLO_SYNC_RUNNING,
    COLO_SYNC_DONE,
    COLO_SYNC_CANCELLED,
};

typedef struct ColoRamSyncRequest {
    QemuSemaphore done;
    int state;
    int refs;
} ColoRamSyncRequest;

/* How long a pass waits for a vCPU thread to sync for it. */
#define COLO_PRECOPY_SYNC_WAIT_MS 20

ColoRamCapture *colo_ram_capture_new(void)
{
    ColoRamCapture *cap = g_new0(ColoRamCapture, 1);
    unsigned long longest = 0;
    RAMBlock *rb;

    RCU_READ_LOCK_GUARD();
    RAMBLOCK_FOREACH_NOT_IGNORED(rb) {
        cap->nblocks++;
    }
    cap->precopied = g_new0(unsigned long *, cap->nblocks);
    cap->copy_at = g_new0(uint32_t *, cap->nblocks);
    cap->nblocks = 0;
    RAMBLOCK_FOREACH_NOT_IGNORED(rb) {
        unsigned long npages = rb->max_length >> TARGET_PAGE_BITS;

        cap->precopied[cap->nblocks] = bitmap_new(npages);
        cap->copy_at[cap->nblocks++] = g_new(uint32_t, npages);
        longest = MAX(longest, npages);
    }
    cap->scratch = bitmap_new(longest);
    return cap;
}

void colo_ram_capture_free(ColoRamCapture *cap)
{
    if (!cap) {
        return;
    }
    for (unsigned int i = 0; i < cap->nblocks; i++) {
        g_free(cap->precopied[i]);
        g_free(cap->copy_at[i]);
    }
    g_free(cap->precopied);
    g_free(cap->copy_at);
    g_free(cap->scratch);
    g_free(cap);
}

#define COLO_RAM_COPY_ZERO UINT32_MAX
#define COLO_RAM_COPY_OUT_OF_REACH (UINT32_MAX - 1)

/*
 * Append pages [start, end) of @rb: runs of zero pages as ZERO records,
 * runs of other pages as PAGES records with their contents.  With
 * @copy_at, note there where each page's contents went.
 */
static void colo_ram_put_run(ColoBuf *out, RAMBlock *rb, uint16_t index,
                             unsigned long start, unsigned long end,
                             ColoRamStats *stats, uint32_t *copy_at)
{
    unsigned long page = start;
    bool zero = buffer_is_zero(rb->host + (page << TARGET_PAGE_BITS),
                               TARGET_PAGE_SIZE);

    while (page < end) {
        unsigned long next = page + 1;
        bool next_zero = zero;

        /*
         * Each page is tested once: the one ending a run starts the next.
         * A record counts at most UINT32_MAX pages.
         */
        while (next < end) {
            next_zero = buffer_is_zero(rb->host + (next << TARGET_PAGE_BITS),
                                       TARGET_PAGE_SIZE);
            if (next_zero != zero || next - page == UINT32_MAX) {
                break;
            }
            next++;
        }
        colo_ram_record_put(out, zero ? COLO_RAM_ZERO : COLO_RAM_PAGES,
                            index, (uint64_t)page << TARGET_PAGE_BITS,
                            next - page);
        for (unsigned long p = page; copy_at && p < next; p++) {
            uint64_t at = out->len + ((p - page) << TARGET_PAGE_BITS);

            copy_at[p] = zero ? COLO_RAM_COPY_ZERO :
                         at >= COLO_RAM_COPY_OUT_OF_REACH ?
                         COLO_RAM_COPY_OUT_OF_REACH : at;
        }
        if (zero) {
            stats->zero_pages += next - page;
        } else {
            colo_buf_append(out, rb->host + (page << TARGET_PAGE_BITS),
                            (next - page) << TARGET_PAGE_BITS);
        }
        stats->pages += next - page;
        page = next;
        zero = next_zero;
    }
}

/*
 * Move the dirty log into each block's rb->bmap and clear it, so that
 * writes from here on are logged for the next pass.  Blocks without a
 * bitmap are left to colo_ram_capture(), which refuses them.
 */
static void colo_ram_sync_dirty_log(void)
{
    RAMBlock *rb;

    RCU_READ_LOCK_GUARD();
    RAMBLOCK_FOREACH_NOT_IGNORED(rb) {
        unsigned long npages = rb->used_length >> TARGET_PAGE_BITS;

        if (!rb->bmap) {
            continue;
        }
        cpu_physical_memory_sync_dirty_bitmap(rb, 0, rb->used_length);
        if (rb->clear_bmap) {
            /*
             * The sync only noted which chunks of the accelerator's log
             * to clear; clear the whole block now so that writes from
             * here on are logged.
             */
            memory_region_clear_dirty_bitmap(rb->mr, 0, rb->used_length);
            bitmap_zero(rb->clear_bmap,
                        clear_bmap_size(npages, rb->clear_bmap_shift));
        }
    }
}

static void colo_ram_sync_request_unref(ColoRamSyncRequest *req)
{
    if (qatomic_fetch_dec(&req->refs) == 1) {
        qemu_sem_destroy(&req->done);
        g_free(req);
    }
}

static void colo_ram_sync_work(CPUState *cpu, run_on_cpu_data data)
{
    ColoRamSyncRequest *req = data.host_ptr;

    if (qatomic_cmpxchg(&req->state, COLO_SYNC_WAITING,
                        COLO_SYNC_RUNNING) == COLO_SYNC_WAITING) {
        colo_ram_sync_dirty_log();
        qatomic_set(&req->state, COLO_SYNC_DONE);
        qemu_sem_post(&req->done);
    }
    colo_ram_sync_request_unref(req);
}

/* Sync as safe CPU work; false when no vCPU thread took it in time. */
static bool colo_ram_sync_on_vcpu(void)
{
    ColoRamSyncRequest *req = g_new0(ColoRamSyncRequest, 1);
    bool synced = true;

    qemu_sem_init(&req->done, 0);
    req->state = COLO_SYNC_WAITING;
    req->refs = 2;
    async_safe_run_on_cpu(first_cpu, colo_ram_sync_work,
                          RUN_ON_CPU_HOST_PTR(req));
    if (qemu_sem_timedwait(&req->done, COLO_PRECOPY_SYNC_WAIT_MS) < 0) {
        if (qatomic_cmpxchg(&req->state, COLO_SYNC_WAITING,
                            COLO_SYNC_CANCELLED) == COLO_SYNC_WAITING) {
            synced = false;
        } else {
            qemu_sem_wait(&req->done);      /* running: nearly done */
        }
    }
    colo_ram_sync_request_unref(req);
    return synced;
}

/*
 * Pages of block @index that this checkpoint holds a copy of and that the
 * VM wrote since: copy each over its copy.  One pre-copied as zero stays
 * dirty, for the stop, unless it is zero again; one whose copy is out of
 * reach stays dirty.  Returns how many pages are clean again.
 */
static uint64_t colo_ram_recopy(ColoRamCapture *cap, unsigned int index,
                                RAMBlock *rb, ColoBuf *out,
                                unsigned long npages)
{
    const uint32_t *copy_at = cap->copy_at[index];
    uint64_t recopied = 0;
    unsigned long page;

    bitmap_and(cap->scratch, rb->bmap, cap->precopied[index], npages);
    for (page = find_first_bit(cap->scratch, npages); page < npages;
         page = find_next_bit(cap->scratch, npages, page + 1)) {
        const uint8_t *host = rb->host + (page << TARGET_PAGE_BITS);

        if (copy_at[page] == COLO_RAM_COPY_OUT_OF_REACH ||
            (copy_at[page] == COLO_RAM_COPY_ZERO &&
             !buffer_is_zero(host, TARGET_PAGE_SIZE))) {
            continue;
        }
        if (copy_at[page] != COLO_RAM_COPY_ZERO) {
            memcpy(out->data + copy_at[page], host, TARGET_PAGE_SIZE);
        }
        clear_bit(page, rb->bmap);
        recopied++;
    }
    return recopied;
}

void colo_ram_precopy(ColoRamCapture *cap, ColoBuf *out, ColoRamStats *stats)
{
    int64_t start = qemu_clock_get_us(QEMU_CLOCK_REALTIME);
    uint64_t pages = stats->pages, zero_pages = stats->zero_pages;
    size_t len = out->len;
    unsigned int index = 0;
    uint64_t recopied = 0;
    RAMBlock *rb;

    bql_lock();
    memory_global_dirty_log_sync(false);
    bql_unlock();
    if (tcg_enabled()) {
        /*
         * A TCG vCPU marks a page dirty, then lets its TLB skip the
         * marking for later stores to it: a sync between the two would
         * clear the mark and leave the page unlogged until the next sync.
         * Sync while no vCPU runs guest code.  The work runs even on a
         * stopped vCPU, once its thread holds the BQL, which callers
         * never hold.
         */
        if (!colo_ram_sync_on_vcpu()) {
            /* What is dirty waits for the next pass, or the stop. */
            trace_colo_ram_precopy_skipped(COLO_PRECOPY_SYNC_WAIT_MS);
            return;
        }
    } else {
        colo_ram_sync_dirty_log();
    }

    RCU_READ_LOCK_GUARD();
    RAMBLOCK_FOREACH_NOT_IGNORED(rb) {
        unsigned long npages = rb->used_length >> TARGET_PAGE_BITS;
        unsigned long *done, page;

        if (index >= cap->nblocks || !rb->bmap) {
            break;
        }
        done = cap->precopied[index];
        recopied += colo_ram_recopy(cap, index, rb, out, npages);
        bitmap_andnot(cap->scratch, rb->bmap, done, npages);
        page = find_first_bit(cap->scratch, npages);
        while (page < npages) {
            unsigned long end = find_next_zero_bit(cap->scratch, npages,
                                                   page + 1);

            colo_ram_put_run(out, rb, index, page, end, stats,
                             cap->copy_at[index]);
            bitmap_clear(rb->bmap, page, end - page);
            bitmap_set(done, page, end - page);
            page = find_next_bit(cap->scratch, npages, end);
        }
        index++;
    }
    stats->precopied += stats->pages - pages;
    trace_colo_ram_precopy(stats->pages - pages,
                           stats->zero_pages - zero_pages, recopied,
                           out->len - len,
                           qemu_clock_get_us(QEMU_CLOCK_REALTIME) - start);
}

bool colo_ram_capture(ColoRamCapture *cap, ColoBuf *out, ColoRamStats *stats,
                      Error **errp)
{
    uint64_t pages = stats->pages, zero_pages = stats->zero_pages;
    size_t len = out->len;
    RAMBlock *rb;
    uint16_t index = 0;

    memory_global_dirty_log_sync(false);
    colo_ram_sync_dirty_log();

    RCU_READ_LOCK_GUARD();
    RAMBLOCK_FOREACH_NOT_IGNORED(rb) {
        unsigned long npages = rb->used_length >> TARGET_PAGE_BITS;
        unsigned long page;

        if (!rb->bmap) {
            error_setg(errp, "COLO: RAM block %s has no dirty bitmap",
                       rb->idstr);
            return false;
        }
        page = find_first_bit(rb->bmap, npages);
        while (page < npages) {
            unsigned long end = find_next_zero_bit(rb->bmap, npages, page + 1);

            colo_ram_put_run(out, rb, index, page, end, stats, NULL);
            bitmap_clear(rb->bmap, page, end - page);
            page = find_next_bit(rb->bmap, npages, end);
        }
        if (index < cap->nblocks) {
            /* The next checkpoint holds no copy of anything yet. */
            bitmap_zero(cap->precopied[index],
                        rb->max_length >> TARGET_PAGE_BITS);
        }
        index++;
    }
    trace_colo_ram_capture(stats->pages - pages,
                           stats->zero_pages - zero_pages, out->len - len);
    return true;
}
