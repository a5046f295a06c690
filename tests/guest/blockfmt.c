/*
 * COLO test guest: on-disk block format (see blockfmt.h).
 */
#include "blockfmt.h"

#include <string.h>

static void put_le64(uint8_t *p, uint64_t v)
{
    for (unsigned i = 0; i < 8; i++) {
        p[i] = (uint8_t)(v >> (8 * i));
    }
}

static uint64_t get_le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (unsigned i = 0; i < 8; i++) {
        v |= (uint64_t)p[i] << (8 * i);
    }
    return v;
}

uint64_t blockfmt_fnv1a64(const void *data, size_t len)
{
    const uint8_t *p = data;
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

/* xorshift64* seeded from seq (never a zero state). */
static uint64_t prng_seed(uint64_t seq)
{
    uint64_t s = seq * 0x9e3779b97f4a7c15ull ^ 0xd1b54a32d192ed03ull;
    return s ? s : 0x2545f4914f6cdd1dull;
}

static uint64_t prng_next(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545f4914f6cdd1dull;
}

static void fill_payload(uint8_t *p, uint64_t seq)
{
    uint64_t s = prng_seed(seq);
    for (unsigned off = BLOCKFMT_PAYLOAD_OFF; off < BLOCKFMT_CSUM_OFF; off += 8) {
        put_le64(p + off, prng_next(&s));
    }
}

void blockfmt_fill(uint8_t buf[BLOCKFMT_SIZE], uint64_t seq)
{
    memcpy(buf, BLOCKFMT_MAGIC, BLOCKFMT_MAGIC_LEN);
    put_le64(buf + BLOCKFMT_SEQ_OFF, seq);
    fill_payload(buf, seq);
    put_le64(buf + BLOCKFMT_CSUM_OFF, blockfmt_fnv1a64(buf, BLOCKFMT_CSUM_OFF));
}

enum blockfmt_state blockfmt_check(const uint8_t buf[BLOCKFMT_SIZE],
                                   uint64_t *seq)
{
    if (memcmp(buf, BLOCKFMT_MAGIC, BLOCKFMT_MAGIC_LEN) != 0) {
        if (seq) {
            *seq = 0;
        }
        return BLOCKFMT_EMPTY;
    }
    uint64_t s = get_le64(buf + BLOCKFMT_SEQ_OFF);
    if (seq) {
        *seq = s;
    }
    if (s == 0) {
        return BLOCKFMT_TORN;
    }
    if (get_le64(buf + BLOCKFMT_CSUM_OFF) !=
        blockfmt_fnv1a64(buf, BLOCKFMT_CSUM_OFF)) {
        return BLOCKFMT_TORN;
    }
    /* The checksum matches: also make sure the payload belongs to seq. */
    uint64_t st = prng_seed(s);
    for (unsigned off = BLOCKFMT_PAYLOAD_OFF; off < BLOCKFMT_CSUM_OFF; off += 8) {
        if (get_le64(buf + off) != prng_next(&st)) {
            return BLOCKFMT_TORN;
        }
    }
    return BLOCKFMT_VALID;
}

const char *blockfmt_state_name(enum blockfmt_state st)
{
    switch (st) {
    case BLOCKFMT_EMPTY:
        return "empty";
    case BLOCKFMT_VALID:
        return "valid";
    case BLOCKFMT_TORN:
        return "torn";
    }
    return "?";
}
