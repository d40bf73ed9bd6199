/* systemd glue. Responsible for: everything said to or taken from the
 * service manager (sd_notify's READY, RELOADING, STATUS, STOPPING and
 * WATCHDOG; LISTEN_FDS; the file descriptor store) and the watchdog's probe
 * of our own HTTP server. Not responsible for deciding when the daemon is
 * ready or healthy (main.c decides; this module only says it).
 *
 * libsystemd is used here and for the journal in log.c, nowhere else. */
#include "sd.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <systemd/sd-daemon.h>
#include <time.h>
#include <unistd.h>

#include "address.h"
#include "config.h"
#include "log.h"
#include "util.h"

int systemd_take_fds(int *ret_listen_fd, int *ret_cache_fd) {
    char **names = NULL;
    int n, listen_fd = -1, cache_fd = -1;

    n = sd_listen_fds_with_names(1, &names);
    if (n < 0) {
        log_warning("systemd passed unusable descriptors (LISTEN_FDS): %s; ignoring them", strerror(-n));
        *ret_listen_fd = *ret_cache_fd = -1;
        return n;
    }
    for (int i = 0; i < n; i++) {
        int fd = SD_LISTEN_FDS_START + i;
        const char *name = names && names[i] ? names[i] : "unknown";

        fcntl(fd, F_SETFD, FD_CLOEXEC);
        if (strcmp(name, SYSTEMD_FDNAME_CACHE) == 0) {
            /* the last one stored is the newest */
            if (cache_fd >= 0)
                close(cache_fd);
            cache_fd = fd;
        } else if (listen_fd < 0 && sd_is_socket(fd, AF_UNSPEC, SOCK_STREAM, 1) > 0) {
            listen_fd = fd;
        } else {
            log_warning("ignoring descriptor %d named '%s' passed by systemd: tokend takes one "
                        "listening stream socket and the '%s' store", fd, name, SYSTEMD_FDNAME_CACHE);
            close(fd);
        }
    }
    if (names) {
        for (int i = 0; i < n; i++)
            free(names[i]);
        free(names);
    }
    *ret_listen_fd = listen_fd;
    *ret_cache_fd = cache_fd;
    return n;
}

bool systemd_notifying(void) {
    const char *s = getenv("NOTIFY_SOCKET");
    return s && *s;
}

static int notifyf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int notifyf(const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    int n;

    if (!systemd_notifying())
        return 0;
    va_start(ap, fmt);
    n = vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (n < 0)
        return -EINVAL;
    return sd_notify(0, msg);
}

int systemd_ready(const char *status) {
    return notifyf("READY=1\nSTATUS=%s", status);
}

int systemd_reloading(void) {
    struct timespec ts;

    /* MONOTONIC_USEC lets systemd 253+ tell this reload from an earlier one */
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return notifyf("RELOADING=1\nSTATUS=Reloading the configuration\nMONOTONIC_USEC=%llu",
                   (unsigned long long)ts.tv_sec * 1000000ULL + (unsigned long long)ts.tv_nsec / 1000);
}

int systemd_status(const char *status) {
    return notifyf("STATUS=%s", status);
}

int systemd_stopping(const char *status) {
    return notifyf("STOPPING=1\nSTATUS=%s", status);
}

int systemd_watchdog_ping(void) {
    return notifyf("WATCHDOG=1");
}

uint64_t systemd_watchdog_usec(void) {
    uint64_t usec = 0;

    if (sd_watchdog_enabled(0, &usec) <= 0)
        return 0;
    return usec;
}

int systemd_store_fd(int fd, const char *name, uint64_t timeout_ms) {
    char msg[128];
    int r;

    if (!systemd_notifying())
        return 0;
    snprintf(msg, sizeof(msg), "FDSTORE=1\nFDNAME=%s", name);
    r = sd_pid_notify_with_fds(0, 0, msg, &fd, 1);
    if (r <= 0)
        return r;
    /* systemd reads its notification socket before it reaps us, but only
     * the barrier says it got there: wait for it, bounded */
    r = sd_notify_barrier(0, timeout_ms * 1000);
    return r < 0 ? r : 1;
}

int systemd_store_remove(const char *name) {
    return notifyf("FDSTOREREMOVE=1\nFDNAME=%s", name);
}

/* ---- the watchdog's probe ---- */

static int wait_fd(int fd, short events, uint64_t deadline) {
    for (;;) {
        struct pollfd p = { .fd = fd, .events = events };
        uint64_t now = now_ms();
        int r;

        if (now >= deadline)
            return -ETIMEDOUT;
        r = poll(&p, 1, (int)(deadline - now));
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -errno;
        if (r > 0)
            return 0;
    }
}

int systemd_probe_http(const char *address, uint64_t timeout_ms) {
    static const char req[] = "GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    struct sockaddr_storage ss;
    socklen_t sl;
    bool loopback;
    uint64_t deadline = now_ms() + timeout_ms;
    char buf[64];
    size_t got = 0, sent = 0;
    int fd, r, err = 0;
    socklen_t errlen = sizeof(err);

    if (address_listen_parse(address, &ss, &sl, &loopback) < 0)
        return -EINVAL;
    if (ss.ss_family == AF_INET) {
        struct sockaddr_in *a = (struct sockaddr_in *)&ss;
        if (a->sin_addr.s_addr == htonl(INADDR_ANY))
            a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    } else {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
        if (IN6_IS_ADDR_UNSPECIFIED(&a->sin6_addr))
            a->sin6_addr = in6addr_loopback;
    }
    fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return -errno;
    if (connect(fd, (struct sockaddr *)&ss, sl) < 0 && errno != EINPROGRESS) {
        r = -errno;
        goto out;
    }
    r = wait_fd(fd, POLLOUT, deadline);
    if (r < 0)
        goto out;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &errlen) < 0 || err) {
        r = err ? -err : -errno;
        goto out;
    }
    while (sent < sizeof(req) - 1) {
        ssize_t n = send(fd, req + sent, sizeof(req) - 1 - sent, MSG_NOSIGNAL);
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
            r = wait_fd(fd, POLLOUT, deadline);
            if (r < 0)
                goto out;
            continue;
        }
        if (n < 0) {
            r = -errno;
            goto out;
        }
        sent += (size_t)n;
    }
    /* the status line is enough: "HTTP/1.1 200 " */
    while (got < 13) {
        ssize_t n = recv(fd, buf + got, sizeof(buf) - 1 - got, 0);
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
            r = wait_fd(fd, POLLIN, deadline);
            if (r < 0)
                goto out;
            continue;
        }
        if (n <= 0) {
            r = n < 0 ? -errno : -ECONNRESET;
            goto out;
        }
        got += (size_t)n;
    }
    buf[got] = '\0';
    r = strncmp(buf, "HTTP/1.1 200 ", 13) == 0 || strncmp(buf, "HTTP/1.0 200 ", 13) == 0 ? 0 : -EPROTO;
out:
    close(fd);
    return r;
}
