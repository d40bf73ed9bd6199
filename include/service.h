/* The running daemon, from start to a clean stop. */
#pragma once

#include "config.h"

/* Starts every module with cfg (whose secret it takes over and wipes),
 * serves until SIGTERM or SIGINT, reloads path on SIGHUP, then stops.
 * Returns 0 on a clean stop, or -errno when a module could not start. */
int service_run(const char *path, config *cfg);
