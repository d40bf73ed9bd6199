/* Fleet mode's jobs: what a caller's lookup, drop, revocation or flush
 * becomes on its way to Redis, queued for the command thread (submit), put
 * off while Redis is away, minted here when the fleet has no token, and
 * published for the other hosts. Not responsible for sending them
 * (fleet_batch.c) nor for what hosts trust (fleet_trust.c). */
#include <errno.h>
#include <hiredis/hiredis.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fleet.h"
#include "log.h"
#include "util.h"

void fleet_job_free(struct job *j) {
    if (!j)
        return;
    if (j->ack) /* a drop or flush ended without Redis taking it (stopping, or nothing to send) */
        j->ack(j->actx, false);
    if (j->kind == J_ADOPT && j->guard[0]) { /* counted by fleet_reconcile() */
        pthread_mutex_lock(&j->s->lock);
        j->s->adopting--;
        pthread_mutex_unlock(&j->s->lock);
    }
    token_unref(j->tok);
    token_unref(j->local);
    /* it holds a user id and, for a publish, a sealed token: no need to leave them */
    wipe_free(j, sizeof(*j));
}

/* Ends a lookup without a token: frees the job, then tells the cache. */
void fleet_unavailable(struct job *j, const char *error, int http_status, unsigned retry_after_s,
                        bool deferred) {
    mint_outcome o = { .kind = MINT_UNAVAILABLE, .http_status = http_status, .retry_after_s = retry_after_s,
                       .deferred = deferred };
    cache_done_fn done = j->done;
    void *ctx = j->ctx;

    snprintf(o.error, sizeof(o.error), "%s", error);
    fleet_job_free(j);
    done(ctx, &o, NULL);
}

void fleet_count_op(shared *s, enum shared_op op, bool ok) {
    pthread_mutex_lock(&s->lock);
    s->stats.ops[op][ok ? 0 : 1]++;
    pthread_mutex_unlock(&s->lock);
}

/* ---- sent again after a failover ---- */

/* A drop, revocation or flush Redis took: remembered a while (see
 * fleet_replay_recent_locked()). */
void fleet_remember(shared *s, const struct job *j, uint64_t now) {
    struct recent *m = &s->recent[s->recent_next];

    *m = (struct recent){ .at_ms = now, .kind = j->kind, .grant = j->grant };
    memcpy(m->user, j->user, sizeof(m->user));
    memcpy(m->scope, j->scope, sizeof(m->scope));
    memcpy(m->fps, j->fps, sizeof(m->fps));
    memcpy(m->ns, j->ns, sizeof(m->ns));
    memcpy(m->tok_key, j->tok_key, sizeof(m->tok_key));
    s->recent_next = (s->recent_next + 1) % RECENT_MAX;
}

/* A job that sends again what m remembers, to where it went then. */
static struct job *job_of_recent(shared *s, const struct recent *m) {
    struct job *j = fleet_job_new(s, m->kind, m->grant, m->user, m->scope);

    if (!j)
        return NULL;
    snprintf(j->fps, sizeof(j->fps), "%s", m->fps);
    snprintf(j->ns, sizeof(j->ns), "%s", m->ns);
    for (size_t k = 0; k < ARRAY_SIZE(j->tok_key); k++)
        snprintf(j->tok_key[k], sizeof(j->tok_key[k]), "%s", m->tok_key[k]);
    return j;
}

/* Connected to another master than before (a failover): what the last one
 * took lately is sent again, first, since a master the sentinels deposed
 * loses its last writes when it rejoins as a replica, and a host can keep
 * writing to it for seconds (it still says "master"). Drops and flushes
 * are harmless to repeat; a revocation's drop is repeated as a drop (the
 * revocation itself was made). Called with the lock held. */
void fleet_replay_recent_locked(shared *s, const char *address, uint64_t now) {
    struct queue again = { 0 };

    if (s->master[0] && strcmp(s->master, address) != 0)
        for (size_t i = 0; i < RECENT_MAX; i++) {
            struct recent *m = &s->recent[i];
            struct job *j;
            if (!m->at_ms || now - m->at_ms > RECENT_MS)
                continue;
            pthread_mutex_unlock(&s->lock);
            j = job_of_recent(s, m);
            pthread_mutex_lock(&s->lock);
            if (j)
                queue_push(&again, &j->link);
            s->stats.replayed++;
        }
    snprintf(s->master, sizeof(s->master), "%s", address);
    queue_prepend(&s->queue, &again);
}

/* ---- making jobs ---- */


