/* Unit tests of src/upstream.c, through its public API, against the real
 * stand-in for Instacart (tests/stub/instacart-stub, started per case on a
 * free loopback port): a mint, a revocation, a 429 that pauses minting and
 * tells the fleet, the breaker opening after breaker_failures. Every wait
 * is on a condition with a deadline. */
#include <pthread.h>

#include "stub-helpers.h"

#define SCOPE "connect:recommendations"

/* ---- the client under test ---- */

/* What the callbacks saw, and a condition to wait on. */
static struct {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    unsigned dones;
    mint_outcome o;
    token *t;
    unsigned pauses;
    uint64_t paused_ms;
} seen = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, { 0 }, NULL, 0, 0 };

static void on_done(void *userdata, const mint_outcome *o, token *t) {
    pthread_mutex_lock(&seen.lock);
    seen.dones++;
    seen.o = *o;
    token_unref(seen.t);
    seen.t = t;
    pthread_cond_broadcast(&seen.cond);
    pthread_mutex_unlock(&seen.lock);
}

static void on_paused(void *userdata, uint64_t ms) {
    pthread_mutex_lock(&seen.lock);
    seen.pauses++;
    seen.paused_ms = ms;
    pthread_cond_broadcast(&seen.cond);
    pthread_mutex_unlock(&seen.lock);
}

/* Waits until *counter reaches n, or fails the case at the deadline. */
static void wait_for(const unsigned *counter, unsigned n, const char *what) {
    stub_wait_count(&seen.lock, &seen.cond, counter, n, what);
}

/* A started client of the stub, with these [upstream] settings added. */
static upstream *client(const char *settings, const struct upstream_events *ev) {
    config *cfg;
    upstream *u = NULL;

    ASSERT_INT_EQ(curl_global_init(CURL_GLOBAL_DEFAULT), CURLE_OK);
    stub_start();
    cfg = stub_config(settings);
    ASSERT_INT_EQ(upstream_new(cfg, &u), 0);
    config_free(cfg); /* the client keeps copies */
    if (ev)
        upstream_set_events(u, ev);
    ASSERT_INT_EQ(upstream_start(u), 0);
    return u;
}

static void mint(upstream *u, const char *user) {
    upstream_mint(u, OAUTH_GRANT_USER_ASSERTION, user, SCOPE, on_done, NULL);
}

/* ---- the cases ---- */

static void one_mint_is_one_request(void) {
    upstream *u = client("", NULL);
    struct upstream_stats st;

    mint(u, "user-1");
    wait_for(&seen.dones, 1, "answer to the mint");
    ASSERT_INT_EQ(seen.o.kind, MINT_OK);
    ASSERT_INT_EQ(seen.o.http_status, 200);
    ASSERT(seen.t && seen.t->value[0]);
    ASSERT_INT_EQ(stub_stat("mints"), 1);
    ASSERT_INT_EQ(stub_stat("token_requests"), 1);
    upstream_get_stats(u, &st);
    ASSERT_UINT_EQ(st.mints_ok, 1);
    ASSERT_UINT_EQ(st.requests, 1);
    ASSERT_UINT_EQ(st.latency_count, 1);
    ASSERT_INT_EQ(st.circuit, CIRCUIT_CLOSED);
    upstream_free(u);
    stub_stop();
}

static void a_revocation_reaches_instacart(void) {
    upstream *u = client("", NULL);
    struct upstream_stats st;
    char value[OAUTH_TOKEN_MAX + 1];

    mint(u, "user-2");
    wait_for(&seen.dones, 1, "answer to the mint");
    ASSERT(seen.t);
    snprintf(value, sizeof(value), "%s", seen.t->value);
    ASSERT(!stub_revoked(value));

    upstream_revoke(u, 0, value, on_done, NULL);
    wait_for(&seen.dones, 2, "answer to the revocation");
    ASSERT_INT_EQ(seen.o.kind, MINT_OK);
    ASSERT(seen.t == NULL); /* a revocation hands out no token */
    ASSERT(stub_revoked(value));
    ASSERT_INT_EQ(stub_stat("revocations"), 1);
    upstream_get_stats(u, &st);
    ASSERT_UINT_EQ(st.revocations_ok, 1);
    ASSERT_UINT_EQ(st.mints_ok, 1);
    upstream_free(u);
    stub_stop();
}

