/* Fleet mode's shared tier in Redis: see shared.h for what it does.
 *
 * hiredis's synchronous API on two threads of our own, each with its own
 * connection: one sends the commands callers' misses need (pipelined in
 * batches), one blocks on the fleet's event stream and checks the fleet's
 * state between blocks. The synchronous API because both Debian releases
 * have it with a socket deadline (redisSetTimeout), while 0.14's async API
 * has no per-command deadline and no event adapter fits our loops; a
 * command that misses its deadline leaves the connection unusable, so it is
 * dropped and made again, with a breaker against a Redis that keeps failing.
 *
 * Redis holds, under "<prefix>:<namespace>:" (namespace: a hash of base_url
 * and client_id, so other credentials never meet ours):
 *   t:<name>   a token: "<generation>:<fingerprint>:" then the sealed token
 *   l:<name>   a lease: the id of the host minting it
 *   gen        the generation, bumped by a fleet flush
 *   pause      set while Instacart's Retry-After says nobody may mint
 *   creds      set while Instacart rejects the client credentials
 *   events     a stream of drops (sealed keys) and flushes
 * and nothing else: no user id, no token, no secret in the clear. */
#include <errno.h>
#include <hiredis/hiredis.h>

#include "build-config.h"

#ifdef HAVE_HIREDIS_SSL
#include <arpa/inet.h>
#include <hiredis/hiredis_ssl.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#endif
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "config.h"
#include "log.h"
#include "queue.h"
#include "seal.h"
#include "fleet.h"
#include "shared.h"
#include "util.h"


/* ---- the public side: never blocks ---- */

void shared_fetch(void *source, enum oauth_grant grant, const char *user_id, const char *scope,
                  const struct cache_want *want, cache_done_fn done, void *ctx) {
    shared *s = source;
    struct job *j = fleet_job_new(s, J_LOOKUP, grant, user_id, scope);

    if (!j) {
        mint_outcome o = { .kind = MINT_UNAVAILABLE, .retry_after_s = 1 };
        snprintf(o.error, sizeof(o.error), "out_of_memory");
        done(ctx, &o, NULL);
        return;
    }
    j->want = *want;
    j->done = done;
    j->ctx = ctx;
    if (!fleet_submit(s, j))
        fleet_degrade(s, j);
}

void shared_drop(shared *s, enum oauth_grant grant, const char *user_id, const char *scope, const token *only,
                 shared_ack_fn ack, void *userdata) {
    fleet_drop(s, grant, user_id, scope, only, ack, userdata);
}

void shared_revoke(shared *s, enum oauth_grant grant, const char *user_id, const char *scope, token *local,
                   revoke_done_fn done, void *userdata) {
    fleet_revoke(s, grant, user_id, scope, local, 0, done, userdata);
}

void shared_revoke_carried(shared *s, enum oauth_grant grant, const char *user_id, const char *scope,
                           uint64_t asked_unix_ms) {
    fleet_revoke(s, grant, user_id, scope, NULL, asked_unix_ms, NULL, NULL);
}

void shared_tell_revoked(shared *s, enum oauth_grant grant, const char *user_id, const char *scope, uint64_t fp) {
    fleet_tell_revoked_fps(s, NULL, grant, user_id[0] ? user_id : NULL, scope, &fp, 1);
}

void shared_flush(shared *s, shared_ack_fn ack, void *userdata) {
    fleet_flush(s, ack, userdata);
}

/* ---- life cycle ---- */

static int set_namespace(shared *s, const config *cfg) {
    char ns[SEAL_NS_LEN + 1];
    seal_keys k;
    int r;

    r = seal_keys_derive(cfg->shared_key, cfg->has_shared_previous_key ? cfg->shared_previous_key : NULL, &k);
    if (r == 0)
        r = seal_namespace(cfg->base_url, cfg->client_id, ns);
    if (r < 0) {
        seal_keys_wipe(&k);
        return r;
    }
    pthread_rwlock_wrlock(&s->keys_lock);
    seal_keys_wipe(&s->keys);
    s->keys = k;
    /* the prefix is the one at start (the Redis ACL names it): a reload
     * changes only the namespace, with base_url or client_id */
    if (strncmp(s->ns + strlen(s->prefix) + 1, ns, SEAL_NS_LEN) != 0 || !s->ns[0]) {
        snprintf(s->ns, sizeof(s->ns), "%s:%s:", s->prefix, ns);
        s->ns_serial++;
    }
    pthread_rwlock_unlock(&s->keys_lock);
    seal_keys_wipe(&k);
    return 0;
}

