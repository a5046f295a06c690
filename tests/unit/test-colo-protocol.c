/*
 * Unit tests of the COLO message framing (migration/colo/protocol.c):
 * every message that is torn, garbled or not the one expected must be
 * refused with an error, never taken for another.
 *
 * protocol.c talks to a QEMUFile; here a QEMUFile is an in-memory pipe
 * (the functions below), so the real encoder, decoder and checks run.
 *
 * unit-test-sources: migration/colo/protocol.c @BUILD@/qemu/trace/trace-migration_colo.c
 * unit-test-qemu: yes
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include <check.h>
#include "check-run.h"
#include "qemu/bswap.h"
#include "qemu/crc32c.h"
#include "qemu/units.h"
#include "qapi/error.h"
#include "migration/qemu-file.h"
#include "migration/colo/heartbeat.h"
#include "migration/colo/protocol.h"

/*
 * protocol.c tells the heartbeat when it waits on the peer and when the
 * peer is heard: count both, so that a long message is seen to report
 * its progress chunk by chunk.
 */
static int waits_open;
static uint64_t heard;

void colo_heartbeat_wait_begin(void)
{
    waits_open++;
}

void colo_heartbeat_listen_begin(void)
{
    waits_open++;
}

void colo_heartbeat_wait_end(void)
{
    waits_open--;
}

void colo_heartbeat_heard(void)
{
    heard++;
}

/*
 * A QEMUFile that writes to and reads from one memory buffer; after what
 * a reader gets @gen_len bytes of gen_byte()'s pattern inserted at offset
 * @gen_at of what was written (a stream too large to hold twice).
 */
struct QEMUFile {
    GByteArray *data;
    size_t pos;
    uint64_t gen_len;
    uint64_t gen_pos;
    size_t gen_at;              /* where in @data the generated part sits */
    int error;
};

/* The generated stream: varies with the high bits of the offset too. */
static uint8_t gen_byte(uint64_t off)
{
    return (off >> 16) * 31 + (off >> 32) * 7 + 1;
}

static QEMUFile *pipe_new(void)
{
    QEMUFile *f = g_new0(QEMUFile, 1);

    f->data = g_byte_array_new();
    return f;
}

static void pipe_free(QEMUFile *f)
{
    g_byte_array_unref(f->data);
    g_free(f);
}

void qemu_put_buffer(QEMUFile *f, const uint8_t *buf, size_t size)
{
    g_byte_array_append(f->data, buf, size);
}

void qemu_put_buffer_async(QEMUFile *f, const uint8_t *buf, size_t size,
                           bool may_free)
{
    g_byte_array_append(f->data, buf, size);
}

int qemu_fflush(QEMUFile *f)
{
    return f->error;
}

size_t qemu_get_buffer(QEMUFile *f, uint8_t *buf, size_t size)
{
    size_t n = 0;

    while (n < size) {
        bool gen_left = f->gen_pos < f->gen_len;
        size_t end = gen_left && f->pos <= f->gen_at ? f->gen_at
                                                     : f->data->len;
        size_t take;

        if (gen_left && f->pos == f->gen_at) {
            /* The generated part, in runs of one value (64 KiB each). */
            uint64_t run = MIN(0x10000 - (f->gen_pos & 0xffff),
                               f->gen_len - f->gen_pos);

            run = MIN(run, size - n);
            memset(buf + n, gen_byte(f->gen_pos), run);
            f->gen_pos += run;
            n += run;
            continue;
        }
        take = MIN(size - n, end - f->pos);
        if (!take) {
            break;
        }
        memcpy(buf + n, f->data->data + f->pos, take);
        f->pos += take;
        n += take;
    }
    return n;
}

int qemu_file_get_error_obj(QEMUFile *f, Error **errp)
{
    if (f->error) {
        error_setg_errno(errp, -f->error, "pipe error");
    }
    return f->error;
}

int qemu_file_get_error(QEMUFile *f)
{
    return f->error;
}

static ColoBuf payload_buf;
static ColoBuf *payload = &payload_buf;

static void setup(void)
{
}

static void teardown(void)
{
    colo_buf_free(payload);
}

static void send_checkpoint(QEMUFile *f, uint64_t seq, size_t len)
{
    g_autofree uint8_t *body = g_malloc(len);
    struct iovec iov[2] = {
        { .iov_base = body, .iov_len = len / 2 },
        { .iov_base = body + len / 2, .iov_len = len - len / 2 },
    };

    for (size_t i = 0; i < len; i++) {
        body[i] = i * 7 + seq;
    }
    ck_assert(colo_msg_send(f, COLO_MSG_CHECKPOINT, seq, iov, 2,
                            &error_abort));
}

