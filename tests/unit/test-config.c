/* Unit tests of src/config.c (and, through config_load, src/secret.c): what
 * configuration tokend accepts, what it refuses, and that each refusal
 * tells the operator the file and the line. */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <sys/stat.h>
#include <syslog.h>

#include "config.h"
#include "unit.h"
#include "util.h"

#define NAME "t.conf"
#define BASE                                                                                       \
    "[upstream]\n"                                                                                 \
    "base_url = https://connect.dev.instacart.tools\n"                                             \
    "client_id = cid\n"
/* text appended to BASE starts on this line */
#define FIRST_EXTRA_LINE 4

static config *parse_ok(const char *text) {
    char err[CONFIG_ERR_MAX] = "";
    config *c = NULL;
    int r = config_parse_string(text, NAME, &c, err);

    if (r != 0)
        UNIT_FAIL("refused (%d): %s\n--- the file:\n%s", r, err, text);
    ASSERT(c);
    return c;
}

/* Parses text, expects a refusal; returns the message. */
static const char *parse_refused(const char *text) {
    static char err[CONFIG_ERR_MAX];
    config *c = NULL;
    int r;

    err[0] = '\0';
    r = config_parse_string(text, NAME, &c, err);
    if (r != -EINVAL)
        UNIT_FAIL("accepted (%d), want -EINVAL:\n%s", r, text);
    ASSERT(c == NULL);
    ASSERT(err[0] != '\0');
    return err;
}

/* BASE + extra must be refused with a message for line `line` that mentions
 * `what` (the key, the section or the value). */
static void refused_at(const char *extra, int line, const char *what) {
    char text[1024], prefix[32];
    const char *err;

    snprintf(text, sizeof(text), "%s%s", BASE, extra);
    snprintf(prefix, sizeof(prefix), NAME ":%d: ", line);
    err = parse_refused(text);
    if (strncmp(err, prefix, strlen(prefix)) != 0 || !strstr(err, what))
        UNIT_FAIL("for\n%s\nthe message should start with '%s' and mention '%s', but is:\n%s",
                  text, prefix, what, err);
}

/* A refusal of the file as a whole (no line): "name: ..." mentioning what. */
static void refused_whole(const char *text, const char *what) {
    const char *err = parse_refused(text);

    ASSERT_STARTS_WITH(err, NAME ": ");
    ASSERT_CONTAINS(err, what);
}

static void minimal_file(void) {
    config *c = parse_ok(BASE);

    ASSERT_STR_EQ(c->path, NAME);
    ASSERT_STR_EQ(c->base_url, "https://connect.dev.instacart.tools");
    ASSERT_STR_EQ(c->client_id, "cid");
    ASSERT(c->client_secret == NULL); /* parse_string never reads a secret */
    /* the defaults the sample file documents */
    ASSERT_STR_EQ(c->default_scope, "connect:recommendations");
    ASSERT_STR_EQ(c->listen, "127.0.0.1:8787");
    ASSERT(!c->allow_remote);
    ASSERT_UINT_EQ(c->connect_timeout_ms, 5000);
    ASSERT_UINT_EQ(c->request_timeout_ms, 10000);
    ASSERT_UINT_EQ(c->max_entries, 100000);
    ASSERT_UINT_EQ(c->min_ttl_ms, 300000);
    ASSERT_UINT_EQ(c->refresh_before_pct, 25);
    ASSERT_UINT_EQ(c->failure_ttl_ms, 30000);
    ASSERT_UINT_EQ(c->max_waiters, 4096);
    ASSERT_INT_EQ(c->log_level, LOG_INFO);
    config_free(c);
}

