/*
 * COLO: pages sent as changes of what the secondary holds.
 *
 * Most of a dirty page is as it was: with fifty redis clients the XBZRLE
 * encoding (migration/xbzrle.c) of a checkpoint's pages against the
 * previous checkpoint's is 1 to 2.5 % of their size, and a third of them
 * did not change at all.  So the primary keeps, per page, what the
 * secondary holds (the shadow), and once the VM runs again rewrites the
 * records the capture took (ram-capture.c): a page the secondary holds a
 * known copy of goes as a DELTA record, its change against that copy,
 * tagged with the copy's CRC-32C, or not at all if it did not change.
 * Every other page goes as captured, and the shadow learns it.
 *
 * The secondary checks each delta against its own page before it flushes
 * anything of the checkpoint (ram-cache.c): a page that is not the one the
 * primary changed (the SVM does not run, so it should not happen) refuses
 * the checkpoint whole instead of corrupting the page.  For that check to
 * be made before the flush, a delta is always against the previous
 * checkpoint's contents: a page has at most one delta in a checkpoint, and
 * none after another record of the same page.
 *
 * The shadow is as large as the guest's RAM, allocated as it is written:
 * it costs the primary memory for each page the guest wrote since COLO
 * started.  Each COLO session starts with an empty shadow.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qemu/bitmap.h"
#include "qemu/bswap.h"
#include "qemu/rcu.h"
#include "qemu/timer.h"
#include "qemu/units.h"
#include "exec/ramblock.h"
#include "exec/target_page.h"
#include "migration/misc.h"
#include "migration/ram.h"
#include "migration/xbzrle.h"
#include "ram.h"
#include "trace.h"

typedef struct ColoRamShadow {
    uint8_t *pages;             /* what the secondary holds, if known */
    size_t size;                /* bytes mapped */
    unsigned long npages;
    unsigned long *known;       /* pages whose contents are in @pages */
    unsigned long *recorded;    /* pages with a record in this checkpoint */
} ColoRamShadow;

struct ColoRamDelta {
    ColoRamShadow *blocks;      /* by layout index */
    unsigned int nblocks;
};

ColoRamDelta *colo_ram_delta_new(void)
{
    ColoRamDelta *d = g_new0(ColoRamDelta, 1);
    RAMBlock *rb;
    unsigned int i = 0;

    RCU_READ_LOCK_GUARD();
    RAMBLOCK_FOREACH_NOT_IGNORED(rb) {
        d->nblocks++;
    }
    d->blocks = g_new0(ColoRamShadow, d->nblocks);
    RAMBLOCK_FOREACH_NOT_IGNORED(rb) {
        ColoRamShadow *s = &d->blocks[i++];

        s->npages = rb->max_length >> TARGET_PAGE_BITS;
        s->size = rb->max_length;
        /* Untouched pages of an anonymous mapping cost nothing. */
        s->pages = qemu_anon_ram_alloc(s->size, NULL, false, true);
        s->known = bitmap_new(s->npages);
        s->recorded = bitmap_new(s->npages);
    }
    return d;
}

void colo_ram_delta_free(ColoRamDelta *d)
{
    if (!d) {
        return;
    }
    for (unsigned int i = 0; i < d->nblocks; i++) {
        ColoRamShadow *s = &d->blocks[i];

        if (s->pages) {
            qemu_anon_ram_free(s->pages, s->size);
        }
        g_free(s->known);
        g_free(s->recorded);
    }
    g_free(d->blocks);
    g_free(d);
}

void colo_ram_record_put(ColoBuf *out, ColoRamRecordKind kind,
                         uint16_t block, uint64_t offset, uint32_t npages)
{
    uint8_t rec[COLO_RAM_RECORD_SIZE];

    rec[0] = kind;
    rec[1] = 0;
    stw_be_p(rec + 2, block);
    stl_be_p(rec + 4, npages);
    stq_be_p(rec + 8, offset);
    colo_buf_append(out, rec, sizeof(rec));
}

void colo_ram_record_get(const uint8_t *p, ColoRamRecord *rec)
{
    rec->kind = p[0];
    rec->block = lduw_be_p(p + 2);
    rec->npages = ldl_be_p(p + 4);
    rec->offset = ldq_be_p(p + 8);
}

/* A run of captured pages that goes as it is. */
typedef struct ColoRawRun {
    uint16_t block;
    uint64_t offset;
    uint32_t npages;
    const uint8_t *data;
} ColoRawRun;

static void colo_raw_run_flush(ColoRawRun *run, ColoBuf *out)
{
    if (run->npages) {
        colo_ram_record_put(out, COLO_RAM_PAGES, run->block, run->offset,
                            run->npages);
        colo_buf_append(out, run->data,
                        (size_t)run->npages << TARGET_PAGE_BITS);
        run->npages = 0;
    }
}

