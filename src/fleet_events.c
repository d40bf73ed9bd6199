/* The event thread: it reads the fleet's stream of drops, revocations and
 * flushes (XREAD BLOCK) and applies them, checks the stream holds all this
 * host missed (or drops its tokens), and reads the fleet's state (the
 * generation, the flags) between blocks. */
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

/* ---- the event thread: drops and flushes from the other hosts ---- */

struct reader;
static void local_flush(struct reader *rd, const char *why);
enum flush_proof { FLUSH_FOREIGN, FLUSH_OURS, FLUSH_FLOOR };
static enum flush_proof flush_proven(struct reader *rd, const redisReply *fields);

struct reader {
    shared *s;
    redisContext *c;
    unsigned ns_serial;
    char ns[NS_MAX];
    char last[48];     /* the last event applied, "" before the first connection */
    bool caught_up;    /* the last read found no more events than it returned */
    bool fresh;        /* connected since the last read: the next one does not block */
    /* the stream's count of entries ever added, when we had read them all,
     * and how many we read since: see whole() */
    bool have_added;
    unsigned long long added, read_since;
    bool behind;       /* whole() saw events after the last one we read: the next read must find some */
    uint64_t behind_ms; /* since when it has seen that at every turn (now_ms()), 0 when not */
    char newest[48];   /* ... the newest it saw */
    char address[280]; /* the Redis this thread reads from */
    unsigned long long redis_ms; /* Redis's clock at the last heartbeat, 0 before */
};

/* A stream id as Redis gave it (a string), into one of our 48-byte ids:
 * cut at 40 characters (no id of Redis's is longer). */
static void copy_id(char dst[48], const redisReply *id) {
    snprintf(dst, 48, "%.*s", (int)(id->len < 40 ? id->len : 40), id->str);
}

/* The events stream cannot be trusted to hold what this host missed: its
 * tokens go, and so does its trust in every shared value minted before
 * now (a revocation or flush it missed may have been of it, and a writer
 * may have written it back: found by an attack), each a mint; the event
 * is counted. */
static void stream_reset(struct reader *rd, const char *why) {
    pthread_mutex_lock(&rd->s->lock);
    rd->s->stats.stream_resets++;
    pthread_mutex_unlock(&rd->s->lock);
    fleet_floor_all(rd->s, now_unix_ms());
    local_flush(rd, why);
}

static void local_flush(struct reader *rd, const char *why) {
    size_t n = rd->s->sink.flush ? rd->s->sink.flush(rd->s->sink.ctx) : 0;

    pthread_mutex_lock(&rd->s->lock);
    rd->s->stats.local_flushes++;
    pthread_mutex_unlock(&rd->s->lock);
    log_notice("fleet: dropped this host's %zu cached tokens: %s", n, why);
}

/* After a (re)connection: events missed meanwhile are read from where we
 * left off, unless the stream no longer has them; then our tokens go. */
static bool learn_revoked(struct reader *rd, const redisReply *v);
static void learn_floor(struct reader *rd, const redisReply *v, const redisReply *fields);

/* A host's first connection: the revocations and flushes the stream still
 * holds are learned (not applied: its cache has nothing older), so that a
 * revoked token, or a generation from before a flush, written back into
 * Redis is refused by a host that was not there when it happened. Bounded
 * by the stream's own length. */
static void learn_history(struct reader *rd, struct fleet_stream_id upto) {
    char key[KEY_MAX], from[48] = "0-0";
    const char *argv[] = { "XREAD", "COUNT", "1000", "STREAMS", key, from };

    snprintf(key, sizeof(key), "%sevents", rd->ns);
    for (int round = 0; round < STREAM_MAXLEN / 1000 + 2; round++) {
        redisReply *r = redisCommandArgv(rd->c, 6, argv, NULL);
        const redisReply *entries;
        bool more = false;

        if (!r)
            return;
        entries = fleet_xread_entries(r);
        if (!entries) {
            freeReplyObject(r);
            return;
        }
        for (size_t i = 0; i < entries->elements; i++) {
            redisReply *e = entries->element[i], *f;
            struct fleet_stream_id id;
            if (e->type != REDIS_REPLY_ARRAY || e->elements != 2 || e->element[0]->type != REDIS_REPLY_STRING ||
                !fleet_stream_id_parse(e->element[0]->str, e->element[0]->len, &id) ||
                fleet_stream_id_cmp(id, upto) > 0)
                continue;
            f = e->element[1];
            /* one too large to be ours is passed over here; read as an
             * event, it makes the stream anew (oversized()) */
            for (size_t k = 0; f->type == REDIS_REPLY_ARRAY && f->elements <= EVENT_FIELDS_MAX && k + 1 < f->elements;
                 k += 2) {
                redisReply *name = f->element[k], *v = f->element[k + 1];
                if (name->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING)
                    continue;
                if (strcmp(name->str, "r") == 0)
                    learn_revoked(rd, v);
                else if (strcmp(name->str, "v") == 0)
                    learn_floor(rd, v, f);
                else if (strcmp(name->str, "f") == 0 && flush_proven(rd, f) == FLUSH_FLOOR)
                    fleet_gen_seen(rd->s, v->str, v->len, true); /* the highest: nothing to flush here yet */
            }
            copy_id(from, e->element[0]);
            more = fleet_stream_id_cmp(id, upto) < 0;
        }
        more = more && entries->elements == 1000;
        freeReplyObject(r);
        if (!more)
            return;
    }
}

