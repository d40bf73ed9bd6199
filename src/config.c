/* The configuration file: an INI file read with libinih, every key checked
 * against a table, then the whole checked for consistency. A bad file is
 * refused with the file, the line and what to do; nothing here guesses.
 * Not responsible for applying the configuration. */
#include "config.h"

#include <arpa/inet.h>
#include <grp.h>
#include <pwd.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <ini.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "address.h"
#include "auth.h"
#include "log.h"
#include "oauth.h"
#include "build-config.h"
#include "seal.h"
#include "secret.h"
#include "util.h"

enum value_type { T_STRING, T_UINT, T_DURATION, T_BOOL, T_PERCENT, T_LOGLEVEL, T_OCTAL, T_SIZE };

static const char *const type_names[] = {
    [T_STRING] = "string", [T_UINT] = "integer", [T_DURATION] = "duration", [T_BOOL] = "boolean",
    [T_PERCENT] = "percentage", [T_LOGLEVEL] = "level", [T_OCTAL] = "mode", [T_SIZE] = "size",
};

/* One setting. Its default is text, stored by the same code as the file's
 * value; what a reload does with it follows what service.c's reload() and
 * the modules it calls really apply (the rest each module copied at start). */
struct key {
    const char *section;
    const char *name;
    enum value_type type;
    size_t offset;
    uint64_t min, max; /* for numbers; durations in ms */
    const char *def;   /* NULL: unset unless the file sets it */
    enum config_reload reload;
    const char *help;
};

#define APPLIES CONFIG_RELOAD_APPLIES
#define RESTART CONFIG_RELOAD_RESTART
#define K(sec, nm, ty, field, mn, mx, df, rl, hp) \
    { sec, nm, ty, offsetof(config, field), mn, mx, df, rl, hp }
static const struct key keys[] = {
    /* upstream_set_credentials() takes the server, the credentials, the
     * proxy and the CA; the rest of [upstream] the client copied at start */
    K("upstream", "base_url", T_STRING, base_url, 0, 0, NULL, APPLIES,
      "Instacart Connect server: https://, or http:// to a loopback host (required)"),
    K("upstream", "client_id", T_STRING, client_id, 0, 0, NULL, APPLIES,
      "the OAuth application's client id (required)"),
    K("upstream", "client_secret_file", T_STRING, client_secret_file, 0, 0, NULL, APPLIES,
      "file holding the client secret, owner-only; under systemd the credential client_secret instead"),
    K("upstream", "scope", T_STRING, default_scope, 0, 0, "connect:recommendations", RESTART,
      "scope of user tokens when a caller asks for none"),
    K("upstream", "ca_file", T_STRING, ca_file, 0, 0, NULL, APPLIES,
      "PEM file of the CAs to trust for base_url instead of the system's store"),
    K("upstream", "connect_timeout", T_DURATION, connect_timeout_ms, 100, 60000, "5s", RESTART,
      "how long connecting to Instacart may take"),
    K("upstream", "attempt_timeout", T_DURATION, attempt_timeout_ms, 100, 300000, "5s", RESTART,
      "how long one HTTP request to Instacart may take"),
    K("upstream", "request_timeout", T_DURATION, request_timeout_ms, 100, 300000, "10s", RESTART,
      "how long one mint may take, retries included"),
    K("upstream", "max_concurrent", T_UINT, max_concurrent, 1, 1024, "64", RESTART,
      "requests to Instacart at once"),
    K("upstream", "queue_max", T_UINT, queue_max, 0, 1000000, "4096", RESTART,
      "mints waiting beyond max_concurrent; past that, callers get 503 at once"),
    K("upstream", "retry_base", T_DURATION, retry_base_ms, 1, 60000, "100ms", RESTART,
      "wait before the first retry, doubled per attempt (randomised)"),
    K("upstream", "retry_max", T_DURATION, retry_max_ms, 1, 600000, "2s", RESTART,
      "longest wait between retries"),
    K("upstream", "breaker_failures", T_UINT, breaker_failures, 1, 1000, "5", RESTART,
      "failures of Instacart in a row that stop calls to it for breaker_cooldown"),
    K("upstream", "breaker_cooldown", T_DURATION, breaker_cooldown_ms, 100, 3600000, "10s", RESTART,
      "how long calls to Instacart stop after breaker_failures failures"),
    K("upstream", "proxy", T_STRING, proxy, 0, 0, NULL, APPLIES,
      "http:// or https:// forward proxy to Instacart; unset: none, whatever the environment says"),
    K("upstream", "proxy_credentials_file", T_STRING, proxy_credentials_file, 0, 0, NULL, APPLIES,
      "file holding the proxy's USER:PASSWORD, owner-only"),
    /* the cache copied its settings at start */
    K("cache", "max_entries", T_UINT, max_entries, 1, 100000000, "100000", RESTART,
      "tokens kept at most; the least recently used goes first"),
    K("cache", "min_ttl", T_DURATION, min_ttl_ms, 0, 12 * 3600000ULL, "5m", RESTART,
      "lifetime a token must have left to be handed out (at most half its lifetime)"),
    K("cache", "refresh_before", T_PERCENT, refresh_before_pct, 0, 50, "25%", RESTART,
      "last part of a token's lifetime in which a request refreshes it in the background"),
    K("cache", "failure_ttl", T_DURATION, failure_ttl_ms, 0, 3600000, "30s", RESTART,
      "how long a user refused by Instacart with 400 gets that answer from memory"),
    K("cache", "max_waiters", T_UINT, max_waiters, 1, 1000000, "4096", RESTART,
      "callers waiting on one mint at most; more get 503"),
    /* the HTTP server copied its settings at start; the grace on SIGTERM is
     * read when SIGTERM comes */
    K("server", "listen", T_STRING, listen, 0, 0, "127.0.0.1:8787", RESTART,
      "one to eight ADDRESS:PORT or unix:/PATH, separated by spaces"),
    K("server", "allow_remote", T_BOOL, allow_remote, 0, 0, "no", RESTART,
      "accept listen addresses that are not loopback"),
    K("server", "socket_mode", T_OCTAL, socket_mode, 0, 0777, "0660", RESTART,
      "file mode of unix sockets"),
    K("server", "socket_group", T_STRING, socket_group, 0, 0, NULL, RESTART,
      "group of unix sockets"),
    K("server", "allowed_uids", T_STRING, allowed_uids_text, 0, 0, NULL, RESTART,
      "users (uids or names) who may use a unix socket; unset: anyone who can open it"),
    K("server", "allowed_gids", T_STRING, allowed_gids_text, 0, 0, NULL, RESTART,
      "groups (gids or names) who may use a unix socket; unset: anyone who can open it"),
    K("server", "allowed_hosts", T_STRING, allowed_hosts_text, 0, 0, NULL, RESTART,
      "Host names callers may use besides localhost and loopback addresses"),
    K("server", "allowed_origins", T_STRING, allowed_origins_text, 0, 0, NULL, RESTART,
      "origins (https://shop.example) whose pages may call tokend through a browser"),
    K("server", "threads", T_UINT, threads, 1, 256, "1", RESTART,
      "HTTP server threads"),
    K("server", "max_connections", T_UINT, max_connections, 1, 1000000, "4096", RESTART,
      "open connections at most, lowered to fit the file descriptor limit"),
    K("server", "idle_timeout", T_DURATION, idle_timeout_ms, 1000, 3600000, "30s", RESTART,
      "a connection idle this long is closed"),
    K("server", "shutdown_timeout", T_DURATION, shutdown_timeout_ms, 0, 600000, "10s", APPLIES,
      "on SIGTERM, how long requests waiting on a mint get to finish"),
    /* read with the rest at each reload and handed to the HTTP server */
    K("auth", "keys_file", T_STRING, keys_file, 0, 0, NULL, APPLIES,
      "file of API keys (NAME SHA256 RIGHTS [scopes=...]); unset: no keys"),
    K("frontend", "user_header", T_STRING, user_header, 0, 0, "X-Tokend-User", RESTART,
      "header in which a frontend or proxy key names the signed-in user"),
    K("frontend", "max_body", T_SIZE, max_body, 1, 16 * 1024 * 1024, "64KiB", RESTART,
      "largest request body of the proxy and the drop-in token endpoint"),
    /* shared_reload() takes new keys and the lease wait; the connection to
     * Redis and the namespace are made at start */
    K("shared", "redis", T_STRING, shared_redis, 0, 0, NULL, RESTART,
      "Redis as HOST:PORT or unix:/PATH; turns fleet mode on"),
    K("shared", "sentinels", T_STRING, shared_sentinels_text, 0, 0, NULL, RESTART,
      "Redis Sentinels as HOST:PORT, separated by spaces, instead of redis"),
    K("shared", "master_name", T_STRING, shared_master_name, 0, 0, NULL, RESTART,
      "name of the master the sentinels watch"),
    K("shared", "username", T_STRING, shared_username, 0, 0, NULL, RESTART,
      "Redis ACL user"),
    K("shared", "password_file", T_STRING, shared_password_file, 0, 0, NULL, RESTART,
      "file holding the Redis password, owner-only; or the credential redis_password"),
    K("shared", "key_file", T_STRING, shared_key_file, 0, 0, NULL, APPLIES,
      "file holding the fleet's key (64 hex digits), the same on every host; or the credential shared_key"),
    K("shared", "previous_key_file", T_STRING, shared_previous_key_file, 0, 0, NULL, APPLIES,
      "the fleet's previous key, only to decrypt while the key is rotated"),
    K("shared", "timeout", T_DURATION, shared_timeout_ms, 1, 10000, "50ms", RESTART,
      "deadline of each command to Redis"),
    K("shared", "lease_wait", T_DURATION, shared_lease_wait_ms, 0, 60000, "2s", APPLIES,
      "how long a lease lives unless its holder renews it: a host that died minting costs this much"),
    K("shared", "prefix", T_STRING, shared_prefix, 0, 0, "tokend", RESTART,
      "prefix of every Redis key tokend writes"),
    K("shared", "tls", T_BOOL, shared_tls, 0, 0, "no", RESTART,
      "TLS to Redis (only in builds with hiredis 1.x)"),
    K("shared", "tls_ca_file", T_STRING, shared_tls_ca_file, 0, 0, NULL, RESTART,
      "PEM file of the CAs to trust for Redis instead of the system's store"),
    K("log", "level", T_LOGLEVEL, log_level, 0, 0, "info", APPLIES,
      "error, warning, notice, info (a line per mint) or debug"),
};
#undef K
#undef APPLIES
#undef RESTART

