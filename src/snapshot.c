/* The cache image handed over a restart. Responsible for: the binary format
 * (versioned, checksummed, tied to one boot and one set of credentials), the
 * sealed memfd that carries it, and refusing anything that is not exactly
 * what we wrote. Not responsible for where the memfd goes (sd.c hands it to
 * systemd) nor for deciding when to write one (main.c).
 *
 * Format, all integers little-endian:
 *
 *   header, 64 bytes
 *     0  magic "TOKENDC\x1a"
 *     8  u32 version (2; 1 is read too)
 *    12  u32 number of entries
 *    16  u64 bytes of entries after the header
 *    24  16 bytes: the boot id (/proc/sys/kernel/random/boot_id)
 *    40  u64 CLOCK_BOOTTIME at writing, ns
 *    48  u64 FNV-1a of base URL, '\n', client id
 *    56  u32 CRC-32C of bytes 0..55 and of every entry
 *    60  u32 zero
 *   entry, 36 bytes (28 in version 1) then the strings
 *     0  u8 grant, u8 kind (enum snapshot_kind; 0 in version 1), u16 user
 *        id length, u16 scope length, u16 token length, u32 lifetime (s),
 *        u64 remaining lifetime at writing (ms), i64 created_at
 *        (Instacart's clock)
 *    28  u64 when the token was minted, as its minting host sealed it
 *        (token.minted_unix_ms; 0: unknown) (not in version 1); in
 *        entries without a token, the kind's value (below)
 *    36  user id, scope, token; no terminators
 *   kinds: 0 a cached token; 1 a token to revoke (no user, no scope); 2, 3
 *   a user whose fleet token to revoke (value: when it was asked, 0
 *   unknown) or drop, 4 a fleet flush, 5 a fleet revocation event applied,
 *   its id (16 hex digits) in the scope's place, 6 a token the fleet
 *   revoked (value: its fingerprint), 7 the fleet not yet told of one
 *   (value: its fingerprint; its user, or none), 8 the last fleet event
 *   read, its stream id ("<ms>-<seq>") in the scope's place (value: which
 *   Redis it was read from, a hash of its address, 0 unknown), 9 when a
 *   user's tokens were last revoked (value: that time, Unix ms), the
 *   user's fingerprint (16 hex digits; all zeros: every user) in the
 *   scope's place, 10 the fleet's generation of the last flush the host
 *   knew proven (value: that generation). Only 0 and 1 hold a token: in
 *   the others its length, lifetime, remaining and created_at are 0; 4, 5,
 *   6, 8, 9 and 10 have no user either, 4, 6 and 10 no scope; the value is
 *   0 where the kind has none.
 *
 * Why CLOCK_BOOTTIME and the boot id: lifetimes are counted from the moment
 * of writing, and the time between writing and reading must include any
 * suspend (CLOCK_MONOTONIC stops then, Instacart's clock does not). Both
 * clocks restart at boot, so an image from another boot is meaningless; the
 * fd store cannot outlive a boot anyway, but a snapshot handed in by other
 * means could. */
#include "snapshot.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "oauth.h"
#include "request.h"
#include "util.h"

static const uint8_t magic[8] = { 'T', 'O', 'K', 'E', 'N', 'D', 'C', 0x1a };

#define HEADER_LEN 64
#define ENTRY_FIXED_V1 28
#define ENTRY_FIXED_LEN 36 /* version 2 */
#define CRC_OFFSET 56

/* ---- small helpers ---- */

