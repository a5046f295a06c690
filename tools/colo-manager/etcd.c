/*
 * colo-manager: a client of etcd's v3 API, through its JSON gateway
 *
 * The gateway takes and answers JSON over HTTP: keys and values in
 * base64, 64-bit integers as strings, members at their default value
 * (false, 0, empty) left out of an answer.
 *
 * Copyright (c) 2026 The COLO project authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include <curl/curl.h>
#include "qapi/error.h"
#include "qemu/cutils.h"
#include "qobject/qdict.h"
#include "qobject/qjson.h"
#include "qobject/qlist.h"
#include "qobject/qstring.h"
#include "etcd.h"

struct EtcdClient {
    char **endpoints;
    int64_t timeout_ms;
    size_t current;             /* the member that answered last */
    CURL *curl;
};

struct EtcdTxn {
    QList *compare;
    QList *success;
};

static size_t etcd_write_cb(char *data, size_t size, size_t n, void *opaque)
{
    g_string_append_len(opaque, data, size * n);
    return size * n;
}

EtcdClient *etcd_client_new(char **endpoints, int64_t timeout_ms)
{
    EtcdClient *c = g_new0(EtcdClient, 1);

    curl_global_init(CURL_GLOBAL_DEFAULT);
    c->endpoints = g_strdupv(endpoints);
    c->timeout_ms = timeout_ms;
    c->curl = curl_easy_init();
    return c;
}

void etcd_client_free(EtcdClient *c)
{
    if (!c) {
        return;
    }
    curl_easy_cleanup(c->curl);
    g_strfreev(c->endpoints);
    g_free(c);
}

/* @name: @s, in base64 (keys and values). */
static void put_b64(QDict *d, const char *name, const char *s)
{
    g_autofree char *v = g_base64_encode((const guchar *)s, strlen(s));

    qdict_put_str(d, name, v);
}

/* @name: @id, a 64-bit integer, as a string. */
static void put_id(QDict *d, const char *name, int64_t id)
{
    g_autofree char *v = g_strdup_printf("%" PRId64, id);

    qdict_put_str(d, name, v);
}

