/* Unit tests of src/breaker.c: when the circuit to Instacart opens, how long
 * it stays open, the single probe, and the retry backoff. Time is whatever
 * the test passes: nothing waits.
 *
 * The breaker knows nothing of 429: upstream.c pauses minting on its own
 * and reports a 429 to the breaker as neither a success nor a failure,
 * so for the breaker a probe answered 429 is a probe that ended without
 * either (breaker_probe_done alone). */
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

/* Only failures in a row count: any success starts the count again. */
static void a_success_resets_the_count(void) {
    breaker b;
    uint64_t wait;

    breaker_init(&b, 3, 10 * SEC);
    for (int round = 0; round < 5; round++) {
        ASSERT(!breaker_failure(&b, 0, false));
        ASSERT(!breaker_failure(&b, 0, false));
        ASSERT(!breaker_success(&b)); /* was closed: nothing to say */
        ASSERT_UINT_EQ(b.failures, 0);
    }
    ASSERT_INT_EQ(breaker_check(&b, 0, &wait), BREAKER_PASS);
    ASSERT(!breaker_failure(&b, 0, false));
    ASSERT(!breaker_failure(&b, 0, false));
    ASSERT(breaker_failure(&b, 0, false));
    ASSERT_INT_EQ(breaker_state_at(&b, 0), BREAKER_OPEN);
}

/* breaker_failures = 0 would never open: taken as 1. */
static void a_threshold_of_zero_is_one(void) {
    breaker b;
    uint64_t wait;

    breaker_init(&b, 0, 1 * SEC);
    ASSERT_UINT_EQ(b.threshold, 1);
    ASSERT(breaker_failure(&b, 0, false));
    ASSERT_INT_EQ(breaker_check(&b, 0, &wait), BREAKER_REFUSE);
}

/* Open for exactly the cooldown: refused 1 ms before its end, the probe
 * at its end; breaker_refuses and breaker_state_at agree with
 * breaker_check at both instants. */
static void the_cooldown_ends_exactly_on_time(void) {
    breaker b;
    uint64_t wait = 99;

    breaker_init(&b, 1, 500);
    ASSERT(breaker_failure(&b, 1000, false));
    ASSERT(breaker_refuses(&b, 1000, &wait));
    ASSERT_UINT_EQ(wait, 500);
    ASSERT(breaker_refuses(&b, 1499, &wait));
    ASSERT_UINT_EQ(wait, 1);
    ASSERT_INT_EQ(breaker_state_at(&b, 1499), BREAKER_OPEN);
    ASSERT_INT_EQ(breaker_check(&b, 1499, &wait), BREAKER_REFUSE);
    ASSERT_UINT_EQ(wait, 1);
    ASSERT_INT_EQ(breaker_state_at(&b, 1500), BREAKER_HALF_OPEN);
    ASSERT(!breaker_refuses(&b, 1500, &wait));
    ASSERT_INT_EQ(breaker_check(&b, 1500, &wait), BREAKER_PROBE);
}

/* Asking whether it would refuse (at submission) changes nothing: the
 * probe is still there for the first breaker_check. */
static void asking_does_not_take_the_probe(void) {
    breaker b, before;
    uint64_t wait;

    breaker_init(&b, 1, 500);
    ASSERT(breaker_failure(&b, 0, false));
    for (int i = 0; i < 3; i++) {
        before = b;
        ASSERT(!breaker_refuses(&b, 600, &wait));
        ASSERT_INT_EQ(breaker_state_at(&b, 600), BREAKER_HALF_OPEN);
        ASSERT(before.state == b.state && before.failures == b.failures &&
               before.until_ms == b.until_ms && before.probe_in_flight == b.probe_in_flight);
    }
    ASSERT_INT_EQ(breaker_check(&b, 600, &wait), BREAKER_PROBE);
    ASSERT_INT_EQ(breaker_check(&b, 600, &wait), BREAKER_REFUSE);
}

/* One probe at a time, however long its answer takes: a second cooldown
 * going by does not let a second probe through. */
