/*
 * COLO output commit.
 *
 * Nothing the primary's guest emits may reach the network before the
 * checkpoint that covers it has reached the secondary: if the primary died
 * and the secondary took over from an earlier checkpoint, a client would
 * have seen output that the new primary cannot stand behind.
 *
 * A colo-output-commit filter sits on the receive queue of each netdev
 * (where the guest's packets arrive on their way out) and holds them in
 * two queues.  The primary resumes the VM right after a checkpoint's
 * capture, before the secondary has it, so output of two epochs coexists:
 *
 *   pending  emitted since the last checkpoint's stop (next checkpoint's)
 *   sealed   emitted before it (this checkpoint's), released as soon as
 *            the secondary acknowledges that it holds the checkpoint
 *
 * The filters are created when COLO starts and removed when it ends;
 * nothing is configured by the user.  Under an arbiter, a side that
 * serves alone keeps them as a gate: each packet goes by the lease
 * (colo_output_gate(), migration/colo/fencing.c).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qapi/qapi-types-net.h"
#include "qemu/iov.h"
#include "qemu/timer.h"
#include "qom/object.h"
#include "qom/object_interfaces.h"
#include "net/filter.h"
#include "net/net.h"
#include "net/queue.h"
#include "net/colo-output.h"
#include "trace.h"

#define TYPE_FILTER_COLO_OUTPUT "colo-output-commit"

/* The output of one epoch, held. */
typedef struct ColoOutputEpoch {
    NetQueue *queue;
    uint32_t len;               /* packets in @queue */
    /* When the first came, and the sum of when each came (us). */
    uint64_t first_us;
    uint64_t sum_us;
} ColoOutputEpoch;
OBJECT_DECLARE_SIMPLE_TYPE(ColoOutputState, FILTER_COLO_OUTPUT)

struct ColoOutputState {
    NetFilterState parent_obj;

    ColoOutputEpoch pending;
    ColoOutputEpoch sealed;
};

/*
 * A NetQueue drops what comes beyond 10000 packets.  Long before that,
 * at half of it, the primary is asked for a checkpoint, which ends the
 * epoch; what still comes beyond is dropped as a full link would, and
 * traced.
 */
#define COLO_OUTPUT_HOLD_MAX 10000
#define COLO_OUTPUT_PRESSURE (COLO_OUTPUT_HOLD_MAX / 2)

/* The filters this module attached, to seal, release and remove. */
static GPtrArray *colo_output_filters;

/* The primary's hooks, or NULL. */
static const ColoOutputHooks *colo_output_hooks;

/* Set while the filters are a gate for a side serving alone. */
static ColoOutputVerdict (*colo_output_judge)(void);

static void colo_output_flush(NetFilterState *nf, NetQueue *q)
{
    if (!qemu_net_queue_flush(q)) {
        /*
         * The peer cannot take more now: drop, as a full link would.
         * Held packets were sent by the guest's NIC.
         */
        qemu_net_queue_purge(q, nf->netdev->peer);
    }
}

/* Judge what @nf holds: older output first, so that order is kept. */
static void colo_output_judge_held(NetFilterState *nf, ColoOutputVerdict v)
{
    ColoOutputState *s = FILTER_COLO_OUTPUT(nf);

    switch (v) {
    case COLO_OUTPUT_PASS:
        colo_output_flush(nf, s->sealed.queue);
        colo_output_flush(nf, s->pending.queue);
        s->pending.len = s->sealed.len = 0;
        break;
    case COLO_OUTPUT_DROP:
        qemu_net_queue_purge(s->sealed.queue, nf->netdev->peer);
        qemu_net_queue_purge(s->pending.queue, nf->netdev->peer);
        s->pending.len = s->sealed.len = 0;
        break;
    case COLO_OUTPUT_HOLD:
        break;
    }
}

