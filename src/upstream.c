/* The client of Instacart's token endpoint. Responsible for: sending mints
 * without blocking anyone (a libcurl multi handle driven by one worker
 * thread), reusing connections, retrying what is worth retrying inside each
 * mint's deadline, and protecting Instacart and ourselves when it fails (a
 * concurrency limit with a bounded queue, a circuit breaker, pausing on 429).
 * Not responsible for caching or for deciding who may have a token.
 *
 * Threads: upstream_mint() is called from any thread and only appends to the
 * incoming list under the lock, then wakes the worker. Everything with a curl
 * handle in it happens on the worker. */
#include "upstream.h"

#include <curl/curl.h>
#include <errno.h>
#include <openssl/x509_vfy.h> /* the X509_V_* values of CURLINFO_SSL_VERIFYRESULT */
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "breaker.h"
#include "build-config.h"
#include "config.h"
#include "log.h"
#include "queue.h"
#include "util.h"

#define RETRY_AFTER_MAX_S 3600
#define DEFAULT_RETRY_AFTER_S 1
/* A retry is started only with this long (or attempt_timeout, if shorter)
 * left before the caller's deadline: one started a few milliseconds before
 * it could not finish, would still load Instacart, and would turn the real
 * reason (the failure being retried) into a timeout. */
#define RETRY_MIN_BUDGET_MS 100

struct job {
    struct qlink link; /* in one queue at a time */
    struct job *aprev, *anext; /* on the active list while a request is out */
    upstream *u;
    enum oauth_grant grant;
    bool revoke;       /* a revocation, not a mint */
    bool forward;      /* a forwarded Recommendations call */
    char *url;         /* forward: where to */
    struct curl_slist *fwd_headers; /* forward: holds the bearer token */
    upstream_forward_fn fwd_done;
    size_t resp_max;
    char *user_id;
    char *scope;
    upstream_done_fn done;
    void *userdata;
    uint64_t submitted_ms, deadline_ms, not_before_ms, attempt_started_ms;
    unsigned attempts;
    bool probe;
    CURL *easy;
    char *body; /* holds the client secret */
    size_t body_len;
    char *resp; /* may hold a token */
    size_t resp_len;
    bool resp_too_big;
    unsigned retry_after_s;
    mint_outcome last;  /* the most recent failure, reported if we give up */
    uint64_t generation; /* of the server and client id its body was made for */
    uint64_t serial;     /* of the credentials its body holds */
    char curl_error[CURL_ERROR_SIZE]; /* curl's words for a failed attempt, for the log */
    char fp[FINGERPRINT_LEN];
};



struct upstream {
    /* fixed at creation */
    char *token_url;
    char *revoke_url;
    char *forward_base; /* base_url, for forwarded calls */
    char *client_id;
    char *client_secret;
    size_t client_secret_len;
    char *proxy;             /* NULL: none, whatever the environment says */
    char *proxy_credentials; /* USER:PASSWORD or NULL */
    size_t proxy_credentials_len;
    /* A reload bumps serial when it swaps anything above, and generation
     * when the server or the client id changes: a token minted for an
     * older generation is never handed out (it would be cached and served
     * for a day after the operator moved away from that server or client). */
    uint64_t generation, serial;
    uint64_t connect_timeout_ms, attempt_timeout_ms, request_timeout_ms;
    uint64_t retry_base_ms, retry_max_ms;
    unsigned max_concurrent, queue_max;
    struct curl_slist *headers;
    CURLM *multi;
    CURLSH *share; /* TLS sessions, so a reopened connection resumes one */

    pthread_t thread;
    bool thread_started;

    pthread_mutex_t lock; /* guards everything below */
    struct queue incoming;
    unsigned total;       /* accepted and not yet done */
    bool stopping;
    breaker breaker;
    mint_outcome breaker_outcome; /* what callers get while it is open */
    uint64_t paused_until_ms; /* after a 429 */
    uint64_t last_credentials_log_ms;
    uint64_t last_link_log_ms;
    const char *last_link_error;
    char *ca_pem; /* [upstream] ca_file's certificates; NULL: the system's */
    size_t ca_pem_len;
    bool credentials_rejected;
    struct upstream_events events; /* set before the worker starts */
    struct upstream_stats stats;
    uint64_t heartbeat_ms;

    /* worker only */
    struct queue ready, delayed;
    struct job *active_head;
    unsigned active;
    uint64_t last_expiry_walk_ms;
};

/* The proxy as configured: [upstream] proxy, never http_proxy and friends
 * from the environment, which would send the client secret wherever a
 * stray variable points. */
static int copy_proxy(const config *cfg, char **ret_proxy, char **ret_creds, size_t *ret_creds_len) {
    char *proxy = NULL, *creds = NULL;

    if (cfg->proxy && !(proxy = strdup(cfg->proxy)))
        return -ENOMEM;
    if (cfg->proxy_credentials) {
        creds = malloc(cfg->proxy_credentials_len + 1);
        if (!creds) {
            free(proxy);
            return -ENOMEM;
        }
        memcpy(creds, cfg->proxy_credentials, cfg->proxy_credentials_len);
        creds[cfg->proxy_credentials_len] = '\0';
    }
    *ret_proxy = proxy;
    *ret_creds = creds;
    *ret_creds_len = creds ? cfg->proxy_credentials_len : 0;
    return 0;
}

static char *memdup(const char *p, size_t n) {
    char *c = malloc(n ? n : 1);
    if (c)
        memcpy(c, p, n);
    return c;
}

