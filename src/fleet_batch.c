/* The command thread: callers' lookups, publishes, drops and flushes
 * pipelined in batches on one connection, their answers handled, waits on
 * another host's lease polled, our own leases kept alive while their
 * mints run, and a breaker against a Redis that keeps failing. */
#include <errno.h>
#include <hiredis/hiredis.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fleet.h"
#include "log.h"
#include "util.h"

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

void fleet_lease_id(shared *s, char out[33]) {
    pthread_mutex_lock(&s->lock);
    /* always 32 hex digits: the lookup script takes any other holder as forged */
    snprintf(out, 33, "%s%016llx", s->lease_prefix, ++s->lease_seq);
    pthread_mutex_unlock(&s->lock);
}

/* The job's token as Redis keeps it: "<gen>:<fingerprint>:" then the token
 * sealed for its key's name and generation, its end on the wall clock
 * inside. Returns the length, 0 when it cannot be sealed or has less than a
 * second left (nothing worth sharing); its time left in *ret_left. */
static size_t seal_value(shared *s, const struct job *j, unsigned char blob[SEAL_TOKEN_MAX + 64],
                         uint64_t *ret_left) {
    char aad[KEY_MAX + 32], fp[SEAL_FP_LEN + 1];
    uint64_t left = token_remaining_ms(j->tok, now_ms());
    size_t head, blen = 0;
    int r;

    snprintf(aad, sizeof(aad), "%s|%s", j->tok_key[0], j->gen);
    pthread_rwlock_rdlock(&s->keys_lock);
    r = seal_fingerprint(&s->keys, j->tok->value, j->tok->len, fp);
    head = (size_t)snprintf((char *)blob, SEAL_TOKEN_MAX + 64, "%s:%s:", j->gen, r == 0 ? fp : "");
    if (r == 0)
        r = seal_token(&s->keys, aad, strlen(aad), j->tok, now_unix_ms() + left, blob + head, &blen);
    pthread_rwlock_unlock(&s->keys_lock);
    *ret_left = left;
    return r < 0 || left < 1000 ? 0 : head + blen;
}

