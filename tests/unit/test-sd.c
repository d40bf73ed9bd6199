/* Unit tests of src/sd.c: what tokend says to systemd and takes from it.
 * The service manager is played by the test: a datagram socket named by
 * NOTIFY_SOCKET receives the notifications (and, for the fd store, the
 * descriptors and the barrier), descriptors are passed the way systemd
 * passes them (from fd 3, with LISTEN_FDS, LISTEN_PID and LISTEN_FDNAMES),
 * and the watchdog's probe talks to a small HTTP server of the test's own
 * on loopback. Every case runs in a process of its own. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stddef.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>

#include "sd.h"
#include "unit.h"

#define DEADLINE_MS 10000 /* for what has been sent already: never reached when all is well */

static char dir[] = "/tmp/tokend-test-sd-XXXXXX";

static void remove_dir(void) {
    char p[sizeof(dir) + 32];

    snprintf(p, sizeof(p), "%s/notify", dir);
    unlink(p);
    snprintf(p, sizeof(p), "%s/http", dir);
    unlink(p);
    rmdir(dir);
}

static void make_dir(void) {
    ASSERT(mkdtemp(dir));
    atexit(remove_dir);
}

/* ---- the service manager's notification socket ---- */

/* Binds a datagram socket and names it in NOTIFY_SOCKET. */
static int manager(void) {
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);

    ASSERT(fd >= 0);
    make_dir();
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/notify", dir);
    ASSERT_INT_EQ(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    ASSERT_INT_EQ(setenv("NOTIFY_SOCKET", sa.sun_path, 1), 0);
    return fd;
}

/* One notification, and the descriptors that came with it (up to 4). */
static size_t receive(int sock, char *buf, size_t size, int *fds, size_t *n_fds) {
    union {
        struct cmsghdr h;
        char b[CMSG_SPACE(4 * sizeof(int))];
    } control;
    struct iovec iov = { buf, size - 1 };
    struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = &control,
                         .msg_controllen = sizeof(control) };
    struct pollfd p = { .fd = sock, .events = POLLIN };
    ssize_t n;

    ASSERT_INT_EQ(poll(&p, 1, DEADLINE_MS), 1);
    n = recvmsg(sock, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    ASSERT(n >= 0);
    ASSERT(!(mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC)));
    buf[n] = '\0';
    if (n_fds)
        *n_fds = 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
            continue;
        ASSERT(fds && n_fds);
        *n_fds = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        memcpy(fds, CMSG_DATA(c), *n_fds * sizeof(int));
    }
    return (size_t)n;
}

static void expect(int sock, const char *message) {
    char buf[1024];

    receive(sock, buf, sizeof(buf), NULL, NULL);
    ASSERT_STR_EQ(buf, message);
}

static void nothing_more(int sock) {
    char b[16];

    ASSERT(recv(sock, b, sizeof(b), MSG_DONTWAIT) < 0 && errno == EAGAIN);
}

static void without_a_manager_nothing_is_said(void) {
    unsetenv("NOTIFY_SOCKET");
    ASSERT(!systemd_notifying());
    ASSERT_INT_EQ(systemd_ready("Serving"), 0);
    ASSERT_INT_EQ(systemd_reloading(), 0);
    ASSERT_INT_EQ(systemd_status("x"), 0);
    ASSERT_INT_EQ(systemd_stopping("x"), 0);
    ASSERT_INT_EQ(systemd_watchdog_ping(), 0);
    ASSERT_INT_EQ(systemd_store_fd(0, SYSTEMD_FDNAME_CACHE, 100), 0);
    ASSERT_INT_EQ(systemd_store_remove(SYSTEMD_FDNAME_CACHE), 0);
    /* set but empty: the same */
    setenv("NOTIFY_SOCKET", "", 1);
    ASSERT(!systemd_notifying());
    ASSERT_INT_EQ(systemd_ready("Serving"), 0);
}

