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
    char msg[NS_MAX + 96];
    int n = snprintf(msg, sizeof(msg), "flag%c%s%s%c%llu", 0, ns, name, 0, (unsigned long long)until);
    int r;

    if (n < 0 || (size_t)n >= sizeof(msg))
        return -EINVAL;

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
/* The proof a flush's generation may be a host's floor by: bound to the
 * floor it was made on (its text, as the event's 'b' carries it). */
static void floor_proof_name(char name[32], const char *floor, size_t len) {
    snprintf(name, 32, "flush:%.*s", (int)(len < 24 ? len : 24), floor);
}

int fleet_floor_proof_make(shared *s, const char *ns, const char *floor, char out[FLAG_MAX]) {
    char name[32];

    floor_proof_name(name, floor, strlen(floor));
    return fleet_proof_make(s, ns, name, out);
}

bool fleet_floor_proof_holds(shared *s, const char *ns, const char *floor, size_t floor_len, const char *v,
                             size_t len) {
    char name[32];

    floor_proof_name(name, floor, floor_len);
    return fleet_proof_holds(s, ns, name, v, len, NULL);
}

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

/* A revocation event's proof of when it was made: "<ms>:<mac>", the MAC
 * over the namespace, the sealed user it names ('v') and that time, so the
 * time cannot be moved onto another event, nor the event given another
 * time. A host revokes its own copy only for a revocation it has not
 * applied yet, and only if that copy is older than it (see
 * fleet_revocation_new()): a Redis writer replaying a real one cannot have
 * live tokens revoked. */
static int revoked_name(const void *v, size_t len, char name[48]) {
    name[0] = 'v';
    return fleet_sha1_hex(v, len, name + 1);
}

int fleet_revoked_proof_make(shared *s, const char *ns, const void *v, size_t len, uint64_t at,
                             char out[FLAG_MAX]) {
    char name[48], mac[SEAL_FP_LEN + 1];

    if (revoked_name(v, len, name) < 0 || flag_mac(s, false, ns, name, at, mac) < 0)
        return -EIO;
    snprintf(out, FLAG_MAX, "%llu:%s", (unsigned long long)at, mac);
    return 0;
}

bool fleet_revoked_proof_holds(shared *s, const char *ns, const void *v, size_t len, const char *proof,
                               size_t proof_len, uint64_t *ret_made) {
    char name[48];

    return revoked_name(v, len, name) == 0 && fleet_proof_holds(s, ns, name, proof, proof_len, ret_made);
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
                          ? "give tokend's ACL user this command (the README's ACL line lists every one)"
                      : strncmp(error, "WRONGTYPE", 9) == 0
                          ? "a key under tokend's prefix holds another type: someone wrote it; delete it"
                          : "check Redis's log";
    bool say;

    pthread_mutex_lock(&s->lock);
    s->stats.refusals++;
    snprintf(s->stats.last_refusal, sizeof(s->stats.last_refusal), "%s: %.100s", command, error);
    say = fleet_time_to_say(&s->refusal_said_ms, now);
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
    say = fleet_time_to_say(&s->flag_said_ms, now);
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

/* SHA-256 of "<grant>\n<user>\n<scope>", its first 8 bytes: a user
 * cannot be named to collide with another (a revocation of one would
 * refuse the other's tokens). */
uint64_t fleet_user_fp(enum oauth_grant grant, const char *user_id, const char *scope) {
    unsigned char md[EVP_MAX_MD_SIZE];
    char g[4];
    unsigned n = 0;
    uint64_t v = 0;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();

    snprintf(g, sizeof(g), "%d\n", (int)grant);
    if (!ctx || !EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) || !EVP_DigestUpdate(ctx, g, strlen(g)) ||
        !EVP_DigestUpdate(ctx, user_id ? user_id : "", user_id ? strlen(user_id) : 0) ||
        !EVP_DigestUpdate(ctx, "\n", 1) || !EVP_DigestUpdate(ctx, scope ? scope : "", scope ? strlen(scope) : 0) ||
        !EVP_DigestFinal_ex(ctx, md, &n))
        n = 0;
    EVP_MD_CTX_free(ctx);
    for (unsigned i = 0; i < 8 && i < n; i++)
        v = v << 8 | md[i];
    return v ? v : 1; /* 0 marks a free slot */
}

/* A revocation's floor matters while a token minted before it can live. */
static bool floor_live(uint64_t at_unix_ms, uint64_t now_unix) {
    return at_unix_ms && now_unix < at_unix_ms + (uint64_t)OAUTH_LIFETIME_MAX * MS_PER_SEC + REVOKED_SKEW_MS;
}

void fleet_floor_raise(shared *s, uint64_t user, uint64_t at_unix_ms) {
    uint64_t now = now_unix_ms();
    struct floor *slot;

    if (!user || !floor_live(at_unix_ms, now))
        return;
    pthread_mutex_lock(&s->lock);
    /* one slot a user: revoked again (or the event replayed, thousands of
     * times) pushes no other user out */
    for (size_t i = 0; i < FLOORS_MAX; i++)
        if (s->floors[i].user == user && floor_live(s->floors[i].at_unix_ms, now)) {
            if (at_unix_ms > s->floors[i].at_unix_ms)
                s->floors[i].at_unix_ms = at_unix_ms;
            pthread_mutex_unlock(&s->lock);
            return;
        }
    slot = &s->floors[s->floor_next];
    /* the ring is full of live ones: the one let go still holds, for all */
    if (slot->user && floor_live(slot->at_unix_ms, now) && slot->at_unix_ms > s->floor_all_unix_ms)
        s->floor_all_unix_ms = slot->at_unix_ms;
    *slot = (struct floor){ .user = user, .at_unix_ms = at_unix_ms };
    s->floor_next = (s->floor_next + 1) % FLOORS_MAX;
    pthread_mutex_unlock(&s->lock);
}