/* A lease's life: lease_wait, at least half a second (renewed four times
 * within it). */
static uint64_t lease_ms_of(const config *cfg) {
    return cfg->shared_lease_wait_ms < 500 ? 500 : cfg->shared_lease_wait_ms;
}

static char *dup_or_null(const char *s) {
    return s ? strdup(s) : NULL;
}

int shared_new(const config *cfg, upstream *up, revocations *rv, shared **ret) {
    unsigned char rnd[8]; /* 16 hex digits of a 32-digit lease id */
    shared *s;

    s = calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    pthread_rwlock_init(&s->keys_lock, NULL);
    pthread_mutex_init(&s->lock, NULL);
    {
        pthread_condattr_t ca;
        pthread_condattr_init(&ca);
        pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
        pthread_cond_init(&s->cond, &ca);
        pthread_cond_init(&s->ev_cond, &ca);
        pthread_cond_init(&s->read_cond, &ca);
        pthread_condattr_destroy(&ca);
    }
    s->up = up;
    s->rv = rv;
    s->ev_fd = -1;
    s->timeout_ms = cfg->shared_timeout_ms;
    s->lease_wait_ms = cfg->shared_lease_wait_ms;
    /* A lease lapses when its holder stops renewing it (it died): after
     * lease_wait. It is renewed while the mint runs, however long Instacart
     * takes (oauth2-proxy's fixed, unrenewed 2 s lock let a second replica
     * in on a slow refresh). */
    s->lease_ms = lease_ms_of(cfg);
    s->request_timeout_ms = cfg->request_timeout_ms;
    s->plenty_ms = 2 * cfg->min_ttl_ms;
    breaker_init(&s->br, BREAKER_FAILURES, BREAKER_COOLDOWN_MS);
    s->redis = dup_or_null(cfg->shared_redis);
    s->master_name = dup_or_null(cfg->shared_master_name);
    s->username = dup_or_null(cfg->shared_username);
    s->tls = cfg->shared_tls;
    s->tls_ca_file = dup_or_null(cfg->shared_tls_ca_file);
    if (cfg->shared_password) {
        s->password = malloc(cfg->shared_password_len + 1);
        if (s->password) {
            memcpy(s->password, cfg->shared_password, cfg->shared_password_len + 1);
            s->password_len = cfg->shared_password_len;
        }
    }
    s->prefix = strdup(cfg->shared_prefix);
    if (cfg->n_shared_sentinels) {
        s->sentinels = calloc(cfg->n_shared_sentinels, sizeof(char *));
        for (size_t i = 0; s->sentinels && i < cfg->n_shared_sentinels; i++)
            if ((s->sentinels[i] = strdup(cfg->shared_sentinels[i])))
                s->n_sentinels++;
    }
    /* a copy that failed would change what we do (a NULL user name makes
     * AUTH use the default user): no start on half a configuration */
    if (!s->prefix || (cfg->shared_redis && !s->redis) || (cfg->shared_master_name && !s->master_name) ||
        (cfg->shared_username && !s->username) || (cfg->shared_tls_ca_file && !s->tls_ca_file) ||
        (cfg->shared_password && !s->password) || s->n_sentinels != cfg->n_shared_sentinels) {
        shared_free(s);
        return -ENOMEM;
    }
    for (int i = 0; i < S_COUNT; i++)
        fleet_sha1_hex(fleet_scripts[i], strlen(fleet_scripts[i]), s->sha[i]);
    if (RAND_bytes(rnd, sizeof(rnd)) != 1) {
        shared_free(s);
        return -EIO;
    }
    for (size_t i = 0; i < sizeof(rnd); i++)
        snprintf(s->lease_prefix + 2 * i, 3, "%02x", rnd[i]);
    if ((cfg->shared_redis && !s->redis) || (cfg->n_shared_sentinels && s->n_sentinels != cfg->n_shared_sentinels) ||
        (cfg->shared_password && !s->password) || set_namespace(s, cfg) < 0) {
        shared_free(s);
        return -ENOMEM;
    }
#ifdef HAVE_HIREDIS_SSL
    if (s->tls) {
        redisInitOpenSSL();
        s->ssl = SSL_CTX_new(TLS_client_method());
        if (!s->ssl || SSL_CTX_set_min_proto_version(s->ssl, TLS1_2_VERSION) != 1 ||
            (s->tls_ca_file ? SSL_CTX_load_verify_locations(s->ssl, s->tls_ca_file, NULL)
                            : SSL_CTX_set_default_verify_paths(s->ssl)) != 1) {
            log_error("fleet: cannot set up TLS for Redis: %s%s", s->tls_ca_file ? "cannot load tls_ca_file " : "",
                      s->tls_ca_file ? s->tls_ca_file : "no system trust store");
            shared_free(s);
            return -EINVAL;
        }
        SSL_CTX_set_verify(s->ssl, SSL_VERIFY_PEER, NULL);
    }
#endif
    *ret = s;
    return 0;
}

