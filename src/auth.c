/* API keys. Responsible for reading the keys file, keeping the keys in
 * force across reloads (the store: swapped under a rwlock while requests
 * look keys up), and telling which rights and scopes a presented key
 * carries. Keys are stored as SHA-256 hashes, so the file
 * holds nothing a thief could present; a presented key is hashed and
 * compared with every entry in constant time. SHA-256 comes from libcrypto:
 * already in the process through libcurl, and well kept. Not responsible
 * for deciding which route needs which right (the route table in routes.c
 * says, the guard in guard.c decides) nor for reading the key off a
 * request (the HTTP front). */
#include "auth.h"

#include <errno.h>
#include <pthread.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "oauth.h"
#include "secret.h"
#include "util.h"

#define KEY_NAME_MAX 64
#define KEYS_MAX 1024

struct auth_key {
    char name[KEY_NAME_MAX];
    unsigned char hash[32];
    int rights;
    char *scopes; /* NULL: the default rule; else ",S1,S2," or "*" */
};

struct auth {
    struct auth_key *keys;
    size_t n;
};

static const struct {
    const char *name;
    int right;
} right_names[] = {
    { "token", RIGHT_TOKEN },       { "client-token", RIGHT_CLIENT_TOKEN }, { "frontend", RIGHT_FRONTEND },
    { "proxy", RIGHT_PROXY },       { "admin", RIGHT_ADMIN },
};

/* "scopes=A,B" into ",A,B," (so a lookup is one strstr of ",S,"), or "*". */
static const char *parse_scopes(const char *text, char **ret) {
    size_t n = strlen(text), o = 0;
    bool any = false, some = false;
    char *out;

    if (strncmp(text, "scopes=", 7) != 0)
        return "the fourth field, if any, must be scopes=SCOPE[,SCOPE...] (or scopes=*)";
    text += 7;
    out = malloc(n + 2);
    if (!out)
        return "out of memory";
    out[o++] = ',';
    for (const char *p = text; *p;) {
        size_t len = strcspn(p, ",");
        if (len == 1 && *p == '*')
            any = true;
        else if (len) {
            if (!oauth_scope_valid(p, len)) {
                free(out);
                return "a scope in scopes= has a character a scope cannot have";
            }
            memcpy(out + o, p, len);
            o += len;
            out[o++] = ',';
            some = true;
        }
        p += len + (p[len] == ',');
    }
    out[o] = '\0';
    if (!any && !some) {
        free(out);
        return "scopes= lists no scope; name at least one, or * for any";
    }
    if (any)
        snprintf(out, n + 2, "*");
    *ret = out;
    return NULL;
}

