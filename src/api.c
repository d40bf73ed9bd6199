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

#include "config.h"
#include "log.h"
#include "request.h"
#include "util.h"

#define TOKEN_JSON_MAX (OAUTH_TOKEN_MAX + OAUTH_SCOPE_MAX + 160)

struct api {
    struct MHD_Daemon *mhd;
    cache *cache;
    int listen_fd;
    char address[80];
    char *default_scope;
    uint64_t min_ttl_ms;
    struct MHD_Response *health;

    pthread_mutex_t lock; /* orders suspend against resume; guards stats */
    struct api_stats stats;
};

/* What *req_cls points to between the handler's calls. */
static char marker_new, marker_body;

struct request {
    api *api;
    struct MHD_Connection *conn;
    bool suspended, done;
    int how; /* CACHE_MISS or CACHE_COALESCED */
    mint_outcome outcome;
    token *tok;
    char scope[OAUTH_SCOPE_MAX + 1];
};

static void count(api *a, unsigned status) {
    pthread_mutex_lock(&a->lock);
    a->stats.requests++;
    if (status < 300)
        a->stats.ok++;
    else if (status < 500)
        a->stats.client_errors++;
    else
        a->stats.upstream_errors++;
    pthread_mutex_unlock(&a->lock);
}

static enum MHD_Result queue(api *a, struct MHD_Connection *conn, unsigned status,
                             struct MHD_Response *resp) {
    enum MHD_Result r;

    if (!resp)
        return MHD_NO;
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    r = MHD_queue_response(conn, status, resp);
    MHD_destroy_response(resp);
    count(a, status);
    return r;
}

/* Errors are rare: built with cJSON so any text is escaped. */
static enum MHD_Result answer_error(api *a, struct MHD_Connection *conn, unsigned status,
                                    const char *error, const char *description,
                                    const mint_outcome *upstream) {
    struct MHD_Response *resp;
    cJSON *j = cJSON_CreateObject();
    char *body = NULL;
    char num[16];

    if (j && cJSON_AddStringToObject(j, "error", error) &&
        cJSON_AddStringToObject(j, "error_description", description) &&
        (!upstream || !upstream->http_status ||
         (cJSON_AddNumberToObject(j, "upstream_status", upstream->http_status) &&
          cJSON_AddStringToObject(j, "upstream_error", upstream->error))))
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
        MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, "GET");
    if (status == MHD_HTTP_SERVICE_UNAVAILABLE) {
        snprintf(num, sizeof(num), "%u", upstream && upstream->retry_after_s ? upstream->retry_after_s : 1);
        MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, num);
    }
    return queue(a, conn, status, resp);
}

static void free_wiped(void *p) {
    wipe_free_str(p);
}

/* The hit path: Instacart's own answer shape, so clients parse one format.
 * snprintf, not cJSON: every field is a number or was validated to need no
 * escaping (RFC 6750 token characters, checked scope), and this runs for
 * every request. */
static enum MHD_Result answer_token(api *a, struct MHD_Connection *conn, const token *t,
                                    const char *scope, const char *how) {
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
    return queue(a, conn, MHD_HTTP_OK, resp);
}

static enum MHD_Result answer_failure(api *a, struct MHD_Connection *conn, const mint_outcome *o) {
    char desc[256];

    switch (o->kind) {
    case MINT_REJECTED:
        snprintf(desc, sizeof(desc), "Instacart refused the token request: HTTP %d %s", o->http_status,
                 o->error);
        return answer_error(a, conn, MHD_HTTP_BAD_GATEWAY, "upstream_rejected", desc, o);
    case MINT_TIMEOUT:
        snprintf(desc, sizeof(desc), "Instacart did not answer in time (%s); try again later", o->error);
        return answer_error(a, conn, MHD_HTTP_GATEWAY_TIMEOUT, "upstream_timeout", desc, o);
    case MINT_UNAVAILABLE:
    default:
        snprintf(desc, sizeof(desc), "Instacart is unavailable (%s); try again after Retry-After",
                 o->error);
        return answer_error(a, conn, MHD_HTTP_SERVICE_UNAVAILABLE, "upstream_unavailable", desc, o);
    }
}

static void on_minted(void *userdata, const mint_outcome *o, token *t) {
    struct request *r = userdata;

    pthread_mutex_lock(&r->api->lock);
    r->outcome = *o;
    r->tok = t;
    r->done = true;
    if (r->suspended) {
        r->suspended = false;
        r->api->stats.waiting--;
        MHD_resume_connection(r->conn);
    }
    pthread_mutex_unlock(&r->api->lock);
}

static enum MHD_Result answer_done(api *a, struct request *r) {
    if (r->tok)
        return answer_token(a, r->conn, r->tok, r->scope, r->how == CACHE_MISS ? "miss" : "coalesced");
    return answer_failure(a, r->conn, &r->outcome);
}

struct query_ctx {
    token_query q;
    int r;
};