void shared_resume(shared *s, uint64_t age_ms, const char *last_read, uint64_t redis) {
    s->resume_age_ms = age_ms ? age_ms : 1;
    s->resume_at_ms = now_ms();
    snprintf(s->resume_last, sizeof(s->resume_last), "%s", last_read ? last_read : "");
    s->resume_redis = redis;
}

bool shared_last_read(shared *s, char id[48], uint64_t *redis) {
    char ns[NS_MAX];
    bool have;

    pthread_rwlock_rdlock(&s->keys_lock);
    snprintf(ns, sizeof(ns), "%s", s->ns);
    pthread_rwlock_unlock(&s->keys_lock);
    pthread_mutex_lock(&s->lock);
    have = s->last_read[0] && strcmp(s->last_read_ns, ns) == 0;
    if (have) {
        snprintf(id, 48, "%s", s->last_read);
        *redis = s->last_read_redis;
    }
    pthread_mutex_unlock(&s->lock);
    return have;
}

void shared_attach(shared *s, const struct shared_sink *sink) {
    s->sink = *sink;
}

int shared_start(shared *s) {
    struct upstream_events ev = { .paused = fleet_on_paused, .credentials_rejected = fleet_on_credentials_rejected, .userdata = s };
    int r;

    upstream_set_events(s->up, &ev);
    r = pthread_create(&s->cmd_thread, NULL, fleet_command_thread, s);
    if (r)
        return -r;
    r = pthread_create(&s->ev_thread, NULL, fleet_event_thread, s);
    if (r) {
        pthread_mutex_lock(&s->lock);
        s->stopping = true;
        pthread_cond_broadcast(&s->cond);
        pthread_mutex_unlock(&s->lock);
        pthread_join(s->cmd_thread, NULL);
        return -r;
    }
    s->started = true;
    return 0;
}

enum shared_read shared_wait_read(shared *s, uint64_t ms) {
    enum shared_read how;
    struct timespec ts;

    mono_deadline(ms, &ts);
    pthread_mutex_lock(&s->lock);
    while (!s->read_once && !s->stopping)
        if (pthread_cond_timedwait(&s->read_cond, &s->lock, &ts) == ETIMEDOUT)
            break;
    how = s->read_once ? SHARED_READ_DONE : s->ev_fd >= 0 ? SHARED_READ_SLOW : SHARED_READ_UNREACHED;
    pthread_mutex_unlock(&s->lock);
    return how;
}

static bool differ(const char *a, const char *b) {
    return (a || b) && (!a || !b || strcmp(a, b) != 0);
}

