/* Unit tests of src/fleet_wire.c: reading Redis's answers in fleet mode.
 * Each answer is written as Redis sends it (RESP) and parsed by hiredis's
 * own reader, as the daemon's connection parses it. */
#include <hiredis/hiredis.h>
#include <pthread.h>

#include "fleet.h"
#include "unit.h"
#include "util.h"

/* The one answer in resp, parsed; freed by the caller. */
static redisReply *answer(const char *resp) {
    redisReader *rd = redisReaderCreate();
    void *r = NULL;

    ASSERT(rd);
    fleet_reader_bound(rd);
    ASSERT_INT_EQ(redisReaderFeed(rd, resp, strlen(resp)), REDIS_OK);
    ASSERT_INT_EQ(redisReaderGetReply(rd, &r), REDIS_OK);
    ASSERT(r);
    redisReaderFree(rd);
    return r;
}

static bool lookup(const char *resp, struct fleet_lookup *lk) {
    redisReply *r = answer(resp);
    bool ok = fleet_lookup_decode(r, lk);

    freeReplyObject(r);
    return ok;
}

static void a_found_token_is_read_with_its_ttl_generation_and_key(void) {
    redisReply *r = answer("*5\r\n:1\r\n$5\r\nvalue\r\n:86399000\r\n$2\r\n12\r\n:2\r\n");
    struct fleet_lookup lk;

    ASSERT(fleet_lookup_decode(r, &lk));
    ASSERT_INT_EQ(lk.code, 1);
    ASSERT_STR_EQ(lk.value->str, "value");
    ASSERT_INT_EQ(lk.ttl, 86399000);
    ASSERT_STR_EQ(lk.gen->str, "12");
    ASSERT_INT_EQ(lk.which, 2);
    freeReplyObject(r);
}

/* Any other shape is not the script's answer: refused, never half read. */
static void a_lookup_answer_of_another_shape_is_refused(void) {
    struct fleet_lookup lk;
    static const char *const bad[] = {
        "-NOSCRIPT No matching script\r\n",
        "-NOPERM this user has no permissions to run the 'evalsha' command\r\n",
        ":1\r\n",
        "*4\r\n:1\r\n$1\r\nv\r\n:1\r\n$1\r\n0\r\n",                       /* four elements */
        "*5\r\n:5\r\n$1\r\nv\r\n:1\r\n$1\r\n0\r\n:1\r\n",               /* no such code */
        "*5\r\n:0\r\n$1\r\nv\r\n:1\r\n$1\r\n0\r\n:1\r\n",
        "*5\r\n:1\r\n$1\r\nv\r\n:1\r\n$1\r\n0\r\n:0\r\n",               /* found under no key */
        "*5\r\n:1\r\n$1\r\nv\r\n:1\r\n$1\r\n0\r\n:3\r\n",               /* a third key */
        "*5\r\n:1\r\n$1\r\nv\r\n:0\r\n$1\r\n0\r\n:1\r\n",               /* found with no life */
        "*5\r\n:1\r\n$1\r\nv\r\n:-1\r\n$1\r\n0\r\n:1\r\n",
        "*5\r\n$1\r\n1\r\n$1\r\nv\r\n:1\r\n$1\r\n0\r\n:1\r\n",           /* the code as a string */
        "*5\r\n:1\r\n:7\r\n:1\r\n$1\r\n0\r\n:1\r\n",                   /* the value as a number */
        "*5\r\n:1\r\n$1\r\nv\r\n:1\r\n:0\r\n:1\r\n",                   /* the generation as a number */
        "*5\r\n:1\r\n$-1\r\n:1\r\n$1\r\n0\r\n:1\r\n",                  /* nil */
    };

    for (size_t i = 0; i < ARRAY_SIZE(bad); i++)
        if (lookup(bad[i], &lk))
            UNIT_FAIL("answer %zu taken as a lookup's", i);
    /* the other codes are read */
    ASSERT(lookup("*5\r\n:4\r\n$3\r\nabc\r\n:1500\r\n$1\r\n0\r\n:0\r\n", &lk) && lk.code == 4);
    ASSERT(lookup("*5\r\n:3\r\n$0\r\n\r\n:3599000\r\n$1\r\n0\r\n:0\r\n", &lk) && lk.code == 3);
    ASSERT(lookup("*5\r\n:2\r\n$0\r\n\r\n:0\r\n$1\r\n0\r\n:0\r\n", &lk) && lk.code == 2);
}

