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
#include "qapi/error.h"
#include "migration/qemu-file.h"
#include "migration/colo/protocol.h"

/* A QEMUFile that writes to and reads from one memory buffer. */
struct QEMUFile {
    GByteArray *data;
    size_t pos;
    int error;
};

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

int qemu_fflush(QEMUFile *f)
{
    return f->error;
}

size_t qemu_get_buffer(QEMUFile *f, uint8_t *buf, size_t size)
{
    size_t n = MIN(size, f->data->len - f->pos);

    memcpy(buf, f->data->data + f->pos, n);
    f->pos += n;
    return n;
}

int qemu_file_get_error_obj(QEMUFile *f, Error **errp)
{
    if (f->error) {
        error_setg_errno(errp, -f->error, "pipe error");
    }
    return f->error;
}

static GByteArray *payload;

static void setup(void)
{
    payload = g_byte_array_new();
}

static void teardown(void)
{
    g_byte_array_unref(payload);
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
    ck_assert_uint_eq(f->data->len, 2 * COLO_MSG_HEADER_SIZE + 10000);

    ck_assert(colo_msg_recv(f, &hdr, payload, &error_abort));
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
        ck_assert_msg(!colo_msg_recv(f, &hdr, payload, &err),
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
        ck_assert(!colo_msg_recv(f, &hdr, payload, &err));
        ck_assert_ptr_nonnull(err);
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
    ck_assert(!colo_msg_recv(f, &hdr, payload, &err));
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

    hdr.length = 10;
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

int main(void)
{
    Suite *s = suite_create("colo-protocol");
    TCase *tc = tcase_create("framing");

    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_round_trip);
    tcase_add_test(tc, test_any_flipped_byte_is_refused);
    tcase_add_test(tc, test_torn_message_is_refused);
    tcase_add_test(tc, test_garbage_is_refused);
    tcase_add_test(tc, test_header_fields_are_checked);
    tcase_add_test(tc, test_expect_refuses_other_messages);
    tcase_add_test(tc, test_channel_error_is_reported);
    suite_add_tcase(s, tc);
    return check_run(s);
}
