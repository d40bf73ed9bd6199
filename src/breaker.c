/* The circuit breaker and the retry backoff (see breaker.h). Responsible for
 * when to stop calling Instacart after failures and when to try again; not
 * for deciding what counts as a failure (upstream.c classifies answers). */
#include "breaker.h"

const char *const breaker_state_names[3] = { "closed", "open", "half_open" };

void breaker_init(breaker *b, unsigned threshold, uint64_t cooldown_ms) {
    *b = (breaker){ .state = BREAKER_CLOSED, .threshold = threshold ? threshold : 1,
                    .cooldown_ms = cooldown_ms };
}

static uint64_t left_ms(const breaker *b, uint64_t now) {
    return b->until_ms > now ? b->until_ms - now : 0;
}

bool breaker_refuses(const breaker *b, uint64_t now, uint64_t *retry_after_ms) {
    if (b->state == BREAKER_OPEN && now < b->until_ms) {
        *retry_after_ms = left_ms(b, now);
        return true;
    }
    if (b->state != BREAKER_CLOSED && b->probe_in_flight) {
        *retry_after_ms = 0; /* as soon as the probe answers */
        return true;
    }
    return false;
}

enum breaker_verdict breaker_check(breaker *b, uint64_t now, uint64_t *retry_after_ms) {
    if (b->state == BREAKER_OPEN && now >= b->until_ms)
        b->state = BREAKER_HALF_OPEN;
    if (breaker_refuses(b, now, retry_after_ms))
        return BREAKER_REFUSE;
    if (b->state == BREAKER_HALF_OPEN) {
        b->probe_in_flight = true;
        return BREAKER_PROBE;
    }
    return BREAKER_PASS;
}

bool breaker_failure(breaker *b, uint64_t now, bool at_once) {
    bool was_open = b->state == BREAKER_OPEN;

    b->failures++;
    if (b->state == BREAKER_HALF_OPEN || at_once || b->failures >= b->threshold) {
        b->state = BREAKER_OPEN;
        b->until_ms = now + b->cooldown_ms;
        return !was_open;
    }
    return false;
}

bool breaker_success(breaker *b) {
    bool was = b->state != BREAKER_CLOSED;

    b->state = BREAKER_CLOSED;
    b->failures = 0;
    return was;
}

void breaker_probe_done(breaker *b) {
    b->probe_in_flight = false;
}

void breaker_reset(breaker *b) {
    breaker_init(b, b->threshold, b->cooldown_ms);
}

enum breaker_state breaker_state_at(const breaker *b, uint64_t now) {
    if (b->state == BREAKER_OPEN && now >= b->until_ms)
        return BREAKER_HALF_OPEN;
    return b->state;
}

uint64_t backoff_full_jitter(uint64_t base_ms, uint64_t max_ms, unsigned attempts, uint64_t random) {
    uint64_t cap = base_ms << (attempts < 20 ? attempts : 20);

    if (cap > max_ms || cap == 0)
        cap = max_ms;
    return random % (cap + 1);
}
