/* Who may call what: a verdict from a request's facts. Pure: no HTTP
 * library, no locks, no I/O, so it is unit tested row by row against the
 * README's security model and fuzzed on its own. The HTTP front gathers
 * the facts and applies the verdict. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

/* From the configuration: [server] allowed_hosts, allowed_origins,
 * allowed_uids, allowed_gids. */
typedef struct guard_policy {
    char *const *allowed_hosts;
    size_t n_allowed_hosts;
    char *const *allowed_origins;
    size_t n_allowed_origins;
    const unsigned *allowed_uids;
    size_t n_allowed_uids;
    const unsigned *allowed_gids;
    size_t n_allowed_gids;
} guard_policy;

struct config;
/* A policy of its own, from the configuration's lists (copied: a reload
 * frees the configuration). Returns 0 or -ENOMEM. */
int guard_policy_new(const struct config *cfg, guard_policy **ret);
guard_policy *guard_policy_free(guard_policy *p);

/* Who is at the other end of the connection. */
typedef struct guard_peer {
    bool unix_socket;  /* the listener is a Unix socket */
    bool cred_known;   /* uid and gid are the peer's (SO_PEERCRED) */
    unsigned uid, gid;
} guard_peer;

typedef struct guard_request {
    const char *method;
    bool http11;
    /* the headers the guard reads; NULL when absent */
    const char *host, *origin, *sec_fetch_site;
    bool relayed;      /* a header a relaying proxy adds (X-Forwarded-*, Forwarded, Via, X-Real-IP, ...) */
    bool user_header;  /* the frontend user header ([frontend] user_header) */
    const guard_peer *peer;
    /* the route */
    int needed;        /* the rights it needs (RIGHT_* of auth.h), 0 for none */
    bool frontend;     /* reached through the site's proxy: forwarding headers allowed, CORS */
    bool oauth;        /* answers as an OAuth 2.0 server (RFC 6749 §5.2): the drop-in */
    /* the key */
    bool keyed;        /* a keys file is in force */
    int rights;        /* the presented key's rights; -1: no key, or none of ours */
    bool scope_ok;     /* the key may ask for the scope the request will mint */
    const char *scope; /* that scope, for the refusal's text */
} guard_request;

#define GUARD_DESC_MAX 192

typedef struct guard_verdict {
    unsigned status;         /* 0: let in; else the HTTP status to refuse with */
    const char *error;       /* the refusal's error code */
    const char *description; /* a literal, or desc */
    char desc[GUARD_DESC_MAX];
    int rights;              /* let in: the caller's rights (every one but frontend without a keys file) */
    const char *cors;        /* let in on a frontend route: the allowed Origin to echo (the policy's string) */
} guard_verdict;

/* Returns true to let the request in; false with v's status, error and
 * description set. v is always written. */
bool guard_check(const guard_policy *p, const guard_request *q, guard_verdict *v);
/* Whether a Unix-socket peer may connect at all (checked again per request
 * by guard_check). */
bool guard_peer_allowed(const guard_policy *p, const guard_peer *peer);
/* Whether a Host header names tokend: loopback, or an allowed name. NULL
 * (no Host) is allowed: HTTP/1.0. */
bool guard_host_allowed(const guard_policy *p, const char *host);
/* The policy's string for an allowed origin, or NULL. */
const char *guard_origin_allowed(const guard_policy *p, const char *origin);
/* The refusal of a scope a key may not ask for, into buf. */
void guard_scope_text(char *buf, size_t size, const char *scope);