/* Which Redis an address names, for the image: a hash, never 0. */
static uint64_t redis_id(const char *address) {
    const char *parts[] = { address };
    uint64_t h = fnv1a64(parts, 1);

    return h ? h : 1;
}

static int catch_up(struct reader *rd, bool same_redis) {
    char key[KEY_MAX];
    const char *argv[] = { "XINFO", "STREAM", key };
    struct fleet_stream_id last = { 0 }, gone = { 0 }, newest = { 0 }, first = { 0 };
    struct fleet_stream_info info;
    bool have_gone = false, have_newest = false, have_first = false, restored = rd->s->resume_age_ms != 0;
    redisReply *r;

    snprintf(key, sizeof(key), "%sevents", rd->ns);
    r = redisCommandArgv(rd->c, 3, argv, NULL);
    if (!r) /* its first or last entry (shown in full) too large for our reader */
        return rd->c->err == REDIS_ERR_OOM ? -E2BIG : -EIO;
    if (r->type == REDIS_REPLY_ERROR) {
        /* no stream: a new namespace, or a Redis that lost everything; a
         * host back from a restart cannot tell which drops it missed */
        if (strncmp(r->str, "NOPERM", 6) == 0) {
            fleet_refused(rd->s, "XINFO STREAM", r->str);
            freeReplyObject(r);
            return -EACCES;
        }
        if ((rd->last[0] && strcmp(rd->last, "0-0") != 0) || restored)
            stream_reset(rd, "Redis lost the fleet's events (restarted without them?)");
        rd->s->resume_age_ms = 0;
        rd->s->resume_last[0] = '\0';
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
                copy_id(rd->last, r);
            else {
                if (r->type == REDIS_REPLY_ERROR)
                    fleet_refused(rd->s, "XADD", r->str);
                snprintf(rd->last, sizeof(rd->last), "0-0");
            }
            freeReplyObject(r);
        }
        return 0;
    }
    fleet_stream_info_decode(r, &info);
    have_newest = info.have_newest, newest = info.newest;
    have_gone = info.have_gone, gone = info.gone;
    have_first = info.have_first, first = info.first;
    if (!rd->last[0] && have_newest)
        learn_history(rd, newest); /* a host new or restarted: what the fleet revoked and flushed */
    if (!rd->last[0] && rd->s->resume_last[0]) {
        /* restarted with its cache: on from the last event it read before,
         * however long it was cut off then, or is now; the stream must
         * still hold everything since (checked below). Only in the Redis
         * it was read from: another's ids say nothing of what we missed
         * (the fleet moved to another Redis: then by Redis's clock, below) */
        if (rd->s->resume_redis == redis_id(rd->address)) {
            snprintf(rd->last, sizeof(rd->last), "%s", rd->s->resume_last);
            rd->s->resume_age_ms = 0; /* once */
        }
        rd->s->resume_last[0] = '\0';
    }
    if (!rd->last[0] && rd->s->resume_age_ms) {
        /* tokens brought back over a restart: replay from shortly before the
         * image was written, on Redis's clock (ours and its never compared) */
        const char *targv[] = { "TIME" };
        redisReply *t = redisCommandArgv(rd->c, 1, targv, NULL);
        /* the image's age when this connection is made, not when it was read */
        uint64_t age = rd->s->resume_age_ms + (now_ms() - rd->s->resume_at_ms);
        unsigned long long now_ms_redis = 0, back = age + RESUME_MARGIN_MS;
        if (!t || !fleet_time_decode(t, &now_ms_redis)) {
            if (t)
                freeReplyObject(t);
            freeReplyObject(r);
            return -EIO;
        }
        freeReplyObject(t);
        struct fleet_stream_id image = { .ms = now_ms_redis > age ? now_ms_redis - age : 0 };
        rd->s->resume_age_ms = 0; /* once */
        snprintf(rd->last, sizeof(rd->last), "%llu-0", now_ms_redis > back ? now_ms_redis - back : 0);
        /* trimmed past where the replay starts, or first made after the
         * image was written (so what came between may be lost) */
        if (fleet_stream_id_parse(rd->last, strlen(rd->last), &last) &&
            ((have_gone && fleet_stream_id_cmp(gone, last) > 0) || (have_first && fleet_stream_id_cmp(first, image) > 0)))
            stream_reset(rd, "the fleet's events from before this restart are gone");
    } else if (!rd->last[0]) {
        /* the first connection: what came before is not ours to apply */
        snprintf(rd->last, sizeof(rd->last), "%llu-%llu", newest.ms, newest.seq);
    } else if (fleet_stream_id_parse(rd->last, strlen(rd->last), &last)) {
        const char *why = NULL;
        if (have_newest && fleet_stream_id_cmp(newest, last) < 0)
            why = "the fleet's events stream was made anew or rewound behind this host";
        else if (have_gone && fleet_stream_id_cmp(gone, last) > 0)
            why = "events were missed while Redis was out of reach";
        else if (have_first && strcmp(rd->last, "0-0") != 0 && fleet_stream_id_cmp(first, last) > 0)
            why = "the fleet's events stream was made anew since this host last read it";
        if (why) {
            stream_reset(rd, why);
            if (have_newest) {
                /* what we pass over is learned, not applied (our tokens
                 * went): a flush's proven generation among it, above all */
                learn_history(rd, newest);
                snprintf(rd->last, sizeof(rd->last), "%llu-%llu", newest.ms, newest.seq);
            }
        } else if (same_redis) {
            /* on from where we were in the same stream: Redis's count of
             * entries ever added must still match what we read, once we
             * have read all there is (whole()). A writer can cut any host
             * off (a busy script) and rewrite the stream without the event
             * it wants missed, keeping every id (found by an attack). */
            freeReplyObject(r);
            return 1;
        }
    }
    freeReplyObject(r);
    return 0;
}

