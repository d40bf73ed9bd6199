/* The Recommendations proxy, free of the HTTP server: a user's token
 * (cached, or minted single-flight), the forward to Instacart, and on 401
 * the token dropped, re-minted and the call tried once more; then what of
 * Instacart's answer a browser may see. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cache.h"
#include "upstream.h"

typedef struct proxy_call proxy_call;

/* How a forward ended: Instacart's answer (status != 0; body malloc()ed,
 * the caller's to free), or no answer (status 0) and why. */
typedef struct proxy_answer {
    int status;
    char *body;
    size_t len;
    char content_type[128];
    mint_outcome outcome; /* status 0: why there is no answer */
} proxy_answer;

/* Called once, from the worker thread or before proxy_start returns. */
typedef void (*proxy_done_fn)(void *userdata, proxy_answer *answer);

struct shared;

typedef struct proxy_target {
    cache *cache;
    upstream *up;
    struct shared *shared; /* fleet mode, or NULL: a 401 drops the fleet's copy too */
    const char *scope;   /* the scope of the users' tokens */
    uint64_t min_ttl_ms;
} proxy_target;

/* Forwards body to Instacart's path for user. user, path and body must
 * stay valid until done is called; the call is the caller's to free with
 * proxy_call_free once done has been called. Returns 0, or -ENOMEM (done
 * is not called). */
int proxy_start(const proxy_target *t, const char *user, const char *path, const char *body, size_t len,
                proxy_done_fn done, void *userdata, proxy_call **ret);
proxy_call *proxy_call_free(proxy_call *p);

/* What a browser may see of Instacart's answer, on the site's own origin:
 * 2xx, 4xx and 5xx as sent; 1xx, redirects and anything past 599 are not
 * passed on, nor is anything but JSON. Returns the status to answer with,
 * or 0 with why (for a 502) in desc. */
int proxy_passable(int status, const char *content_type, char *desc, size_t size);
