/*
 * COLO under an arbiter: the lease this QEMU holds, and fencing.
 *
 * The rule is lease.h's; this holds this QEMU's lease (granted with
 * x-colo-lease-grant), tells a management process when it is about to
 * lapse and when it lapsed, and gates the output of a side that serves
 * alone.  A side serving alone whose lease is not valid is fenced: its
 * VM is stopped (run state "colo", which "cont" refuses) and stays
 * stopped, and its held output is dropped.  All under the BQL, but for
 * x-colo-lease-grant and x-query-colo-lease, which may run out-of-band:
 * the lease has a lock of its own.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef MIGRATION_COLO_FENCING_H
#define MIGRATION_COLO_FENCING_H

#include "qapi/qapi-types-migration.h"

/*
 * This side leaves COLO as the one that serves, under an arbiter: from
 * now on, output that no checkpoint covers goes by the lease, starting
 * with what is held.  False (@errp set) if the output cannot be gated:
 * then this side must not serve.
 */
bool colo_fencing_serve_alone(Error **errp);

/*
 * This side enters COLO again as a primary (BQL held): releases are
 * covered again, and a sole lease is no longer sole.  Refused (false,
 * @errp set) for a fenced side, and for one serving alone without a
 * valid sole lease.
 */
bool colo_fencing_protected(Error **errp);

/* For query-colo-status. */
COLOLease *colo_fencing_status(void);

#endif
