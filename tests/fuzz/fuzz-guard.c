/* Fuzzes the guard (src/guard.c), the decision of who may call what. The
 * input's first two bytes are flags (HTTP/1.1, relayed, user header,
 * route and key facts, peer); the rest is split at NULs into method, Host,
 * Origin and Sec-Fetch-Site, each absent when empty. Whatever the input,
 * the verdict must keep the security model's rules, checked here a second
 * way: a request let in names tokend in its Host (or, HTTP/1.0, no Host),
 * carries no foreign Origin, is not cross-site unless its origin is
 * allowed, is not relayed outside the frontend routes, and holds the rights
 * its route needs; a refusal has one of the guard's statuses and an error. */
#include <arpa/inet.h>
#include <stdbool.h>
#include <string.h>
#include <strings.h>

#include "auth.h"
#include "fuzz.h"
#include "guard.h"

static char *hosts[] = { "tokend.internal" };
static char *origins[] = { "https://shop.example" };
static const unsigned uids[] = { 1000 };

static bool loopback_or_allowed(const char *host) {
    char name[256];
    const char *colon;
    struct in_addr a4;
    size_t n;

    if (host[0] == '[') { /* ::1, or IPv4 loopback in IPv6 form */
        struct in6_addr a6;
        colon = strchr(host, ']');
        n = colon ? (size_t)(colon - host - 1) : 0;
        if (!colon || n >= sizeof(name) || (colon[1] && colon[1] != ':'))
            return false;
        memcpy(name, host + 1, n);
        name[n] = '\0';
        return inet_pton(AF_INET6, name, &a6) == 1 &&
               (IN6_IS_ADDR_LOOPBACK(&a6) || (IN6_IS_ADDR_V4MAPPED(&a6) && a6.s6_addr[12] == 127));
    }
    colon = strrchr(host, ':');
    n = colon ? (size_t)(colon - host) : strlen(host);
    if (n == 0 || n >= sizeof(name))
        return false;
    memcpy(name, host, n);
    name[n] = '\0';
    return strcasecmp(name, "localhost") == 0 || strcasecmp(name, hosts[0]) == 0 ||
           (inet_pton(AF_INET, name, &a4) == 1 && (ntohl(a4.s_addr) >> 24) == 127);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static const guard_policy policy = { .allowed_hosts = hosts, .n_allowed_hosts = 1,
                                         .allowed_origins = origins, .n_allowed_origins = 1,
                                         .allowed_uids = uids, .n_allowed_uids = 1 };
    char buf[1024];
    const char *field[4] = { 0 };
    guard_peer peer;
    guard_request q;
    guard_verdict v;
    bool in, preflight;
    size_t n;

    if (size < 2 || size - 2 >= sizeof(buf))
        return 0;
    n = size - 2;
    memcpy(buf, data + 2, n);
    buf[n] = '\0';
    for (size_t i = 0, start = 0, f = 0; i <= n && f < 4; i++)
        if (buf[i] == '\0') {
            field[f++] = i > start ? buf + start : NULL;
            start = i + 1;
        }
    peer = (guard_peer){ .unix_socket = data[1] & 0x10, .cred_known = data[1] & 0x20,
                         .uid = data[1] & 0x40 ? 1000 : 1001, .gid = 1001 };
    q = (guard_request){
        .method = field[0] ? field[0] : "GET",
        .http11 = data[0] & 1,
        .host = field[1],
        .origin = field[2],
        .sec_fetch_site = field[3],
        .relayed = data[0] & 2,
        .user_header = data[0] & 4,
        .peer = &peer,
        .needed = (data[0] >> 3) & 0x1f,
        .frontend = data[1] & 1,
        .oauth = data[1] & 2,
        .keyed = data[1] & 4,
        .rights = data[1] & 8 ? (data[0] >> 3) & 0x1f : -1,
        .scope_ok = !(data[1] & 0x80),
        .scope = "connect:fulfillment",
    };
    in = guard_check(&policy, &q, &v);
    preflight = q.frontend && strcmp(q.method, "OPTIONS") == 0;
    fuzz_check(in == (v.status == 0));
    if (!in) {
        fuzz_check(v.status == 400 || v.status == 401 || v.status == 403 || v.status == 421);
        fuzz_check(v.error && v.description && *v.description);
        return 0;
    }
    fuzz_check(q.host ? loopback_or_allowed(q.host) : !q.http11);
    fuzz_check(!q.origin || strcmp(q.origin, origins[0]) == 0);
    fuzz_check(!q.sec_fetch_site || strcasecmp(q.sec_fetch_site, "cross-site") != 0 ||
               (q.origin && strcmp(q.origin, origins[0]) == 0));
    fuzz_check(!q.relayed || q.frontend);
    fuzz_check(!q.needed || preflight || (v.rights & q.needed));
    fuzz_check(q.scope_ok);
    fuzz_check(!q.user_header || (v.rights & (RIGHT_FRONTEND | RIGHT_PROXY)));
    fuzz_check(!peer.unix_socket || (peer.cred_known && peer.uid == 1000));
    fuzz_check(v.cors == NULL || (q.frontend && v.cors == origins[0]));
    return 0;
}
