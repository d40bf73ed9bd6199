/* The daemon's configuration: one immutable snapshot, read from an INI file
 * (and the client secret from its own file), checked as a whole. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CONFIG_ERR_MAX 512
/* [server] listen takes at most this many addresses */
#define CONFIG_LISTEN_MAX 8
/* [shared] prefix: Redis key names are sized for at most this many characters */
#define CONFIG_SHARED_PREFIX_MAX 64

struct auth;

typedef struct config {
    char *path;

    /* [upstream] */
    char *base_url;          /* without a trailing slash */
    char *client_id;
    char *client_secret_file;
    char *client_secret;     /* wiped by config_free() */
    size_t client_secret_len;
    bool client_secret_from_credential; /* the systemd credential, not client_secret_file, gave it */
    char *default_scope;
    char *ca_file;           /* NULL: the system's trust store */
    int ca_file_line;        /* where ca_file was set, for messages */
    char *ca_pem;            /* ca_file's contents, read by config_load() */
    size_t ca_pem_len;
    uint64_t connect_timeout_ms;
    uint64_t attempt_timeout_ms;
    uint64_t request_timeout_ms; /* per mint, retries included */
    unsigned max_concurrent;
    unsigned queue_max;
    uint64_t retry_base_ms;
    uint64_t retry_max_ms;
    unsigned breaker_failures;
    uint64_t breaker_cooldown_ms;
    char *proxy;                  /* http:// or https:// proxy URL; NULL: none, whatever the environment says */
    char *proxy_credentials_file;
    char *proxy_credentials;      /* USER:PASSWORD, wiped by config_free() */
    size_t proxy_credentials_len;

    /* [cache] */
    unsigned max_entries;
    uint64_t min_ttl_ms;
    unsigned refresh_before_pct;
    uint64_t failure_ttl_ms;
    unsigned max_waiters;

    /* [server] */
    char *listen;            /* as written; parsed into listens */
    char **listens;          /* ADDRESS:PORT or unix:PATH, at least one */
    size_t n_listens;
    unsigned socket_mode;
    char *socket_group;
    char *allowed_uids_text, *allowed_gids_text;
    unsigned *allowed_uids, *allowed_gids; /* resolved; none = anyone */
    size_t n_allowed_uids, n_allowed_gids;
    char *allowed_hosts_text, *allowed_origins_text;
    char **allowed_hosts, **allowed_origins;
    size_t n_allowed_hosts, n_allowed_origins;
    bool allow_remote;
    unsigned threads;
    unsigned max_connections;
    uint64_t idle_timeout_ms;
    uint64_t shutdown_timeout_ms;

    /* [auth] */
    char *keys_file;
    struct auth *keys;       /* loaded by config_load(); NULL without keys_file */

    /* [frontend] */
    char *user_header;
    uint64_t max_body;

    /* [shared]: fleet mode, on when redis or sentinels is set */
    char *shared_redis;           /* HOST:PORT or unix:PATH */
    char *shared_sentinels_text;
    char **shared_sentinels;      /* HOST:PORT each */
    size_t n_shared_sentinels;
    char *shared_master_name;
    char *shared_username;
    char *shared_password_file;
    char *shared_password;        /* wiped by config_free() */
    size_t shared_password_len;
    char *shared_key_file;
    char *shared_previous_key_file;
    int shared_key_file_line, shared_previous_key_file_line;
    unsigned char shared_key[32];          /* wiped by config_free() */
    unsigned char shared_previous_key[32];
    bool has_shared_previous_key;
    uint64_t shared_timeout_ms;
    uint64_t shared_lease_wait_ms;
    char *shared_prefix;
    bool shared_tls;
    char *shared_tls_ca_file;

    /* [log] */
    int log_level;
} config;

/* Whether fleet mode is on. */
static inline bool config_shared(const config *c) {
    return c->shared_redis || c->shared_sentinels_text;
}

/* Reads path, then the client secret ($CREDENTIALS_DIRECTORY/client_secret
 * when credentials_dir is not NULL, else client_secret_file), the proxy's
 * credentials and the keys file. On failure returns a negative errno and
 * writes a message naming file and line to err. */
int config_load(const char *path, const char *credentials_dir, config **ret,
                char err[CONFIG_ERR_MAX]);
/* Same, from a string (tests and fuzzing); the secret is not loaded. */
int config_parse_string(const char *text, const char *name, config **ret,
                        char err[CONFIG_ERR_MAX]);
config *config_free(config *c);

/* Parses a Redis address: HOST:PORT (a name, an IPv4 address or [IPv6])
 * or unix:/PATH (port 0). Returns 0 or -EINVAL. */
int config_redis_address_parse(const char *s, char *host, size_t host_size, unsigned *port);

/* The effective configuration as JSON, durations in seconds, without the
 * secret (only the path it came from). malloc()ed, or NULL. */
char *config_describe(const config *c);
/* The same for a running daemon: each key as the daemon uses it, that is
 * from `now` if a reload applies it and from `boot` if it needs a restart. */
char *config_describe_running(const config *boot, const config *now);

/* ---- the table of settings: every key, its default and its reload rule ---- */

/* What a reload (SIGHUP) does with a changed key. */
enum config_reload {
    CONFIG_RELOAD_APPLIES, /* the running daemon uses the new value from then on */
    CONFIG_RELOAD_RESTART, /* copied at start: the old value stays until a restart */
};

/* One row of the table, as text for people and tests. */
struct config_key_info {
    const char *section, *name;
    const char *type;  /* string, integer, duration, boolean, percentage, ... */
    const char *def;   /* the default as the file would write it; NULL: none */
    char min[24], max[24]; /* bounds as the file would write them; "" if none */
    enum config_reload reload;
    const char *help;  /* one line */
};

/* The number of keys, and the i-th (0 <= i < config_key_count()). */
size_t config_key_count(void);
void config_key_get(size_t i, struct config_key_info *ret);
/* Whether the i-th key has a different value in a and in b. */
bool config_key_differs(size_t i, const config *a, const config *b);
/* The table as JSON (an array of objects: section, key, type, default,
 * min, max, reload, help) or as text for people. malloc()ed, or NULL. */
char *config_describe_keys(bool json);