static void every_key_in_its_unit(void) {
    config *c = parse_ok("; a comment\n"
                         "# another\n"
                         "\n"
                         "[upstream]\n"
                         "base_url = https://connect.instacart.com/\n"
                         "client_id = my-app\n"
                         "client_secret_file = /etc/instacart-tokend/client-secret\n"
                         "scope = connect:post_checkout\n"
                         "connect_timeout = 2s\n"
                         "attempt_timeout = 750ms\n"
                         "request_timeout = 1m\n"
                         "max_concurrent = 8\n"
                         "queue_max = 0\n"
                         "retry_base = 50ms\n"
                         "retry_max = 5\n"
                         "breaker_failures = 3\n"
                         "breaker_cooldown = 1h\n"
                         "[cache]\n"
                         "max_entries = 10\n"
                         "min_ttl = 0\n"
                         "refresh_before = 10%\n"
                         "failure_ttl = 0s\n"
                         "max_waiters = 1\n"
                         "[server]\n"
                         "listen = [::1]:9000\n"
                         "allow_remote = yes\n"
                         "threads = 4\n"
                         "max_connections = 100\n"
                         "idle_timeout = 90s\n"
                         "shutdown_timeout = 0\n"
                         "[log]\n"
                         "level = debug\n");

    ASSERT_STR_EQ(c->base_url, "https://connect.instacart.com"); /* no trailing slash */
    ASSERT_STR_EQ(c->client_id, "my-app");
    ASSERT_STR_EQ(c->client_secret_file, "/etc/instacart-tokend/client-secret");
    ASSERT_STR_EQ(c->default_scope, "connect:post_checkout");
    ASSERT_UINT_EQ(c->connect_timeout_ms, 2000);
    ASSERT_UINT_EQ(c->attempt_timeout_ms, 750);
    ASSERT_UINT_EQ(c->request_timeout_ms, 60000);
    ASSERT_UINT_EQ(c->max_concurrent, 8);
    ASSERT_UINT_EQ(c->queue_max, 0);
    ASSERT_UINT_EQ(c->retry_base_ms, 50);
    ASSERT_UINT_EQ(c->retry_max_ms, 5000);
    ASSERT_UINT_EQ(c->breaker_failures, 3);
    ASSERT_UINT_EQ(c->breaker_cooldown_ms, 3600000);
    ASSERT_UINT_EQ(c->max_entries, 10);
    ASSERT_UINT_EQ(c->min_ttl_ms, 0);
    ASSERT_UINT_EQ(c->refresh_before_pct, 10);
    ASSERT_UINT_EQ(c->failure_ttl_ms, 0);
    ASSERT_UINT_EQ(c->max_waiters, 1);
    ASSERT_STR_EQ(c->listen, "[::1]:9000");
    ASSERT(c->allow_remote);
    ASSERT_UINT_EQ(c->threads, 4);
    ASSERT_UINT_EQ(c->max_connections, 100);
    ASSERT_UINT_EQ(c->idle_timeout_ms, 90000);
    ASSERT_UINT_EQ(c->shutdown_timeout_ms, 0);
    ASSERT_INT_EQ(c->log_level, LOG_DEBUG);
    config_free(c);
}

static void booleans_and_levels(void) {
    static const struct {
        const char *text;
        bool want;
    } bools[] = { { "yes", true }, { "YES", true }, { "true", true }, { "1", true },
                  { "no", false }, { "False", false }, { "0", false } };
    static const struct {
        const char *text;
        int want;
    } levels[] = { { "error", LOG_ERR }, { "warning", LOG_WARNING }, { "notice", LOG_NOTICE },
                   { "info", LOG_INFO }, { "DEBUG", LOG_DEBUG } };
    char text[512];

    for (size_t i = 0; i < ARRAY_SIZE(bools); i++) {
        snprintf(text, sizeof(text), BASE "[server]\nallow_remote = %s\n", bools[i].text);
        config *c = parse_ok(text);
        ASSERT_INT_EQ(c->allow_remote, bools[i].want);
        config_free(c);
    }
    for (size_t i = 0; i < ARRAY_SIZE(levels); i++) {
        snprintf(text, sizeof(text), BASE "[log]\nlevel = %s\n", levels[i].text);
        config *c = parse_ok(text);
        ASSERT_INT_EQ(c->log_level, levels[i].want);
        config_free(c);
    }
}

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

static void empty_value(void) {
    refused_at("scope =\n", FIRST_EXTRA_LINE, "scope");
    refused_at("client_secret_file = \n", FIRST_EXTRA_LINE, "client_secret_file");
    refused_at("[cache]\nmax_entries =\n", FIRST_EXTRA_LINE + 1, "max_entries");
    refused_at("[cache]\nmin_ttl =\n", FIRST_EXTRA_LINE + 1, "min_ttl");
    refused_at("[cache]\nrefresh_before =\n", FIRST_EXTRA_LINE + 1, "refresh_before");
    refused_at("[server]\nallow_remote =\n", FIRST_EXTRA_LINE + 1, "allow_remote");
    refused_at("[log]\nlevel =\n", FIRST_EXTRA_LINE + 1, "level");
    ASSERT_STARTS_WITH(parse_refused("[upstream]\nbase_url =\nclient_id = x\n"), NAME ":2: ");
}

static void bad_values(void) {
    static const struct {
        const char *extra;
        const char *key;
    } bad[] = {
        /* numbers */
        { "max_concurrent = many\n", "max_concurrent" },
        { "max_concurrent = -1\n", "max_concurrent" },
        { "max_concurrent = 1.5\n", "max_concurrent" },
        { "max_concurrent = 0x10\n", "max_concurrent" },
        { "max_concurrent = 8 requests\n", "max_concurrent" },
        { "[cache]\nmax_entries = 1e6\n", "max_entries" },
        /* durations */
        { "connect_timeout = soon\n", "connect_timeout" },
        { "connect_timeout = 1.5s\n", "connect_timeout" },
        { "connect_timeout = -1s\n", "connect_timeout" },
        { "connect_timeout = 5 s\n", "connect_timeout" },
        { "connect_timeout = 5sec\n", "connect_timeout" },
        { "connect_timeout = 1d\n", "connect_timeout" },
        /* percentages */
        { "[cache]\nrefresh_before = 25\n", "refresh_before" },
        { "[cache]\nrefresh_before = %\n", "refresh_before" },
        { "[cache]\nrefresh_before = x%\n", "refresh_before" },
        { "[cache]\nrefresh_before = -5%\n", "refresh_before" },
        { "[cache]\nrefresh_before = 2.5%\n", "refresh_before" },
        { "[cache]\nrefresh_before = 25%%\n", "refresh_before" },
        /* booleans */
        { "[server]\nallow_remote = maybe\n", "allow_remote" },
        { "[server]\nallow_remote = 2\n", "allow_remote" },
        /* log levels */
        { "[log]\nlevel = verbose\n", "level" },
        { "[log]\nlevel = 7\n", "level" },
        { "[log]\nlevel = emerg\n", "level" },
        /* strings with control characters */
        { "scope = a\x01" "b\n", "scope" },
    };
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
        int line = FIRST_EXTRA_LINE + (bad[i].extra[0] == '[' ? 1 : 0);
        refused_at(bad[i].extra, line, bad[i].key);
    }
}

