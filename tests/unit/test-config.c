/* Unit tests of src/config.c: what configuration file tokend takes as a
 * whole and what it refuses (unknown sections and keys, keys set twice,
 * lines it cannot read, values that do not fit the others), and that each
 * refusal tells the operator the file and the line. Each key's own values
 * are tested in test-settings.c, the secrets in test-credentials.c. */
#include <errno.h>
#include <stdbool.h>

#include "config-helpers.h"
#include "config.h"
#include "unit.h"
#include "util.h"

static void unknown_section(void) {
    refused_at("[cach]\nmax_entries = 5\n", FIRST_EXTRA_LINE + 1, "[cach]");
    refused_at("[Upstream]\nscope = x\n", FIRST_EXTRA_LINE + 1, "[Upstream]");
    /* a key before any section */
    ASSERT_STARTS_WITH(parse_refused("client_id = x\n" BASE), NAME ":1: ");
}

static void unknown_key(void) {
    refused_at("client_secret = hunter2\n", FIRST_EXTRA_LINE, "client_secret");
    refused_at("[cache]\nmin_tll = 5m\n", FIRST_EXTRA_LINE + 1, "min_tll");
    /* a key of another section is unknown here: no guessing */
    refused_at("listen = 127.0.0.1:1\n", FIRST_EXTRA_LINE, "listen");
    refused_at("\n\n[server]\nBASE_URL = https://x\n", FIRST_EXTRA_LINE + 3, "BASE_URL");
}

static void key_set_twice(void) {
    /* the line named is the second one */
    refused_at("client_id = other\n", FIRST_EXTRA_LINE, "client_id");
    refused_at("[cache]\nmax_entries = 5\n[server]\n[cache]\nmax_entries = 6\n",
               FIRST_EXTRA_LINE + 4, "max_entries");
    refused_at("[upstream]\nbase_url = https://other.example\n", FIRST_EXTRA_LINE + 1, "base_url");
}

static void unparsable_line(void) {
    refused_at("this line has no equals sign\n", FIRST_EXTRA_LINE, "cannot parse");
    refused_at("[cache\n", FIRST_EXTRA_LINE, "cannot parse");
}

static void first_error_wins(void) {
    /* two mistakes: the first one is reported, with its own line */
    refused_at("bogus = 1\n[cache]\nmax_entries = 0\n", FIRST_EXTRA_LINE, "bogus");
    refused_at("[cache]\nmax_entries = 0\nbogus = 1\n", FIRST_EXTRA_LINE + 1, "max_entries");
    refused_at("bogus = 1\nnot a key value line\n", FIRST_EXTRA_LINE, "bogus");
}

/* inih reports the line of the first error of any kind, config.c keeps the
 * message of the first error its handler saw: a syntax error followed by a
 * bad key must not come out as "line of the first, text of the second". */
static void line_matches_message_after_syntax_error(void) {
    char text[512];
    const char *err;

    snprintf(text, sizeof(text), "%s", BASE "not a key value line\n[cache]\nmax_entrie = 5\n");
    err = parse_refused(text);
    if (strstr(err, "max_entrie"))
        ASSERT_STARTS_WITH(err, NAME ":6: ");
    else
        ASSERT_STARTS_WITH(err, NAME ":4: ");
}

static void missing_base_url(void) {
    refused_whole("[upstream]\nclient_id = x\n", "base_url");
    refused_whole("", "base_url");
}

static void missing_client_id(void) {
    refused_whole("[upstream]\nbase_url = https://connect.instacart.com\n", "client_id");
}

static void base_url(const char *url, const char *want) {
    char text[512];

    snprintf(text, sizeof(text), "[upstream]\nbase_url = %s\nclient_id = x\n", url);
    if (want) {
        config *c = parse_ok(text);
        ASSERT_STR_EQ(c->base_url, want);
        config_free(c);
    } else {
        const char *err = parse_refused(text);
        ASSERT_STARTS_WITH(err, NAME ": ");
        ASSERT_CONTAINS(err, "base_url");
    }
}

