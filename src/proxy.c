/* The Recommendations proxy: the token never reaches the browser. Gets the
 * user's token from the cache (minted single-flight on a miss), forwards
 * the body to Instacart with it, and when Instacart answers 401 (the token
 * revoked, say) drops that token, mints once more and tries once more.
 * Decides what of Instacart's answer may reach a page on the site's own
 * origin. Not responsible for who may call (the guard), nor for the HTTP
 * answer itself (routes.c). */
#include "proxy.h"
#include "tokens.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "oauth.h"
#include "shared.h"

struct proxy_call {
    proxy_target target;
    const char *user, *path, *body;
    size_t len;
    proxy_done_fn done;
    void *userdata;
    bool retried;
    token *used; /* the token the last forward carried */
};

static mint_outcome local_failure(const char *why) {
    mint_outcome o = { .kind = MINT_UNAVAILABLE, .retry_after_s = 1 };
    snprintf(o.error, sizeof(o.error), "%s", why);
    return o;
}

static void finish_without_answer(proxy_call *p, const mint_outcome *o) {
    proxy_answer a = { .outcome = *o };

    p->done(p->userdata, &a);
}

static void send_with(proxy_call *p, token *t);

static void on_token(void *userdata, const mint_outcome *o, token *t) {
    proxy_call *p = userdata;

    if (!t) {
        finish_without_answer(p, o);
        return;
    }
    send_with(p, t);
    token_unref(t);
}

static void get_token(proxy_call *p) {
    mint_outcome o;
    token *t = NULL;
    int res;

    res = cache_get(p->target.cache, OAUTH_GRANT_USER_ASSERTION, p->user, p->target.scope, p->target.min_ttl_ms,
                    on_token, p, &t, &o);
    if (res == CACHE_HIT) {
        send_with(p, t);
        token_unref(t);
    } else if (res == CACHE_FAILED)
        finish_without_answer(p, &o);
    else if (res < 0) {
        o = local_failure(res == -EBUSY ? "too_many_waiters" : "cache_full");
        finish_without_answer(p, &o);
    } /* else CACHE_MISS, CACHE_COALESCED: on_token follows */
}

static void on_answer(void *userdata, int status, const char *content_type, const char *body, size_t len) {
    proxy_call *p = userdata;
    proxy_answer a = { .status = status };

    if (status == 401 && !p->retried) {
        /* Instacart no longer takes this token: drop it, mint once more,
         * try once more */
        p->retried = true;
        {
            struct tokens tk = { .cache = p->target.cache, .shared = p->target.shared };
            tokens_drop(&tk, OAUTH_GRANT_USER_ASSERTION, p->user, p->target.scope, p->used, NULL, NULL, NULL);
        }
        get_token(p);
        return;
    }
    if (!status) {
        a.outcome = local_failure("forward_failed");
        p->done(p->userdata, &a);
        return;
    }
    a.body = malloc(len + 1);
    if (!a.body) {
        a = (proxy_answer){ .outcome = local_failure("out_of_memory") };
        p->done(p->userdata, &a);
        return;
    }
    if (len) /* an empty answer may come with no buffer at all */
        memcpy(a.body, body, len);
    a.body[len] = '\0';
    a.len = len;
    snprintf(a.content_type, sizeof(a.content_type), "%s", content_type ? content_type : "application/json");
    p->done(p->userdata, &a);
}

static void send_with(proxy_call *p, token *t) {
    token_unref(p->used);
    p->used = token_ref(t);
    upstream_forward(p->target.up, p->path, t->value, p->body, p->len, on_answer, p);
}

int proxy_start(const proxy_target *t, const char *user, const char *path, const char *body, size_t len,
                proxy_done_fn done, void *userdata, proxy_call **ret) {
    proxy_call *p = calloc(1, sizeof(*p));

    if (!p)
        return -ENOMEM;
    *p = (proxy_call){ .target = *t, .user = user, .path = path, .body = body ? body : "", .len = len,
                       .done = done, .userdata = userdata };
    *ret = p; /* before the first callback: done may run before this returns */
    get_token(p);
    return 0;
}

proxy_call *proxy_call_free(proxy_call *p) {
    if (p) {
        token_unref(p->used);
        free(p);
    }
    return NULL;
}

/* application/json or application/...+json, with parameters or not */
static bool json_type(const char *t) {
    size_t n = strcspn(t, ";");

    while (n && (t[n - 1] == ' ' || t[n - 1] == '\t'))
        n--;
    if (n == 16 && strncasecmp(t, "application/json", 16) == 0)
        return true;
    return n > 17 && strncasecmp(t, "application/", 12) == 0 && strncasecmp(t + n - 5, "+json", 5) == 0 &&
           !memchr(t, ',', n);
}

int proxy_passable(int status, const char *content_type, char *desc, size_t size) {
    if (status < 200 || (status >= 300 && status < 400) || status > 599) {
        snprintf(desc, size, "Instacart answered HTTP %d, which is not passed on", status);
        return 0;
    }
    if (!json_type(content_type)) {
        snprintf(desc, size, "Instacart answered with Content-Type '%.64s', not JSON; not passed on", content_type);
        return 0;
    }
    return status;
}
