/* Fleet mode's internals, shared by its modules and no one else (see
 * shared.h for what fleet mode does, and src/README.md for its threads):
 *   shared.c        the public side and the life cycle
 *   fleet_jobs.c    jobs: queued, put off, minted here, published
 *   fleet_wire.c    the scripts Redis runs (the protocol's one place)
 *   fleet_link.c    reaching Redis: address, Sentinel, AUTH, TLS, permissions
 *   fleet_batch.c   the command thread: batches, answers, leases kept alive
 *   fleet_events.c  the event thread: the stream of drops and flushes
 *   fleet_trust.c   what a host trusts and learned: flags, generation, revoked tokens */
#pragma once

#include <hiredis/hiredis.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "build-config.h"
#ifdef HAVE_HIREDIS_SSL
#include <openssl/ssl.h>
#endif

#include "breaker.h"
#include "cache.h"
#include "config.h"
#include "queue.h"
#include "revoke.h"
#include "seal.h"
#include "shared.h"
#include "upstream.h"

#define JOBS_MAX 4096           /* queued commands; beyond, a miss mints on its own */
#define BATCH_MAX 64            /* commands pipelined in one round trip */
#define STREAM_MAXLEN 10000     /* events kept for hosts catching up */
#define CREDS_TTL_MS 300000     /* a credential rejection is shown this long unless a mint succeeds */
#define POLL_FIRST_MS 5         /* waiting on a lease: first poll about a fast mint later */
#define POLL_MAX_MS 200
#define REFUSED_MAX 4           /* values a lookup refuses before it skips every token in Redis */
#define EVENT_BLOCK_MS 1000
#define BEHIND_MAX_MS 2000      /* a reader behind the stream this long is being kept from its end (a flood) */
#define BREAKER_FAILURES 3
#define BREAKER_COOLDOWN_MS 1000
#define NS_MAX 96               /* "<prefix>:<namespace>:": the prefix is at most 64 */
#define KEY_MAX 160
/* "<prefix>:<namespace>:" and a key's name always fit: a longer prefix
 * (config.c refuses one) would cut key names short */
_Static_assert(NS_MAX >= CONFIG_SHARED_PREFIX_MAX + 1 + SEAL_NS_LEN + 1 + 1, "NS_MAX holds no namespace");
_Static_assert(KEY_MAX >= NS_MAX + 2 + SEAL_NAME_LEN + 1, "KEY_MAX holds no key name");
#define RESUME_MARGIN_MS 10000  /* replayed events from before an image was written: harmless */
#define PAUSE_MAX_MS 3600000ULL /* Instacart's own cap on a Retry-After: no pause lasts longer */
#define FLAG_SLACK_MS 5000      /* how far hosts' wall clocks may differ */
#define FLAG_MAX 48             /* "<until>:<mac>" */
#define DENY_MAX 4096           /* revoked tokens remembered (the newest), each for a token's longest life */
#define FLOORS_MAX 4096         /* users' revocations remembered (the newest), each for a token's longest life */
#define REPAIR_EVERY_MS 5000    /* a generation set back or a poisoned stream: mended at most this often */
#define UNPROVEN_GEN_MS 5000    /* a generation above the floor without a flush's proof: mended after this */
/* A flush builds its generation at most this far above its host's floor,
 * and a host takes a flush's generation for its floor only within this of
 * the floor it was made on (both under the flush's proof): a proof copied
 * onto another generation by a writer lifts no floor to where flushes no
 * longer fit a Lua number (2^53) in fewer than 2^37 flushes. */
#define FLUSH_STEP 65536
#define FUTURE_MAX_MS 3600000   /* an event id this far past Redis's clock was not made by XADD '*' */
/* An event's names and values, at most: a flush has 8, the most any host
 * writes; one with more was written by hand, to make every host's reader
 * slow (each field costs an attempt to open it), and is refused whole */
#define EVENT_FIELDS_MAX 16
#define RECENT_MAX 256          /* drops, revocations and flushes kept to send again after a failover */
#define REVS_APPLIED_MAX 1024   /* revocation events applied lately: one replayed is not applied twice */
/* A host's own copy is revoked by a revocation event only if it was minted
 * before the event was made, give or take the hosts' clocks: a Redis
 * writer replaying an old event cannot have newer tokens revoked. */
