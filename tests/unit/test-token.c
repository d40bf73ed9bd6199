/* Unit tests of src/token.c: what a minted token keeps, when it expires
 * (on the local clock of its receipt, never Instacart's), and its
 * reference count, which the cache, a background refresh and an answer
 * being written share across threads. */
#include <errno.h>
#include <pthread.h>

#include "token.h"
#include "unit.h"
#include "util.h"

static void keeps_the_value_and_the_times(void) {
    static const char value[] = "hP4-l0ng.token_value~/+=";
    token *t = NULL;

    ASSERT_INT_EQ(token_new(value, strlen(value), 7200, 1700000000, 5000, &t), 0);
    ASSERT(t);
    ASSERT_STR_EQ(t->value, value);
    ASSERT_UINT_EQ(t->len, strlen(value));
    ASSERT_UINT_EQ(t->lifetime_s, 7200);
    ASSERT_INT_EQ(t->created_at, 1700000000);
    ASSERT_UINT_EQ(t->received_ms, 5000);
    ASSERT_UINT_EQ(t->expires_ms, 5000 + 7200 * MS_PER_SEC);
    ASSERT_UINT_EQ(t->refs, 1);
    token_unref(t);
}

/* The value is len bytes of what the caller holds (a slice of Instacart's
 * answer), not up to the caller's NUL. */
static void copies_exactly_len_bytes(void) {
    static const char body[] = "abcdef\",\"expires_in\":7200}";
    token *t = NULL;

    ASSERT_INT_EQ(token_new(body, 6, 60, 0, 0, &t), 0);
    ASSERT_STR_EQ(t->value, "abcdef");
    ASSERT_UINT_EQ(t->len, 6);
    ASSERT_INT_EQ(t->value[6], '\0');
    token_unref(t);
}

/* Instacart's created_at is only echoed back: its clock (or a value before
 * the epoch) does not move the expiry. */
static void expiry_does_not_depend_on_created_at(void) {
    token *a = NULL, *b = NULL;

    ASSERT_INT_EQ(token_new("x", 1, 100, -5, 1000, &a), 0);
    ASSERT_INT_EQ(token_new("x", 1, 100, INT64_MAX, 1000, &b), 0);
    ASSERT_INT_EQ(a->created_at, -5);
    ASSERT_INT_EQ(b->created_at, INT64_MAX);
    ASSERT_UINT_EQ(a->expires_ms, 1000 + 100 * MS_PER_SEC);
    ASSERT_UINT_EQ(b->expires_ms, a->expires_ms);
    token_unref(a);
    token_unref(b);
}

static void refuses_an_empty_or_oversized_value(void) {
    token *sentinel = (token *)&sentinel, *t = sentinel;
    size_t big = (size_t)UINT16_MAX + 1;
    char *buf = malloc(big);

    ASSERT(buf);
    memset(buf, 'a', big);
    ASSERT_INT_EQ(token_new("", 0, 60, 0, 0, &t), -EINVAL);
    ASSERT(t == sentinel); /* written only on success */
    ASSERT_INT_EQ(token_new(buf, big, 60, 0, 0, &t), -EINVAL);
    ASSERT(t == sentinel);
    /* the longest that len (uint16_t) can say is taken whole */
    ASSERT_INT_EQ(token_new(buf, UINT16_MAX, 60, 0, 0, &t), 0);
    ASSERT_UINT_EQ(t->len, UINT16_MAX);
    ASSERT_UINT_EQ(strlen(t->value), UINT16_MAX);
    token_unref(t);
    free(buf);
}

/* expires_in is a uint32 of seconds: its largest value in milliseconds does
 * not fit 32 bits and must not wrap. */
