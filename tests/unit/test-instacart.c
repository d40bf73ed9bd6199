/* Unit tests of src/instacart.c: what each of Instacart's answers means to
 * the token client, row by row. Each row is an answer and everything the
 * client does with it: the outcome its caller sees, whether it retries,
 * whether the breaker counts it, whether the credentials are refused,
 * how long minting pauses. */
#include <string.h>
#include <time.h>

#include "instacart.h"
#include "unit.h"

#define GOOD_TOKEN "{\"access_token\":\"tok-abc\",\"token_type\":\"Bearer\",\"expires_in\":86400}"
#define NOW 1700000000 /* 2023-11-14 22:13:20 UTC */

struct row {
    const char *name;
    enum instacart_call call;
    enum http_result result;
    int status;
    const char *retry_after;
    const char *body;
    /* what comes out */
    enum mint_kind kind;
    int http_status;
    unsigned hint_s; /* outcome.retry_after_s */
    const char *error;
    bool retry, trips, credentials, link_broken;
    unsigned pause_s;
};

#define MINT(res, st) .call = INSTACART_MINT, .result = (res), .status = (st)

static void check(const struct row *r) {
    struct instacart_answer a = {
        .call = r->call,
        .result = r->result,
        .status = r->status,
        .retry_after = r->retry_after,
        .body = r->body,
        .len = r->body ? strlen(r->body) : 0,
        .sent_ms = 1000,
        .now_unix = NOW,
    };
    struct instacart_verdict v;

    instacart_classify(&a, &v);
    if (v.outcome.kind != r->kind || v.outcome.http_status != r->http_status ||
        v.outcome.retry_after_s != r->hint_s || strcmp(v.outcome.error, r->error) != 0 || v.retry != r->retry ||
        v.trips != r->trips || v.credentials_rejected != r->credentials || v.link_broken != r->link_broken ||
        v.pause_s != r->pause_s || (v.token != NULL) != (r->kind == MINT_OK && r->call == INSTACART_MINT))
        UNIT_FAIL("row '%s': got kind=%d status=%d hint=%u error='%s' retry=%d trips=%d credentials=%d "
                  "link_broken=%d pause=%u token=%s",
                  r->name, v.outcome.kind, v.outcome.http_status, v.outcome.retry_after_s, v.outcome.error,
                  v.retry, v.trips, v.credentials_rejected, v.link_broken, v.pause_s, v.token ? "yes" : "no");
    if (v.token)
        ASSERT_STR_EQ(v.token->value, "tok-abc");
    token_unref(v.token);
}

static void check_all(const struct row *rows, size_t n) {
    for (size_t i = 0; i < n; i++)
        check(&rows[i]);
}

static void a_200_is_a_token_when_the_body_is_one(void) {
    static const struct row rows[] = {
        { "200, a good token", MINT(HTTP_RESULT_OK, 200), NULL, GOOD_TOKEN, MINT_OK, 200, 0, "" },
        /* an answer we cannot trust: not cached, and Instacart is failing */
        { "200, malformed JSON", MINT(HTTP_RESULT_OK, 200), NULL, "{\"access_token\": \"abc\", \"expi",
          MINT_UNAVAILABLE, 200, 1, "invalid_answer", .trips = true },
        { "200, no token_type", MINT(HTTP_RESULT_OK, 200), NULL,
          "{\"access_token\":\"abc\",\"expires_in\":60}", MINT_UNAVAILABLE, 200, 1, "invalid_answer",
          .trips = true },
        { "200, empty", MINT(HTTP_RESULT_OK, 200), NULL, "", MINT_UNAVAILABLE, 200, 1, "invalid_answer",
          .trips = true },
        /* a revocation's 200 carries nothing to read */
        { "200 for a revocation", .call = INSTACART_REVOKE, .result = HTTP_RESULT_OK, .status = 200,
          .body = "{}", .kind = MINT_OK, .http_status = 200, .error = "" },
    };

    check_all(rows, sizeof(rows) / sizeof(*rows));
}

