/*
 * COLO where it cannot run: the include/migration/colo.h interface for a
 * QEMU built with --disable-colo.
 *
 * Every entry point behaves as "COLO is not active"; enabling the x-colo
 * capability is refused with a reason, so nothing can ever reach the COLO
 * states.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "migration/colo.h"
#include "migration/misc.h"

bool colo_caps_check(const bool *new_caps, Error **errp)
{
    error_setg(errp, "COLO is not available in this QEMU binary");
    error_append_hint(errp, "It was configured with --disable-colo.\n");
    return false;
}

bool migration_in_colo_state(void)
{
    return false;
}

bool migration_incoming_in_colo_state(void)
{
    return false;
}

COLOMode get_colo_mode(void)
{
    return COLO_MODE_NONE;
}

void colo_checkpoint_delay_set(void)
{
    /* No checkpoint timer to re-arm. */
}

void colo_shutdown(void)
{
    /* Nothing runs that would need stopping. */
}

void colo_stop_request(Error **errp)
{
    /* Run state "colo" is never entered. */
    g_assert_not_reached();
}

void colo_cont_request(Error **errp)
{
    /* Run state "colo" is never entered. */
    g_assert_not_reached();
}

void colo_cancel(void)
{
    /* Never in COLO state, so never called. */
    g_assert_not_reached();
}

/*
 * The two entry points below are reached only after x-colo was enabled,
 * which colo_caps_check() refuses.
 */
void migrate_start_colo_process(MigrationState *s)
{
    g_assert_not_reached();
}

void coroutine_fn colo_incoming_co(void)
{
    g_assert_not_reached();
}