/*
 * A page sent as it is becomes known only within a budget per checkpoint:
 * the first write of a shadow page faults it in (about 30 us a page here),
 * and a checkpoint of a whole RAM's pages, such as the first after the
 * initial migration, must not keep the primary from the secondary for
 * seconds before it is sent.  Pages past the budget are learnt the next
 * time they are sent.
 */
#define COLO_RAM_DELTA_LEARN_MAX 2048

/*
 * A checkpoint with more captured RAM than this goes as it is: rewriting
 * it would copy it whole once more (on this host, faulting in a buffer of
 * that size took seconds for 200 MB), while what deltas save on it is
 * small next to its transfer.
 */
#define COLO_RAM_DELTA_INPUT_MAX (16 * MiB)

/* One pass of colo_ram_delta_encode(). */
typedef struct ColoDeltaPass {
    ColoBuf *out;
    ColoRawRun run;
    uint64_t deltas;            /* pages sent as deltas */
    uint64_t unchanged;         /* pages left out */
    uint64_t learnt;            /* pages sent as they are, now known */
} ColoDeltaPass;

/* One captured page of a PAGES record: as a delta, as it is, or not. */
static void colo_ram_delta_page(ColoRamShadow *s, ColoDeltaPass *pass,
                                uint16_t block, uint64_t offset,
                                const uint8_t *data)
{
    unsigned long page = offset >> TARGET_PAGE_BITS;
    uint8_t *shadow = s->pages + offset;
    ColoRawRun *run = &pass->run;
    uint8_t enc[TARGET_PAGE_SIZE];
    int n = -1;

    if (test_bit(page, s->known) && !test_bit(page, s->recorded)) {
        /*
         * No longer than the page as it is, with its record: a checkpoint
         * is never longer than colo_ram_checkpoint_max() says.
         */
        n = xbzrle_encode_buffer(shadow, (uint8_t *)data, TARGET_PAGE_SIZE,
                                 enc, TARGET_PAGE_SIZE - COLO_RAM_DELTA_SIZE);
    }
    if (n == 0) {
        pass->unchanged++;
        return;
    }
    set_bit(page, s->recorded);
    if (n > 0) {
        colo_raw_run_flush(run, pass->out);
        colo_ram_record_put(pass->out, COLO_RAM_DELTA, block, offset, 1);
        colo_buf_append(pass->out, &(uint32_t){
                            cpu_to_be32(colo_msg_crc(0, shadow,
                                                     TARGET_PAGE_SIZE)) },
                        sizeof(uint32_t));
        colo_buf_append(pass->out, &(uint32_t){ cpu_to_be32(n) },
                        sizeof(uint32_t));
        colo_buf_append(pass->out, enc, n);
        memcpy(shadow, data, TARGET_PAGE_SIZE);
        pass->deltas++;
        return;
    }
    {
        size_t run_bytes = (size_t)run->npages << TARGET_PAGE_BITS;

        /* A run goes on in guest memory and in the captured records. */
        if (run->npages && (run->block != block ||
                            run->offset + run_bytes != offset ||
                            run->data + run_bytes != data ||
                            run->npages == UINT32_MAX)) {
            colo_raw_run_flush(run, pass->out);
        }
        if (!run->npages) {
            *run = (ColoRawRun) { block, offset, 0, data };
        }
        run->npages++;
    }
    if (pass->learnt < COLO_RAM_DELTA_LEARN_MAX) {
        memcpy(shadow, data, TARGET_PAGE_SIZE);
        set_bit(page, s->known);
        pass->learnt++;
    } else {
        clear_bit(page, s->known);
    }
}

/*
 * Clear the pages of the records @in in each shadow's @known bitmap
 * (forgotten), or else in its recorded one (free for the next
 * checkpoint).
 */
static void colo_ram_delta_clear(ColoRamDelta *d, const uint8_t *in,
                                 size_t len, bool known)
{
    for (size_t pos = 0; pos < len;) {
        ColoRamRecord rec;
        ColoRamShadow *s;

        colo_ram_record_get(in + pos, &rec);
        pos += COLO_RAM_RECORD_SIZE;
        if (rec.kind == COLO_RAM_PAGES) {
            pos += (size_t)rec.npages << TARGET_PAGE_BITS;
        }
        if (rec.block >= d->nblocks) {
            continue;
        }
        s = &d->blocks[rec.block];
        if (rec.offset + ((uint64_t)rec.npages << TARGET_PAGE_BITS) <=
            s->size) {
            bitmap_clear(known ? s->known : s->recorded,
                         rec.offset >> TARGET_PAGE_BITS, rec.npages);
        }
    }
}

