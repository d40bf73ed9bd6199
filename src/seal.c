/* The crypto of fleet mode (see seal.h): key names that hide the user id,
 * values sealed with AES-256-GCM and bound to their key name. Responsible
 * for the bytes only; not for talking to Redis, reading the key file or
 * deciding when to rotate.
 *
 * Everything is libcrypto's (HKDF through EVP_KDF, HMAC through EVP_MAC,
 * AES-256-GCM through EVP_CIPHER, RAND_bytes): nothing here is hand-written
 * cryptography. Every buffer that held a key or a plaintext is wiped before
 * it goes out of scope, and every EVP context is freed on every path. */
#include "seal.h"

#include <errno.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/params.h>
#include <openssl/rand.h>
#include <string.h>

#include "util.h"

/* Tuples (drop events) are still version 1, so hosts of the release
 * before read this one's drops during a rolling upgrade; tokens are
 * version 2: they carry their absolute end. */
#define TUPLE_VERSION 1
#define TOKEN_VERSION 2
#define NONCE_LEN 12
#define TAG_LEN 16
#define HEADER_LEN 2 /* version, key id */
#define TOKEN_FIXED_LEN 20 /* created_at, lifetime_s, expires_unix_ms */
#define TUPLE_PLAIN_MAX (1 + OAUTH_USER_ID_MAX + 1 + OAUTH_SCOPE_MAX)

static const char hexdigits[] = "0123456789abcdef";

static void to_hex(const unsigned char *in, size_t n, char *out) {
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = hexdigits[in[i] >> 4];
        out[2 * i + 1] = hexdigits[in[i] & 0xf];
    }
    out[2 * n] = '\0';
}

int seal_key_parse(const char *text, size_t len, unsigned char out[SEAL_KEY_LEN]) {
    if (!(len == 2 * SEAL_KEY_LEN || (len == 2 * SEAL_KEY_LEN + 1 && text[2 * SEAL_KEY_LEN] == '\n')))
        return -EINVAL;
    for (size_t i = 0; i < 2 * SEAL_KEY_LEN; i++)
        if (hex_value(text[i]) < 0)
            return -EINVAL;
    for (size_t i = 0; i < SEAL_KEY_LEN; i++)
        out[i] = (unsigned char)(hex_value(text[2 * i]) << 4 | hex_value(text[2 * i + 1]));
    return 0;
}

struct part {
    const void *p;
    size_t len;
};

/* HMAC-SHA256 of the concatenated parts. 0 or -EIO. */
static int hmac_sha256(const unsigned char *key, size_t key_len, const struct part *parts, size_t n,
                       unsigned char out[32]) {
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0),
        OSSL_PARAM_construct_end(),
    };
    EVP_MAC *mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    EVP_MAC_CTX *ctx = mac ? EVP_MAC_CTX_new(mac) : NULL;
    size_t out_len = 0;
    int ok;

    ok = ctx && EVP_MAC_init(ctx, key, key_len, params);
    for (size_t i = 0; ok && i < n; i++)
        ok = parts[i].len == 0 || EVP_MAC_update(ctx, parts[i].p, parts[i].len);
    ok = ok && EVP_MAC_final(ctx, out, &out_len, 32) && out_len == 32;
    EVP_MAC_CTX_free(ctx); /* wipes the keyed state */
    EVP_MAC_free(mac);
    return ok ? 0 : -EIO;
}

/* HKDF-SHA256 (RFC 5869) of the shared key, with a fixed salt that keeps
 * these subkeys apart from any other use of the same key. */
static int hkdf_sha256(const unsigned char *key, const char *info, unsigned char out[SEAL_KEY_LEN]) {
    static const char salt[] = "tokend seal v1";
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)"SHA256", 0),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, (void *)key, SEAL_KEY_LEN),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, (void *)salt, sizeof(salt) - 1),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, (void *)info, strlen(info)),
        OSSL_PARAM_construct_end(),
    };
    EVP_KDF *kdf = EVP_KDF_fetch(NULL, "HKDF", NULL);
    EVP_KDF_CTX *ctx = kdf ? EVP_KDF_CTX_new(kdf) : NULL;
    int ok;

    ok = ctx && EVP_KDF_derive(ctx, out, SEAL_KEY_LEN, params) > 0;
    EVP_KDF_CTX_free(ctx);
    EVP_KDF_free(kdf);
    return ok ? 0 : -EIO;
}

