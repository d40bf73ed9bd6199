/* The HTTP front, on libmicrohttpd. Responsible for: serving the listening
 * sockets (TCP and Unix; listen.c binds them), strict HTTP (a request read
 * one way only), gathering the facts the guard (guard.c) decides who may
 * call what from (Host, Origin, forwarding headers, peer credentials, API
 * keys, found in auth.c's store) and applying its verdict, dispatching to
 * the routes (routes.c) through their table and sending the answers they
 * return (answer.h), counting them (metrics.h), and suspending a
 * connection while it waits on the network so no server thread ever does.
 * Not responsible for how tokens are made or kept.
 *
 * libmicrohttpd calls the handler at least twice per request. We answer on
 * the second call, never the first: a response queued on the first call is
 * sent with "Connection: close", which costs callers a connection per
 * request (0.9.75 on Debian 12 and 1.0.1 on Debian 13 alike;
 * tests/unit/test-libmicrohttpd.c shows it on the library the build found). */
#include "api.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <microhttpd.h>

#include "address.h"
#include "api-internal.h"
#include "config.h"
#include "log.h"
#include "metrics.h"
#include "util.h"

struct api {
    struct listener listeners[CONFIG_LISTEN_MAX];
    size_t n_listeners;
    char listening[512];
    struct route_context ctx; /* what the routes see of it */
    auth_store *keys; /* the API keys in force */
    char default_scope[OAUTH_SCOPE_MAX + 1];
    char user_header[64];
    head_rules head_rules;
    size_t max_body;
    guard_policy *policy; /* who may call what: [server]'s lists, copied */

    struct http_counts counts; /* metrics.h: atomics, no lock */

    pthread_mutex_t lock; /* orders suspend against resume; guards below */
    unsigned waiting;
    unsigned active;  /* requests with state of their own, not yet completed */
    char *config_json;
};

/* What *req_cls points to between the handler's calls, until a request
 * needs state of its own: the route, and whether a body was seen. */
enum { MARK_BODY = 1, MARK_FLAGS = 2 };
static char markers[API_ROUTES][MARK_FLAGS];

static bool is_marker(const void *p) {
    return p >= (void *)markers && p < (void *)(markers + API_ROUTES);
}

static unsigned marker_flags(const void *p) {
    return (unsigned)(((const char *)p - &markers[0][0]) % MARK_FLAGS);
}

static unsigned marker_route(const void *p) {
    return (unsigned)(((const char *)p - &markers[0][0]) / MARK_FLAGS);
}

/* The row of routes[] for a URL: the last row matches everything. */
static unsigned route_of(const char *url) {
    unsigned r;

    for (r = 0; r < API_ROUTES - 1; r++)
        if (routes[r].match ? routes[r].match(url) : strcmp(url, routes[r].name) == 0)
            break;
    return r;
}

/* The row's entry for the method, or NULL. */
static const struct route_method *route_method(unsigned route, const char *method) {
    for (const struct route_method *m = routes[route].methods; m < routes[route].methods + ROUTE_METHODS_MAX && m->method;
         m++)
        if (strcmp(m->method, method) == 0)
            return m;
    return NULL;
}

/* ---- answers ---- */

/* The route's answer (or a refusal), sent: what every answer carries is
 * added here. The body is the response's from here on, even on failure. */
static enum MHD_Result respond(const struct call *c, answer *ans) {
    struct MHD_Response *resp;
    enum MHD_Result r;
    char num[16], allow[64];

