/* Strict HTTP for a request's header block: tokend must read a request the
 * way whatever relayed it did, or refuse it. Refused: header names that are
 * not tokens (`Host : x`), folded lines (obsolete line folding) in or of a
 * header tokend reads, a repeated header tokend reads, two different
 * Content-Lengths, any transfer coding but chunked, and chunked with a
 * Content-Length. Also notes what the guard needs (Host, Origin,
 * Sec-Fetch-Site, Authorization, the user header, relaying proxies'
 * headers), so the HTTP front makes one pass over the headers. Not
 * responsible for sizes (the HTTP library's memory sets them) nor for who
 * may call (guard.c). */
#include "head.h"

#include <stdint.h>
#include <string.h>
#include <strings.h>

#include "util.h"

/* RFC 9110 §5.6.2: ALPHA, DIGIT and !#$%&'*+-.^_`|~, as a bitmap (one
 * load per character: this runs on every request, the hit path included) */
static bool tchar(unsigned char ch) {
    static const uint64_t map[4] = { 0x03ff6cfa00000000ULL, 0x57ffffffc7fffffeULL, 0, 0 };

    return (map[ch >> 6] >> (ch & 63)) & 1;
}

/* The headers tokend reads. A folded line of one of them must not make it
 * vanish or change: libmicrohttpd 0.9.75 appends the continuation to the
 * header's NAME ("Host: evil\r\n x" arrives as a header "Hostx"), 1.0 to
 * its value. The first four are kept for the guard, in this order. */
#define NAME(s) { s, sizeof(s) - 1 }
#define IS(key, key_size, lit) is_name(key, key_size, lit, sizeof(lit) - 1)
static const struct name {
    const char *s;
    size_t len;
} read_headers[] = {
    NAME("Host"), NAME("Origin"), NAME("Sec-Fetch-Site"), NAME("Authorization"),
    NAME("Forwarded"), NAME("X-Forwarded-For"), NAME("X-Real-IP"), NAME("X-Client-IP"),
    NAME("True-Client-IP"), NAME("Content-Length"), NAME("Content-Type"), NAME("Transfer-Encoding"),
    NAME("Expect"), NAME("Via"), NAME("CF-Connecting-IP"), NAME("X-Original-Forwarded-For"),
}, relay_headers[] = {
    NAME("Forwarded"), NAME("X-Real-IP"), NAME("X-Client-IP"), NAME("True-Client-IP"),
    NAME("Via"), NAME("CF-Connecting-IP"), NAME("X-Original-Forwarded-For"),
};

/* 1: key is name; 2: name and more; 0: neither */
static int prefix(const char *key, size_t key_size, const char *name, size_t n) {
    if (key_size < n || (key[0] | 0x20) != (name[0] | 0x20) || strncasecmp(key, name, n) != 0)
        return 0;
    return key_size == n ? 1 : 2;
}

static bool is_name(const char *key, size_t key_size, const char *name, size_t n) {
    return prefix(key, key_size, name, n) == 1;
}

/* A continuation glued onto a value: the CR LF as two spaces, then the
 * continuation's own leading whitespace. */
static bool folded_value(const char *v, size_t n) {
    for (size_t i = 0; i + 2 < n; i++)
        if (v[i] == ' ' && v[i + 1] == ' ' && (v[i + 2] == ' ' || v[i + 2] == '\t'))
            return true;
    return false;
}

static bool refuse(head *h, const char *why) {
    h->bad = why;
    return false;
}

static const char folded[] = "a folded header line (obsolete line folding) is refused";

/* Each once: a second one (of the same value or not) would be read one way
 * here and maybe another by whoever relayed it. */
static bool keep(head *h, const char **slot, const char *value) {
    if (*slot)
        return refuse(h, "a header tokend reads (Host, Origin, Sec-Fetch-Site, Authorization or the "
                         "user header) is repeated");
    *slot = value;
    return true;
}

bool head_add(head *h, const head_rules *r, const char *key, size_t key_size, const char *value, size_t value_size) {
    const char **slots[] = { &h->host, &h->origin, &h->site, &h->authorization };
    bool read = false;
    int m;

    h->bytes += key_size + value_size + 4;
    if (!key_size)
        return refuse(h, "a header line has no name");
    for (size_t i = 0; i < key_size; i++)
        if (!tchar((unsigned char)key[i]))
            return refuse(h, "a header name holds a character HTTP does not allow there "
                             "(whitespace before the colon, or a folded line)");
    for (size_t i = 0; i < ARRAY_SIZE(read_headers) && !read; i++) {
        m = prefix(key, key_size, read_headers[i].s, read_headers[i].len);
        if (m == 2)
            return refuse(h, folded);
        if (m == 1 && i < ARRAY_SIZE(slots) && !keep(h, slots[i], value))
            return false;
        read = m == 1;
    }
    if (!read && r->user_header_len) {
        m = prefix(key, key_size, r->user_header, r->user_header_len);
        if (m == 2)
            return refuse(h, folded);
        if (m == 1 && h->user)
            return keep(h, &value, value); /* refused: repeated */
        if (m == 1) {
            h->user = read = true;
            h->user_value = value;
            h->user_len = value_size;
        }
    }
    if (read && r->folds_in_values && folded_value(value, value_size))
        return refuse(h, folded);
    if ((key[0] | 0x20) == 'x' && strncasecmp(key, "X-Forwarded-", 12) == 0)
        h->relayed = true; /* -For, -Host, -Proto, -Port, -Server, ... */
    for (size_t i = 0; i < ARRAY_SIZE(relay_headers) && !h->relayed; i++)
        h->relayed = is_name(key, key_size, relay_headers[i].s, relay_headers[i].len);
    if (!read)
        return true;
    if (IS(key, key_size, "Content-Length")) {
        /* the first frames the body in libmicrohttpd: another one of a
         * different length is a request meant to be read two ways */
        if (h->length && strcmp(h->length, value) != 0)
            return refuse(h, "two different Content-Length headers");
        h->length = value;
    } else if (IS(key, key_size, "Transfer-Encoding")) {
        /* libmicrohttpd decodes chunked, and nothing else: 0.9.75 reads any
         * other coding's body until the client closes, and never answers */
        if (h->chunked || strcasecmp(value, "chunked") != 0)
            return refuse(h, "the only transfer coding tokend reads is 'Transfer-Encoding: chunked'");
        h->chunked = true;
    } else if (IS(key, key_size, "Content-Type")) {
        if (!h->content_type)
            h->content_type = value;
    } else if (IS(key, key_size, "Expect"))
        h->expect = strcasecmp(value, "100-continue") == 0;
    return true;
}

bool head_finish(head *h) {
    if (h->chunked && h->length)
        return refuse(h, "Content-Length and Transfer-Encoding together");
    return !h->bad;
}
