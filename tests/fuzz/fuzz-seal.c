/* Fuzzes the opening of fleet mode's sealed values (seal_open_token,
 * seal_open_tuple). Whatever comes back from Redis must never crash the
 * reader, and nothing may open as a token or a tuple that tokend would not
 * have made itself.
 *
 * Random bytes essentially never authenticate, so the first input byte
 * picks a mode:
 *   bit 0 clear: bytes 1- are opened as they are, as a token and as a
 *     tuple, under the fixed keys below (the corpus holds values that do
 *     open); a success must be a valid token or tuple.
 *   bit 0 set, bit 2 clear: bytes 1-8 created_at, 9-12 lifetime_s and
 *     13-16 remaining_ms (big-endian), 17- the value: sealed here with
 *     seal_token (which seals any bytes), then opened; it must open exactly
 *     when the value and times are valid, checked here a second way.
 *   bit 0 set, bit 2 set: byte 1 the grant, 2- user id, NUL, scope: sealed
 *     with seal_tuple and opened; both succeed or neither, and the tuple
 *     comes back unchanged.
 *   bit 1 set: sealed under the previous key, so opening takes that path. */
#include <errno.h>
#include <stdbool.h>
#include <string.h>

#include "fuzz.h"
#include "seal.h"

#define NOW_MS 1000000ULL
#define FAR_END (UINT64_C(1) << 62) /* opened at wall-clock 0: the TTL decides */

static const char AAD[] = "tokend:fuzz:u:name";

/* RFC 6750 b64token, within tokend's bound */
static bool value_valid(const char *s, size_t len) {
    return fuzz_b64token(s, len) && len <= OAUTH_TOKEN_MAX;
}

static uint64_t be(const uint8_t *p, int n) {
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v = v << 8 | p[i];
    return v;
}

static void check_token(const token *t, uint64_t remaining_ms) {
    fuzz_check(t->len == strlen(t->value) && value_valid(t->value, t->len));
    fuzz_check(t->lifetime_s >= 1 && t->lifetime_s <= OAUTH_LIFETIME_MAX);
    fuzz_check(remaining_ms >= 1 && remaining_ms <= (uint64_t)t->lifetime_s * 1000);
    fuzz_check(t->received_ms == NOW_MS && t->expires_ms == NOW_MS + remaining_ms);
}

static void check_tuple(enum oauth_grant g, const char *user, const char *scope) {
    size_t ulen = strnlen(user, OAUTH_USER_ID_MAX + 1), slen = strnlen(scope, OAUTH_SCOPE_MAX + 1);

    fuzz_check(g == OAUTH_GRANT_USER_ASSERTION || g == OAUTH_GRANT_CLIENT_CREDENTIALS);
    fuzz_check(g == OAUTH_GRANT_USER_ASSERTION ? ulen >= 1 && ulen <= OAUTH_USER_ID_MAX : ulen == 0);
    fuzz_check(slen <= OAUTH_SCOPE_MAX);
}

static void open_raw(const seal_keys *k, const uint8_t *in, size_t len) {
    char user[OAUTH_USER_ID_MAX + 1], scope[OAUTH_SCOPE_MAX + 1];
    enum oauth_grant g;
    token *t = NULL;
    int r;

    r = seal_open_token(k, AAD, strlen(AAD), in, len, NOW_MS, 60000, 0, &t);
    fuzz_check(r == 0 || r == -EBADMSG || r == -ENOMEM);
    if (r == 0)
        check_token(t, 60000);
    else
        fuzz_check(!t);
    token_unref(t);
    r = seal_open_tuple(k, AAD, strlen(AAD), in, len, &g, user, scope);
    fuzz_check(r == 0 || r == -EBADMSG);
    if (r == 0)
        check_tuple(g, user, scope);
}

