/* Fuzzes the strict-HTTP check of a header block (src/head.c). The input's
 * first byte picks where folds show (name or value); the rest is split at
 * NULs into alternating names and values, as the HTTP library hands them
 * over. A block accepted must be one tokend reads one way only, checked
 * here a second way: every name a token, no name extending a header tokend
 * reads, each such header once, Content-Lengths all equal, a transfer
 * coding only "chunked" and never with a Content-Length; and the facts kept
 * are the values fed. */
#include <stdbool.h>
#include <string.h>
#include <strings.h>

#include "fuzz.h"
#include "head.h"

#define MAX_FIELDS 64

static bool token(const char *s) {
    if (!*s)
        return false;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              strchr("!#$%&'*+-.^_`|~", *s)))
            return false;
    return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static const char *const guarded[] = { "Host", "Origin", "Sec-Fetch-Site", "Authorization", "X-Tokend-User" };
    head_rules rules = { .user_header = "X-Tokend-User", .user_header_len = 13 };
    static char buf[4096];
    const char *field[MAX_FIELDS];
    size_t n = 0, len;
    const char *length = NULL;
    unsigned seen[5] = { 0 };
    bool ok, te = false;
    head h = { 0 };

    if (size < 1 || size - 1 >= sizeof(buf))
        return 0;
    rules.folds_in_values = data[0] & 1;
    len = size - 1;
    memcpy(buf, data + 1, len);
    buf[len] = '\0';
    for (size_t i = 0, start = 0; i <= len && n < MAX_FIELDS; i++)
        if (buf[i] == '\0') {
            field[n++] = buf + start;
            start = i + 1;
        }
    n -= n % 2;
    ok = true;
    for (size_t i = 0; i < n && ok; i += 2)
        ok = head_add(&h, &rules, field[i], strlen(field[i]), field[i + 1], strlen(field[i + 1]));
    ok = ok && head_finish(&h);
    fuzz_check(ok == (h.bad == NULL));
    if (!ok)
        return 0;
    for (size_t i = 0; i < n; i += 2) {
        const char *k = field[i], *v = field[i + 1];
        fuzz_check(token(k));
        for (size_t g = 0; g < 5; g++) {
            size_t gl = strlen(guarded[g]);
            fuzz_check(!(strlen(k) > gl && strncasecmp(k, guarded[g], gl) == 0));
            if (strcasecmp(k, guarded[g]) == 0)
                seen[g]++;
        }
        if (strcasecmp(k, "Content-Length") == 0) {
            fuzz_check(!length || strcmp(length, v) == 0);
            length = v;
        }
        if (strcasecmp(k, "Transfer-Encoding") == 0) {
            fuzz_check(strcasecmp(v, "chunked") == 0);
            te = true;
        }
    }
    for (size_t g = 0; g < 5; g++)
        fuzz_check(seen[g] <= 1);
    fuzz_check(!(te && length));
    fuzz_check((h.host != NULL) == (seen[0] == 1));
    fuzz_check((h.origin != NULL) == (seen[1] == 1));
    fuzz_check(h.user == (seen[4] == 1));
    return 0;
}
