/* The HTTP front, on libmicrohttpd. Responsible for: routing, turning what
 * callers send into validated requests, answering cache hits straight from
 * the server thread, and suspending a connection while its token is minted
 * so no server thread ever waits on the network. Not responsible for how
 * tokens are made or kept.
 *
 * libmicrohttpd calls the handler at least twice per request. We answer on
 * the second call, never the first: 0.9.75 drops keep-alive for responses
 * queued on the first call (see libmicrohttpd-notes.md). */
#include "api.h"

#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "build-config.h"
#include "config.h"
#include "log.h"
#include "metrics.h"
#include "request.h"
#include "util.h"

#define TOKEN_JSON_MAX (OAUTH_TOKEN_MAX + OAUTH_SCOPE_MAX + 160)

const char *const api_route_names[_ROUTE_MAX] = {
    [ROUTE_TOKEN] = "/v1/token",     [ROUTE_HEALTHZ] = "/healthz", [ROUTE_READYZ] = "/readyz",
    [ROUTE_METRICS] = "/metrics",    [ROUTE_STATUS] = "/v1/status",
    [ROUTE_CACHE_FLUSH] = "/v1/cache/flush", [ROUTE_OTHER] = "other",
};

const unsigned api_codes[API_CODES - 1] = { 200, 400, 401, 403, 404, 405, 411, 413,
                                            421, 429, 431, 500, 502, 503, 504 };

struct api {
    struct MHD_Daemon *mhd;
    cache *cache;
    upstream *up;
    int listen_fd;
    bool listen_loopback;
    char address[80];
    char default_scope[OAUTH_SCOPE_MAX + 1];
    uint64_t min_ttl_ms;
    struct MHD_Response *health;
    int64_t start_unix;
    uint64_t start_ms;

    /* counted with atomics: the hit path takes no lock for them */
    unsigned long long counts[_ROUTE_MAX][API_CODES];

    pthread_mutex_t lock; /* orders suspend against resume; guards below */
    unsigned waiting;
    char *config_json;
};

/* What *req_cls points to between the handler's calls, until a request
 * needs state of its own: the route, and whether a body was seen. */
static char marker_route[_ROUTE_MAX], marker_body[_ROUTE_MAX];

enum request_kind { REQUEST_MINT, REQUEST_REVOKE };

/* A request that waits on the network: suspended until done. */
struct request {
    api *api;
    struct MHD_Connection *conn;
    enum api_route route;
    enum request_kind kind;
    bool suspended, done;
    int how; /* CACHE_MISS or CACHE_COALESCED */
    mint_outcome outcome;
    token *tok;
    char scope[OAUTH_SCOPE_MAX + 1];
};

static bool is_marker(const void *p) {
    return (p >= (void *)marker_route && p < (void *)(marker_route + _ROUTE_MAX)) ||
           (p >= (void *)marker_body && p < (void *)(marker_body + _ROUTE_MAX));
}

static unsigned code_index(unsigned status) {
    for (unsigned i = 0; i < API_CODES - 1; i++)
        if (api_codes[i] == status)
            return i;
    return API_CODES - 1;
}

static void count(api *a, enum api_route route, unsigned status) {
    __atomic_add_fetch(&a->counts[route][code_index(status)], 1, __ATOMIC_RELAXED);
}

static enum MHD_Result queue(api *a, struct MHD_Connection *conn, enum api_route route,
                             unsigned status, struct MHD_Response *resp) {
    enum MHD_Result r;

    if (!resp)
        return MHD_NO;
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    r = MHD_queue_response(conn, status, resp);
    MHD_destroy_response(resp);
    count(a, route, status);
    return r;
}

static const struct {
    const char *path;
    const char *allow; /* the methods it takes, for 405's Allow */
} route_table[_ROUTE_MAX] = {
    [ROUTE_TOKEN] = { "/v1/token", "GET, DELETE" },
    [ROUTE_HEALTHZ] = { "/healthz", "GET" },
    [ROUTE_READYZ] = { "/readyz", "GET" },
    [ROUTE_METRICS] = { "/metrics", "GET" },
    [ROUTE_STATUS] = { "/v1/status", "GET" },
    [ROUTE_CACHE_FLUSH] = { "/v1/cache/flush", "POST" },
    [ROUTE_OTHER] = { NULL, "" },
};

