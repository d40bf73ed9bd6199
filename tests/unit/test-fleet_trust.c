/* Unit tests of src/fleet_trust.c: what a fleet host trusts of what it
 * reads in Redis. A flag (a pause, rejected credentials) holds only when
 * made with the fleet's key, for this namespace and name, and only until
 * its end, bounded by Redis's TTL and the caller's longest; the generation
 * never goes back; a revoked token is remembered by its fingerprint; a
 * refusal from Redis is counted. The shared tier is made by shared_new()
 * from a configuration loaded as the daemon loads it (the key in a private
 * file); nothing connects to Redis, as nothing is started. */
#include <hiredis/hiredis.h>

#include "config-helpers.h"
#include "fleet.h"
#include "log.h"
#include "util.h"

#define KEY_A "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
#define KEY_B "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100"
#define NS "tokend:ns-one:"
#define OTHER_NS "tokend:ns-two:"
#define HOUR_MS 3600000ULL

/* A fleet host's shared tier on key (and previous, if not NULL), loaded
 * through config_load() from files on disk. Never started. */
static shared *fleet(const char *key, const char *previous) {
    char err[CONFIG_ERR_MAX] = "", text[1024], *secret, *key_file, *prev_file = NULL, *conf;
    config *cfg = NULL;
    shared *s = NULL;
    int n;

    secret = tmp_file("s3cret\n", 7, 0600);
    key_file = tmp_file(key, strlen(key), 0600);
    if (previous)
        prev_file = tmp_file(previous, strlen(previous), 0600);
    n = snprintf(text, sizeof(text), BASE "client_secret_file = %s\n[shared]\nredis = 127.0.0.1:9\nkey_file = %s\n",
                 secret, key_file);
    if (prev_file)
        snprintf(text + n, sizeof(text) - (size_t)n, "previous_key_file = %s\n", prev_file);
    conf = tmp_file(text, strlen(text), 0644);
    if (config_load(conf, NULL, &cfg, err) < 0)
        UNIT_FAIL("configuration refused: %s", err);
    ASSERT(config_shared(cfg));
    ASSERT_INT_EQ(shared_new(cfg, NULL, NULL, &s), 0);
    config_free(cfg);
    free(secret);
    free(key_file);
    free(prev_file);
    free(conf);
    return s;
}

static struct shared_stats stats(shared *s) {
    struct shared_stats st;

    shared_get_stats(s, &st);
    return st;
}

static uint64_t left(shared *s, const char *ns, const char *name, const char *flag, uint64_t ttl_ms,
                     uint64_t max_ms) {
    return fleet_flag_left_ms(s, ns, name, flag, strlen(flag), ttl_ms, max_ms);
}

static token *make_token(const char *value) {
    token *t = NULL;

    ASSERT_INT_EQ(token_new(value, strlen(value), 3600, 0, now_ms(), &t), 0);
    return t;
}

/* One answer as Redis sends it (RESP), parsed by hiredis's own reader. */
static redisReply *answer(const char *resp) {
    redisReader *rd = redisReaderCreate();
    void *r = NULL;

    ASSERT(rd);
    ASSERT_INT_EQ(redisReaderFeed(rd, resp, strlen(resp)), REDIS_OK);
    ASSERT_INT_EQ(redisReaderGetReply(rd, &r), REDIS_OK);
    ASSERT(r);
    redisReaderFree(rd);
    return r;
}

/* ---- flags ---- */

static void a_flag_made_here_holds_until_its_end(void) {
    shared *s = fleet(KEY_A, NULL);
    char flag[FLAG_MAX];
    uint64_t made = now_ms(), l;

    ASSERT_INT_EQ(fleet_flag_make(s, NS, "pause", 30000, flag), 0);
    l = left(s, NS, "pause", flag, HOUR_MS, HOUR_MS);
    ASSERT(l > 0 && l <= 30000);
    ASSERT(l >= 30000 - (now_ms() - made) - 1); /* its own end, give or take the time this took */
    shared_free(s);
}

