/* The running daemon: starts the modules in dependency order (upstream
 * client, cache, HTTP front), runs the loop that answers signals (SIGTERM
 * stops, SIGHUP reloads) and keeps systemd informed (status line, watchdog),
 * carries the cache across restarts through systemd's file descriptor
 * store, and stops the modules in reverse. Not responsible for the command
 * line (main.c) nor for talking to systemd itself (sd.c). */
#include <curl/curl.h>
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include "api.h"
#include "cache.h"
#include "address.h"
#include "config.h"
#include "log.h"
#include "sd.h"
#include "snapshot.h"
#include "service.h"
#include "shared.h"
#include "upstream.h"
#include "util.h"

/* The cache's source of tokens: Instacart, through the upstream client. */
static void fetch_from_upstream(void *source, enum oauth_grant grant, const char *user_id,
                                const char *scope, const struct cache_want *want, cache_done_fn done,
                                void *ctx) {
    upstream_mint(source, grant, user_id, scope, done, ctx);
}

/* Each connection is a file descriptor: make sure the limit we configured
 * can be reached, and lower it (loudly) when the system will not allow it. */
static unsigned fit_connections(unsigned wanted, unsigned upstream_conns) {
    struct rlimit rl;
    unsigned reserve = upstream_conns + 64;

    if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
        return wanted;
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
        getrlimit(RLIMIT_NOFILE, &rl);
    }
    if (rl.rlim_cur != RLIM_INFINITY && (rlim_t)wanted + reserve > rl.rlim_cur) {
        unsigned fit = rl.rlim_cur > reserve + 16 ? (unsigned)(rl.rlim_cur - reserve) : 16;
        log_warning("max_connections %u does not fit the file descriptor limit %llu; using %u",
                    wanted, (unsigned long long)rl.rlim_cur, fit);
        return fit;
    }
    return wanted;
}

/* ---- under systemd: status, watchdog, reload, the cache across restarts ---- */

/* The worker goes round its loop at least once a second; this much silence
 * means it is wedged. */
#define WORKER_IDLE_MAX_MS 5000
#define STATUS_EVERY_MS 2000
#define FDSTORE_TIMEOUT_MS 5000

/* What the cache image carried over the restart besides the cache: drops,
 * flushes and revocations promised (answered 503 "..._pending") and not
 * yet made. Taken up again once the fleet's and the upstream's threads
 * run. */
struct carried {
    struct carried *next;
    enum snapshot_kind kind;
    enum oauth_grant grant;
    char user[OAUTH_USER_ID_MAX + 1];
    char scope[OAUTH_SCOPE_MAX + 1];
    token *t; /* SNAPSHOT_REVOKE */
    uint64_t value; /* SNAPSHOT_REVOKE_SHARED: when it was asked; SNAPSHOT_REVOKED_TELL: the fingerprint */
};

struct service {
    const char *path;
    config *boot;     /* as started: settings that only a restart applies */
    config *current;  /* after a successful reload; NULL before */
    unsigned wanted_connections;
    int sfd;          /* SIGTERM, SIGINT, SIGHUP */
    int listen_fd, cache_fd; /* from systemd until handed over, or -1 */
    upstream *up;
    revocations *rv;
    shared *sh;       /* fleet mode, or NULL */
    cache *c;
    api *a;
    struct carried *carried; /* from the image, until the threads run */
    char events_read[48]; /* from the image: the last fleet event read before the restart */
    uint64_t events_redis; /* ... and the Redis it was read from */
    uint64_t watchdog_ms, next_watchdog_ms, next_status_ms;
    unsigned long long seen_ok, seen_rejected, seen_failed;
    unsigned long long probes; /* the watchdog's own requests, not callers' */
    const char *upstream_state;
    char status[256];
};

static const config *effective(const struct service *s) {
    return s->current ? s->current : s->boot;
}

/* The client secret lives in the upstream client only; drop our copy. */
static void forget_secret(config *cfg) {
    cfg->client_secret = wipe_free(cfg->client_secret, cfg->client_secret_len);
    cfg->client_secret_len = 0;
}

/* The fleet's shared key lives in the shared tier only (derived into its
 * subkeys): drop our copy. */
