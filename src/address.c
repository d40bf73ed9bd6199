/* Addresses: the one rule for which addresses are this host's own, and the
 * parsing of [server] listen addresses. Not responsible for binding them
 * (listen.c) nor for any policy built on the rule (config.c refuses remote
 * listeners and plain http:// to a remote Instacart, guard.c refuses a
 * Host that names nobody we know, the HTTP front keeps cache control to
 * local callers).
 *
 * Loopback is 127.0.0.0/8, ::1, a Unix socket, and ::ffff:127.0.0.0/104.
 * The last is what an IPv6 socket without IPV6_V6ONLY reports for a
 * caller that connected to 127.0.0.1, and what a client writes when it
 * names 127.0.0.1 in IPv6 form ("[::ffff:127.0.0.1]:8787"): the packets
 * are IPv4 loopback packets, which the kernel never routes off the host.
 * Refusing it in one place and accepting it in another (as separate copies
 * of this test once did) lets the same caller through one door and not
 * the next, so every caller asks here. Names are not resolved: only
 * "localhost" counts, as the resolver's own files map it to loopback and a
 * DNS answer for any other name is not ours to trust. */
#include "address.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <strings.h>
#include <sys/un.h>

#include "util.h"

static bool ipv4_is_loopback(const struct in_addr *a) {
    return (ntohl(a->s_addr) >> 24) == 127;
}

static bool ipv6_is_loopback(const struct in6_addr *a) {
    return IN6_IS_ADDR_LOOPBACK(a) || (IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127);
}

bool address_is_loopback(const struct sockaddr *sa, socklen_t len) {
    if (!sa || len < (socklen_t)sizeof(sa_family_t))
        return false;
    switch (sa->sa_family) {
    case AF_UNIX:
        return true;
    case AF_INET:
        return len >= (socklen_t)sizeof(struct sockaddr_in) &&
               ipv4_is_loopback(&((const struct sockaddr_in *)sa)->sin_addr);
    case AF_INET6:
        return len >= (socklen_t)sizeof(struct sockaddr_in6) &&
               ipv6_is_loopback(&((const struct sockaddr_in6 *)sa)->sin6_addr);
    default:
        return false;
    }
}

/* An address as written in a URL's host (IPv4, or IPv6 in brackets) into
 * ss, port 0. Returns false when it is neither. */
static bool host_address(const char *host, size_t len, struct sockaddr_storage *ss, socklen_t *sl) {
    char buf[INET6_ADDRSTRLEN + 2];

    if (len < 2 || len >= sizeof(buf))
        return false;
    memset(ss, 0, sizeof(*ss));
    if (host[0] == '[' && host[len - 1] == ']') {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;
        memcpy(buf, host + 1, len - 2);
        buf[len - 2] = '\0';
        a->sin6_family = AF_INET6;
        *sl = sizeof(*a);
        return inet_pton(AF_INET6, buf, &a->sin6_addr) == 1;
    }
    memcpy(buf, host, len);
    buf[len] = '\0';
    ((struct sockaddr_in *)ss)->sin_family = AF_INET;
    *sl = sizeof(struct sockaddr_in);
    return inet_pton(AF_INET, buf, &((struct sockaddr_in *)ss)->sin_addr) == 1;
}

bool address_host_is_loopback(const char *host, size_t len) {
    struct sockaddr_storage ss;
    socklen_t sl;

    /* what nearly every local caller sends, answered without parsing */
    if ((len == 9 && memcmp(host, "127.0.0.1", 9) == 0) || (len == 5 && memcmp(host, "[::1]", 5) == 0))
        return true;
    if (len == 9 && strncasecmp(host, "localhost", 9) == 0)
        return true;
    return host_address(host, len, &ss, &sl) && address_is_loopback((struct sockaddr *)&ss, sl);
}

int address_listen_parse(const char *s, struct sockaddr_storage *ret, socklen_t *ret_len, bool *ret_loopback) {
    const char *colon = strrchr(s, ':');
    struct sockaddr_storage ss;
    socklen_t sl;
    uint64_t port;
    size_t hlen;

    if (strncmp(s, "unix:", 5) == 0) {
        struct sockaddr_un *u = (struct sockaddr_un *)&ss;
        size_t n = strlen(s + 5);
        if (s[5] != '/' || n >= sizeof(u->sun_path))
            return -EINVAL;
        memset(&ss, 0, sizeof(ss));
        u->sun_family = AF_UNIX;
        memcpy(u->sun_path, s + 5, n + 1);
        sl = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
    } else {
        if (!colon || parse_uint(colon + 1, 65535, &port) < 0)
            return -EINVAL;
        hlen = (size_t)(colon - s);
        if (hlen == 9 && strncasecmp(s, "localhost", 9) == 0) {
            memset(&ss, 0, sizeof(ss));
            ((struct sockaddr_in *)&ss)->sin_family = AF_INET;
            ((struct sockaddr_in *)&ss)->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
            sl = sizeof(struct sockaddr_in);
        } else if (!host_address(s, hlen, &ss, &sl))
            return -EINVAL;
        if (ss.ss_family == AF_INET6 && IN6_IS_ADDR_V4MAPPED(&((struct sockaddr_in6 *)&ss)->sin6_addr)) {
            /* tokend's IPv6 sockets are IPV6_V6ONLY: such an address binds
             * only as the IPv4 address it stands for */
            struct in_addr a4;
            memcpy(&a4, &((struct sockaddr_in6 *)&ss)->sin6_addr.s6_addr[12], sizeof(a4));
            memset(&ss, 0, sizeof(ss));
            ((struct sockaddr_in *)&ss)->sin_family = AF_INET;
            ((struct sockaddr_in *)&ss)->sin_addr = a4;
            sl = sizeof(struct sockaddr_in);
        }
        if (ss.ss_family == AF_INET)
            ((struct sockaddr_in *)&ss)->sin_port = htons((uint16_t)port);
        else
            ((struct sockaddr_in6 *)&ss)->sin6_port = htons((uint16_t)port);
    }
    if (ret_loopback)
        *ret_loopback = address_is_loopback((struct sockaddr *)&ss, sl);
    memcpy(ret, &ss, sizeof(ss));
    *ret_len = sl;
    return 0;
}