    if (!ans->body)
        resp = MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT);
    else if (!ans->free_body)
        resp = MHD_create_response_from_buffer(ans->len, ans->body, MHD_RESPMEM_PERSISTENT);
    else
        resp = MHD_create_response_from_buffer_with_free_callback(ans->len, ans->body, ans->free_body);
    if (!resp) {
        answer_clear(ans);
        return MHD_NO;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE,
                            ans->content_type ? ans->content_type : "application/json");
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    if (ans->x_cache)
        MHD_add_response_header(resp, "X-Cache", ans->x_cache);
    switch (ans->refusal ? ans->status : 0) {
    case MHD_HTTP_METHOD_NOT_ALLOWED:
        MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, route_allow(c->route, allow, sizeof(allow)));
        break;
    case MHD_HTTP_UNAUTHORIZED:
        MHD_add_response_header(resp, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer realm=\"instacart-tokend\"");
        break;
    case MHD_HTTP_SERVICE_UNAVAILABLE:
        snprintf(num, sizeof(num), "%u", ans->retry_after_s ? ans->retry_after_s : 1);
        MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, num);
        break;
    }
    if (ans->preflight) {
        MHD_add_response_header(resp, MHD_HTTP_HEADER_ACCESS_CONTROL_ALLOW_METHODS,
                                route_allow(c->route, allow, sizeof(allow)));
        MHD_add_response_header(resp, "Access-Control-Allow-Headers", "Authorization, Content-Type");
        MHD_add_response_header(resp, "Access-Control-Max-Age", "600");
    }
    /* what a browser reads (the frontend routes, through the site's own
     * origin) is never taken for anything but its type; the backend
     * routes' answers go to programs, and the hit path pays ~760
     * instructions a header */
    if (routes[c->route].flags & ROUTE_FRONTEND)
        MHD_add_response_header(resp, "X-Content-Type-Options", "nosniff");
    if (c->cors) {
        /* the exact origin, never "*": a signed-in page sends its cookie */
        MHD_add_response_header(resp, MHD_HTTP_HEADER_ACCESS_CONTROL_ALLOW_ORIGIN, c->cors);
        MHD_add_response_header(resp, "Access-Control-Allow-Credentials", "true");
        MHD_add_response_header(resp, MHD_HTTP_HEADER_VARY, "Origin");
    }
    r = MHD_queue_response(c->conn, ans->status, resp);
    MHD_destroy_response(resp);
    metrics_count(&c->api->counts, c->route, ans->status);
    return r;
}

static enum MHD_Result refuse(const struct call *c, unsigned status, const char *error, const char *description) {
    answer ans;

    if (answer_error(&ans, status, error, description, NULL) < 0)
        return MHD_NO;
    return respond(c, &ans);
}

/* What each connection keeps: its Unix-socket peer, the current request's
 * head (head.c; its strings are libmicrohttpd's, valid as long as the
 * request). */
struct conn_state {
    int wake; /* the eventfd of the thread that polls this connection (listen.c) */
    guard_peer peer;
    bool has_peer;
    head head;
    /* the guard's verdict on the current request, once judged */
    bool judged, keyed;
    guard_verdict verdict;
    /* libmicrohttpd before 1.0: where the request target starts, and where
     * it ends as a C string */
    bool target_seen;
    const char *target_start, *target_end;
    bool path_nul; /* the request's path holds a %00 */
};

/* ---- waiting on the network ---- */

/* The request's resume(): marks it done and, if suspended, resumes it; the
 * server thread then answers it through its finish(). */
static void request_resume(struct request *r) {
    api *a = r->call.api;

    pthread_mutex_lock(&a->lock);
    r->done = true;
    if (r->suspended) {
        int wake = r->call.state->wake;
        r->suspended = false;
        a->waiting--;
        /* r may be answered and freed by the server thread from here on */
        MHD_resume_connection(r->call.conn);
        listen_wake(wake); /* libmicrohttpd tells no thread of ours */
    }
    pthread_mutex_unlock(&a->lock);
}

static struct request *request_new(const struct call *c, void **req_cls) {
    struct request *r = calloc(1, sizeof(*r));

    if (!r)
        return NULL;
    r->call = *c;
    if (c->cors) {
        snprintf(r->cors, sizeof(r->cors), "%s", c->cors);
        r->call.cors = r->cors;
    }
    r->resume = request_resume;
    *req_cls = r; /* freed when the request completes */
    pthread_mutex_lock(&c->api->lock);
    c->api->active++;
    pthread_mutex_unlock(&c->api->lock);
    return r;
}

static enum MHD_Result answer_finished(struct request *r) {
    answer ans = { 0 };

    r->call.args = NULL; /* the handler's call they belonged to is over */
    if (r->finish(r, &ans) < 0)
        return MHD_NO;
    return respond(&r->call, &ans);
}

/* Suspends until the request's resume(), or answers at once if it is done
 * already. Under the lock, so a resume can never come before the suspend. */
static enum MHD_Result wait_or_answer(struct request *r) {
    api *a = r->call.api;
    bool finished;

    pthread_mutex_lock(&a->lock);
    finished = r->done;
    if (!finished) {
        r->suspended = true;
        a->waiting++;
        MHD_suspend_connection(r->call.conn);
    }
    pthread_mutex_unlock(&a->lock);
    return finished ? answer_finished(r) : MHD_YES;
}

/* Calls the route: r is the request's own state, or NULL until the route
 * asks for some (then it is made, and the route called again). */
static enum MHD_Result dispatch(const struct call *c, struct request *r, void **req_cls) {
    answer ans = { 0 };
    int step = c->m->handler(c, r, &ans);

