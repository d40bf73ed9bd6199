/* What fleet mode writes to Redis, sealed: key names that carry no user id
 * (a keyed hash of it) and values that are AES-256-GCM ciphertext bound to
 * their key name. Pure functions over libcrypto, no I/O, so they are unit
 * tested and fuzzed.
 *
 * One 32-byte shared key (the key_file) gives, through HKDF-SHA256, an
 * encryption key and a naming key. A previous key may be kept to open (never
 * to seal) values written before a rotation, and to find them: its names are
 * different, so the caller looks up both. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "oauth.h"
#include "token.h"

#define SEAL_KEY_LEN 32
#define SEAL_NAME_LEN 32         /* hex digits of a key name's user part: 128 bits */
#define SEAL_NS_LEN 16           /* hex digits of a namespace: 64 bits */
#define SEAL_FP_LEN 16           /* hex digits of a token fingerprint: 64 bits */
/* version, key id, nonce, tag: what sealing adds to the plaintext */
#define SEAL_OVERHEAD (1 + 1 + 12 + 16)
/* A sealed token's largest size: created_at (8), lifetime (4) and its end
 * on the wall clock (8) before the value */
#define SEAL_TOKEN_MAX (SEAL_OVERHEAD + 20 + OAUTH_TOKEN_MAX)
/* A sealed (grant, user id, scope) for a fleet event */
#define SEAL_TUPLE_MAX (SEAL_OVERHEAD + 1 + OAUTH_USER_ID_MAX + 1 + OAUTH_SCOPE_MAX)

struct seal_subkeys {
    unsigned char enc[SEAL_KEY_LEN];
    unsigned char name[SEAL_KEY_LEN];
    uint8_t id; /* the first byte of HMAC-SHA256(key, "tokend key id"), stored in each value */
};

typedef struct seal_keys {
    struct seal_subkeys cur;
    struct seal_subkeys prev;
    bool has_prev;
} seal_keys;

/* A key file's text: exactly 64 hex digits, then optionally one newline.
 * Returns 0 or -EINVAL. */
int seal_key_parse(const char *text, size_t len, unsigned char out[SEAL_KEY_LEN]);
/* Derives both subkeys of cur and, when prev is not NULL, of prev. The
 * caller wipes cur and prev; seal_keys_wipe() wipes ret. Returns 0 or -EIO. */
int seal_keys_derive(const unsigned char cur[SEAL_KEY_LEN], const unsigned char *prev, seal_keys *ret);
void seal_keys_wipe(seal_keys *k);

/* Hosts share only with hosts minting from the same server as the same
 * client: hex of the first 8 bytes of SHA-256("tokend ns" 0 base_url 0
 * client_id). Unkeyed, so it stays the same through a key rotation.
 * Returns 0, or -EIO (libcrypto failed: out is not written, and no name
 * may be made up in its place, or users would share one). */
int seal_namespace(const char *base_url, const char *client_id, char out[SEAL_NS_LEN + 1]);
/* The user part of a key name: hex of the first 16 bytes of HMAC-SHA256 with
 * the naming subkey of (grant byte, user_id, 0, scope). prev picks the
 * previous key's name (-EINVAL when has_prev is not set). Returns 0 or
 * -EIO, as seal_namespace(). */
int seal_name(const seal_keys *k, bool prev, enum oauth_grant grant, const char *user_id,
               const char *scope, char out[SEAL_NAME_LEN + 1]);
/* A token's fingerprint, to compare and delete without decrypting: hex of
 * the first 8 bytes of HMAC-SHA256 with the current naming subkey of
 * ("fp" 0 value). Returns 0 or -EIO. */
int seal_fingerprint(const seal_keys *k, const char *value, size_t len, char out[SEAL_FP_LEN + 1]);
/* The same with the previous key's naming subkey when prev (-ENOENT
 * without one): a MAC made by a host still on it, during a rotation. */
int seal_fingerprint_with(const seal_keys *k, bool prev, const char *value, size_t len,
                          char out[SEAL_FP_LEN + 1]);

/* Seals t (its value, lifetime_s, created_at and its end on the wall
 * clock, expires_unix_ms) with the current key and aad (the full Redis key
 * name and generation, say). out must hold SEAL_TOKEN_MAX bytes. Returns 0
 * with *ret_len set, -EINVAL for a value longer than OAUTH_TOKEN_MAX, or
 * -EIO. */
int seal_token(const seal_keys *k, const void *aad, size_t aad_len, const token *t, uint64_t expires_unix_ms,
               unsigned char *out, size_t *ret_len);
/* Opens what seal_token made, with the key its id names (current or
 * previous), and returns a new token received at now_ms that expires
 * remaining_ms from now (Redis's PTTL), or at the end sealed in if that
 * comes first (now_unix_ms: the wall clock; Redis's TTL may only shorten a
 * token's life, so a value written back after its end is refused).
 * -EBADMSG for anything that does not authenticate, has an unknown version
 * or key id, is over, or holds a value oauth_parse_token would refuse
 * (length, characters, lifetime out of range); -ENOMEM. */
int seal_open_token(const seal_keys *k, const void *aad, size_t aad_len, const unsigned char *in,
                    size_t len, uint64_t now_ms, uint64_t remaining_ms, uint64_t now_unix_ms, token **ret);

/* Seals a (grant, user id, scope) for an event telling the fleet to drop
 * that key. A user token has a user id of 1..OAUTH_USER_ID_MAX bytes, a
 * client token "" (as the cache keys them); the scope is 0..OAUTH_SCOPE_MAX
 * bytes. out must hold SEAL_TUPLE_MAX bytes. Returns 0 with *ret_len set,
 * -EINVAL for a tuple outside those bounds, or -EIO. */
int seal_tuple(const seal_keys *k, const void *aad, size_t aad_len, enum oauth_grant grant,
               const char *user_id, const char *scope, unsigned char *out, size_t *ret_len);
/* Opens it: user_id and scope are NUL-terminated into buffers of
 * OAUTH_USER_ID_MAX + 1 and OAUTH_SCOPE_MAX + 1 bytes. -EBADMSG for
 * anything that does not authenticate or is malformed (an unknown grant,
 * not exactly one NUL separator, lengths seal_tuple() would refuse). */
int seal_open_tuple(const seal_keys *k, const void *aad, size_t aad_len, const unsigned char *in,
                    size_t len, enum oauth_grant *grant, char *user_id, char *scope);
