/* Unit tests of src/guard.c, one group per row of the README's security
 * model ("The security model") that the guard decides. The rows it does
 * not decide are tested where they are: a remote host (listeners bound to
 * loopback: test_access), logs/argv/disk and core dumps (test_access,
 * test_lifecycle, test_observability, the container test), environment
 * proxies and planted FIFOs (test-credentials, test_instacart_failing,
 * test_access, test_lifecycle). */
#include <string.h>

#include "auth.h"
#include "guard.h"
#include "unit.h"

#define SHOP "https://shop.example"

static char *hosts[] = { "tokend.internal" };
static char *origins[] = { SHOP, "https://app.example:8443" };
static const unsigned uids[] = { 1000 };
static const unsigned gids[] = { 50 };

static const guard_policy policy = {
    .allowed_hosts = hosts, .n_allowed_hosts = 1,
    .allowed_origins = origins, .n_allowed_origins = 2,
    .allowed_uids = uids, .n_allowed_uids = 1,
    .allowed_gids = gids, .n_allowed_gids = 1,
};

/* GET /v1/token from a backend holding a token key, on loopback */
static guard_request backend(void) {
    return (guard_request){ .method = "GET", .http11 = true, .host = "127.0.0.1:8787", .needed = RIGHT_TOKEN,
                            .keyed = true, .rights = RIGHT_TOKEN, .scope_ok = true };
}

/* GET /v1/frontend/token from the site's proxy, with its key and the user header */
static guard_request frontend(void) {
    return (guard_request){ .method = "GET", .http11 = true, .host = "127.0.0.1", .needed = RIGHT_FRONTEND,
                            .frontend = true, .user_header = true, .keyed = true,
                            .rights = RIGHT_FRONTEND | RIGHT_PROXY, .scope_ok = true };
}

static unsigned verdict(const guard_request *q, const char *error) {
    guard_verdict v;
    bool in = guard_check(&policy, q, &v);

    ASSERT(in == (v.status == 0));
    if (!in && error)
        ASSERT_STR_EQ(v.error, error);
    if (!in)
        ASSERT(v.description && *v.description);
    return v.status;
}

static void a_backend_with_its_key_is_let_in(void) {
    guard_request q = backend();
    guard_verdict v;

    ASSERT(guard_check(&policy, &q, &v));
    ASSERT_INT_EQ(v.rights, RIGHT_TOKEN);
    ASSERT(v.cors == NULL);
}

/* row: a web page in a user's browser (DNS rebinding, cross-site requests) */
static void dns_rebinding_is_misdirected(void) {
    static const char *const bad[] = { "evil.example", "evil.example:8787", "127.0.0.1.evil.example",
                                       "[::2]", "[::1", "127.0.0.1:", "127.0.0.1:80x", "", "10.0.0.1",
                                       "[::ffff:10.0.0.1]", "[::]:8787", "0.0.0.0", "128.0.0.1" };
    static const char *const good[] = { "127.0.0.1", "127.3.4.5:8787", "localhost", "LOCALHOST:1",
                                        "[::1]", "[::1]:8787", "tokend.internal", "TOKEND.internal:80",
                                        /* the one loopback rule of address.c */
                                        "[0:0:0:0:0:0:0:1]:8787", "[::ffff:127.0.0.1]:8787", "[::FFFF:127.9.9.9]" };
    guard_request q = backend();

    for (size_t i = 0; i < sizeof(bad) / sizeof(*bad); i++) {
        q.host = bad[i];
        ASSERT_UINT_EQ(verdict(&q, "misdirected_request"), 421);
    }
    for (size_t i = 0; i < sizeof(good) / sizeof(*good); i++) {
        q.host = good[i];
        ASSERT_UINT_EQ(verdict(&q, NULL), 0);
    }
}

static void http11_without_host_is_refused_http10_is_not(void) {
    guard_request q = backend();

    q.host = NULL;
    ASSERT_UINT_EQ(verdict(&q, "invalid_request"), 400);
    q.http11 = false;
    ASSERT_UINT_EQ(verdict(&q, NULL), 0);
}

