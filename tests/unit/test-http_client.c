/* Unit tests of src/http_client.c against the real stand-in for Instacart:
 * an exchange's answer with its status, headers and body; at most
 * max_concurrent requests at once (the stand-in's own record of when each
 * arrived and was answered says so); beyond max_concurrent + queue_max a
 * submit is refused; an attempt ends at its timeout, an exchange that
 * waited past its deadline ends unsent, one in flight at a stop is
 * cancelled; a retry asked by the owner is sent; connections are kept.
 * Every wait has a deadline. */
#include <pthread.h>

#include "http_client.h"
#include "stub-helpers.h"

/* Paths the stand-in answers only as a fault tells it. */
#define FAST "/fast"
#define SLOW "/slow"
#define HANG "/hang"

/* One exchange's owner: what to send, and what came back. */
struct owner {
    char url[160];
    uint64_t timeout_ms;
    unsigned retries; /* asked for after an answer */
    unsigned attempts;
    bool over;
    enum http_result result;
    int status;
    char content_type[96], retry_after[32], body[256];
};

static struct {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    unsigned over;
    unsigned out, most_out; /* attempts started and not yet answered: now, and at most */
} seen = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0 };

static enum http_start on_start(void *userdata, http_exchange *ex, uint64_t now, uint64_t *wait_ms) {
    struct owner *o = userdata;
    struct http_request req = { .url = o->url, .body = "{}", .body_len = 2, .answer_max = 4096,
                                .timeout_ms = o->timeout_ms };

    o->attempts++;
    pthread_mutex_lock(&seen.lock);
    if (++seen.out > seen.most_out)
        seen.most_out = seen.out;
    pthread_mutex_unlock(&seen.lock);
    return http_exchange_send(ex, &req) == 0 ? HTTP_START_SENT : HTTP_START_ENDED;
}

static bool on_done(void *userdata, const struct http_answer *a, uint64_t *retry_at) {
    struct owner *o = userdata;

    if (o->attempts) {
        pthread_mutex_lock(&seen.lock);
        seen.out--;
        pthread_mutex_unlock(&seen.lock);
    }
    if (a->result == HTTP_RESULT_OK && o->retries) {
        o->retries--;
        *retry_at = now_ms();
        return true;
    }
    pthread_mutex_lock(&seen.lock);
    o->over = true;
    o->result = a->result;
    o->status = a->status;
    snprintf(o->content_type, sizeof(o->content_type), "%s", a->content_type ? a->content_type : "");
    snprintf(o->retry_after, sizeof(o->retry_after), "%s", a->retry_after ? a->retry_after : "");
    snprintf(o->body, sizeof(o->body), "%.*s", (int)a->len, a->body ? a->body : "");
    seen.over++;
    pthread_cond_broadcast(&seen.cond);
    pthread_mutex_unlock(&seen.lock);
    return false;
}

static const struct http_exchange_ops ops = { .start = on_start, .done = on_done };

static void wait_over(unsigned n) {
    struct timespec until;

    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += WAIT_MS / 1000;
    pthread_mutex_lock(&seen.lock);
    while (seen.over < n)
        if (pthread_cond_timedwait(&seen.cond, &seen.lock, &until) == ETIMEDOUT)
            UNIT_FAIL("%u of %u exchanges over within %d ms", seen.over, n, WAIT_MS);
    pthread_mutex_unlock(&seen.lock);
}

/* The stub, and a started client of it. */
static http_client *client(unsigned max_concurrent, unsigned queue_max) {
    struct http_client_settings hs = { .max_concurrent = max_concurrent, .queue_max = queue_max,
                                       .connect_timeout_ms = 2000 };
    http_client *hc = NULL;

    ASSERT_INT_EQ(curl_global_init(CURL_GLOBAL_DEFAULT), CURLE_OK);
    stub_start();
    stub_fault("{\"status\": 200, \"body\": \"{\\\"fast\\\": true}\", \"match_path\": \"" FAST "\", \"count\": -1}");
    stub_fault("{\"status\": 200, \"body\": \"{}\", \"delay_ms\": 300, \"match_path\": \"" SLOW "\", \"count\": -1}");
    stub_fault("{\"action\": \"hang\", \"match_path\": \"" HANG "\", \"count\": -1}");
    ASSERT_INT_EQ(http_client_new(&hs, &hc), 0);
    ASSERT_INT_EQ(http_client_start(hc), 0);
    return hc;
}

