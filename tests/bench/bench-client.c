/* bench-client: the load generator of tests/bench for what wrk cannot do.
 *
 * Plain sockets and one epoll loop, no HTTP library: the client must cost
 * far less than the server it measures (its time is counted in "tokend's
 * added latency"), and "concurrent" must mean it: in burst mode every
 * connection is open before the first request is written, and then all the
 * requests are written in one tight loop.
 *
 *   bench-client burst   --port P --prefix S --users N --conns C
 *       C connections, then request i (user S<i % N>) on connection i, all
 *       at once; counts statuses and X-Cache values (coalescing; fleet mode's
 *       shared and shared-wait too).
 *   bench-client load    --port P --prefix S --first F --count N --conns C [--out FILE] [--modulo M]
 *       users S<F> .. S<F+N-1>, one request each, C connections each keeping
 *       one request outstanding (closed loop); rate and latency. --out writes
 *       "index t_send t_done status" per request, CLOCK_REALTIME seconds.
 *       --modulo M asks for user S<i % M> instead: repeated requests (hits).
 *   bench-client hold    --port P --conns C --user U --pid PID
 *       resident memory of PID before and with C open keep-alive connections
 *       that have each been answered once.
 *   bench-client startup --exe E --config F --port P --prefix S --runs R
 *       R times: exec E --config F, time to a connectable socket on P and to
 *       the first answered GET /v1/token for a new user, then SIGTERM.
 *
 * Every mode is bounded by --timeout-ms (default 60000) and prints one JSON
 * object on stdout. Exits 1 when anything failed, 2 on bad usage.
 * Talks to 127.0.0.1 only. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define BUF_SIZE 16384
#define REQ_MAX 512
#define PREFIX_MAX 128

struct opts {
    const char *mode;
    unsigned port;
    const char *prefix;
    const char *user;
    const char *out;
    const char *exe;
    const char *config;
    unsigned long users, conns, first, count, runs, modulo;
    long pid;
    long timeout_ms;
};

struct conn {
    int fd;
    bool busy;          /* a request is outstanding */
    unsigned long idx;  /* which request */
    double t_send;
    size_t len;
    char buf[BUF_SIZE];
};

struct counts {
    unsigned long ok, non200, failed, hit, miss, coalesced, shared, shared_wait, other_cache;
};