START_TEST(test_round_trip)
{
    QEMUFile *f = pipe_new();
    ColoMsgHeader hdr;

    send_checkpoint(f, 7, 10000);
    ck_assert(colo_msg_send_empty(f, COLO_MSG_RECEIVED, 7, &error_abort));
    ck_assert_uint_eq(f->data->len, 2 * (COLO_MSG_HEADER_SIZE +
                                        COLO_MSG_TRAILER_SIZE) + 10000);

    ck_assert(colo_msg_recv(f, &hdr, payload, UINT64_MAX, &error_abort));
    ck_assert_int_eq(hdr.type, COLO_MSG_CHECKPOINT);
    ck_assert_uint_eq(hdr.seq, 7);
    ck_assert_uint_eq(payload->len, 10000);
    ck_assert_uint_eq(payload->data[9999], (uint8_t)(9999 * 7 + 7));
    ck_assert(colo_msg_expect(f, COLO_MSG_RECEIVED, 7, payload,
                              &error_abort));
    ck_assert_uint_eq(payload->len, 0);
    pipe_free(f);
}
END_TEST

/*
 * The trailer's checksum is CRC-32C, the same value whichever way the
 * host computes it, and continued across parts.
 */
START_TEST(test_crc32c)
{
    static const char check[] = "123456789";
    g_autofree uint8_t *data = g_malloc(100003);

    /* The standard check value of CRC-32C. */
    ck_assert_uint_eq(colo_msg_crc(0, check, 9), 0xe3069283);
    for (size_t i = 0; i < 100003; i++) {
        data[i] = i * 131 + (i >> 8);
    }
    ck_assert_uint_eq(colo_msg_crc(0, data, 100003),
                      crc32c(0xffffffff, data, 100003));
    ck_assert_uint_eq(colo_msg_crc(colo_msg_crc(0, data, 4097), data + 4097,
                                   100003 - 4097),
                      colo_msg_crc(0, data, 100003));
    ck_assert_uint_eq(colo_msg_crc(0, data, 0), 0);
    /* Around the runs summed side by side, at any alignment. */
    for (size_t len = 760; len < 1560; len += 7) {
        for (size_t off = 0; off < 8; off += 3) {
            ck_assert_uint_eq(colo_msg_crc(0, data + off, len),
                              crc32c(0xffffffff, data + off, len));
        }
    }
}
END_TEST

/*
 * A message of several MiB reports progress to the heartbeat chunk by
 * chunk on both ends (a long checkpoint is not silence), and every wait
 * on the peer that begins also ends, whatever the outcome.
 */
START_TEST(test_long_message_is_heard_while_it_moves)
{
    QEMUFile *f = pipe_new();
    ColoMsgHeader hdr;

    heard = 0;
    /* Two parts of 2.5 MiB, each flushed every 64 KiB. */
    send_checkpoint(f, 3, 5 * MiB + 1);
    ck_assert_uint_ge(heard, 78);
    ck_assert_int_eq(waits_open, 0);
    heard = 0;
    ck_assert(colo_msg_recv(f, &hdr, payload, UINT64_MAX, &error_abort));
    ck_assert_uint_ge(heard, 80);
    ck_assert_int_eq(waits_open, 0);
    /* Nothing more: the receive fails, and its wait is closed too. */
    ck_assert(!colo_msg_recv(f, &hdr, payload, UINT64_MAX, NULL));
    ck_assert_int_eq(waits_open, 0);
    pipe_free(f);
}
END_TEST

/* Flipping any single byte of a message makes it refused. */
START_TEST(test_any_flipped_byte_is_refused)
{
    QEMUFile *f = pipe_new();
    size_t len;

    send_checkpoint(f, 3, 300);
    len = f->data->len;
    for (size_t i = 0; i < len; i++) {
        ColoMsgHeader hdr;
        Error *err = NULL;

        f->pos = 0;
        f->data->data[i] ^= 0x10;
        ck_assert_msg(!colo_msg_recv(f, &hdr, payload, UINT64_MAX, &err),
                      "byte %zu flipped, message accepted", i);
        ck_assert_ptr_nonnull(err);
        error_free(err);
        f->data->data[i] ^= 0x10;
    }
    pipe_free(f);
}
END_TEST

