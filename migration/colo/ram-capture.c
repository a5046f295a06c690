/*
 * COLO primary: capture the pages dirtied since the previous checkpoint.
 *
 * The VM is stopped and the BQL held while this runs, so the pause of
 * every checkpoint includes it: it only syncs the dirty log, walks the
 * dirty bits and copies dirty pages into the checkpoint buffer (zero pages
 * are sent as ranges without contents).  Sending happens after the VM
 * resumes.
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
#include "qemu/rcu.h"
#include "exec/ram_addr.h"
#include "exec/ramblock.h"
#include "exec/memory.h"
#include "migration/misc.h"
#include "migration/ram.h"
#include "protocol.h"
#include "ram.h"
#include "trace.h"

static void colo_ram_put_record(ColoBuf *out, ColoRamRecordKind kind,
                                uint16_t block, uint64_t first,
                                uint32_t npages)
{
    uint8_t rec[COLO_RAM_RECORD_SIZE];

    rec[0] = kind;
    rec[1] = 0;
    stw_be_p(rec + 2, block);
    stl_be_p(rec + 4, npages);
    stq_be_p(rec + 8, first << TARGET_PAGE_BITS);
    colo_buf_append(out, rec, sizeof(rec));
}

/*
 * Append pages [start, end) of @rb: runs of zero pages as ZERO records,
 * runs of other pages as PAGES records with their contents.
 */
static void colo_ram_put_run(ColoBuf *out, RAMBlock *rb, uint16_t index,
                             unsigned long start, unsigned long end,
                             ColoRamStats *stats)
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
        colo_ram_put_record(out, zero ? COLO_RAM_ZERO : COLO_RAM_PAGES,
                            index, page, next - page);
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

bool colo_ram_capture(ColoBuf *out, ColoRamStats *stats, Error **errp)
{
    RAMBlock *rb;
    uint16_t index = 0;

    memset(stats, 0, sizeof(*stats));
    memory_global_dirty_log_sync(false);

    RCU_READ_LOCK_GUARD();
    RAMBLOCK_FOREACH_NOT_IGNORED(rb) {
        unsigned long npages = rb->used_length >> TARGET_PAGE_BITS;
        unsigned long page;

        if (!rb->bmap) {
            error_setg(errp, "COLO: RAM block %s has no dirty bitmap",
                       rb->idstr);
            return false;
        }
        cpu_physical_memory_sync_dirty_bitmap(rb, 0, rb->used_length);
        if (rb->clear_bmap) {
            /*
             * The sync only noted which chunks of the accelerator's log
             * to clear; clear the whole block now so that writes from
             * here on are logged for the next checkpoint.
             */
            memory_region_clear_dirty_bitmap(rb->mr, 0, rb->used_length);
            bitmap_zero(rb->clear_bmap,
                        clear_bmap_size(npages, rb->clear_bmap_shift));
        }

        page = find_first_bit(rb->bmap, npages);
        while (page < npages) {
            unsigned long end = find_next_zero_bit(rb->bmap, npages, page + 1);

            colo_ram_put_run(out, rb, index, page, end, stats);
            bitmap_clear(rb->bmap, page, end - page);
            page = find_next_bit(rb->bmap, npages, end);
        }
        index++;
    }
    trace_colo_ram_capture(stats->pages, stats->zero_pages, out->len);
    return true;
}
