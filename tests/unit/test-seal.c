/* Unit tests of src/seal.c: values open only under their key name and key,
 * any change to a sealed value is refused, the previous key still opens
 * what it sealed, names hide the user id, and the key file is parsed
 * strictly. */
#include <errno.h>

#include "seal.h"
#include "unit.h"

/* an end on the wall clock far beyond any test's now (0): the TTL decides */
#define FAR_END (UINT64_C(1) << 62)

static const char AAD[] = "tokend:0123456789abcdef:u:00112233445566778899aabbccddeeff";
static const char OTHER_AAD[] = "tokend:0123456789abcdef:u:ffeeddccbbaa99887766554433221100";

static void raw_key(unsigned char k[SEAL_KEY_LEN], unsigned char fill) {
    for (size_t i = 0; i < SEAL_KEY_LEN; i++)
        k[i] = (unsigned char)(fill + i);
}

static void keys(seal_keys *k, unsigned char cur, int prev) {
    unsigned char c[SEAL_KEY_LEN], p[SEAL_KEY_LEN];

    raw_key(c, cur);
    if (prev >= 0)
        raw_key(p, (unsigned char)prev);
    ASSERT_INT_EQ(seal_keys_derive(c, prev >= 0 ? p : NULL, k), 0);
}

static token *make_token(const char *value, uint32_t lifetime_s, int64_t created_at) {
    token *t;
    ASSERT_INT_EQ(token_new(value, strlen(value), lifetime_s, created_at, 5, &t), 0);
    return t;
}

static void seal_one(const seal_keys *k, const char *aad, unsigned char out[SEAL_TOKEN_MAX], size_t *len) {
    token *t = make_token("abc.DEF-123_~+/==", 3600, 1700000000);

    ASSERT_INT_EQ(seal_token(k, aad, strlen(aad), t, FAR_END, out, len), 0);
    token_unref(t);
}

static void token_round_trip(void) {
    unsigned char buf[SEAL_TOKEN_MAX];
    size_t len;
    seal_keys k;
    token *t;

    keys(&k, 1, -1);
    seal_one(&k, AAD, buf, &len);
    ASSERT_UINT_EQ(len, SEAL_OVERHEAD + 20 + strlen("abc.DEF-123_~+/=="));
    ASSERT_INT_EQ(seal_open_token(&k, AAD, strlen(AAD), buf, len, 1000, 3600000, 0, &t), 0);
    ASSERT_STR_EQ(t->value, "abc.DEF-123_~+/==");
    ASSERT_UINT_EQ(t->len, strlen("abc.DEF-123_~+/=="));
    ASSERT_UINT_EQ(t->lifetime_s, 3600);
    ASSERT_INT_EQ(t->created_at, 1700000000);
    ASSERT_UINT_EQ(t->received_ms, 1000);
    token_unref(t);
    seal_keys_wipe(&k);
}

/* The value came from Redis with a PTTL: that, not the lifetime, says when
 * it expires. */
static void remaining_ms_sets_expiry(void) {
    unsigned char buf[SEAL_TOKEN_MAX];
    size_t len;
    seal_keys k;
    token *t = NULL;

    keys(&k, 1, -1);
    seal_one(&k, AAD, buf, &len);
    ASSERT_INT_EQ(seal_open_token(&k, AAD, strlen(AAD), buf, len, 50000, 1234, 0, &t), 0);
    ASSERT_UINT_EQ(t->expires_ms, 50000 + 1234);
    ASSERT_UINT_EQ(token_remaining_ms(t, 50000), 1234);
    token_unref(t);
    /* exactly the lifetime is fine, beyond it or nothing left is not */
    ASSERT_INT_EQ(seal_open_token(&k, AAD, strlen(AAD), buf, len, 7, 3600000, 0, &t), 0);
    ASSERT_UINT_EQ(t->expires_ms, 7 + 3600000);
    token_unref(t);
    t = NULL;
    ASSERT_INT_EQ(seal_open_token(&k, AAD, strlen(AAD), buf, len, 7, 3600001, 0, &t), -EBADMSG);
    ASSERT_INT_EQ(seal_open_token(&k, AAD, strlen(AAD), buf, len, 7, 0, 0, &t), -EBADMSG);
    ASSERT(!t);
}

