/* Unit tests of src/snapshot.c: the cache image carried over a restart.
 * A round trip must bring back every key shape the running cache can hold
 * (the image is all or nothing: one shape the reader refuses drops every
 * token), and an image for another client or server is refused. */
#include <errno.h>

#include "cache.h"
#include "snapshot.h"
#include "unit.h"
#include "util.h"

#define UA OAUTH_GRANT_USER_ASSERTION
#define CC OAUTH_GRANT_CLIENT_CREDENTIALS

static void no_fetch(void *source, enum oauth_grant grant, const char *user_id, const char *scope,
                     const struct cache_want *want, cache_done_fn done, void *ctx) {
    UNIT_FAIL("a snapshot must not mint");
}

static const snapshot_identity ID = { "https://connect.dev.instacart.tools", "cid" };

static cache *new_cache(void) {
    cache_settings s = { .max_entries = 1000, .min_ttl_ms = 300000, .refresh_before_pct = 25,
                         .failure_ttl_ms = 30000, .max_waiters = 16, .retry_base_ms = 100,
                         .retry_max_ms = 2000 };
    cache *c = NULL;

    ASSERT_INT_EQ(cache_new(&s, no_fetch, NULL, &c), 0);
    return c;
}

struct shape {
    enum oauth_grant grant;
    const char *user, *scope, *value;
};

static char longest_user[OAUTH_USER_ID_MAX + 1];

static void put(cache *c, const struct shape *k, uint32_t lifetime_s) {
    token *t = NULL;

    ASSERT_INT_EQ(token_new(k->value, strlen(k->value), lifetime_s, 1700000000, now_ms(), &t), 0);
    ASSERT_INT_EQ(cache_put(c, k->grant, k->user, k->scope, t), 0);
    token_unref(t);
}

struct found {
    const struct shape *shapes;
    size_t n;
    bool seen[16];
};

static void check_one(void *userdata, enum oauth_grant grant, const char *user_id, const char *scope,
                      const token *t) {
    struct found *f = userdata;

    for (size_t i = 0; i < f->n; i++) {
        const struct shape *k = &f->shapes[i];
        if (k->grant == grant && strcmp(k->user, user_id) == 0 && strcmp(k->scope, scope) == 0) {
            ASSERT_STR_EQ(t->value, k->value);
            ASSERT(!f->seen[i]);
            f->seen[i] = true;
            return;
        }
    }
    UNIT_FAIL("restored a token under a key that was not saved: grant %d user '%s' scope '%s'", grant,
              user_id, scope);
}

/* A client token asked for without a scope is cached under "": the reader
 * must take it, or the whole image would be dropped. */
static void round_trip_every_key_shape(void) {
    struct shape shapes[] = {
        { UA, "kamalsingh1234", "connect:recommendations", "tok-user-default" },
        { UA, "kamalsingh1234", "connect:fulfillment", "tok-user-other-scope" },
        { UA, "\xc3\xa9l\xc3\xa8ve-\xe2\x82\xac", "connect:recommendations", "tok-user-utf8" },
        { UA, NULL, "connect:recommendations", "tok-user-longest" },
        { CC, "", "", "tok-client-no-scope" },
        { CC, "", "connect:fulfillment", "tok-client-scope" },
        { CC, "", "connect:recommendations", "tok-client-other-scope" },
    };
    struct snapshot_counts n = { 0 };
    struct found f = { shapes, ARRAY_SIZE(shapes), { 0 } };
    char err[SNAPSHOT_ERR_MAX] = "";
    cache *a = new_cache(), *b = new_cache();
    uint8_t *img = NULL;
    size_t len = 0, count = 0;

    memset(longest_user, 'u', OAUTH_USER_ID_MAX);
    shapes[3].user = longest_user;
    for (size_t i = 0; i < ARRAY_SIZE(shapes); i++)
        put(a, &shapes[i], 86400);
    ASSERT_INT_EQ(snapshot_encode(a, NULL, &ID, &img, &len, &count, NULL), 0);
    ASSERT_UINT_EQ(count, ARRAY_SIZE(shapes));
    if (snapshot_decode(img, len, &ID, 300000, b, NULL, &n, err) != 0)
        UNIT_FAIL("the image was refused: %s", err);
    ASSERT_UINT_EQ(n.restored, ARRAY_SIZE(shapes));
    ASSERT_UINT_EQ(n.expired + n.skipped, 0);
    ASSERT_UINT_EQ(cache_export(b, check_one, &f), ARRAY_SIZE(shapes));
    for (size_t i = 0; i < ARRAY_SIZE(shapes); i++)
        if (!f.seen[i])
            UNIT_FAIL("shape %zu (grant %d, scope '%s') did not come back", i, shapes[i].grant, shapes[i].scope);
    wipe_free(img, len);
    cache_free(a);
    cache_free(b);
}