static void stream_ids_are_digits_dash_digits(void) {
    struct fleet_stream_id id;
    static const char *const bad[] = { "", "1", "1-", "-1", "1-2-3", " 1-2", "1-2 ", "+1-2", "1--2", "a-1",
                                       "1-0x2", "18446744073709551616-0", "0-18446744073709551616" };

    ASSERT(fleet_stream_id_parse("1700000000000-3", 15, &id));
    ASSERT_UINT_EQ(id.ms, 1700000000000ULL);
    ASSERT_UINT_EQ(id.seq, 3);
    ASSERT(fleet_stream_id_parse("18446744073709551615-0", 22, &id));
    ASSERT(id.ms == 18446744073709551615ULL);
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++)
        if (fleet_stream_id_parse(bad[i], strlen(bad[i]), &id))
            UNIT_FAIL("'%s' read as a stream id", bad[i]);
}

static void stream_ids_compare_by_time_then_sequence(void) {
    struct fleet_stream_id a = { 5, 9 }, b = { 6, 0 }, c = { 6, 1 };

    ASSERT(fleet_stream_id_cmp(a, b) < 0 && fleet_stream_id_cmp(b, a) > 0);
    ASSERT(fleet_stream_id_cmp(b, c) < 0 && fleet_stream_id_cmp(c, b) > 0);
    ASSERT_INT_EQ(fleet_stream_id_cmp(c, c), 0);
}

static void xinfo_gives_the_streams_ends(void) {
    redisReply *r = answer("*8\r\n$6\r\nlength\r\n:3\r\n"
                           "$17\r\nlast-generated-id\r\n$15\r\n1700000000000-3\r\n"
                           "$20\r\nmax-deleted-entry-id\r\n$3\r\n0-0\r\n"
                           "$23\r\nrecorded-first-entry-id\r\n$15\r\n1690000000000-0\r\n");
    struct fleet_stream_info info;

    fleet_stream_info_decode(r, &info);
    ASSERT(info.have_newest && info.newest.ms == 1700000000000ULL && info.newest.seq == 3);
    ASSERT(info.have_gone && info.gone.ms == 0);
    ASSERT(info.have_first && info.first.ms == 1690000000000ULL);
    freeReplyObject(r);
    /* a Redis before 7.0 says less: what is missing is not made up */
    r = answer("*2\r\n$17\r\nlast-generated-id\r\n$3\r\n5-0\r\n");
    fleet_stream_info_decode(r, &info);
    ASSERT(info.have_newest && !info.have_gone && !info.have_first);
    freeReplyObject(r);
    r = answer("-ERR no such key\r\n");
    fleet_stream_info_decode(r, &info);
    ASSERT(!info.have_newest && !info.have_gone && !info.have_first);
    freeReplyObject(r);
}

static void time_is_read_in_milliseconds(void) {
    redisReply *r = answer("*2\r\n$10\r\n1700000000\r\n$6\r\n123456\r\n");
    unsigned long long ms = 0;

    ASSERT(fleet_time_decode(r, &ms));
    ASSERT_UINT_EQ(ms, 1700000000123ULL);
    freeReplyObject(r);
    r = answer("*2\r\n$10\r\n1700000000\r\n$7\r\n1000000\r\n"); /* a million microseconds */
    ASSERT(!fleet_time_decode(r, &ms));
    freeReplyObject(r);
    r = answer("*2\r\n$2\r\n-1\r\n$1\r\n0\r\n");
    ASSERT(!fleet_time_decode(r, &ms));
    freeReplyObject(r);
    r = answer("*1\r\n$10\r\n1700000000\r\n");
    ASSERT(!fleet_time_decode(r, &ms));
    freeReplyObject(r);
}