/* A message cut anywhere is refused as torn, never read short. */
START_TEST(test_torn_message_is_refused)
{
    QEMUFile *f = pipe_new();
    size_t full;

    send_checkpoint(f, 1, 5000);
    full = f->data->len;
    for (size_t cut = 0; cut < full; cut += 97) {
        ColoMsgHeader hdr;
        Error *err = NULL;

        f->pos = 0;
        g_byte_array_set_size(f->data, cut);
        ck_assert(!colo_msg_recv(f, &hdr, payload, UINT64_MAX, &err));
        ck_assert_ptr_nonnull(err);
        error_free(err);
        g_byte_array_set_size(f->data, 0);
        send_checkpoint(f, 1, 5000);
    }
    /* Every cut in the payload's last bytes and its trailer, too. */
    for (size_t cut = full - COLO_MSG_TRAILER_SIZE - 8; cut < full; cut++) {
        ColoMsgHeader hdr;
        Error *err = NULL;

        f->pos = 0;
        g_byte_array_set_size(f->data, cut);
        ck_assert(!colo_msg_recv(f, &hdr, payload, UINT64_MAX, &err));
        ck_assert(strstr(error_get_pretty(err), "torn"));
        error_free(err);
        g_byte_array_set_size(f->data, 0);
        send_checkpoint(f, 1, 5000);
    }
    pipe_free(f);
}
END_TEST

START_TEST(test_garbage_is_refused)
{
    QEMUFile *f = pipe_new();
    uint8_t junk[COLO_MSG_HEADER_SIZE];
    ColoMsgHeader hdr;
    Error *err = NULL;

    for (size_t i = 0; i < sizeof(junk); i++) {
        junk[i] = i * 13 + 5;
    }
    qemu_put_buffer(f, junk, sizeof(junk));
    ck_assert(!colo_msg_recv(f, &hdr, payload, UINT64_MAX, &err));
    ck_assert(strstr(error_get_pretty(err), "magic"));
    error_free(err);
    pipe_free(f);
}
END_TEST

/* A well-formed header with a bound-breaking length is refused. */
START_TEST(test_header_fields_are_checked)
{
    uint8_t buf[COLO_MSG_HEADER_SIZE];
    ColoMsgHeader hdr = { .type = COLO_MSG_RECEIVED, .seq = 1, .length = 1 };
    ColoMsgHeader out;
    Error *err = NULL;

    /* Acks carry no payload. */
    colo_msg_header_encode(buf, &hdr);
    ck_assert(!colo_msg_header_decode(buf, &out, &err));
    error_free(err);
    err = NULL;

    hdr.type = COLO_MSG_ERROR;
    hdr.length = colo_msg_max_length(COLO_MSG_ERROR) + 1;
    colo_msg_header_encode(buf, &hdr);
    ck_assert(!colo_msg_header_decode(buf, &out, &err));
    error_free(err);
    err = NULL;

    /* The reserved field must be 0, even under a valid checksum. */
    hdr.length = 10;
    colo_msg_header_encode(buf, &hdr);
    stl_be_p(buf + 24, 1);
    stl_be_p(buf + 28, colo_msg_crc(0, buf, 28));
    ck_assert(!colo_msg_header_decode(buf, &out, &err));
    ck_assert(strstr(error_get_pretty(err), "reserved"));
    error_free(err);
    err = NULL;

    colo_msg_header_encode(buf, &hdr);
    ck_assert(colo_msg_header_decode(buf, &out, &error_abort));
    ck_assert_int_eq(out.type, COLO_MSG_ERROR);
    ck_assert_uint_eq(out.length, 10);
}
END_TEST

/* The exchange moves only forward: wrong type or checkpoint is refused. */
START_TEST(test_expect_refuses_other_messages)
{
    QEMUFile *f = pipe_new();
    Error *err = NULL;
    struct iovec why = { .iov_base = (void *)"disk full", .iov_len = 9 };

    ck_assert(colo_msg_send_empty(f, COLO_MSG_LOADED, 4, &error_abort));
    ck_assert(!colo_msg_expect(f, COLO_MSG_RECEIVED, 4, payload, &err));
    error_free(err);
    err = NULL;

    ck_assert(colo_msg_send_empty(f, COLO_MSG_RECEIVED, 3, &error_abort));
    ck_assert(!colo_msg_expect(f, COLO_MSG_RECEIVED, 4, payload, &err));
    error_free(err);
    err = NULL;

    /* The peer's own error is reported as such, with its reason. */
    ck_assert(colo_msg_send(f, COLO_MSG_ERROR, 4, &why, 1, &error_abort));
    ck_assert(!colo_msg_expect(f, COLO_MSG_RECEIVED, 4, payload, &err));
    ck_assert(strstr(error_get_pretty(err), "disk full"));
    error_free(err);
    pipe_free(f);
}
END_TEST

