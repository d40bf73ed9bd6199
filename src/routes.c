/* The routes of the HTTP front, in one table (routes[] at the end: a row
 * per route, a handler per method), and what each does once api.c has let
 * the caller in:
 * tokens for users (by query, by the proxy's user header, by Instacart's
 * own request body), tokens for the partner's backend, the Recommendations
 * proxy, and the operator's routes. Not responsible for who may call what
 * (api.c) nor for how tokens are made (cache.c, upstream.c). */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "api-internal.h"
#include "build-config.h"
#include "log.h"
#include "metrics.h"
#include "proxy.h"
#include "util.h"

/* ---- tokens ---- */

static mint_outcome local_failure(const char *why) {
    mint_outcome o = { .kind = MINT_UNAVAILABLE, .retry_after_s = 1 };
    snprintf(o.error, sizeof(o.error), "%s", why);
    return o;
}

/* A token for the key: answered at once on a hit, else the request waits
 * on the mint. r is the request's own state when it has one already (a
 * body), else one is made only on a miss: the hit path allocates nothing
 * but its answer. */
static enum MHD_Result serve_token(const struct call *c, struct request *r, void **req_cls,
                                   enum oauth_grant grant, const char *user, const char *scope,
                                   uint64_t min_ttl_ms) {
    mint_outcome o;
    token *t = NULL;
    int res;

    if (min_ttl_ms < c->a->min_ttl_ms)
        min_ttl_ms = c->a->min_ttl_ms;
    if (!r) {
        res = cache_get(c->a->cache, grant, user, scope, min_ttl_ms, NULL, NULL, &t, &o);
        if (res != -EAGAIN)
            goto answer;
        r = api_request_new(c, REQUEST_MINT, req_cls);
        if (!r)
            return MHD_NO;
    }
    snprintf(r->scope, sizeof(r->scope), "%s", scope);
    res = cache_get(c->a->cache, grant, user, r->scope, min_ttl_ms, api_on_done, r, &t, &o);
    if (res == CACHE_MISS || res == CACHE_COALESCED) {
        r->how = res;
        return api_suspend_or_answer(r);
    }
answer:
    switch (res) {
    case CACHE_HIT: {
        enum MHD_Result ret = api_token(c, t, scope, "hit");
        token_unref(t);
        return ret;
    }
    case CACHE_FAILED:
        return api_failure(c, &o);
    default:
        o = local_failure(res == -EBUSY ? "too_many_waiters" : res == -ENOBUFS ? "cache_full" : "internal_error");
        return api_failure(c, &o);
    }
}

struct query_ctx {
    token_query q;
    bool allow_user_id, allow_revoke, revoke;
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
    } else
        qc->r = token_query_add(&qc->q, key, key_size, value, value_size, qc->allow_user_id);
    return qc->r < 0 ? MHD_NO : MHD_YES;
}

/* The query, checked; user gets the user id when the route takes one. */
static bool parse_query(const struct call *c, struct query_ctx *qc, char user[OAUTH_USER_ID_MAX + 1]) {
    MHD_get_connection_values_n(c->conn, MHD_GET_ARGUMENT_KIND, on_arg, qc);
    if (qc->r < 0 || token_query_finish(&qc->q, qc->allow_user_id) < 0)
        return false;
    if (qc->allow_user_id && user) { /* user is NULL where the route takes no user id */
        memcpy(user, qc->q.user_id, qc->q.user_id_len);
        user[qc->q.user_id_len] = '\0';
    }
    return true;
}

static enum MHD_Result route_token(const struct call *c, struct request *unused, void **req_cls) {
    struct query_ctx qc = { .allow_user_id = true };
    char user[OAUTH_USER_ID_MAX + 1];

    if (!parse_query(c, &qc, user))
        return api_error(c, MHD_HTTP_BAD_REQUEST, "invalid_request", qc.q.error, NULL);
    return serve_token(c, NULL, req_cls, OAUTH_GRANT_USER_ASSERTION, user,
                       qc.q.scope ? qc.q.scope : c->a->default_scope, qc.q.min_ttl_ms);
}

/* client_credentials: one token per scope ("" for none) */
static enum MHD_Result route_client_token(const struct call *c, struct request *unused, void **req_cls) {
    struct query_ctx qc = { 0 };

    if (!parse_query(c, &qc, NULL))
        return api_error(c, MHD_HTTP_BAD_REQUEST, "invalid_request", qc.q.error, NULL);
    return serve_token(c, NULL, req_cls, OAUTH_GRANT_CLIENT_CREDENTIALS, "", qc.q.scope ? qc.q.scope : "",
                       qc.q.min_ttl_ms);
}

