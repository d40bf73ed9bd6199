/* What Instacart's answers mean to the token client. Responsible for the
 * one table that turns how an exchange ended, its status, its Retry-After
 * and its body into the caller's outcome and the client's next step.
 * Not responsible for sending anything (http_client.c) nor for acting on
 * the verdict: the breaker, pauses and retries are upstream.c's. Pure:
 * the clock comes in with the answer. */
#include "instacart.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

#include "oauth.h"
#include "util.h"

void instacart_outcome(mint_outcome *o, enum mint_kind kind, int status, unsigned retry_after,
                       const char *error) {
    *o = (mint_outcome){ .kind = kind, .http_status = status, .retry_after_s = retry_after };
    snprintf(o->error, sizeof(o->error), "%s", error);
}

/* Each way of getting no answer: its code for callers and the log, and
 * whether retrying can help (the certificate, the name or the TLS version
 * will be the same in 100 ms; a name that does not resolve is a
 * configuration fault far more often than a resolver's hiccup). */
static const struct {
    const char *code;
    bool final;
} transport[] = {
    [HTTP_RESULT_TIMEOUT] = { "timeout", false },
    [HTTP_RESULT_CANNOT_RESOLVE] = { "cannot_resolve", true },
    [HTTP_RESULT_REFUSED] = { "connection_refused", false },
    [HTTP_RESULT_TLS_EXPIRED] = { "tls_expired", true },
    [HTTP_RESULT_TLS_WRONG_HOST] = { "tls_wrong_host", true },
    [HTTP_RESULT_TLS_UNTRUSTED] = { "tls_untrusted", true },
    [HTTP_RESULT_TLS_CA_FILE] = { "tls_ca_file", true },
    [HTTP_RESULT_TLS_PROTOCOL] = { "tls_protocol", true },
    [HTTP_RESULT_TLS_FAILED] = { "tls_failed", false }, /* say, dropped mid-handshake */
    [HTTP_RESULT_DROPPED] = { "connection_dropped", false },
    [HTTP_RESULT_FAILED] = { "transport_error", false },
};

static unsigned capped(uint64_t s) {
    return s > INSTACART_RETRY_AFTER_MAX_S ? INSTACART_RETRY_AFTER_MAX_S : (unsigned)s;
}

unsigned instacart_retry_after(const char *value, int64_t now_unix) {
    /* the three forms of an HTTP-date a recipient must read */
    static const char *const dates[] = { "%a, %d %b %Y %H:%M:%S GMT", "%A, %d-%b-%y %H:%M:%S GMT",
                                         "%a %b %e %H:%M:%S %Y" };
    char v[128];
    size_t n, digits;

    if (!value)
        return 0;
    value += strspn(value, " \t");
    n = strlen(value);
    while (n && (value[n - 1] == ' ' || value[n - 1] == '\t'))
        n--;
    if (n == 0 || n >= sizeof(v))
        return 0;
    memcpy(v, value, n);
    v[n] = '\0';
    digits = strspn(v, "0123456789");
    if (digits == n) {
        uint64_t s;
        /* a number past any bound is a long pause, not no pause */
        return parse_uint(v, INSTACART_RETRY_AFTER_MAX_S, &s) == 0 ? (unsigned)s : INSTACART_RETRY_AFTER_MAX_S;
    }
    for (size_t i = 0; i < ARRAY_SIZE(dates); i++) {
        struct tm tm = { 0 };
        const char *end = strptime(v, dates[i], &tm);
        time_t t;

        if (!end || *end)
            continue;
        t = timegm(&tm);
        if (t == (time_t)-1 || (int64_t)t <= now_unix)
            return 0;
        return capped((uint64_t)((int64_t)t - now_unix));
    }
    return 0;
}

void instacart_classify(const struct instacart_answer *a, struct instacart_verdict *ret) {
    struct instacart_verdict v = { .retry_after_s = instacart_retry_after(a->retry_after, a->now_unix) };
    unsigned hint = v.retry_after_s ? v.retry_after_s : INSTACART_DEFAULT_RETRY_AFTER_S;
    char code[64];

    switch (a->result) {
    case HTTP_RESULT_OK:
        break;
    case HTTP_RESULT_TOO_LARGE:
        /* an answer we cannot trust; the same answer again would not fit either */
        instacart_outcome(&v.outcome, MINT_UNAVAILABLE, a->status, INSTACART_DEFAULT_RETRY_AFTER_S,
                          "answer_too_large");
        v.trips = true;
        goto out;
    case HTTP_RESULT_EXPIRED:
        instacart_outcome(&v.outcome, MINT_TIMEOUT, 0, INSTACART_DEFAULT_RETRY_AFTER_S, "queue_timeout");
        goto out;
    case HTTP_RESULT_CANCELLED:
        instacart_outcome(&v.outcome, MINT_UNAVAILABLE, 0, INSTACART_DEFAULT_RETRY_AFTER_S, "shutting_down");
        goto out;
    default:
        instacart_outcome(&v.outcome, a->result == HTTP_RESULT_TIMEOUT ? MINT_TIMEOUT : MINT_UNAVAILABLE, 0,
                          INSTACART_DEFAULT_RETRY_AFTER_S,
                          (size_t)a->result < ARRAY_SIZE(transport) && transport[a->result].code
                              ? transport[a->result].code
                              : "transport_error");
        v.link_broken = (size_t)a->result < ARRAY_SIZE(transport) && transport[a->result].final;
        v.retry = !v.link_broken;
        v.trips = true;
        goto out;
    }

    if (a->status == 200 && a->call == INSTACART_REVOKE) {
        v.outcome.http_status = 200;
    } else if (a->status == 200) {
        if (oauth_parse_token(a->body, a->len, a->sent_ms, &v.token) == 0)
            v.outcome.http_status = 200;
        else {
            v.token = NULL;
            instacart_outcome(&v.outcome, MINT_UNAVAILABLE, 200, INSTACART_DEFAULT_RETRY_AFTER_S,
                              "invalid_answer");
            v.trips = true;
        }
    } else if (a->status == 408 || a->status == 429 || a->status >= 500) {
        /* worth another attempt; a 429 is Instacart protecting itself, not
         * failing, so it pauses us rather than opening the breaker */
        oauth_parse_error(a->body, a->len, code, sizeof(code));
        instacart_outcome(&v.outcome, MINT_UNAVAILABLE, a->status, hint,
                          code[0] ? code : a->status == 429 ? "rate_limited" : "upstream_unavailable");
        v.retry = true;
        v.trips = a->status != 429;
    } else if (a->status >= 400 && a->status < 500) {
        /* the request itself is wrong: the same one would be refused again */
        oauth_parse_error(a->body, a->len, code, sizeof(code));
        instacart_outcome(&v.outcome, MINT_REJECTED, a->status, 0, code[0] ? code : "rejected");
        v.credentials_rejected = a->status == 401 || strcmp(code, "invalid_client") == 0 ||
                                 strcmp(code, "query_params_forbidden") == 0;
    } else {
        instacart_outcome(&v.outcome, MINT_UNAVAILABLE, a->status, INSTACART_DEFAULT_RETRY_AFTER_S,
                          "unexpected_status");
        v.trips = true;
    }
out:
    /* Instacart said 429, whatever became of the rest of its answer */
    if (a->status == 429)
        v.pause_s = hint;
    *ret = v;
}