static enum api_route route_of(const char *url) {
    for (int r = 0; r < ROUTE_OTHER; r++)
        if (strcmp(url, route_table[r].path) == 0)
            return r;
    return ROUTE_OTHER;
}

static const char *route_allow(enum api_route route) {
    return route_table[route].allow;
}

/* Errors are rare: built with cJSON so any text is escaped. */
static enum MHD_Result answer_error(api *a, struct MHD_Connection *conn, enum api_route route,
                                    unsigned status, const char *error, const char *description,
                                    const mint_outcome *up) {
    struct MHD_Response *resp;
    cJSON *j = cJSON_CreateObject();
    char *body = NULL;
    char num[16];

    if (j && cJSON_AddStringToObject(j, "error", error) &&
        cJSON_AddStringToObject(j, "error_description", description) &&
        (!up || !up->http_status ||
         (cJSON_AddNumberToObject(j, "upstream_status", up->http_status) &&
          cJSON_AddStringToObject(j, "upstream_error", up->error))))
        body = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    if (!body)
        return MHD_NO;
    resp = MHD_create_response_from_buffer_with_free_callback(strlen(body), body, free);
    if (!resp) {
        free(body);
        return MHD_NO;
    }
    if (status == MHD_HTTP_METHOD_NOT_ALLOWED)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, route_allow(route));
    if (status == MHD_HTTP_SERVICE_UNAVAILABLE) {
        snprintf(num, sizeof(num), "%u", up && up->retry_after_s ? up->retry_after_s : 1);
        MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, num);
    }
    return queue(a, conn, route, status, resp);
}

static void free_wiped(void *p) {
    wipe_free_str(p);
}

/* The hit path: Instacart's own answer shape, so clients parse one format.
 * snprintf, not cJSON: every field is a number or was validated to need no
 * escaping (RFC 6750 token characters, checked scope), and this runs for
 * every request. */
static enum MHD_Result answer_token(api *a, struct MHD_Connection *conn, enum api_route route,
                                    const token *t, const char *scope, const char *how) {
    struct MHD_Response *resp;
    uint64_t left = token_remaining_ms(t, now_ms()) / 1000;
    char *body;
    int n;

    body = malloc(TOKEN_JSON_MAX);
    if (!body)
        return MHD_NO;
    n = snprintf(body, TOKEN_JSON_MAX,
                 "{\"access_token\":\"%s\",\"token_type\":\"Bearer\",\"expires_in\":%llu,"
                 "\"scope\":\"%s\",\"created_at\":%lld}",
                 t->value, (unsigned long long)left, scope, (long long)t->created_at);
    if (n < 0 || n >= TOKEN_JSON_MAX) {
        wipe_free(body, TOKEN_JSON_MAX);
        return MHD_NO;
    }
    resp = MHD_create_response_from_buffer_with_free_callback((size_t)n, body, free_wiped);
    if (!resp) {
        wipe_free(body, TOKEN_JSON_MAX);
        return MHD_NO;
    }
    MHD_add_response_header(resp, "X-Cache", how);
    return queue(a, conn, route, MHD_HTTP_OK, resp);
}

static enum MHD_Result answer_failure(api *a, struct MHD_Connection *conn, enum api_route route,
                                      const mint_outcome *o) {
    char desc[256];

    switch (o->kind) {
    case MINT_REJECTED:
        snprintf(desc, sizeof(desc), "Instacart refused the request: HTTP %d %s", o->http_status, o->error);
        return answer_error(a, conn, route, MHD_HTTP_BAD_GATEWAY, "upstream_rejected", desc, o);
    case MINT_TIMEOUT:
        snprintf(desc, sizeof(desc), "Instacart did not answer in time (%s); try again later", o->error);
        return answer_error(a, conn, route, MHD_HTTP_GATEWAY_TIMEOUT, "upstream_timeout", desc, o);
    case MINT_UNAVAILABLE:
    default:
        snprintf(desc, sizeof(desc), "Instacart is unavailable (%s); try again after Retry-After",
                 o->error);
        return answer_error(a, conn, route, MHD_HTTP_SERVICE_UNAVAILABLE, "upstream_unavailable", desc, o);
    }
}

