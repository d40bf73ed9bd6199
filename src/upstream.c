/* The client of Instacart's token endpoint: mints and revocations, and the
 * policy around them. Responsible for retrying what is worth retrying
 * inside each mint's deadline, protecting Instacart and ourselves when it
 * fails (a circuit breaker, pausing on 429, refusing at once what cannot
 * succeed in time), and keeping a reload from mixing old and new settings
 * (a token for a server or client id we moved away from is never handed
 * out). Not responsible for the HTTP mechanics (http_client.c), for what
 * an answer means (instacart.c), for caching, or for deciding who may have
 * a token.
 *
 * Threads: upstream_mint() is called from any thread; every callback of a
 * job runs on the HTTP client's worker thread, or on the caller's thread
 * for a mint refused at once. */
#include "upstream.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "breaker.h"
#include "config.h"
#include "forward.h"
#include "http_client.h"
#include "instacart.h"
#include "log.h"
#include "util.h"

#define DEFAULT_RETRY_AFTER_S INSTACART_DEFAULT_RETRY_AFTER_S
/* A retry is started only with this long (or attempt_timeout, if shorter)
 * left before the caller's deadline: one started a few milliseconds before
 * it could not finish, would still load Instacart, and would turn the real
 * reason (the failure being retried) into a timeout. */
#define RETRY_MIN_BUDGET_MS 100

/* A mint or a revocation, from submission to its one call of done. */
struct job {
    upstream *u;
    enum instacart_call call;
    enum oauth_grant grant;
    char *user_id;
    char *scope;
    upstream_done_fn done;
    void *userdata;
    uint64_t submitted_ms, deadline_ms;
    unsigned attempts;
    bool probe;
    char *body; /* holds the client secret */
    size_t body_len;
    mint_outcome last;   /* the most recent failure, reported if we give up */
    uint64_t generation; /* of the server and client id its body was made for */
    uint64_t serial;     /* of the credentials its body holds */
    char fp[FINGERPRINT_LEN];
};

struct upstream {
    http_client *http;
    /* fixed at creation */
    uint64_t attempt_timeout_ms, request_timeout_ms;
    uint64_t retry_base_ms, retry_max_ms;

    pthread_mutex_t lock; /* guards everything below */
    char *token_url;
    char *revoke_url;
    char *forward_base; /* base_url, for forwarded calls */
    char *client_id;
    char *client_secret;
    size_t client_secret_len;
    /* A reload bumps serial when it swaps anything above. generation names
     * the server and the client id (generation_of()): a token minted for
     * another is never handed out (it would be cached and served for a day
     * after the operator moved away from that server or client), nor one of
     * theirs sent to revoke; moved back, they are the same again. */
    uint64_t generation, serial;
    bool stopping;
    breaker breaker;
    mint_outcome breaker_outcome; /* what callers get while it is open */
    uint64_t paused_until_ms; /* after a 429 */
    uint64_t last_credentials_log_ms;
    uint64_t last_link_log_ms;
    char last_link_error[sizeof(((mint_outcome *)0)->error)]; /* the code last logged */
    bool credentials_rejected;
    struct upstream_events events; /* set before the worker starts */
    struct upstream_stats stats;
};

_Static_assert(UPSTREAM_LATENCY_BUCKETS <= HTTP_LATENCY_BUCKETS_MAX, "the HTTP client keeps the histogram");
const double upstream_latency_bounds[UPSTREAM_LATENCY_BUCKETS] = {
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
};

/* How to reach the server: the proxy as configured ([upstream] proxy,
 * never http_proxy and friends from the environment, which would send the
 * client secret wherever a stray variable points) and [upstream] ca_file. */
static struct http_link link_of(const config *cfg) {
    return (struct http_link){
        .proxy = cfg->proxy,
        .proxy_credentials = cfg->proxy_credentials,
        .proxy_credentials_len = cfg->proxy_credentials_len,
        .ca_pem = cfg->ca_pem,
        .ca_pem_len = cfg->ca_pem_len,
    };
}

