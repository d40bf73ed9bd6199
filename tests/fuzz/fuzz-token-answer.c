/* Fuzzes the parsing of Instacart's answers: a token must come out only when
 * every field is present and in range, and error codes must come out
 * printable and bounded, whatever the bytes. The body is handed over in a
 * buffer of exactly its length, so reading past len is caught. */
#include <stdbool.h>
#include <string.h>

#include "fuzz.h"
#include "oauth.h"
#include "token.h"

/* Fixed so runs are reproducible; far from overflow, as CLOCK_MONOTONIC is. */
#define RECEIVED_MS 1000000007ULL

static void check_token(const token *t) {
    fuzz_check(t->refs == 1);
    fuzz_check(t->len >= 1 && t->len <= OAUTH_TOKEN_MAX);
    fuzz_check(strlen(t->value) == t->len);
    fuzz_check(fuzz_b64token(t->value, t->len));
    fuzz_check(t->lifetime_s >= 1 && t->lifetime_s <= OAUTH_LIFETIME_MAX);
    fuzz_check(t->received_ms == RECEIVED_MS);
    fuzz_check(t->expires_ms == t->received_ms + (uint64_t)t->lifetime_s * 1000);
    fuzz_check(t->created_at >= 0 && t->created_at < 100000000000LL);
}

static void check_code(const char *out, size_t out_size) {
    size_t n = strnlen(out, out_size);

    fuzz_check(n < out_size);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)out[i];
        fuzz_check(c > 0x20 && c < 0x7f && c != '"' && c != '\\');
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *body = (const char *)data;
    char code[64];   /* what upstream.c passes */
    char *mem, *small;
    size_t small_size = size % 8; /* truncation at every small size, 0 included */
    token *t = NULL;

    if (oauth_parse_token(body, size, RECEIVED_MS, &t) == 0) {
        fuzz_check(t);
        check_token(t);
        /* JSON has no raw NUL anywhere (RFC 8259 7); one inside the token's
         * string would cut it short without anything looking wrong */
        fuzz_check(!memchr(body, '\0', size));
        token_unref(t);
    } else
        fuzz_check(!t);

    oauth_parse_error(body, size, code, sizeof(code));
    check_code(code, sizeof(code));

    /* exactly small_size bytes, so a write past out_size is caught; for 0, the
     * end of a 1-byte block (ASan counts malloc(0) as one usable byte) */
    mem = malloc(small_size ? small_size : 1);
    if (!mem)
        return 0;
    small = small_size ? mem : mem + 1;
    oauth_parse_error(body, size, small, small_size);
    if (small_size > 0) {
        check_code(small, small_size);
        /* the same code, cut short */
        fuzz_check(strncmp(small, code, small_size - 1) == 0);
        fuzz_check(strlen(small) == (strlen(code) < small_size - 1 ? strlen(code) : small_size - 1));
    }
    free(mem);
    return 0;
}
