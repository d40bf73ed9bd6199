/* Shared by the HTTP front's files: api.c (the transport on
 * libmicrohttpd: sockets, strict HTTP, who may call what, answers),
 * listen.c (its sockets) and routes.c (what each route does). Private to
 * them. The routes see
 * libmicrohttpd nowhere: a route is a function of a call (the request's
 * facts, gathered by the transport) that returns an answer as a value
 * (answer.h), or asks to wait; a request that waited is resumed and
 * answered through its own finish(). */
#pragma once

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>

#include "answer.h"
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

struct MHD_Daemon;
struct MHD_Connection;

#define ORIGIN_MAX 256

/* One libmicrohttpd daemon on a listener and the thread of ours that
 * polls it (listen.c). */
struct http_loop {
    struct MHD_Daemon *mhd;
    int epoll_fd;      /* the daemon's, which the thread polls */
    pthread_t thread;
    int wake;          /* eventfd: the thread is to look again (a resume, its end) */
    atomic_bool stop;  /* ... and end */
    bool running;
    bool quiesced;
};

struct listener {
    api *api;
    struct http_loop *loops; /* n_loops of them, sharing fd */
    size_t n_loops;
    int fd;
    bool unix_socket;
    bool bound;        /* ours to unlink (a Unix socket we made) */
    bool inherited;    /* passed by systemd, whose socket must go on listening */
    bool quiesced;     /* no longer accepting; the fd is ours to close after the stop */
    char address[136]; /* 127.0.0.1:8787, [::1]:8787 or unix:/path */
};

/* sockets (listen.c) */
/* Binds and listens on one [server] listen address; a stale Unix socket
 * left by an earlier run is replaced, a live one (another process accepts
 * on it) is not: -EADDRINUSE, with err saying who. Returns 0 or a negative
 * errno; err (may be "") says more than the errno. */
int listen_bind(const config *cfg, const char *spec, int *ret_fd, char *err, size_t err_size);
/* Fills l->address and l->unix_socket from l->fd. */
void listen_describe(struct listener *l);
/* Gives l one more libmicrohttpd daemon (started on l->fd, without a
 * thread of its own, MHD_USE_EPOLL); on failure the daemon is stopped.
 * Then listen_run() starts a thread of ours polling each. 0 or a negative
 * errno. */
int listen_add(struct listener *l, struct MHD_Daemon *mhd);
int listen_run(struct listener *l);
/* The eventfd of the thread polling daemon d of l, or -1; listen_wake()
 * makes that thread look again: after MHD_resume_connection() from
 * another thread (libmicrohttpd has no wake-up of its own for a loop it
 * does not run). */
int listen_wake_fd(const struct listener *l, const struct MHD_Daemon *d);
void listen_wake(int fd);
/* Stops accepting new connections; those open are still served. */
void listen_quiesce(struct listener *l);
/* Stops the listener's server and closes its socket; a Unix socket we
 * bound is removed. */
void listen_close(struct listener *l);

/* What the routes need of the daemon, and nothing of the transport: the
 * modules they call, the settings they read, and what only the transport
 * knows (its counters, the configuration it runs with) through functions,
 * so routes.c never reaches into struct api (api.c's own). Filled by
 * api_new() before the first request, constant from then on. */
struct route_context {
    cache *cache;
    upstream *up;
    struct shared *shared; /* fleet mode, or NULL */
    revocations *rv;       /* revocations that must land */
    const char *default_scope;
    uint64_t min_ttl_ms;
    int64_t start_unix;
    uint64_t start_ms;
    api *owner; /* the transport, passed to the functions below */
    const char *listening; /* every address served, as api_listening() says */
    /* the HTTP counters, a snapshot (api_get_stats) */
    void (*get_stats)(api *owner, struct api_stats *ret);
    /* the effective configuration as JSON, malloc()ed; NULL if none */
    char *(*config_json)(api *owner);
};

struct conn_state;

/* The query's parameters, as the HTTP library split and decoded them (a
 * value may hold a NUL: the routes refuse it). */
