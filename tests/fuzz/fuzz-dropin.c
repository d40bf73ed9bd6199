/* Fuzzes the drop-in endpoint's body (POST /v2/oauth/token, the shape
 * Instacart itself takes, minus the credentials), as JSON and as a form. The body sits in a buffer
 * of exactly its length, as tokend's upload buffer holds it. A refusal
 * must name an OAuth error code and leave *ret untouched; an
 * acceptance must carry what the body asked for, checked here by decoding
 * the body again independently: the grant, for the user grant the user id
 * its assertion names (a valid one), and a valid scope when one was given. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdbool.h>
#include <string.h>

#include "fuzz.h"
#include "oauth.h"
#include "request.h"
#include "util.h"

/* The OAuth error codes a refusal may carry (RFC 6749 5.2). */
static bool known_error(const char *e) {
    static const char *const codes[] = { "invalid_request", "invalid_grant", "invalid_scope",
                                         "unsupported_grant_type" };

    for (size_t i = 0; e && i < sizeof(codes) / sizeof(codes[0]); i++)
        if (strcmp(e, codes[i]) == 0)
            return true;
    return false;
}

/* The user id the assertion names, decoded here again: the Base64 with the
 * shared decoder (fuzzed on its own by fuzz-assertion), the JSON with cJSON. */
static char *assertion_user(const char *assertion) {
    size_t alen = strlen(assertion);
    unsigned char *json = malloc(alen + 1);
    const cJSON *u;
    char *user = NULL;
    ptrdiff_t n;
    cJSON *j;

    fuzz_check(json);
    n = base64_decode(assertion, alen, json, alen);
    fuzz_check(n > 0);
    j = cJSON_ParseWithLength((const char *)json, (size_t)n);
    fuzz_check(cJSON_IsObject(j));
    u = cJSON_GetObjectItemCaseSensitive(j, "user_id");
    fuzz_check(cJSON_IsString(u));
    user = strdup(u->valuestring);
    fuzz_check(user);
    cJSON_Delete(j);
    free(json);
    return user;
}

static void check_accepted(const uint8_t *data, size_t size, const dropin *d) {
    const cJSON *gt, *sc;
    cJSON *j;

    /* a JSON object, nothing after it, no NUL smuggled in (raw or escaped) */
    fuzz_check(!memchr(data, '\0', size));
    fuzz_check(!memmem(data, size, "\\u0000", 6));
    j = cJSON_ParseWithLength((const char *)data, size);
    fuzz_check(cJSON_IsObject(j));
    /* tokend holds the secret: a caller sending one is told to stop */
    fuzz_check(!cJSON_GetObjectItemCaseSensitive(j, "client_secret"));

    gt = cJSON_GetObjectItemCaseSensitive(j, "grant_type");
    fuzz_check(cJSON_IsString(gt));
    if (d->grant == OAUTH_GRANT_USER_ASSERTION) {
        const cJSON *as = cJSON_GetObjectItemCaseSensitive(j, "assertion");
        char *user;

        fuzz_check(strcmp(gt->valuestring, "fulfillment_user_assertion") == 0);
        fuzz_check(d->user_id);
        fuzz_check(request_user_id_valid(d->user_id, strlen(d->user_id)));
        fuzz_check(cJSON_IsString(as));
        user = assertion_user(as->valuestring);
        fuzz_check(strcmp(user, d->user_id) == 0);
        free(user);
    } else {
        fuzz_check(d->grant == OAUTH_GRANT_CLIENT_CREDENTIALS);
        fuzz_check(strcmp(gt->valuestring, "client_credentials") == 0);
        fuzz_check(!d->user_id);
    }

    sc = cJSON_GetObjectItemCaseSensitive(j, "scope");
    if (d->scope) {
        fuzz_check(oauth_scope_valid(d->scope, strlen(d->scope)));
        fuzz_check(cJSON_IsString(sc) && strcmp(sc->valuestring, d->scope) == 0);
    } else
        fuzz_check(!sc);
    cJSON_Delete(j);
}

/* The same bytes as a form (application/x-www-form-urlencoded): whatever
 * they hold, a refusal names an OAuth error and writes nothing; an
 * acceptance is a known grant with a valid user id and scope. */
static void check_form(const uint8_t *data, size_t size) {
    static char sentinel[] = "untouched";
    const char *error = NULL, *description = NULL;
    dropin d = { .grant = (enum oauth_grant)7, .user_id = sentinel, .scope = sentinel };
    int r = dropin_parse_form((const char *)data, size, &d, &error, &description);

    if (r == 0) {
        fuzz_check(d.grant == OAUTH_GRANT_USER_ASSERTION || d.grant == OAUTH_GRANT_CLIENT_CREDENTIALS);
        fuzz_check((d.grant == OAUTH_GRANT_USER_ASSERTION) == (d.user_id != NULL));
        fuzz_check(!d.user_id || request_user_id_valid(d.user_id, strlen(d.user_id)));
        fuzz_check(!d.scope || oauth_scope_valid(d.scope, strlen(d.scope)));
        /* a form can only say so in plain text */
        fuzz_check(memmem(data, size, "grant_type=", 11) || memmem(data, size, "grant%5Ftype=", 13) ||
                   memmem(data, size, "grant%5ftype=", 13) || memchr(data, '%', size));
        dropin_clear(&d);
        return;
    }
    if (r == -ENOMEM)
        return;
    fuzz_check(r == -EINVAL && known_error(error) && description && description[0]);
    fuzz_check(d.grant == (enum oauth_grant)7 && d.user_id == sentinel && d.scope == sentinel);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static char sentinel_user[] = "untouched", sentinel_scope[] = "untouched";
    const char *error = NULL, *description = NULL;
    dropin d = { .grant = (enum oauth_grant)7, .user_id = sentinel_user, .scope = sentinel_scope };
    int r;

    check_form(data, size);
    r = dropin_parse((const char *)data, size, &d, &error, &description);
    if (r == 0) {
        fuzz_check(d.user_id != sentinel_user && d.scope != sentinel_scope);
        check_accepted(data, size, &d);
        dropin_clear(&d);
        fuzz_check(!d.user_id && !d.scope);
        return 0;
    }
    if (r == -ENOMEM)
        return 0;
    fuzz_check(r == -EINVAL);
    fuzz_check(known_error(error));
    fuzz_check(description && description[0]);
    /* a refusal writes nothing the caller would have to free */
    fuzz_check(d.grant == (enum oauth_grant)7 && d.user_id == sentinel_user && d.scope == sentinel_scope);
    return 0;
}
