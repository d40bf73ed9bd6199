/* Unit tests of src/oauth.c: the bytes tokend sends to Instacart's token
 * endpoint and how it reads the answers. The assertion and the body are
 * parsed back with cJSON, as Instacart would; answers are built to be
 * wrong in each way the endpoint (or something between) could get them
 * wrong. */
#include <cjson/cJSON.h>
#include <errno.h>

#include "oauth.h"
#include "unit.h"
#include "util.h"

static const char good_answer[] =
    "{\"access_token\": \"2h0E5SCzTNQm69fiFjrMUXcPEopMVODcMPslLClH6Ko\", \"token_type\": \"Bearer\", "
    "\"expires_in\": 86400, \"scope\": \"connect:recommendations\", \"created_at\": 1631804913}";

/* Decodes an assertion and returns the user id it names (malloc()ed). */
static char *assertion_user_id(const char *assertion) {
    size_t len = strlen(assertion);
    char *json = malloc(len + 1);
    const cJSON *id;
    cJSON *j;
    ptrdiff_t n;
    char *ret;

    ASSERT(json);
    n = base64_decode(assertion, len, json, len);
    ASSERT(n > 0);
    json[n] = '\0';
    ASSERT_UINT_EQ(strlen(json), (size_t)n); /* no NUL inside the JSON */
    j = cJSON_Parse(json);
    ASSERT(j);
    ASSERT(cJSON_IsObject(j));
    ASSERT_INT_EQ(cJSON_GetArraySize(j), 1); /* {"user_id": ...} and nothing else */
    id = cJSON_GetObjectItemCaseSensitive(j, "user_id");
    ASSERT(cJSON_IsString(id));
    ret = strdup(id->valuestring);
    ASSERT(ret);
    cJSON_Delete(j);
    free(json);
    return ret;
}

static void assertion_documented_example(void) {
    char *a = NULL;

    ASSERT_INT_EQ(oauth_assertion("kamalsingh1234", &a), 0);
    ASSERT_STR_EQ(a, "eyJ1c2VyX2lkIjoia2FtYWxzaW5naDEyMzQifQ==");
    wipe_free_str(a);
}

static void assertion_escapes_any_user_id(void) {
    static const char *const ids[] = {
        "kamalsingh1234",
        "a\"b",                                   /* a quote */
        "back\\slash",
        "\"}, \"user_id\": \"admin",              /* an injection attempt */
        "Jos\xc3\xa9",                            /* é */
        "\xe4\xb8\xad\xe6\x96\x87",               /* CJK */
        "\xf0\x9f\x98\x80 smile",                 /* emoji */
        "tab\there",                              /* cJSON must escape controls */
        "/slash/",
        "x",
    };
    for (size_t i = 0; i < ARRAY_SIZE(ids); i++) {
        char *a = NULL, *back;

        ASSERT_INT_EQ(oauth_assertion(ids[i], &a), 0);
        /* standard Base64: no whitespace, length a multiple of 4 */
        ASSERT_UINT_EQ(strlen(a) % 4, 0);
        ASSERT(strspn(a, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=") ==
               strlen(a));
        back = assertion_user_id(a);
        ASSERT_STR_EQ(back, ids[i]);
        free(back);
        wipe_free_str(a);
    }
}

static void assertion_longest_user_id(void) {
    /* 256 quotes: the worst case for escaping at the longest id callers may send */
    char id[OAUTH_USER_ID_MAX + 1], *a = NULL, *back;

    memset(id, '"', OAUTH_USER_ID_MAX);
    id[OAUTH_USER_ID_MAX] = '\0';
    ASSERT_INT_EQ(oauth_assertion(id, &a), 0);
    back = assertion_user_id(a);
    ASSERT_STR_EQ(back, id);
    free(back);
    wipe_free_str(a);

    /* and 256 bytes of control characters, each escaped as \u00XX */
    memset(id, '\x01', OAUTH_USER_ID_MAX);
    ASSERT_INT_EQ(oauth_assertion(id, &a), 0);
    back = assertion_user_id(a);
    ASSERT_STR_EQ(back, id);
    free(back);
    wipe_free_str(a);
}

static cJSON *parse_body(const char *body, size_t len) {
    cJSON *j;

    ASSERT_UINT_EQ(strlen(body), len);
    j = cJSON_ParseWithLength(body, len);
    ASSERT(j);
    ASSERT(cJSON_IsObject(j));
    return j;
}

static const char *str_field(const cJSON *j, const char *name) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, name);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static void request_body_user_assertion(void) {
    const char *id = "Jos\xc3\xa9 \"the\" \\user";
    char *body = NULL, *back;
    size_t len = 0;
    cJSON *j;

    ASSERT_INT_EQ(oauth_request_body(OAUTH_GRANT_USER_ASSERTION, "client-1", "s3cr\"et\\",
                                     "connect:recommendations", id, &body, &len),
                  0);
    j = parse_body(body, len);
    ASSERT_STR_EQ(str_field(j, "grant_type"), "fulfillment_user_assertion");
    ASSERT_STR_EQ(str_field(j, "client_id"), "client-1");
    ASSERT_STR_EQ(str_field(j, "client_secret"), "s3cr\"et\\");
    ASSERT_STR_EQ(str_field(j, "scope"), "connect:recommendations");
    ASSERT(str_field(j, "assertion"));
    back = assertion_user_id(str_field(j, "assertion"));
    ASSERT_STR_EQ(back, id);
    ASSERT(!cJSON_GetObjectItemCaseSensitive(j, "user_id")); /* only inside the assertion */
    ASSERT_INT_EQ(cJSON_GetArraySize(j), 5);
    free(back);
    cJSON_Delete(j);
    wipe_free_str(body);
}

