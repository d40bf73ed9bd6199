/* The routes of the HTTP front, in one table (routes[] at the end: a row
 * per route, a handler per method), and what each does once the transport
 * (api.c) has let the caller in: tokens for users (by query, by the
 * proxy's user header, by Instacart's own request body), tokens for the
 * partner's backend, the Recommendations proxy, and the operator's routes.
 * A handler reads the call's facts and returns an answer as a value; it
 * knows nothing of the HTTP library. Not responsible for who may call what
 * (guard.c, applied by api.c) nor for how tokens are made (cache.c,
 * upstream.c). */
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
#include "shared.h"
#include "tokens.h"
#include "util.h"

/* ---- tokens ---- */

static mint_outcome local_failure(const char *why) {
    mint_outcome o = { .kind = MINT_UNAVAILABLE, .retry_after_s = 1 };
    snprintf(o.error, sizeof(o.error), "%s", why);
    return o;
}

static bool is_oauth(const struct call *c) {
    return routes[c->route].flags & ROUTE_OAUTH;
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

static int finish_token(struct request *r, answer *ans) {
    if (r->tok)
        return answer_token(ans, r->tok, r->scope, x_cache(r));
    return answer_failure(ans, &r->outcome, is_oauth(&r->call));
}

/* The cache's callback, from any thread. */
static void on_done(void *userdata, const mint_outcome *o, token *t) {
    struct request *r = userdata;

    r->outcome = *o;
    r->tok = t;
    r->resume(r);
}

/* A token for the key: answered at once on a hit; on a miss, the request
 * asks for state of its own (r), then waits on the mint. The hit path
 * allocates nothing but its answer. */
static int serve_token(const struct call *c, struct request *r, answer *ans, enum oauth_grant grant,
                       const char *user, const char *scope, uint64_t min_ttl_ms) {
    mint_outcome o;
    token *t = NULL;
    int res;

    if (min_ttl_ms < c->a->min_ttl_ms)
        min_ttl_ms = c->a->min_ttl_ms;
    if (!r) {
        res = cache_get(c->a->cache, grant, user, scope, min_ttl_ms, NULL, NULL, &t, &o);
        if (res == -EAGAIN)
            return ROUTE_STATE;
    } else {
        snprintf(r->scope, sizeof(r->scope), "%s", scope);
        r->finish = finish_token;
        res = cache_get(c->a->cache, grant, user, r->scope, min_ttl_ms, on_done, r, &t, &o);
        if (res == CACHE_MISS || res == CACHE_COALESCED) {
            r->how = res;
            return ROUTE_WAIT;
        }
    }
    switch (res) {
    case CACHE_HIT: {
        int ret = answer_token(ans, t, scope, "hit");
        token_unref(t);
        return ret;
    }
    case CACHE_FAILED:
        return answer_failure(ans, &o, is_oauth(c));
    default:
        o = local_failure(res == -EBUSY ? "too_many_waiters" : res == -ENOBUFS ? "cache_full" : "internal_error");
        return answer_failure(ans, &o, is_oauth(c));
    }
}

/* The query, checked; user gets the user id when the route takes one
 * (allow_user_id and user non-NULL). */
static bool parse_query(const struct call *c, token_query *q, bool allow_user_id, bool allow_revoke,
                        bool *revoke, char user[OAUTH_USER_ID_MAX + 1]) {
    size_t n = c->args ? c->args->n : 0;

    if (c->args && c->args->too_many) {
        q->error = "the query has more than 16 parameters";
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        const struct call_arg *a = &c->args->v[i];
        if (allow_revoke && a->key_len == 6 && memcmp(a->key, "revoke", 6) == 0) {
            if (a->value && a->value_len == 4 && memcmp(a->value, "true", 4) == 0)
                *revoke = true;
            else if (!(a->value && a->value_len == 5 && memcmp(a->value, "false", 5) == 0)) {
                q->error = "revoke must be true or false";
                return false;
            }
        } else if (token_query_add(q, a->key, a->key_len, a->value, a->value_len, allow_user_id) < 0)
            return false;
    }
    if (token_query_finish(q, allow_user_id) < 0)
        return false;
    if (allow_user_id && user) {
        memcpy(user, q->user_id, q->user_id_len);
        user[q->user_id_len] = '\0';
    }
    return true;
}

static int route_token(const struct call *c, struct request *r, answer *ans) {
    token_query q = { 0 };
    char user[OAUTH_USER_ID_MAX + 1];

    if (!parse_query(c, &q, true, false, NULL, user))
        return answer_error(ans, 400, "invalid_request", q.error, NULL);
    return serve_token(c, r, ans, OAUTH_GRANT_USER_ASSERTION, user, q.scope ? q.scope : c->a->default_scope,
                       q.min_ttl_ms);
}

/* client_credentials: one token per scope ("" for none) */
static int route_client_token(const struct call *c, struct request *r, answer *ans) {
    token_query q = { 0 };

    if (!parse_query(c, &q, false, false, NULL, NULL))
        return answer_error(ans, 400, "invalid_request", q.error, NULL);
    return serve_token(c, r, ans, OAUTH_GRANT_CLIENT_CREDENTIALS, "", q.scope ? q.scope : "", q.min_ttl_ms);
}

/* The user as the site's proxy names it (the guard checked the proxy's key). */
static bool user_from_header(const struct call *c, char user[OAUTH_USER_ID_MAX + 1], const char **why) {
    const char *v = c->head->user_value;
    size_t len = c->head->user_len;

    if (!c->head->user || !v) {
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

static int route_frontend_token(const struct call *c, struct request *r, answer *ans) {
    token_query q = { 0 };
    char user[OAUTH_USER_ID_MAX + 1];
    const char *why;

    if (!user_from_header(c, user, &why))
        return answer_error(ans, 400, "invalid_request", why, NULL);
    if (!parse_query(c, &q, false, false, NULL, NULL))
        return answer_error(ans, 400, "invalid_request", q.error, NULL);
    return serve_token(c, r, ans, OAUTH_GRANT_USER_ASSERTION, user, q.scope ? q.scope : c->a->default_scope,
                       q.min_ttl_ms);
}

/* Whether a Content-Type names type (parameters such as charset aside). */
static bool media_type_is(const char *value, const char *type) {
    size_t n = strlen(type);

    return strncasecmp(value, type, n) == 0 && (value[n] == '\0' || value[n] == ';' || value[n] == ' ');
}

/* POST /v2/oauth/token with Instacart's own body, minus the credentials */
static int route_dropin(const struct call *c, struct request *r, answer *ans) {
    const char *error, *desc, *scope, *ctype = c->head->content_type;
    char text[GUARD_DESC_MAX];
    int res;
    dropin d;

    if (ctype && media_type_is(ctype, "application/x-www-form-urlencoded"))
        res = dropin_parse_form(r->body ? r->body : "", r->body_len, &d, &error, &desc);
    else if (!ctype || media_type_is(ctype, "application/json"))
        res = dropin_parse(r->body ? r->body : "", r->body_len, &d, &error, &desc);
    else
        return answer_error(ans, 400, "invalid_request",
                            "Content-Type must be application/x-www-form-urlencoded or application/json", NULL);
    if (res == -ENOMEM)
        return res;
    if (res < 0)
        return answer_error(ans, 400, error, desc, NULL);
    if (!(c->rights & (d.grant == OAUTH_GRANT_USER_ASSERTION ? RIGHT_TOKEN : RIGHT_CLIENT_TOKEN))) {
        dropin_clear(&d);
        return answer_error(ans, 400, "unauthorized_client", "this API key lacks the right for this grant", NULL);
    }
    scope = d.scope ? d.scope : d.grant == OAUTH_GRANT_USER_ASSERTION ? c->a->default_scope : "";
    if (!c->scope_allowed(c, scope)) {
        guard_scope_text(text, sizeof(text), scope);
        res = answer_error(ans, 400, "invalid_scope", text, NULL);
    } else
        res = serve_token(c, r, ans, d.grant, d.grant == OAUTH_GRANT_USER_ASSERTION ? d.user_id : "", scope, 0);
    dropin_clear(&d);
    return res;
}

/* ---- the Recommendations proxy (proxy.c): the token never reaches the browser ---- */

static void proxy_on_done(void *userdata, proxy_answer *fwd) {
    struct request *r = userdata;

    r->fwd = *fwd; /* the body is the request's now */
    r->resume(r);
}

static int finish_proxy(struct request *r, answer *ans) {
    char desc[192];
    int status;

    if (!r->fwd.status)
        return answer_failure(ans, &r->fwd.outcome, false);
    status = proxy_passable(r->fwd.status, r->fwd.content_type, desc, sizeof(desc));
    if (!status)
        return answer_error(ans, 502, "upstream_unavailable", desc, NULL);
    *ans = (answer){ .status = (unsigned)status, .body = r->fwd.body, .len = r->fwd.len, .free_body = free,
                     .content_type = r->fwd.content_type };
    r->fwd.body = NULL; /* the answer owns it now */
    return 0;
}

static int route_proxy(const struct call *c, struct request *r, answer *ans) {
    proxy_target t = { .cache = c->a->cache, .up = c->a->up, .shared = c->a->shared,
                       .scope = c->a->default_scope, .min_ttl_ms = c->a->min_ttl_ms };
    const char *why;
    int res;

    if (!user_from_header(c, r->user, &why))
        return answer_error(ans, 400, "invalid_request", why, NULL);
    snprintf(r->path, sizeof(r->path), "%s", c->url); /* checked by request_proxy_path_valid */
    r->finish = finish_proxy;
    res = proxy_start(&t, r->user, r->path, r->body, r->body_len, proxy_on_done, r, &r->proxy);
    return res < 0 ? res : ROUTE_WAIT;
}

/* A CORS preflight: the transport adds the methods of the route. */
static int route_preflight(const struct call *c, struct request *r, answer *ans) {
    *ans = (answer){ .status = 204, .preflight = true };
    return 0;
}

/* ---- operators ---- */

/* A fleet's drop, a revocation's drop or a flush that Redis has not made
 * durable yet (see on_acked): done here, kept and sent again. */
static int answer_not_durable(answer *ans, const char *error, const char *what) {
    mint_outcome later = { .retry_after_s = 1 };
    char desc[320];

    snprintf(desc, sizeof(desc),
             "%s on this host, but Redis has not taken it yet (out of reach, refusing, or no replica "
             "confirmed it): other hosts may serve the tokens it drops until it does. tokend keeps "
             "sending it; repeat the request to be told when it is done",
             what);
    return answer_error(ans, 503, error, desc, &later);
}

/* DELETE /v1/token?user_id=U[&scope=S][&revoke=true]
 *
 * A revocation revokes every token the fleet holds for the key, this
 * host's and the shared one alike (the load balancer picks the host). One
 * Instacart or Redis cannot take now is not forgotten: the answer is a 503
 * that says so, and the revocations module tries again until Instacart
 * takes it or the token expires. */
static int finish_revoke(struct request *r, answer *ans) {
    const struct revoke_outcome *o = &r->revoked;
    char desc[320];

    if (o->pending && strcmp(o->failure.error, "server_changed") == 0) {
        snprintf(desc, sizeof(desc),
                 "%u token%s of this user belong%s to the Instacart server or client id this host used before "
                 "its last reload, and are never sent to the new one: revoke the user on a host still using "
                 "the old one; %u revoked now",
                 o->pending, o->pending == 1 ? "" : "s", o->pending == 1 ? "s" : "", o->revoked);
        return answer_error(ans, 503, "revocation_pending", desc, NULL);
    }
    if (o->pending) {
        snprintf(desc, sizeof(desc),
                 "%u token%s of this user could not be revoked now (%s): tokend keeps trying until Instacart "
                 "takes %s or %s; %u revoked now",
                 o->pending, o->pending == 1 ? "" : "s",
                 strcmp(o->failure.error, "shared_unavailable") == 0 ? "Redis is out of reach" :
                 o->failure.error[0] ? o->failure.error : "Instacart did not answer",
                 o->pending == 1 ? "it" : "them", o->pending == 1 ? "it expires" : "they expire", o->revoked);
        return answer_error(ans, 503, "revocation_pending", desc, o->failure.http_status ? &o->failure : NULL);
    }
    if (o->unconfirmed)
        return answer_not_durable(ans, "drop_pending",
                                  o->revoked ? "Revoked at Instacart and dropped" : "Nothing was left to revoke; dropped");
    return answer_static(ans, 200, r->dropped_here || o->revoked ? "{\"dropped\":true,\"revoked\":true}"
                                                                 : "{\"dropped\":false,\"revoked\":false}");
}

static void on_revoked(void *userdata, const struct revoke_outcome *o) {
    struct request *r = userdata;

    r->revoked = *o;
    r->resume(r);
}

/* In fleet mode a drop or a flush is answered 200 only once it will
 * survive a failover (Redis took it; with Sentinel, a replica too): until
 * then other hosts may still serve what it drops. One Redis cannot take now
 * is kept and sent again until it does; the caller is told so, with a 503. */
static void on_acked(void *userdata, bool durable) {
    struct request *r = userdata;

    r->durable = durable;
    r->resume(r);
}

static int finish_drop(struct request *r, answer *ans) {
    if (!r->durable)
        return answer_not_durable(ans, "drop_pending", r->dropped_here ? "The token was dropped" : "No token was cached");
    return answer_static(ans, 200, r->dropped_here ? "{\"dropped\":true,\"revoked\":false}"
                                                   : "{\"dropped\":false,\"revoked\":false}");
}

static int finish_flush(struct request *r, answer *ans) {
    char body[64];

    if (!r->durable)
        return answer_not_durable(ans, "flush_pending", "The cache was flushed");
    snprintf(body, sizeof(body), "{\"dropped\":%zu}", r->flushed);
    return answer_json(ans, 200, strdup(body));
}

/* A revocation waits on Instacart (and Redis): it asks for state first. */
static int route_token_delete(const struct call *c, struct request *r, answer *ans) {
    token_query q = { 0 };
    bool revoke = false;
    char user[OAUTH_USER_ID_MAX + 1], fp[FINGERPRINT_LEN];
    const char *scope;
    struct tokens tk = { .cache = c->a->cache, .shared = c->a->shared, .rv = c->a->rv };
    bool here = false;

    if (!parse_query(c, &q, true, true, &revoke, user))
        return answer_error(ans, 400, "invalid_request", q.error, NULL);
    if (q.has_min_ttl)
        return answer_error(ans, 400, "invalid_request", "min_ttl has no meaning when dropping a token", NULL);
    scope = q.scope ? q.scope : c->a->default_scope;
    if ((revoke || c->a->shared) && !r)
        return ROUTE_STATE;
    fingerprint(user, strlen(user), fp);
    if (!revoke) {
        bool fleet = c->a->shared != NULL;

        if (fleet)
            r->finish = finish_drop;
        /* with a fleet, r may be answered before this returns: nothing of it is touched after */
        here = tokens_drop(&tk, OAUTH_GRANT_USER_ASSERTION, user, scope, NULL, fleet ? on_acked : NULL, r,
                           fleet ? &r->dropped_here : NULL) > 0;
        log_notice("operator dropped the token of user=%s scope=%s (%s)", fp, scope,
                   here ? "was cached" : "none cached");
        if (fleet)
            return ROUTE_WAIT;
        return answer_static(ans, 200, here ? "{\"dropped\":true,\"revoked\":false}"
                                            : "{\"dropped\":false,\"revoked\":false}");
    }
    log_notice("operator dropped the token of user=%s scope=%s with revocation", fp, scope);
    r->finish = finish_revoke;
    /* r may be answered before this returns: nothing of it is touched after */
    tokens_revoke(&tk, OAUTH_GRANT_USER_ASSERTION, user, scope, on_revoked, r, &r->dropped_here);
    return ROUTE_WAIT;
}

static int route_flush(const struct call *c, struct request *r, answer *ans) {
    struct tokens tk = { .cache = c->a->cache, .shared = c->a->shared, .rv = c->a->rv };
    bool fleet = c->a->shared != NULL;
    char body[64];
    size_t n;

    if (fleet && !r)
        return ROUTE_STATE;
    if (fleet)
        r->finish = finish_flush;
    /* in fleet mode a new generation: no host reads older tokens; r may be
     * answered before this returns, nothing of it is touched after */
    n = tokens_flush(&tk, fleet ? on_acked : NULL, r, fleet ? &r->flushed : NULL);
    log_notice("operator flushed the cache%s: %zu entries dropped here", fleet ? " of the fleet" : "", n);
    if (fleet)
        return ROUTE_WAIT;
    snprintf(body, sizeof(body), "{\"dropped\":%zu}", n);
    return answer_json(ans, 200, strdup(body));
}

static int route_healthz(const struct call *c, struct request *r, answer *ans) {
    return answer_static(ans, 200, "{\"status\":\"ok\"}");
}

static int route_readyz(const struct call *c, struct request *r, answer *ans) {
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
        return -ENOMEM;
    cJSON_AddStringToObject(j, "status", reason ? "not_ready" : "ready");
    if (reason)
        cJSON_AddStringToObject(j, "reason", reason);
    body = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    return answer_json(ans, reason ? 503 : 200, body);
}

static int route_metrics(const struct call *c, struct request *r, answer *ans) {
    struct api_stats as;
    struct cache_stats cs;
    struct upstream_stats us;
    struct revoke_stats rs;
    struct shared_stats ss;
    char *text;
    size_t len;

    c->a->get_stats(c->a->owner, &as);
    /* this scrape counts itself: the transport counts it once answered */
    as.by_route[c->route][200 - API_STATUS_FIRST]++;
    as.requests++;
    as.ok++;
    cache_get_stats(c->a->cache, &cs);
    upstream_get_stats(c->a->up, &us);
    revocations_get_stats(c->a->rv, &rs);
    if (c->a->shared)
        shared_get_stats(c->a->shared, &ss);
    if (metrics_render(&as, &cs, &us, &rs, c->a->shared ? &ss : NULL, c->a->start_unix, &text, &len) < 0)
        return -ENOMEM;
    *ans = (answer){ .status = 200, .body = text, .len = len, .free_body = free,
                     .content_type = "text/plain; version=0.0.4; charset=utf-8" };
    return 0;
}

static int route_status(const struct call *c, struct request *r, answer *ans) {
    struct api_stats as;
    struct cache_stats cs;
    struct upstream_stats us;
    cJSON *j, *o, *cfg = NULL;
    char *body, *text;

    c->a->get_stats(c->a->owner, &as);
    cache_get_stats(c->a->cache, &cs);
    upstream_get_stats(c->a->up, &us);
    j = cJSON_CreateObject();
    if (!j)
        return -ENOMEM;
    cJSON_AddStringToObject(j, "version", TOKEND_VERSION);
    cJSON_AddNumberToObject(j, "started_at", (double)c->a->start_unix);
    cJSON_AddNumberToObject(j, "uptime_seconds", (double)((now_ms() - c->a->start_ms) / 1000));
    text = c->a->config_json(c->a->owner);
    if (text)
        cfg = cJSON_Parse(text);
    free(text);
    if (cfg)
        cJSON_AddItemToObject(j, "config", cfg);
    /* what is really served: under socket activation, systemd's sockets */
    o = cJSON_AddArrayToObject(j, "listening");
    for (const char *p = c->a->listening; o && *p; p += strspn(p, " ")) {
        size_t len = strcspn(p, " ");
        char *word = strndup(p, len);
        if (word)
            cJSON_AddItemToArray(o, cJSON_CreateString(word));
        free(word);
        p += len;
    }
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
        cJSON_AddStringToObject(o, "circuit", breaker_state_names[us.circuit]);
        cJSON_AddBoolToObject(o, "credentials_rejected", us.credentials_rejected);
        cJSON_AddBoolToObject(o, "rate_limited", us.rate_limited);
        cJSON_AddNumberToObject(o, "requests", (double)us.requests);
        cJSON_AddNumberToObject(o, "retries", (double)us.retries);
        cJSON_AddNumberToObject(o, "mints_ok", (double)us.mints_ok);
        cJSON_AddNumberToObject(o, "mints_rejected", (double)us.mints_rejected);
        cJSON_AddNumberToObject(o, "mints_failed", (double)us.mints_failed);
        cJSON_AddNumberToObject(o, "mints_timed_out", (double)us.mints_timeout);
        cJSON_AddNumberToObject(o, "in_flight", us.in_flight);
        cJSON_AddNumberToObject(o, "queued", us.queued);
        cJSON_AddNumberToObject(o, "revocations_ok", (double)us.revocations_ok);
        cJSON_AddNumberToObject(o, "revocations_failed", (double)us.revocations_failed);
    }
    if (c->a->shared) {
        struct shared_stats ss;
        shared_get_stats(c->a->shared, &ss);
        o = cJSON_AddObjectToObject(j, "shared");
        if (o) {
            cJSON_AddStringToObject(o, "state", ss.up ? "connected" : "degraded");
            cJSON_AddStringToObject(o, "redis", ss.address);
            cJSON_AddStringToObject(o, "breaker", breaker_state_names[ss.breaker]);
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
            cJSON_AddNumberToObject(o, "forged_flags", (double)ss.forged_flags);
            cJSON_AddNumberToObject(o, "foreign_flushes", (double)ss.foreign_flushes);
            for (int i = 0; i < SHARED_OUTAGE_COUNT; i++) {
                char name[40];
                snprintf(name, sizeof(name), "outage_tokens_%s", shared_outage_names[i]);
                cJSON_AddNumberToObject(o, name, (double)ss.outage_tokens[i]);
            }
            cJSON_AddNumberToObject(o, "stale_refused", (double)ss.stale_refused);
            cJSON_AddNumberToObject(o, "stream_resets", (double)ss.stream_resets);
            cJSON_AddNumberToObject(o, "refusals", (double)ss.refusals);
            cJSON_AddStringToObject(o, "last_refusal", ss.last_refusal);
            cJSON_AddBoolToObject(o, "events", ss.events_ok);
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
    return answer_json(ans, 200, body);
}

/* ---- the table ---- */

const char *route_allow(unsigned route, char *buf, size_t size) {
    size_t pos = 0;

    buf[0] = '\0';
    for (const struct route_method *m = routes[route].methods; m < routes[route].methods + ROUTE_METHODS_MAX && m->method;
         m++)
        pos += (size_t)snprintf(buf + pos, pos < size ? size - pos : 0, "%s%s", pos ? ", " : "", m->method);
    return buf;
}

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
                   { .method = "OPTIONS", .handler = route_preflight } } },
    /* the grant in the body decides which of the two rights */
    { .name = "/v2/oauth/token", .flags = ROUTE_OAUTH,
      .methods = { { .method = "POST", .handler = route_dropin, .rights = RIGHT_TOKEN | RIGHT_CLIENT_TOKEN,
                     .body = true } } },
    { .name = "/v2/recommendations", .match = request_proxy_path_valid, .flags = ROUTE_FRONTEND,
      .methods = { { .method = "POST", .handler = route_proxy, .rights = RIGHT_PROXY, .body = true },
                   { .method = "OPTIONS", .handler = route_preflight } } },
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