int upstream_new(const config *cfg, upstream **ret) {
    upstream *u;
    size_t n;

    u = calloc(1, sizeof(*u));
    if (!u)
        return -ENOMEM;
    pthread_mutex_init(&u->lock, NULL);
    n = strlen(cfg->base_url) + sizeof("/v2/oauth/token");
    u->token_url = malloc(n);
    u->client_id = strdup(cfg->client_id);
    u->client_secret = malloc(cfg->client_secret_len + 1);
    if (!u->token_url || !u->client_id || !u->client_secret) {
        upstream_free(u);
        return -ENOMEM;
    }
    snprintf(u->token_url, n, "%s/v2/oauth/token", cfg->base_url);
    u->forward_base = strdup(cfg->base_url);
    if (!u->forward_base || asprintf(&u->revoke_url, "%s/v2/oauth/token/revoke", cfg->base_url) < 0) {
        u->revoke_url = NULL;
        upstream_free(u);
        return -ENOMEM;
    }
    memcpy(u->client_secret, cfg->client_secret, cfg->client_secret_len);
    u->client_secret[cfg->client_secret_len] = '\0';
    u->client_secret_len = cfg->client_secret_len;
    if (copy_proxy(cfg, &u->proxy, &u->proxy_credentials, &u->proxy_credentials_len) < 0) {
        upstream_free(u);
        return -ENOMEM;
    }
    u->connect_timeout_ms = cfg->connect_timeout_ms;
    u->attempt_timeout_ms = cfg->attempt_timeout_ms;
    u->request_timeout_ms = cfg->request_timeout_ms;
    u->retry_base_ms = cfg->retry_base_ms;
    u->retry_max_ms = cfg->retry_max_ms;
    breaker_init(&u->breaker, cfg->breaker_failures, cfg->breaker_cooldown_ms);
    u->max_concurrent = cfg->max_concurrent;
    u->queue_max = cfg->queue_max;
    if (cfg->ca_pem && !(u->ca_pem = memdup(cfg->ca_pem, cfg->ca_pem_len))) {
        upstream_free(u);
        return -ENOMEM;
    }
    u->ca_pem_len = cfg->ca_pem_len;

    u->headers = curl_slist_append(NULL, "Content-Type: application/json");
    u->headers = u->headers ? curl_slist_append(u->headers, "Accept: application/json") : NULL;
    /* no "Expect: 100-continue" round trip for a small body */
    u->headers = u->headers ? curl_slist_append(u->headers, "Expect:") : NULL;
    u->multi = curl_multi_init();
    u->share = curl_share_init();
    if (!u->headers || !u->multi || !u->share) {
        upstream_free(u);
        return -ENOMEM;
    }
    /* Every easy handle is used on the worker thread only: no lock needed.
     * Each job has its own easy handle, so without this share a connection
     * reopened for the next job could not resume the last TLS session. */
    curl_share_setopt(u->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION);
    /* Over HTTP/2 all mints share one connection: a burst waits for the
     * first connection (CURLOPT_PIPEWAIT) rather than opening one each. */
    curl_multi_setopt(u->multi, CURLMOPT_PIPELINING, CURLPIPE_MULTIPLEX);
    /* Keep one connection per concurrent mint open between mints, so a mint
     * pays no TCP or TLS handshake while traffic flows. */
    curl_multi_setopt(u->multi, CURLMOPT_MAXCONNECTS, (long)u->max_concurrent);
    curl_multi_setopt(u->multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, (long)u->max_concurrent);
    u->heartbeat_ms = now_ms();
    *ret = u;
    return 0;
}

static void job_free(struct job *j) {
    if (j->easy)
        curl_easy_cleanup(j->easy);
    for (struct curl_slist *h = j->fwd_headers; h; h = h->next)
        explicit_bzero(h->data, strlen(h->data));
    curl_slist_free_all(j->fwd_headers);
    free(j->url);
    free(j->user_id);
    free(j->scope);
    wipe_free(j->body, j->body_len);
    wipe_free(j->resp, j->resp_len);
    free(j);
}

/* Sets every field: an outcome is copied into the cache and read whole
 * (a field left as it was, deferred say, is garbage to its reader). */
static void outcome_set(mint_outcome *o, enum mint_kind kind, int status, unsigned retry_after,
                        const char *error) {
    *o = (mint_outcome){ .kind = kind, .http_status = status, .retry_after_s = retry_after };
    snprintf(o->error, sizeof(o->error), "%s", error);
}

/* Ends a job: counts it, logs it, tells the caller. Worker thread, or the
 * submitting thread for a mint refused at once. */
static void forward_complete(upstream *u, struct job *j, int status, const char *content_type) {
    pthread_mutex_lock(&u->lock);
    u->total--;
    pthread_mutex_unlock(&u->lock);
    log_info("forwarded %s status=%d latency_ms=%llu", j->scope ? j->scope : "?", status,
             (unsigned long long)(now_ms() - j->submitted_ms));
    j->fwd_done(j->userdata, status, content_type, status ? j->resp : NULL, status ? j->resp_len : 0);
    job_free(j);
}

