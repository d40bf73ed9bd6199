/* Fleet mode's protocol: the scripts Redis runs, each doing its reads and
 * writes in one round trip, with what their keys and arguments are. Only
 * text: nothing here talks to Redis. */
#include <errno.h>
#include <limits.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "fleet.h"
#include "util.h"

/* The names /metrics and /v1/status show. */
const char *const shared_op_names[SHARED_OP_COUNT] = { "lookup", "publish", "drop", "flush", "pause" };
const char *const shared_lookup_names[SHARED_LOOKUP_COUNT] = { "shared", "lease", "busy", "paused" };
const char *const shared_mint_names[SHARED_MINT_COUNT] = { "leased", "lease_timeout", "degraded" };
const char *const shared_outage_names[SHARED_OUTAGE_COUNT] = { "shared", "replaced", "kept" };
const double shared_latency_bounds[SHARED_LATENCY_BUCKETS] = { 0.0001, 0.00025, 0.0005, 0.001, 0.0025,
                                                               0.005,  0.01,    0.025,  0.05,  0.1 };

/* ---- the scripts: each does its reads and writes in one round trip ---- */

/* GET that reads a key someone made another type (a stream, a list) as
 * none: SET then writes over it, and the script never fails on it (a
 * failing script would cost a mint a miss, or the whole connection). */
#define GET_LUA                                                                          \
    "local function get(k)\n"                                                           \
    "  local v = redis.pcall('GET', k)\n"                                               \
    "  if type(v) == 'table' then return false end\n"                                   \
    "  return v\n"                                                                      \
    "end\n"

/* KEYS: token (current key's name), token (previous key's name), lease,
 * gen, pause, lease (previous key's name). ARGV: least life in ms, lease id, lease ms, the values to
 * skip (SHA1s, comma-separated, '' for none, '*' for every token), the
 * holder whose lease we take over ('' for none), skip the pause flag (one
 * this host found forged). Returns {1, value, pttl, gen, which} for a token
 * with enough life (or, failing one, a token with less: the host judges it
 * by its lifetime, sealed inside), {3, pause flag, pttl, gen, 0} while paused, {2, '', 0,
 * gen, 0} for a lease taken (or already ours: a lookup sent again after a
 * lost answer), {4, holder, pttl, gen, 0} when another host holds it. A
 * waiter whose wait ran out takes the lease over only from the holder it
 * waited on, so of several waiters one mints; a holder that is no lease id
 * (32 hex digits) was not written by a host and is taken at once. During a
 * key rotation hosts name the lease under different keys: a lease another
 * host holds under our previous key's name is waited on as well, so hosts
 * on either side of the swap still make one mint. */
static const char lookup_lua[] =
    GET_LUA
    "local g = redis.call('GET', KEYS[4]) or '0'\n"
    "local pre = g .. ':'\n"
    "if ARGV[4] ~= '*' then\n"
    "  local short\n"
    "  for i = 1, 2 do\n"
    "    local v = get(KEYS[i])\n"
    "    if v and string.sub(v, 1, #pre) == pre and\n"
    "       (ARGV[4] == '' or not string.find(ARGV[4], redis.sha1hex(v), 1, true)) then\n"
    "      local ttl = redis.call('PTTL', KEYS[i])\n"
    "      if ttl > tonumber(ARGV[1]) then return {1, v, ttl, g, i} end\n"
    "      if ttl > 1000 and not short then short = {1, v, ttl, g, i} end\n"
    "    end\n"
    "  end\n"
    "  if short then return short end\n"
    "end\n"
    "local p = redis.call('PTTL', KEYS[5])\n"
    "if p > 0 and ARGV[6] ~= '1' then return {3, redis.call('GET', KEYS[5]) or '', p, g, 0} end\n"
    "local function free(h)\n"
    "  return not h or h == ARGV[5] or h == ARGV[2] or not string.match(h, '^' .. string.rep('%x', 32) .. '$')\n"
    "end\n"
    "if KEYS[6] ~= KEYS[3] then\n"
    "  local h = get(KEYS[6])\n"
    "  if not free(h) then return {4, h, redis.call('PTTL', KEYS[6]), g, 0} end\n"
    "end\n"
    "local h = get(KEYS[3])\n"
    "if free(h) then\n"
    "  redis.call('SET', KEYS[3], ARGV[2], 'PX', ARGV[3])\n"
    "  return {2, '', 0, g, 0}\n"
    "end\n"
    "return {4, h, redis.call('PTTL', KEYS[3]), g, 0}\n";