bool shared_reload(shared *s, const config *cfg) {
    bool restart = differ(s->redis, cfg->shared_redis) || differ(s->master_name, cfg->shared_master_name) ||
                   differ(s->username, cfg->shared_username) || s->tls != cfg->shared_tls ||
                   s->n_sentinels != cfg->n_shared_sentinels;

    for (size_t i = 0; !restart && i < s->n_sentinels; i++)
        restart = strcmp(s->sentinels[i], cfg->shared_sentinels[i]) != 0;
    if (set_namespace(s, cfg) < 0)
        log_error("fleet: out of memory deriving the new shared keys; keeping the old ones");
    /* request_timeout and min_ttl need a restart (the table says so): the
     * lease keeps fitting the mint the upstream really makes */
    __atomic_store_n(&s->lease_wait_ms, cfg->shared_lease_wait_ms, __ATOMIC_RELAXED);
    __atomic_store_n(&s->lease_ms, lease_ms_of(cfg), __ATOMIC_RELAXED);
    return restart;
}

void shared_get_stats(shared *s, struct shared_stats *ret) {
    pthread_mutex_lock(&s->lock);
    *ret = s->stats;
    ret->outage_pending = (unsigned)(s->n_own + s->adopting);

    ret->breaker = breaker_state_at(&s->br, now_ms());
    /* a host that cannot hear of the fleet's drops is not sharing safely */
    ret->up = s->stats.up && s->stats.events_ok && ret->breaker == BREAKER_CLOSED;
    pthread_mutex_unlock(&s->lock);
}

void shared_stop(shared *s) {
    struct queue left = { 0 };
    struct job *j;

    if (!s)
        return;
    pthread_mutex_lock(&s->lock);
    if (s->stopping && !s->started) {
        pthread_mutex_unlock(&s->lock);
        return;
    }
    s->stopping = true;
    if (s->ev_fd >= 0)
        shutdown(s->ev_fd, SHUT_RDWR); /* ends a blocked XREAD now */
    pthread_cond_broadcast(&s->cond);
    pthread_cond_broadcast(&s->ev_cond);
    pthread_mutex_unlock(&s->lock);
    if (s->started) {
        pthread_join(s->cmd_thread, NULL);
        pthread_join(s->ev_thread, NULL);
        s->started = false;
    }
    pthread_mutex_lock(&s->lock);
    while ((j = QUEUE_POP(&s->queue, struct job, link)))
        queue_push(&left, &j->link);
    while ((j = QUEUE_POP(&s->waiting, struct job, link)))
        queue_push(&left, &j->link);
    while ((j = QUEUE_POP(&s->pending, struct job, link)))
        queue_push(&left, &j->link);
    pthread_mutex_unlock(&s->lock);
    while ((j = QUEUE_POP(&left, struct job, link))) {
        if (j->kind == J_LOOKUP)
            fleet_unavailable(j, "stopping", 0, 1, false);
        else if (j->kind == J_DROP || j->kind == J_FLUSH || j->kind == J_REVOKED)
            fleet_carry(s, j); /* not done: carried over a restart if systemd keeps an image */
        else
            fleet_job_free(j);
    }
}

size_t shared_export_applied(shared *s, void (*fn)(void *userdata, uint64_t id), void *userdata) {
    size_t n = 0;

    for (size_t i = 0; i < REVS_APPLIED_MAX; i++) /* the event thread has stopped */
        if (s->revs_applied[i]) {
            fn(userdata, s->revs_applied[i]);
            n++;
        }
    return n;
}

void shared_note_applied(shared *s, uint64_t id) {
    fleet_revocation_applied(s, id);
}

size_t shared_export_denied(shared *s, void (*fn)(void *userdata, uint64_t fp), void *userdata) {
    uint64_t now = now_ms();
    size_t n = 0;

    pthread_mutex_lock(&s->lock);
    for (size_t i = 0; i < DENY_MAX; i++)
        if (s->denied[i] && s->denied_until[i] > now) {
            fn(userdata, s->denied[i]);
            n++;
        }
    pthread_mutex_unlock(&s->lock);
    return n;
}

void shared_deny(shared *s, uint64_t fp) {
    fleet_deny(s, fp);
}

