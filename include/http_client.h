/* The HTTP side of talking to Instacart: one worker thread drives a libcurl
 * multi handle, so no caller ever blocks on the network. Its owners (the
 * token client, the Recommendations forwarder) submit exchanges from any
 * thread; the worker starts them in order, at most max_concurrent at once,
 * asking each owner right before each attempt whether it may go. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct http_client http_client;
typedef struct http_exchange http_exchange;

/* How an attempt ended: an answer (whatever its status), or why none came.
 * CURLcode is translated into these once, in http_client.c. */
enum http_result {
    HTTP_RESULT_OK,
    HTTP_RESULT_TIMEOUT,
    HTTP_RESULT_CANNOT_RESOLVE,
    HTTP_RESULT_REFUSED,       /* no connection */
    HTTP_RESULT_TLS_EXPIRED,   /* the server's certificate is out of date */
    HTTP_RESULT_TLS_WRONG_HOST,
    HTTP_RESULT_TLS_UNTRUSTED,
    HTTP_RESULT_TLS_CA_FILE,   /* our CA bundle could not be used */
    HTTP_RESULT_TLS_PROTOCOL,  /* no TLS version we accept (1.2 and up) */
    HTTP_RESULT_TLS_FAILED,    /* the handshake broke off */
    HTTP_RESULT_DROPPED,       /* the connection went mid-exchange */
    HTTP_RESULT_TOO_LARGE,     /* the answer passed answer_max: cut off */
    HTTP_RESULT_FAILED,        /* anything else */
    /* no attempt: the exchange ends without being sent (again) */
    HTTP_RESULT_EXPIRED,   /* its deadline passed while it waited */
    HTTP_RESULT_CANCELLED, /* the client is stopping */
};

/* How to reach the server: fixed until replaced by http_client_set_link. */
struct http_link {
    const char *proxy;             /* NULL: none, whatever the environment says */
    const char *proxy_credentials; /* USER:PASSWORD, or NULL */
    size_t proxy_credentials_len;
    const char *ca_pem;            /* trusted certificates; NULL: the system's */
    size_t ca_pem_len;
};

struct http_client_settings {
    unsigned max_concurrent; /* requests at once, and connections kept open */
    unsigned queue_max;      /* exchanges accepted beyond those */
    uint64_t connect_timeout_ms;
    const double *latency_bounds; /* upper bounds, seconds, of the histogram's buckets */
    size_t n_latency_bounds;      /* at most HTTP_LATENCY_BUCKETS_MAX */
    struct http_link link;
};

/* One attempt, as the owner's start callback describes it. Pointers must
 * stay valid until the exchange's done callback: curl reads the body as it
 * sends. The bearer token and the link are copied. */
struct http_request {
    const char *url;
    const char *body;
    size_t body_len;
    const char *bearer; /* NULL, or sent as Authorization: Bearer */
    size_t answer_max;  /* a longer answer ends the attempt: HTTP_RESULT_TOO_LARGE */
    uint64_t timeout_ms;
};

/* What came back; valid only during the done callback (the body is wiped
 * after it, as it may hold a token). */
struct http_answer {
    enum http_result result;
    int status;               /* the HTTP status, 0 when none came */
    const char *content_type; /* or NULL */
    const char *retry_after;  /* the Retry-After header's value, or NULL */
    const char *body;         /* NULL (len 0) when there is none */
    size_t len;
    const char *detail;       /* curl's words on a failure, for the log; "" if none */
    uint64_t started_ms;      /* when this attempt began (now_ms()) */
};

enum http_start {
    HTTP_START_SENT,  /* the owner called http_exchange_send and it succeeded */
    HTTP_START_WAIT,  /* not yet: this and every exchange behind it wait */
    HTTP_START_ENDED, /* the owner gave up on it and told its caller */
};

struct http_exchange_ops {
    /* Worker thread, when a slot is free and the deadline not yet passed:
     * send now through http_exchange_send (while holding whatever lock
     * makes the request's pieces consistent), wait (lowering *wait_ms to
     * when to ask again), or end it. */
    enum http_start (*start)(void *userdata, http_exchange *ex, uint64_t now, uint64_t *wait_ms);
    /* Worker thread, once per attempt, or once with EXPIRED or CANCELLED:
     * return true to try again no earlier than *retry_at (start is asked
     * again), false when the exchange is over (it is freed then). */
    bool (*done)(void *userdata, const struct http_answer *a, uint64_t *retry_at);
};

#define HTTP_LATENCY_BUCKETS_MAX 16

struct http_client_stats {
    unsigned long long requests;    /* attempts sent */
    unsigned long long connections; /* new connections opened: reuse keeps this low */
    unsigned long long latency_buckets[HTTP_LATENCY_BUCKETS_MAX]; /* not cumulative */
    unsigned long long latency_count;
    double latency_sum_s;
    unsigned in_flight; /* accepted and not yet over */
    unsigned queued;    /* submitted, not yet seen by the worker */
};

int http_client_new(const struct http_client_settings *s, http_client **ret);
/* Starts the worker thread. */
int http_client_start(http_client *hc);
/* Ends the worker: exchanges in flight or waiting get done() with
 * HTTP_RESULT_CANCELLED, on the worker thread. Idempotent. */
void http_client_stop(http_client *hc);
http_client *http_client_free(http_client *hc);

/* Any thread: queues an exchange whose attempts must all start before
 * deadline_ms. Returns 0 (done will be called), -EBUSY when max_concurrent +
 * queue_max are taken, -ESHUTDOWN when stopping, -ENOMEM; done is not
 * called on failure. */
int http_client_submit(http_client *hc, const struct http_exchange_ops *ops, void *userdata,
                       uint64_t deadline_ms);
/* From the start callback only: sends this attempt. 0 or -errno. */
int http_exchange_send(http_exchange *ex, const struct http_request *req);

/* Reload: new connections use this link from the next attempt on.
 * All or nothing: 0 or -ENOMEM. */
int http_client_set_link(http_client *hc, const struct http_link *link);
void http_client_get_stats(http_client *hc, struct http_client_stats *ret);
/* Milliseconds since the worker last went round its loop: a wedged worker
 * shows here. */
uint64_t http_client_idle_ms(http_client *hc);