static double now_real(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double now_mono(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what) {
    fprintf(stderr, "bench-client: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void raise_nofile(void) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static struct sockaddr_in loopback(unsigned port) {
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return a;
}

/* A non-blocking socket with connect() started; -1 on an immediate error. */
static int start_connect(unsigned port) {
    struct sockaddr_in a = loopback(port);
    int one = 1;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

    if (fd < 0)
        return -1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0 && errno != EINPROGRESS) {
        close(fd);
        return -1;
    }
    return fd;
}

/* Connects n sockets and waits until every one is established (or fails). */
static int connect_all(struct conn *c, unsigned long n, unsigned port, double deadline) {
    int ep = epoll_create1(EPOLL_CLOEXEC);
    unsigned long pending = 0;

    if (ep < 0)
        die("epoll_create1");
    for (unsigned long i = 0; i < n; i++) {
        struct epoll_event ev = { .events = EPOLLOUT, .data.u64 = i };
        c[i].fd = start_connect(port);
        if (c[i].fd < 0) {
            fprintf(stderr, "bench-client: connection %lu: %s\n", i, strerror(errno));
            close(ep);
            return -1;
        }
        epoll_ctl(ep, EPOLL_CTL_ADD, c[i].fd, &ev);
        pending++;
    }
    while (pending > 0) {
        struct epoll_event evs[256];
        int left = (int)((deadline - now_mono()) * 1000);
        int k;

        if (left <= 0) {
            fprintf(stderr, "bench-client: %lu connections not established in time\n", pending);
            close(ep);
            return -1;
        }
        k = epoll_wait(ep, evs, 256, left);
        for (int e = 0; e < k; e++) {
            unsigned long i = evs[e].data.u64;
            int err = 0;
            socklen_t sl = sizeof(err);
            getsockopt(c[i].fd, SOL_SOCKET, SO_ERROR, &err, &sl);
            if (err) {
                fprintf(stderr, "bench-client: connection %lu: %s\n", i, strerror(err));
                close(ep);
                return -1;
            }
            epoll_ctl(ep, EPOLL_CTL_DEL, c[i].fd, NULL);
            pending--;
        }
    }
    close(ep);
    return 0;
}

static int format_request(char *out, size_t size, const char *prefix, unsigned long idx) {
    return snprintf(out, size,
                    "GET /v1/token?user_id=%s%lu HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    "User-Agent: tokend-bench\r\nAccept: */*\r\n\r\n",
                    prefix, idx);
}

/* One whole HTTP/1.1 response at the start of buf? 1 yes (status, total
 * length and X-Cache filled in), 0 not yet, -1 not HTTP. Content-Length is
 * required: both tokend and nginx send it. */
static int parse_response(const char *buf, size_t len, int *status, size_t *total, char *xcache,
                          size_t xcache_size) {
    const char *end = memmem(buf, len, "\r\n\r\n", 4);
    const char *p, *line;
    size_t head, body = 0;
    bool have_cl = false;

    if (!end)
        return len >= BUF_SIZE ? -1 : 0;
    head = (size_t)(end - buf) + 4;
    if (len < 12 || memcmp(buf, "HTTP/1.", 7) != 0)
        return -1;
    *status = atoi(buf + 9);
    xcache[0] = '\0';
    for (line = (const char *)memchr(buf, '\n', head) + 1; line < end; line = p + 1) {
        p = memchr(line, '\n', (size_t)(end + 2 - line));
        if (!p)
            break;
        if (strncasecmp(line, "Content-Length:", 15) == 0) {
            body = strtoul(line + 15, NULL, 10);
            have_cl = true;
        } else if (strncasecmp(line, "X-Cache:", 8) == 0) {
            const char *v = line + 8;
            size_t n;
            while (*v == ' ')
                v++;
            n = strcspn(v, "\r\n");
            if (n >= xcache_size)
                n = xcache_size - 1;
            memcpy(xcache, v, n);
            xcache[n] = '\0';
        }
    }
    if (!have_cl)
        return -1;
    if (len < head + body)
        return head + body > BUF_SIZE ? -1 : 0;
    *total = head + body;
    return 1;
}

static void count_answer(struct counts *k, int status, const char *xcache) {
    if (status == 200)
        k->ok++;
    else
        k->non200++;
    if (strcmp(xcache, "hit") == 0)
        k->hit++;
    else if (strcmp(xcache, "miss") == 0)
        k->miss++;
    else if (strcmp(xcache, "coalesced") == 0)
        k->coalesced++;
    else if (strcmp(xcache, "shared") == 0)
        k->shared++;
    else if (strcmp(xcache, "shared-wait") == 0)
        k->shared_wait++;
    else
        k->other_cache++;
}

static void print_counts(const struct counts *k) {
    printf("\"ok\":%lu,\"non200\":%lu,\"failed\":%lu,\"hit\":%lu,\"miss\":%lu,\"coalesced\":%lu,"
           "\"shared\":%lu,\"shared_wait\":%lu,\"other_cache\":%lu",
           k->ok, k->non200, k->failed, k->hit, k->miss, k->coalesced, k->shared, k->shared_wait,
           k->other_cache);
}

/* Reads what is there; returns 1 when a whole answer is in, 0 for more, -1
 * when the connection failed or closed. */
static int read_answer(struct conn *c, int *status, char *xcache, size_t xsize) {
    size_t total;

    for (;;) {
        ssize_t n = read(c->fd, c->buf + c->len, BUF_SIZE - c->len);
        int r;
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return 0;
        if (n <= 0)
            return -1;
        c->len += (size_t)n;
        r = parse_response(c->buf, c->len, status, &total, xcache, xsize);
        if (r < 0)
            return -1;
        if (r == 0)
            continue;
        /* one request outstanding per connection: nothing may follow */
        memmove(c->buf, c->buf + total, c->len - total);
        c->len -= total;
        return 1;
    }
}

/* An epoll set watching the n connections for answers (data.u64: the index). */
static int watch_all(struct conn *c, unsigned long n) {
    int ep = epoll_create1(EPOLL_CLOEXEC);

    if (ep < 0)
        die("epoll_create1");
    for (unsigned long i = 0; i < n; i++) {
        struct epoll_event ev = { .events = EPOLLIN, .data.u64 = i };
        epoll_ctl(ep, EPOLL_CTL_ADD, c[i].fd, &ev);
    }
    return ep;
}

/* One answer read off a busy connection: r is 1 (status and xcache are set)
 * or -1 (the connection failed); t_done is when it was read, wall clock. */
struct answer {
    unsigned long i;
    int r, status;
    double t_done;
    char xcache[32];
};

#define ANSWERS_MAX 256

/* Waits for the busy connections registered in ep (data.u64: the index in
 * c) until the deadline, and returns the answers completed by one wakeup,
 * each connection no longer busy; -1 once the deadline has passed. */
static int next_answers(int ep, struct conn *c, double deadline, struct answer out[ANSWERS_MAX]) {
    struct epoll_event evs[ANSWERS_MAX];
    int left = (int)((deadline - now_mono()) * 1000), n, got = 0;

    if (left <= 0)
        return -1;
    n = epoll_wait(ep, evs, ANSWERS_MAX, left);
    for (int e = 0; e < n; e++) {
        struct answer *a = &out[got];
        a->i = evs[e].data.u64;
        a->status = 0;
        if (!c[a->i].busy)
            continue;
        a->r = read_answer(&c[a->i], &a->status, a->xcache, sizeof(a->xcache));
        if (a->r == 0)
            continue;
        a->t_done = now_real();
        c[a->i].busy = false;
        got++;
    }
    return got;
}

static int write_all(int fd, const char *s, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, s, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1; /* a request is far below the socket buffer: EAGAIN is a failure */
        s += w;
        n -= (size_t)w;
    }
    return 0;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double pct(const double *sorted, unsigned long n, double p) {
    unsigned long i;
    if (n == 0)
        return 0;
    i = (unsigned long)(p / 100.0 * (double)(n - 1) + 0.5);
    return sorted[i < n ? i : n - 1];
}

/* ------------------------------------------------------------------ burst */

static int mode_burst(const struct opts *o) {
    double deadline = now_mono() + (double)o->timeout_ms / 1000.0;
    struct conn *c = calloc(o->conns, sizeof(*c));
    char (*reqs)[REQ_MAX] = calloc(o->conns, REQ_MAX);
    int *req_len = calloc(o->conns, sizeof(int));
    struct counts k = { 0 };
    unsigned long answered = 0;
    double t0, t_written, t_end;
    int ep;

    if (!c || !reqs || !req_len)
        die("calloc");
    for (unsigned long i = 0; i < o->conns; i++)
        req_len[i] = format_request(reqs[i], REQ_MAX, o->prefix, i % o->users);
    if (connect_all(c, o->conns, o->port, deadline) < 0)
        return 1;
    ep = watch_all(c, o->conns);
    /* all at once: nothing but write() between the first and the last */
    t0 = now_mono();
    for (unsigned long i = 0; i < o->conns; i++)
        if (write_all(c[i].fd, reqs[i], (size_t)req_len[i]) < 0)
            k.failed++;
        else
            c[i].busy = true;
    t_written = now_mono();
    answered = k.failed;
    while (answered < o->conns) {
        struct answer a[ANSWERS_MAX];
        int n = next_answers(ep, c, deadline, a);
        if (n < 0)
            break;
        for (int e = 0; e < n; e++) {
            answered++;
            epoll_ctl(ep, EPOLL_CTL_DEL, c[a[e].i].fd, NULL);
            if (a[e].r < 0)
                k.failed++;
            else
                count_answer(&k, a[e].status, a[e].xcache);
        }
    }
    t_end = now_mono();
    k.failed += o->conns - answered;
    printf("{\"mode\":\"burst\",\"conns\":%lu,\"users\":%lu,", o->conns, o->users);
    print_counts(&k);
    printf(",\"write_spread_us\":%.0f,\"elapsed_ms\":%.2f}\n", (t_written - t0) * 1e6,
           (t_end - t0) * 1e3);
    for (unsigned long i = 0; i < o->conns; i++)
        close(c[i].fd);
    close(ep);
    free(c);
    free(reqs);
    free(req_len);
    return k.failed || k.non200 ? 1 : 0;
}

/* ------------------------------------------------------------------- load */

static int load_send(struct conn *c, const struct opts *o, unsigned long idx) {
    char req[REQ_MAX];
    unsigned long user = o->first + idx;
    int n;

    if (o->modulo)
        user %= o->modulo;
    n = format_request(req, sizeof(req), o->prefix, user);
    c->idx = idx;
    c->busy = true;
    c->len = 0;
    c->t_send = now_real();
    return write_all(c->fd, req, (size_t)n);
}

static int reconnect(struct conn *c, unsigned port, int ep, unsigned long slot) {
    struct sockaddr_in a = loopback(port);
    struct epoll_event ev = { .events = EPOLLIN, .data.u64 = slot };
    int one = 1;

    if (c->fd >= 0) {
        epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
    }
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c->fd < 0)
        return -1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(c->fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
        close(c->fd);
        c->fd = -1;
        return -1;
    }
    fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK);
    return epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
}

static int mode_load(const struct opts *o) {
    double deadline = now_mono() + (double)o->timeout_ms / 1000.0;
    unsigned long nconns = o->conns < o->count ? o->conns : o->count;
    struct conn *c = calloc(nconns ? nconns : 1, sizeof(*c));
    double *t_send = calloc(o->count, sizeof(double));
    double *t_done = calloc(o->count, sizeof(double));
    double *lat = calloc(o->count, sizeof(double));
    short *st = calloc(o->count, sizeof(short));
    struct counts k = { 0 };
    unsigned long next = 0, finished = 0, nlat = 0;
    double t0, t1;
    int ep;

    if (!c || !t_send || !t_done || !lat || !st)
        die("calloc");
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0)
        die("epoll_create1");
    for (unsigned long i = 0; i < nconns; i++) {
        c[i].fd = -1;
        if (reconnect(&c[i], o->port, ep, i) < 0)
            die("connect");
    }
    t0 = now_mono();
    for (unsigned long i = 0; i < nconns; i++, next++)
        if (load_send(&c[i], o, next) < 0)
            die("write");
    while (finished < o->count) {
        struct answer a[ANSWERS_MAX];
        int n = next_answers(ep, c, deadline, a);
        if (n < 0)
            break;
        for (int e = 0; e < n; e++) {
            unsigned long i = a[e].i;
            int status = a[e].status;
            finished++;
            t_send[c[i].idx] = c[i].t_send;
            t_done[c[i].idx] = a[e].t_done;
            if (a[e].r < 0) {
                k.failed++;
                st[c[i].idx] = -1;
                if (reconnect(&c[i], o->port, ep, i) < 0)
                    die("reconnect");
            } else {
                st[c[i].idx] = (short)status;
                count_answer(&k, status, a[e].xcache);
                lat[nlat++] = t_done[c[i].idx] - c[i].t_send;
            }
            if (next < o->count) {
                if (load_send(&c[i], o, next) < 0) {
                    k.failed++;
                    finished++;
                    st[next] = -1;
                    c[i].busy = false;
                    if (reconnect(&c[i], o->port, ep, i) < 0)
                        die("reconnect");
                }
                next++;
            }
        }
    }
    t1 = now_mono();
    k.failed += o->count - finished;
    qsort(lat, nlat, sizeof(double), cmp_double);
    printf("{\"mode\":\"load\",\"count\":%lu,\"conns\":%lu,", o->count, nconns);
    print_counts(&k);
    printf(",\"elapsed_s\":%.4f,\"rate\":%.1f,\"p50_us\":%.1f,\"p90_us\":%.1f,\"p99_us\":%.1f,"
           "\"max_us\":%.1f}\n",
           t1 - t0, (double)finished / (t1 - t0), pct(lat, nlat, 50) * 1e6, pct(lat, nlat, 90) * 1e6,
           pct(lat, nlat, 99) * 1e6, nlat ? lat[nlat - 1] * 1e6 : 0.0);
    if (o->out) {
        FILE *f = fopen(o->out, "w");
        if (!f)
            die(o->out);
        for (unsigned long i = 0; i < o->count; i++)
            fprintf(f, "%lu %.6f %.6f %d\n", o->first + i, t_send[i], t_done[i], st[i]);
        if (fclose(f) != 0)
            die(o->out);
    }
    for (unsigned long i = 0; i < nconns; i++)
        if (c[i].fd >= 0)
            close(c[i].fd);
    close(ep);
    free(c);
    free(t_send);
    free(t_done);
    free(lat);
    free(st);
    return k.failed || k.non200 ? 1 : 0;
}

