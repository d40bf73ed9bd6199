/* Unit tests of src/forward.c: a Recommendations call forwarded to the
 * real stand-in for Instacart over a real HTTP client, one attempt, its
 * answer (status, content type, body) handed back exactly as Instacart
 * sent it, and no answer said as status 0. Every wait has a deadline. */
#include <pthread.h>

#include "forward.h"
#include "stub-helpers.h"

#define RECO_PATH "/v2/recommendations/replacement_items"
#define SCOPE "connect:recommendations"

/* What the callbacks saw, and a condition to wait on. */
static struct {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    unsigned dones, mints;
    int status;
    char content_type[128];
    char *body;
    size_t len;
    bool body_null;
    token *minted;
} seen = { .lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER };

static void on_forwarded(void *userdata, int status, const char *content_type, const char *body, size_t len) {
    pthread_mutex_lock(&seen.lock);
    seen.dones++;
    seen.status = status;
    snprintf(seen.content_type, sizeof(seen.content_type), "%s", content_type ? content_type : "");
    free(seen.body);
    seen.body = NULL;
    seen.body_null = body == NULL;
    if (body) {
        seen.body = malloc(len + 1);
        ASSERT(seen.body);
        memcpy(seen.body, body, len);
        seen.body[len] = '\0';
    }
    seen.len = len;
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

static void wait_for(const unsigned *counter, unsigned n, const char *what) {
    stub_wait_count(&seen.lock, &seen.cond, counter, n, what);
}

/* The stub, a token it minted for user, and a started HTTP client. */
static struct {
    upstream *up;
    http_client *hc;
    char bearer[OAUTH_TOKEN_MAX + 1];
    char url[160];
} env;

static void setup(const char *user) {
    struct http_client_settings hs = { .max_concurrent = 4, .queue_max = 16, .connect_timeout_ms = 2000 };

    env.up = stub_client("");
    upstream_mint(env.up, OAUTH_GRANT_USER_ASSERTION, user, SCOPE, on_minted, NULL);
    wait_for(&seen.mints, 1, "answer to the mint");
    ASSERT(seen.minted);
    snprintf(env.bearer, sizeof(env.bearer), "%s", seen.minted->value);
    seen.minted = token_unref(seen.minted);
    snprintf(env.url, sizeof(env.url), "%s" RECO_PATH, stub.base_url);
    ASSERT_INT_EQ(http_client_new(&hs, &env.hc), 0);
    ASSERT_INT_EQ(http_client_start(env.hc), 0);
}

static void teardown(void) {
    env.hc = http_client_free(env.hc);
    env.up = upstream_free(env.up);
    free(seen.body);
    seen.body = NULL;
    stub_stop();
}

static void forward(const char *url, const char *bearer, const char *body, size_t answer_max,
                    uint64_t attempt_timeout_ms) {
    forward_submit(env.hc,
                   &(struct forward_call){ .url = url, .path = RECO_PATH, .bearer = bearer, .body = body,
                                           .len = strlen(body), .answer_max = answer_max,
                                           .deadline_ms = now_ms() + WAIT_MS,
                                           .attempt_timeout_ms = attempt_timeout_ms },
                   on_forwarded, NULL);
}

/* ---- the cases ---- */

/* Instacart's answer to the user's call, with the user's token and body. */
static void a_call_reaches_instacart_with_the_users_token_and_body(void) {
    cJSON *j;
    const cJSON *items;

    setup("user-1");
    forward(env.url, env.bearer, "{\"items\": [1, 2]}", 65536, 5000);
    wait_for(&seen.dones, 1, "answer");
    ASSERT_INT_EQ(seen.status, 200);
    ASSERT_STARTS_WITH(seen.content_type, "application/json");
    j = cJSON_ParseWithLength(seen.body, seen.len);
    ASSERT(j);
    ASSERT(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "ok")));
    ASSERT_STR_EQ(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(j, "path")), RECO_PATH);
    ASSERT_STR_EQ(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(j, "user_id")), "user-1");
    items = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(j, "body"), "items");
    ASSERT_INT_EQ(cJSON_GetArraySize(items), 2);
    cJSON_Delete(j);
    ASSERT_INT_EQ(stub_requests_to(RECO_PATH), 1);
    teardown();
}