/* The strings a reload swaps, made from cfg; NULL members on failure. */
struct endpoints {
    char *token_url, *revoke_url, *forward_base, *client_id, *client_secret;
    size_t client_secret_len;
};

static void endpoints_clear(struct endpoints *e) {
    free(e->token_url);
    free(e->revoke_url);
    free(e->forward_base);
    free(e->client_id);
    wipe_free(e->client_secret, e->client_secret_len);
    *e = (struct endpoints){ 0 };
}

static int endpoints_make(const config *cfg, struct endpoints *ret) {
    struct endpoints e = { .client_secret_len = cfg->client_secret_len };

    if (asprintf(&e.token_url, "%s/v2/oauth/token", cfg->base_url) < 0)
        e.token_url = NULL; /* undefined after a failure */
    if (asprintf(&e.revoke_url, "%s/v2/oauth/token/revoke", cfg->base_url) < 0)
        e.revoke_url = NULL;
    e.forward_base = strdup(cfg->base_url);
    e.client_id = strdup(cfg->client_id);
    e.client_secret = malloc(cfg->client_secret_len + 1);
    if (!e.token_url || !e.revoke_url || !e.forward_base || !e.client_id || !e.client_secret) {
        endpoints_clear(&e);
        return -ENOMEM;
    }
    memcpy(e.client_secret, cfg->client_secret, cfg->client_secret_len);
    e.client_secret[cfg->client_secret_len] = '\0';
    *ret = e;
    return 0;
}

/* Swaps u's strings with e's (so e then holds the old ones). Lock held. */
static void endpoints_swap(upstream *u, struct endpoints *e) {
    struct endpoints old = { u->token_url, u->revoke_url, u->forward_base, u->client_id, u->client_secret,
                             u->client_secret_len };

    u->token_url = e->token_url;
    u->revoke_url = e->revoke_url;
    u->forward_base = e->forward_base;
    u->client_id = e->client_id;
    u->client_secret = e->client_secret;
    u->client_secret_len = e->client_secret_len;
    *e = old;
}

/* FNV-1a of the token URL and the client id; never 0 (0 is "now" to
 * upstream_revoke()). */
static uint64_t generation_of(const char *token_url, const char *client_id) {
    const char *parts[] = { token_url, "\n", client_id };
    uint64_t h = fnv1a64(parts, ARRAY_SIZE(parts));

    return h ? h : 1;
}

int upstream_new(const config *cfg, upstream **ret) {
    struct http_client_settings hs = {
        .max_concurrent = cfg->max_concurrent,
        .queue_max = cfg->queue_max,
        .connect_timeout_ms = cfg->connect_timeout_ms,
        .latency_bounds = upstream_latency_bounds,
        .n_latency_bounds = UPSTREAM_LATENCY_BUCKETS,
        .link = link_of(cfg),
    };
    struct endpoints e;
    upstream *u;
    int r;

    u = calloc(1, sizeof(*u));
    if (!u)
        return -ENOMEM;
    pthread_mutex_init(&u->lock, NULL);
    r = endpoints_make(cfg, &e);
    if (r < 0) {
        upstream_free(u);
        return r;
    }
    endpoints_swap(u, &e);
    u->generation = generation_of(u->token_url, u->client_id);
    r = http_client_new(&hs, &u->http);
    if (r < 0) {
        upstream_free(u);
        return r;
    }
    u->attempt_timeout_ms = cfg->attempt_timeout_ms;
    u->request_timeout_ms = cfg->request_timeout_ms;
    u->retry_base_ms = cfg->retry_base_ms;
    u->retry_max_ms = cfg->retry_max_ms;
    breaker_init(&u->breaker, cfg->breaker_failures, cfg->breaker_cooldown_ms);
    *ret = u;
    return 0;
}

static void job_free(struct job *j) {
    free(j->user_id);
    free(j->scope);
    wipe_free(j->body, j->body_len);
    free(j);
}

/* Ends a job: counts it, logs it, tells the caller. Worker thread, or the
 * submitting thread for a job refused at once. */