static void request_body_client_credentials(void) {
    char *body = NULL;
    size_t len = 0;
    cJSON *j;

    ASSERT_INT_EQ(oauth_request_body(OAUTH_GRANT_CLIENT_CREDENTIALS, "client-1", "secret",
                                     "connect:fulfillment", "ignored-user", &body, &len),
                  0);
    j = parse_body(body, len);
    ASSERT_STR_EQ(str_field(j, "grant_type"), "client_credentials");
    ASSERT_STR_EQ(str_field(j, "client_id"), "client-1");
    ASSERT_STR_EQ(str_field(j, "client_secret"), "secret");
    ASSERT_STR_EQ(str_field(j, "scope"), "connect:fulfillment");
    ASSERT(!cJSON_GetObjectItemCaseSensitive(j, "assertion"));
    ASSERT_NOT_CONTAINS(body, "ignored-user");
    cJSON_Delete(j);
    wipe_free_str(body);
}

static void request_body_without_scope(void) {
    char *body = NULL;
    size_t len = 0;
    cJSON *j;

    /* the Transaction API has no scope: no "scope" key at all, not "" */
    ASSERT_INT_EQ(oauth_request_body(OAUTH_GRANT_CLIENT_CREDENTIALS, "c", "s", NULL, NULL, &body,
                                     &len),
                  0);
    j = parse_body(body, len);
    ASSERT(!cJSON_GetObjectItemCaseSensitive(j, "scope"));
    ASSERT_STR_EQ(str_field(j, "grant_type"), "client_credentials");
    cJSON_Delete(j);
    wipe_free_str(body);
}

static void request_body_long_fields(void) {
    /* the buffer is sized in advance: the longest id and a long secret full of
     * characters JSON must escape still fit */
    char id[OAUTH_USER_ID_MAX + 1], secret[1025], scope[OAUTH_SCOPE_MAX + 1], *body = NULL, *back;
    size_t len = 0;
    cJSON *j;

    memset(id, '\\', OAUTH_USER_ID_MAX);
    id[OAUTH_USER_ID_MAX] = '\0';
    memset(secret, '\x1f', sizeof(secret) - 1);
    secret[sizeof(secret) - 1] = '\0';
    memset(scope, 's', OAUTH_SCOPE_MAX);
    scope[OAUTH_SCOPE_MAX] = '\0';
    ASSERT_INT_EQ(oauth_request_body(OAUTH_GRANT_USER_ASSERTION, "c", secret, scope, id, &body,
                                     &len),
                  0);
    j = parse_body(body, len);
    ASSERT_STR_EQ(str_field(j, "client_secret"), secret);
    ASSERT_STR_EQ(str_field(j, "scope"), scope);
    back = assertion_user_id(str_field(j, "assertion"));
    ASSERT_STR_EQ(back, id);
    free(back);
    cJSON_Delete(j);
    wipe_free_str(body);
}