    if (step == ROUTE_STATE && !r) {
        r = request_new(c, req_cls);
        if (!r)
            return MHD_NO;
        step = c->m->handler(&r->call, r, &ans);
    }
    switch (step) {
    case ROUTE_ANSWER:
        return respond(r ? &r->call : c, &ans);
    case ROUTE_WAIT:
        return r ? wait_or_answer(r) : MHD_NO;
    default: /* out of memory, or a route that asked for state twice */
        return MHD_NO;
    }
}

/* ---- strict HTTP: the header block, read once on the handler's first call ---- */

/* The most request line and headers the handler takes: libmicrohttpd keeps
 * them in the connection's memory (6 KiB, start_listener), and with more
 * than about 5.6 KiB in there it has no room left to build the answer's
 * headers: the connection was closed without one (after a mint, on a
 * miss). Past about 5.9 KiB libmicrohttpd answers 431 itself. Between the
 * two, tokend answers 431 on the first call. */
#define HEAD_MAX 5120


/* Called with each request's target as it was sent, before libmicrohttpd
 * decodes it. A %00 in the path decodes to a NUL that the handler's C
 * string stops at: /v1/cache/flush%00/anything would be /v1/cache/flush.
 * Such a path is no route's, exactly, and is refused.
 *
 * libmicrohttpd 0.9.75 also hands the request line over as C strings: a
 * raw NUL cuts the query short (user_id=a<NUL>b was served as user "a") or
 * the method ("GET<NUL>X" was served as GET), and no option of its refuses
 * it. The line stays in its read buffer, split in place: the method, a NUL
 * where the first space was, maybe more spaces, the target, a NUL where the
 * last space was, the version. This callback sees the target once the
 * version has been split off, before the query is. The line held no NUL of
 * its own if the version the handler is given starts right after the
 * target's end, and only spaces lie between the method's end and the
 * target. 1.0 drops such requests itself (tests/unit/test-libmicrohttpd.c). */
static void *on_target(void *cls, const char *uri, struct MHD_Connection *conn) {
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    struct conn_state *st = ci ? ci->socket_context : NULL;

    if (st) {
        st->path_nul = uri && request_path_has_nul(uri);
#if MHD_VERSION < 0x01000000
        st->target_seen = true;
        st->target_start = uri;
        st->target_end = uri ? uri + strlen(uri) : NULL;
#endif
    }
    return NULL; /* the handler's *req_cls starts NULL, as without this callback */
}

/* Whether the request line was read whole: see on_target. */
static bool line_whole(struct conn_state *st, const char *method, const char *version) {
    bool whole = !st->target_seen || (st->target_end && version == st->target_end + 1);

    /* from the method's end (at most the first space) to the target */
    for (const char *p = method + strlen(method) + 1; whole && st->target_seen && p < st->target_start; p++)
        whole = *p == ' ';
    st->target_seen = false;
    return whole;
}

struct head_scan {
    head *h;
    const head_rules *rules;
};

static enum MHD_Result scan_header(void *cls, enum MHD_ValueKind kind, const char *key, size_t key_size,
                                   const char *value, size_t value_size) {
    struct head_scan *s = cls;

    return head_add(s->h, s->rules, key, key_size, value ? value : "", value ? value_size : 0) ? MHD_YES : MHD_NO;
}

static enum MHD_Result count_arg(void *cls, enum MHD_ValueKind kind, const char *key, size_t key_size,
                                 const char *value, size_t value_size) {
    *(size_t *)cls += key_size + value_size + 2;
    return MHD_YES;
}

/* The header block, checked; 0, or the status to refuse it with (s->bad says why). */
static unsigned scan_head(api *a, struct MHD_Connection *conn, const char *url, head *h) {
    struct head_scan s = { .h = h, .rules = &a->head_rules };
    size_t line;

    *h = (head){ 0 };
    MHD_get_connection_values_n(conn, MHD_HEADER_KIND, scan_header, &s);
    if (h->bad || !head_finish(h))
        return MHD_HTTP_BAD_REQUEST;
    line = strlen(url) + 32;
    if (h->bytes + line > HEAD_MAX - 1024) /* the query too, only when it could matter */
        MHD_get_connection_values_n(conn, MHD_GET_ARGUMENT_KIND, count_arg, &line);
    if (h->bytes + line > HEAD_MAX) {
        h->bad = "the request line and headers are larger than 5 KiB";
        return MHD_HTTP_REQUEST_HEADER_FIELDS_TOO_LARGE;
    }
    return 0;
}