static void a_4xx_refuses_the_request_and_names_why(void) {
    static const struct row rows[] = {
        { "400 invalid_grant", MINT(HTTP_RESULT_OK, 400), NULL, "{\"error\":\"invalid_grant\"}", MINT_REJECTED,
          400, 0, "invalid_grant" },
        { "400 invalid_client", MINT(HTTP_RESULT_OK, 400), NULL, "{\"error\":\"invalid_client\"}",
          MINT_REJECTED, 400, 0, "invalid_client", .credentials = true },
        { "401 with no body", MINT(HTTP_RESULT_OK, 401), NULL, NULL, MINT_REJECTED, 401, 0, "rejected",
          .credentials = true },
        { "401 invalid_client", MINT(HTTP_RESULT_OK, 401), NULL, "{\"error\":{\"code\":\"invalid_client\"}}",
          MINT_REJECTED, 401, 0, "invalid_client", .credentials = true },
        /* the secret went somewhere Instacart refuses to read it from */
        { "403 query_params_forbidden", MINT(HTTP_RESULT_OK, 403), NULL,
          "{\"errors\":[{\"error\":\"query_params_forbidden\"}]}", MINT_REJECTED, 403, 0,
          "query_params_forbidden", .credentials = true },
        { "403 forbidden", MINT(HTTP_RESULT_OK, 403), NULL, "{\"error\":\"forbidden\"}", MINT_REJECTED, 403, 0,
          "forbidden" },
        { "404", MINT(HTTP_RESULT_OK, 404), NULL, "<html>not found</html>", MINT_REJECTED, 404, 0, "rejected" },
        /* Retry-After on a refusal changes nothing: asking again cannot help */
        { "400 with Retry-After", MINT(HTTP_RESULT_OK, 400), "30", "{\"error\":\"invalid_scope\"}",
          MINT_REJECTED, 400, 0, "invalid_scope" },
    };

    check_all(rows, sizeof(rows) / sizeof(*rows));
}

static void timeouts_and_5xx_are_retried_and_trip_the_breaker(void) {
    static const struct row rows[] = {
        { "408", MINT(HTTP_RESULT_OK, 408), NULL, NULL, MINT_UNAVAILABLE, 408, 1, "upstream_unavailable",
          .retry = true, .trips = true },
        { "500", MINT(HTTP_RESULT_OK, 500), NULL, "{\"error\":\"server_error\"}", MINT_UNAVAILABLE, 500, 1,
          "server_error", .retry = true, .trips = true },
        { "502", MINT(HTTP_RESULT_OK, 502), NULL, "<html>bad gateway</html>", MINT_UNAVAILABLE, 502, 1,
          "upstream_unavailable", .retry = true, .trips = true },
        { "503 with Retry-After", MINT(HTTP_RESULT_OK, 503), "5", "{\"error\":\"temporarily_unavailable\"}",
          MINT_UNAVAILABLE, 503, 5, "temporarily_unavailable", .retry = true, .trips = true },
        { "504", MINT(HTTP_RESULT_OK, 504), NULL, NULL, MINT_UNAVAILABLE, 504, 1, "upstream_unavailable",
          .retry = true, .trips = true },
        { "503 for a revocation", .call = INSTACART_REVOKE, .result = HTTP_RESULT_OK, .status = 503,
          .kind = MINT_UNAVAILABLE, .http_status = 503, .hint_s = 1, .error = "upstream_unavailable",
          .retry = true, .trips = true },
    };

    check_all(rows, sizeof(rows) / sizeof(*rows));
}

