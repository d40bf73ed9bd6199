/* Unit tests of src/revoke.c, through its public API, with a real upstream
 * client talking to the real stand-in for Instacart: a revocation lands
 * once per distinct token, one Instacart fails is kept and tried again by
 * revocations_tick() until Instacart takes it, one whose token has expired
 * is given up, and the number kept waiting is bounded. Every wait is on a
 * condition with a deadline. */
#include <pthread.h>

#include "log.h"
#include "revoke.h"
#include "stub-helpers.h"

#define SCOPE "connect:recommendations"
/* a try of a revocation is a few attempts, and the breaker stays out of the way */
#define FEW_ATTEMPTS "request_timeout = 300ms\nretry_base = 100ms\nretry_max = 200ms\nbreaker_failures = 1000\n"

/* What the callbacks saw, and a condition to wait on. */
static struct {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    unsigned dones;
    struct revoke_outcome o;
    uint64_t done_ms;
    unsigned mints;
    token *minted;
} seen = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, { 0 }, 0, 0, NULL };

static void on_revoked(void *userdata, const struct revoke_outcome *o) {
    pthread_mutex_lock(&seen.lock);
    seen.dones++;
    seen.o = *o;
    seen.done_ms = now_ms();
    pthread_cond_broadcast(&seen.cond);
    pthread_mutex_unlock(&seen.lock);
}

static void on_minted(void *userdata, const mint_outcome *o, token *t) {
    pthread_mutex_lock(&seen.lock);
    seen.mints++;
    token_unref(seen.minted);
    seen.minted = t;
    pthread_cond_broadcast(&seen.cond);
    pthread_mutex_unlock(&seen.lock);
}

/* Waits until *counter reaches n, or fails the case at the deadline. */
static void wait_for(const unsigned *counter, unsigned n, const char *what) {
    stub_wait_count(&seen.lock, &seen.cond, counter, n, what);
}

/* A token that Instacart never issued, living lifetime_s from now: the
 * stub takes its revocation quietly, as RFC 7009 says Instacart does. */
static token *local_token(const char *value, uint32_t lifetime_s) {
    token *t = NULL;

    ASSERT_INT_EQ(token_new(value, strlen(value), lifetime_s, 0, now_ms(), &t), 0);
    return t;
}

static revocations *new_revocations(upstream *u) {
    revocations *rv = NULL;

    ASSERT_INT_EQ(revocations_new(u, &rv), 0);
    return rv;
}

static struct revoke_stats stats(revocations *rv) {
    struct revoke_stats st;

    revocations_get_stats(rv, &st);
    return st;
}

/* Calls revocations_tick() until the counter of stats reaches n. */
static void tick_until(revocations *rv, const unsigned long long *counter, struct revoke_stats *st,
                       unsigned long long n, const char *what) {
    uint64_t deadline = now_ms() + WAIT_MS;

    for (;;) {
        revocations_tick(rv);
        revocations_get_stats(rv, st);
        if (*counter >= n)
            return;
        if (now_ms() > deadline)
            UNIT_FAIL("no %s within %d ms (revoked=%llu retried=%llu expired=%llu pending=%u)", what, WAIT_MS,
                      st->revoked, st->retried, st->expired, st->pending);
        pause_ms(50);
    }
}

static void fail_revocations(int status) {
    char fault[160];

    snprintf(fault, sizeof(fault), "{\"status\": %d, \"match_path\": \"" STUB_REVOKE_PATH "\", \"count\": -1}",
             status);
    stub_fault(fault);
}

static void stop(revocations *rv, upstream *u) {
    upstream_free(u); /* nothing in flight after this */
    revocations_free(rv);
    stub_stop();
}

/* ---- the cases ---- */

static void a_minted_token_is_revoked_at_instacart(void) {
    upstream *u = stub_client("");
    revocations *rv = new_revocations(u);
    struct revoke_stats st;
    token *t;

    upstream_mint(u, OAUTH_GRANT_USER_ASSERTION, "user-1", SCOPE, on_minted, NULL);
    wait_for(&seen.mints, 1, "answer to the mint");
    ASSERT(seen.minted);
    t = seen.minted;
    ASSERT(!stub_revoked(t->value));

    revocations_revoke(rv, &t, 1, 0, on_revoked, NULL);
    wait_for(&seen.dones, 1, "answer to the revocation");
    ASSERT_UINT_EQ(seen.o.revoked, 1);
    ASSERT_UINT_EQ(seen.o.pending, 0);
    ASSERT(stub_revoked(t->value));
    ASSERT_INT_EQ(stub_stat("revocations"), 1);
    st = stats(rv);
    ASSERT_UINT_EQ(st.revoked, 1);
    ASSERT_UINT_EQ(st.pending, 0);
    ASSERT_UINT_EQ(st.retried, 0);
    stop(rv, u);
    token_unref(seen.minted);
}

