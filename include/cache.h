/* The token cache: tokens by (grant, user id, scope), single-flight minting,
 * refresh ahead, least-recently-used eviction. It knows nothing of HTTP or of
 * Instacart: tokens come from a fetch function, so a second tier (a shared
 * store for a fleet) can sit behind it without changing its callers. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "oauth.h"
#include "token.h"

typedef struct cache cache;

/* Delivers a fetch's result: t is a new reference for the callee, or NULL. */
typedef void (*cache_done_fn)(void *userdata, const mint_outcome *o, token *t);
/* What a fetch is for: a second tier (fleet mode) adopts another host's
 * token only if it has min_life_ms left, and may put off a refresh while
 * the token in hand still has plenty of life. */
struct cache_want {
    uint64_t min_life_ms; /* least remaining life of a token worth taking */
    uint64_t have_ms;     /* a background refresh: the current token's remaining life; 0 on a miss */
};
/* Starts fetching a token; must call done exactly once, from any thread
 * (even before returning). want is only valid during the call. */
typedef void (*cache_fetch_fn)(void *source, enum oauth_grant grant, const char *user_id,
                               const char *scope, const struct cache_want *want, cache_done_fn done,
                               void *ctx);

typedef struct cache_settings {
    unsigned max_entries;
    uint64_t min_ttl_ms;          /* least remaining lifetime of a token handed out */
    unsigned refresh_before_pct;  /* refresh in the background this close to expiry */
    uint64_t failure_ttl_ms;      /* how long a rejection for one key is remembered */
    unsigned max_waiters;         /* callers waiting on one mint */
    uint64_t retry_base_ms;       /* backoff of failed background refreshes */
    uint64_t retry_max_ms;
    uint64_t (*clock)(void);      /* now_ms unless a test says otherwise */
} cache_settings;

enum {
    CACHE_HIT = 0,    /* *ret_token holds a token */
    CACHE_MISS,       /* this call started a fetch; done will be called */
    CACHE_COALESCED,  /* joined a fetch in flight; done will be called */
    CACHE_FAILED,     /* a recent rejection for this key is remembered: *ret_outcome */
};

struct cache_stats {
    unsigned long long hits, misses, coalesced, refreshes, evictions, expirations;
    unsigned long long entries, fetching;
};

int cache_new(const cache_settings *s, cache_fetch_fn fetch, void *source, cache **ret);
/* A token for the key with at least min_ttl_ms left (the cache's own minimum
 * when 0), or a promise to call done. With done NULL, only looks: -EAGAIN
 * where it would have had to wait. Returns a CACHE_* value, -EBUSY when
 * too many callers already wait on this key, -ENOBUFS when every entry is
 * busy minting and none can be evicted. */
int cache_get(cache *c, enum oauth_grant grant, const char *user_id, const char *scope,
              uint64_t min_ttl_ms, cache_done_fn done, void *userdata,
              token **ret_token, mint_outcome *ret_outcome);
/* Drops expired entries; call periodically. Returns how many went. */
size_t cache_sweep(cache *c);
void cache_get_stats(cache *c, struct cache_stats *ret);
/* Call only when no fetch is in flight (stop the source first). */
cache *cache_free(cache *c);

/* Handing the cache over a restart (snapshot.c) and flushing it on a change
 * of credentials (reload). */

/* Called for each entry holding a token with time left, with the cache's
 * lock held: it must not call back into the cache. t is borrowed. */
typedef void (*cache_export_fn)(void *userdata, enum oauth_grant grant, const char *user_id,
                                const char *scope, const token *t);
/* Returns how many entries fn was given. */
size_t cache_export(cache *c, cache_export_fn fn, void *userdata);
/* Inserts a token (a restored one) for the key; the cache takes its own
 * reference. Returns 0, -EEXIST when the key already has a token or a
 * fetch, -EINVAL, -ENOBUFS when full of busy entries, or -ENOMEM. */
int cache_put(cache *c, enum oauth_grant grant, const char *user_id, const char *scope, token *t);
/* Forgets every token and remembered failure (an operator's or the fleet's
 * flush). What fetches in flight bring is not kept: it may have been read
 * before the flush; their callers get a fetch made after it. Returns how
 * many entries went. */
size_t cache_flush(cache *c);
/* The same; with stale_fetches false, fetches in flight complete normally:
 * for a change of credentials or server, whose source (the upstream client)
 * already answers in flight for the new ones. */
size_t cache_flush_as(cache *c, bool stale_fetches);

/* Whether the key's token is t (no other, and not dropped since). Touches
 * nothing: no hit counted, no order changed. */
bool cache_holds(cache *c, enum oauth_grant grant, const char *user_id, const char *scope, const token *t);
/* Drops the key's token (and any remembered failure). Returns 1 with the
 * dropped token in *ret_token (a reference for the caller, say to revoke
 * it; NULL to just wipe it), 0 when nothing was cached. */
int cache_drop(cache *c, enum oauth_grant grant, const char *user_id, const char *scope,
               token **ret_token);
/* The same, only if the key's token is still `only` (NULL: whatever it is):
 * a caller that found a token refused drops that one, not a newer one. */
int cache_drop_if(cache *c, enum oauth_grant grant, const char *user_id, const char *scope,
                  const token *only, token **ret_token);
