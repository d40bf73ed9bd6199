/* Unit tests of src/cache.c: which token a caller gets, when a mint starts,
 * single flight, refresh ahead, remembered rejections and bounded memory.
 *
 * Time is a fake clock the tests move by hand; fetches go to a fake that
 * only records them, and each test completes them when it chooses, by
 * calling the stored done callback. Nothing sleeps, nothing races. */
#include <errno.h>

#include "cache.h"
#include "unit.h"
#include "util.h"

#define SCOPE "connect:recommendations"
#define UA OAUTH_GRANT_USER_ASSERTION
#define CC OAUTH_GRANT_CLIENT_CREDENTIALS
#define SEC 1000ULL

/* ---- the fake clock ---- */

static uint64_t fake_now = 1000 * SEC;
static uint64_t fake_clock(void) {
    return fake_now;
}

/* ---- the fake fetch ---- */

#define MAX_CALLS 64

struct fetch_call {
    enum oauth_grant grant;
    char user_id[OAUTH_USER_ID_MAX + 1];
    char scope[OAUTH_SCOPE_MAX + 1];
    struct cache_want want;
    cache_done_fn done;
    void *ctx;
    bool completed;
};

static struct fetch_call calls[MAX_CALLS];
static unsigned n_calls;
static int fake_source; /* its address is the source the cache must pass back */

/* When set, fetches complete before returning, as the contract allows. */
static struct {
    bool on;
    enum mint_kind kind;
    const char *value;
} immediate;

static void complete_ok(unsigned i, const char *value, uint32_t lifetime_s);
static void complete_fail(unsigned i, enum mint_kind kind, int http_status, const char *error);

static void fake_fetch(void *source, enum oauth_grant grant, const char *user_id, const char *scope,
                       const struct cache_want *want, cache_done_fn done, void *ctx) {
    struct fetch_call *f;

    ASSERT(source == &fake_source);
    ASSERT(n_calls < MAX_CALLS);
    f = &calls[n_calls++];
    f->grant = grant;
    ASSERT(strlen(user_id) <= OAUTH_USER_ID_MAX && strlen(scope) <= OAUTH_SCOPE_MAX);
    snprintf(f->user_id, sizeof(f->user_id), "%s", user_id);
    snprintf(f->scope, sizeof(f->scope), "%s", scope);
    f->want = *want;
    f->done = done;
    f->ctx = ctx;
    f->completed = false;
    if (immediate.on) {
        if (immediate.kind == MINT_OK)
            complete_ok(n_calls - 1, immediate.value, 3600);
        else
            complete_fail(n_calls - 1, immediate.kind, 503, "unavailable");
    }
}

static void complete_ok(unsigned i, const char *value, uint32_t lifetime_s) {
    mint_outcome o = { .kind = MINT_OK, .http_status = 200 };
    token *t = NULL;

    ASSERT(i < n_calls);
    ASSERT(!calls[i].completed);
    calls[i].completed = true;
    ASSERT_INT_EQ(token_new(value, strlen(value), lifetime_s, 1631804913, fake_now, &t), 0);
    calls[i].done(calls[i].ctx, &o, t); /* the reference goes to the cache */
}

static void complete_fail(unsigned i, enum mint_kind kind, int http_status, const char *error) {
    mint_outcome o = { .kind = kind, .http_status = http_status };

    ASSERT(i < n_calls);
    ASSERT(!calls[i].completed);
    calls[i].completed = true;
    snprintf(o.error, sizeof(o.error), "%s", error);
    calls[i].done(calls[i].ctx, &o, NULL);
}

static void assert_all_completed(void) {
    for (unsigned i = 0; i < n_calls; i++)
        if (!calls[i].completed)
            UNIT_FAIL("fetch %u (%s) was never completed", i, calls[i].user_id);
}

/* ---- callers waiting on a fetch ---- */

struct waiter {
    int calls;
    mint_outcome o;
    token *tok;
};

static void on_done(void *userdata, const mint_outcome *o, token *t) {
    struct waiter *w = userdata;

    w->calls++;
    w->o = *o;
    token_unref(w->tok);
    w->tok = t;
    /* a token delivered with MINT_OK, none otherwise */
    if ((o->kind == MINT_OK) != (t != NULL))
        UNIT_FAIL("done called with kind %d and token %p", (int)o->kind, (void *)t);
}

static void waiter_clear(struct waiter *w) {
    w->tok = token_unref(w->tok);
}

/* ---- helpers ---- */

static cache_settings settings(void) {
    return (cache_settings){
        .max_entries = 100,
        .min_ttl_ms = 300 * SEC,
        .refresh_before_pct = 25,
        .failure_ttl_ms = 30 * SEC,
        .max_waiters = 16,
        .retry_base_ms = 1 * SEC,
        .retry_max_ms = 8 * SEC,
        .clock = fake_clock,
    };
}

static cache *new_cache(const cache_settings *s) {
    cache *c = NULL;

    ASSERT_INT_EQ(cache_new(s, fake_fetch, &fake_source, &c), 0);
    ASSERT(c);
    return c;
}

static void free_cache(cache *c) {
    assert_all_completed();
    cache_free(c);
}

static int get(cache *c, enum oauth_grant grant, const char *user, const char *scope,
               uint64_t min_ttl_ms, struct waiter *w, token **ret_tok, mint_outcome *ret_o) {
    static struct waiter unused;
    token *t = NULL;
    mint_outcome o;
    int r;

    memset(&o, 0, sizeof(o));
    r = cache_get(c, grant, user, scope, min_ttl_ms, on_done, w ? w : &unused, &t, &o);
    if (r == CACHE_HIT)
        ASSERT(t != NULL);
    if (ret_tok)
        *ret_tok = t;
    else
        token_unref(t);
    if (ret_o)
        *ret_o = o;
    return r;
}

/* A hit for user/SCOPE with the token want, and no fetch started (or
 * exactly one background refresh when refresh is true). The helpers below
 * are macros so a failure names the line of the test. */
static void expect_hit_at(int line, cache *c, const char *user, const char *want, bool refresh) {
    token *t = NULL;
    unsigned before = n_calls;
    int r = get(c, UA, user, SCOPE, 0, NULL, &t, NULL);

    if (r != CACHE_HIT)
        UNIT_FAIL("line %d: get(%s) = %d, want CACHE_HIT", line, user, r);
    if (strcmp(t->value, want) != 0)
        UNIT_FAIL("line %d: get(%s) gave %s, want %s", line, user, t->value, want);
    token_unref(t);
    if (n_calls != before + (refresh ? 1 : 0))
        UNIT_FAIL("line %d: get(%s) started %u fetches, want %d", line, user, n_calls - before,
                  refresh ? 1 : 0);
}
#define expect_hit_value(c, user, want) expect_hit_at(__LINE__, c, user, want, false)
#define expect_hit_refreshing(c, user, want) expect_hit_at(__LINE__, c, user, want, true)

