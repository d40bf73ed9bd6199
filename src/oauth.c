/* Instacart's token endpoint, as bytes: the assertion, the request body and
 * the parsing of answers. Everything that came from Instacart is treated as
 * hostile: sizes, types and ranges are checked before anything is kept.
 * Not responsible for sending anything (upstream.c does). */
#include "oauth.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <string.h>
#include <strings.h>

#include "json.h"
#include "util.h"

/* A whole answer within our size limit, parsed strictly (json.h). */
static cJSON *json_parse_strict(const char *body, size_t len) {
    if (len == 0 || len > OAUTH_BODY_MAX)
        return NULL;
    return json_parse_whole(body, len);
}

/* cJSON_PrintPreallocated writes into our buffer with no reallocation, so no
 * copy of a secret is left behind in freed memory. */
static int json_print(cJSON *j, size_t size, char **ret, size_t *ret_len) {
    char *buf = malloc(size);

    if (!buf)
        return -ENOMEM;
    if (!cJSON_PrintPreallocated(j, buf, (int)size, false)) {
        wipe_free(buf, size);
        return -ENOBUFS;
    }
    *ret_len = strlen(buf);
    *ret = buf;
    return 0;
}

int oauth_assertion(const char *user_id, char **ret) {
    cJSON *j;
    char *json = NULL, *out;
    size_t json_len = 0, out_size;
    int r;

    j = cJSON_CreateObject();
    if (!j || !cJSON_AddStringToObject(j, "user_id", user_id)) {
        json_delete_wiped(j);
        return -ENOMEM;
    }
    /* worst case \uXXXX for every byte, plus the frame */
    r = json_print(j, strlen(user_id) * 6 + 32, &json, &json_len);
    json_delete_wiped(j);
    if (r < 0)
        return r;
    out_size = base64_encoded_size(json_len);
    out = malloc(out_size);
    if (!out) {
        wipe_free_str(json);
        return -ENOMEM;
    }
    base64_encode(json, json_len, out, out_size);
    wipe_free_str(json);
    *ret = out;
    return 0;
}

int oauth_request_body(enum oauth_grant grant, const char *client_id, const char *client_secret,
                       const char *scope, const char *user_id, char **ret, size_t *ret_len) {
    char *assertion = NULL;
    cJSON *j;
    size_t size;
    int r = -ENOMEM;

    j = cJSON_CreateObject();
    if (!j)
        return -ENOMEM;
    if (!cJSON_AddStringToObject(j, "grant_type",
                                 grant == OAUTH_GRANT_USER_ASSERTION ? "fulfillment_user_assertion"
                                                                     : "client_credentials") ||
        !cJSON_AddStringToObject(j, "client_id", client_id) ||
        !cJSON_AddStringToObject(j, "client_secret", client_secret))
        goto out;
    if (scope && *scope && !cJSON_AddStringToObject(j, "scope", scope))
        goto out;
    if (grant == OAUTH_GRANT_USER_ASSERTION) {
        r = oauth_assertion(user_id, &assertion);
        if (r < 0)
            goto out;
        r = -ENOMEM;
        if (!cJSON_AddStringToObject(j, "assertion", assertion))
            goto out;
    }
    size = 128 + 6 * (strlen(client_id) + strlen(client_secret) + (scope ? strlen(scope) : 0)) +
           (assertion ? strlen(assertion) : 0);
    r = json_print(j, size, ret, ret_len);
out:
    wipe_free_str(assertion);
    json_delete_wiped(j);
    return r;
}

int oauth_revoke_body(const char *client_id, const char *client_secret, const char *token_value,
                      char **ret, size_t *ret_len) {
    cJSON *j = cJSON_CreateObject();
    int r = -ENOMEM;

    if (j && cJSON_AddStringToObject(j, "client_id", client_id) &&
        cJSON_AddStringToObject(j, "client_secret", client_secret) &&
        cJSON_AddStringToObject(j, "token", token_value))
        r = json_print(j, 64 + 6 * (strlen(client_id) + strlen(client_secret) + strlen(token_value)),
                       ret, ret_len);
    json_delete_wiped(j);
    return r;
}

