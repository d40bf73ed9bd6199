/* Fuzzes the reading of a cache image (snapshot_decode) into a real cache.
 * The image comes back from systemd's file descriptor store, or from
 * whoever handed tokend a memfd, so nothing in it is trusted: it must never
 * crash, leak, or put into the cache a token under an invalid user id or
 * scope, or a token that is not one. A fetch function that aborts proves
 * reading never mints.
 *
 * Random bytes rarely get past the magic, checksum and boot id, so the
 * first input byte picks a mode: even, the input is the image as it is;
 * odd, this harness writes a valid header (this boot, the identity below,
 * a checksum computed here independently) in front of the rest, which then
 * is the entries, so the fuzzer spends its time on them. In that mode the
 * entries are also parsed here a second way, and the two must agree on
 * accepting the image; every token the cache then holds must be one of
 * them, under the same key.
 *
 *   byte 0      mode (bit 0: write the header; bit 1: a cache of 4 entries)
 *   bytes 1-4   number of entries (u32 LE)
 *   bytes 5-6   age of the image in seconds (u16 LE)
 *   byte 7      min_ttl in minutes
 *   bytes 8-    entries, as snapshot.c describes them */
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cache.h"
#include "fuzz.h"
#include "oauth.h"
#include "request.h"
#include "snapshot.h"

#define HEADER_LEN 64
#define ENTRY_FIXED_LEN 36 /* the harness writes version 2 headers */
#define PREFIX_LEN 8

static const snapshot_identity identity = { "https://connect.instacart.com", "fuzz-client" };

struct entry {
    uint8_t grant, kind;
    const uint8_t *user, *scope, *value;
    size_t ulen, slen, tlen;
    uint32_t lifetime_s;
    uint64_t remaining_ms;
    uint64_t at28; /* kinds 2 to 7: the value at offset 28 */
};

struct image {
    struct entry *entries;
    size_t n;
    bool valid; /* as far as this harness can tell, decode must accept it */
    size_t seen; /* tokens the cache gave back, checked */
    size_t carried; /* drops, flushes and revocations handed back, checked */
};

static void fetch_must_not_run(void *source, enum oauth_grant grant, const char *user_id, const char *scope,
                               const struct cache_want *want, cache_done_fn done, void *ctx) {
    fprintf(stderr, "reading a snapshot started a mint\n");
    abort();
}

static uint32_t le32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t le64(const uint8_t *p) {
    return (uint64_t)le32(p) | (uint64_t)le32(p + 4) << 32;
}

static void put_le(uint8_t *p, uint64_t v, int bytes) {
    for (int i = 0; i < bytes; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

/* CRC-32C bit by bit: a second implementation, not snapshot.c's table. */
static uint32_t crc32c(uint32_t crc, const uint8_t *p, size_t len) {
    crc = ~crc;
    for (size_t i = 0; i < len; i++) {
        crc ^= p[i];
        for (int k = 0; k < 8; k++)
            crc = (crc >> 1) ^ (0x82f63b78u & (0u - (crc & 1)));
    }
    return ~crc;
}

static uint64_t fnv1a(uint64_t h, const char *s) {
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 0x100000001b3ULL;
    }
    return h;
}

static bool read_boot_id(uint8_t out[16]) {
    char buf[64];
    ssize_t n;
    int fd = open("/proc/sys/kernel/random/boot_id", O_RDONLY | O_CLOEXEC), k = 0;

    if (fd < 0)
        return false;
    n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0)
        return false;
    for (ssize_t i = 0; i < n && k < 32; i++) {
        char c = buf[i];
        int v = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (c == '-')
            continue;
        if (v < 0)
            return false;
        out[k / 2] = (uint8_t)(k % 2 ? out[k / 2] | v : v << 4);
        k++;
    }
    return k == 32;
}

/* RFC 6750 b64token, within tokend's bound */
static bool token_valid(const uint8_t *s, size_t len) {
    return fuzz_b64token(s, len) && len <= OAUTH_TOKEN_MAX;
}

static bool scope_valid(const uint8_t *s, size_t len) {
    if (len == 0 || len > OAUTH_SCOPE_MAX)
        return false;
    for (size_t i = 0; i < len; i++)
        if (s[i] <= 0x20 || s[i] >= 0x7f || s[i] == '"' || s[i] == '\\')
            return false;
    return true;
}