static void round_trip_token(const seal_keys *sealer, const seal_keys *opener, const uint8_t *p, size_t len) {
    unsigned char out[SEAL_TOKEN_MAX];
    uint64_t lifetime, remaining;
    size_t out_len = 0, vlen;
    const char *value;
    token *t = NULL, *o = NULL;
    bool valid;
    int r;

    if (len < 16 + 1)
        return;
    lifetime = be(p + 8, 4);
    remaining = be(p + 12, 4);
    value = (const char *)p + 16;
    vlen = len - 16;
    fuzz_check(token_new(value, vlen > OAUTH_TOKEN_MAX + 1 ? OAUTH_TOKEN_MAX + 1 : vlen, (uint32_t)lifetime,
                         (int64_t)be(p, 8), 0, &t) == 0);
    r = seal_token(sealer, AAD, strlen(AAD), t, FAR_END, out, &out_len);
    if (t->len > OAUTH_TOKEN_MAX) {
        fuzz_check(r == -EINVAL);
        token_unref(t);
        return;
    }
    fuzz_check(r == 0 && out_len == (size_t)SEAL_OVERHEAD + 20 + t->len && out_len <= SEAL_TOKEN_MAX);
    valid = value_valid(t->value, t->len) && lifetime >= 1 &&
            lifetime <= OAUTH_LIFETIME_MAX && remaining >= 1 && remaining <= lifetime * 1000;
    r = seal_open_token(opener, AAD, strlen(AAD), out, out_len, NOW_MS, remaining, 0, &o);
    fuzz_check(r == (valid ? 0 : -EBADMSG) || r == -ENOMEM);
    if (r == 0) {
        check_token(o, remaining);
        fuzz_check(o->len == t->len && memcmp(o->value, t->value, t->len) == 0);
        fuzz_check(o->created_at == t->created_at && o->lifetime_s == t->lifetime_s);
    }
    token_unref(o);
    token_unref(t);
}

static void round_trip_tuple(const seal_keys *sealer, const seal_keys *opener, const uint8_t *p, size_t len) {
    char in_user[OAUTH_USER_ID_MAX + 2], in_scope[OAUTH_SCOPE_MAX + 2];
    char user[OAUTH_USER_ID_MAX + 1], scope[OAUTH_SCOPE_MAX + 1];
    unsigned char out[SEAL_TUPLE_MAX];
    const uint8_t *nul;
    size_t out_len = 0, ulen, slen;
    enum oauth_grant g;
    bool valid;
    int r;

    if (len < 1)
        return;
    nul = memchr(p + 1, '\0', len - 1);
    ulen = nul ? (size_t)(nul - (p + 1)) : len - 1;
    slen = nul ? len - 2 - ulen : 0;
    if (ulen > OAUTH_USER_ID_MAX + 1)
        ulen = OAUTH_USER_ID_MAX + 1;
    if (slen > OAUTH_SCOPE_MAX + 1)
        slen = OAUTH_SCOPE_MAX + 1;
    memcpy(in_user, p + 1, ulen);
    in_user[ulen] = '\0';
    if (slen)
        memcpy(in_scope, nul + 1, slen);
    in_scope[slen] = '\0';
    ulen = strlen(in_user);
    slen = strlen(in_scope);
    valid = (p[0] == OAUTH_GRANT_USER_ASSERTION ? ulen >= 1 && ulen <= OAUTH_USER_ID_MAX
                                                 : p[0] == OAUTH_GRANT_CLIENT_CREDENTIALS && ulen == 0) &&
            slen <= OAUTH_SCOPE_MAX;
    r = seal_tuple(sealer, AAD, strlen(AAD), (enum oauth_grant)p[0], in_user, in_scope, out, &out_len);
    fuzz_check(r == (valid ? 0 : -EINVAL));
    if (r < 0)
        return;
    fuzz_check(out_len == (size_t)SEAL_OVERHEAD + 2 + ulen + slen && out_len <= SEAL_TUPLE_MAX);
    fuzz_check(seal_open_tuple(opener, AAD, strlen(AAD), out, out_len, &g, user, scope) == 0);
    fuzz_check(g == p[0] && strcmp(user, in_user) == 0 && strcmp(scope, in_scope) == 0);
    check_tuple(g, user, scope);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static seal_keys cur_only, both, prev_only;
    static bool ready;

    if (!ready) {
        unsigned char a[SEAL_KEY_LEN], b[SEAL_KEY_LEN];
        for (size_t i = 0; i < SEAL_KEY_LEN; i++) {
            a[i] = (unsigned char)(0xa0 + i);
            b[i] = (unsigned char)(0xb0 + i);
        }
        fuzz_check(seal_keys_derive(b, NULL, &cur_only) == 0);
        fuzz_check(seal_keys_derive(b, a, &both) == 0);
        fuzz_check(seal_keys_derive(a, NULL, &prev_only) == 0);
        ready = true;
    }
    if (size < 1)
        return 0;
    if (!(data[0] & 1))
        open_raw(&both, data + 1, size - 1);
    else if (!(data[0] & 4))
        round_trip_token(data[0] & 2 ? &prev_only : &cur_only, &both, data + 1, size - 1);
    else
        round_trip_tuple(data[0] & 2 ? &prev_only : &cur_only, &both, data + 1, size - 1);
    return 0;
}