/* Whether the sentinels still name the Redis we read from. A master the
 * sentinels deposed keeps saying "master" (ROLE) until they turn it into
 * a replica, seconds later; meanwhile the other hosts write to the new
 * one, and drops made there would not reach us. So the sentinels are
 * asked with every heartbeat; when they cannot be reached, ROLE decides. */
static bool named_by_sentinels(struct reader *rd) {
    char named[280], err[256], commands[280];

    if (fleet_find_master(rd->s, named, sizeof(named), err, sizeof(err)) < 0)
        return true;
    /* the command thread's connection too (stats.address, "" while down) */
    pthread_mutex_lock(&rd->s->lock);
    snprintf(commands, sizeof(commands), "%s", rd->s->stats.address);
    pthread_mutex_unlock(&rd->s->lock);
    if (strcmp(named, rd->address) == 0) {
        if (commands[0] && strcmp(named, commands) != 0 &&
            !__atomic_exchange_n(&rd->s->demoted, true, __ATOMIC_RELAXED))
            log_warning("fleet: the sentinels name another master (%s, not %s): a failover; finding it again",
                        named, commands);
        return true; /* this thread reads from the right one */
    }
    if (!__atomic_exchange_n(&rd->s->demoted, true, __ATOMIC_RELAXED))
        log_warning("fleet: the sentinels name another master (%s, not %s): a failover; finding it again", named,
                    rd->address);
    return false;
}

/* The fleet's state: the generation, a pause, rejected credentials; and
 * whether our Redis is still the master (a failover demoted it: both
 * threads find the master again now, not at their next error). */
