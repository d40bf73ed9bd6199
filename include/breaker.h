/* The circuit breaker in front of Instacart's token endpoint, and the
 * retry backoff: pure state machines over a clock the caller passes in, so
 * they can be tested without waiting. Not thread-safe: the caller holds its
 * own lock. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

enum breaker_state { BREAKER_CLOSED, BREAKER_OPEN, BREAKER_HALF_OPEN };
/* Each state's name in /metrics and /v1/status: "closed", "open", "half_open"
 * (upstream.h's enum upstream_circuit is in the same order). */
extern const char *const breaker_state_names[3];

typedef struct breaker {
    enum breaker_state state;
    unsigned failures;     /* in a row */
    unsigned threshold;    /* failures in a row that open it */
    uint64_t cooldown_ms;  /* open this long, then one probe */
    uint64_t until_ms;     /* while open */
    bool probe_in_flight;
} breaker;

enum breaker_verdict {
    BREAKER_PASS,   /* send it */
    BREAKER_PROBE,  /* send it: the one request that tests a half-open circuit */
    BREAKER_REFUSE, /* don't: *retry_after_ms says when to ask again */
};

void breaker_init(breaker *b, unsigned threshold, uint64_t cooldown_ms);
/* Whether a request may be sent at now. An open circuit whose cooldown is
 * over becomes half open and lets exactly one probe through. */
enum breaker_verdict breaker_check(breaker *b, uint64_t now, uint64_t *retry_after_ms);
/* Whether a request could be sent without taking the probe: for refusing
 * at once at submission, without changing any state. */
bool breaker_refuses(const breaker *b, uint64_t now, uint64_t *retry_after_ms);
/* A failure of a sent request (at_once: one that cannot heal, such as
 * rejected credentials). Returns true when this opened the circuit. */
bool breaker_failure(breaker *b, uint64_t now, bool at_once);
/* A success closes it. Returns true when it was not closed. */
bool breaker_success(breaker *b);
/* The probe's answer came (success or failure are reported as well). */
void breaker_probe_done(breaker *b);
/* Closed again with no history (new credentials or a new server). */
void breaker_reset(breaker *b);
/* What the metrics show: open until the cooldown ends, half open after. */
enum breaker_state breaker_state_at(const breaker *b, uint64_t now);

/* Full-jitter exponential backoff: a uniform delay in [0, min(max, base *
 * 2^attempts)], drawn from random. */
uint64_t backoff_full_jitter(uint64_t base_ms, uint64_t max_ms, unsigned attempts, uint64_t random);
