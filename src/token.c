/* Reference-counted immutable tokens. Counting is atomic because a token is
 * shared between the worker thread that minted it and the HTTP threads that
 * hand it out; the value is wiped when the last reference goes. */
#include "token.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

int token_new(const char *value, size_t len, uint32_t lifetime_s, int64_t created_at,
              uint64_t received_ms, token **ret) {
    token *t;

    if (len == 0 || len > UINT16_MAX)
        return -EINVAL;
    t = malloc(sizeof(*t) + len + 1);
    if (!t)
        return -ENOMEM;
    t->refs = 1;
    t->created_at = created_at;
    t->received_ms = received_ms;
    t->expires_ms = received_ms + (uint64_t)lifetime_s * MS_PER_SEC;
    t->minted_unix_ms = 0;
    t->lifetime_s = lifetime_s;
    t->len = (uint16_t)len;
    memcpy(t->value, value, len);
    t->value[len] = '\0';
    *ret = t;
    return 0;
}

token *token_ref(token *t) {
    if (t)
        __atomic_add_fetch(&t->refs, 1, __ATOMIC_RELAXED);
    return t;
}

token *token_unref(token *t) {
    if (t && __atomic_sub_fetch(&t->refs, 1, __ATOMIC_ACQ_REL) == 0)
        wipe_free(t, sizeof(*t) + t->len + 1);
    return NULL;
}