static int heartbeat(struct reader *rd) {
    shared *s = rd->s;
    char gen_key[KEY_MAX], pause_key[KEY_MAX], creds_key[KEY_MAX], ok_key[KEY_MAX];
    const char *argv[][2] = { { "GET", gen_key },   { "GET", pause_key }, { "PTTL", pause_key },
                              { "GET", creds_key }, { "PTTL", creds_key }, { "TIME", NULL },
                              { "ROLE", NULL },     { "GET", ok_key } };
    redisReply *r[ARRAY_SIZE(argv)] = { 0 };
    int ret = 0;

    snprintf(gen_key, sizeof(gen_key), "%sgen", rd->ns);
    snprintf(pause_key, sizeof(pause_key), "%spause", rd->ns);
    snprintf(creds_key, sizeof(creds_key), "%screds", rd->ns);
    snprintf(ok_key, sizeof(ok_key), "%scredsok", rd->ns);
    uint64_t sent_floor = fleet_gen_floor(s); /* an answer older than a flush learned meanwhile is no going back */

    for (size_t i = 0; i < ARRAY_SIZE(argv); i++)
        redisAppendCommandArgv(rd->c, argv[i][1] ? 2 : 1, argv[i], NULL);
    for (size_t i = 0; i < ARRAY_SIZE(argv); i++) {
        if (redisGetReply(rd->c, (void **)&r[i]) != REDIS_OK || !r[i])
            ret = -EIO;
        else if (r[i]->type == REDIS_REPLY_ERROR && strcmp(argv[i][0], "GET") == 0) {
            /* a key of ours that someone made another type (a stream, a
             * list): named and read as no flag, never a reason to stop
             * reading the fleet's drops (a generation so written is
             * mended below, as one that is not a number) */
            fleet_refused(s, "GET", r[i]->str);
        } else if (r[i]->type == REDIS_REPLY_ERROR)
            ret = -EIO;
    }
    if (ret == 0) {
        /* checked only: a flush of this fleet is applied when its event,
         * with its proof, is read (or the stream's continuity fails) */
        if (r[0]->type == REDIS_REPLY_STRING)
            fleet_gen_check_sent(s, r[0]->str, r[0]->len, sent_floor, NULL);
        else if (r[0]->type == REDIS_REPLY_ERROR)
            fleet_gen_check(s, "", 0, false);
        else /* none: as the scripts read it, "0", which is going back once we knew a flush */
            fleet_gen_check_sent(s, "0", 1, sent_floor, NULL);
        if (!fleet_time_decode(r[5], &rd->redis_ms))
            rd->redis_ms = 0; /* unknown: no event id is judged by it */
        if (r[6]->type != REDIS_REPLY_ARRAY || r[6]->elements < 1 || r[6]->element[0]->type != REDIS_REPLY_STRING ||
            strcmp(r[6]->element[0]->str, "master") != 0) {
            if (!__atomic_exchange_n(&s->demoted, true, __ATOMIC_RELAXED))
                log_warning("fleet: our Redis is no longer the master (a failover); finding the master again");
            ret = -EIO;
        } else if (s->n_sentinels && !named_by_sentinels(rd))
            ret = -EIO;
        bool paused = fleet_flag_holds(s, rd->ns, "pause", r[1], r[2], PAUSE_MAX_MS);
        bool creds;
        uint64_t ok_ms;
        if (r[7]->type == REDIS_REPLY_STRING &&
            fleet_proof_holds(s, rd->ns, "credsok", r[7]->str, r[7]->len, &ok_ms))
            fleet_creds_ok(s, ok_ms); /* a host's mint cleared the flag then */
        creds = fleet_creds_flag_holds(s, rd->ns, r[3], r[4]);
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

/* Opens an event's sealed (grant, user id, scope); one that does not open
 * (another key, or written by hand) is counted and skipped. */
static bool open_event(struct reader *rd, const redisReply *v, enum oauth_grant *grant,
                       char user[OAUTH_USER_ID_MAX + 1], char scope[OAUTH_SCOPE_MAX + 1]) {
    shared *s = rd->s;
    char key[KEY_MAX];
    int r;

    snprintf(key, sizeof(key), "%sevents", rd->ns);
    pthread_rwlock_rdlock(&s->keys_lock);
    r = seal_open_tuple(&s->keys, key, strlen(key), (const unsigned char *)v->str, v->len, grant, user, scope);
    pthread_rwlock_unlock(&s->keys_lock);
    if (r == 0)
        return true;
    pthread_mutex_lock(&s->lock);
    s->stats.decrypt_failures++;
    pthread_mutex_unlock(&s->lock);
    return false;
}

/* An 'r' event: the fingerprints of tokens the fleet revoked, sealed. */
static bool learn_revoked(struct reader *rd, const redisReply *v) {
    char fps[OAUTH_USER_ID_MAX + 1], scope[OAUTH_SCOPE_MAX + 1];
    uint64_t fp[sizeof(fps) / 17 + 1];
    enum oauth_grant grant;
    size_t n;

    if (!open_event(rd, v, &grant, fps, scope) || strcmp(scope, "revoked") != 0)
        return false;
    n = fleet_fps_parse(fps, fp, ARRAY_SIZE(fp));
    for (size_t i = 0; i < n; i++)
        fleet_deny(rd->s, fp[i]);
    return true;
}

/* A flush event no host of this fleet made: another fleet shares the
 * namespace (same Redis, prefix and client id, another shared key), or a
 * Redis writer. Its new generation still hides the shared tokens sealed
 * before it (each costs a mint), but this host's own are kept. */
static void foreign_flush(shared *s) {
    uint64_t now = now_ms();
    bool say;

    pthread_mutex_lock(&s->lock);
    s->stats.foreign_flushes++;
    say = fleet_time_to_say(&s->foreign_said_ms, now);
    pthread_mutex_unlock(&s->lock);
    if (say)
        log_warning("fleet: ignoring a flush that no host of this fleet made (its proof does not hold with "
                    "our shared key): another fleet with another key uses the same Redis, [shared] prefix and "
                    "client id, or someone with the Redis password wrote it; give each fleet its own "
                    "[shared] prefix");
}

/* The value of field `name` in an event's fields, or NULL. */
static const redisReply *event_field(const redisReply *fields, const char *name);

/* Whether a flush event carries a proof a host of this fleet made, and
 * whether its generation may be our floor: only under the proof bound to
 * the floor it was made on ('b', 'q'), and within FLUSH_STEP of it. The
 * proof alone ('p', all a host of the release before makes) flushes our
 * cache, but a writer can copy it onto any generation. */
static enum flush_proof flush_proven(struct reader *rd, const redisReply *fields) {
    const redisReply *f = event_field(fields, "f"), *p = event_field(fields, "p"), *b = event_field(fields, "b"),
                     *q = event_field(fields, "q");
    unsigned long long gen, floor;
    char text[24], *end;

    if (!p || !fleet_proof_holds(rd->s, rd->ns, "flush", p->str, p->len, NULL))
        return FLUSH_FOREIGN;
    if (!f || !b || !q || f->len >= sizeof(text) || b->len == 0 || b->len >= sizeof(text))
        return FLUSH_OURS;
    snprintf(text, sizeof(text), "%.*s", (int)b->len, b->str);
    errno = 0;
    floor = strtoull(text, &end, 10);
    if (errno || *end || text[0] < '0' || text[0] > '9')
        return FLUSH_OURS;
    if (!fleet_floor_proof_holds(rd->s, rd->ns, b->str, b->len, q->str, q->len))
        return FLUSH_OURS;
    snprintf(text, sizeof(text), "%.*s", (int)f->len, f->str);
    errno = 0;
    gen = strtoull(text, &end, 10);
    if (errno || *end || text[0] < '0' || text[0] > '9' || gen <= floor || gen - floor > FLUSH_STEP)
        return FLUSH_OURS;
    return FLUSH_FLOOR;
}

/* The value of field `name` in an event's fields, or NULL. */
static const redisReply *event_field(const redisReply *fields, const char *name) {
    for (size_t i = 0; fields->type == REDIS_REPLY_ARRAY && i + 1 < fields->elements; i += 2)
        if (fields->element[i]->type == REDIS_REPLY_STRING && strcmp(fields->element[i]->str, name) == 0 &&
            fields->element[i + 1]->type == REDIS_REPLY_STRING)
            return fields->element[i + 1];
    return NULL;
}

/* A 'v' event in the stream's history: when its user's tokens were
 * revoked, if its proof holds (not applied: nothing here to revoke yet). */
static void learn_floor(struct reader *rd, const redisReply *v, const redisReply *fields) {
    const redisReply *w = event_field(fields, "w");
    char user[OAUTH_USER_ID_MAX + 1], scope[OAUTH_SCOPE_MAX + 1];
    enum oauth_grant grant;
    uint64_t at = 0;

    if (w && open_event(rd, v, &grant, user, scope) &&
        fleet_revoked_proof_holds(rd->s, rd->ns, v->str, v->len, w->str, w->len, &at))
        fleet_floor_raise(rd->s, fleet_user_fp(grant, user, scope), at);
    explicit_bzero(user, sizeof(user));
}

/* When tok was minted (wall clock, ms): as the minting host sealed it (a
 * Redis TTL a writer shortened does not move it back), or when we
 * received it. */
static uint64_t minted_at(const token *tok) {
    uint64_t now = now_ms(), ago = now > tok->received_ms ? now - tok->received_ms : 0, wall = now_unix_ms();

    return tok->minted_unix_ms ? tok->minted_unix_ms : wall > ago ? wall - ago : 0;
}

/* Our own copy of a token the fleet revoked, revoked too. It may be newer
 * than the revocation (minted or taken from Redis since the event was sent,
 * before this host read it), and Redis and other hosts may hold it: so it
 * is deleted from Redis if Redis holds this very token (else only the
 * hosts' memory of revoked tokens, a bounded ring, would keep it from
 * being served), and the event that tells every host it is revoked drops
 * the user there as well. The revocation itself is made at once. */
static void revoke_own(struct reader *rd, enum oauth_grant grant, const char *user, const char *scope, token *mine) {
    shared *s = rd->s;

    /* and the user's floor past it: a copy of it written back into Redis
     * stays refused after the ring of revoked fingerprints forgot it (found
     * by an attack: 4,096 other revocations) */
    fleet_floor_raise(s, fleet_user_fp(grant, user, scope), minted_at(mine) + 1);
    fleet_drop(s, grant, user, scope, mine, NULL, NULL);
    fleet_tell_revoked(s, rd->ns, grant, user, scope, &mine, 1);
    revocations_revoke(s->rv, &mine, 1, 0, NULL, NULL);
    token_unref(mine);
}

/* Whether a revocation event ('v', sealed) is one to revoke our own copy
 * for: it carries a proof of when it was made that holds with our key
 * (made at in *ret_at), and this host has not applied it yet. Else the
 * event only drops the user here: it is replayed, or from a host of an
 * older release, or written by hand. Event thread only. */
static bool revocation_new(struct reader *rd, const redisReply *v, const redisReply *fields, uint64_t *ret_at) {
    shared *s = rd->s;
    const redisReply *w = event_field(fields, "w");
    const char *mac = w ? memchr(w->str, ':', w->len) : NULL;
    uint64_t id, now = now_ms();
    char hex[17];
    bool say;

    if (!w || !mac || !fleet_revoked_proof_holds(s, rd->ns, v->str, v->len, w->str, w->len, ret_at)) {
        pthread_mutex_lock(&s->lock);
        say = fleet_time_to_say(&s->unproven_said_ms, now);
        pthread_mutex_unlock(&s->lock);
        if (say)
            log_warning("fleet: a revocation event carries no proof of when it was made that holds with our "
                        "shared key (a host of an older release, or written by hand): the user's token was "
                        "dropped here, and not revoked");
        return false;
    }
    snprintf(hex, sizeof(hex), "%.16s", mac + 1); /* a MAC: its first 64 bits name the event */
    id = strtoull(hex, NULL, 16);
    return fleet_revocation_applied(s, id);
}

/* Remembers that the revocation event id was applied; false if it was
 * already. The event thread's, or before it starts. */
bool fleet_revocation_applied(shared *s, uint64_t id) {
    if (!id)
        return true;
    for (size_t i = 0; i < REVS_APPLIED_MAX; i++)
        if (s->revs_applied[i] == id)
            return false;
    s->revs_applied[s->revs_next] = id;
    s->revs_next = (s->revs_next + 1) % REVS_APPLIED_MAX;
    return true;
}

/* Whether tok was minted before the wall-clock time at (ms), with
 * REVOKED_SKEW_MS for the clocks of the hosts. */
static bool minted_before(const token *tok, uint64_t at) {
    return minted_at(tok) <= at + REVOKED_SKEW_MS;
}

static void apply_event(struct reader *rd, redisReply *fields) {
    shared *s = rd->s;

    for (size_t i = 0; fields->type == REDIS_REPLY_ARRAY && i + 1 < fields->elements; i += 2) {
        redisReply *k = fields->element[i], *v = fields->element[i + 1];
        if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING)
            continue;
        if (strcmp(k->str, "d") == 0 || strcmp(k->str, "v") == 0) {
            char user[OAUTH_USER_ID_MAX + 1], scope[OAUTH_SCOPE_MAX + 1];
            enum oauth_grant grant;
            token *mine = NULL;
            uint64_t at = 0;
            bool revoke;
            if (!open_event(rd, v, &grant, user, scope))
                continue;
            /* 'v', a revocation: our own copy is revoked too, whoever holds
             * the shared one (a host minted its own during an outage, or
             * the shared copy was deleted before the revocation read it),
             * if it is older than the revocation */
            revoke = k->str[0] == 'v' && revocation_new(rd, v, fields, &at);
            if (at) /* proven: a value of theirs minted before it is never served */
                fleet_floor_raise(s, fleet_user_fp(grant, user, scope), at);
            if (s->sink.drop)
                s->sink.drop(s->sink.ctx, grant, user, scope, revoke ? &mine : NULL);
            if (mine && minted_before(mine, at))
                revoke_own(rd, grant, user, scope, mine);
            else
                token_unref(mine);
            explicit_bzero(user, sizeof(user));
        } else if (strcmp(k->str, "f") == 0) {
            enum flush_proof proof = flush_proven(rd, fields);
            size_t n;
            if (proof == FLUSH_FOREIGN) { /* its generation is not ours to trust either */
                foreign_flush(s);
                continue;
            }
            /* the new generation is the highest seen, if its proof says so */
            fleet_gen_check(s, v->str, v->len, proof == FLUSH_FLOOR);
            n = s->sink.flush ? s->sink.flush(s->sink.ctx) : 0;
            log_notice("fleet: flushed from another host: %zu cached tokens dropped here", n);
        } else if (strcmp(k->str, "r") == 0) {
            if (!learn_revoked(rd, v))
                continue;
        } else
            continue;
        pthread_mutex_lock(&s->lock);
        s->stats.events_applied++;
        pthread_mutex_unlock(&s->lock);
    }
}

/* On from Redis's newest event (what we pass over is not applied: our
 * tokens went with the reset). */
static void skip_to_newest(struct reader *rd) {
    snprintf(rd->last, sizeof(rd->last), "%s", rd->newest);
    rd->have_added = false;
    rd->behind = false;
    rd->behind_ms = 0;
}

/* Whether the stream still holds every event after the last one we read.
 * XREAD shows no gap: a writer who trims the stream (XADD MAXLEN) or
 * makes it anew under a connected reader takes out events it has yet to
 * read, and it reads on from what remains (found by an attack). So, each
 * time we have read all there is, Redis's count of entries ever added must
 * have grown by exactly what we read; and the stream must not have gone
 * back behind us. Else our tokens go (each costs a mint). */
static int whole(struct reader *rd) {
    char key[KEY_MAX];
    const char *argv[] = { "XINFO", "STREAM", key };
    struct fleet_stream_info info;
    struct fleet_stream_id last;
    redisReply *r;
    int cmp;

    snprintf(key, sizeof(key), "%sevents", rd->ns);
    r = redisCommandArgv(rd->c, 3, argv, NULL);
    if (!r)
        return rd->c->err == REDIS_ERR_OOM ? -E2BIG : -EIO;
    if (r->type == REDIS_REPLY_ERROR) { /* gone: made again at the reconnect */
        freeReplyObject(r);
        rd->have_added = false;
        stream_reset(rd, "the fleet's events stream was deleted under this host");
        return -EIO;
    }
    fleet_stream_info_decode(r, &info);
    freeReplyObject(r);
    if (!info.have_newest || !fleet_stream_id_parse(rd->last, strlen(rd->last), &last))
        return 0;
    cmp = fleet_stream_id_cmp(info.newest, last);
    rd->behind = cmp > 0;
    snprintf(rd->newest, sizeof(rd->newest), "%llu-%llu", info.newest.ms, info.newest.seq);
    if (cmp < 0) {
        stream_reset(rd, "the fleet's events stream was made anew or rewound behind this host");
        skip_to_newest(rd);
        return 0;
    }
    if (cmp > 0) {
        /* Behind: a writer adding junk as fast as we read (within every
         * limit) keeps us from the end, where the count is checked, and
         * may trim events before we reach them (found by an attack). So:
         * once the first entry is past ours, every entry added since ours
         * must still be there; and no reader stays behind for long. */
        unsigned long long ours = rd->added + rd->read_since, now = now_ms();
        const char *why = NULL;
        if (rd->have_added && info.have_added && info.have_first && info.have_length &&
            fleet_stream_id_cmp(info.first, last) > 0 && (info.added < ours || info.added - ours > info.length))
            why = "events this host had not read were trimmed out of the fleet's events stream before it read them";
        else if (info.have_gone && fleet_stream_id_cmp(info.gone, last) > 0)
            why = "events this host had not read were deleted from the fleet's events stream";
        else if (!rd->behind_ms)
            rd->behind_ms = now ? now : 1;
        else if (now - rd->behind_ms > BEHIND_MAX_MS)
            why = "this host could not read to the end of the fleet's events stream for 2 s (flooded?)";
        if (why) {
            stream_reset(rd, why);
            skip_to_newest(rd);
        }
        return 0;
    }
    rd->behind_ms = 0;
    if (cmp > 0 || !info.have_added) /* more to read first; or a Redis before 7.0 */
        return 0;
    if (rd->have_added && info.added != rd->added + rd->read_since)
        stream_reset(rd, "events this host had not read were taken out of the fleet's events stream (trimmed, "
                         "or the stream made anew, under it)");
    rd->have_added = true;
    rd->added = info.added;
    rd->read_since = 0;
    return 0;
}

/* Where the reader is, for the image: a restart replays from there. "0-0"
 * (a stream we could not add to) says nothing of what was read. */
static void note_read(struct reader *rd) {
    shared *s = rd->s;
    uint64_t redis = redis_id(rd->address);

    pthread_mutex_lock(&s->lock);
    snprintf(s->last_read, sizeof(s->last_read), "%s", strcmp(rd->last, "0-0") == 0 ? "" : rd->last);
    snprintf(s->last_read_ns, sizeof(s->last_read_ns), "%s", rd->ns);
    s->last_read_redis = redis;
    pthread_mutex_unlock(&s->lock);
}

/* One XREAD: blocks up to EVENT_BLOCK_MS for events after the last one,
 * except the first on a connection, which says at once whether we have
 * read all there is (a host starting waits on that). */
static int read_events(struct reader *rd) {
    const redisReply *entries;
    char key[KEY_MAX], block[16];
    const char *argv[] = { "XREAD", "COUNT", "128", "BLOCK", block, "STREAMS", key, rd->last };
    const char *now[] = { "XREAD", "COUNT", "128", "STREAMS", key, rd->last };
    redisReply *r;

    snprintf(key, sizeof(key), "%sevents", rd->ns);
    snprintf(block, sizeof(block), "%d", EVENT_BLOCK_MS);
    r = rd->fresh ? redisCommandArgv(rd->c, 6, now, NULL) : redisCommandArgv(rd->c, 8, argv, NULL);
    rd->fresh = false;
    if (!r)
        return rd->c->err == REDIS_ERR_OOM ? -E2BIG : -EIO;
    if (r->type == REDIS_REPLY_ERROR) {
        freeReplyObject(r);
        return -EIO;
    }
    entries = fleet_xread_entries(r);
    rd->caught_up = !entries || entries->elements < 128;
    if (!entries && rd->behind) {
        /* Redis added events after our last, and none is there to read:
         * taken out (XADD MAXLEN 0, MINID) before we read them (found by
         * an attack). On from the newest, our tokens gone. */
        stream_reset(rd, "events this host had not read were taken out of the fleet's events stream (trimmed "
                         "under it)");
        skip_to_newest(rd);
        freeReplyObject(r);
        return 1;
    }
    rd->behind = false;
    if (entries) { /* else nil: nothing came in the block */
        for (size_t i = 0; i < entries->elements; i++) {
            redisReply *e = entries->element[i];
            struct fleet_stream_id id;
            if (e->type != REDIS_REPLY_ARRAY || e->elements != 2 || e->element[0]->type != REDIS_REPLY_STRING)
                continue;
            if (rd->redis_ms && fleet_stream_id_parse(e->element[0]->str, e->element[0]->len, &id) &&
                id.ms > rd->redis_ms + FUTURE_MAX_MS) {
                /* no XADD '*' made it: someone pushed the stream's top into
                 * the future, so that hosts skip every event after it. The
                 * stream is made anew (with a flush); we read on from now. */
                stream_reset(rd, "the fleet's events stream holds an event from the future (written by hand)");
                /* made anew: XADD '*' goes on from the stream's top, so
                 * every event after it would be "from the future" too */
                fleet_repair_flush(rd->s, "the fleet's events stream was poisoned", true);
                /* on past it: nothing can be added between (an explicit id
                 * must be above the top), and reading from before it again
                 * would reset at every turn until the repair (found by an
                 * attack: a mint a request) */
                copy_id(rd->last, e->element[0]);
                rd->have_added = false;
                rd->behind_ms = 0;
                freeReplyObject(r);
                return 1;
            }
            if (e->element[1]->type == REDIS_REPLY_ARRAY && e->element[1]->elements > EVENT_FIELDS_MAX) {
                freeReplyObject(r); /* too large to be one of ours: oversized() */
                return -E2BIG;
            }
            apply_event(rd, e->element[1]);
            rd->read_since++;
            copy_id(rd->last, e->element[0]);
        }
    }
    freeReplyObject(r);
    return 0;
}

/* The stream holds an event too large for our reader (fleet_reader_bound),
 * or with more fields than EVENT_FIELDS_MAX: written by hand, as no host
 * makes one. It would fail every read, and
 * every host would stop hearing of drops: this host's tokens go (what it
 * can no longer hear of may be in there), and the stream is made anew
 * with a flush. */
static void oversized(struct reader *rd) {
    const char *why = "the fleet's events stream holds an event too large to be one of ours (written by hand)";

    stream_reset(rd, why);
    fleet_repair_flush(rd->s, why, true);
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

void *fleet_event_thread(void *arg) {
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
            rd.last[0] = '\0';
            pthread_rwlock_unlock(&s->keys_lock);
            reader_close(&rd);
        } else
            pthread_rwlock_unlock(&s->keys_lock);
        if (!rd.c) {
            char err[256] = "", address[280];
            bool same_redis = false;
            rd.c = fleet_redis_open(s, false, address, sizeof(address), err, sizeof(err));
            if (rd.c) {
                same_redis = rd.last[0] && strcmp(rd.address, address) == 0;
                snprintf(rd.address, sizeof(rd.address), "%s", address);
            }
            if (!rd.c) {
                uint64_t now = now_ms();
                bool say;
                pthread_mutex_lock(&s->lock);
                say = fleet_time_to_say(&s->events_said_ms, now);
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
                int cr = stop ? -ECANCELED : catch_up(&rd, same_redis);
                if (cr == -E2BIG)
                    oversized(&rd);
                if (cr < 0)
                    reader_close(&rd);
                else {
                    pthread_mutex_lock(&s->lock);
                    s->stats.events_ok = true;
                    pthread_mutex_unlock(&s->lock);
                    note_read(&rd);
                    rd.fresh = true;
                    rd.behind_ms = 0;
                    if (cr == 0) /* read from elsewhere: counted again from the next time all is read */
                        rd.have_added = false;
                }
            }
            if (!rd.c) {
                /* backoff, interrupted by a stop */
                struct timespec ts;
                uint64_t wait = failures < 3 ? 50ULL << failures : 250; /* soon: missed drops wait on it */
                failures++;
                mono_deadline(wait, &ts);
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
                r = whole(&rd);
            if (r == 0)
                r = read_events(&rd);
            if (r >= 0)
                note_read(&rd);
            if (r == 0 && rd.caught_up) { /* tokens minted here while Redis was away */
                fleet_reconcile(s, rd.ns, rd.last);
                pthread_mutex_lock(&s->lock);
                if (!s->read_once) { /* the start waits on it: shared_wait_read() */
                    s->read_once = true;
                    pthread_cond_broadcast(&s->read_cond);
                }
                pthread_mutex_unlock(&s->lock);
            }
            if (r == -E2BIG)
                oversized(&rd);
            if (r < 0)
                reader_close(&rd);
            else if (r > 0) { /* a poisoned stream being mended: not in a tight loop */
                struct timespec ts;
                mono_deadline(200, &ts);
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
