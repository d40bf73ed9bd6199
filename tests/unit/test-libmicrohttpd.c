/* The behaviours of libmicrohttpd that src/api.c works around or lives
 * with, measured on the library the build found (0.9.75 on Debian 12, 1.0.1
 * on Debian 13), with an internal polling thread on epoll (tokend runs
 * epoll from threads of its own, src/listen.c, because of the first fault
 * below), and poll() beside it where the two differ. Not a test of
 * tokend's code: when one of these fails, the library changed and the
 * workaround it names can go, or must come, on that release.
 *
 * - api.c answers on the handler's second call: a response queued on the
 *   first call is sent with "Connection: close" (0.9.75 and 1.0.1 alike).
 * - A raw NUL in the request target: 0.9.75 hands the handler the URL cut
 *   at the NUL; 1.0.1 drops the connection, without an answer, before any
 *   handler runs.
 * - A burst of requests arriving together: under epoll, when one
 *   epoll_wait returns a full batch (128 events), libmicrohttpd waits again
 *   with its whole timeout before handling any of them, so 128 requests
 *   followed by silence are not answered until some other event comes (up
 *   to the idle timeout). With poll() they are answered at once (but
 *   poll() accepts one connection a turn). burst_answered() measured it
 *   (0 of 128 answered, on 0.9.75 and 1.0.1); run against epoll it is not
 *   a test here: a CI run hung in it for 120 s, in a way not yet
 *   understood. test_strict_http checks tokend's own threads instead.
 * - A client that sends part of a request and its FIN at once: under epoll
 *   the connection is kept (CLOSE_WAIT) until the idle timeout, in 0.9.75
 *   and 1.0.1 alike; with poll() it is closed at once.
 * - A client that sends its whole request and then its FIN, while the
 *   request is suspended (as a miss waits on a mint): the connection is
 *   closed unanswered when it is resumed, in 0.9.75 and 1.0.1, with epoll
 *   and poll alike. */
#include <arpa/inet.h>
#include <microhttpd.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <time.h>

#include "unit.h"

static atomic_bool answer_first, suspend_second, blocking;
static char seen_url[256];

/* Resumes a suspended connection 300 ms later, as a finished mint does. */
static void *resume_later(void *conn) {
    struct timespec t = { .tv_nsec = 300 * 1000000L };

    nanosleep(&t, NULL);
    MHD_resume_connection(conn);
    return NULL;
}

static enum MHD_Result handler(void *cls, struct MHD_Connection *c, const char *url,
                               const char *method, const char *version, const char *upload_data,
                               size_t *upload_data_size, void **req_cls) {
    static const char body[] = "{\"ok\":1}";
    static int marker, suspended;
    struct MHD_Response *r;
    enum MHD_Result ret;

    if (!atomic_load(&answer_first) && *req_cls == NULL) {
        *req_cls = &marker;
        return MHD_YES;
    }
    if (atomic_load(&suspend_second) && *req_cls == &marker) {
        pthread_t t;
        *req_cls = &suspended;
        MHD_suspend_connection(c);
        ASSERT(pthread_create(&t, NULL, resume_later, c) == 0);
        pthread_detach(t);
        return MHD_YES;
    }
    if (strcmp(url, "/block") == 0) { /* holds the polling thread, as a loaded machine does */
        struct timespec t = { .tv_nsec = 500 * 1000000L };
        atomic_store(&blocking, true);
        nanosleep(&t, NULL);
    }
    snprintf(seen_url, sizeof(seen_url), "%s", url);
    r = MHD_create_response_from_buffer(sizeof(body) - 1, (void *)body, MHD_RESPMEM_PERSISTENT);
    ret = MHD_queue_response(c, MHD_HTTP_OK, r);
    MHD_destroy_response(r);
    return ret;
}