static void a_foreign_origin_is_refused(void) {
    guard_request q = backend();

    q.origin = "https://evil.example";
    ASSERT_UINT_EQ(verdict(&q, "forbidden"), 403);
    q.origin = "https://shop.example.evil.example";
    ASSERT_UINT_EQ(verdict(&q, "forbidden"), 403);
    q.origin = "null";
    ASSERT_UINT_EQ(verdict(&q, "forbidden"), 403);
    q.origin = SHOP;
    ASSERT_UINT_EQ(verdict(&q, NULL), 0);
}

static void cross_site_in_any_case_is_refused_unless_the_origin_is_allowed(void) {
    static const char *const sites[] = { "cross-site", "Cross-Site", "CROSS-SITE" };
    guard_request q = backend();

    for (size_t i = 0; i < 3; i++) {
        q.sec_fetch_site = sites[i];
        q.origin = NULL;
        ASSERT_UINT_EQ(verdict(&q, "forbidden"), 403);
        q.origin = SHOP;
        ASSERT_UINT_EQ(verdict(&q, NULL), 0);
    }
    q.origin = NULL;
    q.sec_fetch_site = "same-origin";
    ASSERT_UINT_EQ(verdict(&q, NULL), 0);
    q.sec_fetch_site = "none";
    ASSERT_UINT_EQ(verdict(&q, NULL), 0);
}

static void cors_echoes_only_an_allowed_origin_on_frontend_routes(void) {
    guard_request q = frontend();
    guard_verdict v;

    q.origin = SHOP;
    ASSERT(guard_check(&policy, &q, &v));
    ASSERT(v.cors == origins[0]);
    q = backend();
    q.origin = SHOP;
    ASSERT(guard_check(&policy, &q, &v));
    ASSERT(v.cors == NULL);
    /* a refusal after the origin check stays readable by the allowed page */
    q = frontend();
    q.origin = SHOP;
    q.rights = -1;
    ASSERT(!guard_check(&policy, &q, &v));
    ASSERT_UINT_EQ(v.status, 401);
    ASSERT(v.cors == origins[0]);
}

/* row: a request relayed by a proxy that should not relay it */
static void relayed_requests_only_on_frontend_routes(void) {
    guard_request q = backend();

    q.relayed = true;
    ASSERT_UINT_EQ(verdict(&q, "forbidden"), 403);
    q = frontend();
    q.relayed = true;
    ASSERT_UINT_EQ(verdict(&q, NULL), 0);
}

/* row: another local user or process */
static void no_key_or_an_unknown_key_is_unauthorized(void) {
    guard_request q = backend();

    q.rights = -1;
    ASSERT_UINT_EQ(verdict(&q, "unauthorized"), 401);
    q.oauth = true; /* the drop-in speaks RFC 6749 §5.2 */
    ASSERT_UINT_EQ(verdict(&q, "invalid_client"), 401);
}

static void a_key_without_the_right_is_forbidden(void) {
    guard_request q = backend();

    q.rights = RIGHT_CLIENT_TOKEN;
    ASSERT_UINT_EQ(verdict(&q, "forbidden"), 403);
    q.needed = RIGHT_ADMIN;
    q.rights = RIGHT_TOKEN | RIGHT_CLIENT_TOKEN | RIGHT_FRONTEND | RIGHT_PROXY;
    ASSERT_UINT_EQ(verdict(&q, "forbidden"), 403);
    q.oauth = true;
    q.needed = RIGHT_TOKEN | RIGHT_CLIENT_TOKEN;
    q.rights = RIGHT_ADMIN;
    ASSERT_UINT_EQ(verdict(&q, "unauthorized_client"), 400);
}

static void without_a_keys_file_every_right_but_frontend(void) {
    guard_request q = backend();
    guard_verdict v;

    q.keyed = false;
    q.rights = -1;
    ASSERT(guard_check(&policy, &q, &v));
    ASSERT_INT_EQ(v.rights, RIGHT_TOKEN | RIGHT_CLIENT_TOKEN | RIGHT_ADMIN);
    q = frontend();
    q.keyed = false;
    q.rights = -1;
    q.user_header = false;
    ASSERT_UINT_EQ(verdict(&q, "forbidden"), 403);
}