size_t shared_export_floors(shared *s, void (*fn)(void *userdata, uint64_t user, uint64_t at_unix_ms),
                            void *userdata) {
    struct floor *floors = malloc(sizeof(s->floors));
    uint64_t all;
    size_t n = 0;

    if (!floors)
        return 0;
    pthread_mutex_lock(&s->lock); /* copied: fn must not run under our lock */
    memcpy(floors, s->floors, sizeof(s->floors));
    all = s->floor_all_unix_ms;
    pthread_mutex_unlock(&s->lock);
    if (all) {
        fn(userdata, 0, all);
        n++;
    }
    for (size_t i = 0; i < FLOORS_MAX; i++)
        if (floors[i].user) {
            fn(userdata, floors[i].user, floors[i].at_unix_ms);
            n++;
        }
    free(floors);
    return n;
}

uint64_t shared_flush_floor(shared *s) {
    return fleet_gen_floor(s);
}

void shared_set_flush_floor(shared *s, uint64_t gen) {
    pthread_mutex_lock(&s->lock);
    if (gen > s->max_gen && gen < (1ULL << 53) - 1) /* as fleet_gen_seen() takes one */
        s->max_gen = gen;
    pthread_mutex_unlock(&s->lock);
}

void shared_floor(shared *s, uint64_t user, uint64_t at_unix_ms) {
    if (!user)
        fleet_floor_all(s, at_unix_ms);
    else
        fleet_floor_raise(s, user, at_unix_ms);
}

size_t shared_export_pending(shared *s,
                             void (*fn)(void *userdata, enum shared_carried what, enum oauth_grant grant,
                                        const char *user_id, const char *scope, uint64_t value),
                             void *userdata) {
    size_t n = 0;

    pthread_rwlock_rdlock(&s->keys_lock);
    for (struct qlink *l = s->carried.head; l; l = l->next) {
        const struct job *j = (const struct job *)((const char *)l - offsetof(struct job, link));
        if (strcmp(j->ns, s->ns) != 0)
            continue; /* another server's: this image is for the one in use */
        if (j->kind == J_REVOKED) { /* one entry a fingerprint, each with the user's drop */
            uint64_t fps[3];
            size_t k = fleet_fps_parse(j->fps, fps, ARRAY_SIZE(fps));
            for (size_t i = 0; i < k; i++)
                if (fps[i]) { /* 0 is no fingerprint in the image */
                    fn(userdata, SHARED_CARRIED_TELL, j->grant, j->user, j->scope, fps[i]);
                    n++;
                }
            continue;
        }
        fn(userdata, j->kind == J_FLUSH ? SHARED_CARRIED_FLUSH : j->revoke ? SHARED_CARRIED_REVOKE : SHARED_CARRIED_DROP,
           j->grant, j->user, j->scope, j->revoke ? j->asked_unix_ms : 0);
        n++;
    }
    pthread_rwlock_unlock(&s->keys_lock);
    return n;
}

shared *shared_free(shared *s) {
    if (!s)
        return NULL;
    shared_stop(s);
    {
        unsigned here = 0, elsewhere = 0;
        struct job *j;
        while ((j = QUEUE_POP(&s->carried, struct job, link))) {
            if (strcmp(j->ns, s->ns) == 0)
                here++;
            else
                elsewhere++;
            fleet_job_free(j);
        }
        if (here)
            log_warning("fleet: stopping with %u drops, flushes or revocations Redis has not taken yet: they "
                        "go over in the cache image when systemd keeps one (systemctl restart); otherwise "
                        "repeat them once tokend is back", here);
        if (elsewhere)
            log_warning("fleet: stopping with %u drops, flushes or revocations for the Instacart server or "
                        "client id used before the last reload: they are lost; repeat them on a host of that "
                        "server", elsewhere);
    }
    fleet_own_free(s);
    seal_keys_wipe(&s->keys);
    free(s->redis);
    for (size_t i = 0; i < s->n_sentinels; i++)
        free(s->sentinels[i]);
    free(s->sentinels);
    free(s->master_name);
    free(s->prefix);
    free(s->username);
    wipe_free(s->password, s->password_len);
    free(s->tls_ca_file);
#ifdef HAVE_HIREDIS_SSL
    SSL_CTX_free(s->ssl);
#endif
    pthread_cond_destroy(&s->cond);
    pthread_cond_destroy(&s->ev_cond);
    pthread_cond_destroy(&s->read_cond);
    pthread_mutex_destroy(&s->lock);
    pthread_rwlock_destroy(&s->keys_lock);
    free(s);
    return NULL;
}