/* Appends the job's command to the connection's output. */
static int append(shared *s, redisContext *c, struct job *j) {
    char lease_ms[24], min_life[24], ttl[24], maxlen[24] = "10000";
    unsigned char blob[SEAL_TOKEN_MAX + 64];
    size_t blen = 0;

    snprintf(maxlen, sizeof(maxlen), "%d", STREAM_MAXLEN);
    switch (j->kind) {
    case J_LOOKUP: {
        char gen_key[KEY_MAX], pause_key[KEY_MAX], skip[2 * 41] = "";
        j->sent_floor = fleet_gen_floor(s);
        const char *argv[] = { "EVALSHA", s->sha[S_LOOKUP], "6", j->tok_key[0], j->tok_key[1], j->lease_key,
                               gen_key, pause_key, j->lease_prev, min_life, j->lease_id, lease_ms, skip, "",
                               j->skip_pause ? "1" : "0" };
        snprintf(gen_key, sizeof(gen_key), "%sgen", j->ns);
        snprintf(pause_key, sizeof(pause_key), "%spause", j->ns);
        snprintf(min_life, sizeof(min_life), "%llu", (unsigned long long)j->want.min_life_ms);
        if (j->refused > REFUSED_MAX)
            snprintf(skip, sizeof(skip), "*");
        else
            snprintf(skip, sizeof(skip), "%s%s%s", j->skip[0], j->skip[1][0] ? "," : "", j->skip[1]);
        snprintf(lease_ms, sizeof(lease_ms), "%llu", (unsigned long long)__atomic_load_n(&s->lease_ms, __ATOMIC_RELAXED));
        if (!j->lease_id[0])
            fleet_lease_id(s, j->lease_id);
        return redisAppendCommandArgv(c, 15, argv, NULL);
    }
    case J_PUBLISH: {
        char gen_key[KEY_MAX], creds_key[KEY_MAX], ok_key[KEY_MAX], proof[FLAG_MAX], keep[24];
        uint64_t left;
        int r;
        if (!fleet_gen_sealable(s, j->gen)) {
            /* a generation no flush of ours made (yet): the token stays
             * here, and the lease is given up for the next host to mint */
            j->kind = J_RELEASE;
            return append(s, c, j);
        }
        snprintf(gen_key, sizeof(gen_key), "%sgen", j->ns);
        snprintf(creds_key, sizeof(creds_key), "%screds", j->ns);
        snprintf(ok_key, sizeof(ok_key), "%scredsok", j->ns);
        /* outlives any credentials flag made before it */
        snprintf(keep, sizeof(keep), "%llu", (unsigned long long)(CREDS_TTL_MS + FLAG_SLACK_MS));
        if (fleet_proof_make(s, j->ns, "credsok", proof) < 0)
            return REDIS_ERR;
        if (!(blen = seal_value(s, j, blob, &left)))
            return REDIS_ERR; /* nothing worth sharing */
        snprintf(ttl, sizeof(ttl), "%llu", (unsigned long long)left);
        {
            const char *argv[] = { "EVALSHA",  s->sha[S_PUBLISH], "5",     j->tok_key[0], j->lease_key,
                                   gen_key,    creds_key,         ok_key,  (const char *)blob, ttl,
                                   j->lease_id, j->gen,           proof,   keep };
            size_t lens[ARRAY_SIZE(argv)];
            for (size_t i = 0; i < ARRAY_SIZE(argv); i++)
                lens[i] = i == 8 ? blen : strlen(argv[i]); /* the value is binary */
            r = redisAppendCommandArgv(c, (int)ARRAY_SIZE(argv), argv, lens);
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
        char ev_key[KEY_MAX], made[FLAG_MAX] = "";
        int r;
        snprintf(ev_key, sizeof(ev_key), "%sevents", j->ns);
        pthread_rwlock_rdlock(&s->keys_lock);
        r = seal_tuple(&s->keys, ev_key, strlen(ev_key), j->grant, j->user, j->scope, blob, &blen);
        pthread_rwlock_unlock(&s->keys_lock);
        if (r < 0 || (j->revoke && fleet_revoked_proof_make(s, j->ns, blob, blen, j->asked_unix_ms, made) < 0))
            return REDIS_ERR;
        {
            const char *argv[] = { "EVALSHA", s->sha[S_DROP], "3", j->tok_key[0], j->tok_key[1], ev_key,
                                   j->fp, (const char *)blob, maxlen, j->revoke ? "v" : "d", j->fp_prev, made };
            size_t lens[ARRAY_SIZE(argv)];
            for (size_t i = 0; i < ARRAY_SIZE(argv); i++)
                lens[i] = i == 7 ? blen : strlen(argv[i]); /* the sealed key is binary */
            return redisAppendCommandArgv(c, (int)ARRAY_SIZE(argv), argv, lens);
        }
    }
    case J_FLUSH: {
        char gen_key[KEY_MAX], ev_key[KEY_MAX], floor[24], proof[FLAG_MAX], bound[FLAG_MAX], step[24];
        const char *argv[] = { "EVALSHA", s->sha[S_FLUSH], "2", gen_key, ev_key, maxlen, floor, proof,
                               j->remake ? "1" : "0", bound, step };
        snprintf(step, sizeof(step), "%d", FLUSH_STEP);
        snprintf(gen_key, sizeof(gen_key), "%sgen", j->ns);
        snprintf(ev_key, sizeof(ev_key), "%sevents", j->ns);
        pthread_mutex_lock(&s->lock);
        snprintf(floor, sizeof(floor), "%llu", s->max_gen);
        pthread_mutex_unlock(&s->lock);
        /* 'p' for hosts of the release before; 'q' bound to the floor */
        if (fleet_proof_make(s, j->ns, "flush", proof) < 0 || fleet_floor_proof_make(s, j->ns, floor, bound) < 0)
            return REDIS_ERR;
        return redisAppendCommandArgv(c, (int)ARRAY_SIZE(argv), argv, NULL);
    }
    case J_REVOKED: {
        char ev_key[KEY_MAX];
        unsigned char drop[SEAL_TOKEN_MAX + 64];
        size_t dlen = 0;
        int r;
        snprintf(ev_key, sizeof(ev_key), "%sevents", j->ns);
        /* sealed as a drop's tuple is, the fingerprints in the user id's
         * place; and the user's drop, when there is one */
        pthread_rwlock_rdlock(&s->keys_lock);
        r = seal_tuple(&s->keys, ev_key, strlen(ev_key), OAUTH_GRANT_USER_ASSERTION, j->fps, "revoked", blob,
                       &blen);
        if (r == 0 && j->user[0])
            r = seal_tuple(&s->keys, ev_key, strlen(ev_key), j->grant, j->user, j->scope, drop, &dlen);
        pthread_rwlock_unlock(&s->keys_lock);
        if (r < 0)
            return REDIS_ERR;
        {
            const char *argv[] = { "EVALSHA", s->sha[S_REVOKED], "1", ev_key, maxlen, (const char *)blob,
                                   (const char *)drop };
            size_t lens[7];
            for (int i = 0; i < 7; i++)
                lens[i] = i == 5 ? blen : i == 6 ? dlen : strlen(argv[i]);
            return redisAppendCommandArgv(c, 7, argv, lens);
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
        if (fleet_flag_make(s, j->ns, pause ? "pause" : "creds", ms, value) < 0)
            return REDIS_ERR;
        return redisAppendCommandArgv(c, 5, argv, NULL);
    }
    case J_ADOPT: {
        char gen_key[KEY_MAX], ev_key[KEY_MAX];
        uint64_t left;
        int r;
        snprintf(gen_key, sizeof(gen_key), "%sgen", j->ns);
        snprintf(ev_key, sizeof(ev_key), "%sevents", j->ns);
        if (!(blen = seal_value(s, j, blob, &left)))
            return REDIS_ERR; /* nothing worth sharing */
        snprintf(ttl, sizeof(ttl), "%llu", (unsigned long long)left);
        {
            const char *argv[] = { "EVALSHA", s->sha[S_ADOPT], "5", j->tok_key[0], j->tok_key[1], gen_key, ev_key,
                                   j->lease_key, (const char *)blob, ttl, j->gen, j->guard };
            size_t lens[ARRAY_SIZE(argv)];
            for (size_t i = 0; i < ARRAY_SIZE(argv); i++)
                lens[i] = i == 8 ? blen : strlen(argv[i]); /* the value is binary */
            r = redisAppendCommandArgv(c, (int)ARRAY_SIZE(argv), argv, lens);
        }
        explicit_bzero(blob, sizeof(blob));
        return r;
    }
    case J_PING: {
        const char *argv[] = { "PING" };
        return redisAppendCommandArgv(c, 1, argv, NULL);
    }
    }
    return REDIS_ERR;
}


static void deliver(struct job *j, token *t) {
    mint_outcome o = { .kind = MINT_OK, .http_status = 200, .via = j->waited ? MINT_VIA_SHARED_WAIT : MINT_VIA_SHARED };
    cache_done_fn done = j->done;
    void *ctx = j->ctx;

    fleet_job_free(j);
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

/* Whether a shared value was minted before its user's last revocation: a
 * value hidden from the revocation (a Redis writer took it out, or a
 * publish landed after it) and put back since. Never served; one surely
 * minted before it is revoked now, as the revocation meant, and the fleet
 * told (its fingerprint: no host serves it again). */
static bool below_floor(shared *s, struct job *j, token *t) {
    enum floor_verdict v = fleet_floor_check(s, fleet_user_fp(j->grant, j->user, j->scope), t);

    if (v == FLOOR_SERVE)
        return false;
    pthread_mutex_lock(&s->lock);
    s->stats.stale_refused++;
    pthread_mutex_unlock(&s->lock);
    if (v == FLOOR_REVOKE) {
        log_warning("fleet: a token of a user revoked since was written back into Redis (someone with the "
                    "Redis password kept it); revoking it now, and it is never served");
        fleet_tell_revoked(s, j->ns, j->grant, NULL, NULL, &t, 1);
        revocations_revoke(s->rv, &t, 1, j->up_gen, NULL, NULL);
    }
    return true;
}

/* Waits on another host's lease: poll again soon, with backoff; past
 * lease_wait, mint ourselves. Returns the job to the waiting list, or
 * hands it on. */
static void lease_busy(shared *s, struct job *j, uint64_t now) {
    if (j->want.have_ms) {
        /* a refresh: another host is refreshing this key; keep serving ours
         * and adopt theirs when the cache asks again */
        fleet_unavailable(j, "shared_busy", 0, 1, true);
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
        fleet_mint(s, j, SHARED_MINT_LEASE_TIMEOUT);
        return;
    }
    j->next_at_ms = now + j->poll_ms;
    if (j->next_at_ms > j->wait_cap_ms)
        j->next_at_ms = j->wait_cap_ms;
    j->poll_ms = j->poll_ms * 2 > POLL_MAX_MS ? POLL_MAX_MS : j->poll_ms * 2;
    pthread_mutex_lock(&s->lock);
    if (s->stopping) {
        pthread_mutex_unlock(&s->lock);
        fleet_degrade(s, j);
        return;
    }
    queue_push(&s->waiting, &j->link);
    pthread_mutex_unlock(&s->lock);
}


/* The least remaining life worth taking: what was asked for, capped at half
 * the token's lifetime as the memory cache caps it, so short-lived tokens
 * are shared too. */
static uint64_t life_needed(const token *t, uint64_t asked_ms) {
    uint64_t half = (uint64_t)t->lifetime_s * MS_PER_SEC / 2;
    return asked_ms < half ? asked_ms : half;
}

/* A value Redis returned that this host will not serve: the next look-up
 * skips it (and one other: a key has two names), and takes any other, such
 * as the token a lease holder publishes meanwhile. Skipping every token
 * instead made each host that refused the same value mint its own. A
 * lookup refusing value after value (someone rewriting them) skips them
 * all, so it cannot go round for ever. */
static void refuse(struct job *j, const redisReply *v) {
    if (j->refused > REFUSED_MAX)
        return; /* skipping every token already */
    j->refused++;
    if (j->refused > REFUSED_MAX || v->type != REDIS_REPLY_STRING ||
        fleet_sha1_hex(v->str, v->len, j->skip[(j->refused - 1) % 2]) < 0)
        j->refused = REFUSED_MAX + 1;
}

static void lookup_answered(shared *s, struct job *j, redisReply *r, uint64_t now) {
    struct fleet_lookup lk;
    long long code, ttl, which;
    enum shared_lookup what;

    if (!fleet_lookup_decode(r, &lk)) {
        if (r->type == REDIS_REPLY_ERROR)
            fleet_refused(s, "the lookup script", r->str);
        fleet_count_op(s, SHARED_OP_LOOKUP, false);
        fleet_degrade(s, j);
        return;
    }
    code = lk.code, ttl = lk.ttl, which = lk.which;
    snprintf(j->gen, sizeof(j->gen), "%.*s", (int)(r->element[3]->len < 20 ? r->element[3]->len : 20),
             r->element[3]->str);
    what = code == 1 ? SHARED_FOUND : code == 2 ? SHARED_LEASED : code == 3 ? SHARED_PAUSED : SHARED_BUSY;
    bool old = false;
    if ((!fleet_gen_check_sent(s, r->element[3]->str, r->element[3]->len, j->sent_floor, &old) || old) &&
        what == SHARED_FOUND) {
        /* a value of a generation this host saw flushed (or of none): never
         * served; asked again (Redis mended if it went back) */
        pthread_mutex_lock(&s->lock);
        s->stats.stale_refused++;
        pthread_mutex_unlock(&s->lock);
        refuse(j, r->element[1]);
        if (!fleet_submit(s, j))
            fleet_degrade(s, j);
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
        if (t && fleet_denied(s, t)) {
            /* revoked by the fleet, and written back into Redis since */
            pthread_mutex_lock(&s->lock);
            s->stats.stale_refused++;
            pthread_mutex_unlock(&s->lock);
            t = token_unref(t);
            refuse(j, r->element[1]);
            if (!fleet_submit(s, j))
                fleet_degrade(s, j);
            return;
        }
        if (t && fleet_ns_moved(s, j)) {
            /* a reload to another server or client id while Redis answered:
             * the token is the old namespace's; look again in the new one */
            t = token_unref(t);
            if (fleet_job_names(s, j) < 0 || !fleet_submit(s, j))
                fleet_degrade(s, j);
            return;
        }
        if (t && below_floor(s, j, t)) {
            t = token_unref(t);
            refuse(j, r->element[1]);
            if (!fleet_submit(s, j))
                fleet_degrade(s, j);
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
        refuse(j, r->element[1]);
        if (!fleet_submit(s, j))
            fleet_degrade(s, j);
        return;
    }
    case SHARED_LEASED:
        /* after a wait: the holder's lease lapsed (it died, or stopped) */
        fleet_hold(s, j);
        fleet_mint(s, j, j->waited ? SHARED_MINT_LEASE_TIMEOUT : SHARED_MINT_LEASED);
        return;
    case SHARED_PAUSED: { /* another host was told 429: nobody mints until it ends */
        uint64_t left = fleet_flag_left_ms(s, j->ns, "pause", r->element[1]->str, r->element[1]->len, (uint64_t)ttl,
                                     PAUSE_MAX_MS);
        if (left) {
            fleet_unavailable(j, "rate_limited", 429, (unsigned)((left + 999) / 1000), false);
            return;
        }
        /* not made by a host of this fleet, or over: no pause */
        fleet_refused_flag(s, "pause");
        j->skip_pause = true;
        if (!fleet_submit(s, j))
            fleet_degrade(s, j);
        return;
    }
    case SHARED_BUSY:
    case SHARED_LOOKUP_COUNT:
        lease_busy(s, j, now);
        return;
    }
}

/* The caller of a revocation whose drop no replica confirmed: told so
 * with what Instacart said (the drop is kept and sent again). */
struct unconfirmed {
    revoke_done_fn done;
    void *ctx;
};

static void unconfirmed_done(void *userdata, const struct revoke_outcome *o) {
    struct unconfirmed u = *(struct unconfirmed *)userdata;
    struct revoke_outcome told = *o;

    free(userdata);
    told.unconfirmed = true;
    u.done(u.ctx, &told);
}

/* A revocation's drop was made: what it took out of Redis, opened, is
 * revoked with this host's own copy. A value that does not open (tampered
 * with, or sealed under a key we lack) cannot be revoked by us: counted.
 * Revoked at once, whether or not a replica confirmed the drop; the caller
 * is told it is done only once one did (or hears it is not, with a 503). */
static void revoke_taken(shared *s, struct job *j, const redisReply *r) {
    token *toks[3] = { j->local, NULL, NULL };
    revoke_done_fn done = j->rdone;
    void *ctx = j->rctx;

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
    if (done && j->undurable) {
        struct unconfirmed *u = malloc(sizeof(*u));
        if (u) {
            *u = (struct unconfirmed){ .done = done, .ctx = ctx };
            done = unconfirmed_done;
            ctx = u;
        } else { /* answered now: not durable, whatever Instacart says */
            done(ctx, &(struct revoke_outcome){ .unconfirmed = true });
            done = NULL;
        }
    }
    fleet_tell_revoked(s, j->ns, j->grant, j->user, j->scope, toks, 3);
    revocations_revoke(s->rv, toks, 3, j->up_gen, done, ctx);
    token_unref(toks[1]);
    token_unref(toks[2]);
}

static void answered(shared *s, struct job *j, redisReply *r, uint64_t now) {
    if ((j->kind == J_DROP || j->kind == J_FLUSH || j->kind == J_REVOKED) && r->type != REDIS_REPLY_ERROR)
        fleet_remember(s, j, now);
    if (j->kind == J_FLUSH && r->type == REDIS_REPLY_INTEGER && r->integer > 0) {
        /* our own flush's generation is proven to us now, before its
         * event comes back: what we mint next is sealed under it */
        char g[24];
        snprintf(g, sizeof(g), "%lld", r->integer);
        fleet_gen_seen(s, g, strlen(g), true);
    }
    if (j->kind == J_LOOKUP) {
        lookup_answered(s, j, r, now);
        return;
    }
    if (j->kind == J_DROP && j->revoke && r->type != REDIS_REPLY_ERROR) {
        fleet_count_op(s, SHARED_OP_DROP, true);
        revoke_taken(s, j, r);
        fleet_job_free(j);
        return;
    }
    if (j->kind == J_PING) {
        fleet_job_free(j);
        return;
    }
    if (j->kind == J_ADOPT && r->type == REDIS_REPLY_INTEGER) {
        enum shared_outage how = r->integer == 1   ? SHARED_OUTAGE_SHARED
                                 : r->integer == 2 ? SHARED_OUTAGE_REPLACED
                                                   : SHARED_OUTAGE_KEPT;
        /* the fleet shares another token for the key: ours goes, and the
         * next request here is served the fleet's (one lookup, no mint) */
        if (how == SHARED_OUTAGE_REPLACED && s->sink.drop_if)
            s->sink.drop_if(s->sink.ctx, j->grant, j->user, j->scope, j->tok);
        pthread_mutex_lock(&s->lock);
        s->stats.outage_tokens[how]++;
        pthread_mutex_unlock(&s->lock);
    }
    if (r->type == REDIS_REPLY_ERROR) {
        fleet_refused(s, shared_op_names[fleet_op_of(j->kind)], r->str);
        if (j->kind == J_DROP || j->kind == J_FLUSH || j->kind == J_REVOKED) {
            /* never lost: kept, and sent again with the next connection
             * (a revocation's caller is told it is not done, and this
             * host's copy is revoked now) */
            fleet_fail_job(s, j);
            __atomic_store_n(&s->resend, true, __ATOMIC_RELAXED);
            return;
        }
    }
    fleet_count_op(s, fleet_op_of(j->kind), r->type != REDIS_REPLY_ERROR);
    if (j->ack) { /* a drop or flush Redis took: its caller is answered */
        shared_ack_fn ack = j->ack;
        j->ack = NULL;
        ack(j->actx, !j->undurable);
    }
    fleet_job_free(j);
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
    say = opened && (first || now - s->failing_said_ms >= SAY_EVERY_MS);
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
        fleet_fail_job(s, j);
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
        fleet_fail_job(s, j);
}

/* Reads WAIT's answer after a drop, revocation or flush. When no replica
 * has it, or the answer did not come, a copy of the job is kept for the
 * next connection (sending it again is harmless: it deletes again, or
 * flushes once more). Returns whether a replica had it. */
static bool replicated(shared *s, redisContext **c, const struct job *j) {
    redisReply *w = NULL;
    struct job *again;
    struct later l = { 0 };
    bool ok;

    ok = redisGetReply(*c, (void **)&w) == REDIS_OK && w && w->type == REDIS_REPLY_INTEGER && w->integer >= 1;
    freeReplyObject(w);
    if (ok)
        return true;
    again = fleet_job_again(s, j);
    if (!again)
        return false;
    pthread_mutex_lock(&s->lock);
    s->stats.unreplicated++;
    if (!fleet_keep_for_later_locked(s, again, &l)) {
        pthread_mutex_unlock(&s->lock);
        fleet_job_free(again);
        return false;
    }
    pthread_mutex_unlock(&s->lock);
    return false;
}

static void run_batch(shared *s, redisContext **c, struct queue *batch) {
    struct queue again = { 0 };
    struct job *sent[BATCH_MAX];
    bool undurable = false;
    size_t n = 0;
    struct job *j;
    uint64_t now = now_ms();

    bool demoted = __atomic_exchange_n(&s->demoted, false, __ATOMIC_RELAXED);
    bool resend = __atomic_exchange_n(&s->resend, false, __ATOMIC_RELAXED);

    if (*c && (demoted || resend)) {
        /* the master was demoted: this connection would write to a replica */
        redisFree(*c);
        *c = NULL;
    }
    if (!*c) {
        char err[256], address[280];
        uint64_t wait;
        bool refused;

        pthread_mutex_lock(&s->lock);
        refused = breaker_check(&s->br, now, &wait) == BREAKER_REFUSE;
        pthread_mutex_unlock(&s->lock);
        if (!refused)
            *c = fleet_redis_open(s, true, address, sizeof(address), err, sizeof(err));
        if (!*c) {
            if (!refused)
                connection_lost(s, c, err);
            pthread_mutex_lock(&s->lock);
            breaker_probe_done(&s->br);
            pthread_mutex_unlock(&s->lock);
            while ((j = QUEUE_POP(batch, struct job, link)))
                fleet_fail_job(s, j);
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
        fleet_replay_recent_locked(s, address, now);
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
                fleet_fail_job(s, j);
            else { /* nothing to send (sealing failed): no use keeping it */
                fleet_count_op(s, fleet_op_of(j->kind), false);
                fleet_job_free(j);
            }
            continue;
        }
        j->sent_us = mono_us();
        j->wait_replica = false;
        if (s->n_sentinels && (j->kind == J_DROP || j->kind == J_FLUSH || j->kind == J_REVOKED)) {
            /* with replicas (Sentinel), a write only the master holds is
             * lost in a failover: acknowledged once a replica has it */
            char ms[24];
            const char *argv[] = { "WAIT", "1", ms };
            snprintf(ms, sizeof(ms), "%llu", (unsigned long long)(s->timeout_ms / 2 ? s->timeout_ms / 2 : 1));
            if (redisAppendCommandArgv(*c, 3, argv, NULL) == REDIS_OK)
                j->wait_replica = true;
        }
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
                if (sent[i]->wait_replica && !replicated(s, c, sent[i]))
                    undurable = sent[i]->undurable = true;
                answered(s, sent[i], r, now_ms());
                freeReplyObject(r);
                if ((*c)->err) { /* WAIT's answer did not come */
                    i++;
                    goto lost;
                }
                continue;
            }
        }
    lost:
        {
            char why[160];
            snprintf(why, sizeof(why), "%s", fleet_redis_why(*c));
            connection_lost(s, c, why);
        }
        for (; i < n; i++)
            retry_or_fail(s, sent[i], &again);
        break;
    }
    if (undurable && *c) {
        /* no replica took a drop or flush: this master may be one a
         * failover deposed (its writes are lost when it rejoins); the copy
         * kept for later goes first on a connection to the master the
         * sentinels name now */
        redisFree(*c);
        *c = NULL;
        pthread_mutex_lock(&s->lock);
        s->stats.up = false;
        pthread_mutex_unlock(&s->lock);
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
uint64_t fleet_due_renewals(shared *s, uint64_t now, uint64_t next) {
    uint64_t every = __atomic_load_n(&s->lease_ms, __ATOMIC_RELAXED) / 4;
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
        struct job *j = fleet_job_new(s, J_RENEW, OAUTH_GRANT_USER_ASSERTION, NULL, NULL);
        if (!j)
            continue;
        memcpy(j->lease_key, due[i].key, sizeof(j->lease_key));
        memcpy(j->lease_id, due[i].id, sizeof(j->lease_id));
        pthread_mutex_lock(&s->lock);
        queue_push_front(&s->queue, &j->link); /* before a crowd of lookups: a late renewal lets the lease lapse */
        pthread_mutex_unlock(&s->lock);
    }
    explicit_bzero(due, sizeof(due));
    pthread_mutex_lock(&s->lock);
    return next;
}

void *fleet_command_thread(void *arg) {
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
            j = fleet_job_new(s, J_PING, OAUTH_GRANT_USER_ASSERTION, NULL, NULL);
            pthread_mutex_lock(&s->lock);
            if (j)
                queue_push(&s->queue, &j->link);
        }
        next = fleet_due_renewals(s, now, next);
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
            mono_deadline(next > now ? next - now : 0, &ts);
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