/* Whatever Instacart says, it is passed back byte for byte, with its
 * content type, and not tried again (the caller decides). */
static void an_error_answer_is_passed_back_unchanged(void) {
    static const char body[] = "{\"errors\":[{\"message\":\"no such item\",\"code\":\"x\\u00e9\"}]}  \n";
    cJSON *as_json = cJSON_CreateString(body);
    char fault[512], *quoted = cJSON_PrintUnformatted(as_json);

    setup("user-2");
    snprintf(fault, sizeof(fault),
             "{\"status\": 422, \"match_path\": \"" RECO_PATH "\", \"count\": 1, "
             "\"content_type\": \"application/problem+json; charset=utf-8\", \"body\": %s}",
             quoted);
    free(quoted);
    cJSON_Delete(as_json);
    stub_fault(fault);
    forward(env.url, env.bearer, "{}", 65536, 5000);
    wait_for(&seen.dones, 1, "answer");
    ASSERT_INT_EQ(seen.status, 422);
    ASSERT_STR_EQ(seen.content_type, "application/problem+json; charset=utf-8");
    ASSERT_UINT_EQ(seen.len, strlen(body));
    ASSERT_STR_EQ(seen.body, body);

    stub_fault("{\"status\": 503, \"match_path\": \"" RECO_PATH "\", \"count\": 1}");
    forward(env.url, env.bearer, "{}", 65536, 5000);
    wait_for(&seen.dones, 2, "answer");
    ASSERT_INT_EQ(seen.status, 503);
    ASSERT_CONTAINS(seen.body, "temporarily_unavailable");
    ASSERT_INT_EQ(stub_requests_to(RECO_PATH), 2); /* one each: the 503 was not retried */
    teardown();
}

/* A token Instacart does not know gets Instacart's own 401. */
static void instacarts_401_comes_back_as_it_is(void) {
    setup("user-3");
    forward(env.url, "not-a-token-instacart-issued", "{}", 65536, 5000);
    wait_for(&seen.dones, 1, "answer");
    ASSERT_INT_EQ(seen.status, 401);
    ASSERT_CONTAINS(seen.body, "invalid_token");
    ASSERT_INT_EQ(stub_requests_to(RECO_PATH), 1);
    teardown();
}

/* No answer within the attempt's time: status 0, no body. */
static void a_hanging_instacart_ends_as_no_answer(void) {
    setup("user-4");
    stub_fault("{\"action\": \"hang\", \"match_path\": \"" RECO_PATH "\", \"count\": 1}");
    forward(env.url, env.bearer, "{}", 65536, 300);
    wait_for(&seen.dones, 1, "end of the hanging call");
    ASSERT_INT_EQ(seen.status, 0);
    ASSERT(seen.body_null);
    ASSERT_UINT_EQ(seen.len, 0);
    teardown();
}

/* An answer longer than the caller takes is no answer, not a cut one. */
static void an_answer_too_long_is_no_answer(void) {
    setup("user-5");
    forward(env.url, env.bearer, "{\"items\": [1, 2, 3, 4, 5, 6, 7, 8]}", 16, 5000);
    wait_for(&seen.dones, 1, "answer");
    ASSERT_INT_EQ(seen.status, 0);
    ASSERT(seen.body_null);
    teardown();
}

/* No URL (the caller could not build one): answered at once, nothing sent. */
static void a_call_without_a_url_fails_at_once(void) {
    setup("user-6");
    forward(NULL, env.bearer, "{}", 65536, 5000);
    ASSERT_UINT_EQ(seen.dones, 1); /* before forward_submit returned */
    ASSERT_INT_EQ(seen.status, 0);
    ASSERT_INT_EQ(stub_requests_to(RECO_PATH), 0);
    teardown();
}

static const unit_test tests[] = {
    TEST(a_call_reaches_instacart_with_the_users_token_and_body),
    TEST(an_error_answer_is_passed_back_unchanged),
    TEST(instacarts_401_comes_back_as_it_is),
    TEST(a_hanging_instacart_ends_as_no_answer),
    TEST(an_answer_too_long_is_no_answer),
    TEST(a_call_without_a_url_fails_at_once),
};

UNIT_MAIN(tests)