#define CALL_ARGS_MAX 16
struct call_arg {
    const char *key, *value; /* value NULL: a key without '=' */
    size_t key_len, value_len;
};

struct call_args {
    size_t n;
    bool too_many; /* more than CALL_ARGS_MAX: the first are in v */
    struct call_arg v[CALL_ARGS_MAX];
};

/* One request being answered: its facts, for the route. */
struct call {
    /* the daemon as the routes see it */
    const struct route_context *a;
    unsigned route;       /* its row in routes[] */
    const struct route_method *m; /* the row's entry for the method, or NULL */
    const char *url;      /* during the handler's call only */
    int rights;           /* of the caller's key; every right without a keys file */
    bool keyed;           /* a keys file was in force when the guard ran */
    const char *cors;     /* the Origin to allow in the answer, or NULL */
    const head *head;     /* the header block, read once (head.c) */
    const struct call_args *args; /* during the handler's call only; NULL: none */
    /* Whether the caller's key may ask for scope, found again (a reload may
     * have swapped the keys): for a scope known only once the body is in. */
    bool (*scope_allowed)(const struct call *c, const char *scope);

    /* the transport's own */
    api *api;
    struct MHD_Connection *conn;
    struct conn_state *state; /* the connection's: its peer, the request's head */
    bool http11;              /* an HTTP/1.1 request (it must name its Host) */
};

/* A request with state of its own: one with a body, or one that waits on
 * the network. Made by the transport (for a body, or when a route asks for
 * it); freed when the request completes. */
struct request {
    struct call call;
    char cors[ORIGIN_MAX];
    bool uploading;  /* the body is still arriving */
    bool refused;    /* the guard refused it: answered once the body is read */
    guard_verdict verdict;
    bool suspended, done;
    /* set by the transport: marks the request done and wakes it, from any
     * thread (r may be answered and freed from then on) */
    void (*resume)(struct request *r);
    /* set by the route that waits: the answer once done */
    int (*finish)(struct request *r, answer *ans);

    int how;         /* CACHE_MISS or CACHE_COALESCED */
    mint_outcome outcome;
    struct revoke_outcome revoked; /* DELETE ...&revoke=true */
    bool dropped_here;
    bool durable;    /* a fleet's drop or flush: Redis took it (see shared_ack_fn) */
    size_t flushed;  /* a flush: entries dropped here */
    token *tok;
    char scope[OAUTH_SCOPE_MAX + 1];

    char *body;      /* the caller's body, at most [frontend] max_body */
    size_t body_len;
    bool too_big;

    /* the Recommendations proxy */
    char user[OAUTH_USER_ID_MAX + 1];
    char path[256];
    struct proxy_call *proxy;
    proxy_answer fwd;
};

/* routes (routes.c): one row per route, one entry per method. A handler
 * fills ans and returns ROUTE_ANSWER; or returns ROUTE_STATE when it needs
 * a request of its own (it is called again with one: the hit path
 * allocates nothing); or ROUTE_WAIT once r waits, with r->finish set. A
 * negative errno drops the connection (out of memory). */
enum route_step { ROUTE_ANSWER = 0, ROUTE_STATE = 1, ROUTE_WAIT = 2 };
typedef int (*route_fn)(const struct call *c, struct request *r, answer *ans);

enum route_flag {
    ROUTE_FRONTEND = 1 << 0, /* reached through the site's proxy: forwarding headers, CORS, nosniff */
    ROUTE_OAUTH = 1 << 1,    /* answers as an OAuth 2.0 server: HTTP Basic, RFC 6749 §5.2 errors */
};

/* The scope a request without ?scope= mints, for the key's scope check. */
enum route_mints { MINTS_NOTHING, MINTS_DEFAULT_SCOPE, MINTS_NO_SCOPE };

struct route_method {
    const char *method; /* NULL ends the list */
    route_fn handler;   /* r: the request with its body (body), else NULL until ROUTE_STATE */
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
/* The row's methods, for Allow and Access-Control-Allow-Methods, into buf. */
const char *route_allow(unsigned route, char *buf, size_t size);