/* What is left is bounded by Redis's TTL and by the caller's longest. */
static void a_flag_is_bounded_by_redis_ttl_and_the_longest_allowed(void) {
    shared *s = fleet(KEY_A, NULL);
    char flag[FLAG_MAX];
    uint64_t made = now_ms();

    ASSERT_INT_EQ(fleet_flag_make(s, NS, "pause", 30000, flag), 0);
    ASSERT_UINT_EQ(left(s, NS, "pause", flag, 1234, HOUR_MS), 1234);
    /* an end a little past the longest (within the hosts' clock slack) is
     * cut to the longest */
    ASSERT_INT_EQ(fleet_flag_make(s, NS, "pause", 20000 + FLAG_SLACK_MS / 2, flag), 0);
    if (now_ms() - made < FLAG_SLACK_MS / 2)
        ASSERT_UINT_EQ(left(s, NS, "pause", flag, HOUR_MS, 20000), 20000);
    ASSERT_UINT_EQ(left(s, NS, "pause", flag, 777, 20000), 777);
    shared_free(s);
}

/* An end further ahead than the longest allowed and the clock slack was
 * made by a host whose clock is far ahead (or forged): not trusted. */
static void a_flag_ending_too_far_ahead_is_refused(void) {
    shared *s = fleet(KEY_A, NULL);
    char flag[FLAG_MAX];

    ASSERT_INT_EQ(fleet_flag_make(s, NS, "pause", 2 * HOUR_MS, flag), 0);
    ASSERT_UINT_EQ(left(s, NS, "pause", flag, HOUR_MS, HOUR_MS), 0);
    ASSERT_INT_EQ(fleet_flag_make(s, NS, "pause", 20000 + 2 * FLAG_SLACK_MS, flag), 0);
    ASSERT_UINT_EQ(left(s, NS, "pause", flag, HOUR_MS, 20000), 0);
    ASSERT(left(s, NS, "pause", flag, HOUR_MS, HOUR_MS) > 0); /* the same flag, with room for it */
    shared_free(s);
}

/* A flag saved and written back after its end says it is over. */
static void a_flag_past_its_end_is_over(void) {
    shared *s = fleet(KEY_A, NULL);
    char flag[FLAG_MAX];

    ASSERT_INT_EQ(fleet_flag_make(s, NS, "pause", 0, flag), 0); /* ends now */
    ASSERT_UINT_EQ(left(s, NS, "pause", flag, HOUR_MS, HOUR_MS), 0);
    shared_free(s);
}

/* A flag names its namespace and its name: it cannot be moved to another
 * fleet's keys (other credentials) nor turned into another flag. */
static void a_flag_holds_only_for_its_namespace_and_name(void) {
    shared *s = fleet(KEY_A, NULL);
    char flag[FLAG_MAX];

    ASSERT_INT_EQ(fleet_flag_make(s, NS, "pause", 30000, flag), 0);
    ASSERT(left(s, NS, "pause", flag, HOUR_MS, HOUR_MS) > 0);
    ASSERT_UINT_EQ(left(s, OTHER_NS, "pause", flag, HOUR_MS, HOUR_MS), 0);
    ASSERT_UINT_EQ(left(s, NS, "creds", flag, HOUR_MS, HOUR_MS), 0);
    shared_free(s);
}

/* Someone who can write to Redis but lacks the key cannot make a flag:
 * a changed MAC, a changed end, or a flag made with another key. */
static void a_flag_without_the_fleets_key_is_refused(void) {
    shared *s = fleet(KEY_A, NULL), *other = fleet(KEY_B, NULL);
    char flag[FLAG_MAX], forged[FLAG_MAX], *colon;

    ASSERT_INT_EQ(fleet_flag_make(s, NS, "pause", 30000, flag), 0);
    colon = strchr(flag, ':');
    ASSERT(colon);

    snprintf(forged, sizeof(forged), "%s", flag);
    forged[strlen(forged) - 1] = forged[strlen(forged) - 1] == '0' ? '1' : '0'; /* the MAC's last digit */
    ASSERT_UINT_EQ(left(s, NS, "pause", forged, HOUR_MS, HOUR_MS), 0);

    snprintf(forged, sizeof(forged), "%s", flag);
    forged[colon - flag - 1] = forged[colon - flag - 1] == '9' ? '8' : '9'; /* another end, the same MAC */
    ASSERT_UINT_EQ(left(s, NS, "pause", forged, HOUR_MS, HOUR_MS), 0);

    ASSERT_UINT_EQ(left(other, NS, "pause", flag, HOUR_MS, HOUR_MS), 0);
    ASSERT_INT_EQ(fleet_flag_make(other, NS, "pause", 30000, forged), 0);
    ASSERT_UINT_EQ(left(s, NS, "pause", forged, HOUR_MS, HOUR_MS), 0);
    shared_free(s);
    shared_free(other);
}

