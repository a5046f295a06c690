/*
 * Block replication driven from outside the COLO frame.
 *
 * Xen's COLO runs its own checkpoint protocol and drives the QEMU side's
 * block replication with these commands; tests use them to exercise the
 * replication driver without a VM pair.  While the COLO frame runs, it
 * alone drives replication.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qapi/qapi-commands-migration.h"
#include "block/replication.h"
#include "migration/colo.h"

static bool colo_replication_is_ours(Error **errp)
{
    if (get_colo_mode() != COLO_MODE_NONE) {
        error_setg(errp, "COLO is running and drives block replication "
                   "itself");
        return false;
    }
    return true;
}

void qmp_xen_set_replication(bool enable, bool primary, bool has_failover,
                             bool failover, Error **errp)
{
    if (!colo_replication_is_ours(errp)) {
        return;
    }
    if (enable) {
        if (has_failover) {
            error_setg(errp, "'failover' is only for disabling replication");
            return;
        }
        replication_start_all(primary ? REPLICATION_MODE_PRIMARY
                                      : REPLICATION_MODE_SECONDARY, errp);
    } else {
        replication_stop_all(has_failover && failover, errp);
    }
}

ReplicationStatus *qmp_query_xen_replication_status(Error **errp)
{
    ReplicationStatus *status = g_new0(ReplicationStatus, 1);
    Error *err = NULL;

    replication_get_error_all(&err);
    if (err) {
        status->error = true;
        status->desc = g_strdup(error_get_pretty(err));
        error_free(err);
    }
    return status;
}

void qmp_xen_colo_do_checkpoint(Error **errp)
{
    if (!colo_replication_is_ours(errp)) {
        return;
    }
    replication_do_checkpoint_all(errp);
}