static void out_of_range(void) {
    static const struct {
        const char *extra;
        const char *key;
    } bad[] = {
        { "connect_timeout = 99ms\n", "connect_timeout" },
        { "connect_timeout = 61s\n", "connect_timeout" },
        { "attempt_timeout = 301s\n", "attempt_timeout" },
        { "request_timeout = 0\n", "request_timeout" },
        { "max_concurrent = 0\n", "max_concurrent" },
        { "max_concurrent = 1025\n", "max_concurrent" },
        { "max_concurrent = 99999999999999999999999\n", "max_concurrent" },
        { "queue_max = 1000001\n", "queue_max" },
        { "retry_base = 0\n", "retry_base" },
        { "retry_max = 11m\n", "retry_max" },
        { "breaker_failures = 0\n", "breaker_failures" },
        { "breaker_cooldown = 2h\n", "breaker_cooldown" },
        { "[cache]\nmax_entries = 0\n", "max_entries" },
        { "[cache]\nmax_entries = 100000001\n", "max_entries" },
        { "[cache]\nmin_ttl = 43201s\n", "min_ttl" },
        { "[cache]\nmin_ttl = 13h\n", "min_ttl" },
        { "[cache]\nrefresh_before = 51%\n", "refresh_before" },
        { "[cache]\nrefresh_before = 100%\n", "refresh_before" },
        { "[cache]\nfailure_ttl = 61m\n", "failure_ttl" },
        { "[cache]\nmax_waiters = 0\n", "max_waiters" },
        { "[server]\nthreads = 0\n", "threads" },
        { "[server]\nthreads = 257\n", "threads" },
        { "[server]\nmax_connections = 0\n", "max_connections" },
        { "[server]\nidle_timeout = 999ms\n", "idle_timeout" },
        { "[server]\nshutdown_timeout = 11m\n", "shutdown_timeout" },
    };
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
        int line = FIRST_EXTRA_LINE + (bad[i].extra[0] == '[' ? 1 : 0);
        refused_at(bad[i].extra, line, bad[i].key);
    }
    /* and the bounds themselves are fine */
    config *c = parse_ok(BASE "connect_timeout = 100ms\nmax_concurrent = 1024\n"
                              "[cache]\nmin_ttl = 12h\nrefresh_before = 50%\n"
                              "[server]\nthreads = 256\nidle_timeout = 1s\n");
    ASSERT_UINT_EQ(c->connect_timeout_ms, 100);
    ASSERT_UINT_EQ(c->max_concurrent, 1024);
    ASSERT_UINT_EQ(c->min_ttl_ms, 12 * 3600000ULL);
    ASSERT_UINT_EQ(c->refresh_before_pct, 50);
    ASSERT_UINT_EQ(c->threads, 256);
    config_free(c);
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

/* The sample file must parse, and each default it shows commented out must
 * be the built-in default: an operator who uncomments a line gets no
 * surprise. */
