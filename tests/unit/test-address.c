/* Unit tests of src/address.c: the one loopback rule, row by row, for
 * socket addresses and for hosts as configuration and Host headers write
 * them, and the parsing of [server] listen addresses. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/un.h>

#include "address.h"
#include "unit.h"
#include "util.h"

static const struct {
    const char *text; /* an address literal, IPv6 in brackets */
    bool loopback;
} rows[] = {
    { "127.0.0.1", true },
    { "127.0.0.0", true },
    { "127.255.255.255", true },
    { "127.1.2.3", true },
    { "[::1]", true },
    { "[0:0:0:0:0:0:0:1]", true },
    { "[::ffff:127.0.0.1]", true }, /* IPv4 loopback on an IPv6 socket */
    { "[::ffff:127.8.9.10]", true },
    { "[::FFFF:127.0.0.1]", true },
    { "0.0.0.0", false },
    { "[::]", false },
    { "128.0.0.1", false },
    { "126.255.255.255", false },
    { "10.0.0.1", false },
    { "[::2]", false },
    { "[::ffff:128.0.0.1]", false },
    { "[::ffff:0.0.0.0]", false },
    { "[::127.0.0.1]", false }, /* IPv4-compatible, deprecated: not mapped */
    { "[fe80::1]", false },
};

/* text into a socket address, the way the kernel would report it */
static socklen_t to_sockaddr(const char *text, struct sockaddr_storage *ss) {
    char buf[64];
    size_t n = strlen(text);

    memset(ss, 0, sizeof(*ss));
    if (text[0] == '[') {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;
        memcpy(buf, text + 1, n - 2);
        buf[n - 2] = '\0';
        a->sin6_family = AF_INET6;
        ASSERT(inet_pton(AF_INET6, buf, &a->sin6_addr) == 1);
        return sizeof(*a);
    }
    ((struct sockaddr_in *)ss)->sin_family = AF_INET;
    ASSERT(inet_pton(AF_INET, text, &((struct sockaddr_in *)ss)->sin_addr) == 1);
    return sizeof(struct sockaddr_in);
}

static void socket_addresses(void) {
    struct sockaddr_storage ss;

    for (size_t i = 0; i < ARRAY_SIZE(rows); i++) {
        socklen_t sl = to_sockaddr(rows[i].text, &ss);
        if (address_is_loopback((struct sockaddr *)&ss, sl) != rows[i].loopback)
            UNIT_FAIL("%s: expected %s", rows[i].text, rows[i].loopback ? "loopback" : "not loopback");
    }
}

static void unix_sockets_are_local(void) {
    struct sockaddr_un u = { .sun_family = AF_UNIX, .sun_path = "/run/tokend.sock" };

    ASSERT(address_is_loopback((struct sockaddr *)&u, sizeof(u)));
    /* no address at all, or one too short for its family */
    ASSERT(!address_is_loopback(NULL, 0));
    {
        struct sockaddr_storage ss;
        socklen_t sl = to_sockaddr("127.0.0.1", &ss);
        ASSERT(!address_is_loopback((struct sockaddr *)&ss, sl - 1));
    }
}

static void hosts_as_written(void) {
    static const struct {
        const char *host;
        bool loopback;
    } names[] = {
        /* names as config.c takes them: localhost only, never resolved */
        { "localhost", true }, { "LOCALHOST", true }, { "LocalHost", true },
        { "localhost.", false }, { "foo.localhost", false }, { "localhost.evil.example", false },
        { "127.0.0.1.evil.example", false }, { "example.com", false },
        /* no brackets around IPv6, and IPv4 shorthands: not addresses */
        { "::1", false }, { "127.1", false }, { "0x7f000001", false }, { "2130706433", false },
        { "", false }, { "[]", false }, { "[::1", false },
    };
    char text[64];

    for (size_t i = 0; i < ARRAY_SIZE(rows); i++)
        if (address_host_is_loopback(rows[i].text, strlen(rows[i].text)) != rows[i].loopback)
            UNIT_FAIL("host %s: expected %s", rows[i].text, rows[i].loopback ? "loopback" : "not loopback");
    for (size_t i = 0; i < ARRAY_SIZE(names); i++)
        if (address_host_is_loopback(names[i].host, strlen(names[i].host)) != names[i].loopback)
            UNIT_FAIL("host %s: expected %s", names[i].host, names[i].loopback ? "loopback" : "not loopback");
    /* the length is the host's, not the string's: a port after it is not read */
    snprintf(text, sizeof(text), "127.0.0.1:8787");
    ASSERT(address_host_is_loopback(text, 9));
    ASSERT(!address_host_is_loopback("10.0.0.1", 8) && address_host_is_loopback("localhost:1", 9));
}