struct parse_state {
    config *cfg;
    const char *name;
    char *err;
    bool failed;
    int line;     /* of the line inih is reading now */
    int err_line; /* of the first error the handler found */
    bool stop;    /* a line too long: read no further */
    bool seen[ARRAY_SIZE(keys)];
};

/* Whether the file set [section] name (a default does not count). */
static bool key_seen(const struct parse_state *st, const char *section, const char *name) {
    for (size_t i = 0; i < ARRAY_SIZE(keys); i++)
        if (strcmp(keys[i].section, section) == 0 && strcmp(keys[i].name, name) == 0)
            return st->seen[i];
    return false;
}

static void set_err(struct parse_state *st, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void set_err(struct parse_state *st, const char *fmt, ...) {
    va_list ap;

    if (st->failed)
        return; /* the first error is the one worth reading */
    st->failed = true;
    st->err_line = st->line;
    va_start(ap, fmt);
    vsnprintf(st->err, CONFIG_ERR_MAX, fmt, ap);
    va_end(ap);
}

static bool section_known(const char *section) {
    for (size_t i = 0; i < ARRAY_SIZE(keys); i++)
        if (strcmp(keys[i].section, section) == 0)
            return true;
    return false;
}

/* Returns the error text for a bad value, or NULL when it was stored. */
static const char *store(config *c, const struct key *k, const char *value) {
    void *field = (char *)c + k->offset;
    uint64_t v;
    int r;

    switch (k->type) {
    case T_STRING:
        if (!*value)
            return "must not be empty";
        for (const char *p = value; *p; p++)
            if ((unsigned char)*p < 0x20 || *p == 0x7f)
                return "contains a control character";
        free(*(char **)field); /* the default's */
        *(char **)field = strdup(value);
        return *(char **)field ? NULL : "out of memory";
    case T_UINT:
        r = parse_uint(value, k->max, &v);
        if (r < 0 || v < k->min)
            return "must be a whole number in range";
        *(unsigned *)field = (unsigned)v;
        return NULL;
    case T_PERCENT: {
        size_t n = strlen(value);
        char num[8];
        if (n < 2 || n > sizeof(num) || value[n - 1] != '%')
            return "must be a percentage such as 25%";
        memcpy(num, value, n - 1);
        num[n - 1] = '\0';
        if (parse_uint(num, k->max, &v) < 0 || v < k->min)
            return "must be a percentage in range";
        *(unsigned *)field = (unsigned)v;
        return NULL;
    }
    case T_DURATION:
        r = parse_duration_ms(value, &v);
        if (r < 0)
            return "must be a duration such as 500ms, 10s, 5m or 1h (seconds without a unit)";
        if (v < k->min || v > k->max)
            return "is out of range";
        *(uint64_t *)field = v;
        return NULL;
    case T_BOOL:
        if (!strcasecmp(value, "yes") || !strcasecmp(value, "true") || !strcmp(value, "1"))
            *(bool *)field = true;
        else if (!strcasecmp(value, "no") || !strcasecmp(value, "false") || !strcmp(value, "0"))
            *(bool *)field = false;
        else
            return "must be yes or no";
        return NULL;
    case T_OCTAL: {
        char *end;
        unsigned long m;
        errno = 0;
        m = strtoul(value, &end, 8);
        if (errno || *end || end == value || *value == '-' || m > k->max)
            return "must be an octal file mode such as 0660";
        *(unsigned *)field = (unsigned)m;
        return NULL;
    }
    case T_SIZE: {
        static const struct { const char *suffix; uint64_t mult; } units[] = {
            { "", 1 }, { "B", 1 }, { "KiB", 1024 }, { "MiB", 1024 * 1024 },
        };
        size_t digits = strspn(value, "0123456789");
        char num[24];
        if (digits == 0 || digits >= sizeof(num))
            return "must be a size such as 65536, 64KiB or 1MiB";
        memcpy(num, value, digits);
        num[digits] = '\0';
        for (size_t i = 0; i < ARRAY_SIZE(units); i++)
            if (strcmp(value + digits, units[i].suffix) == 0) {
                if (parse_uint(num, k->max / units[i].mult, &v) < 0 || v * units[i].mult < k->min)
                    return "is out of range";
                *(uint64_t *)field = v * units[i].mult;
                return NULL;
            }
        return "must be a size such as 65536, 64KiB or 1MiB";
    }
    case T_LOGLEVEL:
        r = log_level_from_string(value);
        if (r < 0)
            return "must be one of error, warning, notice, info, debug";
        *(int *)field = r;
        return NULL;
    }
    return "has an unknown type";
}

/* A bound of k as the file would write it: 100ms, 1h, 64KiB, 0660. */
static void format_bound(const struct key *k, uint64_t v, char *buf, size_t size) {
    static const struct { const char *suffix; uint64_t unit; } durations[] = {
        { "h", 3600000 }, { "m", 60000 }, { "s", 1000 }, { "ms", 1 },
    }, sizes[] = { { "MiB", 1024 * 1024 }, { "KiB", 1024 }, { "B", 1 } };
    const __typeof__(durations[0]) *units = k->type == T_DURATION ? durations : sizes;
    size_t n = k->type == T_DURATION ? ARRAY_SIZE(durations) : ARRAY_SIZE(sizes);

    switch (k->type) {
    case T_UINT:
    case T_PERCENT:
        snprintf(buf, size, "%llu%s", (unsigned long long)v, k->type == T_PERCENT ? "%" : "");
        return;
    case T_OCTAL:
        snprintf(buf, size, "%04llo", (unsigned long long)v);
        return;
    case T_DURATION:
    case T_SIZE:
        if (v == 0) {
            snprintf(buf, size, "0%s", k->type == T_DURATION ? "s" : "B");
            return;
        }
        for (size_t i = 0; i < n; i++)
            if (v % units[i].unit == 0) {
                snprintf(buf, size, "%llu%s", (unsigned long long)(v / units[i].unit), units[i].suffix);
                return;
            }
        break;
    default:
        break;
    }
    buf[0] = '\0';
}

static bool has_bounds(const struct key *k) {
    return k->type == T_UINT || k->type == T_PERCENT || k->type == T_DURATION || k->type == T_OCTAL ||
           k->type == T_SIZE;
}

static void range_text(const struct key *k, char *buf, size_t size) {
    char lo[24], hi[24];

    buf[0] = '\0';
    if (!has_bounds(k))
        return;
    format_bound(k, k->min, lo, sizeof(lo));
    format_bound(k, k->max, hi, sizeof(hi));
    snprintf(buf, size, " (%s to %s)", lo, hi);
}

static int handler(void *user, const char *section, const char *name, const char *value) {
    struct parse_state *st = user;

    if (!section_known(section)) {
        set_err(st, "unknown section [%s]; known sections are [upstream], [cache], [server], "
                    "[auth], [frontend], [shared], [log]",
                section);
        return 0;
    }
    for (size_t i = 0; i < ARRAY_SIZE(keys); i++) {
        const struct key *k = &keys[i];
        const char *why;
        char range[64];

        if (strcmp(k->section, section) != 0 || strcmp(k->name, name) != 0)
            continue;
        if (st->seen[i]) {
            set_err(st, "%s is set twice in [%s]", name, section);
            return 0;
        }
        st->seen[i] = true;
        why = store(st->cfg, k, value);
        if (why) {
            range_text(k, range, sizeof(range));
            set_err(st, "[%s] %s = '%s' %s%s", section, name, value, why, range);
            return 0;
        }
        /* files read later, by config_load(), whose messages name the line */
        if (k->offset == offsetof(config, ca_file))
            st->cfg->ca_file_line = st->line;
        else if (k->offset == offsetof(config, shared_key_file))
            st->cfg->shared_key_file_line = st->line;
        else if (k->offset == offsetof(config, shared_previous_key_file))
            st->cfg->shared_previous_key_file_line = st->line;
        return 1;
    }
    set_err(st, "unknown key '%s' in [%s]; see the sample tokend.conf for the keys", name, section);
    return 0;
}

/* https://host[:port][/prefix], or http:// to a loopback host only: tokens
 * and the secret cross this link, so it is encrypted unless it never leaves
 * the machine. */
static const char *check_base_url(char *url) {
    const char *rest, *host_end;
    bool https;
    size_t n;

    if (strncmp(url, "https://", 8) == 0) {
        https = true;
        rest = url + 8;
    } else if (strncmp(url, "http://", 7) == 0) {
        https = false;
        rest = url + 7;
    } else
        return "must start with https:// (or http:// for a loopback test server)";
    if (strpbrk(url, "@?# \\"))
        return "must not contain credentials, a query, a fragment, spaces or backslashes";
    host_end = rest + strcspn(rest, "/");
    if (host_end == rest || *rest == ':')
        return "has no host";
    if (!https) {
        /* strip a port: the last ':' after any IPv6 bracket */
        const char *colon = memrchr(rest, ':', (size_t)(host_end - rest));
        const char *bracket = memrchr(rest, ']', (size_t)(host_end - rest));
        size_t hlen = (colon && (!bracket || colon > bracket)) ? (size_t)(colon - rest)
                                                                : (size_t)(host_end - rest);
        if (!address_host_is_loopback(rest, hlen))
            return "uses http:// to a host that is not loopback; use https://";
    }
    n = strlen(url);
    while (n > 0 && url[n - 1] == '/')
        url[--n] = '\0';
    return NULL;
}

/* http:// or https:// host:port of a forward proxy. Its credentials come
 * from a file of their own: in the URL they would show in /v1/status. */
static const char *check_proxy_url(const char *url) {
    const char *rest;

    if (strncmp(url, "http://", 7) == 0)
        rest = url + 7;
    else if (strncmp(url, "https://", 8) == 0)
        rest = url + 8;
    else
        return "must start with http:// or https://";
    if (strpbrk(url, "@?# \\"))
        return "must not contain credentials (use proxy_credentials_file), a query, a fragment, spaces or backslashes";
    if (!*rest || *rest == '/' || *rest == ':')
        return "has no host";
    return NULL;
}

/* Splits a space- or comma-separated list into a NULL-terminated array. */
static int split_words(const char *text, char ***ret, size_t *ret_n) {
    char **v = NULL;
    size_t n = 0;

    for (const char *p = text; *p;) {
        size_t len;
        char **nv;
        p += strspn(p, " \t,");
        len = strcspn(p, " \t,");
        if (!len)
            break;
        nv = realloc(v, (n + 2) * sizeof(*v));
        if (!nv)
            goto fail;
        v = nv;
        v[n] = strndup(p, len);
        if (!v[n])
            goto fail;
        v[++n] = NULL;
        p += len;
    }
    *ret = v;
    *ret_n = n;
    return 0;
fail:
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
    return -ENOMEM;
}

static void free_words(char **v, size_t n) {
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

/* uids or gids, by number or by name, resolved once at load. */
static int resolve_ids(struct parse_state *st, const char *text, bool groups, unsigned **ret, size_t *ret_n) {
    char **words = NULL;
    size_t n = 0;
    unsigned *ids;

    if (!text)
        return 0;
    if (split_words(text, &words, &n) < 0)
        return -ENOMEM;
    ids = calloc(n ? n : 1, sizeof(*ids));
    if (!ids) {
        free_words(words, n);
        return -ENOMEM;
    }
    for (size_t i = 0; i < n; i++) {
        uint64_t v;
        if (parse_uint(words[i], UINT32_MAX - 1, &v) == 0)
            ids[i] = (unsigned)v;
        else if (!groups && getpwnam(words[i]))
            ids[i] = getpwnam(words[i])->pw_uid;
        else if (groups && getgrnam(words[i]))
            ids[i] = getgrnam(words[i])->gr_gid;
        else {
            set_err(st, "[server] allowed_%s: '%s' is not a %s on this system", groups ? "gids" : "uids",
                    words[i], groups ? "group" : "user");
            free_words(words, n);
            free(ids);
            return -EINVAL;
        }
    }
    free_words(words, n);
    *ret = ids;
    *ret_n = n;
    return 0;
}

int config_redis_address_parse(const char *s, char *host, size_t host_size, unsigned *port) {
    const char *colon;
    uint64_t p;
    size_t n;

    if (strncmp(s, "unix:", 5) == 0) {
        if (s[5] != '/' || strlen(s + 5) >= host_size)
            return -EINVAL;
        snprintf(host, host_size, "%s", s + 5);
        *port = 0;
        return 0;
    }
    colon = strrchr(s, ':');
    if (!colon || colon == s || parse_uint(colon + 1, 65535, &p) < 0 || p == 0)
        return -EINVAL;
    n = (size_t)(colon - s);
    if (s[0] == '[' && n > 2 && s[n - 1] == ']') /* [::1]:6379 */
        s++, n -= 2;
    if (n >= host_size || memchr(s, '/', n) || memchr(s, ' ', n))
        return -EINVAL;
    memcpy(host, s, n);
    host[n] = '\0';
    *port = (unsigned)p;
    return 0;
}

/* [shared]: fleet mode's Redis, its keys and its limits. */
static int finish_shared(struct parse_state *st) {
    static const char addr_help[] = "must be HOST:PORT (127.0.0.1:6379, redis.internal:6379) or unix:/absolute/path";
    config *c = st->cfg;
    char host[256];
    unsigned port;

    if (!config_shared(c)) {
        const char *set = c->shared_key_file ? "key_file" : c->shared_master_name ? "master_name"
                          : c->shared_username ? "username" : c->shared_password_file ? "password_file"
                          : c->shared_previous_key_file ? "previous_key_file" : key_seen(st, "shared", "prefix") ? "prefix"
                          : c->shared_tls ? "tls" : NULL;
        if (set) {
            set_err(st, "[shared] %s is set but neither redis nor sentinels is: set one of them to turn "
                        "fleet mode on, or remove the [shared] section", set);
            return -EINVAL;
        }
        return 0;
    }
    if (c->shared_redis && c->shared_sentinels_text) {
        set_err(st, "[shared] sets both redis and sentinels; give one address, or the sentinels and master_name");
        return -EINVAL;
    }
    if (c->shared_redis && config_redis_address_parse(c->shared_redis, host, sizeof(host), &port) < 0) {
        set_err(st, "[shared] redis = '%s' %s", c->shared_redis, addr_help);
        return -EINVAL;
    }
    if (c->shared_sentinels_text) {
        if (split_words(c->shared_sentinels_text, &c->shared_sentinels, &c->n_shared_sentinels) < 0)
            return -ENOMEM;
        if (c->n_shared_sentinels == 0 || c->n_shared_sentinels > 16) {
            set_err(st, "[shared] sentinels must name 1 to 16 sentinels as HOST:PORT");
            return -EINVAL;
        }
        for (size_t i = 0; i < c->n_shared_sentinels; i++)
            if (config_redis_address_parse(c->shared_sentinels[i], host, sizeof(host), &port) < 0 || port == 0) {
                set_err(st, "[shared] sentinels: '%s' must be HOST:PORT", c->shared_sentinels[i]);
                return -EINVAL;
            }
        if (!c->shared_master_name) {
            set_err(st, "[shared] sentinels is set but master_name is not; set it to the name the "
                        "sentinels monitor (sentinel monitor NAME ...)");
            return -EINVAL;
        }
    } else if (c->shared_master_name) {
        set_err(st, "[shared] master_name is set but sentinels is not; it names a master to the sentinels");
        return -EINVAL;
    }
    if (strlen(c->shared_prefix) > 64 || strspn(c->shared_prefix, "abcdefghijklmnopqrstuvwxyz"
                                                                    "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-") !=
                                              strlen(c->shared_prefix)) {
        set_err(st, "[shared] prefix = '%s' must be 1 to 64 letters, digits, '_', '.' or '-'", c->shared_prefix);
        return -EINVAL;
    }
#ifndef HAVE_HIREDIS_SSL
    if (c->shared_tls) {
        set_err(st, "[shared] tls = yes, but this build has no TLS for Redis: its hiredis (Debian 12's "
                    "0.14) has none; reach Redis through a local TLS tunnel (stunnel) as the README says");
        return -EINVAL;
    }
#endif
    if (c->shared_tls_ca_file && !c->shared_tls) {
        set_err(st, "[shared] tls_ca_file is set but tls is not; set tls = yes");
        return -EINVAL;
    }
    return 0;
}

static int finish(struct parse_state *st) {
    config *c = st->cfg;
    struct sockaddr_storage ss;
    socklen_t sl;
    bool loopback;
    const char *why;

    if (!c->base_url) {
        set_err(st, "[upstream] base_url is missing; set it to your Instacart server, "
                    "e.g. https://connect.dev.instacart.tools");
        return -EINVAL;
    }
    why = check_base_url(c->base_url);
    if (why) {
        set_err(st, "[upstream] base_url '%s' %s", c->base_url, why);
        return -EINVAL;
    }
    if (!c->client_id) {
        set_err(st, "[upstream] client_id is missing; set it to your OAuth application's client id");
        return -EINVAL;
    }
    if (!oauth_scope_valid(c->default_scope, strlen(c->default_scope))) {
        set_err(st, "[upstream] scope '%s' is not a valid scope", c->default_scope);
        return -EINVAL;
    }
    if (c->proxy && (why = check_proxy_url(c->proxy))) {
        set_err(st, "[upstream] proxy '%s' %s", c->proxy, why);
        return -EINVAL;
    }
    if (c->proxy_credentials_file && !c->proxy) {
        set_err(st, "[upstream] proxy_credentials_file is set but proxy is not; set proxy too");
        return -EINVAL;
    }
    if (c->retry_max_ms < c->retry_base_ms) {
        set_err(st, "[upstream] retry_max must not be below retry_base");
        return -EINVAL;
    }
    if (split_words(c->listen, &c->listens, &c->n_listens) < 0)
        return -ENOMEM;
    if (c->n_listens == 0) {
        set_err(st, "[server] listen is empty; give ADDRESS:PORT or unix:PATH");
        return -EINVAL;
    }
    if (c->n_listens > CONFIG_LISTEN_MAX) {
        set_err(st, "[server] listen names %zu addresses; tokend listens on at most %d", c->n_listens,
                CONFIG_LISTEN_MAX);
        return -EINVAL;
    }
    for (size_t i = 0; i < c->n_listens; i++) {
        if (address_listen_parse(c->listens[i], &ss, &sl, &loopback) < 0) {
            set_err(st, "[server] listen = '%s' must be ADDRESS:PORT (127.0.0.1:8787, [::1]:8787) "
                        "or unix:/absolute/path", c->listens[i]);
            return -EINVAL;
        }
        if (!loopback && !c->allow_remote) {
            set_err(st, "[server] listen = '%s' is not a loopback address; tokend hands out tokens "
                        "for any user to whoever connects, so set allow_remote = yes only behind a "
                        "firewall you trust", c->listens[i]);
            return -EINVAL;
        }
    }
    if ((c->allowed_hosts_text && split_words(c->allowed_hosts_text, &c->allowed_hosts, &c->n_allowed_hosts) < 0) ||
        (c->allowed_origins_text &&
         split_words(c->allowed_origins_text, &c->allowed_origins, &c->n_allowed_origins) < 0))
        return -ENOMEM;
    for (size_t i = 0; i < c->n_allowed_origins; i++)
        if (strncmp(c->allowed_origins[i], "https://", 8) != 0 && strncmp(c->allowed_origins[i], "http://", 7) != 0) {
            set_err(st, "[server] allowed_origins: '%s' is not an origin such as https://shop.example",
                    c->allowed_origins[i]);
            return -EINVAL;
        }
    if (resolve_ids(st, c->allowed_uids_text, false, &c->allowed_uids, &c->n_allowed_uids) < 0 ||
        resolve_ids(st, c->allowed_gids_text, true, &c->allowed_gids, &c->n_allowed_gids) < 0)
        return -EINVAL;
    if (c->socket_group && !getgrnam(c->socket_group)) {
        set_err(st, "[server] socket_group = '%s' is not a group on this system", c->socket_group);
        return -EINVAL;
    }
    for (const char *p = c->user_header; *p; p++)
        if (!((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '-')) {
            set_err(st, "[frontend] user_header = '%s' must be a header name (letters, digits, '-')",
                    c->user_header);
            return -EINVAL;
        }
    return finish_shared(st);
}

/* inih's reader, counting lines: the handler is not told the line number,
 * and inih reports the first error of its own or ours, whichever it met
 * first, so we must know which line our error was on. */
struct reader {
    FILE *f;
    const char *s;
    struct parse_state *st;
};

static char *read_line(char *buf, int size, void *stream) {
    struct reader *rd = stream;
    size_t n;

    if (rd->st->stop)
        return NULL; /* after a line too long */
    if (rd->f) {
        if (!fgets(buf, size, rd->f))
            return NULL;
    } else {
        if (!*rd->s)
            return NULL;
        n = strcspn(rd->s, "\n");
        if (n < (size_t)size - 1 && rd->s[n] == '\n')
            n++;
        if (n > (size_t)size - 1)
            n = (size_t)size - 1;
        memcpy(buf, rd->s, n);
        buf[n] = '\0';
        rd->s += n;
    }
    if (strchr(buf, '\n') || (rd->f ? feof(rd->f) : !*rd->s)) {
        rd->st->line++;
        return buf;
    }
    /* inih would take the rest of this line as a line of its own, and
     * complain about that one: refuse the whole line here, by its number */
    rd->st->line++;
    set_err(rd->st, "this line is longer than %d characters; shorten it", size - 2);
    rd->st->stop = true;
    return NULL;
}

static int parse(const char *path, const char *text, config **ret, char err[CONFIG_ERR_MAX]) {
    struct parse_state st = { .name = path, .err = err };
    config *c;
    int line, r;

    c = calloc(1, sizeof(*c));
    if (!c)
        return -ENOMEM;
    st.cfg = c;
    /* the defaults, through the same code as the file's values */
    for (size_t i = 0; i < ARRAY_SIZE(keys); i++) {
        const char *why = keys[i].def ? store(c, &keys[i], keys[i].def) : NULL;
        if (why) {
            snprintf(err, CONFIG_ERR_MAX, "the built-in default of [%s] %s, '%s', %s", keys[i].section,
                     keys[i].name, keys[i].def, why);
            config_free(c);
            return -EINVAL;
        }
    }
    c->path = strdup(path);
    if (!c->path) {
        config_free(c);
        return -ENOMEM;
    }
    err[0] = '\0';

    {
        struct reader rd = { .s = text, .st = &st };
        if (!text) {
            int fd = secret_file_open(path, "the configuration", SECRET_FILE_PLAIN, err, CONFIG_ERR_MAX);
            if (fd >= 0 && !(rd.f = fdopen(fd, "r")))
                close(fd);
            if (!rd.f) {
                config_free(c);
                return fd < 0 ? fd : -ENOMEM;
            }
        }
        line = ini_parse_stream(read_line, &rd, handler, &st);
        if (rd.f)
            fclose(rd.f);
        if (line == 0 && st.stop)
            line = st.err_line; /* inih saw only an end of file */
    }
    if (line != 0) {
        char msg[CONFIG_ERR_MAX];
        /* a line inih itself rejected (no '=', an unclosed '[') before ours */
        if (!st.failed || line < st.err_line)
            snprintf(st.err, CONFIG_ERR_MAX, "cannot parse this line; expected 'key = value' or '[section]'");
        snprintf(msg, sizeof(msg), "%s:%d: %s", path, line, err);
        memcpy(err, msg, CONFIG_ERR_MAX);
        config_free(c);
        return -EINVAL;
    }
    r = finish(&st);
    if (r < 0) {
        char msg[CONFIG_ERR_MAX];
        snprintf(msg, sizeof(msg), "%s: %s", path, err);
        memcpy(err, msg, CONFIG_ERR_MAX);
        config_free(c);
        return r;
    }
    *ret = c;
    return 0;
}

int config_parse_string(const char *text, const char *name, config **ret, char err[CONFIG_ERR_MAX]) {
    return parse(name, text, ret, err);
}

/* [upstream] ca_file, read whole at load (and so at each reload): curl gets
 * these bytes, never the path, so a file rotated mid-run takes effect at
 * the reload, and a bad one is refused before it replaces a good one. */
#define CA_FILE_MAX (16 * 1024 * 1024)
static int ca_load(config *c, char err[CONFIG_ERR_MAX]) {
    /* opened without blocking: a FIFO at the path must not hang a reload */
    char open_err[128];
    int fd = secret_file_open(c->ca_file, "the CA file", SECRET_FILE_PLAIN, open_err, sizeof(open_err));
    FILE *f = fd >= 0 ? fdopen(fd, "r") : NULL;
    const char *why = NULL, *begin;
    struct stat sb;
    char *buf = NULL;
    size_t n = 0;
    int r = -EINVAL;

    if (fd >= 0 && !f) {
        close(fd);
        fd = -ENOMEM;
    }
    if (fd == -EINVAL) /* secret_file_open() took only a regular file */
        why = "is not a regular file";
    else if (fd < 0) {
        r = fd;
        snprintf(open_err, sizeof(open_err), "cannot be opened (%s)", strerror(-fd));
        why = open_err;
    } else if (fstat(fileno(f), &sb) < 0)
        r = -errno, why = "cannot be read";
    else if (sb.st_size > CA_FILE_MAX)
        why = "is over 16 MiB";
    else if (!(buf = malloc((size_t)sb.st_size + 1)))
        r = -ENOMEM, why = "out of memory";
    else if ((n = fread(buf, 1, (size_t)sb.st_size, f)) != (size_t)sb.st_size && ferror(f))
        r = -EIO, why = "cannot be read";
    else if (n == 0)
        why = "is empty";
    else {
        buf[n] = '\0';
        begin = memmem(buf, n, "-----BEGIN CERTIFICATE-----", 27);
        if (!begin || !memmem(begin, n - (size_t)(begin - buf), "-----END CERTIFICATE-----", 25))
            why = "holds no PEM certificate (-----BEGIN CERTIFICATE-----)";
    }
    if (f)
        fclose(f);
    if (why) {
        snprintf(err, CONFIG_ERR_MAX,
                 "%s:%d: [upstream] ca_file = '%s' %s; give a PEM file of the certificates to trust, "
                 "or remove the key to use the system's",
                 c->path, c->ca_file_line, c->ca_file, why);
        free(buf);
        return r;
    }
    c->ca_pem = buf;
    c->ca_pem_len = n;
    return 0;
}

/* A systemd credential of fleet mode's: in credentials_dir, or on a reload
 * (which passes the runtime directory holding only a rotated client secret)
 * in systemd's own. Writes its path to ret and returns true if it is there. */
static bool find_credential(const char *credentials_dir, const char *name, char ret[4096]) {
    for (int i = 0; i < 2; i++) {
        const char *dir = i == 0 ? credentials_dir : getenv("CREDENTIALS_DIRECTORY");
        if (dir && *dir && snprintf(ret, 4096, "%s/%s", dir, name) < 4096 && access(ret, F_OK) == 0)
            return true;
    }
    return false;
}

/* One shared key: 64 hex digits in a private file, or in the systemd
 * credential `credential` when there is one. */
static int shared_key_read(const config *c, const char *file, int line, const char *what,
                           const char *credentials_dir, const char *credential, unsigned char out[32],
                           char err[CONFIG_ERR_MAX]) {
    char cred_path[4096];
    const char *from = credential && find_credential(credentials_dir, credential, cred_path) ? cred_path : file;
    char *text = NULL;
    size_t len = 0;
    int r;

    if (!from) {
        snprintf(err, CONFIG_ERR_MAX,
                 "%s: [shared] key_file is missing, and no systemd credential '%s' was passed; "
                 "fleet mode needs the fleet's key: 64 hex digits (openssl rand -hex 32) in a file "
                 "only this user can read, the same on every host", c->path, credential);
        return -EINVAL;
    }
    r = from == cred_path ? secret_load_credential(from, &text, &len, err, CONFIG_ERR_MAX)
                          : secret_load_named(from, what, &text, &len, err, CONFIG_ERR_MAX);
    if (r < 0)
        return r;
    r = seal_key_parse(text, len, out);
    wipe_free(text, len);
    if (r < 0) {
        if (from == cred_path)
            snprintf(err, CONFIG_ERR_MAX, "%.300s: %s must be exactly 64 hex digits (openssl rand -hex 32)",
                     from, what);
        else
            snprintf(err, CONFIG_ERR_MAX,
                     "%s:%d: [shared] %s = '%.200s': %s must be exactly 64 hex digits "
                     "(openssl rand -hex 32), the same on every host",
                     c->path, line, file == c->shared_key_file ? "key_file" : "previous_key_file", from, what);
        return -EINVAL;
    }
    return 0;
}

static int shared_keys_load(config *c, const char *credentials_dir, char err[CONFIG_ERR_MAX]) {
    char cred_path[4096];
    int r;

    r = shared_key_read(c, c->shared_key_file, c->shared_key_file_line, "the fleet's shared key",
                        credentials_dir, "shared_key", c->shared_key, err);
    if (r < 0)
        return r;
    if (c->shared_previous_key_file) {
        r = shared_key_read(c, c->shared_previous_key_file, c->shared_previous_key_file_line,
                            "the fleet's previous shared key", NULL, NULL, c->shared_previous_key, err);
        if (r < 0)
            return r;
        c->has_shared_previous_key = true;
    }
    if (find_credential(credentials_dir, "redis_password", cred_path))
        return secret_load_credential(cred_path, &c->shared_password, &c->shared_password_len, err,
                                      CONFIG_ERR_MAX);
    if (c->shared_password_file)
        return secret_load_named(c->shared_password_file, "the Redis password", &c->shared_password,
                                 &c->shared_password_len, err, CONFIG_ERR_MAX);
    if (c->shared_username) {
        snprintf(err, CONFIG_ERR_MAX,
                 "%s: [shared] username is set but there is no password: set password_file, or pass "
                 "the systemd credential redis_password", c->path);
        return -EINVAL;
    }
    return 0;
}

int config_load(const char *path, const char *credentials_dir, config **ret, char err[CONFIG_ERR_MAX]) {
    char secret_path[4096];
    const char *from;
    config *c;
    int r;

    r = parse(path, NULL, &c, err);
    if (r < 0)
        return r;
    if (credentials_dir && *credentials_dir) {
        snprintf(secret_path, sizeof(secret_path), "%s/client_secret", credentials_dir);
        from = secret_path;
    } else if (c->client_secret_file) {
        from = c->client_secret_file;
    } else {
        snprintf(err, CONFIG_ERR_MAX,
                 "%s: [upstream] client_secret_file is missing, and no systemd credential "
                 "'client_secret' was passed; set client_secret_file to a file only this user can read",
                 path);
        config_free(c);
        return -EINVAL;
    }
    r = (from == secret_path ? secret_load_credential : secret_load)(from, &c->client_secret,
                                                                     &c->client_secret_len, err,
                                                                     CONFIG_ERR_MAX);
    if (r < 0) {
        config_free(c);
        return r;
    }
    if (c->proxy_credentials_file) {
        r = secret_load_named(c->proxy_credentials_file, "the proxy's credentials", &c->proxy_credentials,
                              &c->proxy_credentials_len, err, CONFIG_ERR_MAX);
        if (r == 0 && !memchr(c->proxy_credentials, ':', c->proxy_credentials_len)) {
            snprintf(err, CONFIG_ERR_MAX, "%s: the proxy's credentials must be USER:PASSWORD on one line",
                     c->proxy_credentials_file);
            r = -EINVAL;
        }
        if (r < 0) {
            config_free(c);
            return r;
        }
    }
    if (c->ca_file && (r = ca_load(c, err)) < 0) {
        config_free(c);
        return r;
    }
    if (config_shared(c) && (r = shared_keys_load(c, credentials_dir, err)) < 0) {
        config_free(c);
        return r;
    }
    if (c->keys_file) {
        /* loaded with the rest, so a reload applies a new keys file or
         * refuses a bad one together with everything else */
        r = auth_load(c->keys_file, &c->keys, err, CONFIG_ERR_MAX);
        if (r < 0) {
            config_free(c);
            return r;
        }
    }
    *ret = c;
    return 0;
}

config *config_free(config *c) {
    if (!c)
        return NULL;
    free(c->path);
    free(c->base_url);
    free(c->client_id);
    free(c->client_secret_file);
    wipe_free(c->client_secret, c->client_secret_len);
    free(c->shared_redis);
    free(c->shared_sentinels_text);
    free_words(c->shared_sentinels, c->n_shared_sentinels);
    free(c->shared_master_name);
    free(c->shared_username);
    free(c->shared_password_file);
    wipe_free(c->shared_password, c->shared_password_len);
    free(c->shared_key_file);
    free(c->shared_previous_key_file);
    explicit_bzero(c->shared_key, sizeof(c->shared_key));
    explicit_bzero(c->shared_previous_key, sizeof(c->shared_previous_key));
    free(c->shared_prefix);
    free(c->shared_tls_ca_file);
    free(c->default_scope);
    free(c->ca_file);
    free(c->ca_pem);
    free(c->listen);
    free_words(c->listens, c->n_listens);
    free(c->socket_group);
    free(c->allowed_uids_text);
    free(c->allowed_gids_text);
    free(c->allowed_uids);
    free(c->allowed_gids);
    free(c->allowed_hosts_text);
    free(c->allowed_origins_text);
    free_words(c->allowed_hosts, c->n_allowed_hosts);
    free_words(c->allowed_origins, c->n_allowed_origins);
    free(c->keys_file);
    auth_free(c->keys);
    free(c->proxy);
    free(c->proxy_credentials_file);
    wipe_free(c->proxy_credentials, c->proxy_credentials_len);
    free(c->user_header);
    free(c);
    return NULL;
}

static const char *const level_names[] = { [LOG_ERR] = "error", [LOG_WARNING] = "warning",
                                            [LOG_NOTICE] = "notice", [LOG_INFO] = "info",
                                            [LOG_DEBUG] = "debug" };

char *config_describe_running(const config *boot, const config *now) {
    cJSON *j = cJSON_CreateObject(), *sec = NULL;
    const char *current = NULL;
    char *out = NULL;

    if (!j)
        return NULL;
    /* the table knows every key; the secret itself is never a key */
    for (size_t i = 0; i < ARRAY_SIZE(keys); i++) {
        const struct key *k = &keys[i];
        const config *c = k->reload == CONFIG_RELOAD_APPLIES ? now : boot;
        const void *field = (const char *)c + k->offset;

        if (!current || strcmp(current, k->section) != 0) {
            current = k->section;
            sec = cJSON_AddObjectToObject(j, current);
            if (!sec)
                goto out;
        }
        switch (k->type) {
        case T_STRING:
            if (*(char *const *)field)
                cJSON_AddStringToObject(sec, k->name, *(char *const *)field);
            else
                cJSON_AddNullToObject(sec, k->name);
            break;
        case T_UINT:
        case T_PERCENT:
            cJSON_AddNumberToObject(sec, k->name, *(const unsigned *)field);
            break;
        case T_DURATION:
            cJSON_AddNumberToObject(sec, k->name, (double)*(const uint64_t *)field / 1000);
            break;
        case T_BOOL:
            cJSON_AddBoolToObject(sec, k->name, *(const bool *)field);
            break;
        case T_LOGLEVEL:
            cJSON_AddStringToObject(sec, k->name, level_names[*(const int *)field]);
            break;
        case T_OCTAL: {
            char mode[8];
            snprintf(mode, sizeof(mode), "%04o", *(const unsigned *)field);
            cJSON_AddStringToObject(sec, k->name, mode);
            break;
        }
        case T_SIZE:
            cJSON_AddNumberToObject(sec, k->name, (double)*(const uint64_t *)field);
            break;
        }
    }
    out = cJSON_PrintUnformatted(j);
out:
    cJSON_Delete(j);
    return out;
}

char *config_describe(const config *c) {
    return config_describe_running(c, c);
}

size_t config_key_count(void) {
    return ARRAY_SIZE(keys);
}

void config_key_get(size_t i, struct config_key_info *ret) {
    const struct key *k = &keys[i];

    *ret = (struct config_key_info){
        .section = k->section, .name = k->name, .type = type_names[k->type], .def = k->def,
        .reload = k->reload, .help = k->help,
    };
    if (has_bounds(k)) {
        format_bound(k, k->min, ret->min, sizeof(ret->min));
        format_bound(k, k->max, ret->max, sizeof(ret->max));
    }
}

bool config_key_differs(size_t i, const config *a, const config *b) {
    const struct key *k = &keys[i];
    const void *fa = (const char *)a + k->offset, *fb = (const char *)b + k->offset;

    switch (k->type) {
    case T_STRING: {
        const char *sa = *(char *const *)fa, *sb = *(char *const *)fb;
        return (sa || sb) && (!sa || !sb || strcmp(sa, sb) != 0);
    }
    case T_UINT:
    case T_PERCENT:
    case T_OCTAL:
        return *(const unsigned *)fa != *(const unsigned *)fb;
    case T_DURATION:
    case T_SIZE:
        return *(const uint64_t *)fa != *(const uint64_t *)fb;
    case T_BOOL:
        return *(const bool *)fa != *(const bool *)fb;
    case T_LOGLEVEL:
        return *(const int *)fa != *(const int *)fb;
    }
    return true;
}

static const char *reload_name(enum config_reload r) {
    return r == CONFIG_RELOAD_APPLIES ? "applies" : "restart";
}

static char *describe_keys_json(void) {
    cJSON *arr = cJSON_CreateArray();
    char *out = NULL;

    if (!arr)
        return NULL;
    for (size_t i = 0; i < ARRAY_SIZE(keys); i++) {
        struct config_key_info k;
        cJSON *o = cJSON_CreateObject();

        config_key_get(i, &k);
        if (!o)
            goto out;
        if (!cJSON_AddItemToArray(arr, o)) {
            cJSON_Delete(o);
            goto out;
        }
        if (!cJSON_AddStringToObject(o, "section", k.section) ||
            !cJSON_AddStringToObject(o, "key", k.name) || !cJSON_AddStringToObject(o, "type", k.type) ||
            !(k.def ? cJSON_AddStringToObject(o, "default", k.def) : cJSON_AddNullToObject(o, "default")) ||
            !(k.min[0] ? cJSON_AddStringToObject(o, "min", k.min) : cJSON_AddNullToObject(o, "min")) ||
            !(k.max[0] ? cJSON_AddStringToObject(o, "max", k.max) : cJSON_AddNullToObject(o, "max")) ||
            !cJSON_AddStringToObject(o, "reload", reload_name(k.reload)) ||
            !cJSON_AddStringToObject(o, "help", k.help))
            goto out;
    }
    out = cJSON_Print(arr);
out:
    cJSON_Delete(arr);
    return out;
}

/* For people: a block per key, grouped by section as in the file. */
static char *describe_keys_text(void) {
    const char *current = NULL;
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);

    if (!f)
        return NULL;
    for (size_t i = 0; i < ARRAY_SIZE(keys); i++) {
        struct config_key_info k;

        config_key_get(i, &k);
        if (!current || strcmp(current, k.section) != 0) {
            fprintf(f, "%s[%s]\n", current ? "\n" : "", k.section);
            current = k.section;
        }
        fprintf(f, "%s = %s\n    %s; ", k.name, k.def ? k.def : "(unset)", k.type);
        if (k.min[0])
            fprintf(f, "%s to %s; ", k.min, k.max);
        fprintf(f, "%s\n    %s\n", k.reload == CONFIG_RELOAD_APPLIES ? "a reload applies it" : "needs a restart",
                k.help);
    }
    if (fclose(f) != 0) {
        free(buf);
        return NULL;
    }
    return buf;
}

char *config_describe_keys(bool json) {
    return json ? describe_keys_json() : describe_keys_text();
}
