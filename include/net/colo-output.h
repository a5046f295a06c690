/*
 * COLO output commit: the primary's network output is held until the
 * checkpoint that covers it is safe on the secondary.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef NET_COLO_OUTPUT_H
#define NET_COLO_OUTPUT_H

/* What the primary hears of the output it holds (called with the BQL). */
typedef struct ColoOutputHooks {
    /* A netdev holds the first packet of an epoch. */
    void (*first_held)(void);
    /*
     * A netdev's output of one epoch fills half of what can be held: a
     * checkpoint should end the epoch.
     */
    void (*pressure)(void);
} ColoOutputHooks;

/*
 * Hold the output of every netdev from now on (attaches a
 * colo-output-commit filter to each), telling @hooks (may be NULL).
 * Called with the BQL held.
 */
bool colo_output_start(const ColoOutputHooks *hooks, Error **errp);

/*
 * At the stop of a checkpoint (BQL held, VM stopped): what was held so far
 * is covered by this checkpoint; output from now on by the next one.
 */
void colo_output_seal(void);

/* How long released output was held (colo_output_release()). */
typedef struct ColoOutputHoldTimes {
    uint64_t packets;           /* released */
    uint64_t total_us;          /* their time held, summed */
    uint64_t max_us;            /* the longest any of them was held */
} ColoOutputHoldTimes;

/*
 * The sealed output's checkpoint is safe: let it go (BQL held), and add
 * to @times how long it was held.
 */
void colo_output_release(ColoOutputHoldTimes *times);

/*
 * Leaving COLO: stop holding (BQL held).  What is held is covered by no
 * checkpoint the secondary is known to hold: @release lets it go, for a
 * side that serves on; otherwise it is dropped, as a side that goes away
 * must (TCP resends it to the secondary once it has taken over).
 */
void colo_output_stop(bool release);

/* What a side serving alone does with output that no checkpoint covers. */
typedef enum ColoOutputVerdict {
    COLO_OUTPUT_PASS,           /* let it go */
    COLO_OUTPUT_HOLD,           /* keep it, to be judged again */
    COLO_OUTPUT_DROP,           /* drop it */
} ColoOutputVerdict;

/*
 * Leaving COLO as the side that serves alone, under an arbiter (BQL
 * held): output is covered by no checkpoint any more, and @judge, asked
 * at every packet, decides what becomes of it.  What is held now is
 * judged at once.  A side that held nothing (a secondary taking over)
 * starts holding first; false and @errp set if it cannot.  Starting
 * COLO again (colo_output_start()) ends the gate: what it still holds
 * goes with the next checkpoint.
 */
bool colo_output_gate(ColoOutputVerdict (*judge)(void), Error **errp);

/* The verdict may have changed: judge again what is held (BQL held). */
void colo_output_gate_update(void);

#endif