static void job_complete(upstream *u, struct job *j, const mint_outcome *o, token *t) {
    uint64_t ms = now_ms() - j->submitted_ms;

    pthread_mutex_lock(&u->lock);
    if (j->call == INSTACART_REVOKE) {
        if (o->kind == MINT_OK)
            u->stats.revocations_ok++;
        else
            u->stats.revocations_failed++;
    } else
        switch (o->kind) {
        case MINT_OK:
            u->stats.mints_ok++;
            break;
        case MINT_REJECTED:
            u->stats.mints_rejected++;
            break;
        case MINT_UNAVAILABLE:
            u->stats.mints_failed++;
            break;
        case MINT_TIMEOUT:
            u->stats.mints_timeout++;
            break;
        }
    pthread_mutex_unlock(&u->lock);

    if (j->call == INSTACART_REVOKE) {
        if (o->kind == MINT_OK)
            log_info("revoked a token at Instacart (attempts=%u)", j->attempts);
        else
            log_warning("revocation failed: status=%d error=%s attempts=%u", o->http_status, o->error,
                        j->attempts);
    } else if (o->kind == MINT_OK || j->attempts > 0 || o->kind != MINT_UNAVAILABLE) {
        char fields[256];
        snprintf(fields, sizeof(fields),
                 "USER_FINGERPRINT=%s\nSCOPE=%s\nUPSTREAM_STATUS=%d\nLATENCY_MS=%llu\nATTEMPTS=%u%s%s",
                 j->fp, j->scope, o->http_status, (unsigned long long)ms, j->attempts,
                 o->kind == MINT_OK ? "" : "\nUPSTREAM_ERROR=", o->kind == MINT_OK ? "" : o->error);
        if (o->kind == MINT_OK)
            log_event(LOG_INFO, LOG_ID_MINT_OK, fields, "mint ok user=%s scope=%s attempts=%u latency_ms=%llu",
                      j->fp, j->scope, j->attempts, (unsigned long long)ms);
        else
            log_event(LOG_WARNING, LOG_ID_MINT_FAILED, fields,
                      "mint failed user=%s scope=%s status=%d error=%s attempts=%u latency_ms=%llu",
                      j->fp, j->scope, o->http_status, o->error, j->attempts, (unsigned long long)ms);
    }
    j->done(j->userdata, o, t);
    job_free(j);
}

static void job_fail(upstream *u, struct job *j, enum mint_kind kind, int status, unsigned retry_after,
                     const char *error) {
    mint_outcome o;

    instacart_outcome(&o, kind, status, retry_after, error);
    job_complete(u, j, &o, NULL);
}

/* What a caller hears while the breaker is open. Lock held. */
static mint_outcome breaker_refusal(upstream *u, uint64_t wait_ms) {
    mint_outcome o = u->breaker_outcome;

    o.retry_after_s = wait_ms ? (unsigned)((wait_ms + 999) / 1000) : DEFAULT_RETRY_AFTER_S;
    return o;
}

/* A job made before a reload carries the old credentials: never send them
 * to a new server. A mint's body is made again with the current ones; a
 * revocation (whose token we no longer hold apart) goes only to the same
 * server, or fails with -ESTALE. Called with u->lock held. */
static int refresh_body(upstream *u, struct job *j) {
    char *body = NULL;
    size_t len = 0;

    if (j->serial == u->serial)
        return 0;
    if (j->call == INSTACART_REVOKE)
        return j->generation == u->generation ? 0 : -ESTALE;
    if (oauth_request_body(j->grant, u->client_id, u->client_secret, j->scope, j->user_id, &body, &len) < 0)
        return -ENOMEM;
    wipe_free(j->body, j->body_len);
    j->body = body;
    j->body_len = len;
    j->generation = u->generation;
    j->serial = u->serial;
    return 0;
}

/* Worker thread, with a free slot: the breaker and a 429's pause decide
 * whether this attempt goes now, later, or not at all. */
static enum http_start job_start(void *userdata, http_exchange *ex, uint64_t now, uint64_t *wait) {
    struct job *j = userdata;
    upstream *u = j->u;
    uint64_t wait_ms, budget = j->deadline_ms - now;
    mint_outcome o;
    int r;