static bool peer_is_local(const struct call *c) {
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c->conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);

    /* libmicrohttpd keeps the peer's address in a sockaddr_storage */
    return ci && address_is_loopback(ci->client_addr, sizeof(struct sockaddr_storage));
}

/* The scope a GET token route will mint, for the key's scope check; NULL
 * for routes that mint nothing a caller chooses. A repeated or bad scope is
 * refused later by the route's own query check. */
static const char *requested_scope(const struct call *c, const char *method) {
    if (!c->m || c->m->mints == MINTS_NOTHING)
        return NULL;
    for (size_t i = 0; c->args && i < c->args->n; i++)
        if (c->args->v[i].key_len == 5 && memcmp(c->args->v[i].key, "scope", 5) == 0 && c->args->v[i].value)
            return c->args->v[i].value;
    return c->m->mints == MINTS_NO_SCOPE ? "" : c->api->default_scope;
}

/* The caller's key, looked up in the keys in force (auth.c; a reload may
 * swap them): its rights (-1: no key of ours), whether a keys file is in
 * force, and whether the key may ask for scope. scope NULL: the one a GET
 * token route will mint (requested_scope), found only when a key is
 * presented, so a request without one pays nothing for it. */
static int key_rights(const struct call *c, const char *method, const char *scope, bool *ret_keyed,
                      bool *ret_scope_ok) {
    api *a = c->api;
    bool frontend = routes[c->route].flags & ROUTE_FRONTEND;
    char basic[1024];
    size_t len = 0, raw_len = 0;
    const char *raw, *key = request_api_key(c->head->authorization, routes[c->route].flags & ROUTE_OAUTH, basic,
                                            sizeof(basic), &len, &raw, &raw_len);
    int rights;

    if (!key && raw)
        key = raw, len = raw_len, raw = NULL;
    if (key && !scope)
        scope = requested_scope(c, method);
    rights = auth_store_check(a->keys, key, len, scope, a->default_scope, frontend, ret_keyed, ret_scope_ok);
    if (rights < 0 && raw && (raw_len != len || memcmp(raw, key, len) != 0)) /* Basic, sent unencoded */
        rights = auth_store_check(a->keys, raw, raw_len, scope, a->default_scope, frontend, ret_keyed, ret_scope_ok);
    if (c->head->authorization && key != c->head->authorization + 7) /* not Bearer: maybe decoded into basic[] */
        explicit_bzero(basic, sizeof(basic));
    return rights;
}

static bool scope_allowed(const struct call *c, const char *scope) {
    bool keyed, ok;
    int rights = key_rights(c, NULL, scope, &keyed, &ok);

    /* found again: a reload may have swapped the keys since the guard */
    return !keyed || (rights >= 0 && ok);
}

/* Who may call what (guard.c), from the facts read off the request here:
 * judged once per request, and the verdict kept with the connection for
 * the handler's later calls. Answers nothing, so a request refused before
 * its body arrives is answered (and counted) once, when the body is in.
 * Returns the verdict (status 0: let in), with c->rights, c->keyed and
 * c->cors set. */
static const guard_verdict *judge(struct call *c, const char *method) {
    struct conn_state *st = c->state;

    if (!st->judged) {
        guard_request q = {
            .method = method,
            .http11 = c->http11,
            .host = st->head.host,
            .origin = st->head.origin,
            .sec_fetch_site = st->head.site,
            .relayed = st->head.relayed,
            .user_header = st->head.user,
            .peer = st->has_peer ? &st->peer : NULL,
            .needed = c->m ? c->m->rights : 0,
            .frontend = routes[c->route].flags & ROUTE_FRONTEND,
            .oauth = routes[c->route].flags & ROUTE_OAUTH,
        };
        q.rights = key_rights(c, method, NULL, &q.keyed, &q.scope_ok);
        if (!q.scope_ok)
            q.scope = requested_scope(c, method);
        st->keyed = q.keyed;
        guard_check(c->api->policy, &q, &st->verdict);
        st->judged = true;
    }
    c->keyed = st->keyed;
    c->cors = st->verdict.cors;
    if (!st->verdict.status)
        c->rights = st->verdict.rights;
    return &st->verdict;
}

static enum MHD_Result answer_verdict(const struct call *c, const guard_verdict *v) {
    return refuse(c, v->status, v->error, v->description);
}

static enum MHD_Result guard(struct call *c, const char *method, bool *refused) {
    const guard_verdict *v = judge(c, method);