/* A miss for user/SCOPE that starts fetch number n_calls; returns its index. */
static unsigned expect_miss_at(int line, cache *c, const char *user, struct waiter *w) {
    unsigned before = n_calls;
    int r = get(c, UA, user, SCOPE, 0, w, NULL, NULL);

    if (r != CACHE_MISS)
        UNIT_FAIL("line %d: get(%s) = %d, want CACHE_MISS", line, user, r);
    if (n_calls != before + 1)
        UNIT_FAIL("line %d: get(%s) started %u fetches, want 1", line, user, n_calls - before);
    ASSERT_STR_EQ(calls[before].user_id, user);
    return before;
}
#define expect_miss(c, user, w) expect_miss_at(__LINE__, c, user, w)

/* Mints user's token now: a miss, completed at once. */
static void fill(cache *c, const char *user, const char *value, uint32_t lifetime_s) {
    struct waiter w = { 0 };
    unsigned i = expect_miss(c, user, &w);

    complete_ok(i, value, lifetime_s);
    ASSERT_INT_EQ(w.calls, 1);
    ASSERT_STR_EQ(w.tok->value, value);
    waiter_clear(&w);
}

static struct cache_stats stats(cache *c) {
    struct cache_stats s;

    memset(&s, 0xff, sizeof(s));
    cache_get_stats(c, &s);
    return s;
}

/* ---- the tests ---- */

static void miss_fetches_once(void) {
    cache_settings s = settings();
    cache *c = new_cache(&s);
    struct waiter w = { 0 };
    token *t = NULL;

    ASSERT_INT_EQ(get(c, UA, "alice", SCOPE, 0, &w, &t, NULL), CACHE_MISS);
    ASSERT(t == NULL); /* no token handed out on a miss */
    ASSERT_UINT_EQ(n_calls, 1);
    ASSERT_INT_EQ(calls[0].grant, UA);
    ASSERT_STR_EQ(calls[0].user_id, "alice");
    ASSERT_STR_EQ(calls[0].scope, SCOPE);
    ASSERT_INT_EQ(w.calls, 0); /* not before the fetch completes */

    complete_ok(0, "tok-1", 3600);
    ASSERT_INT_EQ(w.calls, 1);
    ASSERT_INT_EQ(w.o.kind, MINT_OK);
    ASSERT_STR_EQ(w.tok->value, "tok-1");
    ASSERT_UINT_EQ(stats(c).misses, 1);
    ASSERT_UINT_EQ(stats(c).entries, 1);
    waiter_clear(&w);
    free_cache(c);
}

static void concurrent_gets_coalesce(void) {
    cache_settings s = settings();
    cache *c = new_cache(&s);
    struct waiter w[3] = { { 0 } };

    ASSERT_INT_EQ(get(c, UA, "alice", SCOPE, 0, &w[0], NULL, NULL), CACHE_MISS);
    ASSERT_INT_EQ(get(c, UA, "alice", SCOPE, 0, &w[1], NULL, NULL), CACHE_COALESCED);
    ASSERT_INT_EQ(get(c, UA, "alice", SCOPE, 0, &w[2], NULL, NULL), CACHE_COALESCED);
    ASSERT_UINT_EQ(n_calls, 1);
    for (int i = 0; i < 3; i++)
        ASSERT_INT_EQ(w[i].calls, 0);

    complete_ok(0, "tok-1", 3600);
    for (int i = 0; i < 3; i++) {
        ASSERT_INT_EQ(w[i].calls, 1);
        ASSERT_INT_EQ(w[i].o.kind, MINT_OK);
        ASSERT_STR_EQ(w[i].tok->value, "tok-1");
        ASSERT(w[i].tok == w[0].tok); /* one token, shared */
    }
    ASSERT_UINT_EQ(stats(c).misses, 1);
    ASSERT_UINT_EQ(stats(c).coalesced, 2);
    for (int i = 0; i < 3; i++)
        waiter_clear(&w[i]);
    free_cache(c);
}

static void hit_after_completion(void) {
    cache_settings s = settings();
    cache *c = new_cache(&s);
    struct waiter w = { 0 }, w2 = { 0 };
    token *t = NULL;

    expect_miss(c, "alice", &w);
    complete_ok(0, "tok-1", 3600);
    fake_now += 60 * SEC;
    ASSERT_INT_EQ(get(c, UA, "alice", SCOPE, 0, &w2, &t, NULL), CACHE_HIT);
    ASSERT(t == w.tok); /* the very token the waiter got */
    ASSERT_INT_EQ(w2.calls, 0); /* a hit never calls done */
    ASSERT_UINT_EQ(n_calls, 1);
    ASSERT_UINT_EQ(stats(c).hits, 1);
    token_unref(t);
    waiter_clear(&w);
    free_cache(c);
}

static void keys_are_distinct(void) {
    cache_settings s = settings();
    cache *c = new_cache(&s);
    token *t = NULL;

    fill(c, "alice", "tok-alice", 3600);
    /* another scope, another grant, another user: each its own mint */
    ASSERT_INT_EQ(get(c, UA, "alice", "connect:post_checkout", 0, NULL, NULL, NULL), CACHE_MISS);
    ASSERT_STR_EQ(calls[1].scope, "connect:post_checkout");
    complete_ok(1, "tok-alice-pc", 3600);
    ASSERT_INT_EQ(get(c, CC, "alice", SCOPE, 0, NULL, NULL, NULL), CACHE_MISS);
    ASSERT_INT_EQ(calls[2].grant, CC);
    complete_ok(2, "tok-alice-cc", 3600);
    ASSERT_INT_EQ(get(c, UA, "bob", SCOPE, 0, NULL, NULL, NULL), CACHE_MISS);
    complete_ok(3, "tok-bob", 3600);
    /* user and scope are not simply glued together */
    ASSERT_INT_EQ(get(c, UA, "ab", "c", 0, NULL, NULL, NULL), CACHE_MISS);
    complete_ok(4, "tok-ab-c", 3600);
    ASSERT_INT_EQ(get(c, UA, "a", "bc", 0, NULL, NULL, NULL), CACHE_MISS);
    complete_ok(5, "tok-a-bc", 3600);
    ASSERT_UINT_EQ(n_calls, 6);

    /* and each key answers with its own token */
    expect_hit_value(c, "alice", "tok-alice");
    expect_hit_value(c, "bob", "tok-bob");
    ASSERT_INT_EQ(get(c, UA, "alice", "connect:post_checkout", 0, NULL, &t, NULL), CACHE_HIT);
    ASSERT_STR_EQ(t->value, "tok-alice-pc");
    token_unref(t);
    ASSERT_INT_EQ(get(c, CC, "alice", SCOPE, 0, NULL, &t, NULL), CACHE_HIT);
    ASSERT_STR_EQ(t->value, "tok-alice-cc");
    token_unref(t);
    ASSERT_INT_EQ(get(c, UA, "ab", "c", 0, NULL, &t, NULL), CACHE_HIT);
    ASSERT_STR_EQ(t->value, "tok-ab-c");
    token_unref(t);
    ASSERT_INT_EQ(get(c, UA, "a", "bc", 0, NULL, &t, NULL), CACHE_HIT);
    ASSERT_STR_EQ(t->value, "tok-a-bc");
    token_unref(t);
    ASSERT_UINT_EQ(stats(c).entries, 6);
    free_cache(c);
}

