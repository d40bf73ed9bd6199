/* Recommendations calls forwarded to Instacart for a caller, over the
 * token client's HTTP client: one attempt, its answer passed back as it is. */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "http_client.h"

/* status is Instacart's HTTP status, or 0 when there was no answer (body
 * NULL then). Called exactly once, from the worker thread or before
 * forward_submit returns. */
typedef void (*forward_done_fn)(void *userdata, int status, const char *content_type, const char *body,
                                size_t len);

struct forward_call {
    const char *url;    /* where to: NULL fails the call at once */
    const char *path;   /* for the log */
    const char *bearer; /* the user's token */
    const char *body;
    size_t len;
    size_t answer_max;
    uint64_t deadline_ms;        /* it must have started by then */
    uint64_t attempt_timeout_ms; /* and take no longer than this */
};

/* Everything in c is copied. Not retried (the caller decides) and not
 * counted against the breaker, which guards the token endpoint. */
void forward_submit(http_client *hc, const struct forward_call *c, forward_done_fn done, void *userdata);