    pthread_mutex_lock(&u->lock);
    /* the pause first: a job that waits it out must not hold the breaker's
     * one probe meanwhile (nobody else could probe, and the circuit would
     * stay half open, refusing every mint) */
    if (now < u->paused_until_ms) {
        uint64_t until = u->paused_until_ms;
        pthread_mutex_unlock(&u->lock);
        if (until >= j->deadline_ms) {
            job_fail(u, j, MINT_UNAVAILABLE, 429, (unsigned)((until - now + 999) / 1000), "rate_limited");
            return HTTP_START_ENDED;
        }
        if (until - now < *wait)
            *wait = until - now;
        return HTTP_START_WAIT;
    }
    switch (breaker_check(&u->breaker, now, &wait_ms)) {
    case BREAKER_REFUSE:
        o = breaker_refusal(u, wait_ms);
        pthread_mutex_unlock(&u->lock);
        job_complete(u, j, &o, NULL);
        return HTTP_START_ENDED;
    case BREAKER_PROBE:
        j->probe = true;
        break;
    case BREAKER_PASS:
        break;
    }
    j->attempts++;
    /* under the lock, so the body, the URL and the link are of one reload */
    r = refresh_body(u, j);
    if (r == 0) {
        struct http_request req = {
            .url = j->call == INSTACART_REVOKE ? u->revoke_url : u->token_url,
            .body = j->body,
            .body_len = j->body_len,
            .answer_max = OAUTH_BODY_MAX,
            .timeout_ms = budget < u->attempt_timeout_ms ? budget : u->attempt_timeout_ms,
        };
        r = http_exchange_send(ex, &req);
    }
    if (r == 0 && j->attempts > 1)
        u->stats.retries++;
    if (r < 0 && j->probe)
        breaker_probe_done(&u->breaker); /* it never went: the next one probes */
    pthread_mutex_unlock(&u->lock);
    if (r == 0)
        return HTTP_START_SENT;
    job_fail(u, j, MINT_UNAVAILABLE, 0, DEFAULT_RETRY_AFTER_S, r == -ESTALE ? "settings_changed" : "out_of_memory");
    return HTTP_START_ENDED;
}

/* A link failure retrying cannot heal is the operator's to fix: say what
 * curl saw (never anything of the request), once a minute per kind. */
static void link_failure_log(upstream *u, const char *code, const char *detail, uint64_t now) {
    bool say;

    pthread_mutex_lock(&u->lock);
    say = strcmp(u->last_link_error, code) != 0 || !u->last_link_log_ms || now - u->last_link_log_ms >= 60000;
    if (say) {
        snprintf(u->last_link_error, sizeof(u->last_link_error), "%s", code);
        u->last_link_log_ms = now;
    }
    pthread_mutex_unlock(&u->lock);
    if (say)
        log_error("cannot reach Instacart: %s (%s); not retried: check base_url%s", code,
                  detail[0] ? detail : "no detail",
                  strncmp(code, "tls_", 4) == 0 ? ", [upstream] ca_file and the server's certificate" : "");
}

/* Called with u->lock held. */
static void circuit_failure(upstream *u, const mint_outcome *o, bool at_once, uint64_t now) {
    if (breaker_failure(&u->breaker, now, at_once))
        log_warning("circuit to Instacart open for %llu ms after %u failures (last: %s)",
                    (unsigned long long)u->breaker.cooldown_ms, u->breaker.failures, o->error);
    if (u->breaker.state == BREAKER_OPEN)
        u->breaker_outcome = *o;
}

static void circuit_success(upstream *u) {
    if (breaker_success(&u->breaker))
        log_notice("circuit to Instacart closed");
    u->credentials_rejected = false;
}

/* Acts on a verdict: the breaker, the pause, a reload in between. Returns
 * whether the verdict stands (false: the answer was for settings replaced
 * since, and the job starts afresh). Lock held. */
