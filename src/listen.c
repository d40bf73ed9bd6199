/* The HTTP front's listening sockets: bound from the configuration's
 * listen addresses (TCP, or a Unix socket with its mode and group, never
 * over one a live process accepts on), described for the log and
 * /v1/status, served by the threads that poll libmicrohttpd on them,
 * quiesced and closed. What is served is api.c's: it starts the daemons.
 *
 * Why our own threads: libmicrohttpd's internal polling thread on epoll
 * (0.9.75 and 1.0.1), having taken a full batch of 128 events, waits
 * again with its whole timeout (up to idle_timeout) before handling them,
 * so a burst of 128 requests and then silence went unanswered for up to
 * 30 s; under poll() it accepts one connection per turn, and a busy
 * server left hundreds waiting in the backlog (the benchmark's 1,000
 * connections). Here a thread waits on the daemon's epoll set itself and
 * then lets libmicrohttpd run without waiting (MHD_run()), so nothing
 * ready is ever held back; test-libmicrohttpd's burst_answered() measured
 * the library's fault, test_strict_http checks the burst here. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <limits.h>
#include <poll.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <microhttpd.h>

#include "address.h"
#include "api-internal.h"
#include "config.h"
#include "log.h"

/* A socket left at the path by a run that ended is replaced. One that a
 * process still accepts on is not: unlinking it would leave that process
 * running and unreachable. Anything but a socket is left alone (bind()
 * then fails). */
static int clear_stale_socket(const struct sockaddr_storage *ss, socklen_t sl, char *err, size_t err_size) {
    const char *path = ((const struct sockaddr_un *)ss)->sun_path;
    struct ucred cred = { .pid = 0 };
    socklen_t len = sizeof(cred);
    struct stat st;
    int probe, r;

    if (lstat(path, &st) < 0 || !S_ISSOCK(st.st_mode))
        return 0;
    probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (probe < 0)
        return -errno;
    r = connect(probe, (const struct sockaddr *)ss, sl) == 0 ? 0 : -errno;
    if (r == 0 || r == -EAGAIN) { /* accepted, or its backlog is full: alive */
        if (getsockopt(probe, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0)
            cred.pid = 0;
        close(probe);
        if (cred.pid > 0)
            snprintf(err, err_size, "%s is in use: process %d (another tokend?) accepts connections on it; "
                     "stop it, or give this one another [server] listen path", path, (int)cred.pid);
        else
            snprintf(err, err_size, "%s is in use: another process (another tokend?) accepts connections on "
                     "it; stop it, or give this one another [server] listen path", path);
        return -EADDRINUSE;
    }
    close(probe);
    if (r == -ECONNREFUSED) /* nobody listens: left by a run that ended */
        unlink(path);
    return 0;
}

int listen_bind(const config *cfg, const char *spec, int *ret_fd, char *err, size_t err_size) {
    struct sockaddr_storage ss;
    socklen_t sl;
    int fd, one = 1, r;

    if (err_size)
        err[0] = '\0';
    if (address_listen_parse(spec, &ss, &sl, NULL) < 0)
        return -EINVAL;
    fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return -errno;
    if (ss.ss_family == AF_UNIX) {
        r = clear_stale_socket(&ss, sl, err, err_size);
        if (r < 0) {
            close(fd);
            return r;
        }
    } else
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (ss.ss_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    if (bind(fd, (struct sockaddr *)&ss, sl) < 0)
        goto fail;
    if (ss.ss_family == AF_UNIX) {
        const char *path = ((struct sockaddr_un *)&ss)->sun_path;
        const struct group *g = cfg->socket_group ? getgrnam(cfg->socket_group) : NULL;
        if (chmod(path, cfg->socket_mode) < 0 || (g && chown(path, (uid_t)-1, g->gr_gid) < 0))
            goto fail;
    }
    if (listen(fd, 4096) < 0)
        goto fail;
    *ret_fd = fd;
    return 0;
fail:
    r = -errno;
    close(fd);
    return r;
}

void listen_describe(struct listener *l) {
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    char host[INET6_ADDRSTRLEN];

    l->address[0] = '\0';
    if (getsockname(l->fd, (struct sockaddr *)&ss, &sl) < 0)
        return;
    if (ss.ss_family == AF_INET) {
        struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
        inet_ntop(AF_INET, &s4->sin_addr, host, sizeof(host));
        snprintf(l->address, sizeof(l->address), "%s:%u", host, ntohs(s4->sin_port));
    } else if (ss.ss_family == AF_INET6) {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
        inet_ntop(AF_INET6, &s6->sin6_addr, host, sizeof(host));
        snprintf(l->address, sizeof(l->address), "[%s]:%u", host, ntohs(s6->sin6_port));
    } else if (ss.ss_family == AF_UNIX) {
        snprintf(l->address, sizeof(l->address), "unix:%s", ((struct sockaddr_un *)&ss)->sun_path);
        l->unix_socket = true;
    }
}


static unsigned open_connections(struct MHD_Daemon *d) {
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_CURRENT_CONNECTIONS);

    return info ? info->num_connections : 0;
}

/* A daemon at its connection limit takes its listening socket out of its
 * epoll set, and puts it back only at the start of its next turn: when a
 * turn closed connections, one more, or nothing would wake it for new
 * callers. */
static void run(struct MHD_Daemon *d) {
    unsigned before = open_connections(d);

    MHD_run(d);
    if (open_connections(d) < before)
        MHD_run(d);
}

/* Waits for what the daemon has to do (its epoll set, readable when a
 * socket of it is ready or another thread resumed a connection) for no
 * longer than its next timeout, then lets it run without waiting. */
static void *poll_daemon(void *arg) {
    struct http_loop *lp = arg;
    struct pollfd p[2] = { { .fd = lp->epoll_fd, .events = POLLIN }, { .fd = lp->wake, .events = POLLIN } };

    for (;;) {
        MHD_UNSIGNED_LONG_LONG t;
        int ms = MHD_get_timeout(lp->mhd, &t) == MHD_YES ? (t > INT_MAX ? INT_MAX : (int)t) : -1;

        if (poll(p, 2, ms) < 0) {
            p[0].revents = p[1].revents = 0;
            if (errno != EINTR) { /* not a busy loop; the daemon is still run */
                log_error("http: cannot wait for connections: %s", strerror(errno));
                poll(NULL, 0, 100);
            }
        }
        if (p[1].revents) {
            uint64_t n;
            if (read(lp->wake, &n, sizeof(n)) < 0 && errno != EAGAIN)
                log_error("http: cannot read a server thread's wake-up: %s", strerror(errno));
            if (atomic_load(&lp->stop))
                return NULL;
        }
        run(lp->mhd);
    }
}

/* Their threads start only once all are in (listen_run()): l->loops may
 * move until then. */
int listen_add(struct listener *l, struct MHD_Daemon *mhd) {
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(mhd, MHD_DAEMON_INFO_EPOLL_FD);
    struct http_loop *loops = realloc(l->loops, (l->n_loops + 1) * sizeof(*loops)), *lp;

    if (!loops || !info) {
        if (loops)
            l->loops = loops;
        MHD_stop_daemon(mhd);
        return loops ? -EINVAL : -ENOMEM;
    }
    l->loops = loops;
    lp = &l->loops[l->n_loops];
    *lp = (struct http_loop){ .mhd = mhd, .epoll_fd = info->epoll_fd,
                              .wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK) };
    if (lp->wake < 0) {
        int r = -errno;
        MHD_stop_daemon(mhd);
        return r;
    }
    l->n_loops++;
    return 0;
}

