/* Unit tests of src/shared.c (fleet mode's shared tier) against a real
 * redis-server started for each case on a Unix socket in a temporary
 * directory, and real upstream clients of the real stand-in for
 * Instacart: the first host's miss takes the lease, mints and publishes;
 * a second host on the same Redis and key is handed that token without
 * minting; with Redis out of reach a miss mints on its own. Every wait
 * has a deadline. */
#include <pthread.h>
#include <sys/socket.h>
#include <sys/un.h>

#include "log.h"
#include "revoke.h"
#include "shared.h"
#include "stub-helpers.h"

#define SCOPE "connect:recommendations"
#define KEY "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"

/* ---- redis-server ---- */

static struct {
    pid_t pid;
    char dir[64];
    char sock[96];
} redis;

static void rm_dir(const char *dir, const char *const *names, size_t n) {
    char path[160];

    for (size_t i = 0; i < n; i++) {
        snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
        unlink(path);
    }
    rmdir(dir);
}

static void redis_stop(void) {
    static const char *const files[] = { "redis.sock", "key", "tokend.conf", "redis.log" };

    if (redis.pid > 0) {
        kill(redis.pid, SIGTERM);
        waitpid(redis.pid, NULL, 0);
        redis.pid = 0;
    }
    if (redis.dir[0])
        rm_dir(redis.dir, files, ARRAY_SIZE(files));
    redis.dir[0] = '\0';
}

static bool redis_answers(void) {
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    char buf[16] = "";
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    bool ok;

    ASSERT(fd >= 0);
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", redis.sock);
    ok = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 && write(fd, "PING\r\n", 6) == 6 &&
         read(fd, buf, sizeof(buf) - 1) > 0 && strncmp(buf, "+PONG", 5) == 0;
    close(fd);
    return ok;
}

/* A redis-server of our own, on a Unix socket only, keeping nothing on disk. */
static void redis_start(void) {
    const char *exe = "/usr/bin/redis-server";
    char log_path[128];
    uint64_t deadline = now_ms() + WAIT_MS;

    if (access(exe, X_OK) != 0)
        UNIT_SKIP("redis-server is not installed (tests/deps.sh test installs it)");
    snprintf(redis.dir, sizeof(redis.dir), "/tmp/test-shared-XXXXXX");
    ASSERT(mkdtemp(redis.dir));
    atexit(redis_stop);
    snprintf(redis.sock, sizeof(redis.sock), "%s/redis.sock", redis.dir);
    snprintf(log_path, sizeof(log_path), "%s/redis.log", redis.dir);
    redis.pid = fork();
    ASSERT(redis.pid >= 0);
    if (redis.pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        execl(exe, exe, "--port", "0", "--unixsocket", redis.sock, "--unixsocketperm", "700", "--save", "",
              "--appendonly", "no", "--dir", redis.dir, "--logfile", log_path, (char *)NULL);
        _exit(127);
    }
    while (!redis_answers()) {
        int status;

        ASSERT(waitpid(redis.pid, &status, WNOHANG) == 0);
        if (now_ms() > deadline)
            UNIT_FAIL("redis-server did not answer PING on %s within %d ms", redis.sock, WAIT_MS);
        pause_ms(20);
    }
}

/* ---- a fleet host: its upstream client, revocations and shared tier ---- */

struct host {
    upstream *up;
    revocations *rv;
    shared *s;
};