/* During a key rotation a host on the new key (with the old one as
 * previous_key) trusts flags made by hosts still on the old one. */
static void a_flag_made_with_the_previous_key_holds_during_a_rotation(void) {
    shared *old = fleet(KEY_A, NULL), *rotated = fleet(KEY_B, KEY_A);
    char flag[FLAG_MAX];

    ASSERT_INT_EQ(fleet_flag_make(old, NS, "pause", 30000, flag), 0);
    ASSERT(left(rotated, NS, "pause", flag, HOUR_MS, HOUR_MS) > 0);
    ASSERT_INT_EQ(fleet_flag_make(rotated, NS, "pause", 30000, flag), 0); /* made with the new key */
    ASSERT(left(rotated, NS, "pause", flag, HOUR_MS, HOUR_MS) > 0);
    shared_free(old);
    shared_free(rotated);
}

/* A flush's proof: made by a host with the fleet's key (or, in a
 * rotation, the other one) it holds however old; another fleet's (another
 * key in the same namespace), another namespace's, or an altered one
 * does not. */
static void a_flush_proof_holds_only_for_the_fleets_keys(void) {
    shared *s = fleet(KEY_A, NULL), *other = fleet(KEY_B, NULL), *rotated = fleet(KEY_B, KEY_A);
    char proof[FLAG_MAX], theirs[FLAG_MAX];

    uint64_t made = 0, before = now_unix_ms();

    ASSERT_INT_EQ(fleet_proof_make(s, NS, "flush", proof), 0);
    ASSERT(fleet_proof_holds(s, NS, "flush", proof, strlen(proof), &made));
    ASSERT(made >= before && made <= now_unix_ms()); /* when it was made */
    ASSERT(fleet_proof_holds(rotated, NS, "flush", proof, strlen(proof), NULL));
    ASSERT(!fleet_proof_holds(other, NS, "flush", proof, strlen(proof), NULL));
    ASSERT(!fleet_proof_holds(s, OTHER_NS, "flush", proof, strlen(proof), NULL));
    ASSERT(!fleet_proof_holds(s, NS, "pause", proof, strlen(proof), NULL));
    ASSERT_INT_EQ(fleet_proof_make(other, NS, "flush", theirs), 0);
    ASSERT(!fleet_proof_holds(s, NS, "flush", theirs, strlen(theirs), NULL));
    theirs[0] = proof[0] == '1' ? '2' : '1';
    memcpy(proof, theirs, 1); /* another time under the same MAC */
    ASSERT(!fleet_proof_holds(s, NS, "flush", proof, strlen(proof), NULL));
    ASSERT(!fleet_proof_holds(s, NS, "flush", "", 0, NULL));
    ASSERT(!fleet_proof_holds(s, NS, "flush", "12", 2, NULL));
    shared_free(s);
    shared_free(other);
    shared_free(rotated);
}

/* A revocation event's proof of when it was made holds only for the sealed
 * value it was made for, its time, the namespace and the fleet's keys: a
 * Redis writer can neither give an old revocation a new time nor move a
 * new time onto an old revocation. */
