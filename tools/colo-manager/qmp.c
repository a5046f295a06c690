/*
 * colo-manager: a QMP client of its host's QEMU
 *
 * QEMU's monitor writes one JSON object per line: the greeting, then
 * for each command its answer, with events in between.  With
 * out-of-band execution (offered by a monitor on a socket), a command
 * sent with "exec-oob" is run at once in the monitor's thread, even
 * while QEMU's main loop waits: its answer may overtake those of the
 * in-band commands before it.
 *
 * Copyright (c) 2026 The COLO project authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include <poll.h>
#include <sys/un.h>
#include "qapi/error.h"
#include "qemu/timer.h"
#include "qobject/qdict.h"
#include "qobject/qlist.h"
#include "qobject/qstring.h"
#include "qobject/qjson.h"
#include "qmp.h"

struct QmpClient {
    char *path;
    int64_t timeout_ms;
    int64_t next_id;            /* every request's "id": answers matched */
    int64_t pending_id;         /* an in-band request still unanswered */
    bool oob;                   /* out-of-band execution enabled */
    int fd;
    GString *in;                /* read, not yet a whole line */
};

QmpClient *qmp_client_new(const char *path, int64_t timeout_ms)
{
    QmpClient *c = g_new0(QmpClient, 1);

    c->path = g_strdup(path);
    c->timeout_ms = timeout_ms;
    c->fd = -1;
    c->in = g_string_new("");
    return c;
}

static void qmp_client_close(QmpClient *c)
{
    if (c->fd >= 0) {
        close(c->fd);
        c->fd = -1;
    }
    c->pending_id = 0;
    c->oob = false;
    g_string_truncate(c->in, 0);
}

void qmp_client_free(QmpClient *c)
{
    if (!c) {
        return;
    }
    qmp_client_close(c);
    g_string_free(c->in, true);
    g_free(c->path);
    g_free(c);
}

/*
 * Wait for @events on the socket until @deadline (ms, monotonic); a
 * deadline passed still takes what is there already.
 */
static bool qmp_wait(QmpClient *c, short events, int64_t deadline,
                     Error **errp)
{
    for (;;) {
        struct pollfd pfd = { .fd = c->fd, .events = events };
        int64_t left = MAX(deadline - get_clock() / SCALE_MS, 0);
        int r = poll(&pfd, 1, left);

        if (r > 0) {
            return true;
        }
        if (r == 0) {
            error_setg(errp, "QEMU's monitor %s did not answer in time",
                       c->path);
            return false;
        }
        if (errno != EINTR) {
            error_setg_errno(errp, errno, "poll");
            return false;
        }
    }
}

static bool qmp_write(QmpClient *c, const char *s, int64_t deadline,
                      Error **errp)
{
    size_t len = strlen(s);

    while (len) {
        ssize_t n;

        if (!qmp_wait(c, POLLOUT, deadline, errp)) {
            return false;
        }
        n = send(c->fd, s, len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN) {
                continue;
            }
            error_setg_errno(errp, errno, "QEMU's monitor %s", c->path);
            return false;
        }
        s += n;
        len -= n;
    }
    return true;
}

/* The next JSON object the monitor sends. */
static QDict *qmp_read(QmpClient *c, int64_t deadline, Error **errp)
{
    for (;;) {
        char *nl = strchr(c->in->str, '\n');
        char buf[4096];
        ssize_t n;

        if (nl) {
            g_autofree char *line = g_strndup(c->in->str, nl - c->in->str);
            QObject *obj;
            QDict *dict;

            g_string_erase(c->in, 0, nl - c->in->str + 1);
            obj = qobject_from_json(line, NULL);
            dict = qobject_to(QDict, obj);
            if (!dict) {
                qobject_unref(obj);
                error_setg(errp, "QEMU's monitor %s sent something that is "
                           "not a JSON object", c->path);
                qmp_client_close(c);
                return NULL;
            }
            return dict;
        }
        if (!qmp_wait(c, POLLIN, deadline, errp)) {
            return NULL;
        }
        n = recv(c->fd, buf, sizeof(buf), 0);
        if (n < 0 && (errno == EINTR || errno == EAGAIN)) {
            continue;
        }
        if (n <= 0) {
            error_setg(errp, "QEMU's monitor %s closed", c->path);
            qmp_client_close(c);
            return NULL;
        }
        g_string_append_len(c->in, buf, n);
    }
}

/*
 * Read until the answer to request @id, skipping events and other
 * answers; NULL when none came by @deadline.  The answer to the in-band
 * request left pending is noted on the way.
 */
static QDict *qmp_answer(QmpClient *c, int64_t id, int64_t deadline,
                         Error **errp)
{
    for (;;) {
        QDict *answer = qmp_read(c, deadline, errp);
        int64_t got;

        if (!answer) {
            return NULL;
        }
        got = qdict_haskey(answer, "event") ? -1 :
              qdict_get_try_int(answer, "id", -1);
        if (got > 0 && got == c->pending_id) {
            c->pending_id = 0;
        }
        if (got == id) {
            return answer;
        }
        qobject_unref(answer);
    }
}

/*
 * Send @request (taken) and read its answer.  Every request carries an
 * "id", and only the answer bearing it counts: the monitor runs a
 * command whose client gave up on it all the same, and answers it late.
 *
 * In-band commands run one at a time in QEMU's main loop, which may wait
 * (on a disk, say) for seconds.  One left unanswered is pending: until
 * its answer comes, another in-band command is not sent (it would only
 * queue up behind it, and a full queue stops the monitor reading even
 * out-of-band commands) but fails at once.  Out-of-band ones still go.
 */
