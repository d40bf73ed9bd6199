/* The Prometheus text exposition (version 0.0.4) of the counters that the
 * HTTP front, the cache and the upstream client keep. Responsible for the
 * names, help texts and types, following Prometheus' conventions (a
 * tokend_ prefix, _total for counters, seconds as the base unit). Not
 * responsible for keeping the counters. */
#include "metrics.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

static void header(FILE *f, const char *name, const char *type, const char *help) {
    fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void one(FILE *f, const char *name, const char *type, const char *help, unsigned long long v) {
    header(f, name, type, help);
    fprintf(f, "%s %llu\n", name, v);
}

int metrics_render(const struct api_stats *as, const struct cache_stats *cs,
                   const struct upstream_stats *us, int64_t start_unix, char **ret, size_t *ret_len) {
    static const char *const circuit_names[] = { "closed", "open", "half_open" };
    unsigned long long cumulative = 0;
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
            fprintf(f, "tokend_http_requests_total{route=\"%s\",code=\"%u\"} %llu\n", api_route_name(r),
                    API_STATUS_FIRST + (unsigned)c, as->by_route[r][c]);
        }
    one(f, "tokend_http_requests_waiting", "gauge", "Requests suspended while their token is minted.",
        as->waiting);

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
    header(f, "tokend_revocations_total", "counter", "Revocations at Instacart, by outcome.");
    fprintf(f, "tokend_revocations_total{outcome=\"ok\"} %llu\n", us->revocations_ok);
    fprintf(f, "tokend_revocations_total{outcome=\"failed\"} %llu\n", us->revocations_failed);
    one(f, "tokend_upstream_requests_total", "counter", "HTTP requests sent to Instacart, retries included.",
        us->requests);
    one(f, "tokend_upstream_retries_total", "counter", "Requests to Instacart that were retries.", us->retries);
    one(f, "tokend_upstream_connections_total", "counter",
        "Connections opened to Instacart (each a TCP and TLS handshake); reused otherwise.", us->connections);

    header(f, "tokend_upstream_request_duration_seconds", "histogram",
           "Time Instacart took to answer one HTTP request.");
    for (int i = 0; i < UPSTREAM_LATENCY_BUCKETS; i++) {
        cumulative += us->latency_buckets[i];
        fprintf(f, "tokend_upstream_request_duration_seconds_bucket{le=\"%g\"} %llu\n",
                upstream_latency_bounds[i], cumulative);
    }
    fprintf(f, "tokend_upstream_request_duration_seconds_bucket{le=\"+Inf\"} %llu\n", us->latency_count);
    fprintf(f, "tokend_upstream_request_duration_seconds_sum %.6f\n", us->latency_sum_s);
    fprintf(f, "tokend_upstream_request_duration_seconds_count %llu\n", us->latency_count);

    header(f, "tokend_upstream_circuit_state", "gauge",
           "The circuit breaker toward Instacart: 1 for the current state.");
    for (int i = 0; i < 3; i++)
        fprintf(f, "tokend_upstream_circuit_state{state=\"%s\"} %d\n", circuit_names[i], (int)us->circuit == i);
    one(f, "tokend_upstream_credentials_rejected", "gauge",
        "1 while Instacart refuses the client credentials (a configuration fault).",
        us->credentials_rejected);
    one(f, "tokend_upstream_rate_limited", "gauge", "1 while minting is paused by Instacart's 429.",
        us->rate_limited);

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
