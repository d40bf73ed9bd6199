/* Unit tests of src/request.c: what the HTTP front accepts from callers in
 * the query of a token request. Whatever is refused here never reaches the
 * cache or Instacart. */
#include <errno.h>

#include "oauth.h"
#include "request.h"
#include "unit.h"
#include "util.h"

/* Feeds key=value (both NUL-terminated) to a query. */
static int add(token_query *q, const char *key, const char *value) {
    return token_query_add(q, key, strlen(key), value, value ? strlen(value) : 0, true);
}

static void assert_refused(token_query *q, int r) {
    ASSERT_INT_EQ(r, -EINVAL);
    ASSERT(q->error != NULL);
    ASSERT(q->error[0] != '\0');
}

static void user_id_accepted(void) {
    token_query q = { 0 };

    ASSERT_INT_EQ(add(&q, "user_id", "kamalsingh1234"), 0);
    ASSERT_INT_EQ(token_query_finish(&q, true), 0);
    ASSERT_UINT_EQ(q.user_id_len, 14);
    ASSERT(memcmp(q.user_id, "kamalsingh1234", 14) == 0);
    ASSERT(!q.has_min_ttl);
    ASSERT(q.scope == NULL);
}

static void user_id_non_ascii_accepted(void) {
    token_query q = { 0 };
    const char *id = "Jos\xc3\xa9 \xe4\xb8\xad \xf0\x9f\x98\x80 \"quoted\" back\\slash";

    ASSERT_INT_EQ(add(&q, "user_id", id), 0);
    ASSERT_UINT_EQ(q.user_id_len, strlen(id));
}

static void user_id_missing(void) {
    token_query q = { 0 };

    ASSERT_INT_EQ(add(&q, "scope", "connect:recommendations"), 0);
    assert_refused(&q, token_query_finish(&q, true));
    ASSERT_CONTAINS(q.error, "user_id");
    /* routes that take the user from elsewhere do not need it */
    token_query q2 = { 0 };
    ASSERT_INT_EQ(token_query_finish(&q2, false), 0);
}

static void user_id_empty(void) {
    token_query q = { 0 };

    assert_refused(&q, add(&q, "user_id", ""));
    ASSERT(q.user_id == NULL);
    token_query q2 = { 0 };
    assert_refused(&q2, add(&q2, "user_id", NULL)); /* "?user_id" */
    ASSERT(q2.user_id == NULL);
    assert_refused(&q2, token_query_finish(&q2, true));
}

static void user_id_length_limit(void) {
    char id[OAUTH_USER_ID_MAX + 2];
    token_query q = { 0 }, q2 = { 0 };

    ASSERT_INT_EQ(OAUTH_USER_ID_MAX, 256);
    memset(id, 'a', sizeof(id) - 1);
    id[sizeof(id) - 1] = '\0';
    ASSERT_INT_EQ(token_query_add(&q, "user_id", 7, id, 256, true), 0);
    ASSERT_UINT_EQ(q.user_id_len, 256);
    assert_refused(&q2, token_query_add(&q2, "user_id", 7, id, 257, true));
    ASSERT(q2.user_id == NULL);
    /* 256 bytes, not 256 characters: 128 two-byte characters fit, 129 do not */
    {
        char wide[2 * 129 + 1];
        token_query q3 = { 0 }, q4 = { 0 };
        for (size_t i = 0; i < 129; i++)
            wide[2 * i] = (char)0xc3, wide[2 * i + 1] = (char)0xa9;
        wide[2 * 129] = '\0';
        ASSERT_INT_EQ(token_query_add(&q3, "user_id", 7, wide, 256, true), 0);
        assert_refused(&q4, token_query_add(&q4, "user_id", 7, wide, 258, true));
    }
}

static void user_id_invalid_utf8(void) {
    static const char *const bad[] = {
        "\xff", "abc\xc3", "\xc0\x80", "\xed\xa0\x80", "\xf4\x90\x80\x80", "a\x80z",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        token_query q = { 0 };
        assert_refused(&q, add(&q, "user_id", bad[i]));
        ASSERT(q.user_id == NULL);
    }
}

static void user_id_control_characters(void) {
    static const char *const bad[] = { "a\nb", "a\rb", "a\tb", "\x01", "a\x7f", "a\xc2\x85" };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        token_query q = { 0 };
        assert_refused(&q, add(&q, "user_id", bad[i]));
        ASSERT(q.user_id == NULL);
    }
}

static void nul_inside_a_value(void) {
    token_query q = { 0 };

    /* "ab%00cd" decoded: a C string would see only "ab" */
    assert_refused(&q, token_query_add(&q, "user_id", 7, "ab\0cd", 5, true));
    ASSERT(q.user_id == NULL);
    assert_refused(&q, token_query_add(&q, "scope", 5, "connect:x\0y", 11, true));
    ASSERT(q.scope == NULL);
    assert_refused(&q, token_query_add(&q, "min_ttl", 7, "6\0" "0", 3, true));
    ASSERT(!q.has_min_ttl);
}