static void to(struct owner *o, const char *path, uint64_t timeout_ms) {
    memset(o, 0, sizeof(*o));
    snprintf(o->url, sizeof(o->url), "%s%s", stub.base_url, path);
    o->timeout_ms = timeout_ms;
}

static struct http_client_stats stats(http_client *hc) {
    struct http_client_stats st;

    http_client_get_stats(hc, &st);
    return st;
}

/* The most requests for path the stand-in was ever serving at once, from
 * when it received and answered each. */
static int most_at_once(const char *path) {
    cJSON *j = stub_call("GET", "/__stub/requests", NULL);
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(j, "requests"), *r, *q;
    int most = 0;

    cJSON_ArrayForEach(r, a) {
        double at = cJSON_GetObjectItemCaseSensitive(r, "t_recv")->valuedouble;
        int n = 0;

        if (strcmp(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(r, "path")), path) != 0)
            continue;
        cJSON_ArrayForEach(q, a) {
            const cJSON *done = cJSON_GetObjectItemCaseSensitive(q, "t_done");
            if (strcmp(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(q, "path")), path) != 0)
                continue;
            ASSERT(cJSON_IsNumber(done)); /* every one was answered */
            n += cJSON_GetObjectItemCaseSensitive(q, "t_recv")->valuedouble <= at && at < done->valuedouble;
        }
        if (n > most)
            most = n;
    }
    cJSON_Delete(j);
    return most;
}

/* ---- the cases ---- */

static void an_answer_comes_with_its_status_headers_and_body(void) {
    http_client *hc = client(4, 16);
    struct owner o;

    stub_fault("{\"status\": 429, \"retry_after\": \"7\", \"content_type\": \"text/plain\", \"body\": \"slow down\", "
               "\"match_path\": \"/limited\", \"count\": 1}");
    to(&o, "/limited", 5000);
    ASSERT_INT_EQ(http_client_submit(hc, &ops, &o, now_ms() + WAIT_MS), 0);
    wait_over(1);
    ASSERT_INT_EQ(o.result, HTTP_RESULT_OK);
    ASSERT_INT_EQ(o.status, 429);
    ASSERT_STR_EQ(o.content_type, "text/plain");
    ASSERT_STR_EQ(o.retry_after + strspn(o.retry_after, " \t"), "7"); /* the header's value, as sent */
    ASSERT_STR_EQ(o.body, "slow down");
    ASSERT_UINT_EQ(o.attempts, 1);
    ASSERT_UINT_EQ(stats(hc).requests, 1);
    http_client_free(hc);
    stub_stop();
}

/* Five slow exchanges through max_concurrent = 2: all answered, never
 * more than two at the stand-in at once, nor started by the client. */
static void no_more_than_max_concurrent_requests_at_once(void) {
    http_client *hc = client(2, 16);
    struct owner o[5];

    for (size_t i = 0; i < ARRAY_SIZE(o); i++) {
        to(&o[i], SLOW, 5000);
        ASSERT_INT_EQ(http_client_submit(hc, &ops, &o[i], now_ms() + WAIT_MS), 0);
    }
    wait_over(ARRAY_SIZE(o));
    for (size_t i = 0; i < ARRAY_SIZE(o); i++)
        ASSERT_INT_EQ(o[i].status, 200);
    ASSERT_INT_EQ(stub_requests_to(SLOW), 5);
    ASSERT(most_at_once(SLOW) <= 2);
    ASSERT(seen.most_out <= 2); /* and the client itself started no more (curl's own limit aside) */
    ASSERT(stats(hc).connections <= 2); /* and no more connections than that */
    http_client_free(hc);
    stub_stop();
}

/* max_concurrent + queue_max exchanges are taken; one more is refused at
 * once; a stop cancels those taken, and refuses what comes after. */
static void beyond_the_queue_a_submit_is_refused_and_a_stop_cancels(void) {
    http_client *hc = client(1, 1);
    struct owner a, b, c;

    to(&a, HANG, 60000);
    to(&b, HANG, 60000);
    to(&c, HANG, 60000);
    ASSERT_INT_EQ(http_client_submit(hc, &ops, &a, now_ms() + 60000), 0);
    ASSERT_INT_EQ(http_client_submit(hc, &ops, &b, now_ms() + 60000), 0);
    ASSERT_INT_EQ(http_client_submit(hc, &ops, &c, now_ms() + 60000), -EBUSY);
    ASSERT_UINT_EQ(stats(hc).in_flight, 2); /* both taken, whether the worker saw them yet or not */
    http_client_stop(hc);
    wait_over(2);
    ASSERT_INT_EQ(a.result, HTTP_RESULT_CANCELLED);
    ASSERT_INT_EQ(b.result, HTTP_RESULT_CANCELLED);
    ASSERT_UINT_EQ(b.attempts, 0); /* it waited for a slot: never sent */
    ASSERT(!c.over);
    ASSERT_INT_EQ(http_client_submit(hc, &ops, &c, now_ms() + 60000), -ESHUTDOWN);
    http_client_free(hc);
    stub_stop();
}