static void forget_shared_keys(config *cfg) {
    explicit_bzero(cfg->shared_key, sizeof(cfg->shared_key));
    explicit_bzero(cfg->shared_previous_key, sizeof(cfg->shared_previous_key));
}

static const char *status_text(struct service *s) {
    struct cache_stats cs;
    struct upstream_stats us;
    struct api_stats as;
    unsigned long long failed;

    cache_get_stats(s->c, &cs);
    upstream_get_stats(s->up, &us);
    api_get_stats(s->a, &as);
    failed = us.mints_rejected + us.mints_failed + us.mints_timeout;
    /* Instacart's state as of the mints since the last look */
    if (us.mints_ok > s->seen_ok)
        s->upstream_state = "ok";
    else if (us.mints_rejected > s->seen_rejected)
        s->upstream_state = "rejecting mints";
    else if (failed > s->seen_failed)
        s->upstream_state = "failing";
    s->seen_ok = us.mints_ok;
    s->seen_rejected = us.mints_rejected;
    s->seen_failed = failed;
    {
        struct shared_stats ss;
        if (s->sh)
            shared_get_stats(s->sh, &ss);
        snprintf(s->status, sizeof(s->status),
                 "%llu token%s cached; mints: %llu ok, %llu failed; Instacart: %s, %u in flight; %llu requests "
                 "served%s",
                 cs.entries, cs.entries == 1 ? "" : "s", us.mints_ok, failed, s->upstream_state, us.in_flight,
                 as.requests > s->probes ? as.requests - s->probes : 0,
                 !s->sh      ? ""
                 : !ss.up    ? "; fleet: degraded, Redis out of reach"
                 : !ss.events_ok ? "; fleet: degraded, not hearing the fleet's drops (see the log)"
                             : "; fleet: sharing through Redis");
    }
    return s->status;
}

static void update_status(struct service *s, uint64_t now) {
    char before[sizeof(s->status)];

    if (now < s->next_status_ms)
        return;
    s->next_status_ms = now + STATUS_EVERY_MS;
    memcpy(before, s->status, sizeof(before));
    if (strcmp(before, status_text(s)) != 0)
        systemd_status(s->status);
}

/* WATCHDOG=1 only while both threads that matter make progress: the
 * upstream worker (its heartbeat) and the HTTP server (it answers a real
 * request). The main loop itself is the third: it sends the ping. */
static void watchdog(struct service *s, uint64_t now) {
    uint64_t idle, timeout;
    const char *addr;
    int r = 0;

    if (!s->watchdog_ms || now < s->next_watchdog_ms)
        return;
    s->next_watchdog_ms = now + s->watchdog_ms / 3;
    idle = upstream_idle_ms(s->up);
    if (idle >= WORKER_IDLE_MAX_MS) {
        log_error("watchdog: the upstream worker has not run for %llu ms; withholding the "
                  "watchdog ping so systemd restarts tokend", (unsigned long long)idle);
        return;
    }
    timeout = s->watchdog_ms / 6 < 2000 ? s->watchdog_ms / 6 : 2000;
    addr = api_address(s->a);
    if (addr[0]) {
        r = systemd_probe_http(addr, timeout ? timeout : 1);
        s->probes += r == 0;
    }
    if (r < 0) {
        log_error("watchdog: the HTTP server did not answer GET /healthz on %s within %llu ms "
                  "(%s); withholding the watchdog ping", addr, (unsigned long long)timeout, strerror(-r));
        return;
    }
    systemd_watchdog_ping();
}

/* Appends "[section] key" to a list of names. */
static void name_key(char *names, size_t size, size_t *n, const struct config_key_info *k) {
    if (*n < size)
        *n += (size_t)snprintf(names + *n, size - *n, "%s[%s] %s", *n ? ", " : "", k->section, k->name);
}

/* Names every key the reload changed, from the table of settings in
 * config.c: as applied (compared with the configuration that ran until
 * now), or as needing a restart (compared with the one started with, whose
 * values the modules copied). `boot_connections` is max_connections as
 * configured at start, before it was fitted to the file descriptor limit. */
