/* Fleet mode's shared tier in Redis: see shared.h for what it does.
 *
 * hiredis's synchronous API on two threads of our own, each with its own
 * connection: one sends the commands callers' misses need (pipelined in
 * batches), one blocks on the fleet's event stream and checks the fleet's
 * state between blocks. The synchronous API because both Debian releases
 * have it with a socket deadline (redisSetTimeout), while 0.14's async API
 * has no per-command deadline and no event adapter fits our loops; a
 * command that misses its deadline leaves the connection unusable, so it is
 * dropped and made again, with a breaker against a Redis that keeps failing.
 *
 * Redis holds, under "<prefix>:<namespace>:" (namespace: a hash of base_url
 * and client_id, so other credentials never meet ours):
 *   t:<name>   a token: "<generation>:<fingerprint>:" then the sealed token
 *   l:<name>   a lease: the id of the host minting it
 *   gen        the generation, bumped by a fleet flush
 *   pause      set while Instacart's Retry-After says nobody may mint
 *   creds      set while Instacart rejects the client credentials
 *   events     a stream of drops (sealed keys) and flushes
 * and nothing else: no user id, no token, no secret in the clear. */
#include <errno.h>
#include <hiredis/hiredis.h>

#include "build-config.h"

#ifdef HAVE_HIREDIS_SSL
#include <arpa/inet.h>
#include <hiredis/hiredis_ssl.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#endif
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "config.h"
#include "log.h"
#include "queue.h"
#include "seal.h"
#include "shared.h"
#include "util.h"

#define JOBS_MAX 4096           /* queued commands; beyond, a miss mints on its own */
#define BATCH_MAX 64            /* commands pipelined in one round trip */
#define STREAM_MAXLEN 10000     /* events kept for hosts catching up */
#define CREDS_TTL_MS 300000     /* a credential rejection is shown this long unless a mint succeeds */
#define POLL_FIRST_MS 5         /* waiting on a lease: first poll about a fast mint later */
#define POLL_MAX_MS 200
#define EVENT_BLOCK_MS 1000
#define BREAKER_FAILURES 3
#define BREAKER_COOLDOWN_MS 1000
#define NS_MAX 96               /* "<prefix>:<namespace>:": the prefix is at most 64 */
#define KEY_MAX 160
#define RESUME_MARGIN_MS 10000  /* replayed events from before an image was written: harmless */
#define PAUSE_MAX_MS 3600000ULL /* Instacart's own cap on a Retry-After: no pause lasts longer */
#define FLAG_SLACK_MS 5000      /* how far hosts' wall clocks may differ */
#define FLAG_MAX 48             /* "<until>:<mac>" */
#define DENY_MAX 4096           /* revoked tokens remembered (the newest), each for a token's longest life */
#define REPAIR_EVERY_MS 5000    /* a generation set back or a poisoned stream: mended at most this often */
#define FUTURE_MAX_MS 3600000   /* an event id this far past Redis's clock was not made by XADD '*' */

const char *const shared_op_names[SHARED_OP_COUNT] = { "lookup", "publish", "drop", "flush", "pause" };
const char *const shared_lookup_names[SHARED_LOOKUP_COUNT] = { "shared", "lease", "busy", "paused" };
const char *const shared_mint_names[SHARED_MINT_COUNT] = { "leased", "lease_timeout", "degraded" };
const double shared_latency_bounds[SHARED_LATENCY_BUCKETS] = { 0.0001, 0.00025, 0.0005, 0.001, 0.0025,
                                                               0.005,  0.01,    0.025,  0.05,  0.1 };

/* ---- the scripts: each does its reads and writes in one round trip ---- */

/* KEYS: token (current key's name), token (previous key's name), lease,
 * gen, pause. ARGV: least life in ms, lease id, lease ms, skip tokens, the
 * holder whose lease we take over ('' for none), skip the pause flag (one
 * this host found forged). Returns {1, value, pttl, gen, which} for a token
 * with enough life (or, failing one, a token with less: the host judges it
 * by its lifetime, sealed inside), {3, pause flag, pttl, gen, 0} while paused, {2, '', 0,
 * gen, 0} for a lease taken (or already ours: a lookup sent again after a
 * lost answer), {4, holder, pttl, gen, 0} when another host holds it. A
 * waiter whose wait ran out takes the lease over only from the holder it
 * waited on, so of several waiters one mints; a holder that is no lease id
 * (32 hex digits) was not written by a host and is taken at once. */
static const char lookup_lua[] =
    "local g = redis.call('GET', KEYS[4]) or '0'\n"
    "local pre = g .. ':'\n"
    "if ARGV[4] ~= '1' then\n"
    "  local short\n"
    "  for i = 1, 2 do\n"
    "    local v = redis.call('GET', KEYS[i])\n"
    "    if v and string.sub(v, 1, #pre) == pre then\n"
    "      local ttl = redis.call('PTTL', KEYS[i])\n"
    "      if ttl > tonumber(ARGV[1]) then return {1, v, ttl, g, i} end\n"
    "      if ttl > 1000 and not short then short = {1, v, ttl, g, i} end\n"
    "    end\n"
    "  end\n"
    "  if short then return short end\n"
    "end\n"
    "local p = redis.call('PTTL', KEYS[5])\n"
    "if p > 0 and ARGV[6] ~= '1' then return {3, redis.call('GET', KEYS[5]) or '', p, g, 0} end\n"
    "local h = redis.call('GET', KEYS[3])\n"
    "if not h or h == ARGV[5] or h == ARGV[2] or not string.match(h, '^' .. string.rep('%x', 32) .. '$') then\n"
    "  redis.call('SET', KEYS[3], ARGV[2], 'PX', ARGV[3])\n"
    "  return {2, '', 0, g, 0}\n"
    "end\n"
    "return {4, h, redis.call('PTTL', KEYS[3]), g, 0}\n";

/* KEYS: token, lease, gen, creds. ARGV: value, ttl ms, lease id or '',
 * the generation the value was sealed for. Stores the token unless the
 * fleet was flushed since, or a token of this generation that lives longer
 * is there and we hold no lease; always gives up our lease. */
static const char publish_lua[] =
    "local mine = ARGV[3] ~= '' and redis.call('GET', KEYS[2]) == ARGV[3]\n"
    "if mine then redis.call('DEL', KEYS[2]) end\n"
    "redis.call('DEL', KEYS[4])\n"
    "local g = redis.call('GET', KEYS[3]) or '0'\n"
    "if g ~= ARGV[4] then return 0 end\n"
    "local v = redis.call('GET', KEYS[1])\n"
    "if mine or not v or string.sub(v, 1, #g + 1) ~= g .. ':' or\n"
    "   redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then\n"
    "  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])\n"
    "  return 1\n"
    "end\n"
    "return 0\n";

/* KEYS: lease. ARGV: lease id, lease ms. Keeps the lease alive while our
 * mint runs, if it is still ours. */
static const char renew_lua[] =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then\n"
    "  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])\n"
    "  return 1\n"
    "end\n"
    "return 0\n";

/* KEYS: lease. ARGV: lease id. Gives the lease up if it is still ours. */
static const char release_lua[] =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end\n"
    "return 0\n";

/* Appends to the events stream (k) with an id of Redis's own clock.
 * A stream whose top id someone pushed into the future refuses that: it
 * is poisoned, deleted and made again (the hosts see a stream made anew
 * behind them, and drop their tokens: see catch_up()). */
#define XADD_LUA                                                                         \
    "local function xadd(k, len, f, v)\n"                                               \
    "  local ok = redis.pcall('XADD', k, 'MAXLEN', '~', len, '*', f, v)\n"              \
    "  if type(ok) == 'table' and ok.err then\n"                                        \
    "    redis.call('DEL', k)\n"                                                        \
    "    redis.call('XADD', k, 'MAXLEN', '~', len, '*', f, v)\n"                        \
    "  end\n"                                                                           \
    "end\n"

/* KEYS: token (current name), token (previous name), events. ARGV: the
 * fingerprint to drop ('' for any), the sealed key for the event, the
 * stream's length. Returns {value, pttl, value, pttl} of what it deleted
 * ('' and 0 where nothing), so a revocation can revoke it. */
static const char drop_lua[] =
    XADD_LUA
    "local out = {'', 0, '', 0}\n"
    "for i = 1, 2 do\n"
    "  local v = redis.call('GET', KEYS[i])\n"
    "  if v then\n"
    "    local a = string.find(v, ':', 1, true)\n"
    "    if ARGV[1] == '' or (a and string.sub(v, a + 1, a + #ARGV[1]) == ARGV[1]) then\n"
    "      out[2 * i] = redis.call('PTTL', KEYS[i])\n"
    "      out[2 * i - 1] = v\n"
    "      redis.call('DEL', KEYS[i])\n"
    "    end\n"
    "  end\n"
    "end\n"
    "xadd(KEYS[3], ARGV[3], 'd', ARGV[2])\n"
    "return out\n";


/* KEYS: gen, events. ARGV: the stream's length, the highest generation
 * this host has seen. A generation set back (or not a number) never goes
 * below what a host saw: the new one is above both. */
static const char flush_lua[] =
    XADD_LUA
    "local g = tonumber(redis.call('GET', KEYS[1]) or '0')\n"
    "local floor = tonumber(ARGV[2]) or 0\n"
    "if not g or g ~= math.floor(g) or g < floor then g = floor end\n"
    "g = g + 1\n"
    "redis.call('SET', KEYS[1], string.format('%d', g))\n"
    "xadd(KEYS[2], ARGV[1], 'f', string.format('%d', g))\n"
    "return g\n";

/* KEYS: events. ARGV: the stream's length, the sealed fingerprints of
 * tokens revoked at Instacart. */
static const char revoked_lua[] =
    XADD_LUA
    "xadd(KEYS[1], ARGV[1], 'r', ARGV[2])\n"
    "return 1\n";

enum script { S_LOOKUP, S_PUBLISH, S_RELEASE, S_DROP, S_FLUSH, S_REVOKED, S_RENEW, S_COUNT };
static const char *const scripts[S_COUNT] = { lookup_lua, publish_lua, release_lua, drop_lua, flush_lua,
                                              revoked_lua, renew_lua };

/* ---- state ---- */

enum job_kind { J_LOOKUP, J_PUBLISH, J_RELEASE, J_RENEW, J_DROP, J_FLUSH, J_REVOKED, J_PAUSE, J_CREDS, J_PING };

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
    char tok_key[2][KEY_MAX];   /* current and previous key's names (the same without one) */
    char lease_key[KEY_MAX];
    struct cache_want want;
    cache_done_fn done;
    void *ctx;
    bool waited, skip_tokens, skip_pause, retried;
    char holder[33];            /* whose lease we wait on, or take over (a lease id: 32 hex digits) */
    struct held *held;          /* the lease this lookup took, while it mints */
    uint64_t wait_until_ms, next_at_ms, poll_ms;
    uint64_t sent_us;           /* for the lookup histogram: loopback round trips are tens of us */
    uint64_t wait_cap_ms;       /* no wait on leases goes past this, whoever holds them */
    char lease_id[33];
    char gen[24];
    enum shared_mint how;
    token *tok;                 /* publish */
    char fp[SEAL_FP_LEN + 1];   /* drop only this token ('' for any) */
    char fps[3 * 17];           /* J_REVOKED: fingerprints (token_fp) of revoked tokens, comma-separated */
    bool revoke;                /* a drop that revokes what it takes out of Redis */
    bool published;             /* a mint's token was handed to a publish (which gives the lease up) */
    token *local;               /* revoke: this host's own copy, or NULL */
    revoke_done_fn rdone;       /* revoke: the caller waiting on the first try, or NULL */
    void *rctx;
    uint64_t ms;                /* pause */
};


struct shared {
    upstream *up;
    revocations *rv;
    cache *cache;

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
    struct queue queue, waiting;
    struct queue pending;    /* drops and flushes Redis could not take yet */
    bool stopping, started;
    breaker br;
    int ev_fd;                  /* the event reader's socket, to interrupt it at stop */
    struct shared_stats stats;
    char lease_prefix[17];      /* this process's part of its lease ids */
    unsigned long long lease_seq;

    uint64_t resume_age_ms;     /* see shared_resume(); 0: start from now */
    uint64_t flag_said_ms;      /* when a forged flag was last logged */
    uint64_t refusal_said_ms;   /* when a refusal from Redis was last logged */
    uint64_t events_said_ms;    /* when the event reader's failure was last logged */
    unsigned long long max_gen; /* the highest generation seen: never lets it go back */
    uint64_t repair_ms;         /* when a repair flush was last sent */
    uint64_t denied[DENY_MAX];  /* fingerprints of tokens revoked by the fleet, a ring */
    uint64_t denied_until[DENY_MAX];
    size_t deny_next;
    bool failing;               /* Redis failing was said, its return not yet */
    uint64_t failing_said_ms;
    unsigned long long failures_unsaid;