#define REVOKED_SKEW_MS 5000
#define RECENT_MS 30000         /* ... for this long: a deposed master keeps saying "master" ~10 s */
#define OWN_MAX 16384           /* tokens minted here while Redis was away, kept to reconcile once it is back */
#define SAY_EVERY_MS 60000      /* a fault that lasts is logged again at most this often */

enum script { S_LOOKUP, S_PUBLISH, S_RELEASE, S_DROP, S_FLUSH, S_REVOKED, S_RENEW, S_ADOPT, S_COUNT };
extern const char *const fleet_scripts[S_COUNT];
/* SHA1 in hex, as EVALSHA names a script and redis.sha1hex() a value.
 * Returns 0, or -EIO when OpenSSL fails. */
int fleet_sha1_hex(const void *data, size_t len, char out[41]);

/* ---- state ---- */

enum job_kind { J_LOOKUP, J_PUBLISH, J_RELEASE, J_RENEW, J_DROP, J_FLUSH, J_REVOKED, J_PAUSE, J_CREDS, J_PING,
                J_ADOPT };

/* A token minted here while Redis was away (degraded): once it is back,
 * shared with the fleet if nothing was dropped or flushed since, or given
 * up for the one the fleet shares (see fleet_reconcile()). */
struct own {
    struct own *next;
    enum oauth_grant grant;
    char user[OAUTH_USER_ID_MAX + 1];
    char scope[OAUTH_SCOPE_MAX + 1];
    char ns[NS_MAX];            /* the namespace it was minted for */
    char gen[24];               /* the highest generation this host had seen then */
    token *tok;
};

/* A lease this host holds while its mint runs: renewed until the mint ends. */
struct held {
    struct held *next;
    char key[KEY_MAX];
    char id[33];
    uint64_t next_ms;
};

struct job {
    struct qlink link; /* in one queue at a time */
    shared *s;
    enum job_kind kind;
    enum oauth_grant grant;
    char user[OAUTH_USER_ID_MAX + 1];
    char scope[OAUTH_SCOPE_MAX + 1];
    char ns[NS_MAX];            /* "<prefix>:<namespace>:" when the job was made */
    uint64_t up_gen;            /* upstream_generation() then: what it takes from Redis is of that server */
    uint64_t asked_unix_ms;     /* a revocation: when it was asked (its event says so, however late it is sent) */
    char tok_key[2][KEY_MAX];   /* current and previous key's names (the same without one) */
    char lease_key[KEY_MAX];
    char lease_prev[KEY_MAX];   /* the lease's name under the previous key (lease_key without one) */
    struct cache_want want;
    cache_done_fn done;
    void *ctx;
    bool waited, skip_pause, retried;
    /* values this lookup refused (revoked, of too little life, not opening),
     * by SHA1: the next look-up skips those and takes any other (the one a
     * lease holder publishes); after REFUSED_MAX, every token in Redis */
    char skip[2][41];
    uint8_t refused;
    char holder[33];            /* whose lease we wait on, or take over (a lease id: 32 hex digits) */
    struct held *held;          /* the lease this lookup took, while it mints */
    uint64_t wait_until_ms, next_at_ms, poll_ms;
    uint64_t sent_us;           /* for the lookup histogram: loopback round trips are tens of us */
    uint64_t sent_floor;        /* a lookup: this host's flush floor when it was sent */
    uint64_t wait_cap_ms;       /* no wait on leases goes past this, whoever holds them */
    char lease_id[33];
    char gen[24];
    char guard[48];             /* J_ADOPT: the last event this host applied; any since and it is kept here */
    enum shared_mint how;
    token *tok;                 /* publish */
    char fp[SEAL_FP_LEN + 1];   /* drop only this token ('' for any) */
    char fp_prev[SEAL_FP_LEN + 1]; /* ... its fingerprint under the previous key, during a rotation */
    char fps[3 * 17];           /* J_REVOKED: fingerprints (token_fp) of revoked tokens, comma-separated */
    bool revoke;                /* a drop that revokes what it takes out of Redis */
    bool remake;                /* a flush that makes the events stream anew (it holds an unreadable event) */
    bool published;             /* a mint's token was handed to a publish (which gives the lease up) */
    bool wait_replica;          /* a drop, revocation or flush followed by WAIT: durable only once a replica has it */
    token *local;               /* revoke: this host's own copy, or NULL */
    revoke_done_fn rdone;       /* revoke: the caller waiting on the first try, or NULL */
    void *rctx;
    shared_ack_fn ack;          /* drop, flush: the caller waiting to hear it is durable, or NULL */
    void *actx;
    bool undurable;             /* WAIT's answer did not say a replica has it */
    uint64_t ms;                /* pause */
};