/* The image of a cache holding one token, under ID. wipe_free() it. */
static uint8_t *image_of_one(const struct shape *k, size_t *ret_len) {
    cache *c = new_cache();
    uint8_t *img = NULL;
    size_t count = 0;

    put(c, k, 86400);
    ASSERT_INT_EQ(snapshot_encode(c, NULL, &ID, &img, ret_len, &count, NULL), 0);
    ASSERT_UINT_EQ(count, 1);
    cache_free(c);
    return img;
}

/* "" is a client token's key only: a user token never has an empty scope,
 * so an image claiming one is not ours. */
static void empty_scope_only_for_client_tokens(void) {
    struct shape k = { UA, "kamalsingh1234", "", "tok" };
    struct snapshot_counts n = { 0 };
    char err[SNAPSHOT_ERR_MAX] = "";
    cache *b = new_cache();
    size_t len = 0;
    uint8_t *img = image_of_one(&k, &len);

    ASSERT_INT_EQ(snapshot_decode(img, len, &ID, 300000, b, NULL, &n, err), -EBADMSG);
    ASSERT_CONTAINS(err, "out of range");
    wipe_free(img, len);
    cache_free(b);
}

static void another_client_or_server_is_refused(void) {
    static const snapshot_identity other_client = { "https://connect.dev.instacart.tools", "cid2" };
    static const snapshot_identity other_server = { "https://connect.instacart.com", "cid" };
    struct shape k = { CC, "", "", "tok" };
    struct snapshot_counts n = { 0 };
    char err[SNAPSHOT_ERR_MAX];
    cache *b = new_cache();
    size_t len = 0;
    uint8_t *img = image_of_one(&k, &len);

    ASSERT_INT_EQ(snapshot_decode(img, len, &other_client, 300000, b, NULL, &n, err), -EREMCHG);
    ASSERT_INT_EQ(snapshot_decode(img, len, &other_server, 300000, b, NULL, &n, err), -EREMCHG);
    ASSERT_UINT_EQ(n.restored, 0);
    wipe_free(img, len);
    cache_free(b);
}

/* What was promised and not yet done crosses the restart with the cache:
 * a token to revoke, and a fleet's revocation (with when it was asked),
 * drop, flush and telling of a revoked token; so do the revocation events
 * applied, the tokens the fleet revoked, the last fleet event read, when
 * users' tokens were revoked and the generation of the last flush.
 * Each comes back once, as it
 * went; a token with no life left is not carried, nor what the reader
 * would refuse. */
#define ASKED 1764000000123ull
#define FP 0x8899aabbccddeeffull
struct carried_seen {
    unsigned kinds[SNAPSHOT_KIND_MAX + 1];
    char revoke[64], user[2][32], told[32], read[32], floor_user[32];
    uint64_t asked, denied, told_fp, floor_at, flush_gen;
};