static void tuple_round_trip(void) {
    unsigned char buf[SEAL_TUPLE_MAX];
    char user[OAUTH_USER_ID_MAX + 1], scope[OAUTH_SCOPE_MAX + 1], long_user[OAUTH_USER_ID_MAX + 1];
    enum oauth_grant g;
    size_t len;
    seal_keys k;

    keys(&k, 1, -1);
    ASSERT_INT_EQ(seal_tuple(&k, AAD, strlen(AAD), OAUTH_GRANT_USER_ASSERTION, "user-42", "orders:read",
                             buf, &len), 0);
    ASSERT_INT_EQ(seal_open_tuple(&k, AAD, strlen(AAD), buf, len, &g, user, scope), 0);
    ASSERT_INT_EQ(g, OAUTH_GRANT_USER_ASSERTION);
    ASSERT_STR_EQ(user, "user-42");
    ASSERT_STR_EQ(scope, "orders:read");

    /* a client token: no user id, no scope */
    ASSERT_INT_EQ(seal_tuple(&k, AAD, strlen(AAD), OAUTH_GRANT_CLIENT_CREDENTIALS, "", "", buf, &len), 0);
    ASSERT_INT_EQ(seal_open_tuple(&k, AAD, strlen(AAD), buf, len, &g, user, scope), 0);
    ASSERT_INT_EQ(g, OAUTH_GRANT_CLIENT_CREDENTIALS);
    ASSERT_STR_EQ(user, "");
    ASSERT_STR_EQ(scope, "");

    /* the largest tuple fits SEAL_TUPLE_MAX exactly */
    memset(long_user, 'u', OAUTH_USER_ID_MAX);
    long_user[OAUTH_USER_ID_MAX] = '\0';
    char long_scope[OAUTH_SCOPE_MAX + 1];
    memset(long_scope, 's', OAUTH_SCOPE_MAX);
    long_scope[OAUTH_SCOPE_MAX] = '\0';
    ASSERT_INT_EQ(seal_tuple(&k, AAD, strlen(AAD), OAUTH_GRANT_USER_ASSERTION, long_user, long_scope, buf,
                             &len), 0);
    ASSERT_UINT_EQ(len, SEAL_TUPLE_MAX);
    ASSERT_INT_EQ(seal_open_tuple(&k, AAD, strlen(AAD), buf, len, &g, user, scope), 0);
    ASSERT_STR_EQ(user, long_user);
    ASSERT_STR_EQ(scope, long_scope);

    /* what does not fit, or is not a key the cache has, is refused */
    ASSERT_INT_EQ(seal_tuple(&k, AAD, strlen(AAD), OAUTH_GRANT_USER_ASSERTION, "", "", buf, &len), -EINVAL);
    ASSERT_INT_EQ(seal_tuple(&k, AAD, strlen(AAD), OAUTH_GRANT_CLIENT_CREDENTIALS, "u", "", buf, &len),
                  -EINVAL);
    ASSERT_INT_EQ(seal_tuple(&k, AAD, strlen(AAD), (enum oauth_grant)7, "u", "", buf, &len), -EINVAL);
    char too_long[OAUTH_USER_ID_MAX + 2];
    memset(too_long, 'u', OAUTH_USER_ID_MAX + 1);
    too_long[OAUTH_USER_ID_MAX + 1] = '\0';
    ASSERT_INT_EQ(seal_tuple(&k, AAD, strlen(AAD), OAUTH_GRANT_USER_ASSERTION, too_long, "", buf, &len),
                  -EINVAL);
}