static enum MHD_Result answer_json(api *a, struct MHD_Connection *conn, enum api_route route,
                                   unsigned status, char *body) {
    struct MHD_Response *resp;

    if (!body)
        return MHD_NO;
    resp = MHD_create_response_from_buffer_with_free_callback(strlen(body), body, free);
    if (!resp) {
        free(body);
        return MHD_NO;
    }
    return queue(a, conn, route, status, resp);
}

/* Answers once the request is suspended, or at once if done already. Under
 * the lock, so on_done can never resume a connection not yet suspended. */
static enum MHD_Result suspend_or_answer(api *a, struct request *r);

static void on_done(void *userdata, const mint_outcome *o, token *t) {
    struct request *r = userdata;
    api *a = r->api;

    pthread_mutex_lock(&a->lock);
    r->outcome = *o;
    r->tok = t;
    r->done = true;
    if (r->suspended) {
        r->suspended = false;
        a->waiting--;
        /* r may be answered and freed by the server thread from here on */
        MHD_resume_connection(r->conn);
    }
    pthread_mutex_unlock(&a->lock);
}

static enum MHD_Result answer_done(api *a, struct request *r) {
    if (r->kind == REQUEST_REVOKE) {
        if (r->outcome.kind != MINT_OK)
            return answer_failure(a, r->conn, r->route, &r->outcome);
        return answer_json(a, r->conn, r->route, MHD_HTTP_OK, strdup("{\"dropped\":true,\"revoked\":true}"));
    }
    if (r->tok)
        return answer_token(a, r->conn, r->route, r->tok, r->scope,
                            r->how == CACHE_MISS ? "miss" : "coalesced");
    return answer_failure(a, r->conn, r->route, &r->outcome);
}

static enum MHD_Result suspend_or_answer(api *a, struct request *r) {
    bool finished;

    pthread_mutex_lock(&a->lock);
    finished = r->done;
    if (!finished) {
        r->suspended = true;
        a->waiting++;
        MHD_suspend_connection(r->conn);
    }
    pthread_mutex_unlock(&a->lock);
    return finished ? answer_done(a, r) : MHD_YES;
}

static struct request *request_new(api *a, struct MHD_Connection *conn, enum api_route route,
                                   enum request_kind kind, const char *scope, void **req_cls) {
    struct request *r = calloc(1, sizeof(*r));

    if (!r)
        return NULL;
    r->api = a;
    r->conn = conn;
    r->route = route;
    r->kind = kind;
    snprintf(r->scope, sizeof(r->scope), "%s", scope);
    *req_cls = r; /* freed when the request completes */
    return r;
}

struct query_ctx {
    token_query q;
    bool allow_revoke, revoke;
    int r;
};

static enum MHD_Result on_arg(void *cls, enum MHD_ValueKind kind, const char *key, size_t key_size,
                              const char *value, size_t value_size) {
    struct query_ctx *qc = cls;

    if (qc->allow_revoke && key_size == 6 && memcmp(key, "revoke", 6) == 0) {
        if (value && value_size == 4 && memcmp(value, "true", 4) == 0)
            qc->revoke = true;
        else if (!(value && value_size == 5 && memcmp(value, "false", 5) == 0)) {
            qc->q.error = "revoke must be true or false";
            qc->r = -EINVAL;
        }
        return qc->r < 0 ? MHD_NO : MHD_YES;
    }
    qc->r = token_query_add(&qc->q, key, key_size, value, value_size, true);
    return qc->r < 0 ? MHD_NO : MHD_YES;
}

static bool parse_token_query(struct MHD_Connection *conn, struct query_ctx *qc, char user[OAUTH_USER_ID_MAX + 1]) {
    MHD_get_connection_values_n(conn, MHD_GET_ARGUMENT_KIND, on_arg, qc);
    if (qc->r < 0 || token_query_finish(&qc->q, true) < 0)
        return false;
    memcpy(user, qc->q.user_id, qc->q.user_id_len);
    user[qc->q.user_id_len] = '\0';
    return true;
}