static const char *parse_line(char *line, struct auth_key *k) {
    char *name, *hash, *rights, *scopes, *extra, *save = NULL;

    name = strtok_r(line, " \t", &save);
    hash = strtok_r(NULL, " \t", &save);
    rights = strtok_r(NULL, " \t", &save);
    scopes = strtok_r(NULL, " \t", &save);
    extra = strtok_r(NULL, " \t", &save);
    k->scopes = NULL;
    if (!name || !hash || !rights || extra)
        return "expected NAME SHA256HEX RIGHTS [scopes=S,...] (e.g. 'web-proxy 9f86…08 frontend,proxy')";
    if (strlen(name) >= KEY_NAME_MAX)
        return "the key's name is longer than 63 characters";
    if (strlen(hash) != 64)
        return "the hash must be 64 hex digits: the SHA-256 of the key (printf %s KEY | sha256sum)";
    for (int i = 0; i < 32; i++) {
        int hi = hex_value(hash[2 * i]), lo = hex_value(hash[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return "the hash must be 64 hex digits";
        k->hash[i] = (unsigned char)(hi << 4 | lo);
    }
    snprintf(k->name, sizeof(k->name), "%s", name);
    k->rights = 0;
    for (char *r = strtok_r(rights, ",", &save); r; r = strtok_r(NULL, ",", &save)) {
        bool known = false;
        for (size_t i = 0; i < ARRAY_SIZE(right_names); i++)
            if (strcmp(r, right_names[i].name) == 0) {
                k->rights |= right_names[i].right;
                known = true;
            }
        if (!known)
            return "unknown right; rights are token, client-token, frontend, proxy, admin";
    }
    return scopes ? parse_scopes(scopes, &k->scopes) : NULL;
}

int auth_load(const char *path, auth **ret, char *err, size_t err_size) {
    char line[512];
    auth *a;
    FILE *f;
    int lineno = 0, fd;

    fd = secret_file_open(path, "the keys file", SECRET_FILE_GUARD, err, err_size);
    if (fd < 0)
        return fd;
    f = fdopen(fd, "r");
    if (!f) {
        close(fd);
        snprintf(err, err_size, "out of memory");
        return -ENOMEM;
    }
    a = calloc(1, sizeof(*a));
    if (!a) {
        fclose(f);
        return -ENOMEM;
    }
    while (fgets(line, sizeof(line), f)) {
        struct auth_key k;
        const char *why;
        char *p = line;

        lineno++;
        if (!strchr(line, '\n') && !feof(f)) {
            snprintf(err, err_size, "%s:%d: line too long", path, lineno);
            goto fail;
        }
        line[strcspn(line, "\r\n")] = '\0';
        p += strspn(p, " \t");
        if (*p == '\0' || *p == '#')
            continue;
        why = parse_line(p, &k);
        if (why) {
            snprintf(err, err_size, "%s:%d: %s", path, lineno, why);
            goto fail;
        }
        if (a->n >= KEYS_MAX) {
            free(k.scopes);
            snprintf(err, err_size, "%s:%d: more than %d keys", path, lineno, KEYS_MAX);
            goto fail;
        }
        {
            struct auth_key *nk = realloc(a->keys, (a->n + 1) * sizeof(*nk));
            if (!nk) {
                free(k.scopes);
                snprintf(err, err_size, "out of memory");
                goto fail;
            }
            a->keys = nk;
            a->keys[a->n++] = k;
        }
    }
    fclose(f);
    *ret = a;
    return 0;
fail:
    fclose(f);
    auth_free(a);
    return -EINVAL;
}

const auth_key *auth_find(const auth *a, const char *key, size_t len) {
    unsigned char digest[32];
    unsigned int dlen = 0;
    const auth_key *found = NULL;

    if (!EVP_Digest(key, len, digest, &dlen, EVP_sha256(), NULL) || dlen != sizeof(digest))
        return NULL;
    /* every entry is compared, so the time taken says nothing of which
     * matched; the last line with the hash wins */
    for (size_t i = 0; i < a->n; i++)
        if (CRYPTO_memcmp(digest, a->keys[i].hash, sizeof(digest)) == 0)
            found = &a->keys[i];
    explicit_bzero(digest, sizeof(digest));
    return found;
}

int auth_key_rights(const auth_key *k) {
    return k->rights;
}

bool auth_key_allows_scope(const auth_key *k, const char *scope, const char *default_scope, bool frontend) {
    size_t n = strlen(scope);
    const char *p;

    if (!k->scopes)
        return !frontend || strcmp(scope, default_scope) == 0;
    if (strcmp(k->scopes, "*") == 0)
        return true;
    if (n == 0 || strchr(scope, ','))
        return false; /* no scope means Instacart's choice: only for scopes=* */
    for (p = strstr(k->scopes + 1, scope); p; p = strstr(p + 1, scope))
        if (p[-1] == ',' && p[n] == ',')
            return true;
    return false;
}

int auth_check(const auth *a, const char *key, size_t len, const char **ret_name) {
    const auth_key *k = auth_find(a, key, len);

    if (!k)
        return -1;
    if (ret_name)
        *ret_name = k->name;
    return k->rights;
}

auth *auth_free(auth *a) {
    if (a) {
        for (size_t i = 0; i < a->n; i++)
            free(a->keys[i].scopes);
        free(a->keys);
        free(a);
    }
    return NULL;
}

struct auth_store {
    pthread_rwlock_t lock;
    auth *keys; /* NULL: no keys file */
};

int auth_store_new(auth *keys, auth_store **ret) {
    auth_store *s = calloc(1, sizeof(*s));

    if (!s) {
        auth_free(keys);
        return -ENOMEM;
    }
    pthread_rwlock_init(&s->lock, NULL);
    s->keys = keys;
    *ret = s;
    return 0;
}

void auth_store_set(auth_store *s, auth *keys) {
    auth *old;

    pthread_rwlock_wrlock(&s->lock);
    old = s->keys;
    s->keys = keys;
    pthread_rwlock_unlock(&s->lock);
    auth_free(old); /* no reader holds it: each looks its key up under the lock */
}

int auth_store_check(auth_store *s, const char *key, size_t len, const char *scope, const char *default_scope,
                     bool frontend, bool *ret_keyed, bool *ret_scope_ok) {
    int rights = -1;

    *ret_scope_ok = true;
    pthread_rwlock_rdlock(&s->lock);
    *ret_keyed = s->keys != NULL;
    if (s->keys && key) {
        const auth_key *k = auth_find(s->keys, key, len);
        if (k) {
            rights = k->rights;
            if (scope)
                *ret_scope_ok = auth_key_allows_scope(k, scope, default_scope, frontend);
        }
    }
    pthread_rwlock_unlock(&s->lock);
    return rights;
}

auth_store *auth_store_free(auth_store *s) {
    if (s) {
        auth_free(s->keys);
        pthread_rwlock_destroy(&s->lock);
        free(s);
    }
    return NULL;
}
