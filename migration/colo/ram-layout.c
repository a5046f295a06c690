/*
 * COLO: the RAM layout both sides must share (see ram.h).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qemu/bswap.h"
#include "qemu/rcu.h"
#include "exec/ramblock.h"
#include "exec/target_page.h"
#include "migration/misc.h"
#include "migration/ram.h"
#include "protocol.h"
#include "ram.h"

static void put_be32(GByteArray *out, uint32_t v)
{
    uint8_t b[4];

    stl_be_p(b, v);
    g_byte_array_append(out, b, sizeof(b));
}

static void put_be64(GByteArray *out, uint64_t v)
{
    uint8_t b[8];

    stq_be_p(b, v);
    g_byte_array_append(out, b, sizeof(b));
}

void colo_ram_layout_encode(GByteArray *out)
{
    RAMBlock *rb;
    uint32_t n = 0;

    put_be32(out, COLO_PROTOCOL_VERSION);
    put_be32(out, qemu_target_page_size());

    RCU_READ_LOCK_GUARD();
    RAMBLOCK_FOREACH_NOT_IGNORED(rb) {
        n++;
    }
    put_be32(out, n);
    RAMBLOCK_FOREACH_NOT_IGNORED(rb) {
        uint8_t len = strlen(rb->idstr);

        g_byte_array_append(out, &len, 1);
        g_byte_array_append(out, (const uint8_t *)rb->idstr, len);
        put_be64(out, rb->used_length);
    }
}

bool colo_ram_layout_check(const uint8_t *buf, size_t len, Error **errp)
{
    g_autoptr(GByteArray) mine = g_byte_array_new();
    uint32_t version;

    if (len < 12) {
        error_setg(errp, "COLO peer sent a truncated RAM layout");
        return false;
    }
    version = ldl_be_p(buf);
    if (version != COLO_PROTOCOL_VERSION) {
        error_setg(errp, "COLO peer speaks protocol version %u, this QEMU %u",
                   version, COLO_PROTOCOL_VERSION);
        return false;
    }
    if (ldl_be_p(buf + 4) != qemu_target_page_size()) {
        error_setg(errp, "COLO peer uses %u-byte pages, this QEMU %zu",
                   ldl_be_p(buf + 4), qemu_target_page_size());
        return false;
    }
    colo_ram_layout_encode(mine);
    if (mine->len != len || memcmp(mine->data, buf, len)) {
        error_setg(errp, "COLO peer's RAM layout differs from this VM's");
        error_append_hint(errp, "Start both VMs with the same machine, "
                          "memory size and devices.\n");
        return false;
    }
    return true;
}

uint64_t colo_ram_checkpoint_max(void)
{
    uint64_t pages = 0;
    RAMBlock *rb;

    RCU_READ_LOCK_GUARD();
    RAMBLOCK_FOREACH_NOT_IGNORED(rb) {
        pages += rb->used_length >> qemu_target_page_bits();
    }
    /*
     * The worst case: every page pre-copied and dirtied again, each copy
     * in a record of its own.
     */
    return 8 + 2 * pages * (qemu_target_page_size() + COLO_RAM_RECORD_SIZE);
}