static int derive_one(const unsigned char *key, struct seal_subkeys *ret) {
    static const char id_label[] = "tokend key id";
    unsigned char id[32];
    int r;

    r = hkdf_sha256(key, "tokend enc v1", ret->enc);
    if (r >= 0)
        r = hkdf_sha256(key, "tokend name v1", ret->name);
    if (r >= 0)
        r = hmac_sha256(key, SEAL_KEY_LEN, &(struct part){ id_label, sizeof(id_label) - 1 }, 1, id);
    if (r >= 0)
        ret->id = id[0];
    explicit_bzero(id, sizeof(id));
    return r;
}

int seal_keys_derive(const unsigned char cur[SEAL_KEY_LEN], const unsigned char *prev, seal_keys *ret) {
    seal_keys k = { 0 };
    int r;

    r = derive_one(cur, &k.cur);
    if (r >= 0 && prev) {
        r = derive_one(prev, &k.prev);
        k.has_prev = true;
    }
    if (r >= 0)
        *ret = k;
    seal_keys_wipe(&k);
    return r;
}

void seal_keys_wipe(seal_keys *k) {
    if (k)
        explicit_bzero(k, sizeof(*k));
}

int seal_namespace(const char *base_url, const char *client_id, char out[SEAL_NS_LEN + 1]) {
    static const char label[] = "tokend ns"; /* with its NUL: the separator */
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int dlen = 0;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int ok;

    ok = ctx && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) && EVP_DigestUpdate(ctx, label, sizeof(label)) &&
         EVP_DigestUpdate(ctx, base_url, strlen(base_url) + 1) &&
         EVP_DigestUpdate(ctx, client_id, strlen(client_id)) && EVP_DigestFinal_ex(ctx, digest, &dlen) &&
         dlen >= SEAL_NS_LEN / 2;
    EVP_MD_CTX_free(ctx);
    if (!ok)
        return -EIO;
    to_hex(digest, SEAL_NS_LEN / 2, out);
    return 0;
}

int seal_name(const seal_keys *k, bool prev, enum oauth_grant grant, const char *user_id, const char *scope,
              char out[SEAL_NAME_LEN + 1]) {
    const struct seal_subkeys *sk = prev ? &k->prev : &k->cur;
    unsigned char g = (unsigned char)grant, mac[32];
    /* the first byte is a grant (0 or 1), never the 'f' of a fingerprint */
    const struct part parts[] = {
        { &g, 1 }, { user_id, strlen(user_id) + 1 }, { scope, strlen(scope) },
    };
    int r;

    if (prev && !k->has_prev)
        return -EINVAL;
    r = hmac_sha256(sk->name, SEAL_KEY_LEN, parts, ARRAY_SIZE(parts), mac);
    if (r >= 0)
        to_hex(mac, SEAL_NAME_LEN / 2, out);
    return r;
}

int seal_fingerprint(const seal_keys *k, const char *value, size_t len, char out[SEAL_FP_LEN + 1]) {
    return seal_fingerprint_with(k, false, value, len, out);
}

int seal_fingerprint_with(const seal_keys *k, bool prev, const char *value, size_t len,
                          char out[SEAL_FP_LEN + 1]) {
    const struct part parts[] = { { "fp", 3 }, { value, len } };
    unsigned char mac[32];
    int r;

    if (prev && !k->has_prev)
        return -ENOENT;
    r = hmac_sha256(prev ? k->prev.name : k->cur.name, SEAL_KEY_LEN, parts, ARRAY_SIZE(parts), mac);
    if (r >= 0)
        to_hex(mac, SEAL_FP_LEN / 2, out);
    return r;
}

/* The GCM additional data is the header (fixed length) then the caller's
 * aad: the version and key id are authenticated too. */
static int gcm_aad(EVP_CIPHER_CTX *ctx, bool enc, const unsigned char header[HEADER_LEN], const void *aad,
                   size_t aad_len) {
    int n;

    if (aad_len > INT32_MAX)
        return 0;
    if (enc)
        return EVP_EncryptUpdate(ctx, NULL, &n, header, HEADER_LEN) &&
               (aad_len == 0 || EVP_EncryptUpdate(ctx, NULL, &n, aad, (int)aad_len));
    return EVP_DecryptUpdate(ctx, NULL, &n, header, HEADER_LEN) &&
           (aad_len == 0 || EVP_DecryptUpdate(ctx, NULL, &n, aad, (int)aad_len));
}