/* Names the job's keys, under the keys' lock. Returns 0 or -EIO. */
int fleet_job_names(shared *s, struct job *j) {
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
        snprintf(j->lease_prev, KEY_MAX, "%sl:%s", s->ns, name);
    }
    pthread_rwlock_unlock(&s->keys_lock);
    return r;
}

struct job *fleet_job_new(shared *s, enum job_kind kind, enum oauth_grant grant, const char *user_id,
                           const char *scope) {
    struct job *j = calloc(1, sizeof(*j));

    if (!j)
        return NULL;
    j->s = s;
    j->kind = kind;
    j->grant = grant;
    snprintf(j->user, sizeof(j->user), "%s", user_id ? user_id : "");
    snprintf(j->scope, sizeof(j->scope), "%s", scope ? scope : "");
    if (kind == J_LOOKUP || kind == J_DROP || kind == J_ADOPT) {
        if (fleet_job_names(s, j) < 0) {
            fleet_job_free(j);
            return NULL;
        }
        if (kind == J_DROP || kind == J_LOOKUP) /* a lookup may find a value to revoke */
            j->up_gen = upstream_generation(s->up);
    } else {
        pthread_rwlock_rdlock(&s->keys_lock);
        snprintf(j->ns, sizeof(j->ns), "%s", s->ns);
        pthread_rwlock_unlock(&s->keys_lock);
    }
    return j;
}

struct job *fleet_job_again(shared *s, const struct job *j) {
    struct job *again = calloc(1, sizeof(*again));

    if (!again)
        return NULL;
    again->s = s;
    again->kind = j->kind;
    again->grant = j->grant;
    memcpy(again->user, j->user, sizeof(again->user));
    memcpy(again->scope, j->scope, sizeof(again->scope));
    memcpy(again->ns, j->ns, sizeof(again->ns));
    again->up_gen = j->up_gen;
    memcpy(again->tok_key, j->tok_key, sizeof(again->tok_key));
    memcpy(again->lease_key, j->lease_key, sizeof(again->lease_key));
    memcpy(again->lease_prev, j->lease_prev, sizeof(again->lease_prev));
    memcpy(again->fp, j->fp, sizeof(again->fp));
    memcpy(again->fp_prev, j->fp_prev, sizeof(again->fp_prev));
    memcpy(again->fps, j->fps, sizeof(again->fps));
    return again;
}

static void later_take_locked(struct job *j, struct later *l) {
    memcpy(l->ns, j->ns, sizeof(l->ns));
    l->up_gen = j->up_gen;
    l->local = j->local;
    l->done = j->rdone;
    l->ctx = j->rctx;
    l->ack = j->ack;
    l->actx = j->actx;
    j->local = NULL;
    j->rdone = NULL;
    j->ack = NULL;
}

static void later_tell(shared *s, struct later *l, const char *why) {
    struct revoke_outcome o = { .pending = 1, .failure = { .kind = MINT_UNAVAILABLE, .retry_after_s = 1 } };

    if (l->local) {
        fleet_tell_revoked(s, l->ns[0] ? l->ns : NULL, OAUTH_GRANT_USER_ASSERTION, NULL, NULL, &l->local, 1);
        revocations_revoke(s->rv, &l->local, 1, l->up_gen, NULL, NULL);
    }
    l->local = token_unref(l->local);
    snprintf(o.failure.error, sizeof(o.failure.error), "%s", why);
    if (l->done)
        l->done(l->ctx, &o);
    l->done = NULL;
    if (l->ack)
        l->ack(l->actx, false);
    l->ack = NULL;
}

/* At a stop, a drop, flush or revocation Redis has not taken: its caller,
 * if one still waits, is told it is not done, a revocation's own copy is
 * revoked now (or kept by the revocations), and the job is kept for the
 * image carried over a restart (shared_export_pending()). */
void fleet_carry(shared *s, struct job *j) {
    struct later l = { 0 };

    later_take_locked(j, &l);
    later_tell(s, &l, "stopping");
    pthread_mutex_lock(&s->lock);
    queue_push(&s->carried, &j->link);
    pthread_mutex_unlock(&s->lock);
}

/* A drop or a flush that Redis cannot take now waits for the next
 * connection: lost, it would leave a revoked token in Redis for the other
 * hosts (and for this one, once Redis is back). Bounded; called with the
 * lock held. */
