/*
 * COLO replication channel: message framing (see protocol.h).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qemu/bswap.h"
#include "qemu/crc32c.h"
#include "qemu/iov.h"
#include "qemu/units.h"
#include "migration/qemu-file.h"
#include "heartbeat.h"
#include "protocol.h"
#include "trace.h"

/*
 * Control messages are tiny; a checkpoint carries at most the whole guest
 * RAM plus device state, which 1 TiB bounds generously while still
 * refusing lengths that could only come from garbage.
 */
#define COLO_MSG_CONTROL_MAX   (64 * KiB)
#define COLO_MSG_CHECKPOINT_MAX (1 * TiB)

/*
 * A long message moves in chunks of this size, each one counted as a
 * sign of the peer's life (heartbeat.h): a checkpoint that takes longer
 * than the silence timeout to cross is not silence.
 */
#define COLO_MSG_CHUNK (64 * KiB)

static const char *const colo_msg_names[COLO_MSG__MAX] = {
    [COLO_MSG_HELLO] = "hello",
    [COLO_MSG_CHECKPOINT] = "checkpoint",
    [COLO_MSG_RECEIVED] = "received",
    [COLO_MSG_LOADED] = "loaded",
    [COLO_MSG_SHUTDOWN] = "shutdown",
    [COLO_MSG_ERROR] = "error",
    [COLO_MSG_HEARTBEAT] = "heartbeat",
};

const char *colo_msg_name(ColoMsgType type)
{
    if (type > 0 && type < COLO_MSG__MAX) {
        return colo_msg_names[type];
    }
    return "invalid";
}

uint64_t colo_msg_max_length(ColoMsgType type)
{
    switch (type) {
    case COLO_MSG_CHECKPOINT:
        return COLO_MSG_CHECKPOINT_MAX;
    case COLO_MSG_HELLO:
    case COLO_MSG_ERROR:
        return COLO_MSG_CONTROL_MAX;
    default:
        return 0;
    }
}

bool colo_buf_resize(ColoBuf *b, size_t len, Error **errp)
{
    if (len > b->size) {
        /* Grow by half again at least, so that appends stay linear. */
        size_t size = MAX(len, b->size + b->size / 2);
        uint8_t *data = g_try_realloc(b->data, size);

        if (!data) {
            size = len;
            data = g_try_realloc(b->data, size);
        }
        if (!data) {
            error_setg(errp, "COLO: cannot allocate %zu bytes for a message",
                       len);
            return false;
        }
        b->data = data;
        b->size = size;
    }
    b->len = len;
    return true;
}

void colo_buf_append(ColoBuf *b, const void *data, size_t n)
{
    size_t len = b->len;

    if (len + n > b->size) {
        b->size = MAX(len + n, b->size + b->size / 2);
        b->data = g_realloc(b->data, b->size);
    }
    memcpy(b->data + len, data, n);
    b->len = len + n;
}

void colo_buf_free(ColoBuf *b)
{
    g_free(b->data);
    *b = (ColoBuf) { 0 };
}

#ifdef __x86_64__
/*
 * The SSE 4.2 instruction: about ten times QEMU's table, eight bytes a go.
 * One instruction's result waits for the previous one's, three cycles,
 * while the CPU could start one a cycle: so three runs of
 * COLO_CRC_STRIDE bytes are summed side by side, and joined as the CRC of
 * one run continued over the next.  Being linear, that is the first's
 * CRC moved over COLO_CRC_STRIDE zero bytes (a table per byte of it),
 * plus the next's CRC from zero.  A 4 KiB page takes 40 % of the time.
 */
#define COLO_CRC_STRIDE 256

static uint32_t colo_crc_skip_table[4][256];

static uint32_t __attribute__((target("sse4.2")))
colo_crc32c_serial(uint64_t c, const uint8_t *p, size_t len)
{
    for (; len >= 8; p += 8, len -= 8) {
        c = __builtin_ia32_crc32di(c, ldq_le_p(p));
    }
    for (; len; p++, len--) {
        c = __builtin_ia32_crc32qi(c, *p);
    }
    return c;
}

