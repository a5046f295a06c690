/*
 * colo-manager: its configuration file
 *
 * Copyright (c) 2026 The COLO project authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef COLO_MANAGER_CONFIG_H
#define COLO_MANAGER_CONFIG_H

/*
 * A GLib key file (docs/system/colo-manager.rst):
 *
 *   [vm]
 *   name = web1                      etcd keys: colo/web1/...
 *   [host]
 *   name = host-a                    this host, as etcd names it
 *   peer = host-b                    the other host of the pair
 *   qmp = /run/colo/web1-manager.sock  this host's QEMU, a monitor of
 *                                    the manager's own
 *   state-file = /run/colo-manager/web1.json   what the running manager
 *                                    saw last (colo-manager status)
 *   [etcd]
 *   endpoints = http://10.0.0.5:2379;http://10.0.0.6:2379
 *   ttl = 5                          the etcd lease, seconds
 *   timeout-ms = 1000                one request to etcd
 *   [lease]
 *   validity-ms = 4000               the lease granted to QEMU
 *   renew-ms = 1000                  how often it is renewed
 *   qmp-timeout-ms = 300             one QMP command
 *
 * With a [qemu] group the manager also runs its host's QEMU: it boots
 * the VM as the primary when the VM was never booted, else starts a
 * secondary that the primary's manager protects (launch.c, protect.c):
 *
 *   [host]
 *   address = 10.0.1.1               where the peer's QEMU reaches this
 *   migrate-port = 7100              host's: migration, and NBD for the
 *   nbd-port = 7101                  disk's copy and replication
 *   [qemu]
 *   binary = /usr/bin/qemu-system-x86_64
 *   img = /usr/bin/qemu-img          default: beside binary
 *   wrapper = taskset -c 2-3         a command QEMU runs under (it must
 *                                    exec QEMU: its pid is QEMU's)
 *   args = -machine q35 -m 2048 ...  the VM, disk and monitor aside
 *   disk = /var/lib/colo/web1.raw    this host's copy of the disk (raw);
 *                                    a secondary's is overwritten
 *   disk-device = virtio-blk-pci     the guest's disk device
 *   workdir = /var/lib/colo/web1     overlays, QEMU's log
 *   checkpoint-delay-ms = 100        x-checkpoint-delay (default: QEMU's)
 */
typedef struct ManagerConfig {
    char *vm;
    char *host;
    char *peer;
    char *qmp;
    char *state_file;
    char **etcd_endpoints;
    int64_t ttl_s;
    int64_t etcd_timeout_ms;
    int64_t validity_ms;
    int64_t renew_ms;
    int64_t qmp_timeout_ms;

    /* [qemu]: run QEMU too; NULL when the group is absent. */
    char *qemu_binary;
    char *qemu_img;
    char **qemu_args;
    char **qemu_wrapper;            /* NULL: none */
    char *disk;
    char *disk_device;
    char *workdir;
    int64_t checkpoint_delay_ms;    /* -1: QEMU's default */
    char *address;
    int64_t migrate_port;
    int64_t nbd_port;
} ManagerConfig;

/* The drift allowed between QEMU's lease clock and etcd's, and more. */
#define MANAGER_CLOCK_RHO       0.01
#define MANAGER_CLOCK_EPS_MS    50

bool manager_config_load(ManagerConfig *cfg, const char *path,
                         Error **errp);
void manager_config_free(ManagerConfig *cfg);

/* The etcd key of @cfg's VM named @what ("primary", "successor"). */
char *manager_config_key(const ManagerConfig *cfg, const char *what);

#endif
