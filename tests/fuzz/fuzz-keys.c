/* Fuzzes the API keys file (auth_load) and the check of presented keys
 * (auth_check). The input is the file: written into a memfd (chmod 0600,
 * as the loader refuses files others may write) and read back through
 * /proc/self/fd/N, so auth_load takes its real path through stdio.
 *
 * Whatever the bytes: no crash, no leak, a refusal names the file and line.
 * For plain text (no NUL, no CR, lines well under the loader's 511-byte
 * limit), the file is also read here a second way, and the two must agree
 * on accepting it and on the rights and name each of a few known keys gets
 * (the last line with its hash wins, as in auth.c). */
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "auth.h"
#include "fuzz.h"

#define PLAIN_LINE_MAX 400

/* SHA-256 of each key, as printf %s KEY | sha256sum prints it; the fuzz
 * dictionary holds the same hashes so the fuzzer can write lines for them. */
static const struct {
    const char *key, *sha256;
} known[] = {
    { "k-alpha", "36294c655e462786692d261f9d8bf6be31670bc66004afd9c91416223221410b" },
    { "k-beta", "3b6424f5938ab57d09f708b7e81994276b9ea3be655baffd5dbd3ca06433c3c6" },
    { "", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" },
};
#define N_KNOWN (sizeof(known) / sizeof(known[0]))

static const char *const right_names[] = { "token", "client-token", "frontend", "proxy", "admin" };

struct model {
    bool valid;
    int rights[N_KNOWN]; /* -1: no line for the key */
    char name[N_KNOWN][64];
};

static bool plain(const uint8_t *data, size_t size) {
    size_t line = 0;

    for (size_t i = 0; i < size; i++) {
        if (data[i] == '\0' || data[i] == '\r')
            return false;
        line = data[i] == '\n' ? 0 : line + 1;
        if (line > PLAIN_LINE_MAX)
            return false;
    }
    return true;
}

static bool is_blank(char c) {
    return c == ' ' || c == '\t';
}

/* Splits s (ending at end) into words separated by runs of blanks. */
static size_t words(const char *s, const char *end, const char *w[4], size_t wl[4]) {
    size_t n = 0;

    while (s < end) {
        const char *start;
        while (s < end && is_blank(*s))
            s++;
        if (s == end)
            break;
        start = s;
        while (s < end && !is_blank(*s))
            s++;
        if (n < 4) {
            w[n] = start;
            wl[n] = (size_t)(s - start);
        }
        n++;
    }
    return n;
}

/* scopes=S[,S...]: pieces of scope characters or "*", at least one. */
static bool scopes_model(const char *s, const char *end) {
    bool some = false;

    if (end - s < 7 || memcmp(s, "scopes=", 7) != 0)
        return false;
    for (const char *p = s + 7; p < end;) {
        const char *q = memchr(p, ',', (size_t)(end - p));
        size_t len = q ? (size_t)(q - p) : (size_t)(end - p);
        if (len > 256)
            return false;
        for (size_t i = 0; i < len; i++) {
            unsigned char c = (unsigned char)p[i];
            if (c <= 0x20 || c >= 0x7f || c == '"' || c == '\\')
                return false;
        }
        some = some || len > 0;
        p += len + 1;
    }
    return some;
}

static bool line_model(const char *s, const char *end, struct model *m) {
    const char *w[4];
    size_t wl[4], n = words(s, end, w, wl);
    int rights = 0;

    if (n == 0 || *w[0] == '#')
        return true; /* blank or a comment */
    if ((n != 3 && n != 4) || wl[0] >= 64 || wl[1] != 64)
        return false;
    if (n == 4 && !scopes_model(w[3], w[3] + wl[3]))
        return false;
    for (size_t i = 0; i < 64; i++) {
        char c = w[1][i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')))
            return false;
    }
    /* rights: comma-separated, empty pieces skipped */
    for (const char *p = w[2], *rend = w[2] + wl[2]; p < rend;) {
        const char *q = memchr(p, ',', (size_t)(rend - p));
        size_t len = q ? (size_t)(q - p) : (size_t)(rend - p);
        bool ok = len == 0;
        for (size_t i = 0; i < 5 && !ok; i++)
            if (strlen(right_names[i]) == len && memcmp(right_names[i], p, len) == 0) {
                rights |= 1 << i;
                ok = true;
            }
        if (!ok)
            return false;
        p += len + 1;
    }
    for (size_t k = 0; k < N_KNOWN; k++)
        if (strncasecmp(w[1], known[k].sha256, 64) == 0) {
            m->rights[k] = rights;
            memcpy(m->name[k], w[0], wl[0]);
            m->name[k][wl[0]] = '\0';
        }
    return true;
}

static void model(const uint8_t *data, size_t size, struct model *m) {
    const char *s = (const char *)data, *end = s + size;

    for (size_t k = 0; k < N_KNOWN; k++)
        m->rights[k] = -1;
    m->valid = true;
    while (s < end && m->valid) {
        const char *nl = memchr(s, '\n', (size_t)(end - s));
        const char *le = nl ? nl : end;
        m->valid = line_model(s, le, m);
        s = nl ? nl + 1 : end;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static int fd = -1;
    static char path[64];
    struct model m;
    char err[256];
    auth *a = NULL;
    size_t off = 0;
    int r;

    if (fd < 0) {
        fd = memfd_create("fuzz-keys", MFD_CLOEXEC);
        fuzz_check(fd >= 0);
        fuzz_check(fchmod(fd, 0600) == 0);
        snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
    }
    fuzz_check(ftruncate(fd, 0) == 0);
    while (off < size) {
        ssize_t n = pwrite(fd, data + off, size - off, (off_t)off);
        fuzz_check(n > 0);
        off += (size_t)n;
    }

    memset(err, 'x', sizeof(err));
    r = auth_load(path, &a, err, sizeof(err));
    if (plain(data, size))
        model(data, size, &m);
    else
        m.valid = r == 0; /* not modelled: only the rules below */

    if (r != 0) {
        fuzz_check(r < 0);
        fuzz_check(memchr(err, '\0', sizeof(err)));
        fuzz_check(r == -ENOMEM || strncmp(err, path, strlen(path)) == 0 ||
                   strcmp(err, "out of memory") == 0);
        fuzz_check(!m.valid || r == -ENOMEM);
        return 0;
    }
    fuzz_check(a);
    fuzz_check(m.valid);
    for (size_t k = 0; k < N_KNOWN; k++) {
        const char *name = NULL;
        int rights = auth_check(a, known[k].key, strlen(known[k].key), &name);

        fuzz_check(rights >= -1 && rights < 1 << 5);
        fuzz_check((rights >= 0) == (name != NULL));
        if (name)
            fuzz_check(name[0] && strlen(name) < 64);
        if (plain(data, size)) {
            fuzz_check(rights == m.rights[k]);
            fuzz_check(!name || strcmp(name, m.name[k]) == 0);
        }
    }
    /* the input itself as a key: bounded, whatever it holds */
    {
        int rights = auth_check(a, (const char *)data, size, NULL);
        fuzz_check(rights >= -1 && rights < 1 << 5);
    }
    auth_free(a);
    return 0;
}