/* ------------------------------------------------------------------- hold */

static long rss_kb(long pid) {
    char path[64], line[256];
    long kb = -1;
    FILE *f;

    snprintf(path, sizeof(path), "/proc/%ld/status", pid);
    f = fopen(path, "r");
    if (!f)
        return -1;
    while (fgets(line, sizeof(line), f))
        if (strncmp(line, "VmRSS:", 6) == 0)
            kb = strtol(line + 6, NULL, 10);
    fclose(f);
    return kb;
}

static int mode_hold(const struct opts *o) {
    long before = rss_kb(o->pid), after;
    double deadline = now_mono() + (double)o->timeout_ms / 1000.0;
    struct conn *c = calloc(o->conns, sizeof(*c));
    char req[REQ_MAX];
    unsigned long answered = 0, failed = 0;
    int n, ep;

    if (!c)
        die("calloc");
    n = snprintf(req, sizeof(req),
                 "GET /v1/token?user_id=%s HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 "User-Agent: tokend-bench\r\nAccept: */*\r\n\r\n",
                 o->user);
    if (connect_all(c, o->conns, o->port, deadline) < 0)
        return 1;
    ep = watch_all(c, o->conns);
    for (unsigned long i = 0; i < o->conns; i++) {
        if (write_all(c[i].fd, req, (size_t)n) < 0)
            failed++;
        else
            c[i].busy = true;
    }
    answered = failed;
    while (answered < o->conns) {
        struct answer a[ANSWERS_MAX];
        int k = next_answers(ep, c, deadline, a);
        if (k < 0)
            break;
        for (int e = 0; e < k; e++) {
            answered++;
            if (a[e].r < 0 || a[e].status != 200)
                failed++;
        }
    }
    failed += o->conns - answered;
    {
        struct timespec ts = { 0, 200 * 1000 * 1000 }; /* let the server settle */
        nanosleep(&ts, NULL);
    }
    after = rss_kb(o->pid);
    printf("{\"mode\":\"hold\",\"conns\":%lu,\"failed\":%lu,\"rss_before_kb\":%ld,\"rss_after_kb\":%ld,"
           "\"bytes_per_conn\":%.0f}\n",
           o->conns, failed, before, after,
           o->conns ? (double)(after - before) * 1024.0 / (double)o->conns : 0.0);
    for (unsigned long i = 0; i < o->conns; i++)
        close(c[i].fd);
    close(ep);
    free(c);
    return failed || before < 0 || after < 0 ? 1 : 0;
}

