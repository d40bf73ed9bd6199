/* The token cache. Responsible for: which token a caller gets, when a token
 * is minted (once per key however many callers wait: single flight), when it
 * is refreshed ahead of expiry, and which entries go when memory is bounded.
 * Not responsible for minting (a fetch function does it) nor for HTTP.
 *
 * One mutex guards everything; the critical sections are a hash lookup and a
 * few pointer moves. Callbacks and fetches are always run with it released. */
#include "cache.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <uthash.h>

#include "util.h"

#define KEY_MAX (1 + OAUTH_USER_ID_MAX + 1 + OAUTH_SCOPE_MAX)

struct waiter {
    struct waiter *next;
    cache_done_fn done;
    void *userdata;
};

typedef struct cache_entry {
    UT_hash_handle hh;
    struct cache_entry *lru_prev, *lru_next; /* head is the most recently used */
    cache *cache;
    token *tok;
    struct waiter *waiters;
    unsigned n_waiters;
    bool fetching;
    uint8_t refresh_failures;
    uint64_t refresh_at_ms;   /* refresh in the background from here on */
    uint64_t retry_at_ms;     /* no background refresh before this (after a failure) */
    uint64_t failed_until_ms; /* a remembered rejection answers until then */
    mint_outcome failure;
    enum oauth_grant grant;
    uint16_t keylen;
    char key[];               /* grant byte, user id, NUL, scope */
} cache_entry;

struct cache {
    pthread_mutex_t lock;
    cache_settings s;
    cache_fetch_fn fetch;
    void *source;
    cache_entry *table;
    cache_entry *lru_head, *lru_tail;
    cache_entry *sweep_cursor;
    uint64_t rng;
    struct cache_stats stats;
};

int cache_new(const cache_settings *s, cache_fetch_fn fetch, void *source, cache **ret) {
    cache *c = calloc(1, sizeof(*c));

    if (!c)
        return -ENOMEM;
    pthread_mutex_init(&c->lock, NULL);
    c->s = *s;
    if (!c->s.clock)
        c->s.clock = now_ms;
    if (c->s.max_entries == 0)
        c->s.max_entries = 1;
    c->fetch = fetch;
    c->source = source;
    c->rng = random_u64() | 1;
    *ret = c;
    return 0;
}

static uint64_t rng_next(cache *c) {
    /* xorshift64: jitter needs spread, not secrecy */
    c->rng ^= c->rng << 13;
    c->rng ^= c->rng >> 7;
    c->rng ^= c->rng << 17;
    return c->rng;
}

static void lru_unlink(cache *c, cache_entry *e) {
    if (e->lru_prev)
        e->lru_prev->lru_next = e->lru_next;
    else
        c->lru_head = e->lru_next;
    if (e->lru_next)
        e->lru_next->lru_prev = e->lru_prev;
    else
        c->lru_tail = e->lru_prev;
    e->lru_prev = e->lru_next = NULL;
}

static void lru_push_head(cache *c, cache_entry *e) {
    e->lru_prev = NULL;
    e->lru_next = c->lru_head;
    if (c->lru_head)
        c->lru_head->lru_prev = e;
    c->lru_head = e;
    if (!c->lru_tail)
        c->lru_tail = e;
}

static void entry_remove(cache *c, cache_entry *e) {
    if (c->sweep_cursor == e)
        c->sweep_cursor = e->hh.next;
    HASH_DEL(c->table, e);
    lru_unlink(c, e);
    token_unref(e->tok);
    /* the key holds a user id: not a secret, but no need to leave it around */
    wipe_free(e, sizeof(*e) + e->keylen);
}

/* The least remaining lifetime a token must have to be handed out. Capped at
 * half the token's lifetime, so short-lived tokens are still reused and no
 * caller's min_ttl can make every request mint. */
static uint64_t needed_ms(const token *t, uint64_t min_ttl_ms) {
    uint64_t half = (uint64_t)t->lifetime_s * MS_PER_SEC / 2;
    return min_ttl_ms < half ? min_ttl_ms : half;
}

