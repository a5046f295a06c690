/*
 * colo-disk-verify IMAGE LAST_SEQ
 *
 * Host-side check of a raw disk image written by the COLO test guest's disk
 * writer (see blockfmt.h).  LAST_SEQ is the last sequence number the guest
 * reported as completed (the agent's `disk` answer).
 *
 * The writer is strictly sequential (seq N+1 is issued only after seq N's
 * O_DSYNC write returned), so every crash-consistent image holds a prefix of
 * the sequence.  With M the highest valid seq on disk and TOP = max(M,
 * LAST_SEQ), every seq in [max(1, TOP - nblocks + 1), TOP] must be VALID at
 * its index (seq - 1) % nblocks:
 *   - missing: a seq <= LAST_SEQ (acknowledged to the client) is not there;
 *   - holes:   a seq in (LAST_SEQ, M) is not there although a later one is;
 *   - torn:    a block with the magic but a bad checksum/payload, anywhere;
 *   - misplaced: a valid block at an index that does not match its seq.
 * Any of these makes ok=false.  Blocks with seq > LAST_SEQ are fine (writes
 * that completed after LAST_SEQ was read); they are counted as "newer".
 *
 * Prints one JSON line on stdout, details about the first problems on
 * stderr.  Exit status: 0 ok, 1 not ok, 2 usage or I/O error.
 */
#include "blockfmt.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_REPORTS 10

static unsigned reports;

static void report(const char *fmt, uint64_t a, uint64_t b)
{
    if (reports++ < MAX_REPORTS) {
        fprintf(stderr, "colo-disk-verify: ");
        fprintf(stderr, fmt, a, b);
        fputc('\n', stderr);
    } else if (reports == MAX_REPORTS + 1) {
        fprintf(stderr, "colo-disk-verify: (further problems not shown)\n");
    }
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s IMAGE LAST_SEQ\n", argv[0]);
        return 2;
    }
    char *end;
    errno = 0;
    unsigned long long last_ull = strtoull(argv[2], &end, 10);
    if (errno || *end || end == argv[2] || argv[2][0] == '-') {
        fprintf(stderr, "colo-disk-verify: bad LAST_SEQ '%s'\n", argv[2]);
        return 2;
    }
    uint64_t last = last_ull;

    int fd = open(argv[1], O_RDONLY);
    if (fd < 0) {
        fprintf(stderr, "colo-disk-verify: %s: %s\n", argv[1], strerror(errno));
        return 2;
    }
    off_t size = lseek(fd, 0, SEEK_END);
    if (size < 0) {
        fprintf(stderr, "colo-disk-verify: %s: %s\n", argv[1], strerror(errno));
        return 2;
    }
    uint64_t nblocks = (uint64_t)size / BLOCKFMT_SIZE;
    if (nblocks == 0) {
        fprintf(stderr, "colo-disk-verify: %s: smaller than one block\n", argv[1]);
        return 2;
    }

    /* found[i]: seq of the valid block at index i, 0 if none. */
    uint64_t *found = calloc(nblocks, sizeof(*found));
    const size_t chunk_blocks = 256;
    uint8_t *buf = malloc(chunk_blocks * BLOCKFMT_SIZE);
    if (!found || !buf) {
        fprintf(stderr, "colo-disk-verify: out of memory\n");
        return 2;
    }

    uint64_t max_seq = 0, valid = 0, torn = 0, misplaced = 0, newer = 0;
    for (uint64_t i = 0; i < nblocks; i += chunk_blocks) {
        size_t n = nblocks - i < chunk_blocks ? (size_t)(nblocks - i) : chunk_blocks;
        size_t want = n * BLOCKFMT_SIZE, got = 0;
        while (got < want) {
            ssize_t r = pread(fd, buf + got, want - got,
                              (off_t)(i * BLOCKFMT_SIZE + got));
            if (r < 0 && errno == EINTR) {
                continue;
            }
            if (r <= 0) {
                fprintf(stderr, "colo-disk-verify: %s: read error at block %" PRIu64
                        ": %s\n", argv[1], i, r < 0 ? strerror(errno) : "EOF");
                return 2;
            }
            got += (size_t)r;
        }
        for (size_t k = 0; k < n; k++) {
            uint64_t idx = i + k, seq;
            switch (blockfmt_check(buf + k * BLOCKFMT_SIZE, &seq)) {
            case BLOCKFMT_EMPTY:
                break;
            case BLOCKFMT_TORN:
                torn++;
                report("torn block at index %" PRIu64 " (header seq %" PRIu64 ")",
                       idx, seq);
                break;
            case BLOCKFMT_VALID:
                if (blockfmt_index(seq, nblocks) != idx) {
                    misplaced++;
                    report("seq %" PRIu64 " found at wrong index %" PRIu64, seq, idx);
                    break;
                }
                valid++;
                found[idx] = seq;
                if (seq > max_seq) {
                    max_seq = seq;
                }
                if (seq > last) {
                    newer++;
                }
                break;
            }
        }
    }
    close(fd);

    uint64_t top = max_seq > last ? max_seq : last;
    uint64_t lo = top >= nblocks ? top - nblocks + 1 : 1;
    uint64_t missing = 0, holes = 0;
    for (uint64_t s = lo; s <= top && top > 0; s++) {
        uint64_t idx = blockfmt_index(s, nblocks);
        if (found[idx] == s) {
            continue;
        }
        if (s <= last) {
            missing++;
            report("completed seq %" PRIu64 " missing (index has seq %" PRIu64 ")",
                   s, found[idx]);
        } else {
            holes++;
            report("seq %" PRIu64 " missing although a later seq is on disk"
                   " (index has seq %" PRIu64 ")", s, found[idx]);
        }
    }

    int ok = torn == 0 && missing == 0 && holes == 0 && misplaced == 0;
    printf("{\"max_seq\":%" PRIu64 ",\"last_seq\":%" PRIu64 ",\"nblocks\":%" PRIu64
           ",\"valid\":%" PRIu64 ",\"newer\":%" PRIu64 ",\"torn\":%" PRIu64
           ",\"missing\":%" PRIu64 ",\"holes\":%" PRIu64 ",\"misplaced\":%" PRIu64
           ",\"ok\":%s}\n",
           max_seq, last, nblocks, valid, newer, torn, missing, holes, misplaced,
           ok ? "true" : "false");
    free(found);
    free(buf);
    return ok ? 0 : 1;
}