static void job_complete(upstream *u, struct job *j, const mint_outcome *o, token *t) {
    uint64_t ms = now_ms() - j->submitted_ms;

    if (j->forward) {
        forward_complete(u, j, 0, NULL);
        return;
    }

    pthread_mutex_lock(&u->lock);
    u->total--;
    if (j->revoke) {
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

    if (j->revoke) {
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

static void submit(upstream *u, enum oauth_grant grant, const char *user_id, const char *scope,
                   const char *revoke_token, upstream_done_fn done, void *userdata) {
    mint_outcome o = { 0 };
    struct job *j;
    uint64_t now = now_ms(), wait_ms;
    int r;

    j = calloc(1, sizeof(*j));
    if (!j) {
        outcome_set(&o, MINT_UNAVAILABLE, 0, DEFAULT_RETRY_AFTER_S, "out_of_memory");
        done(userdata, &o, NULL);
        return;
    }
    j->u = u;
    j->grant = grant;
    j->revoke = revoke_token != NULL;
    j->resp_max = OAUTH_BODY_MAX;
    j->done = done;
    j->userdata = userdata;
    j->submitted_ms = now;
    j->deadline_ms = now + u->request_timeout_ms;
    j->user_id = strdup(grant == OAUTH_GRANT_USER_ASSERTION && user_id ? user_id : "");
    j->scope = strdup(scope ? scope : "");
    fingerprint(j->user_id ? j->user_id : "", j->user_id ? strlen(j->user_id) : 0, j->fp);

    pthread_mutex_lock(&u->lock);
    /* under the lock: a reload may swap the credentials (upstream_set_credentials) */
    j->generation = u->generation;
    j->serial = u->serial;
    if (!j->user_id || !j->scope)
        r = -ENOMEM;
    else if (revoke_token)
        r = oauth_revoke_body(u->client_id, u->client_secret, revoke_token, &j->body, &j->body_len);
    else
        r = oauth_request_body(grant, u->client_id, u->client_secret, scope, user_id, &j->body, &j->body_len);
    u->total++;
    if (r < 0)
        outcome_set(&o, MINT_UNAVAILABLE, 0, DEFAULT_RETRY_AFTER_S, "out_of_memory");
    else if (u->stopping)
        outcome_set(&o, MINT_UNAVAILABLE, 0, DEFAULT_RETRY_AFTER_S, "shutting_down");
    else if (breaker_refuses(&u->breaker, now, &wait_ms))
        o = u->breaker_outcome, o.retry_after_s = wait_ms ? (unsigned)((wait_ms + 999) / 1000) : DEFAULT_RETRY_AFTER_S;
    else if (u->total > u->max_concurrent + u->queue_max)
        outcome_set(&o, MINT_UNAVAILABLE, 0, DEFAULT_RETRY_AFTER_S, "overloaded");
    else if (u->paused_until_ms > j->deadline_ms)
        outcome_set(&o, MINT_UNAVAILABLE, 429, (unsigned)((u->paused_until_ms - now + 999) / 1000),
                    "rate_limited");
    else {
        queue_push(&u->incoming, &j->link);
        pthread_mutex_unlock(&u->lock);
        curl_multi_wakeup(u->multi);
        return;
    }
    pthread_mutex_unlock(&u->lock);
    job_complete(u, j, &o, NULL);
}

void upstream_mint(upstream *u, enum oauth_grant grant, const char *user_id, const char *scope,
                   upstream_done_fn done, void *userdata) {
    submit(u, grant, user_id, scope, NULL, done, userdata);
}

void upstream_revoke(upstream *u, const char *token_value, upstream_done_fn done, void *userdata) {
    submit(u, OAUTH_GRANT_CLIENT_CREDENTIALS, NULL, NULL, token_value, done, userdata);
}

void upstream_forward(upstream *u, const char *path, const char *bearer, const char *body, size_t len,
                      upstream_forward_fn done, void *userdata) {
    struct job *j = calloc(1, sizeof(*j));
    char *auth = NULL;
    bool accepted = false;

    if (!j) {
        done(userdata, 0, NULL, NULL, 0);
        return;
    }
    j->u = u;
    j->forward = true;
    j->fwd_done = done;
    j->userdata = userdata;
    j->resp_max = UPSTREAM_FORWARD_ANSWER_MAX;
    j->submitted_ms = now_ms();
    j->deadline_ms = j->submitted_ms + u->request_timeout_ms;
    j->scope = strdup(path); /* for the log */
    j->body = malloc(len + 1);
    if (j->body) {
        memcpy(j->body, body, len);
        j->body[len] = '\0';
        j->body_len = len;
    }
    if (asprintf(&auth, "Authorization: Bearer %s", bearer) >= 0) {
        j->fwd_headers = curl_slist_append(NULL, auth);
        wipe_free_str(auth);
    }
    if (j->fwd_headers) {
        struct curl_slist *h = curl_slist_append(j->fwd_headers, "Content-Type: application/json");
        h = h ? curl_slist_append(h, "Accept: application/json") : NULL;
        h = h ? curl_slist_append(h, "Expect:") : NULL;
        if (!h) {
            curl_slist_free_all(j->fwd_headers);
            j->fwd_headers = NULL;
        }
    }

    pthread_mutex_lock(&u->lock);
    u->total++;
    if (j->body && j->fwd_headers && !u->stopping && u->total <= u->max_concurrent + u->queue_max &&
        asprintf(&j->url, "%s%s", u->forward_base, path) >= 0) {
        queue_push(&u->incoming, &j->link);
        accepted = true;
    }
    pthread_mutex_unlock(&u->lock);
    if (accepted)
        curl_multi_wakeup(u->multi);
    else
        forward_complete(u, j, 0, NULL);
}

static size_t on_body(char *data, size_t size, size_t nmemb, void *userdata) {
    struct job *j = userdata;
    size_t n = size * nmemb;
    char *p;

    if (j->resp_len + n > j->resp_max) {
        j->resp_too_big = true;
        return 0; /* aborts the transfer */
    }
    /* grow without realloc so no unwiped copy of a token is left behind */
    p = malloc(j->resp_len + n + 1);
    if (!p)
        return 0;
    if (j->resp)
        memcpy(p, j->resp, j->resp_len);
    memcpy(p + j->resp_len, data, n);
    wipe_free(j->resp, j->resp_len);
    j->resp = p;
    j->resp_len += n;
    j->resp[j->resp_len] = '\0';
    return n;
}

static unsigned parse_retry_after(const char *v) {
    uint64_t s;
    time_t t;

    while (*v == ' ' || *v == '\t')
        v++;
    if (parse_uint(v, RETRY_AFTER_MAX_S, &s) == 0)
        return (unsigned)s;
    if (*v >= '0' && *v <= '9')
        return RETRY_AFTER_MAX_S; /* a number too large */
    t = curl_getdate(v, NULL);
    if (t < 0)
        return 0;
    if (t <= time(NULL))
        return 0;
    return t - time(NULL) > RETRY_AFTER_MAX_S ? RETRY_AFTER_MAX_S : (unsigned)(t - time(NULL));
}

static size_t on_header(char *data, size_t size, size_t nmemb, void *userdata) {
    struct job *j = userdata;
    size_t n = size * nmemb;
    char line[128];

    if (n > 12 && n < sizeof(line) && strncasecmp(data, "Retry-After:", 12) == 0) {
        memcpy(line, data + 12, n - 12);
        line[n - 12] = '\0';
        line[strcspn(line, "\r\n")] = '\0';
        j->retry_after_s = parse_retry_after(line);
    }
    return n;
}

static void active_unlink(upstream *u, struct job *j) {
    curl_multi_remove_handle(u->multi, j->easy);
    if (j->aprev)
        j->aprev->anext = j->anext;
    else
        u->active_head = j->anext;
    if (j->anext)
        j->anext->aprev = j->aprev;
    j->aprev = j->anext = NULL;
    u->active--;
}

/* A job made before a reload carries the old credentials: never send them
 * to a new server. A mint's body is made again with the current ones; a
 * revocation (whose token we no longer hold apart) goes only to the same
 * server, or fails with -ESTALE. Called with u->lock held. */
static int refresh_body(upstream *u, struct job *j) {
    char *body = NULL;
    size_t len = 0;

    if (j->forward || j->serial == u->serial)
        return 0;
    if (j->revoke)
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

static int attempt_start(upstream *u, struct job *j, uint64_t now) {
    uint64_t budget = j->deadline_ms - now;
    CURL *e;
    int r;

    if (budget > u->attempt_timeout_ms)
        budget = u->attempt_timeout_ms;
    e = j->easy ? j->easy : curl_easy_init();
    if (!e)
        return -ENOMEM;
    curl_easy_reset(e);
    j->easy = e;
    j->attempts++;
    wipe_free(j->resp, j->resp_len);
    j->resp = NULL;
    j->resp_len = 0;
    j->resp_too_big = false;
    j->retry_after_s = 0;
    j->attempt_started_ms = now;

    pthread_mutex_lock(&u->lock); /* a reload may swap these; curl copies them */
    r = refresh_body(u, j);
    if (r < 0) {
        pthread_mutex_unlock(&u->lock);
        return r;
    }
    curl_easy_setopt(e, CURLOPT_URL, j->forward ? j->url : j->revoke ? u->revoke_url : u->token_url);
    /* "" turns off the environment's proxies */
    curl_easy_setopt(e, CURLOPT_PROXY, u->proxy ? u->proxy : "");
    if (u->proxy_credentials)
        curl_easy_setopt(e, CURLOPT_PROXYUSERPWD, u->proxy_credentials);
    /* Only over TLS does curl learn at the handshake (ALPN) whether a new
     * connection can multiplex; over http:// it learns from the first
     * answer, so waiting would hold every mint behind a hung first one. */
    curl_easy_setopt(e, CURLOPT_PIPEWAIT, strncmp(u->forward_base, "https://", 8) == 0 ? 1L : 0L);
    if (u->ca_pem) {
        /* curl keeps connections and sessions only for the same blob, so
         * none made under a CA replaced by a reload is reused */
        struct curl_blob ca = { .data = u->ca_pem, .len = u->ca_pem_len, .flags = CURL_BLOB_COPY };
        curl_easy_setopt(e, CURLOPT_CAINFO_BLOB, &ca);
    }
    pthread_mutex_unlock(&u->lock);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, j->forward ? j->fwd_headers : u->headers);
    curl_easy_setopt(e, CURLOPT_USERAGENT, "instacart-tokend/" TOKEND_VERSION);
    curl_easy_setopt(e, CURLOPT_POST, 1L);
    /* not COPYPOSTFIELDS: curl would keep a copy of the secret we cannot wipe */
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, j->body);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long)j->body_len);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, j);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, j);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)u->connect_timeout_ms);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)(budget ? budget : 1));
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(e, CURLOPT_PRIVATE, j);
    j->curl_error[0] = '\0';
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, j->curl_error);
    /* TLS: at least 1.2, HTTP/2 where offered, sessions resumed. */
    curl_easy_setopt(e, CURLOPT_SSLVERSION, (long)CURL_SSLVERSION_TLSv1_2);
    curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2TLS);
    curl_easy_setopt(e, CURLOPT_SHARE, u->share);
    if (curl_multi_add_handle(u->multi, e) != CURLM_OK)
        return -EIO;
    j->aprev = NULL;
    j->anext = u->active_head;
    if (u->active_head)
        u->active_head->aprev = j;
    u->active_head = j;
    u->active++;
    pthread_mutex_lock(&u->lock);
    u->stats.requests++;
    if (j->attempts > 1)
        u->stats.retries++;
    pthread_mutex_unlock(&u->lock);
    return 0;
}