static enum MHD_Result handle_token(api *a, struct MHD_Connection *conn, void **req_cls) {
    struct query_ctx qc = { 0 };
    char user[OAUTH_USER_ID_MAX + 1];
    const char *scope;
    struct request *r;
    mint_outcome o;
    token *t = NULL;
    uint64_t min_ttl;
    int res;

    if (!parse_token_query(conn, &qc, user))
        return answer_error(a, conn, ROUTE_TOKEN, MHD_HTTP_BAD_REQUEST, "invalid_request", qc.q.error, NULL);
    scope = qc.q.scope ? qc.q.scope : a->default_scope;
    min_ttl = qc.q.min_ttl_ms > a->min_ttl_ms ? qc.q.min_ttl_ms : a->min_ttl_ms;

    /* the hit path allocates nothing but the answer */
    res = cache_get(a->cache, OAUTH_GRANT_USER_ASSERTION, user, scope, min_ttl, NULL, NULL, &t, &o);
    if (res == CACHE_HIT) {
        enum MHD_Result ret = answer_token(a, conn, ROUTE_TOKEN, t, scope, "hit");
        token_unref(t);
        return ret;
    }
    if (res == CACHE_FAILED)
        return answer_failure(a, conn, ROUTE_TOKEN, &o);

    r = request_new(a, conn, ROUTE_TOKEN, REQUEST_MINT, scope, req_cls);
    if (!r)
        return MHD_NO;
    res = cache_get(a->cache, OAUTH_GRANT_USER_ASSERTION, user, r->scope, min_ttl, on_done, r, &t, &o);
    switch (res) {
    case CACHE_HIT: {
        enum MHD_Result ret = answer_token(a, conn, ROUTE_TOKEN, t, r->scope, "hit");
        token_unref(t);
        return ret;
    }
    case CACHE_FAILED:
        return answer_failure(a, conn, ROUTE_TOKEN, &o);
    case CACHE_MISS:
    case CACHE_COALESCED:
        r->how = res;
        return suspend_or_answer(a, r);
    default:
        o = (mint_outcome){ .kind = MINT_UNAVAILABLE, .retry_after_s = 1 };
        snprintf(o.error, sizeof(o.error), "%s",
                 res == -EBUSY ? "too_many_waiters" : res == -ENOBUFS ? "cache_full" : "internal_error");
        return answer_failure(a, conn, ROUTE_TOKEN, &o);
    }
}

/* Operator routes act on every user: only from this machine (or, with the
 * key file of a later issue, with an admin key). */
static bool peer_is_local(api *a, struct MHD_Connection *conn) {
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    const struct sockaddr *sa = ci ? ci->client_addr : NULL;

    if (a->listen_loopback)
        return true;
    if (!sa)
        return false;
    if (sa->sa_family == AF_UNIX)
        return true;
    if (sa->sa_family == AF_INET)
        return (ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr) >> 24) == 127;
    if (sa->sa_family == AF_INET6) {
        const struct in6_addr *a6 = &((const struct sockaddr_in6 *)sa)->sin6_addr;
        return IN6_IS_ADDR_LOOPBACK(a6) ||
               (IN6_IS_ADDR_V4MAPPED(a6) && a6->s6_addr[12] == 127);
    }
    return false;
}

static enum MHD_Result refuse_remote(api *a, struct MHD_Connection *conn, enum api_route route) {
    return answer_error(a, conn, route, MHD_HTTP_FORBIDDEN, "forbidden",
                        "cache control is served to local callers only", NULL);
}

/* DELETE /v1/token?user_id=U[&scope=S][&revoke=true] */
static enum MHD_Result handle_token_delete(api *a, struct MHD_Connection *conn, void **req_cls) {
    struct query_ctx qc = { .allow_revoke = true };
    char user[OAUTH_USER_ID_MAX + 1];
    const char *scope;
    struct request *r;
    token *t = NULL;
    int dropped;