/* @c continued over COLO_CRC_STRIDE zero bytes. */
static inline uint32_t colo_crc_skip(uint32_t c)
{
    return colo_crc_skip_table[0][c & 0xff] ^
           colo_crc_skip_table[1][(c >> 8) & 0xff] ^
           colo_crc_skip_table[2][(c >> 16) & 0xff] ^
           colo_crc_skip_table[3][c >> 24];
}

static void __attribute__((constructor)) colo_crc_skip_init(void)
{
    static const uint8_t zeros[COLO_CRC_STRIDE];

    /* Constructors may run before the one that fills in the CPU's. */
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("sse4.2")) {
        return;
    }
    for (int i = 0; i < 4; i++) {
        for (uint32_t b = 0; b < 256; b++) {
            colo_crc_skip_table[i][b] =
                colo_crc32c_serial(b << (8 * i), zeros, sizeof(zeros));
        }
    }
}

static uint32_t __attribute__((target("sse4.2")))
colo_crc32c_sse42(uint32_t raw, const uint8_t *p, size_t len)
{
    uint64_t c0 = raw;

    for (; len >= 3 * COLO_CRC_STRIDE;
         p += 3 * COLO_CRC_STRIDE, len -= 3 * COLO_CRC_STRIDE) {
        uint64_t c1 = 0, c2 = 0;

        for (size_t i = 0; i < COLO_CRC_STRIDE; i += 8) {
            c0 = __builtin_ia32_crc32di(c0, ldq_le_p(p + i));
            c1 = __builtin_ia32_crc32di(c1, ldq_le_p(p + COLO_CRC_STRIDE + i));
            c2 = __builtin_ia32_crc32di(c2,
                                        ldq_le_p(p + 2 * COLO_CRC_STRIDE + i));
        }
        c0 = colo_crc_skip(c0) ^ c1;
        c0 = colo_crc_skip(c0) ^ c2;
    }
    return colo_crc32c_serial(c0, p, len);
}
#endif

uint32_t colo_msg_crc(uint32_t crc, const void *data, size_t len)
{
    const uint8_t *p = data;
    uint32_t raw = ~crc;

#ifdef __x86_64__
    if (__builtin_cpu_supports("sse4.2")) {
        return ~colo_crc32c_sse42(raw, p, len);
    }
#endif
    /* crc32c() inverts its result: undo it between parts. */
    while (len) {
        unsigned int n = MIN(len, 1 * GiB);

        raw = ~crc32c(raw, p, n);
        p += n;
        len -= n;
    }
    return ~raw;
}

static uint32_t colo_msg_header_crc(const uint8_t *buf)
{
    return colo_msg_crc(0, buf, COLO_MSG_HEADER_SIZE - 4);
}

void colo_msg_header_encode(uint8_t buf[COLO_MSG_HEADER_SIZE],
                            const ColoMsgHeader *hdr)
{
    stl_be_p(buf, COLO_MSG_MAGIC);
    stw_be_p(buf + 4, hdr->type);
    stw_be_p(buf + 6, 0);
    stq_be_p(buf + 8, hdr->seq);
    stq_be_p(buf + 16, hdr->length);
    stl_be_p(buf + 24, 0);
    stl_be_p(buf + 28, colo_msg_header_crc(buf));
}

bool colo_msg_header_decode(const uint8_t buf[COLO_MSG_HEADER_SIZE],
                            ColoMsgHeader *hdr, Error **errp)
{
    uint32_t type;

    if ((uint32_t)ldl_be_p(buf) != COLO_MSG_MAGIC) {
        error_setg(errp, "COLO message has a bad magic 0x%08x", ldl_be_p(buf));
        return false;
    }
    if ((uint32_t)ldl_be_p(buf + 28) != colo_msg_header_crc(buf)) {
        error_setg(errp, "COLO message header fails its checksum");
        return false;
    }
    type = lduw_be_p(buf + 4);
    if (type == 0 || type >= COLO_MSG__MAX) {
        error_setg(errp, "COLO message has an unknown type %u", type);
        return false;
    }
    if (lduw_be_p(buf + 6) != 0) {
        error_setg(errp, "COLO message has unknown flags 0x%x",
                   lduw_be_p(buf + 6));
        return false;
    }
    if (ldl_be_p(buf + 24) != 0) {
        error_setg(errp, "COLO message has a nonzero reserved field");
        return false;
    }
    hdr->type = type;
    hdr->seq = ldq_be_p(buf + 8);
    hdr->length = ldq_be_p(buf + 16);
    if (hdr->length > colo_msg_max_length(hdr->type)) {
        error_setg(errp, "COLO %s message is too long (%" PRIu64 " bytes)",
                   colo_msg_name(hdr->type), hdr->length);
        return false;
    }
    return true;
}

