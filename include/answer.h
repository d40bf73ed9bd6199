/* An answer to an HTTP request, as a value: what a route or a refusal of
 * the HTTP front produces, and the front turns into its HTTP library's
 * response (adding what every answer carries: Cache-Control, CORS,
 * nosniff, Allow, WWW-Authenticate). The builders are pure: no HTTP
 * library, no I/O. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "token.h"

typedef struct answer {
    unsigned status;
    char *body;                /* NULL: none */
    size_t len;
    void (*free_body)(void *); /* NULL: the body is static */
    const char *content_type;  /* NULL: application/json */
    const char *x_cache;       /* a token's X-Cache, or NULL */
    unsigned retry_after_s;    /* a 503's Retry-After (0: 1 s) */
    bool preflight;            /* a CORS preflight: the route's methods allowed */
    bool refusal;              /* tokend's own error (answer_error): it names the route's methods
                                * on a 405, the scheme on a 401, Retry-After on a 503 */
} answer;

/* Each returns 0, or -ENOMEM with nothing to answer (the connection is
 * dropped). */

/* body: malloc()ed and taken, even on failure; NULL (a failed allocation)
 * gives -ENOMEM. */
int answer_json(answer *a, unsigned status, char *body);
/* body: a literal, never freed. */
int answer_static(answer *a, unsigned status, const char *body);
/* {"error", "error_description"}, any text escaped; with up, also what
 * Instacart said (upstream_status, upstream_error) and its Retry-After. */
int answer_error(answer *a, unsigned status, const char *error, const char *description, const mint_outcome *up);
/* A mint that gave no token: 502, 504 or 503 with Retry-After. oauth: the
 * drop-in, which relays Instacart's own 400 (invalid_scope, ...) as it is. */
int answer_failure(answer *a, const mint_outcome *o, bool oauth);
/* A token, in Instacart's own answer shape; the body is wiped when freed. */
int answer_token(answer *a, const token *t, const char *scope, const char *how);
/* Frees an owned body that was never handed on. */
void answer_clear(answer *a);