/* A value moved under another key name does not open. */
static void wrong_aad_refused(void) {
    unsigned char buf[SEAL_TOKEN_MAX], tb[SEAL_TUPLE_MAX];
    char user[OAUTH_USER_ID_MAX + 1], scope[OAUTH_SCOPE_MAX + 1];
    enum oauth_grant g;
    size_t len, tlen;
    seal_keys k;
    token *t = NULL;

    keys(&k, 1, -1);
    seal_one(&k, AAD, buf, &len);
    ASSERT_INT_EQ(seal_open_token(&k, OTHER_AAD, strlen(OTHER_AAD), buf, len, 0, 1000, 0, &t), -EBADMSG);
    ASSERT_INT_EQ(seal_open_token(&k, AAD, strlen(AAD) - 1, buf, len, 0, 1000, 0, &t), -EBADMSG);
    ASSERT_INT_EQ(seal_open_token(&k, NULL, 0, buf, len, 0, 1000, 0, &t), -EBADMSG);
    ASSERT(!t);
    ASSERT_INT_EQ(seal_tuple(&k, AAD, strlen(AAD), OAUTH_GRANT_USER_ASSERTION, "u", "s", tb, &tlen), 0);
    ASSERT_INT_EQ(seal_open_tuple(&k, OTHER_AAD, strlen(OTHER_AAD), tb, tlen, &g, user, scope), -EBADMSG);
}

/* Every byte of a sealed value is covered: version, key id, nonce,
 * ciphertext and tag. */
static void each_flipped_byte_refused(void) {
    unsigned char buf[SEAL_TOKEN_MAX], tb[SEAL_TUPLE_MAX];
    char user[OAUTH_USER_ID_MAX + 1], scope[OAUTH_SCOPE_MAX + 1];
    enum oauth_grant g;
    size_t len, tlen;
    seal_keys k;
    token *t = NULL;

    keys(&k, 1, 2);
    seal_one(&k, AAD, buf, &len);
    for (size_t i = 0; i < len; i++) {
        for (unsigned bit = 1; bit < 256; bit <<= 1) {
            buf[i] ^= (unsigned char)bit;
            if (seal_open_token(&k, AAD, strlen(AAD), buf, len, 0, 1000, 0, &t) != -EBADMSG)
                UNIT_FAIL("byte %zu bit %#x flipped: not refused", i, bit);
            buf[i] ^= (unsigned char)bit;
        }
    }
    ASSERT(!t);
    ASSERT_INT_EQ(seal_open_token(&k, AAD, strlen(AAD), buf, len, 0, 1000, 0, &t), 0);
    token_unref(t);

    ASSERT_INT_EQ(seal_tuple(&k, AAD, strlen(AAD), OAUTH_GRANT_USER_ASSERTION, "u", "s", tb, &tlen), 0);
    for (size_t i = 0; i < tlen; i++) {
        tb[i] ^= 0x01;
        if (seal_open_tuple(&k, AAD, strlen(AAD), tb, tlen, &g, user, scope) != -EBADMSG)
            UNIT_FAIL("tuple byte %zu flipped: not refused", i);
        tb[i] ^= 0x01;
    }
    ASSERT_INT_EQ(seal_open_tuple(&k, AAD, strlen(AAD), tb, tlen, &g, user, scope), 0);
}

static void truncated_refused(void) {
    unsigned char buf[SEAL_TOKEN_MAX + 1], tb[SEAL_TUPLE_MAX];
    char user[OAUTH_USER_ID_MAX + 1], scope[OAUTH_SCOPE_MAX + 1];
    enum oauth_grant g;
    size_t len, tlen;
    seal_keys k;
    token *t = NULL;

    keys(&k, 1, -1);
    seal_one(&k, AAD, buf, &len);
    for (size_t n = 0; n < len; n++)
        if (seal_open_token(&k, AAD, strlen(AAD), buf, n, 0, 1000, 0, &t) != -EBADMSG)
            UNIT_FAIL("truncated to %zu bytes: not refused", n);
    /* nor is a byte more */
    buf[len] = 0;
    ASSERT_INT_EQ(seal_open_token(&k, AAD, strlen(AAD), buf, len + 1, 0, 1000, 0, &t), -EBADMSG);
    ASSERT(!t);
    ASSERT_INT_EQ(seal_tuple(&k, AAD, strlen(AAD), OAUTH_GRANT_USER_ASSERTION, "u", "s", tb, &tlen), 0);
    for (size_t n = 0; n < tlen; n++)
        if (seal_open_tuple(&k, AAD, strlen(AAD), tb, n, &g, user, scope) != -EBADMSG)
            UNIT_FAIL("tuple truncated to %zu bytes: not refused", n);
}