/* A server that never answers: the attempt ends at its timeout. */
static void an_attempt_ends_at_its_timeout(void) {
    http_client *hc = client(2, 2);
    struct owner o;

    to(&o, HANG, 300);
    ASSERT_INT_EQ(http_client_submit(hc, &ops, &o, now_ms() + WAIT_MS), 0);
    wait_over(1);
    ASSERT_INT_EQ(o.result, HTTP_RESULT_TIMEOUT);
    ASSERT_INT_EQ(o.status, 0);
    http_client_free(hc);
    stub_stop();
}

/* An exchange still waiting for a slot when its deadline passes ends
 * without being sent. */
static void an_exchange_waiting_past_its_deadline_expires_unsent(void) {
    http_client *hc = client(1, 4);
    struct owner busy, late;

    to(&busy, HANG, 2000);
    to(&late, FAST, 5000);
    ASSERT_INT_EQ(http_client_submit(hc, &ops, &busy, now_ms() + WAIT_MS), 0);
    ASSERT_INT_EQ(http_client_submit(hc, &ops, &late, now_ms() + 200), 0);
    wait_over(2);
    ASSERT_INT_EQ(late.result, HTTP_RESULT_EXPIRED);
    ASSERT_UINT_EQ(late.attempts, 0);
    ASSERT_INT_EQ(stub_requests_to(FAST), 0);
    ASSERT_INT_EQ(busy.result, HTTP_RESULT_TIMEOUT);
    http_client_free(hc);
    stub_stop();
}

/* The owner asks for another attempt: it is sent, on the kept connection. */
static void a_retry_is_sent_and_connections_are_kept(void) {
    http_client *hc = client(1, 4);
    struct owner o, p;
    struct http_client_stats st;

    to(&o, FAST, 5000);
    o.retries = 1;
    ASSERT_INT_EQ(http_client_submit(hc, &ops, &o, now_ms() + WAIT_MS), 0);
    wait_over(1);
    ASSERT_UINT_EQ(o.attempts, 2);
    ASSERT_STR_EQ(o.body, "{\"fast\": true}");
    to(&p, FAST, 5000);
    ASSERT_INT_EQ(http_client_submit(hc, &ops, &p, now_ms() + WAIT_MS), 0);
    wait_over(2);
    ASSERT_INT_EQ(stub_requests_to(FAST), 3);
    st = stats(hc);
    ASSERT_UINT_EQ(st.requests, 3);
    ASSERT_UINT_EQ(st.connections, 1);
    ASSERT_UINT_EQ(st.latency_count, 3);
    ASSERT_UINT_EQ(st.in_flight, 0);
    http_client_free(hc);
    stub_stop();
}

/* Nobody listening: said as a refused connection, not a timeout. */
static void a_refused_connection_is_said_as_such(void) {
    http_client *hc = client(1, 1);
    struct owner o;

    to(&o, FAST, 5000);
    snprintf(o.url, sizeof(o.url), "http://127.0.0.1:1/");
    ASSERT_INT_EQ(http_client_submit(hc, &ops, &o, now_ms() + WAIT_MS), 0);
    wait_over(1);
    ASSERT_INT_EQ(o.result, HTTP_RESULT_REFUSED);
    http_client_free(hc);
    stub_stop();
}

static const unit_test tests[] = {
    TEST(an_answer_comes_with_its_status_headers_and_body),
    TEST(no_more_than_max_concurrent_requests_at_once),
    TEST(beyond_the_queue_a_submit_is_refused_and_a_stop_cancels),
    TEST(an_attempt_ends_at_its_timeout),
    TEST(an_exchange_waiting_past_its_deadline_expires_unsent),
    TEST(a_retry_is_sent_and_connections_are_kept),
    TEST(a_refused_connection_is_said_as_such),
};

UNIT_MAIN(tests)
