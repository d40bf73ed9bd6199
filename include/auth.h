/* Callers' API keys: who may use which routes. */
#pragma once

#include <stddef.h>

enum auth_right {
    RIGHT_TOKEN = 1 << 0,        /* GET /v1/token, drop-in user grant */
    RIGHT_CLIENT_TOKEN = 1 << 1, /* GET /v1/client-token, drop-in client_credentials */
    RIGHT_FRONTEND = 1 << 2,     /* GET /v1/frontend/token, the user header */
    RIGHT_PROXY = 1 << 3,        /* the Recommendations proxy, the user header */
    RIGHT_ADMIN = 1 << 4,        /* cache control, status */
};

typedef struct auth auth;

/* Reads a keys file: lines "NAME SHA256HEX RIGHT[,RIGHT...]", '#' comments.
 * Returns 0, or -errno with a message naming file and line in err. */
int auth_load(const char *path, auth **ret, char *err, size_t err_size);
/* The rights of the key, or -1 when it is no key of ours. Compares against
 * every key's hash in constant time; *ret_name (may be NULL) names it. */
int auth_check(const auth *a, const char *key, size_t len, const char **ret_name);
auth *auth_free(auth *a);