static struct MHD_Daemon *start_with(unsigned poller, unsigned limit) {
    struct MHD_Daemon *d = MHD_start_daemon(
        MHD_USE_INTERNAL_POLLING_THREAD | MHD_ALLOW_SUSPEND_RESUME | poller, 0, NULL, NULL, handler,
        NULL, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)3600, MHD_OPTION_CONNECTION_LIMIT,
        limit, MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)6144, MHD_OPTION_END);
    ASSERT(d != NULL);
    return d;
}

static struct MHD_Daemon *start(unsigned poller) {
    return start_with(poller, 16);
}

static int connect_to(struct MHD_Daemon *d) {
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    int s = socket(AF_INET, SOCK_STREAM, 0);

    ASSERT(info != NULL && s >= 0);
    a.sin_port = htons(info->port);
    ASSERT(connect(s, (struct sockaddr *)&a, sizeof(a)) == 0);
    return s;
}

static long now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

/* Reads until the server closes or the deadline (now_ms()) passes: true
 * when it closed. */
static bool read_until_closed_by(int s, char *buf, size_t size, long deadline) {
    size_t n = 0;

    for (;;) {
        struct pollfd p = { .fd = s, .events = POLLIN };
        long left = deadline - now_ms();
        ssize_t k;

        if (left <= 0 || poll(&p, 1, (int)left) <= 0) {
            buf[n] = '\0';
            return false;
        }
        k = read(s, buf + n, size - 1 - n);
        if (k <= 0 || n + (size_t)k >= size - 1) {
            n += k > 0 ? (size_t)k : 0;
            buf[n] = '\0';
            return k <= 0;
        }
        n += (size_t)k;
    }
}

static bool read_until_closed(int s, char *buf, size_t size, int ms) {
    return read_until_closed_by(s, buf, size, now_ms() + ms);
}

/* Reads until an answer's body ({"ok":1}) has come, the server closes or
 * the deadline (now_ms()) passes: true when the answer came. */
static bool read_answer_by(int s, char *buf, size_t size, long deadline) {
    size_t n = 0;

    buf[0] = '\0';
    while (!strstr(buf, "{\"ok\":1}") && n < size - 1) {
        struct pollfd p = { .fd = s, .events = POLLIN };
        long left = deadline - now_ms();
        ssize_t k;

        if (left <= 0 || poll(&p, 1, (int)left) <= 0)
            return false;
        k = read(s, buf + n, size - 1 - n);
        if (k <= 0)
            return false;
        n += (size_t)k;
        buf[n] = '\0';
    }
    return strstr(buf, "{\"ok\":1}") != NULL;
}

static int count(const char *s, const char *needle) {
    int n = 0;
    for (const char *p = s; (p = strstr(p, needle)) != NULL; p++)
        n++;
    return n;
}

/* Two pipelined GETs, the second asking to close: how many answers came on
 * the one connection. */
static int two_requests(bool first) {
    static const char req[] = "GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
                              "GET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    struct MHD_Daemon *d;
    char buf[4096];
    int s, n;

    atomic_store(&answer_first, first);
    d = start(MHD_USE_EPOLL);
    s = connect_to(d);
    ASSERT(write(s, req, sizeof(req) - 1) == (ssize_t)(sizeof(req) - 1));
    ASSERT(read_until_closed(s, buf, sizeof(buf), 10000));
    n = count(buf, "HTTP/1.1 200");
    fprintf(stderr, "libmicrohttpd %s, answer on the %s call: %d of 2 answers\n%s\n", MHD_get_version(),
            first ? "first" : "second", n, buf);
    close(s);
    MHD_stop_daemon(d);
    return n;
}

static void answer_on_the_second_call_keeps_the_connection_alive(void) {
    ASSERT_INT_EQ(two_requests(false), 2);
}

static void answer_on_the_first_call_loses_keep_alive(void) {
    /* when this fails, api.c may answer on the first call on this release */
    ASSERT_INT_EQ(two_requests(true), 1);
}