bool fleet_keep_for_later_locked(shared *s, struct job *j, struct later *l) {
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
bool fleet_submit(shared *s, struct job *j) {
    struct later l = { 0 };
    uint64_t wait;
    bool ok;

    pthread_mutex_lock(&s->lock);
    ok = !s->stopping && s->queue.n + s->waiting.n < JOBS_MAX;
    if (ok && breaker_refuses(&s->br, now_ms(), &wait)) {
        ok = fleet_keep_for_later_locked(s, j, &l);
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
 * runs (see fleet_due_renewals()), so a slow Instacart costs no second mint. */
void fleet_hold(shared *s, struct job *j) {
    struct held *h = calloc(1, sizeof(*h));
    uint64_t every = __atomic_load_n(&s->lease_ms, __ATOMIC_RELAXED) / 4;

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

/* ---- tokens minted here while Redis was away ---- */

/* Kept to reconcile once Redis is back; bounded (beyond, a token stays
 * this host's own until it is refreshed, as before). */
static void own_add(shared *s, const struct job *j, token *t) {
    struct own *o;

    if (fleet_ns_moved(s, j) || !(o = calloc(1, sizeof(*o))))
        return;
    o->grant = j->grant;
    memcpy(o->user, j->user, sizeof(o->user));
    memcpy(o->scope, j->scope, sizeof(o->scope));
    memcpy(o->ns, j->ns, sizeof(o->ns));
    o->tok = token_ref(t);
    pthread_mutex_lock(&s->lock);
    snprintf(o->gen, sizeof(o->gen), "%llu", s->max_gen);
    if (s->n_own < OWN_MAX) {
        o->next = s->own;
        s->own = o;
        s->n_own++;
        o = NULL;
    }
    pthread_mutex_unlock(&s->lock);
    if (o) {
        token_unref(o->tok);
        wipe_free(o, sizeof(*o));
    }
}

static void own_free_list(struct own *o) {
    while (o) {
        struct own *next = o->next;
        token_unref(o->tok);
        wipe_free(o, sizeof(*o)); /* a user id */
        o = next;
    }
}

void fleet_own_free(shared *s) {
    struct own *o;

    pthread_mutex_lock(&s->lock);
    o = s->own;
    s->own = NULL;
    s->n_own = 0;
    pthread_mutex_unlock(&s->lock);
    own_free_list(o);
}

/* Redis is back and this host has applied the fleet's events up to
 * last_event: each token it minted on its own meanwhile, and still holds
 * (no drop or flush took it), is offered to the fleet (adopt_lua): shared
 * if nothing was dropped or flushed since, or given up here for the one
 * the fleet already shares. So after an outage a user has one token across
 * the hosts again, at no mint's cost. Called by the event thread. */
void fleet_reconcile(shared *s, const char *ns, const char *last_event) {
    struct own *list, *o;

    pthread_mutex_lock(&s->lock);
    list = s->stats.up ? s->own : NULL;
    if (list) {
        s->adopting += s->n_own; /* each until its job ends, or it is passed over */
        s->own = NULL;
        s->n_own = 0;
    }
    pthread_mutex_unlock(&s->lock);
    for (o = list; o; o = o->next) {
        struct job *j = NULL;
        if (strcmp(o->ns, ns) == 0 && last_event[0] && s->sink.holds &&
            s->sink.holds(s->sink.ctx, o->grant, o->user, o->scope, o->tok))
            j = fleet_job_new(s, J_ADOPT, o->grant, o->user, o->scope);
        if (j && strcmp(j->ns, o->ns) != 0) {
            fleet_job_free(j);
            j = NULL;
        }
        if (!j) { /* dropped or flushed here since, or another namespace now */
            pthread_mutex_lock(&s->lock);
            s->adopting--;
            pthread_mutex_unlock(&s->lock);
            continue;
        }
        snprintf(j->guard, sizeof(j->guard), "%s", last_event); /* fleet_job_free() counts it out */
        j->tok = token_ref(o->tok);
        snprintf(j->gen, sizeof(j->gen), "%s", o->gen);
        if (!fleet_submit(s, j))
            fleet_job_free(j);
    }
    own_free_list(list);
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
    if (t) /* the credentials work: a flag saying otherwise, made before now, is over */
        fleet_creds_ok(s, now_unix_ms());
    if (j->how == SHARED_MINT_DEGRADED && t)
        own_add(s, j, t);
    if (j->how != SHARED_MINT_DEGRADED) {
        if (t)
            publish(s, j, t);
        if ((!t || !j->published) && j->lease_id[0]) {
            /* let the next host try at once rather than wait out the lease */
            struct job *r = fleet_job_new(s, J_RELEASE, j->grant, NULL, NULL);
            if (r) {
                snprintf(r->lease_key, KEY_MAX, "%s", j->lease_key);
                snprintf(r->lease_id, sizeof(r->lease_id), "%s", j->lease_id);
                if (!fleet_submit(s, r))
                    fleet_job_free(r);
            }
        }
    }
    fleet_job_free(j);
    done(ctx, o, t);
}

void fleet_mint(shared *s, struct job *j, enum shared_mint how) {
    j->how = how;
    upstream_mint(s->up, j->grant, j->user, j->scope, minted, j);
}

/* A lookup that could not reach Redis. A refresh of a token with plenty of
 * life left waits for Redis to come back (the cache asks again later), so
 * an outage does not make every host refresh on its own; anything else is
 * minted here, as without a fleet. */
void fleet_degrade(shared *s, struct job *j) {
    if (j->want.have_ms > __atomic_load_n(&s->plenty_ms, __ATOMIC_RELAXED)) {
        fleet_unavailable(j, "shared_unavailable", 0, 1, true);
        return;
    }
    fleet_mint(s, j, SHARED_MINT_DEGRADED);
}

/* A job that could not be sent or answered: counted, and a lookup is
 * minted here (or put off). */
void fleet_fail_job(shared *s, struct job *j) {
    struct later l = { 0 };
    bool kept;

    if (j->kind != J_PING)
        fleet_count_op(s, fleet_op_of(j->kind), false);
    if (j->kind == J_LOOKUP) {
        fleet_degrade(s, j);
        return;
    }
    pthread_mutex_lock(&s->lock);
    kept = !s->stopping && fleet_keep_for_later_locked(s, j, &l);
    pthread_mutex_unlock(&s->lock);
    if (kept) {
        later_tell(s, &l, "shared_unavailable");
        return;
    }
    later_take_locked(j, &l);
    later_tell(s, &l, "shared_unavailable");
    fleet_job_free(j);
}

/* Whether a reload moved us to another namespace since the job was made. */
bool fleet_ns_moved(shared *s, const struct job *j) {
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
    if (fleet_ns_moved(s, from))
        return;
    j = fleet_job_new(s, J_PUBLISH, from->grant, NULL, NULL);
    if (!j)
        return;
    snprintf(j->ns, sizeof(j->ns), "%s", from->ns);
    snprintf(j->tok_key[0], KEY_MAX, "%s", from->tok_key[0]);
    snprintf(j->lease_key, KEY_MAX, "%s", from->lease_key);
    snprintf(j->lease_id, sizeof(j->lease_id), "%s", from->lease_id);
    snprintf(j->gen, sizeof(j->gen), "%s", from->gen[0] ? from->gen : "0");
    j->tok = token_ref(t);
    if (!fleet_submit(s, j)) {
        fleet_count_op(s, SHARED_OP_PUBLISH, false);
        fleet_job_free(j);
        return;
    }
    from->published = true;
}


void fleet_flush(shared *s, shared_ack_fn ack, void *userdata) {
    fleet_flush_as(s, false, ack, userdata);
}

void fleet_flush_as(shared *s, bool remake, shared_ack_fn ack, void *userdata) {
    struct job *j = fleet_job_new(s, J_FLUSH, OAUTH_GRANT_USER_ASSERTION, NULL, NULL);

    if (!j) {
        if (ack)
            ack(userdata, false);
        return;
    }
    j->ack = ack;
    j->actx = userdata;
    j->remake = remake;
    if (!fleet_submit(s, j)) {
        fleet_count_op(s, SHARED_OP_FLUSH, false);
        fleet_job_free(j); /* tells ack */
    }
}

/* A flush that puts the generation above anything a host saw and makes the
 * events stream anew if needed: what Redis holds can no longer be told
 * apart from what someone wrote, so none of it is read. */
void fleet_repair_flush(shared *s, const char *why, bool remake) {
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
    fleet_flush_as(s, remake, NULL, NULL);
}

/* Tells every host which tokens were revoked, so that a value written back
 * into Redis after its revocation is never served; with a user, every host
 * drops that user's token too (one it took before it heard). Told in ns,
 * the namespace the revocation was asked or heard in (NULL: the one now),
 * as a reload to another server may have come meanwhile. */
void fleet_tell_revoked(shared *s, const char *ns, enum oauth_grant grant, const char *user_id, const char *scope,
                        token *const *toks, size_t n) {
    uint64_t fps[3];
    size_t k = 0;

    for (size_t i = 0; i < n && k < 3; i++)
        if (toks[i])
            fps[k++] = fleet_token_fp(toks[i]);
    fleet_tell_revoked_fps(s, ns, grant, user_id, scope, fps, k);
}

size_t fleet_fps_parse(const char *text, uint64_t *fps, size_t max) {
    size_t n = 0;

    for (const char *p = text; *p && n < max;) {
        char *end;
        fps[n] = strtoull(p, &end, 16);
        if (end != p + 16)
            break;
        n++;
        p = *end == ',' ? end + 1 : end;
    }
    return n;
}

void fleet_tell_revoked_fps(shared *s, const char *ns, enum oauth_grant grant, const char *user_id,
                            const char *scope, const uint64_t *fps, size_t n) {
    struct job *j = fleet_job_new(s, J_REVOKED, grant, user_id, scope);
    size_t len = 0;

    if (j && ns)
        snprintf(j->ns, sizeof(j->ns), "%s", ns);
    for (size_t i = 0; i < n; i++) {
        fleet_deny(s, fps[i]);
        if (j && len + 17 < sizeof(j->fps))
            len += (size_t)snprintf(j->fps + len, sizeof(j->fps) - len, "%s%016llx", len ? "," : "",
                                    (unsigned long long)fps[i]);
    }
    if (j && (!len || !fleet_submit(s, j)))
        fleet_job_free(j);
}

void fleet_on_paused(void *userdata, uint64_t ms) {
    shared *s = userdata;
    struct job *j = fleet_job_new(s, J_PAUSE, OAUTH_GRANT_USER_ASSERTION, NULL, NULL);

    if (!j)
        return;
    j->ms = ms;
    if (!fleet_submit(s, j))
        fleet_job_free(j);
}

void fleet_on_credentials_rejected(void *userdata) {
    shared *s = userdata;
    struct job *j = fleet_job_new(s, J_CREDS, OAUTH_GRANT_USER_ASSERTION, NULL, NULL);

    if (j && !fleet_submit(s, j))
        fleet_job_free(j);
}

enum shared_op fleet_op_of(enum job_kind k) {
    switch (k) {
    case J_LOOKUP:
        return SHARED_OP_LOOKUP;
    case J_PUBLISH:
    case J_RELEASE:
    case J_RENEW:
    case J_ADOPT:
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

/* A generation read from Redis, trusted or mended: one set back or not a
 * number is refused, and a flush puts it above the highest seen. */
bool fleet_gen_check(shared *s, const char *text, size_t len, bool proven) {
    const char *why = fleet_gen_seen(s, text, len, proven);

    if (why)
        fleet_repair_flush(s, why, false);
    return !why;
}

bool fleet_gen_check_sent(shared *s, const char *text, size_t len, uint64_t sent_floor, bool *old) {
    const char *why = fleet_gen_seen_sent(s, text, len, false, sent_floor, old);

    if (why)
        fleet_repair_flush(s, why, false);
    return !why;
}

void fleet_drop(shared *s, enum oauth_grant grant, const char *user_id, const char *scope, const token *only,
                shared_ack_fn ack, void *userdata) {
    struct job *j = fleet_job_new(s, J_DROP, grant, user_id, scope);

    if (!j) {
        if (ack)
            ack(userdata, false);
        return;
    }
    j->ack = ack; /* told by fleet_job_free() if it ends before Redis takes it */
    j->actx = userdata;
    if (only) {
        int r;
        pthread_rwlock_rdlock(&s->keys_lock);
        r = seal_fingerprint(&s->keys, only->value, only->len, j->fp);
        if (r == 0 && seal_fingerprint_with(&s->keys, true, only->value, only->len, j->fp_prev) < 0)
            j->fp_prev[0] = '\0'; /* no previous key */
        pthread_rwlock_unlock(&s->keys_lock);
        if (r < 0) {
            fleet_job_free(j);
            return;
        }
    }
    if (!fleet_submit(s, j)) {
        fleet_count_op(s, SHARED_OP_DROP, false);
        fleet_job_free(j);
    }
}

void fleet_revoke(shared *s, enum oauth_grant grant, const char *user_id, const char *scope, token *local,
                  uint64_t asked_unix_ms, revoke_done_fn done, void *userdata) {
    struct job *j = fleet_job_new(s, J_DROP, grant, user_id, scope);
    struct later l = { .local = token_ref(local), .done = done, .ctx = userdata };

    if (!j) {
        later_tell(s, &l, "out_of_memory");
        return;
    }
    j->revoke = true;
    j->asked_unix_ms = asked_unix_ms && asked_unix_ms < now_unix_ms() ? asked_unix_ms : now_unix_ms();
    /* here at once; on the other hosts when they read the event */
    fleet_floor_raise(s, fleet_user_fp(grant, user_id, scope), j->asked_unix_ms);
    j->local = l.local;
    j->rdone = l.done;
    j->rctx = l.ctx;
    if (!fleet_submit(s, j)) {
        fleet_count_op(s, SHARED_OP_DROP, false);
        later_take_locked(j, &l);
        fleet_job_free(j);
        later_tell(s, &l, "shared_unavailable");
    }
}