static bool colo_file_check(QEMUFile *f, const char *what, Error **errp)
{
    Error *local_err = NULL;

    if (qemu_file_get_error_obj(f, &local_err)) {
        if (local_err) {
            error_propagate_prepend(errp, local_err, "COLO %s: ", what);
        } else {
            error_setg(errp, "COLO %s: channel error", what);
        }
        return false;
    }
    return true;
}

/*
 * Write @len bytes at @data, a chunk at a time, each a sign of life, and
 * sum them into @crc on the way.  The chunks are sent from @data itself,
 * not copied into the file's buffer.
 */
static void colo_msg_put(QEMUFile *f, const uint8_t *data, size_t len,
                         uint32_t *crc)
{
    while (len && !qemu_file_get_error(f)) {
        size_t n = MIN(len, COLO_MSG_CHUNK);

        *crc = colo_msg_crc(*crc, data, n);
        qemu_put_buffer_async(f, data, n, false);
        if (len > n) {
            qemu_fflush(f);
            colo_heartbeat_heard();
        }
        data += n;
        len -= n;
    }
}

bool colo_msg_send(QEMUFile *f, ColoMsgType type, uint64_t seq,
                   const struct iovec *iov, int iovcnt, Error **errp)
{
    uint8_t buf[COLO_MSG_HEADER_SIZE];
    uint8_t trailer[COLO_MSG_TRAILER_SIZE];
    ColoMsgHeader hdr = {
        .type = type,
        .seq = seq,
        .length = iov_size(iov, iovcnt),
    };
    uint32_t crc = 0;

    colo_msg_header_encode(buf, &hdr);
    colo_heartbeat_wait_begin();
    qemu_put_buffer(f, buf, sizeof(buf));
    for (int i = 0; i < iovcnt; i++) {
        colo_msg_put(f, iov[i].iov_base, iov[i].iov_len, &crc);
    }
    stl_be_p(trailer, crc);
    qemu_put_buffer(f, trailer, sizeof(trailer));
    /* Before the parts sent in place go out of scope: flush. */
    qemu_fflush(f);
    colo_heartbeat_wait_end();
    trace_colo_msg_send(colo_msg_name(type), seq, hdr.length);
    return colo_file_check(f, "send", errp);
}

bool colo_msg_send_empty(QEMUFile *f, ColoMsgType type, uint64_t seq,
                         Error **errp)
{
    return colo_msg_send(f, type, seq, NULL, 0, errp);
}

void colo_msg_send_error(QEMUFile *f, uint64_t seq, const Error *err)
{
    const char *msg = error_get_pretty(err);
    struct iovec iov = {
        .iov_base = (void *)msg,
        .iov_len = MIN(strlen(msg), colo_msg_max_length(COLO_MSG_ERROR)),
    };

    colo_msg_send(f, COLO_MSG_ERROR, seq, &iov, 1, NULL);
}

/*
 * Read @len bytes into @data, a chunk at a time, each a sign of life, and
 * sum them into @crc (if not NULL) as they come.
 */
static size_t colo_msg_get(QEMUFile *f, uint8_t *data, size_t len,
                           uint32_t *crc)
{
    size_t done = 0;

    while (done < len) {
        size_t n = MIN(len - done, COLO_MSG_CHUNK);
        size_t got = qemu_get_buffer(f, data + done, n);

        if (crc) {
            *crc = colo_msg_crc(*crc, data + done, got);
        }
        done += got;
        if (got != n) {
            break;
        }
        colo_heartbeat_heard();
    }
    return done;
}

