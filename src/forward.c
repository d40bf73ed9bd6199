/* Forwarding a Recommendations call to Instacart with a user's token.
 * Responsible for one attempt through the HTTP client and for handing the
 * answer back untouched: the caller (proxy.c) decides what a status means
 * and whether to try again. Not responsible for the token (the cache and
 * the token client), nor for what a browser may see (proxy.c). */
#include "forward.h"

#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "util.h"

struct forward {
    char *url, *path, *bearer, *body;
    size_t len, answer_max;
    uint64_t submitted_ms, deadline_ms, attempt_timeout_ms;
    forward_done_fn done;
    void *userdata;
};

static void forward_free(struct forward *f) {
    free(f->url);
    free(f->path);
    wipe_free_str(f->bearer);
    wipe_free(f->body, f->len);
    free(f);
}

static void forward_finish(struct forward *f, int status, const char *content_type, const char *body,
                           size_t len) {
    log_info("forwarded %s status=%d latency_ms=%llu", f->path ? f->path : "?", status,
             (unsigned long long)(now_ms() - f->submitted_ms));
    f->done(f->userdata, status, content_type, status ? body : NULL, status ? len : 0);
    forward_free(f);
}

static enum http_start forward_start(void *userdata, http_exchange *ex, uint64_t now, uint64_t *wait_ms) {
    struct forward *f = userdata;
    uint64_t budget = f->deadline_ms - now;
    struct http_request req = {
        .url = f->url,
        .body = f->body,
        .body_len = f->len,
        .bearer = f->bearer,
        .answer_max = f->answer_max,
        .timeout_ms = budget < f->attempt_timeout_ms ? budget : f->attempt_timeout_ms,
    };

    if (http_exchange_send(ex, &req) == 0)
        return HTTP_START_SENT;
    forward_finish(f, 0, NULL, NULL, 0);
    return HTTP_START_ENDED;
}

static bool forward_answered(void *userdata, const struct http_answer *a, uint64_t *retry_at) {
    struct forward *f = userdata;

    if (a->result == HTTP_RESULT_OK)
        forward_finish(f, a->status, a->content_type, a->body, a->len);
    else
        forward_finish(f, 0, NULL, NULL, 0);
    return false;
}

static const struct http_exchange_ops forward_ops = {
    .start = forward_start,
    .done = forward_answered,
};

void forward_submit(http_client *hc, const struct forward_call *c, forward_done_fn done, void *userdata) {
    struct forward *f = calloc(1, sizeof(*f));

    if (!f) {
        done(userdata, 0, NULL, NULL, 0);
        return;
    }
    *f = (struct forward){
        .len = c->len,
        .answer_max = c->answer_max,
        .submitted_ms = now_ms(),
        .deadline_ms = c->deadline_ms,
        .attempt_timeout_ms = c->attempt_timeout_ms,
        .done = done,
        .userdata = userdata,
    };
    f->path = strdup(c->path); /* for the log */
    f->url = c->url ? strdup(c->url) : NULL;
    f->bearer = strdup(c->bearer);
    f->body = malloc(c->len + 1);
    if (f->body) {
        if (c->len)
            memcpy(f->body, c->body, c->len);
        f->body[c->len] = '\0';
    }
    if (!f->url || !f->bearer || !f->body || http_client_submit(hc, &forward_ops, f, f->deadline_ms) < 0)
        forward_finish(f, 0, NULL, NULL, 0);
}
