/* What a fleet host trusts and what it learned: the pause and credentials
 * flags (their proof of origin and bounded end), the generation that never
 * goes back, the tokens revoked by the fleet, and refusals from Redis said
 * once a minute. Not responsible for talking to Redis (it queues jobs). */
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

int fleet_flag_make(shared *s, const char *ns, const char *name, uint64_t ms, char out[FLAG_MAX]) {
    char mac[SEAL_FP_LEN + 1];
    uint64_t until = now_unix_ms() + ms;

    if (flag_mac(s, false, ns, name, until, mac) < 0)
        return -EIO;
    snprintf(out, FLAG_MAX, "%llu:%s", (unsigned long long)until, mac);
    return 0;
}

/* Whether v is "<n>:<mac>" made with our key (or, during a rotation, the
 * other one) for this namespace and name; n in *ret_n. */
static bool mac_holds(shared *s, const char *ns, const char *name, const char *v, size_t len,
                      unsigned long long *ret_n) {
    char buf[FLAG_MAX], mac[SEAL_FP_LEN + 1], *end;
    unsigned long long n;

    if (len == 0 || len >= sizeof(buf))
        return false;
    memcpy(buf, v, len);
    buf[len] = '\0';
    errno = 0;
    n = strtoull(buf, &end, 10);
    if (errno || end == buf || *end != ':' || strlen(end + 1) != SEAL_FP_LEN)
        return false;
    if ((flag_mac(s, false, ns, name, n, mac) < 0 || CRYPTO_memcmp(mac, end + 1, SEAL_FP_LEN) != 0) &&
        (flag_mac(s, true, ns, name, n, mac) < 0 || CRYPTO_memcmp(mac, end + 1, SEAL_FP_LEN) != 0))
        return false;
    *ret_n = n;
    return true;
}

/* A flush event's proof that a host of this fleet made it: "<ms>:<mac>",
 * when it was made and a MAC with the shared key (no end: a host restored
 * from its cache applies flushes hours old). Another fleet sharing the
 * namespace (same Redis, prefix and client id, another key) makes proofs
 * we refuse, so its flushes do not flush us. */
int fleet_proof_make(shared *s, const char *ns, const char *name, char out[FLAG_MAX]) {
    return fleet_flag_make(s, ns, name, 0, out);
}

bool fleet_proof_holds(shared *s, const char *ns, const char *name, const char *v, size_t len, uint64_t *ret_made) {
    unsigned long long made;

    if (!mac_holds(s, ns, name, v, len, &made))
        return false;
    if (ret_made)
        *ret_made = made;
    return true;
}

/* How long the flag still holds, at most ttl_ms (Redis's) and max_ms; 0
 * for one that is over, was not made with our key, or is malformed. */