static char *read_text(const char *path) {
    FILE *f = fopen(path, "re");
    char *buf;
    long n;

    if (!f)
        UNIT_FAIL("cannot open %s (set TOKEND_SAMPLE_CONF to config/tokend.conf)", path);
    ASSERT(fseek(f, 0, SEEK_END) == 0);
    n = ftell(f);
    ASSERT(n > 0);
    rewind(f);
    buf = malloc((size_t)n + 1);
    ASSERT(buf);
    ASSERT(fread(buf, 1, (size_t)n, f) == (size_t)n);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

/* The table's index of [section] name, or -1. */
static long table_index(const char *section, size_t section_len, const char *name, size_t name_len) {
    for (size_t i = 0; i < config_key_count(); i++) {
        struct config_key_info k;
        config_key_get(i, &k);
        if (strlen(k.section) == section_len && strncmp(k.section, section, section_len) == 0 &&
            strlen(k.name) == name_len && strncmp(k.name, name, name_len) == 0)
            return (long)i;
    }
    return -1;
}

/* config/tokend.conf and the table of settings agree: every key of the
 * table is in the sample under its section, as "KEY = VALUE" or commented
 * out as "#KEY = VALUE" (or "#KEY =" when it has no default), with the
 * table's default when it has one; the sample has no key the table lacks.
 * Prose comments start with "# ". */
static void sample_file_and_table_agree(void) {
    const char *path = getenv("TOKEND_SAMPLE_CONF");
    char *text;
    const char *section = "";
    size_t section_len = 0, lineno = 0, n = config_key_count();
    size_t *seen_at = calloc(n, sizeof(*seen_at));
    config *c;

    ASSERT(seen_at);
    if (!path || !*path)
        path = TOKEND_SAMPLE_CONF;
    text = read_text(path);
    for (const char *p = text; *p;) {
        const char *eol = strchrnul(p, '\n'), *name, *value;
        size_t name_len;
        long i;
        struct config_key_info k;

        lineno++;
        if (*p == '[') {
            section = p + 1;
            section_len = strcspn(section, "]\n");
        } else if (*p != ';' && strncmp(p, "# ", 2) != 0 && p != eol && !(p[0] == '#' && p + 1 == eol)) {
            name = p + (*p == '#');
            name_len = strspn(name, "abcdefghijklmnopqrstuvwxyz_");
            if (name_len == 0 || strncmp(name + name_len, " =", 2) != 0 ||
                (name[name_len + 2] != ' ' && name + name_len + 2 != eol))
                UNIT_FAIL("%s:%zu: neither '[section]', 'KEY = VALUE', '#KEY = VALUE' nor a comment "
                          "starting '# ': %.*s", path, lineno, (int)(eol - p), p);
            i = table_index(section, section_len, name, name_len);
            if (i < 0)
                UNIT_FAIL("%s:%zu: [%.*s] %.*s is not in the table of settings (src/config.c)", path, lineno,
                          (int)section_len, section, (int)name_len, name);
            if (seen_at[i])
                UNIT_FAIL("%s:%zu: [%.*s] %.*s is already on line %zu", path, lineno, (int)section_len, section,
                          (int)name_len, name, seen_at[i]);
            seen_at[i] = lineno;
            config_key_get((size_t)i, &k);
            value = name + name_len + 2 + (name + name_len + 2 != eol);
            if (k.def && ((size_t)(eol - value) != strlen(k.def) || strncmp(value, k.def, strlen(k.def)) != 0))
                UNIT_FAIL("%s:%zu: [%s] %s shows '%.*s' but its default in the table is '%s'", path, lineno,
                          k.section, k.name, (int)(eol - value), value, k.def);
        } else if (strncmp(p, "# ", 2) == 0) {
            /* a key commented out with a space would be missed above */
            name = p + 2;
            name_len = strspn(name, "abcdefghijklmnopqrstuvwxyz_");
            if (name_len && strncmp(name + name_len, " = ", 3) == 0 &&
                table_index(section, section_len, name, name_len) >= 0)
                UNIT_FAIL("%s:%zu: write a key commented out as '#%.*s = ...', without the space", path,
                          lineno, (int)name_len, name);
        }
        p = *eol ? eol + 1 : eol;
    }
    for (size_t i = 0; i < n; i++)
        if (!seen_at[i]) {
            struct config_key_info k;
            config_key_get(i, &k);
            UNIT_FAIL("%s: [%s] %s is in the table of settings but not in the sample; add '#%s = %s' "
                      "under [%s]", path, k.section, k.name, k.name, k.def ? k.def : "", k.section);
        }
    /* and the sample as shipped is a configuration tokend takes */
    c = parse_ok(text);
    config_free(c);
    free(seen_at);
    free(text);
}

/* Each number's bounds, as the table writes them (and so the man page and
 * --describe-config), are values the file accepts. */
static void every_bound_is_accepted_as_written(void) {
    for (size_t i = 0; i < config_key_count(); i++) {
        struct config_key_info k;
        char text[1024];
        config *c;

        config_key_get(i, &k);
        if (!k.min[0])
            continue;
        for (int hi = 0; hi < 2; hi++) {
            const char *bound = hi ? k.max : k.min;
            /* keys bound to each other: retry_base <= retry_max */
            const char *other = !strcmp(k.name, "retry_base") ? "retry_max = 10m\n"
                                : !strcmp(k.name, "retry_max") ? "retry_base = 1ms\n" : "";
            snprintf(text, sizeof(text), "%s[shared]\nredis = 127.0.0.1:6379\n[%s]\n%s%s = %s\n", BASE,
                     k.section, strcmp(k.section, "upstream") ? "" : other, k.name, bound);
            c = parse_ok(text);
            config_free(c);
        }
    }
}

/* Each key's help fits the one line the man page and --describe-config
 * give it, and each type is one the man page explains. */
static void every_key_has_help_and_a_known_type(void) {
    static const char *const types[] = { "string", "integer", "duration", "boolean",
                                         "percentage", "level", "mode", "size" };
    for (size_t i = 0; i < config_key_count(); i++) {
        struct config_key_info k;
        bool known = false;

        config_key_get(i, &k);
        ASSERT(k.help && *k.help && !strchr(k.help, '\n'));
        for (size_t t = 0; t < sizeof(types) / sizeof(types[0]); t++)
            known |= strcmp(k.type, types[t]) == 0;
        if (!known)
            UNIT_FAIL("[%s] %s has type '%s', which the man page does not explain", k.section, k.name, k.type);
    }
}

/* config_key_differs() sees a change of each key: a reload's report of
 * changed keys rests on it. Changing a key from its default to another
 * value the file accepts must make it differ, and no other key. */
static void a_changed_key_differs_and_no_other(void) {
    static const struct { const char *section, *name, *value; } changes[] = {
        { "upstream", "scope", "connect:other" },
        { "upstream", "connect_timeout", "7s" },
        { "upstream", "max_concurrent", "3" },
        { "cache", "refresh_before", "10%" },
        { "server", "allow_remote", "yes" },
        { "server", "socket_mode", "0600" },
        { "frontend", "max_body", "1MiB" },
        { "shared", "prefix", "other" },
        { "log", "level", "debug" },
    };
    config *base = parse_ok(BASE "[shared]\nredis = 127.0.0.1:6379\n");

    for (size_t t = 0; t < sizeof(changes) / sizeof(changes[0]); t++) {
        char text[512];
        config *c;
        long i = table_index(changes[t].section, strlen(changes[t].section), changes[t].name,
                             strlen(changes[t].name));

        ASSERT(i >= 0);
        snprintf(text, sizeof(text), BASE "[shared]\nredis = 127.0.0.1:6379\n[%s]\n%s = %s\n",
                 changes[t].section, changes[t].name, changes[t].value);
        c = parse_ok(text);
        for (size_t j = 0; j < config_key_count(); j++)
            if (config_key_differs(j, base, c) != (j == (size_t)i)) {
                struct config_key_info k;
                config_key_get(j, &k);
                UNIT_FAIL("setting [%s] %s: [%s] %s %s", changes[t].section, changes[t].name, k.section,
                          k.name, j == (size_t)i ? "does not differ" : "differs too");
            }
        config_free(c);
    }
    config_free(base);
}

/* ---- files on disk: config_load and the client secret ---- */

static char tmp_root[256];

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    return remove(path);
}

