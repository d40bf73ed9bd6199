/* The Prometheus text exposition of tokend's counters. */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "api.h"
#include "cache.h"
#include "upstream.h"

/* Renders every metric; *ret is malloc()ed text. */
int metrics_render(const struct api_stats *as, const struct cache_stats *cs,
                   const struct upstream_stats *us, int64_t start_unix, char **ret, size_t *ret_len);