/* A token seal_token would write but oauth_parse_token would refuse does
 * not come back out of Redis either. */
static void invalid_token_refused(void) {
    unsigned char buf[SEAL_TOKEN_MAX];
    size_t len;
    seal_keys k;
    token *t;

    keys(&k, 1, -1);
    t = make_token("has space", 60, 0);
    ASSERT_INT_EQ(seal_token(&k, AAD, strlen(AAD), t, FAR_END, buf, &len), 0);
    token_unref(t);
    t = NULL;
    ASSERT_INT_EQ(seal_open_token(&k, AAD, strlen(AAD), buf, len, 0, 1000, 0, &t), -EBADMSG);
    t = make_token("ok", OAUTH_LIFETIME_MAX + 1, 0);
    ASSERT_INT_EQ(seal_token(&k, AAD, strlen(AAD), t, FAR_END, buf, &len), 0);
    token_unref(t);
    t = NULL;
    ASSERT_INT_EQ(seal_open_token(&k, AAD, strlen(AAD), buf, len, 0, 1000, 0, &t), -EBADMSG);
    t = make_token("ok", 0, 0);
    ASSERT_INT_EQ(seal_token(&k, AAD, strlen(AAD), t, FAR_END, buf, &len), 0);
    token_unref(t);
    t = NULL;
    ASSERT_INT_EQ(seal_open_token(&k, AAD, strlen(AAD), buf, len, 0, 1000, 0, &t), -EBADMSG);
    ASSERT(!t);
}

/* Rotation: the previous key opens what it sealed; without it, nothing. */
static void previous_key_opens(void) {
    unsigned char buf[SEAL_TOKEN_MAX];
    size_t len;
    seal_keys a, ba, b;
    token *t = NULL;

    keys(&a, 0xa0, -1);
    seal_one(&a, AAD, buf, &len);
    keys(&ba, 0xb0, 0xa0);
    ASSERT_INT_EQ(seal_open_token(&ba, AAD, strlen(AAD), buf, len, 0, 1000, 0, &t), 0);
    ASSERT_STR_EQ(t->value, "abc.DEF-123_~+/==");
    token_unref(t);
    t = NULL;
    keys(&b, 0xb0, -1);
    ASSERT_INT_EQ(seal_open_token(&b, AAD, strlen(AAD), buf, len, 0, 1000, 0, &t), -EBADMSG);
    ASSERT(!t);
    /* new values are sealed with the current key only */
    seal_one(&ba, AAD, buf, &len);
    ASSERT_INT_EQ(seal_open_token(&a, AAD, strlen(AAD), buf, len, 0, 1000, 0, &t), -EBADMSG);
    ASSERT_INT_EQ(seal_open_token(&b, AAD, strlen(AAD), buf, len, 0, 1000, 0, &t), 0);
    token_unref(t);
}

/* Two keys whose ids collide: opening tries the current, then the previous. */
static void same_key_id_tries_both(void) {
    unsigned char buf[SEAL_TOKEN_MAX];
    size_t len;
    seal_keys a, both;
    token *t = NULL;

    keys(&a, 0xa0, -1);
    keys(&both, 0xb0, 0xa0);
    both.prev.id = both.cur.id; /* as if HMAC had given the same first byte */
    a.cur.id = both.cur.id;
    seal_one(&a, AAD, buf, &len);
    ASSERT_INT_EQ(seal_open_token(&both, AAD, strlen(AAD), buf, len, 0, 1000, 0, &t), 0);
    token_unref(t);
}

