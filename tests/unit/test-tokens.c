/* Unit tests of src/tokens.c: every caller's way to drop a token, here and
 * (in fleet mode) everywhere. Without a fleet here: a real cache filled by
 * a fetch of the test's own, and real revocations whose upstream client is
 * stopped, so a revocation fails at once without the network. */
#include <string.h>

#include "config.h"
#include "log.h"
#include "tokens.h"
#include "unit.h"
#include "util.h"

#define SCOPE "connect:recommendations"
#define UA OAUTH_GRANT_USER_ASSERTION

/* A fetch that mints "tok-<user>" at once. */
static struct {
    unsigned n;
    bool durable;
} acks;

static void acked(void *userdata, bool durable) {
    ASSERT(userdata == &acks);
    acks.n++;
    acks.durable = durable;
}

static void fetch_now(void *source, enum oauth_grant grant, const char *user_id, const char *scope,
                      const struct cache_want *want, cache_done_fn done, void *ctx) {
    mint_outcome o = { .kind = MINT_OK, .http_status = 200 };
    char value[OAUTH_USER_ID_MAX + 8];
    token *t = NULL;

    snprintf(value, sizeof(value), "tok-%s", user_id);
    ASSERT_INT_EQ(token_new(value, strlen(value), 3600, 1700000000, now_ms(), &t), 0);
    done(ctx, &o, t);
}

static void ignore(void *userdata, const mint_outcome *o, token *t) {
    token_unref(t);
}

static cache *filled(const char *const *users, size_t n) {
    cache_settings s = { .max_entries = 100, .min_ttl_ms = 1000, .refresh_before_pct = 0, .failure_ttl_ms = 0,
                         .max_waiters = 10, .retry_base_ms = 100, .retry_max_ms = 1000 };
    cache *c = NULL;

    ASSERT_INT_EQ(cache_new(&s, fetch_now, NULL, &c), 0);
    for (size_t i = 0; i < n; i++) {
        token *t = NULL;
        mint_outcome o;
        ASSERT(cache_get(c, UA, users[i], SCOPE, 0, ignore, NULL, &t, &o) >= 0);
        token_unref(t);
    }
    return c;
}

static token *held(cache *c, const char *user) {
    token *t = NULL;
    mint_outcome o;

    return cache_get(c, UA, user, SCOPE, 0, NULL, NULL, &t, &o) == CACHE_HIT ? t : NULL;
}

static void a_drop_takes_the_token_and_says_whether_it_was_here(void) {
    static const char *const users[] = { "alice", "bob" };
    cache *c = filled(users, 2);
    struct tokens tk = { .cache = c };
    token *t;

    ASSERT_INT_EQ(tokens_drop(&tk, UA, "alice", SCOPE, NULL, acked, &acks, NULL), 1);
    ASSERT_UINT_EQ(acks.n, 1); /* without a fleet, done at once */
    ASSERT(acks.durable);
    ASSERT(held(c, "alice") == NULL);
    ASSERT_INT_EQ(tokens_drop(&tk, UA, "alice", SCOPE, NULL, NULL, NULL, NULL), 0); /* nothing left */
    t = held(c, "bob");
    ASSERT(t && strcmp(t->value, "tok-bob") == 0); /* the others stay */
    token_unref(t);
    cache_free(c);
}

/* The proxy drops the token Instacart refused, not one minted since. */
static void a_drop_of_one_token_leaves_another(void) {
    static const char *const users[] = { "carol" };
    cache *c = filled(users, 1);
    struct tokens tk = { .cache = c };
    token *other = NULL, *t;

    ASSERT_INT_EQ(token_new("not-the-one", 11, 3600, 1700000000, now_ms(), &other), 0);
    ASSERT_INT_EQ(tokens_drop(&tk, UA, "carol", SCOPE, other, NULL, NULL, NULL), 0);
    t = held(c, "carol");
    ASSERT(t);
    ASSERT_INT_EQ(tokens_drop(&tk, UA, "carol", SCOPE, t, NULL, NULL, NULL), 1);
    ASSERT(held(c, "carol") == NULL);
    token_unref(t);
    token_unref(other);
    cache_free(c);
}

static void a_flush_drops_every_token_and_counts_them(void) {
    static const char *const users[] = { "a", "b", "c" };
    cache *c = filled(users, 3);
    struct tokens tk = { .cache = c };

    acks.n = 0;
    ASSERT_UINT_EQ(tokens_flush(&tk, acked, &acks, NULL), 3);
    ASSERT(acks.n == 1 && acks.durable);
    ASSERT(held(c, "a") == NULL && held(c, "b") == NULL && held(c, "c") == NULL);
    ASSERT_UINT_EQ(tokens_flush(&tk, NULL, NULL, NULL), 0);
    cache_free(c);
}

static struct {
    unsigned dones;
    struct revoke_outcome o;
} seen;

static void on_revoked(void *userdata, const struct revoke_outcome *o) {
    seen.dones++;
    seen.o = *o;
}

/* A revocation takes the token out of the cache before anything else, says
 * it was here, and hands it to the revocations: here they fail at once (the
 * upstream client is stopped), so the caller is told it is pending. */
static void a_revocation_drops_here_and_hands_the_token_over(void) {
    static const char *const users[] = { "dave" };
    char text[256], err[CONFIG_ERR_MAX] = "";
    cache *c = filled(users, 1);
    config *cfg = NULL;
    upstream *u = NULL;
    revocations *rv = NULL;
    struct tokens tk = { .cache = c };
    bool here = false;

    log_set_max_level(LOG_ERR);
    snprintf(text, sizeof(text), "[upstream]\nbase_url = http://127.0.0.1:9\nclient_id = test-client\n");
    ASSERT_INT_EQ(config_parse_string(text, "test.conf", &cfg, err), 0);
    cfg->client_secret = strdup("test-secret");
    ASSERT(cfg->client_secret);
    cfg->client_secret_len = strlen(cfg->client_secret);
    ASSERT_INT_EQ(upstream_new(cfg, &u), 0);
    config_free(cfg);
    ASSERT_INT_EQ(upstream_start(u), 0);
    upstream_stop(u);
    ASSERT_INT_EQ(revocations_new(u, &rv), 0);
    tk.rv = rv;

    tokens_revoke(&tk, UA, "dave", SCOPE, on_revoked, NULL, &here);
    ASSERT(here);
    ASSERT(held(c, "dave") == NULL);
    ASSERT_UINT_EQ(seen.dones, 1);
    ASSERT_UINT_EQ(seen.o.pending, 1); /* not forgotten: kept for another try */
    tokens_revoke(&tk, UA, "dave", SCOPE, on_revoked, NULL, &here);
    ASSERT(!here);
    ASSERT_UINT_EQ(seen.dones, 2);
    ASSERT_UINT_EQ(seen.o.pending + seen.o.revoked, 0); /* nothing held anywhere: nothing to revoke */
    revocations_free(rv);
    upstream_free(u);
    cache_free(c);
}

static const unit_test tests[] = {
    TEST(a_drop_takes_the_token_and_says_whether_it_was_here),
    TEST(a_drop_of_one_token_leaves_another),
    TEST(a_flush_drops_every_token_and_counts_them),
    TEST(a_revocation_drops_here_and_hands_the_token_over),
};

UNIT_MAIN(tests)