static void unix_peers_outside_the_allow_lists_are_refused(void) {
    guard_peer stranger = { .unix_socket = true, .cred_known = true, .uid = 1001, .gid = 1001 };
    guard_peer by_uid = { .unix_socket = true, .cred_known = true, .uid = 1000, .gid = 1001 };
    guard_peer by_gid = { .unix_socket = true, .cred_known = true, .uid = 1001, .gid = 50 };
    guard_peer unknown = { .unix_socket = true };
    guard_peer tcp = { .unix_socket = false };
    guard_policy open = policy;
    guard_request q = backend();

    q.peer = &stranger;
    ASSERT_UINT_EQ(verdict(&q, "forbidden"), 403);
    q.peer = &unknown;
    ASSERT_UINT_EQ(verdict(&q, "forbidden"), 403);
    q.peer = &by_uid;
    ASSERT_UINT_EQ(verdict(&q, NULL), 0);
    q.peer = &by_gid;
    ASSERT_UINT_EQ(verdict(&q, NULL), 0);
    q.peer = &tcp;
    ASSERT_UINT_EQ(verdict(&q, NULL), 0);
    open.n_allowed_uids = open.n_allowed_gids = 0;
    ASSERT(guard_peer_allowed(&open, &stranger));
}

/* row: a signed-in site user naming someone else */
static void the_user_header_needs_a_frontend_or_proxy_key(void) {
    guard_request q = backend();

    q.user_header = true;
    ASSERT_UINT_EQ(verdict(&q, "forbidden"), 403);
    q.rights = RIGHT_TOKEN | RIGHT_PROXY;
    ASSERT_UINT_EQ(verdict(&q, NULL), 0);
    q = frontend();
    ASSERT_UINT_EQ(verdict(&q, NULL), 0);
}

/* row: a signed-in site user asking for a wider scope */
static void a_scope_the_key_may_not_ask_for_is_forbidden(void) {
    guard_request q = frontend();
    guard_verdict v;

    q.scope_ok = false;
    q.scope = "connect:fulfillment";
    ASSERT(!guard_check(&policy, &q, &v));
    ASSERT_UINT_EQ(v.status, 403);
    ASSERT(strstr(v.description, "connect:fulfillment") != NULL);
}

/* row: someone who stole an API key (removed from the keys file: no key of ours) */
static void a_removed_key_is_no_key(void) {
    guard_request q = frontend();

    q.rights = -1;
    ASSERT_UINT_EQ(verdict(&q, "unauthorized"), 401);
}

/* row: a caller holding a token key gets any user's token, by design */
static void a_token_key_is_let_in_for_any_user(void) {
    guard_request q = backend();

    ASSERT_UINT_EQ(verdict(&q, NULL), 0);
}

static void a_preflight_needs_no_key(void) {
    guard_request q = frontend();

    q.method = "OPTIONS";
    q.rights = -1;
    q.user_header = false;
    q.origin = SHOP;
    ASSERT_UINT_EQ(verdict(&q, NULL), 0);
    q.origin = "https://evil.example";
    ASSERT_UINT_EQ(verdict(&q, "forbidden"), 403);
    q = backend();
    q.method = "OPTIONS"; /* not a frontend route: no preflight there */
    q.rights = -1;
    ASSERT_UINT_EQ(verdict(&q, "unauthorized"), 401);
}

static const unit_test tests[] = {
    TEST(a_backend_with_its_key_is_let_in),
    TEST(dns_rebinding_is_misdirected),
    TEST(http11_without_host_is_refused_http10_is_not),
    TEST(a_foreign_origin_is_refused),
    TEST(cross_site_in_any_case_is_refused_unless_the_origin_is_allowed),
    TEST(cors_echoes_only_an_allowed_origin_on_frontend_routes),
    TEST(relayed_requests_only_on_frontend_routes),
    TEST(no_key_or_an_unknown_key_is_unauthorized),
    TEST(a_key_without_the_right_is_forbidden),
    TEST(without_a_keys_file_every_right_but_frontend),
    TEST(unix_peers_outside_the_allow_lists_are_refused),
    TEST(the_user_header_needs_a_frontend_or_proxy_key),
    TEST(a_scope_the_key_may_not_ask_for_is_forbidden),
    TEST(a_removed_key_is_no_key),
    TEST(a_token_key_is_let_in_for_any_user),
    TEST(a_preflight_needs_no_key),
};

UNIT_MAIN(tests)
