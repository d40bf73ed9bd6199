/* The HTTP client toward Instacart. Responsible for the mechanics: one
 * worker thread driving a libcurl multi handle, connections kept and
 * reused (HTTP/2 where offered, TLS sessions resumed), the concurrency
 * limit with a bounded queue, each exchange's deadline while it waits, and
 * translating what curl says into enum http_result. Not responsible for
 * what an answer means, whether to retry it, or when to hold back (the
 * owners decide: upstream.c for tokens, forward.c for Recommendations).
 *
 * Threads: http_client_submit() is called from any thread and only appends
 * to the incoming list under the lock, then wakes the worker. Everything
 * with a curl handle in it happens on the worker, and every owner callback
 * runs there without the lock held. */
#include "http_client.h"

#include <curl/curl.h>
#include <errno.h>
#include <openssl/x509_vfy.h> /* the X509_V_* values of CURLINFO_SSL_VERIFYRESULT */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "build-config.h"
#include "queue.h"
#include "util.h"

struct http_exchange {
    struct qlink link; /* in one queue at a time */
    struct http_exchange *aprev, *anext; /* on the active list while a request is out */
    http_client *hc;
    const struct http_exchange_ops *ops;
    void *userdata;
    uint64_t deadline_ms, not_before_ms, started_ms;
    CURL *easy;
    struct curl_slist *auth_headers; /* the common ones and the bearer: wiped */
    char *resp; /* may hold a token */
    size_t resp_len, resp_max;
    bool resp_too_big;
    char retry_after[128]; /* "" when the header did not come */
    char curl_error[CURL_ERROR_SIZE]; /* curl's words for a failed attempt, for the log */
};

struct http_client {
    /* fixed at creation */
    unsigned max_concurrent, queue_max;
    uint64_t connect_timeout_ms;
    const double *latency_bounds;
    size_t n_latency_bounds;
    struct curl_slist *headers;
    CURLM *multi;
    CURLSH *share; /* TLS sessions, so a reopened connection resumes one */

    pthread_t thread;
    bool thread_started;

    pthread_mutex_t lock; /* guards everything below */
    struct queue incoming;
    unsigned total; /* accepted and not yet over */
    bool stopping;
    char *proxy;
    char *proxy_credentials;
    size_t proxy_credentials_len;
    char *ca_pem;
    size_t ca_pem_len;
    struct http_client_stats stats;
    uint64_t heartbeat_ms;

    /* worker only */
    struct queue ready, delayed;
    http_exchange *active_head;
    unsigned active;
    uint64_t last_expiry_walk_ms;
};

static char *memdup(const char *p, size_t n) {
    char *c = malloc(n + 1);

    if (c) {
        memcpy(c, p, n);
        c[n] = '\0';
    }
    return c;
}

/* All or nothing: what a link needs, copied, swapped in under the lock. */
int http_client_set_link(http_client *hc, const struct http_link *l) {
    char *proxy = l->proxy ? strdup(l->proxy) : NULL;
    char *creds = l->proxy_credentials ? memdup(l->proxy_credentials, l->proxy_credentials_len) : NULL;
    size_t creds_len = creds ? l->proxy_credentials_len : 0;
    char *ca = l->ca_pem ? memdup(l->ca_pem, l->ca_pem_len) : NULL;
    size_t ca_len = ca ? l->ca_pem_len : 0;
    char *t;
    size_t n;

    if ((l->proxy && !proxy) || (l->proxy_credentials && !creds) || (l->ca_pem && !ca)) {
        free(proxy);
        wipe_free(creds, creds_len);
        free(ca);
        return -ENOMEM;
    }
    pthread_mutex_lock(&hc->lock);
    t = hc->proxy, hc->proxy = proxy, proxy = t;
    t = hc->proxy_credentials, hc->proxy_credentials = creds, creds = t;
    n = hc->proxy_credentials_len, hc->proxy_credentials_len = creds_len, creds_len = n;
    t = hc->ca_pem, hc->ca_pem = ca, ca = t;
    hc->ca_pem_len = ca_len;
    pthread_mutex_unlock(&hc->lock);
    free(proxy);
    wipe_free(creds, creds_len);
    free(ca);
    return 0;
}