    if (!peer_is_local(a, conn))
        return refuse_remote(a, conn, ROUTE_TOKEN);
    if (!parse_token_query(conn, &qc, user))
        return answer_error(a, conn, ROUTE_TOKEN, MHD_HTTP_BAD_REQUEST, "invalid_request", qc.q.error, NULL);
    if (qc.q.has_min_ttl)
        return answer_error(a, conn, ROUTE_TOKEN, MHD_HTTP_BAD_REQUEST, "invalid_request",
                            "min_ttl has no meaning when dropping a token", NULL);
    scope = qc.q.scope ? qc.q.scope : a->default_scope;
    dropped = cache_drop(a->cache, OAUTH_GRANT_USER_ASSERTION, user, scope, qc.revoke ? &t : NULL);
    if (dropped < 0)
        return answer_error(a, conn, ROUTE_TOKEN, MHD_HTTP_BAD_REQUEST, "invalid_request", "bad key", NULL);
    {
        char fp[FINGERPRINT_LEN];
        fingerprint(user, strlen(user), fp);
        log_notice("operator dropped the token of user=%s scope=%s%s (%s)", fp, scope,
                   qc.revoke ? " with revocation" : "", dropped ? "was cached" : "none cached");
    }
    if (!t)
        return answer_json(a, conn, ROUTE_TOKEN, MHD_HTTP_OK,
                           strdup(dropped ? "{\"dropped\":true,\"revoked\":false}"
                                          : "{\"dropped\":false,\"revoked\":false}"));
    r = request_new(a, conn, ROUTE_TOKEN, REQUEST_REVOKE, scope, req_cls);
    if (!r) {
        token_unref(t);
        return MHD_NO;
    }
    upstream_revoke(a->up, t->value, on_done, r);
    token_unref(t);
    return suspend_or_answer(a, r);
}

static enum MHD_Result handle_flush(api *a, struct MHD_Connection *conn) {
    char body[64];
    size_t n;

    if (!peer_is_local(a, conn))
        return refuse_remote(a, conn, ROUTE_CACHE_FLUSH);
    n = cache_flush(a->cache);
    log_notice("operator flushed the cache: %zu entries dropped", n);
    snprintf(body, sizeof(body), "{\"dropped\":%zu}", n);
    return answer_json(a, conn, ROUTE_CACHE_FLUSH, MHD_HTTP_OK, strdup(body));
}

static enum MHD_Result handle_readyz(api *a, struct MHD_Connection *conn) {
    struct upstream_stats us;
    const char *reason = NULL;
    cJSON *j;
    char *body;

    /* Not ready while the breaker is open: for breaker_cooldown after a
     * rejection of the credentials or a run of failures. Then the next mint
     * probes, and readiness follows what it finds. */
    upstream_get_stats(a->up, &us);
    if (us.circuit == CIRCUIT_OPEN && us.credentials_rejected)
        reason = "Instacart rejects the client credentials: check client_id and the secret, then reload";
    else if (us.circuit == CIRCUIT_OPEN)
        reason = "Instacart is failing: the circuit breaker is open, new users cannot get tokens";
    j = cJSON_CreateObject();
    if (!j)
        return MHD_NO;
    cJSON_AddStringToObject(j, "status", reason ? "not_ready" : "ready");
    if (reason)
        cJSON_AddStringToObject(j, "reason", reason);
    body = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    return answer_json(a, conn, ROUTE_READYZ, reason ? MHD_HTTP_SERVICE_UNAVAILABLE : MHD_HTTP_OK, body);
}

static enum MHD_Result handle_metrics(api *a, struct MHD_Connection *conn) {
    struct api_stats as;
    struct cache_stats cs;
    struct upstream_stats us;
    struct MHD_Response *resp;
    char *text;
    size_t len;

    count(a, ROUTE_METRICS, MHD_HTTP_OK); /* this scrape counts itself */
    api_get_stats(a, &as);
    cache_get_stats(a->cache, &cs);
    upstream_get_stats(a->up, &us);
    if (metrics_render(&as, &cs, &us, a->start_unix, &text, &len) < 0)
        return MHD_NO;
    resp = MHD_create_response_from_buffer_with_free_callback(len, text, free);
    if (!resp) {
        free(text);
        return MHD_NO;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8");
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    {
        enum MHD_Result ret = MHD_queue_response(conn, MHD_HTTP_OK, resp);
        MHD_destroy_response(resp);
        return ret;
    }
}

static enum MHD_Result handle_status(api *a, struct MHD_Connection *conn) {
    struct api_stats as;
    struct cache_stats cs;
    struct upstream_stats us;
    cJSON *j, *o, *cfg = NULL;
    char *body;
    static const char *const circuit[] = { "closed", "open", "half_open" };

