/* Dropping tokens: from this host's cache and, in fleet mode, from every
 * host's. The one way every caller drops a token (the operator's DELETE and
 * flush, the Recommendations proxy after Instacart's 401), so that none can
 * forget the fleet. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "cache.h"
#include "revoke.h"
#include "shared.h"

struct tokens {
    cache *cache;
    shared *shared; /* fleet mode, or NULL */
    revocations *rv;
};

/* Drops the key's token here and in the fleet; only if it is `only` when
 * given (a caller that found a token refused drops that one, not a newer
 * one). Returns 1 when this host held it, 0 if not; *ret_here (when given)
 * is set to the same before ack is called. ack, when given, is told once
 * whether the fleet's drop will survive a failover (see shared_ack_fn),
 * perhaps before this returns; without a fleet, at once with true. */
int tokens_drop(const struct tokens *t, enum oauth_grant grant, const char *user_id, const char *scope,
                const token *only, shared_ack_fn ack, void *userdata, bool *ret_here);
/* Drops the key's token everywhere and revokes at Instacart every token
 * the fleet holds for it (see shared_revoke() and revocations_revoke()):
 * done is called once with the first try's outcome, perhaps before this
 * returns; *ret_here is set before, to whether this host held one. */
void tokens_revoke(const struct tokens *t, enum oauth_grant grant, const char *user_id, const char *scope,
                   revoke_done_fn done, void *userdata, bool *ret_here);
/* Flushes this host's cache and, in fleet mode, the fleet (a new
 * generation no host reads older tokens from). Returns the entries dropped
 * here, also set in *ret_n (when given) before ack is called; ack as for
 * tokens_drop(). */
size_t tokens_flush(const struct tokens *t, shared_ack_fn ack, void *userdata, size_t *ret_n);