static void one_probe_however_long_it_takes(void) {
    breaker b;
    uint64_t wait = 99;

    breaker_init(&b, 1, 500);
    ASSERT(breaker_failure(&b, 0, false));
    ASSERT_INT_EQ(breaker_check(&b, 500, &wait), BREAKER_PROBE);
    for (uint64_t t = 500; t < 500 + 10 * 500; t += 250) {
        ASSERT_INT_EQ(breaker_check(&b, t, &wait), BREAKER_REFUSE);
        ASSERT_UINT_EQ(wait, 0); /* as soon as the probe answers */
        ASSERT(breaker_refuses(&b, t, &wait));
        ASSERT_INT_EQ(breaker_state_at(&b, t), BREAKER_HALF_OPEN);
    }
}

/* A probe that ends without a success or a failure (answered 429, or its
 * job dropped before it was sent): still half open, and the next caller
 * gets the probe, one caller only. */
static void a_probe_without_a_verdict_hands_the_probe_on(void) {
    breaker b;
    uint64_t wait;

    breaker_init(&b, 2, 500);
    ASSERT(!breaker_failure(&b, 0, false));
    ASSERT(breaker_failure(&b, 0, false));
    ASSERT_INT_EQ(breaker_check(&b, 500, &wait), BREAKER_PROBE);
    breaker_probe_done(&b);
    ASSERT_INT_EQ(breaker_state_at(&b, 501), BREAKER_HALF_OPEN);
    ASSERT(!breaker_refuses(&b, 501, &wait));
    ASSERT_INT_EQ(breaker_check(&b, 501, &wait), BREAKER_PROBE);
    ASSERT_INT_EQ(breaker_check(&b, 501, &wait), BREAKER_REFUSE);
    /* this one fails: half open, one failure is enough to open again */
    breaker_probe_done(&b);
    ASSERT(breaker_failure(&b, 502, false));
    ASSERT_INT_EQ(breaker_check(&b, 502, &wait), BREAKER_REFUSE);
    ASSERT_UINT_EQ(wait, 500);
}

/* The probe is owned by whoever got BREAKER_PROBE: until it says
 * breaker_probe_done, every other caller is refused, for ever. A caller
 * that takes the probe and then does not send (paused by a 429, out of
 * memory) must hand it back, or the circuit never closes. */
static void a_probe_never_handed_back_refuses_everyone(void) {
    breaker b;
    uint64_t wait;

    breaker_init(&b, 1, 500);
    ASSERT(breaker_failure(&b, 0, false));
    ASSERT_INT_EQ(breaker_check(&b, 500, &wait), BREAKER_PROBE);
    ASSERT_INT_EQ(breaker_check(&b, 3600 * SEC, &wait), BREAKER_REFUSE);
    ASSERT_INT_EQ(breaker_check(&b, 24 * 3600 * SEC, &wait), BREAKER_REFUSE);
    breaker_probe_done(&b); /* handed back: the next caller probes */
    ASSERT_INT_EQ(breaker_check(&b, 24 * 3600 * SEC, &wait), BREAKER_PROBE);
}

/* A failed probe opens it again for a whole cooldown from the failure
 * (not from the first opening), and says so (it was not open). */
static void a_failed_probe_opens_for_a_full_cooldown(void) {
    breaker b;
    uint64_t wait;

    breaker_init(&b, 5, 1000);
    ASSERT(breaker_failure(&b, 0, true));
    ASSERT_INT_EQ(breaker_check(&b, 1000, &wait), BREAKER_PROBE);
    breaker_probe_done(&b);
    ASSERT(breaker_failure(&b, 1700, false)); /* one failure, below the threshold of 5 */
    ASSERT(breaker_refuses(&b, 2699, &wait));
    ASSERT_UINT_EQ(wait, 1);
    ASSERT_INT_EQ(breaker_check(&b, 2700, &wait), BREAKER_PROBE);
}

/* Closed again by a probe, the count starts from nothing: it takes the
 * threshold in a row to open once more. */
static void after_closing_the_count_starts_over(void) {
    breaker b;
    uint64_t wait;

    breaker_init(&b, 3, 1000);
    for (int i = 0; i < 3; i++)
        breaker_failure(&b, 0, false);
    ASSERT_INT_EQ(breaker_check(&b, 1000, &wait), BREAKER_PROBE);
    breaker_probe_done(&b);
    ASSERT(breaker_success(&b)); /* it was not closed: say it closed */
    ASSERT(!breaker_failure(&b, 1001, false));
    ASSERT(!breaker_failure(&b, 1002, false));
    ASSERT_INT_EQ(breaker_check(&b, 1003, &wait), BREAKER_PASS);
    ASSERT(breaker_failure(&b, 1003, false));
}

