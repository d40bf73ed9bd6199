/* Revocations that must land: see revoke.h.
 *
 * Each token is one entry on a list under one mutex. An entry is either in
 * flight (one revocation sent through the upstream client) or waiting for
 * its next try; the service's loop calls revocations_tick() about once a
 * second to send those that are due. The upstream client calls back from
 * its worker thread, or at once when its circuit is open: nothing here is
 * held across a call into it. */
#include "revoke.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "util.h"

#define RETRY_FIRST_MS 1000
#define RETRY_MAX_MS 60000

struct batch {
    revoke_done_fn done;
    void *userdata;
    unsigned outstanding;
    struct revoke_outcome o;
};

struct entry {
    struct entry *next;
    struct entry *send_next; /* the entries one call sends, once the lock is released */
    revocations *rv;
    token *t;
    struct batch *b;     /* the caller waiting on the first try, or NULL */
    bool in_flight;
    uint64_t generation; /* the server and client id the token is of (upstream_generation()) */
    unsigned failures;
    uint64_t next_ms;
};

struct revocations {
    upstream *up;
    uint64_t generation; /* the upstream's, as last seen (atomic): revocations_free() may outlive the upstream */
    pthread_mutex_t lock;
    struct entry *head;  /* every entry, in flight or waiting */
    struct revoke_stats stats;
};

int revocations_new(upstream *up, revocations **ret) {
    revocations *rv = calloc(1, sizeof(*rv));

    if (!rv)
        return -ENOMEM;
    rv->up = up;
    rv->generation = upstream_generation(up);
    pthread_mutex_init(&rv->lock, NULL);
    *ret = rv;
    return 0;
}

static void unlink_locked(revocations *rv, struct entry *e) {
    for (struct entry **p = &rv->head; *p; p = &(*p)->next)
        if (*p == e) {
            *p = e->next;
            rv->stats.pending--;
            return;
        }
}

static uint64_t backoff_ms(unsigned failures) {
    uint64_t d = (uint64_t)RETRY_FIRST_MS << (failures < 6 ? failures : 6);

    if (d > RETRY_MAX_MS)
        d = RETRY_MAX_MS;
    return d / 2 + random_u64() % (d / 2 + 1);
}

static void attempted(void *userdata, const mint_outcome *o, token *unused) {
    struct entry *e = userdata;
    revocations *rv = e->rv;
    struct batch *b = e->b;
    bool ok = o->kind == MINT_OK, last = false;

    token_unref(unused);
    pthread_mutex_lock(&rv->lock);
    e->b = NULL;
    e->in_flight = false;
    if (ok) {
        unlink_locked(rv, e);
        rv->stats.revoked++;
    } else {
        e->failures++;
        e->next_ms = now_ms() + backoff_ms(e->failures);
    }
    if (b) {
        if (ok)
            b->o.revoked++;
        else {
            b->o.pending++;
            b->o.failure = *o;
        }
        last = --b->outstanding == 0;
    }
    pthread_mutex_unlock(&rv->lock);
    if (ok) {
        token_unref(e->t);
        free(e);
    } else if (e->failures == 1)
        log_warning("a revocation at Instacart failed (%s); tokend tries it again until Instacart takes it "
                    "or the token expires", o->error[0] ? o->error : "no answer");
    if (last) {
        b->done(b->userdata, &b->o);
        free(b);
    }
}

static bool known_locked(revocations *rv, const token *t) {
    for (struct entry *e = rv->head; e; e = e->next)
        if (e->t->len == t->len && memcmp(e->t->value, t->value, t->len) == 0)
            return true;
    return false;
}