static void warn_needs_restart(const config *boot, const config *old, const config *now,
                               unsigned boot_connections, bool fleet_toggled) {
    char applied[1024] = "", restart[1024] = "";
    size_t n_applied = 0, n_restart = 0;
    config started = *boot; /* a shallow copy, only compared */

    started.max_connections = boot_connections;
    for (size_t i = 0; i < config_key_count(); i++) {
        struct config_key_info k;
        bool needs_restart;

        config_key_get(i, &k);
        /* the fleet's tier is made at start or not at all: turning fleet
         * mode on or off applies none of [shared] */
        needs_restart = k.reload == CONFIG_RELOAD_RESTART || (fleet_toggled && strcmp(k.section, "shared") == 0);
        if (needs_restart && config_key_differs(i, &started, now))
            name_key(restart, sizeof(restart), &n_restart, &k);
        else if (!needs_restart && config_key_differs(i, old, now))
            name_key(applied, sizeof(applied), &n_applied, &k);
    }
    if (n_applied)
        log_notice("%s: changed %s: applied", now->path, applied);
    if (n_restart)
        log_warning("%s: changed %s: these settings need a restart to take effect (a restart "
                    "under systemd keeps the cached tokens); the running values stay until then",
                    now->path, restart);
}

/* SIGHUP: the whole configuration and the secret again, applied only if all
 * of it is valid; otherwise the old one keeps serving. Under the unit the
 * credentials come staged by ExecReload= (systemd copies LoadCredential=
 * only at start), and the verdict goes back to ExecReload=, which asked
 * with tag (0: a plain SIGHUP). */
static void reload(struct service *s, int tag) {
    char err[CONFIG_ERR_MAX];
    const config *old = effective(s);
    config *n = NULL;
    const char *from;
    bool flush, fleet_toggled, staged;
    int r;

    systemd_reloading();
    staged = systemd_reload_staged();
    from = systemd_reload_credentials_dir();
    r = systemd_reload_config_load(s->path, &n, err);
    systemd_reload_discard(); /* read or refused: the copies of secrets go either way */
    if (r < 0) {
        log_event(LOG_ERR, LOG_ID_RELOAD_FAILED, NULL,
                  "reload refused, still serving with the previous configuration: %s", err);
        systemd_reload_confirm(tag, err);
        systemd_ready(status_text(s));
        return;
    }
    flush = strcmp(old->client_id, n->client_id) != 0 || strcmp(old->base_url, n->base_url) != 0;
    r = upstream_set_credentials(s->up, n);
    if (r < 0) {
        log_event(LOG_ERR, LOG_ID_RELOAD_FAILED, NULL,
                  "reload failed (%s), still serving with the previous configuration", strerror(-r));
        snprintf(err, sizeof(err), "the new credentials could not be applied (%s)", strerror(-r));
        systemd_reload_confirm(tag, err);
        config_free(n);
        systemd_ready(status_text(s));
        return;
    }
    forget_secret(n);
    fleet_toggled = config_shared(n) != (s->sh != NULL);
    warn_needs_restart(s->boot, old, n, s->wanted_connections, fleet_toggled);
    log_set_max_level(n->log_level);
    /* the keys file was read with the rest: a removed key stops working now */
    api_set_keys(s->a, n->keys);
    n->keys = NULL;
    if (n->keys_file)
        log_notice("API keys reloaded from %s", n->keys_file);
    else if (old->keys_file)
        log_warning("[auth] keys_file removed: every local caller now has every right but frontend and proxy");
    if (flush)
        log_notice("client id or Instacart server changed: dropped %zu cached tokens",
                   cache_flush_as(s->c, false));
    /* new keys, and a new namespace with new credentials; what it cannot
     * apply warn_needs_restart() named from the table */
    if (s->sh && !fleet_toggled)
        shared_reload(s->sh, n);
    forget_shared_keys(n);
    log_event(LOG_NOTICE, LOG_ID_RELOADED, NULL,
              "reloaded %s: minting as client id %s at %s, with the secret from %s", n->path,
              n->client_id, n->base_url,
              staged ? "the credential ExecReload= copied afresh" : from ? "the systemd credential"
                                                                     : n->client_secret_file);
    api_set_config(s->a, s->boot, n);
    config_free(s->current);
    s->current = n;
    systemd_reload_confirm(tag, NULL); /* applied: every module has the new values */
    systemd_ready(status_text(s));
}