static void each_notification_says_what_it_means(void) {
    int m = manager();

    ASSERT(systemd_notifying());
    ASSERT(systemd_ready("Serving on 127.0.0.1:8787") > 0);
    expect(m, "READY=1\nSTATUS=Serving on 127.0.0.1:8787");
    ASSERT(systemd_status("Instacart unreachable") > 0);
    expect(m, "STATUS=Instacart unreachable");
    ASSERT(systemd_watchdog_ping() > 0);
    expect(m, "WATCHDOG=1");
    ASSERT(systemd_stopping("Stopping: finishing requests in flight") > 0);
    expect(m, "STOPPING=1\nSTATUS=Stopping: finishing requests in flight");
    ASSERT(systemd_store_remove(SYSTEMD_FDNAME_CACHE) > 0);
    expect(m, "FDSTOREREMOVE=1\nFDNAME=cache");
    nothing_more(m);
}

static uint64_t monotonic_usec(void) {
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

/* Type=notify-reload (systemd 253+) tells one reload from another by
 * MONOTONIC_USEC: CLOCK_MONOTONIC in µs at the time it was sent. */
static void reloading_carries_the_monotonic_time(void) {
    int m = manager();
    char buf[256];
    unsigned long long usec;
    uint64_t before, after;
    int n = 0;

    before = monotonic_usec();
    ASSERT(systemd_reloading() > 0);
    after = monotonic_usec();
    receive(m, buf, sizeof(buf), NULL, NULL);
    ASSERT_INT_EQ(sscanf(buf, "RELOADING=1\nSTATUS=Reloading the configuration\nMONOTONIC_USEC=%llu%n", &usec,
                         &n), 1);
    ASSERT_INT_EQ(buf[n], '\0');
    ASSERT(usec >= before && usec <= after);
}

/* An abstract socket ("@name"), as systemd --user and containers use. */
static void an_abstract_notify_socket(void) {
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    char name[64];
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    socklen_t len;

    ASSERT(fd >= 0);
    snprintf(name, sizeof(name), "tokend-test-notify-%d", (int)getpid());
    memcpy(sa.sun_path + 1, name, strlen(name));
    len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + strlen(name));
    ASSERT_INT_EQ(bind(fd, (struct sockaddr *)&sa, len), 0);
    snprintf(sa.sun_path, sizeof(sa.sun_path), "@%s", name);
    setenv("NOTIFY_SOCKET", sa.sun_path, 1);
    ASSERT(systemd_ready("Serving") > 0);
    expect(fd, "READY=1\nSTATUS=Serving");
}

/* A manager that is gone: the error comes back to the caller (who may
 * log it), not a silent success. */
static void an_unreachable_manager_is_an_error(void) {
    make_dir();
    {
        char p[sizeof(dir) + 16];
        snprintf(p, sizeof(p), "%s/notify", dir);
        setenv("NOTIFY_SOCKET", p, 1);
    }
    ASSERT(systemd_notifying());
    ASSERT(systemd_ready("Serving") < 0);
    ASSERT(systemd_watchdog_ping() < 0);
}

/* ---- the fd store ---- */

struct store_manager {
    int sock;
    char message[256];
    int fd;          /* the stored descriptor, as the manager holds it */
    bool barrier;    /* a BARRIER=1 came, its descriptor closed */
};

/* Plays systemd: takes FDSTORE=1 with its descriptor, then answers the
 * barrier by closing the descriptor that came with it. */
static void *store_manager_run(void *arg) {
    struct store_manager *sm = arg;
    char buf[256];
    int fds[4];
    size_t n;

    receive(sm->sock, sm->message, sizeof(sm->message), fds, &n);
    ASSERT_UINT_EQ(n, 1);
    sm->fd = fds[0];
    receive(sm->sock, buf, sizeof(buf), fds, &n);
    ASSERT_STR_EQ(buf, "BARRIER=1");
    ASSERT_UINT_EQ(n, 1);
    /* said before the close: the close is what lets systemd_store_fd return */
    __atomic_store_n(&sm->barrier, true, __ATOMIC_RELEASE);
    close(fds[0]);
    return NULL;
}

/* The cache image goes to the store under its name; the call returns only
 * once the manager has read it (the barrier), so an exit right after
 * cannot lose it. */