static void token_below_min_ttl_not_handed_out(void) {
    cache_settings s = settings();
    cache *c;
    struct waiter w = { 0 }, w2 = { 0 };
    uint64_t expires;

    s.refresh_before_pct = 0; /* no refresh ahead: only min_ttl decides */
    c = new_cache(&s);
    fill(c, "alice", "tok-1", 3600);
    expires = fake_now + 3600 * SEC;

    fake_now = expires - 301 * SEC; /* 301 s left, 300 s wanted */
    expect_hit_value(c, "alice", "tok-1");
    fake_now = expires - 299 * SEC; /* 299 s left: not good enough */
    expect_miss(c, "alice", &w);
    /* while it mints, others wait for the new token too */
    ASSERT_INT_EQ(get(c, UA, "alice", SCOPE, 0, &w2, NULL, NULL), CACHE_COALESCED);
    complete_ok(1, "tok-2", 3600);
    ASSERT_STR_EQ(w.tok->value, "tok-2");
    ASSERT_STR_EQ(w2.tok->value, "tok-2");
    expect_hit_value(c, "alice", "tok-2");
    waiter_clear(&w);
    waiter_clear(&w2);

    /* a caller may want more than the default: 500 s left, 600 s asked */
    fake_now += (3600 - 500) * SEC;
    expect_hit_value(c, "alice", "tok-2");
    ASSERT_INT_EQ(get(c, UA, "alice", SCOPE, 600 * SEC, &w, NULL, NULL), CACHE_MISS);
    complete_ok(2, "tok-3", 3600);
    ASSERT_STR_EQ(w.tok->value, "tok-3");
    waiter_clear(&w);
    free_cache(c);
}

static void min_ttl_capped_at_half_lifetime(void) {
    cache_settings s = settings();
    cache *c;
    struct waiter w = { 0 };
    token *t = NULL;
    uint64_t start;

    s.refresh_before_pct = 0;
    c = new_cache(&s);
    /* a 10 s token with the default 300 s minimum is reused while > 5 s remain */
    start = fake_now;
    fill(c, "short", "tok-short", 10);
    fake_now = start + 4 * SEC; /* 6 s left */
    expect_hit_value(c, "short", "tok-short");
    fake_now = start + 6 * SEC; /* 4 s left */
    expect_miss(c, "short", &w);
    complete_ok(1, "tok-short-2", 10);
    waiter_clear(&w);

    /* and a caller's min_ttl is capped the same way: 12 h asked of a 1 h token */
    start = fake_now;
    fill(c, "long", "tok-long", 3600);
    fake_now = start + 1799 * SEC; /* 1801 s left, more than half */
    ASSERT_INT_EQ(get(c, UA, "long", SCOPE, 43200 * SEC, NULL, &t, NULL), CACHE_HIT);
    ASSERT_STR_EQ(t->value, "tok-long");
    token_unref(t);
    fake_now = start + 1801 * SEC; /* 1799 s left */
    ASSERT_INT_EQ(get(c, UA, "long", SCOPE, 43200 * SEC, &w, NULL, NULL), CACHE_MISS);
    complete_ok(3, "tok-long-2", 3600);
    waiter_clear(&w);
    free_cache(c);
}

static void never_handed_out_past_expiry(void) {
    cache_settings s = settings();
    cache *c;
    struct waiter w = { 0 };
    uint64_t expires;

    s.refresh_before_pct = 0;
    s.min_ttl_ms = 0; /* even with no minimum at all */
    c = new_cache(&s);
    fill(c, "alice", "tok-1", 60);
    expires = fake_now + 60 * SEC;
    fake_now = expires - 1;
    expect_hit_value(c, "alice", "tok-1");
    fake_now = expires;
    expect_miss(c, "alice", &w);
    complete_ok(1, "tok-2", 60);
    ASSERT_STR_EQ(w.tok->value, "tok-2");
    waiter_clear(&w);

    fill(c, "bob", "tok-bob", 60);
    fake_now += 3600 * SEC;
    expect_miss(c, "bob", &w);
    complete_ok(3, "tok-bob-2", 60);
    waiter_clear(&w);
    free_cache(c);
}

static void refresh_ahead_serves_at_once_and_refreshes_once(void) {
    cache_settings s = settings(); /* refresh in the last 25% (+-10% jitter) */
    cache *c = new_cache(&s);
    struct waiter w = { 0 };
    token *t = NULL;
    uint64_t expires;

    fill(c, "alice", "tok-1", 3600);
    expires = fake_now + 3600 * SEC;
    /* the window opens between 990 s and 810 s before expiry */
    fake_now = expires - 1000 * SEC;
    expect_hit_value(c, "alice", "tok-1");
    ASSERT_UINT_EQ(stats(c).refreshes, 0);

    fake_now = expires - 800 * SEC;
    ASSERT_INT_EQ(get(c, UA, "alice", SCOPE, 0, &w, &t, NULL), CACHE_HIT);
    ASSERT_STR_EQ(t->value, "tok-1"); /* served at once... */
    token_unref(t);
    ASSERT_UINT_EQ(n_calls, 2); /* ...and refreshed behind the caller's back */
    ASSERT_INT_EQ(calls[1].grant, UA);
    ASSERT_STR_EQ(calls[1].user_id, "alice");
    ASSERT_STR_EQ(calls[1].scope, SCOPE);
    ASSERT_UINT_EQ(stats(c).refreshes, 1);
    /* a fleet's shared tier is told the token in hand has 800 s left, and
     * that a token worth adopting instead must not be due for refresh too */
    ASSERT_UINT_EQ(calls[1].want.have_ms, 800 * SEC);
    ASSERT_UINT_EQ(calls[1].want.min_life_ms, 900 * SEC);
    ASSERT_UINT_EQ(calls[0].want.have_ms, 0); /* the first was a miss */
    ASSERT_UINT_EQ(calls[0].want.min_life_ms, s.min_ttl_ms);

    /* a refresh in flight is not started again */
    fake_now += 10 * SEC;
    expect_hit_value(c, "alice", "tok-1");
    expect_hit_value(c, "alice", "tok-1");
    ASSERT_UINT_EQ(n_calls, 2);
    ASSERT_UINT_EQ(stats(c).refreshes, 1);

    complete_ok(1, "tok-2", 3600);
    ASSERT_INT_EQ(w.calls, 0); /* a hit's caller is never called back */
    expect_hit_value(c, "alice", "tok-2");
    ASSERT_UINT_EQ(n_calls, 2); /* the new token is far from its window */
    ASSERT_UINT_EQ(stats(c).refreshes, 1);
    ASSERT_UINT_EQ(stats(c).misses, 1);
    free_cache(c);
}