static snapshot_identity identity_of(const config *cfg) {
    return (snapshot_identity){ .base_url = cfg->base_url, .client_id = cfg->client_id };
}

static void carry_back(void *ctx, enum snapshot_kind kind, enum oauth_grant grant, const char *user_id,
                       const char *scope, token *t, uint64_t value) {
    struct service *s = ctx;
    struct carried *c;

    if (kind == SNAPSHOT_REVOCATION_SEEN) { /* not to be applied twice by the replay */
        if (s->sh)
            shared_note_applied(s->sh, strtoull(scope, NULL, 16));
        return;
    }
    if (kind == SNAPSHOT_REVOKED_FP) { /* never served again, whoever writes it back into Redis */
        if (s->sh)
            shared_deny(s->sh, value);
        return;
    }
    if (kind == SNAPSHOT_FLUSH_FLOOR) { /* a generation set back behind it is refused */
        if (s->sh)
            shared_set_flush_floor(s->sh, value);
        return;
    }
    if (kind == SNAPSHOT_USER_REVOKED) { /* a user's token hidden from a revocation is still refused */
        if (s->sh)
            shared_floor(s->sh, strtoull(scope, NULL, 16), value);
        return;
    }
    if (kind == SNAPSHOT_EVENTS_READ) { /* the fleet's events are replayed from there */
        snprintf(s->events_read, sizeof(s->events_read), "%s", scope);
        s->events_redis = value;
        return;
    }
    c = calloc(1, sizeof(*c));

    if (!c) {
        log_error("out of memory taking up again a drop, flush or revocation from before the restart");
        token_unref(t);
        return;
    }
    *c = (struct carried){ .next = s->carried, .kind = kind, .grant = grant, .t = t, .value = value };
    snprintf(c->user, sizeof(c->user), "%s", user_id);
    snprintf(c->scope, sizeof(c->scope), "%s", scope);
    s->carried = c;
}

/* Each carried thing, done again as at first (nobody waits for it now). */
static void take_up_carried(struct service *s) {
    struct carried *c;
    size_t n = 0;

    for (c = s->carried; c; c = c->next)
        n++;
    if (n)
        log_notice("taking up again %zu %s from before the restart", n,
                   n == 1 ? "drop, flush or revocation" : "drops, flushes or revocations");
    while ((c = s->carried)) {
        s->carried = c->next;
        if (c->kind == SNAPSHOT_REVOKE)
            revocations_revoke(s->rv, &c->t, 1, 0, NULL, NULL);
        else if (!s->sh)
            log_warning("a fleet drop, flush or revocation from before the restart is dropped: fleet mode is off");
        else if (c->kind == SNAPSHOT_REVOKE_SHARED)
            shared_revoke_carried(s->sh, c->grant, c->user, c->scope, c->value);
        else if (c->kind == SNAPSHOT_REVOKED_TELL)
            shared_tell_revoked(s->sh, c->grant, c->user, c->scope, c->value);
        else if (c->kind == SNAPSHOT_DROP_SHARED)
            shared_drop(s->sh, c->grant, c->user, c->scope, NULL, NULL, NULL);
        else if (c->kind == SNAPSHOT_FLUSH_SHARED)
            shared_flush(s->sh, NULL, NULL);
        token_unref(c->t);
        explicit_bzero(c->user, sizeof(c->user));
        free(c);
    }
}

struct export {
    snapshot_put_fn put;
    void *put_ctx;
};

static void export_revocation(void *userdata, const token *t) {
    struct export *e = userdata;

    e->put(e->put_ctx, SNAPSHOT_REVOKE, OAUTH_GRANT_CLIENT_CREDENTIALS, "", "", t, 0);
}