/* The user as the site's proxy names it (api.c checked the proxy's key). */
static bool user_from_header(const struct call *c, char user[OAUTH_USER_ID_MAX + 1], const char **why) {
    const char *v = NULL;
    size_t len = 0;

    if (MHD_lookup_connection_value_n(c->conn, MHD_HEADER_KIND, c->a->user_header, strlen(c->a->user_header),
                                      &v, &len) != MHD_YES || !v) {
        *why = "the user header is missing: the site's proxy must set it";
        return false;
    }
    if (!request_user_id_valid(v, len) || memchr(v, '\0', len)) {
        *why = "the user header must hold 1 to 256 bytes of UTF-8 without control characters";
        return false;
    }
    memcpy(user, v, len);
    user[len] = '\0';
    return true;
}

static enum MHD_Result route_frontend_token(const struct call *c, struct request *unused, void **req_cls) {
    struct query_ctx qc = { 0 };
    char user[OAUTH_USER_ID_MAX + 1];
    const char *why;

    if (!user_from_header(c, user, &why))
        return api_error(c, MHD_HTTP_BAD_REQUEST, "invalid_request", why, NULL);
    if (!parse_query(c, &qc, NULL))
        return api_error(c, MHD_HTTP_BAD_REQUEST, "invalid_request", qc.q.error, NULL);
    return serve_token(c, NULL, req_cls, OAUTH_GRANT_USER_ASSERTION, user,
                       qc.q.scope ? qc.q.scope : c->a->default_scope, qc.q.min_ttl_ms);
}

/* POST /v2/oauth/token with Instacart's own body, minus the credentials */
/* Whether a Content-Type names type (parameters such as charset aside). */
static bool media_type_is(const char *value, const char *type) {
    size_t n = strlen(type);

    return strncasecmp(value, type, n) == 0 && (value[n] == '\0' || value[n] == ';' || value[n] == ' ');
}

static enum MHD_Result route_dropin(const struct call *c, struct request *r, void **unused) {
    const char *error, *desc, *scope, *ctype;
    int res;
    enum MHD_Result ret;
    dropin d;

    ctype = MHD_lookup_connection_value(c->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE);
    if (ctype && media_type_is(ctype, "application/x-www-form-urlencoded"))
        res = dropin_parse_form(r->body ? r->body : "", r->body_len, &d, &error, &desc);
    else if (!ctype || media_type_is(ctype, "application/json"))
        res = dropin_parse(r->body ? r->body : "", r->body_len, &d, &error, &desc);
    else
        return api_error(c, MHD_HTTP_BAD_REQUEST, "invalid_request",
                         "Content-Type must be application/x-www-form-urlencoded or application/json", NULL);
    if (res == -ENOMEM)
        return MHD_NO;
    if (res < 0)
        return api_error(c, MHD_HTTP_BAD_REQUEST, error, desc, NULL);
    if (!(c->rights & (d.grant == OAUTH_GRANT_USER_ASSERTION ? RIGHT_TOKEN : RIGHT_CLIENT_TOKEN))) {
        dropin_clear(&d);
        return api_error(c, MHD_HTTP_BAD_REQUEST, "unauthorized_client",
                         "this API key lacks the right for this grant", NULL);
    }
    scope = d.scope ? d.scope : d.grant == OAUTH_GRANT_USER_ASSERTION ? c->a->default_scope : "";
    if (!api_key_allows_scope(c, scope))
        ret = api_scope_refused(c, scope);
    else if (d.grant == OAUTH_GRANT_USER_ASSERTION)
        ret = serve_token(c, r, NULL, d.grant, d.user_id, scope, 0);
    else
        ret = serve_token(c, r, NULL, d.grant, "", scope, 0);
    dropin_clear(&d);
    return ret;
}

/* ---- the Recommendations proxy (proxy.c): the token never reaches the browser ---- */

static void proxy_on_done(void *userdata, proxy_answer *answer) {
    struct request *r = userdata;

    r->fwd = *answer; /* the body is the request's now */
    api_request_complete(r);
}

static enum MHD_Result route_proxy(const struct call *c, struct request *r, void **unused) {
    proxy_target t = { .cache = c->a->cache, .up = c->a->up, .shared = c->a->shared,
                       .scope = c->a->default_scope, .min_ttl_ms = c->a->min_ttl_ms };
    const char *why;

