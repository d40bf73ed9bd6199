/* Fleet mode: a shared tier in Redis (or Valkey) behind the memory cache, so
 * that many hosts mint one token per user between them.
 *
 * It is the memory cache's fetch function: on a miss (or a refresh) one
 * round trip either finds another host's token, sealed (seal.h), or takes a
 * short lease on the key; the lease holder mints and publishes, the others
 * poll briefly for what it publishes and mint themselves after lease_wait.
 * Drops and flushes reach the other hosts through a Redis stream they
 * replay after a reconnect. Redis is only ever talked to from two threads
 * of this module's own (commands, events), each command with a deadline:
 * no caller's thread waits on Redis. When Redis fails, a breaker opens and
 * tokend mints on its own as it does without a fleet. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "breaker.h"
#include "cache.h"
#include "revoke.h"
#include "upstream.h"

typedef struct shared shared;
struct config;

enum shared_op { SHARED_OP_LOOKUP, SHARED_OP_PUBLISH, SHARED_OP_DROP, SHARED_OP_FLUSH, SHARED_OP_PAUSE,
                 SHARED_OP_COUNT };
enum shared_lookup { SHARED_FOUND, SHARED_LEASED, SHARED_BUSY, SHARED_PAUSED, SHARED_LOOKUP_COUNT };
enum shared_mint { SHARED_MINT_LEASED, SHARED_MINT_LEASE_TIMEOUT, SHARED_MINT_DEGRADED, SHARED_MINT_COUNT };
/* What became of a token minted here while Redis was away, once it is
 * back: shared with the fleet; replaced here by the one the fleet shares;
 * kept here only (the fleet dropped or flushed something since). */
enum shared_outage { SHARED_OUTAGE_SHARED, SHARED_OUTAGE_REPLACED, SHARED_OUTAGE_KEPT, SHARED_OUTAGE_COUNT };

extern const char *const shared_op_names[SHARED_OP_COUNT];
extern const char *const shared_lookup_names[SHARED_LOOKUP_COUNT];
extern const char *const shared_mint_names[SHARED_MINT_COUNT];
extern const char *const shared_outage_names[SHARED_OUTAGE_COUNT];

#define SHARED_LATENCY_BUCKETS 10
extern const double shared_latency_bounds[SHARED_LATENCY_BUCKETS];

struct shared_stats {
    bool up;                        /* connected, breaker closed */
    enum breaker_state breaker;
    unsigned long long ops[SHARED_OP_COUNT][2]; /* [op][0 ok, 1 error] */
    unsigned long long lookups[SHARED_LOOKUP_COUNT];
    unsigned long long mints[SHARED_MINT_COUNT];
    unsigned long long outage_tokens[SHARED_OUTAGE_COUNT]; /* degraded mints reconciled once Redis is back */
    unsigned outage_pending;         /* degraded mints not reconciled yet */
    unsigned long long decrypt_failures;
    unsigned long long forged_flags; /* pause or credential flags no host of the fleet made: ignored */
    unsigned long long foreign_flushes; /* flush events no host of the fleet made: not applied here */
    unsigned long long stale_refused; /* values of a flushed generation, or of a revoked token: never served */
    unsigned long long repairs;      /* flushes sent to mend a generation set back or a poisoned stream */
    unsigned long long stream_resets; /* the events stream rewound, made anew or poisoned: tokens dropped */
    unsigned long long refusals;     /* commands Redis refused (NOPERM, WRONGTYPE, ...) */
    unsigned long long unreplicated; /* drops and flushes no replica took (with Sentinel): sent again */
    unsigned long long replayed;     /* drops and flushes sent again to a new master after a failover */
    char last_refusal[160];          /* the last one: "command: error", or "" */
    bool events_ok;                  /* the event reader is connected and reading */
    unsigned long long lease_waits, lease_timeouts;
    unsigned long long events_applied;
    unsigned long long local_flushes; /* events we could not catch up on */
    unsigned long long reconnects;
    unsigned pending;               /* drops and flushes waiting for Redis */
    unsigned long long latency_buckets[SHARED_LATENCY_BUCKETS]; /* lookups, not cumulative */
    unsigned long long latency_count;
    double latency_sum_s;
    bool fleet_credentials_rejected; /* some host saw Instacart reject them */
    bool fleet_paused;               /* some host was told 429: nobody mints */
    char address[280];               /* the Redis answering now, or "" */
};

