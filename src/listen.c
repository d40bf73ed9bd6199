/* The HTTP front's listening sockets: bound from the configuration's
 * listen addresses (TCP, or a Unix socket with its mode and group), and
 * described for the log and /v1/status. Not responsible for serving them
 * (api.c). */
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

#include "address.h"
#include "api-internal.h"
#include "config.h"

int listen_bind(const config *cfg, const char *spec, int *ret_fd) {
    struct sockaddr_storage ss;
    socklen_t sl;
    int fd, one = 1, r;

    if (address_listen_parse(spec, &ss, &sl, NULL) < 0)
        return -EINVAL;
    fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return -errno;
    if (ss.ss_family == AF_UNIX) {
        const char *path = ((struct sockaddr_un *)&ss)->sun_path;
        struct stat st;
        /* a socket left by an earlier run is replaced; anything else is not */
        if (lstat(path, &st) == 0 && S_ISSOCK(st.st_mode))
            unlink(path);
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

