/* Shared by the configuration's files: config.c (reading a file and
 * checking it as a whole), settings.c (the table of settings and their
 * typed values) and credentials.c (the secrets a configuration names).
 * Private to them: the rest of tokend sees only config.h. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "config.h"

/* ---- settings.c: the table, for the reader in config.c ---- */

/* The index of [section] name in the table (0 <= i < config_key_count()),
 * or -1 when there is no such key. Names compare exactly. */
long settings_find(const char *section, const char *name);
/* Whether any key of the table is in [section]. */
bool settings_section_known(const char *section);
/* Stores value, as the file writes it, as the i-th key's value in c,
 * replacing what was there (the default). Returns NULL, or why the value
 * was refused ("must be yes or no"), for the reader to put in its message. */
const char *settings_store(config *c, size_t i, const char *value);
/* The i-th key's bounds as " (100ms to 1m)", or "" when it has none. */
void settings_range_text(size_t i, char *buf, size_t size);
/* Sets every key's default in c, through the same code as the file's
 * values. Returns 0, or a negative errno with a message in err. */
int settings_set_defaults(config *c, char err[CONFIG_ERR_MAX]);

/* ---- credentials.c: the secrets, read after the file is checked ---- */

/* The client secret ($CREDENTIALS_DIRECTORY/client_secret when
 * credentials_dir is neither NULL nor empty, else client_secret_file) and
 * the proxy's credentials when proxy_credentials_file is set. Returns 0,
 * or a negative errno with a message in err. */
int credentials_load_upstream(config *c, const char *credentials_dir, char err[CONFIG_ERR_MAX]);
/* Fleet mode's: the shared key (or the credential shared_key), the previous
 * key and the Redis password (or the credential redis_password). Call only
 * when config_shared(c). Returns 0, or a negative errno with a message in err. */
int credentials_load_shared(config *c, const char *credentials_dir, char err[CONFIG_ERR_MAX]);
