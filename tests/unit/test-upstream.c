/* Unit tests of src/upstream.c, through its public API, against the real
 * stand-in for Instacart (tests/stub/instacart-stub, started per case on a
 * free loopback port): a mint, a revocation, a 429 that pauses minting and
 * tells the fleet, the breaker opening after breaker_failures. Every wait
 * is on a condition with a deadline. */
#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <time.h>

#include "config.h"
#include "unit.h"
#include "upstream.h"
#include "util.h"

#define WAIT_MS 15000
#define SCOPE "connect:recommendations"

/* ---- the stand-in ---- */

static struct {
    pid_t pid;
    char dir[64];
    char base_url[64];
} stub;

static void stub_stop(void) {
    char path[128];

    if (stub.pid > 0) {
        kill(stub.pid, SIGTERM);
        waitpid(stub.pid, NULL, 0);
        stub.pid = 0;
    }
    if (stub.dir[0]) {
        snprintf(path, sizeof(path), "%s/port", stub.dir);
        unlink(path);
        snprintf(path, sizeof(path), "%s/secret", stub.dir);
        unlink(path);
        rmdir(stub.dir);
        stub.dir[0] = '\0';
    }
}

/* Sleeps a little: the step of a wait that has its own deadline. */
static void pause_ms(long ms) {
    struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L };

    nanosleep(&ts, NULL);
}

static void stub_start(void) {
    const char *exe = getenv("INSTACART_STUB");
    char port_file[96], secret_file[96];
    uint64_t deadline = now_ms() + WAIT_MS;
    FILE *f;
    int fd;

    if (!exe || !*exe)
        UNIT_FAIL("INSTACART_STUB names no stand-in: run this through `meson test unit-upstream`, or set it "
                  "to build/tests/stub/instacart-stub");
    snprintf(stub.dir, sizeof(stub.dir), "/tmp/test-upstream-XXXXXX");
    ASSERT(mkdtemp(stub.dir));
    atexit(stub_stop); /* a failed assertion exits: the stub goes too */
    snprintf(port_file, sizeof(port_file), "%s/port", stub.dir);
    snprintf(secret_file, sizeof(secret_file), "%s/secret", stub.dir);
    fd = open(secret_file, O_WRONLY | O_CREAT | O_EXCL, 0600);
    ASSERT(fd >= 0);
    ASSERT(write(fd, "test-secret\n", 12) == 12);
    close(fd);

    stub.pid = fork();
    ASSERT(stub.pid >= 0);
    if (stub.pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        execl(exe, exe, "--listen", "127.0.0.1:0", "--port-file", port_file, "--client-id", "test-client",
              "--client-secret-file", secret_file, (char *)NULL);
        _exit(127);
    }
    /* the stub writes the file under a temporary name, then renames it */
    for (;;) {
        unsigned port = 0;
        int status;

        ASSERT(waitpid(stub.pid, &status, WNOHANG) == 0);
        f = fopen(port_file, "r");
        if (f) {
            int n = fscanf(f, "%u", &port);
            fclose(f);
            if (n == 1 && port > 0) {
                snprintf(stub.base_url, sizeof(stub.base_url), "http://127.0.0.1:%u", port);
                return;
            }
        }
        if (now_ms() > deadline)
            UNIT_FAIL("the stub did not write %s within %d ms", port_file, WAIT_MS);
        pause_ms(10);
    }
}

static size_t collect(char *data, size_t size, size_t nmemb, void *userdata) {
    char **buf = userdata;
    size_t old = *buf ? strlen(*buf) : 0, n = size * nmemb;
    char *p = realloc(*buf, old + n + 1);

    ASSERT(p);
    memcpy(p + old, data, n);
    p[old + n] = '\0';
    *buf = p;
    return n;
}

/* The stub's control API: the parsed answer, which must be a 200. */
static cJSON *stub_call(const char *method, const char *path, const char *body) {
    CURL *e = curl_easy_init();
    char url[128], *answer = NULL;
    long status = 0;
    cJSON *j;

    ASSERT(e);
    snprintf(url, sizeof(url), "%s%s", stub.base_url, path);
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_PROXY, "");
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, 5000L);
    curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
    if (body)
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, &answer);
    ASSERT_INT_EQ(curl_easy_perform(e), CURLE_OK);
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_cleanup(e);
    if (status != 200)
        UNIT_FAIL("%s %s: the stub answered %ld: %s", method, path, status, answer ? answer : "");
    j = cJSON_Parse(answer);
    free(answer);
    ASSERT(j);
    return j;
}

static void stub_fault(const char *json) {
    cJSON_Delete(stub_call("POST", "/__stub/faults", json));
}

/* One number of GET /__stub/stats. */
static long stub_stat(const char *name) {
    cJSON *j = stub_call("GET", "/__stub/stats", NULL);
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, name);
    long n;

    ASSERT(cJSON_IsNumber(v));
    n = (long)v->valuedouble;
    cJSON_Delete(j);
    return n;
}

static bool stub_revoked(const char *token_value) {
    cJSON *j = stub_call("GET", "/__stub/stats", NULL);
    const cJSON *t;
    bool found = false;

    cJSON_ArrayForEach(t, cJSON_GetObjectItemCaseSensitive(j, "revoked_tokens"))
        found |= cJSON_IsString(t) && strcmp(t->valuestring, token_value) == 0;
    cJSON_Delete(j);
    return found;
}

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
    struct timespec until;

    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += WAIT_MS / 1000;
    pthread_mutex_lock(&seen.lock);
    while (*counter < n)
        if (pthread_cond_timedwait(&seen.cond, &seen.lock, &until) == ETIMEDOUT)
            UNIT_FAIL("no %s within %d ms", what, WAIT_MS);
    pthread_mutex_unlock(&seen.lock);
}

/* A started client of the stub, with these [upstream] settings added. */
static upstream *client(const char *settings, const struct upstream_events *ev) {
    char text[1024], err[CONFIG_ERR_MAX] = "";
    config *cfg = NULL;
    upstream *u = NULL;

    ASSERT_INT_EQ(curl_global_init(CURL_GLOBAL_DEFAULT), CURLE_OK);
    stub_start();
    snprintf(text, sizeof(text), "[upstream]\nbase_url = %s\nclient_id = test-client\n%s", stub.base_url,
             settings);
    if (config_parse_string(text, "test.conf", &cfg, err) < 0)
        UNIT_FAIL("configuration refused: %s", err);
    cfg->client_secret = strdup("test-secret");
    ASSERT(cfg->client_secret);
    cfg->client_secret_len = strlen(cfg->client_secret);
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

    upstream_revoke(u, value, on_done, NULL);
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
    TEST(a_429_pauses_minting_and_tells_the_fleet),
    TEST(the_breaker_opens_after_breaker_failures),
    TEST(a_mint_waiting_out_a_pause_does_not_keep_the_breakers_probe),
};

UNIT_MAIN(tests)
