/* Fuzzes the checking of a token request's query. The input is a query
 * string: parameters split on '&', key and value on the first '=' (no '='
 * means a value-less "?key"), %XX decoded as libmicrohttpd would, so any
 * byte, NUL included, can reach a key or a value. Each key and value sits
 * in a buffer of exactly its length, as token_query_add() must never read
 * past value_len. Accepted queries are checked against the rules in
 * request.h, computed here independently. */
#include <errno.h>
#include <stdbool.h>
#include <string.h>

#include "fuzz.h"
#include "oauth.h"
#include "request.h"
#include "util.h"

struct param {
    char *key;
    size_t key_len;
    char *value; /* NULL for "?key" */
    size_t value_len;
};

/* A malloc()ed copy of s with %XX decoded, of exactly the decoded length. */
static char *decode(const uint8_t *s, size_t len, size_t *ret_len) {
    char *tmp, *out;
    size_t n = 0;

    tmp = malloc(len + 1);
    if (!tmp)
        return NULL;
    for (size_t i = 0; i < len; i++) {
        if (s[i] == '%' && i + 2 < len && hex_value((char)s[i + 1]) >= 0 && hex_value((char)s[i + 2]) >= 0) {
            tmp[n++] = (char)(hex_value((char)s[i + 1]) << 4 | hex_value((char)s[i + 2]));
            i += 2;
        } else
            tmp[n++] = (char)s[i];
    }
    out = malloc(n); /* malloc(0) too: even one byte read of "" is caught */
    if (out)
        memcpy(out, tmp, n);
    free(tmp);
    *ret_len = n;
    return out;
}

static bool key_is(const struct param *p, const char *name) {
    return p->key_len == strlen(name) && memcmp(p->key, name, p->key_len) == 0;
}

static void run(const struct param *ps, size_t n, bool allow_user_id, bool need_user_id) {
    const struct param *uid = NULL, *scope = NULL, *ttl = NULL;
    token_query q = { 0 };
    uint64_t v = 0;
    int r = 0;

    for (size_t i = 0; i < n && r == 0; i++)
        r = token_query_add(&q, ps[i].key, ps[i].key_len, ps[i].value, ps[i].value_len,
                            allow_user_id);
    if (r == 0)
        r = token_query_finish(&q, need_user_id);
    if (r != 0) {
        fuzz_check(r == -EINVAL);
        fuzz_check(q.error && q.error[0]);
        return;
    }
    fuzz_check(!q.error);

    /* only known parameters, each at most once */
    for (size_t i = 0; i < n; i++) {
        const struct param *p = &ps[i];
        const struct param **slot = key_is(p, "user_id") && allow_user_id ? &uid
                                    : key_is(p, "scope")                  ? &scope
                                    : key_is(p, "min_ttl")                ? &ttl
                                                                          : NULL;
        fuzz_check(slot);
        fuzz_check(!*slot);
        *slot = p;
    }

    if (uid) {
        fuzz_check(q.user_id == uid->value && q.user_id_len == uid->value_len);
        fuzz_check(q.user_id_len >= 1 && q.user_id_len <= OAUTH_USER_ID_MAX);
        fuzz_check(request_user_id_valid(q.user_id, q.user_id_len));
        fuzz_check(!memchr(q.user_id, '\0', q.user_id_len));
    } else {
        fuzz_check(!q.user_id && q.user_id_len == 0);
        fuzz_check(!need_user_id);
    }

    if (scope) {
        fuzz_check(q.scope == scope->value && q.scope_len == scope->value_len);
        fuzz_check(oauth_scope_valid(q.scope, q.scope_len));
    } else
        fuzz_check(!q.scope && q.scope_len == 0);

    if (ttl) {
        fuzz_check(q.has_min_ttl);
        fuzz_check(ttl->value && ttl->value_len >= 1 && ttl->value_len <= 15);
        for (size_t i = 0; i < ttl->value_len; i++) {
            fuzz_check(ttl->value[i] >= '0' && ttl->value[i] <= '9');
            v = v * 10 + (uint64_t)(ttl->value[i] - '0');
        }
        fuzz_check(v <= REQUEST_MIN_TTL_MAX_S);
        fuzz_check(q.min_ttl_ms == v * 1000);
    } else
        fuzz_check(!q.has_min_ttl && q.min_ttl_ms == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    struct param *ps;
    size_t n = 1, start = 0, count = 0;
    bool oom = false;

    for (size_t i = 0; i < size; i++)
        n += data[i] == '&';
    ps = calloc(n, sizeof(*ps));
    if (!ps)
        return 0;
    for (size_t i = 0; i <= size && !oom; i++) {
        const uint8_t *p = data + start, *eq;
        size_t len;

        if (i < size && data[i] != '&')
            continue;
        len = i - start;
        start = i + 1;
        if (len == 0)
            continue; /* an empty segment ("a=1&&b=2", "") is no parameter */
        eq = memchr(p, '=', len);
        ps[count].key = decode(p, eq ? (size_t)(eq - p) : len, &ps[count].key_len);
        oom = !ps[count].key;
        if (eq && !oom) {
            ps[count].value = decode(eq + 1, len - (size_t)(eq + 1 - p), &ps[count].value_len);
            oom = !ps[count].value;
        }
        count++;
    }
    if (!oom) {
        run(ps, count, true, true);   /* /v1/token */
        run(ps, count, false, false); /* routes where the user id comes from elsewhere */
    }
    for (size_t i = 0; i < count; i++) {
        free(ps[i].key);
        free(ps[i].value);
    }
    free(ps);
    return 0;
}