/* A token had before a reload moved to another client id (or server) is
 * never sent to the new one, where it would be another party's secret. */
static void a_token_of_the_server_before_a_move_is_never_sent_to_the_new_one(void) {
    upstream *u = client("", NULL);
    char value[OAUTH_TOKEN_MAX + 1];
    uint64_t before;
    config *cfg;

    mint(u, "user-moved");
    wait_for(&seen.dones, 1, "answer to the mint");
    ASSERT(seen.t);
    snprintf(value, sizeof(value), "%s", seen.t->value);
    before = upstream_generation(u);
    {
        char text[512], err[CONFIG_ERR_MAX] = "";
        snprintf(text, sizeof(text), "[upstream]\nbase_url = %s\nclient_id = another-client\n", stub.base_url);
        if (config_parse_string(text, "moved.conf", &cfg, err) < 0)
            UNIT_FAIL("configuration refused: %s", err);
        cfg->client_secret = strdup("another-secret");
        ASSERT(cfg->client_secret);
        cfg->client_secret_len = strlen(cfg->client_secret);
    }
    ASSERT_INT_EQ(upstream_set_credentials(u, cfg), 0);
    config_free(cfg);
    ASSERT(upstream_generation(u) != before);

    upstream_revoke(u, before, value, on_done, NULL);
    wait_for(&seen.dones, 2, "answer to the revocation");
    ASSERT_INT_EQ(seen.o.kind, MINT_UNAVAILABLE);
    ASSERT_STR_EQ(seen.o.error, "server_changed");
    ASSERT_INT_EQ(stub_stat("revocations"), 0);
    ASSERT(!stub_revoked(value));
    upstream_free(u);
    stub_stop();
}

static void a_429_pauses_minting_and_tells_the_fleet(void) {
    struct upstream_events ev = { .paused = on_paused };
    upstream *u = client("request_timeout = 2s\n", &ev);
    struct upstream_stats st;

    stub_fault("{\"action\": \"status\", \"status\": 429, \"retry_after\": \"30\", \"count\": 1}");
    mint(u, "user-3");
    wait_for(&seen.pauses, 1, "pause reported");
    ASSERT_UINT_EQ(seen.paused_ms, 30000);
    /* 30 s do not fit in the 2 s the mint may take: it ends with Instacart's words */
    wait_for(&seen.dones, 1, "answer to the mint");
    ASSERT_INT_EQ(seen.o.kind, MINT_UNAVAILABLE);
    ASSERT_INT_EQ(seen.o.http_status, 429);
    ASSERT_UINT_EQ(seen.o.retry_after_s, 30);
    ASSERT_STR_EQ(seen.o.error, "rate_limited");
    upstream_get_stats(u, &st);
    ASSERT(st.rate_limited);
    ASSERT(st.circuit == CIRCUIT_CLOSED); /* Instacart protecting itself is not failing */

    /* while paused, a mint is refused at once, without asking Instacart */
    mint(u, "user-4");
    wait_for(&seen.dones, 2, "answer to the second mint");
    ASSERT_INT_EQ(seen.o.http_status, 429);
    ASSERT_STR_EQ(seen.o.error, "rate_limited");
    ASSERT(seen.o.retry_after_s >= 28 && seen.o.retry_after_s <= 30);
    ASSERT_INT_EQ(stub_stat("token_requests"), 1);
    upstream_free(u);
    stub_stop();
}