static bool apply_verdict(upstream *u, struct job *j, struct instacart_verdict *v, uint64_t now,
                          uint64_t *paused_ms) {
    if (j->probe)
        breaker_probe_done(&u->breaker);
    if (j->call == INSTACART_MINT &&
        (j->generation != u->generation || (j->serial != u->serial && v->outcome.kind != MINT_OK))) {
        /* Sent before a reload. A token for the old server or client id is
         * dropped (cached, it would be served for a day), and a failure
         * may be the old credentials' fault: neither is reported, nor held
         * against the new settings; the mint starts again with them while
         * the deadline allows. */
        v->token = token_unref(v->token);
        instacart_outcome(&v->outcome, MINT_UNAVAILABLE, 0, DEFAULT_RETRY_AFTER_S, "settings_changed");
        v->retry = true;
        v->retry_after_s = 0;
        j->attempts = 0; /* a fresh mint, not a retry of a failure */
        return false;
    }
    if (v->outcome.kind == MINT_OK)
        circuit_success(u);
    else if (v->credentials_rejected) {
        /* A configuration fault: every mint would fail the same way, so stop
         * asking for a while and say so loudly, but not on every request. */
        u->credentials_rejected = true;
        circuit_failure(u, &v->outcome, true, now);
        if (!u->last_credentials_log_ms || now - u->last_credentials_log_ms >= 60000) {
            u->last_credentials_log_ms = now;
            log_error("Instacart rejected the client credentials (HTTP %d %s): check client_id "
                      "and the client secret, then reload", v->outcome.http_status, v->outcome.error);
        }
    } else if (v->trips)
        circuit_failure(u, &v->outcome, false, now);
    if (v->pause_s) {
        uint64_t until = now + (uint64_t)v->pause_s * 1000;
        if (until > u->paused_until_ms)
            u->paused_until_ms = until;
        *paused_ms = until - now;
        log_warning("Instacart is rate limiting (429): minting paused for %u s", v->pause_s);
    }
    return true;
}

/* Worker thread: an attempt's answer, or the end of a job that waited too
 * long or outlived the client. Returns whether to try again at *retry_at. */
static bool job_answered(void *userdata, const struct http_answer *a, uint64_t *retry_at) {
    struct job *j = userdata;
    upstream *u = j->u;
    uint64_t now = now_ms(), paused_ms = 0;
    struct instacart_answer in = {
        .call = j->call,
        .result = a->result,
        .status = a->status,
        .retry_after = a->retry_after,
        .body = a->body,
        .len = a->len,
        .sent_ms = a->started_ms,
        .now_unix = now_unix(),
    };
    struct instacart_verdict v;
    bool stands;

    instacart_classify(&in, &v);
    if (a->result == HTTP_RESULT_EXPIRED || a->result == HTTP_RESULT_CANCELLED) {
        if (a->result == HTTP_RESULT_EXPIRED && j->attempts)
            v.outcome = j->last; /* why the retries did not succeed */
        job_complete(u, j, &v.outcome, NULL);
        return false;
    }
    if (v.link_broken)
        link_failure_log(u, v.outcome.error, a->detail, now);

    pthread_mutex_lock(&u->lock);
    stands = apply_verdict(u, j, &v, now, &paused_ms);
    pthread_mutex_unlock(&u->lock);
    /* fleet mode: the other hosts hear of it at once, outside our lock */
    if (paused_ms && u->events.paused)
        u->events.paused(u->events.userdata, paused_ms);
    if (stands && v.credentials_rejected && u->events.credentials_rejected)
        u->events.credentials_rejected(u->events.userdata);

    if (v.retry) {
        uint64_t delay = j->attempts ? backoff_full_jitter(u->retry_base_ms, u->retry_max_ms, j->attempts,
                                                           random_u64())
                                     : 0;
        uint64_t least = u->attempt_timeout_ms < RETRY_MIN_BUDGET_MS ? u->attempt_timeout_ms : RETRY_MIN_BUDGET_MS;
        if (v.retry_after_s && (uint64_t)v.retry_after_s * 1000 > delay)
            delay = (uint64_t)v.retry_after_s * 1000;
        j->last = v.outcome;
        if (now + delay + least <= j->deadline_ms) {
            j->probe = false;
            *retry_at = now + delay;
            return true;
        }
    }
    job_complete(u, j, &v.outcome, v.token);
    return false;
}