    pthread_t cmd_thread, ev_thread;
};

static uint64_t token_fp(const token *t);
static void deny(shared *s, uint64_t fp);
static void tell_revoked(shared *s, token *const *toks, size_t n);

static void job_free(struct job *j) {
    if (!j)
        return;
    token_unref(j->tok);
    token_unref(j->local);
    /* it holds a user id and, for a publish, a sealed token: no need to leave them */
    wipe_free(j, sizeof(*j));
}

/* Ends a lookup without a token: frees the job, then tells the cache. */
static void unavailable(struct job *j, const char *error, int http_status, unsigned retry_after_s,
                        bool deferred) {
    mint_outcome o = { .kind = MINT_UNAVAILABLE, .http_status = http_status, .retry_after_s = retry_after_s,
                       .deferred = deferred };
    cache_done_fn done = j->done;
    void *ctx = j->ctx;

    snprintf(o.error, sizeof(o.error), "%s", error);
    job_free(j);
    done(ctx, &o, NULL);
}

static void count_op(shared *s, enum shared_op op, bool ok) {
    pthread_mutex_lock(&s->lock);
    s->stats.ops[op][ok ? 0 : 1]++;
    pthread_mutex_unlock(&s->lock);
}

/* ---- making jobs ---- */

static void sha1_hex(const char *text, char out[41]) {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned n = 0;

    EVP_Digest(text, strlen(text), md, &n, EVP_sha1(), NULL);
    for (unsigned i = 0; i < n && i < 20; i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
}

/* Names the job's keys, under the keys' lock. Returns 0 or -EIO. */
static int job_names(shared *s, struct job *j) {
    char name[SEAL_NAME_LEN + 1];
    int r;

    pthread_rwlock_rdlock(&s->keys_lock);
    snprintf(j->ns, sizeof(j->ns), "%s", s->ns);
    r = seal_name(&s->keys, false, j->grant, j->user, j->scope, name);
    if (r == 0) {
        snprintf(j->tok_key[0], KEY_MAX, "%st:%s", s->ns, name);
        snprintf(j->lease_key, KEY_MAX, "%sl:%s", s->ns, name);
        if (s->keys.has_prev)
            r = seal_name(&s->keys, true, j->grant, j->user, j->scope, name);
        snprintf(j->tok_key[1], KEY_MAX, "%st:%s", s->ns, name);
    }
    pthread_rwlock_unlock(&s->keys_lock);
    return r;
}

static struct job *job_new(shared *s, enum job_kind kind, enum oauth_grant grant, const char *user_id,
                           const char *scope) {
    struct job *j = calloc(1, sizeof(*j));

    if (!j)
        return NULL;
    j->s = s;
    j->kind = kind;
    j->grant = grant;
    snprintf(j->user, sizeof(j->user), "%s", user_id ? user_id : "");
    snprintf(j->scope, sizeof(j->scope), "%s", scope ? scope : "");
    if (kind == J_LOOKUP || kind == J_DROP) {
        if (job_names(s, j) < 0) {
            job_free(j);
            return NULL;
        }
    } else {
        pthread_rwlock_rdlock(&s->keys_lock);
        snprintf(j->ns, sizeof(j->ns), "%s", s->ns);
        pthread_rwlock_unlock(&s->keys_lock);
    }
    return j;
}

/* A revocation whose drop Redis cannot take now: the caller is told at
 * once that it is not done, and this host's own copy is revoked without
 * waiting; the shared copies are revoked when the drop is sent. */
struct later {
    token *local;
    revoke_done_fn done;
    void *ctx;
};

static void later_take_locked(struct job *j, struct later *l) {
    l->local = j->local;
    l->done = j->rdone;
    l->ctx = j->rctx;
    j->local = NULL;
    j->rdone = NULL;
}

static void later_tell(shared *s, struct later *l, const char *why) {
    struct revoke_outcome o = { .pending = 1, .failure = { .kind = MINT_UNAVAILABLE, .retry_after_s = 1 } };

    if (l->local) {
        tell_revoked(s, &l->local, 1);
        revocations_revoke(s->rv, &l->local, 1, NULL, NULL);
    }
    l->local = token_unref(l->local);
    snprintf(o.failure.error, sizeof(o.failure.error), "%s", why);
    if (l->done)
        l->done(l->ctx, &o);
    l->done = NULL;
}

/* A drop or a flush that Redis cannot take now waits for the next
 * connection: lost, it would leave a revoked token in Redis for the other
 * hosts (and for this one, once Redis is back). Bounded; called with the
 * lock held. */
static bool keep_for_later_locked(shared *s, struct job *j, struct later *l) {
    if ((j->kind != J_DROP && j->kind != J_FLUSH && j->kind != J_REVOKED) || s->pending.n >= JOBS_MAX)
        return false;
    j->retried = false;
    later_take_locked(j, l);
    queue_push(&s->pending, &j->link);
    s->stats.pending = s->pending.n;
    return true;
}

/* Queues a job for the command thread. Returns false when the queue is
 * full, the breaker is open (no queueing behind a Redis known to be down)
 * or it is stopping: the caller decides what that means for the job. */
static bool submit(shared *s, struct job *j) {
    struct later l = { 0 };
    uint64_t wait;
    bool ok;

    pthread_mutex_lock(&s->lock);
    ok = !s->stopping && s->queue.n + s->waiting.n < JOBS_MAX;
    if (ok && breaker_refuses(&s->br, now_ms(), &wait)) {
        ok = keep_for_later_locked(s, j, &l);
        pthread_mutex_unlock(&s->lock);
        if (ok)
            later_tell(s, &l, "shared_unavailable");
        return ok;
    }
    if (ok) {
        queue_push(&s->queue, &j->link);
        pthread_cond_signal(&s->cond);
    }
    pthread_mutex_unlock(&s->lock);
    return ok;
}

/* ---- minting, when the fleet has no token for us ---- */

static void publish(shared *s, struct job *from, token *t);

/* The lease a lookup took is renewed by the command thread while the mint
 * runs (see due_renewals()), so a slow Instacart costs no second mint. */
static void hold(shared *s, struct job *j) {
    struct held *h = calloc(1, sizeof(*h));
    uint64_t every = __atomic_load_n(&s->lease_ms, __ATOMIC_RELAXED) / 3;

    if (!h)
        return; /* not renewed: at worst, a second host mints */
    snprintf(h->key, sizeof(h->key), "%s", j->lease_key);
    snprintf(h->id, sizeof(h->id), "%s", j->lease_id);
    h->next_ms = now_ms() + every;
    pthread_mutex_lock(&s->lock);
    h->next = s->held;
    s->held = h;
    pthread_cond_signal(&s->cond);
    pthread_mutex_unlock(&s->lock);
    j->held = h;
}

static void unhold(shared *s, struct job *j) {
    if (!j->held)
        return;
    pthread_mutex_lock(&s->lock);
    for (struct held **p = &s->held; *p; p = &(*p)->next)
        if (*p == j->held) {
            *p = j->held->next;
            break;
        }
    pthread_mutex_unlock(&s->lock);
    free(j->held);
    j->held = NULL;
}

static void minted(void *userdata, const mint_outcome *o, token *t) {
    struct job *j = userdata;
    shared *s = j->s;
    cache_done_fn done = j->done;
    void *ctx = j->ctx;

    unhold(s, j);
    pthread_mutex_lock(&s->lock);
    s->stats.mints[j->how]++;
    pthread_mutex_unlock(&s->lock);
    if (j->how != SHARED_MINT_DEGRADED) {
        if (t)
            publish(s, j, t);
        if ((!t || !j->published) && j->lease_id[0]) {
            /* let the next host try at once rather than wait out the lease */
            struct job *r = job_new(s, J_RELEASE, j->grant, NULL, NULL);
            if (r) {
                snprintf(r->lease_key, KEY_MAX, "%s", j->lease_key);
                snprintf(r->lease_id, sizeof(r->lease_id), "%s", j->lease_id);
                if (!submit(s, r))
                    job_free(r);
            }
        }
    }
    job_free(j);
    done(ctx, o, t);
}

static void mint(shared *s, struct job *j, enum shared_mint how) {
    j->how = how;
    upstream_mint(s->up, j->grant, j->user, j->scope, minted, j);
}

/* A lookup that could not reach Redis. A refresh of a token with plenty of
 * life left waits for Redis to come back (the cache asks again later), so
 * an outage does not make every host refresh on its own; anything else is
 * minted here, as without a fleet. */
static void degrade(shared *s, struct job *j) {
    if (j->want.have_ms > __atomic_load_n(&s->plenty_ms, __ATOMIC_RELAXED)) {
        unavailable(j, "shared_unavailable", 0, 1, true);
        return;
    }
    mint(s, j, SHARED_MINT_DEGRADED);
}

/* A job that could not be sent or answered: counted, and a lookup is
 * minted here (or put off). */
static enum shared_op op_of(enum job_kind k);
static void fail_job(shared *s, struct job *j) {
    struct later l = { 0 };
    bool kept;

    if (j->kind != J_PING)
        count_op(s, op_of(j->kind), false);
    if (j->kind == J_LOOKUP) {
        degrade(s, j);
        return;
    }
    pthread_mutex_lock(&s->lock);
    kept = !s->stopping && keep_for_later_locked(s, j, &l);
    pthread_mutex_unlock(&s->lock);
    if (kept) {
        later_tell(s, &l, "shared_unavailable");
        return;
    }
    later_take_locked(j, &l);
    later_tell(s, &l, "shared_unavailable");
    job_free(j);
}

/* Whether a reload moved us to another namespace since the job was made. */
static bool ns_moved(shared *s, const struct job *j) {
    bool moved;

    pthread_rwlock_rdlock(&s->keys_lock);
    moved = strcmp(j->ns, s->ns) != 0;
    pthread_rwlock_unlock(&s->keys_lock);
    return moved;
}

static void publish(shared *s, struct job *from, token *t) {
    struct job *j;

    /* a reload to another server or client id while the mint was out: the
     * token belongs to the new namespace's hosts, not to those still on
     * the old one, who would serve it as theirs */
    if (ns_moved(s, from))
        return;
    j = job_new(s, J_PUBLISH, from->grant, NULL, NULL);
    if (!j)
        return;
    snprintf(j->ns, sizeof(j->ns), "%s", from->ns);
    snprintf(j->tok_key[0], KEY_MAX, "%s", from->tok_key[0]);
    snprintf(j->lease_key, KEY_MAX, "%s", from->lease_key);
    snprintf(j->lease_id, sizeof(j->lease_id), "%s", from->lease_id);
    snprintf(j->gen, sizeof(j->gen), "%s", from->gen[0] ? from->gen : "0");
    j->tok = token_ref(t);
    if (!submit(s, j)) {
        count_op(s, SHARED_OP_PUBLISH, false);
        job_free(j);
        return;
    }
    from->published = true;
}

/* ---- the public side: never blocks ---- */

void shared_fetch(void *source, enum oauth_grant grant, const char *user_id, const char *scope,
                  const struct cache_want *want, cache_done_fn done, void *ctx) {
    shared *s = source;
    struct job *j = job_new(s, J_LOOKUP, grant, user_id, scope);

    if (!j) {
        mint_outcome o = { .kind = MINT_UNAVAILABLE, .retry_after_s = 1 };
        snprintf(o.error, sizeof(o.error), "out_of_memory");
        done(ctx, &o, NULL);
        return;
    }
    j->want = *want;
    j->done = done;
    j->ctx = ctx;
    if (!submit(s, j))
        degrade(s, j);
}

void shared_drop(shared *s, enum oauth_grant grant, const char *user_id, const char *scope, const token *only) {
    struct job *j = job_new(s, J_DROP, grant, user_id, scope);

    if (!j)
        return;
    if (only) {
        int r;
        pthread_rwlock_rdlock(&s->keys_lock);
        r = seal_fingerprint(&s->keys, only->value, only->len, j->fp);
        pthread_rwlock_unlock(&s->keys_lock);
        if (r < 0) {
            job_free(j);
            return;
        }
    }
    if (!submit(s, j)) {
        count_op(s, SHARED_OP_DROP, false);
        job_free(j);
    }
}

void shared_revoke(shared *s, enum oauth_grant grant, const char *user_id, const char *scope, token *local,
                   revoke_done_fn done, void *userdata) {
    struct job *j = job_new(s, J_DROP, grant, user_id, scope);
    struct later l = { .local = token_ref(local), .done = done, .ctx = userdata };

    if (!j) {
        later_tell(s, &l, "out_of_memory");
        return;
    }
    j->revoke = true;
    j->local = l.local;
    j->rdone = l.done;
    j->rctx = l.ctx;
    if (!submit(s, j)) {
        count_op(s, SHARED_OP_DROP, false);
        later_take_locked(j, &l);
        job_free(j);
        later_tell(s, &l, "shared_unavailable");
    }
}

void shared_flush(shared *s) {
    struct job *j = job_new(s, J_FLUSH, OAUTH_GRANT_USER_ASSERTION, NULL, NULL);

    if (j && !submit(s, j)) {
        count_op(s, SHARED_OP_FLUSH, false);
        job_free(j);
    }
}

/* A flush that puts the generation above anything a host saw and makes the
 * events stream anew if needed: what Redis holds can no longer be told
 * apart from what someone wrote, so none of it is read. */
static void repair_flush(shared *s, const char *why) {
    uint64_t now = now_ms();
    bool due;

    pthread_mutex_lock(&s->lock);
    due = !s->repair_ms || now - s->repair_ms >= REPAIR_EVERY_MS;
    if (due) {
        s->repair_ms = now;
        s->stats.repairs++;
    }
    pthread_mutex_unlock(&s->lock);
    if (!due)
        return;
    log_warning("fleet: %s; flushing the fleet so that no host reads what Redis held before", why);
    shared_flush(s);
}

/* Tells every host which tokens were revoked, so that a value written back
 * into Redis after its revocation is never served. */
static void tell_revoked(shared *s, token *const *toks, size_t n) {
    struct job *j = job_new(s, J_REVOKED, OAUTH_GRANT_USER_ASSERTION, NULL, NULL);
    size_t len = 0;

    for (size_t i = 0; i < n; i++) {
        uint64_t fp;
        if (!toks[i])
            continue;
        fp = token_fp(toks[i]);
        deny(s, fp);
        if (j && len + 17 < sizeof(j->fps))
            len += (size_t)snprintf(j->fps + len, sizeof(j->fps) - len, "%s%016llx", len ? "," : "",
                                    (unsigned long long)fp);
    }
    if (j && (!len || !submit(s, j)))
        job_free(j);
}

/* ---- fleet flags: proof of origin and a bounded end ----
 *
 * A flag that changes what every host does (a pause, rejected credentials)
 * holds "<until>:<mac>": its end on the wall clock in ms, and a MAC with the
 * shared key over the namespace, the flag's name and that end. Someone who
 * can write to Redis but lacks the key cannot make one, and one saved and
 * written back later says it is over: no flag outlives its own end, nor
 * max_ms from now, whatever Redis's TTL says. */
static int flag_mac(shared *s, bool prev, const char *ns, const char *name, uint64_t until,
                    char mac[SEAL_FP_LEN + 1]) {
    char msg[NS_MAX + 64];
    int n = snprintf(msg, sizeof(msg), "flag%c%s%s%c%llu", 0, ns, name, 0, (unsigned long long)until);
    int r;

    pthread_rwlock_rdlock(&s->keys_lock);
    r = seal_fingerprint_with(&s->keys, prev, msg, (size_t)n, mac);
    pthread_rwlock_unlock(&s->keys_lock);
    return r;
}

static int flag_make(shared *s, const char *ns, const char *name, uint64_t ms, char out[FLAG_MAX]) {
    char mac[SEAL_FP_LEN + 1];
    uint64_t until = now_unix_ms() + ms;

    if (flag_mac(s, false, ns, name, until, mac) < 0)
        return -EIO;
    snprintf(out, FLAG_MAX, "%llu:%s", (unsigned long long)until, mac);
    return 0;
}

/* How long the flag still holds, at most ttl_ms (Redis's) and max_ms; 0
 * for one that is over, was not made with our key, or is malformed. */
static uint64_t flag_left_ms(shared *s, const char *ns, const char *name, const char *v, size_t len,
                             uint64_t ttl_ms, uint64_t max_ms) {
    char buf[FLAG_MAX], mac[SEAL_FP_LEN + 1], *end;
    unsigned long long until;
    uint64_t now = now_unix_ms(), left;

    if (len == 0 || len >= sizeof(buf))
        return 0;
    memcpy(buf, v, len);
    buf[len] = '\0';
    errno = 0;
    until = strtoull(buf, &end, 10);
    if (errno || end == buf || *end != ':' || strlen(end + 1) != SEAL_FP_LEN)
        return 0;
    /* made with our key, or (during a rotation) with the other one */
    if ((flag_mac(s, false, ns, name, until, mac) < 0 || CRYPTO_memcmp(mac, end + 1, SEAL_FP_LEN) != 0) &&
        (flag_mac(s, true, ns, name, until, mac) < 0 || CRYPTO_memcmp(mac, end + 1, SEAL_FP_LEN) != 0))
        return 0;
    if (until <= now)
        return 0;
    left = until - now;
    if (left > max_ms + FLAG_SLACK_MS) /* made by a host whose clock is far ahead: not trusted */
        return 0;
    if (left > max_ms)
        left = max_ms;
    return ttl_ms < left ? ttl_ms : left;
}

/* A refusal from Redis (NOPERM, WRONGTYPE, a script it lost): counted,
 * kept for /v1/status, and said once a minute with what to do. */
static void refused(shared *s, const char *command, const char *error) {
    uint64_t now = now_ms();
    const char *fix = strncmp(error, "NOPERM", 6) == 0
                          ? "give tokend's ACL user the command (the README's ACL line lists every one)"
                      : strncmp(error, "WRONGTYPE", 9) == 0
                          ? "a key under tokend's prefix holds another type: someone wrote it; delete it"
                          : "check Redis's log";
    bool say;

    pthread_mutex_lock(&s->lock);
    s->stats.refusals++;
    snprintf(s->stats.last_refusal, sizeof(s->stats.last_refusal), "%s: %.100s", command, error);
    say = !s->refusal_said_ms || now - s->refusal_said_ms >= 60000;
    if (say)
        s->refusal_said_ms = now;
    pthread_mutex_unlock(&s->lock);
    if (say)
        log_error("fleet: Redis refused %s: %.200s; %s", command, error, fix);
}

/* A flag in Redis that no host of this fleet made (or an old one written
 * back): ignored, counted, and said once a minute. */
static void refused_flag(shared *s, const char *name) {
    uint64_t now = now_ms();
    bool say;

    pthread_mutex_lock(&s->lock);
    s->stats.forged_flags++;
    say = !s->flag_said_ms || now - s->flag_said_ms >= 60000;
    if (say)
        s->flag_said_ms = now;
    pthread_mutex_unlock(&s->lock);
    if (say)
        log_warning("fleet: ignoring a '%s' flag in Redis that no host of this fleet made (or that is over): "
                    "someone with write access to Redis but without the shared key wrote it; check who holds "
                    "the Redis password", name);
}

/* ---- what this host learned: revoked tokens, the generation ---- */

/* A token's fingerprint for the list of revoked ones: the first 8 bytes of
 * SHA-256 of its value. Unkeyed, so hosts on different keys during a
 * rotation agree on it; it only travels sealed. */
static uint64_t token_fp(const token *t) {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned n = 0;
    uint64_t v = 0;

    EVP_Digest(t->value, t->len, md, &n, EVP_sha256(), NULL);
    for (int i = 0; i < 8; i++)
        v = v << 8 | md[i];
    return v;
}

static void deny(shared *s, uint64_t fp) {
    uint64_t until = now_ms() + (uint64_t)OAUTH_LIFETIME_MAX * MS_PER_SEC;

    pthread_mutex_lock(&s->lock);
    s->denied[s->deny_next] = fp;
    s->denied_until[s->deny_next] = until;
    s->deny_next = (s->deny_next + 1) % DENY_MAX;
    pthread_mutex_unlock(&s->lock);
}

static bool denied(shared *s, const token *t) {
    uint64_t fp = token_fp(t), now = now_ms();
    bool found = false;

    pthread_mutex_lock(&s->lock);
    for (size_t i = 0; i < DENY_MAX && !found; i++)
        found = s->denied_until[i] > now && s->denied[i] == fp;
    pthread_mutex_unlock(&s->lock);
    return found;
}

static void repair_flush(shared *s, const char *why);

/* A generation read from Redis: the highest is remembered; one set back
 * or not a number (Redis lost it, or someone wrote it) is refused and
 * mended by a flush above the highest seen. Returns whether it can be
 * trusted. */
static bool gen_ok(shared *s, const char *text, size_t len) {
    char buf[24], *end;
    unsigned long long g;
    bool back;

    if (len == 0 || len >= sizeof(buf)) {
        repair_flush(s, "the fleet's generation in Redis is not a number");
        return false;
    }
    memcpy(buf, text, len);
    buf[len] = '\0';
    errno = 0;
    g = strtoull(buf, &end, 10);
    if (errno || *end || buf[0] == '-' || buf[0] == '+' || buf[0] == ' ') {
        repair_flush(s, "the fleet's generation in Redis is not a number");
        return false;
    }
    pthread_mutex_lock(&s->lock);
    back = g < s->max_gen;
    if (!back)
        s->max_gen = g;
    pthread_mutex_unlock(&s->lock);
    if (back)
        repair_flush(s, "the fleet's generation in Redis went back (Redis lost it, or it was written)");
    return !back;
}

static void on_paused(void *userdata, uint64_t ms) {
    shared *s = userdata;
    struct job *j = job_new(s, J_PAUSE, OAUTH_GRANT_USER_ASSERTION, NULL, NULL);

    if (!j)
        return;
    j->ms = ms;
    if (!submit(s, j))
        job_free(j);
}

static void on_credentials_rejected(void *userdata) {
    shared *s = userdata;
    struct job *j = job_new(s, J_CREDS, OAUTH_GRANT_USER_ASSERTION, NULL, NULL);

    if (j && !submit(s, j))
        job_free(j);
}

/* ---- talking to Redis ---- */

#ifdef HAVE_HIREDIS_SSL
/* The name the server's certificate must carry: an IP address, or a host
 * name (also sent as SNI). */
static bool tls_expect(SSL *ssl, const char *host) {
    unsigned char ip[16];

    if (inet_pton(AF_INET, host, ip) == 1 || inet_pton(AF_INET6, host, ip) == 1)
        return X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), host) == 1;
    return SSL_set_tlsext_host_name(ssl, host) == 1 && SSL_set1_host(ssl, host) == 1;
}
#endif