struct shared {
    upstream *up;
    revocations *rv;
    struct shared_sink sink;    /* where drops and flushes land here (shared_attach), or none */

    /* where Redis is: fixed until a restart */
    char *redis;                /* HOST:PORT or unix:PATH, or NULL with sentinels */
    char **sentinels;
    size_t n_sentinels;
    char *master_name;
    char *username;
    char *password;
    size_t password_len;
    bool tls;
    char *tls_ca_file;
#ifdef HAVE_HIREDIS_SSL
    SSL_CTX *ssl;               /* with tls: certificates checked, TLS 1.2 at least */
#endif
    char *prefix;               /* [shared] prefix, fixed until a restart */
    uint64_t timeout_ms;
    uint64_t lease_wait_ms;
    uint64_t lease_ms;          /* a lease not renewed for this long lapses (lease_wait) */
    uint64_t request_timeout_ms; /* the longest mint: no wait on a live holder lasts longer */
    struct held *held;          /* leases held while their mints run (under lock) */
    uint64_t plenty_ms;         /* a refresh with this much life left waits for Redis */
    char sha[S_COUNT][41];

    pthread_rwlock_t keys_lock; /* guards keys and ns */
    seal_keys keys;
    char ns[NS_MAX];
    unsigned ns_serial;         /* bumped when ns changes: the event reader starts over */

    pthread_mutex_t lock;       /* guards everything below */
    pthread_cond_t cond;        /* the command thread's: work queued */
    pthread_cond_t ev_cond;     /* the event thread's: stop its backoff */
    pthread_cond_t read_cond;   /* the start's: read_once became true */
    bool read_once;             /* the event thread has read all the stream held, once */
    struct queue queue, waiting;
    struct queue pending;    /* drops and flushes Redis could not take yet */
    struct queue carried;    /* after a stop: those, for the image carried over a restart */
    bool stopping, started;
    breaker br;
    int ev_fd;                  /* the event reader's socket, to interrupt it at stop */
    struct shared_stats stats;
    char lease_prefix[17];      /* this process's part of its lease ids */
    unsigned long long lease_seq;