static void a_429_pauses_minting_without_tripping_the_breaker(void) {
    static const struct row rows[] = {
        { "429, no Retry-After", MINT(HTTP_RESULT_OK, 429), NULL, NULL, MINT_UNAVAILABLE, 429, 1,
          "rate_limited", .retry = true, .pause_s = 1 },
        { "429, Retry-After: 7", MINT(HTTP_RESULT_OK, 429), "7", "{\"error\":\"rate_limited\"}",
          MINT_UNAVAILABLE, 429, 7, "rate_limited", .retry = true, .pause_s = 7 },
        { "429, Retry-After with blanks", MINT(HTTP_RESULT_OK, 429), " 12 ", NULL, MINT_UNAVAILABLE, 429, 12,
          "rate_limited", .retry = true, .pause_s = 12 },
        /* capped: one bad header must not stop minting for a day */
        { "429, Retry-After: a day", MINT(HTTP_RESULT_OK, 429), "86400", NULL, MINT_UNAVAILABLE, 429, 3600,
          "rate_limited", .retry = true, .pause_s = 3600 },
        { "429, Retry-After past 64 bits", MINT(HTTP_RESULT_OK, 429), "99999999999999999999999", NULL,
          MINT_UNAVAILABLE, 429, 3600, "rate_limited", .retry = true, .pause_s = 3600 },
        { "429, Retry-After unreadable", MINT(HTTP_RESULT_OK, 429), "soon", NULL, MINT_UNAVAILABLE, 429, 1,
          "rate_limited", .retry = true, .pause_s = 1 },
        { "429, Retry-After as a date", MINT(HTTP_RESULT_OK, 429), "Tue, 14 Nov 2023 22:14:00 GMT", NULL,
          MINT_UNAVAILABLE, 429, 40, "rate_limited", .retry = true, .pause_s = 40 },
        /* a 429 whose body was cut off still says "slow down" */
        { "429, answer too large", MINT(HTTP_RESULT_TOO_LARGE, 429), "3", NULL, MINT_UNAVAILABLE, 429, 1,
          "answer_too_large", .trips = true, .pause_s = 3 },
    };

    check_all(rows, sizeof(rows) / sizeof(*rows));
}

static void other_statuses_are_unexpected(void) {
    static const struct row rows[] = {
        /* redirects are never followed: the secret stays with base_url */
        { "302", MINT(HTTP_RESULT_OK, 302), NULL, NULL, MINT_UNAVAILABLE, 302, 1, "unexpected_status",
          .trips = true },
        { "301", MINT(HTTP_RESULT_OK, 301), NULL, NULL, MINT_UNAVAILABLE, 301, 1, "unexpected_status",
          .trips = true },
        { "101", MINT(HTTP_RESULT_OK, 101), NULL, NULL, MINT_UNAVAILABLE, 101, 1, "unexpected_status",
          .trips = true },
        { "204", MINT(HTTP_RESULT_OK, 204), NULL, NULL, MINT_UNAVAILABLE, 204, 1, "unexpected_status",
          .trips = true },
    };

    check_all(rows, sizeof(rows) / sizeof(*rows));
}