/* One POST to one member; its answer, parsed. */
static QDict *etcd_post_one(EtcdClient *c, const char *endpoint,
                            const char *path, const char *body,
                            bool *unreachable, Error **errp)
{
    g_autofree char *url = g_strconcat(endpoint, path, NULL);
    g_autoptr(GString) answer = g_string_new("");
    struct curl_slist *headers = NULL;
    QObject *obj;
    QDict *dict;
    long status = 0;
    CURLcode rc;

    headers = curl_slist_append(headers, "Content-Type: application/json");
    curl_easy_reset(c->curl);
    curl_easy_setopt(c->curl, CURLOPT_URL, url);
    curl_easy_setopt(c->curl, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(c->curl, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(c->curl, CURLOPT_WRITEFUNCTION, etcd_write_cb);
    curl_easy_setopt(c->curl, CURLOPT_WRITEDATA, answer);
    curl_easy_setopt(c->curl, CURLOPT_TIMEOUT_MS, (long)c->timeout_ms);
    curl_easy_setopt(c->curl, CURLOPT_NOSIGNAL, 1L);
    rc = curl_easy_perform(c->curl);
    curl_slist_free_all(headers);
    if (rc != CURLE_OK) {
        *unreachable = true;
        error_setg(errp, "etcd at %s: %s", endpoint, curl_easy_strerror(rc));
        return NULL;
    }
    curl_easy_getinfo(c->curl, CURLINFO_RESPONSE_CODE, &status);
    obj = qobject_from_json(answer->str, NULL);
    dict = qobject_to(QDict, obj);
    if (!dict) {
        qobject_unref(obj);
        error_setg(errp, "etcd at %s: %s answered HTTP %ld, not a JSON "
                   "object", endpoint, path, status);
        return NULL;
    }
    if (status >= 500) {
        /* A member without a leader, say: another may answer. */
        *unreachable = true;
    }
    if (status != 200 || qdict_haskey(dict, "error")) {
        error_setg(errp, "etcd at %s: %s failed (HTTP %ld): %s", endpoint,
                   path, status,
                   qdict_get_try_str(dict, "message") ?:
                   qdict_get_try_str(dict, "error") ?: "no message");
        qobject_unref(dict);
        return NULL;
    }
    return dict;
}

/* POST @body (taken) to @path; the answer, or NULL with @errp set. */
static QDict *etcd_post(EtcdClient *c, const char *path, QDict *body,
                        Error **errp)
{
    g_autoptr(GString) json = qobject_to_json(QOBJECT(body));
    size_t n = g_strv_length(c->endpoints);

    qobject_unref(body);
    for (size_t i = 0; i < n; i++) {
        size_t e = (c->current + i) % n;
        bool unreachable = false;
        Error *err = NULL;
        QDict *answer = etcd_post_one(c, c->endpoints[e], path, json->str,
                                      &unreachable, &err);

        if (answer || !unreachable || i == n - 1) {
            c->current = e;
            error_propagate(errp, err);
            return answer;
        }
        error_free(err);
    }
    error_setg(errp, "no etcd endpoint configured");
    return NULL;
}

static bool etcd_int(QDict *d, const char *key, int64_t *out)
{
    const char *s = qdict_get_try_str(d, key);

    if (!s) {
        *out = 0;
        return !qdict_haskey(d, key);
    }
    return !qemu_strtoi64(s, NULL, 10, out);
}

bool etcd_lease_grant(EtcdClient *c, int64_t ttl_s, int64_t *id,
                      Error **errp)
{
    QDict *body = qdict_new();
    g_autoptr(QDict) answer = NULL;

    qdict_put_int(body, "TTL", ttl_s);
    answer = etcd_post(c, "/v3/lease/grant", body, errp);
    if (!answer) {
        return false;
    }
    if (!etcd_int(answer, "ID", id) || !*id) {
        error_setg(errp, "etcd granted a lease without an ID");
        return false;
    }
    return true;
}

bool etcd_lease_keepalive(EtcdClient *c, int64_t id, bool *alive,
                          Error **errp)
{
    QDict *body = qdict_new();
    g_autoptr(QDict) answer = NULL;
    QDict *result;
    int64_t ttl;

    put_id(body, "ID", id);
    answer = etcd_post(c, "/v3/lease/keepalive", body, errp);
    if (!answer) {
        return false;
    }
    result = qdict_get_qdict(answer, "result");
    if (!result || !etcd_int(result, "TTL", &ttl)) {
        error_setg(errp, "etcd answered a keep-alive without a result");
        return false;
    }
    /* An expired lease answers without a TTL (0). */
    *alive = ttl > 0;
    return true;
}

bool etcd_lease_revoke(EtcdClient *c, int64_t id, Error **errp)
{
    QDict *body = qdict_new();
    g_autoptr(QDict) answer = NULL;

    put_id(body, "ID", id);
    answer = etcd_post(c, "/v3/lease/revoke", body, errp);
    return answer != NULL;
}

bool etcd_get(EtcdClient *c, const char *key, char **value, Error **errp)
{
    QDict *body = qdict_new();
    g_autoptr(QDict) answer = NULL;
    QList *kvs;
    QDict *kv;
    const char *v;
    gsize len;
    guchar *raw;

    put_b64(body, "key", key);
    answer = etcd_post(c, "/v3/kv/range", body, errp);
    if (!answer) {
        return false;
    }
    *value = NULL;
    kvs = qdict_get_qlist(answer, "kvs");
    if (!kvs || qlist_empty(kvs)) {
        return true;
    }
    kv = qobject_to(QDict, qlist_peek(kvs));
    v = kv ? qdict_get_try_str(kv, "value") : NULL;
    raw = g_base64_decode(v ?: "", &len);
    *value = g_strndup((char *)raw, len);
    g_free(raw);
    return true;
}

EtcdTxn *etcd_txn_new(void)
{
    EtcdTxn *t = g_new0(EtcdTxn, 1);

    t->compare = qlist_new();
    t->success = qlist_new();
    return t;
}

void etcd_txn_free(EtcdTxn *t)
{
    qobject_unref(t->compare);
    qobject_unref(t->success);
    g_free(t);
}

void etcd_txn_if_absent(EtcdTxn *t, const char *key)
{
    QDict *cmp = qdict_new();

    /* A key that does not exist has version 0. */
    put_b64(cmp, "key", key);
    qdict_put_str(cmp, "target", "VERSION");
    qdict_put_str(cmp, "result", "EQUAL");
    qdict_put_str(cmp, "version", "0");
    qlist_append(t->compare, cmp);
}

void etcd_txn_if_equal(EtcdTxn *t, const char *key, const char *value)
{
    QDict *cmp = qdict_new();

    put_b64(cmp, "key", key);
    qdict_put_str(cmp, "target", "VALUE");
    qdict_put_str(cmp, "result", "EQUAL");
    put_b64(cmp, "value", value);
    qlist_append(t->compare, cmp);
}

void etcd_txn_put(EtcdTxn *t, const char *key, const char *value,
                  int64_t lease)
{
    QDict *op = qdict_new();
    QDict *put = qdict_new();

    put_b64(put, "key", key);
    put_b64(put, "value", value);
    if (lease) {
        put_id(put, "lease", lease);
    }
    qdict_put(op, "requestPut", put);
    qlist_append(t->success, op);
}

void etcd_txn_delete(EtcdTxn *t, const char *key)
{
    QDict *op = qdict_new();
    QDict *del = qdict_new();

    put_b64(del, "key", key);
    qdict_put(op, "requestDeleteRange", del);
    qlist_append(t->success, op);
}

bool etcd_txn_commit(EtcdClient *c, EtcdTxn *t, bool *succeeded,
                     Error **errp)
{
    QDict *body = qdict_new();
    g_autoptr(QDict) answer = NULL;

    qdict_put(body, "compare", qobject_ref(t->compare));
    qdict_put(body, "success", qobject_ref(t->success));
    answer = etcd_post(c, "/v3/kv/txn", body, errp);
    if (!answer) {
        return false;
    }
    *succeeded = qdict_get_try_bool(answer, "succeeded", false);
    return true;
}
