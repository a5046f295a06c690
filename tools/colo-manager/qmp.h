/*
 * colo-manager: a QMP client of its host's QEMU
 *
 * Copyright (c) 2026 The COLO project authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef COLO_MANAGER_QMP_H
#define COLO_MANAGER_QMP_H

typedef struct QmpClient QmpClient;

/* A client of the monitor at the UNIX socket @path. */
QmpClient *qmp_client_new(const char *path, int64_t timeout_ms);
void qmp_client_free(QmpClient *c);

/*
 * Run @command with @args (taken; may be NULL) and return what it
 * returned (an empty dictionary when that is not one).  Connects when
 * not connected.  A command not answered within the timeout returns
 * NULL with @errp set; its late answer is told apart by its "id".  Until
 * that answer comes, further in-band commands fail at once: QEMU's main
 * loop is busy, and they would only queue up.
 */
QDict *qmp_client_call(QmpClient *c, const char *command, QDict *args,
                       Error **errp);

/*
 * The same, run out-of-band (exec-oob) when the monitor offers it: at
 * once, even while QEMU's main loop waits.  Only for commands that allow
 * it (x-query-colo-lease, x-colo-lease-grant).
 */
QDict *qmp_client_call_oob(QmpClient *c, const char *command, QDict *args,
                           Error **errp);

/* In-band, returning what @command returned as it is, within @timeout_ms. */
QObject *qmp_client_execute(QmpClient *c, const char *command, QDict *args,
                            int64_t timeout_ms, Error **errp);

#endif