static const struct http_exchange_ops job_ops = {
    .start = job_start,
    .done = job_answered,
};

static void submit(upstream *u, enum instacart_call call, enum oauth_grant grant, const char *user_id,
                   const char *scope, const char *revoke_token, uint64_t generation, upstream_done_fn done,
                   void *userdata) {
    mint_outcome o = { 0 };
    struct job *j;
    uint64_t now = now_ms(), wait_ms;
    bool refused = true;
    int r;

    j = calloc(1, sizeof(*j));
    if (!j) {
        instacart_outcome(&o, MINT_UNAVAILABLE, 0, DEFAULT_RETRY_AFTER_S, "out_of_memory");
        done(userdata, &o, NULL);
        return;
    }
    j->u = u;
    j->call = call;
    j->grant = grant;
    j->done = done;
    j->userdata = userdata;
    j->submitted_ms = now;
    j->deadline_ms = now + u->request_timeout_ms;
    j->user_id = strdup(grant == OAUTH_GRANT_USER_ASSERTION && user_id ? user_id : "");
    j->scope = strdup(scope ? scope : "");
    fingerprint(j->user_id ? j->user_id : "", j->user_id ? strlen(j->user_id) : 0, j->fp);

    pthread_mutex_lock(&u->lock);
    /* under the lock: a reload may swap the credentials (upstream_set_credentials) */
    j->generation = generation ? generation : u->generation;
    j->serial = u->serial;
    if (!j->user_id || !j->scope)
        r = -ENOMEM;
    else if (call == INSTACART_REVOKE)
        r = oauth_revoke_body(u->client_id, u->client_secret, revoke_token, &j->body, &j->body_len);
    else
        r = oauth_request_body(grant, u->client_id, u->client_secret, scope, user_id, &j->body, &j->body_len);
    if (r < 0)
        instacart_outcome(&o, MINT_UNAVAILABLE, 0, DEFAULT_RETRY_AFTER_S, "out_of_memory");
    else if (u->stopping)
        instacart_outcome(&o, MINT_UNAVAILABLE, 0, DEFAULT_RETRY_AFTER_S, "shutting_down");
    else if (j->generation != u->generation) /* a token of the server before: never sent to this one */
        instacart_outcome(&o, MINT_UNAVAILABLE, 0, DEFAULT_RETRY_AFTER_S, "server_changed");
    else if (breaker_refuses(&u->breaker, now, &wait_ms))
        o = breaker_refusal(u, wait_ms);
    else if (u->paused_until_ms > j->deadline_ms)
        instacart_outcome(&o, MINT_UNAVAILABLE, 429, (unsigned)((u->paused_until_ms - now + 999) / 1000),
                          "rate_limited");
    else
        refused = false;
    pthread_mutex_unlock(&u->lock);
    if (!refused) {
        r = http_client_submit(u->http, &job_ops, j, j->deadline_ms);
        if (r == 0)
            return;
        instacart_outcome(&o, MINT_UNAVAILABLE, 0, DEFAULT_RETRY_AFTER_S,
                          r == -EBUSY ? "overloaded" : r == -ESHUTDOWN ? "shutting_down" : "out_of_memory");
    }
    job_complete(u, j, &o, NULL);
}

void upstream_mint(upstream *u, enum oauth_grant grant, const char *user_id, const char *scope,
                   upstream_done_fn done, void *userdata) {
    submit(u, INSTACART_MINT, grant, user_id, scope, NULL, 0, done, userdata);
}

void upstream_revoke(upstream *u, uint64_t generation, const char *token_value, upstream_done_fn done,
                     void *userdata) {
    submit(u, INSTACART_REVOKE, OAUTH_GRANT_CLIENT_CREDENTIALS, NULL, NULL, token_value, generation, done,
           userdata);
}

uint64_t upstream_generation(upstream *u) {
    uint64_t g;

    pthread_mutex_lock(&u->lock);
    g = u->generation;
    pthread_mutex_unlock(&u->lock);
    return g;
}

