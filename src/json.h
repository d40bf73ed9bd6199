/* Strict JSON on top of cJSON, shared by the modules that parse outside
 * data (oauth.c, request.c). Private to src/: cJSON stays out of include/. */
#pragma once

#include <cjson/cJSON.h>
#include <stddef.h>

/* One JSON value and nothing after it but white space, with no NUL raw or
 * escaped and no object naming a member twice: cJSON alone stops at the end
 * of the first value (trailing bytes would pass unseen), cuts a string at a
 * NUL and takes the first of two members of one name. NULL when refused. */
cJSON *json_parse_whole(const char *text, size_t len);

/* Frees a tree after wiping its strings: they may hold a secret or a token. */
cJSON *json_delete_wiped(cJSON *j);
