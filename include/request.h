/* Checking what callers send, independent of the HTTP library: the query
 * of a token request and the user ids in it, the drop-in's body, the API
 * key in an Authorization header, the Recommendations paths. Pure
 * functions (unit tested and fuzzed); the HTTP front feeds them what
 * libmicrohttpd decoded. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "oauth.h"

#define REQUEST_MIN_TTL_MAX_S (12 * 3600)

typedef struct token_query {
    const char *user_id; /* point into the caller's buffers */
    size_t user_id_len;
    const char *scope;
    size_t scope_len;
    uint64_t min_ttl_ms; /* 0 when not given */
    bool has_min_ttl;
    const char *error;   /* what was wrong, for error_description */
} token_query;

/* 1..256 bytes of UTF-8 without control characters. */
bool request_user_id_valid(const char *s, size_t len);

/* Feeds one decoded query parameter (value may be NULL for "?key").
 * allow_user_id is false where the user id comes from elsewhere (frontend
 * routes). Returns 0 or -EINVAL with q->error set. */
int token_query_add(token_query *q, const char *key, size_t key_len, const char *value,
                    size_t value_len, bool allow_user_id);
/* Checks the whole: the user id is present where required. */
int token_query_finish(token_query *q, bool need_user_id);

/* A body for the drop-in POST /v2/oauth/token, minus the credentials. */
typedef struct dropin {
    enum oauth_grant grant;
    char *user_id; /* malloc()ed; NULL for client_credentials */
    char *scope;   /* malloc()ed; NULL when not given */
} dropin;

/* Parses and checks a drop-in JSON body. Returns 0, or -EINVAL with *error
 * the RFC 6749 §5.2 error code (invalid_request, invalid_grant,
 * invalid_scope, unsupported_grant_type) and *description what was wrong. */
int dropin_parse(const char *body, size_t len, dropin *ret, const char **error, const char **description);
/* The same for an application/x-www-form-urlencoded body, as standard
 * OAuth 2.0 clients send it (RFC 6749 §4.4.2): each parameter once. */
int dropin_parse_form(const char *body, size_t len, dropin *ret, const char **error, const char **description);
void dropin_clear(dropin *d);

/* The API key in an Authorization header's value (NULL: none): "Bearer
 * KEY", or where basic is true (the drop-in, as standard OAuth clients send
 * their secret) HTTP Basic with the key as the password. RFC 6749 §2.3.1
 * has the client id and secret form-encoded (application/x-www-form-
 * urlencoded) before they go into Basic: the key returned is the secret so
 * decoded, and *ret_raw (NULL unless Basic) the secret as sent, for
 * clients that send it unencoded (python-requests' HTTPBasicAuth) to be
 * tried when the decoded one is no key. Both are decoded into buf, which
 * the caller wipes. *ret_len, *ret_raw_len: their lengths. */
const char *request_api_key(const char *authorization, bool basic, char *buf, size_t size, size_t *ret_len,
                            const char **ret_raw, size_t *ret_raw_len);

/* Appends n bytes to a request body (*body: malloc()ed, NUL-terminated
 * after *len bytes, or NULL). Grown without realloc(): a drop-in body holds
 * an assertion, and realloc() would leave an unwiped copy behind. Returns
 * 0, or -ENOMEM with the body as it was. */
int request_body_append(char **body, size_t *len, const char *data, size_t n);

/* One of the four frontend Recommendations paths, with a safe {order_id}. */
bool request_proxy_path_valid(const char *path);

/* Whether the path of a request target (before any '?') holds "%00", a
 * NUL once decoded: such a path names no route. */
bool request_path_has_nul(const char *target);
