/*
 * COLO test guest: on-disk block format shared by the guest agent's disk
 * writer and the host-side verifier.  Plain C99 + <stdint.h>, no guest-only
 * or host-only includes.
 *
 * One block is BLOCKFMT_SIZE (4096) bytes, all integers little-endian:
 *
 *   offset  size  field
 *        0     8  magic "COLOBLK1"
 *        8     8  seq (u64, >= 1)
 *       16  4072  payload: xorshift64* stream seeded from seq
 *     4088     8  checksum: FNV-1a 64 over bytes 0..4087
 *
 * Sequence number seq (1, 2, 3, ...) lives at block index (seq - 1) % nblocks
 * where nblocks = device size / 4096.
 */
#ifndef COLO_BLOCKFMT_H
#define COLO_BLOCKFMT_H

#include <stddef.h>
#include <stdint.h>

#define BLOCKFMT_SIZE 4096u
#define BLOCKFMT_MAGIC "COLOBLK1"
#define BLOCKFMT_MAGIC_LEN 8u
#define BLOCKFMT_SEQ_OFF 8u
#define BLOCKFMT_PAYLOAD_OFF 16u
#define BLOCKFMT_CSUM_OFF (BLOCKFMT_SIZE - 8u)

enum blockfmt_state {
    BLOCKFMT_EMPTY = 0, /* no magic: never written (or overwritten by others) */
    BLOCKFMT_VALID = 1, /* magic, checksum and payload all match seq */
    BLOCKFMT_TORN = 2,  /* magic present but checksum or payload wrong */
};

/* Fill buf with the block for seq (seq >= 1). */
void blockfmt_fill(uint8_t buf[BLOCKFMT_SIZE], uint64_t seq);

/*
 * Classify buf.  *seq (if seq != NULL) receives the header's seq for VALID
 * and TORN blocks (for TORN it may be garbage) and 0 for EMPTY.
 */
enum blockfmt_state blockfmt_check(const uint8_t buf[BLOCKFMT_SIZE],
                                   uint64_t *seq);

/* Block index of seq on a device of nblocks blocks (nblocks > 0, seq >= 1). */
static inline uint64_t blockfmt_index(uint64_t seq, uint64_t nblocks)
{
    return (seq - 1) % nblocks;
}

const char *blockfmt_state_name(enum blockfmt_state st);

/* FNV-1a 64 of len bytes. */
uint64_t blockfmt_fnv1a64(const void *data, size_t len);

#endif /* COLO_BLOCKFMT_H */
