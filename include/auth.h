/* Callers' API keys: who may use which routes, and for which scopes. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

enum auth_right {
    RIGHT_TOKEN = 1 << 0,        /* GET /v1/token, drop-in user grant */
    RIGHT_CLIENT_TOKEN = 1 << 1, /* GET /v1/client-token, drop-in client_credentials */
    RIGHT_FRONTEND = 1 << 2,     /* GET /v1/frontend/token, the user header */
    RIGHT_PROXY = 1 << 3,        /* the Recommendations proxy, the user header */
    RIGHT_ADMIN = 1 << 4,        /* cache control, status */
};

typedef struct auth auth;
typedef struct auth_key auth_key;

/* Reads a keys file: lines "NAME SHA256HEX RIGHT[,RIGHT...] [scopes=S[,S...]]",
 * '#' comments. The file must be a regular file owned by root or tokend's
 * user and not writable by group or others. Returns 0, or -errno with a
 * message naming file and line in err. */
int auth_load(const char *path, auth **ret, char *err, size_t err_size);
/* The key presented, or NULL when it is no key of ours. Compares against
 * every key's hash in constant time. Valid while a is. */
const auth_key *auth_find(const auth *a, const char *key, size_t len);
int auth_key_rights(const auth_key *k);
/* Whether the key may ask for scope ("" for none, client_credentials) on a
 * frontend route (reached by a browser's user through the site's proxy) or
 * another. A line with scopes= allows exactly those ("*": any), on every
 * route. Without it, a frontend route gets only default_scope (the
 * browser's user picks nothing), and the others any scope. */
bool auth_key_allows_scope(const auth_key *k, const char *scope, const char *default_scope, bool frontend);
/* The rights of the key, or -1 when it is no key of ours; *ret_name (may be
 * NULL) names it. */
int auth_check(const auth *a, const char *key, size_t len, const char **ret_name);
auth *auth_free(auth *a);

/* The keys in force, read by every request while a reload may swap them:
 * one rwlock, so a request's lookup never sees keys being freed. */
typedef struct auth_store auth_store;

/* keys: NULL for no keys file; owned by the store from here, even on
 * failure. Returns 0 or -ENOMEM. */
int auth_store_new(auth *keys, auth_store **ret);
/* Reload: keys (NULL: none) from the next lookup on; frees the old ones. */
void auth_store_set(auth_store *s, auth *keys);
/* The presented key's rights (-1: no key, or none of ours); *ret_keyed:
 * whether a keys file is in force; *ret_scope_ok: whether the key may ask
 * for scope (NULL: nothing to check) on a frontend route or another, as
 * auth_key_allows_scope() says. One lookup under the lock. */
int auth_store_check(auth_store *s, const char *key, size_t len, const char *scope, const char *default_scope,
                     bool frontend, bool *ret_keyed, bool *ret_scope_ok);
auth_store *auth_store_free(auth_store *s);