static void nul_in_the_request_target(void) {
    static const char req[] = "GET /v1/token?user_id=a\0b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    struct MHD_Daemon *d;
    char buf[4096];
    bool closed;
    int s;

    atomic_store(&answer_first, false);
    seen_url[0] = '\0';
    d = start(MHD_USE_EPOLL);
    s = connect_to(d);
    ASSERT(write(s, req, sizeof(req) - 1) == (ssize_t)(sizeof(req) - 1));
    closed = read_until_closed(s, buf, sizeof(buf), 10000);
    fprintf(stderr, "libmicrohttpd %s: \"%.12s\", the handler saw \"%s\"\n", MHD_get_version(), buf,
            seen_url);
    ASSERT(closed);
#if MHD_VERSION < 0x01000000
    /* served, cut at the NUL: test_strict_http's strict expected failure */
    ASSERT_STARTS_WITH(buf, "HTTP/1.1 200");
    ASSERT_STR_EQ(seen_url, "/v1/token");
#else
    /* dropped before any handler runs: 1.0.1 closes without an answer */
    ASSERT(strncmp(buf, "HTTP/1.1 200", 12) != 0);
    ASSERT_STR_EQ(seen_url, "");
#endif
    close(s);
    MHD_stop_daemon(d);
}

/* n keep-alive connections, each answered once; then the polling thread is
 * held in a handler for 500 ms while each of the n sends one more request,
 * so that they are all ready at its next turn: how many of those are
 * answered within 3 s (the idle timeout is an hour). */
static int burst_answered(unsigned poller, int n) {
    static const char req[] = "GET /a HTTP/1.1\r\nHost: x\r\n\r\n";
    static const char block[] = "GET /block HTTP/1.1\r\nHost: x\r\n\r\n";
    struct MHD_Daemon *d;
    int s[200], blocker, answered = 0;
    long deadline;
    char buf[512];

    ASSERT(n <= 200);
    atomic_store(&answer_first, false);
    atomic_store(&blocking, false);
    d = start_with(poller, 256);
    blocker = connect_to(d);
    for (int i = 0; i < n; i++) {
        s[i] = connect_to(d);
        ASSERT(write(s[i], req, sizeof(req) - 1) == (ssize_t)(sizeof(req) - 1));
        ASSERT(read_answer_by(s[i], buf, sizeof(buf), now_ms() + 5000));
    }
    ASSERT(write(blocker, block, sizeof(block) - 1) == (ssize_t)(sizeof(block) - 1));
    deadline = now_ms() + 5000;
    while (!atomic_load(&blocking) && now_ms() < deadline)
        sched_yield();
    ASSERT(atomic_load(&blocking));
    for (int i = 0; i < n; i++)
        ASSERT(write(s[i], req, sizeof(req) - 1) == (ssize_t)(sizeof(req) - 1));
    deadline = now_ms() + 3000;
    for (int i = 0; i < n; i++) {
        answered += read_answer_by(s[i], buf, sizeof(buf), deadline);
        close(s[i]);
    }
    fprintf(stderr, "libmicrohttpd %s with %s: %d of %d requests of a burst answered\n", MHD_get_version(),
            poller == MHD_USE_EPOLL ? "epoll" : "poll", answered, n);
    close(blocker);
    MHD_stop_daemon(d);
    return answered;
}

static void a_burst_is_answered_with_poll(void) {
    for (int n = 126; n <= 130; n++)
        ASSERT_INT_EQ(burst_answered(MHD_USE_POLL, n), n);
}

/* Part of a request, then the client's FIN at once, on 20 connections:
 * how many the server has not closed by ms later (the idle timeout is an
 * hour). Whether the FIN is read with the data is a race, hence 20. */