static void store_hands_over_the_descriptor(void) {
    struct store_manager sm = { .sock = manager(), .fd = -1 };
    int image = memfd_create("image", MFD_CLOEXEC);
    struct stat a, b;
    char got[16] = { 0 };
    pthread_t th;

    ASSERT(image >= 0);
    ASSERT(write(image, "cache image", 11) == 11);
    ASSERT_INT_EQ(pthread_create(&th, NULL, store_manager_run, &sm), 0);
    ASSERT_INT_EQ(systemd_store_fd(image, SYSTEMD_FDNAME_CACHE, DEADLINE_MS), 1);
    ASSERT(__atomic_load_n(&sm.barrier, __ATOMIC_ACQUIRE)); /* returned after the barrier, not before */
    ASSERT_INT_EQ(pthread_join(th, NULL), 0);
    ASSERT_STR_EQ(sm.message, "FDSTORE=1\nFDNAME=cache");
    /* the same open file: what tokend wrote, the next start reads */
    ASSERT_INT_EQ(fstat(image, &a), 0);
    ASSERT_INT_EQ(fstat(sm.fd, &b), 0);
    ASSERT(a.st_dev == b.st_dev && a.st_ino == b.st_ino);
    ASSERT_INT_EQ(pread(sm.fd, got, sizeof(got) - 1, 0), 11);
    ASSERT_STR_EQ(got, "cache image");
    /* the caller keeps its own descriptor */
    ASSERT(fcntl(image, F_GETFD) >= 0);
    close(sm.fd);
    close(image);
}

/* A manager that never reads: the store says it could not confirm, within
 * the time given, rather than hanging the stop or claiming success. */
static void store_without_an_answer_times_out(void) {
    int m = manager();
    int image = memfd_create("image", MFD_CLOEXEC);
    int r;

    ASSERT(image >= 0);
    r = systemd_store_fd(image, SYSTEMD_FDNAME_CACHE, 200);
    ASSERT_INT_EQ(r, -ETIMEDOUT);
    close(image);
    close(m);
}

/* ---- the watchdog interval ---- */

static void watchdog_interval_is_ours_only(void) {
    char pid[32];

    snprintf(pid, sizeof(pid), "%d", (int)getpid());
    unsetenv("WATCHDOG_USEC");
    unsetenv("WATCHDOG_PID");
    ASSERT_UINT_EQ(systemd_watchdog_usec(), 0);
    setenv("WATCHDOG_USEC", "30000000", 1);
    setenv("WATCHDOG_PID", pid, 1);
    ASSERT_UINT_EQ(systemd_watchdog_usec(), 30000000);
    /* without WATCHDOG_PID: ours */
    unsetenv("WATCHDOG_PID");
    ASSERT_UINT_EQ(systemd_watchdog_usec(), 30000000);
    /* inherited from a parent the watchdog was meant for */
    setenv("WATCHDOG_PID", "1", 1);
    ASSERT_UINT_EQ(systemd_watchdog_usec(), 0);
    setenv("WATCHDOG_PID", pid, 1);
    setenv("WATCHDOG_USEC", "soon", 1);
    ASSERT_UINT_EQ(systemd_watchdog_usec(), 0);
    setenv("WATCHDOG_USEC", "0", 1);
    ASSERT_UINT_EQ(systemd_watchdog_usec(), 0);
}

/* ---- descriptors passed at start ---- */

#define PASSED_MAX 8

/* Places fds at 3, 4, ... and says so as systemd would. names: NULL for
 * no LISTEN_FDNAMES, else "a:b:c". */
static void pass(const int *fds, size_t n, const char *names) {
    int high[PASSED_MAX];
    char v[32];

    ASSERT(n <= PASSED_MAX);
    for (size_t i = 0; i < n; i++) {
        high[i] = fcntl(fds[i], F_DUPFD, 100);
        ASSERT(high[i] >= 100);
        close(fds[i]);
    }
    for (size_t i = 0; i < n; i++) {
        ASSERT(dup2(high[i], 3 + (int)i) == 3 + (int)i); /* without close-on-exec, as passed */
        close(high[i]);
    }
    snprintf(v, sizeof(v), "%zu", n);
    setenv("LISTEN_FDS", v, 1);
    snprintf(v, sizeof(v), "%d", (int)getpid());
    setenv("LISTEN_PID", v, 1);
    if (names)
        setenv("LISTEN_FDNAMES", names, 1);
    else
        unsetenv("LISTEN_FDNAMES");
}

