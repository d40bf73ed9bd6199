/* Strict JSON parsing and wiping on top of cJSON (see json.h). */
#include "json.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

static int by_name(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* RFC 8259 leaves a repeated name to the parser, and cJSON takes the first:
 * whoever sent it meant something else by the second. Sorted, so a hostile
 * object of n names costs n log n, not n squared. */
static bool duplicate_names(const cJSON *j) {
    for (; j; j = j->next) {
        if (cJSON_IsObject(j) && j->child) {
            size_t n = 0, i = 0;
            const char **names;
            bool dup = false;

            for (const cJSON *c = j->child; c; c = c->next)
                n++;
            names = malloc(n * sizeof(*names));
            if (!names)
                return true; /* refused: the caller's body is too much for us */
            for (const cJSON *c = j->child; c; c = c->next)
                names[i++] = c->string ? c->string : "";
            qsort(names, n, sizeof(*names), by_name);
            for (i = 1; i < n && !dup; i++)
                dup = strcmp(names[i - 1], names[i]) == 0;
            free(names);
            if (dup)
                return true;
        }
        if (j->child && duplicate_names(j->child))
            return true;
    }
    return false;
}

cJSON *json_parse_whole(const char *text, size_t len) {
    const char *end = NULL;
    cJSON *j;

    if (memchr(text, '\0', len) || memmem(text, len, "\\u0000", 6))
        return NULL;
    j = cJSON_ParseWithLengthOpts(text, len, &end, false);
    if (!j)
        return NULL;
    for (; end && end < text + len; end++)
        if (*end != ' ' && *end != '\t' && *end != '\r' && *end != '\n')
            return json_delete_wiped(j);
    if (duplicate_names(j))
        return json_delete_wiped(j);
    return j;
}

static void json_wipe(cJSON *j) {
    for (; j; j = j->next) {
        if (j->valuestring)
            explicit_bzero(j->valuestring, strlen(j->valuestring));
        json_wipe(j->child);
    }
}

cJSON *json_delete_wiped(cJSON *j) {
    json_wipe(j);
    cJSON_Delete(j);
    return NULL;
}