/* Parses a 200 answer given as a C string. */
static int parse(const char *body, token **t) {
    return oauth_parse_token(body, strlen(body), 5000000, t);
}

static void assert_answer_refused(const char *body) {
    token *t = NULL;
    int r = parse(body, &t);
    if (r != -EBADMSG)
        UNIT_FAIL("oauth_parse_token accepted (%d) %s", r, body);
    ASSERT(t == NULL);
}

/* An answer with the given access_token / token_type / expires_in JSON. */
static char *answer(const char *access_token, const char *token_type, const char *expires_in) {
    char *s = NULL;
    ASSERT(asprintf(&s, "{\"access_token\": %s, \"token_type\": %s, \"expires_in\": %s}",
                    access_token, token_type, expires_in) > 0);
    return s;
}

static void parse_token_valid(void) {
    token *t = NULL;

    ASSERT_INT_EQ(oauth_parse_token(good_answer, strlen(good_answer), 1000000, &t), 0);
    ASSERT_STR_EQ(t->value, "2h0E5SCzTNQm69fiFjrMUXcPEopMVODcMPslLClH6Ko");
    ASSERT_UINT_EQ(t->len, 43);
    ASSERT_UINT_EQ(t->lifetime_s, 86400);
    ASSERT_UINT_EQ(t->received_ms, 1000000);
    ASSERT_UINT_EQ(t->expires_ms, 1000000 + 86400ULL * 1000);
    ASSERT_INT_EQ(t->created_at, 1631804913);
    token_unref(t);
}

static void parse_token_expiry_uses_local_clock(void) {
    /* created_at far in the past or future must not change when the token
     * expires: only our clock at receipt counts */
    static const char *const created[] = { "1", "4102444800", "1631804913" };
    for (size_t i = 0; i < ARRAY_SIZE(created); i++) {
        char body[256];
        token *t = NULL;
        snprintf(body, sizeof(body),
                 "{\"access_token\":\"abc\",\"token_type\":\"Bearer\",\"expires_in\":3600,"
                 "\"created_at\":%s}",
                 created[i]);
        ASSERT_INT_EQ(oauth_parse_token(body, strlen(body), 777, &t), 0);
        ASSERT_UINT_EQ(t->expires_ms, 777 + 3600ULL * 1000);
        token_unref(t);
    }
}

static void parse_token_created_at_optional(void) {
    token *t = NULL;
    int64_t before = now_unix();

    ASSERT_INT_EQ(parse("{\"access_token\":\"abc\",\"token_type\":\"bearer\",\"expires_in\":60}", &t),
                  0);
    ASSERT_STR_EQ(t->value, "abc");
    ASSERT_UINT_EQ(t->expires_ms, 5000000 + 60000);
    /* shown to callers as "now" rather than 1970 */
    ASSERT(t->created_at >= before && t->created_at <= now_unix());
    token_unref(t);
    /* scope is optional too, and extra members are ignored */
    ASSERT_INT_EQ(parse("{\"access_token\":\"abc\",\"token_type\":\"Bearer\",\"expires_in\":60,"
                        "\"refresh_token\":null,\"extra\":{\"a\":[1,2]}}",
                        &t),
                  0);
    token_unref(t);
}

static void parse_token_access_token_missing_or_empty(void) {
    assert_answer_refused("{\"token_type\": \"Bearer\", \"expires_in\": 86400}");
    assert_answer_refused("{\"access_token\": \"\", \"token_type\": \"Bearer\", \"expires_in\": 86400}");
    assert_answer_refused("{\"access_token\": null, \"token_type\": \"Bearer\", \"expires_in\": 86400}");
    assert_answer_refused("{\"access_token\": 12345, \"token_type\": \"Bearer\", \"expires_in\": 86400}");
    assert_answer_refused("{\"access_token\": [\"abc\"], \"token_type\": \"Bearer\", \"expires_in\": 86400}");
    assert_answer_refused("{\"Access_Token\": \"abc\", \"token_type\": \"Bearer\", \"expires_in\": 86400}");
}

