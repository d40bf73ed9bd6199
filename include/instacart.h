/* What an answer of Instacart's token endpoint means: a pure function from
 * what came back (how the exchange ended, the status, Retry-After, the
 * body) to the outcome callers see and what the token client does next
 * (retry, count it against the breaker, stop for bad credentials, pause
 * for a 429). No I/O, no clock, no threads: unit tested row by row. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "http_client.h"
#include "token.h"

/* The longest pause a Retry-After can ask for, and the hint given when
 * Instacart named none. */
#define INSTACART_RETRY_AFTER_MAX_S 3600
#define INSTACART_DEFAULT_RETRY_AFTER_S 1

enum instacart_call {
    INSTACART_MINT,   /* POST /v2/oauth/token */
    INSTACART_REVOKE, /* POST /v2/oauth/token/revoke */
};

struct instacart_answer {
    enum instacart_call call;
    enum http_result result; /* HTTP_RESULT_EXPIRED and _CANCELLED are not answers */
    int status;              /* 0 when none came */
    const char *retry_after; /* the header's value, or NULL */
    const char *body;
    size_t len;
    uint64_t sent_ms;        /* when the request left: the token's clock starts there */
    int64_t now_unix;        /* for a Retry-After given as a date */
};

struct instacart_verdict {
    mint_outcome outcome;   /* what the caller is told if this is the last attempt */
    token *token;           /* a mint's token (a new reference) when outcome.kind is MINT_OK */
    unsigned retry_after_s; /* what Instacart asked for, capped; 0: nothing */
    bool retry;             /* another attempt may succeed */
    bool trips;             /* a failure of Instacart: counts against the breaker */
    bool credentials_rejected; /* our client id or secret refused: opens the breaker at once */
    bool link_broken;       /* the server cannot be reached in a way retrying cannot heal */
    unsigned pause_s;       /* a 429: no request for this long; 0: none */
};

void instacart_classify(const struct instacart_answer *a, struct instacart_verdict *ret);

/* Seconds a Retry-After value asks for (delta-seconds or an HTTP-date),
 * capped at INSTACART_RETRY_AFTER_MAX_S; 0 when it is in the past or
 * cannot be read. */
unsigned instacart_retry_after(const char *value, int64_t now_unix);

/* Sets every field: an outcome is copied into the cache and read whole. */
void instacart_outcome(mint_outcome *o, enum mint_kind kind, int status, unsigned retry_after,
                       const char *error);
