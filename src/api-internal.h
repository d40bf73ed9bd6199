/* Shared by the HTTP front's two files: api.c (the server, who may call
 * what, answers) and routes.c (what each route does). Private to them. */
#pragma once

#include <microhttpd.h>
#include <pthread.h>
#include <stdbool.h>

#include "api.h"
#include "auth.h"
#include "cache.h"
#include "config.h"
#include "guard.h"
#include "head.h"
#include "oauth.h"
#include "proxy.h"
#include "request.h"
#include "token.h"
#include "upstream.h"

#define ORIGIN_MAX 256

struct listener {
    api *api;
    struct MHD_Daemon *mhd;
    int fd;
    bool unix_socket;
    bool loopback;
    bool bound;        /* ours to unlink (a Unix socket we made) */
    bool inherited;    /* passed by systemd, whose socket must go on listening */
    bool quiesced;     /* no longer accepting; the fd is ours to close after the stop */
    char address[136]; /* 127.0.0.1:8787, [::1]:8787 or unix:/path */
};

struct api {
    struct listener listeners[CONFIG_LISTEN_MAX];
    size_t n_listeners;
    char listening[512];
    cache *cache;
    upstream *up;
    struct shared *shared; /* fleet mode, or NULL; set before the first request */
    pthread_rwlock_t keys_lock; /* a reload swaps the keys under it */
    auth *auth; /* NULL: no keys file */
    char default_scope[OAUTH_SCOPE_MAX + 1];
    uint64_t min_ttl_ms;
    char user_header[64];
    head_rules head_rules;
    size_t max_body;
    char **allowed_hosts, **allowed_origins;
    size_t n_allowed_hosts, n_allowed_origins;
    unsigned *allowed_uids, *allowed_gids;
    size_t n_allowed_uids, n_allowed_gids;
    guard_policy policy; /* points into the above */
    struct MHD_Response *health;
    int64_t start_unix;
    uint64_t start_ms;

    /* counted with atomics: the hit path takes no lock for them */
    unsigned long long counts[API_ROUTES][API_CODES];

    pthread_mutex_t lock; /* orders suspend against resume; guards below */
    unsigned waiting;
    unsigned active;  /* requests with state of their own, not yet completed */
    char *config_json;
};

struct conn_state;

/* One request being answered: what every answer needs. */
struct call {
    api *a;
    struct MHD_Connection *conn;
    unsigned route;       /* its row in routes[] */
    const struct route_method *m; /* the row's entry for the method, or NULL */
    const char *url;      /* during the handler's call only */
    int rights;           /* of the caller's key; every right without a keys file */
    bool keyed;           /* a keys file was in force when the guard ran */
    const char *cors;     /* the Origin to allow in the answer, or NULL */
    bool http11;          /* an HTTP/1.1 request (it must name its Host) */
    struct conn_state *state; /* the connection's: its peer, the request's head */
    const head *head;         /* &state->head */
};

enum request_kind { REQUEST_MINT, REQUEST_REVOKE, REQUEST_PROXY };

/* A request with state of its own: one with a body, or one that waits on
 * the network (suspended until done). Freed when the request completes. */
struct request {
    struct call call;
    char cors[ORIGIN_MAX];
    enum request_kind kind;
    bool uploading;  /* the body is still arriving */
    bool refused;    /* the guard refused it: answered once the body is read */
    guard_verdict verdict;
    bool suspended, done;
    int how;         /* CACHE_MISS or CACHE_COALESCED */
    mint_outcome outcome;
    token *tok;
    char scope[OAUTH_SCOPE_MAX + 1];

    char *body;      /* the caller's body, at most api->max_body */
    size_t body_len;
    bool too_big;

    /* the Recommendations proxy */
    char user[OAUTH_USER_ID_MAX + 1];
    char path[256];
    struct proxy_call *proxy;
    proxy_answer fwd;
};

/* answers (api.c) */
enum MHD_Result api_queue(const struct call *c, unsigned status, struct MHD_Response *resp);
enum MHD_Result api_error(const struct call *c, unsigned status, const char *error, const char *description,
                          const mint_outcome *up);
enum MHD_Result api_failure(const struct call *c, const mint_outcome *o);
enum MHD_Result api_json(const struct call *c, unsigned status, char *body);
enum MHD_Result api_token(const struct call *c, const token *t, const char *scope, const char *how);
void api_count(api *a, unsigned route, unsigned status);
bool api_peer_is_local(const struct call *c);
/* Whether the caller's key may ask for scope (checked again for a body's
 * scope, known only once the body is in), and the refusal if not. */
bool api_key_allows_scope(const struct call *c, const char *scope);
enum MHD_Result api_scope_refused(const struct call *c, const char *scope);

/* state for waiting (api.c) */
struct request *api_request_new(const struct call *c, enum request_kind kind, void **req_cls);
/* Marks r done and resumes it if suspended; r may be freed by then. */
void api_request_complete(struct request *r);
/* Suspends until api_request_complete, or answers at once if done. */
enum MHD_Result api_suspend_or_answer(struct request *r);
/* The cache's callback for a request waiting on a mint or a revocation. */
void api_on_done(void *userdata, const mint_outcome *o, token *t);

/* The preflight of a frontend route (CORS), answered by the transport. */
enum MHD_Result api_preflight(const struct call *c, struct request *r, void **req_cls);

/* routes (routes.c): one row per route, one entry per method */
typedef enum MHD_Result (*route_fn)(const struct call *c, struct request *r, void **req_cls);

enum route_flag {
    ROUTE_FRONTEND = 1 << 0, /* reached through the site's proxy: forwarding headers, CORS, nosniff */
    ROUTE_OAUTH = 1 << 1,    /* answers as an OAuth 2.0 server: HTTP Basic, RFC 6749 §5.2 errors */
};

/* The scope a request without ?scope= mints, for the key's scope check. */
enum route_mints { MINTS_NOTHING, MINTS_DEFAULT_SCOPE, MINTS_NO_SCOPE };

struct route_method {
    const char *method; /* NULL ends the list */
    route_fn handler;   /* r: the request with its body (body), else NULL */
    int rights;         /* RIGHT_* the caller's key needs; 0 for none */
    bool body;          /* takes a request body, read before the handler runs */
    bool local_only;    /* without an API key, for callers on this host only */
    enum route_mints mints;
};

#define ROUTE_METHODS_MAX 3
struct route {
    const char *name;               /* the path; for a matcher, what /metrics calls the route */
    bool (*match)(const char *url); /* NULL: the path, exactly */
    unsigned flags;                 /* enum route_flag */
    struct route_method methods[ROUTE_METHODS_MAX];
};

extern const struct route routes[API_ROUTES];

/* Answers a request resumed after waiting. */
enum MHD_Result route_answer_done(struct request *r);