static void the_breaker_opens_after_breaker_failures(void) {
    upstream *u = client("breaker_failures = 3\nbreaker_cooldown = 60s\nretry_base = 1ms\nretry_max = 5ms\n",
                         NULL);
    struct upstream_stats st;

    stub_fault("{\"action\": \"status\", \"status\": 503}"); /* every call, from now on */
    /* one mint: three attempts fail, the third opens the circuit, and the
     * retry it had earned is refused by the breaker */
    mint(u, "user-5");
    wait_for(&seen.dones, 1, "answer to the mint");
    ASSERT_INT_EQ(seen.o.kind, MINT_UNAVAILABLE);
    ASSERT_INT_EQ(seen.o.http_status, 503);
    ASSERT_INT_EQ(stub_stat("token_requests"), 3);
    upstream_get_stats(u, &st);
    ASSERT_INT_EQ(st.circuit, CIRCUIT_OPEN);
    ASSERT_UINT_EQ(st.requests, 3);
    ASSERT_UINT_EQ(st.retries, 2);
    ASSERT_UINT_EQ(st.mints_failed, 1);

    /* open: the next mint is refused at once with the last failure, and
     * when to ask again */
    mint(u, "user-6");
    wait_for(&seen.dones, 2, "answer to the second mint");
    ASSERT_INT_EQ(seen.o.http_status, 503);
    ASSERT(seen.o.retry_after_s >= 58 && seen.o.retry_after_s <= 60);
    ASSERT_INT_EQ(stub_stat("token_requests"), 3);
    upstream_free(u);
    stub_stop();
}

/* A mint that meets the circuit half open during a 429's pause, and whose
 * deadline lets it wait the pause out, must not hold the breaker's one
 * probe while it waits: it would refuse itself after the pause, and every
 * mint after it, the circuit staying half open for good. */
static void a_mint_waiting_out_a_pause_does_not_keep_the_breakers_probe(void) {
    upstream *u = client("breaker_failures = 1\nbreaker_cooldown = 100ms\nrequest_timeout = 3s\n"
                         "retry_base = 1ms\nretry_max = 5ms\n",
                         NULL);
    struct upstream_stats st;
    uint64_t started = now_ms();

    stub_fault("{\"action\": \"status\", \"status\": 429, \"retry_after\": \"4\", \"count\": 1, "
               "\"match_user\": \"limited\"}");
    stub_fault("{\"action\": \"status\", \"status\": 500, \"count\": 1, \"delay_ms\": 300, "
               "\"match_user\": \"failing\"}");
    mint(u, "limited");                        /* pauses minting 4 s: more than it may wait */
    mint(u, "failing");                        /* in flight 300 ms, then opens the circuit */
    wait_for(&seen.dones, 2, "answers to both");
    /* the cooldown over, the pause on, and late enough that a new mint's
     * deadline (3 s) outlasts the pause: it waits it out */
    for (;;) {
        upstream_get_stats(u, &st);
        if (!st.rate_limited)
            UNIT_FAIL("the pause ended before the case could start");
        if (st.circuit != CIRCUIT_OPEN && now_ms() - started >= 1300)
            break;
        pause_ms(20);
    }
    mint(u, "waiting");
    wait_for(&seen.dones, 3, "answer to the mint that waited out the pause");
    ASSERT_INT_EQ(seen.o.kind, MINT_OK);
    mint(u, "after");
    wait_for(&seen.dones, 4, "answer after the pause");
    ASSERT_INT_EQ(seen.o.kind, MINT_OK);
    upstream_get_stats(u, &st);
    ASSERT_INT_EQ(st.circuit, CIRCUIT_CLOSED);
    upstream_free(u);
    stub_stop();
}

static const unit_test tests[] = {
    TEST(one_mint_is_one_request),
    TEST(a_revocation_reaches_instacart),
    TEST(a_token_of_the_server_before_a_move_is_never_sent_to_the_new_one),
    TEST(a_429_pauses_minting_and_tells_the_fleet),
    TEST(the_breaker_opens_after_breaker_failures),
    TEST(a_mint_waiting_out_a_pause_does_not_keep_the_breakers_probe),
};

UNIT_MAIN(tests)
