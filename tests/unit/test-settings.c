/* Unit tests of src/settings.c: each key's values in its own unit, its
 * bounds and its default; the table against the sample tokend.conf; the
 * comparison a reload reports and the description /v1/status shows. */
#include <stdbool.h>
#include <syslog.h>

#include "config-helpers.h"
#include "config.h"
#include "unit.h"
#include "util.h"

static void a_minimal_file_gets_the_defaults(void) {
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
                UNIT_FAIL("%s:%zu: [%.*s] %.*s is not in the table of settings (src/settings.c)", path, lineno,
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

/* /v1/status shows each key as the daemon uses it: a key a reload applies
 * from the configuration now in force, one that needs a restart from the
 * one the daemon started with; durations in seconds, and of the secrets
 * only the file they came from. */
static void the_running_description_takes_each_key_by_its_reload_rule(void) {
    config *boot = parse_ok(BASE "client_secret_file = /etc/secret\nconnect_timeout = 2s\n[log]\nlevel = info\n");
    config *now = parse_ok(BASE "client_secret_file = /etc/secret\nconnect_timeout = 7s\n[log]\nlevel = debug\n");
    char *j;

    boot->client_secret = strdup("hunter2");
    ASSERT(boot->client_secret);
    boot->client_secret_len = strlen(boot->client_secret);
    j = config_describe_running(boot, now);
    ASSERT(j);
    ASSERT_CONTAINS(j, "\"connect_timeout\":2,");  /* needs a restart: the value at start */
    ASSERT_CONTAINS(j, "\"level\":\"debug\"");     /* a reload applies it: the new value */
    ASSERT_CONTAINS(j, "\"client_secret_file\":\"/etc/secret\"");
    ASSERT_NOT_CONTAINS(j, "hunter2");
    free(j);
    j = config_describe(boot);
    ASSERT(j);
    ASSERT_CONTAINS(j, "\"connect_timeout\":2,");
    ASSERT_CONTAINS(j, "\"level\":\"info\"");
    ASSERT_CONTAINS(j, "\"min_ttl\":300,");
    ASSERT_NOT_CONTAINS(j, "hunter2");
    free(j);
    config_free(now);
    config_free(boot);
}

static const unit_test tests[] = {
    TEST(a_minimal_file_gets_the_defaults),
    TEST(every_key_in_its_unit),
    TEST(booleans_and_levels),
    TEST(empty_value),
    TEST(bad_values),
    TEST(out_of_range),
    TEST(sample_file_and_table_agree),
    TEST(every_bound_is_accepted_as_written),
    TEST(every_key_has_help_and_a_known_type),
    TEST(a_changed_key_differs_and_no_other),
    TEST(the_running_description_takes_each_key_by_its_reload_rule),
};

UNIT_MAIN(tests)