static redisContext *connect_to(shared *s, const char *address, char *err, size_t err_size) {
    struct timeval tv = { .tv_sec = (time_t)(s->timeout_ms / 1000), .tv_usec = (suseconds_t)(s->timeout_ms % 1000) * 1000 };
    char host[256];
    unsigned port;
    redisContext *c;

    if (config_redis_address_parse(address, host, sizeof(host), &port) < 0) {
        snprintf(err, err_size, "%s is not a Redis address", address);
        return NULL;
    }
    c = port ? redisConnectWithTimeout(host, (int)port, tv) : redisConnectUnixWithTimeout(host, tv);
    if (!c || c->err) {
        snprintf(err, err_size, "cannot connect to %s: %s", address, c ? c->errstr : "out of memory");
        if (c)
            redisFree(c);
        return NULL;
    }
    redisSetTimeout(c, tv);
#ifdef HAVE_HIREDIS_SSL
    if (s->ssl && port) { /* Redis serves no TLS on a Unix socket: nothing to protect there */
        /* our own SSL object, so the certificate is checked against the
         * name we asked for (hiredis's own context checks only the chain) */
        SSL *ssl = SSL_new(s->ssl);
        if (!ssl || !tls_expect(ssl, host) || redisInitiateSSL(c, ssl) != REDIS_OK) {
            snprintf(err, err_size, "TLS with %s failed: %s", address, c->errstr[0] ? c->errstr : "out of memory");
            SSL_free(ssl); /* hiredis owns it only once the handshake succeeded */
            redisFree(c);
            return NULL;
        }
    }
#endif
    return c;
}

/* Why a connection failed, in words: a deadline that passed reads as
 * EAGAIN from the socket ("Resource temporarily unavailable"). */
static const char *redis_why(const redisContext *c) {
    if (!c->errstr[0] || (c->err == REDIS_ERR_IO && strcmp(c->errstr, strerror(EAGAIN)) == 0))
        return "no answer within [shared] timeout";
    return c->errstr;
}