int http_client_new(const struct http_client_settings *s, http_client **ret) {
    http_client *hc;

    if (s->n_latency_bounds > HTTP_LATENCY_BUCKETS_MAX)
        return -EINVAL;
    hc = calloc(1, sizeof(*hc));
    if (!hc)
        return -ENOMEM;
    pthread_mutex_init(&hc->lock, NULL);
    hc->max_concurrent = s->max_concurrent;
    hc->queue_max = s->queue_max;
    hc->connect_timeout_ms = s->connect_timeout_ms;
    hc->latency_bounds = s->latency_bounds;
    hc->n_latency_bounds = s->n_latency_bounds;
    hc->headers = curl_slist_append(NULL, "Content-Type: application/json");
    hc->headers = hc->headers ? curl_slist_append(hc->headers, "Accept: application/json") : NULL;
    /* no "Expect: 100-continue" round trip for a small body */
    hc->headers = hc->headers ? curl_slist_append(hc->headers, "Expect:") : NULL;
    hc->multi = curl_multi_init();
    hc->share = curl_share_init();
    if (!hc->headers || !hc->multi || !hc->share || http_client_set_link(hc, &s->link) < 0) {
        http_client_free(hc);
        return -ENOMEM;
    }
    /* Every easy handle is used on the worker thread only: no lock needed.
     * Each exchange has its own easy handle, so without this share a
     * connection reopened for the next one could not resume the last TLS
     * session. */
    curl_share_setopt(hc->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION);
    /* Over HTTP/2 all requests share one connection: a burst waits for the
     * first connection (CURLOPT_PIPEWAIT) rather than opening one each. */
    curl_multi_setopt(hc->multi, CURLMOPT_PIPELINING, CURLPIPE_MULTIPLEX);
    /* Keep one connection per concurrent request open between requests, so
     * a mint pays no TCP or TLS handshake while traffic flows. */
    curl_multi_setopt(hc->multi, CURLMOPT_MAXCONNECTS, (long)hc->max_concurrent);
    curl_multi_setopt(hc->multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, (long)hc->max_concurrent);
    hc->heartbeat_ms = now_ms();
    *ret = hc;
    return 0;
}

static void wipe_headers(struct curl_slist *l) {
    for (struct curl_slist *h = l; h; h = h->next)
        explicit_bzero(h->data, strlen(h->data));
    curl_slist_free_all(l);
}

static void exchange_free(http_exchange *ex) {
    if (ex->easy)
        curl_easy_cleanup(ex->easy);
    wipe_headers(ex->auth_headers);
    wipe_free(ex->resp, ex->resp_len);
    free(ex);
}

int http_client_submit(http_client *hc, const struct http_exchange_ops *ops, void *userdata,
                       uint64_t deadline_ms) {
    http_exchange *ex = calloc(1, sizeof(*ex));
    int r = 0;

    if (!ex)
        return -ENOMEM;
    ex->hc = hc;
    ex->ops = ops;
    ex->userdata = userdata;
    ex->deadline_ms = deadline_ms;
    pthread_mutex_lock(&hc->lock);
    if (hc->stopping)
        r = -ESHUTDOWN;
    else if (hc->total >= hc->max_concurrent + hc->queue_max)
        r = -EBUSY;
    else {
        hc->total++;
        queue_push(&hc->incoming, &ex->link);
    }
    pthread_mutex_unlock(&hc->lock);
    if (r < 0) {
        free(ex);
        return r;
    }
    curl_multi_wakeup(hc->multi);
    return 0;
}

static size_t on_body(char *data, size_t size, size_t nmemb, void *userdata) {
    http_exchange *ex = userdata;
    size_t n = size * nmemb;
    char *p;

    if (ex->resp_len + n > ex->resp_max) {
        ex->resp_too_big = true;
        return 0; /* aborts the transfer */
    }
    /* grow without realloc so no unwiped copy of a token is left behind */
    p = malloc(ex->resp_len + n + 1);
    if (!p)
        return 0;
    if (ex->resp)
        memcpy(p, ex->resp, ex->resp_len);
    memcpy(p + ex->resp_len, data, n);
    wipe_free(ex->resp, ex->resp_len);
    ex->resp = p;
    ex->resp_len += n;
    ex->resp[ex->resp_len] = '\0';
    return n;
}