/* KEYS: token, lease, gen, creds, credsok. ARGV: value, ttl ms, lease id
 * or '', the generation the value was sealed for, a proof that this mint
 * succeeded now (fleet_proof_make()), how long to keep it. Stores the token
 * unless the fleet was flushed since, or a token of this generation that
 * lives longer is there and we hold no lease; always gives up our lease.
 * A mint that succeeded clears the credentials flag and, when there was
 * one, leaves the proof: hosts then refuse a flag made before it (one
 * written back after it was cleared). */
static const char publish_lua[] =
    GET_LUA
    "local mine = ARGV[3] ~= '' and get(KEYS[2]) == ARGV[3]\n"
    "if mine then redis.call('DEL', KEYS[2]) end\n"
    "if redis.call('DEL', KEYS[4]) == 1 then redis.call('SET', KEYS[5], ARGV[5], 'PX', ARGV[6]) end\n"
    "local g = get(KEYS[3]) or '0'\n"
    "if g ~= ARGV[4] then return 0 end\n"
    "local v = get(KEYS[1])\n"
    "if mine or not v or string.sub(v, 1, #g + 1) ~= g .. ':' or\n"
    "   redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then\n"
    "  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])\n"
    "  return 1\n"
    "end\n"
    "return 0\n";

/* KEYS: lease. ARGV: lease id, lease ms. Keeps the lease alive while our
 * mint runs, if it is still ours. */
static const char renew_lua[] =
    GET_LUA
    "if get(KEYS[1]) == ARGV[1] then\n"
    "  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])\n"
    "  return 1\n"
    "end\n"
    "return 0\n";

/* KEYS: lease. ARGV: lease id. Gives the lease up if it is still ours. */
static const char release_lua[] =
    GET_LUA
    "if get(KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end\n"
    "return 0\n";

/* Appends to the events stream (k) with an id of Redis's own clock.
 * A stream whose top id someone pushed into the future refuses that: it
 * is poisoned, deleted and made again (the hosts see a stream made anew
 * behind them, and drop their tokens: see fleet_events.c). */
#define XADD_LUA                                                                         \
    "local function xadd(k, len, ...)\n"                                                \
    "  local ok = redis.pcall('XADD', k, 'MAXLEN', '~', len, '*', ...)\n"               \
    "  if type(ok) == 'table' and ok.err then\n"                                        \
    "    redis.call('DEL', k)\n"                                                        \
    "    redis.call('XADD', k, 'MAXLEN', '~', len, '*', ...)\n"                         \
    "  end\n"                                                                           \
    "end\n"

/* KEYS: token (current name), token (previous name), events. ARGV: the
 * fingerprint to drop ('' for any), the sealed key for the event, the
 * stream's length, the event's field ('d' a drop, 'v' a revocation: every
 * host revokes its own copy too), the fingerprint under the previous key
 * (for the previous name; '' to use the first), and for a revocation the
 * proof of when it was made ('w', fleet_revoked_proof_make()). A key of another type under our prefix
 * (written by hand) is deleted, not an error that would lose the drop. Returns {value, pttl, value, pttl} of what it deleted
 * ('' and 0 where nothing), so a revocation can revoke it. */
