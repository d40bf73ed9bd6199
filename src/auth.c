/* API keys. Responsible for reading the keys file and telling which rights
 * a presented key carries. Keys are stored as SHA-256 hashes, so the file
 * holds nothing a thief could present; a presented key is hashed and
 * compared with every entry in constant time. SHA-256 comes from libcrypto:
 * already in the process through libcurl, and well kept. Not responsible
 * for deciding which route needs which right (api.c does). */
#include "auth.h"

#include <errno.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "util.h"

#define KEY_NAME_MAX 64
#define KEYS_MAX 1024

struct key_entry {
    char name[KEY_NAME_MAX];
    unsigned char hash[32];
    int rights;
};

struct auth {
    struct key_entry *keys;
    size_t n;
};

static const struct {
    const char *name;
    int right;
} right_names[] = {
    { "token", RIGHT_TOKEN },       { "client-token", RIGHT_CLIENT_TOKEN }, { "frontend", RIGHT_FRONTEND },
    { "proxy", RIGHT_PROXY },       { "admin", RIGHT_ADMIN },
};

static const char *parse_line(char *line, struct key_entry *k) {
    char *name, *hash, *rights, *extra, *save = NULL;

    name = strtok_r(line, " \t", &save);
    hash = strtok_r(NULL, " \t", &save);
    rights = strtok_r(NULL, " \t", &save);
    extra = strtok_r(NULL, " \t", &save);
    if (!name || !hash || !rights || extra)
        return "expected NAME SHA256HEX RIGHTS (e.g. 'web-proxy 9f86…08 frontend,proxy')";
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
    return NULL;
}

int auth_load(const char *path, auth **ret, char *err, size_t err_size) {
    char line[512];
    struct stat st;
    auth *a;
    FILE *f;
    int lineno = 0;

    f = fopen(path, "re");
    if (!f) {
        snprintf(err, err_size, "%s: cannot open the keys file: %s", path, strerror(errno));
        return -errno;
    }
    if (fstat(fileno(f), &st) == 0 && (st.st_mode & S_IWOTH)) {
        snprintf(err, err_size, "%s: the keys file is writable by others; run 'chmod o-w %s'", path, path);
        fclose(f);
        return -EPERM;
    }
    a = calloc(1, sizeof(*a));
    if (!a) {
        fclose(f);
        return -ENOMEM;
    }
    while (fgets(line, sizeof(line), f)) {
        struct key_entry k;
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
            snprintf(err, err_size, "%s:%d: more than %d keys", path, lineno, KEYS_MAX);
            goto fail;
        }
        {
            struct key_entry *nk = realloc(a->keys, (a->n + 1) * sizeof(*nk));
            if (!nk) {
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

int auth_check(const auth *a, const char *key, size_t len, const char **ret_name) {
    unsigned char digest[32];
    unsigned int dlen = 0;
    int rights = -1;

    if (!EVP_Digest(key, len, digest, &dlen, EVP_sha256(), NULL) || dlen != sizeof(digest))
        return -1;
    /* every entry is compared, so the time taken says nothing of which matched */
    for (size_t i = 0; i < a->n; i++)
        if (CRYPTO_memcmp(digest, a->keys[i].hash, sizeof(digest)) == 0) {
            rights = a->keys[i].rights;
            if (ret_name)
                *ret_name = a->keys[i].name;
        }
    explicit_bzero(digest, sizeof(digest));
    return rights;
}

auth *auth_free(auth *a) {
    if (a) {
        free(a->keys);
        free(a);
    }
    return NULL;
}
