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

#define SNAPSHOT_VERSION 1
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
    size_t expired;  /* too little lifetime left to be worth keeping */
    size_t skipped;  /* the cache already had the key, or was full */
    uint64_t age_ms; /* how long ago the image was written (suspend included) */
};

/* Encodes every token of c with time left. *ret holds tokens: wipe_free()
 * it with *ret_len. */
int snapshot_encode(cache *c, const snapshot_identity *id, uint8_t **ret, size_t *ret_len,
                    size_t *ret_count);

/* Checks the whole image first, then puts into c each token that still has
 * at least min(min_ttl_ms, half its lifetime) left. Returns 0 with counts,
 * or a negative errno with the reason in err: -EBADMSG (not an image,
 * truncated, corrupt), -EPROTONOSUPPORT (another version), -ESTALE (written
 * on another boot), -EREMCHG (another client id or Instacart server). */
int snapshot_decode(const void *buf, size_t len, const snapshot_identity *id, uint64_t min_ttl_ms,
                    cache *c, struct snapshot_counts *ret, char err[SNAPSHOT_ERR_MAX]);

/* The image in a new sealed memfd (read-only for good). */
int snapshot_write_memfd(cache *c, const snapshot_identity *id, int *ret_fd, size_t *ret_count);

/* Reads an image from fd (from offset 0, whatever the fd's position) and
 * restores it as snapshot_decode() does. Does not close fd. */
int snapshot_read_fd(int fd, const snapshot_identity *id, uint64_t min_ttl_ms, cache *c,
                     struct snapshot_counts *ret, char err[SNAPSHOT_ERR_MAX]);