static const char drop_lua[] =
    XADD_LUA
    "local out = {'', 0, '', 0}\n"
    "for i = 1, 2 do\n"
    "  local v = redis.pcall('GET', KEYS[i])\n"
    "  if type(v) == 'table' and v.err then\n"
    "    redis.call('DEL', KEYS[i])\n" /* another type under our prefix: written by hand */
    "    v = false\n"
    "  end\n"
    "  if v then\n"
    "    local a = string.find(v, ':', 1, true)\n"
    "    local fp = (i == 2 and ARGV[5] and ARGV[5] ~= '') and ARGV[5] or ARGV[1]\n"
    "    if ARGV[1] == '' or (a and string.sub(v, a + 1, a + #fp) == fp) then\n"
    "      out[2 * i] = redis.call('PTTL', KEYS[i])\n"
    "      out[2 * i - 1] = v\n"
    "      redis.call('DEL', KEYS[i])\n"
    "    end\n"
    "  end\n"
    "end\n"
    /* a revocation: 'v' for hosts that revoke their own copy too, with 'w'
     * (when it was made), then 'd' for hosts that know only drops */
    "if ARGV[4] == 'v' then xadd(KEYS[3], ARGV[3], 'v', ARGV[2], 'w', ARGV[6], 'd', ARGV[2])\n"
    "else xadd(KEYS[3], ARGV[3], 'd', ARGV[2]) end\n"
    "return out\n";


/* KEYS: gen, events. ARGV: the stream's length, the highest generation
 * this host has seen (its floor), the flush's proof of origin
 * (fleet_proof_make(), "flush"), '1' to make the stream anew first (it
 * holds an event no host can read: written by hand), and the proof bound
 * to that floor ("flush:<floor>"), FLUSH_STEP. A generation set back (or not a number)
 * never goes below what a host saw: the new one is above both; one more
 * than FLUSH_STEP above the floor (a writer's) is not built on. The event
 * is 'f' (the generation), 'p', 'b' (the floor) and 'q': hosts flush
 * their own caches only for a proof made with the fleet's key, and take
 * 'f' as their floor only from 'q', and only within FLUSH_STEP of 'b', so
 * that a proof copied onto another generation raises no floor out of
 * reach. */
static const char flush_lua[] =
    XADD_LUA
    "local v = redis.pcall('GET', KEYS[1])\n"
    "if type(v) == 'table' and v.err then redis.call('DEL', KEYS[1]) v = false end\n"
    "local g = tonumber(v or '0')\n"
    "local floor = tonumber(ARGV[2]) or 0\n"
    /* a number Lua cannot hold exactly (2^53 and up) is no generation */
    "if not g or g ~= math.floor(g) or g < floor or g >= 9007199254740991 or\n"
    "   g - floor >= tonumber(ARGV[6]) then g = floor end\n"
    "g = g + 1\n"
    "if ARGV[4] == '1' then redis.call('DEL', KEYS[2]) end\n"
    "redis.call('SET', KEYS[1], string.format('%d', g))\n"
    "xadd(KEYS[2], ARGV[1], 'f', string.format('%d', g), 'p', ARGV[3], 'b', ARGV[2], 'q', ARGV[5])\n"
    "return g\n";

/* KEYS: events. ARGV: the stream's length, the sealed fingerprints of
 * tokens revoked at Instacart, the sealed key of their user or "": then
 * every host drops that user's token too ('r' is read first). */
static const char revoked_lua[] =
    XADD_LUA
    "if ARGV[3] ~= '' then xadd(KEYS[1], ARGV[1], 'r', ARGV[2], 'd', ARGV[3])\n"
    "else xadd(KEYS[1], ARGV[1], 'r', ARGV[2]) end\n"
    "return 1\n";

/* KEYS: token (current key's name), token (previous key's name), gen,
 * events, lease. ARGV: value, ttl ms, the generation it was sealed for, the
 * last event the host applied. A token minted on one host while Redis was away,
 * offered once it is back: stored only if the fleet was neither flushed
 * (the generation) nor sent any drop or flush since the host last read its
 * events (the stream's newest id is not past that one), so that nothing
 * dropped meanwhile comes back; 2 when the fleet shares a token for the key
 * already, or another host holds the lease (its mint will be the fleet's):
 * the host gives its own up for it; 1 stored, 0 refused. */
