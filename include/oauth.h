/* Instacart's OAuth wire format: the request body of a mint and the parsing
 * of answers. Pure functions, no I/O, so they are unit tested and fuzzed. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "token.h"

#define OAUTH_USER_ID_MAX 256
#define OAUTH_SCOPE_MAX 256
#define OAUTH_TOKEN_MAX 2048
#define OAUTH_LIFETIME_MAX (7 * 24 * 3600)
#define OAUTH_BODY_MAX (64 * 1024)

enum oauth_grant {
    OAUTH_GRANT_USER_ASSERTION, /* fulfillment_user_assertion */
    OAUTH_GRANT_CLIENT_CREDENTIALS,
};

/* The assertion: standard Base64 of {"user_id": user_id}, built with cJSON so
 * any id is escaped correctly. *ret is malloc()ed; wipe_free_str() it. */
int oauth_assertion(const char *user_id, char **ret);

/* The JSON body of POST /v2/oauth/token. user_id is ignored for
 * client_credentials; scope may be NULL. *ret holds the secret: wipe it. */
int oauth_request_body(enum oauth_grant grant, const char *client_id, const char *client_secret,
                       const char *scope, const char *user_id, char **ret, size_t *ret_len);

/* The JSON body of POST /v2/oauth/token/revoke. *ret holds the secret. */
int oauth_revoke_body(const char *client_id, const char *client_secret, const char *token_value,
                      char **ret, size_t *ret_len);

/* Parses a 200 answer. Returns 0 with a new token, or -EBADMSG when anything
 * is missing, malformed or out of range (the answer must then not be cached). */
int oauth_parse_token(const char *body, size_t len, uint64_t received_ms, token **ret);

/* Extracts an error code from an error answer, whatever its shape
 * ({"error": "x"}, {"error": {"code": "x"}}, {"errors": [{...}]}). Writes a
 * printable, truncated code to out, or "" when none is found. */
void oauth_parse_error(const char *body, size_t len, char *out, size_t out_size);

/* True if s is a token value tokend hands out: 1..OAUTH_TOKEN_MAX RFC 6750
 * b64token characters (letters, digits, "-._~+/", then only trailing '='). */
bool oauth_token_valid(const char *s, size_t len);

/* True if s is a safe scope: 1..OAUTH_SCOPE_MAX printable ASCII, no quote,
 * backslash or space. */
int oauth_scope_valid(const char *s, size_t len);
