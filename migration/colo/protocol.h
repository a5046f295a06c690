/*
 * COLO replication channel: message framing.
 *
 * After the initial migration, primary and secondary talk over the
 * migration connection in both directions (forward: primary to secondary;
 * return: secondary to primary) with self-delimiting, checksummed messages.
 * A message that is torn, garbled or unexpected is detected and reported,
 * never acted on.  docs/devel/migration/colo.rst describes the exchange.
 *
 * Wire format, all integers big-endian:
 *
 *   offset size  field
 *        0    4  magic "COLO"
 *        4    2  type (ColoMsgType)
 *        6    2  flags (must be 0)
 *        8    8  seq: the checkpoint the message is about (0 if none)
 *       16    8  length of the payload that follows
 *       24    4  reserved (must be 0)
 *       28    4  CRC-32C of bytes 0..27
 *       32       payload
 *   32+len    4  CRC-32C of the payload
 *
 * The payload's checksum follows it, so that a checkpoint leaves as it is
 * summed and is summed as it arrives, rather than read whole once more on
 * each side before its first byte moves or its RECEIVED can go.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef MIGRATION_COLO_PROTOCOL_H
#define MIGRATION_COLO_PROTOCOL_H

#define COLO_MSG_MAGIC 0x434f4c4fu /* "COLO" */
#define COLO_MSG_HEADER_SIZE 32
#define COLO_MSG_TRAILER_SIZE 4

/* Bumped on any incompatible change of the exchange or the formats. */
#define COLO_PROTOCOL_VERSION 4

typedef enum ColoMsgType {
    /* secondary -> primary: ready, with its RAM layout (ram.h) */
    COLO_MSG_HELLO = 1,
    /* primary -> secondary: one whole checkpoint (checkpoint body below) */
    COLO_MSG_CHECKPOINT,
    /* secondary -> primary: checkpoint @seq is held whole; it will load it */
    COLO_MSG_RECEIVED,
    /* secondary -> primary: the SVM now stands at checkpoint @seq */
    COLO_MSG_LOADED,
    /* primary -> secondary: the guest shut down; shut down too */
    COLO_MSG_SHUTDOWN,
    /* either way: the sender leaves COLO; payload is the reason (text) */
    COLO_MSG_ERROR,
    /*
     * primary -> secondary: nothing else to send for a while (@seq: the
     * last checkpoint); secondary -> primary: the answer, with the
     * checkpoint the SVM stands at.  heartbeat.h
     */
    COLO_MSG_HEARTBEAT,
    COLO_MSG__MAX,
} ColoMsgType;

typedef struct ColoMsgHeader {
    ColoMsgType type;
    uint64_t seq;
    uint64_t length;
} ColoMsgHeader;

/* The largest payload a message of @type may carry. */
uint64_t colo_msg_max_length(ColoMsgType type);

/*
 * A growable byte buffer for messages.  Lengths are size_t: a checkpoint
 * may exceed the 4 GiB that GByteArray's guint lengths can count.
 */
typedef struct ColoBuf {
    uint8_t *data;
    size_t len;                 /* bytes in use */
    size_t size;                /* bytes allocated */
} ColoBuf;

/*
 * Set @b's length to @len, growing it if needed.  Returns false with
 * @errp set if the memory cannot be had; @b is then unchanged.
 */
bool colo_buf_resize(ColoBuf *b, size_t len, Error **errp);

/* Append @n bytes at @data (aborts if out of memory, as g_realloc does). */
void colo_buf_append(ColoBuf *b, const void *data, size_t n);

/* Free @b's memory; @b is then empty. */
void colo_buf_free(ColoBuf *b);

const char *colo_msg_name(ColoMsgType type);

/* Encode @hdr into @buf. */
void colo_msg_header_encode(uint8_t buf[COLO_MSG_HEADER_SIZE],
                            const ColoMsgHeader *hdr);

/*
 * Decode and validate a header: magic, header checksum, flags, type and
 * length bound.  Returns false with @errp set if any of them is wrong.
 */
bool colo_msg_header_decode(const uint8_t buf[COLO_MSG_HEADER_SIZE],
                            ColoMsgHeader *hdr, Error **errp);

/*
 * CRC-32C of @len bytes at @data, continued from @crc (the CRC of what
 * came before, 0 for none): the payload's trailer.
 */
uint32_t colo_msg_crc(uint32_t crc, const void *data, size_t len);

/* Channel I/O; each returns false with @errp set on any failure. */
typedef struct QEMUFile QEMUFile;

/* Send a message whose payload is the concatenation of @iov. */
bool colo_msg_send(QEMUFile *f, ColoMsgType type, uint64_t seq,
                   const struct iovec *iov, int iovcnt, Error **errp);

/* Send a message with no payload. */
bool colo_msg_send_empty(QEMUFile *f, ColoMsgType type, uint64_t seq,
                         Error **errp);

/*
 * Best effort: tell the peer why this side leaves COLO (@err's message),
 * so that it does not take the end of the stream for a failover.
 */
void colo_msg_send_error(QEMUFile *f, uint64_t seq, const Error *err);

/*
 * Receive one message into @hdr and @payload (resized to its length).
 * A CHECKPOINT longer than @checkpoint_max is refused before anything is
 * allocated for it (the receiver knows how large one of its checkpoints
 * can be).  The payload is verified against its checksum before this
 * returns.
 */
bool colo_msg_recv(QEMUFile *f, ColoMsgHeader *hdr, ColoBuf *payload,
                   uint64_t checkpoint_max, Error **errp);

/*
 * Receive a control message (not a CHECKPOINT) and check that it is @type
 * about checkpoint @seq.
 */
bool colo_msg_expect(QEMUFile *f, ColoMsgType type, uint64_t seq,
                     ColoBuf *payload, Error **errp);

/*
 * The primary's record of the secondary's acknowledgements.  Each
 * checkpoint is acknowledged twice, in order: RECEIVED once the
 * secondary holds it whole, LOADED once the SVM stands at it.  The
 * primary goes on at RECEIVED (the output the checkpoint covers is safe
 * then), so the secondary loads checkpoint N while N+1 is captured and
 * sent, and LOADED of N comes while the primary awaits RECEIVED of N+1.
 */
typedef struct ColoAcks {
    uint64_t sent;              /* last checkpoint sent */
    uint64_t received;          /* last RECEIVED */
    uint64_t loaded;            /* last LOADED */
} ColoAcks;

/*
 * Whether the next checkpoint may go out: the last one is RECEIVED, and
 * the SVM is at most one checkpoint behind it.  So at most two are in
 * flight: one the secondary loads, one on its way (a buffer each side).
 */
bool colo_acks_may_send(const ColoAcks *a);

/* Checkpoint @seq goes out (colo_acks_may_send() held). */
void colo_acks_sent(ColoAcks *a, uint64_t seq);

/*
 * Record an acknowledgement (@type RECEIVED or LOADED) of checkpoint
 * @seq; refused unless it is the next of its kind for a checkpoint sent,
 * and for LOADED, received.
 */
bool colo_acks_take(ColoAcks *a, ColoMsgType type, uint64_t seq,
                    Error **errp);

#endif