static bool is_lower_hex(const char *s, size_t n) {
    if (strlen(s) != n)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    return true;
}

static void names_hide_and_separate(void) {
    char n1[SEAL_NAME_LEN + 1], n2[SEAL_NAME_LEN + 1];
    seal_keys k, other;

    keys(&k, 1, 2);
    keys(&other, 3, -1);
    ASSERT_INT_EQ(seal_name(&k, false, OAUTH_GRANT_USER_ASSERTION, "alice", "s", n1), 0);
    ASSERT(is_lower_hex(n1, SEAL_NAME_LEN));
    ASSERT_NOT_CONTAINS(n1, "alice");
    /* stable */
    ASSERT_INT_EQ(seal_name(&k, false, OAUTH_GRANT_USER_ASSERTION, "alice", "s", n2), 0);
    ASSERT_STR_EQ(n1, n2);
    /* each input matters, and where the user id ends */
    ASSERT_INT_EQ(seal_name(&k, false, OAUTH_GRANT_USER_ASSERTION, "bob", "s", n2), 0);
    ASSERT(strcmp(n1, n2) != 0);
    ASSERT_INT_EQ(seal_name(&k, false, OAUTH_GRANT_USER_ASSERTION, "alice", "t", n2), 0);
    ASSERT(strcmp(n1, n2) != 0);
    ASSERT_INT_EQ(seal_name(&k, false, OAUTH_GRANT_CLIENT_CREDENTIALS, "alice", "s", n2), 0);
    ASSERT(strcmp(n1, n2) != 0);
    ASSERT_INT_EQ(seal_name(&k, false, OAUTH_GRANT_USER_ASSERTION, "alices", "", n2), 0);
    ASSERT(strcmp(n1, n2) != 0);
    /* the previous key names it differently; another key too */
    ASSERT_INT_EQ(seal_name(&k, true, OAUTH_GRANT_USER_ASSERTION, "alice", "s", n2), 0);
    ASSERT(is_lower_hex(n2, SEAL_NAME_LEN));
    ASSERT(strcmp(n1, n2) != 0);
    ASSERT_INT_EQ(seal_name(&other, false, OAUTH_GRANT_USER_ASSERTION, "alice", "s", n2), 0);
    ASSERT(strcmp(n1, n2) != 0);
    ASSERT_INT_EQ(seal_name(&other, true, OAUTH_GRANT_USER_ASSERTION, "alice", "s", n2), -EINVAL);
    /* a user id that is itself hex does not show through */
    ASSERT_INT_EQ(seal_name(&k, false, OAUTH_GRANT_USER_ASSERTION, "0123abcd", "", n1), 0);
    ASSERT_NOT_CONTAINS(n1, "0123abcd");
}

static void namespace_unkeyed_and_separate(void) {
    char a[SEAL_NS_LEN + 1], b[SEAL_NS_LEN + 1];

    ASSERT_INT_EQ(seal_namespace("https://connect.instacart.com", "client", a), 0);
    ASSERT(is_lower_hex(a, SEAL_NS_LEN));
    ASSERT_INT_EQ(seal_namespace("https://connect.instacart.com", "client", b), 0);
    ASSERT_STR_EQ(a, b);
    ASSERT_INT_EQ(seal_namespace("https://connect.dev.instacart.tools", "client", b), 0);
    ASSERT(strcmp(a, b) != 0);
    ASSERT_INT_EQ(seal_namespace("https://connect.instacart.com", "client2", b), 0);
    ASSERT(strcmp(a, b) != 0);
    /* the separator matters */
    ASSERT_INT_EQ(seal_namespace("https://connect.instacart.comc", "lient", b), 0);
    ASSERT(strcmp(a, b) != 0);
}

