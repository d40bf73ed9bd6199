/* The client of Instacart's token endpoint: mints run on a libcurl multi
 * handle in one worker thread, so no caller ever blocks on the network. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "oauth.h"
#include "token.h"

typedef struct upstream upstream;
struct config;

/* Called exactly once per accepted mint, from the worker thread (or, for a
 * mint refused at once, from the caller's thread before upstream_mint
 * returns). t is a new reference the callee owns, NULL unless o->kind is
 * MINT_OK. */
typedef void (*upstream_done_fn)(void *userdata, const mint_outcome *o, token *t);

/* Upper bounds, in seconds, of the request latency histogram's buckets. */
#define UPSTREAM_LATENCY_BUCKETS 11
extern const double upstream_latency_bounds[UPSTREAM_LATENCY_BUCKETS];

enum upstream_circuit { CIRCUIT_CLOSED, CIRCUIT_OPEN, CIRCUIT_HALF_OPEN };

struct upstream_stats {
    unsigned long long requests;   /* HTTP requests sent, retries included */
    unsigned long long mints_ok;
    unsigned long long mints_rejected;
    unsigned long long mints_failed;
    unsigned long long mints_timeout;
    unsigned long long revocations_ok;
    unsigned long long revocations_failed;
    unsigned long long retries;
    unsigned long long connections; /* new connections opened: reuse keeps this low */
    unsigned long long latency_buckets[UPSTREAM_LATENCY_BUCKETS]; /* not cumulative */
    unsigned long long latency_count;
    double latency_sum_s;
    unsigned in_flight;
    unsigned queued;
    enum upstream_circuit circuit;
    bool credentials_rejected;     /* Instacart refused the client credentials */
    bool rate_limited;             /* paused by a 429 right now */
};

int upstream_new(const struct config *cfg, upstream **ret);
/* What fleet mode tells the other hosts: called from the worker thread,
 * with no lock held, when a 429 pauses minting for ms, and when Instacart
 * rejects the client credentials. They must not block. */
struct upstream_events {
    void (*paused)(void *userdata, uint64_t ms);
    void (*credentials_rejected)(void *userdata);
    void *userdata;
};
/* Before upstream_start(). */
void upstream_set_events(upstream *u, const struct upstream_events *ev);
/* Starts the worker thread. */
int upstream_start(upstream *u);
/* Queues a mint; done is always called, with a failure when the queue is full
 * or the worker is stopping. user_id is ignored for client_credentials. */
void upstream_mint(upstream *u, enum oauth_grant grant, const char *user_id, const char *scope,
                   upstream_done_fn done, void *userdata);
/* Revokes a token at Instacart (POST /v2/oauth/token/revoke); done gets
 * MINT_OK and no token on success. Same queue, retries and breaker as mints.
 * generation: upstream_generation() when the token was had (0: now). A
 * token of a server or client id a reload moved away from is never sent
 * to the new one: it fails at once with "server_changed". */
void upstream_revoke(upstream *u, uint64_t generation, const char *token_value, upstream_done_fn done,
                     void *userdata);
/* Bumped by a reload that changes the server or the client id. */
uint64_t upstream_generation(upstream *u);
/* A Recommendations call forwarded for a caller: status is Instacart's
 * HTTP status, or 0 when there was no answer (body NULL then). Called
 * exactly once, from the worker thread or before upstream_forward returns. */
typedef void (*upstream_forward_fn)(void *userdata, int status, const char *content_type,
                                    const char *body, size_t len);
#define UPSTREAM_FORWARD_ANSWER_MAX (1024 * 1024)

/* POSTs body to {base_url}{path} with the bearer token; not retried (the
 * caller decides), and not counted against the breaker. */
void upstream_forward(upstream *u, const char *path, const char *bearer, const char *body, size_t len,
                      upstream_forward_fn done, void *userdata);
/* Ends the worker: mints still queued or in flight complete with
 * MINT_UNAVAILABLE. Idempotent. */
void upstream_stop(upstream *u);
upstream *upstream_free(upstream *u);
void upstream_get_stats(upstream *u, struct upstream_stats *ret);
/* Microseconds since the worker last went round its loop: a wedged worker
 * shows here (the watchdog reads it). */
uint64_t upstream_idle_ms(upstream *u);
/* Reload: swaps client id, secret and base URL for mints submitted from now
 * on (jobs already queued keep their bodies). Returns 0 or -ENOMEM. */
int upstream_set_credentials(upstream *u, const struct config *cfg);
