/* The token cache. Responsible for: which token a caller gets, when a token
 * is minted (once per key however many callers wait: single flight), when it
 * is refreshed ahead of expiry, and which entries go when memory is bounded.
 * Not responsible for minting (a fetch function does it) nor for HTTP.
 *
 * One mutex guards everything; the critical sections are a hash lookup and a
 * few pointer moves. Callbacks and fetches are always run with it released.
 *
 * The index is open addressing with linear probing over (hash, entry)
 * slots, at most half full, hashed with SipHash under a key drawn at start
 * (user ids come from callers: nobody can pick ids that collide). A hit
 * reads one slot, the entry (the fields a hit reads come first, the key
 * right after them) and the token. (uthash, used before, walked a chain of
 * entries and read the key from another cache line: on a 10,000-user
 * benchmark the lookup was the largest single item of the hit path's own
 * CPU time.) */
#include "cache.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

#define KEY_MAX (1 + OAUTH_USER_ID_MAX + 1 + OAUTH_SCOPE_MAX)

struct waiter {
    struct waiter *next;
    cache_done_fn done;
    void *userdata;
};

typedef struct cache_entry {
    /* what a hit reads, first */
    token *tok;
    uint64_t refresh_at_ms;   /* refresh in the background from here on */
    uint64_t retry_at_ms;     /* no background refresh before this (after a failure) */
    uint64_t failed_until_ms; /* a remembered rejection answers until then */
    struct cache_entry *lru_prev, *lru_next; /* head is the most recently used */
    uint16_t keylen;
    bool fetching;
    bool stale;               /* dropped or flushed while fetching: what the fetch brings is not kept */
    uint8_t refresh_failures;
    uint8_t restarts;         /* fetches started again because the first went stale */
    unsigned n_waiters;
    struct waiter *waiters;
    mint_outcome *failure;    /* the remembered rejection, or NULL */
    cache *cache;
    uint64_t hash;
    char key[];               /* grant byte, user id, NUL, scope */
} cache_entry;

struct slot {
    uint64_t hash;
    cache_entry *e;           /* NULL: empty */
};

#define INDEX_MIN 1024        /* slots; a power of two */
#define RESTARTS_MAX 3        /* a fetch made stale again and again ends in a failure */