static void a_revocations_proof_holds_only_for_its_value_and_time(void) {
    shared *s = fleet(KEY_A, NULL), *other = fleet(KEY_B, NULL), *rotated = fleet(KEY_B, KEY_A);
    const char v[] = "sealed-user-1", w[] = "sealed-user-2";
    char proof[FLAG_MAX], later[FLAG_MAX];
    uint64_t made = 0, before = now_unix_ms();

    ASSERT_INT_EQ(fleet_revoked_proof_make(s, NS, v, sizeof(v), before - 60000, proof), 0);
    ASSERT(fleet_revoked_proof_holds(s, NS, v, sizeof(v), proof, strlen(proof), &made));
    ASSERT_UINT_EQ(made, before - 60000); /* when it was asked, however late it is sent */
    ASSERT(fleet_revoked_proof_holds(rotated, NS, v, sizeof(v), proof, strlen(proof), NULL));
    ASSERT(!fleet_revoked_proof_holds(other, NS, v, sizeof(v), proof, strlen(proof), NULL));
    ASSERT(!fleet_revoked_proof_holds(s, OTHER_NS, v, sizeof(v), proof, strlen(proof), NULL));
    ASSERT(!fleet_revoked_proof_holds(s, NS, w, sizeof(w), proof, strlen(proof), NULL)); /* another event's */
    ASSERT(!fleet_proof_holds(s, NS, "flush", proof, strlen(proof), NULL));           /* not a flush's */
    memcpy(later, proof, sizeof(later));
    later[0] = proof[0] == '1' ? '2' : '1'; /* another time under the same MAC */
    ASSERT(!fleet_revoked_proof_holds(s, NS, v, sizeof(v), later, strlen(later), NULL));
    ASSERT(!fleet_revoked_proof_holds(s, NS, v, sizeof(v), "", 0, NULL));
    shared_free(s);
    shared_free(other);
    shared_free(rotated);
}

static void a_malformed_flag_is_refused(void) {
    shared *s = fleet(KEY_A, NULL);
    char flag[FLAG_MAX], text[2 * FLAG_MAX];
    const char *mac;

    ASSERT_INT_EQ(fleet_flag_make(s, NS, "pause", 30000, flag), 0);
    mac = strchr(flag, ':') + 1;
    static const char *const junk[] = { "", "1", ":", "pause", "99999999999999:", "-1:0000", "abc:def" };
    for (size_t i = 0; i < ARRAY_SIZE(junk); i++)
        ASSERT_UINT_EQ(left(s, NS, "pause", junk[i], HOUR_MS, HOUR_MS), 0);
    snprintf(text, sizeof(text), ":%s", mac); /* no end */
    ASSERT_UINT_EQ(left(s, NS, "pause", text, HOUR_MS, HOUR_MS), 0);
    snprintf(text, sizeof(text), "%sx", flag); /* a MAC too long */
    ASSERT_UINT_EQ(left(s, NS, "pause", text, HOUR_MS, HOUR_MS), 0);
    snprintf(text, sizeof(text), "99999999999999999999999:%s", mac); /* an end past 64 bits */
    ASSERT_UINT_EQ(left(s, NS, "pause", text, HOUR_MS, HOUR_MS), 0);
    /* the value is Redis's bytes, len of them: a cut one is refused */
    ASSERT_UINT_EQ(fleet_flag_left_ms(s, NS, "pause", flag, strlen(flag) - 1, HOUR_MS, HOUR_MS), 0);
    ASSERT_UINT_EQ(fleet_flag_left_ms(s, NS, "pause", flag, 0, HOUR_MS, HOUR_MS), 0);
    /* and one as long as the buffer it is read into */
    memset(text, '7', FLAG_MAX);
    ASSERT_UINT_EQ(fleet_flag_left_ms(s, NS, "pause", text, FLAG_MAX, HOUR_MS, HOUR_MS), 0);
    /* the good one still holds: nothing above was refused for another reason */
    ASSERT(left(s, NS, "pause", flag, HOUR_MS, HOUR_MS) > 0);
    shared_free(s);
}

/* As read with GET and PTTL: a flag that holds; none; one no host made,
 * or with no TTL, counted as forged (the status page shows it). */