    if (!user_from_header(c, r->user, &why))
        return api_error(c, MHD_HTTP_BAD_REQUEST, "invalid_request", why, NULL);
    snprintf(r->path, sizeof(r->path), "%s", c->url); /* checked by request_proxy_path_valid */
    r->kind = REQUEST_PROXY;
    if (proxy_start(&t, r->user, r->path, r->body, r->body_len, proxy_on_done, r, &r->proxy) < 0)
        return MHD_NO;
    return api_suspend_or_answer(r);
}

static enum MHD_Result answer_forwarded(struct request *r) {
    struct MHD_Response *resp;
    char desc[192];
    int status;

    if (!r->fwd.status)
        return api_failure(&r->call, &r->fwd.outcome);
    status = proxy_passable(r->fwd.status, r->fwd.content_type, desc, sizeof(desc));
    if (!status)
        return api_error(&r->call, MHD_HTTP_BAD_GATEWAY, "upstream_unavailable", desc, NULL);
    resp = MHD_create_response_from_buffer_with_free_callback(r->fwd.len, r->fwd.body, free);
    if (!resp)
        return MHD_NO;
    r->fwd.body = NULL; /* the response owns it now */
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, r->fwd.content_type);
    return api_queue(&r->call, (unsigned)status, resp);
}

/* ---- operators ---- */

/* DELETE /v1/token?user_id=U[&scope=S][&revoke=true] */
static enum MHD_Result route_token_delete(const struct call *c, struct request *unused, void **req_cls) {
    struct query_ctx qc = { .allow_user_id = true, .allow_revoke = true };
    char user[OAUTH_USER_ID_MAX + 1], fp[FINGERPRINT_LEN];
    const char *scope;
    struct request *r;
    token *t = NULL;
    int dropped;

    if (!parse_query(c, &qc, user))
        return api_error(c, MHD_HTTP_BAD_REQUEST, "invalid_request", qc.q.error, NULL);
    if (qc.q.has_min_ttl)
        return api_error(c, MHD_HTTP_BAD_REQUEST, "invalid_request", "min_ttl has no meaning when dropping a token",
                         NULL);
    scope = qc.q.scope ? qc.q.scope : c->a->default_scope;
    dropped = cache_drop(c->a->cache, OAUTH_GRANT_USER_ASSERTION, user, scope, qc.revoke ? &t : NULL);
    if (c->a->shared) /* and on every host of the fleet */
        shared_drop(c->a->shared, OAUTH_GRANT_USER_ASSERTION, user, scope, NULL);
    fingerprint(user, strlen(user), fp);
    log_notice("operator dropped the token of user=%s scope=%s%s (%s)", fp, scope,
               qc.revoke ? " with revocation" : "", dropped > 0 ? "was cached" : "none cached");
    if (!t)
        return api_json(c, MHD_HTTP_OK, strdup(dropped > 0 ? "{\"dropped\":true,\"revoked\":false}"
                                                            : "{\"dropped\":false,\"revoked\":false}"));
    r = api_request_new(c, REQUEST_REVOKE, req_cls);
    if (!r) {
        token_unref(t);
        return MHD_NO;
    }
    upstream_revoke(c->a->up, t->value, api_on_done, r);
    token_unref(t);
    return api_suspend_or_answer(r);
}

static enum MHD_Result route_flush(const struct call *c, struct request *unused, void **unused_cls) {
    char body[64];
    size_t n;

    n = cache_flush(c->a->cache);
    if (c->a->shared)
        shared_flush(c->a->shared); /* a new generation: no host reads older tokens */
    log_notice("operator flushed the cache%s: %zu entries dropped here", c->a->shared ? " of the fleet" : "", n);
    snprintf(body, sizeof(body), "{\"dropped\":%zu}", n);
    return api_json(c, MHD_HTTP_OK, strdup(body));
}

static enum MHD_Result route_healthz(const struct call *c, struct request *unused, void **unused_cls) {
    api_count(c->a, c->route, MHD_HTTP_OK);
    return MHD_queue_response(c->conn, MHD_HTTP_OK, c->a->health);
}

static enum MHD_Result route_readyz(const struct call *c, struct request *unused, void **unused_cls) {
    struct upstream_stats us;
    const char *reason = NULL;
    cJSON *j;
    char *body;