static void schedule_refresh(cache *c, cache_entry *e, uint64_t now) {
    uint64_t life = (uint64_t)e->tok->lifetime_s * MS_PER_SEC;
    uint64_t before = life * c->s.refresh_before_pct / 100;
    /* about +-10% jitter so tokens minted together do not come due together */
    uint64_t span = before / 5;
    int64_t jitter = span ? (int64_t)(rng_next(c) % (span + 1)) - (int64_t)(span / 2) : 0;
    int64_t at = (int64_t)(e->tok->expires_ms - before) + jitter;

    e->refresh_at_ms = at > (int64_t)now ? (uint64_t)at : now;
    e->retry_at_ms = 0;
    e->refresh_failures = 0;
}

/* The key: grant byte, user id, NUL, scope. Returns its length, 0 if too long. */
static size_t make_key(char buf[KEY_MAX], enum oauth_grant grant, const char *user_id, const char *scope) {
    size_t ulen = strlen(user_id), slen = strlen(scope);

    if (ulen > OAUTH_USER_ID_MAX || slen > OAUTH_SCOPE_MAX)
        return 0;
    buf[0] = (char)grant;
    memcpy(buf + 1, user_id, ulen);
    buf[1 + ulen] = '\0';
    memcpy(buf + 2 + ulen, scope, slen);
    return 1 + ulen + 1 + slen;
}

static cache_entry *entry_find(cache *c, const char *key, size_t keylen) {
    cache_entry *e = NULL;
    HASH_FIND(hh, c->table, key, keylen, e);
    return e;
}

/* Makes room for one entry: evicts from the cold end, skipping entries with
 * a fetch in flight (their callers are waiting on them). */
static int make_room(cache *c) {
    unsigned tries = 0;

    if (HASH_COUNT(c->table) < c->s.max_entries)
        return 0;
    for (cache_entry *e = c->lru_tail; e && tries < 64; e = e->lru_prev, tries++) {
        if (e->fetching)
            continue;
        entry_remove(c, e);
        c->stats.evictions++;
        return 0;
    }
    return -ENOBUFS;
}

/* A new entry for the key, room made for it first. Called with the lock held. */
static int entry_new(cache *c, enum oauth_grant grant, const char *key, size_t keylen, cache_entry **ret) {
    cache_entry *e;
    int r = make_room(c);

    if (r < 0)
        return r;
    e = calloc(1, sizeof(*e) + keylen);
    if (!e)
        return -ENOMEM;
    e->cache = c;
    e->grant = grant;
    e->keylen = (uint16_t)keylen;
    memcpy(e->key, key, keylen);
    HASH_ADD(hh, c->table, key, keylen, e);
    *ret = e;
    return 0;
}

static void fetch_done(void *userdata, const mint_outcome *o, token *t);

int cache_get(cache *c, enum oauth_grant grant, const char *user_id, const char *scope,
              uint64_t min_ttl_ms, cache_done_fn done, void *userdata,
              token **ret_token, mint_outcome *ret_outcome) {
    char keybuf[KEY_MAX];
    size_t keylen = make_key(keybuf, grant, user_id, scope);
    struct waiter *w;
    cache_entry *e;
    bool start = false, background = false;
    token *hit = NULL;
    uint64_t now;
    int r;

    if (!keylen)
        return -EINVAL;
    if (min_ttl_ms == 0)
        min_ttl_ms = c->s.min_ttl_ms;

    pthread_mutex_lock(&c->lock);
    now = c->s.clock();
    e = entry_find(c, keybuf, keylen);
    if (e) {
        lru_unlink(c, e);
        lru_push_head(c, e);
        if (e->tok && token_remaining_ms(e->tok, now) > needed_ms(e->tok, min_ttl_ms)) {
            hit = token_ref(e->tok);
            c->stats.hits++;
            if (now >= e->refresh_at_ms && now >= e->retry_at_ms && !e->fetching) {
                e->fetching = true;
                c->stats.fetching++;
                background = true;
                c->stats.refreshes++;
            }
            pthread_mutex_unlock(&c->lock);
            if (background)
                c->fetch(c->source, grant, user_id, scope, fetch_done, e);
            *ret_token = hit;
            return CACHE_HIT;
        }
        if (now < e->failed_until_ms && !e->fetching) {
            *ret_outcome = e->failure;
            pthread_mutex_unlock(&c->lock);
            return CACHE_FAILED;
        }
    }
    if (!done) {
        /* a look-up only: the caller allocates its waiting state, then asks again */
        pthread_mutex_unlock(&c->lock);
        return -EAGAIN;
    }
    if (!e) {
        r = entry_new(c, grant, keybuf, keylen, &e);
        if (r < 0) {
            pthread_mutex_unlock(&c->lock);
            return r;
        }
        lru_push_head(c, e);
    }
    if (e->n_waiters >= c->s.max_waiters) {
        pthread_mutex_unlock(&c->lock);
        return -EBUSY;
    }
    w = malloc(sizeof(*w));
    if (!w) {
        pthread_mutex_unlock(&c->lock);
        return -ENOMEM;
    }
    w->done = done;
    w->userdata = userdata;
    w->next = e->waiters;
    e->waiters = w;
    e->n_waiters++;
    r = e->fetching ? CACHE_COALESCED : CACHE_MISS;
    if (!e->fetching) {
        e->fetching = true;
        c->stats.fetching++;
        start = true;
        c->stats.misses++;
    } else
        c->stats.coalesced++;
    pthread_mutex_unlock(&c->lock);

    if (start)
        c->fetch(c->source, grant, user_id, scope, fetch_done, e);
    return r;
}

