/* Unit tests of src/answer.c: the bodies tokend answers with and how a
 * failed mint maps to a status, without a server. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "answer.h"
#include "unit.h"
#include "util.h"

static token *make_token(const char *value, uint32_t lifetime_s, int64_t created_at) {
    token *t = NULL;

    ASSERT_INT_EQ(token_new(value, strlen(value), lifetime_s, created_at, now_ms(), &t), 0);
    return t;
}

/* The body parsed, checked to be exactly its length. */
static cJSON *parse(const answer *a) {
    cJSON *j;

    ASSERT(a->body != NULL);
    ASSERT_UINT_EQ(strlen(a->body), a->len);
    j = cJSON_Parse(a->body);
    ASSERT(j != NULL);
    return j;
}

static void a_token_has_instacarts_shape(void) {
    token *t = make_token("tok-abc", 86400, 1700000000);
    answer a;
    cJSON *j;

    ASSERT_INT_EQ(answer_token(&a, t, "connect:recommendations", "hit"), 0);
    ASSERT_UINT_EQ(a.status, 200);
    ASSERT_STR_EQ(a.x_cache, "hit");
    ASSERT(a.free_body != NULL); /* owned, wiped when freed */
    j = parse(&a);
    ASSERT_STR_EQ(cJSON_GetObjectItem(j, "access_token")->valuestring, "tok-abc");
    ASSERT_STR_EQ(cJSON_GetObjectItem(j, "token_type")->valuestring, "Bearer");
    ASSERT_STR_EQ(cJSON_GetObjectItem(j, "scope")->valuestring, "connect:recommendations");
    ASSERT(cJSON_GetObjectItem(j, "expires_in")->valuedouble > 86390);
    ASSERT(cJSON_GetObjectItem(j, "created_at")->valuedouble == 1700000000.0);
    cJSON_Delete(j);
    answer_clear(&a);
    ASSERT(a.body == NULL);
    token_unref(t);
}

static void a_token_without_scope_has_no_scope_and_a_negative_clock_survives(void) {
    token *t = make_token("x", 60, -5);
    answer a;
    cJSON *j;

    ASSERT_INT_EQ(answer_token(&a, t, "", "miss"), 0);
    j = parse(&a);
    ASSERT(cJSON_GetObjectItem(j, "scope") == NULL);
    ASSERT(cJSON_GetObjectItem(j, "created_at")->valuedouble == -5.0);
    cJSON_Delete(j);
    answer_clear(&a);
    token_unref(t);
}

static void a_token_about_to_expire_never_says_zero(void) {
    token *t = make_token("x", 0, 0); /* already at its end */
    answer a;
    cJSON *j;

    ASSERT_INT_EQ(answer_token(&a, t, "", "hit"), 0);
    j = parse(&a);
    ASSERT(cJSON_GetObjectItem(j, "expires_in")->valuedouble == 1.0);
    cJSON_Delete(j);
    answer_clear(&a);
    token_unref(t);
}

static void errors_escape_any_text(void) {
    answer a;
    cJSON *j;

    ASSERT_INT_EQ(answer_error(&a, 400, "invalid_request", "a \"quoted\"\nline\\", NULL), 0);
    ASSERT_UINT_EQ(a.status, 400);
    ASSERT(a.content_type == NULL); /* JSON */
    j = parse(&a);
    ASSERT_STR_EQ(cJSON_GetObjectItem(j, "error")->valuestring, "invalid_request");
    ASSERT_STR_EQ(cJSON_GetObjectItem(j, "error_description")->valuestring, "a \"quoted\"\nline\\");
    ASSERT(cJSON_GetObjectItem(j, "upstream_status") == NULL);
    ASSERT(a.refusal); /* tokend's own: Allow, WWW-Authenticate, Retry-After where they apply */
    cJSON_Delete(j);
    answer_clear(&a);
}

static void only_refusals_are_refusals(void) {
    answer a;

    ASSERT_INT_EQ(answer_static(&a, 503, "{}"), 0);
    ASSERT(!a.refusal); /* /readyz, or Instacart's answer relayed: no headers of tokend's */
    ASSERT_INT_EQ(answer_json(&a, 405, strdup("{}")), 0);
    ASSERT(!a.refusal);
    answer_clear(&a);
}

static mint_outcome outcome(enum mint_kind kind, int http_status, const char *error, unsigned retry_after_s) {
    mint_outcome o = { .kind = kind, .http_status = http_status, .retry_after_s = retry_after_s };

    snprintf(o.error, sizeof(o.error), "%s", error);
    return o;
}

static void check_failure(const mint_outcome *o, bool oauth, unsigned status, const char *error) {
    answer a;
    cJSON *j;

    ASSERT_INT_EQ(answer_failure(&a, o, oauth), 0);
    ASSERT_UINT_EQ(a.status, status);
    j = parse(&a);
    ASSERT_STR_EQ(cJSON_GetObjectItem(j, "error")->valuestring, error);
    ASSERT_STR_EQ(cJSON_GetObjectItem(j, "upstream_error")->valuestring, o->error);
    cJSON_Delete(j);
    answer_clear(&a);
}

static void failed_mints_map_to_gateway_statuses(void) {
    mint_outcome rejected = outcome(MINT_REJECTED, 400, "invalid_scope", 0);
    mint_outcome denied = outcome(MINT_REJECTED, 401, "invalid_client", 0);
    mint_outcome timeout = outcome(MINT_TIMEOUT, 0, "deadline", 0);
    mint_outcome down = outcome(MINT_UNAVAILABLE, 503, "server_error", 7);
    answer a;

    check_failure(&rejected, false, 502, "upstream_rejected");
    check_failure(&denied, true, 502, "upstream_rejected"); /* only a 400 is the caller's own */
    check_failure(&timeout, false, 504, "upstream_timeout");
    check_failure(&down, false, 503, "upstream_unavailable");
    ASSERT_INT_EQ(answer_failure(&a, &down, false), 0);
    ASSERT_UINT_EQ(a.retry_after_s, 7); /* Instacart's Retry-After, passed on */
    answer_clear(&a);
}

static void the_dropin_relays_instacarts_own_400(void) {
    mint_outcome rejected = outcome(MINT_REJECTED, 400, "invalid_scope", 0);

    check_failure(&rejected, true, 400, "invalid_scope");
}

static void a_failed_allocation_is_no_answer(void) {
    answer a;

    ASSERT_INT_EQ(answer_json(&a, 200, NULL), -ENOMEM);
}

static const unit_test tests[] = {
    TEST(a_token_has_instacarts_shape),
    TEST(a_token_without_scope_has_no_scope_and_a_negative_clock_survives),
    TEST(a_token_about_to_expire_never_says_zero),
    TEST(errors_escape_any_text),
    TEST(only_refusals_are_refusals),
    TEST(failed_mints_map_to_gateway_statuses),
    TEST(the_dropin_relays_instacarts_own_400),
    TEST(a_failed_allocation_is_no_answer),
};

UNIT_MAIN(tests)
