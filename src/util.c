/* Helpers with no home of their own: clocks, wiping, fingerprints, Base64,
 * UTF-8 checks, number parsing. Base64 is hand-written: it is 40 lines, and
 * the libraries that have it (OpenSSL, GnuTLS) would be a dependency for
 * this alone. */
#include "util.h"

#include <errno.h>
#include <limits.h>
#include <openssl/evp.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

uint64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

void mono_deadline(uint64_t ms, struct timespec *ret) {
    clock_gettime(CLOCK_MONOTONIC, ret);
    ret->tv_sec += (time_t)(ms / 1000);
    ret->tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ret->tv_nsec >= 1000000000L)
        ret->tv_sec++, ret->tv_nsec -= 1000000000L;
}

int64_t now_unix(void) {
    return (int64_t)time(NULL);
}

bool stream_id_parse(const char *s, size_t len, unsigned long long ret[2]) {
    unsigned long long part[2] = { 0, 0 };
    size_t i = 0;

    for (int p = 0; p < 2; p++) {
        size_t digits = 0;
        for (; i < len && s[i] >= '0' && s[i] <= '9'; i++, digits++) {
            unsigned d = (unsigned)(s[i] - '0');
            if (part[p] > (ULLONG_MAX - d) / 10)
                return false;
            part[p] = part[p] * 10 + d;
        }
        if (digits == 0 || (p == 0 && (i >= len || s[i++] != '-')))
            return false;
    }
    if (i != len)
        return false;
    if (ret) {
        ret[0] = part[0];
        ret[1] = part[1];
    }
    return true;
}

uint64_t fnv1a64(const char *const *parts, size_t n) {
    uint64_t h = 0xcbf29ce484222325ULL;

    for (size_t i = 0; i < n; i++)
        for (const char *c = parts[i]; c && *c; c++) {
            h ^= (unsigned char)*c;
            h *= 0x100000001b3ULL;
        }
    return h;
}

uint64_t now_unix_ms(void) {
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

void *wipe_free(void *p, size_t len) {
    if (p) {
        explicit_bzero(p, len);
        free(p);
    }
    return NULL;
}

char *wipe_free_str(char *s) {
    if (s)
        wipe_free(s, strlen(s));
    return NULL;
}

static unsigned char fingerprint_key[16];

/* SHA-256 (libcrypto, in the process already) of a label, the client id and
 * the secret: the secret never leaves this function, and the label keeps
 * this key apart from any other use of the same secret. */
int fingerprint_set_key(const char *client_id, const char *secret, size_t secret_len) {
    static const char label[] = "instacart-tokend user fingerprint v1";
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int dlen = 0;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int ok;

    ok = ctx && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) &&
         EVP_DigestUpdate(ctx, label, sizeof(label)) &&
         EVP_DigestUpdate(ctx, client_id, strlen(client_id) + 1) &&
         EVP_DigestUpdate(ctx, secret, secret_len) && EVP_DigestFinal_ex(ctx, digest, &dlen) &&
         dlen >= sizeof(fingerprint_key);
    EVP_MD_CTX_free(ctx); /* wipes its state */
    if (ok)
        memcpy(fingerprint_key, digest, sizeof(fingerprint_key));
    explicit_bzero(digest, sizeof(digest));
    return ok ? 0 : -EIO;
}

void fingerprint(const char *s, size_t len, char out[FINGERPRINT_LEN]) {
    static const char hex[] = "0123456789abcdef";
    uint64_t h = siphash24(s, len, fingerprint_key);

    for (int i = FINGERPRINT_LEN - 2; i >= 0; i--) {
        out[i] = hex[h & 0xf];
        h >>= 4;
    }
    out[FINGERPRINT_LEN - 1] = '\0';
}

