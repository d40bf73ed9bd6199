/* Validation of caller input. Everything a caller sends is hostile until it
 * passes here: bad input is refused before it can reach Instacart or the
 * cache, with a description of what was wrong. */
#include "request.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "json.h"
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

static int dropin_fail(const char **error, const char **description, const char *e, const char *d) {
    *error = e;
    *description = d;
    return -EINVAL;
}

/* The assertion must be exactly what Instacart takes: standard Base64 of a
 * JSON object whose user_id is a valid user id. */
static int decode_assertion(const char *assertion, char **ret_user) {
    size_t alen = strlen(assertion);
    char json[4 * OAUTH_USER_ID_MAX + 64];
    ptrdiff_t n;
    const cJSON *u;
    cJSON *j;
    int r = -EINVAL;

    n = base64_decode(assertion, alen, json, sizeof(json) - 1);
    if (n <= 0)
        return -EINVAL;
    json[n] = '\0';
    j = json_parse_whole(json, (size_t)n);
    if (!j)
        return -EINVAL;
    u = cJSON_GetObjectItemCaseSensitive(j, "user_id");
    if (cJSON_IsObject(j) && cJSON_IsString(u) && request_user_id_valid(u->valuestring, strlen(u->valuestring))) {
        *ret_user = strdup(u->valuestring);
        r = *ret_user ? 0 : -ENOMEM;
    }
    json_delete_wiped(j); /* the decoded assertion */
    explicit_bzero(json, sizeof(json));
    return r;
}

/* The checks of a drop-in request, on its parameters as a JSON object
 * (parsed from a JSON body, or built from a form). Consumes j. RFC 6749
 * §5.2 names the errors. */
static int dropin_check(cJSON *j, dropin *ret, const char **error, const char **description) {
    const cJSON *gt, *as, *sc;
    dropin d = { 0 };
    int r;

    if (cJSON_GetObjectItemCaseSensitive(j, "client_secret")) {
        r = dropin_fail(error, description, "invalid_request",
                        "do not send client_secret: tokend holds the credentials; drop it from the request");
        goto out;
    }
    gt = cJSON_GetObjectItemCaseSensitive(j, "grant_type");
    as = cJSON_GetObjectItemCaseSensitive(j, "assertion");
    sc = cJSON_GetObjectItemCaseSensitive(j, "scope");
    if (!gt) {
        r = dropin_fail(error, description, "invalid_request", "grant_type is missing");
        goto out;
    }
    if (sc && (!cJSON_IsString(sc) || !oauth_scope_valid(sc->valuestring, strlen(sc->valuestring)))) {
        r = dropin_fail(error, description, "invalid_scope", "scope must be a string of valid scopes");
        goto out;
    }
    if (cJSON_IsString(gt) && strcmp(gt->valuestring, "fulfillment_user_assertion") == 0) {
        d.grant = OAUTH_GRANT_USER_ASSERTION;
        if (!as) {
            r = dropin_fail(error, description, "invalid_request", "assertion is missing");
            goto out;
        }
        if (!cJSON_IsString(as) || decode_assertion(as->valuestring, &d.user_id) < 0) {
            r = dropin_fail(error, description, "invalid_grant",
                            "assertion must be standard Base64 of a JSON object {\"user_id\": \"...\"}");
            goto out;
        }
    } else if (cJSON_IsString(gt) && strcmp(gt->valuestring, "client_credentials") == 0) {
        d.grant = OAUTH_GRANT_CLIENT_CREDENTIALS;
    } else {
        r = dropin_fail(error, description, "unsupported_grant_type",
                        "grant_type must be fulfillment_user_assertion or client_credentials");
        goto out;
    }
    if (sc && !(d.scope = strdup(sc->valuestring))) {
        r = -ENOMEM;
        goto out;
    }
    *ret = d;
    d = (dropin){ 0 };
    r = 0;
out:
    dropin_clear(&d);
    json_delete_wiped(j); /* holds the assertion */
    return r;
}

int dropin_parse(const char *body, size_t len, dropin *ret, const char **error, const char **description) {
    cJSON *j;

    if (len == 0 || len > OAUTH_BODY_MAX)
        return dropin_fail(error, description, "invalid_request", "the body must be a JSON object");
    j = json_parse_whole(body, len);
    if (!cJSON_IsObject(j)) {
        json_delete_wiped(j);
        return dropin_fail(error, description, "invalid_request",
                           "the body must be a JSON object, each member named once");
    }
    return dropin_check(j, ret, error, description);
}

#define DROPIN_PARAMS_MAX 32

/* %XX and '+' decoded into out (at least len + 1 bytes). Returns the
 * decoded length, or -1 for a bad escape or a NUL. */
static ptrdiff_t form_decode(const char *in, size_t len, char *out) {
    size_t o = 0;

    for (size_t i = 0; i < len; i++) {
        if (in[i] == '+')
            out[o++] = ' ';
        else if (in[i] == '%') {
            int hi = i + 1 < len ? hex_value(in[i + 1]) : -1;
            int lo = i + 2 < len ? hex_value(in[i + 2]) : -1;
            if (hi < 0 || lo < 0 || (hi == 0 && lo == 0))
                return -1;
            out[o++] = (char)(hi << 4 | lo);
            i += 2;
        } else if (in[i] == '\0')
            return -1;
        else
            out[o++] = in[i];
    }
    out[o] = '\0';
    return (ptrdiff_t)o;
}