/* Fleet mode puts a refresh off when another host is refreshing the token.
 * A caller that needs more life than the token has joins that refresh: it
 * must get a fetch of its own, not the put-off refresh's failure. */
static void a_deferred_refresh_hands_its_callers_a_fetch_of_their_own(void) {
    cache_settings s = settings();
    cache *c = new_cache(&s);
    struct waiter w = { 0 };
    mint_outcome deferred = { .kind = MINT_UNAVAILABLE, .deferred = true };
    token *t = NULL;
    uint64_t expires;

    fill(c, "alice", "tok-1", 3600);
    expires = fake_now + 3600 * SEC;
    fake_now = expires - 800 * SEC; /* in the refresh window: a hit starts a refresh */
    expect_hit_refreshing(c, "alice", "tok-1");
    ASSERT_UINT_EQ(n_calls, 2);
    /* a caller wanting 900 s more than the token has joins the refresh */
    ASSERT_INT_EQ(get(c, UA, "alice", SCOPE, 900 * SEC, &w, &t, NULL), CACHE_COALESCED);
    calls[1].completed = true;
    calls[1].done(calls[1].ctx, &deferred, NULL);
    ASSERT_INT_EQ(w.calls, 0); /* not told of a failure that was not one */
    ASSERT_UINT_EQ(n_calls, 3); /* a fetch of its own, as a miss */
    ASSERT_UINT_EQ(calls[2].want.have_ms, 0);
    ASSERT_UINT_EQ(calls[2].want.min_life_ms, 900 * SEC); /* not the token in hand again */
    complete_ok(2, "tok-2", 3600);
    ASSERT_INT_EQ(w.calls, 1);
    ASSERT_STR_EQ(w.tok->value, "tok-2");
    waiter_clear(&w);
    expect_hit_value(c, "alice", "tok-2");
    /* without a caller waiting, a deferred refresh just backs off */
    fake_now += 3000 * SEC; /* tok-2's window */
    expect_hit_refreshing(c, "alice", "tok-2");
    ASSERT_UINT_EQ(n_calls, 4);
    calls[3].completed = true;
    calls[3].done(calls[3].ctx, &deferred, NULL);
    ASSERT_UINT_EQ(n_calls, 4);
    expect_hit_value(c, "alice", "tok-2");
    ASSERT_UINT_EQ(n_calls, 4);
    free_cache(c);
}

static void refresh_ahead_off_at_zero_percent(void) {
    cache_settings s = settings();
    cache *c;
    uint64_t expires;

    s.refresh_before_pct = 0;
    c = new_cache(&s);
    fill(c, "alice", "tok-1", 3600);
    expires = fake_now + 3600 * SEC;
    fake_now = expires - 301 * SEC;
    expect_hit_value(c, "alice", "tok-1");
    ASSERT_UINT_EQ(n_calls, 1);
    ASSERT_UINT_EQ(stats(c).refreshes, 0);
    free_cache(c);
}

/* Starts the background refresh of alice's tok-1, which expires 800 s
 * from now; returns the refresh's fetch index. */
static unsigned start_refresh(cache *c) {
    uint64_t expires;

    fill(c, "alice", "tok-1", 3600);
    expires = fake_now + 3600 * SEC;
    fake_now = expires - 800 * SEC;
    expect_hit_refreshing(c, "alice", "tok-1");
    return n_calls - 1;
}

/* Completes whatever fetch is still open, so the cache can be freed. */
static void complete_rest(void) {
    for (unsigned i = 0; i < n_calls; i++)
        if (!calls[i].completed)
            complete_ok(i, "tok-rest", 3600);
}

static void failed_refresh_serves_old_token_and_backs_off(void) {
    cache_settings s = settings(); /* retry_base 1 s, retry_max 8 s */
    cache *c = new_cache(&s);
    unsigned i = start_refresh(c);
    uint64_t failed_at;

    complete_fail(i, MINT_UNAVAILABLE, 503, "unavailable");
    failed_at = fake_now;
    /* the old token still serves, without a new attempt at once */
    expect_hit_value(c, "alice", "tok-1");
    fake_now = failed_at + 499; /* the first backoff is 0.5 to 1 s */
    expect_hit_value(c, "alice", "tok-1");
    ASSERT_UINT_EQ(n_calls, i + 1);
    fake_now = failed_at + 1 * SEC;
    expect_hit_refreshing(c, "alice", "tok-1"); /* retried */
    ASSERT_UINT_EQ(stats(c).refreshes, 2);

    /* a second failure waits longer: 1 to 2 s */
    complete_fail(i + 1, MINT_TIMEOUT, 0, "timeout");
    failed_at = fake_now;
    fake_now = failed_at + 999;
    expect_hit_value(c, "alice", "tok-1");
    ASSERT_UINT_EQ(n_calls, i + 2);
    fake_now = failed_at + 2 * SEC;
    expect_hit_refreshing(c, "alice", "tok-1");

    complete_ok(i + 2, "tok-2", 3600);
    expect_hit_value(c, "alice", "tok-2");
    free_cache(c);
}

static void rejected_refresh_still_serves_valid_token(void) {
    cache_settings s = settings();
    cache *c = new_cache(&s);
    unsigned i = start_refresh(c);
    uint64_t expires = fake_now + 800 * SEC;
    token *t = NULL;

    complete_fail(i, MINT_REJECTED, 400, "invalid_user");
    /* the token in hand is still valid: callers keep getting it, not the
     * remembered rejection, until it runs below min_ttl */
    expect_hit_value(c, "alice", "tok-1");
    fake_now = expires - 301 * SEC;
    ASSERT_INT_EQ(get(c, UA, "alice", SCOPE, 0, NULL, &t, NULL), CACHE_HIT);
    ASSERT_STR_EQ(t->value, "tok-1");
    token_unref(t);
    complete_rest();
    free_cache(c);
}

/* A 400 is remembered for failure_ttl "so one bad id cannot hammer
 * Instacart" (cache.c); a rejected background refresh must not be retried
 * every retry backoff (at most retry_max, 2 s by default) meanwhile. */
static void rejected_refresh_not_retried_before_failure_ttl(void) {
    cache_settings s = settings(); /* retry_max 8 s, failure_ttl 30 s */
    cache *c = new_cache(&s);
    unsigned i = start_refresh(c);
    uint64_t failed_at;

    complete_fail(i, MINT_REJECTED, 400, "invalid_user");
    failed_at = fake_now;
    fake_now = failed_at + 10 * SEC;
    expect_hit_value(c, "alice", "tok-1");
    fake_now = failed_at + 30 * SEC - 1;
    expect_hit_value(c, "alice", "tok-1");
    fake_now = failed_at + 30 * SEC;
    expect_hit_refreshing(c, "alice", "tok-1");
    complete_rest();
    free_cache(c);
}