static void a_flag_read_from_redis_holds_or_is_counted_as_forged(void) {
    shared *s = fleet(KEY_A, NULL);
    char flag[FLAG_MAX], resp[128];
    redisReply *v, *ttl = answer(":30000\r\n"), *no_ttl = answer(":-1\r\n"), *nil = answer("$-1\r\n");

    log_set_max_level(LOG_ERR);
    ASSERT_INT_EQ(fleet_flag_make(s, NS, "pause", 30000, flag), 0);
    snprintf(resp, sizeof(resp), "$%zu\r\n%s\r\n", strlen(flag), flag);
    v = answer(resp);
    ASSERT(fleet_flag_holds(s, NS, "pause", v, ttl, HOUR_MS));
    ASSERT(!fleet_flag_holds(s, NS, "pause", nil, ttl, HOUR_MS)); /* no flag */
    ASSERT_UINT_EQ(stats(s).forged_flags, 0);
    ASSERT(!fleet_flag_holds(s, NS, "creds", v, ttl, HOUR_MS)); /* not this flag */
    ASSERT_UINT_EQ(stats(s).forged_flags, 1);
    ASSERT(!fleet_flag_holds(s, NS, "pause", v, no_ttl, HOUR_MS)); /* a pause must end */
    ASSERT_UINT_EQ(stats(s).forged_flags, 2);
    freeReplyObject(v);
    freeReplyObject(ttl);
    freeReplyObject(no_ttl);
    freeReplyObject(nil);
    shared_free(s);
}

/* A real credentials flag, saved and written back after a mint cleared
 * it, is over: a mint that succeeded after it was made (here, or a proof
 * another host left) supersedes it. One made after the success holds. */
static void a_credentials_flag_made_before_a_successful_mint_is_over(void) {
    shared *s = fleet(KEY_A, NULL);
    char flag[FLAG_MAX], resp[128];
    redisReply *v, *ttl = answer(":300000\r\n");
    uint64_t ok_at;

    log_set_max_level(LOG_ERR);
    ASSERT_INT_EQ(fleet_flag_make(s, NS, "creds", CREDS_TTL_MS, flag), 0);
    snprintf(resp, sizeof(resp), "$%zu\r\n%s\r\n", strlen(flag), flag);
    v = answer(resp);
    ASSERT(fleet_creds_flag_holds(s, NS, v, ttl));
    ok_at = now_unix_ms() + 1;
    fleet_creds_ok(s, ok_at); /* a mint succeeded after the flag */
    ASSERT(!fleet_creds_flag_holds(s, NS, v, ttl));
    ASSERT_UINT_EQ(stats(s).forged_flags, 1);
    fleet_creds_ok(s, 1000); /* never goes back */
    ASSERT(!fleet_creds_flag_holds(s, NS, v, ttl));
    freeReplyObject(v);
    while (now_unix_ms() <= ok_at) /* a millisecond at most: the next flag is made after the success */
        ;
    ASSERT_INT_EQ(fleet_flag_make(s, NS, "creds", CREDS_TTL_MS, flag), 0); /* a new rejection */
    snprintf(resp, sizeof(resp), "$%zu\r\n%s\r\n", strlen(flag), flag);
    v = answer(resp);
    ASSERT(fleet_creds_flag_holds(s, NS, v, ttl));
    freeReplyObject(v);
    freeReplyObject(ttl);
    shared_free(s);
}

/* ---- the generation ---- */

/* As a flush event of this fleet brings it (proven). */
static const char *gen(shared *s, const char *text) {
    return fleet_gen_seen(s, text, strlen(text), true);
}

/* As read without a proof (GET, a lookup's answer): checked, never the
 * new floor, so a written generation near 2^53 cannot leave the next flush
 * no number to go to (an endless chain of repairs); and refused FLUSH_STEP
 * or more above the floor, so that no host seals under a generation the
 * next flush would land below (pre-flush tokens back: found by an attack). */
static void a_generation_read_without_proof_never_raises_the_floor(void) {
    shared *s = fleet(KEY_A, NULL);
    const char *why;

    ASSERT(gen(s, "5") == NULL);
    why = fleet_gen_seen(s, "9007199254740990", 16, false);
    ASSERT(why);
    ASSERT_CONTAINS(why, "far above");
    ASSERT(fleet_gen_seen(s, "65541", 5, false) != NULL);  /* 5 + FLUSH_STEP */
    ASSERT(fleet_gen_seen(s, "65540", 5, false) == NULL);  /* within the step: another host's flushes */
    ASSERT(fleet_gen_seen(s, "7", 1, false) == NULL); /* not "went back": 5 is still the floor */
    ASSERT(fleet_gen_seen(s, "4", 1, false) != NULL);  /* below a flush of ours: went back */
    ASSERT(gen(s, "6") == NULL);                        /* the next flush of ours goes on from 5 */
    shared_free(s);
}

