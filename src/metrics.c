/* The HTTP front's request counters (by route and status), and the
 * Prometheus text exposition (version 0.0.4) of those and of the counters
 * the cache, the upstream client, the revocations and fleet mode keep.
 * Responsible for the names, help texts and types, following Prometheus'
 * conventions (a tokend_ prefix, _total for counters, seconds as the base
 * unit). Not responsible for keeping the other modules' counters, nor for
 * the route table (the snapshot names the routes). */
#include "metrics.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include "breaker.h"

void metrics_snapshot(const struct http_counts *h, struct api_stats *ret) {
    ret->requests = ret->ok = ret->client_errors = ret->upstream_errors = 0;
    for (unsigned r = 0; r < API_ROUTES; r++)
        for (unsigned c = 0; c < API_CODES; c++) {
            unsigned long long n = __atomic_load_n(&h->n[r][c], __ATOMIC_RELAXED);
            unsigned status = API_STATUS_FIRST + c;
            ret->by_route[r][c] = n;
            ret->requests += n;
            if (status < 400)
                ret->ok += n;
            else if (status < 500)
                ret->client_errors += n;
            else
                ret->upstream_errors += n;
        }
}

static void header(FILE *f, const char *name, const char *type, const char *help) {
    fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void one(FILE *f, const char *name, const char *type, const char *help, unsigned long long v) {
    header(f, name, type, help);
    fprintf(f, "%s %llu\n", name, v);
}

/* A breaker's state as a gauge per state: 1 for the current one. */
static void state_gauge(FILE *f, const char *name, const char *help, int state) {
    header(f, name, "gauge", help);
    for (int i = 0; i < 3; i++)
        fprintf(f, "%s{state=\"%s\"} %d\n", name, breaker_state_names[i], state == i);
}

/* A histogram from per-bucket counts (not cumulative) and their bounds. */
static void histogram(FILE *f, const char *name, const char *help, const double *bounds, int n,
                      const unsigned long long *buckets, unsigned long long count, double sum) {
    unsigned long long cumulative = 0;

    header(f, name, "histogram", help);
    for (int i = 0; i < n; i++) {
        cumulative += buckets[i];
        fprintf(f, "%s_bucket{le=\"%g\"} %llu\n", name, bounds[i], cumulative);
    }
    fprintf(f, "%s_bucket{le=\"+Inf\"} %llu\n", name, count);
    fprintf(f, "%s_sum %.6f\n", name, sum);
    fprintf(f, "%s_count %llu\n", name, count);
}

/* Fleet mode's shared tier (shared.h). */
static void render_shared(FILE *f, const struct shared_stats *ss) {
    one(f, "tokend_shared_up", "gauge", "1 while tokens are shared through Redis; 0 while degraded.", ss->up);
    state_gauge(f, "tokend_shared_breaker_state", "The breaker toward Redis: 1 for the current state.",
                (int)ss->breaker);
    header(f, "tokend_shared_operations_total", "counter", "Commands sent to Redis, by operation and result.");
    for (int i = 0; i < SHARED_OP_COUNT; i++) {
        fprintf(f, "tokend_shared_operations_total{op=\"%s\",result=\"ok\"} %llu\n", shared_op_names[i], ss->ops[i][0]);
        fprintf(f, "tokend_shared_operations_total{op=\"%s\",result=\"error\"} %llu\n", shared_op_names[i], ss->ops[i][1]);
    }
    header(f, "tokend_shared_lookups_total", "counter",
           "Misses and refreshes looked up in Redis, by what they found: another host's token, a lease "
           "taken, a lease held by another host, or the fleet paused by a 429.");
    for (int i = 0; i < SHARED_LOOKUP_COUNT; i++)
        fprintf(f, "tokend_shared_lookups_total{result=\"%s\"} %llu\n", shared_lookup_names[i], ss->lookups[i]);
    histogram(f, "tokend_shared_lookup_duration_seconds", "Round trip of one lookup in Redis.",
              shared_latency_bounds, SHARED_LATENCY_BUCKETS, ss->latency_buckets, ss->latency_count,
              ss->latency_sum_s);
    header(f, "tokend_shared_mints_total", "counter",
           "Mints this host made in fleet mode, by why: holding the lease, after waiting out another "
           "host's lease, or without Redis (degraded).");
    for (int i = 0; i < SHARED_MINT_COUNT; i++)
        fprintf(f, "tokend_shared_mints_total{how=\"%s\"} %llu\n", shared_mint_names[i], ss->mints[i]);
    one(f, "tokend_shared_outage_tokens_pending", "gauge",
        "Tokens minted here without Redis not yet offered to the fleet (once Redis is back and this host "
        "has caught up on its events).",
        ss->outage_pending);
    header(f, "tokend_shared_outage_tokens_total", "counter",
           "Tokens minted here without Redis, once it was back: shared with the fleet, replaced by the one "
           "the fleet shares, or kept here only (something was dropped or flushed since).");
    for (int i = 0; i < SHARED_OUTAGE_COUNT; i++)
        fprintf(f, "tokend_shared_outage_tokens_total{outcome=\"%s\"} %llu\n", shared_outage_names[i],
                ss->outage_tokens[i]);
    one(f, "tokend_shared_lease_waits_total", "counter", "Misses that waited on another host's lease.",
        ss->lease_waits);
    one(f, "tokend_shared_lease_timeouts_total", "counter",
        "Waits on another host's lease that ran out, so this host minted.", ss->lease_timeouts);
    one(f, "tokend_shared_decrypt_failures_total", "counter",
        "Values in Redis that did not decrypt (tampered with, moved, or another key): never served.",
        ss->decrypt_failures);
    one(f, "tokend_shared_forged_flags_total", "counter",
        "Pause or credential flags in Redis that no host of the fleet made (or written back after their "
        "end): ignored.",
        ss->forged_flags);
    one(f, "tokend_shared_foreign_flushes_total", "counter",
        "Flush events no host of the fleet made (another fleet with another key in the same namespace, or a "
        "Redis writer): this host's tokens kept.",
        ss->foreign_flushes);
    one(f, "tokend_shared_stale_refused_total", "counter",
        "Values in Redis refused as revoked by the fleet or of a generation flushed since: never served.",
        ss->stale_refused);
    one(f, "tokend_shared_repairs_total", "counter",
        "Flushes this host sent because the generation in Redis went back or the events stream was poisoned.",
        ss->repairs);
    one(f, "tokend_shared_stream_resets_total", "counter",
        "Times the events stream could not be trusted to hold what this host missed (rewound, made anew, "
        "poisoned): its tokens were dropped.",
        ss->stream_resets);
    one(f, "tokend_shared_refusals_total", "counter",
        "Commands Redis refused (NOPERM, WRONGTYPE, a lost script): the log names the command and the fix.",
        ss->refusals);
    one(f, "tokend_shared_unreplicated_total", "counter",
        "Drops and flushes no replica took within the deadline (with Sentinel): sent again on a connection to "
        "the master the sentinels name.",
        ss->unreplicated);
    one(f, "tokend_shared_replayed_total", "counter",
        "Drops, revocations and flushes of the last 30 s sent again to a new master after a failover (the "
        "deposed one loses its last writes).",
        ss->replayed);
    one(f, "tokend_shared_events_up", "gauge",
        "1 while this host reads the fleet's drops and flushes (0: it cannot hear of them).", ss->events_ok);
    one(f, "tokend_shared_events_applied_total", "counter", "Drops and flushes from the fleet applied here.",
        ss->events_applied);
    one(f, "tokend_shared_local_flushes_total", "counter",
        "Times this host dropped its tokens because it could not catch up on the fleet's events.",
        ss->local_flushes);
    one(f, "tokend_shared_pending", "gauge",
        "Drops and flushes waiting for Redis to come back (sent first when it does).", ss->pending);
    one(f, "tokend_shared_fleet_credentials_rejected", "gauge",
        "1 while a host of the fleet sees Instacart reject the client credentials.",
        ss->fleet_credentials_rejected);
    one(f, "tokend_shared_fleet_paused", "gauge", "1 while the fleet waits out Instacart's Retry-After.",
        ss->fleet_paused);
}

int metrics_render(const struct api_stats *as, const struct cache_stats *cs,
                   const struct upstream_stats *us, const struct revoke_stats *rs,
                   const struct shared_stats *ss, int64_t start_unix, char **ret, size_t *ret_len) {
    char *buf = NULL;
    size_t len = 0;
    FILE *f;

    f = open_memstream(&buf, &len);
    if (!f)
        return -ENOMEM;

    header(f, "tokend_http_requests_total", "counter", "HTTP requests answered, by route and status.");
    for (unsigned r = 0; r < API_ROUTES; r++)
        for (int c = 0; c < API_CODES; c++) {
            if (!as->by_route[r][c])
                continue;
            fprintf(f, "tokend_http_requests_total{route=\"%s\",code=\"%u\"} %llu\n", as->route_names[r],
                    API_STATUS_FIRST + (unsigned)c, as->by_route[r][c]);
        }
    one(f, "tokend_http_requests_waiting", "gauge", "Requests suspended while they wait on the network: a mint, a revocation or a forwarded call.",
        as->waiting);

    one(f, "tokend_revocations_pending", "gauge",
        "Revocations Instacart has not taken yet: tried again with backoff until taken or expired.",
        rs->pending);
    one(f, "tokend_revocation_retries_total", "counter", "Revocations tried again after a failed try.",
        rs->retried);
    header(f, "tokend_revocations_given_up_total", "counter",
           "Revocations never taken by Instacart: the token expired first, or too many were pending.");
    fprintf(f, "tokend_revocations_given_up_total{why=\"expired\"} %llu\n", rs->expired);
    fprintf(f, "tokend_revocations_given_up_total{why=\"too_many\"} %llu\n", rs->refused);

    one(f, "tokend_cache_hits_total", "counter", "Token requests answered from the cache.", cs->hits);
    one(f, "tokend_cache_misses_total", "counter", "Token requests that started a mint.", cs->misses);
    one(f, "tokend_cache_coalesced_total", "counter",
        "Token requests that waited on a mint another request started.", cs->coalesced);
    one(f, "tokend_cache_refreshes_total", "counter", "Background refreshes started ahead of expiry.",
        cs->refreshes);
    one(f, "tokend_cache_evictions_total", "counter", "Tokens evicted to stay within max_entries.",
        cs->evictions);
    one(f, "tokend_cache_expirations_total", "counter", "Tokens dropped because they expired.",
        cs->expirations);
    one(f, "tokend_cache_entries", "gauge", "Entries in the cache.", cs->entries);

    header(f, "tokend_mints_total", "counter", "Mints finished, by outcome.");
    fprintf(f, "tokend_mints_total{outcome=\"ok\"} %llu\n", us->mints_ok);
    fprintf(f, "tokend_mints_total{outcome=\"rejected\"} %llu\n", us->mints_rejected);
    fprintf(f, "tokend_mints_total{outcome=\"failed\"} %llu\n", us->mints_failed);
    fprintf(f, "tokend_mints_total{outcome=\"timed_out\"} %llu\n", us->mints_timeout);
    one(f, "tokend_mints_in_flight", "gauge", "Mints and revocations queued or in flight.", us->in_flight);
    one(f, "tokend_mints_queued", "gauge",
        "Mints and revocations handed to the upstream client and not yet taken up by its worker.", us->queued);
    header(f, "tokend_revocations_total", "counter", "Revocations at Instacart, by outcome.");
    fprintf(f, "tokend_revocations_total{outcome=\"ok\"} %llu\n", us->revocations_ok);
    fprintf(f, "tokend_revocations_total{outcome=\"failed\"} %llu\n", us->revocations_failed);
    one(f, "tokend_upstream_requests_total", "counter", "HTTP requests sent to Instacart, retries included.",
        us->requests);
    one(f, "tokend_upstream_retries_total", "counter", "Requests to Instacart that were retries.", us->retries);
    one(f, "tokend_upstream_connections_total", "counter",
        "Connections opened to Instacart (each a TCP and TLS handshake); reused otherwise.", us->connections);

    histogram(f, "tokend_upstream_request_duration_seconds", "Time Instacart took to answer one HTTP request.",
              upstream_latency_bounds, UPSTREAM_LATENCY_BUCKETS, us->latency_buckets, us->latency_count,
              us->latency_sum_s);

    state_gauge(f, "tokend_upstream_circuit_state", "The circuit breaker toward Instacart: 1 for the current state.",
                (int)us->circuit);
    one(f, "tokend_upstream_credentials_rejected", "gauge",
        "1 while Instacart refuses the client credentials (a configuration fault).",
        us->credentials_rejected);
    one(f, "tokend_upstream_rate_limited", "gauge", "1 while minting is paused by Instacart's 429.",
        us->rate_limited);

    if (ss)
        render_shared(f, ss);

    header(f, "process_start_time_seconds", "gauge", "Start time of the process since the Unix epoch.");
    fprintf(f, "process_start_time_seconds %lld\n", (long long)start_unix);

    if (fclose(f) != 0) {
        free(buf);
        return -ENOMEM;
    }
    *ret = buf;
    *ret_len = len;
    return 0;
}