    /* Not ready while the breaker is open: for breaker_cooldown after a
     * rejection of the credentials or a run of failures. Then the next mint
     * probes, and readiness follows what it finds. */
    upstream_get_stats(c->a->up, &us);
    if (us.circuit == CIRCUIT_OPEN && us.credentials_rejected)
        reason = "Instacart rejects the client credentials: check client_id and the secret, then reload";
    else if (us.circuit == CIRCUIT_OPEN)
        reason = "Instacart is failing: the circuit breaker is open, new users cannot get tokens";
    else if (c->a->shared) {
        /* a rejection another host saw: the fleet shares the credentials.
         * Redis out of reach is degraded service, not unreadiness. */
        struct shared_stats ss;
        shared_get_stats(c->a->shared, &ss);
        if (ss.fleet_credentials_rejected)
            reason = "Instacart rejected the client credentials on a host of the fleet: check client_id "
                     "and the secret on every host, then reload";
    }
    j = cJSON_CreateObject();
    if (!j)
        return MHD_NO;
    cJSON_AddStringToObject(j, "status", reason ? "not_ready" : "ready");
    if (reason)
        cJSON_AddStringToObject(j, "reason", reason);
    body = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    return api_json(c, reason ? MHD_HTTP_SERVICE_UNAVAILABLE : MHD_HTTP_OK, body);
}

static enum MHD_Result route_metrics(const struct call *c, struct request *unused, void **unused_cls) {
    struct api_stats as;
    struct cache_stats cs;
    struct upstream_stats us;
    struct MHD_Response *resp;
    char *text;
    size_t len;

    api_count(c->a, c->route, MHD_HTTP_OK); /* this scrape counts itself */
    api_get_stats(c->a, &as);
    cache_get_stats(c->a->cache, &cs);
    upstream_get_stats(c->a->up, &us);
    struct shared_stats ss;
    if (c->a->shared)
        shared_get_stats(c->a->shared, &ss);
    if (metrics_render(&as, &cs, &us, c->a->shared ? &ss : NULL, c->a->start_unix, &text, &len) < 0)
        return MHD_NO;
    resp = MHD_create_response_from_buffer_with_free_callback(len, text, free);
    if (!resp) {
        free(text);
        return MHD_NO;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8");
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    {
        enum MHD_Result ret = MHD_queue_response(c->conn, MHD_HTTP_OK, resp);
        MHD_destroy_response(resp);
        return ret;
    }
}

static enum MHD_Result route_status(const struct call *c, struct request *unused, void **unused_cls) {
    static const char *const circuit[] = { "closed", "open", "half_open" };
    struct api_stats as;
    struct cache_stats cs;
    struct upstream_stats us;
    cJSON *j, *o, *cfg = NULL;
    char *body;