static void rejection_remembered_for_failure_ttl(void) {
    cache_settings s = settings(); /* failure_ttl 30 s */
    cache *c = new_cache(&s);
    struct waiter w = { 0 }, w2 = { 0 };
    mint_outcome o;
    uint64_t failed_at;

    expect_miss(c, "nobody", &w);
    complete_fail(0, MINT_REJECTED, 400, "invalid_user");
    failed_at = fake_now;
    ASSERT_INT_EQ(w.calls, 1);
    ASSERT_INT_EQ(w.o.kind, MINT_REJECTED);
    ASSERT_INT_EQ(w.o.http_status, 400);
    ASSERT(w.tok == NULL);

    /* answered from memory, without asking Instacart */
    ASSERT_INT_EQ(get(c, UA, "nobody", SCOPE, 0, &w2, NULL, &o), CACHE_FAILED);
    ASSERT_INT_EQ(o.kind, MINT_REJECTED);
    ASSERT_INT_EQ(o.http_status, 400);
    ASSERT_STR_EQ(o.error, "invalid_user");
    ASSERT_INT_EQ(w2.calls, 0);
    ASSERT_UINT_EQ(n_calls, 1);
    fake_now = failed_at + 30 * SEC - 1;
    ASSERT_INT_EQ(get(c, UA, "nobody", SCOPE, 0, &w2, NULL, &o), CACHE_FAILED);
    ASSERT_UINT_EQ(n_calls, 1);
    /* only for that key */
    ASSERT_INT_EQ(get(c, UA, "nobody", "connect:post_checkout", 0, &w2, NULL, NULL), CACHE_MISS);
    complete_ok(1, "tok-other-scope", 3600);
    waiter_clear(&w2);

    /* and forgotten after failure_ttl */
    fake_now = failed_at + 30 * SEC;
    expect_miss(c, "nobody", &w);
    complete_ok(2, "tok-1", 3600);
    ASSERT_STR_EQ(w.tok->value, "tok-1");
    expect_hit_value(c, "nobody", "tok-1");
    waiter_clear(&w);
    free_cache(c);
}

static void other_failures_not_remembered(void) {
    static const struct {
        enum mint_kind kind;
        int status;
    } failures[] = {
        { MINT_UNAVAILABLE, 503 }, { MINT_UNAVAILABLE, 500 }, { MINT_UNAVAILABLE, 429 },
        { MINT_UNAVAILABLE, 0 },   { MINT_TIMEOUT, 0 },
    };
    cache_settings s = settings();
    cache *c = new_cache(&s);

    for (size_t k = 0; k < ARRAY_SIZE(failures); k++) {
        struct waiter w = { 0 };
        unsigned i = expect_miss(c, "alice", &w);
        complete_fail(i, failures[k].kind, failures[k].status, "down");
        ASSERT_INT_EQ(w.calls, 1);
        ASSERT_INT_EQ(w.o.kind, failures[k].kind);
        ASSERT_STR_EQ(w.o.error, "down");
        ASSERT(w.tok == NULL);
        /* the next caller tries again at once (expect_miss checks the fetch) */
    }
    {
        struct waiter w = { 0 };
        unsigned i = expect_miss(c, "alice", &w);
        complete_ok(i, "tok-1", 3600);
        waiter_clear(&w);
    }
    /* failed keys do not linger: only alice's token is left */
    ASSERT_UINT_EQ(stats(c).entries, 1);
    free_cache(c);
}

static void rejection_not_remembered_with_zero_failure_ttl(void) {
    cache_settings s = settings();
    cache *c;
    struct waiter w = { 0 };

    s.failure_ttl_ms = 0;
    c = new_cache(&s);
    expect_miss(c, "nobody", &w);
    complete_fail(0, MINT_REJECTED, 400, "invalid_user");
    expect_miss(c, "nobody", &w);
    complete_fail(1, MINT_REJECTED, 400, "invalid_user");
    ASSERT_UINT_EQ(stats(c).entries, 0);
    free_cache(c);
}

static void all_waiters_get_the_failure(void) {
    cache_settings s = settings();
    cache *c = new_cache(&s);
    struct waiter w[3] = { { 0 } };

    ASSERT_INT_EQ(get(c, UA, "alice", SCOPE, 0, &w[0], NULL, NULL), CACHE_MISS);
    ASSERT_INT_EQ(get(c, UA, "alice", SCOPE, 0, &w[1], NULL, NULL), CACHE_COALESCED);
    ASSERT_INT_EQ(get(c, UA, "alice", SCOPE, 0, &w[2], NULL, NULL), CACHE_COALESCED);
    complete_fail(0, MINT_TIMEOUT, 0, "timeout");
    for (int i = 0; i < 3; i++) {
        ASSERT_INT_EQ(w[i].calls, 1);
        ASSERT_INT_EQ(w[i].o.kind, MINT_TIMEOUT);
        ASSERT_STR_EQ(w[i].o.error, "timeout");
        ASSERT(w[i].tok == NULL);
    }
    free_cache(c);
}

static bool present(cache *c, const char *user) {
    token *t = NULL;
    mint_outcome o;
    int r = cache_get(c, UA, user, SCOPE, 0, NULL, NULL, &t, &o);

    ASSERT(r == CACHE_HIT || r == -EAGAIN);
    token_unref(t);
    return r == CACHE_HIT;
}

/* The index grows well past its first size and shrinks back; deleting keys
 * from the middle of probe runs loses none of the others. */
static void index_grows_shrinks_and_keeps_every_key(void) {
    enum { N = 20000 };
    cache_settings s = settings();
    char user[32], value[32];
    cache *c;
    token *t;

    s.max_entries = N;
    c = new_cache(&s);
    for (unsigned i = 0; i < N; i++) {
        snprintf(user, sizeof(user), "user-%u", i);
        snprintf(value, sizeof(value), "tok-%u", i);
        ASSERT_INT_EQ(token_new(value, strlen(value), 3600, 0, fake_now, &t), 0);
        ASSERT_INT_EQ(cache_put(c, UA, user, SCOPE, t), 0);
        token_unref(t);
    }
    ASSERT_UINT_EQ(stats(c).entries, N);
    for (unsigned i = 0; i < N; i += 3) {
        snprintf(user, sizeof(user), "user-%u", i);
        ASSERT_INT_EQ(cache_drop(c, UA, user, SCOPE, NULL), 1);
    }
    for (unsigned i = 0; i < N; i++) {
        snprintf(user, sizeof(user), "user-%u", i);
        if (present(c, user) != (i % 3 != 0))
            UNIT_FAIL("user-%u is %s after dropping every third user", i, i % 3 ? "missing" : "still there");
    }
    expect_hit_value(c, "user-4", "tok-4");
    /* down to a handful: the index shrinks, and those left are still found */
    for (unsigned i = 0; i < N - 10; i++) {
        snprintf(user, sizeof(user), "user-%u", i);
        cache_drop(c, UA, user, SCOPE, NULL);
    }
    ASSERT_UINT_EQ(stats(c).entries, 7); /* 19990..19999 but 19992, 19995 and 19998 */
    for (unsigned i = N - 10; i < N; i++) {
        snprintf(user, sizeof(user), "user-%u", i);
        ASSERT(present(c, user) == (i % 3 != 0));
    }
    ASSERT_UINT_EQ(cache_flush(c), 7);
    ASSERT_UINT_EQ(stats(c).entries, 0);
    ASSERT(!present(c, "user-19999"));
    free_cache(c);
}

