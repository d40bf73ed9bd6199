/* Who may call what (the README's security model), decided from a
 * request's facts: the Host (DNS rebinding), Origin and Sec-Fetch-Site (a
 * page in a browser), headers a relaying proxy adds, the Unix-socket
 * peer, the API key's rights and scopes, the frontend user header.
 * Responsible for the verdict and its wording, and for the policy it
 * applies (copied from [server]); not for finding the facts (the HTTP
 * front reads them off the request, the key store in auth.c finds the
 * key) nor for answering. Which addresses are loopback is address.c's. */
#include "guard.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "address.h"
#include "auth.h"
#include "config.h"

#define ALL_BUT_FRONTEND (RIGHT_TOKEN | RIGHT_CLIENT_TOKEN | RIGHT_ADMIN)

/* The policy and its copies of the lists, in one block: the policy first,
 * then the uid and gid arrays, the two arrays of string pointers, and the
 * strings themselves. */
int guard_policy_new(const config *cfg, guard_policy **ret) {
    size_t n_words = cfg->n_allowed_hosts + cfg->n_allowed_origins, size = sizeof(guard_policy), text = 0;
    char **words, *at;
    unsigned *ids;
    guard_policy *p;

    for (size_t i = 0; i < cfg->n_allowed_hosts; i++)
        text += strlen(cfg->allowed_hosts[i]) + 1;
    for (size_t i = 0; i < cfg->n_allowed_origins; i++)
        text += strlen(cfg->allowed_origins[i]) + 1;
    size += n_words * sizeof(char *) + (cfg->n_allowed_uids + cfg->n_allowed_gids) * sizeof(unsigned) + text;
    p = calloc(1, size);
    if (!p)
        return -ENOMEM;
    words = (char **)(p + 1);
    ids = (unsigned *)(words + n_words);
    at = (char *)(ids + cfg->n_allowed_uids + cfg->n_allowed_gids);
    for (size_t i = 0; i < n_words; i++) {
        const char *w = i < cfg->n_allowed_hosts ? cfg->allowed_hosts[i] : cfg->allowed_origins[i - cfg->n_allowed_hosts];
        size_t n = strlen(w) + 1;
        words[i] = memcpy(at, w, n);
        at += n;
    }
    if (cfg->n_allowed_uids)
        memcpy(ids, cfg->allowed_uids, cfg->n_allowed_uids * sizeof(unsigned));
    if (cfg->n_allowed_gids)
        memcpy(ids + cfg->n_allowed_uids, cfg->allowed_gids, cfg->n_allowed_gids * sizeof(unsigned));
    *p = (guard_policy){
        .allowed_hosts = words,
        .n_allowed_hosts = cfg->n_allowed_hosts,
        .allowed_origins = words + cfg->n_allowed_hosts,
        .n_allowed_origins = cfg->n_allowed_origins,
        .allowed_uids = ids,
        .n_allowed_uids = cfg->n_allowed_uids,
        .allowed_gids = ids + cfg->n_allowed_uids,
        .n_allowed_gids = cfg->n_allowed_gids,
    };
    *ret = p;
    return 0;
}

guard_policy *guard_policy_free(guard_policy *p) {
    free(p);
    return NULL;
}

bool guard_host_allowed(const guard_policy *p, const char *host) {
    const char *port;
    size_t n;

    if (!host)
        return true; /* HTTP/1.0 without Host: no browser sends that */
    /* HOST[:PORT], HOST an IPv6 address in brackets or anything else */
    if (host[0] == '[') {
        const char *end = strchr(host, ']');
        if (!end)
            return false;
        port = end[1] ? end + 1 : NULL;
        n = (size_t)(end + 1 - host);
    } else {
        port = strrchr(host, ':');
        n = port ? (size_t)(port - host) : strlen(host);
    }
    if (port && (port[0] != ':' || !port[1] || strspn(port + 1, "0123456789") != strlen(port + 1)))
        return false;
    if (n == 0)
        return false;
    if (address_host_is_loopback(host, n))
        return true;
    for (size_t i = 0; i < p->n_allowed_hosts && host[0] != '['; i++)
        if (strlen(p->allowed_hosts[i]) == n && strncasecmp(host, p->allowed_hosts[i], n) == 0)
            return true;
    return false;
}