/* A command on a fresh connection; an error reply or none fails it. */
static redisReply *command(redisContext *c, int argc, const char **argv, const size_t *lens, char *err,
                           size_t err_size) {
    redisReply *r = redisCommandArgv(c, argc, argv, lens);

    if (!r) {
        snprintf(err, err_size, "%s failed: %s", argv[0], redis_why(c));
        return NULL;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        snprintf(err, err_size, "%s refused: %.*s%s", argv[0], (int)(r->len < 200 ? r->len : 200), r->str,
                 strncmp(r->str, "NOPERM", 6) == 0 ? " (give tokend's ACL user this command: the README's ACL "
                                                      "line lists every one)"
                                                    : "");
        freeReplyObject(r);
        return NULL;
    }
    return r;
}

/* Asks the sentinels where the master is. */
static int find_master(shared *s, char *address, size_t size, char *err, size_t err_size) {
    for (size_t i = 0; i < s->n_sentinels; i++) {
        const char *argv[] = { "SENTINEL", "get-master-addr-by-name", s->master_name };
        redisContext *c = connect_to(s, s->sentinels[i], err, err_size);
        redisReply *r;

        if (!c)
            continue;
        r = command(c, 3, argv, NULL, err, err_size);
        if (r && r->type == REDIS_REPLY_ARRAY && r->elements == 2 && r->element[0]->type == REDIS_REPLY_STRING &&
            r->element[1]->type == REDIS_REPLY_STRING) {
            bool v6 = strchr(r->element[0]->str, ':') != NULL;
            snprintf(address, size, "%s%s%s:%s", v6 ? "[" : "", r->element[0]->str, v6 ? "]" : "",
                     r->element[1]->str);
            freeReplyObject(r);
            redisFree(c);
            return 0;
        }
        if (r) {
            snprintf(err, err_size, "sentinel %s does not know a master named '%s'", s->sentinels[i],
                     s->master_name);
            freeReplyObject(r);
        }
        redisFree(c);
    }
    return -EHOSTUNREACH;
}

/* Connects, authenticates, checks it is the master (with sentinels) and,
 * for the command thread, loads the scripts. */
static redisContext *redis_open(shared *s, bool load_scripts, char *address, size_t address_size, char *err,
                                size_t err_size) {
    redisContext *c;
    redisReply *r;

    if (s->n_sentinels) {
        if (find_master(s, address, address_size, err, err_size) < 0)
            return NULL;
    } else
        snprintf(address, address_size, "%s", s->redis);
    c = connect_to(s, address, err, err_size);
    if (!c)
        return NULL;
    if (s->password) {
        const char *argv[] = { "AUTH", s->username ? s->username : s->password, s->password };
        size_t lens[] = { 4, s->username ? strlen(s->username) : s->password_len, s->password_len };
        r = command(c, s->username ? 3 : 2, argv, lens, err, err_size);
        if (!r)
            goto fail;
        freeReplyObject(r);
    }
    {
        const char *argv[] = { "ROLE" };
        r = command(c, 1, argv, NULL, err, err_size);
        if (!r)
            goto fail;
        if (r->type != REDIS_REPLY_ARRAY || r->elements < 1 || r->element[0]->type != REDIS_REPLY_STRING ||
            strcmp(r->element[0]->str, "master") != 0) {
            snprintf(err, err_size, "%s is a replica, not the master", address);
            freeReplyObject(r);
            goto fail;
        }
        freeReplyObject(r);
    }
    for (int i = 0; load_scripts && i < S_COUNT; i++) {
        const char *argv[] = { "SCRIPT", "LOAD", scripts[i] };
        r = command(c, 3, argv, NULL, err, err_size);
        if (!r)
            goto fail;
        freeReplyObject(r);
    }
    {
        /* what each thread needs, tried harmlessly, so a missing permission
         * is named now rather than failing every miss later */
        char key[KEY_MAX];
        const char *run[] = { "EVALSHA", s->sha[S_RELEASE], "1", key, "-" };
        const char *time_argv[] = { "TIME" };
        pthread_rwlock_rdlock(&s->keys_lock);
        snprintf(key, sizeof(key), "%sl:permissions", s->ns);
        pthread_rwlock_unlock(&s->keys_lock);
        r = load_scripts ? command(c, 5, run, NULL, err, err_size) : command(c, 1, time_argv, NULL, err, err_size);
        if (!r)
            goto fail;
        freeReplyObject(r);
    }
    return c;
fail:
    redisFree(c);
    return NULL;
}

/* ---- the command thread ---- */