static void export_fleet(void *userdata, enum shared_carried what, enum oauth_grant grant, const char *user_id,
                         const char *scope, uint64_t value) {
    static const enum snapshot_kind kinds[] = {
        [SHARED_CARRIED_DROP] = SNAPSHOT_DROP_SHARED,
        [SHARED_CARRIED_REVOKE] = SNAPSHOT_REVOKE_SHARED,
        [SHARED_CARRIED_FLUSH] = SNAPSHOT_FLUSH_SHARED,
        [SHARED_CARRIED_TELL] = SNAPSHOT_REVOKED_TELL,
    };
    struct export *e = userdata;

    e->put(e->put_ctx, kinds[what], grant, user_id, scope, NULL, value);
}

static void export_applied(void *userdata, uint64_t id) {
    struct export *e = userdata;
    char hex[17];

    snprintf(hex, sizeof(hex), "%016llx", (unsigned long long)id);
    e->put(e->put_ctx, SNAPSHOT_REVOCATION_SEEN, OAUTH_GRANT_CLIENT_CREDENTIALS, "", hex, NULL, 0);
}

static void export_read(struct export *e, shared *sh) {
    char id[48];
    uint64_t redis = 0;

    if (shared_last_read(sh, id, &redis))
        e->put(e->put_ctx, SNAPSHOT_EVENTS_READ, OAUTH_GRANT_CLIENT_CREDENTIALS, "", id, NULL, redis);
}

static void export_denied(void *userdata, uint64_t fp) {
    struct export *e = userdata;

    e->put(e->put_ctx, SNAPSHOT_REVOKED_FP, OAUTH_GRANT_CLIENT_CREDENTIALS, "", "", NULL, fp);
}

static void export_floor(void *userdata, uint64_t user, uint64_t at_unix_ms) {
    struct export *e = userdata;
    char hex[17];

    snprintf(hex, sizeof(hex), "%016llx", (unsigned long long)user);
    e->put(e->put_ctx, SNAPSHOT_USER_REVOKED, OAUTH_GRANT_CLIENT_CREDENTIALS, "", hex, NULL, at_unix_ms);
}

static void export_carried(void *ctx, snapshot_put_fn put, void *put_ctx) {
    struct service *s = ctx;
    struct export e = { .put = put, .put_ctx = put_ctx };

    revocations_export(s->rv, export_revocation, &e);
    if (s->sh) {
        shared_export_pending(s->sh, export_fleet, &e);
        shared_export_applied(s->sh, export_applied, &e);
        shared_export_denied(s->sh, export_denied, &e);
        shared_export_floors(s->sh, export_floor, &e);
        if (shared_flush_floor(s->sh))
            put(put_ctx, SNAPSHOT_FLUSH_FLOOR, OAUTH_GRANT_CLIENT_CREDENTIALS, "", "", NULL, shared_flush_floor(s->sh));
        export_read(&e, s->sh);
    }
}

/* The cache image systemd kept for us over the restart, if any. */
static void restore_cache(struct service *s, int fd) {
    snapshot_identity id = identity_of(s->boot);
    struct snapshot_more more = { .restore = carry_back, .ctx = s };
    struct snapshot_counts n = { 0 };
    char err[SNAPSHOT_ERR_MAX], fields[128];
    int r;

    r = snapshot_read_fd(fd, &id, s->boot->min_ttl_ms, s->c, &more, &n, err);
    close(fd);
    /* consumed: a crash later must not bring back this older image */
    systemd_store_remove(SYSTEMD_FDNAME_CACHE);
    if (r < 0) {
        log_event(LOG_WARNING, LOG_ID_CACHE_IGNORED, NULL,
                  "ignoring the cache image passed by systemd: %s; starting with an empty cache", err);
        return;
    }
    snprintf(fields, sizeof(fields), "TOKENS_RESTORED=%zu\nTOKENS_EXPIRED=%zu\nTOKENS_SKIPPED=%zu\nPENDING_RESTORED=%zu",
             n.restored, n.expired, n.skipped, n.carried);
    log_event(LOG_NOTICE, LOG_ID_CACHE_RESTORED, fields,
              "restored %zu cached tokens from before the restart (%zu too close to expiry, %zu did not fit), "
              "and %zu %s not yet made", n.restored, n.expired, n.skipped, n.carried,
              n.carried == 1 ? "drop, flush or revocation" : "drops, flushes or revocations");
    if (s->sh && n.restored) /* drops the fleet made meanwhile must reach them */
        shared_resume(s->sh, n.age_ms, s->events_read, s->events_redis);
}

