/*
 * colo-manager: who serves, decided through etcd
 *
 * The rule of docs/devel/migration/colo.rst, "Arbitration through etcd",
 * model-checked in tests/model/colo-manager.pml, whose state names
 * (MP_HOLD, MP_LOST, MS_WATCH, MS_TOOK) are the ones used here.
 *
 * Copyright (c) 2026 The COLO project authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef COLO_MANAGER_ARBITRATION_H
#define COLO_MANAGER_ARBITRATION_H

#include "config.h"
#include "etcd.h"
#include "qmp.h"

typedef enum ManagerState {
    /* Its QEMU is not in COLO yet, or the primary key names another. */
    M_JOIN,
    /* Holds the primary key: renews its etcd lease, grants QEMU's. */
    MP_HOLD,
    /*
     * The key is gone: its etcd lease expired, or was revoked once its
     * QEMU fenced itself or left its lease to run out unanswered.  Never
     * grants again.
     */
    MP_LOST,
    /* Beside a secondary: takes the key once it is free and its own. */
    MS_WATCH,
    /* Took the key: hands over, then holds it (MP_HOLD, sole). */
    MS_TOOK,
} ManagerState;

typedef struct Arbitration {
    const ManagerConfig *cfg;
    EtcdClient *etcd;
    QmpClient *qmp;
    ManagerState state;
    int64_t lease;              /* this host's etcd lease, 0 if none */
    bool sole;                  /* MP_HOLD: the successor key is removed */
    char *key_primary;
    char *key_successor;
    char *key_booted;           /* names the host that first booted the VM */
    char *key_standby;          /* a secondary waiting to be protected */
    char *last_error;           /* the last round's, reported once */
    int64_t read_ms;            /* the last reading's taken_ms: no
                                   grant's reading is newer */
    QDict *colo;                /* QEMU's query-colo-status this round,
                                   NULL when it did not answer */
} Arbitration;

void arbitration_init(Arbitration *a, const ManagerConfig *cfg,
                      EtcdClient *etcd, QmpClient *qmp);
void arbitration_cleanup(Arbitration *a);

/* One round: read QEMU, renew, decide, grant. */
void arbitration_round(Arbitration *a);

const char *manager_state_name(ManagerState s);

/*
 * With no QEMU yet, and the VM never booted: take the free primary key
 * and mark the VM booted by this host, in one transaction; then
 * MP_HOLD, sole (no successor until a secondary is in COLO).  False
 * when another host was first or etcd failed (@errp set then).
 */
bool arbitration_claim_boot(Arbitration *a, Error **errp);

/*
 * Its QEMU exited (it was this manager's child, reaped): nothing runs
 * the guest here any more, so this host's etcd lease is revoked (a
 * successor takes over at once) and the manager starts afresh, M_JOIN.
 */
void arbitration_qemu_exited(Arbitration *a);

/* What this manager knows, for colo-manager status. */
QDict *arbitration_describe(const Arbitration *a);

#endif