static QDict *qmp_exchange(QmpClient *c, QDict *request, bool oob,
                           int64_t deadline, Error **errp)
{
    int64_t id = ++c->next_id;
    g_autoptr(GString) json = NULL;
    QDict *answer;

    if (!oob && c->pending_id) {
        Error *busy = NULL;

        /* Only what already came: no wait. */
        qobject_unref(qmp_answer(c, c->pending_id, 0, &busy));
        if (c->fd < 0) {
            error_propagate(errp, busy);
            qobject_unref(request);
            return NULL;
        }
        error_free(busy);
        if (c->pending_id) {
            error_setg(errp, "QEMU's main loop has not yet answered an "
                       "earlier command");
            qobject_unref(request);
            return NULL;
        }
    }
    qdict_put_int(request, "id", id);
    json = qobject_to_json(QOBJECT(request));
    qobject_unref(request);
    g_string_append_c(json, '\n');
    if (!qmp_write(c, json->str, deadline, errp)) {
        qmp_client_close(c);
        return NULL;
    }
    answer = qmp_answer(c, id, deadline, errp);
    if (!answer && c->fd >= 0 && !oob) {
        c->pending_id = id;
    }
    return answer;
}

static bool qmp_connect(QmpClient *c, int64_t deadline, Error **errp)
{
    struct sockaddr_un addr = { .sun_family = AF_UNIX };
    g_autoptr(QDict) greeting = NULL;
    g_autoptr(QDict) answer = NULL;
    QDict *request;
    QList *caps;
    bool oob = false;

    if (strlen(c->path) >= sizeof(addr.sun_path)) {
        error_setg(errp, "QMP socket path too long: %s", c->path);
        return false;
    }
    strcpy(addr.sun_path, c->path);
    c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        error_setg_errno(errp, errno, "socket");
        return false;
    }
    /* A UNIX socket connects at once or fails. */
    if (connect(c->fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
        error_setg_errno(errp, errno, "cannot connect to QEMU's monitor %s",
                         c->path);
        qmp_client_close(c);
        return false;
    }
    greeting = qmp_read(c, deadline, errp);
    if (!greeting || !qdict_haskey(greeting, "QMP")) {
        if (greeting) {
            error_setg(errp, "%s is not a QMP monitor", c->path);
        }
        qmp_client_close(c);
        return false;
    }
    request = qdict_new();
    qdict_put_str(request, "execute", "qmp_capabilities");
    /* Out-of-band when the monitor offers it (one on a socket does). */
    caps = qdict_get_qlist(qdict_get_qdict(greeting, "QMP"), "capabilities");
    for (const QListEntry *e = caps ? qlist_first(caps) : NULL; e;
         e = qlist_next(e)) {
        QString *cap = qobject_to(QString, qlist_entry_obj(e));

        if (cap && !strcmp(qstring_get_str(cap), "oob")) {
            QDict *args = qdict_new();
            QList *enable = qlist_new();

            qlist_append_str(enable, "oob");
            qdict_put(args, "enable", enable);
            qdict_put(request, "arguments", args);
            oob = true;
        }
    }
    answer = qmp_exchange(c, request, false, deadline, errp);
    if (!answer || !qdict_haskey(answer, "return")) {
        if (answer) {
            error_setg(errp, "QEMU's monitor %s refused qmp_capabilities",
                       c->path);
        }
        qmp_client_close(c);
        return false;
    }
    c->oob = oob;
    return true;
}

static QObject *qmp_client_run(QmpClient *c, const char *command,
                               QDict *args, bool oob, int64_t timeout_ms,
                               Error **errp)
{
    int64_t deadline = get_clock() / SCALE_MS + timeout_ms;
    g_autoptr(QDict) answer = NULL;
    QDict *request = qdict_new();
    QDict *error;
    QObject *ret;

    if (args) {
        qdict_put(request, "arguments", args);
    }
    if (c->fd < 0 && !qmp_connect(c, deadline, errp)) {
        qobject_unref(request);
        return NULL;
    }
    oob &= c->oob;
    qdict_put_str(request, oob ? "exec-oob" : "execute", command);
    answer = qmp_exchange(c, request, oob, deadline, errp);
    if (!answer) {
        error_prepend(errp, "%s: ", command);
        return NULL;
    }
    error = qdict_get_qdict(answer, "error");
    if (error) {
        error_setg(errp, "%s: %s", command,
                   qdict_get_try_str(error, "desc") ?: "failed");
        return NULL;
    }
    ret = qdict_get(answer, "return");
    if (!ret) {
        error_setg(errp, "%s: an answer without a return", command);
        qmp_client_close(c);
        return NULL;
    }
    return qobject_ref(ret);
}

QObject *qmp_client_execute(QmpClient *c, const char *command, QDict *args,
                            int64_t timeout_ms, Error **errp)
{
    return qmp_client_run(c, command, args, false, timeout_ms, errp);
}

static QDict *qmp_client_dict(QObject *ret)
{
    QDict *d = qobject_to(QDict, ret);

    if (ret && !d) {
        qobject_unref(ret);
        return qdict_new();
    }
    return d;
}

QDict *qmp_client_call(QmpClient *c, const char *command, QDict *args,
                       Error **errp)
{
    return qmp_client_dict(qmp_client_run(c, command, args, false,
                                          c->timeout_ms, errp));
}

QDict *qmp_client_call_oob(QmpClient *c, const char *command, QDict *args,
                           Error **errp)
{
    return qmp_client_dict(qmp_client_run(c, command, args, true,
                                          c->timeout_ms, errp));
}