/* On stop: the cache into a sealed memfd, into systemd's fd store. */
static void save_cache(struct service *s) {
    snapshot_identity id = identity_of(effective(s));
    struct snapshot_more more = { .export = export_carried, .ctx = s };
    size_t count = 0, carried = 0;
    char fields[96];
    int fd = -1, r;

    if (!systemd_notifying())
        return; /* nobody to keep it */
    r = snapshot_write_memfd(s->c, &more, &id, &fd, &count, &carried);
    if (r < 0) {
        log_warning("cannot write the cache image (%s); the next start begins with an empty cache",
                    strerror(-r));
        return;
    }
    r = systemd_store_fd(fd, SYSTEMD_FDNAME_CACHE, FDSTORE_TIMEOUT_MS);
    close(fd);
    if (r < 0) {
        log_warning("cannot hand the cache image to systemd (%s); set FileDescriptorStoreMax= in "
                    "the unit to keep cached tokens over a restart", strerror(-r));
        return;
    }
    snprintf(fields, sizeof(fields), "TOKENS_SAVED=%zu\nPENDING_SAVED=%zu", count, carried);
    log_event(LOG_NOTICE, LOG_ID_CACHE_SAVED, fields,
              "handed %zu cached tokens to systemd's file descriptor store for the next start, with %zu %s not "
              "yet made", count, carried, carried == 1 ? "drop, flush or revocation" : "drops, flushes or revocations");
}

/* A socket from systemd skips [server] listen, so check here what the
 * configuration would have refused. */
static int check_passed_socket(const config *cfg, api *a) {
    struct sockaddr_storage ss;
    socklen_t sl;
    bool loopback = false;

    if (address_listen_parse(api_address(a), &ss, &sl, &loopback) < 0 || loopback || cfg->allow_remote)
        return 0;
    log_error("the socket passed by systemd listens on %s, which is not a loopback address; tokend "
              "hands out tokens to whoever connects, so set allow_remote = yes in [server] only "
              "behind a firewall you trust", api_address(a));
    return -EPERM;
}

/* The fleet's drops and flushes land in the cache: fleet mode calls the
 * cache through these, never directly. */
static int sink_drop(void *ctx, enum oauth_grant grant, const char *user_id, const char *scope, token **ret) {
    return cache_drop(ctx, grant, user_id, scope, ret);
}

static size_t sink_flush(void *ctx) {
    return cache_flush(ctx);
}

static bool sink_holds(void *ctx, enum oauth_grant grant, const char *user_id, const char *scope, const token *t) {
    return cache_holds(ctx, grant, user_id, scope, t);
}

static int sink_drop_if(void *ctx, enum oauth_grant grant, const char *user_id, const char *scope,
                        const token *only) {
    return cache_drop_if(ctx, grant, user_id, scope, only, NULL);
}

/* ---- start, serve, drain, stop ---- */

/* SIGTERM, SIGINT and SIGHUP through a signalfd: blocked before any thread
 * starts, so only the signalfd sees them. */
static int take_signals(struct service *s) {
    sigset_t mask;

    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &mask, NULL);
    signal(SIGPIPE, SIG_IGN);
    s->sfd = signalfd(-1, &mask, SFD_CLOEXEC);
    if (s->sfd < 0) {
        int r = -errno;
        log_error("signalfd: %s", strerror(errno));
        return r;
    }
    return 0;
}

/* The modules, made in dependency order, no thread running yet: the
 * upstream client, the revocations it sends, the fleet's tier (fleet mode)
 * and the cache that fetches through either, with the cache image systemd
 * kept over a restart. */