/* Reads [shared] from cfg (fleet mode must be on). Connects nothing yet.
 * rv revokes what a revocation takes out of Redis. */
int shared_new(const struct config *cfg, upstream *up, revocations *rv, shared **ret);
/* Where the fleet's drops and flushes land on this host (the memory
 * cache, through the service), given before start: callbacks, so fleet
 * mode calls nothing of the cache's. drop returns 1 with the dropped token in *ret when ret is
 * not NULL (a revocation: this host's copy is revoked too), 0 if none. */
struct shared_sink {
    int (*drop)(void *ctx, enum oauth_grant grant, const char *user_id, const char *scope, token **ret);
    size_t (*flush)(void *ctx);
    /* whether the key's token here is still t; drops it only if it is */
    bool (*holds)(void *ctx, enum oauth_grant grant, const char *user_id, const char *scope, const token *t);
    int (*drop_if)(void *ctx, enum oauth_grant grant, const char *user_id, const char *scope, const token *only);
    void *ctx;
};
void shared_attach(shared *s, const struct shared_sink *sink);
/* The cache was restored from an image written age_ms ago: the first read
 * of the fleet's events starts after last_read, the last event this host
 * read before the restart from the Redis that redis names
 * (shared_last_read(); NULL or "", or another Redis: then from that far
 * back on Redis's own clock, counted to the first connection), so drops
 * made while this host was down, or cut off before, reach the tokens it
 * brought back. Before start. */
void shared_resume(shared *s, uint64_t age_ms, const char *last_read, uint64_t redis);
/* The last event of the fleet's stream this host read, and which Redis
 * it read it from (a hash of its address), for the image (after
 * shared_stop()); false when none, or one of another namespace than the
 * one in use. */
bool shared_last_read(shared *s, char id[48], uint64_t *redis);
/* Starts the two threads; Redis being down is not an error (degraded). */
int shared_start(shared *s);
/* How long a start waits for the fleet's events, at most. */
#define SHARED_START_WAIT_MS 2000
/* Waits until the event thread has read everything the fleet's stream
 * held (the drops, revocations and flushes made while this host was down,
 * applied to the tokens it brought back), or ms have passed. A host serves
 * only after it, so that it never serves for a moment what the fleet
 * dropped meanwhile. After shared_start(). */
enum shared_read {
    SHARED_READ_DONE,
    SHARED_READ_UNREACHED, /* no connection to Redis yet */
    SHARED_READ_SLOW,      /* connected, and still reading */
};
enum shared_read shared_wait_read(shared *s, uint64_t ms);
/* The cache's fetch function (source: the shared *). */
void shared_fetch(void *source, enum oauth_grant grant, const char *user_id, const char *scope,
                  const struct cache_want *want, cache_done_fn done, void *ctx);
/* Told once whether a drop or flush will survive a failover: Redis took
 * it (with Sentinel, a replica has it too), or not yet (Redis out of reach,
 * refusing, or no replica confirmed it: the drop is kept and sent again
 * until Redis takes it, but until then other hosts may serve the token). */
typedef void (*shared_ack_fn)(void *userdata, bool durable);
/* Drops the key's token in Redis (only if it is `only`, when given) and
 * tells every host to drop its copy. ack, when given, is called once,
 * perhaps before this returns. Never blocks. */
void shared_drop(shared *s, enum oauth_grant grant, const char *user_id, const char *scope,
                 const token *only, shared_ack_fn ack, void *userdata);