static size_t on_header(char *data, size_t size, size_t nmemb, void *userdata) {
    http_exchange *ex = userdata;
    size_t n = size * nmemb;

    if (n > 12 && n - 12 < sizeof(ex->retry_after) && strncasecmp(data, "Retry-After:", 12) == 0) {
        memcpy(ex->retry_after, data + 12, n - 12);
        ex->retry_after[n - 12] = '\0';
        ex->retry_after[strcspn(ex->retry_after, "\r\n")] = '\0';
    }
    return n;
}

static void active_unlink(http_client *hc, http_exchange *ex) {
    curl_multi_remove_handle(hc->multi, ex->easy);
    if (ex->aprev)
        ex->aprev->anext = ex->anext;
    else
        hc->active_head = ex->anext;
    if (ex->anext)
        ex->anext->aprev = ex->aprev;
    ex->aprev = ex->anext = NULL;
    hc->active--;
}

/* The headers of one attempt: the common ones, and the bearer token if any,
 * in a list of this exchange's own so it can be wiped. */
static int attempt_headers(http_exchange *ex, const char *bearer) {
    struct curl_slist *l = NULL;
    char *auth = NULL;

    wipe_headers(ex->auth_headers);
    ex->auth_headers = NULL;
    if (!bearer)
        return 0;
    if (asprintf(&auth, "Authorization: Bearer %s", bearer) < 0)
        return -ENOMEM;
    l = curl_slist_append(NULL, auth);
    wipe_free_str(auth);
    for (const struct curl_slist *h = ex->hc->headers; l && h; h = h->next) {
        struct curl_slist *n = curl_slist_append(l, h->data);
        if (!n) {
            wipe_headers(l);
            l = NULL;
        } else
            l = n;
    }
    if (!l)
        return -ENOMEM;
    ex->auth_headers = l;
    return 0;
}

int http_exchange_send(http_exchange *ex, const struct http_request *req) {
    http_client *hc = ex->hc;
    uint64_t now = now_ms();
    CURL *e = ex->easy ? ex->easy : curl_easy_init();

    if (!e)
        return -ENOMEM;
    curl_easy_reset(e);
    ex->easy = e;
    wipe_free(ex->resp, ex->resp_len);
    ex->resp = NULL;
    ex->resp_len = 0;
    ex->resp_max = req->answer_max;
    ex->resp_too_big = false;
    ex->retry_after[0] = '\0';
    ex->started_ms = now;
    if (attempt_headers(ex, req->bearer) < 0)
        return -ENOMEM;

    curl_easy_setopt(e, CURLOPT_URL, req->url);
    pthread_mutex_lock(&hc->lock); /* a reload may swap these; curl copies them */
    /* "" turns off the environment's proxies */
    curl_easy_setopt(e, CURLOPT_PROXY, hc->proxy ? hc->proxy : "");
    if (hc->proxy_credentials)
        curl_easy_setopt(e, CURLOPT_PROXYUSERPWD, hc->proxy_credentials);
    if (hc->ca_pem) {
        /* curl keeps connections and sessions only for the same blob, so
         * none made under a CA replaced by a reload is reused */
        struct curl_blob ca = { .data = hc->ca_pem, .len = hc->ca_pem_len, .flags = CURL_BLOB_COPY };
        curl_easy_setopt(e, CURLOPT_CAINFO_BLOB, &ca);
    }
    pthread_mutex_unlock(&hc->lock);
    /* Only over TLS does curl learn at the handshake (ALPN) whether a new
     * connection can multiplex; over http:// it learns from the first
     * answer, so waiting would hold every request behind a hung first one. */
    curl_easy_setopt(e, CURLOPT_PIPEWAIT, strncmp(req->url, "https://", 8) == 0 ? 1L : 0L);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, ex->auth_headers ? ex->auth_headers : hc->headers);
    curl_easy_setopt(e, CURLOPT_USERAGENT, "instacart-tokend/" TOKEND_VERSION);
    curl_easy_setopt(e, CURLOPT_POST, 1L);
    /* not COPYPOSTFIELDS: curl would keep a copy of the secret we cannot wipe */
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, req->body);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long)req->body_len);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, ex);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, ex);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)hc->connect_timeout_ms);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)(req->timeout_ms ? req->timeout_ms : 1));
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(e, CURLOPT_PRIVATE, ex);
    ex->curl_error[0] = '\0';
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, ex->curl_error);
    /* TLS: at least 1.2, HTTP/2 where offered, sessions resumed. */
    curl_easy_setopt(e, CURLOPT_SSLVERSION, (long)CURL_SSLVERSION_TLSv1_2);
    curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2TLS);
    curl_easy_setopt(e, CURLOPT_SHARE, hc->share);
    if (curl_multi_add_handle(hc->multi, e) != CURLM_OK)
        return -EIO;
    ex->aprev = NULL;
    ex->anext = hc->active_head;
    if (hc->active_head)
        hc->active_head->aprev = ex;
    hc->active_head = ex;
    hc->active++;
    pthread_mutex_lock(&hc->lock);
    hc->stats.requests++;
    pthread_mutex_unlock(&hc->lock);
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