static void expiry_arithmetic_does_not_wrap(void) {
    token *t = NULL;
    uint64_t received = 123456789012ULL;

    ASSERT_INT_EQ(token_new("x", 1, UINT32_MAX, 0, received, &t), 0);
    ASSERT_UINT_EQ(t->expires_ms, received + (uint64_t)UINT32_MAX * 1000);
    ASSERT_UINT_EQ(token_remaining_ms(t, received), (uint64_t)UINT32_MAX * 1000);
    token_unref(t);

    /* expires_in 0: already expired on receipt */
    ASSERT_INT_EQ(token_new("x", 1, 0, 0, received, &t), 0);
    ASSERT_UINT_EQ(t->expires_ms, received);
    ASSERT_UINT_EQ(token_remaining_ms(t, received), 0);
    token_unref(t);
}

static void remaining_at_the_edges(void) {
    token *t = NULL;

    ASSERT_INT_EQ(token_new("x", 1, 10, 0, 1000, &t), 0); /* expires at 11000 */
    ASSERT_UINT_EQ(token_remaining_ms(t, 0), 11000);         /* a clock before receipt */
    ASSERT_UINT_EQ(token_remaining_ms(t, 1000), 10000);
    ASSERT_UINT_EQ(token_remaining_ms(t, 10999), 1);
    ASSERT_UINT_EQ(token_remaining_ms(t, 11000), 0);         /* expired exactly at expiry */
    ASSERT_UINT_EQ(token_remaining_ms(t, 11001), 0);         /* never "wraps" to a huge value */
    ASSERT_UINT_EQ(token_remaining_ms(t, UINT64_MAX), 0);
    token_unref(t);
}

static void ref_and_unref_count(void) {
    token *t = NULL;

    ASSERT_INT_EQ(token_new("abc", 3, 60, 0, 0, &t), 0);
    ASSERT(token_ref(t) == t);
    ASSERT(token_ref(t) == t);
    ASSERT_UINT_EQ(t->refs, 3);
    ASSERT(token_unref(t) == NULL); /* returns NULL, for t = token_unref(t) */
    ASSERT_UINT_EQ(t->refs, 2);
    token_unref(t);
    ASSERT_UINT_EQ(t->refs, 1);
    ASSERT_STR_EQ(t->value, "abc"); /* still whole while one reference is left */
    token_unref(t);                 /* the last: freed (ASan would see a use after this) */
}

static void null_is_accepted(void) {
    ASSERT(token_ref(NULL) == NULL);
    ASSERT(token_unref(NULL) == NULL);
}

#define THREADS 4
#define ROUNDS 200000

static void *churn(void *arg) {
    token *t = arg;

    for (int i = 0; i < ROUNDS; i++)
        token_unref(token_ref(t));
    for (int i = 0; i < ROUNDS; i++)
        token_ref(t);
    for (int i = 0; i < ROUNDS; i++)
        token_unref(t);
    return NULL;
}

/* Threads that take and drop references at once leave the count where it
 * was: a lost update would free the token under another thread, or leak it. */
static void counting_is_safe_across_threads(void) {
    pthread_t th[THREADS];
    token *t = NULL;

    ASSERT_INT_EQ(token_new("shared", 6, 60, 0, 0, &t), 0);
    for (int i = 0; i < THREADS; i++)
        ASSERT_INT_EQ(pthread_create(&th[i], NULL, churn, t), 0);
    for (int i = 0; i < THREADS; i++)
        ASSERT_INT_EQ(pthread_join(th[i], NULL), 0);
    ASSERT_UINT_EQ(t->refs, 1);
    ASSERT_STR_EQ(t->value, "shared");
    token_unref(t);
}

static const unit_test tests[] = {
    TEST(keeps_the_value_and_the_times),
    TEST(copies_exactly_len_bytes),
    TEST(expiry_does_not_depend_on_created_at),
    TEST(refuses_an_empty_or_oversized_value),
    TEST(expiry_arithmetic_does_not_wrap),
    TEST(remaining_at_the_edges),
    TEST(ref_and_unref_count),
    TEST(null_is_accepted),
    TEST(counting_is_safe_across_threads),
};

UNIT_MAIN(tests)