/* A value is sealed only under the floor: not under a generation read
 * without a flush's proof, however near, nor under one set back. */
static void a_value_is_sealed_only_under_the_proven_generation(void) {
    shared *s = fleet(KEY_A, NULL);

    ASSERT(fleet_gen_sealable(s, "0")); /* a fleet never flushed */
    ASSERT(gen(s, "5") == NULL);
    ASSERT(fleet_gen_sealable(s, "5"));
    ASSERT(fleet_gen_seen(s, "7", 1, false) == NULL); /* read... */
    ASSERT(!fleet_gen_sealable(s, "7"));               /* ...but not sealed under */
    ASSERT(!fleet_gen_sealable(s, "4"));
    ASSERT(!fleet_gen_sealable(s, ""));
    ASSERT(!fleet_gen_sealable(s, "5x"));
    ASSERT(!fleet_gen_sealable(s, "-5"));
    ASSERT(gen(s, "7") == NULL); /* a flush of ours proves it */
    ASSERT(fleet_gen_sealable(s, "7"));
    ASSERT(!fleet_gen_sealable(s, "5"));
    shared_free(s);
}

static void the_generation_may_grow_but_never_go_back(void) {
    shared *s = fleet(KEY_A, NULL);
    const char *why;

    ASSERT(gen(s, "0") == NULL);
    ASSERT(gen(s, "5") == NULL);
    ASSERT(gen(s, "5") == NULL); /* read again: the same */
    ASSERT(gen(s, "17") == NULL);
    why = gen(s, "16");
    ASSERT(why);
    ASSERT_CONTAINS(why, "went back");
    why = gen(s, "0"); /* Redis lost it */
    ASSERT(why);
    ASSERT_CONTAINS(why, "went back");
    ASSERT(gen(s, "17") == NULL); /* the highest is still 17 */
    /* the largest a script's Lua number holds exactly, and no further */
    ASSERT(gen(s, "9007199254740990") == NULL);
    ASSERT(gen(s, "9007199254740991") != NULL);
    ASSERT(gen(s, "18446744073709551615") != NULL);
    ASSERT(gen(s, "9007199254740990") == NULL); /* still the highest */
    shared_free(s);
}

static void a_generation_that_is_not_a_plain_number_is_refused(void) {
    shared *s = fleet(KEY_A, NULL);
    static const char *const junk[] = { "", "x", "12x", "-1", "+20", " 20", "20 ", "0x20", "1.5",
                                        "18446744073709551616", "99999999999999999999999" };

    ASSERT(gen(s, "10") == NULL);
    for (size_t i = 0; i < ARRAY_SIZE(junk); i++) {
        const char *why = gen(s, junk[i]);
        if (!why)
            UNIT_FAIL("generation '%s' was taken", junk[i]);
        ASSERT_CONTAINS(why, "not a number");
    }
    /* none of them moved the highest: 11 is still ahead of it, 9 behind */
    ASSERT(gen(s, "11") == NULL);
    ASSERT(gen(s, "9") != NULL);
    /* Redis's bytes, len of them: "12" out of "12x" */
    ASSERT(fleet_gen_seen(s, "12x", 2, true) == NULL);
    ASSERT(gen(s, "11") != NULL);
    shared_free(s);
}

/* ---- revoked tokens ---- */

/* The fingerprint is unkeyed (hosts on different keys agree on it): the
 * first 8 bytes of SHA-256 of the value, big-endian. */
static void a_tokens_fingerprint_is_the_start_of_its_sha256(void) {
    token *abc = make_token("abc"), *abd = make_token("abd");

    ASSERT_UINT_EQ(fleet_token_fp(abc), 0xba7816bf8f01cfeaULL);
    ASSERT(fleet_token_fp(abd) != fleet_token_fp(abc));
    token_unref(abc);
    token_unref(abd);
}