int hex_value(char c) {
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

size_t base64_encoded_size(size_t len) {
    return (len + 2) / 3 * 4 + 1;
}

size_t base64_encode(const void *in, size_t len, char *out, size_t out_size) {
    const unsigned char *p = in;
    size_t o = 0;

    if (out_size < base64_encoded_size(len))
        return 0;
    for (size_t i = 0; i < len; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16;
        if (i + 1 < len)
            v |= (uint32_t)p[i + 1] << 8;
        if (i + 2 < len)
            v |= p[i + 2];
        out[o++] = b64[(v >> 18) & 63];
        out[o++] = b64[(v >> 12) & 63];
        out[o++] = i + 1 < len ? b64[(v >> 6) & 63] : '=';
        out[o++] = i + 2 < len ? b64[v & 63] : '=';
    }
    out[o] = '\0';
    return o;
}

static int b64_value(char c) {
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

ptrdiff_t base64_decode(const char *in, size_t len, void *out, size_t out_size) {
    unsigned char *o = out;
    size_t n = 0;

    if (len == 0 || len % 4 != 0)
        return -1;
    for (size_t i = 0; i < len; i += 4) {
        int v[4];
        int pad = 0;
        for (int j = 0; j < 4; j++) {
            char c = in[i + j];
            /* padding only in the last group, only at its end */
            if (c == '=' && i + 4 == len && j >= 2 && (j == 3 || in[i + 3] == '=')) {
                v[j] = 0;
                pad++;
                continue;
            }
            if (pad)
                return -1;
            v[j] = b64_value(c);
            if (v[j] < 0)
                return -1;
        }
        uint32_t w = (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 | (uint32_t)v[3];
        /* canonical form: the bits padding discards must be zero */
        if ((pad == 1 && (w & 0xff)) || (pad == 2 && (w & 0xffff)))
            return -1;
        for (int j = 0; j < 3 - pad; j++) {
            if (n >= out_size)
                return -1;
            o[n++] = (unsigned char)(w >> (16 - 8 * j));
        }
    }
    return (ptrdiff_t)n;
}

bool utf8_is_printable(const char *s, size_t len) {
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;

    while (i < len) {
        unsigned c = p[i];
        uint32_t cp;
        size_t n;

        if (c < 0x80) {
            if (c < 0x20 || c == 0x7f)
                return false;
            i++;
            continue;
        }
        if (c >= 0xc2 && c <= 0xdf) {
            n = 1;
            cp = c & 0x1f;
        } else if (c >= 0xe0 && c <= 0xef) {
            n = 2;
            cp = c & 0x0f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            n = 3;
            cp = c & 0x07;
        } else
            return false;
        if (len - i <= n)
            return false;
        for (size_t j = 1; j <= n; j++) {
            if ((p[i + j] & 0xc0) != 0x80)
                return false;
            cp = cp << 6 | (p[i + j] & 0x3f);
        }
        if ((n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) || cp > 0x10ffff ||
            (cp >= 0xd800 && cp <= 0xdfff) || (cp >= 0x80 && cp <= 0x9f))
            return false;
        i += n + 1;
    }
    return true;
}

int parse_uint(const char *s, uint64_t max, uint64_t *ret) {
    uint64_t v = 0;

    if (!s || !*s)
        return -EINVAL;
    for (const char *p = s; *p; p++) {
        if (*p < '0' || *p > '9')
            return -EINVAL;
        if (v > (UINT64_MAX - 9) / 10)
            return -ERANGE;
        v = v * 10 + (uint64_t)(*p - '0');
    }
    if (v > max)
        return -ERANGE;
    *ret = v;
    return 0;
}

int parse_duration_ms(const char *s, uint64_t *ret_ms) {
    static const struct {
        const char *suffix;
        uint64_t ms;
    } units[] = { { "ms", 1 }, { "s", 1000 }, { "m", 60000 }, { "h", 3600000 } };
    char num[32];
    size_t digits = strspn(s, "0123456789");
    const char *unit = s + digits;
    uint64_t mult = 0, v;
    int r;

    if (digits == 0 || digits >= sizeof(num))
        return digits == 0 ? -EINVAL : -ERANGE;
    if (*unit == '\0')
        mult = 1000;
    for (size_t i = 0; i < ARRAY_SIZE(units) && !mult; i++)
        if (strcmp(unit, units[i].suffix) == 0)
            mult = units[i].ms;
    if (!mult)
        return -EINVAL;
    memcpy(num, s, digits);
    num[digits] = '\0';
    r = parse_uint(num, UINT64_MAX / mult / 1000, &v); /* far below overflow */
    if (r < 0)
        return r;
    *ret_ms = v * mult;
    return 0;
}

uint64_t random_u64(void) {
    uint64_t v = 0;
    if (getrandom(&v, sizeof(v), 0) != sizeof(v))
        v = now_ms() ^ (uint64_t)(uintptr_t)&v;
    return v;
}

/* SipHash-2-4 (Aumasson and Bernstein), as in their reference code. */
#define SIP_ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIP_ROUND                                                                                       \
    do {                                                                                                \
        v0 += v1; v1 = SIP_ROTL(v1, 13); v1 ^= v0; v0 = SIP_ROTL(v0, 32);                               \
        v2 += v3; v3 = SIP_ROTL(v3, 16); v3 ^= v2;                                                      \
        v0 += v3; v3 = SIP_ROTL(v3, 21); v3 ^= v0;                                                      \
        v2 += v1; v1 = SIP_ROTL(v1, 17); v1 ^= v2; v2 = SIP_ROTL(v2, 32);                               \
    } while (0)

static uint64_t load_le64(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

uint64_t siphash24(const void *in, size_t len, const unsigned char key[16]) {
    const unsigned char *p = in, *end = p + (len & ~(size_t)7);
    uint64_t k0 = load_le64(key), k1 = load_le64(key + 8);
    uint64_t v0 = k0 ^ 0x736f6d6570736575ull, v1 = k1 ^ 0x646f72616e646f6dull;
    uint64_t v2 = k0 ^ 0x6c7967656e657261ull, v3 = k1 ^ 0x7465646279746573ull;
    uint64_t m, b = (uint64_t)len << 56;

    for (; p != end; p += 8) {
        m = load_le64(p);
        v3 ^= m;
        SIP_ROUND;
        SIP_ROUND;
        v0 ^= m;
    }
    for (size_t i = 0; i < (len & 7); i++)
        b |= (uint64_t)p[i] << (8 * i);
    v3 ^= b;
    SIP_ROUND;
    SIP_ROUND;
    v0 ^= b;
    v2 ^= 0xff;
    SIP_ROUND;
    SIP_ROUND;
    SIP_ROUND;
    SIP_ROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}