static void transport_failures_say_which_and_whether_retrying_helps(void) {
    static const struct row rows[] = {
        { "timeout", MINT(HTTP_RESULT_TIMEOUT, 0), NULL, NULL, MINT_TIMEOUT, 0, 1, "timeout", .retry = true,
          .trips = true },
        { "connection refused", MINT(HTTP_RESULT_REFUSED, 0), NULL, NULL, MINT_UNAVAILABLE, 0, 1,
          "connection_refused", .retry = true, .trips = true },
        { "dropped", MINT(HTTP_RESULT_DROPPED, 0), NULL, NULL, MINT_UNAVAILABLE, 0, 1, "connection_dropped",
          .retry = true, .trips = true },
        { "TLS handshake broke off", MINT(HTTP_RESULT_TLS_FAILED, 0), NULL, NULL, MINT_UNAVAILABLE, 0, 1,
          "tls_failed", .retry = true, .trips = true },
        { "other", MINT(HTTP_RESULT_FAILED, 0), NULL, NULL, MINT_UNAVAILABLE, 0, 1, "transport_error",
          .retry = true, .trips = true },
        /* the same certificate, name or version in 100 ms: the operator's to fix */
        { "TLS untrusted", MINT(HTTP_RESULT_TLS_UNTRUSTED, 0), NULL, NULL, MINT_UNAVAILABLE, 0, 1,
          "tls_untrusted", .trips = true, .link_broken = true },
        { "TLS expired", MINT(HTTP_RESULT_TLS_EXPIRED, 0), NULL, NULL, MINT_UNAVAILABLE, 0, 1, "tls_expired",
          .trips = true, .link_broken = true },
        { "TLS wrong host", MINT(HTTP_RESULT_TLS_WRONG_HOST, 0), NULL, NULL, MINT_UNAVAILABLE, 0, 1,
          "tls_wrong_host", .trips = true, .link_broken = true },
        { "TLS CA file", MINT(HTTP_RESULT_TLS_CA_FILE, 0), NULL, NULL, MINT_UNAVAILABLE, 0, 1, "tls_ca_file",
          .trips = true, .link_broken = true },
        { "TLS protocol", MINT(HTTP_RESULT_TLS_PROTOCOL, 0), NULL, NULL, MINT_UNAVAILABLE, 0, 1,
          "tls_protocol", .trips = true, .link_broken = true },
        { "cannot resolve", MINT(HTTP_RESULT_CANNOT_RESOLVE, 0), NULL, NULL, MINT_UNAVAILABLE, 0, 1,
          "cannot_resolve", .trips = true, .link_broken = true },
        /* the next answer would be as large: not retried, but Instacart is failing */
        { "answer too large", MINT(HTTP_RESULT_TOO_LARGE, 200), NULL, NULL, MINT_UNAVAILABLE, 200, 1,
          "answer_too_large", .trips = true },
    };

    check_all(rows, sizeof(rows) / sizeof(*rows));
}

static void retry_after_reads_seconds_and_dates(void) {
    ASSERT_UINT_EQ(instacart_retry_after(NULL, NOW), 0);
    ASSERT_UINT_EQ(instacart_retry_after("", NOW), 0);
    ASSERT_UINT_EQ(instacart_retry_after("0", NOW), 0);
    ASSERT_UINT_EQ(instacart_retry_after("120", NOW), 120);
    ASSERT_UINT_EQ(instacart_retry_after("3600", NOW), 3600);
    ASSERT_UINT_EQ(instacart_retry_after("3601", NOW), INSTACART_RETRY_AFTER_MAX_S);
    ASSERT_UINT_EQ(instacart_retry_after("-5", NOW), 0);
    ASSERT_UINT_EQ(instacart_retry_after("12abc", NOW), 0);
    /* the three forms of an HTTP-date, 100 s ahead */
    ASSERT_UINT_EQ(instacart_retry_after("Tue, 14 Nov 2023 22:15:00 GMT", NOW), 100);
    ASSERT_UINT_EQ(instacart_retry_after("Tuesday, 14-Nov-23 22:15:00 GMT", NOW), 100);
    ASSERT_UINT_EQ(instacart_retry_after("Tue Nov 14 22:15:00 2023", NOW), 100);
    /* in the past: no wait; far ahead: capped */
    ASSERT_UINT_EQ(instacart_retry_after("Tue, 14 Nov 2023 22:00:00 GMT", NOW), 0);
    ASSERT_UINT_EQ(instacart_retry_after("Wed, 15 Nov 2023 22:13:20 GMT", NOW), INSTACART_RETRY_AFTER_MAX_S);
    ASSERT_UINT_EQ(instacart_retry_after("Tue, 14 Nov 2023 22:15:00 GMT trailing", NOW), 0);
}

static const unit_test tests[] = {
    TEST(a_200_is_a_token_when_the_body_is_one),
    TEST(a_4xx_refuses_the_request_and_names_why),
    TEST(timeouts_and_5xx_are_retried_and_trip_the_breaker),
    TEST(a_429_pauses_minting_without_tripping_the_breaker),
    TEST(other_statuses_are_unexpected),
    TEST(transport_failures_say_which_and_whether_retrying_helps),
    TEST(retry_after_reads_seconds_and_dates),
};

UNIT_MAIN(tests)