/* Answers to requests sent before the circuit opened still come in. A
 * failure while open does not say "opened" a second time (one log line
 * per opening); a success means Instacart answers: closed. */
static void late_answers_while_open(void) {
    breaker b;
    uint64_t wait;

    breaker_init(&b, 2, 1000);
    ASSERT(!breaker_failure(&b, 0, false));
    ASSERT(breaker_failure(&b, 0, false));
    ASSERT(!breaker_failure(&b, 10, false));
    ASSERT(!breaker_failure(&b, 20, true));
    ASSERT_INT_EQ(breaker_state_at(&b, 30), BREAKER_OPEN);
    ASSERT(breaker_success(&b));
    ASSERT_INT_EQ(breaker_check(&b, 31, &wait), BREAKER_PASS);
    ASSERT_UINT_EQ(b.failures, 0);
}

/* A late success while the probe is out closes the circuit for everyone
 * at once; the probe's own failure, when it comes, is one failure of a
 * closed circuit, not a reopening. */
static void a_late_success_while_the_probe_is_out(void) {
    breaker b;
    uint64_t wait;

    breaker_init(&b, 2, 1000);
    breaker_failure(&b, 0, false);
    breaker_failure(&b, 0, false);
    ASSERT_INT_EQ(breaker_check(&b, 1000, &wait), BREAKER_PROBE);
    ASSERT(breaker_success(&b)); /* a request sent before the opening */
    ASSERT_INT_EQ(breaker_check(&b, 1001, &wait), BREAKER_PASS);
    ASSERT(!breaker_refuses(&b, 1001, &wait));
    breaker_probe_done(&b);
    ASSERT(!breaker_failure(&b, 1002, false));
    ASSERT_INT_EQ(breaker_check(&b, 1002, &wait), BREAKER_PASS);
}

/* New credentials or a new server: closed with no history, the probe
 * released, whoever held it notwithstanding. */
static void a_reset_releases_the_probe(void) {
    breaker b;
    uint64_t wait;

    breaker_init(&b, 1, 1000);
    breaker_failure(&b, 0, false);
    ASSERT_INT_EQ(breaker_check(&b, 1000, &wait), BREAKER_PROBE);
    breaker_reset(&b);
    ASSERT_INT_EQ(breaker_check(&b, 1000, &wait), BREAKER_PASS);
    ASSERT_INT_EQ(breaker_check(&b, 1000, &wait), BREAKER_PASS);
    ASSERT_UINT_EQ(b.failures, 0);
    /* the new server fails too, before the old probe has answered: its
     * own probe comes after the cooldown, not held up by the old one */
    ASSERT(breaker_failure(&b, 1100, false));
    ASSERT_INT_EQ(breaker_check(&b, 2100, &wait), BREAKER_PROBE);
}

static void each_state_has_its_metrics_name(void) {
    ASSERT_STR_EQ(breaker_state_names[BREAKER_CLOSED], "closed");
    ASSERT_STR_EQ(breaker_state_names[BREAKER_OPEN], "open");
    ASSERT_STR_EQ(breaker_state_names[BREAKER_HALF_OPEN], "half_open");
}

static const unit_test tests[] = {
    TEST(opens_after_threshold_failures_in_a_row),
    TEST(one_probe_after_the_cooldown),
    TEST(at_once_opens_whatever_the_count),
    TEST(backoff_is_full_jitter_capped),
    TEST(a_success_resets_the_count),
    TEST(a_threshold_of_zero_is_one),
    TEST(the_cooldown_ends_exactly_on_time),
    TEST(asking_does_not_take_the_probe),
    TEST(one_probe_however_long_it_takes),
    TEST(a_probe_without_a_verdict_hands_the_probe_on),
    TEST(a_probe_never_handed_back_refuses_everyone),
    TEST(a_failed_probe_opens_for_a_full_cooldown),
    TEST(after_closing_the_count_starts_over),
    TEST(late_answers_while_open),
    TEST(a_late_success_while_the_probe_is_out),
    TEST(a_reset_releases_the_probe),
    TEST(each_state_has_its_metrics_name),
};

UNIT_MAIN(tests)