bool colo_ram_delta_encode(ColoRamDelta *d, const uint8_t *in, size_t len,
                           ColoBuf *out)
{
    int64_t start = qemu_clock_get_us(QEMU_CLOCK_REALTIME);
    ColoDeltaPass pass = { .out = out };
    size_t out_start = out->len;
    size_t pos = 0;

    if (len > COLO_RAM_DELTA_INPUT_MAX) {
        colo_ram_delta_clear(d, in, len, true);
        trace_colo_ram_delta_skipped(len);
        return false;
    }

    /* The capture's own records: whole, in bounds, known blocks. */
    while (pos < len) {
        ColoRamRecord rec;
        ColoRamShadow *s;

        colo_ram_record_get(in + pos, &rec);
        pos += COLO_RAM_RECORD_SIZE;
        /*
         * A block added since COLO started has no shadow, nor have pages
         * beyond what it had then: as they are.
         */
        s = rec.block < d->nblocks ? &d->blocks[rec.block] : NULL;
        if (s && (!s->pages || rec.offset > s->size ||
                  ((uint64_t)rec.npages << TARGET_PAGE_BITS) >
                  s->size - rec.offset)) {
            s = NULL;
        }
        if (rec.kind == COLO_RAM_ZERO || !s) {
            uint64_t bytes = (uint64_t)rec.npages << TARGET_PAGE_BITS;

            colo_raw_run_flush(&pass.run, out);
            colo_buf_append(out, in + pos - COLO_RAM_RECORD_SIZE,
                            COLO_RAM_RECORD_SIZE);
            if (rec.kind == COLO_RAM_PAGES) {
                colo_buf_append(out, in + pos, bytes);
                pos += bytes;
            }
            if (s) {
                /* Zero pages are cheap as they are: not learnt. */
                bitmap_clear(s->known, rec.offset >> TARGET_PAGE_BITS,
                             rec.npages);
                bitmap_set(s->recorded, rec.offset >> TARGET_PAGE_BITS,
                           rec.npages);
            }
            continue;
        }
        for (uint32_t i = 0; i < rec.npages; i++) {
            uint64_t offset = rec.offset + ((uint64_t)i << TARGET_PAGE_BITS);

            colo_ram_delta_page(s, &pass, rec.block, offset,
                                in + pos + ((size_t)i << TARGET_PAGE_BITS));
        }
        pos += (size_t)rec.npages << TARGET_PAGE_BITS;
    }
    colo_raw_run_flush(&pass.run, out);

    /* The next checkpoint has no record of anything yet. */
    colo_ram_delta_clear(d, in, len, false);
    trace_colo_ram_delta_encode(pass.deltas, pass.unchanged, pass.learnt, len,
                                out->len - out_start,
                                qemu_clock_get_us(QEMU_CLOCK_REALTIME) -
                                start);
    return true;
}

bool colo_ram_delta_check(RAMBlock *rb, const ColoRamRecord *rec,
                          const uint8_t *p, size_t avail, size_t *used,
                          Error **errp)
{
    uint8_t scratch[TARGET_PAGE_SIZE];
    uint32_t base_crc, n;

    if (rec->npages != 1) {
        error_setg(errp, "COLO checkpoint: a delta of %u pages",
                   rec->npages);
        return false;
    }
    if (avail < 8) {
        error_setg(errp, "COLO checkpoint: RAM delta truncated");
        return false;
    }
    base_crc = ldl_be_p(p);
    n = ldl_be_p(p + 4);
    if (n > avail - 8 || n > TARGET_PAGE_SIZE) {
        error_setg(errp, "COLO checkpoint: RAM delta truncated");
        return false;
    }
    /* Whether it decodes does not depend on what it is applied to. */
    if (xbzrle_decode_buffer((uint8_t *)p + 8, n, scratch,
                             TARGET_PAGE_SIZE) < 0) {
        error_setg(errp, "COLO checkpoint: the delta of page 0x%" PRIx64
                   " of RAM block %s does not decode", rec->offset,
                   rb->idstr);
        return false;
    }
    if (colo_msg_crc(0, rb->host + rec->offset, TARGET_PAGE_SIZE) !=
        base_crc) {
        error_setg(errp, "COLO checkpoint: page 0x%" PRIx64 " of RAM block "
                   "%s is not the one the primary changed", rec->offset,
                   rb->idstr);
        return false;
    }
    *used = 8 + n;
    return true;
}

size_t colo_ram_delta_apply(RAMBlock *rb, const ColoRamRecord *rec,
                            const uint8_t *p)
{
    uint32_t n = ldl_be_p(p + 4);
    int ret = xbzrle_decode_buffer((uint8_t *)p + 8, n,
                                   rb->host + rec->offset, TARGET_PAGE_SIZE);

    /* colo_ram_delta_check() decoded it already. */
    assert(ret >= 0);
    return 8 + n;
}