static void a_revoked_token_is_denied_and_only_it(void) {
    shared *s = fleet(KEY_A, NULL), *other = fleet(KEY_B, NULL);
    token *t = make_token("tok-revoked"), *copy = make_token("tok-revoked"), *u = make_token("tok-kept");

    ASSERT(!fleet_denied(s, t));
    fleet_deny(s, fleet_token_fp(t));
    ASSERT(fleet_denied(s, t));
    ASSERT(fleet_denied(s, copy)); /* the value, not the object */
    ASSERT(!fleet_denied(s, u));
    ASSERT(!fleet_denied(other, t)); /* each host its own list */
    token_unref(t);
    token_unref(copy);
    token_unref(u);
    shared_free(s);
    shared_free(other);
}

/* The list keeps the newest DENY_MAX: older ones make room. */
static void the_deny_list_keeps_the_newest(void) {
    shared *s = fleet(KEY_A, NULL);
    token *first = make_token("tok-first"), *last = make_token("tok-last");

    fleet_deny(s, fleet_token_fp(first));
    for (uint64_t i = 1; i < DENY_MAX; i++)
        fleet_deny(s, i);
    ASSERT(fleet_denied(s, first)); /* DENY_MAX remembered: still there */
    fleet_deny(s, fleet_token_fp(last));
    ASSERT(!fleet_denied(s, first));
    ASSERT(fleet_denied(s, last));
    token_unref(first);
    token_unref(last);
    shared_free(s);
}

/* ---- users' revocations ---- */

/* A token of this value, minted at this wall-clock time (as sealed). */
static token *minted_at(const char *value, uint64_t unix_ms) {
    token *t = make_token(value);

    t->minted_unix_ms = unix_ms;
    return t;
}

/* A user's value minted before their revocation is never served; one
 * surely before it (by REVOKED_SKEW_MS) is revoked; one minted after is
 * served; other users are untouched. */
static void a_value_minted_before_its_users_revocation_is_refused(void) {
    shared *s = fleet(KEY_A, NULL);
    uint64_t now = now_unix_ms(), u = fleet_user_fp(OAUTH_GRANT_USER_ASSERTION, "alice", "connect:recommendations");
    uint64_t other = fleet_user_fp(OAUTH_GRANT_USER_ASSERTION, "bob", "connect:recommendations");
    token *long_before = minted_at("tok-a", now - 60000), *just_before = minted_at("tok-b", now - 1000),
          *after = minted_at("tok-c", now + 1), *unknown = minted_at("tok-d", 0);

    ASSERT_INT_EQ(fleet_floor_check(s, u, long_before), FLOOR_SERVE); /* no revocation known */
    fleet_floor_raise(s, u, now);
    ASSERT_INT_EQ(fleet_floor_check(s, u, long_before), FLOOR_REVOKE);
    ASSERT_INT_EQ(fleet_floor_check(s, u, just_before), FLOOR_REFUSE); /* the clocks may differ */
    ASSERT_INT_EQ(fleet_floor_check(s, u, unknown), FLOOR_REFUSE);
    ASSERT_INT_EQ(fleet_floor_check(s, u, after), FLOOR_SERVE);
    ASSERT_INT_EQ(fleet_floor_check(s, other, long_before), FLOOR_SERVE);
    /* the floor never goes back: an older revocation replayed moves nothing */
    fleet_floor_raise(s, u, now - 120000);
    ASSERT_INT_EQ(fleet_floor_check(s, u, long_before), FLOOR_REVOKE);
    /* a revocation older than a token's longest life is forgotten */
    fleet_floor_raise(s, other, now - (uint64_t)OAUTH_LIFETIME_MAX * MS_PER_SEC - REVOKED_SKEW_MS - 1000);
    ASSERT_INT_EQ(fleet_floor_check(s, other, unknown), FLOOR_SERVE);
    /* the user is named by grant, user id and scope, unambiguously */
    ASSERT(fleet_user_fp(OAUTH_GRANT_USER_ASSERTION, "alice", "x") !=
           fleet_user_fp(OAUTH_GRANT_USER_ASSERTION, "alic", "ex"));
    ASSERT(fleet_user_fp(OAUTH_GRANT_USER_ASSERTION, "", "x") != fleet_user_fp(OAUTH_GRANT_CLIENT_CREDENTIALS, "", "x"));
    token_unref(long_before);
    token_unref(just_before);
    token_unref(after);
    token_unref(unknown);
    shared_free(s);
}

