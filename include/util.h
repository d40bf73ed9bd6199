/* Small helpers shared by every module: clocks, wiping, fingerprints, Base64. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define MS_PER_SEC 1000ULL

/* Milliseconds on CLOCK_MONOTONIC: every lifetime in tokend is measured on it. */
uint64_t now_ms(void);
struct timespec;
/* ms from now on CLOCK_MONOTONIC, as pthread_cond_timedwait() takes it
 * for a condition made with that clock. */
void mono_deadline(uint64_t ms, struct timespec *ret);
/* Seconds on the wall clock, only for what is shown to people and callers. */
int64_t now_unix(void);
/* Milliseconds on the wall clock: only where hosts must agree on a moment
 * (a fleet flag's end), never for a token's own life. */
uint64_t now_unix_ms(void);
/* FNV-1a (64 bits) of the strings, one after the other (NULLs skipped):
 * a cheap name for settings, not a secret. */
uint64_t fnv1a64(const char *const *parts, size_t n);
/* A Redis stream id, "<ms>-<seq>" in digits, each part fitting 64 bits,
 * the whole of the len bytes at s. ret (may be NULL): {ms, seq}. */
bool stream_id_parse(const char *s, size_t len, unsigned long long ret[2]);

/* Free memory that held a secret, wiping it first. Accepts NULL; returns NULL. */
void *wipe_free(void *p, size_t len);
char *wipe_free_str(char *s);

static inline void freep(void *p) { free(*(void **)p); }
#define _cleanup_free_ __attribute__((cleanup(freep)))

/* A short tag for correlating a user id in logs without revealing it: 12 hex
 * digits of SipHash-2-4 under a key derived from the client id and secret.
 * Stable for as long as the secret is (so log lines correlate across
 * restarts); without the secret, nobody can compute it for a guessed id,
 * so it cannot be reversed by trying ids. */
#define FINGERPRINT_LEN 13
void fingerprint(const char *s, size_t len, char out[FINGERPRINT_LEN]);
/* Derives the key; call before any thread logs a fingerprint. Until then
 * the key is all zeros (tests only). Returns 0 or -EIO. */
int fingerprint_set_key(const char *client_id, const char *secret, size_t secret_len);

/* The value of a hex digit, or -1. */
int hex_value(char c);

/* Standard Base64 with '=' padding. Returns the encoded length written to out
 * (plus NUL), or 0 if out is too small. base64_encoded_size() includes the NUL. */
size_t base64_encoded_size(size_t len);
size_t base64_encode(const void *in, size_t len, char *out, size_t out_size);
/* Strict decoding: standard alphabet, padding required, no whitespace, and
 * not empty (nothing tokend decodes may be).
 * Returns decoded length, or -1 on malformed input or short buffer. */
ptrdiff_t base64_decode(const char *in, size_t len, void *out, size_t out_size);

/* Strict UTF-8 check (no overlongs, surrogates or code points past U+10FFFF)
 * that also refuses C0 and C1 control characters and DEL. */
bool utf8_is_printable(const char *s, size_t len);

/* Parse a whole decimal unsigned integer with no sign, no spaces and no
 * trailing text, not above max. Returns 0 or -EINVAL/-ERANGE. */
int parse_uint(const char *s, uint64_t max, uint64_t *ret);

/* Parse a duration: a whole number with an optional unit ms, s, m or h
 * (seconds when none). Returns 0 or -EINVAL/-ERANGE. */
int parse_duration_ms(const char *s, uint64_t *ret_ms);

/* SipHash-2-4 of len bytes under a 128-bit key: a hash that callers who
 * choose the input cannot make collide without knowing the key. */
uint64_t siphash24(const void *in, size_t len, const unsigned char key[16]);

/* A random 64-bit value from getrandom(), for jitter seeds. */
uint64_t random_u64(void);