    *refused = v->status != 0;
    return *refused ? answer_verdict(c, v) : MHD_YES;
}

/* ---- the handler ---- */

static enum MHD_Result take_body(struct request *r, const char *data, size_t *size) {
    size_t max = r->call.api->max_body;

    if (r->too_big || r->body_len + *size > max) {
        /* keep draining, keep nothing: refused once it is all in */
        r->too_big = true;
        r->body = wipe_free(r->body, r->body_len);
        r->body_len = 0;
    } else if (request_body_append(&r->body, &r->body_len, data, *size) < 0)
        return MHD_NO;
    *size = 0;
    return MHD_YES;
}

static enum MHD_Result too_large(const struct call *c) {
    char desc[96];

    snprintf(desc, sizeof(desc), "the request body is larger than %zu bytes", c->api->max_body);
    return refuse(c, MHD_HTTP_CONTENT_TOO_LARGE, "request_too_large", desc);
}

static enum MHD_Result body_complete(struct request *r, const char *url, void **req_cls) {
    r->uploading = false;
    if (r->refused) /* refused before the body; answered now that it has been read */
        return answer_verdict(&r->call, &r->verdict);
    if (r->too_big)
        return too_large(&r->call);
    r->call.url = url;
    return dispatch(&r->call, r, req_cls);
}

/* The handler's first call: the headers are in, the body (if any) is not.
 * Answered here, which closes the connection (libmicrohttpd reads no more
 * of a POST it has an answer for): a request tokend cannot read one way
 * only, and, when the client waits for "100 Continue" before sending its
 * body, one that will be refused anyway, so the body is never sent. */
static enum MHD_Result first_call(struct call *c, const char *url, const char *method, const char *version,
                                  void **req_cls) {
    unsigned status;
    uint64_t declared;

    c->route = route_of(url);
    c->m = route_method(c->route, method);
    c->state->judged = false; /* a new request on the connection */
    if (!line_whole(c->state, method, version))
        return refuse(c, MHD_HTTP_BAD_REQUEST, "invalid_request",
                      "the request line holds a NUL byte, or names no HTTP version");
    if (c->state->path_nul) {
        c->route = API_ROUTES - 1; /* no route's: counted as "other" */
        c->m = NULL;
        return refuse(c, MHD_HTTP_NOT_FOUND, "not_found",
                      "no such route: the path holds an encoded NUL byte (%00), which no route's path has");
    }
    status = scan_head(c->api, c->conn, url, &c->state->head);
    if (status)
        return refuse(c, status, status == MHD_HTTP_BAD_REQUEST ? "invalid_request" : "request_header_fields_too_large",
                      c->head->bad);
    if (c->head->expect && c->m && c->m->body) {
        const guard_verdict *v = judge(c, method);
        if (v->status)
            return answer_verdict(c, v);
        if (c->head->length && parse_uint(c->head->length, UINT64_MAX, &declared) == 0 &&
            declared > c->api->max_body)
            return too_large(c);
    }
    *req_cls = &markers[c->route][0];
    return MHD_YES;
}

/* A body route's second call: state for the body, which is read whether
 * or not the guard lets the request in. */
static enum MHD_Result body_start(struct call *c, const char *method, const char *upload_data,
                                  size_t *upload_data_size, void **req_cls) {
    const char *cl = c->head->length;
    struct request *r;
    uint64_t declared;
    const guard_verdict *v = judge(c, method);
    bool refused = v->status != 0;

    if (refused && !*upload_data_size && cl && strcmp(cl, "0") == 0)
        return answer_verdict(c, v); /* no body to wait for */
    r = request_new(c, req_cls);
    if (!r)
        return MHD_NO;
    r->uploading = true;
    r->refused = refused;
    if (refused) {
        r->verdict = *v;
        if (v->description == v->desc) /* points into the copy from now on */
            r->verdict.description = r->verdict.desc;
    }
    /* too big by its own account, or refused: nothing of it is kept */
    r->too_big = refused || (cl && parse_uint(cl, UINT64_MAX, &declared) == 0 && declared > c->api->max_body);
    if (*upload_data_size)
        return take_body(r, upload_data, upload_data_size);
    return MHD_YES; /* the body, or its end, comes in the next calls */
}

static enum MHD_Result collect_arg(void *cls, enum MHD_ValueKind kind, const char *key, size_t key_size,
                                   const char *value, size_t value_size) {
    struct call_args *args = cls;

    if (args->n == CALL_ARGS_MAX) {
        args->too_many = true;
        return MHD_NO;
    }
    args->v[args->n++] = (struct call_arg){ .key = key, .key_len = key_size, .value = value,
                                              .value_len = value ? value_size : 0 };
    return MHD_YES;
}