/* Parses the entries independently. im->valid: all count entries are well
 * formed and fill the payload exactly. */
static void parse_entries(const uint8_t *p, size_t len, uint32_t count, struct image *im) {
    size_t off = 0;

    im->valid = false;
    im->entries = calloc(count < len / ENTRY_FIXED_LEN + 1 ? count : len / ENTRY_FIXED_LEN + 1,
                         sizeof(*im->entries));
    fuzz_check(im->entries);
    for (uint32_t i = 0; i < count; i++) {
        struct entry *e = &im->entries[im->n];
        const uint8_t *q = p + off;

        if (len - off < ENTRY_FIXED_LEN)
            return;
        e->grant = q[0];
        e->ulen = (size_t)q[2] | (size_t)q[3] << 8;
        e->slen = (size_t)q[4] | (size_t)q[5] << 8;
        e->tlen = (size_t)q[6] | (size_t)q[7] << 8;
        e->lifetime_s = le32(q + 8);
        e->remaining_ms = le64(q + 12);
        if (len - off - ENTRY_FIXED_LEN < e->ulen + e->slen + e->tlen)
            return;
        e->user = q + ENTRY_FIXED_LEN;
        e->scope = e->user + e->ulen;
        e->value = e->scope + e->slen;
        /* kinds (version 2): 0 cached, 1 to revoke, 2 and 3 a user's fleet
         * revocation (a time at 28, or 0) and drop, 4 a fleet flush, 5 a
         * revocation event seen (16 hex digits as its scope), 6 a revoked
         * token's fingerprint (at 28, not 0; no user, no scope), 7 a tell of
         * one (at 28, not 0; a user or none), 8 the last event read (a
         * stream id, <ms>-<seq> in digits, as its scope; no user; its Redis
         * at 28, or 0), 9 when a user's tokens were revoked (at 28, not 0;
         * no user; the user's fingerprint, 16 hex digits, as its scope),
         * 10 the generation of the last flush (at 28, not 0; no user, no
         * scope); 2 to 10 hold no token, and 3, 4 and 5 nothing at 28 */
        e->kind = q[1];
        e->at28 = le64(q + 28);
        if (e->kind > 10 || e->grant > OAUTH_GRANT_CLIENT_CREDENTIALS)
            return;
        if (e->kind >= 2 ? e->tlen != 0 || e->lifetime_s != 0 || e->remaining_ms != 0 || le64(q + 20) != 0 ||
                               (e->kind == 6 || e->kind == 7 || e->kind == 9 || e->kind == 10 ? e->at28 == 0
                                                              : e->kind != 2 && e->kind != 8 && e->at28 != 0)
                         : e->lifetime_s == 0 || e->lifetime_s > OAUTH_LIFETIME_MAX ||
                               e->remaining_ms > (uint64_t)e->lifetime_s * 1000)
            return;
        if ((e->kind == 1 || e->kind == 4 || e->kind == 6 || e->kind == 10) &&
            (e->grant != OAUTH_GRANT_CLIENT_CREDENTIALS || e->slen != 0))
            return;
        if (e->kind == 8) {
            /* "<ms>-<seq>": two runs of digits, each a number that fits 64 bits */
            size_t dash = 0;
            if (e->grant != OAUTH_GRANT_CLIENT_CREDENTIALS || e->ulen != 0)
                return;
            while (dash < e->slen && e->scope[dash] != '-')
                dash++;
            if (dash == 0 || dash + 1 >= e->slen)
                return;
            for (size_t k = 0; k < e->slen; k++)
                if (k != dash && (e->scope[k] < '0' || e->scope[k] > '9'))
                    return;
            for (int part = 0; part < 2; part++) {
                size_t from = part ? dash + 1 : 0, to = part ? e->slen : dash;
                while (to - from > 1 && e->scope[from] == '0')
                    from++;
                if (to - from > 20 || (to - from == 20 && memcmp(e->scope + from, "18446744073709551615", 20) > 0))
                    return;
            }
        }
        if (e->kind == 5 || e->kind == 9) {
            if (e->grant != OAUTH_GRANT_CLIENT_CREDENTIALS || e->slen != 16)
                return;
            for (size_t k = 0; k < 16; k++)
                if (!strchr("0123456789abcdef", e->scope[k]) || !e->scope[k])
                    return;
        }
        if (e->grant == OAUTH_GRANT_USER_ASSERTION ? !request_user_id_valid((const char *)e->user, e->ulen)
                                                   : e->ulen != 0)
            return;
        /* "" only for a client token asked for without a scope */
        if (!(e->slen == 0 ? e->grant == OAUTH_GRANT_CLIENT_CREDENTIALS : scope_valid(e->scope, e->slen)) ||
            !(e->kind >= 2 || token_valid(e->value, e->tlen)))
            return;
        off += ENTRY_FIXED_LEN + e->ulen + e->slen + e->tlen;
        im->n++;
    }
    im->valid = off == len;
}