/* Hosts running different versions of tokend share Redis: the names, the
 * namespace, fingerprints and key ids must not change. The expected values
 * were computed outside tokend (Python's hashlib and hmac, with HKDF
 * written out from RFC 5869), for the raw key 01 02 .. 20. */
static void known_answers(void) {
    char ns[SEAL_NS_LEN + 1], name[SEAL_NAME_LEN + 1], fp[SEAL_FP_LEN + 1];
    seal_keys k;

    keys(&k, 1, -1);
    ASSERT_INT_EQ(seal_namespace("https://connect.instacart.com", "client", ns), 0);
    ASSERT_STR_EQ(ns, "915bd5af16d375ad");
    ASSERT_INT_EQ(seal_name(&k, false, OAUTH_GRANT_USER_ASSERTION, "alice", "s", name), 0);
    ASSERT_STR_EQ(name, "60a4609b35b74f9347e685caf7ba06f9");
    ASSERT_INT_EQ(seal_fingerprint(&k, "tok1", 4, fp), 0);
    ASSERT_STR_EQ(fp, "799f8200ffc206bf");
    ASSERT_UINT_EQ(k.cur.id, 195);
}

static void fingerprint_stable_and_distinct(void) {
    char a[SEAL_FP_LEN + 1], b[SEAL_FP_LEN + 1];
    seal_keys k, other;

    keys(&k, 1, -1);
    keys(&other, 9, -1);
    ASSERT_INT_EQ(seal_fingerprint(&k, "tok1", 4, a), 0);
    ASSERT(is_lower_hex(a, SEAL_FP_LEN));
    ASSERT_INT_EQ(seal_fingerprint(&k, "tok1", 4, b), 0);
    ASSERT_STR_EQ(a, b);
    ASSERT_INT_EQ(seal_fingerprint(&k, "tok2", 4, b), 0);
    ASSERT(strcmp(a, b) != 0);
    ASSERT_INT_EQ(seal_fingerprint(&k, "tok1", 3, b), 0);
    ASSERT(strcmp(a, b) != 0);
    ASSERT_INT_EQ(seal_fingerprint(&other, "tok1", 4, b), 0);
    ASSERT(strcmp(a, b) != 0);
}

static void key_parse_strict(void) {
    static const char hex64[] = "00112233445566778899aabbccddeeffFFEEDDCCBBAA99887766554433221100";
    unsigned char out[SEAL_KEY_LEN], before[SEAL_KEY_LEN];
    char buf[80];

    ASSERT_UINT_EQ(strlen(hex64), 64);
    ASSERT_INT_EQ(seal_key_parse(hex64, 64, out), 0);
    ASSERT_UINT_EQ(out[0], 0x00);
    ASSERT_UINT_EQ(out[1], 0x11);
    ASSERT_UINT_EQ(out[15], 0xff);
    ASSERT_UINT_EQ(out[16], 0xff);
    ASSERT_UINT_EQ(out[31], 0x00);
    snprintf(buf, sizeof(buf), "%s\n", hex64);
    ASSERT_INT_EQ(seal_key_parse(buf, 65, out), 0);
    ASSERT_UINT_EQ(out[1], 0x11);

    memset(out, 0x5a, sizeof(out));
    memcpy(before, out, sizeof(out));
    ASSERT_INT_EQ(seal_key_parse(hex64, 63, out), -EINVAL);
    snprintf(buf, sizeof(buf), "%s0", hex64);
    ASSERT_INT_EQ(seal_key_parse(buf, 65, out), -EINVAL);
    snprintf(buf, sizeof(buf), "%s\n\n", hex64);
    ASSERT_INT_EQ(seal_key_parse(buf, 66, out), -EINVAL);
    snprintf(buf, sizeof(buf), "%s ", hex64);
    ASSERT_INT_EQ(seal_key_parse(buf, 65, out), -EINVAL);
    snprintf(buf, sizeof(buf), " %.63s", hex64);
    ASSERT_INT_EQ(seal_key_parse(buf, 64, out), -EINVAL);
    snprintf(buf, sizeof(buf), "%s\r\n", hex64);
    ASSERT_INT_EQ(seal_key_parse(buf, 66, out), -EINVAL);
    snprintf(buf, sizeof(buf), "%s", hex64);
    buf[10] = 'g';
    ASSERT_INT_EQ(seal_key_parse(buf, 64, out), -EINVAL);
    buf[10] = '\0';
    ASSERT_INT_EQ(seal_key_parse(buf, 64, out), -EINVAL);
    ASSERT_INT_EQ(seal_key_parse("", 0, out), -EINVAL);
    /* nothing written on failure */
    ASSERT(memcmp(out, before, sizeof(out)) == 0);
}