static void listen_addresses(void) {
    struct sockaddr_storage ss;
    socklen_t sl = 0;
    bool loopback = false;

    ASSERT_INT_EQ(address_listen_parse("127.0.0.1:8787", &ss, &sl, &loopback), 0);
    ASSERT_INT_EQ(ss.ss_family, AF_INET);
    ASSERT_UINT_EQ(sl, sizeof(struct sockaddr_in));
    ASSERT_UINT_EQ(ntohs(((struct sockaddr_in *)&ss)->sin_port), 8787);
    ASSERT_UINT_EQ(ntohl(((struct sockaddr_in *)&ss)->sin_addr.s_addr), INADDR_LOOPBACK);
    ASSERT(loopback);

    ASSERT_INT_EQ(address_listen_parse("localhost:99", &ss, &sl, &loopback), 0);
    ASSERT_INT_EQ(ss.ss_family, AF_INET);
    ASSERT_UINT_EQ(ntohs(((struct sockaddr_in *)&ss)->sin_port), 99);
    ASSERT(loopback);

    ASSERT_INT_EQ(address_listen_parse("[::1]:8080", &ss, &sl, &loopback), 0);
    ASSERT_INT_EQ(ss.ss_family, AF_INET6);
    ASSERT_UINT_EQ(sl, sizeof(struct sockaddr_in6));
    ASSERT_UINT_EQ(ntohs(((struct sockaddr_in6 *)&ss)->sin6_port), 8080);
    ASSERT(IN6_IS_ADDR_LOOPBACK(&((struct sockaddr_in6 *)&ss)->sin6_addr));
    ASSERT(loopback);

    /* IPv4 in IPv6 form binds as the IPv4 address (tokend's IPv6 sockets
     * are IPv6 only) */
    ASSERT_INT_EQ(address_listen_parse("[::ffff:127.0.0.1]:8081", &ss, &sl, &loopback), 0);
    ASSERT_INT_EQ(ss.ss_family, AF_INET);
    ASSERT_UINT_EQ(sl, sizeof(struct sockaddr_in));
    ASSERT_UINT_EQ(ntohs(((struct sockaddr_in *)&ss)->sin_port), 8081);
    ASSERT_UINT_EQ(ntohl(((struct sockaddr_in *)&ss)->sin_addr.s_addr), INADDR_LOOPBACK);
    ASSERT(loopback);
    ASSERT_INT_EQ(address_listen_parse("[::ffff:10.0.0.1]:80", &ss, &sl, &loopback), 0);
    ASSERT(!loopback);

    ASSERT_INT_EQ(address_listen_parse("unix:/run/tokend.sock", &ss, &sl, &loopback), 0);
    ASSERT_INT_EQ(ss.ss_family, AF_UNIX);
    ASSERT_STR_EQ(((struct sockaddr_un *)&ss)->sun_path, "/run/tokend.sock");
    ASSERT(loopback);

    ASSERT_INT_EQ(address_listen_parse("10.0.0.1:80", &ss, &sl, &loopback), 0);
    ASSERT(!loopback);
    ASSERT_INT_EQ(address_listen_parse("[::]:80", &ss, &sl, &loopback), 0);
    ASSERT(!loopback);
    ASSERT_INT_EQ(address_listen_parse("0.0.0.0:80", &ss, &sl, &loopback), 0);
    ASSERT(!loopback);
    ASSERT_INT_EQ(address_listen_parse("128.0.0.1:80", &ss, &sl, NULL), 0);
    ASSERT_INT_EQ(address_listen_parse("nope", &ss, &sl, &loopback), -EINVAL);
    ASSERT_INT_EQ(address_listen_parse("::1:8787", &ss, &sl, &loopback), -EINVAL);
    ASSERT_INT_EQ(address_listen_parse("unix:relative", &ss, &sl, &loopback), -EINVAL);
}

static const unit_test tests[] = {
    TEST(socket_addresses),
    TEST(unix_sockets_are_local),
    TEST(hosts_as_written),
    TEST(listen_addresses),
};

UNIT_MAIN(tests)