    api_get_stats(a, &as);
    cache_get_stats(a->cache, &cs);
    upstream_get_stats(a->up, &us);
    j = cJSON_CreateObject();
    if (!j)
        return MHD_NO;
    cJSON_AddStringToObject(j, "version", TOKEND_VERSION);
    cJSON_AddNumberToObject(j, "started_at", (double)a->start_unix);
    cJSON_AddNumberToObject(j, "uptime_seconds", (double)((now_ms() - a->start_ms) / 1000));
    pthread_mutex_lock(&a->lock);
    if (a->config_json)
        cfg = cJSON_Parse(a->config_json);
    pthread_mutex_unlock(&a->lock);
    if (cfg)
        cJSON_AddItemToObject(j, "config", cfg);
    o = cJSON_AddObjectToObject(j, "cache");
    if (o) {
        cJSON_AddNumberToObject(o, "entries", (double)cs.entries);
        cJSON_AddNumberToObject(o, "hits", (double)cs.hits);
        cJSON_AddNumberToObject(o, "misses", (double)cs.misses);
        cJSON_AddNumberToObject(o, "coalesced", (double)cs.coalesced);
        cJSON_AddNumberToObject(o, "refreshes", (double)cs.refreshes);
        cJSON_AddNumberToObject(o, "evictions", (double)cs.evictions);
        cJSON_AddNumberToObject(o, "expirations", (double)cs.expirations);
    }
    o = cJSON_AddObjectToObject(j, "upstream");
    if (o) {
        cJSON_AddStringToObject(o, "circuit", circuit[us.circuit]);
        cJSON_AddBoolToObject(o, "credentials_rejected", us.credentials_rejected);
        cJSON_AddBoolToObject(o, "rate_limited", us.rate_limited);
        cJSON_AddNumberToObject(o, "requests", (double)us.requests);
        cJSON_AddNumberToObject(o, "retries", (double)us.retries);
        cJSON_AddNumberToObject(o, "mints_ok", (double)us.mints_ok);
        cJSON_AddNumberToObject(o, "mints_rejected", (double)us.mints_rejected);
        cJSON_AddNumberToObject(o, "mints_failed", (double)us.mints_failed);
        cJSON_AddNumberToObject(o, "mints_timed_out", (double)us.mints_timeout);
        cJSON_AddNumberToObject(o, "in_flight", us.in_flight);
        cJSON_AddNumberToObject(o, "revocations_ok", (double)us.revocations_ok);
        cJSON_AddNumberToObject(o, "revocations_failed", (double)us.revocations_failed);
    }
    o = cJSON_AddObjectToObject(j, "http");
    if (o) {
        cJSON_AddNumberToObject(o, "requests", (double)as.requests);
        cJSON_AddNumberToObject(o, "client_errors", (double)as.client_errors);
        cJSON_AddNumberToObject(o, "upstream_errors", (double)as.upstream_errors);
        cJSON_AddNumberToObject(o, "waiting", as.waiting);
    }
    body = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    return answer_json(a, conn, ROUTE_STATUS, MHD_HTTP_OK, body);
}

static enum MHD_Result handler(void *cls, struct MHD_Connection *conn, const char *url,
                               const char *method, const char *version, const char *upload_data,
                               size_t *upload_data_size, void **req_cls) {
    api *a = cls;
    enum api_route route;
    bool get, body;

    if (*req_cls == NULL) {
        *req_cls = &marker_route[route_of(url)];
        return MHD_YES;
    }
    if (!is_marker(*req_cls))
        return answer_done(a, *req_cls); /* resumed after a mint or a revocation */
    body = *req_cls >= (void *)marker_body && *req_cls < (void *)(marker_body + _ROUTE_MAX);
    route = body ? (enum api_route)((char *)*req_cls - marker_body)
                 : (enum api_route)((char *)*req_cls - marker_route);
    if (*upload_data_size) {
        /* no route takes a body; drain it (bounded by the connection's
         * memory and timeout), refuse at the end */
        *upload_data_size = 0;
        *req_cls = &marker_body[route];
        return MHD_YES;
    }
    if (body)
        return answer_error(a, conn, route, MHD_HTTP_BAD_REQUEST, "invalid_request",
                            "this route takes no request body", NULL);

    get = strcmp(method, MHD_HTTP_METHOD_GET) == 0;
    switch (route) {
    case ROUTE_TOKEN:
        if (get)
            return handle_token(a, conn, req_cls);
        if (strcmp(method, MHD_HTTP_METHOD_DELETE) == 0)
            return handle_token_delete(a, conn, req_cls);
        break;
    case ROUTE_HEALTHZ:
        if (get) {
            count(a, route, MHD_HTTP_OK);
            return MHD_queue_response(conn, MHD_HTTP_OK, a->health);
        }
        break;
    case ROUTE_READYZ:
        if (get)
            return handle_readyz(a, conn);
        break;
    case ROUTE_METRICS:
        if (get)
            return handle_metrics(a, conn);
        break;
    case ROUTE_STATUS:
        if (get)
            return handle_status(a, conn);
        break;
    case ROUTE_CACHE_FLUSH:
        if (strcmp(method, MHD_HTTP_METHOD_POST) == 0)
            return handle_flush(a, conn);
        break;
    default:
        return answer_error(a, conn, route, MHD_HTTP_NOT_FOUND, "not_found",
                            "no such route; see the README for GET /v1/token", NULL);
    }
    {
        char desc[96];
        snprintf(desc, sizeof(desc), "%s takes %s", url, route_allow(route));
        return answer_error(a, conn, route, MHD_HTTP_METHOD_NOT_ALLOWED, "invalid_request", desc, NULL);
    }
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **req_cls,
                         enum MHD_RequestTerminationCode toe) {
    struct request *r = *req_cls;