START_TEST(test_channel_error_is_reported)
{
    QEMUFile *f = pipe_new();
    Error *err = NULL;

    f->error = -EPIPE;
    ck_assert(!colo_msg_send_empty(f, COLO_MSG_LOADED, 1, &err));
    ck_assert_ptr_nonnull(err);
    error_free(err);
    pipe_free(f);
}
END_TEST

/*
 * A checkpoint of more than 4 GiB (a 4 GiB guest's RAM plus device
 * state) is received whole, and the stream stays in step after it: no
 * length is cut to 32 bits on the way.
 */
START_TEST(test_checkpoint_over_4gib)
{
    const uint64_t len = 4 * GiB + 64 * KiB + 3;
    g_autofree uint8_t *chunk = g_malloc(64 * KiB);
    QEMUFile *f = pipe_new();
    uint8_t buf[COLO_MSG_HEADER_SIZE];
    ColoMsgHeader hdr = { .type = COLO_MSG_CHECKPOINT, .seq = 9,
                          .length = len };
    QEMUFile *tail = pipe_new();
    uint8_t trailer[COLO_MSG_TRAILER_SIZE];
    uint32_t crc = 0;

    /* The header, the generated payload, and its checksum. */
    f->gen_len = len;
    for (uint64_t off = 0; off < len; off += 64 * KiB) {
        size_t n = qemu_get_buffer(f, chunk, MIN(64 * KiB, len - off));

        crc = colo_msg_crc(crc, chunk, n);
    }
    colo_msg_header_encode(buf, &hdr);
    qemu_put_buffer(f, buf, sizeof(buf));
    stl_be_p(trailer, crc);
    qemu_put_buffer(f, trailer, sizeof(trailer));
    f->gen_at = sizeof(buf);
    f->gen_pos = 0;

    ck_assert(colo_msg_recv(f, &hdr, payload, UINT64_MAX, &error_abort));
    ck_assert_uint_eq(hdr.length, len);
    ck_assert_uint_eq(payload->len, len);
    ck_assert_uint_eq(payload->data[0], gen_byte(0));
    ck_assert_uint_eq(payload->data[4 * GiB + 5], gen_byte(4 * GiB + 5));
    ck_assert_uint_eq(payload->data[len - 1], gen_byte(len - 1));
    ck_assert_uint_eq(f->gen_pos, len);

    /* The next message is read from where the checkpoint ended. */
    ck_assert(colo_msg_send_empty(tail, COLO_MSG_SHUTDOWN, 9,
                                  &error_abort));
    g_byte_array_append(f->data, tail->data->data, tail->data->len);
    ck_assert(colo_msg_recv(f, &hdr, payload, UINT64_MAX, &error_abort));
    ck_assert_int_eq(hdr.type, COLO_MSG_SHUTDOWN);
    pipe_free(tail);
    pipe_free(f);
}
END_TEST

/* Appending past 4 GiB keeps every byte (the primary's capture buffer). */
START_TEST(test_buffer_grows_past_4gib)
{
    const size_t big = 4 * GiB + 4096;
    /* Untouched anonymous memory reads as zeros without being allocated. */
    uint8_t *zeros = mmap(NULL, big, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS,
                          -1, 0);
    ColoBuf b = { 0 };

    ck_assert(zeros != MAP_FAILED);
    colo_buf_append(&b, "head", 4);
    colo_buf_append(&b, zeros, big);
    colo_buf_append(&b, "tail", 4);
    ck_assert_uint_eq(b.len, big + 8);
    ck_assert(!memcmp(b.data, "head", 4));
    ck_assert(!memcmp(b.data + 4 + big, "tail", 4));
    ck_assert_uint_eq(b.data[4 + 4 * GiB], 0);
    munmap(zeros, big);
    colo_buf_free(&b);
}
END_TEST

/*
 * A checkpoint longer than this VM's can be is refused from its header,
 * before anything is allocated for it; so is any CHECKPOINT where only a
 * control message may come.
 */