static void base_url_https(void) {
    base_url("https://connect.instacart.com", "https://connect.instacart.com");
    base_url("https://connect.instacart.com/", "https://connect.instacart.com");
    base_url("https://connect.instacart.com//", "https://connect.instacart.com");
    base_url("https://connect.dev.instacart.tools:8443", "https://connect.dev.instacart.tools:8443");
    base_url("https://gw.example.com/instacart/", "https://gw.example.com/instacart");
    base_url("https://10.1.2.3", "https://10.1.2.3");
}

static void base_url_plain_http_only_to_loopback(void) {
    /* tokens and the secret cross this link in clear text */
    base_url("http://connect.instacart.com", NULL);
    base_url("http://connect.instacart.com:80/", NULL);
    base_url("http://10.0.0.1:8080", NULL);
    base_url("http://192.168.1.1", NULL);
    base_url("http://localhost.example.com", NULL);
    base_url("http://localhostx:8080", NULL);
    base_url("http://127.0.0.1.nip.io", NULL);
    base_url("http://[::2]:8080", NULL);
    base_url("http://[::ffff:10.0.0.1]", NULL);
    /* the local stand-in of Instacart's server */
    base_url("http://127.0.0.1:8080", "http://127.0.0.1:8080");
    base_url("http://127.0.0.1:8080/", "http://127.0.0.1:8080");
    base_url("http://127.1.2.3:9", "http://127.1.2.3:9");
    base_url("http://localhost", "http://localhost");
    base_url("http://LOCALHOST:1234/prefix", "http://LOCALHOST:1234/prefix");
    base_url("http://[::1]:8080", "http://[::1]:8080");
    base_url("http://[::1]", "http://[::1]");
}

static void base_url_refusals(void) {
    base_url("https://user:pass@connect.instacart.com", NULL);
    base_url("https://connect.instacart.com@evil.example", NULL);
    base_url("http://127.0.0.1@evil.example", NULL);
    base_url("https://connect.instacart.com/?client_secret=x", NULL);
    base_url("https://connect.instacart.com/#frag", NULL);
    base_url("https://connect.instacart.com\\evil", NULL);
    base_url("connect.instacart.com", NULL);
    base_url("ftp://connect.instacart.com", NULL);
    base_url("https:/connect.instacart.com", NULL);
    base_url("https://", NULL);
    base_url("https:///v2", NULL);
}

/* A port with no host in front is no host: curl would fail at every mint
 * instead of tokend refusing the file at start. */
static void base_url_port_without_host(void) {
    base_url("https://:443", NULL);
    base_url("https://:443/v2", NULL);
}

static void listen_text(const char *extra, bool ok) {
    char text[512];

    snprintf(text, sizeof(text), BASE "[server]\n%s", extra);
    if (ok) {
        config_free(parse_ok(text));
    } else {
        const char *err = parse_refused(text);
        ASSERT_STARTS_WITH(err, NAME ": ");
        ASSERT_CONTAINS(err, "listen");
    }
}

static void listen_loopback_only_unless_allowed(void) {
    listen_text("listen = 127.0.0.1:8787\n", true);
    listen_text("listen = 127.0.0.2:1\n", true);
    listen_text("listen = localhost:8787\n", true);
    listen_text("listen = [::1]:8787\n", true);
    listen_text("listen = [::ffff:127.0.0.1]:8787\n", true); /* IPv4 loopback in IPv6 form */
    listen_text("listen = [::ffff:10.0.0.1]:8787\n", false);
    listen_text("listen = 0.0.0.0:8787\n", false);
    listen_text("listen = 10.1.2.3:8787\n", false);
    listen_text("listen = [::]:8787\n", false);
    listen_text("listen = 0.0.0.0:8787\nallow_remote = no\n", false);
    listen_text("listen = 0.0.0.0:8787\nallow_remote = yes\n", true);
    listen_text("allow_remote = yes\nlisten = [::]:8787\n", true);
    {
        char text[512];
        snprintf(text, sizeof(text), BASE "[server]\nlisten = 0.0.0.0:8787\n");
        ASSERT_CONTAINS(parse_refused(text), "allow_remote");
    }
}

