/* The local HTTP front: routes, validation of callers, answers. */
#pragma once

#include "cache.h"
#include "revoke.h"
#include "upstream.h"

typedef struct api api;
struct auth;
struct config;

/* Requests are counted by route: the rows of the route table, in order. */
#define API_ROUTES 11

/* Requests are counted by route and exact status, 100 to 599: slot
 * status - API_STATUS_FIRST. Nothing else is ever answered. */
#define API_STATUS_FIRST 100
#define API_CODES 500

struct api_stats {
    const char *route_names[API_ROUTES]; /* each route's name in /metrics ("/v1/token", ...) */
    unsigned long long requests, ok, client_errors, upstream_errors;
    unsigned long long by_route[API_ROUTES][API_CODES];
    unsigned waiting; /* requests suspended on the network: a mint, a revocation, a forwarded call */
};

struct shared;
/* listen_fd: a socket passed by systemd, or -1 to bind every address of
 * cfg->listen. keys: the API keys (NULL: none), owned by the api from
 * here, even on failure. up is used for forwarding and readiness, rv for
 * revocations; sh (fleet mode, or NULL) for drops, flushes and the fleet's
 * state. Everything is wired before the first request can arrive. */
int api_new(const struct config *cfg, struct auth *keys, cache *c, upstream *up, struct shared *sh,
            revocations *rv, int listen_fd, api **ret);
/* Reload: the new API keys (NULL: none) from the next request on; takes
 * ownership, frees the old ones. */
void api_set_keys(api *a, struct auth *keys);
/* The first TCP address bound, e.g. "127.0.0.1:8787" ("" if none). */
const char *api_address(api *a);
/* Every address served, for the log: "http://127.0.0.1:8787 unix:/run/x.sock". */
const char *api_listening(api *a);
/* After a reload: what /v1/status shows as the effective configuration,
 * each key from now if a reload applies it, else from boot. */
void api_set_config(api *a, const struct config *boot, const struct config *now);
/* Stops accepting new connections; those open are still served. */
void api_quiesce(api *a);
/* Requests suspended on the network right now (a mint, a revocation, a
 * forwarded call). */
unsigned api_waiting(api *a);
/* Requests that waited (or are waiting) and are not yet answered and done:
 * at shutdown, those whose answers are still being written. */
unsigned api_active(api *a);
void api_get_stats(api *a, struct api_stats *ret);
api *api_free(api *a);