/* Every token the cache holds after a restore: well formed, and one of the
 * image's, under the same key (matching the key alone is not enough: a
 * token under another user's key is the worst thing this could do). */
static void check_exported(void *userdata, enum oauth_grant grant, const char *user_id, const char *scope,
                           const token *t) {
    struct image *im = userdata;
    size_t ulen = strlen(user_id), slen = strlen(scope);
    bool found = false;

    fuzz_check(grant == OAUTH_GRANT_USER_ASSERTION ? request_user_id_valid(user_id, ulen) : ulen == 0);
    fuzz_check(slen == 0 ? grant == OAUTH_GRANT_CLIENT_CREDENTIALS : scope_valid((const uint8_t *)scope, slen));
    fuzz_check(t->len == strlen(t->value) && token_valid((const uint8_t *)t->value, t->len));
    fuzz_check(t->lifetime_s >= 1 && t->lifetime_s <= OAUTH_LIFETIME_MAX);
    fuzz_check(t->expires_ms - t->received_ms == (uint64_t)t->lifetime_s * 1000 || t->received_ms == 0);
    im->seen++;
    if (!im->entries)
        return; /* a raw image: only the rules above can be checked */
    for (size_t i = 0; i < im->n && !found; i++) {
        const struct entry *e = &im->entries[i];
        found = e->grant == grant && e->ulen == ulen && memcmp(e->user, user_id, ulen) == 0 && e->slen == slen &&
                memcmp(e->scope, scope, slen) == 0 && e->tlen == t->len && memcmp(e->value, t->value, t->len) == 0 &&
                e->lifetime_s == t->lifetime_s;
    }
    fuzz_check(found);
}

/* A drop, flush or revocation carried over the restart, handed back: well
 * formed, a token only for a revocation, and one of the image's. */
static void check_carried(void *ctx, enum snapshot_kind kind, enum oauth_grant grant, const char *user_id,
                          const char *scope, token *t, uint64_t value) {
    struct image *im = ctx;
    size_t ulen = strlen(user_id), slen = strlen(scope);
    bool found = false;

    fuzz_check(kind >= SNAPSHOT_REVOKE && kind <= SNAPSHOT_KIND_MAX);
    fuzz_check((t != NULL) == (kind == SNAPSHOT_REVOKE));
    fuzz_check(t ? value == 0
                 : kind == SNAPSHOT_REVOKED_FP || kind == SNAPSHOT_REVOKED_TELL || kind == SNAPSHOT_USER_REVOKED ||
                           kind == SNAPSHOT_FLUSH_FLOOR
                     ? value != 0
                     : kind == SNAPSHOT_REVOKE_SHARED || kind == SNAPSHOT_EVENTS_READ || !value);
    fuzz_check(grant == OAUTH_GRANT_USER_ASSERTION ? request_user_id_valid(user_id, ulen) : ulen == 0);
    fuzz_check(slen == 0 ? grant == OAUTH_GRANT_CLIENT_CREDENTIALS : scope_valid((const uint8_t *)scope, slen));
    if (t) {
        fuzz_check(t->len == strlen(t->value) && token_valid((const uint8_t *)t->value, t->len));
        fuzz_check(t->lifetime_s >= 1 && t->lifetime_s <= OAUTH_LIFETIME_MAX);
    }
    im->carried++;
    for (size_t i = 0; im->entries && i < im->n && !found; i++) {
        const struct entry *e = &im->entries[i];
        found = e->kind == kind && e->grant == grant && e->ulen == ulen && memcmp(e->user, user_id, ulen) == 0 &&
                e->slen == slen && memcmp(e->scope, scope, slen) == 0 &&
                (t ? e->tlen == t->len && memcmp(e->value, t->value, t->len) == 0 : e->at28 == value);
    }
    fuzz_check(found || !im->entries);
    token_unref(t);
}