static void host_start(struct host *h, const char *redis_address) {
    char text[1024], path[128], key_path[128], err[CONFIG_ERR_MAX] = "";
    config *cfg = NULL;
    FILE *f;
    int fd;

    snprintf(key_path, sizeof(key_path), "%s/key", redis.dir);
    fd = open(key_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    ASSERT(fd >= 0);
    ASSERT(write(fd, KEY "\n", strlen(KEY) + 1) == (ssize_t)strlen(KEY) + 1);
    close(fd);
    snprintf(text, sizeof(text),
             "[upstream]\nbase_url = %s\nclient_id = test-client\nclient_secret_file = %s/secret\n"
             "[shared]\nredis = %s\nkey_file = %s\ntimeout = 500ms\nlease_wait = 2s\n",
             stub.base_url, stub.dir, redis_address, key_path);
    snprintf(path, sizeof(path), "%s/tokend.conf", redis.dir);
    f = fopen(path, "w");
    ASSERT(f);
    fputs(text, f);
    fclose(f);
    if (config_load(path, NULL, &cfg, err) < 0)
        UNIT_FAIL("configuration refused: %s", err);
    ASSERT_INT_EQ(upstream_new(cfg, &h->up), 0);
    ASSERT_INT_EQ(revocations_new(h->up, &h->rv), 0);
    ASSERT_INT_EQ(shared_new(cfg, h->up, h->rv, &h->s), 0);
    config_free(cfg);
    ASSERT_INT_EQ(upstream_start(h->up), 0);
    ASSERT_INT_EQ(shared_start(h->s), 0);
}

static void host_stop(struct host *h) {
    h->s = shared_free(h->s); /* its threads call the upstream client: first */
    upstream_free(h->up);
    revocations_free(h->rv);
}

static struct shared_stats stats(const struct host *h) {
    struct shared_stats st;

    shared_get_stats(h->s, &st);
    return st;
}

static void wait_up(const struct host *h) {
    uint64_t deadline = now_ms() + WAIT_MS;

    while (!stats(h).up) {
        if (now_ms() > deadline)
            UNIT_FAIL("the shared tier was not up within %d ms (events_ok=%d)", WAIT_MS, stats(h).events_ok);
        pause_ms(20);
    }
}

/* ---- fetches ---- */

static struct {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    unsigned dones;
    mint_outcome o;
    token *t;
} seen = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, { 0 }, NULL };

static void on_fetched(void *userdata, const mint_outcome *o, token *t) {
    pthread_mutex_lock(&seen.lock);
    seen.dones++;
    seen.o = *o;
    token_unref(seen.t);
    seen.t = t;
    pthread_cond_broadcast(&seen.cond);
    pthread_mutex_unlock(&seen.lock);
}

static void fetch(const struct host *h, const char *user) {
    struct cache_want want = { .min_life_ms = 60000 };
    unsigned before = seen.dones;
    struct timespec until;

    shared_fetch(h->s, OAUTH_GRANT_USER_ASSERTION, user, SCOPE, &want, on_fetched, NULL);
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += WAIT_MS / 1000;
    pthread_mutex_lock(&seen.lock);
    while (seen.dones == before)
        if (pthread_cond_timedwait(&seen.cond, &seen.lock, &until) == ETIMEDOUT)
            UNIT_FAIL("no answer to the fetch within %d ms", WAIT_MS);
    pthread_mutex_unlock(&seen.lock);
}

/* ---- the cases ---- */

static const char *redis_address(void) {
    static char address[128];

    snprintf(address, sizeof(address), "unix:%s", redis.sock);
    return address;
}

/* One host's miss takes the lease, mints and publishes; the next host
 * gets that token from Redis, and Instacart minted once. */
static void a_token_minted_by_one_host_is_handed_to_the_next(void) {
    struct host a = { 0 }, b = { 0 };
    char value[OAUTH_TOKEN_MAX + 1];
    uint64_t deadline;
    struct shared_stats st;

    ASSERT_INT_EQ(curl_global_init(CURL_GLOBAL_DEFAULT), CURLE_OK);
    redis_start();
    stub_start();
    host_start(&a, redis_address());
    wait_up(&a);
    st = stats(&a);
    ASSERT_STARTS_WITH(st.address, "unix:");

    fetch(&a, "user-1");
    ASSERT_INT_EQ(seen.o.kind, MINT_OK);
    ASSERT_INT_EQ(seen.o.via, MINT_VIA_UPSTREAM);
    ASSERT(seen.t);
    snprintf(value, sizeof(value), "%s", seen.t->value);
    ASSERT_INT_EQ(stub_stat("mints"), 1);
    st = stats(&a);
    ASSERT_UINT_EQ(st.lookups[SHARED_LEASED], 1);
    ASSERT_UINT_EQ(st.mints[SHARED_MINT_LEASED], 1);
    deadline = now_ms() + WAIT_MS;
    while (stats(&a).ops[SHARED_OP_PUBLISH][0] < 1) {
        if (now_ms() > deadline)
            UNIT_FAIL("the token was not published within %d ms", WAIT_MS);
        pause_ms(20);
    }

    host_start(&b, redis_address());
    wait_up(&b);
    fetch(&b, "user-1");
    ASSERT_INT_EQ(seen.o.kind, MINT_OK);
    ASSERT_INT_EQ(seen.o.via, MINT_VIA_SHARED);
    ASSERT(seen.t);
    ASSERT_STR_EQ(seen.t->value, value);
    ASSERT_INT_EQ(stub_stat("mints"), 1); /* Instacart minted once for both */
    ASSERT_UINT_EQ(stats(&b).lookups[SHARED_FOUND], 1);
    ASSERT_UINT_EQ(stats(&b).mints[SHARED_MINT_LEASED], 0);

    /* another user is another key: a mint of its own */
    fetch(&b, "user-2");
    ASSERT_INT_EQ(seen.o.via, MINT_VIA_UPSTREAM);
    ASSERT(strcmp(seen.t->value, value) != 0);
    ASSERT_INT_EQ(stub_stat("mints"), 2);
    seen.t = token_unref(seen.t);
    host_stop(&b);
    host_stop(&a);
    stub_stop();
}