/* Past FLOORS_MAX users, the one let go still holds, for every user:
 * values minted before it are refused (a mint each), never served. */
static void a_users_revocation_let_go_by_the_ring_still_holds_for_all(void) {
    shared *s = fleet(KEY_A, NULL);
    uint64_t now = now_unix_ms(), first = fleet_user_fp(OAUTH_GRANT_USER_ASSERTION, "first", "connect:recommendations");
    token *old = minted_at("tok-old", now - 60000), *fresh = minted_at("tok-new", now + 1);

    fleet_floor_raise(s, first, now);
    for (uint64_t i = 2; i <= FLOORS_MAX; i++)
        fleet_floor_raise(s, i, now - 30000);
    ASSERT_INT_EQ(fleet_floor_check(s, first, old), FLOOR_REVOKE); /* FLOORS_MAX remembered */
    ASSERT_INT_EQ(fleet_floor_check(s, 7777777, old), FLOOR_SERVE);
    fleet_floor_raise(s, 99999999, now - 30000); /* pushes the first out */
    ASSERT_INT_EQ(fleet_floor_check(s, first, old), FLOOR_REFUSE);
    ASSERT_INT_EQ(fleet_floor_check(s, 7777777, old), FLOOR_REFUSE);
    ASSERT_INT_EQ(fleet_floor_check(s, 7777777, fresh), FLOOR_SERVE);
    token_unref(old);
    token_unref(fresh);
    shared_free(s);
}

/* ---- refusals ---- */

static void refusals_from_redis_are_counted_and_the_last_kept(void) {
    shared *s = fleet(KEY_A, NULL);
    struct shared_stats st;

    log_set_max_level(LOG_CRIT); /* said once a minute: not what this case checks */
    ASSERT_UINT_EQ(stats(s).refusals, 0);
    ASSERT_STR_EQ(stats(s).last_refusal, "");
    fleet_refused(s, "EVALSHA", "NOPERM this user has no permissions to run the 'evalsha' command");
    fleet_refused(s, "GET", "WRONGTYPE Operation against a key holding the wrong kind of value");
    st = stats(s);
    ASSERT_UINT_EQ(st.refusals, 2);
    ASSERT_STARTS_WITH(st.last_refusal, "GET: WRONGTYPE");
    ASSERT(!st.up); /* nothing connected */
    shared_free(s);
}

static const unit_test tests[] = {
    TEST(a_flag_made_here_holds_until_its_end),
    TEST(a_flag_is_bounded_by_redis_ttl_and_the_longest_allowed),
    TEST(a_flag_ending_too_far_ahead_is_refused),
    TEST(a_flag_past_its_end_is_over),
    TEST(a_flag_holds_only_for_its_namespace_and_name),
    TEST(a_flag_without_the_fleets_key_is_refused),
    TEST(a_flag_made_with_the_previous_key_holds_during_a_rotation),
    TEST(a_flush_proof_holds_only_for_the_fleets_keys),
    TEST(a_revocations_proof_holds_only_for_its_value_and_time),
    TEST(a_malformed_flag_is_refused),
    TEST(a_flag_read_from_redis_holds_or_is_counted_as_forged),
    TEST(a_credentials_flag_made_before_a_successful_mint_is_over),
    TEST(the_generation_may_grow_but_never_go_back),
    TEST(a_generation_read_without_proof_never_raises_the_floor),
    TEST(a_value_is_sealed_only_under_the_proven_generation),
    TEST(a_generation_that_is_not_a_plain_number_is_refused),
    TEST(a_tokens_fingerprint_is_the_start_of_its_sha256),
    TEST(a_revoked_token_is_denied_and_only_it),
    TEST(the_deny_list_keeps_the_newest),
    TEST(a_value_minted_before_its_users_revocation_is_refused),
    TEST(a_users_revocation_let_go_by_the_ring_still_holds_for_all),
    TEST(refusals_from_redis_are_counted_and_the_last_kept),
};

UNIT_MAIN(tests)
