/*
 * COLO heartbeat: the watchdog thread (see heartbeat.h).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qapi/qapi-events-migration.h"
#include "qemu/lockable.h"
#include "qemu/thread.h"
#include "qemu/timer.h"
#include "block/replication.h"
#include "migration/options.h"
#include "colo-internal.h"
#include "heartbeat.h"
#include "silence.h"
#include "trace.h"

static struct {
    QemuMutex lock;             /* protects everything below */
    QemuCond wake;
    QemuThread thread;
    bool running;
    bool stopping;
    COLOMode mode;
    ColoSilence silence;
    int64_t heard_ms;           /* the peer's last word, for the status */
} hb;

static void __attribute__((__constructor__)) colo_heartbeat_init(void)
{
    qemu_mutex_init(&hb.lock);
    qemu_cond_init(&hb.wake);
}

/* QEMU's realtime clock is monotonic, and runs while the process is stopped. */
static int64_t colo_heartbeat_now(void)
{
    return qemu_clock_get_ms(QEMU_CLOCK_REALTIME);
}

/*
 * The peer is silent.  Stop waiting for it: nothing it does may hold the
 * guest's output, its disk or this QEMU longer than the timeout.
 */
static void colo_heartbeat_act(COLOMode mode, int64_t quiet_ms)
{
    trace_colo_heartbeat_peer_silent(COLOMode_str(mode), quiet_ms);
    qapi_event_send_x_colo_peer_silent(mode, quiet_ms);
    if (mode == COLO_MODE_PRIMARY) {
        /* Writes in flight to the replica would wait for TCP's timeout. */
        replication_drop_peer_all();
    }
    colo_state_interrupt();
}

static void *colo_heartbeat_thread(void *opaque)
{
    bool hard_shut = false;
    int64_t grace_end = 0;

    qemu_mutex_lock(&hb.lock);
    while (!hb.stopping) {
        int64_t timeout = migrate_colo_silence_timeout();
        int64_t now = colo_heartbeat_now();

        colo_silence_set_timeout(&hb.silence, timeout);
        if (colo_silence_tick(&hb.silence, now) == COLO_SILENCE_PEER_SILENT) {
            COLOMode mode = hb.mode;
            int64_t quiet = now - hb.heard_ms;

            grace_end = now + colo_silence_grace_ms(timeout);
            qemu_mutex_unlock(&hb.lock);
            colo_heartbeat_act(mode, quiet);
            qemu_mutex_lock(&hb.lock);
        } else if (colo_silence_is_silent(&hb.silence) && !hard_shut &&
                   hb.silence.waiting && now >= grace_end) {
            /*
             * The primary's loop is still blocked writing to the silent
             * secondary: the ERROR it would send cannot get through.
             */
            hard_shut = true;
            qemu_mutex_unlock(&hb.lock);
            colo_state_shutdown_channel();
            qemu_mutex_lock(&hb.lock);
        }
        qemu_cond_timedwait(&hb.wake, &hb.lock,
                            colo_silence_tick_ms(timeout));
    }
    qemu_mutex_unlock(&hb.lock);
    return NULL;
}

void colo_heartbeat_start(COLOMode mode)
{
    int64_t now = colo_heartbeat_now();

    qemu_mutex_lock(&hb.lock);
    assert(!hb.running);
    hb.mode = mode;
    hb.stopping = false;
    hb.heard_ms = now;
    colo_silence_init(&hb.silence, migrate_colo_silence_timeout(), now);
    hb.running = true;
    qemu_mutex_unlock(&hb.lock);
    qemu_thread_create(&hb.thread, "colo-heartbeat", colo_heartbeat_thread,
                       NULL, QEMU_THREAD_JOINABLE);
}

void colo_heartbeat_stop(void)
{
    qemu_mutex_lock(&hb.lock);
    if (!hb.running) {
        qemu_mutex_unlock(&hb.lock);
        return;
    }
    hb.stopping = true;
    qemu_cond_signal(&hb.wake);
    qemu_mutex_unlock(&hb.lock);
    qemu_thread_join(&hb.thread);
    qemu_mutex_lock(&hb.lock);
    hb.running = false;
    qemu_mutex_unlock(&hb.lock);
}

void colo_heartbeat_wait_begin(void)
{
    QEMU_LOCK_GUARD(&hb.lock);
    colo_silence_wait_begin(&hb.silence, colo_heartbeat_now());
}

void colo_heartbeat_listen_begin(void)
{
    QEMU_LOCK_GUARD(&hb.lock);
    colo_silence_listen_begin(&hb.silence);
}

void colo_heartbeat_wait_end(void)
{
    QEMU_LOCK_GUARD(&hb.lock);
    colo_silence_wait_end(&hb.silence, colo_heartbeat_now());
}

void colo_heartbeat_heard(void)
{
    int64_t now = colo_heartbeat_now();

    QEMU_LOCK_GUARD(&hb.lock);
    hb.heard_ms = now;
    colo_silence_heard(&hb.silence, now);
}

bool colo_heartbeat_peer_silent(void)
{
    QEMU_LOCK_GUARD(&hb.lock);
    return colo_silence_is_silent(&hb.silence);
}

bool colo_heartbeat_end_is_death(void)
{
    QEMU_LOCK_GUARD(&hb.lock);
    return colo_silence_end_is_death(&hb.silence);
}

void colo_heartbeat_declare_silent(void)
{
    int64_t quiet;
    COLOMode mode;
    bool first;

    qemu_mutex_lock(&hb.lock);
    first = colo_silence_declare(&hb.silence);
    quiet = colo_heartbeat_now() - hb.heard_ms;
    mode = hb.mode;
    qemu_mutex_unlock(&hb.lock);
    if (first) {
        trace_colo_heartbeat_peer_silent(COLOMode_str(mode), quiet);
        qapi_event_send_x_colo_peer_silent(mode, quiet);
    }
}

int64_t colo_heartbeat_interval_ms(void)
{
    return colo_silence_heartbeat_ms(migrate_colo_silence_timeout());
}

uint64_t colo_heartbeat_quiet_ms(void)
{
    QEMU_LOCK_GUARD(&hb.lock);
    return hb.running ? colo_heartbeat_now() - hb.heard_ms : 0;
}
