/*
 * colo-manager: a client of etcd's v3 API, through its JSON gateway
 *
 * Copyright (c) 2026 The COLO project authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef COLO_MANAGER_ETCD_H
#define COLO_MANAGER_ETCD_H

typedef struct EtcdClient EtcdClient;
typedef struct EtcdTxn EtcdTxn;

/*
 * A client of the members at @endpoints (URLs), each request bounded by
 * @timeout_ms.  A request that cannot reach a member, or that a member
 * fails with a server error, tries the next.
 */
EtcdClient *etcd_client_new(char **endpoints, int64_t timeout_ms);
void etcd_client_free(EtcdClient *c);

/* A new lease of @ttl_s seconds, in *@id. */
bool etcd_lease_grant(EtcdClient *c, int64_t ttl_s, int64_t *id,
                      Error **errp);

/*
 * Renew lease @id once: etcd runs its TTL again from when it handles
 * this.  *@alive is false when the lease had expired (it stays so).
 */
bool etcd_lease_keepalive(EtcdClient *c, int64_t id, bool *alive,
                          Error **errp);

/* Revoke lease @id: the keys it holds go at once. */
bool etcd_lease_revoke(EtcdClient *c, int64_t id, Error **errp);

/* @key's value in *@value, NULL when there is no such key. */
bool etcd_get(EtcdClient *c, const char *key, char **value, Error **errp);

/*
 * A transaction: its comparisons, then what it does when all hold.
 * etcd runs it as one linearizable step.
 */
EtcdTxn *etcd_txn_new(void);
void etcd_txn_free(EtcdTxn *t);
void etcd_txn_if_absent(EtcdTxn *t, const char *key);
void etcd_txn_if_equal(EtcdTxn *t, const char *key, const char *value);
/* @lease 0: a key that no lease takes away */
void etcd_txn_put(EtcdTxn *t, const char *key, const char *value,
                  int64_t lease);
void etcd_txn_delete(EtcdTxn *t, const char *key);
/* Run @t; *@succeeded tells whether its comparisons held. */
bool etcd_txn_commit(EtcdClient *c, EtcdTxn *t, bool *succeeded,
                     Error **errp);

G_DEFINE_AUTOPTR_CLEANUP_FUNC(EtcdTxn, etcd_txn_free)

#endif
