/* Files that hold or guard a secret: the client secret, the API keys file,
 * a proxy's credentials. Opened without blocking and refused unless they are
 * what the README's security section says they must be. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#define SECRET_MAX 4096

enum secret_file_kind {
    /* holds a secret: a regular file owned by root or by tokend's user,
     * with no access at all for group or others (0600 or 0400) */
    SECRET_FILE_PRIVATE,
    /* guards access (hashes of API keys): readable by anyone is fine,
     * writable by group or others is not; owned by root or tokend's user */
    SECRET_FILE_GUARD,
    /* the configuration: only a regular file */
    SECRET_FILE_PLAIN,
    /* a secret in a directory systemd hands over (the service's
     * credentials, or its runtime directory): like PRIVATE, but readable
     * by the service's own group too, as systemd 257 (Debian 13) makes
     * credentials 0440; 252 made them 0400 */
    SECRET_FILE_CREDENTIAL,
};

/* Opens path read-only without blocking on it (a FIFO or a device at the
 * path must not hang a start or a reload), without following a symbolic
 * link for a PRIVATE file, and checks it against kind. `what` names
 * the file in messages ("the client secret"). Returns an fd (blocking
 * reads, close-on-exec), or -errno with a message in err. */
int secret_file_open(const char *path, const char *what, enum secret_file_kind kind, char *err,
                     size_t err_size);

/* Reads a secret file (SECRET_FILE_PRIVATE): non-empty after trailing
 * whitespace is stripped, at most SECRET_MAX bytes, no control characters.
 * Returns 0, or -errno with a message in err. */
int secret_load(const char *path, char **ret, size_t *ret_len, char *err, size_t err_size);
/* The same, naming the file `what` in messages. */
int secret_load_named(const char *path, const char *what, char **ret, size_t *ret_len, char *err,
                      size_t err_size);
/* The client secret from a directory systemd hands over
 * (SECRET_FILE_CREDENTIAL). */
int secret_load_credential(const char *path, char **ret, size_t *ret_len, char *err, size_t err_size);
