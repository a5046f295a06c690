/*
 * COLO heartbeat: who is still there, judged from the replication channel.
 *
 * While in COLO, each side runs a watchdog thread.  The checkpoint loops
 * tell it when they wait on the peer (a message, an ack, a drain of
 * writes to the peer's disk) and when something arrives; the primary's
 * loop sends HEARTBEAT when it has nothing else to send, and the
 * secondary answers each one, so that a live peer is heard at least
 * every fifth of the silence timeout (migration parameter
 * x-colo-silence-timeout).  When a side has waited the whole timeout
 * without a word, its peer is silent (silence.h has the rule):
 *
 *   primary    stops waiting: the replica's NBD connections are yanked
 *              (the guest's writes complete on its own disk), the
 *              channel is shut for reading at once and whole shortly
 *              after, and the loop leaves COLO and serves on alone,
 *              telling the secondary (ERROR) if it can still be heard;
 *   secondary  the channel is shut, and it waits for an operator's
 *              x-colo-lost-heartbeat: cut off, it cannot tell a dead
 *              primary from a live one that serves on alone, so it never
 *              takes over by itself.
 *
 * Both send X_COLO_PEER_SILENT.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef MIGRATION_COLO_HEARTBEAT_H
#define MIGRATION_COLO_HEARTBEAT_H

#include "qapi/qapi-types-migration.h"

/* Start (stop) judging the peer of this side, in @mode. */
void colo_heartbeat_start(COLOMode mode);
void colo_heartbeat_stop(void);

/*
 * The calling loop begins (ends) a wait on the peer: a send, or a drain
 * of writes to it.  Listening for the peer's answer goes on from the
 * last word of either side (colo_silence_listen_begin()).
 */
void colo_heartbeat_wait_begin(void);
void colo_heartbeat_listen_begin(void);
void colo_heartbeat_wait_end(void);

/* Something came from the peer, or the peer took what was sent. */
void colo_heartbeat_heard(void);

/* The peer was judged silent in this COLO session. */
bool colo_heartbeat_peer_silent(void);

/*
 * The stream has ended: may the secondary take it for the primary's
 * death?  Judged when the wait that saw the end ended (see
 * colo_silence_end_is_death()); ask before any other wait.
 */
bool colo_heartbeat_end_is_death(void);

/*
 * The secondary is cut off (the stream ended when it could not be taken
 * for the primary's death): the peer counts as silent from now on, and
 * X_COLO_PEER_SILENT is sent if it was not yet.
 */
void colo_heartbeat_declare_silent(void);

/* How long the primary may send nothing before it sends HEARTBEAT. */
int64_t colo_heartbeat_interval_ms(void);

/* For query-colo-status: ms since the peer was last heard (0 if none). */
uint64_t colo_heartbeat_quiet_ms(void);

#endif
