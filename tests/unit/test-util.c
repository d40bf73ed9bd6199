/* Unit tests of src/util.c: Base64 (the assertion Instacart decodes), the
 * UTF-8 check that guards user ids, and the number parsers behind every
 * duration and count in the configuration. */
#include <errno.h>

#include "unit.h"
#include "util.h"

/* xorshift64 with a fixed seed: "random" bytes that are the same every run */
static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;
static uint8_t rng_byte(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint8_t)(rng_state >> 32);
}

static void assert_decode_refused(const char *in) {
    unsigned char out[64];
    if (base64_decode(in, strlen(in), out, sizeof(out)) != -1)
        UNIT_FAIL("base64_decode(\"%s\") was accepted", in);
}

static void assert_decodes_to(const char *in, const char *want) {
    char out[64];
    ptrdiff_t n = base64_decode(in, strlen(in), out, sizeof(out));
    if (n != (ptrdiff_t)strlen(want) || memcmp(out, want, strlen(want)) != 0)
        UNIT_FAIL("base64_decode(\"%s\") gave %td bytes, want \"%s\"", in, n, want);
}

static void base64_rfc4648_vectors(void) {
    static const char *const vec[][2] = {
        { "f", "Zg==" }, { "fo", "Zm8=" }, { "foo", "Zm9v" }, { "foob", "Zm9vYg==" },
        { "fooba", "Zm9vYmE=" }, { "foobar", "Zm9vYmFy" },
    };
    for (size_t i = 0; i < ARRAY_SIZE(vec); i++) {
        char out[16];
        size_t n = base64_encode(vec[i][0], strlen(vec[i][0]), out, sizeof(out));
        ASSERT_UINT_EQ(n, strlen(vec[i][1]));
        ASSERT_STR_EQ(out, vec[i][1]);
        assert_decodes_to(vec[i][1], vec[i][0]);
    }
    /* both '+' and '/' come out of the standard alphabet */
    {
        const unsigned char in[] = { 0xfb, 0xff, 0xbf };
        char out[8];
        base64_encode(in, sizeof(in), out, sizeof(out));
        ASSERT_STR_EQ(out, "+/+/");
    }
}

static void base64_round_trip_lengths_1_to_64(void) {
    for (size_t len = 1; len <= 64; len++) {
        for (int round = 0; round < 16; round++) {
            unsigned char in[64], back[64];
            char enc[128];
            size_t n;
            ptrdiff_t d;

            for (size_t i = 0; i < len; i++)
                in[i] = rng_byte();
            ASSERT_UINT_EQ(base64_encoded_size(len), (len + 2) / 3 * 4 + 1);
            n = base64_encode(in, len, enc, sizeof(enc));
            ASSERT_UINT_EQ(n, (len + 2) / 3 * 4);
            ASSERT_UINT_EQ(strlen(enc), n);
            d = base64_decode(enc, n, back, sizeof(back));
            ASSERT_INT_EQ(d, len);
            ASSERT(memcmp(in, back, len) == 0);
        }
    }
}

/* RFC 4648 section 10: BASE64("") = "". An empty input must round trip. */
/* Encoding nothing gives "", but decoding "" is refused on purpose: nothing
 * tokend decodes (an assertion) may be empty. */
static void base64_empty(void) {
    char enc[4] = "xyz";
    unsigned char back[4];

    ASSERT_UINT_EQ(base64_encode("", 0, enc, sizeof(enc)), 0);
    ASSERT_STR_EQ(enc, "");
    ASSERT_INT_EQ(base64_decode(enc, 0, back, sizeof(back)), -1);
}

static void base64_short_buffers(void) {
    char enc[8];
    unsigned char out[3];

    /* "foo" needs 4 characters plus the NUL */
    ASSERT_UINT_EQ(base64_encode("foo", 3, enc, 4), 0);
    ASSERT_UINT_EQ(base64_encode("foo", 3, enc, 5), 4);
    /* only len characters are read */
    ASSERT_INT_EQ(base64_decode("Zm9vYmFy", 4, out, 3), 3);
    ASSERT(memcmp(out, "foo", 3) == 0);
    /* decoding 3 bytes into 2 must not write past the buffer */
    ASSERT_INT_EQ(base64_decode("Zm9v", 4, out, 2), -1);
}