static uint64_t mono_us(void) {
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

static void latency(shared *s, uint64_t us) {
    double sec = (double)us / 1e6;
    for (int i = 0; i < SHARED_LATENCY_BUCKETS; i++)
        if (sec <= shared_latency_bounds[i]) {
            s->stats.latency_buckets[i]++;
            break;
        }
    s->stats.latency_count++;
    s->stats.latency_sum_s += sec;
}

static void lease_id(shared *s, char out[33]) {
    pthread_mutex_lock(&s->lock);
    /* always 32 hex digits: the lookup script takes any other holder as forged */
    snprintf(out, 33, "%s%016llx", s->lease_prefix, ++s->lease_seq);
    pthread_mutex_unlock(&s->lock);
}

/* Appends the job's command to the connection's output. */
static int append(shared *s, redisContext *c, struct job *j) {
    char lease_ms[24], min_life[24], ttl[24], maxlen[24] = "10000";
    unsigned char blob[SEAL_TOKEN_MAX + 64];
    char aad[KEY_MAX + 32];
    size_t blen = 0;

    snprintf(maxlen, sizeof(maxlen), "%d", STREAM_MAXLEN);
    switch (j->kind) {
    case J_LOOKUP: {
        char gen_key[KEY_MAX], pause_key[KEY_MAX];
        const char *argv[] = { "EVALSHA", s->sha[S_LOOKUP], "5", j->tok_key[0], j->tok_key[1], j->lease_key,
                               gen_key, pause_key, min_life, j->lease_id, lease_ms, j->skip_tokens ? "1" : "0",
                               "", j->skip_pause ? "1" : "0" };
        snprintf(gen_key, sizeof(gen_key), "%sgen", j->ns);
        snprintf(pause_key, sizeof(pause_key), "%spause", j->ns);
        snprintf(min_life, sizeof(min_life), "%llu", (unsigned long long)j->want.min_life_ms);
        snprintf(lease_ms, sizeof(lease_ms), "%llu", (unsigned long long)__atomic_load_n(&s->lease_ms, __ATOMIC_RELAXED));
        if (!j->lease_id[0])
            lease_id(s, j->lease_id);
        return redisAppendCommandArgv(c, 14, argv, NULL);
    }
    case J_PUBLISH: {
        char gen_key[KEY_MAX], creds_key[KEY_MAX], fp[SEAL_FP_LEN + 1];
        uint64_t left = token_remaining_ms(j->tok, now_ms());
        size_t head;
        int r;
        snprintf(gen_key, sizeof(gen_key), "%sgen", j->ns);
        snprintf(creds_key, sizeof(creds_key), "%screds", j->ns);
        snprintf(aad, sizeof(aad), "%s|%s", j->tok_key[0], j->gen);
        pthread_rwlock_rdlock(&s->keys_lock);
        r = seal_fingerprint(&s->keys, j->tok->value, j->tok->len, fp);
        head = (size_t)snprintf((char *)blob, sizeof(blob), "%s:%s:", j->gen, r == 0 ? fp : "");
        if (r == 0)
            r = seal_token(&s->keys, aad, strlen(aad), j->tok, now_unix_ms() + left, blob + head, &blen);
        pthread_rwlock_unlock(&s->keys_lock);
        if (r < 0 || left < 1000)
            return REDIS_ERR; /* nothing worth sharing */
        blen += head;
        snprintf(ttl, sizeof(ttl), "%llu", (unsigned long long)left);
        {
            const char *argv[] = { "EVALSHA", s->sha[S_PUBLISH], "4", j->tok_key[0], j->lease_key, gen_key,
                                   creds_key, (const char *)blob, ttl, j->lease_id, j->gen };
            size_t lens[11];
            for (int i = 0; i < 11; i++)
                lens[i] = i == 7 ? blen : strlen(argv[i]); /* the value is binary */
            r = redisAppendCommandArgv(c, 11, argv, lens);
        }
        explicit_bzero(blob, sizeof(blob));
        return r;
    }
    case J_RELEASE: {
        const char *argv[] = { "EVALSHA", s->sha[S_RELEASE], "1", j->lease_key, j->lease_id };
        return redisAppendCommandArgv(c, 5, argv, NULL);
    }
    case J_RENEW: {
        const char *argv[] = { "EVALSHA", s->sha[S_RENEW], "1", j->lease_key, j->lease_id, lease_ms };
        snprintf(lease_ms, sizeof(lease_ms), "%llu", (unsigned long long)__atomic_load_n(&s->lease_ms, __ATOMIC_RELAXED));
        return redisAppendCommandArgv(c, 6, argv, NULL);
    }
    case J_DROP: {
        char ev_key[KEY_MAX];
        int r;
        snprintf(ev_key, sizeof(ev_key), "%sevents", j->ns);
        pthread_rwlock_rdlock(&s->keys_lock);
        r = seal_tuple(&s->keys, ev_key, strlen(ev_key), j->grant, j->user, j->scope, blob, &blen);
        pthread_rwlock_unlock(&s->keys_lock);
        if (r < 0)
            return REDIS_ERR;
        {
            const char *argv[] = { "EVALSHA", s->sha[S_DROP], "3", j->tok_key[0], j->tok_key[1], ev_key,
                                   j->fp, (const char *)blob, maxlen };
            size_t lens[9];
            for (int i = 0; i < 9; i++)
                lens[i] = i == 7 ? blen : strlen(argv[i]); /* the sealed key is binary */
            return redisAppendCommandArgv(c, 9, argv, lens);
        }
    }
    case J_FLUSH: {
        char gen_key[KEY_MAX], ev_key[KEY_MAX], floor[24];
        const char *argv[] = { "EVALSHA", s->sha[S_FLUSH], "2", gen_key, ev_key, maxlen, floor };
        snprintf(gen_key, sizeof(gen_key), "%sgen", j->ns);
        snprintf(ev_key, sizeof(ev_key), "%sevents", j->ns);
        pthread_mutex_lock(&s->lock);
        snprintf(floor, sizeof(floor), "%llu", s->max_gen);
        pthread_mutex_unlock(&s->lock);
        return redisAppendCommandArgv(c, 7, argv, NULL);
    }
    case J_REVOKED: {
        char ev_key[KEY_MAX];
        int r;
        snprintf(ev_key, sizeof(ev_key), "%sevents", j->ns);
        /* sealed as a drop's tuple is, the fingerprints in the user id's place */
        pthread_rwlock_rdlock(&s->keys_lock);
        r = seal_tuple(&s->keys, ev_key, strlen(ev_key), OAUTH_GRANT_USER_ASSERTION, j->fps, "revoked", blob,
                       &blen);
        pthread_rwlock_unlock(&s->keys_lock);
        if (r < 0)
            return REDIS_ERR;
        {
            const char *argv[] = { "EVALSHA", s->sha[S_REVOKED], "1", ev_key, maxlen, (const char *)blob };
            size_t lens[6];
            for (int i = 0; i < 6; i++)
                lens[i] = i == 5 ? blen : strlen(argv[i]);
            return redisAppendCommandArgv(c, 6, argv, lens);
        }
    }
    case J_PAUSE:
    case J_CREDS: {
        bool pause = j->kind == J_PAUSE;
        uint64_t ms = pause ? (j->ms ? j->ms : 1) : CREDS_TTL_MS;
        char key[KEY_MAX], value[FLAG_MAX];
        const char *argv[] = { "SET", key, value, "PX", ttl };
        if (ms > PAUSE_MAX_MS)
            ms = PAUSE_MAX_MS;
        snprintf(key, sizeof(key), "%s%s", j->ns, pause ? "pause" : "creds");
        snprintf(ttl, sizeof(ttl), "%llu", (unsigned long long)ms);
        if (flag_make(s, j->ns, pause ? "pause" : "creds", ms, value) < 0)
            return REDIS_ERR;
        return redisAppendCommandArgv(c, 5, argv, NULL);
    }
    case J_PING: {
        const char *argv[] = { "PING" };
        return redisAppendCommandArgv(c, 1, argv, NULL);
    }
    }
    return REDIS_ERR;
}

static enum shared_op op_of(enum job_kind k) {
    switch (k) {
    case J_LOOKUP:
        return SHARED_OP_LOOKUP;
    case J_PUBLISH:
    case J_RELEASE:
    case J_RENEW:
        return SHARED_OP_PUBLISH;
    case J_DROP:
    case J_REVOKED:
        return SHARED_OP_DROP;
    case J_FLUSH:
        return SHARED_OP_FLUSH;
    case J_PAUSE:
    case J_CREDS:
    case J_PING:
        break;
    }
    return SHARED_OP_PAUSE;
}

static void deliver(struct job *j, token *t) {
    mint_outcome o = { .kind = MINT_OK, .http_status = 200, .via = j->waited ? MINT_VIA_SHARED_WAIT : MINT_VIA_SHARED };
    cache_done_fn done = j->done;
    void *ctx = j->ctx;

    job_free(j);
    done(ctx, &o, t); /* takes our reference */
}

/* A token another host published: "<gen>:<fp>:<sealed>". */
static token *open_value(shared *s, struct job *j, const redisReply *v, int which, const char *gen, uint64_t ttl) {
    char aad[KEY_MAX + 32];
    const char *p = v->str, *end = v->str + v->len, *c1, *c2;
    token *t = NULL;

    c1 = memchr(p, ':', (size_t)(end - p));
    c2 = c1 ? memchr(c1 + 1, ':', (size_t)(end - c1 - 1)) : NULL;
    if (!c2)
        return NULL;
    snprintf(aad, sizeof(aad), "%s|%s", j->tok_key[which - 1], gen);
    pthread_rwlock_rdlock(&s->keys_lock);
    if (seal_open_token(&s->keys, aad, strlen(aad), (const unsigned char *)c2 + 1, (size_t)(end - c2 - 1),
                        now_ms(), ttl, now_unix_ms(), &t) < 0)
        t = NULL;
    pthread_rwlock_unlock(&s->keys_lock);
    return t;
}

/* Waits on another host's lease: poll again soon, with backoff; past
 * lease_wait, mint ourselves. Returns the job to the waiting list, or
 * hands it on. */
static void lease_busy(shared *s, struct job *j, uint64_t now) {
    if (j->want.have_ms) {
        /* a refresh: another host is refreshing this key; keep serving ours
         * and adopt theirs when the cache asks again */
        unavailable(j, "shared_busy", 0, 1, true);
        return;
    }
    if (!j->waited) {
        j->waited = true;
        /* A live holder renews its lease while it mints, and its mint ends
         * by request_timeout: a waiter never takes a live lease over, and a
         * dead holder's lapses within one lease. Whoever holds it, however
         * often it changes (someone writing the lease), no miss waits past
         * the longest mint and two leases. */
        j->wait_cap_ms = now + __atomic_load_n(&s->request_timeout_ms, __ATOMIC_RELAXED) +
                         2 * __atomic_load_n(&s->lease_ms, __ATOMIC_RELAXED);
        j->poll_ms = POLL_FIRST_MS;
        pthread_mutex_lock(&s->lock);
        s->stats.lease_waits++;
        pthread_mutex_unlock(&s->lock);
    }
    if (now >= j->wait_cap_ms) {
        pthread_mutex_lock(&s->lock);
        s->stats.lease_timeouts++;
        pthread_mutex_unlock(&s->lock);
        j->lease_id[0] = '\0'; /* not ours: publish only if nobody did better */
        mint(s, j, SHARED_MINT_LEASE_TIMEOUT);
        return;
    }
    j->next_at_ms = now + j->poll_ms;
    if (j->next_at_ms > j->wait_cap_ms)
        j->next_at_ms = j->wait_cap_ms;
    j->poll_ms = j->poll_ms * 2 > POLL_MAX_MS ? POLL_MAX_MS : j->poll_ms * 2;
    pthread_mutex_lock(&s->lock);
    if (s->stopping) {
        pthread_mutex_unlock(&s->lock);
        degrade(s, j);
        return;
    }
    queue_push(&s->waiting, &j->link);
    pthread_mutex_unlock(&s->lock);
}

static bool integer_at(const redisReply *r, size_t i, long long *v) {
    if (i >= r->elements || r->element[i]->type != REDIS_REPLY_INTEGER)
        return false;
    *v = r->element[i]->integer;
    return true;
}

/* The least remaining life worth taking: what was asked for, capped at half
 * the token's lifetime as the memory cache caps it, so short-lived tokens
 * are shared too. */
static uint64_t life_needed(const token *t, uint64_t asked_ms) {
    uint64_t half = (uint64_t)t->lifetime_s * MS_PER_SEC / 2;
    return asked_ms < half ? asked_ms : half;
}

static void lookup_answered(shared *s, struct job *j, redisReply *r, uint64_t now) {
    long long code, ttl, which;
    enum shared_lookup what;

    if (r->type != REDIS_REPLY_ARRAY || r->elements != 5 || !integer_at(r, 0, &code) || !integer_at(r, 2, &ttl) ||
        !integer_at(r, 4, &which) || r->element[1]->type != REDIS_REPLY_STRING ||
        r->element[3]->type != REDIS_REPLY_STRING || code < 1 || code > 4) {
        if (r->type == REDIS_REPLY_ERROR)
            refused(s, "the lookup script", r->str);
        count_op(s, SHARED_OP_LOOKUP, false);
        degrade(s, j);
        return;
    }
    snprintf(j->gen, sizeof(j->gen), "%.*s", (int)(r->element[3]->len < 20 ? r->element[3]->len : 20),
             r->element[3]->str);
    what = code == 1 ? SHARED_FOUND : code == 2 ? SHARED_LEASED : code == 3 ? SHARED_PAUSED : SHARED_BUSY;
    if (!gen_ok(s, r->element[3]->str, r->element[3]->len) && what == SHARED_FOUND) {
        /* a value of a generation this host saw flushed (or of none): never
         * served; minted here, and Redis mended */
        pthread_mutex_lock(&s->lock);
        s->stats.stale_refused++;
        pthread_mutex_unlock(&s->lock);
        j->skip_tokens = true;
        if (!submit(s, j))
            degrade(s, j);
        return;
    }
    pthread_mutex_lock(&s->lock);
    s->stats.ops[SHARED_OP_LOOKUP][0]++;
    s->stats.lookups[what]++;
    latency(s, mono_us() - j->sent_us);
    pthread_mutex_unlock(&s->lock);

    switch (what) {
    case SHARED_FOUND: {
        token *t = which >= 1 && which <= 2 && ttl > 0 ? open_value(s, j, r->element[1], (int)which, j->gen, (uint64_t)ttl)
                                                       : NULL;
        if (t && denied(s, t)) {
            /* revoked by the fleet, and written back into Redis since */
            pthread_mutex_lock(&s->lock);
            s->stats.stale_refused++;
            pthread_mutex_unlock(&s->lock);
            t = token_unref(t);
            j->skip_tokens = true;
            if (!submit(s, j))
                degrade(s, j);
            return;
        }
        if (t && ns_moved(s, j)) {
            /* a reload to another server or client id while Redis answered:
             * the token is the old namespace's; look again in the new one */
            t = token_unref(t);
            if (job_names(s, j) < 0 || !submit(s, j))
                degrade(s, j);
            return;
        }
        if (t && token_remaining_ms(t, now_ms()) > life_needed(t, j->want.min_life_ms)) {
            deliver(j, t);
            return;
        }
        if (t) /* too little life left for this caller: ask for a lease */
            token_unref(t);
        else {
            /* moved from another key, tampered with, or sealed with a key we
             * do not have: a miss, counted, never served; ask again for a lease */
            pthread_mutex_lock(&s->lock);
            s->stats.decrypt_failures++;
            pthread_mutex_unlock(&s->lock);
        }
        j->skip_tokens = true;
        if (!submit(s, j))
            degrade(s, j);
        return;
    }
    case SHARED_LEASED:
        /* after a wait: the holder's lease lapsed (it died, or stopped) */
        hold(s, j);
        mint(s, j, j->waited ? SHARED_MINT_LEASE_TIMEOUT : SHARED_MINT_LEASED);
        return;
    case SHARED_PAUSED: { /* another host was told 429: nobody mints until it ends */
        uint64_t left = flag_left_ms(s, j->ns, "pause", r->element[1]->str, r->element[1]->len, (uint64_t)ttl,
                                     PAUSE_MAX_MS);
        if (left) {
            unavailable(j, "rate_limited", 429, (unsigned)((left + 999) / 1000), false);
            return;
        }
        /* not made by a host of this fleet, or over: no pause */
        refused_flag(s, "pause");
        j->skip_pause = true;
        if (!submit(s, j))
            degrade(s, j);
        return;
    }
    case SHARED_BUSY:
    case SHARED_LOOKUP_COUNT:
        lease_busy(s, j, now);
        return;
    }
}

/* A revocation's drop was made: what it took out of Redis, opened, is
 * revoked with this host's own copy. A value that does not open (tampered
 * with, or sealed under a key we lack) cannot be revoked by us: counted. */
static void revoke_taken(shared *s, struct job *j, const redisReply *r) {
    token *toks[3] = { j->local, NULL, NULL };
    revoke_done_fn done = j->rdone;

    for (size_t i = 0; r->type == REDIS_REPLY_ARRAY && r->elements == 4 && i < 2; i++) {
        const redisReply *v = r->element[2 * i], *ttl = r->element[2 * i + 1];
        const char *c1;
        char gen[24];

        if (v->type != REDIS_REPLY_STRING || v->len == 0 || ttl->type != REDIS_REPLY_INTEGER || ttl->integer <= 0)
            continue;
        c1 = memchr(v->str, ':', v->len);
        if (c1 && (size_t)(c1 - v->str) < sizeof(gen)) {
            snprintf(gen, sizeof(gen), "%.*s", (int)(c1 - v->str), v->str);
            toks[i + 1] = open_value(s, j, v, (int)i + 1, gen, (uint64_t)ttl->integer);
        }
        if (!toks[i + 1]) {
            pthread_mutex_lock(&s->lock);
            s->stats.decrypt_failures++;
            pthread_mutex_unlock(&s->lock);
            log_warning("fleet: a revocation took a value out of Redis that does not open with our keys; "
                        "it cannot be revoked from here");
        }
    }
    j->rdone = NULL;
    tell_revoked(s, toks, 3);
    revocations_revoke(s->rv, toks, 3, done, j->rctx);
    token_unref(toks[1]);
    token_unref(toks[2]);
}

static void answered(shared *s, struct job *j, redisReply *r, uint64_t now) {
    if (j->kind == J_LOOKUP) {
        lookup_answered(s, j, r, now);
        return;
    }
    if (j->kind == J_DROP && j->revoke && r->type != REDIS_REPLY_ERROR) {
        count_op(s, SHARED_OP_DROP, true);
        revoke_taken(s, j, r);
        job_free(j);
        return;
    }
    if (j->kind == J_PING) {
        job_free(j);
        return;
    }
    count_op(s, op_of(j->kind), r->type != REDIS_REPLY_ERROR);
    if (r->type == REDIS_REPLY_ERROR)
        refused(s, shared_op_names[op_of(j->kind)], r->str);
    job_free(j);
}

/* Redis failing is said when it starts, then at most once a minute while
 * it lasts (the breaker opens again after every failed probe); its return
 * is said by the next connection. */
static void connection_lost(shared *s, redisContext **c, const char *why) {
    uint64_t now = now_ms();
    bool opened, say, first;
    unsigned long long n;

    pthread_mutex_lock(&s->lock);
    opened = breaker_failure(&s->br, now, false);
    s->stats.up = false;
    s->stats.address[0] = '\0';
    n = ++s->failures_unsaid;
    first = !s->failing;
    say = opened && (first || now - s->failing_said_ms >= 60000);
    if (say) {
        s->failing_said_ms = now;
        s->failures_unsaid = 0;
        s->failing = true;
    }
    pthread_mutex_unlock(&s->lock);
    if (say && first)
        log_warning("fleet: Redis is failing (%s); minting on our own until it answers again", why);
    else if (say)
        log_warning("fleet: Redis is still failing (%s; %llu failed attempts in the last minute); minting on "
                    "our own until it answers again", why, n);
    if (*c) {
        redisFree(*c);
        *c = NULL;
    }
}

/* After a failure, what is queued would wait for the next attempt's
 * deadline too: it goes on without Redis now. */
static void fail_queued(shared *s) {
    struct queue q;
    struct job *j;

    pthread_mutex_lock(&s->lock);
    q = s->queue;
    s->queue = (struct queue){ 0 };
    pthread_mutex_unlock(&s->lock);
    while ((j = QUEUE_POP(&q, struct job, link)))
        fail_job(s, j);
}

/* Sends a batch in one round trip and handles the answers. */
/* A connection lost mid-batch (one slow answer under load is enough) gets
 * each job one more try, on a new connection, before it goes on without
 * Redis: one blip must not send a whole batch of misses to Instacart, nor
 * lose a publish that other hosts wait for. The scripts make a repeat
 * harmless (a lease we already hold counts as ours). */
static void retry_or_fail(shared *s, struct job *j, struct queue *again) {
    if (!j->retried && j->kind != J_PING) {
        j->retried = true;
        queue_push(again, &j->link);
    } else
        fail_job(s, j);
}

static void run_batch(shared *s, redisContext **c, struct queue *batch) {
    struct queue again = { 0 };
    struct job *sent[BATCH_MAX];
    size_t n = 0;
    struct job *j;
    uint64_t now = now_ms();

    if (!*c) {
        char err[256], address[280];
        uint64_t wait;
        bool refused;

        pthread_mutex_lock(&s->lock);
        refused = breaker_check(&s->br, now, &wait) == BREAKER_REFUSE;
        pthread_mutex_unlock(&s->lock);
        if (!refused)
            *c = redis_open(s, true, address, sizeof(address), err, sizeof(err));
        if (!*c) {
            if (!refused)
                connection_lost(s, c, err);
            pthread_mutex_lock(&s->lock);
            breaker_probe_done(&s->br);
            pthread_mutex_unlock(&s->lock);
            while ((j = QUEUE_POP(batch, struct job, link)))
                fail_job(s, j);
            fail_queued(s);
            return;
        }
        pthread_mutex_lock(&s->lock);
        if (breaker_success(&s->br) || s->stats.reconnects == 0 || s->failing)
            log_notice("fleet: sharing tokens through Redis at %s", address);
        s->failing = false;
        s->failures_unsaid = 0;
        breaker_probe_done(&s->br);
        s->stats.up = true;
        s->stats.reconnects++;
        snprintf(s->stats.address, sizeof(s->stats.address), "%s", address);
        if (s->pending.n) { /* drops and flushes from while Redis was away go first */
            queue_prepend(&s->queue, &s->pending);
            s->stats.pending = 0;
            pthread_cond_signal(&s->cond);
        }
        pthread_mutex_unlock(&s->lock);
    }
    while ((j = QUEUE_POP(batch, struct job, link))) {
        if (append(s, *c, j) != REDIS_OK) {
            if ((*c)->err) {
                queue_push(batch, &j->link); /* failed with the rest below */
                break;
            }
            if (j->kind == J_LOOKUP)
                fail_job(s, j);
            else { /* nothing to send (sealing failed): no use keeping it */
                count_op(s, op_of(j->kind), false);
                job_free(j);
            }
            continue;
        }
        j->sent_us = mono_us();
        sent[n++] = j;
    }
    for (size_t i = 0; i < n; i++) {
        redisReply *r = NULL;
        if (!(*c)->err && redisGetReply(*c, (void **)&r) == REDIS_OK && r) {
            if (r->type == REDIS_REPLY_ERROR &&
                (strncmp(r->str, "READONLY", 8) == 0 || strncmp(r->str, "NOSCRIPT", 8) == 0)) {
                /* a failover made our master a replica, or a new Redis lost
                 * the scripts: find the master again and reload them */
                freeReplyObject(r);
                r = NULL;
                (*c)->err = REDIS_ERR_OTHER;
                snprintf((*c)->errstr, sizeof((*c)->errstr), "the master changed");
            } else {
                answered(s, sent[i], r, now_ms());
                freeReplyObject(r);
                continue;
            }
        }
        {
            char why[160];
            snprintf(why, sizeof(why), "%s", redis_why(*c));
            connection_lost(s, c, why);
        }
        for (; i < n; i++)
            retry_or_fail(s, sent[i], &again);
        break;
    }
    while ((j = QUEUE_POP(batch, struct job, link)))
        retry_or_fail(s, j, &again);
    if (again.n) { /* first in line for the next connection */
        pthread_mutex_lock(&s->lock);
        queue_prepend(&s->queue, &again);
        pthread_mutex_unlock(&s->lock);
    }
    if (*c && n) {
        pthread_mutex_lock(&s->lock);
        breaker_success(&s->br);
        pthread_mutex_unlock(&s->lock);
    }
}

/* Queues a renewal of each held lease that is due; returns when the next
 * one falls due (or next, if sooner). Called and returns with the lock
 * held; drops it to make the jobs. */
static uint64_t due_renewals(shared *s, uint64_t now, uint64_t next) {
    uint64_t every = __atomic_load_n(&s->lease_ms, __ATOMIC_RELAXED) / 3;
    struct {
        char key[KEY_MAX];
        char id[33];
    } due[16];
    size_t n = 0;

    for (struct held *h = s->held; h; h = h->next) {
        if (h->next_ms <= now && n < ARRAY_SIZE(due)) {
            memcpy(due[n].key, h->key, sizeof(h->key));
            memcpy(due[n].id, h->id, sizeof(h->id));
            n++;
            h->next_ms = now + every;
        }
        if (h->next_ms < next)
            next = h->next_ms;
    }
    if (!n)
        return next;
    pthread_mutex_unlock(&s->lock);
    for (size_t i = 0; i < n; i++) {
        struct job *j = job_new(s, J_RENEW, OAUTH_GRANT_USER_ASSERTION, NULL, NULL);
        if (!j)
            continue;
        memcpy(j->lease_key, due[i].key, sizeof(j->lease_key));
        memcpy(j->lease_id, due[i].id, sizeof(j->lease_id));
        pthread_mutex_lock(&s->lock);
        queue_push(&s->queue, &j->link);
        pthread_mutex_unlock(&s->lock);
    }
    explicit_bzero(due, sizeof(due));
    pthread_mutex_lock(&s->lock);
    return next;
}

static void *command_thread(void *arg) {
    shared *s = arg;
    redisContext *c = NULL;
    uint64_t last_sent = 0;

    pthread_mutex_lock(&s->lock);
    for (;;) {
        struct queue batch = { 0 }, keep = { 0 };
        uint64_t now = now_ms(), next = now + 1000;
        struct job *j;

        if (s->stopping)
            break;
        if (now - last_sent >= 1000 && !s->queue.n) {
            /* idle: a PING keeps the state we show true, and connects
             * before the first miss needs it */
            pthread_mutex_unlock(&s->lock);
            j = job_new(s, J_PING, OAUTH_GRANT_USER_ASSERTION, NULL, NULL);
            pthread_mutex_lock(&s->lock);
            if (j)
                queue_push(&s->queue, &j->link);
        }
        next = due_renewals(s, now, next);
        /* waiters whose poll is due go first */
        while ((j = QUEUE_POP(&s->waiting, struct job, link))) {
            if (j->next_at_ms <= now && batch.n < BATCH_MAX)
                queue_push(&batch, &j->link);
            else {
                if (j->next_at_ms < next)
                    next = j->next_at_ms;
                queue_push(&keep, &j->link);
            }
        }
        s->waiting = keep;
        while (batch.n < BATCH_MAX && (j = QUEUE_POP(&s->queue, struct job, link)))
            queue_push(&batch, &j->link);
        if (!batch.n) {
            struct timespec ts;
            if (s->queue.n)
                continue;
            clock_gettime(CLOCK_MONOTONIC, &ts);
            {
                uint64_t wait = next > now ? next - now : 0;
                ts.tv_sec += (time_t)(wait / 1000);
                ts.tv_nsec += (long)(wait % 1000) * 1000000L;
                if (ts.tv_nsec >= 1000000000L)
                    ts.tv_sec++, ts.tv_nsec -= 1000000000L;
            }
            pthread_cond_timedwait(&s->cond, &s->lock, &ts);
            continue;
        }
        pthread_mutex_unlock(&s->lock);
        last_sent = now;
        run_batch(s, &c, &batch);
        pthread_mutex_lock(&s->lock);
    }
    pthread_mutex_unlock(&s->lock);
    if (c)
        redisFree(c);
    return NULL;
}

/* ---- the event thread: drops and flushes from the other hosts ---- */

struct stream_id {
    unsigned long long ms, seq;
};

static bool parse_id(const char *s, size_t len, struct stream_id *ret) {
    char buf[48];
    if (len == 0 || len >= sizeof(buf))
        return false;
    memcpy(buf, s, len);
    buf[len] = '\0';
    return sscanf(buf, "%llu-%llu", &ret->ms, &ret->seq) == 2;
}

static int id_cmp(struct stream_id a, struct stream_id b) {
    if (a.ms != b.ms)
        return a.ms < b.ms ? -1 : 1;
    return a.seq < b.seq ? -1 : a.seq > b.seq ? 1 : 0;
}

struct reader;
static void local_flush(struct reader *rd, const char *why);

struct reader {
    shared *s;
    redisContext *c;
    unsigned ns_serial;
    char ns[NS_MAX];
    char last[48];     /* the last event applied, "" before the first connection */
    char gen[24];      /* the generation last seen, "" before */
    unsigned long long redis_ms; /* Redis's clock at the last heartbeat, 0 before */
};

/* The events stream cannot be trusted to hold what this host missed: its
 * tokens go (each costs a mint), and the event is counted. */
static void stream_reset(struct reader *rd, const char *why) {
    pthread_mutex_lock(&rd->s->lock);
    rd->s->stats.stream_resets++;
    pthread_mutex_unlock(&rd->s->lock);
    local_flush(rd, why);
}

static void local_flush(struct reader *rd, const char *why) {
    size_t n = rd->s->cache ? cache_flush(rd->s->cache) : 0;

    pthread_mutex_lock(&rd->s->lock);
    rd->s->stats.local_flushes++;
    pthread_mutex_unlock(&rd->s->lock);
    log_notice("fleet: dropped this host's %zu cached tokens: %s", n, why);
}

/* After a (re)connection: events missed meanwhile are read from where we
 * left off, unless the stream no longer has them; then our tokens go. */
static int catch_up(struct reader *rd) {
    char key[KEY_MAX];
    const char *argv[] = { "XINFO", "STREAM", key };
    struct stream_id last = { 0 }, gone = { 0 }, newest = { 0 }, first = { 0 };
    bool have_gone = false, have_newest = false, have_first = false, restored = rd->s->resume_age_ms != 0;
    redisReply *r;

    snprintf(key, sizeof(key), "%sevents", rd->ns);
    r = redisCommandArgv(rd->c, 3, argv, NULL);
    if (!r)
        return -EIO;
    if (r->type == REDIS_REPLY_ERROR) {
        /* no stream: a new namespace, or a Redis that lost everything; a
         * host back from a restart cannot tell which drops it missed */
        if (strncmp(r->str, "NOPERM", 6) == 0) {
            refused(rd->s, "XINFO STREAM", r->str);
            freeReplyObject(r);
            return -EACCES;
        }
        if ((rd->last[0] && strcmp(rd->last, "0-0") != 0) || restored)
            stream_reset(rd, "Redis lost the fleet's events (restarted without them?)");
        rd->s->resume_age_ms = 0;
        freeReplyObject(r);
        /* made now, so that a stream lost later (Redis restarted without
         * it) is told apart from one that never had an event: its first
         * entry then comes after what a host last read */
        {
            char maxlen[24];
            const char *xadd[] = { "XADD", key, "MAXLEN", "~", maxlen, "*", "h", "1" };
            snprintf(maxlen, sizeof(maxlen), "%d", STREAM_MAXLEN);
            r = redisCommandArgv(rd->c, 8, xadd, NULL);
            if (!r)
                return -EIO;
            if (r->type == REDIS_REPLY_STRING)
                snprintf(rd->last, sizeof(rd->last), "%.*s", (int)(r->len < 40 ? r->len : 40), r->str);
            else {
                if (r->type == REDIS_REPLY_ERROR)
                    refused(rd->s, "XADD", r->str);
                snprintf(rd->last, sizeof(rd->last), "0-0");
            }
            freeReplyObject(r);
        }
        return 0;
    }
    for (size_t i = 0; r->type == REDIS_REPLY_ARRAY && i + 1 < r->elements; i += 2) {
        redisReply *k = r->element[i], *v = r->element[i + 1];
        if (k->type != REDIS_REPLY_STRING && k->type != REDIS_REPLY_STATUS)
            continue;
        if (strcmp(k->str, "last-generated-id") == 0 && v->type == REDIS_REPLY_STRING)
            have_newest = parse_id(v->str, v->len, &newest);
        else if (strcmp(k->str, "max-deleted-entry-id") == 0 && v->type == REDIS_REPLY_STRING)
            have_gone = parse_id(v->str, v->len, &gone);
        else if (strcmp(k->str, "recorded-first-entry-id") == 0 && v->type == REDIS_REPLY_STRING)
            have_first = parse_id(v->str, v->len, &first);
    }
    if (!rd->last[0] && rd->s->resume_age_ms) {
        /* tokens brought back over a restart: replay from shortly before the
         * image was written, on Redis's clock (ours and its never compared) */
        const char *targv[] = { "TIME" };
        redisReply *t = redisCommandArgv(rd->c, 1, targv, NULL);
        unsigned long long now_ms_redis = 0, back = rd->s->resume_age_ms + RESUME_MARGIN_MS;
        if (!t || t->type != REDIS_REPLY_ARRAY || t->elements != 2 || t->element[0]->type != REDIS_REPLY_STRING) {
            if (t)
                freeReplyObject(t);
            freeReplyObject(r);
            return -EIO;
        }
        now_ms_redis = strtoull(t->element[0]->str, NULL, 10) * 1000 + strtoull(t->element[1]->str, NULL, 10) / 1000;
        freeReplyObject(t);
        struct stream_id image = { .ms = now_ms_redis > rd->s->resume_age_ms ? now_ms_redis - rd->s->resume_age_ms
                                                                            : 0 };
        rd->s->resume_age_ms = 0; /* once */
        snprintf(rd->last, sizeof(rd->last), "%llu-0", now_ms_redis > back ? now_ms_redis - back : 0);
        /* trimmed past where the replay starts, or first made after the
         * image was written (so what came between may be lost) */
        if (parse_id(rd->last, strlen(rd->last), &last) &&
            ((have_gone && id_cmp(gone, last) > 0) || (have_first && id_cmp(first, image) > 0)))
            stream_reset(rd, "the fleet's events from before this restart are gone");
    } else if (!rd->last[0]) {
        /* the first connection: what came before is not ours to apply */
        snprintf(rd->last, sizeof(rd->last), "%llu-%llu", newest.ms, newest.seq);
    } else if (parse_id(rd->last, strlen(rd->last), &last)) {
        const char *why = NULL;
        if (have_newest && id_cmp(newest, last) < 0)
            why = "the fleet's events stream was made anew or rewound behind this host";
        else if (have_gone && id_cmp(gone, last) > 0)
            why = "events were missed while Redis was out of reach";
        else if (have_first && strcmp(rd->last, "0-0") != 0 && id_cmp(first, last) > 0)
            why = "the fleet's events stream was made anew since this host last read it";
        if (why) {
            stream_reset(rd, why);
            if (have_newest)
                snprintf(rd->last, sizeof(rd->last), "%llu-%llu", newest.ms, newest.seq);
        }
    }
    freeReplyObject(r);
    return 0;
}

/* Whether a flag read with GET and PTTL holds now; a forged one is said. */
static bool flag_holds(shared *s, const char *ns, const char *name, const redisReply *v, const redisReply *ttl,
                       uint64_t max_ms) {
    if (v->type != REDIS_REPLY_STRING)
        return false; /* none */
    if (ttl->type == REDIS_REPLY_INTEGER && ttl->integer > 0 &&
        flag_left_ms(s, ns, name, v->str, v->len, (uint64_t)ttl->integer, max_ms))
        return true;
    refused_flag(s, name);
    return false;
}

/* The fleet's state: the generation, a pause, rejected credentials. */
static int heartbeat(struct reader *rd) {
    shared *s = rd->s;
    char gen_key[KEY_MAX], pause_key[KEY_MAX], creds_key[KEY_MAX];
    const char *argv[][2] = { { "GET", gen_key }, { "GET", pause_key }, { "PTTL", pause_key },
                              { "GET", creds_key }, { "PTTL", creds_key }, { "TIME", NULL } };
    redisReply *r[ARRAY_SIZE(argv)] = { 0 };
    int ret = 0;

    snprintf(gen_key, sizeof(gen_key), "%sgen", rd->ns);
    snprintf(pause_key, sizeof(pause_key), "%spause", rd->ns);
    snprintf(creds_key, sizeof(creds_key), "%screds", rd->ns);
    for (size_t i = 0; i < ARRAY_SIZE(argv); i++)
        redisAppendCommandArgv(rd->c, argv[i][1] ? 2 : 1, argv[i], NULL);
    for (size_t i = 0; i < ARRAY_SIZE(argv); i++)
        if (redisGetReply(rd->c, (void **)&r[i]) != REDIS_OK || !r[i] || r[i]->type == REDIS_REPLY_ERROR)
            ret = -EIO;
    if (ret == 0) {
        char gen[24];
        snprintf(gen, sizeof(gen), "%.*s", r[0]->type == REDIS_REPLY_STRING ? (int)(r[0]->len < 20 ? r[0]->len : 20) : 1,
                 r[0]->type == REDIS_REPLY_STRING ? r[0]->str : "0");
        if (r[0]->type == REDIS_REPLY_STRING)
            gen_ok(s, r[0]->str, r[0]->len);
        if (rd->gen[0] && strcmp(gen, rd->gen) != 0)
            local_flush(rd, "the fleet was flushed");
        snprintf(rd->gen, sizeof(rd->gen), "%s", gen);
        if (r[5]->type == REDIS_REPLY_ARRAY && r[5]->elements == 2 && r[5]->element[0]->type == REDIS_REPLY_STRING &&
            r[5]->element[1]->type == REDIS_REPLY_STRING)
            rd->redis_ms = strtoull(r[5]->element[0]->str, NULL, 10) * 1000 +
                           strtoull(r[5]->element[1]->str, NULL, 10) / 1000;
        bool paused = flag_holds(s, rd->ns, "pause", r[1], r[2], PAUSE_MAX_MS);
        bool creds = flag_holds(s, rd->ns, "creds", r[3], r[4], CREDS_TTL_MS);
        pthread_mutex_lock(&s->lock);
        s->stats.fleet_paused = paused;
        s->stats.fleet_credentials_rejected = creds;
        pthread_mutex_unlock(&s->lock);
    }
    for (size_t i = 0; i < ARRAY_SIZE(r); i++)
        if (r[i])
            freeReplyObject(r[i]);
    return ret;
}

static void apply_event(struct reader *rd, redisReply *fields) {
    shared *s = rd->s;

    for (size_t i = 0; fields->type == REDIS_REPLY_ARRAY && i + 1 < fields->elements; i += 2) {
        redisReply *k = fields->element[i], *v = fields->element[i + 1];
        if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING)
            continue;
        if (strcmp(k->str, "d") == 0) {
            char key[KEY_MAX], user[OAUTH_USER_ID_MAX + 1], scope[OAUTH_SCOPE_MAX + 1];
            enum oauth_grant grant;
            int r;
            snprintf(key, sizeof(key), "%sevents", rd->ns);
            pthread_rwlock_rdlock(&s->keys_lock);
            r = seal_open_tuple(&s->keys, key, strlen(key), (const unsigned char *)v->str, v->len, &grant, user,
                                scope);
            pthread_rwlock_unlock(&s->keys_lock);
            if (r < 0) {
                pthread_mutex_lock(&s->lock);
                s->stats.decrypt_failures++;
                pthread_mutex_unlock(&s->lock);
                continue;
            }
            if (s->cache)
                cache_drop(s->cache, grant, user, scope, NULL);
            explicit_bzero(user, sizeof(user));
        } else if (strcmp(k->str, "f") == 0) {
            size_t n = s->cache ? cache_flush(s->cache) : 0;
            snprintf(rd->gen, sizeof(rd->gen), "%.*s", (int)(v->len < 20 ? v->len : 20), v->str);
            gen_ok(s, v->str, v->len); /* the new generation is the highest seen */
            log_notice("fleet: flushed from another host: %zu cached tokens dropped here", n);
        } else if (strcmp(k->str, "r") == 0) {
            char key[KEY_MAX], fps[OAUTH_USER_ID_MAX + 1], scope[OAUTH_SCOPE_MAX + 1];
            enum oauth_grant grant;
            int r;
            snprintf(key, sizeof(key), "%sevents", rd->ns);
            pthread_rwlock_rdlock(&s->keys_lock);
            r = seal_open_tuple(&s->keys, key, strlen(key), (const unsigned char *)v->str, v->len, &grant, fps,
                                scope);
            pthread_rwlock_unlock(&s->keys_lock);
            if (r < 0 || strcmp(scope, "revoked") != 0) {
                pthread_mutex_lock(&s->lock);
                s->stats.decrypt_failures++;
                pthread_mutex_unlock(&s->lock);
                continue;
            }
            for (char *p = fps; *p;) {
                char *end;
                unsigned long long fp = strtoull(p, &end, 16);
                if (end != p + 16)
                    break;
                deny(s, fp);
                p = *end == ',' ? end + 1 : end;
            }
        } else
            continue;
        pthread_mutex_lock(&s->lock);
        s->stats.events_applied++;
        pthread_mutex_unlock(&s->lock);
    }
}