/* Nothing is answered while a body is still arriving: answering then closes
 * the socket under unread data, and the caller sees a reset instead of the
 * answer. Bodies nobody wants are read and dropped (bounded by the idle
 * timeout); wanted ones are kept up to max_body. */
static enum MHD_Result handler(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
                               const char *version, const char *upload_data, size_t *upload_data_size,
                               void **req_cls) {
    struct listener *l = cls;
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    struct call c = { .api = l->api, .a = &l->api->ctx, .conn = conn, .http11 = strcmp(version, MHD_HTTP_VERSION_1_1) == 0,
                      .scope_allowed = scope_allowed };
    struct call_args args; /* filled only for the last call, and only as far as used */
    enum MHD_Result ret;
    bool seen_body, refused;

    if (!ci || !ci->socket_context)
        return MHD_NO; /* no memory for the connection's state when it opened */
    c.state = ci->socket_context;
    c.head = &c.state->head;

    if (*req_cls == NULL)
        return first_call(&c, url, method, version, req_cls);
    if (!is_marker(*req_cls)) {
        struct request *r = *req_cls;
        if (!r->uploading)
            return answer_finished(r); /* resumed after waiting */
        if (*upload_data_size)
            return take_body(r, upload_data, upload_data_size);
        return body_complete(r, url, req_cls);
    }
    seen_body = marker_flags(*req_cls) & MARK_BODY;
    c.route = marker_route(*req_cls);
    c.m = route_method(c.route, method);

    if (!seen_body && c.m && c.m->body)
        return body_start(&c, method, upload_data, upload_data_size, req_cls);
    if (*upload_data_size) {
        *upload_data_size = 0;
        *req_cls = &markers[c.route][MARK_BODY];
        return MHD_YES;
    }

    args.n = 0;
    args.too_many = false;
    MHD_get_connection_values_n(conn, MHD_GET_ARGUMENT_KIND, collect_arg, &args);
    c.args = &args;
    ret = guard(&c, method, &refused);
    if (refused)
        return ret;
    if (!c.m && !routes[c.route].methods[0].method)
        return refuse(&c, MHD_HTTP_NOT_FOUND, "not_found", "no such route; see the README for the routes");
    if (!c.m) {
        char desc[160], allow[64];
        snprintf(desc, sizeof(desc), "this route takes %s", route_allow(c.route, allow, sizeof(allow)));
        return refuse(&c, MHD_HTTP_METHOD_NOT_ALLOWED, "invalid_request", desc);
    }
    if (seen_body)
        return refuse(&c, MHD_HTTP_BAD_REQUEST, "invalid_request", "this route takes no request body");
    if (c.m->local_only && !c.keyed && !peer_is_local(&c))
        return refuse(&c, MHD_HTTP_FORBIDDEN, "forbidden", "cache control is served to local callers only");
    c.url = url;
    return dispatch(&c, NULL, req_cls);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **req_cls,
                         enum MHD_RequestTerminationCode toe) {
    struct request *r = *req_cls;

    if (r && !is_marker(r)) {
        api *a = r->call.api;
        pthread_mutex_lock(&a->lock);
        a->active--;
        pthread_mutex_unlock(&a->lock);
        token_unref(r->tok);
        proxy_call_free(r->proxy);
        wipe_free(r->body, r->body_len);
        wipe_free(r->fwd.body, r->fwd.len);
        free(r);
    }
    *req_cls = NULL;
}

/* Every connection gets its state when it opens (freed when it closes):
 * the head of the request being read, and a Unix-socket peer's
 * credentials (SO_PEERCRED), read once, where an allow-list is configured.
 * A peer whose credentials cannot be read is one the guard refuses. */
static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                          enum MHD_ConnectionNotificationCode toe) {
    struct listener *l = cls;
    api *a = l->api;
    const union MHD_ConnectionInfo *ci;
    struct ucred cred;
    socklen_t len = sizeof(cred);
    struct conn_state *st;

    if (toe == MHD_CONNECTION_NOTIFY_CLOSED) {
        free(*socket_context);
        *socket_context = NULL;
        return;
    }
    st = calloc(1, sizeof(*st));
    if (!st)
        return; /* the handler drops the connection */
    *socket_context = st;
    ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_DAEMON);
    st->wake = listen_wake_fd(l, ci ? ci->daemon : NULL);
    if (!l->unix_socket || (!a->policy->n_allowed_uids && !a->policy->n_allowed_gids))
        return;
    st->has_peer = true;
    st->peer.unix_socket = true;
    ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (ci && getsockopt(ci->connect_fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0) {
        st->peer.cred_known = true;
        st->peer.uid = cred.uid;
        st->peer.gid = cred.gid;
    }
}