static void base64_decode_refusals(void) {
    /* missing padding */
    assert_decode_refused("Zg");
    assert_decode_refused("Zm8");
    assert_decode_refused("Zm9vYg");
    /* the URL-safe alphabet is a different encoding */
    assert_decode_refused("-_-_");
    assert_decode_refused("Zm9v-w==");
    assert_decode_refused("Zm9v_w==");
    /* whitespace, with lengths that would otherwise be fine */
    assert_decode_refused("Zm 9");
    assert_decode_refused("Zm9\tYmFy");
    assert_decode_refused("Zm9v\nYmE");
    /* padding anywhere but at the very end */
    assert_decode_refused("Zg=a");
    assert_decode_refused("Z===");
    assert_decode_refused("====");
    assert_decode_refused("=Zg=");
    assert_decode_refused("Zg==Zm9v");
    assert_decode_refused("Zm9vZg=");
    assert_decode_refused("Zm9vZg===");
    /* non-canonical: the bits the padding drops must be zero */
    assert_decode_refused("Zh==");
    assert_decode_refused("Zm9=");
    assert_decode_refused("Zm9vYh==");
    /* other characters */
    assert_decode_refused("Zm9\x80YmE=");
    assert_decode_refused("Zm9*");
    /* and the canonical forms next to them are fine */
    assert_decodes_to("Zg==", "f");
    assert_decodes_to("Zm8=", "fo");
}

static void assert_utf8(const char *s, size_t len, bool want) {
    if (utf8_is_printable(s, len) != want) {
        fprintf(stderr, "bytes:");
        for (size_t i = 0; i < len; i++)
            fprintf(stderr, " %02x", (unsigned char)s[i]);
        UNIT_FAIL("utf8_is_printable should %s them", want ? "accept" : "refuse");
    }
}
#define UTF8_OK(lit) assert_utf8(lit, sizeof(lit) - 1, true)
#define UTF8_BAD(lit) assert_utf8(lit, sizeof(lit) - 1, false)

static void utf8_accepts_text(void) {
    UTF8_OK("kamalsingh1234");
    UTF8_OK(" !\"#$%&'()*+,-./09:;<=>?@AZ[\\]^_`az{|}~");
    UTF8_OK("caf\xc3\xa9");                      /* é */
    UTF8_OK("\xc2\xa0");                         /* U+00A0, just past the C1 block */
    UTF8_OK("\xe4\xb8\xad\xe6\x96\x87");         /* 中文 */
    UTF8_OK("\xef\xbf\xbd");                     /* U+FFFD */
    UTF8_OK("\xf0\x9f\x98\x80");                 /* 😀 */
    UTF8_OK("\xf4\x8f\xbf\xbf");                 /* U+10FFFF, the last code point */
    UTF8_OK("a\xc3\xa9\xe4\xb8\xad\xf0\x9f\x98\x80z");
}

static void utf8_refuses_malformed(void) {
    UTF8_BAD("\xc0\x80");                 /* overlong NUL */
    UTF8_BAD("\xc1\xbf");                 /* overlong '\x7f' */
    UTF8_BAD("\xe0\x80\xaf");             /* overlong '/' */
    UTF8_BAD("\xf0\x80\x80\xaf");         /* overlong '/' */
    UTF8_BAD("\xed\xa0\x80");             /* U+D800, a surrogate */
    UTF8_BAD("\xed\xbf\xbf");             /* U+DFFF */
    UTF8_BAD("\xf4\x90\x80\x80");         /* U+110000 */
    UTF8_BAD("\xf5\x80\x80\x80");
    UTF8_BAD("\xff");
    UTF8_BAD("\x80");                     /* a lone continuation byte */
    UTF8_BAD("a\xbf");
    UTF8_BAD("\xc3");                     /* truncated sequences */
    UTF8_BAD("caf\xc3");
    UTF8_BAD("\xe4\xb8");
    UTF8_BAD("\xf0\x9f\x98");
    UTF8_BAD("\xc3(");                    /* a lead byte followed by ASCII */
    UTF8_BAD("\xe4\xb8(");
}

/* Callers pass lengths into buffers that are not NUL-terminated there (a
 * query string): a sequence cut by len is truncated even when the bytes
 * after len would complete it. */
static void utf8_stops_at_len(void) {
    assert_utf8("\xc3\xa9", 1, false);
    assert_utf8("a\xe4\xb8\xad", 3, false);
    assert_utf8("\xf0\x9f\x98\x80", 3, false);
    assert_utf8("ab\x01", 2, true); /* and what lies past len is not looked at */
    assert_utf8("\xc3\xa9", 2, true);
    assert_utf8("", 0, true);
}