static void lru_evicts_least_recently_used(void) {
    cache_settings s = settings();
    cache *c;
    struct waiter w = { 0 };

    s.max_entries = 3;
    c = new_cache(&s);
    fill(c, "A", "tok-A", 3600);
    fill(c, "B", "tok-B", 3600);
    fill(c, "C", "tok-C", 3600);
    expect_hit_value(c, "A", "tok-A"); /* A is now the most recently used; B the least */
    ASSERT_UINT_EQ(stats(c).evictions, 0);

    fill(c, "D", "tok-D", 3600);
    ASSERT_UINT_EQ(stats(c).evictions, 1);
    ASSERT_UINT_EQ(stats(c).entries, 3);
    expect_hit_value(c, "A", "tok-A");
    expect_hit_value(c, "C", "tok-C");
    expect_hit_value(c, "D", "tok-D");
    /* B went (oldest-first would have dropped A) */
    expect_miss(c, "B", &w);
    ASSERT_UINT_EQ(stats(c).evictions, 2); /* ...and its return pushed out A */
    complete_ok(n_calls - 1, "tok-B2", 3600);
    waiter_clear(&w);
    expect_hit_value(c, "C", "tok-C");
    expect_hit_value(c, "D", "tok-D");
    expect_hit_value(c, "B", "tok-B2");
    ASSERT_UINT_EQ(stats(c).entries, 3);
    free_cache(c);
}

static void fetching_entries_not_evicted(void) {
    cache_settings s = settings();
    cache *c;
    struct waiter wa = { 0 }, wb = { 0 }, wc = { 0 }, wd = { 0 };
    unsigned ia;

    s.max_entries = 3;
    c = new_cache(&s);
    /* every entry is waiting on a mint: there is nothing to evict */
    ia = expect_miss(c, "A", &wa);
    expect_miss(c, "B", &wb);
    expect_miss(c, "C", &wc);
    ASSERT_INT_EQ(get(c, UA, "D", SCOPE, 0, &wd, NULL, NULL), -ENOBUFS);
    ASSERT_UINT_EQ(n_calls, 3);
    ASSERT_INT_EQ(wd.calls, 0);
    ASSERT_UINT_EQ(stats(c).evictions, 0);

    /* once B and C have tokens, D pushes out B; A, the oldest, still mints */
    complete_ok(1, "tok-B", 3600);
    complete_ok(2, "tok-C", 3600);
    expect_hit_value(c, "C", "tok-C");
    expect_miss(c, "D", &wd);
    ASSERT_UINT_EQ(stats(c).evictions, 1);
    complete_ok(ia, "tok-A", 3600); /* the waiter on A is still served */
    ASSERT_INT_EQ(wa.calls, 1);
    ASSERT_STR_EQ(wa.tok->value, "tok-A");
    complete_ok(3, "tok-D", 3600);
    expect_hit_value(c, "A", "tok-A");
    expect_hit_value(c, "C", "tok-C");
    expect_hit_value(c, "D", "tok-D");
    waiter_clear(&wa);
    waiter_clear(&wb);
    waiter_clear(&wc);
    waiter_clear(&wd);
    free_cache(c);
}

static void max_waiters_per_key(void) {
    cache_settings s = settings();
    cache *c;
    struct waiter w[3] = { { 0 } };

    s.max_waiters = 2;
    c = new_cache(&s);
    ASSERT_INT_EQ(get(c, UA, "alice", SCOPE, 0, &w[0], NULL, NULL), CACHE_MISS);
    ASSERT_INT_EQ(get(c, UA, "alice", SCOPE, 0, &w[1], NULL, NULL), CACHE_COALESCED);
    ASSERT_INT_EQ(get(c, UA, "alice", SCOPE, 0, &w[2], NULL, NULL), -EBUSY);
    ASSERT_UINT_EQ(n_calls, 1);
    /* other keys are not affected */
    expect_miss(c, "bob", NULL);
    complete_ok(1, "tok-bob", 3600);

    complete_ok(0, "tok-1", 3600);
    ASSERT_INT_EQ(w[0].calls, 1);
    ASSERT_INT_EQ(w[1].calls, 1);
    ASSERT_INT_EQ(w[2].calls, 0); /* refused callers are never called back */
    expect_hit_value(c, "alice", "tok-1");
    /* the limit is per mint: the next mint of this key takes two again */
    fake_now += 3600 * SEC;
    ASSERT_INT_EQ(get(c, UA, "alice", SCOPE, 0, &w[0], NULL, NULL), CACHE_MISS);
    ASSERT_INT_EQ(get(c, UA, "alice", SCOPE, 0, &w[1], NULL, NULL), CACHE_COALESCED);
    complete_ok(2, "tok-2", 3600);
    for (int i = 0; i < 3; i++)
        waiter_clear(&w[i]);
    free_cache(c);
}

static void sweep_drops_expired_entries(void) {
    cache_settings s = settings();
    cache *c;
    struct waiter w = { 0 };
    uint64_t start;

    s.refresh_before_pct = 0;
    c = new_cache(&s);
    start = fake_now;
    fill(c, "A", "tok-A", 10);
    fill(c, "B", "tok-B", 100);
    ASSERT_UINT_EQ(cache_sweep(c), 0);
    ASSERT_UINT_EQ(stats(c).entries, 2);

    fake_now = start + 10 * SEC;
    ASSERT_UINT_EQ(cache_sweep(c), 1);
    ASSERT_UINT_EQ(stats(c).expirations, 1);
    ASSERT_UINT_EQ(stats(c).entries, 1);
    expect_hit_value(c, "B", "tok-B");

    fake_now = start + 100 * SEC;
    ASSERT_UINT_EQ(cache_sweep(c), 1);
    ASSERT_UINT_EQ(stats(c).expirations, 2);
    ASSERT_UINT_EQ(stats(c).entries, 0);
    ASSERT_UINT_EQ(cache_sweep(c), 0);
    expect_miss(c, "B", &w); /* gone: minted again */
    complete_ok(n_calls - 1, "tok-B2", 100);
    waiter_clear(&w);
    free_cache(c);
}

