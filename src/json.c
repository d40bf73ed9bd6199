/* Strict JSON parsing and wiping on top of cJSON (see json.h). */
#include "json.h"

#include <stdbool.h>
#include <string.h>

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
