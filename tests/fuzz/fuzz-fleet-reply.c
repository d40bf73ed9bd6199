/* Fuzzes the reading of Redis's answers in fleet mode (fleet_wire.c): the
 * bytes are Redis's protocol (RESP), parsed by hiredis's own reader as the
 * daemon's connection parses them, then handed to every decoder. Whatever
 * Redis (or someone between us and it) sends, a decoder must not crash, and
 * what it accepts must be what it promises: a lookup's code 1..4, its value
 * and generation strings; stream ids that compare as they read. */
#include <hiredis/hiredis.h>
#include <string.h>

#include "fleet.h"
#include "fuzz.h"

static void check_id(const char *s, size_t len) {
    struct fleet_stream_id a, b;

    if (!fleet_stream_id_parse(s, len, &a))
        return;
    fuzz_check(len >= 3 && memchr(s, '-', len));
    fuzz_check(fleet_stream_id_cmp(a, a) == 0);
    b = a;
    b.seq++;
    if (b.seq) /* no wrap */
        fuzz_check(fleet_stream_id_cmp(a, b) < 0 && fleet_stream_id_cmp(b, a) > 0);
}

static void decode_all(const redisReply *r) {
    struct fleet_lookup lk;
    struct fleet_stream_info info;
    unsigned long long ms;

    if (fleet_lookup_decode(r, &lk)) {
        fuzz_check(lk.code >= 1 && lk.code <= 4);
        fuzz_check(lk.value && lk.value->type == REDIS_REPLY_STRING);
        fuzz_check(lk.gen && lk.gen->type == REDIS_REPLY_STRING);
        fuzz_check(lk.which >= 0 && lk.which <= 2);
        fuzz_check(lk.code != 1 || (lk.which >= 1 && lk.ttl > 0));
    }
    fleet_stream_info_decode(r, &info);
    {
        const redisReply *entries = fleet_xread_entries(r);
        fuzz_check(!entries || entries->type == REDIS_REPLY_ARRAY);
    }
    if (fleet_time_decode(r, &ms))
        fuzz_check(r->type == REDIS_REPLY_ARRAY && r->elements == 2);
    if (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS)
        check_id(r->str, r->len);
    for (size_t i = 0; r->type == REDIS_REPLY_ARRAY && i < r->elements; i++)
        decode_all(r->element[i]);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    redisReader *rd = redisReaderCreate();
    void *reply = NULL;

    fuzz_check(rd != NULL);
    fleet_reader_bound(rd); /* as the daemon's connections are */
    check_id((const char *)data, size);
    if (redisReaderFeed(rd, (const char *)data, size) == REDIS_OK) {
        /* every complete answer in the bytes, as a pipelined batch reads them */
        for (int n = 0; n < 64 && redisReaderGetReply(rd, &reply) == REDIS_OK && reply; n++) {
            decode_all(reply);
            freeReplyObject(reply);
            reply = NULL;
        }
    }
    redisReaderFree(rd);
    return 0;
}