static void listen_malformed(void) {
    static const char *const bad[] = {
        "127.0.0.1", "127.0.0.1:", ":8787", "127.0.0.1:65536", "127.0.0.1:-1", "127.0.0.1:80x",
        "127.0.0.1:0x50", "example.com:80", "[::1:8787", "::1:8787", "[::1]", "[nope]:80",
        "256.0.0.1:80", "unix:relative.sock", "unix:",
    };
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
        char text[512];
        const char *err;
        snprintf(text, sizeof(text), BASE "[server]\nlisten = %s\nallow_remote = yes\n", bad[i]);
        err = parse_refused(text);
        ASSERT_STARTS_WITH(err, NAME ": ");
        ASSERT_CONTAINS(err, bad[i]);
    }
}

static void retry_max_below_base(void) {
    refused_whole(BASE "retry_base = 3s\nretry_max = 2s\n", "retry_max");
}

static void invalid_default_scope(void) {
    refused_whole(BASE "scope = connect recommendations\n", "scope");
    refused_whole(BASE "scope = a\"b\n", "scope");
}

static void config_file_missing(void) {
    char err[CONFIG_ERR_MAX], *path = NULL;
    config *c = NULL;

    ASSERT(asprintf(&path, "%s/no-such.conf", tmp_dir()) > 0);
    ASSERT_INT_EQ(config_load(path, NULL, &c, err), -ENOENT);
    ASSERT(c == NULL);
    ASSERT_STARTS_WITH(err, path);
    free(path);
}

static void config_file_errors_name_the_file_and_line(void) {
    char err[CONFIG_ERR_MAX], prefix[300];
    const char *text = BASE "[cache]\nmax_entries = lots\n";
    char *path = tmp_file(text, strlen(text), 0644);
    config *c = NULL;

    ASSERT_INT_EQ(config_load(path, NULL, &c, err), -EINVAL);
    ASSERT(c == NULL);
    snprintf(prefix, sizeof(prefix), "%s:5: ", path);
    ASSERT_STARTS_WITH(err, prefix);
    ASSERT_CONTAINS(err, "max_entries");
    free(path);
}

/* A ninth address is refused, not left unbound without a word. */
static void listen_at_most_eight(void) {
    char text[1024];
    const char *err;
    config *c;

    snprintf(text, sizeof(text), BASE "[server]\nlisten = 127.0.0.1:1 127.0.0.1:2 127.0.0.1:3 127.0.0.1:4 "
             "127.0.0.1:5 127.0.0.1:6 127.0.0.1:7 127.0.0.1:8\n");
    c = parse_ok(text);
    ASSERT_UINT_EQ(c->n_listens, 8);
    config_free(c);
    snprintf(text, sizeof(text), BASE "[server]\nlisten = 127.0.0.1:1 127.0.0.1:2 127.0.0.1:3 127.0.0.1:4 "
             "127.0.0.1:5 127.0.0.1:6 127.0.0.1:7 127.0.0.1:8 127.0.0.1:9\n");
    err = parse_refused(text);
    ASSERT_CONTAINS(err, "9 addresses");
    ASSERT_CONTAINS(err, "at most 8");
}

/* A line longer than inih's limit is refused by its own number: inih alone
 * would split it and report the rest as an unknown key on a line that does
 * not exist. */
static void line_too_long_refused_on_its_own_line(void) {
    char text[2048], prefix[32], origins[600] = "";
    const char *err;

    for (size_t n = 0; strlen(origins) + 40 < sizeof(origins);)
        n += (size_t)snprintf(origins + n, sizeof(origins) - n, "https://shop%zu.example ", n);
    snprintf(text, sizeof(text), BASE "[server]\nallowed_origins = %s\nthreads = 2\n", origins);
    err = parse_refused(text);
    snprintf(prefix, sizeof(prefix), NAME ":%d: ", FIRST_EXTRA_LINE + 1);
    if (strncmp(err, prefix, strlen(prefix)) != 0 || !strstr(err, "longer than"))
        UNIT_FAIL("want a refusal of line %d as too long, got: %s", FIRST_EXTRA_LINE + 1, err);
    ASSERT_NOT_CONTAINS(err, "unknown key");
}

/* A proxy only on purpose, its credentials never in the URL (the URL
 * shows in /v1/status). */