static int half_open_requests_left_open(unsigned poller, int ms) {
    static const char req[] = "GET /v1/token?user_id=gone HTTP/1.1\r\nHost: x\r\n";
    struct MHD_Daemon *d;
    int s[20], open = 0;
    long deadline;
    char buf[256];

    atomic_store(&answer_first, false);
    d = start(poller);
    for (size_t i = 0; i < 20; i++) {
        s[i] = connect_to(d);
        ASSERT(write(s[i], req, sizeof(req) - 1) == (ssize_t)(sizeof(req) - 1));
        ASSERT(shutdown(s[i], SHUT_WR) == 0);
    }
    deadline = now_ms() + ms;
    for (size_t i = 0; i < 20; i++) {
        open += !read_until_closed_by(s[i], buf, sizeof(buf), deadline);
        close(s[i]);
    }
    fprintf(stderr, "libmicrohttpd %s with %s: %d of 20 connections still open after %d ms\n",
            MHD_get_version(), poller == MHD_USE_EPOLL ? "epoll" : "poll", open, ms);
    MHD_stop_daemon(d);
    return open;
}

static void half_open_requests_are_closed_with_poll(void) {
    ASSERT_INT_EQ(half_open_requests_left_open(MHD_USE_POLL, 10000), 0);
}

static void half_open_requests_are_kept_with_epoll(void) {
    int kept = 0;

    /* when this fails, test_strict_http's strict expected failure for clients
     * that leave mid-request passes on this release. A round where every
     * FIN came with its data keeps none (seen once in 20 connections on a
     * busy machine): up to five rounds, so only a library that closes them
     * all, every time, fails this. */
    for (int round = 0; round < 5 && !kept; round++)
        kept = half_open_requests_left_open(MHD_USE_EPOLL, 3000);
    ASSERT(kept > 0);
}

/* Whole requests, each followed by the client's FIN, on 5 connections while
 * the server holds them suspended and another connection is open (idle):
 * how many were answered. Without the other connection they are answered. */
static int half_closed_suspended_requests_answered(unsigned poller) {
    static const char req[] = "GET /v1/token?user_id=half HTTP/1.1\r\nHost: x\r\n\r\n";
    struct MHD_Daemon *d;
    char buf[512];
    int answered = 0, idle;

    atomic_store(&answer_first, false);
    atomic_store(&suspend_second, true);
    d = start(poller);
    idle = connect_to(d);
    for (int i = 0; i < 5; i++) {
        int s = connect_to(d);
        ASSERT(write(s, req, sizeof(req) - 1) == (ssize_t)(sizeof(req) - 1));
        ASSERT(shutdown(s, SHUT_WR) == 0);
        read_until_closed(s, buf, sizeof(buf), 5000);
        answered += strncmp(buf, "HTTP/1.1 200", 12) == 0;
        close(s);
    }
    fprintf(stderr, "libmicrohttpd %s with %s: %d of 5 half-closed suspended requests answered\n",
            MHD_get_version(), poller == MHD_USE_EPOLL ? "epoll" : "poll", answered);
    atomic_store(&suspend_second, false);
    close(idle);
    MHD_stop_daemon(d);
    return answered;
}

static void half_closed_suspended_requests_are_dropped(void) {
    /* when this fails, test_strict_http's strict expected failure for clients
     * that half-close on a miss passes on this release */
    ASSERT_INT_EQ(half_closed_suspended_requests_answered(MHD_USE_EPOLL), 0);
    ASSERT_INT_EQ(half_closed_suspended_requests_answered(MHD_USE_POLL), 0);
}

static const unit_test tests[] = {
    TEST(answer_on_the_second_call_keeps_the_connection_alive),
    TEST(answer_on_the_first_call_loses_keep_alive),
    TEST(nul_in_the_request_target),
    TEST(a_burst_is_answered_with_poll),
    TEST(half_open_requests_are_closed_with_poll),
    TEST(half_open_requests_are_kept_with_epoll),
    TEST(half_closed_suspended_requests_are_dropped),
};

UNIT_MAIN(tests)
