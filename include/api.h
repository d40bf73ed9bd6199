/* The local HTTP front: routes, validation of callers, answers. */
#pragma once

#include "cache.h"

typedef struct api api;
struct config;

struct api_stats {
    unsigned long long requests, ok, client_errors, upstream_errors;
    unsigned waiting; /* requests suspended on a mint */
};

/* listen_fd: a socket passed by systemd, or -1 to bind cfg->listen. */
int api_new(const struct config *cfg, cache *c, int listen_fd, api **ret);
/* The address actually bound, e.g. "127.0.0.1:8787". */
const char *api_address(api *a);
/* Stops accepting new connections; those open are still served. */
void api_quiesce(api *a);
/* Requests waiting on a mint right now. */
unsigned api_waiting(api *a);
void api_get_stats(api *a, struct api_stats *ret);
api *api_free(api *a);