/* What the words of a failed TLS handshake mean: the server offers no TLS
 * version we accept (1.2 and up), or TLS is not spoken there at all.
 * OpenSSL says so only in text. */
static bool tls_version_refused(const char *curl_error) {
    static const char *const phrases[] = { "protocol version", "unsupported protocol",
                                           "wrong version number", "no protocols available" };
    for (size_t i = 0; i < ARRAY_SIZE(phrases); i++)
        if (strstr(curl_error, phrases[i]))
            return true;
    return false;
}

/* What curl says of a certificate for another name. Its words changed:
 * 7.88 (Debian 12) "...does not match target host name...", 8.x (Debian
 * 13) "no alternative certificate subject name matches target hostname". */
static bool name_mismatch(const char *curl_error) {
    return strcasestr(curl_error, "host name") || strcasestr(curl_error, "hostname") ||
           strcasestr(curl_error, "subject name");
}

/* CURLcode, translated once here: what failed, as a short stable code.
 * *final: retrying cannot help (the certificate, the name or the TLS
 * version will be the same in 100 ms), so the caller hears at once. */
static const char *transport_error(CURL *e, CURLcode rc, const char *curl_error, bool *timeout, bool *final) {
    long verify = X509_V_OK;

    *timeout = false;
    *final = false;
    switch (rc) {
    case CURLE_OPERATION_TIMEDOUT:
        *timeout = true;
        return "timeout";
    case CURLE_COULDNT_RESOLVE_HOST:
        /* a name that does not resolve is a configuration fault far more
         * often than a resolver's hiccup shorter than a retry */
        *final = true;
        return "cannot_resolve";
    case CURLE_COULDNT_CONNECT:
        return "connection_refused";
    case CURLE_PEER_FAILED_VERIFICATION:
        *final = true;
        curl_easy_getinfo(e, CURLINFO_SSL_VERIFYRESULT, &verify);
        if (verify == X509_V_ERR_CERT_HAS_EXPIRED || verify == X509_V_ERR_CERT_NOT_YET_VALID)
            return "tls_expired";
        /* curl checks the name itself once the chain verified, and then
         * leaves the verify result at its "not checked" value: its words
         * say it */
        if (verify == X509_V_ERR_HOSTNAME_MISMATCH || name_mismatch(curl_error))
            return "tls_wrong_host";
        return "tls_untrusted";
    case CURLE_SSL_CACERT_BADFILE:
        *final = true;
        return "tls_ca_file";
    case CURLE_SSL_CONNECT_ERROR:
        if (tls_version_refused(curl_error)) {
            *final = true;
            return "tls_protocol";
        }
        return "tls_failed"; /* say, the connection dropped mid-handshake */
    case CURLE_GOT_NOTHING:
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR:
    case CURLE_PARTIAL_FILE:
        return "connection_dropped";
    default:
        return "transport_error";
    }
}