static int make_modules(struct service *s, config *cfg) {
    cache_settings cs = {
        .max_entries = cfg->max_entries,
        .min_ttl_ms = cfg->min_ttl_ms,
        .refresh_before_pct = cfg->refresh_before_pct,
        .failure_ttl_ms = cfg->failure_ttl_ms,
        .max_waiters = cfg->max_waiters,
        .retry_base_ms = cfg->retry_base_ms,
        .retry_max_ms = cfg->retry_max_ms,
    };
    int r;

    r = fingerprint_set_key(cfg->client_id, cfg->client_secret, cfg->client_secret_len);
    if (r < 0)
        return r;
    r = upstream_new(cfg, &s->up);
    if (r < 0)
        return r;
    r = revocations_new(s->up, &s->rv);
    if (r < 0)
        return r;
    forget_secret(cfg);
    if (config_shared(cfg)) {
        r = shared_new(cfg, s->up, s->rv, &s->sh);
        forget_shared_keys(cfg);
        if (r < 0)
            return r;
        r = cache_new(&cs, shared_fetch, s->sh, &s->c);
    } else
        r = cache_new(&cs, fetch_from_upstream, s->up, &s->c);
    if (r < 0)
        return r;
    if (s->cache_fd >= 0) {
        restore_cache(s, s->cache_fd); /* closes it */
        s->cache_fd = -1;
    }
    return 0;
}

/* The threads, in dependency order: the fleet's, the upstream worker, then
 * the HTTP server, which is what makes tokend reachable. */
static int start_threads(struct service *s, config *cfg) {
    bool passed;
    int r;

    if (s->sh) {
        struct shared_sink sink = { .drop = sink_drop,
                                    .flush = sink_flush,
                                    .holds = sink_holds,
                                    .drop_if = sink_drop_if,
                                    .ctx = s->c };
        shared_attach(s->sh, &sink);
        r = shared_start(s->sh); /* before the upstream's: it listens to its 429s */
        if (r < 0)
            return r;
    }
    r = upstream_start(s->up);
    if (r < 0)
        return r;
    /* the fleet's drops made while we were down reach what we brought back
     * before anyone is served; without Redis, in the background later */
    switch (s->sh ? shared_wait_read(s->sh, SHARED_START_WAIT_MS) : SHARED_READ_DONE) {
    case SHARED_READ_DONE:
        break;
    case SHARED_READ_UNREACHED:
        log_warning("fleet: the fleet's drops, revocations and flushes could not be read within %d s of the start "
                    "(Redis out of reach?): serving now; they are applied when Redis is reached",
                    SHARED_START_WAIT_MS / 1000);
        break;
    case SHARED_READ_SLOW: /* Redis is there: what it says is not to be served past */
        log_warning("fleet: the fleet's drops, revocations and flushes were still being read %d s after the start: "
                    "the %zu tokens brought back are dropped (a mint each) rather than served before hearing them",
                    SHARED_START_WAIT_MS / 1000, cache_flush(s->c));
        break;
    }
    passed = s->listen_fd >= 0;
    r = api_new(cfg, cfg->keys, s->c, s->up, s->sh, s->rv, s->listen_fd, &s->a);
    s->listen_fd = -1; /* the server owns it and the keys, even when it failed */
    cfg->keys = NULL;
    if (r < 0)
        return r;
    r = check_passed_socket(cfg, s->a);
    if (r == 0 && passed) /* a listen = that differs from the socket systemd passed: said */
        systemd_check_listen(cfg, api_listening(s->a));
    return r;
}

/* Everything in order; whatever this returns, stop() undoes what was done. */
static int start(struct service *s, config *cfg) {
    int r;

    r = take_signals(s);
    if (r < 0)
        return r;
    /* socket activation and the fd store: both optional */
    systemd_take_fds(&s->listen_fd, &s->cache_fd);
    s->wanted_connections = cfg->max_connections;
    cfg->max_connections = fit_connections(cfg->max_connections, cfg->max_concurrent);
    r = make_modules(s, cfg);
    if (r < 0)
        return r;
    r = start_threads(s, cfg);
    if (r < 0)
        return r;
    take_up_carried(s);
    log_event(LOG_NOTICE, LOG_ID_STARTED, NULL, "listening on %s (Instacart at %s, client id %s)",
              api_listening(s->a), cfg->base_url, cfg->client_id);
    /* ready: listening, credentials loaded, the old cache restored */
    systemd_ready(status_text(s));
    s->watchdog_ms = systemd_watchdog_usec() / 1000;
    if (s->watchdog_ms)
        systemd_watchdog_ping();
    s->next_watchdog_ms = now_ms() + s->watchdog_ms / 3;
    s->next_status_ms = now_ms() + STATUS_EVERY_MS;
    return 0;
}