static void parse_token_access_token_charset(void) {
    static const char *const bad[] = {
        "\"abc def\"", "\"abc\\\"def\"", "\"abc\\\\def\"", "\"abc\\ndef\"", "\"abc\\u0001\"",
        "\"abc\\u007f\"", "\"caf\xc3\xa9\"", "\"caf\\u00e9\"", "\"abc=def\"", "\"=abc\"",
        "\"====\"", "\"abc,def\"", "\"abc;def\"", "\"abc:def\"", "\"<script>\"",
    };
    static const char *const good[] = {
        "\"abcXYZ019\"", "\"a-b.c_d~e+f/g\"", "\"abc=\"", "\"abc==\"", "\"x\"",
    };
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
        char *s = answer(bad[i], "\"Bearer\"", "86400");
        assert_answer_refused(s);
        free(s);
    }
    for (size_t i = 0; i < ARRAY_SIZE(good); i++) {
        char *s = answer(good[i], "\"Bearer\"", "86400");
        token *t = NULL;
        ASSERT_INT_EQ(parse(s, &t), 0);
        token_unref(t);
        free(s);
    }
}

/* A token with a NUL in the middle is not a b64token; taking the part
 * before the NUL would hand out a token Instacart never issued. */
static void parse_token_access_token_embedded_nul(void) {
    char *s = answer("\"abc\\u0000def\"", "\"Bearer\"", "86400");
    assert_answer_refused(s);
    free(s);
}

static void parse_token_access_token_length_limit(void) {
    char *value = malloc(OAUTH_TOKEN_MAX + 4), *s;
    token *t = NULL;

    ASSERT(value);
    value[0] = '"';
    memset(value + 1, 'A', OAUTH_TOKEN_MAX);
    value[OAUTH_TOKEN_MAX + 1] = '"';
    value[OAUTH_TOKEN_MAX + 2] = '\0';
    s = answer(value, "\"Bearer\"", "86400");
    ASSERT_INT_EQ(parse(s, &t), 0);
    ASSERT_UINT_EQ(t->len, OAUTH_TOKEN_MAX);
    token_unref(t);
    free(s);
    value[OAUTH_TOKEN_MAX + 1] = 'A';
    value[OAUTH_TOKEN_MAX + 2] = '"';
    value[OAUTH_TOKEN_MAX + 3] = '\0';
    s = answer(value, "\"Bearer\"", "86400");
    assert_answer_refused(s);
    free(s);
    free(value);
}

static void parse_token_token_type(void) {
    static const char *const bad[] = { "\"mac\"", "\"\"", "\"Bearer \"", "\"Bearerx\"",
                                       "null", "1", "\"Basic\"" };
    static const char *const good[] = { "\"Bearer\"", "\"bearer\"", "\"BEARER\"", "\"bEaReR\"" };

    assert_answer_refused("{\"access_token\": \"abc\", \"expires_in\": 86400}");
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
        char *s = answer("\"abc\"", bad[i], "86400");
        assert_answer_refused(s);
        free(s);
    }
    for (size_t i = 0; i < ARRAY_SIZE(good); i++) {
        char *s = answer("\"abc\"", good[i], "86400");
        token *t = NULL;
        ASSERT_INT_EQ(parse(s, &t), 0);
        token_unref(t);
        free(s);
    }
}

static void parse_token_expires_in(void) {
    static const char *const bad[] = {
        "\"86400\"", "0", "-1", "-86400", "1.5", "86399.9", "604801", "1e300", "-1e300", "1e400",
        "null", "true", "[86400]", "{}", "0.5", "-0",
    };
    static const struct {
        const char *json;
        uint32_t s;
    } good[] = { { "1", 1 }, { "86400", 86400 }, { "604800", 604800 }, { "8.64e4", 86400 },
                 { "3600.0", 3600 } };

    assert_answer_refused("{\"access_token\": \"abc\", \"token_type\": \"Bearer\"}");
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
        char *s = answer("\"abc\"", "\"Bearer\"", bad[i]);
        assert_answer_refused(s);
        free(s);
    }
    /* NaN and Infinity are not JSON; an answer that has them is malformed */
    assert_answer_refused("{\"access_token\": \"abc\", \"token_type\": \"Bearer\", \"expires_in\": NaN}");
    assert_answer_refused("{\"access_token\": \"abc\", \"token_type\": \"Bearer\", \"expires_in\": Infinity}");
    for (size_t i = 0; i < ARRAY_SIZE(good); i++) {
        char *s = answer("\"abc\"", "\"Bearer\"", good[i].json);
        token *t = NULL;
        ASSERT_INT_EQ(parse(s, &t), 0);
        ASSERT_UINT_EQ(t->lifetime_s, good[i].s);
        ASSERT_UINT_EQ(t->expires_ms, 5000000 + (uint64_t)good[i].s * 1000);
        token_unref(t);
        free(s);
    }
}