/* One XREAD: blocks up to EVENT_BLOCK_MS for events after the last one. */
static int read_events(struct reader *rd) {
    char key[KEY_MAX], block[16];
    const char *argv[] = { "XREAD", "COUNT", "128", "BLOCK", block, "STREAMS", key, rd->last };
    redisReply *r;

    snprintf(key, sizeof(key), "%sevents", rd->ns);
    snprintf(block, sizeof(block), "%d", EVENT_BLOCK_MS);
    r = redisCommandArgv(rd->c, 8, argv, NULL);
    if (!r)
        return -EIO;
    if (r->type == REDIS_REPLY_ERROR) {
        freeReplyObject(r);
        return -EIO;
    }
    /* [[key, [[id, [field, value, ...]], ...]]], or nil after the block */
    if (r->type == REDIS_REPLY_ARRAY && r->elements == 1 && r->element[0]->type == REDIS_REPLY_ARRAY &&
        r->element[0]->elements == 2 && r->element[0]->element[1]->type == REDIS_REPLY_ARRAY) {
        redisReply *entries = r->element[0]->element[1];
        for (size_t i = 0; i < entries->elements; i++) {
            redisReply *e = entries->element[i];
            struct stream_id id;
            if (e->type != REDIS_REPLY_ARRAY || e->elements != 2 || e->element[0]->type != REDIS_REPLY_STRING)
                continue;
            if (rd->redis_ms && parse_id(e->element[0]->str, e->element[0]->len, &id) &&
                id.ms > rd->redis_ms + FUTURE_MAX_MS) {
                /* no XADD '*' made it: someone pushed the stream's top into
                 * the future, so that hosts skip every event after it. The
                 * stream is made anew (with a flush); we read on from now. */
                stream_reset(rd, "the fleet's events stream holds an event from the future (written by hand)");
                repair_flush(rd->s, "the fleet's events stream was poisoned");
                snprintf(rd->last, sizeof(rd->last), "%llu-0", rd->redis_ms);
                freeReplyObject(r);
                return 1;
            }
            apply_event(rd, e->element[1]);
            snprintf(rd->last, sizeof(rd->last), "%.*s", (int)(e->element[0]->len < 40 ? e->element[0]->len : 40),
                     e->element[0]->str);
        }
    }
    freeReplyObject(r);
    return 0;
}

