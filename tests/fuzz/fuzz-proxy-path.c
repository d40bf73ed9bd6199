/* Fuzzes the check of a Recommendations proxy path: the path tokend would
 * forward to Instacart with a user's token, so anything it lets through
 * reaches Instacart. The input, cut at its first NUL as libmicrohttpd's
 * decoded URL would be, is checked against a matcher written here a second
 * way (split into the part before the order id, the id and the part after,
 * each compared whole): both must agree on every input, so whatever is
 * accepted is one of the four documented paths with an order id of
 * [A-Za-z0-9_-]{1,128}. */
#include <stdbool.h>
#include <string.h>

#include "fuzz.h"
#include "request.h"

#define ORDER_ID_MAX 128

static const char base[] = "/v2/recommendations/";
static const char orders[] = "/v2/recommendations/orders/";
static const char *const endings[] = { "replacement_items", "complementary_items" };

static bool id_char(char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
}

static bool matches(const char *path) {
    size_t len = strlen(path);

    for (size_t e = 0; e < 2; e++) {
        size_t elen = strlen(endings[e]);
        size_t idlen;
        const char *id;

        /* /v2/recommendations/{ending} */
        if (len == strlen(base) + elen && memcmp(path, base, strlen(base)) == 0 &&
            memcmp(path + strlen(base), endings[e], elen) == 0)
            return true;

        /* /v2/recommendations/orders/{id}/{ending} */
        if (len < strlen(orders) + 1 + 1 + elen || memcmp(path, orders, strlen(orders)) != 0)
            continue;
        if (memcmp(path + len - elen, endings[e], elen) != 0 || path[len - elen - 1] != '/')
            continue;
        id = path + strlen(orders);
        idlen = len - strlen(orders) - 1 - elen;
        if (idlen < 1 || idlen > ORDER_ID_MAX)
            continue;
        bool ok = true;
        for (size_t i = 0; i < idlen && ok; i++)
            ok = id_char(id[i]);
        if (ok)
            return true;
    }
    return false;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *path = malloc(size + 1);
    bool accepted;

    if (!path)
        return 0;
    memcpy(path, data, size);
    path[size] = '\0';
    accepted = request_proxy_path_valid(path);
    if (accepted != matches(path)) {
        fprintf(stderr, "request_proxy_path_valid says %s, the independent matcher %s, for \"%s\"\n",
                accepted ? "yes" : "no", accepted ? "no" : "yes", path);
        fuzz_check(accepted == matches(path));
    }
    free(path);
    return 0;
}