static void parse_token_body_size_limit(void) {
    /* a valid answer padded with whitespace to exactly 64 KiB is read; one
     * byte more is refused unread */
    size_t glen = strlen(good_answer);
    char *body = malloc(OAUTH_BODY_MAX + 2);
    token *t = NULL;

    ASSERT(body);
    memcpy(body, good_answer, glen);
    memset(body + glen, ' ', OAUTH_BODY_MAX + 1 - glen);
    body[OAUTH_BODY_MAX + 1] = '\0';
    ASSERT_INT_EQ(oauth_parse_token(body, OAUTH_BODY_MAX, 1, &t), 0);
    token_unref(t);
    t = NULL;
    ASSERT_INT_EQ(oauth_parse_token(body, OAUTH_BODY_MAX + 1, 1, &t), -EBADMSG);
    ASSERT(t == NULL);
    free(body);
}

static void parse_token_malformed_json(void) {
    static const char *const bad[] = {
        "", " ", "null", "true", "42", "\"access_token\"", "{", "}", "{\"access_token\"}",
        "{'access_token': 'abc', 'token_type': 'Bearer', 'expires_in': 86400}",
        "{\"access_token\": \"abc\" \"token_type\": \"Bearer\", \"expires_in\": 86400}",
        "{\"access_token\": \"abc\", \"token_type\": \"Bearer\", \"expires_in\": 86400,}",
        "<html><body>502 Bad Gateway</body></html>",
    };
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++)
        assert_answer_refused(bad[i]);
}

static void parse_token_truncated(void) {
    size_t len = strlen(good_answer);
    /* every prefix of a valid answer, as a connection cut short would give */
    for (size_t n = 0; n < len; n++) {
        token *t = NULL;
        int r = oauth_parse_token(good_answer, n, 1, &t);
        if (r != -EBADMSG)
            UNIT_FAIL("the first %zu bytes of a valid answer were accepted (%d)", n, r);
    }
}

static void parse_token_array(void) {
    char body[sizeof(good_answer) + 2];

    snprintf(body, sizeof(body), "[%s]", good_answer);
    assert_answer_refused(body);
    assert_answer_refused("[]");
}

/* Two JSON documents, or one followed by junk, is not a valid answer:
 * refusing it is what "malformed" means, and what a proxy splicing two
 * responses together would need. */
static void parse_token_trailing_garbage(void) {
    char body[2 * sizeof(good_answer) + 8];

    snprintf(body, sizeof(body), "%s garbage", good_answer);
    assert_answer_refused(body);
    snprintf(body, sizeof(body), "%s%s", good_answer, good_answer);
    assert_answer_refused(body);
}

static void parse_error(const char *body, const char *want) {
    char out[64];

    memset(out, 'X', sizeof(out));
    oauth_parse_error(body, strlen(body), out, sizeof(out));
    if (strcmp(out, want) != 0)
        UNIT_FAIL("oauth_parse_error(%s) = \"%s\", want \"%s\"", body, out, want);
}

static void parse_error_shapes(void) {
    parse_error("{\"error\":\"invalid_client\"}", "invalid_client");
    parse_error("{\"error\":\"invalid_grant\",\"error_description\":\"The grant is invalid\"}",
                "invalid_grant");
    parse_error("{\"errors\":[{\"error\":\"x\"}]}", "x");
    parse_error("{\"errors\":[{\"error\":\"first\"},{\"error\":\"second\"}]}", "first");
    parse_error("{\"error\":{\"code\":\"y\"}}", "y");
    parse_error("[{\"error\":\"z\"}]", "z");
    parse_error("{\"errors\":{\"error\":\"w\"}}", "w");
    parse_error("{\"code\":\"c\"}", "c");
}

