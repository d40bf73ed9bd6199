/* A minted access token: immutable and reference counted, so a cache entry,
 * a background refresh and an answer being written can share it without
 * copies. The value is wiped when the last reference goes. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct token {
    unsigned refs;        /* atomic */
    int64_t created_at;   /* Instacart's clock, only echoed back to callers */
    uint64_t received_ms; /* local monotonic time of receipt */
    uint64_t expires_ms;  /* received_ms + expires_in: the only expiry we trust */
    /* fleet mode: when the host that minted it says it did (wall clock, ms),
     * as sealed in the value, whatever TTL Redis gave it; 0: at received_ms */
    uint64_t minted_unix_ms;
    uint32_t lifetime_s;  /* expires_in as received */
    uint16_t len;
    char value[];         /* NUL-terminated, RFC 6750 b64token characters only */
} token;

/* value must already be validated (oauth_parse_token does that). */
int token_new(const char *value, size_t len, uint32_t lifetime_s, int64_t created_at,
              uint64_t received_ms, token **ret);
token *token_ref(token *t);
token *token_unref(token *t);

static inline uint64_t token_remaining_ms(const token *t, uint64_t now) {
    return t->expires_ms > now ? t->expires_ms - now : 0;
}

/* Why a mint did not give a token. Shared by the upstream client, the cache
 * and the HTTP front, which maps each kind to an HTTP status. */
enum mint_kind {
    MINT_OK = 0,
    MINT_REJECTED,    /* Instacart answered 4xx: the request itself is wrong */
    MINT_UNAVAILABLE, /* unreachable, 5xx, 429, an answer we cannot trust, overloaded */
    MINT_TIMEOUT,     /* no answer within the deadline */
};

/* Where a token came from, for X-Cache: a mint of our own, or (fleet mode)
 * another host's token read from the shared tier, at once or after waiting
 * on that host's lease. */
enum mint_via {
    MINT_VIA_UPSTREAM = 0,
    MINT_VIA_SHARED,
    MINT_VIA_SHARED_WAIT,
};

typedef struct mint_outcome {
    enum mint_kind kind;
    enum mint_via via;
    /* A background refresh the source put off (fleet mode: another host is
     * refreshing, or Redis is out of reach while the token has plenty of
     * life). Nothing failed: callers that joined it need a fetch of their own. */
    bool deferred;
    int http_status;          /* Instacart's status, 0 when there was none */
    unsigned retry_after_s;   /* a hint for our own callers, 0 if none */
    char error[64];           /* Instacart's error code, or our own short reason */
} mint_outcome;