static void sweep_spares_mints_and_remembered_rejections(void) {
    cache_settings s = settings();
    cache *c;
    struct waiter w = { 0 }, w2 = { 0 };
    mint_outcome o;
    unsigned i;

    s.refresh_before_pct = 0;
    c = new_cache(&s);
    /* an expired token whose replacement is minting stays for its waiter */
    fill(c, "A", "tok-A", 10);
    fake_now += 20 * SEC;
    i = expect_miss(c, "A", &w);
    /* and a remembered rejection stays for failure_ttl */
    expect_miss(c, "nobody", &w2);
    complete_fail(n_calls - 1, MINT_REJECTED, 400, "invalid_user");

    ASSERT_UINT_EQ(cache_sweep(c), 0);
    ASSERT_UINT_EQ(stats(c).entries, 2);
    ASSERT_INT_EQ(get(c, UA, "nobody", SCOPE, 0, &w2, NULL, &o), CACHE_FAILED);
    complete_ok(i, "tok-A2", 10);
    ASSERT_INT_EQ(w.calls, 1);
    ASSERT_STR_EQ(w.tok->value, "tok-A2");
    expect_hit_value(c, "A", "tok-A2");

    fake_now += 30 * SEC; /* the rejection is forgotten, tok-A2 expired */
    ASSERT_UINT_EQ(cache_sweep(c), 2);
    ASSERT_UINT_EQ(stats(c).expirations, 1); /* a forgotten rejection is no expiration */
    ASSERT_UINT_EQ(stats(c).entries, 0);
    waiter_clear(&w);
    free_cache(c);
}

static void token_outlives_its_entry(void) {
    cache_settings s = settings();
    cache *c;
    token *t = NULL;

    s.max_entries = 1;
    s.refresh_before_pct = 0;
    c = new_cache(&s);
    fill(c, "A", "tok-A", 3600);
    ASSERT_INT_EQ(get(c, UA, "A", SCOPE, 0, NULL, &t, NULL), CACHE_HIT);
    fill(c, "B", "tok-B", 3600); /* evicts A while an answer still holds tok-A */
    ASSERT_UINT_EQ(stats(c).evictions, 1);
    ASSERT_STR_EQ(t->value, "tok-A");
    ASSERT_UINT_EQ(t->len, 5);
    token_unref(t);
    free_cache(c);
}

static void fetch_completing_before_returning(void) {
    cache_settings s = settings();
    cache *c = new_cache(&s);
    struct waiter w = { 0 };
    int r;

    immediate.on = true;
    immediate.kind = MINT_OK;
    immediate.value = "tok-now";
    r = get(c, UA, "alice", SCOPE, 0, &w, NULL, NULL);
    ASSERT(r == CACHE_MISS);
    ASSERT_INT_EQ(w.calls, 1); /* already served */
    ASSERT_STR_EQ(w.tok->value, "tok-now");
    expect_hit_value(c, "alice", "tok-now");
    waiter_clear(&w);

    immediate.kind = MINT_UNAVAILABLE;
    r = get(c, UA, "bob", SCOPE, 0, &w, NULL, NULL);
    ASSERT(r == CACHE_MISS);
    ASSERT_INT_EQ(w.calls, 2);
    ASSERT_INT_EQ(w.o.kind, MINT_UNAVAILABLE);
    r = get(c, UA, "bob", SCOPE, 0, &w, NULL, NULL);
    ASSERT(r == CACHE_MISS);
    ASSERT_INT_EQ(w.calls, 3);
    ASSERT_UINT_EQ(n_calls, 3);
    immediate.on = false;
    free_cache(c);
}

static void stats_follow_what_happened(void) {
    cache_settings s = settings();
    cache *c;
    struct waiter w[2] = { { 0 } };
    struct cache_stats st;
    uint64_t start;

    s.max_entries = 2;
    c = new_cache(&s);
    st = stats(c);
    ASSERT_UINT_EQ(st.hits + st.misses + st.coalesced + st.refreshes + st.evictions +
                       st.expirations + st.entries,
                   0);

    start = fake_now;
    ASSERT_INT_EQ(get(c, UA, "A", SCOPE, 0, &w[0], NULL, NULL), CACHE_MISS);
    ASSERT_INT_EQ(get(c, UA, "A", SCOPE, 0, &w[1], NULL, NULL), CACHE_COALESCED);
    complete_ok(0, "tok-A", 3600);
    expect_hit_value(c, "A", "tok-A");
    expect_hit_value(c, "A", "tok-A");
    fill(c, "B", "tok-B", 60);
    fill(c, "C", "tok-C", 3600); /* evicts A */
    fake_now = start + 3600 * SEC - 800 * SEC;
    expect_hit_refreshing(c, "C", "tok-C");
    complete_ok(n_calls - 1, "tok-C2", 3600);
    ASSERT_UINT_EQ(cache_sweep(c), 1); /* B expired */

    st = stats(c);
    ASSERT_UINT_EQ(st.misses, 3);
    ASSERT_UINT_EQ(st.coalesced, 1);
    ASSERT_UINT_EQ(st.hits, 3);
    ASSERT_UINT_EQ(st.refreshes, 1);
    ASSERT_UINT_EQ(st.evictions, 1);
    ASSERT_UINT_EQ(st.expirations, 1);
    ASSERT_UINT_EQ(st.entries, 1);
    waiter_clear(&w[0]);
    waiter_clear(&w[1]);
    free_cache(c);
}

static void stats_count_fetches_in_flight(void) {
    cache_settings s = settings();
    cache *c = new_cache(&s);

    expect_miss(c, "A", NULL);
    expect_miss(c, "B", NULL);
    ASSERT_UINT_EQ(stats(c).fetching, 2);
    complete_ok(0, "tok-A", 3600);
    ASSERT_UINT_EQ(stats(c).fetching, 1);
    complete_ok(1, "tok-B", 3600);
    ASSERT_UINT_EQ(stats(c).fetching, 0);
    free_cache(c);
}

static void overlong_key_refused(void) {
    cache_settings s = settings();
    cache *c = new_cache(&s);
    char id[OAUTH_USER_ID_MAX + 2];

    memset(id, 'u', sizeof(id) - 1);
    id[sizeof(id) - 1] = '\0';
    ASSERT_INT_EQ(get(c, UA, id, SCOPE, 0, NULL, NULL, NULL), -EINVAL);
    ASSERT_UINT_EQ(n_calls, 0);
    id[OAUTH_USER_ID_MAX] = '\0'; /* 256 bytes is fine */
    ASSERT_INT_EQ(get(c, UA, id, SCOPE, 0, NULL, NULL, NULL), CACHE_MISS);
    ASSERT_STR_EQ(calls[0].user_id, id);
    complete_ok(0, "tok", 60);
    free_cache(c);
}

/* A drop that lands while a miss is in flight: the fetch may carry a copy
 * read before the drop (another host's, in fleet mode). It is neither
 * handed to the callers waiting nor kept; they get a fetch made after it. */
static void a_drop_during_a_fetch_is_not_undone_by_it(void) {
    cache_settings s = settings();
    cache *c = new_cache(&s);
    struct waiter w = { 0 };
    unsigned i = expect_miss(c, "alice", &w);

    ASSERT_INT_EQ(cache_drop(c, UA, "alice", SCOPE, NULL), 0); /* nothing cached yet */
    complete_ok(i, "dropped", 3600);
    ASSERT_INT_EQ(w.calls, 0);
    ASSERT_UINT_EQ(n_calls, i + 2); /* a new fetch, after the drop */
    ASSERT_STR_EQ(calls[i + 1].user_id, "alice");
    complete_ok(i + 1, "fresh", 3600);
    ASSERT_INT_EQ(w.calls, 1);
    ASSERT_STR_EQ(w.tok->value, "fresh");
    waiter_clear(&w);
    expect_hit_value(c, "alice", "fresh");
    free_cache(c);
}

