/* Unit tests of src/breaker.c: when the circuit to Instacart opens, how long
 * it stays open, the single probe, and the retry backoff. Time is whatever
 * the test passes: nothing waits. */
#include "breaker.h"
#include "unit.h"

#define SEC 1000ULL

static void opens_after_threshold_failures_in_a_row(void) {
    breaker b;
    uint64_t wait = 99;

    breaker_init(&b, 3, 10 * SEC);
    ASSERT_INT_EQ(breaker_check(&b, 0, &wait), BREAKER_PASS);
    ASSERT(!breaker_failure(&b, 0, false));
    ASSERT(!breaker_failure(&b, 1, false));
    ASSERT(!breaker_success(&b)); /* a success in between starts the count again */
    ASSERT(!breaker_failure(&b, 2, false));
    ASSERT(!breaker_failure(&b, 3, false));
    ASSERT_INT_EQ(breaker_check(&b, 3, &wait), BREAKER_PASS);
    ASSERT(breaker_failure(&b, 4, false)); /* the third in a row opens it */
    ASSERT_INT_EQ(breaker_check(&b, 5, &wait), BREAKER_REFUSE);
    ASSERT_UINT_EQ(wait, 10 * SEC - 1);
    ASSERT(breaker_refuses(&b, 4 + 10 * SEC - 1, &wait));
    ASSERT_UINT_EQ(wait, 1);
    ASSERT_INT_EQ(breaker_state_at(&b, 4 + 10 * SEC - 1), BREAKER_OPEN);
    ASSERT_INT_EQ(breaker_state_at(&b, 4 + 10 * SEC), BREAKER_HALF_OPEN);
}

static void one_probe_after_the_cooldown(void) {
    breaker b;
    uint64_t wait;

    breaker_init(&b, 1, 10 * SEC);
    ASSERT(breaker_failure(&b, 0, false));
    ASSERT_INT_EQ(breaker_check(&b, 10 * SEC, &wait), BREAKER_PROBE);
    /* while the probe is out, everyone else waits for its answer */
    ASSERT_INT_EQ(breaker_check(&b, 10 * SEC + 1, &wait), BREAKER_REFUSE);
    ASSERT_UINT_EQ(wait, 0);
    ASSERT(breaker_refuses(&b, 10 * SEC + 1, &wait));
    /* the probe fails: open for another cooldown from then */
    breaker_probe_done(&b);
    ASSERT(breaker_failure(&b, 11 * SEC, false));
    ASSERT_INT_EQ(breaker_check(&b, 20 * SEC, &wait), BREAKER_REFUSE);
    ASSERT_UINT_EQ(wait, 1 * SEC);
    /* the next probe succeeds: closed, everyone passes */
    ASSERT_INT_EQ(breaker_check(&b, 21 * SEC, &wait), BREAKER_PROBE);
    breaker_probe_done(&b);
    ASSERT(breaker_success(&b));
    ASSERT_INT_EQ(breaker_check(&b, 21 * SEC, &wait), BREAKER_PASS);
    ASSERT_INT_EQ(breaker_check(&b, 21 * SEC, &wait), BREAKER_PASS);
}

/* A failure that cannot heal (the credentials refused) opens it at once. */
static void at_once_opens_whatever_the_count(void) {
    breaker b;
    uint64_t wait;

    breaker_init(&b, 5, 2 * SEC);
    ASSERT(breaker_failure(&b, 100, true));
    ASSERT_INT_EQ(breaker_check(&b, 101, &wait), BREAKER_REFUSE);
    /* already open: another failure does not say "opened" again */
    ASSERT(!breaker_failure(&b, 102, true));
    breaker_reset(&b); /* new credentials */
    ASSERT_INT_EQ(breaker_check(&b, 103, &wait), BREAKER_PASS);
    ASSERT_UINT_EQ(b.threshold, 5);
    ASSERT_UINT_EQ(b.cooldown_ms, 2 * SEC);
}

static void backoff_is_full_jitter_capped(void) {
    /* the delay is random % (cap + 1): feed it the extremes */
    ASSERT_UINT_EQ(backoff_full_jitter(100, 2000, 0, 0), 0);
    ASSERT_UINT_EQ(backoff_full_jitter(100, 2000, 0, 100), 100);
    ASSERT_UINT_EQ(backoff_full_jitter(100, 2000, 0, 101), 0);
    ASSERT_UINT_EQ(backoff_full_jitter(100, 2000, 1, 200), 200);
    ASSERT_UINT_EQ(backoff_full_jitter(100, 2000, 3, 800), 800);
    /* capped at max, even when the shift would overflow */
    ASSERT_UINT_EQ(backoff_full_jitter(100, 2000, 5, 2000), 2000);
    ASSERT_UINT_EQ(backoff_full_jitter(100, 2000, 5, 2001), 0);
    ASSERT_UINT_EQ(backoff_full_jitter(100, 2000, 1000, UINT64_MAX), UINT64_MAX % 2001);
    for (uint64_t r = 0; r < 5000; r += 7)
        ASSERT(backoff_full_jitter(100, 2000, 2, r) <= 400);
}

static const unit_test tests[] = {
    TEST(opens_after_threshold_failures_in_a_row),
    TEST(one_probe_after_the_cooldown),
    TEST(at_once_opens_whatever_the_count),
    TEST(backoff_is_full_jitter_capped),
};

UNIT_MAIN(tests)