int dropin_parse_form(const char *body, size_t len, dropin *ret, const char **error, const char **description) {
    cJSON *j;
    char *buf;
    int r = 0;

    if (len == 0 || len > OAUTH_BODY_MAX)
        return dropin_fail(error, description, "invalid_request", "the body must be a form with grant_type");
    j = cJSON_CreateObject();
    /* one pair decoded: key, NUL, value, NUL; a pair without '=' still
     * gets its empty value's NUL */
    buf = malloc(len + 2);
    if (!j || !buf) {
        json_delete_wiped(j);
        free(buf);
        return -ENOMEM;
    }
    for (const char *p = body, *end = body + len; p < end && r == 0;) {
        const char *amp = memchr(p, '&', (size_t)(end - p)), *pe = amp ? amp : end;
        /* each pair: key, NUL, value, NUL, decoded no longer than it came */
        size_t used = (size_t)(pe - p) + 2;
        const char *eq = memchr(p, '=', (size_t)(pe - p));
        ptrdiff_t kl, vl;
        char *key, *value;

        if (pe == p) { /* an empty pair: "a=1&&b=2" */
            p = pe + 1;
            continue;
        }
        key = buf;
        kl = form_decode(p, (size_t)((eq ? eq : pe) - p), key);
        value = kl >= 0 ? key + kl + 1 : NULL;
        vl = kl >= 0 && eq ? form_decode(eq + 1, (size_t)(pe - eq - 1), value) : 0;
        if (kl >= 0 && !eq)
            value[0] = '\0';
        if (kl <= 0 || vl < 0)
            r = dropin_fail(error, description, "invalid_request", "the form has a malformed parameter");
        else if (cJSON_GetArraySize(j) >= DROPIN_PARAMS_MAX)
            /* a token request has a handful; and each is looked up among
             * those before it, so thousands would cost seconds */
            r = dropin_fail(error, description, "invalid_request", "the form has too many parameters");
        else if (cJSON_GetObjectItemCaseSensitive(j, key))
            r = dropin_fail(error, description, "invalid_request", "a parameter is given more than once");
        else if (!cJSON_AddStringToObject(j, key, value))
            r = -ENOMEM;
        explicit_bzero(buf, used);
        p = pe + 1;
    }
    wipe_free(buf, len + 2);
    if (r < 0) {
        json_delete_wiped(j);
        return r;
    }
    return dropin_check(j, ret, error, description);
}

void dropin_clear(dropin *d) {
    wipe_free_str(d->user_id);
    free(d->scope);
    d->user_id = d->scope = NULL;
}

const char *request_api_key(const char *authorization, bool basic, char *buf, size_t size, size_t *ret_len,
                            const char **ret_raw, size_t *ret_raw_len) {
    const char *colon;
    ptrdiff_t n, id, pw;

    *ret_raw = NULL;
    if (!authorization)
        return NULL;
    if (strncasecmp(authorization, "Bearer ", 7) == 0) {
        *ret_len = strlen(authorization + 7);
        return authorization + 7;
    }
    if (!basic || strncasecmp(authorization, "Basic ", 6) != 0 || size < 4)
        return NULL;
    /* buf: "id:secret" as sent, a NUL, then the id and the secret decoded,
     * each followed by a NUL: decoded is never longer */
    n = base64_decode(authorization + 6, strlen(authorization + 6), buf, (size - 2) / 2);
    if (n <= 0 || memchr(buf, '\0', (size_t)n) || !(colon = memchr(buf, ':', (size_t)n)))
        return NULL;
    buf[n] = '\0';
    *ret_raw = colon + 1;
    *ret_raw_len = (size_t)(buf + n - colon - 1);
    id = form_decode(buf, (size_t)(colon - buf), buf + n + 1);
    pw = id < 0 ? -1 : form_decode(colon + 1, *ret_raw_len, buf + n + 1 + id + 1);
    if (pw < 0)
        return NULL; /* not form-encoded: the secret as sent is all there is */
    *ret_len = (size_t)pw;
    return buf + n + 1 + id + 1;
}

int request_body_append(char **body, size_t *len, const char *data, size_t n) {
    char *p = malloc(*len + n + 1);

    if (!p)
        return -ENOMEM;
    if (*body)
        memcpy(p, *body, *len);
    memcpy(p + *len, data, n);
    wipe_free(*body, *len);
    *body = p;
    *len += n;
    p[*len] = '\0';
    return 0;
}

bool request_proxy_path_valid(const char *path) {
    static const char prefix[] = "/v2/recommendations/";
    const char *p, *id;
    size_t n;

    if (strncmp(path, prefix, sizeof(prefix) - 1) != 0)
        return false;
    p = path + sizeof(prefix) - 1;
    if (strcmp(p, "replacement_items") == 0 || strcmp(p, "complementary_items") == 0)
        return true;
    if (strncmp(p, "orders/", 7) != 0)
        return false;
    id = p + 7;
    n = strspn(id, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-");
    if (n == 0 || n > 128 || id[n] != '/')
        return false;
    return strcmp(id + n + 1, "replacement_items") == 0 || strcmp(id + n + 1, "complementary_items") == 0;
}

/* One pass that stops at the first '?' and looks closer only at a '%' (a
 * token request's path has none): on every request's path. */
bool request_path_has_nul(const char *target) {
    for (const char *p = target; (p = strpbrk(p, "%?")) && *p == '%'; p++)
        if (p[1] == '0' && p[2] == '0')
            return true;
    return false;
}