static uint64_t boottime_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_BOOTTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static uint8_t boot[16];
    static int have_boot = -1;
    cache_settings s = { .max_entries = 4096, .min_ttl_ms = 300000, .refresh_before_pct = 10,
                         .failure_ttl_ms = 10000, .max_waiters = 16, .retry_base_ms = 100,
                         .retry_max_ms = 10000 };
    struct snapshot_counts n;
    struct image im = { 0 };
    struct cache_stats st;
    char err[SNAPSHOT_ERR_MAX];
    const uint8_t *img = data;
    uint8_t *built = NULL;
    size_t len = size;
    uint64_t min_ttl_ms = 0;
    cache *c = NULL;
    int r;

    if (have_boot < 0)
        have_boot = read_boot_id(boot);
    if (size >= PREFIX_LEN && (data[0] & 1) && have_boot) {
        uint32_t count = le32(data + 1);
        uint64_t age_ns = ((uint64_t)data[5] | (uint64_t)data[6] << 8) * 1000000000ULL, now = boottime_ns();
        uint32_t crc;

        if (data[0] & 2)
            s.max_entries = 4;
        min_ttl_ms = (uint64_t)data[7] * 60000;
        len = HEADER_LEN + size - PREFIX_LEN;
        built = malloc(len);
        fuzz_check(built);
        memcpy(built, "TOKENDC\x1a", 8);
        put_le(built + 8, SNAPSHOT_VERSION, 4);
        put_le(built + 12, count, 4);
        put_le(built + 16, size - PREFIX_LEN, 8);
        memcpy(built + 24, boot, 16);
        put_le(built + 40, now > age_ns ? now - age_ns : 0, 8);
        put_le(built + 48, fnv1a(fnv1a(fnv1a(0xcbf29ce484222325ULL, identity.base_url), "\n"), identity.client_id),
               8);
        put_le(built + 60, 0, 4);
        memcpy(built + HEADER_LEN, data + PREFIX_LEN, size - PREFIX_LEN);
        crc = crc32c(0, built, 56);
        crc = crc32c(crc, built + HEADER_LEN, len - HEADER_LEN);
        put_le(built + 56, crc, 4);
        img = built;
        parse_entries(built + HEADER_LEN, len - HEADER_LEN, count, &im);
    }

    fuzz_check(cache_new(&s, fetch_must_not_run, NULL, &c) == 0);
    memset(err, 'x', sizeof(err));
    {
        struct snapshot_more more = { .restore = check_carried, .ctx = &im };
        r = snapshot_decode(img, len, &identity, min_ttl_ms, c, &more, &n, err);
    }
    cache_get_stats(c, &st);
    if (r == 0) {
        fuzz_check(!built || im.valid);
        fuzz_check(n.entries == (built ? im.n : n.entries));
        fuzz_check(n.restored + n.carried + n.remembered + n.expired + n.skipped == n.entries);
        fuzz_check(im.carried == n.carried + n.remembered);
        fuzz_check(st.entries <= n.restored);
        cache_export(c, check_exported, &im);
        fuzz_check(im.seen <= n.restored);
    } else {
        /* all or nothing, and the reason said */
        fuzz_check(memchr(err, '\0', sizeof(err)) && err[0]);
        fuzz_check(r == -EBADMSG || r == -EPROTONOSUPPORT || r == -ESTALE || r == -EREMCHG || r == -ENOMEM);
        if (r != -ENOMEM)
            fuzz_check(st.entries == 0);
        fuzz_check(!built || !im.valid || r == -ENOMEM);
    }
    cache_free(c);
    free(im.entries);
    free(built);
    return 0;
}