    if (r && !is_marker(r)) {
        token_unref(r->tok);
        free(r);
    }
    *req_cls = NULL;
}

static void on_mhd_log(void *cls, const char *fmt, va_list ap) {
    char line[512];
    size_t n;

    vsnprintf(line, sizeof(line), fmt, ap);
    n = strlen(line);
    while (n && line[n - 1] == '\n')
        line[--n] = '\0';
    log_debug("http: %s", line);
}

static int bind_listen(const char *spec, int *ret_fd) {
    struct sockaddr_storage ss;
    socklen_t sl;
    bool loopback;
    int fd, one = 1;

    if (config_listen_parse(spec, &ss, &sl, &loopback) < 0)
        return -EINVAL;
    fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return -errno;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (ss.ss_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    if (bind(fd, (struct sockaddr *)&ss, sl) < 0 || listen(fd, 4096) < 0) {
        int r = -errno;
        close(fd);
        return r;
    }
    *ret_fd = fd;
    return 0;
}

static void describe_address(int fd, char *buf, size_t size) {
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    char host[INET6_ADDRSTRLEN];

    buf[0] = '\0';
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) < 0)
        return;
    if (ss.ss_family == AF_INET) {
        struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
        inet_ntop(AF_INET, &s4->sin_addr, host, sizeof(host));
        snprintf(buf, size, "%s:%u", host, ntohs(s4->sin_port));
    } else if (ss.ss_family == AF_INET6) {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
        inet_ntop(AF_INET6, &s6->sin6_addr, host, sizeof(host));
        snprintf(buf, size, "[%s]:%u", host, ntohs(s6->sin6_port));
    }
}