/* CURLcode, translated once here. */
static enum http_result transport_result(http_exchange *ex, CURLcode rc) {
    long verify = X509_V_OK;

    switch (rc) {
    case CURLE_OK:
        return HTTP_RESULT_OK;
    case CURLE_OPERATION_TIMEDOUT:
        return HTTP_RESULT_TIMEOUT;
    case CURLE_COULDNT_RESOLVE_HOST:
        return HTTP_RESULT_CANNOT_RESOLVE;
    case CURLE_COULDNT_CONNECT:
        return HTTP_RESULT_REFUSED;
    case CURLE_PEER_FAILED_VERIFICATION:
        curl_easy_getinfo(ex->easy, CURLINFO_SSL_VERIFYRESULT, &verify);
        if (verify == X509_V_ERR_CERT_HAS_EXPIRED || verify == X509_V_ERR_CERT_NOT_YET_VALID)
            return HTTP_RESULT_TLS_EXPIRED;
        /* curl checks the name itself once the chain verified, and then
         * leaves the verify result at its "not checked" value: its words
         * say it */
        if (verify == X509_V_ERR_HOSTNAME_MISMATCH || name_mismatch(ex->curl_error))
            return HTTP_RESULT_TLS_WRONG_HOST;
        return HTTP_RESULT_TLS_UNTRUSTED;
    case CURLE_SSL_CACERT_BADFILE:
        return HTTP_RESULT_TLS_CA_FILE;
    case CURLE_SSL_CONNECT_ERROR:
        /* or, say, the connection dropped mid-handshake */
        return tls_version_refused(ex->curl_error) ? HTTP_RESULT_TLS_PROTOCOL : HTTP_RESULT_TLS_FAILED;
    case CURLE_GOT_NOTHING:
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR:
    case CURLE_PARTIAL_FILE:
        return HTTP_RESULT_DROPPED;
    case CURLE_WRITE_ERROR:
        return ex->resp_too_big ? HTTP_RESULT_TOO_LARGE : HTTP_RESULT_FAILED;
    default:
        return HTTP_RESULT_FAILED;
    }
}

/* Called with hc->lock held. */
static void latency_record(http_client *hc, http_exchange *ex, uint64_t ms) {
    double s = (double)ms / 1000;
    long connects = 0;

    if (curl_easy_getinfo(ex->easy, CURLINFO_NUM_CONNECTS, &connects) == CURLE_OK && connects > 0)
        hc->stats.connections += (unsigned long long)connects;
    for (size_t i = 0; i < hc->n_latency_bounds; i++)
        if (s <= hc->latency_bounds[i]) {
            hc->stats.latency_buckets[i]++;
            break;
        }
    hc->stats.latency_count++;
    hc->stats.latency_sum_s += s;
}

