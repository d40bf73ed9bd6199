/* Dropping tokens here and in the fleet: see tokens.h. Not responsible for
 * what a drop means in Redis (shared.c) nor for revoking (revoke.c). */
#include "tokens.h"

int tokens_drop(const struct tokens *t, enum oauth_grant grant, const char *user_id, const char *scope,
                const token *only, shared_ack_fn ack, void *userdata, bool *ret_here) {
    int dropped = cache_drop_if(t->cache, grant, user_id, scope, only, NULL);

    if (ret_here)
        *ret_here = dropped > 0;
    if (t->shared) /* or the next fetch would bring the same token back from Redis */
        shared_drop(t->shared, grant, user_id, scope, only, ack, userdata);
    else if (ack)
        ack(userdata, true);
    return dropped > 0;
}

void tokens_revoke(const struct tokens *t, enum oauth_grant grant, const char *user_id, const char *scope,
                   revoke_done_fn done, void *userdata, bool *ret_here) {
    token *mine = NULL;

    *ret_here = cache_drop(t->cache, grant, user_id, scope, &mine) > 0;
    if (t->shared) /* the shared copy too, read from Redis, and every host's */
        shared_revoke(t->shared, grant, user_id, scope, mine, done, userdata);
    else
        revocations_revoke(t->rv, &mine, 1, 0, done, userdata);
    token_unref(mine);
}

size_t tokens_flush(const struct tokens *t, shared_ack_fn ack, void *userdata, size_t *ret_n) {
    size_t n = cache_flush(t->cache);

    if (ret_n)
        *ret_n = n;
    if (t->shared)
        shared_flush(t->shared, ack, userdata);
    else if (ack)
        ack(userdata, true);
    return n;
}
