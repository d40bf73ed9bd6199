/* Answers as values (answer.h): the JSON bodies of tokens and errors, and
 * how a failed mint maps to an HTTP status. Not responsible for sending
 * them (api.c) nor for deciding which to send (routes.c, guard.c). */
#include "answer.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

int answer_json(answer *a, unsigned status, char *body) {
    if (!body)
        return -ENOMEM;
    *a = (answer){ .status = status, .body = body, .len = strlen(body), .free_body = free };
    return 0;
}

int answer_static(answer *a, unsigned status, const char *body) {
    *a = (answer){ .status = status, .body = (char *)body, .len = strlen(body) };
    return 0;
}

/* Errors are rare: built with cJSON so any text is escaped. */
int answer_error(answer *a, unsigned status, const char *error, const char *description, const mint_outcome *up) {
    cJSON *j = cJSON_CreateObject();
    char *body = NULL;
    int r;

    if (j && cJSON_AddStringToObject(j, "error", error) &&
        cJSON_AddStringToObject(j, "error_description", description) &&
        /* upstream_error also without an answer: why there was none (tls_untrusted, ...) */
        (!up || !up->http_status || cJSON_AddNumberToObject(j, "upstream_status", up->http_status)) &&
        (!up || !up->error[0] || cJSON_AddStringToObject(j, "upstream_error", up->error)))
        body = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    r = answer_json(a, status, body);
    if (r == 0) {
        a->refusal = true;
        a->retry_after_s = up ? up->retry_after_s : 0;
    }
    return r;
}

int answer_failure(answer *a, const mint_outcome *o, bool oauth) {
    char desc[256];

    switch (o->kind) {
    case MINT_REJECTED:
        snprintf(desc, sizeof(desc), "Instacart refused the request: HTTP %d %s", o->http_status, o->error);
        /* the drop-in speaks OAuth: a 400 of Instacart's (invalid_scope,
         * invalid_grant) is the caller's to see as it is */
        if (oauth && o->http_status == 400)
            return answer_error(a, 400, o->error, desc, o);
        return answer_error(a, 502, "upstream_rejected", desc, o);
    case MINT_TIMEOUT:
        snprintf(desc, sizeof(desc), "Instacart did not answer in time (%s); try again later", o->error);
        return answer_error(a, 504, "upstream_timeout", desc, o);
    case MINT_UNAVAILABLE:
    default:
        snprintf(desc, sizeof(desc), "Instacart is unavailable (%s); try again after Retry-After", o->error);
        return answer_error(a, 503, "upstream_unavailable", desc, o);
    }
}

static void free_wiped(void *p) {
    wipe_free_str(p);
}

static char *put(char *p, const char *s, size_t n) {
    memcpy(p, s, n);
    return p + n;
}

static char *put_u64(char *p, uint64_t v) {
    char digits[20];
    int i = 0;

    do
        digits[i++] = (char)('0' + v % 10);
    while ((v /= 10) != 0);
    while (i > 0)
        *p++ = digits[--i];
    return p;
}

#define PUT_LITERAL(p, s) put(p, s, sizeof(s) - 1)

/* The hit path: Instacart's own answer shape, so clients parse one format.
 * Written by hand, not with cJSON nor snprintf: every field is a number or
 * was validated to need no escaping (RFC 6750 token characters, checked
 * scope), this runs for every request, and snprintf into a 4.5 KB buffer
 * was a tenth of the hit path's instructions. The buffer is sized to the
 * answer, so it comes from malloc's small-size cache. */
int answer_token(answer *a, const token *t, const char *scope, const char *how) {
    uint64_t left = token_remaining_ms(t, now_ms()) / 1000;
    size_t slen = strlen(scope);
    char *body, *p;

    /* 128 covers the literals (80), two numbers (up to 21 each) and the NUL */
    body = malloc((size_t)t->len + slen + 128);
    if (!body)
        return -ENOMEM;
    p = PUT_LITERAL(body, "{\"access_token\":\"");
    p = put(p, t->value, t->len);
    p = PUT_LITERAL(p, "\",\"token_type\":\"Bearer\",\"expires_in\":");
    /* whole seconds left, but never 0 for a token we hand out: a caller
     * reads 0 as already expired (a token of 1 s is served with 0.9 s) */
    p = put_u64(p, left ? left : 1);
    if (slen) {
        p = PUT_LITERAL(p, ",\"scope\":\"");
        p = put(p, scope, slen);
        *p++ = '"';
    }
    p = PUT_LITERAL(p, ",\"created_at\":");
    if (t->created_at < 0) {
        *p++ = '-';
        p = put_u64(p, (uint64_t)0 - (uint64_t)t->created_at);
    } else
        p = put_u64(p, (uint64_t)t->created_at);
    *p++ = '}';
    *p = '\0'; /* free_wiped wipes up to the NUL */
    *a = (answer){ .status = 200, .body = body, .len = (size_t)(p - body), .free_body = free_wiped, .x_cache = how };
    return 0;
}

void answer_clear(answer *a) {
    if (a->body && a->free_body)
        a->free_body(a->body);
    a->body = NULL;
}
