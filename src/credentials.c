/* The secrets a configuration names, read once the file is checked: the
 * client secret, the proxy's credentials, and fleet mode's shared keys and
 * Redis password, each from its file or from the systemd credential of the
 * same purpose ($CREDENTIALS_DIRECTORY). A secret that is missing or
 * malformed is refused with the file (and the line that named it) and what
 * to put there. Not responsible for how a private file is opened and
 * checked (secret.c), nor for wiping the secrets (config_free, config.c). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config-internal.h"
#include "config.h"
#include "seal.h"
#include "secret.h"
#include "util.h"

int credentials_load_upstream(config *c, const char *credentials_dir, char err[CONFIG_ERR_MAX]) {
    char secret_path[4096];
    const char *from;
    int r;

    if (credentials_dir && *credentials_dir) {
        snprintf(secret_path, sizeof(secret_path), "%s/client_secret", credentials_dir);
        from = secret_path;
    } else if (c->client_secret_file) {
        from = c->client_secret_file;
    } else {
        snprintf(err, CONFIG_ERR_MAX,
                 "%s: [upstream] client_secret_file is missing, and no systemd credential "
                 "'client_secret' was passed; set client_secret_file to a file only this user can read",
                 c->path);
        return -EINVAL;
    }
    r = (from == secret_path ? secret_load_credential : secret_load)(from, &c->client_secret,
                                                                     &c->client_secret_len, err,
                                                                     CONFIG_ERR_MAX);
    c->client_secret_from_credential = from == secret_path;
    if (r < 0 || !c->proxy_credentials_file)
        return r;
    r = secret_load_named(c->proxy_credentials_file, "the proxy's credentials", &c->proxy_credentials,
                          &c->proxy_credentials_len, err, CONFIG_ERR_MAX);
    if (r == 0 && !memchr(c->proxy_credentials, ':', c->proxy_credentials_len)) {
        snprintf(err, CONFIG_ERR_MAX, "%s: the proxy's credentials must be USER:PASSWORD on one line",
                 c->proxy_credentials_file);
        return -EINVAL;
    }
    return r;
}

/* A systemd credential of fleet mode's: in credentials_dir, or on a reload
 * (which passes the runtime directory holding only a rotated client secret)
 * in systemd's own. Writes its path to ret and returns true if it is there. */
static bool find_credential(const char *credentials_dir, const char *name, char ret[4096]) {
    for (int i = 0; i < 2; i++) {
        const char *dir = i == 0 ? credentials_dir : getenv("CREDENTIALS_DIRECTORY");
        if (dir && *dir && snprintf(ret, 4096, "%s/%s", dir, name) < 4096 && access(ret, F_OK) == 0)
            return true;
    }
    return false;
}

/* One shared key: 64 hex digits in a private file, or in the systemd
 * credential `credential` when there is one. */
static int shared_key_read(const config *c, const char *file, int line, const char *what,
                           const char *credentials_dir, const char *credential, unsigned char out[32],
                           char err[CONFIG_ERR_MAX]) {
    char cred_path[4096];
    const char *from = credential && find_credential(credentials_dir, credential, cred_path) ? cred_path : file;
    char *text = NULL;
    size_t len = 0;
    int r;

    if (!from) {
        snprintf(err, CONFIG_ERR_MAX,
                 "%s: [shared] key_file is missing, and no systemd credential '%s' was passed; "
                 "fleet mode needs the fleet's key: 64 hex digits (openssl rand -hex 32) in a file "
                 "only this user can read, the same on every host", c->path, credential);
        return -EINVAL;
    }
    r = from == cred_path ? secret_load_credential(from, &text, &len, err, CONFIG_ERR_MAX)
                          : secret_load_named(from, what, &text, &len, err, CONFIG_ERR_MAX);
    if (r < 0)
        return r;
    r = seal_key_parse(text, len, out);
    wipe_free(text, len);
    if (r < 0) {
        if (from == cred_path)
            snprintf(err, CONFIG_ERR_MAX, "%.300s: %s must be exactly 64 hex digits (openssl rand -hex 32)",
                     from, what);
        else
            snprintf(err, CONFIG_ERR_MAX,
                     "%s:%d: [shared] %s = '%.200s': %s must be exactly 64 hex digits "
                     "(openssl rand -hex 32), the same on every host",
                     c->path, line, file == c->shared_key_file ? "key_file" : "previous_key_file", from, what);
        return -EINVAL;
    }
    return 0;
}

int credentials_load_shared(config *c, const char *credentials_dir, char err[CONFIG_ERR_MAX]) {
    char cred_path[4096];
    int r;

    r = shared_key_read(c, c->shared_key_file, c->shared_key_file_line, "the fleet's shared key",
                        credentials_dir, "shared_key", c->shared_key, err);
    if (r < 0)
        return r;
    if (c->shared_previous_key_file) {
        r = shared_key_read(c, c->shared_previous_key_file, c->shared_previous_key_file_line,
                            "the fleet's previous shared key", NULL, NULL, c->shared_previous_key, err);
        if (r < 0)
            return r;
        c->has_shared_previous_key = true;
    }
    if (find_credential(credentials_dir, "redis_password", cred_path))
        return secret_load_credential(cred_path, &c->shared_password, &c->shared_password_len, err,
                                      CONFIG_ERR_MAX);
    if (c->shared_password_file)
        return secret_load_named(c->shared_password_file, "the Redis password", &c->shared_password,
                                 &c->shared_password_len, err, CONFIG_ERR_MAX);
    if (c->shared_username) {
        snprintf(err, CONFIG_ERR_MAX,
                 "%s: [shared] username is set but there is no password: set password_file, or pass "
                 "the systemd credential redis_password", c->path);
        return -EINVAL;
    }
    return 0;
}