static bool is_open(int fd) {
    return fcntl(fd, F_GETFD) >= 0;
}

static bool close_on_exec(int fd) {
    return (fcntl(fd, F_GETFD) & FD_CLOEXEC) != 0;
}

static int tcp_listener(void) {
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    ASSERT(fd >= 0);
    ASSERT_INT_EQ(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    ASSERT_INT_EQ(listen(fd, 16), 0);
    return fd;
}

/* In the case's directory (make_dir() first). */
static int unix_listener(const char *name) {
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

    ASSERT(fd >= 0);
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/%s", dir, name);
    ASSERT_INT_EQ(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    ASSERT_INT_EQ(listen(fd, 16), 0);
    return fd;
}

static int memfd(const char *content) {
    int fd = memfd_create("image", MFD_CLOEXEC);

    ASSERT(fd >= 0);
    ASSERT(write(fd, content, strlen(content)) == (ssize_t)strlen(content));
    return fd;
}

static void nothing_passed_nothing_taken(void) {
    int l = 7, c = 7;

    unsetenv("LISTEN_FDS");
    unsetenv("LISTEN_PID");
    ASSERT_INT_EQ(systemd_take_fds(&l, &c), 0);
    ASSERT_INT_EQ(l, -1);
    ASSERT_INT_EQ(c, -1);
}

/* The socket and the cache image from the store, as a restart under
 * systemd hands them over; the variables are unset so no child sees them. */
static void takes_the_socket_and_the_cache(void) {
    int fds[2] = { tcp_listener(), memfd("img") };
    int l = -1, c = -1;
    char got[8] = { 0 };

    pass(fds, 2, "instacart-tokend.socket:cache");
    ASSERT_INT_EQ(systemd_take_fds(&l, &c), 2);
    ASSERT_INT_EQ(l, 3);
    ASSERT_INT_EQ(c, 4);
    ASSERT(close_on_exec(3));
    ASSERT(close_on_exec(4));
    ASSERT_INT_EQ(pread(c, got, sizeof(got) - 1, 0), 3);
    ASSERT_STR_EQ(got, "img");
    ASSERT(!getenv("LISTEN_FDS"));
    ASSERT(!getenv("LISTEN_PID"));
    ASSERT(!getenv("LISTEN_FDNAMES"));
    /* taken once: a second call finds nothing */
    ASSERT_INT_EQ(systemd_take_fds(&l, &c), 0);
    ASSERT_INT_EQ(l, -1);
}

/* Without names (a plain .socket unit) the listening socket is still found,
 * and an AF_UNIX stream socket does as well as TCP. */
static void a_unix_socket_without_names(void) {
    int fds[1];
    int l = -1, c = -1;

    make_dir();
    fds[0] = unix_listener("http");
    pass(fds, 1, NULL);
    ASSERT_INT_EQ(systemd_take_fds(&l, &c), 1);
    ASSERT_INT_EQ(l, 3);
    ASSERT_INT_EQ(c, -1);
}

/* Descriptors passed for another process (LISTEN_PID not ours) are not
 * touched: they are not ours to close. */
static void another_processs_descriptors_are_left_alone(void) {
    int fds[1] = { tcp_listener() };
    int l = 7, c = 7;

    pass(fds, 1, "x");
    setenv("LISTEN_PID", "1", 1);
    ASSERT_INT_EQ(systemd_take_fds(&l, &c), 0);
    ASSERT_INT_EQ(l, -1);
    ASSERT_INT_EQ(c, -1);
    ASSERT(is_open(3));
}

/* The store may hold several images named "cache" (a stop that stored
 * twice): the last is the newest, the others are closed. */
static void the_last_cache_image_wins(void) {
    int fds[3] = { memfd("old"), memfd("mid"), memfd("new") };
    int l = -1, c = -1;
    char got[8] = { 0 };

    pass(fds, 3, "cache:cache:cache");
    ASSERT_INT_EQ(systemd_take_fds(&l, &c), 3);
    ASSERT_INT_EQ(c, 5);
    ASSERT_INT_EQ(pread(c, got, sizeof(got) - 1, 0), 3);
    ASSERT_STR_EQ(got, "new");
    ASSERT(!is_open(3));
    ASSERT(!is_open(4));
    ASSERT_INT_EQ(l, -1);
}

static int capture_begin(int *saved) {
    int fd = memfd_create("stderr", MFD_CLOEXEC);

    ASSERT(fd >= 0);
    fflush(stderr);
    *saved = dup(STDERR_FILENO);
    ASSERT(dup2(fd, STDERR_FILENO) == STDERR_FILENO);
    return fd;
}

static void capture_end(int fd, int saved, char *buf, size_t size) {
    ssize_t n;

    fflush(stderr);
    ASSERT(dup2(saved, STDERR_FILENO) == STDERR_FILENO);
    close(saved);
    n = pread(fd, buf, size - 1, 0);
    ASSERT(n >= 0);
    buf[n] = '\0';
    close(fd);
}

/* Anything but one listening stream socket and the images: closed, each
 * with a warning naming it, so a unit file's mistake shows in the log. */
static void anything_else_is_closed_with_a_warning(void) {
    int dgram = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    int unlistened = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int fds[5] = { dgram, unlistened, tcp_listener(), tcp_listener(), memfd("x") };
    int l = -1, c = -1, saved, cap;
    char log[4096];

    ASSERT(dgram >= 0 && unlistened >= 0);
    pass(fds, 5, "metrics:idle:http:second:notes");
    cap = capture_begin(&saved);
    ASSERT_INT_EQ(systemd_take_fds(&l, &c), 5);
    capture_end(cap, saved, log, sizeof(log));
    ASSERT_INT_EQ(l, 5);  /* the first listening one */
    ASSERT_INT_EQ(c, -1);
    ASSERT(!is_open(3));
    ASSERT(!is_open(4));
    ASSERT(is_open(5));
    ASSERT(!is_open(6));
    ASSERT(!is_open(7));
    ASSERT_CONTAINS(log, "ignoring descriptor 3 named 'metrics'");
    ASSERT_CONTAINS(log, "ignoring descriptor 4 named 'idle'");
    ASSERT_CONTAINS(log, "ignoring descriptor 6 named 'second'");
    ASSERT_CONTAINS(log, "ignoring descriptor 7 named 'notes'");
    ASSERT_NOT_CONTAINS(log, "'http'");
}

static void unusable_variables_are_ignored_with_a_warning(void) {
    int l = 7, c = 7, saved, cap, r;
    char pid[32], log[1024];

    snprintf(pid, sizeof(pid), "%d", (int)getpid());
    setenv("LISTEN_PID", pid, 1);
    setenv("LISTEN_FDS", "two", 1);
    cap = capture_begin(&saved);
    r = systemd_take_fds(&l, &c);
    capture_end(cap, saved, log, sizeof(log));
    ASSERT(r < 0);
    ASSERT_INT_EQ(l, -1);
    ASSERT_INT_EQ(c, -1);
    ASSERT_CONTAINS(log, "systemd passed unusable descriptors (LISTEN_FDS)");
}

/* ---- the watchdog's probe of our own HTTP server ---- */

enum answer_how { ANSWER_WHOLE, ANSWER_BYTE_BY_BYTE, ANSWER_CLOSE, ANSWER_NEVER };

struct http_server {
    int fd;
    enum answer_how how;
    const char *answer;
    char request[1024];
};

static void *http_server_run(void *arg) {
    struct http_server *s = arg;
    struct pollfd p = { .fd = s->fd, .events = POLLIN };
    size_t got = 0;
    int c;

    ASSERT_INT_EQ(poll(&p, 1, DEADLINE_MS), 1);
    c = accept4(s->fd, NULL, NULL, SOCK_CLOEXEC);
    ASSERT(c >= 0);
    while (!strstr(s->request, "\r\n\r\n")) {
        ssize_t n;

        p = (struct pollfd){ .fd = c, .events = POLLIN };
        ASSERT_INT_EQ(poll(&p, 1, DEADLINE_MS), 1);
        n = recv(c, s->request + got, sizeof(s->request) - 1 - got, 0);
        ASSERT(n > 0);
        got += (size_t)n;
        s->request[got] = '\0';
    }
    switch (s->how) {
    case ANSWER_WHOLE:
        ASSERT(send(c, s->answer, strlen(s->answer), MSG_NOSIGNAL) == (ssize_t)strlen(s->answer));
        break;
    case ANSWER_BYTE_BY_BYTE:
        for (const char *a = s->answer; *a; a++) {
            struct timespec pause = { 0, 1000000 };
            ASSERT(send(c, a, 1, MSG_NOSIGNAL) == 1);
            nanosleep(&pause, NULL); /* so the bytes arrive apart; not a wait on anything */
        }
        break;
    case ANSWER_CLOSE:
        break;
    case ANSWER_NEVER: {
        /* until the probe gives up and closes */
        char b[16];
        p = (struct pollfd){ .fd = c, .events = POLLIN };
        ASSERT_INT_EQ(poll(&p, 1, DEADLINE_MS), 1);
        ASSERT_INT_EQ(recv(c, b, sizeof(b), 0), 0);
        break;
    }
    }
    close(c);
    return NULL;
}

static int probe_with(int listener, const char *address, enum answer_how how, const char *answer,
                      uint64_t timeout_ms, char *request, size_t request_size) {
    struct http_server s = { .fd = listener, .how = how, .answer = answer };
    pthread_t th;
    int r;

    ASSERT_INT_EQ(pthread_create(&th, NULL, http_server_run, &s), 0);
    r = systemd_probe_http(address, timeout_ms);
    ASSERT_INT_EQ(pthread_join(th, NULL), 0);
    if (request)
        snprintf(request, request_size, "%s", s.request);
    close(listener);
    return r;
}

static int probe(enum answer_how how, const char *answer, uint64_t timeout_ms) {
    int l = tcp_listener();
    struct sockaddr_in a;
    socklen_t len = sizeof(a);
    char address[64];

    ASSERT_INT_EQ(getsockname(l, (struct sockaddr *)&a, &len), 0);
    snprintf(address, sizeof(address), "127.0.0.1:%u", (unsigned)ntohs(a.sin_port));
    return probe_with(l, address, how, answer, timeout_ms, NULL, 0);
}

static void probe_wants_a_200(void) {
    int l = tcp_listener();
    struct sockaddr_in a;
    socklen_t len = sizeof(a);
    char address[64], request[1024];

    ASSERT_INT_EQ(getsockname(l, (struct sockaddr *)&a, &len), 0);
    snprintf(address, sizeof(address), "127.0.0.1:%u", (unsigned)ntohs(a.sin_port));
    ASSERT_INT_EQ(probe_with(l, address, ANSWER_WHOLE, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
                             DEADLINE_MS, request, sizeof(request)),
                  0);
    ASSERT_STARTS_WITH(request, "GET /healthz HTTP/1.1\r\n");
    ASSERT_CONTAINS(request, "\r\nHost: localhost\r\n");
    ASSERT_INT_EQ(probe(ANSWER_WHOLE, "HTTP/1.0 200 OK\r\n\r\n", DEADLINE_MS), 0);
    /* a status line that arrives in pieces is read whole (the probe stops
     * reading at "HTTP/1.1 200 ": no more is sent, or it would hit a
     * closed socket) */
    ASSERT_INT_EQ(probe(ANSWER_BYTE_BY_BYTE, "HTTP/1.1 200 ", DEADLINE_MS), 0);
}

static void probe_refuses_anything_but_a_200(void) {
    ASSERT_INT_EQ(probe(ANSWER_WHOLE, "HTTP/1.1 503 Service Unavailable\r\n\r\n", DEADLINE_MS), -EPROTO);
    ASSERT_INT_EQ(probe(ANSWER_WHOLE, "HTTP/1.1 2000 OK\r\n\r\n", DEADLINE_MS), -EPROTO);
    ASSERT_INT_EQ(probe(ANSWER_WHOLE, "HTTP/2.0 200 OK\r\n\r\n", DEADLINE_MS), -EPROTO);
    ASSERT_INT_EQ(probe(ANSWER_WHOLE, "200 OK what else do you want\r\n\r\n", DEADLINE_MS), -EPROTO);
    /* closed before a whole status line */
    ASSERT_INT_EQ(probe(ANSWER_CLOSE, NULL, DEADLINE_MS), -ECONNRESET);
    ASSERT_INT_EQ(probe(ANSWER_WHOLE, "HTTP/1.1 200", DEADLINE_MS), -ECONNRESET);
}

/* A server that takes the connection and never answers is what a wedged
 * daemon looks like: the probe gives up at its deadline. */
static void probe_gives_up_at_its_deadline(void) {
    ASSERT_INT_EQ(probe(ANSWER_NEVER, NULL, 300), -ETIMEDOUT);
}

static void probe_of_a_closed_port_is_refused(void) {
    int l = tcp_listener();
    struct sockaddr_in a;
    socklen_t len = sizeof(a);
    char address[64];

    ASSERT_INT_EQ(getsockname(l, (struct sockaddr *)&a, &len), 0);
    snprintf(address, sizeof(address), "127.0.0.1:%u", (unsigned)ntohs(a.sin_port));
    close(l);
    ASSERT_INT_EQ(systemd_probe_http(address, DEADLINE_MS), -ECONNREFUSED);
    ASSERT_INT_EQ(systemd_probe_http("not an address", DEADLINE_MS), -EINVAL);
}

/* listen = 0.0.0.0:PORT (or [::]:PORT) is probed on loopback. */
static void a_wildcard_address_is_probed_on_loopback(void) {
    int l = tcp_listener(), l6;
    struct sockaddr_in a;
    struct sockaddr_in6 a6 = { .sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT };
    socklen_t len = sizeof(a);
    char address[64];

    ASSERT_INT_EQ(getsockname(l, (struct sockaddr *)&a, &len), 0);
    snprintf(address, sizeof(address), "0.0.0.0:%u", (unsigned)ntohs(a.sin_port));
    ASSERT_INT_EQ(probe_with(l, address, ANSWER_WHOLE, "HTTP/1.1 200 OK\r\n\r\n", DEADLINE_MS, NULL, 0), 0);

    l6 = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (l6 < 0 || bind(l6, (struct sockaddr *)&a6, sizeof(a6)) < 0)
        UNIT_SKIP("no IPv6 loopback here: %s", strerror(errno));
    ASSERT_INT_EQ(listen(l6, 16), 0);
    len = sizeof(a6);
    ASSERT_INT_EQ(getsockname(l6, (struct sockaddr *)&a6, &len), 0);
    snprintf(address, sizeof(address), "[::]:%u", (unsigned)ntohs(a6.sin6_port));
    ASSERT_INT_EQ(probe_with(l6, address, ANSWER_WHOLE, "HTTP/1.1 200 OK\r\n\r\n", DEADLINE_MS, NULL, 0), 0);
}

/* listen = unix:PATH: the probe goes to the socket file. */
static void a_unix_socket_is_probed(void) {
    char address[sizeof(dir) + 32];
    int l;

    make_dir();
    l = unix_listener("http");
    snprintf(address, sizeof(address), "unix:%s/http", dir);
    ASSERT_INT_EQ(probe_with(l, address, ANSWER_WHOLE, "HTTP/1.1 200 OK\r\n\r\n", DEADLINE_MS, NULL, 0), 0);
}

static const unit_test tests[] = {
    TEST(without_a_manager_nothing_is_said),
    TEST(each_notification_says_what_it_means),
    TEST(reloading_carries_the_monotonic_time),
    TEST(an_abstract_notify_socket),
    TEST(an_unreachable_manager_is_an_error),
    TEST(store_hands_over_the_descriptor),
    TEST(store_without_an_answer_times_out),
    TEST(watchdog_interval_is_ours_only),
    TEST(nothing_passed_nothing_taken),
    TEST(takes_the_socket_and_the_cache),
    TEST(a_unix_socket_without_names),
    TEST(another_processs_descriptors_are_left_alone),
    TEST(the_last_cache_image_wins),
    TEST(anything_else_is_closed_with_a_warning),
    TEST(unusable_variables_are_ignored_with_a_warning),
    TEST(probe_wants_a_200),
    TEST(probe_refuses_anything_but_a_200),
    TEST(probe_gives_up_at_its_deadline),
    TEST(probe_of_a_closed_port_is_refused),
    TEST(a_wildcard_address_is_probed_on_loopback),
    TEST(a_unix_socket_is_probed),
};

UNIT_MAIN(tests)