/* The owner is told; the exchange is freed, or waits for its retry. */
static void exchange_report(http_client *hc, http_exchange *ex, const struct http_answer *a) {
    uint64_t retry_at = 0;

    if (ex->ops->done(ex->userdata, a, &retry_at) && a->result != HTTP_RESULT_EXPIRED &&
        a->result != HTTP_RESULT_CANCELLED) {
        ex->not_before_ms = retry_at;
        queue_push(&hc->delayed, &ex->link);
        return;
    }
    pthread_mutex_lock(&hc->lock);
    hc->total--;
    pthread_mutex_unlock(&hc->lock);
    exchange_free(ex);
}

/* Ends an exchange that is not out: no answer, only why. */
static void exchange_end(http_client *hc, http_exchange *ex, enum http_result why) {
    struct http_answer a = { .result = why, .detail = "" };

    exchange_report(hc, ex, &a);
}

static void attempt_done(http_client *hc, http_exchange *ex, CURLcode rc) {
    uint64_t now = now_ms();
    long status = 0;
    char *ct = NULL;
    struct http_answer a;

    active_unlink(hc, ex);
    curl_easy_getinfo(ex->easy, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_getinfo(ex->easy, CURLINFO_CONTENT_TYPE, &ct);
    pthread_mutex_lock(&hc->lock);
    latency_record(hc, ex, now - ex->started_ms);
    pthread_mutex_unlock(&hc->lock);
    a = (struct http_answer){
        .result = transport_result(ex, rc),
        .status = (int)status,
        .content_type = ct,
        .retry_after = ex->retry_after[0] ? ex->retry_after : NULL,
        .body = ex->resp,
        .len = ex->resp_len,
        .detail = ex->curl_error,
        .started_ms = ex->started_ms,
    };
    exchange_report(hc, ex, &a);
}

/* Whether an exchange may start now: its deadline, then its owner. Ends it
 * (and returns false) when it cannot go; *wait is lowered to when to ask
 * again. */
static enum http_start try_start(http_client *hc, http_exchange *ex, uint64_t now, uint64_t *wait) {
    enum http_start s;

    if (now >= ex->deadline_ms) {
        exchange_end(hc, ex, HTTP_RESULT_EXPIRED);
        return HTTP_START_ENDED;
    }
    s = ex->ops->start(ex->userdata, ex, now, wait);
    if (s == HTTP_START_ENDED) {
        pthread_mutex_lock(&hc->lock);
        hc->total--;
        pthread_mutex_unlock(&hc->lock);
        exchange_free(ex);
    }
    return s;
}

static void start_exchanges(http_client *hc, uint64_t now, uint64_t *wait) {
    struct queue keep = { 0 };
    http_exchange *ex;

    /* retries whose time has come go first: they have waited longest */
    while ((ex = QUEUE_POP(&hc->delayed, http_exchange, link))) {
        if (ex->not_before_ms > now) {
            if (ex->not_before_ms - now < *wait)
                *wait = ex->not_before_ms - now;
            queue_push(&keep, &ex->link);
        } else if (hc->active >= hc->max_concurrent || try_start(hc, ex, now, wait) == HTTP_START_WAIT)
            queue_push(&keep, &ex->link);
    }
    hc->delayed = keep;

    while (hc->active < hc->max_concurrent && (ex = QUEUE_POP(&hc->ready, http_exchange, link))) {
        if (try_start(hc, ex, now, wait) == HTTP_START_WAIT) {
            queue_push_front(&hc->ready, &ex->link);
            break; /* held back: the whole queue waits */
        }
    }

    /* Exchanges stuck behind a full pipe still have deadlines: end those
     * whose time is up, once a second. */
    if (now - hc->last_expiry_walk_ms >= 1000) {
        struct queue rest = { 0 };
        hc->last_expiry_walk_ms = now;
        while ((ex = QUEUE_POP(&hc->ready, http_exchange, link))) {
            if (now >= ex->deadline_ms)
                exchange_end(hc, ex, HTTP_RESULT_EXPIRED);
            else
                queue_push(&rest, &ex->link);
        }
        hc->ready = rest;
    }
}

static void cancel_all(http_client *hc, struct queue *l) {
    http_exchange *ex;

    while ((ex = QUEUE_POP(l, http_exchange, link)))
        exchange_end(hc, ex, HTTP_RESULT_CANCELLED);
}

static void *worker(void *arg) {
    http_client *hc = arg;
    struct queue active = { 0 };

    for (;;) {
        uint64_t now, wait = 1000;
        long curl_wait = -1;
        int running, left;
        CURLMsg *m;

        pthread_mutex_lock(&hc->lock);
        hc->heartbeat_ms = now_ms();
        if (hc->stopping) {
            pthread_mutex_unlock(&hc->lock);
            break;
        }
        while (hc->incoming.head)
            queue_push(&hc->ready, &QUEUE_POP(&hc->incoming, http_exchange, link)->link);
        pthread_mutex_unlock(&hc->lock);

        curl_multi_perform(hc->multi, &running);
        while ((m = curl_multi_info_read(hc->multi, &left))) {
            http_exchange *ex = NULL;
            if (m->msg != CURLMSG_DONE)
                continue;
            curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&ex);
            attempt_done(hc, ex, m->data.result);
        }
        /* after completions, so retries just scheduled count in the wait */
        now = now_ms();
        start_exchanges(hc, now, &wait);
        curl_multi_timeout(hc->multi, &curl_wait);
        if (curl_wait >= 0 && (uint64_t)curl_wait < wait)
            wait = (uint64_t)curl_wait;
        curl_multi_poll(hc->multi, NULL, 0, (int)wait, NULL);
    }

    /* Stopping: whatever is still queued or in flight ends now. */
    while (hc->active_head) {
        http_exchange *ex = hc->active_head;
        active_unlink(hc, ex);
        queue_push(&active, &ex->link);
    }
    pthread_mutex_lock(&hc->lock);
    while (hc->incoming.head)
        queue_push(&hc->ready, &QUEUE_POP(&hc->incoming, http_exchange, link)->link);
    pthread_mutex_unlock(&hc->lock);
    cancel_all(hc, &active);
    cancel_all(hc, &hc->delayed);
    cancel_all(hc, &hc->ready);
    return NULL;
}

