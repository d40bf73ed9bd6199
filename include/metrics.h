/* The HTTP front's request counters, and the Prometheus text exposition
 * of tokend's counters. */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "api.h"
#include "cache.h"
#include "revoke.h"
#include "shared.h"
#include "upstream.h"

/* The HTTP front's requests, by route and exact status: counted with
 * atomics, so the hit path takes no lock and makes no call for them. */
struct http_counts {
    unsigned long long n[API_ROUTES][API_CODES];
};

static inline void metrics_count(struct http_counts *h, unsigned route, unsigned status) {
    /* every status answered is in range (the proxy clamps Instacart's); 500 otherwise */
    unsigned code = status >= API_STATUS_FIRST && status < API_STATUS_FIRST + API_CODES ? status : 500;

    __atomic_add_fetch(&h->n[route][code - API_STATUS_FIRST], 1, __ATOMIC_RELAXED);
}

/* The counts, and their totals by class, into ret (whose route names and
 * waiting count are the caller's to fill). */
void metrics_snapshot(const struct http_counts *h, struct api_stats *ret);

/* Renders every metric (ss: fleet mode's, or NULL); *ret is malloc()ed text. */
int metrics_render(const struct api_stats *as, const struct cache_stats *cs,
                   const struct upstream_stats *us, const struct revoke_stats *rs,
                   const struct shared_stats *ss, int64_t start_unix, char **ret, size_t *ret_len);
