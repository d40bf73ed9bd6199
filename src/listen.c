/* The HTTP front's listening sockets: bound from the configuration's
 * listen addresses (TCP, or a Unix socket with its mode and group, never
 * over one a live process accepts on), described for the log and
 * /v1/status, quiesced and closed. Not responsible for serving them
 * (api.c starts libmicrohttpd on each). */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <microhttpd.h>

#include "address.h"
#include "api-internal.h"
#include "config.h"

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


/* libmicrohttpd's own thread may still touch the listening socket until
 * MHD_stop_daemon(), so it stays open until listen_close() (closing it
 * here was a race: ThreadSanitizer caught the thread's epoll_ctl() on the
 * closed fd, whose number a new socket could already have taken). A socket
 * we bound is shut down, so new callers are refused at once rather than
 * left in the backlog; one passed by systemd is left listening, for
 * systemd to start us again on the next connection. */
void listen_quiesce(struct listener *l) {
    if (l->mhd && l->fd >= 0 && !l->quiesced) {
        MHD_quiesce_daemon(l->mhd);
        l->quiesced = true;
        if (!l->inherited)
            shutdown(l->fd, SHUT_RDWR);
    }
}

void listen_close(struct listener *l) {
    if (l->mhd) {
        MHD_stop_daemon(l->mhd); /* closes the listening socket unless quiesced */
        l->mhd = NULL;
        if (!l->quiesced)
            l->fd = -1;
    }
    if (l->fd >= 0)
        close(l->fd);
    l->fd = -1;
    if (l->bound && l->unix_socket && strncmp(l->address, "unix:", 5) == 0)
        unlink(l->address + 5);
}
