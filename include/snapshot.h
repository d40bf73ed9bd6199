/* The cache carried over a restart: a versioned, checksummed binary image of
 * the tokens that still have time left, kept in a sealed memfd that systemd
 * holds in its file descriptor store. Tokens never touch the disk.
 *
 * Reading never trusts the image: any truncation, corruption, unknown
 * version, other boot or other credentials refuses the whole of it. */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "cache.h"

#define SNAPSHOT_VERSION 2 /* reads 1 too: version 1 holds cached tokens only */
#define SNAPSHOT_ERR_MAX 200
/* Larger images are refused unread: ~2 million entries of typical size. */
#define SNAPSHOT_SIZE_MAX (256u * 1024 * 1024)

/* Whose tokens these are: a snapshot is only restored by the same client id
 * talking to the same Instacart server. */
typedef struct snapshot_identity {
    const char *base_url;
    const char *client_id;
} snapshot_identity;

struct snapshot_counts {
    size_t entries;  /* in the image */
    size_t restored; /* put into the cache */
    size_t carried;  /* drops, flushes and revocations not yet made, handed back (snapshot_more) */
    size_t remembered; /* revocation events applied and tokens revoked, handed back (snapshot_more) */
    size_t expired;  /* too little lifetime left to be worth keeping (or revoking) */
    size_t skipped;  /* the cache already had the key, or was full; or nobody to take one carried */
    uint64_t age_ms; /* how long ago the image was written (suspend included) */
};

/* Besides the cache, the image carries what was promised and not yet done
 * when tokend stopped: revocations Instacart has not taken, and the
 * fleet's drops, flushes and revocations Redis has not taken (each was
 * answered 503 "..._pending": kept until done). */
enum snapshot_kind {
    SNAPSHOT_CACHED = 0,        /* a cached token */
    SNAPSHOT_REVOKE = 1,        /* a token to revoke at Instacart (no user, no scope) */
    SNAPSHOT_REVOKE_SHARED = 2, /* the fleet's token for a user: take it out of Redis and revoke it */
    SNAPSHOT_DROP_SHARED = 3,   /* the fleet's token for a user: drop it */
    SNAPSHOT_FLUSH_SHARED = 4,  /* the fleet's tokens: flush them */
    SNAPSHOT_REVOCATION_SEEN = 5, /* a fleet revocation event applied: its id, 16 hex digits, as the scope */
    SNAPSHOT_REVOKED_FP = 6,    /* a token the fleet revoked, by fingerprint: never served again */
    SNAPSHOT_REVOKED_TELL = 7,  /* telling the fleet that a token was revoked (and its user, if any, dropped) */
    SNAPSHOT_EVENTS_READ = 8,   /* the last fleet event read: its stream id ("<ms>-<seq>") as the scope, its Redis the value */
    SNAPSHOT_USER_REVOKED = 9,  /* when a user's tokens were last revoked: the user's fingerprint, 16 hex digits, as the scope */
    SNAPSHOT_FLUSH_FLOOR = 10,  /* the fleet's generation of the last flush this host knew proven: the value */
};
#define SNAPSHOT_KIND_MAX SNAPSHOT_FLUSH_FLOOR
/* One carried thing: t for SNAPSHOT_REVOKE only (else NULL); user_id and
 * scope ("" for none) for the others of a user; value: for
 * SNAPSHOT_REVOKE_SHARED when it was asked (Unix ms; 0 unknown), for
 * SNAPSHOT_REVOKED_FP and SNAPSHOT_REVOKED_TELL the token's fingerprint
 * (non-zero), for SNAPSHOT_EVENTS_READ which Redis (0 unknown), for
 * SNAPSHOT_USER_REVOKED when (Unix ms, non-zero), for SNAPSHOT_FLUSH_FLOOR
 * the generation (non-zero), else 0. */
typedef void (*snapshot_put_fn)(void *put_ctx, enum snapshot_kind kind, enum oauth_grant grant,
                                const char *user_id, const char *scope, const token *t, uint64_t value);
struct snapshot_more {
    /* writing: calls put once for each thing carried */
    void (*export)(void *ctx, snapshot_put_fn put, void *put_ctx);
    /* reading: one back; a token's reference is the callee's */
    void (*restore)(void *ctx, enum snapshot_kind kind, enum oauth_grant grant, const char *user_id,
                    const char *scope, token *t, uint64_t value);
    void *ctx;
};

/* Encodes every token of c with time left, and what more carries (NULL:
 * nothing). *ret holds tokens: wipe_free() it with *ret_len. *ret_count:
 * the cached tokens; *ret_carried (if not NULL): the things carried. */
int snapshot_encode(cache *c, const struct snapshot_more *more, const snapshot_identity *id, uint8_t **ret,
                    size_t *ret_len, size_t *ret_count, size_t *ret_carried);

/* Checks the whole image first, then puts into c each token that still has
 * at least min(min_ttl_ms, half its lifetime) left. Returns 0 with counts,
 * or a negative errno with the reason in err: -EBADMSG (not an image,
 * truncated, corrupt), -EPROTONOSUPPORT (another version), -ESTALE (written
 * on another boot), -EREMCHG (another client id or Instacart server). */
int snapshot_decode(const void *buf, size_t len, const snapshot_identity *id, uint64_t min_ttl_ms,
                    cache *c, const struct snapshot_more *more, struct snapshot_counts *ret,
                    char err[SNAPSHOT_ERR_MAX]);

/* The image in a new sealed memfd (read-only for good). */
int snapshot_write_memfd(cache *c, const struct snapshot_more *more, const snapshot_identity *id, int *ret_fd,
                        size_t *ret_count, size_t *ret_carried);

/* Reads an image from fd (from offset 0, whatever the fd's position) and
 * restores it as snapshot_decode() does. Does not close fd. */
int snapshot_read_fd(int fd, const snapshot_identity *id, uint64_t min_ttl_ms, cache *c,
                     const struct snapshot_more *more, struct snapshot_counts *ret, char err[SNAPSHOT_ERR_MAX]);