/* Seals plain into out ([version][id][nonce][ciphertext][tag]). */
static int seal_bytes(const seal_keys *k, unsigned char version, const void *aad, size_t aad_len,
                      const unsigned char *plain, size_t len, unsigned char *out, size_t *ret_len) {
    unsigned char *nonce = out + HEADER_LEN, *ct = nonce + NONCE_LEN;
    EVP_CIPHER_CTX *ctx;
    int n = 0, fin = 0, ok;

    if (len == 0 || len > INT32_MAX)
        return -EIO;
    out[0] = version;
    out[1] = k->cur.id;
    if (RAND_bytes(nonce, NONCE_LEN) != 1)
        return -EIO;
    ctx = EVP_CIPHER_CTX_new();
    ok = ctx && EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, NULL, NULL) &&
         EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_IVLEN, NONCE_LEN, NULL) &&
         EVP_EncryptInit_ex(ctx, NULL, NULL, k->cur.enc, nonce) && gcm_aad(ctx, true, out, aad, aad_len) &&
         EVP_EncryptUpdate(ctx, ct, &n, plain, (int)len) && (size_t)n == len &&
         EVP_EncryptFinal_ex(ctx, ct + n, &fin) && fin == 0 &&
         EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_GET_TAG, TAG_LEN, ct + len);
    EVP_CIPHER_CTX_free(ctx); /* wipes the key schedule */
    if (!ok)
        return -EIO;
    *ret_len = SEAL_OVERHEAD + len;
    return 0;
}

/* Decrypts in under one subkey into plain (len - SEAL_OVERHEAD bytes).
 * plain may hold garbage on failure: the caller wipes it either way. */
static bool open_with(const struct seal_subkeys *sk, const void *aad, size_t aad_len, const unsigned char *in,
                      size_t len, unsigned char *plain) {
    const unsigned char *nonce = in + HEADER_LEN, *ct = nonce + NONCE_LEN;
    size_t ct_len = len - SEAL_OVERHEAD;
    unsigned char tag[TAG_LEN];
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    int n = 0, fin = 0, ok;

    memcpy(tag, ct + ct_len, TAG_LEN); /* SET_TAG takes a non-const pointer */
    ok = ctx && EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, NULL, NULL) &&
         EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_IVLEN, NONCE_LEN, NULL) &&
         EVP_DecryptInit_ex(ctx, NULL, NULL, sk->enc, nonce) && gcm_aad(ctx, false, in, aad, aad_len) &&
         EVP_DecryptUpdate(ctx, plain, &n, ct, (int)ct_len) && (size_t)n == ct_len &&
         EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_TAG, TAG_LEN, tag) &&
         EVP_DecryptFinal_ex(ctx, plain + n, &fin) > 0 && fin == 0;
    EVP_CIPHER_CTX_free(ctx);
    return ok;
}

/* Opens in (min..max bytes of plaintext) with the key its id names:
 * current first, then previous, so equal ids of the two still work.
 * Returns the plaintext length, or -EBADMSG. */
static ptrdiff_t open_bytes(const seal_keys *k, unsigned char version, const void *aad, size_t aad_len,
                            const unsigned char *in, size_t len, size_t min, size_t max, unsigned char *plain) {
    if (len < SEAL_OVERHEAD + min || len > SEAL_OVERHEAD + max || in[0] != version)
        return -EBADMSG;
    if (in[1] == k->cur.id && open_with(&k->cur, aad, aad_len, in, len, plain))
        return (ptrdiff_t)(len - SEAL_OVERHEAD);
    if (k->has_prev && in[1] == k->prev.id && open_with(&k->prev, aad, aad_len, in, len, plain))
        return (ptrdiff_t)(len - SEAL_OVERHEAD);
    return -EBADMSG;
}

static void put_be(unsigned char *p, uint64_t v, int bytes) {
    for (int i = bytes - 1; i >= 0; i--, v >>= 8)
        p[i] = (unsigned char)v;
}

static uint64_t get_be(const unsigned char *p, int bytes) {
    uint64_t v = 0;
    for (int i = 0; i < bytes; i++)
        v = v << 8 | p[i];
    return v;
}

int seal_token(const seal_keys *k, const void *aad, size_t aad_len, const token *t, uint64_t expires_unix_ms,
               unsigned char *out, size_t *ret_len) {
    unsigned char plain[TOKEN_FIXED_LEN + OAUTH_TOKEN_MAX];
    int r;

    if (t->len == 0 || t->len > OAUTH_TOKEN_MAX)
        return -EINVAL;
    put_be(plain, (uint64_t)t->created_at, 8);
    put_be(plain + 8, t->lifetime_s, 4);
    put_be(plain + 12, expires_unix_ms, 8);
    memcpy(plain + TOKEN_FIXED_LEN, t->value, t->len);
    r = seal_bytes(k, TOKEN_VERSION, aad, aad_len, plain, TOKEN_FIXED_LEN + t->len, out, ret_len);
    explicit_bzero(plain, sizeof(plain));
    return r;
}