/* An array's length is read before its elements: a hostile Redis could
 * make hiredis allocate gigabytes with one line. Refused, as a reader error. */
static void an_array_too_long_to_be_ours_is_refused_before_any_allocation(void) {
    redisReader *rd = redisReaderCreate();
    void *r = NULL;

    ASSERT(rd);
    fleet_reader_bound(rd);
    ASSERT_INT_EQ(redisReaderFeed(rd, "*700000000\r\n", 12), REDIS_OK);
    ASSERT_INT_EQ(redisReaderGetReply(rd, &r), REDIS_ERR);
    ASSERT(r == NULL);
    redisReaderFree(rd);
    /* one of our own sizes is read */
    rd = redisReaderCreate();
    fleet_reader_bound(rd);
    ASSERT_INT_EQ(redisReaderFeed(rd, "*2\r\n:1\r\n:2\r\n", 12), REDIS_OK);
    ASSERT_INT_EQ(redisReaderGetReply(rd, &r), REDIS_OK);
    ASSERT(r && ((redisReply *)r)->elements == 2);
    freeReplyObject(r);
    redisReaderFree(rd);
}

/* The command and the event threads connect at the same time at start: each
 * binds its own reader, and the bound still holds in both (a shared
 * variable written by both was a data race, found by ThreadSanitizer in CI;
 * CI runs this test under it). */
static void *bind_many(void *arg) {
    (void)arg;
    for (int i = 0; i < 200; i++) {
        redisReader *rd = redisReaderCreate();
        void *r = NULL;

        ASSERT(rd);
        fleet_reader_bound(rd);
        ASSERT_INT_EQ(redisReaderFeed(rd, "*700000000\r\n", 12), REDIS_OK);
        ASSERT_INT_EQ(redisReaderGetReply(rd, &r), REDIS_ERR);
        redisReaderFree(rd);
    }
    return NULL;
}

static void two_threads_bind_their_readers_at_once(void) {
    pthread_t a, b;

    ASSERT_INT_EQ(pthread_create(&a, NULL, bind_many, NULL), 0);
    ASSERT_INT_EQ(pthread_create(&b, NULL, bind_many, NULL), 0);
    pthread_join(a, NULL);
    pthread_join(b, NULL);
}

/* The name EVALSHA gives a script and redis.sha1hex() a value (a lookup
 * skips the values it refused by it): binary values included. */
static void sha1_is_the_hex_that_redis_computes(void) {
    char hex[41];

    ASSERT_INT_EQ(fleet_sha1_hex("abc", 3, hex), 0);
    ASSERT_STR_EQ(hex, "a9993e364706816aba3e25717850c26c9cd0d89d");
    ASSERT_INT_EQ(fleet_sha1_hex("a\0b", 3, hex), 0);
    ASSERT_STR_EQ(hex, "4a3dec2d1f8245280855c42db0ee4239f917fdb8");
}

static const unit_test tests[] = {
    TEST(sha1_is_the_hex_that_redis_computes),
    TEST(two_threads_bind_their_readers_at_once),
    TEST(an_array_too_long_to_be_ours_is_refused_before_any_allocation),
    TEST(a_found_token_is_read_with_its_ttl_generation_and_key),
    TEST(a_lookup_answer_of_another_shape_is_refused),
    TEST(stream_ids_are_digits_dash_digits),
    TEST(stream_ids_compare_by_time_then_sequence),
    TEST(xinfo_gives_the_streams_ends),
    TEST(time_is_read_in_milliseconds),
};

UNIT_MAIN(tests)