static bool colo_msg_do_recv(QEMUFile *f, ColoMsgHeader *hdr,
                             ColoBuf *payload, uint64_t checkpoint_max,
                             Error **errp)
{
    uint8_t buf[COLO_MSG_HEADER_SIZE];
    uint8_t trailer[COLO_MSG_TRAILER_SIZE];
    uint32_t crc = 0;
    size_t got;

    /* The header carries its own checksum. */
    got = colo_msg_get(f, buf, sizeof(buf), NULL);
    if (got != sizeof(buf)) {
        if (!colo_file_check(f, "receive", errp)) {
            return false;
        }
        error_setg(errp, "COLO channel closed by the peer");
        return false;
    }
    if (!colo_msg_header_decode(buf, hdr, errp)) {
        return false;
    }
    if (hdr->type == COLO_MSG_CHECKPOINT && hdr->length > checkpoint_max) {
        error_setg(errp, "COLO checkpoint %" PRIu64 " is longer (%" PRIu64
                   " bytes) than a checkpoint of this VM can be (%" PRIu64
                   " bytes)", hdr->seq, hdr->length, checkpoint_max);
        return false;
    }
    if ((size_t)hdr->length != hdr->length) {
        error_setg(errp, "COLO %s message is too long for this host",
                   colo_msg_name(hdr->type));
        return false;
    }
    if (!colo_buf_resize(payload, hdr->length, errp)) {
        return false;
    }
    got = colo_msg_get(f, payload->data, payload->len, &crc);
    if (got == payload->len) {
        got += qemu_get_buffer(f, trailer, sizeof(trailer));
    }
    if (got != payload->len + sizeof(trailer)) {
        if (!colo_file_check(f, "receive", errp)) {
            return false;
        }
        error_setg(errp, "COLO %s message torn after %zu of %" PRIu64
                   " bytes", colo_msg_name(hdr->type), got,
                   hdr->length + COLO_MSG_TRAILER_SIZE);
        return false;
    }
    if (ldl_be_p(trailer) != crc) {
        error_setg(errp, "COLO %s message %" PRIu64 " fails its checksum",
                   colo_msg_name(hdr->type), hdr->seq);
        return false;
    }
    trace_colo_msg_recv(colo_msg_name(hdr->type), hdr->seq, hdr->length);
    return true;
}

bool colo_msg_recv(QEMUFile *f, ColoMsgHeader *hdr, ColoBuf *payload,
                   uint64_t checkpoint_max, Error **errp)
{
    bool ok;

    colo_heartbeat_listen_begin();
    ok = colo_msg_do_recv(f, hdr, payload, checkpoint_max, errp);
    colo_heartbeat_wait_end();
    return ok;
}

bool colo_msg_expect(QEMUFile *f, ColoMsgType type, uint64_t seq,
                     ColoBuf *payload, Error **errp)
{
    ColoMsgHeader hdr;

    /* Only control messages are expected: no checkpoint is accepted. */
    if (!colo_msg_recv(f, &hdr, payload, 0, errp)) {
        return false;
    }
    if (hdr.type == COLO_MSG_ERROR && type != COLO_MSG_ERROR) {
        error_setg(errp, "COLO peer failed: %.*s", (int)payload->len,
                   (const char *)payload->data);
        return false;
    }
    if (hdr.type != type || hdr.seq != seq) {
        error_setg(errp, "COLO expected %s %" PRIu64 ", got %s %" PRIu64,
                   colo_msg_name(type), seq, colo_msg_name(hdr.type), hdr.seq);
        return false;
    }
    return true;
}

bool colo_acks_may_send(const ColoAcks *a)
{
    return a->received == a->sent && a->loaded + 1 >= a->received;
}

void colo_acks_sent(ColoAcks *a, uint64_t seq)
{
    assert(colo_acks_may_send(a) && seq == a->sent + 1);
    a->sent = seq;
}

bool colo_acks_take(ColoAcks *a, ColoMsgType type, uint64_t seq,
                    Error **errp)
{
    if (type == COLO_MSG_RECEIVED && seq == a->received + 1 &&
        seq <= a->sent) {
        a->received = seq;
        return true;
    }
    if (type == COLO_MSG_LOADED && seq == a->loaded + 1 &&
        seq <= a->received) {
        a->loaded = seq;
        return true;
    }
    error_setg(errp, "COLO: unexpected %s %" PRIu64 " (checkpoints sent %"
               PRIu64 ", received %" PRIu64 ", loaded %" PRIu64 ")",
               colo_msg_name(type), seq, a->sent, a->received, a->loaded);
    return false;
}
