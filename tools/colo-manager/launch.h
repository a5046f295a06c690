/*
 * colo-manager: its host's QEMU, started as the VM's primary or as a
 * secondary waiting to be protected
 *
 * Copyright (c) 2026 The COLO project authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef COLO_MANAGER_LAUNCH_H
#define COLO_MANAGER_LAUNCH_H

#include "arbitration.h"

/* The node names of the guest's disk, the same on both sides. */
#define LAUNCH_DISK_NODE        "colo-disk0"    /* the quorum the guest uses */
#define LAUNCH_BASE_NODE        "colo-base"     /* this host's image */
#define LAUNCH_REPLICA_NODE     "colo-disk0-replica"
#define LAUNCH_EXPORT           "colo-disk0"    /* a secondary's NBD export */

typedef enum LaunchRole {
    LAUNCH_NONE,            /* no QEMU here */
    LAUNCH_PRIMARY,         /* booted the VM */
    LAUNCH_SECONDARY,       /* a secondary, announced as the standby */
    LAUNCH_ATTACHED,        /* a QEMU found running at the manager's start */
} LaunchRole;

typedef struct Launcher {
    const ManagerConfig *cfg;
    Arbitration *a;
    pid_t pid;                  /* QEMU, this manager's child; 0 if none */
    LaunchRole role;
    bool checked;               /* looked for a running QEMU once */
    int64_t announced;          /* the etcd lease the standby key is under */
    char *standby;              /* the standby key's value */
    char *waiting;              /* why no QEMU is started, reported once */
    bool named;                 /* the successor key named this host */
} Launcher;

void launcher_init(Launcher *l, const ManagerConfig *cfg, Arbitration *a);
void launcher_cleanup(Launcher *l);

/*
 * Once a round, before the arbitration's: reap an exited QEMU; with
 * none, boot the VM if it never was (the primary key and the booted key
 * free), or start a secondary beside a primary on the peer; announce a
 * waiting secondary in the standby key, and withdraw it once in COLO;
 * replace a QEMU that can never serve again (fenced, or a secondary
 * that the pair left behind) by a new secondary.
 * Only with a [qemu] group.
 */
void launcher_round(Launcher *l);

const char *launch_role_name(LaunchRole role);

/* migrate-set-capabilities' arguments that set @cap. */
QDict *launch_capability_args(const char *cap);

#endif
