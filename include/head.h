/* A request's header block, read once: whether tokend reads it one way
 * only (strict HTTP), and the facts the guard and the routes need. Pure:
 * the HTTP front feeds it the headers its library parsed. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

typedef struct head_rules {
    const char *user_header; /* [frontend] user_header */
    size_t user_header_len;
    /* where the HTTP library puts a folded line's continuation: the value
     * (libmicrohttpd 1.0, with the CR LF as two spaces) or the name (0.9.75) */
    bool folds_in_values;
} head_rules;

typedef struct head {
    /* the headers the guard reads, each at most once; NULL when absent.
     * They point to the caller's strings. */
    const char *host, *origin, *site, *authorization;
    const char *length; /* Content-Length */
    const char *content_type; /* the first Content-Type */
    const char *user_value;   /* the user header's value (user_len bytes, may hold a NUL) */
    size_t user_len;
    bool user;          /* the user header is present */
    bool relayed;       /* a header a relaying proxy adds (X-Forwarded-*, Forwarded, Via, X-Real-IP, ...) */
    bool chunked;       /* Transfer-Encoding: chunked */
    bool expect;        /* Expect: 100-continue */
    size_t bytes;       /* of the headers, as sent */
    const char *bad;    /* why the block is refused (400), or NULL */
} head;

/* Feeds one header (start from a zeroed head). Returns false, with h->bad
 * set, when the block is refused: stop there. */
bool head_add(head *h, const head_rules *r, const char *key, size_t key_size, const char *value, size_t value_size);
/* After the last header: false, with h->bad set, when the whole is refused. */
bool head_finish(head *h);
