/* The client of Instacart's token endpoint: mints run on a libcurl multi
 * handle in one worker thread, so no caller ever blocks on the network. */
#pragma once

#include "oauth.h"
#include "token.h"

typedef struct upstream upstream;
struct config;

/* Called exactly once per accepted mint, from the worker thread (or, for a
 * mint refused at once, from the caller's thread before upstream_mint
 * returns). t is a new reference the callee owns, NULL unless o->kind is
 * MINT_OK. */
typedef void (*upstream_done_fn)(void *userdata, const mint_outcome *o, token *t);

struct upstream_stats {
    unsigned long long requests;   /* HTTP requests sent, retries included */
    unsigned long long mints_ok;
    unsigned long long mints_rejected;
    unsigned long long mints_failed;
    unsigned long long mints_timeout;
    unsigned long long retries;
    unsigned in_flight;
    unsigned queued;
};

int upstream_new(const struct config *cfg, upstream **ret);
/* Starts the worker thread. */
int upstream_start(upstream *u);
/* Queues a mint; done is always called, with a failure when the queue is full
 * or the worker is stopping. user_id is ignored for client_credentials. */
void upstream_mint(upstream *u, enum oauth_grant grant, const char *user_id, const char *scope,
                   upstream_done_fn done, void *userdata);
/* Ends the worker: mints still queued or in flight complete with
 * MINT_UNAVAILABLE. Idempotent. */
void upstream_stop(upstream *u);
upstream *upstream_free(upstream *u);
void upstream_get_stats(upstream *u, struct upstream_stats *ret);
/* Microseconds since the worker last went round its loop: a wedged worker
 * shows here (the watchdog reads it). */
uint64_t upstream_idle_ms(upstream *u);