static uint64_t backoff_ms(cache *c, unsigned failures) {
    uint64_t d = c->s.retry_base_ms << (failures < 16 ? failures : 16);
    if (d > c->s.retry_max_ms || d == 0)
        d = c->s.retry_max_ms;
    return d / 2 + rng_next(c) % (d / 2 + 1);
}

static void fetch_done(void *userdata, const mint_outcome *o, token *t) {
    cache_entry *e = userdata;
    cache *c = e->cache;
    struct waiter *waiters;
    uint64_t now;

    pthread_mutex_lock(&c->lock);
    now = c->s.clock();
    e->fetching = false;
    c->stats.fetching--;
    waiters = e->waiters;
    e->waiters = NULL;
    e->n_waiters = 0;
    if (t) {
        token_unref(e->tok);
        e->tok = token_ref(t);
        e->failed_until_ms = 0;
        schedule_refresh(c, e, now);
    } else {
        /* A rejection of this key (say, an unknown user) is remembered briefly
         * so one bad id cannot hammer Instacart; failures of Instacart itself
         * are not: the upstream client has its own breaker for those. */
        if (o->kind == MINT_REJECTED && o->http_status == 400 && c->s.failure_ttl_ms) {
            e->failure = *o;
            e->failed_until_ms = now + c->s.failure_ttl_ms;
        }
        if (e->tok) {
            /* a failed refresh: the old token serves on, retried with backoff,
             * and not before a remembered rejection lapses */
            e->retry_at_ms = now + backoff_ms(c, e->refresh_failures);
            if (e->retry_at_ms < e->failed_until_ms)
                e->retry_at_ms = e->failed_until_ms;
            if (e->refresh_failures < 255)
                e->refresh_failures++;
        }
    }
    /* An entry with neither a token nor a remembered failure has no reason to
     * stay: leaving it would let failed users fill the cache. */
    if (!e->tok && now >= e->failed_until_ms)
        entry_remove(c, e);
    pthread_mutex_unlock(&c->lock);

    while (waiters) {
        struct waiter *w = waiters;
        waiters = w->next;
        w->done(w->userdata, o, token_ref(t));
        free(w);
    }
    token_unref(t);
}

size_t cache_sweep(cache *c) {
    size_t dropped = 0, visited = 0;
    cache_entry *e;
    uint64_t now;

    pthread_mutex_lock(&c->lock);
    now = c->s.clock();
    /* Incremental: a bounded slice per call keeps the lock short even with a
     * million entries; the cursor carries on from there next time. */
    if (!c->sweep_cursor)
        c->sweep_cursor = c->table;
    for (e = c->sweep_cursor; e && visited < 20000; visited++) {
        cache_entry *next = e->hh.next;
        if (!e->fetching && (!e->tok || e->tok->expires_ms <= now) && now >= e->failed_until_ms) {
            if (e->tok)
                c->stats.expirations++;
            entry_remove(c, e);
            dropped++;
        }
        e = next;
    }
    c->sweep_cursor = e;
    pthread_mutex_unlock(&c->lock);
    return dropped;
}