static void export_some(void *ctx, snapshot_put_fn give, void *give_ctx) {
    token *const *toks = ctx;

    give(give_ctx, SNAPSHOT_REVOKE, OAUTH_GRANT_USER_ASSERTION, "ignored", "ignored", toks[0], 0);
    give(give_ctx, SNAPSHOT_REVOKE, OAUTH_GRANT_CLIENT_CREDENTIALS, "", "", toks[1], 0); /* no life left */
    give(give_ctx, SNAPSHOT_REVOKE_SHARED, UA, "revoked-user", "connect:recommendations", NULL, ASKED);
    give(give_ctx, SNAPSHOT_DROP_SHARED, UA, "dropped-user", "connect:recommendations", NULL, 7); /* no value */
    give(give_ctx, SNAPSHOT_FLUSH_SHARED, UA, "nobody", "any", NULL, 0);
    give(give_ctx, SNAPSHOT_REVOCATION_SEEN, UA, "nobody", "00112233aabbccdd", NULL, 0);
    give(give_ctx, SNAPSHOT_REVOCATION_SEEN, UA, "", "not-an-id", NULL, 0); /* the reader would refuse it */
    give(give_ctx, SNAPSHOT_REVOKED_FP, UA, "nobody", "any", NULL, FP);
    give(give_ctx, SNAPSHOT_REVOKED_FP, CC, "", "", NULL, 0); /* no fingerprint */
    give(give_ctx, SNAPSHOT_REVOKED_TELL, UA, "told-user", "connect:recommendations", NULL, FP);
    give(give_ctx, SNAPSHOT_EVENTS_READ, CC, "", "1764000000123-7", NULL, FP);
    give(give_ctx, SNAPSHOT_EVENTS_READ, CC, "", "1764000000123-", NULL, 0); /* not a stream id */
    give(give_ctx, SNAPSHOT_USER_REVOKED, UA, "nobody", "0123456789abcdef", NULL, ASKED);
    give(give_ctx, SNAPSHOT_USER_REVOKED, CC, "", "0123456789abcdef", NULL, 0); /* no time */
    give(give_ctx, SNAPSHOT_USER_REVOKED, CC, "", "0123456789ABCDEF", NULL, ASKED); /* not ours */
    give(give_ctx, SNAPSHOT_FLUSH_FLOOR, UA, "nobody", "any", NULL, 4242);
    give(give_ctx, SNAPSHOT_FLUSH_FLOOR, CC, "", "", NULL, 0); /* none */
}

static void restore_some(void *ctx, enum snapshot_kind kind, enum oauth_grant grant, const char *user_id,
                         const char *scope, token *t, uint64_t value) {
    struct carried_seen *seen = ctx;

    ASSERT(kind <= SNAPSHOT_KIND_MAX);
    seen->kinds[kind]++;
    if (kind == SNAPSHOT_REVOKE_SHARED)
        seen->asked = value;
    else if (kind == SNAPSHOT_REVOKED_FP) {
        seen->denied = value;
        ASSERT_STR_EQ(user_id, "");
        ASSERT_STR_EQ(scope, "");
    } else if (kind == SNAPSHOT_FLUSH_FLOOR) {
        seen->flush_gen = value;
        ASSERT_STR_EQ(user_id, "");
        ASSERT_STR_EQ(scope, "");
    } else if (kind == SNAPSHOT_USER_REVOKED) {
        seen->floor_at = value;
        ASSERT_STR_EQ(user_id, "");
        snprintf(seen->floor_user, sizeof(seen->floor_user), "%s", scope);
    } else if (kind == SNAPSHOT_EVENTS_READ) {
        ASSERT_UINT_EQ(value, FP); /* the Redis it was read from */
        snprintf(seen->read, sizeof(seen->read), "%s", scope);
    } else if (kind == SNAPSHOT_REVOKED_TELL) {
        seen->told_fp = value;
        snprintf(seen->told, sizeof(seen->told), "%s", user_id);
        ASSERT_STR_EQ(scope, "connect:recommendations");
    } else
        ASSERT_UINT_EQ(value, 0);
    if (kind == SNAPSHOT_REVOKE) {
        ASSERT(t);
        snprintf(seen->revoke, sizeof(seen->revoke), "%s", t->value);
        ASSERT_STR_EQ(user_id, ""); /* whose it was does not cross */
    } else
        ASSERT(!t);
    if (kind == SNAPSHOT_REVOKE_SHARED || kind == SNAPSHOT_DROP_SHARED) {
        ASSERT_INT_EQ(grant, UA);
        ASSERT_STR_EQ(scope, "connect:recommendations");
        snprintf(seen->user[kind - SNAPSHOT_REVOKE_SHARED], sizeof(seen->user[0]), "%s", user_id);
    }
    if (kind == SNAPSHOT_FLUSH_SHARED)
        ASSERT_STR_EQ(user_id, "");
    if (kind == SNAPSHOT_REVOCATION_SEEN)
        ASSERT_STR_EQ(scope, "00112233aabbccdd");
    token_unref(t);
}