static ssize_t colo_output_receive_iov(NetFilterState *nf,
                                       NetClientState *sender,
                                       unsigned flags,
                                       const struct iovec *iov, int iovcnt,
                                       NetPacketSent *sent_cb)
{
    ColoOutputState *s = FILTER_COLO_OUTPUT(nf);
    uint64_t now;

    if (colo_output_judge) {
        ColoOutputVerdict v = colo_output_judge();

        colo_output_judge_held(nf, v);
        if (v == COLO_OUTPUT_PASS) {
            return 0;
        }
        if (v == COLO_OUTPUT_DROP) {
            trace_colo_output_gate_drop(nf->netdev->name);
            return iov_size(iov, iovcnt);
        }
    }
    /* Taken: the sender counts the packet as sent. */
    if (s->pending.len >= COLO_OUTPUT_HOLD_MAX) {
        trace_colo_output_full(nf->netdev->name);
        return iov_size(iov, iovcnt);
    }
    qemu_net_queue_append_iov(s->pending.queue, sender, flags, iov, iovcnt,
                              NULL);
    now = qemu_clock_get_us(QEMU_CLOCK_REALTIME);
    if (!s->pending.len++) {
        s->pending.first_us = now;
        s->pending.sum_us = 0;
    }
    s->pending.sum_us += now;
    if (colo_output_hooks && !colo_output_judge) {
        if (s->pending.len == 1 && colo_output_hooks->first_held) {
            colo_output_hooks->first_held();
        }
        if (s->pending.len == COLO_OUTPUT_PRESSURE &&
            colo_output_hooks->pressure) {
            trace_colo_output_pressure(nf->netdev->name, s->pending.len);
            colo_output_hooks->pressure();
        }
    }
    return iov_size(iov, iovcnt);
}

static void colo_output_setup(NetFilterState *nf, Error **errp)
{
    ColoOutputState *s = FILTER_COLO_OUTPUT(nf);

    s->pending.queue = qemu_new_net_queue(qemu_netfilter_pass_to_next, nf);
    s->sealed.queue = qemu_new_net_queue(qemu_netfilter_pass_to_next, nf);
}

/*
 * Whatever is still held when the filter goes is dropped: it is released
 * only on purpose (colo_output_release(), colo_output_stop()), never
 * because its netdev was deleted.
 */
static void colo_output_cleanup(NetFilterState *nf)
{
    ColoOutputState *s = FILTER_COLO_OUTPUT(nf);

    if (colo_output_filters) {
        g_ptr_array_remove(colo_output_filters, nf);
    }
    if (s->sealed.queue) {
        qemu_del_net_queue(s->sealed.queue);
        s->sealed.queue = NULL;
    }
    if (s->pending.queue) {
        qemu_del_net_queue(s->pending.queue);
        s->pending.queue = NULL;
    }
}

/* Only COLO removes its filters (netdev_del takes them with the netdev). */
static bool colo_output_can_be_deleted(UserCreatable *uc)
{
    return false;
}

OBJECT_DEFINE_SIMPLE_TYPE(ColoOutputState, colo_output, FILTER_COLO_OUTPUT,
                          NETFILTER)

static void colo_output_init(Object *obj)
{
    /* The queues come with setup, once the filter has its netdev. */
}

static void colo_output_finalize(Object *obj)
{
    /* The netfilter's finalize runs cleanup, which lets everything go. */
}

static void colo_output_class_init(ObjectClass *oc, void *data)
{
    NetFilterClass *nfc = NETFILTER_CLASS(oc);
    UserCreatableClass *ucc = USER_CREATABLE_CLASS(oc);

    ucc->can_be_deleted = colo_output_can_be_deleted;

    nfc->setup = colo_output_setup;
    nfc->cleanup = colo_output_cleanup;
    nfc->receive_iov = colo_output_receive_iov;
}