struct cache {
    pthread_mutex_t lock;
    cache_settings s;
    cache_fetch_fn fetch;
    void *source;
    struct slot *slots;
    size_t mask;              /* slots - 1 */
    size_t count;             /* entries */
    unsigned char hash_key[16];
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
    for (size_t i = 0; i < sizeof(c->hash_key); i += 8) {
        uint64_t k = random_u64();
        memcpy(c->hash_key + i, &k, 8);
    }
    c->slots = calloc(INDEX_MIN, sizeof(*c->slots));
    if (!c->slots) {
        pthread_mutex_destroy(&c->lock);
        free(c);
        return -ENOMEM;
    }
    c->mask = INDEX_MIN - 1;
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

/* ---- the index ---- */

static size_t slot_of(const cache *c, const cache_entry *e) {
    size_t i = e->hash & c->mask;

    while (c->slots[i].e != e)
        i = (i + 1) & c->mask;
    return i;
}

static void index_place(struct slot *slots, size_t mask, uint64_t hash, cache_entry *e) {
    size_t i = hash & mask;

    while (slots[i].e)
        i = (i + 1) & mask;
    slots[i].hash = hash;
    slots[i].e = e;
}

/* Re-hashes into n slots (a power of two, more than twice the entries). On
 * failure to allocate, the old table stays: a full table only probes longer. */
static void index_resize(cache *c, size_t n) {
    struct slot *slots = calloc(n, sizeof(*slots));

    if (!slots)
        return;
    for (size_t i = 0; i <= c->mask; i++)
        if (c->slots[i].e)
            index_place(slots, n - 1, c->slots[i].hash, c->slots[i].e);
    free(c->slots);
    c->slots = slots;
    c->mask = n - 1;
}

static int index_add(cache *c, cache_entry *e) {
    /* at most half full, so probes stay short */
    if ((c->count + 1) * 2 > c->mask + 1)
        index_resize(c, (c->mask + 1) * 2);
    /* a resize that failed: never take the last empty slot, lookups stop at one */
    if (c->count + 1 >= c->mask + 1)
        return -ENOMEM;
    index_place(c->slots, c->mask, e->hash, e);
    c->count++;
    return 0;
}

/* Backward-shift deletion: no tombstones, so probes never lengthen over time. */
static void index_del(cache *c, cache_entry *e) {
    size_t i = slot_of(c, e), j = i;

    c->slots[i].e = NULL;
    for (;;) {
        size_t home;

        j = (j + 1) & c->mask;
        if (!c->slots[j].e)
            break;
        home = c->slots[j].hash & c->mask;
        /* the entry at j may move to the hole at i unless its home lies in (i, j] */
        if (i <= j ? (home <= i || home > j) : (home <= i && home > j)) {
            c->slots[i] = c->slots[j];
            c->slots[j].e = NULL;
            i = j;
        }
    }
    c->count--;
    if (c->mask + 1 > INDEX_MIN && c->count * 8 < c->mask + 1)
        index_resize(c, (c->mask + 1) / 2);
}

static void entry_remove(cache *c, cache_entry *e) {
    if (c->sweep_cursor == e)
        c->sweep_cursor = e->lru_prev;
    index_del(c, e);
    lru_unlink(c, e);
    token_unref(e->tok);
    free(e->failure);
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

/* How long before its expiry a token is refreshed (before the jitter). */
static uint64_t refresh_window_ms(const cache *c, const token *t) {
    return (uint64_t)t->lifetime_s * MS_PER_SEC * c->s.refresh_before_pct / 100;
}

static void schedule_refresh(cache *c, cache_entry *e, uint64_t now) {
    uint64_t before = refresh_window_ms(c, e->tok);
    /* about +-10% jitter so tokens minted together do not come due together */
    uint64_t span = before / 5;
    int64_t jitter = span ? (int64_t)(rng_next(c) % (span + 1)) - (int64_t)(span / 2) : 0;
    int64_t at = (int64_t)(e->tok->expires_ms - before) + jitter;

    e->refresh_at_ms = at > (int64_t)now ? (uint64_t)at : now;
    e->retry_at_ms = 0;
    e->refresh_failures = 0;
}

/* The key (grant byte, user id, NUL, scope) and its hash in the index.
 * Returns its length, 0 if too long. Needs no lock. */
static size_t make_key(const cache *c, char buf[KEY_MAX], enum oauth_grant grant, const char *user_id,
                       const char *scope, uint64_t *ret_hash) {
    size_t ulen = strlen(user_id), slen = strlen(scope), len = 1 + ulen + 1 + slen;

    if (ulen > OAUTH_USER_ID_MAX || slen > OAUTH_SCOPE_MAX)
        return 0;
    buf[0] = (char)grant;
    memcpy(buf + 1, user_id, ulen);
    buf[1 + ulen] = '\0';
    memcpy(buf + 2 + ulen, scope, slen);
    *ret_hash = siphash24(buf, len, c->hash_key);
    return len;
}

/* The other way: an entry's user id (in the key itself) and scope (copied
 * out, as the key does not end it). */
static const char *key_split(const cache_entry *e, char scope[OAUTH_SCOPE_MAX + 1]) {
    const char *user = e->key + 1;
    size_t ulen = strlen(user), slen = e->keylen - 2 - ulen;

    memcpy(scope, user + ulen + 1, slen);
    scope[slen] = '\0';
    return user;
}

static cache_entry *entry_find(cache *c, const char *key, size_t keylen, uint64_t hash) {
    for (size_t i = hash & c->mask; c->slots[i].e; i = (i + 1) & c->mask) {
        cache_entry *e = c->slots[i].e;
        if (c->slots[i].hash == hash && e->keylen == keylen && memcmp(e->key, key, keylen) == 0)
            return e;
    }
    return NULL;
}

/* Makes room for one entry: evicts from the cold end, skipping entries with
 * a fetch in flight (their callers are waiting on them). */
static int make_room(cache *c) {
    unsigned tries = 0;

    if (c->count < c->s.max_entries)
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
static int entry_new(cache *c, const char *key, size_t keylen, uint64_t hash, cache_entry **ret) {
    cache_entry *e;
    int r = make_room(c);

    if (r < 0)
        return r;
    e = calloc(1, sizeof(*e) + keylen);
    if (!e)
        return -ENOMEM;
    e->cache = c;
    e->hash = hash;
    e->keylen = (uint16_t)keylen;
    memcpy(e->key, key, keylen);
    if (index_add(c, e) < 0) {
        free(e);
        return -ENOMEM;
    }
    *ret = e;
    return 0;
}

static void fetch_done(void *userdata, const mint_outcome *o, token *t);

int cache_get(cache *c, enum oauth_grant grant, const char *user_id, const char *scope,
              uint64_t min_ttl_ms, cache_done_fn done, void *userdata,
              token **ret_token, mint_outcome *ret_outcome) {
    char keybuf[KEY_MAX];
    uint64_t hash;
    size_t keylen = make_key(c, keybuf, grant, user_id, scope, &hash);
    struct waiter *w;
    cache_entry *e;
    bool start = false, background = false;
    struct cache_want want = { 0 };
    token *hit = NULL;
    uint64_t now;
    int r;

    if (!keylen)
        return -EINVAL;
    if (min_ttl_ms == 0)
        min_ttl_ms = c->s.min_ttl_ms;

    pthread_mutex_lock(&c->lock);
    now = c->s.clock();
    e = entry_find(c, keybuf, keylen, hash);
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
                /* a token worth adopting instead is one not yet due for refresh */
                want.min_life_ms = refresh_window_ms(c, e->tok);
                want.have_ms = token_remaining_ms(e->tok, now);
            }
            pthread_mutex_unlock(&c->lock);
            if (background)
                c->fetch(c->source, grant, user_id, scope, &want, fetch_done, e);
            *ret_token = hit;
            return CACHE_HIT;
        }
        if (now < e->failed_until_ms && !e->fetching) {
            *ret_outcome = *e->failure;
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
        r = entry_new(c, keybuf, keylen, hash, &e);
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

    if (start) {
        want.min_life_ms = min_ttl_ms;
        c->fetch(c->source, grant, user_id, scope, &want, fetch_done, e);
    }
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
    mint_outcome stale;
    struct waiter *waiters;
    uint64_t now;

    pthread_mutex_lock(&c->lock);
    now = c->s.clock();
    if (e->stale) {
        /* A drop or a flush came while this fetch was in flight: what it
         * brings may have been read before them (another host's copy of the
         * dropped token), so it is neither kept nor handed out. Callers
         * waiting get a fetch made after the drop; nobody waits on a
         * refresh, which just ends. */
        e->stale = false;
        token_unref(t);
        t = NULL;
        if (e->waiters && e->restarts < RESTARTS_MAX) {
            struct cache_want want = { .min_life_ms = c->s.min_ttl_ms };
            char scope[OAUTH_SCOPE_MAX + 1];
            const char *user = key_split(e, scope); /* e stays while it is fetching */

            e->restarts++;
            pthread_mutex_unlock(&c->lock);
            c->fetch(c->source, (enum oauth_grant)e->key[0], user, scope, &want, fetch_done, e);
            return;
        }
        stale = (mint_outcome){ .kind = MINT_UNAVAILABLE, .retry_after_s = 1 };
        snprintf(stale.error, sizeof(stale.error), "dropped_while_fetching");
        o = &stale;
    }
    if (!t && o->deferred && e->waiters) {
        /* Callers joined a refresh the source put off: they need a token
         * now, so they get a fetch of their own (a miss, which in fleet mode
         * waits for the host refreshing it). The refresh backs off as usual. */
        struct cache_want want = { .min_life_ms = c->s.min_ttl_ms };
        char scope[OAUTH_SCOPE_MAX + 1];
        const char *user = key_split(e, scope); /* e stays while it is fetching */
        uint64_t window = e->tok ? refresh_window_ms(c, e->tok) : 0;

        /* not the token in hand again: one fresher than its refresh window */
        if (window > want.min_life_ms)
            want.min_life_ms = window;
        e->retry_at_ms = now + backoff_ms(c, e->refresh_failures);
        if (e->refresh_failures < 255)
            e->refresh_failures++;
        pthread_mutex_unlock(&c->lock);
        c->fetch(c->source, (enum oauth_grant)e->key[0], user, scope, &want, fetch_done, e);
        return;
    }
    e->fetching = false;
    e->restarts = 0;
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
            if (!e->failure)
                e->failure = malloc(sizeof(*e->failure));
            if (e->failure) { /* else not remembered: the next caller asks again */
                *e->failure = *o;
                e->failed_until_ms = now + c->s.failure_ttl_ms;
            }
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
     * million entries; the cursor carries on from there next time. It walks
     * from the cold end, where expired entries gather; an entry used
     * meanwhile moves to the head and ends the round early. */
    if (!c->sweep_cursor)
        c->sweep_cursor = c->lru_tail;
    for (e = c->sweep_cursor; e && visited < 20000; visited++) {
        cache_entry *next = e->lru_prev;
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
    ret->entries = c->count;
    pthread_mutex_unlock(&c->lock);
}

cache *cache_free(cache *c) {
    if (!c)
        return NULL;
    /* no fetch may be in flight here: its callback would touch freed memory */
    while (c->lru_head)
        entry_remove(c, c->lru_head);
    free(c->slots);
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
        const char *user;

        if (!e->tok || token_remaining_ms(e->tok, now) == 0)
            continue;
        user = key_split(e, scope);
        fn(userdata, (enum oauth_grant)e->key[0], user, scope, e->tok);
        n++;
    }
    pthread_mutex_unlock(&c->lock);
    return n;
}

int cache_put(cache *c, enum oauth_grant grant, const char *user_id, const char *scope, token *t) {
    char keybuf[KEY_MAX];
    uint64_t hash;
    size_t keylen = make_key(c, keybuf, grant, user_id, scope, &hash);
    cache_entry *e;
    int r;

    if (!keylen || !t)
        return -EINVAL;

    pthread_mutex_lock(&c->lock);
    e = entry_find(c, keybuf, keylen, hash);
    if (e && (e->tok || e->fetching)) {
        pthread_mutex_unlock(&c->lock);
        return -EEXIST;
    }
    if (!e) {
        r = entry_new(c, keybuf, keylen, hash, &e);
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
    return cache_flush_as(c, true);
}

size_t cache_flush_as(cache *c, bool stale_fetches) {
    cache_entry *e, *prev;
    size_t n = 0;

    pthread_mutex_lock(&c->lock);
    for (e = c->lru_tail; e; e = prev) {
        prev = e->lru_prev;
        if (e->fetching) {
            /* its waiters are answered by a fetch made after the flush */
            e->tok = token_unref(e->tok);
            e->failed_until_ms = 0;
            e->stale = stale_fetches;
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

bool cache_holds(cache *c, enum oauth_grant grant, const char *user_id, const char *scope, const token *t) {
    char keybuf[KEY_MAX];
    uint64_t hash;
    size_t keylen = make_key(c, keybuf, grant, user_id, scope, &hash);
    cache_entry *e;
    bool held;

    if (!keylen || !t)
        return false;
    pthread_mutex_lock(&c->lock);
    e = entry_find(c, keybuf, keylen, hash);
    held = e && e->tok == t;
    pthread_mutex_unlock(&c->lock);
    return held;
}

int cache_drop_if(cache *c, enum oauth_grant grant, const char *user_id, const char *scope,
                  const token *only, token **ret_token) {
    char keybuf[KEY_MAX];
    uint64_t hash;
    size_t keylen = make_key(c, keybuf, grant, user_id, scope, &hash);
    cache_entry *e;
    token *t = NULL;

    if (!keylen)
        return -EINVAL;
    pthread_mutex_lock(&c->lock);
    e = entry_find(c, keybuf, keylen, hash);
    if (e && e->fetching && !only)
        e->stale = true; /* what the fetch brings may predate the drop */
    if (e && (!only || e->tok == only)) {
        t = e->tok;
        e->tok = NULL;
        e->failed_until_ms = 0;
        /* a fetch in flight keeps the entry: its waiters are answered by
         * a fetch made after the drop */
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