static void user_id_duplicate(void) {
    token_query q = { 0 };

    ASSERT_INT_EQ(add(&q, "user_id", "alice"), 0);
    assert_refused(&q, add(&q, "user_id", "bob"));
    /* the first one stands; the request is refused as a whole by the caller */
    ASSERT_UINT_EQ(q.user_id_len, 5);
    ASSERT(memcmp(q.user_id, "alice", 5) == 0);
}

static void user_id_not_taken_where_the_route_names_the_user(void) {
    token_query q = { 0 };

    assert_refused(&q, token_query_add(&q, "user_id", 7, "alice", 5, false));
    ASSERT(q.user_id == NULL);
    /* the other parameters still work there */
    ASSERT_INT_EQ(token_query_add(&q, "scope", 5, "connect:post_checkout", 21, false), 0);
}

static void unknown_parameter(void) {
    static const char *const keys[] = { "foo", "userid", "user_id ", "USER_ID", "Scope", "min_ttl_s",
                                        "", "client_secret" };
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
        token_query q = { 0 };
        assert_refused(&q, add(&q, keys[i], "x"));
        ASSERT_CONTAINS(q.error, "unknown parameter");
    }
    /* a key with a NUL inside is not "user_id" */
    token_query q = { 0 };
    assert_refused(&q, token_query_add(&q, "user_id\0x", 9, "alice", 5, true));
    ASSERT(q.user_id == NULL);
}

static void scope_validity(void) {
    static const char *const good[] = { "connect:recommendations", "connect:post_checkout",
                                        "account_linking", "connect:a,connect:b", "x" };
    static const char *const bad[] = { "", "connect recommendations", "a\"b", "a\\b", "a\tb",
                                       "caf\xc3\xa9", "a\x7f" };
    char longest[OAUTH_SCOPE_MAX + 2];

    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        token_query q = { 0 };
        ASSERT_INT_EQ(add(&q, "scope", good[i]), 0);
        ASSERT_UINT_EQ(q.scope_len, strlen(good[i]));
        ASSERT(memcmp(q.scope, good[i], q.scope_len) == 0);
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        token_query q = { 0 };
        assert_refused(&q, add(&q, "scope", bad[i]));
        ASSERT(q.scope == NULL);
    }
    memset(longest, 's', sizeof(longest) - 1);
    longest[sizeof(longest) - 1] = '\0';
    token_query q = { 0 }, q2 = { 0 };
    ASSERT_INT_EQ(token_query_add(&q, "scope", 5, longest, OAUTH_SCOPE_MAX, true), 0);
    assert_refused(&q2, token_query_add(&q2, "scope", 5, longest, OAUTH_SCOPE_MAX + 1, true));
    /* given twice */
    assert_refused(&q, add(&q, "scope", "connect:recommendations"));
    ASSERT_UINT_EQ(q.scope_len, OAUTH_SCOPE_MAX);
}

static void min_ttl_range(void) {
    static const struct {
        const char *v;
        uint64_t ms;
    } good[] = { { "0", 0 }, { "1", 1000 }, { "300", 300000 }, { "43200", 43200000 } };
    static const char *const bad[] = { "43201", "-1", "1.5", "", "1e3", " 1", "1 ", "+1", "60s",
                                       "0x10", "99999999999999999999", "18446744073709551616" };

    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        token_query q = { 0 };
        ASSERT_INT_EQ(add(&q, "min_ttl", good[i].v), 0);
        ASSERT(q.has_min_ttl);
        ASSERT_UINT_EQ(q.min_ttl_ms, good[i].ms);
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        token_query q = { 0 };
        assert_refused(&q, add(&q, "min_ttl", bad[i]));
        ASSERT(!q.has_min_ttl);
        ASSERT_CONTAINS(q.error, "min_ttl");
    }
    token_query q = { 0 };
    assert_refused(&q, add(&q, "min_ttl", NULL));
    ASSERT(!q.has_min_ttl);
    ASSERT_INT_EQ(add(&q, "min_ttl", "60"), 0);
    assert_refused(&q, add(&q, "min_ttl", "120")); /* given twice */
    ASSERT_UINT_EQ(q.min_ttl_ms, 60000);
}

static void full_query(void) {
    token_query q = { 0 };

    ASSERT_INT_EQ(add(&q, "scope", "connect:post_checkout"), 0);
    ASSERT_INT_EQ(add(&q, "min_ttl", "600"), 0);
    ASSERT_INT_EQ(add(&q, "user_id", "u-42"), 0);
    ASSERT_INT_EQ(token_query_finish(&q, true), 0);
    ASSERT_UINT_EQ(q.user_id_len, 4);
    ASSERT_UINT_EQ(q.scope_len, 21);
    ASSERT_UINT_EQ(q.min_ttl_ms, 600000);
}