static void tmp_cleanup(void) {
    if (tmp_root[0])
        nftw(tmp_root, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static const char *tmp_dir(void) {
    if (!tmp_root[0]) {
        const char *base = getenv("TMPDIR");
        snprintf(tmp_root, sizeof(tmp_root), "%s/tokend-unit-XXXXXX", base && *base ? base : "/tmp");
        ASSERT(mkdtemp(tmp_root));
        atexit(tmp_cleanup);
    }
    return tmp_root;
}

/* A new file in the temporary directory holding content, with mode. */
static char *tmp_file(const char *content, size_t len, mode_t mode) {
    char *path = NULL;
    int fd;

    ASSERT(asprintf(&path, "%s/file-XXXXXX", tmp_dir()) > 0);
    fd = mkstemp(path);
    ASSERT(fd >= 0);
    ASSERT(write(fd, content, len) == (ssize_t)len);
    ASSERT(fchmod(fd, mode) == 0);
    ASSERT(close(fd) == 0);
    return path;
}

/* A configuration file naming secret_path as client_secret_file. */
static char *conf_file(const char *secret_path) {
    char text[1024];

    if (secret_path)
        snprintf(text, sizeof(text), BASE "client_secret_file = %s\n", secret_path);
    else
        snprintf(text, sizeof(text), "%s", BASE);
    return tmp_file(text, strlen(text), 0644);
}

/* config_load with a secret file holding content at mode: the result, and
 * the message in err. */
static int load_with_secret(const char *content, size_t len, mode_t mode, config **c,
                            char err[CONFIG_ERR_MAX], char **ret_secret_path) {
    char *secret = tmp_file(content, len, mode), *conf = conf_file(secret);
    int r;

    *c = NULL;
    err[0] = '\0';
    r = config_load(conf, NULL, c, err);
    free(conf);
    if (ret_secret_path)
        *ret_secret_path = secret;
    else
        free(secret);
    return r;
}

static void secret_loaded_and_newline_stripped(void) {
    static const struct {
        const char *content;
        const char *want;
    } cases[] = {
        { "s3cret\n", "s3cret" },       { "s3cret", "s3cret" },
        { "s3cret\r\n", "s3cret" },     { "s3cret \t\n\n", "s3cret" },
        { "with inner space\n", "with inner space" },
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        char err[CONFIG_ERR_MAX];
        config *c;
        int r = load_with_secret(cases[i].content, strlen(cases[i].content), 0600, &c, err, NULL);
        if (r != 0)
            UNIT_FAIL("refused (%d): %s", r, err);
        ASSERT_STR_EQ(c->client_secret, cases[i].want);
        ASSERT_UINT_EQ(c->client_secret_len, strlen(cases[i].want));
        ASSERT_STR_EQ(c->client_id, "cid");
        config_free(c);
    }
    /* read-only for the owner is fine too */
    {
        char err[CONFIG_ERR_MAX];
        config *c;
        ASSERT_INT_EQ(load_with_secret("ro\n", 3, 0400, &c, err, NULL), 0);
        ASSERT_STR_EQ(c->client_secret, "ro");
        config_free(c);
    }
}

static void secret_missing_file(void) {
    char err[CONFIG_ERR_MAX], *missing = NULL, *conf;
    config *c = NULL;

    ASSERT(asprintf(&missing, "%s/no-such-secret", tmp_dir()) > 0);
    conf = conf_file(missing);
    ASSERT_INT_EQ(config_load(conf, NULL, &c, err), -ENOENT);
    ASSERT(c == NULL);
    ASSERT_CONTAINS(err, missing);
    free(conf);
    free(missing);
}

static void secret_empty_or_blank(void) {
    static const char *const contents[] = { "", "\n", " \t\r\n\n", "   " };
    for (size_t i = 0; i < ARRAY_SIZE(contents); i++) {
        char err[CONFIG_ERR_MAX], *path;
        config *c;
        int r = load_with_secret(contents[i], strlen(contents[i]), 0600, &c, err, &path);
        ASSERT(r < 0);
        ASSERT(c == NULL);
        ASSERT_CONTAINS(err, path);
        ASSERT_CONTAINS(err, "empty");
        free(path);
    }
}

static void secret_readable_by_others_refused(void) {
    static const mode_t modes[] = { 0640, 0604, 0620, 0602, 0610, 0660, 0644 };
    for (size_t i = 0; i < ARRAY_SIZE(modes); i++) {
        char err[CONFIG_ERR_MAX], *path;
        config *c;
        int r = load_with_secret("s3cret\n", 7, modes[i], &c, err, &path);
        if (r != -EPERM)
            UNIT_FAIL("mode %04o: got %d, want -EPERM (%s)", (unsigned)modes[i], r, err);
        ASSERT(c == NULL);
        ASSERT_CONTAINS(err, path);
        ASSERT_CONTAINS(err, "chmod 600");
        free(path);
    }
}

static void secret_symlink_refused(void) {
    char err[CONFIG_ERR_MAX], *target = tmp_file("s3cret\n", 7, 0600), *link = NULL, *conf;
    config *c = NULL;

    ASSERT(asprintf(&link, "%s/secret-link", tmp_dir()) > 0);
    ASSERT(symlink(target, link) == 0);
    conf = conf_file(link);
    ASSERT_INT_EQ(config_load(conf, NULL, &c, err), -ELOOP);
    ASSERT(c == NULL);
    ASSERT_CONTAINS(err, link);
    ASSERT_CONTAINS(err, "symbolic link");
    free(conf);
    free(link);
    free(target);
}

static void secret_not_a_regular_file(void) {
    char err[CONFIG_ERR_MAX], *dir = NULL, *conf;
    config *c = NULL;

    ASSERT(asprintf(&dir, "%s/a-directory", tmp_dir()) > 0);
    ASSERT(mkdir(dir, 0700) == 0);
    conf = conf_file(dir);
    ASSERT(config_load(conf, NULL, &c, err) < 0);
    ASSERT(c == NULL);
    ASSERT_CONTAINS(err, "regular file");
    free(conf);
    free(dir);
}

static void secret_control_character_or_too_big(void) {
    char err[CONFIG_ERR_MAX], big[4098];
    config *c;

    ASSERT(load_with_secret("s3c\x01ret\n", 8, 0600, &c, err, NULL) < 0);
    ASSERT_CONTAINS(err, "control character");
    ASSERT(load_with_secret("line1\nline2\n", 12, 0600, &c, err, NULL) < 0);
    memset(big, 'x', sizeof(big));
    ASSERT_INT_EQ(load_with_secret(big, 4097, 0600, &c, err, NULL), -EFBIG);
    ASSERT_INT_EQ(load_with_secret(big, 4096, 0600, &c, err, NULL), 0);
    ASSERT_UINT_EQ(c->client_secret_len, 4096);
    config_free(c);
}

static void secret_not_configured(void) {
    char err[CONFIG_ERR_MAX], *conf = conf_file(NULL);
    config *c = NULL;

    ASSERT_INT_EQ(config_load(conf, NULL, &c, err), -EINVAL);
    ASSERT(c == NULL);
    ASSERT_STARTS_WITH(err, conf);
    ASSERT_CONTAINS(err, "client_secret_file");
    free(conf);
}

static char *credentials_dir(const char *content, mode_t mode) {
    char *dir = NULL, *file = NULL;
    int fd;

    ASSERT(asprintf(&dir, "%s/creds-XXXXXX", tmp_dir()) > 0);
    ASSERT(mkdtemp(dir));
    ASSERT(asprintf(&file, "%s/client_secret", dir) > 0);
    fd = open(file, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    ASSERT(fd >= 0);
    ASSERT(write(fd, content, strlen(content)) == (ssize_t)strlen(content));
    ASSERT(fchmod(fd, mode) == 0);
    close(fd);
    free(file);
    return dir;
}

static void credentials_directory_takes_precedence(void) {
    char err[CONFIG_ERR_MAX], *file_secret = tmp_file("from-file\n", 10, 0600),
                              *conf = conf_file(file_secret), *creds = credentials_dir("from-creds\n", 0600);
    config *c = NULL;

    ASSERT_INT_EQ(config_load(conf, creds, &c, err), 0);
    ASSERT_STR_EQ(c->client_secret, "from-creds");
    config_free(c);
    /* an empty CREDENTIALS_DIRECTORY means none */
    ASSERT_INT_EQ(config_load(conf, "", &c, err), 0);
    ASSERT_STR_EQ(c->client_secret, "from-file");
    config_free(c);
    free(conf);
    /* the file is not even opened: a bad one does not matter under systemd */
    conf = conf_file("/nonexistent/secret");
    ASSERT_INT_EQ(config_load(conf, creds, &c, err), 0);
    ASSERT_STR_EQ(c->client_secret, "from-creds");
    config_free(c);
    free(conf);
    /* and no client_secret_file at all is fine with a credential */
    conf = conf_file(NULL);
    ASSERT_INT_EQ(config_load(conf, creds, &c, err), 0);
    ASSERT_STR_EQ(c->client_secret, "from-creds");
    config_free(c);
    free(conf);
    free(creds);
    free(file_secret);
}

static void credentials_directory_checked_too(void) {
    char err[CONFIG_ERR_MAX], *file_secret = tmp_file("from-file\n", 10, 0600),
                              *conf = conf_file(file_secret), *empty = NULL, *creds;
    config *c = NULL;

    /* a credential missing from the directory is an error, not a fallback */
    ASSERT(asprintf(&empty, "%s/empty-creds", tmp_dir()) > 0);
    ASSERT(mkdir(empty, 0700) == 0);
    ASSERT_INT_EQ(config_load(conf, empty, &c, err), -ENOENT);
    ASSERT(c == NULL);
    ASSERT_CONTAINS(err, "client_secret");
    /* and the same rules apply to it, but for its group's read access:
     * systemd 257 (Debian 13) makes every credential 0440 */
    static const mode_t refused[] = { 0604, 0620, 0610, 0444, 0660 };
    for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++) {
        creds = credentials_dir("x\n", refused[i]);
        ASSERT_INT_EQ(config_load(conf, creds, &c, err), -EPERM);
        free(creds);
    }
    creds = credentials_dir("from-creds\n", 0440);
    ASSERT_INT_EQ(config_load(conf, creds, &c, err), 0);
    ASSERT_STR_EQ(c->client_secret, "from-creds");
    config_free(c);
    c = NULL;
    free(creds);
    creds = credentials_dir("\n", 0600);
    ASSERT(config_load(conf, creds, &c, err) < 0);
    free(creds);
    free(empty);
    free(conf);
    free(file_secret);
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

/* A FIFO at the secret's path must not block a reload in open() for
 * ever: opened without blocking, it is refused at once. The open runs in a
 * child with a deadline, so a blocking open fails the test instead of
 * hanging it. */
static int load_in_child(const char *conf, int deadline_s) {
    pid_t pid = fork();
    int status;

    ASSERT(pid >= 0);
    if (pid == 0) {
        char err[CONFIG_ERR_MAX];
        config *c = NULL;
        alarm((unsigned)deadline_s);
        int r = config_load(conf, NULL, &c, err);
        fprintf(stderr, "config_load: %d %s\n", r, r < 0 ? err : "");
        _exit(r == -EINVAL && strstr(err, "regular file") && strstr(err, "FIFO") ? 0 : 1);
    }
    ASSERT(waitpid(pid, &status, 0) == pid);
    return status;
}

static void secret_fifo_refused_without_blocking(void) {
    char *fifo = NULL, *conf;
    int status;

    ASSERT(asprintf(&fifo, "%s/secret-fifo", tmp_dir()) > 0);
    ASSERT(mkfifo(fifo, 0600) == 0);
    conf = conf_file(fifo);
    status = load_in_child(conf, 5);
    if (WIFSIGNALED(status))
        UNIT_FAIL("config_load blocked on the FIFO until killed (signal %d)", WTERMSIG(status));
    ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    free(conf);
    free(fifo);
}

static void secret_owned_by_another_user_refused(void) {
    char err[CONFIG_ERR_MAX], *secret = tmp_file("s3cret\n", 7, 0600), *conf;
    config *c = NULL;

    if (geteuid() != 0) {
        fprintf(stderr, "not root: cannot give a file away; checked by CI as root\n");
        free(secret);
        return;
    }
    ASSERT(chown(secret, 65534, (gid_t)-1) == 0);
    conf = conf_file(secret);
    ASSERT_INT_EQ(config_load(conf, NULL, &c, err), -EPERM);
    ASSERT(c == NULL);
    ASSERT_CONTAINS(err, secret);
    ASSERT_CONTAINS(err, "owned by uid 65534");
    free(conf);
    free(secret);
}

/* A ninth address is refused, not silently left unbound. */
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

/* A line longer than inih's limit is refused on its own line, not split
 * with the rest reported as an unknown key on a line that does not exist. */
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

static void proxy_credentials_loaded_like_a_secret(void) {
    char err[CONFIG_ERR_MAX], text[1024], *secret = tmp_file("s3cret\n", 7, 0600), *creds, *conf;
    config *c = NULL;

    creds = tmp_file("tokend:pr0xy-pw\n", 16, 0600);
    snprintf(text, sizeof(text), BASE "client_secret_file = %s\nproxy = http://127.0.0.1:3128\n"
             "proxy_credentials_file = %s\n", secret, creds);
    conf = tmp_file(text, strlen(text), 0644);
    ASSERT_INT_EQ(config_load(conf, NULL, &c, err), 0);
    ASSERT_STR_EQ(c->proxy_credentials, "tokend:pr0xy-pw");
    config_free(c);
    free(conf);
    ASSERT(chmod(creds, 0644) == 0);
    conf = tmp_file(text, strlen(text), 0644);
    ASSERT_INT_EQ(config_load(conf, NULL, &c, err), -EPERM);
    ASSERT_CONTAINS(err, creds);
    ASSERT_CONTAINS(err, "proxy's credentials");
    free(conf);
    free(creds);
    creds = tmp_file("no-colon\n", 9, 0600);
    snprintf(text, sizeof(text), BASE "client_secret_file = %s\nproxy = http://127.0.0.1:3128\n"
             "proxy_credentials_file = %s\n", secret, creds);
    conf = tmp_file(text, strlen(text), 0644);
    ASSERT_INT_EQ(config_load(conf, NULL, &c, err), -EINVAL);
    ASSERT_CONTAINS(err, "USER:PASSWORD");
    free(conf);
    free(creds);
    free(secret);
}

#define KEY64 "00112233445566778899aabbccddeeff00112233445566778899AABBCCDDEEFF"

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

/* The fleet's key: 64 hex digits in a private file, named with file and
 * line when it is anything else. */
static void shared_key_file_checked_like_a_secret(void) {
    char err[CONFIG_ERR_MAX], text[1024], *secret = tmp_file("s3cret\n", 7, 0600), *key, *conf;
    config *c = NULL;

    key = tmp_file(KEY64 "\n", 65, 0600);
    snprintf(text, sizeof(text), BASE "client_secret_file = %s\n[shared]\nredis = 127.0.0.1:6379\n"
             "key_file = %s\n", secret, key);
    conf = tmp_file(text, strlen(text), 0644);
    ASSERT_INT_EQ(config_load(conf, NULL, &c, err), 0);
    ASSERT(c->shared_key[0] == 0x00 && c->shared_key[1] == 0x11 && c->shared_key[31] == 0xff);
    ASSERT(!c->has_shared_previous_key);
    config_free(c);
    free(conf);
    free(key);
    for (int i = 0; i < 3; i++) {
        static const char *const bad[] = { KEY64 "0\n",
                                           "zz112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n", "" };
        key = i < 2 ? tmp_file(bad[i], strlen(bad[i]), 0600) : tmp_file(KEY64 "\n", 65, 0644);
        snprintf(text, sizeof(text), BASE "client_secret_file = %s\n[shared]\nredis = 127.0.0.1:6379\n"
                 "key_file = %s\n", secret, key);
        conf = tmp_file(text, strlen(text), 0644);
        ASSERT(config_load(conf, NULL, &c, err) < 0);
        ASSERT_CONTAINS(err, key);
        if (i < 2) {
            char where[64];
            snprintf(where, sizeof(where), ":%d: [shared] key_file", FIRST_EXTRA_LINE + 3);
            ASSERT_CONTAINS(err, where);
            ASSERT_CONTAINS(err, "64 hex digits");
        }
        free(conf);
        free(key);
    }
    /* fleet mode without a key is refused, saying where one goes */
    snprintf(text, sizeof(text), BASE "client_secret_file = %s\n[shared]\nredis = 127.0.0.1:6379\n", secret);
    conf = tmp_file(text, strlen(text), 0644);
    ASSERT_INT_EQ(config_load(conf, NULL, &c, err), -EINVAL);
    ASSERT_CONTAINS(err, "key_file");
    ASSERT_CONTAINS(err, "shared_key");
    free(conf);
    free(secret);
}

static void config_free_accepts_null(void) {
    ASSERT(config_free(NULL) == NULL);
}

static const unit_test tests[] = {
    TEST(minimal_file),
    TEST(every_key_in_its_unit),
    TEST(booleans_and_levels),
    TEST(unknown_section),
    TEST(unknown_key),
    TEST(key_set_twice),
    TEST(empty_value),
    TEST(bad_values),
    TEST(out_of_range),
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
    TEST(sample_file_and_table_agree),
    TEST(every_bound_is_accepted_as_written),
    TEST(every_key_has_help_and_a_known_type),
    TEST(a_changed_key_differs_and_no_other),
    TEST(secret_loaded_and_newline_stripped),
    TEST(secret_missing_file),
    TEST(secret_empty_or_blank),
    TEST(secret_readable_by_others_refused),
    TEST(secret_symlink_refused),
    TEST(secret_not_a_regular_file),
    TEST(secret_control_character_or_too_big),
    TEST(secret_not_configured),
    TEST(credentials_directory_takes_precedence),
    TEST(credentials_directory_checked_too),
    TEST(config_file_missing),
    TEST(config_file_errors_name_the_file_and_line),
    TEST(config_free_accepts_null),
    TEST(secret_fifo_refused_without_blocking),
    TEST(secret_owned_by_another_user_refused),
    TEST(listen_at_most_eight),
    TEST(line_too_long_refused_on_its_own_line),
    TEST(proxy_urls),
    TEST(proxy_credentials_loaded_like_a_secret),
    TEST(shared_section_checked_as_a_whole),
    TEST(shared_key_file_checked_like_a_secret),
};

UNIT_MAIN(tests)