void cache_get_stats(cache *c, struct cache_stats *ret) {
    pthread_mutex_lock(&c->lock);
    *ret = c->stats;
    ret->entries = HASH_COUNT(c->table);
    pthread_mutex_unlock(&c->lock);
}

cache *cache_free(cache *c) {
    cache_entry *e, *tmp;

    if (!c)
        return NULL;
    HASH_ITER(hh, c->table, e, tmp) {
        /* no fetch may be in flight here: its callback would touch freed memory */
        entry_remove(c, e);
    }
    pthread_mutex_destroy(&c->lock);
    free(c);
    return NULL;
}

/* ---- export, restore and flush: for restarts (snapshot.c) and reloads ---- */

size_t cache_export(cache *c, cache_export_fn fn, void *userdata) {
    char scope[OAUTH_SCOPE_MAX + 1];
    size_t n = 0;
    cache_entry *e;
    uint64_t now;

    pthread_mutex_lock(&c->lock);
    now = c->s.clock();
    /* least recently used first, so a restore that overflows a smaller
     * cache evicts the coldest entries, as the running cache would have */
    for (e = c->lru_tail; e; e = e->lru_prev) {
        const char *user = e->key + 1;
        size_t ulen = strlen(user), slen = e->keylen - 2 - ulen;

        if (!e->tok || token_remaining_ms(e->tok, now) == 0)
            continue;
        memcpy(scope, user + ulen + 1, slen);
        scope[slen] = '\0';
        fn(userdata, e->grant, user, scope, e->tok);
        n++;
    }
    pthread_mutex_unlock(&c->lock);
    return n;
}

int cache_put(cache *c, enum oauth_grant grant, const char *user_id, const char *scope, token *t) {
    char keybuf[KEY_MAX];
    size_t keylen = make_key(keybuf, grant, user_id, scope);
    cache_entry *e;
    int r;

    if (!keylen || !t)
        return -EINVAL;

    pthread_mutex_lock(&c->lock);
    e = entry_find(c, keybuf, keylen);
    if (e && (e->tok || e->fetching)) {
        pthread_mutex_unlock(&c->lock);
        return -EEXIST;
    }
    if (!e) {
        r = entry_new(c, grant, keybuf, keylen, &e);
        if (r < 0) {
            pthread_mutex_unlock(&c->lock);
            return r;
        }
    } else
        lru_unlink(c, e);
    lru_push_head(c, e);
    e->tok = token_ref(t);
    e->failed_until_ms = 0;
    schedule_refresh(c, e, c->s.clock());
    pthread_mutex_unlock(&c->lock);
    return 0;
}

size_t cache_flush(cache *c) {
    cache_entry *e, *tmp;
    size_t n = 0;

    pthread_mutex_lock(&c->lock);
    HASH_ITER(hh, c->table, e, tmp) {
        if (e->fetching) {
            /* its waiters are answered by the fetch; only the old token goes */
            e->tok = token_unref(e->tok);
            e->failed_until_ms = 0;
        } else
            entry_remove(c, e);
        n++;
    }
    pthread_mutex_unlock(&c->lock);
    return n;
}

/* ---- operator control ---- */

int cache_drop(cache *c, enum oauth_grant grant, const char *user_id, const char *scope,
               token **ret_token) {
    return cache_drop_if(c, grant, user_id, scope, NULL, ret_token);
}

int cache_drop_if(cache *c, enum oauth_grant grant, const char *user_id, const char *scope,
                  const token *only, token **ret_token) {
    char keybuf[KEY_MAX];
    size_t keylen = make_key(keybuf, grant, user_id, scope);
    cache_entry *e;
    token *t = NULL;

    if (!keylen)
        return -EINVAL;
    pthread_mutex_lock(&c->lock);
    e = entry_find(c, keybuf, keylen);
    if (e && (!only || e->tok == only)) {
        t = e->tok;
        e->tok = NULL;
        e->failed_until_ms = 0;
        /* a fetch in flight keeps the entry: its waiters are answered by it */
        if (!e->fetching)
            entry_remove(c, e);
    }
    pthread_mutex_unlock(&c->lock);
    if (!t)
        return 0;
    if (ret_token)
        *ret_token = t;
    else
        token_unref(t);
    return 1;
}