static void reader_close(struct reader *rd) {
    pthread_mutex_lock(&rd->s->lock);
    rd->s->ev_fd = -1;
    /* what the fleet said is unknown now: not shown as if still true
     * (a host must not stay unready on an old rejection while Redis is down) */
    rd->s->stats.fleet_paused = false;
    rd->s->stats.fleet_credentials_rejected = false;
    rd->s->stats.events_ok = false;
    pthread_mutex_unlock(&rd->s->lock);
    if (rd->c)
        redisFree(rd->c);
    rd->c = NULL;
}

static void *event_thread(void *arg) {
    struct reader rd = { .s = arg };
    shared *s = rd.s;
    unsigned failures = 0;

    for (;;) {
        bool stop;
        unsigned serial;

        pthread_mutex_lock(&s->lock);
        stop = s->stopping;
        pthread_mutex_unlock(&s->lock);
        if (stop)
            break;
        pthread_rwlock_rdlock(&s->keys_lock);
        serial = s->ns_serial;
        if (serial != rd.ns_serial || !rd.ns[0]) {
            /* new credentials: another namespace, whose events start now */
            snprintf(rd.ns, sizeof(rd.ns), "%s", s->ns);
            rd.ns_serial = serial;
            rd.last[0] = rd.gen[0] = '\0';
            pthread_rwlock_unlock(&s->keys_lock);
            reader_close(&rd);
        } else
            pthread_rwlock_unlock(&s->keys_lock);
        if (!rd.c) {
            char err[256] = "", address[280];
            rd.c = redis_open(s, false, address, sizeof(address), err, sizeof(err));
            if (!rd.c) {
                uint64_t now = now_ms();
                bool say;
                pthread_mutex_lock(&s->lock);
                say = !s->events_said_ms || now - s->events_said_ms >= 60000;
                if (say)
                    s->events_said_ms = now;
                pthread_mutex_unlock(&s->lock);
                if (say)
                    log_warning("fleet: cannot read the fleet's drops and flushes (%s); this host shows itself "
                                "degraded until it can", err[0] ? err : "no connection");
            }
            if (rd.c) {
                struct timeval tv = { .tv_sec = (time_t)((EVENT_BLOCK_MS + s->timeout_ms + 250) / 1000),
                                      .tv_usec = (suseconds_t)((EVENT_BLOCK_MS + s->timeout_ms + 250) % 1000) * 1000 };
                redisSetTimeout(rd.c, tv);
                pthread_mutex_lock(&s->lock);
                s->ev_fd = rd.c->fd;
                stop = s->stopping;
                pthread_mutex_unlock(&s->lock);
                if (stop || catch_up(&rd) < 0)
                    reader_close(&rd);
                else {
                    pthread_mutex_lock(&s->lock);
                    s->stats.events_ok = true;
                    pthread_mutex_unlock(&s->lock);
                }
            }
            if (!rd.c) {
                /* backoff, interrupted by a stop */
                struct timespec ts;
                uint64_t wait = failures < 3 ? 50ULL << failures : 250; /* soon: missed drops wait on it */
                failures++;
                clock_gettime(CLOCK_MONOTONIC, &ts);
                ts.tv_sec += (time_t)(wait / 1000);
                ts.tv_nsec += (long)(wait % 1000) * 1000000L;
                if (ts.tv_nsec >= 1000000000L)
                    ts.tv_sec++, ts.tv_nsec -= 1000000000L;
                pthread_mutex_lock(&s->lock);
                if (!s->stopping)
                    pthread_cond_timedwait(&s->ev_cond, &s->lock, &ts);
                pthread_mutex_unlock(&s->lock);
                continue;
            }
            failures = 0;
        }
        {
            int r = heartbeat(&rd);
            if (r == 0)
                r = read_events(&rd);
            if (r < 0)
                reader_close(&rd);
            else if (r > 0) { /* a poisoned stream being mended: not in a tight loop */
                struct timespec ts;
                clock_gettime(CLOCK_MONOTONIC, &ts);
                ts.tv_nsec += 200 * 1000000L;
                if (ts.tv_nsec >= 1000000000L)
                    ts.tv_sec++, ts.tv_nsec -= 1000000000L;
                pthread_mutex_lock(&s->lock);
                if (!s->stopping)
                    pthread_cond_timedwait(&s->ev_cond, &s->lock, &ts);
                pthread_mutex_unlock(&s->lock);
            }
        }
    }
    reader_close(&rd);
    return NULL;
}

