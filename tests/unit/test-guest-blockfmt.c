/*
 * Unit tests of the test guest's disk block format (tests/guest/blockfmt.c),
 * which the disk writer and the host-side verifier share: a verifier that
 * misclassified a block would hide lost or torn writes.
 *
 * unit-test-sources: tests/guest/blockfmt.c
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include <check.h>
#include "check-run.h"
#include <stdlib.h>
#include <string.h>

#include "guest/blockfmt.h"

static uint8_t buf[BLOCKFMT_SIZE];

START_TEST(test_fill_then_check_is_valid)
{
    static const uint64_t seqs[] = { 1, 2, 4095, 1ull << 40, UINT64_MAX };

    for (size_t i = 0; i < sizeof(seqs) / sizeof(seqs[0]); i++) {
        uint64_t seq = 0;

        blockfmt_fill(buf, seqs[i]);
        ck_assert_int_eq(blockfmt_check(buf, &seq), BLOCKFMT_VALID);
        ck_assert_uint_eq(seq, seqs[i]);
    }
}
END_TEST

START_TEST(test_zeroed_block_is_empty)
{
    uint64_t seq = 99;

    memset(buf, 0, sizeof(buf));
    ck_assert_int_eq(blockfmt_check(buf, &seq), BLOCKFMT_EMPTY);
    ck_assert_uint_eq(seq, 0);
}
END_TEST

/* Any single flipped byte after the magic must make the block torn. */
START_TEST(test_any_corrupted_byte_is_torn)
{
    for (size_t off = BLOCKFMT_MAGIC_LEN; off < BLOCKFMT_SIZE; off += 7) {
        blockfmt_fill(buf, 1234);
        buf[off] ^= 0x5a;
        ck_assert_msg(blockfmt_check(buf, NULL) == BLOCKFMT_TORN,
                      "byte %zu flipped but not detected", off);
    }
}
END_TEST

/* A write torn at a sector boundary: new head, old tail. */
START_TEST(test_half_written_block_is_torn)
{
    uint8_t old[BLOCKFMT_SIZE];

    blockfmt_fill(old, 7);
    for (size_t cut = 512; cut < BLOCKFMT_SIZE; cut += 512) {
        blockfmt_fill(buf, 7 + 4096);
        memcpy(buf + cut, old + cut, BLOCKFMT_SIZE - cut);
        ck_assert_int_eq(blockfmt_check(buf, NULL), BLOCKFMT_TORN);
    }
}
END_TEST

START_TEST(test_different_seqs_have_different_payloads)
{
    uint8_t other[BLOCKFMT_SIZE];

    blockfmt_fill(buf, 10);
    blockfmt_fill(other, 11);
    ck_assert_mem_ne(buf + BLOCKFMT_PAYLOAD_OFF, other + BLOCKFMT_PAYLOAD_OFF,
                     BLOCKFMT_CSUM_OFF - BLOCKFMT_PAYLOAD_OFF);
}
END_TEST

START_TEST(test_index_wraps_around_the_device)
{
    ck_assert_uint_eq(blockfmt_index(1, 8), 0);
    ck_assert_uint_eq(blockfmt_index(8, 8), 7);
    ck_assert_uint_eq(blockfmt_index(9, 8), 0);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("guest-blockfmt");
    TCase *tc = tcase_create("core");

    tcase_add_test(tc, test_fill_then_check_is_valid);
    tcase_add_test(tc, test_zeroed_block_is_empty);
    tcase_add_test(tc, test_any_corrupted_byte_is_torn);
    tcase_add_test(tc, test_half_written_block_is_torn);
    tcase_add_test(tc, test_different_seqs_have_different_payloads);
    tcase_add_test(tc, test_index_wraps_around_the_device);
    suite_add_tcase(s, tc);
    return check_run(s);
}
