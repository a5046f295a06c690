/*
 * COLO: RAM in checkpoints.
 *
 * The primary captures the pages dirtied since the previous checkpoint
 * (ram-capture.c); the secondary stages a whole checkpoint, checks it and
 * only then flushes its pages into the SVM (ram-cache.c).
 *
 * Both sides must agree on the RAM layout: the secondary describes its own
 * in its HELLO message and the primary refuses a layout that differs from
 * its own.  Blocks are then named by their index in that layout.
 *
 * Layout, all integers big-endian:
 *   be32 protocol version, be32 target page size, be32 number of blocks,
 *   then per block: u8 idstr length, idstr, be64 used length in bytes.
 *
 * RAM records of a checkpoint, each 16 bytes, big-endian:
 *   u8 kind (ColoRamRecordKind), u8 0, be16 block index, be32 page count,
 *   be64 offset of the first page in the block,
 * followed, for COLO_RAM_PAGES, by the pages' contents, and for
 * COLO_RAM_DELTA (one page) by be32 CRC-32C of the page it changes, be32
 * length and that many bytes of XBZRLE encoding (migration/xbzrle.c).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef MIGRATION_COLO_RAM_H
#define MIGRATION_COLO_RAM_H

#include "protocol.h"

#define COLO_RAM_RECORD_SIZE 16
#define COLO_RAM_DELTA_SIZE 8   /* after a DELTA record: CRC and length */

typedef enum ColoRamRecordKind {
    COLO_RAM_PAGES = 1,     /* pages, contents follow */
    COLO_RAM_ZERO = 2,      /* pages that are all zero, nothing follows */
    COLO_RAM_DELTA = 3,     /* a page's change (ram-delta.c) follows */
} ColoRamRecordKind;

typedef struct ColoRamRecord {
    ColoRamRecordKind kind;
    uint16_t block;
    uint32_t npages;
    uint64_t offset;
} ColoRamRecord;

/* Append a record's 16 bytes to @out; read them at @p. */
void colo_ram_record_put(ColoBuf *out, ColoRamRecordKind kind,
                         uint16_t block, uint64_t offset, uint32_t npages);
void colo_ram_record_get(const uint8_t *p, ColoRamRecord *rec);

typedef struct ColoRamStats {
    uint64_t pages;         /* page copies in the checkpoint */
    uint64_t zero_pages;    /* of which all zero, sent without contents */
    uint64_t precopied;     /* of which copied while the VM ran */
    uint64_t deltas;        /* secondary: of which sent as deltas */
} ColoRamStats;

/* Primary: what the capture keeps from one checkpoint to the next. */
typedef struct ColoRamCapture ColoRamCapture;

/* Append this side's RAM layout to @out. */
void colo_ram_layout_encode(GByteArray *out);

/*
 * The longest RAM part a checkpoint of this VM can have: its length field
 * and records for every page, twice (pre-copied, then dirtied again).
 */
uint64_t colo_ram_checkpoint_max(void);

/* Check that the peer's layout @buf equals this side's. */
bool colo_ram_layout_check(const uint8_t *buf, size_t len, Error **errp);

/* Primary: the capture's state, for the RAM layout of now. */
ColoRamCapture *colo_ram_capture_new(void);
void colo_ram_capture_free(ColoRamCapture *cap);

/*
 * Primary, VM running, BQL not held: of the pages dirtied since the
 * previous call, copy those @out holds a copy of over that copy, and
 * append the others to @out, as RAM records, adding them to @stats.
 * Under TCG, a pass whose dirty-log sync no vCPU thread runs within a few
 * ms copies nothing.
 */
void colo_ram_precopy(ColoRamCapture *cap, ColoBuf *out, ColoRamStats *stats);

/*
 * Primary, VM stopped, BQL held: append to @out the pages dirtied since
 * the previous call of either (or since the initial migration), and add
 * them to @stats.  This ends the checkpoint's RAM part.
 */
bool colo_ram_capture(ColoRamCapture *cap, ColoBuf *out, ColoRamStats *stats,
                      Error **errp);

/* Primary: what the secondary holds of each page (ram-delta.c). */
typedef struct ColoRamDelta ColoRamDelta;
ColoRamDelta *colo_ram_delta_new(void);
void colo_ram_delta_free(ColoRamDelta *d);

/*
 * Primary, VM running: append to @out the RAM records @in (@len bytes, as
 * the capture took them) with each page the secondary holds a known copy
 * of as a DELTA, or left out if unchanged.  Returns false, with nothing
 * appended, when @in is to be sent as it is (a large checkpoint).  Call
 * once per checkpoint, for every checkpoint sent.
 */
bool colo_ram_delta_encode(ColoRamDelta *d, const uint8_t *in, size_t len,
                           ColoBuf *out);

/*
 * Secondary: check the DELTA @rec of @rb whose @avail bytes after the
 * record start at @p, against the page as the SVM holds it; on success,
 * set *@used to the bytes it takes after the record.
 */
bool colo_ram_delta_check(RAMBlock *rb, const ColoRamRecord *rec,
                          const uint8_t *p, size_t avail, size_t *used,
                          Error **errp);

/* Secondary: apply a checked DELTA; returns the bytes after the record. */
size_t colo_ram_delta_apply(RAMBlock *rb, const ColoRamRecord *rec,
                            const uint8_t *p);

/*
 * Secondary: check RAM records @buf completely (block, bounds, lengths),
 * without touching guest memory.
 */
bool colo_ram_cache_check(const uint8_t *buf, size_t len, Error **errp);

/*
 * Secondary: flush checked RAM records into the SVM's memory.  Called
 * with the BQL held and the SVM stopped.
 */
void colo_ram_cache_flush(const uint8_t *buf, size_t len,
                          ColoRamStats *stats);

#endif