static void utf8_refuses_controls(void) {
    char c[2] = { 0, 0 };

    for (int b = 0; b < 0x20; b++) {
        c[0] = (char)b;
        assert_utf8(c, 1, false);
    }
    UTF8_BAD("\x7f");
    UTF8_BAD("a\nb");
    UTF8_BAD("a\0b");
    for (int b = 0x80; b <= 0x9f; b++) { /* C1: U+0080..U+009F */
        char s[2] = { (char)0xc2, (char)b };
        assert_utf8(s, 2, false);
    }
}

static void parse_uint_accepts_and_refuses(void) {
    uint64_t v = 99;

    ASSERT_INT_EQ(parse_uint("0", 10, &v), 0);
    ASSERT_UINT_EQ(v, 0);
    ASSERT_INT_EQ(parse_uint("42", 100, &v), 0);
    ASSERT_UINT_EQ(v, 42);
    ASSERT_INT_EQ(parse_uint("100", 100, &v), 0);
    ASSERT_UINT_EQ(v, 100);
    ASSERT_INT_EQ(parse_uint("1000000000000", UINT64_MAX, &v), 0);
    ASSERT_UINT_EQ(v, 1000000000000ULL);

    v = 7;
    ASSERT_INT_EQ(parse_uint("101", 100, &v), -ERANGE);
    ASSERT_INT_EQ(parse_uint("18446744073709551616", UINT64_MAX, &v), -ERANGE);
    ASSERT_INT_EQ(parse_uint("99999999999999999999999", UINT64_MAX, &v), -ERANGE);
    ASSERT_INT_EQ(parse_uint("", 100, &v), -EINVAL);
    ASSERT_INT_EQ(parse_uint("-1", 100, &v), -EINVAL);
    ASSERT_INT_EQ(parse_uint("+1", 100, &v), -EINVAL);
    ASSERT_INT_EQ(parse_uint(" 1", 100, &v), -EINVAL);
    ASSERT_INT_EQ(parse_uint("1 ", 100, &v), -EINVAL);
    ASSERT_INT_EQ(parse_uint("1.5", 100, &v), -EINVAL);
    ASSERT_INT_EQ(parse_uint("0x10", 100, &v), -EINVAL);
    ASSERT_INT_EQ(parse_uint("12abc", 100, &v), -EINVAL);
    ASSERT_INT_EQ(parse_uint(NULL, 100, &v), -EINVAL);
    ASSERT_UINT_EQ(v, 7); /* untouched on failure */
}

static void assert_duration(const char *s, uint64_t want_ms) {
    uint64_t v = 12345;
    int r = parse_duration_ms(s, &v);
    if (r != 0 || v != want_ms)
        UNIT_FAIL("parse_duration_ms(\"%s\") = %d, %llu ms; want %llu ms", s, r,
                  (unsigned long long)v, (unsigned long long)want_ms);
}

static void assert_duration_refused(const char *s, int want) {
    uint64_t v = 12345;
    int r = parse_duration_ms(s, &v);
    if (r != want || v != 12345)
        UNIT_FAIL("parse_duration_ms(\"%s\") = %d, want %d and no value", s, r, want);
}

static void parse_duration_units(void) {
    assert_duration("500ms", 500);
    assert_duration("0ms", 0);
    assert_duration("10s", 10000);
    assert_duration("5m", 300000);
    assert_duration("1h", 3600000);
    assert_duration("12h", 43200000);
    assert_duration("30", 30000); /* no unit: seconds */
    assert_duration("0", 0);
}

static void parse_duration_refusals(void) {
    assert_duration_refused("", -EINVAL);
    assert_duration_refused("s", -EINVAL);
    assert_duration_refused("ms", -EINVAL);
    assert_duration_refused("10 s", -EINVAL);
    assert_duration_refused(" 10s", -EINVAL);
    assert_duration_refused("10s ", -EINVAL);
    assert_duration_refused("1.5s", -EINVAL);
    assert_duration_refused("-1s", -EINVAL);
    assert_duration_refused("+1s", -EINVAL);
    assert_duration_refused("10sec", -EINVAL);
    assert_duration_refused("10d", -EINVAL);
    assert_duration_refused("10us", -EINVAL);
    assert_duration_refused("1h30m", -EINVAL);
    /* too large to represent in milliseconds */
    assert_duration_refused("18446744073709551615h", -ERANGE);
    assert_duration_refused("99999999999999999999999999999999999ms", -ERANGE);
}