/* Once every daemon is in: their threads read l->loops (listen_wake_fd()). */
int listen_run(struct listener *l) {
    for (size_t i = 0; i < l->n_loops; i++) {
        int r = -pthread_create(&l->loops[i].thread, NULL, poll_daemon, &l->loops[i]);
        if (r < 0)
            return r;
        l->loops[i].running = true;
    }
    return 0;
}

int listen_wake_fd(const struct listener *l, const struct MHD_Daemon *d) {
    for (size_t i = 0; i < l->n_loops; i++)
        if (l->loops[i].mhd == d)
            return l->loops[i].wake;
    return -1;
}

void listen_wake(int fd) {
    uint64_t one = 1;

    if (fd >= 0 && write(fd, &one, sizeof(one)) < 0 && errno != EAGAIN)
        log_error("http: cannot wake a server thread: %s", strerror(errno));
}

/* libmicrohttpd may still touch the listening socket until
 * MHD_stop_daemon(), so it stays open until listen_close() (closing it
 * here was a race: ThreadSanitizer caught an epoll_ctl() on the closed
 * fd, whose number a new socket could already have taken). A socket
 * we bound is shut down, so new callers are refused at once rather than
 * left in the backlog; one passed by systemd is left listening, for
 * systemd to start us again on the next connection. */
void listen_quiesce(struct listener *l) {
    if (l->fd < 0 || l->quiesced || !l->n_loops)
        return;
    for (size_t i = 0; i < l->n_loops; i++)
        if (!l->loops[i].quiesced) {
            MHD_quiesce_daemon(l->loops[i].mhd);
            l->loops[i].quiesced = true;
        }
    l->quiesced = true;
    if (!l->inherited)
        shutdown(l->fd, SHUT_RDWR);
}

/* The daemons share the socket: each is quiesced first, so that none
 * closes it under the others; it is closed here, once. */
void listen_close(struct listener *l) {
    for (size_t i = 0; i < l->n_loops; i++) {
        struct http_loop *lp = &l->loops[i];
        if (lp->running) {
            atomic_store(&lp->stop, true);
            listen_wake(lp->wake);
            pthread_join(lp->thread, NULL);
        }
        if (!lp->quiesced)
            MHD_quiesce_daemon(lp->mhd);
        MHD_stop_daemon(lp->mhd);
        close(lp->wake); /* after the daemon: a resume may still wake it until then */
    }
    free(l->loops);
    l->loops = NULL;
    l->n_loops = 0;
    if (l->fd >= 0)
        close(l->fd);
    l->fd = -1;
    if (l->bound && l->unix_socket && strncmp(l->address, "unix:", 5) == 0)
        unlink(l->address + 5);
}