/* Two references to one value (say, the cache's and a drop-in's) and a
 * hole are one revocation. */
static void the_same_token_twice_is_revoked_once(void) {
    upstream *u = stub_client("");
    revocations *rv = new_revocations(u);
    token *toks[3] = { local_token("tok-twice", 600), NULL, local_token("tok-twice", 600) };

    revocations_revoke(rv, toks, 3, 0, on_revoked, NULL);
    wait_for(&seen.dones, 1, "answer to the revocation");
    ASSERT_UINT_EQ(seen.o.revoked, 1);
    ASSERT_UINT_EQ(seen.o.pending, 0);
    ASSERT(stub_revoked("tok-twice"));
    ASSERT_INT_EQ(stub_requests_to(STUB_REVOKE_PATH), 1);
    ASSERT_UINT_EQ(stats(rv).revoked, 1);
    stop(rv, u);
    token_unref(toks[0]);
    token_unref(toks[2]);
}

/* Two distinct tokens in one call: both revoked, one answer for both. */
static void two_tokens_in_one_call_are_both_revoked(void) {
    upstream *u = stub_client("");
    revocations *rv = new_revocations(u);
    token *toks[2] = { local_token("tok-first", 600), local_token("tok-second", 600) };

    revocations_revoke(rv, toks, 2, 0, on_revoked, NULL);
    wait_for(&seen.dones, 1, "answer to the revocation");
    ASSERT_UINT_EQ(seen.o.revoked, 2);
    ASSERT(stub_revoked("tok-first"));
    ASSERT(stub_revoked("tok-second"));
    ASSERT_UINT_EQ(stats(rv).revoked, 2);
    stop(rv, u);
    token_unref(toks[0]);
    token_unref(toks[1]);
}

/* A token whose revocation is still on its way to Instacart is not sent
 * again: the second caller is answered at once, with nothing to report. */
static void a_token_in_flight_is_not_sent_again(void) {
    upstream *u = stub_client("");
    revocations *rv = new_revocations(u);
    token *t = local_token("tok-in-flight", 600);

    stub_fault("{\"action\": \"ok\", \"delay_ms\": 1000, \"match_path\": \"" STUB_REVOKE_PATH "\", \"count\": 1}");
    revocations_revoke(rv, &t, 1, 0, on_revoked, NULL);
    revocations_revoke(rv, &t, 1, 0, on_revoked, NULL);
    wait_for(&seen.dones, 1, "answer to the second call");
    ASSERT_UINT_EQ(seen.o.revoked, 0);
    ASSERT_UINT_EQ(seen.o.pending, 0);
    wait_for(&seen.dones, 2, "answer to the first call");
    ASSERT_UINT_EQ(seen.o.revoked, 1);
    ASSERT_INT_EQ(stub_requests_to(STUB_REVOKE_PATH), 1);
    ASSERT_UINT_EQ(stats(rv).revoked, 1);
    stop(rv, u);
    token_unref(t);
}

/* Nor is one waiting for its next try after a failure. */
static void a_token_waiting_for_a_retry_is_not_sent_again(void) {
    upstream *u = stub_client(FEW_ATTEMPTS);
    revocations *rv = new_revocations(u);
    token *t = local_token("tok-waiting", 600);
    struct revoke_stats st;

    fail_revocations(404);
    revocations_revoke(rv, &t, 1, 0, on_revoked, NULL);
    wait_for(&seen.dones, 1, "answer to the first call");
    ASSERT_UINT_EQ(seen.o.revoked, 0);
    ASSERT_UINT_EQ(seen.o.pending, 1);
    ASSERT_INT_EQ(seen.o.failure.kind, MINT_REJECTED);
    ASSERT_INT_EQ(seen.o.failure.http_status, 404);

    revocations_revoke(rv, &t, 1, 0, on_revoked, NULL);
    wait_for(&seen.dones, 2, "answer to the second call");
    ASSERT_UINT_EQ(seen.o.revoked, 0);
    ASSERT_UINT_EQ(seen.o.pending, 0);
    ASSERT_INT_EQ(stub_requests_to(STUB_REVOKE_PATH), 1);
    st = stats(rv);
    ASSERT_UINT_EQ(st.pending, 1);
    ASSERT_UINT_EQ(st.refused, 0);
    stop(rv, u);
    token_unref(t);
}