static void proxy_urls(void) {
    config *c = parse_ok(BASE "proxy = http://127.0.0.1:3128\n");
    ASSERT_STR_EQ(c->proxy, "http://127.0.0.1:3128");
    config_free(c);
    c = parse_ok(BASE "proxy = https://proxy.example:8443\n");
    config_free(c);
    c = parse_ok(BASE);
    ASSERT(c->proxy == NULL);
    config_free(c);
    refused_whole(BASE "proxy = http://user:pw@127.0.0.1:3128\n", "proxy_credentials_file");
    refused_whole(BASE "proxy = socks5://127.0.0.1:1080\n", "http:// or https://");
    refused_whole(BASE "proxy = http://\n", "no host");
    refused_whole(BASE "proxy_credentials_file = /etc/x\n", "proxy is not");
}

static void shared_section_checked_as_a_whole(void) {
    config *c = parse_ok(BASE "[shared]\nredis = unix:/run/redis/redis.sock\ntimeout = 20ms\n");
    char host[256];
    unsigned port;

    ASSERT(config_shared(c));
    ASSERT_STR_EQ(c->shared_prefix, "tokend");
    ASSERT_UINT_EQ(c->shared_timeout_ms, 20);
    ASSERT_UINT_EQ(c->shared_lease_wait_ms, 2000);
    config_free(c);
    c = parse_ok(BASE "[shared]\nsentinels = 10.0.0.1:26379 [::1]:26380 sentinel.internal:26381\n"
                      "master_name = tokend\n");
    ASSERT_UINT_EQ(c->n_shared_sentinels, 3);
    config_free(c);
    /* an empty [shared] section turns nothing on */
    c = parse_ok(BASE "[shared]\n");
    ASSERT(!config_shared(c));
    config_free(c);
    refused_whole(BASE "[shared]\nkey_file = /k\n", "neither redis nor sentinels");
    refused_whole(BASE "[shared]\nredis = 127.0.0.1:6379\nsentinels = 127.0.0.1:26379\nmaster_name = m\n",
                  "both redis and sentinels");
    refused_whole(BASE "[shared]\nredis = 127.0.0.1\n", "HOST:PORT");
    refused_whole(BASE "[shared]\nredis = 127.0.0.1:0\n", "HOST:PORT");
    refused_whole(BASE "[shared]\nredis = unix:relative.sock\n", "unix:/absolute/path");
    refused_whole(BASE "[shared]\nsentinels = 127.0.0.1:26379\n", "master_name");
    refused_whole(BASE "[shared]\nsentinels = 127.0.0.1\nmaster_name = m\n", "HOST:PORT");
    refused_whole(BASE "[shared]\nredis = 127.0.0.1:6379\nmaster_name = m\n", "sentinels is not");
    refused_whole(BASE "[shared]\nredis = 127.0.0.1:6379\nprefix = a b\n", "prefix");
    refused_whole(BASE "[shared]\nredis = 127.0.0.1:6379\ntls_ca_file = /ca.pem\n", "tls");
    refused_at("[shared]\ntimeout = 0ms\n", FIRST_EXTRA_LINE + 1, "timeout");
    ASSERT_INT_EQ(config_redis_address_parse("[::1]:6379", host, sizeof(host), &port), 0);
    ASSERT_STR_EQ(host, "::1");
    ASSERT_UINT_EQ(port, 6379);
}

static void config_free_accepts_null(void) {
    ASSERT(config_free(NULL) == NULL);
}

static const unit_test tests[] = {
    TEST(unknown_section),
    TEST(unknown_key),
    TEST(key_set_twice),
    TEST(unparsable_line),
    TEST(first_error_wins),
    TEST(line_matches_message_after_syntax_error),
    TEST(missing_base_url),
    TEST(missing_client_id),
    TEST(base_url_https),
    TEST(base_url_plain_http_only_to_loopback),
    TEST(base_url_refusals),
    TEST(base_url_port_without_host),
    TEST(listen_loopback_only_unless_allowed),
    TEST(listen_malformed),
    TEST(retry_max_below_base),
    TEST(invalid_default_scope),
    TEST(config_file_missing),
    TEST(config_file_errors_name_the_file_and_line),
    TEST(config_free_accepts_null),
    TEST(listen_at_most_eight),
    TEST(line_too_long_refused_on_its_own_line),
    TEST(proxy_urls),
    TEST(shared_section_checked_as_a_whole),
};

UNIT_MAIN(tests)
