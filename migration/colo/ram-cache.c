/*
 * COLO secondary: the RAM cache, and its flush into the SVM.
 *
 * A checkpoint's pages are never written into the SVM as they arrive: the
 * whole checkpoint is first staged in memory (the cache) and checked, so
 * that a checkpoint that does not arrive whole, or does not make sense,
 * leaves the SVM exactly at the previous one.  Only then are its pages
 * flushed into the SVM's memory.
 *
 * In periodic mode the SVM does not run between checkpoints: it stands at
 * the last checkpoint, ready to take over.  The only pages that differ
 * between the SVM and the new checkpoint are therefore the pages the
 * primary dirtied, which are exactly the pages the checkpoint carries, and
 * the flush copies those and nothing else.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qemu/bitmap.h"
#include "qemu/bswap.h"
#include "qemu/cutils.h"
#include "qemu/rcu.h"
#include "exec/ramblock.h"
#include "exec/ram_addr.h"
#include "migration/misc.h"
#include "migration/ram.h"
#include "ram.h"
#include "trace.h"

/* The blocks of the layout, indexed as the records name them. */
static GPtrArray *colo_ram_blocks(void)
{
    GPtrArray *blocks = g_ptr_array_new();
    RAMBlock *rb;

    RAMBLOCK_FOREACH_NOT_IGNORED(rb) {
        g_ptr_array_add(blocks, rb);
    }
    return blocks;
}

/* The pages of @rb already named by a record of the checkpoint. */
static unsigned long *colo_ram_seen(GPtrArray *seen, unsigned int block,
                                    RAMBlock *rb)
{
    if (!g_ptr_array_index(seen, block)) {
        g_ptr_array_index(seen, block) =
            bitmap_new(rb->used_length >> TARGET_PAGE_BITS);
    }
    return g_ptr_array_index(seen, block);
}

bool colo_ram_cache_check(const uint8_t *buf, size_t len, Error **errp)
{
    g_autoptr(GPtrArray) blocks = NULL;
    g_autoptr(GPtrArray) seen = NULL;
    size_t pos = 0;

    RCU_READ_LOCK_GUARD();
    blocks = colo_ram_blocks();
    seen = g_ptr_array_new_full(blocks->len, g_free);
    g_ptr_array_set_size(seen, blocks->len);
    while (pos < len) {
        ColoRamRecord rec;
        RAMBlock *rb;
        uint64_t bytes;
        unsigned long *pages;
        size_t used;

        if (len - pos < COLO_RAM_RECORD_SIZE) {
            error_setg(errp, "COLO checkpoint: RAM record truncated");
            return false;
        }
        colo_ram_record_get(buf + pos, &rec);
        pos += COLO_RAM_RECORD_SIZE;
        if (rec.kind != COLO_RAM_PAGES && rec.kind != COLO_RAM_ZERO &&
            rec.kind != COLO_RAM_DELTA) {
            error_setg(errp, "COLO checkpoint: unknown RAM record kind %u",
                       rec.kind);
            return false;
        }
        if (rec.block >= blocks->len) {
            error_setg(errp, "COLO checkpoint: no RAM block %u", rec.block);
            return false;
        }
        rb = g_ptr_array_index(blocks, rec.block);
        bytes = (uint64_t)rec.npages << TARGET_PAGE_BITS;
        if (rec.npages == 0 || rec.offset & ~TARGET_PAGE_MASK ||
            rec.offset > rb->used_length ||
            bytes > rb->used_length - rec.offset) {
            error_setg(errp, "COLO checkpoint: pages 0x%" PRIx64 "+%u outside"
                       " RAM block %s", rec.offset, rec.npages, rb->idstr);
            return false;
        }
        pages = colo_ram_seen(seen, rec.block, rb);
        if (rec.kind == COLO_RAM_PAGES) {
            if (len - pos < bytes) {
                error_setg(errp, "COLO checkpoint: RAM contents truncated");
                return false;
            }
            pos += bytes;
        } else if (rec.kind == COLO_RAM_DELTA) {
            /* Its base must be the SVM's page as it is now. */
            if (test_bit(rec.offset >> TARGET_PAGE_BITS, pages)) {
                error_setg(errp, "COLO checkpoint: a delta of page 0x%"
                           PRIx64 " of RAM block %s after another record of "
                           "it", rec.offset, rb->idstr);
                return false;
            }
            if (!colo_ram_delta_check(rb, &rec, buf + pos, len - pos, &used,
                                      errp)) {
                return false;
            }
            pos += used;
        }
        bitmap_set(pages, rec.offset >> TARGET_PAGE_BITS, rec.npages);
    }
    return true;
}

void colo_ram_cache_flush(const uint8_t *buf, size_t len, ColoRamStats *stats)
{
    g_autoptr(GPtrArray) blocks = NULL;
    size_t pos = 0;

    memset(stats, 0, sizeof(*stats));
    RCU_READ_LOCK_GUARD();
    blocks = colo_ram_blocks();
    while (pos < len) {
        ColoRamRecord rec;
        RAMBlock *rb;
        uint8_t *host;
        uint64_t bytes;

        colo_ram_record_get(buf + pos, &rec);
        pos += COLO_RAM_RECORD_SIZE;
        rb = g_ptr_array_index(blocks, rec.block);
        host = rb->host + rec.offset;
        bytes = (uint64_t)rec.npages << TARGET_PAGE_BITS;
        if (rec.kind == COLO_RAM_PAGES) {
            memcpy(host, buf + pos, bytes);
            pos += bytes;
        } else if (rec.kind == COLO_RAM_DELTA) {
            pos += colo_ram_delta_apply(rb, &rec, buf + pos);
            stats->deltas++;
        } else {
            for (uint64_t o = 0; o < bytes; o += TARGET_PAGE_SIZE) {
                if (!buffer_is_zero(host + o, TARGET_PAGE_SIZE)) {
                    memset(host + o, 0, TARGET_PAGE_SIZE);
                }
            }
            stats->zero_pages += rec.npages;
        }
        stats->pages += rec.npages;
        /* Keep the memory API's view (e.g. a display's dirty log) right. */
        cpu_physical_memory_set_dirty_range(rb->offset + rec.offset, bytes,
                                            DIRTY_CLIENTS_NOCODE);
    }
    trace_colo_ram_cache_flush(stats->pages, stats->zero_pages,
                               stats->deltas);
}
