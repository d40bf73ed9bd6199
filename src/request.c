/* Validation of caller input. Everything a caller sends is hostile until it
 * passes here: bad input is refused before it can reach Instacart or the
 * cache, with a description of what was wrong. */
#include "request.h"

#include <errno.h>
#include <string.h>

#include "oauth.h"
#include "util.h"

bool request_user_id_valid(const char *s, size_t len) {
    return len > 0 && len <= OAUTH_USER_ID_MAX && utf8_is_printable(s, len);
}

static int fail(token_query *q, const char *why) {
    q->error = why;
    return -EINVAL;
}

int token_query_add(token_query *q, const char *key, size_t key_len, const char *value,
                    size_t value_len, bool allow_user_id) {
    if (!value)
        value = "", value_len = 0;
    if (memchr(value, '\0', value_len))
        return fail(q, "a parameter contains a NUL byte");
    if (allow_user_id && key_len == 7 && memcmp(key, "user_id", 7) == 0) {
        if (q->user_id)
            return fail(q, "user_id is given more than once");
        if (value_len == 0)
            return fail(q, "user_id is empty");
        if (value_len > OAUTH_USER_ID_MAX)
            return fail(q, "user_id is longer than 256 bytes");
        if (!utf8_is_printable(value, value_len))
            return fail(q, "user_id must be UTF-8 text without control characters");
        q->user_id = value;
        q->user_id_len = value_len;
        return 0;
    }
    if (key_len == 5 && memcmp(key, "scope", 5) == 0) {
        if (q->scope)
            return fail(q, "scope is given more than once");
        if (!oauth_scope_valid(value, value_len))
            return fail(q, "scope must be 1 to 256 printable ASCII characters without spaces, quotes or backslashes");
        q->scope = value;
        q->scope_len = value_len;
        return 0;
    }
    if (key_len == 7 && memcmp(key, "min_ttl", 7) == 0) {
        char buf[16];
        uint64_t v;
        if (q->has_min_ttl)
            return fail(q, "min_ttl is given more than once");
        if (value_len == 0 || value_len >= sizeof(buf))
            return fail(q, "min_ttl must be a whole number of seconds from 0 to 43200");
        memcpy(buf, value, value_len);
        buf[value_len] = '\0';
        if (parse_uint(buf, REQUEST_MIN_TTL_MAX_S, &v) < 0)
            return fail(q, "min_ttl must be a whole number of seconds from 0 to 43200");
        q->min_ttl_ms = v * MS_PER_SEC;
        q->has_min_ttl = true;
        return 0;
    }
    return fail(q, allow_user_id ? "unknown parameter; this route takes user_id, scope and min_ttl"
                                 : "unknown parameter; this route takes scope and min_ttl");
}

int token_query_finish(token_query *q, bool need_user_id) {
    if (need_user_id && !q->user_id)
        return fail(q, "user_id is missing; ask for /v1/token?user_id=USER");
    return 0;
}