/* ---------------------------------------------------------------- startup */

static int try_connect(unsigned port) {
    struct sockaddr_in a = loopback(port);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;

    if (fd < 0)
        return -1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* A blocking request on fd; the status, or -1. */
static int blocking_get(int fd, const char *prefix, unsigned long idx, double deadline) {
    struct conn c = { .fd = fd };
    char req[REQ_MAX], xc[32];
    int n = format_request(req, sizeof(req), prefix, idx), status = 0, r;
    struct timeval tv = { 1, 0 };

    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    if (write_all(fd, req, (size_t)n) < 0)
        return -1;
    while (now_mono() < deadline) {
        r = read_answer(&c, &status, xc, sizeof(xc));
        if (r < 0)
            return -1;
        if (r == 1)
            return status;
    }
    return -1;
}

static void sleep_us(long us) {
    struct timespec ts = { us / 1000000, (us % 1000000) * 1000 };
    nanosleep(&ts, NULL);
}

static double children_cpu_ms(long *minflt) {
    struct rusage ru;
    getrusage(RUSAGE_CHILDREN, &ru);
    *minflt = ru.ru_minflt;
    return (double)ru.ru_utime.tv_sec * 1e3 + (double)ru.ru_utime.tv_usec / 1e3 + (double)ru.ru_stime.tv_sec * 1e3 +
           (double)ru.ru_stime.tv_usec / 1e3;
}

static int mode_startup(const struct opts *o) {
    double *listen_ms = calloc(o->runs, sizeof(double)), *token_ms = calloc(o->runs, sizeof(double));
    double *cpu_ms = calloc(o->runs, sizeof(double)), *faults = calloc(o->runs, sizeof(double));
    unsigned long ok = 0;
    int failed = 0;

    if (!listen_ms || !token_ms || !cpu_ms || !faults)
        die("calloc");
    for (unsigned long run = 0; run < o->runs; run++) {
        double deadline = now_mono() + (double)o->timeout_ms / 1000.0 / (double)o->runs;
        double t0, t_listen = 0, t_token = 0, cpu0, cpu1;
        long flt0, flt1;
        int fd = -1, status = -1, wst;
        pid_t pid;

        /* the port must be free before we start: a previous run may linger */
        while ((fd = try_connect(o->port)) >= 0 && now_mono() < deadline) {
            close(fd);
            sleep_us(1000);
        }
        if (fd >= 0) {
            close(fd);
            fprintf(stderr, "bench-client: port %u is still taken\n", o->port);
            failed = 1;
            break;
        }
        cpu0 = children_cpu_ms(&flt0);
        t0 = now_mono();
        pid = fork();
        if (pid < 0)
            die("fork");
        if (pid == 0) {
            int devnull = open("/dev/null", O_RDWR);
            if (devnull >= 0) {
                dup2(devnull, 0);
                dup2(devnull, 1);
                dup2(devnull, 2);
            }
            execl(o->exe, o->exe, "--config", o->config, (char *)NULL);
            _exit(127);
        }
        /* 100 us between attempts: fine grain, without starving the daemon */
        while (now_mono() < deadline) {
            fd = try_connect(o->port);
            if (fd >= 0) {
                t_listen = now_mono();
                break;
            }
            if (waitpid(pid, &wst, WNOHANG) == pid) {
                pid = -1;
                break;
            }
            sleep_us(100);
        }
        if (fd >= 0) {
            status = blocking_get(fd, o->prefix, run, deadline);
            t_token = now_mono();
            close(fd);
        }
        if (pid > 0) {
            double kill_deadline = now_mono() + 10.0;
            kill(pid, SIGTERM);
            while (waitpid(pid, &wst, WNOHANG) != pid) {
                if (now_mono() > kill_deadline) {
                    kill(pid, SIGKILL);
                    waitpid(pid, &wst, 0);
                    break;
                }
                sleep_us(1000);
            }
        }
        cpu1 = children_cpu_ms(&flt1);
        if (status != 200) {
            fprintf(stderr, "bench-client: run %lu: %s\n", run,
                    fd < 0 ? "the daemon never listened" : "no token answered");
            failed = 1;
            continue;
        }
        listen_ms[ok] = (t_listen - t0) * 1e3;
        token_ms[ok] = (t_token - t0) * 1e3;
        cpu_ms[ok] = cpu1 - cpu0;
        faults[ok] = (double)(flt1 - flt0);
        ok++;
    }
    qsort(listen_ms, ok, sizeof(double), cmp_double);
    qsort(token_ms, ok, sizeof(double), cmp_double);
    qsort(cpu_ms, ok, sizeof(double), cmp_double);
    qsort(faults, ok, sizeof(double), cmp_double);
    /* cpu: the daemon's whole life (start, one mint, stop), what a busy
     * machine cannot inflate the way it inflates wall time */
    printf("{\"mode\":\"startup\",\"runs\":%lu,\"ok\":%lu,\"listen_ms_p50\":%.2f,\"listen_ms_min\":%.2f,"
           "\"listen_ms_max\":%.2f,\"token_ms_p50\":%.2f,\"token_ms_min\":%.2f,\"token_ms_max\":%.2f,"
           "\"cpu_ms_p50\":%.2f,\"minor_faults_p50\":%.0f}\n",
           o->runs, ok, pct(listen_ms, ok, 50), ok ? listen_ms[0] : 0.0, ok ? listen_ms[ok - 1] : 0.0,
           pct(token_ms, ok, 50), ok ? token_ms[0] : 0.0, ok ? token_ms[ok - 1] : 0.0, pct(cpu_ms, ok, 50),
           pct(faults, ok, 50));
    free(listen_ms);
    free(token_ms);
    free(cpu_ms);
    free(faults);
    return failed || ok != o->runs;
}

/* ------------------------------------------------------------------- main */

static int usage(void) {
    fprintf(stderr,
            "usage: bench-client burst   --port P --prefix S --users N --conns C\n"
            "       bench-client load    --port P --prefix S --first F --count N --conns C [--out FILE]\n"
            "                            [--modulo M]\n"
            "       bench-client hold    --port P --conns C --user U --pid PID\n"
            "       bench-client startup --exe E --config F --port P --prefix S --runs R\n"
            "every mode: [--timeout-ms MS] (default 60000)\n");
    return 2;
}

int main(int argc, char **argv) {
    static const struct option options[] = {
        { "port", required_argument, NULL, 'p' },     { "prefix", required_argument, NULL, 'x' },
        { "users", required_argument, NULL, 'u' },    { "conns", required_argument, NULL, 'c' },
        { "first", required_argument, NULL, 'f' },    { "count", required_argument, NULL, 'n' },
        { "out", required_argument, NULL, 'o' },      { "user", required_argument, NULL, 'U' },
        { "pid", required_argument, NULL, 'P' },      { "exe", required_argument, NULL, 'e' },
        { "config", required_argument, NULL, 'C' },   { "runs", required_argument, NULL, 'r' },
        { "timeout-ms", required_argument, NULL, 't' }, { "modulo", required_argument, NULL, 'm' },
        { 0 },
    };
    struct opts o = { .prefix = "bench-", .user = "bench-0", .users = 1, .conns = 1, .count = 1,
                      .runs = 1, .timeout_ms = 60000 };
    int ch;

    if (argc < 2)
        return usage();
    o.mode = argv[1];
    optind = 2;
    while ((ch = getopt_long(argc, argv, "", options, NULL)) >= 0) {
        switch (ch) {
        case 'p': o.port = (unsigned)strtoul(optarg, NULL, 10); break;
        case 'x': o.prefix = optarg; break;
        case 'u': o.users = strtoul(optarg, NULL, 10); break;
        case 'c': o.conns = strtoul(optarg, NULL, 10); break;
        case 'f': o.first = strtoul(optarg, NULL, 10); break;
        case 'n': o.count = strtoul(optarg, NULL, 10); break;
        case 'o': o.out = optarg; break;
        case 'U': o.user = optarg; break;
        case 'P': o.pid = strtol(optarg, NULL, 10); break;
        case 'e': o.exe = optarg; break;
        case 'C': o.config = optarg; break;
        case 'r': o.runs = strtoul(optarg, NULL, 10); break;
        case 't': o.timeout_ms = strtol(optarg, NULL, 10); break;
        case 'm': o.modulo = strtoul(optarg, NULL, 10); break;
        default: return usage();
        }
    }
    if (optind != argc || o.port == 0 || o.port > 65535 || o.users == 0 || o.conns == 0 ||
        o.count == 0 || o.runs == 0 || o.timeout_ms <= 0 || strlen(o.prefix) > PREFIX_MAX ||
        strlen(o.user) > PREFIX_MAX)
        return usage();
    raise_nofile();
    signal(SIGPIPE, SIG_IGN);
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (strcmp(o.mode, "burst") == 0)
        return mode_burst(&o);
    if (strcmp(o.mode, "load") == 0)
        return mode_load(&o);
    if (strcmp(o.mode, "hold") == 0)
        return o.pid > 0 ? mode_hold(&o) : usage();
    if (strcmp(o.mode, "startup") == 0)
        return o.exe && o.config ? mode_startup(&o) : usage();
    return usage();
}
