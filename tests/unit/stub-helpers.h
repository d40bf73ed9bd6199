/* What the unit tests that talk to the real stand-in for Instacart share
 * (test-upstream.c, test-revoke.c, test-forward.c, test-http_client.c,
 * test-shared.c): the
 * stub started on a free loopback port for one case and stopped at exit,
 * its control API (faults, counters, the requests it saw), an upstream
 * client of it, and waiting on a condition with a deadline. */
#pragma once

#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <errno.h>
#include <pthread.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <time.h>

#include "config.h"
#include "unit.h"
#include "upstream.h"
#include "util.h"

#define WAIT_MS 15000
#define STUB_REVOKE_PATH "/v2/oauth/token/revoke"

/* ---- the stand-in ---- */

static struct {
    pid_t pid;
    char dir[64];
    char base_url[64];
} stub;

static inline void stub_stop(void) {
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
static inline void pause_ms(long ms) {
    struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L };

    nanosleep(&ts, NULL);
}

static inline void stub_start(void) {
    const char *exe = getenv("INSTACART_STUB");
    char port_file[96], secret_file[96];
    uint64_t deadline = now_ms() + WAIT_MS;
    FILE *f;
    int fd;

    if (!exe || !*exe)
        UNIT_FAIL("INSTACART_STUB names no stand-in: run this through `meson test`, or set it to "
                  "build/tests/stub/instacart-stub");
    snprintf(stub.dir, sizeof(stub.dir), "/tmp/test-stub-XXXXXX");
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

static inline size_t stub_collect(char *data, size_t size, size_t nmemb, void *userdata) {
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
static inline cJSON *stub_call(const char *method, const char *path, const char *body) {
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
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, stub_collect);
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

static inline void stub_fault(const char *json) {
    cJSON_Delete(stub_call("POST", "/__stub/faults", json));
}

/* Forgets faults, counters and the requests seen (tokens stay valid). */
static inline void stub_reset(void) {
    cJSON_Delete(stub_call("POST", "/__stub/reset", "{}"));
}

/* One number of GET /__stub/stats. */
static inline long stub_stat(const char *name) {
    cJSON *j = stub_call("GET", "/__stub/stats", NULL);
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, name);
    long n;

    ASSERT(cJSON_IsNumber(v));
    n = (long)v->valuedouble;
    cJSON_Delete(j);
    return n;
}

/* How many requests for path the stub received, whatever it answered. */
static inline long stub_requests_to(const char *path) {
    cJSON *j = stub_call("GET", "/__stub/requests", NULL);
    const cJSON *r;
    long n = 0;

    cJSON_ArrayForEach(r, cJSON_GetObjectItemCaseSensitive(j, "requests")) {
        const cJSON *p = cJSON_GetObjectItemCaseSensitive(r, "path");
        n += cJSON_IsString(p) && strcmp(p->valuestring, path) == 0;
    }
    cJSON_Delete(j);
    return n;
}

/* Waits until the stub has answered n requests for path with status. */
static inline void stub_wait_answers(const char *path, int status, long n) {
    uint64_t deadline = now_ms() + WAIT_MS;

    for (;;) {
        cJSON *j = stub_call("GET", "/__stub/requests", NULL);
        const cJSON *r;
        long seen = 0;

        cJSON_ArrayForEach(r, cJSON_GetObjectItemCaseSensitive(j, "requests")) {
            const cJSON *p = cJSON_GetObjectItemCaseSensitive(r, "path");
            const cJSON *s = cJSON_GetObjectItemCaseSensitive(r, "status");
            seen += cJSON_IsString(p) && strcmp(p->valuestring, path) == 0 && cJSON_IsNumber(s) &&
                    (int)s->valuedouble == status;
        }
        cJSON_Delete(j);
        if (seen >= n)
            return;
        if (now_ms() > deadline)
            UNIT_FAIL("the stub answered %ld of %ld requests for %s with %d within %d ms", seen, n, path,
                      status, WAIT_MS);
        pause_ms(20);
    }
}

/* Whether the stub took a revocation of this value. */
static inline bool stub_revoked(const char *token_value) {
    cJSON *j = stub_call("GET", "/__stub/stats", NULL);
    const cJSON *t;
    bool found = false;

    cJSON_ArrayForEach(t, cJSON_GetObjectItemCaseSensitive(j, "revoked_tokens"))
        found |= cJSON_IsString(t) && strcmp(t->valuestring, token_value) == 0;
    cJSON_Delete(j);
    return found;
}

/* ---- waiting on what callbacks saw ---- */

/* Waits, under lock and on cond, until *counter reaches n, or fails the
 * case at the deadline (WAIT_MS). */
static inline void stub_wait_count(pthread_mutex_t *lock, pthread_cond_t *cond, const unsigned *counter, unsigned n,
                                   const char *what) {
    struct timespec until;

    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += WAIT_MS / 1000;
    pthread_mutex_lock(lock);
    while (*counter < n)
        if (pthread_cond_timedwait(cond, lock, &until) == ETIMEDOUT)
            UNIT_FAIL("no %s within %d ms", what, WAIT_MS);
    pthread_mutex_unlock(lock);
}

/* ---- a client of it ---- */

/* The configuration of a client of the stub, with these [upstream]
 * settings added and the client secret the stub expects. */
static inline config *stub_config(const char *settings) {
    char text[1024], err[CONFIG_ERR_MAX] = "";
    config *cfg = NULL;

    snprintf(text, sizeof(text), "[upstream]\nbase_url = %s\nclient_id = test-client\n%s", stub.base_url,
             settings);
    if (config_parse_string(text, "test.conf", &cfg, err) < 0)
        UNIT_FAIL("configuration refused: %s", err);
    cfg->client_secret = strdup("test-secret");
    ASSERT(cfg->client_secret);
    cfg->client_secret_len = strlen(cfg->client_secret);
    return cfg;
}

/* Starts the stub and a started upstream client of it. */
static inline upstream *stub_client(const char *settings) {
    config *cfg;
    upstream *u = NULL;

    ASSERT_INT_EQ(curl_global_init(CURL_GLOBAL_DEFAULT), CURLE_OK);
    stub_start();
    cfg = stub_config(settings);
    ASSERT_INT_EQ(upstream_new(cfg, &u), 0);
    config_free(cfg); /* the client keeps copies */
    ASSERT_INT_EQ(upstream_start(u), 0);
    return u;
}