    uint64_t resume_age_ms;     /* see shared_resume(); 0: start from now */
    uint64_t resume_at_ms;      /* ... when it was given (the first connection may come much later) */
    char resume_last[48];       /* ... the last event read before the restart, "" unknown */
    uint64_t resume_redis;      /* ... from the Redis of this address hash (fleet_redis_id()) */
    char last_read[48];         /* the last event the event thread read, in last_read_ns (under lock) */
    char last_read_ns[NS_MAX];
    uint64_t last_read_redis;   /* ... from the Redis of this address hash */
    uint64_t flag_said_ms;      /* when a forged flag was last logged */
    uint64_t foreign_said_ms;   /* when a flush of another fleet was last logged */
    uint64_t creds_ok_ms;       /* the newest mint success known (unix ms): older credentials flags are over */
    struct own *own;            /* minted here while Redis was away, newest first */
    size_t n_own;
    size_t adopting;            /* J_ADOPT jobs not yet ended */
    bool demoted;               /* the event thread saw our master become a replica (atomic) */
    bool resend;                /* a drop or flush was refused: kept, sent again on a new connection (atomic) */
    /* Drops, revocations and flushes Redis took lately (command thread
     * only): sent again when the master changes, as a deposed master's
     * last writes are lost when it rejoins as a replica. */
    struct recent {
        uint64_t at_ms;
        enum job_kind kind;
        enum oauth_grant grant;
        char user[OAUTH_USER_ID_MAX + 1];
        char scope[OAUTH_SCOPE_MAX + 1];
        char fps[3 * 17];
        char ns[NS_MAX];        /* where it went: a reload to another server since does not move it */
        char tok_key[2][KEY_MAX];
    } recent[RECENT_MAX];
    size_t recent_next;
    char master[280];           /* the Redis the command thread last connected to (command thread only) */
    uint64_t refusal_said_ms;   /* when a refusal from Redis was last logged */
    uint64_t events_said_ms;    /* when the event reader's failure was last logged */
    unsigned long long max_gen; /* the highest generation seen: never lets it go back */
    uint64_t unproven_since_ms; /* since when Redis's generation is above it without proof (0: it is not) */
    uint64_t unproven_seen_ms;  /* ... when last seen so */
    uint64_t repair_ms;         /* when a repair flush was last sent */
    uint64_t revs_applied[REVS_APPLIED_MAX]; /* revocation events applied, by their proof's MAC (event thread) */
    size_t revs_next;
    uint64_t unproven_said_ms;  /* when a revocation event without its proof was last logged */
    uint64_t denied[DENY_MAX];  /* fingerprints of tokens revoked by the fleet, a ring */
    uint64_t denied_until[DENY_MAX];
    size_t deny_next;
    /* When each user's tokens were last revoked (fleet_floor_raise()): a
     * shared value minted before is never served, a ring; and the newest
     * of those the ring let go, for every user */
    struct floor {
        uint64_t user;          /* fleet_user_fp() */
        uint64_t at_unix_ms;
    } floors[FLOORS_MAX];
    size_t floor_next;
    uint64_t floor_all_unix_ms;
    bool failing;               /* Redis failing was said, its return not yet */
    uint64_t failing_said_ms;
    unsigned long long failures_unsaid;

    pthread_t cmd_thread, ev_thread;
};

/* fleet_jobs.c */
/* A revocation whose drop Redis cannot take now: the caller is told at
 * once that it is not done, and this host's own copy is revoked without
 * waiting; the shared copies are revoked when the drop is sent. */
struct later {
    char ns[NS_MAX];            /* the namespace the revocation was asked in ('' : the one now) */
    uint64_t up_gen;            /* and the upstream's generation then (0: now) */
    token *local;
    revoke_done_fn done;
    void *ctx;
    shared_ack_fn ack;
    void *actx;
};
bool fleet_keep_for_later_locked(shared *s, struct job *j, struct later *l);
void fleet_carry(shared *s, struct job *j);
void fleet_remember(shared *s, const struct job *j, uint64_t now);
void fleet_replay_recent_locked(shared *s, const char *address, uint64_t now);
/* fleet_events.c */
bool fleet_revocation_applied(shared *s, uint64_t id);
void fleet_drop(shared *s, enum oauth_grant grant, const char *user_id, const char *scope, const token *only,
                shared_ack_fn ack, void *userdata);
void fleet_revoke(shared *s, enum oauth_grant grant, const char *user_id, const char *scope, token *local,
                  uint64_t asked_unix_ms, revoke_done_fn done, void *userdata);
void fleet_flush(shared *s, shared_ack_fn ack, void *userdata);
void fleet_flush_as(shared *s, bool remake, shared_ack_fn ack, void *userdata);
void fleet_reconcile(shared *s, const char *ns, const char *last_event);
void fleet_own_free(shared *s);
bool fleet_gen_check(shared *s, const char *text, size_t len, bool proven);
/* The same for an answer to a command sent when this host's floor was
 * sent_floor (fleet_gen_floor()): below the floor now but not below
 * that, the answer is only older than a flush we learned since (*old),
 * not Redis going back; nothing is mended for it. */
