/*
 * colo-manager: protecting a primary that runs alone with the secondary
 * that the standby key announces
 *
 * Copyright (c) 2026 The COLO project authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef COLO_MANAGER_PROTECT_H
#define COLO_MANAGER_PROTECT_H

#include "arbitration.h"

typedef enum ProtectStep {
    PROTECT_IDLE,
    PROTECT_COPYING,        /* the mirror job copies the disk to the peer */
    PROTECT_MIGRATING,      /* replicating, migrating into COLO */
} ProtectStep;

typedef struct Protection {
    const ManagerConfig *cfg;
    Arbitration *a;
    ProtectStep step;
    char *standby;          /* the standby key's value being protected */
    char *failed;           /* the last one that failed: not tried again */
    char *last_error;       /* reported once */
    int64_t started_ms;     /* this attempt's start, monotonic */
    int64_t retry_ms;       /* no new attempt before, monotonic */
    bool stopped;           /* its VM stopped by this manager, for the
                               switch to the replica, not yet continued */
    int64_t protected_count;
    int64_t last_protect_ms;    /* the last attempt's length */
} Protection;

void protection_init(Protection *p, const ManagerConfig *cfg,
                     Arbitration *a);
void protection_cleanup(Protection *p);

/*
 * Once a round, after the arbitration's: while this host holds the
 * primary key with sole leases and its QEMU serves outside COLO, a
 * standby naming the peer is protected, one step a round, so that the
 * lease is renewed throughout: the disk copied to it (mirror), the
 * replica added to the guest's quorum, x-colo migration.  The successor
 * key is the arbitration's to write, once QEMU is in COLO.
 */
void protection_round(Protection *p);

QDict *protection_describe(const Protection *p);

#endif