/* The same for a flush, and for a background refresh nobody waits on: the
 * refresh's token is not kept, and the next caller misses. */
static void a_flush_during_a_refresh_keeps_nothing_it_brings(void) {
    cache_settings s = settings();
    cache *c = new_cache(&s);
    struct waiter w = { 0 };
    unsigned i;

    fill(c, "alice", "tok-1", 3600);
    fake_now += 3000 * SEC; /* in the refresh window */
    expect_hit_refreshing(c, "alice", "tok-1");
    i = n_calls - 1;
    ASSERT_UINT_EQ(cache_flush(c), 1);
    complete_ok(i, "pre-flush", 3600);
    ASSERT_UINT_EQ(n_calls, i + 1); /* nobody waits: no new fetch */
    ASSERT_UINT_EQ(stats(c).fetching, 0);
    i = expect_miss(c, "alice", &w);
    complete_ok(i, "post-flush", 3600);
    ASSERT_STR_EQ(w.tok->value, "post-flush");
    waiter_clear(&w);
    free_cache(c);
}

/* Whether the key still holds one given token (fleet mode asks before
 * offering a token it minted during an outage): not after a drop, a
 * flush or a newer token; and asking counts no hit. */
static void holds_tells_whether_the_key_still_has_that_token(void) {
    cache_settings s = settings();
    cache *c = new_cache(&s);
    token *t = NULL, *other = NULL;
    unsigned long long hits;

    fill(c, "alice", "tok-1", 3600);
    ASSERT_INT_EQ(get(c, UA, "alice", SCOPE, 0, NULL, &t, NULL), CACHE_HIT);
    hits = stats(c).hits;
    ASSERT(cache_holds(c, UA, "alice", SCOPE, t));
    ASSERT_UINT_EQ(stats(c).hits, hits);
    ASSERT(!cache_holds(c, UA, "bob", SCOPE, t));
    ASSERT(!cache_holds(c, UA, "alice", SCOPE, NULL));
    ASSERT_INT_EQ(cache_drop(c, UA, "alice", SCOPE, NULL), 1);
    ASSERT(!cache_holds(c, UA, "alice", SCOPE, t));
    fill(c, "alice", "tok-2", 3600);
    ASSERT(!cache_holds(c, UA, "alice", SCOPE, t)); /* another token now */
    ASSERT_INT_EQ(get(c, UA, "alice", SCOPE, 0, NULL, &other, NULL), CACHE_HIT);
    ASSERT(cache_holds(c, UA, "alice", SCOPE, other));
    ASSERT_UINT_EQ(cache_flush(c), 1);
    ASSERT(!cache_holds(c, UA, "alice", SCOPE, other));
    token_unref(t);
    token_unref(other);
    free_cache(c);
}

/* A conditional drop (the proxy's: "this token was refused") leaves a
 * fetch in flight alone: it brings a newer token than the refused one. */
static void a_conditional_drop_leaves_a_fetch_in_flight_alone(void) {
    cache_settings s = settings();
    cache *c = new_cache(&s);
    token *t = NULL;
    unsigned i;

    fill(c, "alice", "tok-1", 3600);
    ASSERT_INT_EQ(get(c, UA, "alice", SCOPE, 0, NULL, &t, NULL), CACHE_HIT);
    fake_now += 3000 * SEC;
    expect_hit_refreshing(c, "alice", "tok-1");
    i = n_calls - 1;
    ASSERT_INT_EQ(cache_drop_if(c, UA, "alice", SCOPE, t, NULL), 1);
    token_unref(t);
    complete_ok(i, "tok-2", 3600);
    expect_hit_value(c, "alice", "tok-2");
    free_cache(c);
}

/* Drops that keep coming while callers wait end in a failure they can
 * retry, not in an endless chain of fetches. */
static void fetches_made_stale_again_and_again_end_in_a_failure(void) {
    cache_settings s = settings();
    cache *c = new_cache(&s);
    struct waiter w = { 0 };
    unsigned i = expect_miss(c, "alice", &w);

    for (unsigned k = 0; k < 4; k++) {
        ASSERT_INT_EQ(cache_drop(c, UA, "alice", SCOPE, NULL), 0);
        complete_ok(i + k, "stale", 3600);
    }
    ASSERT_UINT_EQ(n_calls, i + 4);
    ASSERT_INT_EQ(w.calls, 1);
    ASSERT(w.tok == NULL);
    ASSERT_INT_EQ(w.o.kind, MINT_UNAVAILABLE);
    ASSERT_UINT_EQ(stats(c).fetching, 0);
    ASSERT_UINT_EQ(stats(c).entries, 0);
    free_cache(c);
}

static void cache_free_accepts_null(void) {
    ASSERT(cache_free(NULL) == NULL);
}

static const unit_test tests[] = {
    TEST(miss_fetches_once),
    TEST(concurrent_gets_coalesce),
    TEST(hit_after_completion),
    TEST(keys_are_distinct),
    TEST(token_below_min_ttl_not_handed_out),
    TEST(min_ttl_capped_at_half_lifetime),
    TEST(never_handed_out_past_expiry),
    TEST(refresh_ahead_serves_at_once_and_refreshes_once),
    TEST(a_deferred_refresh_hands_its_callers_a_fetch_of_their_own),
    TEST(refresh_ahead_off_at_zero_percent),
    TEST(failed_refresh_serves_old_token_and_backs_off),
    TEST(rejected_refresh_still_serves_valid_token),
    TEST(rejected_refresh_not_retried_before_failure_ttl),
    TEST(rejection_remembered_for_failure_ttl),
    TEST(other_failures_not_remembered),
    TEST(rejection_not_remembered_with_zero_failure_ttl),
    TEST(all_waiters_get_the_failure),
    TEST(index_grows_shrinks_and_keeps_every_key),
    TEST(lru_evicts_least_recently_used),
    TEST(fetching_entries_not_evicted),
    TEST(max_waiters_per_key),
    TEST(sweep_drops_expired_entries),
    TEST(sweep_spares_mints_and_remembered_rejections),
    TEST(token_outlives_its_entry),
    TEST(fetch_completing_before_returning),
    TEST(stats_follow_what_happened),
    TEST(stats_count_fetches_in_flight),
    TEST(overlong_key_refused),
    TEST(a_drop_during_a_fetch_is_not_undone_by_it),
    TEST(a_flush_during_a_refresh_keeps_nothing_it_brings),
    TEST(a_conditional_drop_leaves_a_fetch_in_flight_alone),
    TEST(holds_tells_whether_the_key_still_has_that_token),
    TEST(fetches_made_stale_again_and_again_end_in_a_failure),
    TEST(cache_free_accepts_null),
};

UNIT_MAIN(tests)