static void what_was_not_yet_done_crosses_the_restart(void) {
    struct shape k = { UA, "cached-user", "connect:recommendations", "tok-cached" };
    token *toks[2];
    struct snapshot_more out = { .export = export_some, .ctx = toks };
    struct carried_seen seen = { 0 };
    struct snapshot_more in = { .restore = restore_some, .ctx = &seen };
    struct snapshot_counts n = { 0 };
    char err[SNAPSHOT_ERR_MAX] = "";
    cache *a = new_cache(), *b = new_cache(), *c = new_cache();
    uint8_t *img = NULL;
    size_t len = 0, count = 0, carried = 0;

    put(a, &k, 86400);
    ASSERT_INT_EQ(token_new("tok-to-revoke", 13, 86400, 0, now_ms(), &toks[0]), 0);
    ASSERT_INT_EQ(token_new("tok-spent", 9, 60, 0, 0, &toks[1]), 0);
    toks[1]->expires_ms = 0;
    ASSERT_INT_EQ(snapshot_encode(a, &out, &ID, &img, &len, &count, &carried), 0);
    ASSERT_UINT_EQ(count, 1);
    ASSERT_UINT_EQ(carried, 5);
    if (snapshot_decode(img, len, &ID, 300000, b, &in, &n, err) != 0)
        UNIT_FAIL("the image was refused: %s", err);
    ASSERT_UINT_EQ(n.restored, 1);
    ASSERT_UINT_EQ(n.carried, 5);
    ASSERT_UINT_EQ(n.remembered, 5);
    for (int kind = SNAPSHOT_REVOKE; kind <= SNAPSHOT_KIND_MAX; kind++)
        ASSERT_UINT_EQ(seen.kinds[kind], 1);
    ASSERT_STR_EQ(seen.revoke, "tok-to-revoke");
    ASSERT_STR_EQ(seen.user[0], "revoked-user");
    ASSERT_STR_EQ(seen.user[1], "dropped-user");
    ASSERT_UINT_EQ(seen.asked, ASKED);
    ASSERT_UINT_EQ(seen.denied, FP);
    ASSERT_UINT_EQ(seen.told_fp, FP);
    ASSERT_STR_EQ(seen.told, "told-user");
    ASSERT_STR_EQ(seen.read, "1764000000123-7");
    ASSERT_STR_EQ(seen.floor_user, "0123456789abcdef");
    ASSERT_UINT_EQ(seen.floor_at, ASKED);
    ASSERT_UINT_EQ(seen.flush_gen, 4242);
    /* with nobody to take them up, they are counted as skipped */
    memset(&n, 0, sizeof(n));
    ASSERT_INT_EQ(snapshot_decode(img, len, &ID, 300000, c, NULL, &n, err), 0);
    ASSERT_UINT_EQ(n.restored, 1);
    ASSERT_UINT_EQ(n.skipped, 10);
    token_unref(toks[0]);
    token_unref(toks[1]);
    wipe_free(img, len);
    cache_free(a);
    cache_free(b);
    cache_free(c);
}

static const unit_test tests[] = {
    TEST(round_trip_every_key_shape),
    TEST(empty_scope_only_for_client_tokens),
    TEST(another_client_or_server_is_refused),
    TEST(what_was_not_yet_done_crosses_the_restart),
};

UNIT_MAIN(tests)