START_TEST(test_checkpoint_length_is_bounded)
{
    QEMUFile *f = pipe_new();
    uint8_t buf[COLO_MSG_HEADER_SIZE];
    ColoMsgHeader hdr = { .type = COLO_MSG_CHECKPOINT, .seq = 2,
                          .length = 512 * GiB };
    Error *err = NULL;

    colo_msg_header_encode(buf, &hdr);
    qemu_put_buffer(f, buf, sizeof(buf));
    ck_assert(!colo_msg_recv(f, &hdr, payload, 1 * GiB, &err));
    ck_assert(strstr(error_get_pretty(err), "longer"));
    ck_assert_ptr_null(payload->data);
    error_free(err);
    err = NULL;

    f->pos = 0;
    ck_assert(!colo_msg_expect(f, COLO_MSG_RECEIVED, 2, payload, &err));
    ck_assert(strstr(error_get_pretty(err), "longer"));
    ck_assert_ptr_null(payload->data);
    error_free(err);
    pipe_free(f);
}
END_TEST

/*
 * Pipelined acknowledgements: the primary goes on at RECEIVED, the
 * secondary's LOADED of a checkpoint comes later, in order, never for a
 * checkpoint not received; and no more than one checkpoint goes out
 * beyond the one the secondary is loading.
 */
START_TEST(test_acks_pipelined)
{
    ColoAcks a = { 0 };
    Error *err = NULL;

    ck_assert(colo_acks_may_send(&a));
    colo_acks_sent(&a, 1);
    /* Nothing may go out before RECEIVED of the last one. */
    ck_assert(!colo_acks_may_send(&a));
    /* LOADED before RECEIVED is out of order. */
    ck_assert(!colo_acks_take(&a, COLO_MSG_LOADED, 1, &err));
    error_free(err);
    err = NULL;
    ck_assert(colo_acks_take(&a, COLO_MSG_RECEIVED, 1, &error_abort));
    /* Checkpoint 1 loads while 2 goes out. */
    ck_assert(colo_acks_may_send(&a));
    colo_acks_sent(&a, 2);
    ck_assert(colo_acks_take(&a, COLO_MSG_LOADED, 1, &error_abort));
    ck_assert(colo_acks_take(&a, COLO_MSG_RECEIVED, 2, &error_abort));
    colo_acks_sent(&a, 3);
    ck_assert(colo_acks_take(&a, COLO_MSG_RECEIVED, 3, &error_abort));
    /* Loaded at 1, received 3: two loads behind, 4 must wait. */
    ck_assert(!colo_acks_may_send(&a));
    ck_assert(colo_acks_take(&a, COLO_MSG_LOADED, 2, &error_abort));
    ck_assert(colo_acks_may_send(&a));
}
END_TEST

/* An acknowledgement repeated, skipped or from the future is refused. */
START_TEST(test_acks_refuse_out_of_order)
{
    ColoAcks a = { 0 };
    Error *err = NULL;

    colo_acks_sent(&a, 1);
    ck_assert(!colo_acks_take(&a, COLO_MSG_RECEIVED, 2, &err));
    ck_assert(strstr(error_get_pretty(err), "unexpected received 2"));
    error_free(err);
    err = NULL;
    ck_assert(colo_acks_take(&a, COLO_MSG_RECEIVED, 1, &error_abort));
    ck_assert(!colo_acks_take(&a, COLO_MSG_RECEIVED, 1, &err));
    error_free(err);
    err = NULL;
    ck_assert(colo_acks_take(&a, COLO_MSG_LOADED, 1, &error_abort));
    ck_assert(!colo_acks_take(&a, COLO_MSG_LOADED, 1, &err));
    error_free(err);
    err = NULL;
    ck_assert(!colo_acks_take(&a, COLO_MSG_HEARTBEAT, 1, &err));
    error_free(err);
    ck_assert_uint_eq(a.received, 1);
    ck_assert_uint_eq(a.loaded, 1);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("colo-protocol");
    TCase *tc = tcase_create("framing");

    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_round_trip);
    tcase_add_test(tc, test_crc32c);
    tcase_add_test(tc, test_long_message_is_heard_while_it_moves);
    tcase_add_test(tc, test_any_flipped_byte_is_refused);
    tcase_add_test(tc, test_torn_message_is_refused);
    tcase_add_test(tc, test_garbage_is_refused);
    tcase_add_test(tc, test_header_fields_are_checked);
    tcase_add_test(tc, test_expect_refuses_other_messages);
    tcase_add_test(tc, test_channel_error_is_reported);
    tcase_add_test(tc, test_checkpoint_length_is_bounded);
    tcase_add_test(tc, test_acks_pipelined);
    tcase_add_test(tc, test_acks_refuse_out_of_order);
    suite_add_tcase(s, tc);
    /* Each takes 4 GiB of memory and some seconds. */
    tc = tcase_create("large");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_checkpoint_over_4gib);
    tcase_add_test(tc, test_buffer_grows_past_4gib);
    suite_add_tcase(s, tc);
    return check_run(s);
}