bool fleet_gen_check_sent(shared *s, const char *text, size_t len, uint64_t sent_floor, bool *old);
void fleet_count_op(shared *s, enum shared_op op, bool ok);
void fleet_degrade(shared *s, struct job *j);
void fleet_fail_job(shared *s, struct job *j);
void fleet_hold(shared *s, struct job *j);
void fleet_job_free(struct job *j);
/* A drop, revocation or flush to send again: to the same namespace and
 * keys as j, whatever a reload changed since. NULL: out of memory. */
struct job *fleet_job_again(shared *s, const struct job *j);
int fleet_job_names(shared *s, struct job *j);
struct job *fleet_job_new(shared *s, enum job_kind kind, enum oauth_grant grant, const char *user_id, const char *scope);
void fleet_mint(shared *s, struct job *j, enum shared_mint how);
bool fleet_ns_moved(shared *s, const struct job *j);
bool fleet_submit(shared *s, struct job *j);
void fleet_unavailable(struct job *j, const char *error, int http_status, unsigned retry_after_s, bool deferred);

/* fleet_trust.c */
/* Whether to log again what was last logged at *said_ms (0: never):
 * once a minute, so that a fault that lasts does not flood the journal.
 * Under s->lock. */
static inline bool fleet_time_to_say(uint64_t *said_ms, uint64_t now) {
    if (*said_ms && now - *said_ms < SAY_EVERY_MS)
        return false;
    *said_ms = now;
    return true;
}
bool fleet_denied(shared *s, const token *t);
void fleet_deny(shared *s, uint64_t fp);
/* A user's key (grant, user id, scope) as the list of revocations names it. */
uint64_t fleet_user_fp(enum oauth_grant grant, const char *user_id, const char *scope);
/* The user's tokens were revoked at this time (Unix ms, as the revoking
 * host's clock said): a shared value of theirs minted before it is
 * refused from now on, for a token's longest life, and across a restart
 * with the cache. */
void fleet_floor_raise(shared *s, uint64_t user, uint64_t at_unix_ms);
/* The same for every user: this host missed events, which may have been
 * of any of them. */
void fleet_floor_all(shared *s, uint64_t at_unix_ms);
enum floor_verdict {
    FLOOR_SERVE,    /* minted after the user's last revocation, or none known */
    FLOOR_REFUSE,   /* minted before it, or too near it to tell: never served */
    FLOOR_REVOKE,   /* ... and surely before it (by REVOKED_SKEW_MS): a token the revocation missed */
};
enum floor_verdict fleet_floor_check(shared *s, uint64_t user, const token *t);
bool fleet_flag_holds(shared *s, const char *ns, const char *name, const redisReply *v, const redisReply *ttl, uint64_t max_ms);
uint64_t fleet_flag_left_ms(shared *s, const char *ns, const char *name, const char *v, size_t len, uint64_t ttl_ms, uint64_t max_ms);
int fleet_flag_make(shared *s, const char *ns, const char *name, uint64_t ms, char out[FLAG_MAX]);
int fleet_proof_make(shared *s, const char *ns, const char *name, char out[FLAG_MAX]);
bool fleet_proof_holds(shared *s, const char *ns, const char *name, const char *v, size_t len, uint64_t *ret_made);
/* A flush's second proof ('q'), bound to the floor it was made on ('b'). */
int fleet_floor_proof_make(shared *s, const char *ns, const char *floor, char out[FLAG_MAX]);
bool fleet_floor_proof_holds(shared *s, const char *ns, const char *floor, size_t floor_len, const char *v,
                             size_t len);
int fleet_revoked_proof_make(shared *s, const char *ns, const void *v, size_t len, uint64_t at,
                             char out[FLAG_MAX]);
bool fleet_revoked_proof_holds(shared *s, const char *ns, const void *v, size_t len, const char *proof,
                               size_t proof_len, uint64_t *ret_made);
void fleet_creds_ok(shared *s, uint64_t at_ms);
bool fleet_creds_flag_holds(shared *s, const char *ns, const redisReply *v, const redisReply *ttl);
const char *fleet_gen_seen(shared *s, const char *text, size_t len, bool proven);
#define GEN_FLOOR_NOW UINT64_MAX /* fleet_gen_seen_sent(): compared with the floor now */
/* The generation of the last flush this host knows proven: its floor. */
uint64_t fleet_gen_floor(shared *s);
const char *fleet_gen_seen_sent(shared *s, const char *text, size_t len, bool proven, uint64_t sent_floor,
                                bool *old);
