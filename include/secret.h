/* Loading the client secret from a file only its owner can read. */
#pragma once

#include <stddef.h>

#define SECRET_MAX 4096

/* Reads a secret file: must be a regular file, not readable by group or
 * others, non-empty after trailing whitespace is stripped, at most SECRET_MAX
 * bytes. Returns 0, or -errno with a message in err. */
int secret_load(const char *path, char **ret, size_t *ret_len, char *err, size_t err_size);

/* The same for a file in a directory systemd hands over (the service's
 * credentials, or its runtime directory), where it may also be readable by
 * the service's own group. */
int secret_load_credential(const char *path, char **ret, size_t *ret_len, char *err, size_t err_size);
