/* Loading a configuration: the INI file read with libinih, each value
 * handed to the table of settings to store, then the whole checked for
 * what no single key can say (base_url's scheme against its host, the
 * listen addresses against allow_remote, fleet mode set up in full); then
 * the files it names, in this order: the client secret and the proxy's
 * credentials, the CA file, fleet mode's keys and password, the API keys
 * file. A bad file is refused with the file, the line and what to do;
 * nothing here guesses. config_free() wipes the secrets.
 * Not responsible for the keys themselves, their types, bounds and
 * defaults (settings.c), for where each secret comes from
 * (credentials.c), nor for applying the configuration. */
#include "config.h"

#include <arpa/inet.h>
#include <grp.h>
#include <pwd.h>
#include <sys/stat.h>
#include <errno.h>
#include <ini.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "address.h"
#include "auth.h"
#include "build-config.h"
#include "config-internal.h"
#include "oauth.h"
#include "secret.h"
#include "util.h"

struct parse_state {
    config *cfg;
    const char *name;
    char *err;
    bool failed;
    int line;     /* of the line inih is reading now */
    int err_line; /* of the first error the handler found */
    bool stop;    /* a line too long: read no further */
    int *set_on;  /* by the table's index: the line the file set the key on, 0 if none */
};

/* The line on which the file set [section] name; 0 if it did not (a
 * default does not count). */
static int line_of(const struct parse_state *st, const char *section, const char *name) {
    long i = settings_find(section, name);

    return i < 0 ? 0 : st->set_on[i];
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

static int handler(void *user, const char *section, const char *name, const char *value) {
    struct parse_state *st = user;
    const char *why;
    char range[64];
    long i;

    if (!settings_section_known(section)) {
        set_err(st, "unknown section [%s]; known sections are [upstream], [cache], [server], "
                    "[auth], [frontend], [shared], [log]",
                section);
        return 0;
    }
    i = settings_find(section, name);
    if (i < 0) {
        set_err(st, "unknown key '%s' in [%s]; see the sample tokend.conf for the keys", name, section);
        return 0;
    }
    if (st->set_on[i]) {
        set_err(st, "%s is set twice in [%s]", name, section);
        return 0;
    }
    st->set_on[i] = st->line;
    why = settings_store(st->cfg, (size_t)i, value);
    if (why) {
        settings_range_text((size_t)i, range, sizeof(range));
        set_err(st, "[%s] %s = '%s' %s%s", section, name, value, why, range);
        return 0;
    }
    return 1;
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
                          : c->shared_previous_key_file ? "previous_key_file" : line_of(st, "shared", "prefix") ? "prefix"
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
    if (strlen(c->shared_prefix) > CONFIG_SHARED_PREFIX_MAX || strspn(c->shared_prefix, "abcdefghijklmnopqrstuvwxyz"
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
    _cleanup_free_ int *set_on_lines = calloc(config_key_count(), sizeof(int));
    struct parse_state st = { .name = path, .err = err, .set_on = set_on_lines };
    config *c;
    int line, r;

    if (!set_on_lines)
        return -ENOMEM;
    c = calloc(1, sizeof(*c));
    if (!c)
        return -ENOMEM;
    st.cfg = c;
    r = settings_set_defaults(c, err);
    if (r < 0) {
        config_free(c);
        return r;
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
    /* files read later, by config_load(), whose messages name the line */
    c->ca_file_line = line_of(&st, "upstream", "ca_file");
    c->shared_key_file_line = line_of(&st, "shared", "key_file");
    c->shared_previous_key_file_line = line_of(&st, "shared", "previous_key_file");
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

int config_load(const char *path, const char *credentials_dir, config **ret, char err[CONFIG_ERR_MAX]) {
    config *c;
    int r;

    r = parse(path, NULL, &c, err);
    if (r < 0)
        return r;
    r = credentials_load_upstream(c, credentials_dir, err);
    if (r == 0 && c->ca_file)
        r = ca_load(c, err);
    if (r == 0 && config_shared(c))
        r = credentials_load_shared(c, credentials_dir, err);
    /* the keys file is loaded with the rest, so a reload applies a new one
     * or refuses a bad one together with everything else */
    if (r == 0 && c->keys_file)
        r = auth_load(c->keys_file, &c->keys, err, CONFIG_ERR_MAX);
    if (r < 0) {
        config_free(c);
        return r;
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

