/* systemd glue: readiness and status notifications, the watchdog, sockets
 * and the file descriptor store. Every call is harmless without systemd
 * (no NOTIFY_SOCKET, no LISTEN_FDS): the daemon runs the same by hand. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

/* The name under which the cache image is kept in the fd store. */
#define SYSTEMD_FDNAME_CACHE "cache"

/* Takes the descriptors systemd passed (LISTEN_FDS), and unsets the
 * variables: the first listening stream socket (TCP or AF_UNIX) and the last descriptor
 * named "cache"; anything else is closed with a warning. Each is -1 when
 * absent. Returns how many were passed, or -errno. */
int systemd_take_fds(int *ret_listen_fd, int *ret_cache_fd);

/* Whether a service manager listens to notifications. */
bool systemd_notifying(void);

/* Each returns > 0 when sent, 0 without a service manager, -errno on error. */
int systemd_ready(const char *status);
int systemd_reloading(void);
int systemd_status(const char *status);
int systemd_stopping(const char *status);
int systemd_watchdog_ping(void);

/* The watchdog interval systemd asked for in µs, 0 when none. */
uint64_t systemd_watchdog_usec(void);

/* Hands fd to the store under name (systemd keeps its own copy; the caller
 * still closes fd), then waits up to timeout_ms until systemd has read the
 * message, so an exit right after cannot lose it. */
int systemd_store_fd(int fd, const char *name, uint64_t timeout_ms);
/* Drops every descriptor stored under name. */
int systemd_store_remove(const char *name);

/* The watchdog's check that the HTTP server answers: GET /healthz on
 * address ("127.0.0.1:8787", "[::1]:8787"; a wildcard address is probed on
 * loopback) within timeout_ms. Returns 0 on a 200, -errno otherwise. */
int systemd_probe_http(const char *address, uint64_t timeout_ms);

/* ---- reload under systemd: see sd.c ---- */
#include <sys/types.h>
struct config;
/* Where a reload finds the credentials: the copies ExecReload=+ staged in
 * $RUNTIME_DIRECTORY when the client secret's is there, else systemd's
 * $CREDENTIALS_DIRECTORY (may be NULL). */
const char *systemd_reload_credentials_dir(void);
/* Whether a reload reads staged copies. */
bool systemd_reload_staged(void);
/* config_load() as a reload does it; a message about a staged copy names
 * the operator's file it came from. */
int systemd_reload_config_load(const char *path, struct config **ret, char *err);
/* Deletes the staged copies (read or refused, a copy of a secret goes). */
void systemd_reload_discard(void);
/* As root (ExecReload=+): copies each credential the unit's LoadCredential=
 * names from its source file into $RUNTIME_DIRECTORY, owned by that
 * directory's owner, readable by it only. Returns how many, or -errno
 * (logged, naming the file). */
int systemd_stage_credentials(const char *unit);
/* As root: the same copies into a new private directory under /run, named
 * in ret_dir, for --check-config --unit: the configuration checked with
 * exactly the credentials the unit will be given. Remove it with
 * systemd_unit_credentials_done(). */
int systemd_unit_credentials(const char *unit, char *ret_dir, size_t size);
void systemd_unit_credentials_done(const char *dir);
/* Rewrites a message about a copy in dir to name the unit's file. */
void systemd_unit_credentials_explain(const char *dir, char *msg, size_t size);
/* The daemon's verdict on the reload asked for with tag: refused is the
 * reason, or NULL when applied. Written into $RUNTIME_DIRECTORY. */
void systemd_reload_confirm(int tag, const char *refused);
/* Signals pid (SIGHUP, tagged) and waits up to timeout_ms for its verdict.
 * Returns 0 when applied; -EINVAL with the reason in err when refused;
 * -ETIMEDOUT or another -errno with a message in err. */
int systemd_reload_request(pid_t pid, uint64_t timeout_ms, char *err, size_t size);
/* Under socket activation: warns when the socket systemd passed is not
 * what [server] listen says (listening: the addresses served, as
 * api_listening() gives them), naming both and how to change the port. */
void systemd_check_listen(const struct config *cfg, const char *listening);