static void request_user_id_valid_bounds(void) {
    char id[OAUTH_USER_ID_MAX + 1];

    memset(id, 'u', sizeof(id));
    ASSERT(request_user_id_valid("a", 1));
    ASSERT(request_user_id_valid("caf\xc3\xa9", 5));
    ASSERT(request_user_id_valid(id, OAUTH_USER_ID_MAX));
    ASSERT(!request_user_id_valid(id, OAUTH_USER_ID_MAX + 1));
    ASSERT(!request_user_id_valid("", 0));
    ASSERT(!request_user_id_valid("a\nb", 3));
    ASSERT(!request_user_id_valid("\xc3", 1));
}

/* "Basic " + Base64 of text */
static const char *basic(const char *text, char *out, size_t size) {
    memcpy(out, "Basic ", 6);
    ASSERT(base64_encode(text, strlen(text), out + 6, size - 6) > 0);
    return out;
}

static void api_key_from_bearer_or_form_encoded_basic(void) {
    char buf[512], authz[256];
    const char *key, *raw;
    size_t len = 0, raw_len = 0;

    key = request_api_key("Bearer k+e%41y", false, buf, sizeof(buf), &len, &raw, &raw_len);
    ASSERT(key && len == 7 && memcmp(key, "k+e%41y", 7) == 0 && !raw);
    /* Basic only where the route takes it */
    ASSERT(!request_api_key(basic("id:key", authz, sizeof(authz)), false, buf, sizeof(buf), &len, &raw, &raw_len));
    /* RFC 6749 §2.3.1: decoded; the secret as sent kept beside it */
    key = request_api_key(basic("my+app:q%2B8%2FZr0%3D+x%25", authz, sizeof(authz)), true, buf, sizeof(buf), &len,
                          &raw, &raw_len);
    ASSERT(key && len == 11 && memcmp(key, "q+8/Zr0= x%", 11) == 0);
    ASSERT(raw && raw_len == 19 && memcmp(raw, "q%2B8%2FZr0%3D+x%25", 19) == 0);
    /* not form-encoded ('%' without two hex digits): only the secret as sent */
    key = request_api_key(basic("id:50%off", authz, sizeof(authz)), true, buf, sizeof(buf), &len, &raw, &raw_len);
    ASSERT(!key && raw && raw_len == 6 && memcmp(raw, "50%off", 6) == 0);
    /* a secret may hold ':' (only the first one splits) */
    key = request_api_key(basic("id:a:b", authz, sizeof(authz)), true, buf, sizeof(buf), &len, &raw, &raw_len);
    ASSERT(key && len == 3 && memcmp(key, "a:b", 3) == 0);
    /* no colon, bad Base64, an encoded NUL: no key */
    ASSERT(!request_api_key(basic("nocolon", authz, sizeof(authz)), true, buf, sizeof(buf), &len, &raw, &raw_len));
    ASSERT(!raw);
    ASSERT(!request_api_key("Basic !!!", true, buf, sizeof(buf), &len, &raw, &raw_len) && !raw);
    key = request_api_key(basic("id:a%00b", authz, sizeof(authz)), true, buf, sizeof(buf), &len, &raw, &raw_len);
    ASSERT(!key && raw);
}

static void a_nul_in_the_path_is_found_and_one_in_the_query_is_not(void) {
    ASSERT(request_path_has_nul("/v1/cache/flush%00/anything"));
    ASSERT(request_path_has_nul("/metrics%00.png"));
    ASSERT(request_path_has_nul("%00"));
    ASSERT(!request_path_has_nul("/v1/token?user_id=a%00b")); /* the query's: refused where it is read */
    ASSERT(!request_path_has_nul("/v1/token?user_id=a"));
    ASSERT(!request_path_has_nul("/v1/a%20b%0"));
    ASSERT(!request_path_has_nul("/v1/%0"));
    ASSERT(!request_path_has_nul("/v1/%"));
    ASSERT(!request_path_has_nul(""));
}

static const unit_test tests[] = {
    TEST(a_nul_in_the_path_is_found_and_one_in_the_query_is_not),
    TEST(user_id_accepted),
    TEST(user_id_non_ascii_accepted),
    TEST(user_id_missing),
    TEST(user_id_empty),
    TEST(user_id_length_limit),
    TEST(user_id_invalid_utf8),
    TEST(user_id_control_characters),
    TEST(nul_inside_a_value),
    TEST(user_id_duplicate),
    TEST(user_id_not_taken_where_the_route_names_the_user),
    TEST(unknown_parameter),
    TEST(scope_validity),
    TEST(min_ttl_range),
    TEST(full_query),
    TEST(request_user_id_valid_bounds),
    TEST(api_key_from_bearer_or_form_encoded_basic),
};

UNIT_MAIN(tests)
