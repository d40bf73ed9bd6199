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
    ASSERT_INT_EQ(snapshot_encode(a, &ID, &img, &len, &count), 0);
    ASSERT_UINT_EQ(count, ARRAY_SIZE(shapes));
    if (snapshot_decode(img, len, &ID, 300000, b, &n, err) != 0)
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
    ASSERT_INT_EQ(snapshot_encode(c, &ID, &img, ret_len, &count), 0);
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

    ASSERT_INT_EQ(snapshot_decode(img, len, &ID, 300000, b, &n, err), -EBADMSG);
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

    ASSERT_INT_EQ(snapshot_decode(img, len, &other_client, 300000, b, &n, err), -EREMCHG);
    ASSERT_INT_EQ(snapshot_decode(img, len, &other_server, 300000, b, &n, err), -EREMCHG);
    ASSERT_UINT_EQ(n.restored, 0);
    wipe_free(img, len);
    cache_free(b);
}

static const unit_test tests[] = {
    TEST(round_trip_every_key_shape),
    TEST(empty_scope_only_for_client_tokens),
    TEST(another_client_or_server_is_refused),
};

UNIT_MAIN(tests)