static void put16(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static void put32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void put64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint16_t get16(const uint8_t *p) {
    return (uint16_t)(p[0] | p[1] << 8);
}

static uint32_t get32(const uint8_t *p) {
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static uint64_t get64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

/* CRC-32C (Castagnoli), bitwise-table: catches every burst of up to 32 bits,
 * which a plain hash does not promise. */
static uint32_t crc32c(uint32_t crc, const uint8_t *p, size_t len) {
    static uint32_t table[256];
    static bool ready;

    if (!ready) {
        for (uint32_t i = 0; i < 256; i++) {
            uint32_t v = i;
            for (int k = 0; k < 8; k++)
                v = v & 1 ? (v >> 1) ^ 0x82f63b78u : v >> 1;
            table[i] = v;
        }
        ready = true;
    }
    crc = ~crc;
    while (len--)
        crc = table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return ~crc;
}

static uint64_t identity_hash(const snapshot_identity *id) {
    const char *parts[] = { id->base_url, "\n", id->client_id };

    return fnv1a64(parts, ARRAY_SIZE(parts));
}

static uint64_t boottime_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_BOOTTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* The kernel's random id of this boot, as 16 bytes. */
static int boot_id(uint8_t out[16]) {
    char buf[64];
    ssize_t n;
    int fd, k = 0;

    fd = open("/proc/sys/kernel/random/boot_id", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0)
        return -EIO;
    buf[n] = '\0';
    for (char *p = buf; *p && *p != '\n' && k < 32; p++) {
        int v;
        if (*p == '-')
            continue;
        v = hex_value(*p);
        if (v < 0)
            return -EIO;
        if (k % 2 == 0)
            out[k / 2] = (uint8_t)(v << 4);
        else
            out[k / 2] |= (uint8_t)v;
        k++;
    }
    return k == 32 ? 0 : -EIO;
}

/* RFC 6750 b64token: what the HTTP front prints into JSON without escaping,
 * so nothing else may come back from an image. */
static bool token_chars_valid(const uint8_t *s, size_t len) {
    size_t i = 0;

    if (len == 0)
        return false;
    for (; i < len; i++) {
        uint8_t ch = s[i];
        if (!((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
              ch == '-' || ch == '.' || ch == '_' || ch == '~' || ch == '+' || ch == '/'))
            break;
    }
    if (i == 0)
        return false;
    while (i < len && s[i] == '=')
        i++;
    return i == len;
}

/* A revocation event's id: 16 lower-case hex digits. */
static bool hex16(const char *s, size_t len) {
    if (len != 16)
        return false;
    for (size_t i = 0; i < len; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    return true;
}

/* ---- writing ---- */

struct encoder {
    uint8_t *buf;
    size_t len, size;
    size_t count, carried, remembered; /* entries; of them, not yet made; revocations seen or made */
    uint64_t now;
    int error;
};

static int grow(struct encoder *en, size_t need) {
    size_t size = en->size ? en->size : 4096;
    uint8_t *p;

    while (size < en->len + need) {
        if (size > SNAPSHOT_SIZE_MAX)
            return -EFBIG;
        size *= 2;
    }
    if (size == en->size)
        return 0;
    /* no realloc: the old buffer holds tokens and must be wiped */
    p = malloc(size);
    if (!p)
        return -ENOMEM;
    if (en->buf)
        memcpy(p, en->buf, en->len);
    wipe_free(en->buf, en->size);
    en->buf = p;
    en->size = size;
    return 0;
}

static void encode_kind(struct encoder *en, enum snapshot_kind kind, enum oauth_grant grant, const char *user_id,
                        const char *scope, const token *t, uint64_t value) {
    size_t ulen = strlen(user_id), slen = strlen(scope), tlen = t ? t->len : 0, need;
    uint8_t *p;

    need = ENTRY_FIXED_LEN + ulen + slen + tlen;
    if (en->error)
        return;
    if (en->len + need - HEADER_LEN > SNAPSHOT_SIZE_MAX) {
        en->error = -EFBIG;
        return;
    }
    en->error = grow(en, need);
    if (en->error)
        return;
    p = en->buf + en->len;
    p[0] = (uint8_t)grant;
    p[1] = (uint8_t)kind;
    put16(p + 2, (uint16_t)ulen);
    put16(p + 4, (uint16_t)slen);
    put16(p + 6, (uint16_t)tlen);
    put32(p + 8, t ? t->lifetime_s : 0);
    put64(p + 12, t ? token_remaining_ms(t, en->now) : 0);
    put64(p + 20, t ? (uint64_t)t->created_at : 0);
    put64(p + 28, t ? t->minted_unix_ms : value);
    p += ENTRY_FIXED_LEN;
    memcpy(p, user_id, ulen);
    memcpy(p + ulen, scope, slen);
    if (t)
        memcpy(p + ulen + slen, t->value, t->len);
    en->len += need;
    en->count++;
}

static void encode_entry(void *userdata, enum oauth_grant grant, const char *user_id, const char *scope,
                         const token *t) {
    encode_kind(userdata, SNAPSHOT_CACHED, grant, user_id, scope, t, 0);
}

/* What is carried besides the cache: a token to revoke with no time left
 * has nothing left to revoke, and nothing goes in that the reader would
 * refuse (it refuses the whole image, the cache with it). */
static void encode_carried(void *userdata, enum snapshot_kind kind, enum oauth_grant grant, const char *user_id,
                           const char *scope, const token *t, uint64_t value) {
    struct encoder *en = userdata;
    size_t ulen = strlen(user_id), slen = strlen(scope);

    if (kind == SNAPSHOT_REVOKE ? !t || token_remaining_ms(t, en->now) == 0 : t != NULL || kind == SNAPSHOT_CACHED)
        return;
    if (kind != SNAPSHOT_REVOKE_SHARED && kind != SNAPSHOT_REVOKED_FP && kind != SNAPSHOT_REVOKED_TELL &&
        kind != SNAPSHOT_EVENTS_READ && kind != SNAPSHOT_USER_REVOKED && kind != SNAPSHOT_FLUSH_FLOOR)
        value = 0;
    if ((kind == SNAPSHOT_REVOKED_FP || kind == SNAPSHOT_REVOKED_TELL || kind == SNAPSHOT_USER_REVOKED ||
         kind == SNAPSHOT_FLUSH_FLOOR) &&
        !value)
        return;
    if (kind == SNAPSHOT_REVOKE || kind == SNAPSHOT_FLUSH_SHARED || kind == SNAPSHOT_REVOKED_FP ||
        kind == SNAPSHOT_FLUSH_FLOOR ||
        (kind == SNAPSHOT_REVOKED_TELL && !*user_id)) { /* whose it was is not needed, or none */
        grant = OAUTH_GRANT_CLIENT_CREDENTIALS;
        user_id = scope = "";
    } else if (kind == SNAPSHOT_REVOCATION_SEEN || kind == SNAPSHOT_EVENTS_READ || kind == SNAPSHOT_USER_REVOKED) {
        if (kind == SNAPSHOT_EVENTS_READ ? !stream_id_parse(scope, slen, NULL) : !hex16(scope, slen))
            return;
        grant = OAUTH_GRANT_CLIENT_CREDENTIALS;
        user_id = "";
    } else if (grant == OAUTH_GRANT_USER_ASSERTION
                   ? !request_user_id_valid(user_id, ulen) || !oauth_scope_valid(scope, slen)
                   : grant != OAUTH_GRANT_CLIENT_CREDENTIALS || ulen != 0 || (slen && !oauth_scope_valid(scope, slen)))
        return;
    encode_kind(en, kind, grant, user_id, scope, t, value);
    if (kind == SNAPSHOT_REVOCATION_SEEN || kind == SNAPSHOT_REVOKED_FP || kind == SNAPSHOT_EVENTS_READ ||
        kind == SNAPSHOT_USER_REVOKED || kind == SNAPSHOT_FLUSH_FLOOR)
        en->remembered++;
    else
        en->carried++;
}

int snapshot_encode(cache *c, const struct snapshot_more *more, const snapshot_identity *id, uint8_t **ret,
                    size_t *ret_len, size_t *ret_count, size_t *ret_carried) {
    struct encoder en = { .now = now_ms() };
    uint8_t boot[16];
    size_t count;
    uint32_t crc;
    int r;

    r = boot_id(boot);
    if (r < 0)
        return r;
    r = grow(&en, HEADER_LEN);
    if (r < 0)
        return r;
    en.len = HEADER_LEN;
    cache_export(c, encode_entry, &en);
    if (more && more->export)
        more->export(more->ctx, encode_carried, &en);
    count = en.count;
    if (en.error || count > UINT32_MAX) {
        wipe_free(en.buf, en.size);
        return en.error ? en.error : -EFBIG;
    }
    memcpy(en.buf, magic, sizeof(magic));
    put32(en.buf + 8, SNAPSHOT_VERSION);
    put32(en.buf + 12, (uint32_t)count);
    put64(en.buf + 16, en.len - HEADER_LEN);
    memcpy(en.buf + 24, boot, sizeof(boot));
    /* taken after the export: lifetimes were measured a moment earlier, so
     * a restore errs on the side of less time left */
    put64(en.buf + 40, boottime_ns());
    put64(en.buf + 48, identity_hash(id));
    put32(en.buf + 60, 0);
    crc = crc32c(0, en.buf, CRC_OFFSET);
    crc = crc32c(crc, en.buf + HEADER_LEN, en.len - HEADER_LEN);
    put32(en.buf + CRC_OFFSET, crc);
    *ret = en.buf; /* size >= len: the caller wipes len bytes, the rest never held a token */
    *ret_len = en.len;
    *ret_count = count - en.carried - en.remembered;
    if (ret_carried)
        *ret_carried = en.carried;
    return 0;
}

int snapshot_write_memfd(cache *c, const struct snapshot_more *more, const snapshot_identity *id, int *ret_fd,
                        size_t *ret_count, size_t *ret_carried) {
    uint8_t *buf = NULL;
    size_t len = 0, count = 0, off = 0;
    int fd, r;

    r = snapshot_encode(c, more, id, &buf, &len, &count, ret_carried);
    if (r < 0)
        return r;
    fd = memfd_create("instacart-tokend-cache", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0) {
        r = -errno;
        goto out;
    }
    while (off < len) {
        ssize_t n = write(fd, buf + off, len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            r = n < 0 ? -errno : -EIO;
            goto out;
        }
        off += (size_t)n;
    }
    /* sealed: whoever holds it (systemd, the next tokend) sees exactly what
     * was written, and a reader can never be cut short by a shrink */
    if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL) < 0) {
        r = -errno;
        goto out;
    }
    *ret_fd = fd;
    *ret_count = count;
    fd = -1;
    r = 0;
out:
    if (fd >= 0)
        close(fd);
    wipe_free(buf, len);
    return r;
}

/* ---- reading ---- */

struct entry_view {
    enum oauth_grant grant;
    enum snapshot_kind kind;
    const char *user, *scope, *value;
    uint16_t ulen, slen, tlen;
    uint32_t lifetime_s;
    uint64_t remaining_ms;
    int64_t created_at;
    uint64_t minted_unix_ms;
};

/* Parses the entry at *off, checking every length against what is left and
 * every field against what a running cache could hold. */
static const char *entry_parse(const uint8_t *p, size_t len, uint32_t version, size_t *off, struct entry_view *v) {
    const uint8_t *e = p + *off;
    size_t left = len - *off, strings, fixed = version == 1 ? ENTRY_FIXED_V1 : ENTRY_FIXED_LEN;
    bool tokenless;

    if (left < fixed)
        return "an entry is cut short";
    if (e[0] > OAUTH_GRANT_CLIENT_CREDENTIALS)
        return "an entry has an unknown grant";
    if (e[1] > (version == 1 ? SNAPSHOT_CACHED : SNAPSHOT_KIND_MAX))
        return "an entry has an unknown kind";
    v->grant = e[0];
    v->kind = e[1];
    tokenless = v->kind >= SNAPSHOT_REVOKE_SHARED;
    v->ulen = get16(e + 2);
    v->slen = get16(e + 4);
    v->tlen = get16(e + 6);
    v->lifetime_s = get32(e + 8);
    v->remaining_ms = get64(e + 12);
    v->created_at = (int64_t)get64(e + 20);
    v->minted_unix_ms = version == 1 ? 0 : get64(e + 28);
    strings = (size_t)v->ulen + v->slen + v->tlen;
    if (strings > left - fixed)
        return "an entry runs past the end";
    /* a client token asked for without a scope is cached under ""; a token
     * to revoke and a flush carry neither user nor scope, the drops and
     * revocations of a user no token */
    if (v->ulen > OAUTH_USER_ID_MAX || v->slen > OAUTH_SCOPE_MAX || (v->tlen == 0) != tokenless ||
        v->tlen > OAUTH_TOKEN_MAX || (v->slen == 0 && v->grant != OAUTH_GRANT_CLIENT_CREDENTIALS) ||
        ((v->kind == SNAPSHOT_REVOKE || v->kind == SNAPSHOT_FLUSH_SHARED || v->kind == SNAPSHOT_REVOKED_FP ||
          v->kind == SNAPSHOT_FLUSH_FLOOR) &&
         (v->grant != OAUTH_GRANT_CLIENT_CREDENTIALS || v->slen != 0)) ||
        ((v->kind == SNAPSHOT_REVOCATION_SEEN || v->kind == SNAPSHOT_USER_REVOKED) &&
         (v->grant != OAUTH_GRANT_CLIENT_CREDENTIALS || !hex16((const char *)e + fixed + v->ulen, v->slen))) ||
        (v->kind == SNAPSHOT_EVENTS_READ &&
         (v->grant != OAUTH_GRANT_CLIENT_CREDENTIALS || v->ulen != 0 ||
          !stream_id_parse((const char *)e + fixed, v->slen, NULL))))
        return "an entry has a length out of range";
    if (tokenless ? v->lifetime_s != 0 || v->remaining_ms != 0 || v->created_at != 0
                  : v->lifetime_s == 0 || v->lifetime_s > OAUTH_LIFETIME_MAX ||
                        v->remaining_ms > (uint64_t)v->lifetime_s * MS_PER_SEC)
        return "an entry has a lifetime out of range";
    /* the kind's value (the minted time's place): a fingerprint, never 0,
     * where the kind names a token by one; a time where it may have one */
    if (tokenless && ((v->kind == SNAPSHOT_REVOKED_FP || v->kind == SNAPSHOT_REVOKED_TELL ||
                       v->kind == SNAPSHOT_USER_REVOKED || v->kind == SNAPSHOT_FLUSH_FLOOR)
                          ? v->minted_unix_ms == 0
                      : v->kind != SNAPSHOT_REVOKE_SHARED && v->kind != SNAPSHOT_EVENTS_READ &&
                            v->minted_unix_ms != 0))
        return "an entry has a value out of range";
    v->user = (const char *)e + fixed;
    v->scope = v->user + v->ulen;
    v->value = v->scope + v->slen;
    if (v->grant == OAUTH_GRANT_USER_ASSERTION ? !request_user_id_valid(v->user, v->ulen) : v->ulen != 0)
        return "an entry has an invalid user id";
    if (v->slen && !oauth_scope_valid(v->scope, v->slen))
        return "an entry has an invalid scope";
    if (!tokenless && !token_chars_valid((const uint8_t *)v->value, v->tlen))
        return "an entry has an invalid token";
    *off += fixed + strings;
    return NULL;
}

static int restore_entry(cache *c, const struct snapshot_more *more, const struct entry_view *v,
                         uint64_t elapsed_ms, uint64_t now, uint64_t min_ttl_ms, struct snapshot_counts *n) {
    char user[OAUTH_USER_ID_MAX + 1], scope[OAUTH_SCOPE_MAX + 1];
    uint64_t left, life = (uint64_t)v->lifetime_s * MS_PER_SEC, need;
    token *t = NULL;
    int r;

    if (v->kind != SNAPSHOT_CACHED && !(more && more->restore)) {
        n->skipped++;
        return 0;
    }
    left = v->remaining_ms > elapsed_ms ? v->remaining_ms - elapsed_ms : 0;
    /* the rule the cache applies before handing a token out; a token to
     * revoke is worth revoking while it lives at all */
    need = v->kind == SNAPSHOT_REVOKE ? 0 : min_ttl_ms < life / 2 ? min_ttl_ms : life / 2;
    if (v->kind <= SNAPSHOT_REVOKE && (left == 0 || left <= need)) {
        n->expired++;
        return 0;
    }
    if (v->kind <= SNAPSHOT_REVOKE) {
        r = token_new(v->value, v->tlen, v->lifetime_s, v->created_at,
                      now + left >= life ? now + left - life : 0, &t);
        if (r < 0)
            return r;
        t->expires_ms = now + left; /* exact even when receipt predates our clock's zero */
        t->minted_unix_ms = v->minted_unix_ms; /* a TTL Redis cut short does not make it older */
    }
    memcpy(user, v->user, v->ulen);
    user[v->ulen] = '\0';
    memcpy(scope, v->scope, v->slen);
    scope[v->slen] = '\0';
    if (v->kind != SNAPSHOT_CACHED) {
        more->restore(more->ctx, v->kind, v->grant, user, scope, t, t ? 0 : v->minted_unix_ms);
        explicit_bzero(user, sizeof(user));
        if (v->kind == SNAPSHOT_REVOCATION_SEEN || v->kind == SNAPSHOT_REVOKED_FP || v->kind == SNAPSHOT_EVENTS_READ ||
            v->kind == SNAPSHOT_USER_REVOKED || v->kind == SNAPSHOT_FLUSH_FLOOR)
            n->remembered++;
        else
            n->carried++;
        return 0;
    }
    r = cache_put(c, v->grant, user, scope, t);
    token_unref(t);
    explicit_bzero(user, sizeof(user));
    if (r == -ENOMEM)
        return r;
    if (r < 0)
        n->skipped++;
    else
        n->restored++;
    return 0;
}

int snapshot_decode(const void *buf, size_t len, const snapshot_identity *id, uint64_t min_ttl_ms,
                    cache *c, const struct snapshot_more *more, struct snapshot_counts *ret,
                    char err[SNAPSHOT_ERR_MAX]) {
    const uint8_t *p = buf;
    struct snapshot_counts n = { 0 };
    struct entry_view v;
    uint8_t boot[16];
    uint64_t payload, written, now_boot, elapsed_ms, now;
    uint32_t version, crc;
    size_t off;
    int r;

#define FAIL(code, ...) do { snprintf(err, SNAPSHOT_ERR_MAX, __VA_ARGS__); return (code); } while (0)
    if (len < sizeof(magic) || memcmp(p, magic, sizeof(magic)) != 0)
        FAIL(-EBADMSG, "not a tokend cache image (%zu bytes, no magic)", len);
    if (len < HEADER_LEN)
        FAIL(-EBADMSG, "truncated: %zu bytes, shorter than the header", len);
    version = get32(p + 8);
    if (version != SNAPSHOT_VERSION && version != 1)
        FAIL(-EPROTONOSUPPORT, "format version %u, this tokend reads versions 1 to %u", version, SNAPSHOT_VERSION);
    n.entries = get32(p + 12);
    payload = get64(p + 16);
    if (payload != len - HEADER_LEN)
        FAIL(-EBADMSG, "truncated or padded: the header promises %llu bytes of entries, %zu are there",
             (unsigned long long)payload, len - HEADER_LEN);
    if (get32(p + 60) != 0)
        FAIL(-EBADMSG, "corrupt header");
    crc = crc32c(0, p, CRC_OFFSET);
    crc = crc32c(crc, p + HEADER_LEN, len - HEADER_LEN);
    if (crc != get32(p + CRC_OFFSET))
        FAIL(-EBADMSG, "checksum mismatch (corrupt)");
    r = boot_id(boot);
    if (r < 0)
        FAIL(-ESTALE, "cannot read this boot's id: %s", strerror(-r));
    if (memcmp(boot, p + 24, sizeof(boot)) != 0)
        FAIL(-ESTALE, "written during another boot");
    written = get64(p + 40);
    now_boot = boottime_ns();
    if (written > now_boot)
        FAIL(-ESTALE, "written in the future of this boot's clock");
    if (get64(p + 48) != identity_hash(id))
        FAIL(-EREMCHG, "written for another client id or Instacart server");

    /* every entry checked before any is used: all or nothing */
    off = HEADER_LEN;
    for (size_t i = 0; i < n.entries; i++) {
        const char *why = entry_parse(p, len, version, &off, &v);
        if (why)
            FAIL(-EBADMSG, "entry %zu of %zu: %s", i + 1, n.entries, why);
    }
    if (off != len)
        FAIL(-EBADMSG, "%zu bytes after the last entry", len - off);
#undef FAIL

    elapsed_ms = (now_boot - written) / 1000000;
    n.age_ms = elapsed_ms;
    now = now_ms();
    off = HEADER_LEN;
    for (size_t i = 0; i < n.entries; i++) {
        entry_parse(p, len, version, &off, &v);
        r = restore_entry(c, more, &v, elapsed_ms, now, min_ttl_ms, &n);
        if (r < 0) {
            snprintf(err, SNAPSHOT_ERR_MAX, "restoring: %s", strerror(-r));
            return r;
        }
    }
    *ret = n;
    return 0;
}

int snapshot_read_fd(int fd, const snapshot_identity *id, uint64_t min_ttl_ms, cache *c,
                     const struct snapshot_more *more, struct snapshot_counts *ret, char err[SNAPSHOT_ERR_MAX]) {
    struct stat st;
    uint8_t *buf;
    size_t len, off = 0;
    int r;

    if (fstat(fd, &st) < 0) {
        r = -errno;
        snprintf(err, SNAPSHOT_ERR_MAX, "fstat: %s", strerror(errno));
        return r;
    }
    if (!S_ISREG(st.st_mode)) {
        snprintf(err, SNAPSHOT_ERR_MAX, "not a memory file");
        return -EBADMSG;
    }
    if (st.st_size < 0 || (uint64_t)st.st_size > SNAPSHOT_SIZE_MAX + HEADER_LEN) {
        snprintf(err, SNAPSHOT_ERR_MAX, "%lld bytes, more than a tokend writes", (long long)st.st_size);
        return -EBADMSG;
    }
    len = (size_t)st.st_size;
    /* copied, not mapped: an unsealed file shrunk under a mapping would
     * kill us with SIGBUS */
    buf = malloc(len ? len : 1);
    if (!buf) {
        snprintf(err, SNAPSHOT_ERR_MAX, "out of memory");
        return -ENOMEM;
    }
    while (off < len) {
        ssize_t n = pread(fd, buf + off, len - off, (off_t)off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            r = -errno;
            snprintf(err, SNAPSHOT_ERR_MAX, "read: %s", strerror(errno));
            wipe_free(buf, len);
            return r;
        }
        if (n == 0)
            break; /* shrunk meanwhile: decode sees the truncation */
        off += (size_t)n;
    }
    r = snapshot_decode(buf, off, id, min_ttl_ms, c, more, ret, err);
    wipe_free(buf, len);
    return r;
}