int api_new(const config *cfg, cache *c, upstream *up, int listen_fd, api **ret) {
    static const char health[] = "{\"status\":\"ok\"}";
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME |
                     MHD_USE_ERROR_LOG;
    api *a;
    int r;

    a = calloc(1, sizeof(*a));
    if (!a)
        return -ENOMEM;
    pthread_mutex_init(&a->lock, NULL);
    a->cache = c;
    a->up = up;
    a->listen_fd = -1;
    a->min_ttl_ms = cfg->min_ttl_ms;
    a->start_unix = now_unix();
    a->start_ms = now_ms();
    snprintf(a->default_scope, sizeof(a->default_scope), "%s", cfg->default_scope);
    a->config_json = config_describe(cfg);
    a->health = MHD_create_response_from_buffer(sizeof(health) - 1, (void *)health, MHD_RESPMEM_PERSISTENT);
    if (!a->health) {
        api_free(a);
        return -ENOMEM;
    }
    MHD_add_response_header(a->health, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
    MHD_add_response_header(a->health, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");

    if (listen_fd >= 0)
        a->listen_fd = listen_fd;
    else {
        r = bind_listen(cfg->listen, &a->listen_fd);
        if (r < 0) {
            log_error("cannot listen on %s: %s", cfg->listen, strerror(-r));
            api_free(a);
            return r;
        }
    }
    fcntl(a->listen_fd, F_SETFL, fcntl(a->listen_fd, F_GETFL) | O_NONBLOCK);
    describe_address(a->listen_fd, a->address, sizeof(a->address));
    {
        struct sockaddr_storage ss;
        socklen_t sl;
        a->listen_loopback = config_listen_parse(a->address, &ss, &sl, &a->listen_loopback) == 0 &&
                             a->listen_loopback;
    }

    struct MHD_OptionItem opts[] = {
        { MHD_OPTION_EXTERNAL_LOGGER, (intptr_t)on_mhd_log, a },
        { MHD_OPTION_LISTEN_SOCKET, a->listen_fd, NULL },
        { MHD_OPTION_CONNECTION_LIMIT, cfg->max_connections, NULL },
        { MHD_OPTION_CONNECTION_TIMEOUT, (intptr_t)(cfg->idle_timeout_ms / 1000), NULL },
        /* 8 KiB: no 32 KiB memset per connection, and a cap on header size */
        { MHD_OPTION_CONNECTION_MEMORY_LIMIT, 8192, NULL },
        { MHD_OPTION_NOTIFY_COMPLETED, (intptr_t)on_completed, a },
        /* one polling thread unless asked: more threads than cores hurt tail latency */
        { cfg->threads > 1 ? MHD_OPTION_THREAD_POOL_SIZE : MHD_OPTION_END, cfg->threads, NULL },
        { MHD_OPTION_END, 0, NULL },
    };
    a->mhd = MHD_start_daemon(flags, 0, NULL, NULL, handler, a, MHD_OPTION_ARRAY, opts, MHD_OPTION_END);
    if (!a->mhd) {
        log_error("cannot start the HTTP server on %s", a->address);
        api_free(a);
        return -EIO;
    }
    *ret = a;
    return 0;
}

const char *api_address(api *a) {
    return a->address;
}

void api_quiesce(api *a) {
    if (a && a->mhd && a->listen_fd >= 0) {
        MHD_quiesce_daemon(a->mhd);
        close(a->listen_fd);
        a->listen_fd = -1;
    }
}

unsigned api_waiting(api *a) {
    unsigned n;
    pthread_mutex_lock(&a->lock);
    n = a->waiting;
    pthread_mutex_unlock(&a->lock);
    return n;
}

void api_get_stats(api *a, struct api_stats *ret) {
    memset(ret, 0, sizeof(*ret));
    for (int r = 0; r < _ROUTE_MAX; r++)
        for (int c = 0; c < API_CODES; c++) {
            unsigned long long n = __atomic_load_n(&a->counts[r][c], __ATOMIC_RELAXED);
            unsigned status = c < API_CODES - 1 ? api_codes[c] : 500;
            ret->by_route[r][c] = n;
            ret->requests += n;
            if (status < 300)
                ret->ok += n;
            else if (status < 500)
                ret->client_errors += n;
            else
                ret->upstream_errors += n;
        }
    ret->waiting = api_waiting(a);
}

void api_set_config(api *a, const config *cfg) {
    char *j = config_describe(cfg);

    pthread_mutex_lock(&a->lock);
    free(a->config_json);
    a->config_json = j;
    pthread_mutex_unlock(&a->lock);
}

api *api_free(api *a) {
    if (!a)
        return NULL;
    if (a->mhd) {
        MHD_stop_daemon(a->mhd); /* closes the listening socket unless quiesced */
        a->listen_fd = -1;
    }
    if (a->listen_fd >= 0)
        close(a->listen_fd);
    if (a->health)
        MHD_destroy_response(a->health);
    free(a->config_json);
    pthread_mutex_destroy(&a->lock);
    free(a);
    return NULL;
}