    api_get_stats(c->a, &as);
    cache_get_stats(c->a->cache, &cs);
    upstream_get_stats(c->a->up, &us);
    j = cJSON_CreateObject();
    if (!j)
        return MHD_NO;
    cJSON_AddStringToObject(j, "version", TOKEND_VERSION);
    cJSON_AddNumberToObject(j, "started_at", (double)c->a->start_unix);
    cJSON_AddNumberToObject(j, "uptime_seconds", (double)((now_ms() - c->a->start_ms) / 1000));
    pthread_mutex_lock(&c->a->lock);
    if (c->a->config_json)
        cfg = cJSON_Parse(c->a->config_json);
    pthread_mutex_unlock(&c->a->lock);
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
        cJSON_AddNumberToObject(o, "fetching", (double)cs.fetching);
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
    if (c->a->shared) {
        static const char *const breaker_names[] = { "closed", "open", "half_open" };
        struct shared_stats ss;
        shared_get_stats(c->a->shared, &ss);
        o = cJSON_AddObjectToObject(j, "shared");
        if (o) {
            cJSON_AddStringToObject(o, "state", ss.up ? "connected" : "degraded");
            cJSON_AddStringToObject(o, "redis", ss.address);
            cJSON_AddStringToObject(o, "breaker", breaker_names[ss.breaker]);
            cJSON_AddBoolToObject(o, "fleet_paused", ss.fleet_paused);
            cJSON_AddBoolToObject(o, "fleet_credentials_rejected", ss.fleet_credentials_rejected);
            for (int i = 0; i < SHARED_LOOKUP_COUNT; i++) {
                char name[40];
                snprintf(name, sizeof(name), "lookups_%s", shared_lookup_names[i]);
                cJSON_AddNumberToObject(o, name, (double)ss.lookups[i]);
            }
            for (int i = 0; i < SHARED_MINT_COUNT; i++) {
                char name[40];
                snprintf(name, sizeof(name), "mints_%s", shared_mint_names[i]);
                cJSON_AddNumberToObject(o, name, (double)ss.mints[i]);
            }
            cJSON_AddNumberToObject(o, "decrypt_failures", (double)ss.decrypt_failures);
            cJSON_AddNumberToObject(o, "events_applied", (double)ss.events_applied);
        }
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
    return api_json(c, MHD_HTTP_OK, body);
}

/* X-Cache of a token that was not a hit: the caller's own fetch or one it
 * joined; in fleet mode, another host's token, found at once or waited for. */
static const char *x_cache(const struct request *r) {
    if (r->outcome.via == MINT_VIA_SHARED)
        return "shared";
    if (r->outcome.via == MINT_VIA_SHARED_WAIT)
        return "shared-wait";
    return r->how == CACHE_MISS ? "miss" : "coalesced";
}

enum MHD_Result route_answer_done(struct request *r) {
    switch (r->kind) {
    case REQUEST_PROXY:
        return answer_forwarded(r);
    case REQUEST_REVOKE:
        if (r->outcome.kind != MINT_OK)
            return api_failure(&r->call, &r->outcome);
        return api_json(&r->call, MHD_HTTP_OK, strdup("{\"dropped\":true,\"revoked\":true}"));
    case REQUEST_MINT:
    default:
        if (r->tok)
            return api_token(&r->call, r->tok, r->scope, x_cache(r));
        return api_failure(&r->call, &r->outcome);
    }
}

/* ---- the table ---- */

static bool any_url(const char *url) {
    return true;
}

/* One row per route; api.c matches rows in order and dispatches on the
 * method. Rights are what the guard requires of the caller's key; HEAD is
 * listed wherever GET only reads (RFC 9110), never where GET mints. Row
 * order is the order of /metrics. */
#define GET_AND_HEAD(fn, right) \
    { .method = "GET", .handler = fn, .rights = right }, { .method = "HEAD", .handler = fn, .rights = right }

const struct route routes[] = {
    { .name = "/v1/token",
      .methods = { { .method = "GET", .handler = route_token, .rights = RIGHT_TOKEN, .mints = MINTS_DEFAULT_SCOPE },
                   { .method = "DELETE", .handler = route_token_delete, .rights = RIGHT_ADMIN, .local_only = true } } },
    { .name = "/v1/client-token",
      .methods = { { .method = "GET", .handler = route_client_token, .rights = RIGHT_CLIENT_TOKEN,
                     .mints = MINTS_NO_SCOPE } } },
    { .name = "/v1/frontend/token", .flags = ROUTE_FRONTEND,
      .methods = { { .method = "GET", .handler = route_frontend_token, .rights = RIGHT_FRONTEND,
                     .mints = MINTS_DEFAULT_SCOPE },
                   { .method = "OPTIONS", .handler = api_preflight } } },
    /* the grant in the body decides which of the two rights */
    { .name = "/v2/oauth/token", .flags = ROUTE_OAUTH,
      .methods = { { .method = "POST", .handler = route_dropin, .rights = RIGHT_TOKEN | RIGHT_CLIENT_TOKEN,
                     .body = true } } },
    { .name = "/v2/recommendations", .match = request_proxy_path_valid, .flags = ROUTE_FRONTEND,
      .methods = { { .method = "POST", .handler = route_proxy, .rights = RIGHT_PROXY, .body = true },
                   { .method = "OPTIONS", .handler = api_preflight } } },
    { .name = "/healthz", .methods = { GET_AND_HEAD(route_healthz, 0) } },
    { .name = "/readyz", .methods = { GET_AND_HEAD(route_readyz, 0) } },
    { .name = "/metrics", .methods = { GET_AND_HEAD(route_metrics, 0) } },
    { .name = "/v1/status", .methods = { GET_AND_HEAD(route_status, RIGHT_ADMIN) } },
    { .name = "/v1/cache/flush",
      .methods = { { .method = "POST", .handler = route_flush, .rights = RIGHT_ADMIN, .local_only = true } } },
    /* last: everything else, with no method (404) */
    { .name = "other", .match = any_url },
};
_Static_assert(sizeof(routes) / sizeof(routes[0]) == API_ROUTES, "API_ROUTES counts the rows of routes[]");

const char *api_route_name(unsigned route) {
    return route < API_ROUTES ? routes[route].name : "other";
}