/* Whether a value may be sealed under this generation (as the lookup read
 * it): only under our floor, the generation of the last flush we know
 * proven. */
bool fleet_gen_sealable(shared *s, const char *gen);
uint64_t fleet_token_fp(const token *t);
void fleet_on_credentials_rejected(void *userdata);
void fleet_on_paused(void *userdata, uint64_t ms);
void fleet_refused(shared *s, const char *command, const char *error);
void fleet_refused_flag(shared *s, const char *name);
void fleet_repair_flush(shared *s, const char *why, bool remake);
void fleet_tell_revoked(shared *s, const char *ns, enum oauth_grant grant, const char *user_id, const char *scope,
                        token *const *toks, size_t n);
/* The fingerprints in a tell's text (16 hex digits each, comma-separated,
 * as fleet_tell_revoked_fps() writes them), at most max: how many. */
size_t fleet_fps_parse(const char *text, uint64_t *fps, size_t max);
/* The same by fingerprints (fleet_token_fp()), at most 3. */
void fleet_tell_revoked_fps(shared *s, const char *ns, enum oauth_grant grant, const char *user_id,
                            const char *scope, const uint64_t *fps, size_t n);

/* fleet_link.c */
int fleet_find_master(shared *s, char *address, size_t size, char *err, size_t err_size);
redisReply *fleet_command(redisContext *c, int argc, const char **argv, const size_t *lens, char *err, size_t err_size);
redisContext *fleet_redis_open(shared *s, bool load_scripts, char *address, size_t address_size, char *err, size_t err_size);
const char *fleet_redis_why(const redisContext *c);

/* fleet_batch.c */
void *fleet_command_thread(void *arg);
uint64_t fleet_due_renewals(shared *s, uint64_t now, uint64_t next);
void fleet_lease_id(shared *s, char out[33]);
enum shared_op fleet_op_of(enum job_kind k);

/* fleet_events.c */
void *fleet_event_thread(void *arg);

/* fleet_wire.c: Redis's answers read, every shape checked (pure: unit tested
 * and fuzzed) */
struct fleet_stream_id {
    unsigned long long ms, seq;
};
/* "<ms>-<seq>", digits only. */
bool fleet_stream_id_parse(const char *s, size_t len, struct fleet_stream_id *ret);
int fleet_stream_id_cmp(struct fleet_stream_id a, struct fleet_stream_id b);
/* What XINFO STREAM says of the stream's ends. */
struct fleet_stream_info {
    bool have_newest, have_gone, have_first, have_added, have_length;
    struct fleet_stream_id newest, gone, first; /* last-generated, max-deleted, recorded-first */
    unsigned long long added;                   /* entries-added: every entry the stream ever had */
    unsigned long long length;                  /* the entries it has now */
};
void fleet_stream_info_decode(const redisReply *r, struct fleet_stream_info *ret);
/* The lookup script's answer (see fleet_wire.c): false for any other shape. */
struct fleet_lookup {
    int code;                    /* 1 found, 2 leased, 3 paused, 4 busy */
    const redisReply *value;     /* the value, the pause flag or the holder (a string) */
    long long ttl;
    const redisReply *gen;       /* a string */
    int which;                   /* found: 1 the current key's name, 2 the previous key's */
};
bool fleet_lookup_decode(const redisReply *r, struct fleet_lookup *ret);
/* XREAD's answer for one stream: its entries (each [id, [field, value,
 * ...]], shapes still to check), or NULL for nil or any other shape. */
const redisReply *fleet_xread_entries(const redisReply *r);
/* TIME's answer, in ms. */
bool fleet_time_decode(const redisReply *r, unsigned long long *ret_ms);
/* Bounds what hiredis's reader may allocate for one answer (the element
 * count of an array): a hostile Redis cannot make us allocate gigabytes. */
void fleet_reader_bound(redisReader *r);