static void derive_gives_distinct_subkeys(void) {
    seal_keys k, again;

    keys(&k, 1, 2);
    keys(&again, 1, 2);
    ASSERT(memcmp(&k, &again, sizeof(k)) == 0);
    ASSERT(k.has_prev);
    ASSERT(memcmp(k.cur.enc, k.cur.name, SEAL_KEY_LEN) != 0);
    ASSERT(memcmp(k.cur.enc, k.prev.enc, SEAL_KEY_LEN) != 0);
    keys(&again, 1, -1);
    ASSERT(!again.has_prev);
    seal_keys_wipe(&k);
    for (size_t i = 0; i < sizeof(k); i++)
        ASSERT_UINT_EQ(((unsigned char *)&k)[i], 0);
}

/* Redis's TTL may only shorten the life sealed in: a value saved and
 * written back with a fresh TTL after its end is over, and one written back
 * before it lives no longer than it did. */
static void the_end_sealed_in_bounds_the_ttl(void) {
    unsigned char buf[SEAL_TOKEN_MAX];
    size_t len;
    seal_keys k;
    token *t = NULL;

    keys(&k, 1, -1);
    ASSERT_INT_EQ(token_new("abc", 3, 3600, 1700000000, 0, &t), 0);
    ASSERT_INT_EQ(seal_token(&k, AAD, strlen(AAD), t, 5000000, buf, &len), 0);
    token_unref(t);
    t = NULL;
    /* 1 s before the end, with a TTL of an hour: a second left */
    ASSERT_INT_EQ(seal_open_token(&k, AAD, strlen(AAD), buf, len, 100, 3600000, 4999000, &t), 0);
    ASSERT_UINT_EQ(token_remaining_ms(t, 100), 1000);
    token_unref(t);
    t = NULL;
    /* at the end, or after it: refused whatever the TTL */
    ASSERT_INT_EQ(seal_open_token(&k, AAD, strlen(AAD), buf, len, 100, 3600000, 5000000, &t), -EBADMSG);
    ASSERT_INT_EQ(seal_open_token(&k, AAD, strlen(AAD), buf, len, 100, 3600000, 9000000, &t), -EBADMSG);
    ASSERT(t == NULL);
    /* well before it, the shorter TTL decides */
    ASSERT_INT_EQ(seal_open_token(&k, AAD, strlen(AAD), buf, len, 100, 2000, 1000000, &t), 0);
    ASSERT_UINT_EQ(token_remaining_ms(t, 100), 2000);
    token_unref(t);
    seal_keys_wipe(&k);
}

static const unit_test tests[] = {
    TEST(the_end_sealed_in_bounds_the_ttl),
    TEST(token_round_trip),
    TEST(remaining_ms_sets_expiry),
    TEST(tuple_round_trip),
    TEST(wrong_aad_refused),
    TEST(each_flipped_byte_refused),
    TEST(truncated_refused),
    TEST(invalid_token_refused),
    TEST(previous_key_opens),
    TEST(same_key_id_tries_both),
    TEST(names_hide_and_separate),
    TEST(namespace_unkeyed_and_separate),
    TEST(fingerprint_stable_and_distinct),
    TEST(known_answers),
    TEST(key_parse_strict),
    TEST(derive_gives_distinct_subkeys),
};

UNIT_MAIN(tests)