int seal_open_token(const seal_keys *k, const void *aad, size_t aad_len, const unsigned char *in, size_t len,
                    uint64_t now_ms, uint64_t remaining_ms, uint64_t now_unix_ms, token **ret) {
    unsigned char plain[TOKEN_FIXED_LEN + OAUTH_TOKEN_MAX];
    const char *value = (const char *)plain + TOKEN_FIXED_LEN;
    uint64_t lifetime, expires_unix_ms;
    int64_t created_at;
    ptrdiff_t n;
    token *t;
    int r = -EBADMSG;

    n = open_bytes(k, TOKEN_VERSION, aad, aad_len, in, len, TOKEN_FIXED_LEN + 1, sizeof(plain), plain);
    if (n < 0)
        goto out;
    created_at = (int64_t)get_be(plain, 8);
    lifetime = get_be(plain + 8, 4);
    expires_unix_ms = get_be(plain + 12, 8);
    /* Redis's TTL may only shorten the life sealed in: a value written back
     * with a fresh TTL after its end is over */
    if (expires_unix_ms <= now_unix_ms)
        goto out;
    if (remaining_ms > expires_unix_ms - now_unix_ms)
        remaining_ms = expires_unix_ms - now_unix_ms;
    if (lifetime < 1 || lifetime > OAUTH_LIFETIME_MAX || remaining_ms == 0 ||
        remaining_ms > lifetime * MS_PER_SEC || !oauth_token_valid(value, (size_t)n - TOKEN_FIXED_LEN))
        goto out;
    r = token_new(value, (size_t)n - TOKEN_FIXED_LEN, (uint32_t)lifetime, created_at, now_ms, &t);
    if (r < 0)
        goto out;
    t->expires_ms = now_ms + remaining_ms;
    t->minted_unix_ms = expires_unix_ms > lifetime * MS_PER_SEC ? expires_unix_ms - lifetime * MS_PER_SEC : 0;
    *ret = t;
out:
    explicit_bzero(plain, sizeof(plain));
    return r;
}

/* What a tuple may hold: a known grant, a user id for a user token and none
 * for a client token (as the cache keys them), a scope or none. */
static bool tuple_valid(unsigned grant, size_t ulen, size_t slen) {
    switch (grant) {
    case OAUTH_GRANT_USER_ASSERTION:
        if (ulen < 1 || ulen > OAUTH_USER_ID_MAX)
            return false;
        break;
    case OAUTH_GRANT_CLIENT_CREDENTIALS:
        if (ulen != 0)
            return false;
        break;
    default:
        return false;
    }
    return slen <= OAUTH_SCOPE_MAX;
}

int seal_tuple(const seal_keys *k, const void *aad, size_t aad_len, enum oauth_grant grant, const char *user_id,
               const char *scope, unsigned char *out, size_t *ret_len) {
    unsigned char plain[TUPLE_PLAIN_MAX];
    size_t ulen = strlen(user_id), slen = strlen(scope);
    int r;

    if (!tuple_valid((unsigned)grant, ulen, slen))
        return -EINVAL;
    plain[0] = (unsigned char)grant;
    memcpy(plain + 1, user_id, ulen);
    plain[1 + ulen] = '\0';
    memcpy(plain + 2 + ulen, scope, slen);
    r = seal_bytes(k, TUPLE_VERSION, aad, aad_len, plain, 2 + ulen + slen, out, ret_len);
    explicit_bzero(plain, sizeof(plain));
    return r;
}

int seal_open_tuple(const seal_keys *k, const void *aad, size_t aad_len, const unsigned char *in, size_t len,
                    enum oauth_grant *grant, char *user_id, char *scope) {
    unsigned char plain[TUPLE_PLAIN_MAX];
    const unsigned char *nul;
    size_t ulen, slen;
    ptrdiff_t n;
    int r = -EBADMSG;

    n = open_bytes(k, TUPLE_VERSION, aad, aad_len, in, len, 2, sizeof(plain), plain);
    if (n < 0)
        goto out;
    /* exactly one NUL: the separator */
    nul = memchr(plain + 1, '\0', (size_t)n - 1);
    if (!nul)
        goto out;
    ulen = (size_t)(nul - (plain + 1));
    slen = (size_t)n - 2 - ulen;
    if (memchr(nul + 1, '\0', slen) || !tuple_valid(plain[0], ulen, slen))
        goto out;
    *grant = (enum oauth_grant)plain[0];
    memcpy(user_id, plain + 1, ulen);
    user_id[ulen] = '\0';
    memcpy(scope, nul + 1, slen);
    scope[slen] = '\0';
    r = 0;
out:
    explicit_bzero(plain, sizeof(plain));
    return r;
}