/* A link failure retrying cannot heal is the operator's to fix: say what
 * curl saw (never anything of the request), once a minute per kind. */
static void link_failure_log(upstream *u, const char *code, const char *curl_error, uint64_t now) {
    bool say;

    pthread_mutex_lock(&u->lock);
    say = u->last_link_error != code || !u->last_link_log_ms || now - u->last_link_log_ms >= 60000;
    if (say) {
        u->last_link_error = code;
        u->last_link_log_ms = now;
    }
    pthread_mutex_unlock(&u->lock);
    if (say)
        log_error("cannot reach Instacart: %s (%s); not retried: check base_url%s", code,
                  curl_error[0] ? curl_error : "no detail",
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

static uint64_t backoff(upstream *u, unsigned attempts) {
    return backoff_full_jitter(u->retry_base_ms, u->retry_max_ms, attempts, random_u64());
}

const double upstream_latency_bounds[UPSTREAM_LATENCY_BUCKETS] = {
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
};

/* Called with u->lock held. */
static void latency_record(upstream *u, struct job *j, uint64_t ms) {
    double s = (double)ms / 1000;
    long connects = 0;

    if (curl_easy_getinfo(j->easy, CURLINFO_NUM_CONNECTS, &connects) == CURLE_OK && connects > 0)
        u->stats.connections += (unsigned long long)connects;

    for (size_t i = 0; i < UPSTREAM_LATENCY_BUCKETS; i++)
        if (s <= upstream_latency_bounds[i]) {
            u->stats.latency_buckets[i]++;
            break;
        }
    u->stats.latency_count++;
    u->stats.latency_sum_s += s;
}

static void latency_record_locked(upstream *u, struct job *j, uint64_t ms) {
    pthread_mutex_lock(&u->lock);
    latency_record(u, j, ms);
    pthread_mutex_unlock(&u->lock);
}

static void attempt_done(upstream *u, struct job *j, CURLcode rc) {
    uint64_t now = now_ms();
    long status = 0;
    mint_outcome o = { 0 };
    bool retry = false, timeout = false, trips = false, credentials = false;
    uint64_t paused_ms = 0;
    token *t = NULL;

    active_unlink(u, j);
    curl_easy_getinfo(j->easy, CURLINFO_RESPONSE_CODE, &status);
    if (j->forward) {
        /* passed back as it is: the caller decides what a status means */
        char *ct = NULL;
        curl_easy_getinfo(j->easy, CURLINFO_CONTENT_TYPE, &ct);
        latency_record_locked(u, j, now - j->attempt_started_ms);
        forward_complete(u, j, rc == CURLE_OK ? (int)status : 0, ct);
        return;
    }

    if (rc != CURLE_OK) {
        if (rc == CURLE_WRITE_ERROR && j->resp_too_big)
            outcome_set(&o, MINT_UNAVAILABLE, (int)status, DEFAULT_RETRY_AFTER_S, "answer_too_large");
        else {
            bool final;
            const char *why = transport_error(j->easy, rc, j->curl_error, &timeout, &final);
            outcome_set(&o, timeout ? MINT_TIMEOUT : MINT_UNAVAILABLE, 0, DEFAULT_RETRY_AFTER_S, why);
            retry = !final;
            if (final)
                link_failure_log(u, why, j->curl_error, now);
        }
        trips = true;
    } else if (status == 200 && j->revoke) {
        o.kind = MINT_OK, o.http_status = 200;
    } else if (status == 200) {
        if (oauth_parse_token(j->resp, j->resp_len, j->attempt_started_ms, &t) == 0)
            o.kind = MINT_OK, o.http_status = 200;
        else {
            outcome_set(&o, MINT_UNAVAILABLE, 200, DEFAULT_RETRY_AFTER_S, "invalid_answer");
            trips = true;
        }
    } else if (status == 408 || status == 429 || status >= 500) {
        char code[64];
        oauth_parse_error(j->resp, j->resp_len, code, sizeof(code));
        outcome_set(&o, MINT_UNAVAILABLE, (int)status,
                    j->retry_after_s ? j->retry_after_s : DEFAULT_RETRY_AFTER_S,
                    code[0] ? code : (status == 429 ? "rate_limited" : "upstream_unavailable"));
        retry = true;
        trips = status != 429;
    } else if (status >= 400 && status < 500) {
        char code[64];
        oauth_parse_error(j->resp, j->resp_len, code, sizeof(code));
        outcome_set(&o, MINT_REJECTED, (int)status, 0, code[0] ? code : "rejected");
        credentials = status == 401 || strcmp(code, "invalid_client") == 0 ||
                      strcmp(code, "query_params_forbidden") == 0;
    } else {
        outcome_set(&o, MINT_UNAVAILABLE, (int)status, DEFAULT_RETRY_AFTER_S, "unexpected_status");
        trips = true;
    }

    pthread_mutex_lock(&u->lock);
    latency_record(u, j, now - j->attempt_started_ms);
    if (j->probe)
        breaker_probe_done(&u->breaker);
    if (!j->revoke && (j->generation != u->generation || (j->serial != u->serial && o.kind != MINT_OK))) {
        /* Sent before a reload. A token for the old server or client id is
         * dropped (cached, it would be served for a day), and a failure
         * may be the old credentials' fault: neither is reported, nor held
         * against the new settings; the mint starts again with them while
         * the deadline allows. */
        t = token_unref(t);
        outcome_set(&o, MINT_UNAVAILABLE, 0, DEFAULT_RETRY_AFTER_S, "settings_changed");
        retry = true;
        j->attempts = 0; /* a fresh mint, not a retry of a failure */
        j->retry_after_s = 0;
    } else if (o.kind == MINT_OK)
        circuit_success(u);
    else if (credentials) {
        /* A configuration fault: every mint would fail the same way, so stop
         * asking for a while and say so loudly, but not on every request. */
        u->credentials_rejected = true;
        circuit_failure(u, &o, true, now);
        if (!u->last_credentials_log_ms || now - u->last_credentials_log_ms >= 60000) {
            u->last_credentials_log_ms = now;
            log_error("Instacart rejected the client credentials (HTTP %ld %s): check client_id "
                      "and the client secret, then reload", status, o.error);
        }
    } else if (trips)
        circuit_failure(u, &o, false, now);
    if (status == 429 && j->attempts) {
        uint64_t until = now + (uint64_t)(j->retry_after_s ? j->retry_after_s : DEFAULT_RETRY_AFTER_S) * 1000;
        if (until > u->paused_until_ms)
            u->paused_until_ms = until;
        paused_ms = until - now;
        log_warning("Instacart is rate limiting (429): minting paused for %u s",
                    j->retry_after_s ? j->retry_after_s : DEFAULT_RETRY_AFTER_S);
    }
    pthread_mutex_unlock(&u->lock);
    /* fleet mode: the other hosts hear of it at once, outside our lock */
    if (paused_ms && u->events.paused)
        u->events.paused(u->events.userdata, paused_ms);
    if (credentials && u->events.credentials_rejected)
        u->events.credentials_rejected(u->events.userdata);

    if (retry) {
        uint64_t delay = j->attempts ? backoff(u, j->attempts) : 0;
        if (j->retry_after_s && (uint64_t)j->retry_after_s * 1000 > delay)
            delay = (uint64_t)j->retry_after_s * 1000;
        uint64_t least = u->attempt_timeout_ms < RETRY_MIN_BUDGET_MS ? u->attempt_timeout_ms : RETRY_MIN_BUDGET_MS;
        j->last = o;
        if (now + delay + least <= j->deadline_ms) {
            j->not_before_ms = now + delay;
            j->probe = false;
            queue_push(&u->delayed, &j->link);
            return;
        }
    }
    job_complete(u, j, &o, t);
}

/* Whether a job may start now; fails it (and returns false) when it cannot
 * succeed in time. *wait is lowered to when it may start. */
static bool may_start(upstream *u, struct job *j, uint64_t now, uint64_t *wait, bool *failed) {
    mint_outcome o = { 0 };
    uint64_t wait_ms;

    *failed = false;
    if (now >= j->deadline_ms) {
        if (j->attempts)
            o = j->last; /* why the retries did not succeed */
        else
            outcome_set(&o, MINT_TIMEOUT, 0, DEFAULT_RETRY_AFTER_S, "queue_timeout");
        goto fail;
    }
    if (j->forward)
        return true; /* the breaker guards the token endpoint, not these */
    pthread_mutex_lock(&u->lock);
    switch (breaker_check(&u->breaker, now, &wait_ms)) {
    case BREAKER_REFUSE:
        o = u->breaker_outcome;
        o.retry_after_s = wait_ms ? (unsigned)((wait_ms + 999) / 1000) : DEFAULT_RETRY_AFTER_S;
        pthread_mutex_unlock(&u->lock);
        goto fail;
    case BREAKER_PROBE:
        j->probe = true;
        break;
    case BREAKER_PASS:
        break;
    }
    if (now < u->paused_until_ms) {
        uint64_t until = u->paused_until_ms;
        pthread_mutex_unlock(&u->lock);
        if (until >= j->deadline_ms) {
            outcome_set(&o, MINT_UNAVAILABLE, 429, (unsigned)((until - now + 999) / 1000), "rate_limited");
            goto fail;
        }
        if (until - now < *wait)
            *wait = until - now;
        return false;
    }
    pthread_mutex_unlock(&u->lock);
    return true;
fail:
    *failed = true;
    job_complete(u, j, &o, NULL);
    return false;
}

static void start_or_fail(upstream *u, struct job *j, uint64_t now) {
    int r = attempt_start(u, j, now);
    mint_outcome o;

    if (r == 0)
        return;
    outcome_set(&o, MINT_UNAVAILABLE, 0, DEFAULT_RETRY_AFTER_S, r == -ESTALE ? "settings_changed" : "out_of_memory");
    job_complete(u, j, &o, NULL);
}

static void start_jobs(upstream *u, uint64_t now, uint64_t *wait) {
    struct queue keep = { 0 };
    struct job *j;
    bool failed;

    /* retries whose time has come go first: they have waited longest */
    while ((j = QUEUE_POP(&u->delayed, struct job, link))) {
        if (j->not_before_ms > now) {
            if (j->not_before_ms - now < *wait)
                *wait = j->not_before_ms - now;
            queue_push(&keep, &j->link);
        } else if (u->active < u->max_concurrent && may_start(u, j, now, wait, &failed)) {
            start_or_fail(u, j, now);
        } else if (!failed) {
            queue_push(&keep, &j->link);
        }
    }
    u->delayed = keep;

    while (u->active < u->max_concurrent && (j = QUEUE_POP(&u->ready, struct job, link))) {
        if (!may_start(u, j, now, wait, &failed)) {
            if (failed)
                continue;
            queue_push_front(&u->ready, &j->link);
            break; /* paused: the whole queue waits */
        }
        start_or_fail(u, j, now);
    }

    /* Jobs stuck behind a full pipe still have deadlines: fail those whose
     * time is up, once a second. */
    if (now - u->last_expiry_walk_ms >= 1000) {
        struct queue rest = { 0 };
        u->last_expiry_walk_ms = now;
        while ((j = QUEUE_POP(&u->ready, struct job, link))) {
            if (now >= j->deadline_ms)
                may_start(u, j, now, wait, &failed);
            else
                queue_push(&rest, &j->link);
        }
        u->ready = rest;
    }
}

static void fail_all(upstream *u, struct queue *l, const char *why) {
    struct job *j;
    mint_outcome o;

    outcome_set(&o, MINT_UNAVAILABLE, 0, DEFAULT_RETRY_AFTER_S, why);
    while ((j = QUEUE_POP(l, struct job, link)))
        job_complete(u, j, &o, NULL);
}

static void *worker(void *arg) {
    upstream *u = arg;
    struct queue active = { 0 };

    for (;;) {
        uint64_t now, wait = 1000;
        long curl_wait = -1;
        int running, left;
        CURLMsg *m;

        pthread_mutex_lock(&u->lock);
        u->heartbeat_ms = now_ms();
        if (u->stopping) {
            pthread_mutex_unlock(&u->lock);
            break;
        }
        while (u->incoming.head)
            queue_push(&u->ready, &QUEUE_POP(&u->incoming, struct job, link)->link);
        pthread_mutex_unlock(&u->lock);

        curl_multi_perform(u->multi, &running);
        while ((m = curl_multi_info_read(u->multi, &left))) {
            struct job *j = NULL;
            if (m->msg != CURLMSG_DONE)
                continue;
            curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&j);
            attempt_done(u, j, m->data.result);
        }
        /* after completions, so retries just scheduled count in the wait */
        now = now_ms();
        start_jobs(u, now, &wait);
        if (u->ready.head && u->active < u->max_concurrent)
            wait = 0;
        curl_multi_timeout(u->multi, &curl_wait);
        if (curl_wait >= 0 && (uint64_t)curl_wait < wait)
            wait = (uint64_t)curl_wait;
        curl_multi_poll(u->multi, NULL, 0, (int)wait, NULL);
    }

    /* Stopping: whatever is still queued or in flight fails now. */
    while (u->active_head) {
        struct job *j = u->active_head;
        active_unlink(u, j);
        queue_push(&active, &j->link);
    }
    pthread_mutex_lock(&u->lock);
    while (u->incoming.head)
        queue_push(&u->ready, &QUEUE_POP(&u->incoming, struct job, link)->link);
    pthread_mutex_unlock(&u->lock);
    fail_all(u, &active, "shutting_down");
    fail_all(u, &u->delayed, "shutting_down");
    fail_all(u, &u->ready, "shutting_down");
    return NULL;
}

void upstream_set_events(upstream *u, const struct upstream_events *ev) {
    u->events = *ev;
}

int upstream_start(upstream *u) {
    int r = pthread_create(&u->thread, NULL, worker, u);
    if (r != 0)
        return -r;
    u->thread_started = true;
    return 0;
}

void upstream_stop(upstream *u) {
    if (!u || !u->thread_started)
        return;
    pthread_mutex_lock(&u->lock);
    u->stopping = true;
    pthread_mutex_unlock(&u->lock);
    curl_multi_wakeup(u->multi);
    pthread_join(u->thread, NULL);
    u->thread_started = false;
}

upstream *upstream_free(upstream *u) {
    if (!u)
        return NULL;
    upstream_stop(u);
    if (u->multi)
        curl_multi_cleanup(u->multi);
    if (u->share)
        curl_share_cleanup(u->share);
    free(u->ca_pem);
    curl_slist_free_all(u->headers);
    free(u->token_url);
    free(u->revoke_url);
    free(u->forward_base);
    free(u->client_id);
    wipe_free(u->client_secret, u->client_secret_len);
    free(u->proxy);
    wipe_free(u->proxy_credentials, u->proxy_credentials_len);
    pthread_mutex_destroy(&u->lock);
    free(u);
    return NULL;
}

void upstream_get_stats(upstream *u, struct upstream_stats *ret) {
    pthread_mutex_lock(&u->lock);
    *ret = u->stats;
    ret->in_flight = u->total;
    ret->queued = u->incoming.n;
    switch (breaker_state_at(&u->breaker, now_ms())) {
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
    ret->rate_limited = now_ms() < u->paused_until_ms;
    pthread_mutex_unlock(&u->lock);
}

uint64_t upstream_idle_ms(upstream *u) {
    uint64_t hb;
    pthread_mutex_lock(&u->lock);
    hb = u->heartbeat_ms;
    pthread_mutex_unlock(&u->lock);
    return now_ms() - hb;
}

#define SWAP(a, b) do { __typeof__(a) tmp_ = (a); (a) = (b); (b) = tmp_; } while (0)

/* Reload: new credentials and server for mints submitted from now on. Jobs
 * already queued keep the bodies they were built with; a retry of one goes
 * to the new URL. */
int upstream_set_credentials(upstream *u, const config *cfg) {
    size_t n = strlen(cfg->base_url) + sizeof("/v2/oauth/token");
    char *url = malloc(n), *id = strdup(cfg->client_id), *secret = malloc(cfg->client_secret_len + 1);
    char *revoke_url = NULL, *forward_base = strdup(cfg->base_url), *proxy = NULL, *proxy_creds = NULL;
    size_t secret_len = cfg->client_secret_len, proxy_creds_len = 0;
    char *ca_pem = cfg->ca_pem ? memdup(cfg->ca_pem, cfg->ca_pem_len) : NULL;
    size_t ca_pem_len = cfg->ca_pem_len;
    bool moved;
    int r = -ENOMEM;

    if (!url || !id || !secret || !forward_base || (cfg->ca_pem && !ca_pem))
        goto out;
    if (asprintf(&revoke_url, "%s/v2/oauth/token/revoke", cfg->base_url) < 0) {
        revoke_url = NULL; /* undefined after a failure */
        goto out;
    }
    if (copy_proxy(cfg, &proxy, &proxy_creds, &proxy_creds_len) < 0)
        goto out;
    snprintf(url, n, "%s/v2/oauth/token", cfg->base_url);
    memcpy(secret, cfg->client_secret, secret_len);
    secret[secret_len] = '\0';

    pthread_mutex_lock(&u->lock);
    moved = strcmp(u->token_url, url) != 0 || strcmp(u->client_id, id) != 0;
    SWAP(u->token_url, url);
    SWAP(u->revoke_url, revoke_url);
    SWAP(u->forward_base, forward_base);
    SWAP(u->client_id, id);
    SWAP(u->client_secret, secret);
    SWAP(u->client_secret_len, secret_len);
    SWAP(u->proxy, proxy);
    SWAP(u->proxy_credentials, proxy_creds);
    SWAP(u->proxy_credentials_len, proxy_creds_len);
    SWAP(u->ca_pem, ca_pem); /* the next attempt trusts the new CA */
    SWAP(u->ca_pem_len, ca_pem_len);
    u->serial++;
    if (moved)
        u->generation++;
    if (u->credentials_rejected || moved) {
        /* the breaker opened on the old credentials or server: let the new
         * ones try */
        u->credentials_rejected = false;
        breaker_reset(&u->breaker);
    }
    pthread_mutex_unlock(&u->lock);
    r = 0;
out:
    /* the old values after a swap, the new ones after a failure */
    free(url);
    free(revoke_url);
    free(forward_base);
    free(id);
    wipe_free(secret, secret ? secret_len : 0);
    free(proxy);
    wipe_free(proxy_creds, proxy_creds_len);
    free(ca_pem);
    return r;
}