bool colo_output_start(const ColoOutputHooks *hooks, Error **errp)
{
    NetClientState *ncs[MAX_QUEUE_NUM];
    int n;

    if (colo_output_judge) {
        /*
         * COLO again on a side that served alone: what the gate holds was
         * emitted before the migration that starts it, so the next
         * checkpoint covers it.
         */
        colo_output_judge = NULL;
        colo_output_hooks = hooks;
        trace_colo_output_gate(false);
        return true;
    }
    n = qemu_find_net_clients_except(NULL, ncs, NET_CLIENT_DRIVER_NIC,
                                     MAX_QUEUE_NUM);
    assert(!colo_output_filters);
    colo_output_hooks = hooks;
    colo_output_filters = g_ptr_array_new();
    for (int i = 0; i < n; i++) {
        g_autofree char *id = NULL;
        Object *f;

        /*
         * Only netdevs that carry a guest NIC's output.  A hub's ports are
         * skipped: what a NIC sends through a hub reaches the backend
         * beyond it, which is filtered; a filter on a port would hold the
         * output twice, and the port towards the backend receives the
         * guest's input.
         */
        if (!ncs[i]->peer || ncs[i]->queue_index ||
            ncs[i]->info->type == NET_CLIENT_DRIVER_HUBPORT) {
            continue;
        }
        id = g_strdup_printf("colo-output-%s", ncs[i]->name);
        f = object_new_with_props(TYPE_FILTER_COLO_OUTPUT,
                                  object_get_objects_root(), id, errp,
                                  "netdev", ncs[i]->name,
                                  "queue", "rx",
                                  /* before any filter of the user's */
                                  "position", "head", NULL);
        if (!f) {
            colo_output_stop(false);
            return false;
        }
        g_ptr_array_add(colo_output_filters, f);
        trace_colo_output_attach(ncs[i]->name);
    }
    return true;
}

void colo_output_seal(void)
{
    for (guint i = 0; colo_output_filters && i < colo_output_filters->len;
         i++) {
        NetFilterState *nf = g_ptr_array_index(colo_output_filters, i);
        ColoOutputState *s = FILTER_COLO_OUTPUT(nf);
        NetQueue *q = s->sealed.queue;

        /* Released at the previous acknowledgement, unless it failed. */
        colo_output_flush(nf, q);
        s->sealed = s->pending;
        s->pending = (ColoOutputEpoch) { .queue = q };
    }
}

void colo_output_release(ColoOutputHoldTimes *times)
{
    uint64_t now = qemu_clock_get_us(QEMU_CLOCK_REALTIME);

    for (guint i = 0; colo_output_filters && i < colo_output_filters->len;
         i++) {
        NetFilterState *nf = g_ptr_array_index(colo_output_filters, i);
        ColoOutputState *s = FILTER_COLO_OUTPUT(nf);

        colo_output_flush(nf, s->sealed.queue);
        if (s->sealed.len) {
            times->packets += s->sealed.len;
            times->total_us += s->sealed.len * now - s->sealed.sum_us;
            times->max_us = MAX(times->max_us, now - s->sealed.first_us);
            s->sealed.len = 0;
        }
    }
}

void colo_output_stop(bool release)
{
    if (!colo_output_filters) {
        return;
    }
    colo_output_judge = NULL;
    /* Each filter's cleanup takes it off the list, and drops what it held. */
    while (colo_output_filters->len) {
        NetFilterState *nf = g_ptr_array_index(colo_output_filters, 0);
        ColoOutputState *s = FILTER_COLO_OUTPUT(nf);

        if (release) {
            colo_output_flush(nf, s->sealed.queue);
            colo_output_flush(nf, s->pending.queue);
        }
        object_unparent(OBJECT(nf));
    }
    g_ptr_array_free(colo_output_filters, true);
    colo_output_filters = NULL;
    colo_output_hooks = NULL;
    trace_colo_output_stop(release);
}

bool colo_output_gate(ColoOutputVerdict (*judge)(void), Error **errp)
{
    if (!colo_output_filters && !colo_output_start(NULL, errp)) {
        return false;
    }
    colo_output_judge = judge;
    trace_colo_output_gate(true);
    colo_output_gate_update();
    return true;
}

void colo_output_gate_update(void)
{
    ColoOutputVerdict v;

    if (!colo_output_judge) {
        return;
    }
    v = colo_output_judge();
    for (guint i = 0; colo_output_filters && i < colo_output_filters->len;
         i++) {
        colo_output_judge_held(g_ptr_array_index(colo_output_filters, i), v);
    }
}