void revocations_revoke(revocations *rv, token *const *toks, size_t n, uint64_t generation, revoke_done_fn done,
                        void *userdata) {
    struct entry *start = NULL;
    struct batch *b = NULL;
    struct revoke_outcome now = { 0 };

    if (done) {
        b = calloc(1, sizeof(*b));
        if (!b) {
            now.pending = 1;
            now.failure.kind = MINT_UNAVAILABLE;
            snprintf(now.failure.error, sizeof(now.failure.error), "out_of_memory");
            done(userdata, &now);
            return;
        }
        b->done = done;
        b->userdata = userdata;
        b->outstanding = 1; /* ours, until every token is sent */
    }
    __atomic_store_n(&rv->generation, upstream_generation(rv->up), __ATOMIC_RELAXED);
    if (!generation)
        generation = __atomic_load_n(&rv->generation, __ATOMIC_RELAXED);
    pthread_mutex_lock(&rv->lock);
    for (size_t i = 0; i < n; i++) {
        struct entry *e;
        bool dup = false;

        if (!toks[i])
            continue;
        for (size_t k = 0; k < i; k++)
            dup |= toks[k] && toks[k]->len == toks[i]->len && memcmp(toks[k]->value, toks[i]->value, toks[i]->len) == 0;
        if (dup || known_locked(rv, toks[i]))
            continue; /* already on its way */
        if (rv->stats.pending >= REVOKE_PENDING_MAX || !(e = calloc(1, sizeof(*e)))) {
            rv->stats.refused++;
            if (b) {
                b->o.pending++;
                b->o.failure = (mint_outcome){ .kind = MINT_UNAVAILABLE };
                snprintf(b->o.failure.error, sizeof(b->o.failure.error), "too_many_pending_revocations");
            }
            log_error("cannot keep another revocation: %u are waiting for Instacart", rv->stats.pending);
            continue;
        }
        e->rv = rv;
        e->t = token_ref(toks[i]);
        e->generation = generation;
        e->b = b;
        e->in_flight = true;
        e->next = rv->head;
        rv->head = e;
        rv->stats.pending++;
        if (b)
            b->outstanding++;
        e->send_next = start;
        start = e;
    }
    pthread_mutex_unlock(&rv->lock);
    while (start) {
        struct entry *e = start;
        start = e->send_next;
        upstream_revoke(rv->up, e->generation, e->t->value, attempted, e);
    }
    if (b) {
        bool last;
        pthread_mutex_lock(&rv->lock);
        last = --b->outstanding == 0;
        pthread_mutex_unlock(&rv->lock);
        if (last) {
            b->done(b->userdata, &b->o);
            free(b);
        }
    }
}

void revocations_tick(revocations *rv) {
    struct entry *due[64];
    size_t n = 0;
    uint64_t now = now_ms();

    __atomic_store_n(&rv->generation, upstream_generation(rv->up), __ATOMIC_RELAXED);
    pthread_mutex_lock(&rv->lock);
    for (struct entry *e = rv->head, *next; e && n < ARRAY_SIZE(due); e = next) {
        next = e->next;
        if (e->in_flight || e->next_ms > now)
            continue;
        if (token_remaining_ms(e->t, now) == 0) {
            /* it can no longer be used: nothing left to revoke */
            unlink_locked(rv, e);
            rv->stats.expired++;
            token_unref(e->t);
            free(e);
            continue;
        }
        e->in_flight = true;
        rv->stats.retried++;
        due[n++] = e;
    }
    pthread_mutex_unlock(&rv->lock);
    for (size_t i = 0; i < n; i++)
        upstream_revoke(rv->up, due[i]->generation, due[i]->t->value, attempted, due[i]);
}

size_t revocations_export(revocations *rv, void (*fn)(void *userdata, const token *t), void *userdata) {
    uint64_t generation = upstream_generation(rv->up), now = now_ms();
    size_t n = 0;

    __atomic_store_n(&rv->generation, generation, __ATOMIC_RELAXED);
    pthread_mutex_lock(&rv->lock);
    for (struct entry *e = rv->head; e; e = e->next)
        if (e->generation == generation && token_remaining_ms(e->t, now) > 0) {
            fn(userdata, e->t);
            n++;
        }
    pthread_mutex_unlock(&rv->lock);
    return n;
}

void revocations_get_stats(revocations *rv, struct revoke_stats *ret) {
    pthread_mutex_lock(&rv->lock);
    *ret = rv->stats;
    pthread_mutex_unlock(&rv->lock);
}

revocations *revocations_free(revocations *rv) {
    unsigned left = 0, elsewhere = 0;
    uint64_t generation;

    if (!rv)
        return NULL;
    generation = __atomic_load_n(&rv->generation, __ATOMIC_RELAXED); /* the upstream may be gone */
    while (rv->head) {
        struct entry *e = rv->head;
        rv->head = e->next;
        if (e->generation == generation)
            left++;
        else
            elsewhere++;
        token_unref(e->t);
        free(e);
    }
    if (left)
        log_warning("stopping with %u revocation%s Instacart has not taken yet: they go over in the cache image "
                    "when systemd keeps one (systemctl restart); otherwise those tokens stay valid at Instacart "
                    "until they expire", left, left == 1 ? "" : "s");
    if (elsewhere)
        log_warning("stopping with %u revocation%s for the Instacart server or client id used before the last "
                    "reload: they are lost, and those tokens stay valid there until they expire", elsewhere,
                    elsewhere == 1 ? "" : "s");
    pthread_mutex_destroy(&rv->lock);
    free(rv);
    return NULL;
}