static void on_mhd_log(void *cls, const char *fmt, va_list ap) __attribute__((format(printf, 2, 0)));
static void on_mhd_log(void *cls, const char *fmt, va_list ap) {
    char line[512];
    size_t n;

    vsnprintf(line, sizeof(line), fmt, ap);
    n = strlen(line);
    while (n && line[n - 1] == '\n')
        line[--n] = '\0';
    /* running out of descriptors or memory is the operator's business; the
     * rest (clients misbehaving) is noise at the default level */
    log_msg(strstr(line, "resource limit") || strstr(line, "Failed to allocate") ? LOG_WARNING : LOG_DEBUG,
            "http: %s", line);
}

/* ---- servers ---- */

/* max_connections and threads are the daemon's: shared out among its
 * listeners (the file descriptor budget counts max_connections once), at
 * least a connection and a thread each (each listener is polled on
 * threads of its own). */
static unsigned share(unsigned total, size_t i, size_t n) {
    unsigned part = (unsigned)(total / n + (i < total % n));

    return part ? part : 1;
}

/* Each of the listener's threads polls a daemon of its own on the shared
 * socket (listen.c says why not libmicrohttpd's own threads); each takes
 * its share of the listener's connections. */
static int start_listener(api *a, const config *cfg, struct listener *l, unsigned connections, unsigned threads) {
    unsigned flags = MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;

    fcntl(l->fd, F_SETFL, fcntl(l->fd, F_GETFL) | O_NONBLOCK);
    l->api = a;
    listen_describe(l);
    for (unsigned t = 0; t < threads; t++) {
        struct MHD_OptionItem opts[] = {
            { MHD_OPTION_EXTERNAL_LOGGER, (intptr_t)on_mhd_log, a },
            { MHD_OPTION_LISTEN_SOCKET, l->fd, NULL },
            { MHD_OPTION_CONNECTION_LIMIT, share(connections, t, threads), NULL },
            { MHD_OPTION_CONNECTION_TIMEOUT, (intptr_t)(cfg->idle_timeout_ms / 1000), NULL },
            /* 6 KiB: MHD zeroes the whole pool for every request, and keeps it per
             * open connection (8 KiB measured 8.7 KB per connection, 6 KiB 6.7 KB);
             * it also caps a request's headers (HEAD_MAX: tokend's 431 from 5 KiB) */
            { MHD_OPTION_CONNECTION_MEMORY_LIMIT, 6144, NULL },
            { MHD_OPTION_NOTIFY_COMPLETED, (intptr_t)on_completed, a },
            { MHD_OPTION_NOTIFY_CONNECTION, (intptr_t)on_connection, l },
            { MHD_OPTION_URI_LOG_CALLBACK, (intptr_t)on_target, NULL },
            { MHD_OPTION_END, 0, NULL },
        };
        struct MHD_Daemon *d = MHD_start_daemon(flags, 0, NULL, NULL, handler, l, MHD_OPTION_ARRAY, opts,
                                                MHD_OPTION_END);
        int r = d ? listen_add(l, d) : -EIO;
        if (r < 0) {
            log_error("cannot start the HTTP server on %s: %s", l->address, strerror(-r));
            return r;
        }
    }
    if (listen_run(l) < 0) {
        log_error("cannot start the HTTP server's threads on %s", l->address);
        return -EAGAIN;
    }
    return 0;
}

static char *route_config_json(api *a) {
    char *j;

    pthread_mutex_lock(&a->lock);
    j = a->config_json ? strdup(a->config_json) : NULL;
    pthread_mutex_unlock(&a->lock);
    return j;
}