static enum MHD_Result on_arg(void *cls, enum MHD_ValueKind kind, const char *key, size_t key_size,
                              const char *value, size_t value_size) {
    struct query_ctx *qc = cls;

    qc->r = token_query_add(&qc->q, key, key_size, value, value_size, true);
    return qc->r < 0 ? MHD_NO : MHD_YES;
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

    MHD_get_connection_values_n(conn, MHD_GET_ARGUMENT_KIND, on_arg, &qc);
    if (qc.r < 0 || token_query_finish(&qc.q, true) < 0)
        return answer_error(a, conn, MHD_HTTP_BAD_REQUEST, "invalid_request", qc.q.error, NULL);
    memcpy(user, qc.q.user_id, qc.q.user_id_len);
    user[qc.q.user_id_len] = '\0';
    scope = qc.q.scope ? qc.q.scope : a->default_scope;
    min_ttl = qc.q.min_ttl_ms > a->min_ttl_ms ? qc.q.min_ttl_ms : a->min_ttl_ms;

    r = calloc(1, sizeof(*r));
    if (!r)
        return MHD_NO;
    r->api = a;
    r->conn = conn;
    snprintf(r->scope, sizeof(r->scope), "%s", scope);
    *req_cls = r; /* freed when the request completes */

    res = cache_get(a->cache, OAUTH_GRANT_USER_ASSERTION, user, r->scope, min_ttl, on_minted, r, &t, &o);
    switch (res) {
    case CACHE_HIT: {
        enum MHD_Result ret = answer_token(a, conn, t, r->scope, "hit");
        token_unref(t);
        return ret;
    }
    case CACHE_FAILED:
        return answer_failure(a, conn, &o);
    case CACHE_MISS:
    case CACHE_COALESCED:
        break;
    case -EBUSY:
        o = (mint_outcome){ .kind = MINT_UNAVAILABLE, .retry_after_s = 1 };
        snprintf(o.error, sizeof(o.error), "too_many_waiters");
        return answer_failure(a, conn, &o);
    default:
        o = (mint_outcome){ .kind = MINT_UNAVAILABLE, .retry_after_s = 1 };
        snprintf(o.error, sizeof(o.error), "%s", res == -ENOBUFS ? "cache_full" : "internal_error");
        return answer_failure(a, conn, &o);
    }
    r->how = res;

    /* Suspend unless the mint already finished; under the lock so on_minted
     * can never resume a connection that is not yet suspended. */
    pthread_mutex_lock(&a->lock);
    bool finished = r->done;
    if (!finished) {
        r->suspended = true;
        a->stats.waiting++;
        MHD_suspend_connection(conn);
    }
    pthread_mutex_unlock(&a->lock);
    return finished ? answer_done(a, r) : MHD_YES;
}

static enum MHD_Result handler(void *cls, struct MHD_Connection *conn, const char *url,
                               const char *method, const char *version, const char *upload_data,
                               size_t *upload_data_size, void **req_cls) {
    api *a = cls;

    if (*req_cls == NULL) {
        *req_cls = &marker_new;
        return MHD_YES;
    }
    if (*req_cls != &marker_new && *req_cls != &marker_body) {
        /* resumed after a mint */
        struct request *r = *req_cls;
        return answer_done(a, r);
    }
    if (*upload_data_size) {
        /* no route takes a body (yet); drain it, refuse at the end */
        *upload_data_size = 0;
        *req_cls = &marker_body;
        return MHD_YES;
    }
    if (*req_cls == &marker_body)
        return answer_error(a, conn, MHD_HTTP_BAD_REQUEST, "invalid_request",
                            "this route takes no request body", NULL);

    if (strcmp(url, "/v1/token") == 0) {
        if (strcmp(method, MHD_HTTP_METHOD_GET) != 0)
            return answer_error(a, conn, MHD_HTTP_METHOD_NOT_ALLOWED, "invalid_request",
                                "use GET /v1/token?user_id=USER", NULL);
        return handle_token(a, conn, req_cls);
    }
    if (strcmp(url, "/healthz") == 0) {
        if (strcmp(method, MHD_HTTP_METHOD_GET) != 0)
            return answer_error(a, conn, MHD_HTTP_METHOD_NOT_ALLOWED, "invalid_request",
                                "use GET /healthz", NULL);
        count(a, MHD_HTTP_OK);
        return MHD_queue_response(conn, MHD_HTTP_OK, a->health);
    }
    return answer_error(a, conn, MHD_HTTP_NOT_FOUND, "not_found",
                        "no such route; see the README for GET /v1/token", NULL);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **req_cls,
                         enum MHD_RequestTerminationCode toe) {
    struct request *r = *req_cls;

    if (r && r != (void *)&marker_new && r != (void *)&marker_body) {
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

int api_new(const config *cfg, cache *c, int listen_fd, api **ret) {
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
    a->listen_fd = -1;
    a->min_ttl_ms = cfg->min_ttl_ms;
    a->default_scope = strdup(cfg->default_scope);
    a->health = MHD_create_response_from_buffer(sizeof(health) - 1, (void *)health, MHD_RESPMEM_PERSISTENT);
    if (!a->default_scope || !a->health) {
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

    struct MHD_OptionItem opts[] = {
        { MHD_OPTION_LISTEN_SOCKET, a->listen_fd, NULL },
        { MHD_OPTION_CONNECTION_LIMIT, cfg->max_connections, NULL },
        { MHD_OPTION_CONNECTION_TIMEOUT, (intptr_t)(cfg->idle_timeout_ms / 1000), NULL },
        /* 8 KiB: no 32 KiB memset per connection, and a cap on header size */
        { MHD_OPTION_CONNECTION_MEMORY_LIMIT, 8192, NULL },
        { MHD_OPTION_NOTIFY_COMPLETED, (intptr_t)on_completed, a },
        { MHD_OPTION_EXTERNAL_LOGGER, (intptr_t)on_mhd_log, a },
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
    n = a->stats.waiting;
    pthread_mutex_unlock(&a->lock);
    return n;
}

void api_get_stats(api *a, struct api_stats *ret) {
    pthread_mutex_lock(&a->lock);
    *ret = a->stats;
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
    free(a->default_scope);
    pthread_mutex_destroy(&a->lock);
    free(a);
    return NULL;
}