const char *guard_origin_allowed(const guard_policy *p, const char *origin) {
    for (size_t i = 0; origin && i < p->n_allowed_origins; i++)
        if (strcmp(origin, p->allowed_origins[i]) == 0)
            return p->allowed_origins[i];
    return NULL;
}

bool guard_peer_allowed(const guard_policy *p, const guard_peer *peer) {
    if (!peer || !peer->unix_socket || (!p->n_allowed_uids && !p->n_allowed_gids))
        return true;
    if (!peer->cred_known)
        return false;
    for (size_t i = 0; i < p->n_allowed_uids; i++)
        if (peer->uid == p->allowed_uids[i])
            return true;
    for (size_t i = 0; i < p->n_allowed_gids; i++)
        if (peer->gid == p->allowed_gids[i])
            return true;
    return false;
}

void guard_scope_text(char *buf, size_t size, const char *scope) {
    snprintf(buf, size, "this API key may not ask for scope '%.64s'; list it in the key's "
             "scopes= in [auth] keys_file", scope && *scope ? scope : "(none)");
}

static bool refuse(guard_verdict *v, unsigned status, const char *error, const char *description) {
    v->status = status;
    v->error = error;
    v->description = description;
    return false;
}

bool guard_check(const guard_policy *p, const guard_request *q, guard_verdict *v) {
    bool preflight = q->frontend && strcmp(q->method, "OPTIONS") == 0;
    const char *allowed_origin = guard_origin_allowed(p, q->origin);

    *v = (guard_verdict){ .rights = 0 };
    /* HTTP/1.1 requires Host. libmicrohttpd 1.0 refuses a request without
     * one itself; 0.9.75 passes it on. */
    if (q->http11 && !q->host)
        return refuse(v, 400, "invalid_request", "an HTTP/1.1 request must carry a Host header");
    /* DNS rebinding: a page on evil.example resolving to 127.0.0.1 */
    if (!guard_host_allowed(p, q->host))
        return refuse(v, 421, "misdirected_request",
                      "the Host header names no address of tokend; add the name to [server] "
                      "allowed_hosts if it is yours");
    /* a browser sending a request on a page's behalf */
    if (q->origin && !allowed_origin)
        return refuse(v, 403, "forbidden", "cross-origin request from an origin not in [server] allowed_origins");
    if (q->sec_fetch_site && strcasecmp(q->sec_fetch_site, "cross-site") == 0 && !allowed_origin)
        return refuse(v, 403, "forbidden", "cross-site request refused");
    if (!q->frontend && q->relayed)
        return refuse(v, 403, "forbidden", "forwarded requests are served on the frontend routes only");
    if (q->frontend) /* refusals from here on are readable by an allowed page too */
        v->cors = allowed_origin;
    if (!guard_peer_allowed(p, q->peer))
        return refuse(v, 403, "forbidden", "this user is not in [server] allowed_uids or allowed_gids");

    v->rights = !q->keyed ? ALL_BUT_FRONTEND : q->rights;
    /* the drop-in answers as an OAuth server does (RFC 6749 §5.2) */
    if (q->needed && !preflight && v->rights < 0)
        return q->oauth ? refuse(v, 401, "invalid_client",
                                 "an API key is required: send Authorization: Bearer KEY, or the key as the "
                                 "password of HTTP Basic")
                        : refuse(v, 401, "unauthorized", "an API key is required: send Authorization: Bearer KEY");
    if (v->rights < 0)
        v->rights = 0;
    if (q->needed && !preflight && !(v->rights & q->needed))
        return q->oauth ? refuse(v, 400, "unauthorized_client",
                                 "this API key has neither the token nor the client-token right")
                        : refuse(v, 403, "forbidden",
                                 q->keyed ? "this API key lacks the right this route needs"
                                          : "this route needs an API key with the frontend or proxy right "
                                            "([auth] keys_file)");
    if (!q->scope_ok) {
        guard_scope_text(v->desc, sizeof(v->desc), q->scope);
        return refuse(v, 403, "forbidden", v->desc);
    }
    /* The user header names whose token to use: only the site's proxy may
     * set it, and the proxy proves that with its key. */
    if (q->user_header && !(v->rights & (RIGHT_FRONTEND | RIGHT_PROXY)))
        return refuse(v, 403, "forbidden", "the user header is accepted only with a frontend or proxy key");
    return true;
}
