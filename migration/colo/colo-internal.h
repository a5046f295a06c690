/*
 * COLO: state shared by the primary's and the secondary's sides.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef MIGRATION_COLO_INTERNAL_H
#define MIGRATION_COLO_INTERNAL_H

#include "qapi/qapi-types-migration.h"
#include "qapi/qapi-types-run-state.h"
#include "qemu/thread.h"
#include "qemu/timer.h"

/* Why the primary took a checkpoint. */
typedef enum ColoCheckpointCause {
    COLO_CAUSE_PERIOD,          /* x-checkpoint-delay passed */
    COLO_CAUSE_OUTPUT,          /* held output (x-colo-output-delay) */
    COLO_CAUSE_REQUEST,         /* x-colo-checkpoint */
    COLO_CAUSE__MAX,
} ColoCheckpointCause;

/* Checkpoint statistics of this side; see COLOCheckpointStats. */
typedef struct ColoStats {
    uint64_t checkpoints;       /* completed (primary) or loaded (secondary) */
    uint64_t pause_last_us;     /* VM stopped for the last one */
    uint64_t pause_total_us;    /* sum over all, for the mean */
    uint64_t pause_max_us;      /* the longest */
    uint64_t bytes_last;        /* checkpoint message size, last */
    uint64_t bytes_total;
    uint64_t pages_last;        /* dirty pages carried, last */
    uint64_t pages_total;
    uint64_t received_last_us;  /* primary: VM stop to the secondary's ack */
    /* Primary: see COLOOutputStats. */
    uint64_t by_cause[COLO_CAUSE__MAX];
    uint64_t held_packets;
    uint64_t hold_total_us;
    uint64_t hold_max_us;
    uint64_t in_flight;
} ColoStats;

/*
 * "stop" or "cont" from the user while COLO holds the VM stopped (run
 * state "colo"): the run state to give it back, instead of the one it
 * had before COLO stopped it.  The last of them wins.
 */
typedef enum ColoRunRequest {
    COLO_RUN_AS_BEFORE,
    COLO_RUN_PAUSED,
    COLO_RUN_RUNNING,
} ColoRunRequest;

typedef struct ColoState {
    /* Protects mode, last_mode, reason, stats and the channel. */
    QemuMutex lock;
    COLOMode mode;              /* COLO_MODE_NONE unless in COLO */
    COLOMode last_mode;
    COLOExitReason reason;
    /* The last COLO session ended with this secondary not taking over. */
    bool stayed_down;
    ColoStats stats;
    /* The replication channel, to shut down when leaving COLO. */
    QEMUFile *to_peer;
    QEMUFile *from_peer;
    /* Requests to the running side (atomic); the semaphore wakes it. */
    bool checkpoint_requested;
    int64_t output_due_us;      /* a checkpoint for held output, or 0 */
    bool output_pressure;       /* held output piles up: due at once */
    bool exit_requested;
    bool guest_shutdown;        /* the guest powered off: both sides end */
    bool quitting;              /* this QEMU exits: it will not serve */
    bool cancel_requested;      /* migrate_cancel: leave, tell the peer */
    int run_request;            /* ColoRunRequest */
    bool checkpoint_stopped_live; /* run state colo: a running VM (BQL) */
    /* x-colo-arbitrated, as it was when this session began. */
    bool arbitrated;
    QemuSemaphore kick;
    /* Posted by the primary's loop when it has left COLO. */
    QemuSemaphore primary_exited;
    /* Shuts the channel down whole if a soft interrupt did not do. */
    QEMUTimer *interrupt_grace;
} ColoState;

extern ColoState colo_state;

/*
 * The run state a "stop" or "cont" asked for while COLO held the VM
 * stopped, or @as_before if none did; the request is reset.
 */
RunState colo_state_take_run_state(RunState as_before);

/* Enter COLO as @mode with the replication channel @to / @from. */
void colo_state_enter(COLOMode mode, QEMUFile *to, QEMUFile *from);

/*
 * Leave COLO: record @reason (and @err, reported) and send COLO_EXIT.
 * The channel is shut down so that the peer notices at once.
 */
void colo_state_exit(COLOExitReason reason, Error *err);

/*
 * The secondary has decided not to take over (it leaves COLO later): its
 * SVM must never run, and a failover request is refused from now on.
 */
void colo_state_mark_down(void);

/*
 * The mode of this QEMU's last COLO session (none if it never was in
 * COLO); *@stayed_down tells whether it ended with a secondary that did
 * not take over.
 */
COLOMode colo_last_mode(bool *stayed_down);

/*
 * Make the running side leave its loop at once and wake its wait.  A
 * secondary's channel is shut down (a blocked read or write returns); a
 * primary's only for reading at first, so that it can still tell the
 * secondary that it serves on, and whole after a grace period.
 */
void colo_state_interrupt(void);

/* Shut the replication channel down whole: blocked reads and writes fail. */
void colo_state_shutdown_channel(void);

/*
 * A side's loop has ended, with *@errp set if its channel failed.  Start
 * the failover (failover.c) and return why COLO ends: a request (the
 * channel error it caused is dropped) or the error.
 */
COLOExitReason colo_failover_begin(Error **errp);
void colo_failover_end(void);

/* Add one checkpoint to the statistics. */
void colo_stats_add(uint64_t pause_us, uint64_t bytes, uint64_t pages,
                    uint64_t received_us);

/*
 * Primary: add why a checkpoint was taken, and how long the output it
 * released was held.
 */
void colo_stats_add_output(ColoCheckpointCause cause, uint64_t packets,
                           uint64_t hold_total_us, uint64_t hold_max_us);

/* Primary: checkpoints sent that the secondary has not loaded yet. */
void colo_stats_set_in_flight(uint64_t in_flight);


/*
 * The two sides' loops.  The primary's returns whether COLO gave the VM
 * its run state back.
 */
bool colo_primary_run(MigrationState *s);
void colo_secondary_run(MigrationIncomingState *mis);

#endif
