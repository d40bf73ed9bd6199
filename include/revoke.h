/* Revocations at Instacart that are never forgotten. Each token handed here
 * is revoked; one whose revocation fails (Instacart failing, its circuit
 * open) is kept and tried again with backoff until Instacart takes it or
 * the token expires by itself, so a token that was dropped can always still
 * be revoked. Not responsible for dropping tokens from any cache. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "token.h"
#include "upstream.h"

typedef struct revocations revocations;

#define REVOKE_PENDING_MAX 10000 /* tokens waiting for another try; beyond, refused (logged) */

/* What became of the first try of each token of one call. */
struct revoke_outcome {
    unsigned revoked;        /* Instacart took them */
    unsigned pending;        /* failed now: tried again until taken or expired */
    mint_outcome failure;    /* the last failure, when pending > 0 */
    bool unconfirmed;        /* a fleet's drop of them not yet durable (no replica confirmed it): kept, sent again */
};
typedef void (*revoke_done_fn)(void *userdata, const struct revoke_outcome *o);

struct revoke_stats {
    unsigned long long revoked, retried, expired, refused;
    unsigned pending;
};

int revocations_new(upstream *up, revocations **ret);
/* Revokes each distinct token of toks (NULLs skipped; the caller keeps its
 * references). done, if not NULL, is called once every token's first try
 * has an answer, from any thread, possibly before this returns.
 * generation: upstream_generation() when the tokens were had (0: now);
 * every try goes to that server only (see upstream_revoke()). */
void revocations_revoke(revocations *rv, token *const *toks, size_t n, uint64_t generation, revoke_done_fn done,
                        void *userdata);
/* Calls fn with each token still waiting for Instacart, of the server and
 * client id in use now (for the image carried over a restart). */
size_t revocations_export(revocations *rv, void (*fn)(void *userdata, const token *t), void *userdata);
/* Tries again what is due; drops what expired. Call about once a second. */
void revocations_tick(revocations *rv);
void revocations_get_stats(revocations *rv, struct revoke_stats *ret);
/* After the upstream has stopped: nothing may still be in flight. */
revocations *revocations_free(revocations *rv);