/* Redis out of reach: not up, and a miss mints on its own rather than fail. */
static void with_redis_away_a_miss_mints_on_its_own(void) {
    struct host a = { 0 };
    char address[128];

    ASSERT_INT_EQ(curl_global_init(CURL_GLOBAL_DEFAULT), CURLE_OK);
    log_set_max_level(LOG_CRIT); /* the failing link is said, and not what this checks */
    redis_start(); /* its directory holds the files; nobody listens at the address below */
    stub_start();
    snprintf(address, sizeof(address), "unix:%s/nobody.sock", redis.dir);
    host_start(&a, address);
    fetch(&a, "user-3");
    ASSERT_INT_EQ(seen.o.kind, MINT_OK);
    ASSERT_INT_EQ(seen.o.via, MINT_VIA_UPSTREAM);
    ASSERT_INT_EQ(stub_stat("mints"), 1);
    ASSERT(!stats(&a).up);
    ASSERT_UINT_EQ(stats(&a).mints[SHARED_MINT_DEGRADED], 1);
    seen.t = token_unref(seen.t);
    host_stop(&a);
    stub_stop();
}

/* strdup(), for the case below: it fails for one text. Defined here, it
 * is the one the library's objects are linked with. */
static const char *fail_strdup_of;

char *strdup(const char *text) {
    size_t n = strlen(text) + 1;
    char *copy;

    if (fail_strdup_of && strcmp(text, fail_strdup_of) == 0) {
        errno = ENOMEM;
        return NULL;
    }
    copy = malloc(n);
    if (copy)
        memcpy(copy, text, n);
    return copy;
}

/* A copy of the Redis user name that fails must stop the start: going on
 * without it, AUTH would log in as Redis's default user. */
static void a_failed_copy_of_the_user_name_stops_the_start(void) {
    char text[1024], path[128], pw_path[128], key_path[128], err[CONFIG_ERR_MAX] = "";
    config *cfg = NULL;
    struct host h = { 0 };
    FILE *f;
    int fd;

    stub_start();
    snprintf(key_path, sizeof(key_path), "%s/key", stub.dir);
    snprintf(pw_path, sizeof(pw_path), "%s/redis-password", stub.dir);
    fd = open(key_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    ASSERT(fd >= 0 && write(fd, KEY "\n", strlen(KEY) + 1) == (ssize_t)strlen(KEY) + 1);
    close(fd);
    fd = open(pw_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    ASSERT(fd >= 0 && write(fd, "pw\n", 3) == 3);
    close(fd);
    snprintf(text, sizeof(text),
             "[upstream]\nbase_url = %s\nclient_id = test-client\nclient_secret_file = %s/secret\n"
             "[shared]\nredis = 127.0.0.1:9\nkey_file = %s\nusername = tokend-user\npassword_file = %s\n",
             stub.base_url, stub.dir, key_path, pw_path);
    snprintf(path, sizeof(path), "%s/tokend.conf", stub.dir);
    f = fopen(path, "w");
    ASSERT(f);
    fputs(text, f);
    fclose(f);
    if (config_load(path, NULL, &cfg, err) < 0)
        UNIT_FAIL("configuration refused: %s", err);
    ASSERT_INT_EQ(upstream_new(cfg, &h.up), 0);
    ASSERT_INT_EQ(revocations_new(h.up, &h.rv), 0);
    fail_strdup_of = "tokend-user";
    ASSERT_INT_EQ(shared_new(cfg, h.up, h.rv, &h.s), -ENOMEM);
    fail_strdup_of = NULL;
    ASSERT(h.s == NULL);
    config_free(cfg);
    revocations_free(h.rv);
    upstream_free(h.up);
    unlink(key_path);
    unlink(pw_path);
    unlink(path);
    stub_stop();
}

static const unit_test tests[] = {
    TEST(a_token_minted_by_one_host_is_handed_to_the_next),
    TEST(with_redis_away_a_miss_mints_on_its_own),
    TEST(a_failed_copy_of_the_user_name_stops_the_start),
};

UNIT_MAIN(tests)