static const char adopt_lua[] =
    GET_LUA
    "local g = get(KEYS[3]) or '0'\n"
    "if g ~= ARGV[3] then return 0 end\n"
    "local info = redis.pcall('XINFO', 'STREAM', KEYS[4])\n"
    "if type(info) ~= 'table' or info.err then return 0 end\n"
    "local newest\n"
    "for i = 1, #info - 1, 2 do\n"
    "  if info[i] == 'last-generated-id' then newest = info[i + 1] end\n"
    "end\n"
    "local function id(s)\n"
    "  local ms, seq = string.match(s or '', '^(%d+)%-(%d+)$')\n"
    "  return tonumber(ms), tonumber(seq)\n"
    "end\n"
    "local nm, ns = id(newest)\n"
    "local lm, ls = id(ARGV[4])\n"
    "if not nm or not lm or nm > lm or (nm == lm and ns > ls) then return 0 end\n"
    "for i = 1, 2 do\n"
    "  local v = redis.pcall('GET', KEYS[i])\n"
    "  if type(v) == 'string' and string.sub(v, 1, #g + 1) == g .. ':' then return 2 end\n"
    "end\n"
    "if redis.call('EXISTS', KEYS[5]) == 1 then return 2 end\n"
    "redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])\n"
    "return 1\n";

int fleet_sha1_hex(const void *data, size_t len, char out[41]) {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned n = 0;

    if (!EVP_Digest(data, len, md, &n, EVP_sha1(), NULL) || n != 20)
        return -EIO;
    for (unsigned i = 0; i < n; i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
    return 0;
}

const char *const fleet_scripts[S_COUNT] = { lookup_lua, publish_lua, release_lua, drop_lua, flush_lua,
                                              revoked_lua, renew_lua, adopt_lua };

/* ---- reading Redis's answers: every shape checked, nothing trusted ---- */

bool fleet_stream_id_parse(const char *s, size_t len, struct fleet_stream_id *ret) {
    unsigned long long part[2];

    if (!stream_id_parse(s, len, part))
        return false;
    ret->ms = part[0];
    ret->seq = part[1];
    return true;
}

int fleet_stream_id_cmp(struct fleet_stream_id a, struct fleet_stream_id b) {
    if (a.ms != b.ms)
        return a.ms < b.ms ? -1 : 1;
    return a.seq < b.seq ? -1 : a.seq > b.seq ? 1 : 0;
}

void fleet_stream_info_decode(const redisReply *r, struct fleet_stream_info *ret) {
    *ret = (struct fleet_stream_info){ 0 };
    for (size_t i = 0; r->type == REDIS_REPLY_ARRAY && i + 1 < r->elements; i += 2) {
        const redisReply *k = r->element[i], *v = r->element[i + 1];
        if ((k->type == REDIS_REPLY_STRING || k->type == REDIS_REPLY_STATUS) && v->type == REDIS_REPLY_INTEGER &&
            strcmp(k->str, "entries-added") == 0 && v->integer >= 0) {
            ret->have_added = true;
            ret->added = (unsigned long long)v->integer;
        }
        if ((k->type == REDIS_REPLY_STRING || k->type == REDIS_REPLY_STATUS) && v->type == REDIS_REPLY_INTEGER &&
            strcmp(k->str, "length") == 0 && v->integer >= 0) {
            ret->have_length = true;
            ret->length = (unsigned long long)v->integer;
        }
        if ((k->type != REDIS_REPLY_STRING && k->type != REDIS_REPLY_STATUS) || v->type != REDIS_REPLY_STRING)
            continue;
        if (strcmp(k->str, "last-generated-id") == 0)
            ret->have_newest = fleet_stream_id_parse(v->str, v->len, &ret->newest);
        else if (strcmp(k->str, "max-deleted-entry-id") == 0)
            ret->have_gone = fleet_stream_id_parse(v->str, v->len, &ret->gone);
        else if (strcmp(k->str, "recorded-first-entry-id") == 0)
            ret->have_first = fleet_stream_id_parse(v->str, v->len, &ret->first);
    }
}

static bool integer_at(const redisReply *r, size_t i, long long *v) {
    if (i >= r->elements || r->element[i]->type != REDIS_REPLY_INTEGER)
        return false;
    *v = r->element[i]->integer;
    return true;
}

bool fleet_lookup_decode(const redisReply *r, struct fleet_lookup *ret) {
    long long code, ttl, which;

    if (r->type != REDIS_REPLY_ARRAY || r->elements != 5 || !integer_at(r, 0, &code) || !integer_at(r, 2, &ttl) ||
        !integer_at(r, 4, &which) || r->element[1]->type != REDIS_REPLY_STRING ||
        r->element[3]->type != REDIS_REPLY_STRING || code < 1 || code > 4 || which < 0 || which > 2 ||
        (code == 1 && (which == 0 || ttl <= 0)))
        return false;
    *ret = (struct fleet_lookup){ .code = (int)code, .value = r->element[1], .ttl = ttl, .gen = r->element[3],
                                  .which = (int)which };
    return true;
}

const redisReply *fleet_xread_entries(const redisReply *r) {
    /* [[key, [[id, [field, value, ...]], ...]]] */
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 1 || r->element[0]->type != REDIS_REPLY_ARRAY ||
        r->element[0]->elements != 2 || r->element[0]->element[1]->type != REDIS_REPLY_ARRAY)
        return NULL;
    return r->element[0]->element[1];
}

