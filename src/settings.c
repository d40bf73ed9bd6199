/* The table of settings: every key of the configuration file is one row
 * (section, name, type, bounds, default, help, what a reload does with
 * it), and this is the one place for those facts. Here too are what
 * follows from the rows alone: storing a value as the file writes it
 * (numbers, durations, sizes, modes, levels), the defaults, the
 * comparison of two configurations key by key that a reload reports, and
 * the description for /v1/status and --describe-config.
 * Not responsible for reading the file or for what a value must be given
 * the others (config.c), nor for the secrets (credentials.c). */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "config-internal.h"
#include "config.h"
#include "log.h"
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

void settings_range_text(size_t i, char *buf, size_t size) {
    const struct key *k = &keys[i];
    char lo[24], hi[24];

    buf[0] = '\0';
    if (!has_bounds(k))
        return;
    format_bound(k, k->min, lo, sizeof(lo));
    format_bound(k, k->max, hi, sizeof(hi));
    snprintf(buf, size, " (%s to %s)", lo, hi);
}

long settings_find(const char *section, const char *name) {
    for (size_t i = 0; i < ARRAY_SIZE(keys); i++)
        if (strcmp(keys[i].section, section) == 0 && strcmp(keys[i].name, name) == 0)
            return (long)i;
    return -1;
}

bool settings_section_known(const char *section) {
    for (size_t i = 0; i < ARRAY_SIZE(keys); i++)
        if (strcmp(keys[i].section, section) == 0)
            return true;
    return false;
}

const char *settings_store(config *c, size_t i, const char *value) {
    return store(c, &keys[i], value);
}

int settings_set_defaults(config *c, char err[CONFIG_ERR_MAX]) {
    for (size_t i = 0; i < ARRAY_SIZE(keys); i++) {
        const char *why = keys[i].def ? store(c, &keys[i], keys[i].def) : NULL;
        if (why) {
            snprintf(err, CONFIG_ERR_MAX, "the built-in default of [%s] %s, '%s', %s", keys[i].section,
                     keys[i].name, keys[i].def, why);
            return -EINVAL;
        }
    }
    return 0;
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
            if (field == &c->client_secret_file && c->client_secret_from_credential)
                /* where the secret in use came from, not a file it ignored */
                cJSON_AddStringToObject(sec, k->name, "(the systemd credential client_secret)");
            else if (*(char *const *)field)
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
