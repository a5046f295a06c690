/*
 * The replication registry: every node that takes part in COLO's block
 * replication registers here, and the COLO frame drives them all at once
 * (include/block/replication.h).
 *
 * The frame calls these from its own thread with the BQL held, except
 * replication_release_writes_all() and replication_drop_peer_all() (from
 * the heartbeat's thread): the main loop may be draining a node
 * whose writes are held (a "stop" in the middle of a checkpoint), and
 * waits for that release with the BQL held.  Nodes are added and removed
 * under the BQL and @replication_lock, so holding either one keeps the
 * list still.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qemu/lockable.h"
#include "qemu/main-loop.h"
#include "block/replication.h"

static QLIST_HEAD(, ReplicationState) replication_states =
    QLIST_HEAD_INITIALIZER(replication_states);
static QemuMutex replication_lock;

static void __attribute__((__constructor__)) replication_registry_init(void)
{
    qemu_mutex_init(&replication_lock);
}

ReplicationState *replication_new(void *opaque, ReplicationOps *ops)
{
    ReplicationState *rs = g_new0(ReplicationState, 1);

    rs->opaque = opaque;
    rs->ops = ops;
    WITH_QEMU_LOCK_GUARD(&replication_lock) {
        QLIST_INSERT_HEAD(&replication_states, rs, node);
    }
    return rs;
}

void replication_remove(ReplicationState *rs)
{
    if (rs) {
        WITH_QEMU_LOCK_GUARD(&replication_lock) {
            QLIST_REMOVE(rs, node);
        }
        g_free(rs);
    }
}

/*
 * Start every node; if one fails, the ones already started are stopped
 * again so that no node is left half in COLO.
 */
void replication_start_all(ReplicationMode mode, Error **errp)
{
    ERRP_GUARD();
    ReplicationState *rs, *undo;

    GLOBAL_STATE_CODE();
    QLIST_FOREACH(rs, &replication_states, node) {
        if (!rs->ops->start) {
            continue;
        }
        rs->ops->start(rs, mode, errp);
        if (*errp) {
            QLIST_FOREACH(undo, &replication_states, node) {
                if (undo == rs) {
                    break;
                }
                if (undo->ops->stop) {
                    undo->ops->stop(undo, false, NULL);
                }
            }
            return;
        }
    }
}

void replication_do_checkpoint_all(Error **errp)
{
    ERRP_GUARD();
    ReplicationState *rs, *next;

    GLOBAL_STATE_CODE();
    QLIST_FOREACH_SAFE(rs, &replication_states, node, next) {
        if (rs->ops->checkpoint) {
            rs->ops->checkpoint(rs, errp);
            if (*errp) {
                return;
            }
        }
    }
}

void replication_hold_writes_all(void)
{
    ReplicationState *rs;

    GLOBAL_STATE_CODE();
    QEMU_LOCK_GUARD(&replication_lock);
    QLIST_FOREACH(rs, &replication_states, node) {
        if (rs->ops->hold_writes) {
            rs->ops->hold_writes(rs);
        }
    }
}

void replication_release_writes_all(void)
{
    ReplicationState *rs;

    QEMU_LOCK_GUARD(&replication_lock);
    QLIST_FOREACH(rs, &replication_states, node) {
        if (rs->ops->release_writes) {
            rs->ops->release_writes(rs);
        }
    }
}

void replication_drop_peer_all(void)
{
    ReplicationState *rs;

    QEMU_LOCK_GUARD(&replication_lock);
    QLIST_FOREACH(rs, &replication_states, node) {
        if (rs->ops->drop_peer) {
            rs->ops->drop_peer(rs);
        }
    }
}

void replication_get_error_all(Error **errp)
{
    ERRP_GUARD();
    ReplicationState *rs;

    GLOBAL_STATE_CODE();
    QLIST_FOREACH(rs, &replication_states, node) {
        if (rs->ops->get_error) {
            rs->ops->get_error(rs, errp);
            if (*errp) {
                return;
            }
        }
    }
}

/* Every node is stopped even if one fails; the first error is kept. */
void replication_stop_all(bool failover, Error **errp)
{
    ReplicationState *rs, *next;

    GLOBAL_STATE_CODE();
    QLIST_FOREACH_SAFE(rs, &replication_states, node, next) {
        Error *local_err = NULL;

        if (!rs->ops->stop) {
            continue;
        }
        rs->ops->stop(rs, failover, &local_err);
        if (local_err) {
            if (errp && !*errp) {
                error_propagate(errp, local_err);
            } else {
                error_free(local_err);
            }
        }
    }
}