/* ---- life cycle ---- */

static int set_namespace(shared *s, const config *cfg) {
    char ns[SEAL_NS_LEN + 1];
    seal_keys k;
    int r;

    r = seal_keys_derive(cfg->shared_key, cfg->has_shared_previous_key ? cfg->shared_previous_key : NULL, &k);
    if (r == 0)
        r = seal_namespace(cfg->base_url, cfg->client_id, ns);
    if (r < 0) {
        seal_keys_wipe(&k);
        return r;
    }
    pthread_rwlock_wrlock(&s->keys_lock);
    seal_keys_wipe(&s->keys);
    s->keys = k;
    /* the prefix is the one at start (the Redis ACL names it): a reload
     * changes only the namespace, with base_url or client_id */
    if (strncmp(s->ns + strlen(s->prefix) + 1, ns, SEAL_NS_LEN) != 0 || !s->ns[0]) {
        snprintf(s->ns, sizeof(s->ns), "%s:%s:", s->prefix, ns);
        s->ns_serial++;
    }
    pthread_rwlock_unlock(&s->keys_lock);
    seal_keys_wipe(&k);
    return 0;
}

/* A lease's life: lease_wait, at least half a second (renewed three times
 * within it). */
static uint64_t lease_ms_of(const config *cfg) {
    return cfg->shared_lease_wait_ms < 500 ? 500 : cfg->shared_lease_wait_ms;
}

static char *dup_or_null(const char *s) {
    return s ? strdup(s) : NULL;
}

int shared_new(const config *cfg, upstream *up, revocations *rv, shared **ret) {
    unsigned char rnd[8]; /* 16 hex digits of a 32-digit lease id */
    shared *s;

    s = calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    pthread_rwlock_init(&s->keys_lock, NULL);
    pthread_mutex_init(&s->lock, NULL);
    {
        pthread_condattr_t ca;
        pthread_condattr_init(&ca);
        pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
        pthread_cond_init(&s->cond, &ca);
        pthread_cond_init(&s->ev_cond, &ca);
        pthread_condattr_destroy(&ca);
    }
    s->up = up;
    s->rv = rv;
    s->ev_fd = -1;
    s->timeout_ms = cfg->shared_timeout_ms;
    s->lease_wait_ms = cfg->shared_lease_wait_ms;
    /* A lease lapses when its holder stops renewing it (it died): after
     * lease_wait. It is renewed while the mint runs, however long Instacart
     * takes (oauth2-proxy's fixed, unrenewed 2 s lock let a second replica
     * in on a slow refresh). */
    s->lease_ms = lease_ms_of(cfg);
    s->request_timeout_ms = cfg->request_timeout_ms;
    s->plenty_ms = 2 * cfg->min_ttl_ms;
    breaker_init(&s->br, BREAKER_FAILURES, BREAKER_COOLDOWN_MS);
    s->redis = dup_or_null(cfg->shared_redis);
    s->master_name = dup_or_null(cfg->shared_master_name);
    s->username = dup_or_null(cfg->shared_username);
    s->tls = cfg->shared_tls;
    s->tls_ca_file = dup_or_null(cfg->shared_tls_ca_file);
    if (cfg->shared_password) {
        s->password = malloc(cfg->shared_password_len + 1);
        if (s->password) {
            memcpy(s->password, cfg->shared_password, cfg->shared_password_len + 1);
            s->password_len = cfg->shared_password_len;
        }
    }
    s->prefix = strdup(cfg->shared_prefix);
    if (cfg->n_shared_sentinels) {
        s->sentinels = calloc(cfg->n_shared_sentinels, sizeof(char *));
        for (size_t i = 0; s->sentinels && i < cfg->n_shared_sentinels; i++)
            if ((s->sentinels[i] = strdup(cfg->shared_sentinels[i])))
                s->n_sentinels++;
    }
    /* a copy that failed would change what we do (a NULL user name makes
     * AUTH use the default user): no start on half a configuration */
    if (!s->prefix || (cfg->shared_redis && !s->redis) || (cfg->shared_master_name && !s->master_name) ||
        (cfg->shared_username && !s->username) || (cfg->shared_tls_ca_file && !s->tls_ca_file) ||
        (cfg->shared_password && !s->password) || s->n_sentinels != cfg->n_shared_sentinels) {
        shared_free(s);
        return -ENOMEM;
    }
    for (int i = 0; i < S_COUNT; i++)
        sha1_hex(scripts[i], s->sha[i]);
    if (RAND_bytes(rnd, sizeof(rnd)) != 1) {
        shared_free(s);
        return -EIO;
    }
    for (size_t i = 0; i < sizeof(rnd); i++)
        snprintf(s->lease_prefix + 2 * i, 3, "%02x", rnd[i]);
    if ((cfg->shared_redis && !s->redis) || (cfg->n_shared_sentinels && s->n_sentinels != cfg->n_shared_sentinels) ||
        (cfg->shared_password && !s->password) || set_namespace(s, cfg) < 0) {
        shared_free(s);
        return -ENOMEM;
    }
#ifdef HAVE_HIREDIS_SSL
    if (s->tls) {
        redisInitOpenSSL();
        s->ssl = SSL_CTX_new(TLS_client_method());
        if (!s->ssl || SSL_CTX_set_min_proto_version(s->ssl, TLS1_2_VERSION) != 1 ||
            (s->tls_ca_file ? SSL_CTX_load_verify_locations(s->ssl, s->tls_ca_file, NULL)
                            : SSL_CTX_set_default_verify_paths(s->ssl)) != 1) {
            log_error("fleet: cannot set up TLS for Redis: %s%s", s->tls_ca_file ? "cannot load tls_ca_file " : "",
                      s->tls_ca_file ? s->tls_ca_file : "no system trust store");
            shared_free(s);
            return -EINVAL;
        }
        SSL_CTX_set_verify(s->ssl, SSL_VERIFY_PEER, NULL);
    }
#endif
    *ret = s;
    return 0;
}

void shared_resume(shared *s, uint64_t age_ms) {
    s->resume_age_ms = age_ms ? age_ms : 1;
}

void shared_attach(shared *s, cache *c) {
    s->cache = c;
}

int shared_start(shared *s) {
    struct upstream_events ev = { .paused = on_paused, .credentials_rejected = on_credentials_rejected, .userdata = s };
    int r;

    upstream_set_events(s->up, &ev);
    r = pthread_create(&s->cmd_thread, NULL, command_thread, s);
    if (r)
        return -r;
    r = pthread_create(&s->ev_thread, NULL, event_thread, s);
    if (r) {
        pthread_mutex_lock(&s->lock);
        s->stopping = true;
        pthread_cond_broadcast(&s->cond);
        pthread_mutex_unlock(&s->lock);
        pthread_join(s->cmd_thread, NULL);
        return -r;
    }
    s->started = true;
    return 0;
}

static bool differ(const char *a, const char *b) {
    return (a || b) && (!a || !b || strcmp(a, b) != 0);
}

bool shared_reload(shared *s, const config *cfg) {
    bool restart = differ(s->redis, cfg->shared_redis) || differ(s->master_name, cfg->shared_master_name) ||
                   differ(s->username, cfg->shared_username) || s->tls != cfg->shared_tls ||
                   s->n_sentinels != cfg->n_shared_sentinels;

    for (size_t i = 0; !restart && i < s->n_sentinels; i++)
        restart = strcmp(s->sentinels[i], cfg->shared_sentinels[i]) != 0;
    if (set_namespace(s, cfg) < 0)
        log_error("fleet: out of memory deriving the new shared keys; keeping the old ones");
    /* request_timeout and min_ttl need a restart (the table says so): the
     * lease keeps fitting the mint the upstream really makes */
    __atomic_store_n(&s->lease_wait_ms, cfg->shared_lease_wait_ms, __ATOMIC_RELAXED);
    __atomic_store_n(&s->lease_ms, lease_ms_of(cfg), __ATOMIC_RELAXED);
    return restart;
}

void shared_get_stats(shared *s, struct shared_stats *ret) {
    pthread_mutex_lock(&s->lock);
    *ret = s->stats;

    ret->breaker = breaker_state_at(&s->br, now_ms());
    /* a host that cannot hear of the fleet's drops is not sharing safely */
    ret->up = s->stats.up && s->stats.events_ok && ret->breaker == BREAKER_CLOSED;
    pthread_mutex_unlock(&s->lock);
}

void shared_stop(shared *s) {
    struct queue left = { 0 };
    struct job *j;

    if (!s)
        return;
    pthread_mutex_lock(&s->lock);
    if (s->stopping && !s->started) {
        pthread_mutex_unlock(&s->lock);
        return;
    }
    s->stopping = true;
    if (s->ev_fd >= 0)
        shutdown(s->ev_fd, SHUT_RDWR); /* ends a blocked XREAD now */
    pthread_cond_broadcast(&s->cond);
    pthread_cond_broadcast(&s->ev_cond);
    pthread_mutex_unlock(&s->lock);
    if (s->started) {
        pthread_join(s->cmd_thread, NULL);
        pthread_join(s->ev_thread, NULL);
        s->started = false;
    }
    pthread_mutex_lock(&s->lock);
    while ((j = QUEUE_POP(&s->queue, struct job, link)))
        queue_push(&left, &j->link);
    while ((j = QUEUE_POP(&s->waiting, struct job, link)))
        queue_push(&left, &j->link);
    while ((j = QUEUE_POP(&s->pending, struct job, link)))
        queue_push(&left, &j->link);
    pthread_mutex_unlock(&s->lock);
    while ((j = QUEUE_POP(&left, struct job, link))) {
        if (j->kind == J_LOOKUP)
            unavailable(j, "stopping", 0, 1, false);
        else
            job_free(j);
    }
}

shared *shared_free(shared *s) {
    if (!s)
        return NULL;
    shared_stop(s);
    seal_keys_wipe(&s->keys);
    free(s->redis);
    for (size_t i = 0; i < s->n_sentinels; i++)
        free(s->sentinels[i]);
    free(s->sentinels);
    free(s->master_name);
    free(s->prefix);
    free(s->username);
    wipe_free(s->password, s->password_len);
    free(s->tls_ca_file);
#ifdef HAVE_HIREDIS_SSL
    SSL_CTX_free(s->ssl);
#endif
    pthread_cond_destroy(&s->cond);
    pthread_cond_destroy(&s->ev_cond);
    pthread_mutex_destroy(&s->lock);
    pthread_rwlock_destroy(&s->keys_lock);
    free(s);
    return NULL;
}
