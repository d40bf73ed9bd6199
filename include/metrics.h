/* The Prometheus text exposition of tokend's counters. */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "api.h"
#include "cache.h"
#include "revoke.h"
#include "shared.h"
#include "upstream.h"

/* Renders every metric (ss: fleet mode's, or NULL); *ret is malloc()ed text. */
int metrics_render(const struct api_stats *as, const struct cache_stats *cs,
                   const struct upstream_stats *us, const struct revoke_stats *rs,
                   const struct shared_stats *ss, int64_t start_unix, char **ret, size_t *ret_len);