int http_client_start(http_client *hc) {
    int r = pthread_create(&hc->thread, NULL, worker, hc);

    if (r != 0)
        return -r;
    hc->thread_started = true;
    return 0;
}

void http_client_stop(http_client *hc) {
    if (!hc)
        return;
    pthread_mutex_lock(&hc->lock);
    hc->stopping = true;
    pthread_mutex_unlock(&hc->lock);
    if (!hc->thread_started)
        return;
    curl_multi_wakeup(hc->multi);
    pthread_join(hc->thread, NULL);
    hc->thread_started = false;
}

http_client *http_client_free(http_client *hc) {
    if (!hc)
        return NULL;
    http_client_stop(hc);
    if (hc->multi)
        curl_multi_cleanup(hc->multi);
    if (hc->share)
        curl_share_cleanup(hc->share);
    curl_slist_free_all(hc->headers);
    free(hc->proxy);
    wipe_free(hc->proxy_credentials, hc->proxy_credentials_len);
    free(hc->ca_pem);
    pthread_mutex_destroy(&hc->lock);
    free(hc);
    return NULL;
}

void http_client_get_stats(http_client *hc, struct http_client_stats *ret) {
    pthread_mutex_lock(&hc->lock);
    *ret = hc->stats;
    ret->in_flight = hc->total;
    ret->queued = hc->incoming.n;
    pthread_mutex_unlock(&hc->lock);
}

uint64_t http_client_idle_ms(http_client *hc) {
    uint64_t hb;

    pthread_mutex_lock(&hc->lock);
    hb = hc->heartbeat_ms;
    pthread_mutex_unlock(&hc->lock);
    return now_ms() - hb;
}