int oauth_scope_valid(const char *s, size_t len) {
    if (len == 0 || len > OAUTH_SCOPE_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c <= 0x20 || c >= 0x7f || c == '"' || c == '\\')
            return false;
    }
    return true;
}

/* RFC 6750 b64token: the only characters a bearer token can have, and all
 * of them safe in JSON and in an HTTP header without escaping. */
bool oauth_token_valid(const char *s, size_t len) {
    size_t i = 0;

    if (len == 0 || len > OAUTH_TOKEN_MAX)
        return false;
    for (; i < len; i++) {
        char c = s[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '.' || c == '_' || c == '~' || c == '+' || c == '/'))
            break;
    }
    if (i == 0)
        return false;
    for (; i < len; i++)
        if (s[i] != '=')
            return false;
    return true;
}

int oauth_parse_token(const char *body, size_t len, uint64_t received_ms, token **ret) {
    const cJSON *at, *tt, *ei, *ca;
    cJSON *j;
    int64_t created_at = 0;
    double lifetime;
    int r = -EBADMSG;

    j = json_parse_strict(body, len);
    if (!j)
        return -EBADMSG;
    if (!cJSON_IsObject(j))
        goto out;
    at = cJSON_GetObjectItemCaseSensitive(j, "access_token");
    tt = cJSON_GetObjectItemCaseSensitive(j, "token_type");
    ei = cJSON_GetObjectItemCaseSensitive(j, "expires_in");
    ca = cJSON_GetObjectItemCaseSensitive(j, "created_at");
    if (!cJSON_IsString(at) || !oauth_token_valid(at->valuestring, strlen(at->valuestring)))
        goto out;
    if (!cJSON_IsString(tt) || strcasecmp(tt->valuestring, "Bearer") != 0)
        goto out;
    /* cJSON keeps numbers as doubles: insist on a whole number in range */
    if (!cJSON_IsNumber(ei))
        goto out;
    lifetime = ei->valuedouble;
    if (!isfinite(lifetime) || lifetime != floor(lifetime) || lifetime < 1 || lifetime > OAUTH_LIFETIME_MAX)
        goto out;
    /* created_at is Instacart's clock: only echoed, never used for expiry */
    if (cJSON_IsNumber(ca) && isfinite(ca->valuedouble) && ca->valuedouble >= 0 && ca->valuedouble < 1e11)
        created_at = (int64_t)ca->valuedouble;
    else
        created_at = now_unix();
    r = token_new(at->valuestring, strlen(at->valuestring), (uint32_t)lifetime, created_at,
                  received_ms, ret);
out:
    json_delete_wiped(j);
    return r;
}

static void copy_code(const char *s, char *out, size_t out_size) {
    size_t n = 0;

    for (; s[n] && n + 1 < out_size; n++) {
        unsigned char c = (unsigned char)s[n];
        /* printable and safe to log or put in JSON */
        out[n] = (c > 0x20 && c < 0x7f && c != '"' && c != '\\') ? (char)c : '_';
    }
    out[n] = '\0';
}

static bool find_code(const cJSON *e, char *out, size_t out_size) {
    static const char *const names[] = { "error", "code", "error_code", "type" };
    const cJSON *v;

    if (!cJSON_IsObject(e))
        return false;
    for (size_t i = 0; i < ARRAY_SIZE(names); i++) {
        v = cJSON_GetObjectItemCaseSensitive(e, names[i]);
        if (cJSON_IsString(v) && v->valuestring[0]) {
            copy_code(v->valuestring, out, out_size);
            return true;
        }
        if (cJSON_IsObject(v) && find_code(v, out, out_size))
            return true;
    }
    v = cJSON_GetObjectItemCaseSensitive(e, "errors");
    if (cJSON_IsArray(v))
        return find_code(cJSON_GetArrayItem(v, 0), out, out_size);
    if (cJSON_IsObject(v))
        return find_code(v, out, out_size);
    return false;
}

void oauth_parse_error(const char *body, size_t len, char *out, size_t out_size) {
    cJSON *j;

    if (out_size == 0)
        return;
    out[0] = '\0';
    j = json_parse_strict(body, len);
    if (!j)
        return;
    if (!find_code(j, out, out_size) && cJSON_IsArray(j))
        find_code(cJSON_GetArrayItem(j, 0), out, out_size);
    json_delete_wiped(j);
}