/* Until SIGTERM or SIGINT: reloads on SIGHUP, and once a second (or at
 * the watchdog's pace) the cache's sweep, revocations due, the watchdog
 * and the status line. */
static void serve(struct service *s) {
    cache *c = s->c;
    revocations *rv = s->rv;

    for (;;) {
        struct pollfd p = { .fd = s->sfd, .events = POLLIN };
        struct signalfd_siginfo si;
        uint64_t now = now_ms(), wait = 1000;

        if (s->watchdog_ms)
            wait = s->next_watchdog_ms > now ? (s->next_watchdog_ms - now < wait ? s->next_watchdog_ms - now : wait) : 0;
        if (poll(&p, 1, (int)wait) > 0 && read(s->sfd, &si, sizeof(si)) == sizeof(si)) {
            if (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT)
                break;
            if (si.ssi_signo == SIGHUP) /* ExecReload= tags its request (sigqueue) */
                reload(s, si.ssi_code == SI_QUEUE ? si.ssi_int : 0);
        }
        cache_sweep(c);
        revocations_tick(rv);
        now = now_ms();
        watchdog(s, now);
        update_status(s, now);
    }
}

/* A clean stop: no new connections, requests in flight get the grace
 * period, then the workers stop and the cache goes to systemd. */
static void drain(struct service *s) {
    uint64_t grace = effective(s)->shutdown_timeout_ms, deadline;

    systemd_stopping("Stopping: finishing requests in flight");
    log_event(LOG_NOTICE, LOG_ID_STOPPING, NULL,
              "stopping: no new connections; waiting up to %llu ms for requests in flight",
              (unsigned long long)grace);
    api_quiesce(s->a);
    deadline = now_ms() + grace;
    while (api_waiting(s->a) > 0 && now_ms() < deadline)
        poll(NULL, 0, 20); /* polling a counter, bounded by the deadline */
    /* no fetch may change the cache while it is written out; stopping it also
     * answers the callers still waiting, whose answers then get a moment to
     * be written before the server goes (the fleet's lookups first: they
     * hand mints to the upstream) */
    shared_stop(s->sh);
    upstream_stop(s->up);
    deadline = now_ms() + 2000;
    while (api_active(s->a) > 0 && now_ms() < deadline)
        poll(NULL, 0, 10); /* polling a counter, bounded by the deadline */
    save_cache(s);
}

/* Reverse order of start(), from wherever it got to: the upstream first,
 * so every waiting caller is answered before the server and the cache go
 * away. */
static void stop(struct service *s) {
    size_t lost = 0;

    for (struct carried *c; (c = s->carried); free(c)) { /* the start failed before taking them up */
        s->carried = c->next;
        token_unref(c->t);
        explicit_bzero(c->user, sizeof(c->user));
        lost++;
    }
    if (lost)
        log_error("the start failed after taking the cache image: %zu %s from before the restart %s lost; "
                  "repeat them once tokend runs", lost, lost == 1 ? "drop, flush or revocation" : "drops, flushes "
                  "or revocations", lost == 1 ? "is" : "are");
    shared_stop(s->sh);
    upstream_stop(s->up);
    api_free(s->a);
    shared_free(s->sh); /* after the upstream: a mint's end may still call it */
    cache_free(s->c);
    revocations_free(s->rv); /* after the upstream: nothing of it is in flight */
    upstream_free(s->up);
    config_free(s->current);
    if (s->listen_fd >= 0)
        close(s->listen_fd);
    if (s->cache_fd >= 0)
        close(s->cache_fd);
    if (s->sfd >= 0)
        close(s->sfd);
}

int service_run(const char *path, config *cfg) {
    struct service s = {
        .path = path, .boot = cfg, .upstream_state = "no mint yet", .sfd = -1, .listen_fd = -1, .cache_fd = -1,
    };
    int r;

    r = start(&s, cfg);
    if (r == 0) {
        serve(&s);
        drain(&s);
    }
    stop(&s);
    return r;
}