void fleet_floor_all(shared *s, uint64_t at_unix_ms) {
    pthread_mutex_lock(&s->lock);
    if (at_unix_ms > s->floor_all_unix_ms)
        s->floor_all_unix_ms = at_unix_ms;
    pthread_mutex_unlock(&s->lock);
}

enum floor_verdict fleet_floor_check(shared *s, uint64_t user, const token *t) {
    uint64_t now = now_unix_ms(), mine = 0, all;

    pthread_mutex_lock(&s->lock);
    for (size_t i = 0; i < FLOORS_MAX && !mine; i++)
        if (s->floors[i].user == user && floor_live(s->floors[i].at_unix_ms, now))
            mine = s->floors[i].at_unix_ms;
    all = s->floor_all_unix_ms;
    pthread_mutex_unlock(&s->lock);
    if (t->minted_unix_ms >= (mine > all ? mine : all))
        return FLOOR_SERVE;
    /* the hosts' clocks may differ: only one surely minted before is revoked */
    if (mine && t->minted_unix_ms && t->minted_unix_ms + REVOKED_SKEW_MS < mine)
        return FLOOR_REVOKE;
    return FLOOR_REFUSE;
}

/* A generation read from Redis. Returns NULL when it can be trusted, else
 * why not: below the highest a flush of this fleet made (set back), or not
 * a number (Redis lost it, or someone wrote it). proven: it comes with a
 * flush event a host of this fleet made (fleet_proof_holds()), and becomes
 * the highest; a generation read without one (a Redis writer can SET any)
 * is only checked, so that no write can raise the floor that the next
 * flush builds on (to where flushes no longer fit a Lua number); and one
 * FLUSH_STEP or more above the floor is refused (mended by a flush). One
 * above the floor without proof (a flush whose event we have yet to read,
 * one of a host of the release before, or a writer's) is read, but no
 * value is sealed under it (fleet_gen_sealable()): a writer who raised it
 * and set it back before a flush would have the flush land below values
 * sealed under it (found by an attack). Still unproven after
 * UNPROVEN_GEN_MS, it is mended by a flush. */
const char *fleet_gen_seen(shared *s, const char *text, size_t len, bool proven) {
    return fleet_gen_seen_sent(s, text, len, proven, GEN_FLOOR_NOW, NULL);
}

const char *fleet_gen_seen_sent(shared *s, const char *text, size_t len, bool proven, uint64_t sent_floor,
                                bool *old) {
    char buf[24], *end;
    unsigned long long g;
    bool back, far, stale = false;
    uint64_t now = now_ms();

    if (old)
        *old = false;

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
    /* an answer Redis made before a flush we learned since (a lookup sent
     * before our own flush's answer proved it) is old, not Redis going
     * back: mending it cost the fleet a second flush (found by an attack) */
    back = g < (sent_floor < s->max_gen ? sent_floor : s->max_gen);
    if (old)
        *old = g < s->max_gen;
    far = !proven && g > s->max_gen && g - s->max_gen >= FLUSH_STEP;
    if (!back && proven)
        s->max_gen = g;
    if (proven)
        s->unproven_since_ms = 0;
    else if (g > s->max_gen && !far) {
        /* unproven, so far: counted from its first sighting, unless none
         * came for as long (a writer setting it back between raises does
         * not start the count again: found by an attack) */
        if (!s->unproven_since_ms || now - s->unproven_seen_ms > UNPROVEN_GEN_MS)
            s->unproven_since_ms = now;
        s->unproven_seen_ms = now;
        stale = now - s->unproven_since_ms >= UNPROVEN_GEN_MS;
    }
    pthread_mutex_unlock(&s->lock);
    if (far)
        return "the fleet's generation in Redis is far above any flush of this fleet (it was written)";
    if (stale)
        return "the fleet's generation in Redis was raised without a flush of this fleet (written, or a flush "
               "of a host of the release before)";
    return back ? "the fleet's generation in Redis went back (Redis lost it, or it was written)" : NULL;
}

uint64_t fleet_gen_floor(shared *s) {
    uint64_t g;

    pthread_mutex_lock(&s->lock);
    g = s->max_gen;
    pthread_mutex_unlock(&s->lock);
    return g;
}

bool fleet_gen_sealable(shared *s, const char *gen) {
    char *end;
    unsigned long long g;
    bool ok;

    errno = 0;
    g = strtoull(gen, &end, 10);
    if (errno || *end || gen[0] < '0' || gen[0] > '9')
        return false;
    pthread_mutex_lock(&s->lock);
    ok = g == s->max_gen;
    pthread_mutex_unlock(&s->lock);
    return ok;
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