uint64_t fleet_flag_left_ms(shared *s, const char *ns, const char *name, const char *v, size_t len,
                             uint64_t ttl_ms, uint64_t max_ms) {
    unsigned long long until;
    uint64_t now = now_unix_ms(), left;

    if (!mac_holds(s, ns, name, v, len, &until))
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
void fleet_refused(shared *s, const char *command, const char *error) {
    uint64_t now = now_ms();
    const char *fix = strncmp(error, "NOPERM", 6) == 0
                          ? "give tokend's ACL user the fleet_command (the README's ACL line lists every one)"
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
void fleet_refused_flag(shared *s, const char *name) {
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
uint64_t fleet_token_fp(const token *t) {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned n = 0;
    uint64_t v = 0;

    EVP_Digest(t->value, t->len, md, &n, EVP_sha256(), NULL);
    for (int i = 0; i < 8; i++)
        v = v << 8 | md[i];
    return v;
}

void fleet_deny(shared *s, uint64_t fp) {
    uint64_t now = now_ms(), until = now + (uint64_t)OAUTH_LIFETIME_MAX * MS_PER_SEC;

    pthread_mutex_lock(&s->lock);
    /* one slot a token: the same revocation told again (written back into
     * the stream by hand, thousands of times) pushes nothing else out */
    for (size_t i = 0; i < DENY_MAX; i++)
        if (s->denied[i] == fp && s->denied_until[i] > now) {
            s->denied_until[i] = until;
            pthread_mutex_unlock(&s->lock);
            return;
        }
    s->denied[s->deny_next] = fp;
    s->denied_until[s->deny_next] = until;
    s->deny_next = (s->deny_next + 1) % DENY_MAX;
    pthread_mutex_unlock(&s->lock);
}

bool fleet_denied(shared *s, const token *t) {
    uint64_t fp = fleet_token_fp(t), now = now_ms();
    bool found = false;

    pthread_mutex_lock(&s->lock);
    for (size_t i = 0; i < DENY_MAX && !found; i++)
        found = s->denied_until[i] > now && s->denied[i] == fp;
    pthread_mutex_unlock(&s->lock);
    return found;
}


/* A generation read from Redis. Returns NULL when it can be trusted, else
 * why not: below the highest a flush of this fleet made (set back), or not
 * a number (Redis lost it, or someone wrote it). proven: it comes with a
 * flush event a host of this fleet made (fleet_proof_holds()), and becomes
 * the highest; a generation read without one (a Redis writer can SET any)
 * is only checked, so that no write can raise the floor that the next
 * flush builds on (to where flushes no longer fit a Lua number). */
const char *fleet_gen_seen(shared *s, const char *text, size_t len, bool proven) {
    char buf[24], *end;
    unsigned long long g;
    bool back;

    if (len == 0 || len >= sizeof(buf))
        return "the fleet's generation in Redis is not a number";
    memcpy(buf, text, len);
    buf[len] = '\0';
    errno = 0;
    g = strtoull(buf, &end, 10);
    /* 2^53 and up: the scripts' Lua numbers cannot hold it exactly */
    if (errno || *end || buf[0] == '-' || buf[0] == '+' || buf[0] == ' ' || g >= (1ULL << 53) - 1)
        return "the fleet's generation in Redis is not a number";
    pthread_mutex_lock(&s->lock);
    back = g < s->max_gen;
    if (!back && proven)
        s->max_gen = g;
    pthread_mutex_unlock(&s->lock);
    return back ? "the fleet's generation in Redis went back (Redis lost it, or it was written)" : NULL;
}



/* Whether a flag read with GET and PTTL holds now; a forged one is said. */
/* A mint succeeded at this time (unix ms), here or on a host that left a
 * proof of it: a credentials flag made before it is over. Never goes back. */
void fleet_creds_ok(shared *s, uint64_t at_ms) {
    pthread_mutex_lock(&s->lock);
    if (at_ms > s->creds_ok_ms)
        s->creds_ok_ms = at_ms;
    pthread_mutex_unlock(&s->lock);
}

/* The credentials flag holds as any flag does, unless a mint succeeded
 * since it was made (its end less its fixed life): a real flag saved and
 * written back after a mint cleared it is refused, not obeyed to its end. */
bool fleet_creds_flag_holds(shared *s, const char *ns, const redisReply *v, const redisReply *ttl) {
    unsigned long long until;
    uint64_t ok;

    if (v->type == REDIS_REPLY_STRING && mac_holds(s, ns, "creds", v->str, v->len, &until)) {
        pthread_mutex_lock(&s->lock);
        ok = s->creds_ok_ms;
        pthread_mutex_unlock(&s->lock);
        if (ok && until < ok + CREDS_TTL_MS) { /* made before the success */
            fleet_refused_flag(s, "creds");
            return false;
        }
    }
    return fleet_flag_holds(s, ns, "creds", v, ttl, CREDS_TTL_MS);
}

bool fleet_flag_holds(shared *s, const char *ns, const char *name, const redisReply *v, const redisReply *ttl,
                       uint64_t max_ms) {
    if (v->type != REDIS_REPLY_STRING)
        return false; /* none */
    if (ttl->type == REDIS_REPLY_INTEGER && ttl->integer > 0 &&
        fleet_flag_left_ms(s, ns, name, v->str, v->len, (uint64_t)ttl->integer, max_ms))
        return true;
    fleet_refused_flag(s, name);
    return false;
}
