/* Unit tests of src/head.c: strict HTTP on a header block, as the HTTP
 * library hands it over, and the facts it keeps for the guard. */
#include <string.h>

#include "head.h"
#include "unit.h"

static const head_rules rules_0975 = { .user_header = "X-Tokend-User", .user_header_len = 13 };
static const head_rules rules_10 = { .user_header = "X-Tokend-User", .user_header_len = 13, .folds_in_values = true };

/* Feeds "Name: value" pairs (NULL-terminated); returns the head. */
static bool feed(const head_rules *r, head *h, const char *const *lines) {
    *h = (head){ 0 };
    for (size_t i = 0; lines[i]; i += 2)
        if (!head_add(h, r, lines[i], strlen(lines[i]), lines[i + 1], strlen(lines[i + 1])))
            return false;
    return head_finish(h);
}

#define FEED(r, h, ...) feed(r, h, (const char *const[]){ __VA_ARGS__, NULL })

static void an_ordinary_block_is_read_and_its_facts_kept(void) {
    head h;

    ASSERT(FEED(&rules_0975, &h, "Host", "127.0.0.1:8787", "User-Agent", "curl/7.88", "Accept", "*/*",
                "Origin", "https://shop.example", "sec-fetch-site", "same-site", "Authorization", "Bearer k",
                "x-tokend-user", "alice", "Content-Length", "12", "Expect", "100-continue",
                "Content-Type", "application/json", "content-type", "text/html"));
    ASSERT_STR_EQ(h.host, "127.0.0.1:8787");
    ASSERT_STR_EQ(h.origin, "https://shop.example");
    ASSERT_STR_EQ(h.site, "same-site");
    ASSERT_STR_EQ(h.authorization, "Bearer k");
    ASSERT_STR_EQ(h.length, "12");
    ASSERT(h.user && h.expect && !h.relayed && !h.chunked && !h.bad);
    /* what the routes read: the user header's value, and the first Content-Type */
    ASSERT(h.user_len == 5 && memcmp(h.user_value, "alice", 5) == 0);
    ASSERT_STR_EQ(h.content_type, "application/json");
    ASSERT(h.bytes > 100);
}

/* found by fuzz-head: a header after the user header made it forgotten, so
 * the guard would not have seen it */
static void the_user_header_is_kept_whatever_follows(void) {
    head h;

    ASSERT(FEED(&rules_0975, &h, "X-Tokend-User", "alice", "Accept", "*/*", "User-Agent", "x"));
    ASSERT(h.user);
}

static void names_that_are_not_tokens_are_refused(void) {
    head h;

    ASSERT(!FEED(&rules_0975, &h, "Host ", "x")); /* `Host : x` as 0.9.75 hands it over */
    ASSERT(!FEED(&rules_0975, &h, "X Y", "z"));
    ASSERT(!FEED(&rules_0975, &h, "Origin:x", "y"));
    ASSERT(!FEED(&rules_0975, &h, "", "y"));
    ASSERT(h.bad != NULL);
}

static void a_fold_glued_onto_a_name_is_refused(void) {
    static const char *const names[] = { "Hostx", "Originfoo", "Sec-Fetch-Sitex", "X-Forwarded-Forx",
                                         "X-Real-IPx", "Authorizationx", "Content-Length2", "X-Tokend-Userbob",
                                         "Viax", "CF-Connecting-IPx" };
    head h;

    for (size_t i = 0; i < sizeof(names) / sizeof(*names); i++) {
        ASSERT(!FEED(&rules_0975, &h, names[i], "v"));
        ASSERT(strstr(h.bad, "fold") != NULL);
    }
    ASSERT(FEED(&rules_0975, &h, "User-Agentx", "v")); /* a header tokend does not read: no matter */
}

static void a_fold_glued_onto_a_value_is_refused_where_the_library_does_that(void) {
    head h;

    ASSERT(!FEED(&rules_10, &h, "Host", "evil.example    127.0.0.1"));
    ASSERT(!FEED(&rules_10, &h, "Origin", "https://evil  \tx"));
    ASSERT(!FEED(&rules_10, &h, "X-Tokend-User", "alice   mallory"));
    ASSERT(FEED(&rules_10, &h, "X-Tokend-User", "al ice"));
    ASSERT(FEED(&rules_10, &h, "User-Agent", "a    b"));
    ASSERT(FEED(&rules_0975, &h, "Host", "evil.example    127.0.0.1")); /* refused later by the guard */
}

static void a_repeated_header_the_guard_reads_is_refused(void) {
    head h;

    ASSERT(!FEED(&rules_0975, &h, "Host", "127.0.0.1", "host", "evil.example"));
    ASSERT(!FEED(&rules_0975, &h, "Origin", "https://a", "Origin", "https://a"));
    ASSERT(!FEED(&rules_0975, &h, "X-Tokend-User", "alice", "X-Tokend-User", "bob"));
    ASSERT(FEED(&rules_0975, &h, "Accept", "a", "Accept", "b"));
}

static void content_length_and_transfer_encoding(void) {
    head h;

    ASSERT(!FEED(&rules_0975, &h, "Content-Length", "2", "Content-Length", "5"));
    ASSERT(FEED(&rules_0975, &h, "Content-Length", "2", "content-length", "2"));
    ASSERT(FEED(&rules_0975, &h, "Transfer-Encoding", "Chunked"));
    ASSERT(h.chunked);
    ASSERT(!FEED(&rules_0975, &h, "Transfer-Encoding", "xchunked"));
    ASSERT(!FEED(&rules_0975, &h, "Transfer-Encoding", "identity, chunked"));
    ASSERT(!FEED(&rules_0975, &h, "Transfer-Encoding", "gzip"));
    ASSERT(!FEED(&rules_0975, &h, "Transfer-Encoding", "chunked", "Transfer-Encoding", "chunked"));
    ASSERT(!FEED(&rules_0975, &h, "Transfer-Encoding", "chunked", "Content-Length", "4"));
}

static void headers_a_relaying_proxy_adds(void) {
    static const char *const relayed[] = { "X-Forwarded-For", "x-forwarded-host", "X-Forwarded-Proto",
                                           "Forwarded", "X-Real-IP", "X-Client-IP", "True-Client-IP", "Via",
                                           "cf-connecting-ip", "X-Original-Forwarded-For" };
    head h;

    for (size_t i = 0; i < sizeof(relayed) / sizeof(*relayed); i++) {
        ASSERT(FEED(&rules_0975, &h, relayed[i], "10.0.0.1"));
        ASSERT(h.relayed);
    }
    ASSERT(FEED(&rules_0975, &h, "X-Forwarded", "1"));
    ASSERT(!h.relayed);
}

static const unit_test tests[] = {
    TEST(an_ordinary_block_is_read_and_its_facts_kept),
    TEST(the_user_header_is_kept_whatever_follows),
    TEST(names_that_are_not_tokens_are_refused),
    TEST(a_fold_glued_onto_a_name_is_refused),
    TEST(a_fold_glued_onto_a_value_is_refused_where_the_library_does_that),
    TEST(a_repeated_header_the_guard_reads_is_refused),
    TEST(content_length_and_transfer_encoding),
    TEST(headers_a_relaying_proxy_adds),
};

UNIT_MAIN(tests)