void upstream_forward(upstream *u, const char *path, const char *bearer, const char *body, size_t len,
                      upstream_forward_fn done, void *userdata) {
    uint64_t now = now_ms();
    char *url = NULL;

    pthread_mutex_lock(&u->lock);
    if (asprintf(&url, "%s%s", u->forward_base, path) < 0)
        url = NULL; /* forward_submit fails it */
    pthread_mutex_unlock(&u->lock);
    forward_submit(u->http,
                   &(struct forward_call){ .url = url, .path = path, .bearer = bearer, .body = body, .len = len,
                                           .answer_max = UPSTREAM_FORWARD_ANSWER_MAX,
                                           .deadline_ms = now + u->request_timeout_ms,
                                           .attempt_timeout_ms = u->attempt_timeout_ms },
                   done, userdata);
    free(url);
}

void upstream_set_events(upstream *u, const struct upstream_events *ev) {
    u->events = *ev;
}

int upstream_start(upstream *u) {
    return http_client_start(u->http);
}

void upstream_stop(upstream *u) {
    if (!u)
        return;
    pthread_mutex_lock(&u->lock);
    u->stopping = true;
    pthread_mutex_unlock(&u->lock);
    http_client_stop(u->http);
}

upstream *upstream_free(upstream *u) {
    struct endpoints e = { 0 };

    if (!u)
        return NULL;
    upstream_stop(u);
    http_client_free(u->http);
    endpoints_swap(u, &e);
    endpoints_clear(&e);
    pthread_mutex_destroy(&u->lock);
    free(u);
    return NULL;
}

void upstream_get_stats(upstream *u, struct upstream_stats *ret) {
    struct http_client_stats hs;
    uint64_t now = now_ms();

    http_client_get_stats(u->http, &hs);
    pthread_mutex_lock(&u->lock);
    *ret = u->stats;
    switch (breaker_state_at(&u->breaker, now)) {
    case BREAKER_CLOSED:
        ret->circuit = CIRCUIT_CLOSED;
        break;
    case BREAKER_OPEN:
        ret->circuit = CIRCUIT_OPEN;
        break;
    case BREAKER_HALF_OPEN:
        ret->circuit = CIRCUIT_HALF_OPEN;
        break;
    }
    ret->credentials_rejected = u->credentials_rejected;
    ret->rate_limited = now < u->paused_until_ms;
    pthread_mutex_unlock(&u->lock);
    ret->requests = hs.requests;
    ret->connections = hs.connections;
    memcpy(ret->latency_buckets, hs.latency_buckets, sizeof(ret->latency_buckets));
    ret->latency_count = hs.latency_count;
    ret->latency_sum_s = hs.latency_sum_s;
    ret->in_flight = hs.in_flight;
    ret->queued = hs.queued;
}

uint64_t upstream_idle_ms(upstream *u) {
    return http_client_idle_ms(u->http);
}

/* Reload: new credentials and server for mints submitted from now on. Jobs
 * already queued keep the bodies they were built with; a retry of one goes
 * to the new URL, with its body made again (refresh_body). */
int upstream_set_credentials(upstream *u, const config *cfg) {
    struct http_link link = link_of(cfg);
    struct endpoints e;
    bool moved;
    int r;

    r = endpoints_make(cfg, &e);
    if (r < 0)
        return r;
    pthread_mutex_lock(&u->lock);
    /* under our lock, so no attempt pairs the old URL with the new link */
    r = http_client_set_link(u->http, &link); /* the next attempt trusts the new CA */
    if (r == 0) {
        moved = strcmp(u->token_url, e.token_url) != 0 || strcmp(u->client_id, e.client_id) != 0;
        endpoints_swap(u, &e);
        u->serial++;
        if (moved) /* moved back, it is the old one again: what waits for that server can go */
            u->generation = generation_of(u->token_url, u->client_id);
        if (u->credentials_rejected || moved) {
            /* the breaker opened on the old credentials or server: let the
             * new ones try */
            u->credentials_rejected = false;
            breaker_reset(&u->breaker);
        }
    }
    pthread_mutex_unlock(&u->lock);
    endpoints_clear(&e); /* the old values after a swap, the new ones after a failure */
    return r;
}