/* The reference vectors of the SipHash paper: key 00..0f, message 00..len-1. */
static void siphash24_reference_vectors(void) {
    unsigned char key[16], msg[16];

    for (int i = 0; i < 16; i++)
        key[i] = msg[i] = (unsigned char)i;
    ASSERT_UINT_EQ(siphash24(msg, 0, key), 0x726fdb47dd0e0e31ull);
    ASSERT_UINT_EQ(siphash24(msg, 1, key), 0x74f839c593dc67fdull);
    ASSERT_UINT_EQ(siphash24(msg, 15, key), 0xa129ca6149be45e5ull);
    key[0] ^= 1; /* another key, another hash */
    ASSERT(siphash24(msg, 15, key) != 0xa129ca6149be45e5ull);
}

/* An unkeyed 48-bit FNV-1a of a numeric id could be reversed by trying
 * every id. Keyed with the secret, the fingerprint of an id is not what
 * anyone without the secret can compute, and nearby ids share nothing. */
static void fingerprint_is_keyed(void) {
    char a[FINGERPRINT_LEN], b[FINGERPRINT_LEN], c[FINGERPRINT_LEN], fnv[FINGERPRINT_LEN];
    uint64_t h = 0xcbf29ce484222325ULL;
    const char *id = "12345678";
    int same = 0;

    ASSERT_INT_EQ(fingerprint_set_key("cid", "secret-one", 10), 0);
    fingerprint(id, 8, a);
    fingerprint(id, 8, b);
    ASSERT_STR_EQ(a, b); /* stable within a deployment */
    for (size_t i = 0; i < 8; i++) {
        h ^= (unsigned char)id[i];
        h *= 0x100000001b3ULL;
    }
    for (int i = FINGERPRINT_LEN - 2; i >= 0; i--, h >>= 4)
        fnv[i] = "0123456789abcdef"[h & 0xf];
    fnv[FINGERPRINT_LEN - 1] = '\0';
    ASSERT(strcmp(a, fnv) != 0);
    ASSERT_INT_EQ(fingerprint_set_key("cid", "secret-two", 10), 0);
    fingerprint(id, 8, c);
    ASSERT(strcmp(a, c) != 0); /* another secret, another fingerprint */
    ASSERT_INT_EQ(fingerprint_set_key("cid2", "secret-one", 10), 0);
    fingerprint(id, 8, c);
    ASSERT(strcmp(a, c) != 0); /* another client, too */
    /* neighbours: about 1 in 16 digits alike by chance, not a shared prefix */
    ASSERT_INT_EQ(fingerprint_set_key("cid", "secret-one", 10), 0);
    fingerprint("12345679", 8, c);
    for (int i = 0; i < FINGERPRINT_LEN - 1; i++)
        same += a[i] == c[i];
    ASSERT(same < 6);
}

static void fingerprint_is_stable_and_short(void) {
    char a[FINGERPRINT_LEN], b[FINGERPRINT_LEN], c[FINGERPRINT_LEN];

    fingerprint("kamalsingh1234", 14, a);
    fingerprint("kamalsingh1234", 14, b);
    fingerprint("kamalsingh1235", 14, c);
    ASSERT_UINT_EQ(strlen(a), FINGERPRINT_LEN - 1);
    ASSERT_STR_EQ(a, b);
    ASSERT(strcmp(a, c) != 0);
    ASSERT_NOT_CONTAINS(a, "kamal");
    for (size_t i = 0; i < strlen(a); i++)
        ASSERT(strchr("0123456789abcdef", a[i]));
}

static const unit_test tests[] = {
    TEST(base64_rfc4648_vectors),
    TEST(base64_round_trip_lengths_1_to_64),
    TEST(base64_empty),
    TEST(base64_short_buffers),
    TEST(base64_decode_refusals),
    TEST(utf8_accepts_text),
    TEST(utf8_refuses_malformed),
    TEST(utf8_refuses_controls),
    TEST(utf8_stops_at_len),
    TEST(parse_uint_accepts_and_refuses),
    TEST(parse_duration_units),
    TEST(parse_duration_refusals),
    TEST(fingerprint_is_stable_and_short),
    TEST(fingerprint_is_keyed),
    TEST(siphash24_reference_vectors),
};

UNIT_MAIN(tests)