/* Instacart failing (503, and retrying inside the request did not help):
 * the revocation is kept, not sent again before its backoff, and sent by
 * a later tick once Instacart is back. */
static void a_failed_revocation_is_retried_until_instacart_takes_it(void) {
    upstream *u = stub_client(FEW_ATTEMPTS);
    revocations *rv = new_revocations(u);
    token *t = local_token("tok-retried", 600);
    struct revoke_stats st;

    fail_revocations(503);
    revocations_revoke(rv, &t, 1, 0, on_revoked, NULL);
    wait_for(&seen.dones, 1, "answer to the first try");
    ASSERT_UINT_EQ(seen.o.revoked, 0);
    ASSERT_UINT_EQ(seen.o.pending, 1);
    ASSERT_INT_EQ(seen.o.failure.kind, MINT_UNAVAILABLE);
    ASSERT_INT_EQ(seen.o.failure.http_status, 503);
    st = stats(rv);
    ASSERT_UINT_EQ(st.pending, 1);
    ASSERT_UINT_EQ(st.revoked, 0);

    /* the first retry waits at least a second: a tick well inside it sends
     * nothing (checked only when this thread was not held up that long) */
    revocations_tick(rv);
    if (now_ms() - seen.done_ms < 500)
        ASSERT_UINT_EQ(stats(rv).retried, 0);

    stub_reset(); /* Instacart is back */
    tick_until(rv, &st.revoked, &st, 1, "revocation taken on a retry");
    ASSERT(st.retried >= 1);
    ASSERT_UINT_EQ(st.pending, 0);
    ASSERT_UINT_EQ(st.expired, 0);
    ASSERT(stub_revoked("tok-retried"));
    ASSERT_UINT_EQ(seen.dones, 1); /* the caller heard once, of the first try */
    stop(rv, u);
    token_unref(t);
}

/* A retry that fails again is kept for the next one: 404 twice, then taken. */
static void a_revocation_is_kept_across_failed_retries(void) {
    upstream *u = stub_client(FEW_ATTEMPTS);
    revocations *rv = new_revocations(u);
    token *t = local_token("tok-kept", 600);
    struct revoke_stats st;

    fail_revocations(404); /* not retried inside the request: one request per try */
    revocations_revoke(rv, &t, 1, 0, on_revoked, NULL);
    wait_for(&seen.dones, 1, "answer to the first try");
    ASSERT_UINT_EQ(seen.o.pending, 1);
    tick_until(rv, &st.retried, &st, 1, "first retry");
    stub_wait_answers(STUB_REVOKE_PATH, 404, 2);
    ASSERT(!stub_revoked("tok-kept"));

    stub_reset();
    tick_until(rv, &st.revoked, &st, 1, "revocation taken on the second retry");
    ASSERT_UINT_EQ(st.retried, 2);
    ASSERT_UINT_EQ(st.pending, 0);
    ASSERT(stub_revoked("tok-kept"));
    ASSERT_INT_EQ(stub_requests_to(STUB_REVOKE_PATH), 1); /* counted since the reset */
    stop(rv, u);
    token_unref(t);
}

/* A token that expired while its revocation waited can no longer be used:
 * it is dropped, not sent again. */
static void an_expired_token_is_given_up(void) {
    upstream *u = stub_client(FEW_ATTEMPTS);
    revocations *rv = new_revocations(u);
    token *t = local_token("tok-expiring", 1); /* expires before the first retry is due */
    struct revoke_stats st;

    fail_revocations(503);
    revocations_revoke(rv, &t, 1, 0, on_revoked, NULL);
    wait_for(&seen.dones, 1, "answer to the first try");
    ASSERT_UINT_EQ(seen.o.pending, 1);
    stub_reset(); /* Instacart would take it now */

    tick_until(rv, &st.expired, &st, 1, "expiry");
    ASSERT_UINT_EQ(st.pending, 0);
    ASSERT_UINT_EQ(st.retried, 0);
    ASSERT_UINT_EQ(st.revoked, 0);
    ASSERT_INT_EQ(stub_requests_to(STUB_REVOKE_PATH), 0);
    stop(rv, u);
    token_unref(t);
}

/* At most REVOKE_PENDING_MAX tokens wait for another try; one more is
 * refused (and counted) rather than kept, while a token already waiting
 * is still no refusal. The upstream client is stopped, so every try fails
 * at once without the network, and the bound is cheap to reach. */