bool fleet_time_decode(const redisReply *r, unsigned long long *ret_ms) {
    struct fleet_stream_id t; /* seconds and microseconds: two runs of digits */
    char buf[48];

    if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 || r->element[0]->type != REDIS_REPLY_STRING ||
        r->element[1]->type != REDIS_REPLY_STRING || r->element[0]->len + r->element[1]->len + 1 >= sizeof(buf))
        return false;
    snprintf(buf, sizeof(buf), "%s-%s", r->element[0]->str, r->element[1]->str);
    if (!fleet_stream_id_parse(buf, strlen(buf), &t) || t.seq >= 1000000 || t.ms > ULLONG_MAX / 2000)
        return false;
    *ret_ms = t.ms * 1000 + t.seq / 1000;
    return true;
}

/* ---- a bound on what Redis's answers may make us allocate ----
 *
 * hiredis's reader allocates an array's element pointers as soon as it
 * reads the array's length: "*700000000" costs 5.6 GB before any element
 * arrives (found by fuzz-fleet-reply). Our answers are a few elements, and
 * XREAD's at most a thousand events: any array longer than this is refused,
 * which fails the connection as a reader error does. */
#define REPLY_ELEMENTS_MAX 65536

#if HIREDIS_MAJOR >= 1
typedef size_t array_len;
#else
typedef int array_len;
#endif

static redisReplyObjectFunctions bounded;
static void *(*default_array)(const redisReadTask *, array_len);
static pthread_once_t bounded_once = PTHREAD_ONCE_INIT;
static bool bounded_ready;

static void *bounded_array(const redisReadTask *task, array_len elements) {
#if HIREDIS_MAJOR < 1
    if (elements < 0)
        return NULL;
#endif
    if ((size_t)elements > REPLY_ELEMENTS_MAX)
        return NULL; /* the reader reports it as out of memory */
    return default_array(task, elements);
}

/* hiredis's own functions are the same for every reader, but not exported:
 * they are read once from a reader of our own, never from the caller's, so
 * that two threads binding their readers at once share nothing but this. */
static void make_bounded(void) {
    redisReader *probe = redisReaderCreate();
    if (!probe || !probe->fn) {
        if (probe)
            redisReaderFree(probe);
        return;
    }
    bounded = *probe->fn;
    default_array = bounded.createArray;
    bounded.createArray = bounded_array;
    bounded_ready = true;
    redisReaderFree(probe);
}

void fleet_reader_bound(redisReader *r) {
    if (!r || !r->fn || r->fn == &bounded)
        return;
    pthread_once(&bounded_once, make_bounded);
    if (bounded_ready)
        r->fn = &bounded;
}