/* Revokes every token the fleet holds for the key: takes the shared copies
 * out of Redis (under the current and the previous key's names), opens
 * them, and hands them with local (this host's own, or NULL; the caller
 * keeps its reference) to the revocations; every host is told to drop its
 * copy. done is called once: with the first try's outcome, or at once
 * with pending = 1 when Redis cannot take the drop now (the drop is then
 * kept and sent when Redis is back, and what it takes out is revoked;
 * local is revoked at once). Never blocks. */
void shared_revoke(shared *s, enum oauth_grant grant, const char *user_id, const char *scope, token *local,
                   revoke_done_fn done, void *userdata);
/* A revocation carried over a restart: as shared_revoke() with nobody
 * waiting, its event saying it was asked at asked_unix_ms (0: now). */
void shared_revoke_carried(shared *s, enum oauth_grant grant, const char *user_id, const char *scope,
                           uint64_t asked_unix_ms);
/* What Redis had not taken when the fleet stopped (each answered 503
 * "..._pending", or told after a revocation), for the image carried over
 * a restart, of the namespace in use: a drop, a revocation (take the
 * user's token out of Redis and revoke it; value: when it was asked), a
 * flush, or telling the fleet that a token was revoked at Instacart
 * (value: its fingerprint; with its user, if any, whom every host drops).
 * Call after shared_stop(). */
enum shared_carried { SHARED_CARRIED_DROP, SHARED_CARRIED_REVOKE, SHARED_CARRIED_FLUSH, SHARED_CARRIED_TELL };
size_t shared_export_pending(shared *s,
                             void (*fn)(void *userdata, enum shared_carried what, enum oauth_grant grant,
                                        const char *user_id, const char *scope, uint64_t value),
                             void *userdata);
/* A tell carried over a restart: every host refuses the token of
 * fingerprint fp (fleet_token_fp()) and drops the user's, if any. */
void shared_tell_revoked(shared *s, enum oauth_grant grant, const char *user_id, const char *scope, uint64_t fp);
/* The tokens this host knows the fleet revoked, by fingerprint, for the
 * image (so that a restarted host still refuses one written back into
 * Redis), and one put back at start, before shared_start(). */
size_t shared_export_denied(shared *s, void (*fn)(void *userdata, uint64_t fp), void *userdata);
void shared_deny(shared *s, uint64_t fp);
/* When each user's tokens were last revoked (user: a fingerprint; 0:
 * every user), for the image, so that a restarted host still refuses a
 * token hidden from a revocation and written back; and one put back. */
size_t shared_export_floors(shared *s, void (*fn)(void *userdata, uint64_t user, uint64_t at_unix_ms),
                            void *userdata);
void shared_floor(shared *s, uint64_t user, uint64_t at_unix_ms);
/* The fleet's generation of the last flush this host knew proven (0:
 * none), for the image, so that a restarted host never takes a generation
 * set back behind it; and one put back (it only ever rises). */
uint64_t shared_flush_floor(shared *s);
void shared_set_flush_floor(shared *s, uint64_t gen);
/* The revocation events this host applied lately, by id (for the image:
 * a host restarted with its cache replays the last seconds of events, and
 * must not apply one twice, revoking tokens minted since), and one put
 * back at start, before shared_start(). */
size_t shared_export_applied(shared *s, void (*fn)(void *userdata, uint64_t id), void *userdata);
void shared_note_applied(shared *s, uint64_t id);
/* Flushes the fleet: a new generation no host reads older tokens from.
 * ack as for shared_drop(). */
void shared_flush(shared *s, shared_ack_fn ack, void *userdata);
/* Reload: new keys and, with a new base_url or client_id, a new namespace.
 * Returns true when settings that need a restart (the Redis address,
 * sentinels, user, TLS) changed. */
bool shared_reload(shared *s, const struct config *cfg);
void shared_get_stats(shared *s, struct shared_stats *ret);
/* Ends both threads; fetches still waiting complete as failures. */
void shared_stop(shared *s);
shared *shared_free(shared *s);