static void beyond_the_pending_bound_a_revocation_is_refused(void) {
    config *cfg;
    upstream *u = NULL;
    revocations *rv;
    token *toks[100], *extra;
    struct revoke_stats st;
    char value[32];

    log_set_max_level(LOG_ERR); /* ten thousand first failures, each said once */
    snprintf(stub.base_url, sizeof(stub.base_url), "http://127.0.0.1:9"); /* never reached */
    cfg = stub_config("");
    ASSERT_INT_EQ(upstream_new(cfg, &u), 0);
    config_free(cfg);
    ASSERT_INT_EQ(upstream_start(u), 0);
    upstream_stop(u);
    rv = new_revocations(u);

    for (unsigned batch = 0; batch < REVOKE_PENDING_MAX / 100; batch++) {
        for (unsigned i = 0; i < 100; i++) {
            snprintf(value, sizeof(value), "tok-%u-%u", batch, i);
            toks[i] = local_token(value, 600);
        }
        revocations_revoke(rv, toks, 100, 0, on_revoked, NULL);
        ASSERT_UINT_EQ(seen.dones, batch + 1); /* refused at once: answered before returning */
        ASSERT_UINT_EQ(seen.o.pending, 100);
        ASSERT_STR_EQ(seen.o.failure.error, "shutting_down");
        for (unsigned i = 0; i < 100; i++)
            token_unref(toks[i]);
    }
    st = stats(rv);
    ASSERT_UINT_EQ(st.pending, REVOKE_PENDING_MAX);
    ASSERT_UINT_EQ(st.refused, 0);

    extra = local_token("tok-one-too-many", 600);
    revocations_revoke(rv, &extra, 1, 0, on_revoked, NULL);
    ASSERT_UINT_EQ(seen.o.revoked, 0);
    ASSERT_UINT_EQ(seen.o.pending, 1);
    ASSERT_STR_EQ(seen.o.failure.error, "too_many_pending_revocations");
    st = stats(rv);
    ASSERT_UINT_EQ(st.refused, 1);
    ASSERT_UINT_EQ(st.pending, REVOKE_PENDING_MAX);
    ASSERT_UINT_EQ(extra->refs, 1); /* not kept */

    /* one already waiting is on its way: not a refusal */
    token_unref(extra);
    extra = local_token("tok-0-0", 600);
    revocations_revoke(rv, &extra, 1, 0, on_revoked, NULL);
    ASSERT_UINT_EQ(seen.o.pending, 0);
    ASSERT_UINT_EQ(stats(rv).refused, 1);
    token_unref(extra);
    upstream_free(u);
    revocations_free(rv); /* with ten thousand waiting: LeakSanitizer checks they all go */
}

/* Stopping with revocations still waiting frees them and gives the
 * caller's references back untouched. */
static void freeing_with_pending_revocations_releases_them(void) {
    upstream *u = stub_client(FEW_ATTEMPTS);
    revocations *rv = new_revocations(u);
    token *toks[3] = { local_token("tok-a", 600), local_token("tok-b", 600), local_token("tok-c", 600) };

    fail_revocations(503);
    revocations_revoke(rv, toks, 3, 0, on_revoked, NULL);
    wait_for(&seen.dones, 1, "answer to the first try");
    ASSERT_UINT_EQ(seen.o.pending, 3);
    ASSERT_UINT_EQ(stats(rv).pending, 3);
    for (unsigned i = 0; i < 3; i++)
        ASSERT_UINT_EQ(toks[i]->refs, 2); /* ours and the waiting entry's */
    stop(rv, u);
    for (unsigned i = 0; i < 3; i++) {
        ASSERT_UINT_EQ(toks[i]->refs, 1);
        token_unref(toks[i]);
    }
}

static const unit_test tests[] = {
    TEST(a_minted_token_is_revoked_at_instacart),
    TEST(the_same_token_twice_is_revoked_once),
    TEST(two_tokens_in_one_call_are_both_revoked),
    TEST(a_token_in_flight_is_not_sent_again),
    TEST(a_token_waiting_for_a_retry_is_not_sent_again),
    TEST(a_failed_revocation_is_retried_until_instacart_takes_it),
    TEST(a_revocation_is_kept_across_failed_retries),
    TEST(an_expired_token_is_given_up),
    TEST(beyond_the_pending_bound_a_revocation_is_refused),
    TEST(freeing_with_pending_revocations_releases_them),
};

UNIT_MAIN(tests)