int api_new(const config *cfg, auth *keys, cache *c, upstream *up, struct shared *sh, revocations *rv,
            int listen_fd, api **ret) {
    size_t pos = 0;
    api *a;
    int r;

    a = calloc(1, sizeof(*a));
    if (!a) {
        if (listen_fd >= 0)
            close(listen_fd);
        auth_free(keys);
        return -ENOMEM;
    }
    pthread_mutex_init(&a->lock, NULL);
    if (listen_fd >= 0) { /* api_free() closes it from here on */
        a->listeners[0].inherited = true;
        a->listeners[a->n_listeners++].fd = listen_fd;
    }
    /* before any listener starts: never a moment without the keys */
    r = auth_store_new(keys, &a->keys);
    if (r == 0)
        r = guard_policy_new(cfg, &a->policy);
    if (r < 0) {
        api_free(a);
        return r;
    }
    a->max_body = cfg->max_body;
    snprintf(a->default_scope, sizeof(a->default_scope), "%s", cfg->default_scope);
    a->ctx = (struct route_context){
        .cache = c,
        .up = up,
        .shared = sh, /* before any listener starts: the first request may be a drop */
        .rv = rv,
        .default_scope = a->default_scope,
        .min_ttl_ms = cfg->min_ttl_ms,
        .start_unix = now_unix(),
        .start_ms = now_ms(),
        .owner = a,
        .listening = a->listening, /* filled as the listeners start, before any request */
        .get_stats = api_get_stats,
        .config_json = route_config_json,
    };
    snprintf(a->user_header, sizeof(a->user_header), "%s", cfg->user_header);
    a->head_rules = (head_rules){
        .user_header = a->user_header,
        .user_header_len = strlen(a->user_header),
#if MHD_VERSION >= 0x01000000
        /* 1.0 glues a folded line onto the value, 0.9.75 onto the name */
        .folds_in_values = true,
#endif
    };
    a->config_json = config_describe(cfg);
    if (listen_fd < 0) {
        for (size_t i = 0; i < cfg->n_listens && i < CONFIG_LISTEN_MAX; i++) { /* config.c refuses more */
            char err[320];
            r = listen_bind(cfg, cfg->listens[i], &a->listeners[a->n_listeners].fd, err, sizeof(err));
            if (r < 0) {
                log_error("cannot listen on %s: %s", cfg->listens[i], err[0] ? err : strerror(-r));
                api_free(a);
                return r;
            }
            a->listeners[a->n_listeners++].bound = true;
        }
    }
    for (size_t i = 0; i < a->n_listeners; i++) {
        struct listener *l = &a->listeners[i];
        r = start_listener(a, cfg, l, share(cfg->max_connections, i, a->n_listeners),
                           share(cfg->threads, i, a->n_listeners));
        if (r < 0) {
            api_free(a);
            return r;
        }
        pos += (size_t)snprintf(a->listening + pos, pos < sizeof(a->listening) ? sizeof(a->listening) - pos : 0,
                                "%s%s%s", i ? " " : "", l->unix_socket ? "" : "http://", l->address);
        if (pos >= sizeof(a->listening))
            pos = sizeof(a->listening) - 1;
    }
    *ret = a;
    return 0;
}

const char *api_address(api *a) {
    for (size_t i = 0; i < a->n_listeners; i++)
        if (!a->listeners[i].unix_socket)
            return a->listeners[i].address;
    return "";
}

const char *api_listening(api *a) {
    return a->listening;
}

void api_quiesce(api *a) {
    for (size_t i = 0; a && i < a->n_listeners; i++)
        listen_quiesce(&a->listeners[i]);
}

unsigned api_waiting(api *a) {
    unsigned n;
    pthread_mutex_lock(&a->lock);
    n = a->waiting;
    pthread_mutex_unlock(&a->lock);
    return n;
}

unsigned api_active(api *a) {
    unsigned n;
    pthread_mutex_lock(&a->lock);
    n = a->active;
    pthread_mutex_unlock(&a->lock);
    return n;
}

void api_get_stats(api *a, struct api_stats *ret) {
    for (unsigned r = 0; r < API_ROUTES; r++)
        ret->route_names[r] = routes[r].name;
    metrics_snapshot(&a->counts, ret);
    ret->waiting = api_waiting(a);
}

void api_set_keys(api *a, auth *keys) {
    auth_store_set(a->keys, keys);
}

void api_set_config(api *a, const config *boot, const config *now) {
    /* the values in use: a key a reload does not apply keeps boot's */
    char *j = config_describe_running(boot, now);

    pthread_mutex_lock(&a->lock);
    free(a->config_json);
    a->config_json = j;
    pthread_mutex_unlock(&a->lock);
}

api *api_free(api *a) {
    if (!a)
        return NULL;
    for (size_t i = 0; i < a->n_listeners; i++)
        listen_close(&a->listeners[i]);
    auth_store_free(a->keys);
    guard_policy_free(a->policy);
    free(a->config_json);
    pthread_mutex_destroy(&a->lock);
    free(a);
    return NULL;
}