static void parse_error_nothing_found(void) {
    parse_error("", "");
    parse_error("not json at all", "");
    parse_error("<html>502</html>", "");
    parse_error("{\"error\":", "");
    parse_error("{}", "");
    parse_error("[]", "");
    parse_error("{\"error\":\"\"}", "");
    parse_error("{\"error\":42}", "");
    parse_error("{\"errors\":[]}", "");
    parse_error("\"invalid_client\"", "");
}

static void parse_error_sanitised(void) {
    char out[8];

    /* whatever Instacart sends ends up in logs and in our JSON answers */
    parse_error("{\"error\":\"a\\\"b\\nc\\\\d\"}", "a_b_c_d");
    parse_error("{\"error\":\"tab\\there\\u0001\\u007f\"}", "tab_here__");
    parse_error("{\"error\":\"caf\xc3\xa9\"}", "caf__");
    parse_error("{\"error\":\"a b<c>\"}", "a_b<c>");
    /* truncated to the buffer, always terminated */
    memset(out, 'X', sizeof(out));
    oauth_parse_error("{\"error\":\"invalid_client\"}", 26, out, sizeof(out));
    ASSERT_STR_EQ(out, "invalid");
    /* an over-long body is not parsed */
    {
        size_t n = OAUTH_BODY_MAX + 64;
        char *big = malloc(n + 1), res[16];
        ASSERT(big);
        memset(big, ' ', n);
        memcpy(big, "{\"error\":\"x\"}", 13);
        big[n] = '\0';
        oauth_parse_error(big, n, res, sizeof(res));
        ASSERT_STR_EQ(res, "");
        free(big);
    }
}

/* With no room at all, nothing may be written: out[0] is not ours. */
static void parse_error_zero_sized_buffer(void) {
    char buf[4] = "XYZ";

    oauth_parse_error("{\"error\":\"x\"}", 13, buf, 0);
    ASSERT(buf[0] == 'X');
}

static void scope_valid(void) {
    char s[OAUTH_SCOPE_MAX + 1];

    ASSERT(oauth_scope_valid("connect:recommendations", 23));
    ASSERT(oauth_scope_valid("connect:a,connect:b", 19));
    ASSERT(!oauth_scope_valid("", 0));
    ASSERT(!oauth_scope_valid("a b", 3));
    ASSERT(!oauth_scope_valid("a\"b", 3));
    ASSERT(!oauth_scope_valid("a\\b", 3));
    ASSERT(!oauth_scope_valid("a\x7f", 2));
    ASSERT(!oauth_scope_valid("caf\xc3\xa9", 5));
    memset(s, 'a', sizeof(s));
    ASSERT(oauth_scope_valid(s, OAUTH_SCOPE_MAX));
    ASSERT(!oauth_scope_valid(s, OAUTH_SCOPE_MAX + 1));
}

static const unit_test tests[] = {
    TEST(assertion_documented_example),
    TEST(assertion_escapes_any_user_id),
    TEST(assertion_longest_user_id),
    TEST(request_body_user_assertion),
    TEST(request_body_client_credentials),
    TEST(request_body_without_scope),
    TEST(request_body_long_fields),
    TEST(parse_token_valid),
    TEST(parse_token_expiry_uses_local_clock),
    TEST(parse_token_created_at_optional),
    TEST(parse_token_access_token_missing_or_empty),
    TEST(parse_token_access_token_charset),
    TEST(parse_token_access_token_embedded_nul),
    TEST(parse_token_access_token_length_limit),
    TEST(parse_token_token_type),
    TEST(parse_token_expires_in),
    TEST(parse_token_body_size_limit),
    TEST(parse_token_malformed_json),
    TEST(parse_token_truncated),
    TEST(parse_token_array),
    TEST(parse_token_trailing_garbage),
    TEST(parse_error_shapes),
    TEST(parse_error_nothing_found),
    TEST(parse_error_sanitised),
    TEST(parse_error_zero_sized_buffer),
    TEST(scope_valid),
};

UNIT_MAIN(tests)
