/* Reaching Redis: the address (or the master the sentinels name), AUTH,
 * TLS with the server's name checked, the role, the scripts loaded and the
 * permissions each thread needs tried. Each thread keeps its own
 * connection and asks here for a new one after a failure. */
#include <errno.h>
#include <hiredis/hiredis.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fleet.h"
#include "log.h"
#include "util.h"
#ifdef HAVE_HIREDIS_SSL
#include <arpa/inet.h>
#include <hiredis/hiredis_ssl.h>
#include <openssl/x509v3.h>
#endif

/* ---- talking to Redis ---- */

#ifdef HAVE_HIREDIS_SSL
/* The name the server's certificate must carry: an IP address, or a host
 * name (also sent as SNI). */
static bool tls_expect(SSL *ssl, const char *host) {
    unsigned char ip[16];

    if (inet_pton(AF_INET, host, ip) == 1 || inet_pton(AF_INET6, host, ip) == 1)
        return X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), host) == 1;
    return SSL_set_tlsext_host_name(ssl, host) == 1 && SSL_set1_host(ssl, host) == 1;
}
#endif

static redisContext *connect_to(shared *s, const char *address, char *err, size_t err_size) {
    struct timeval tv = { .tv_sec = (time_t)(s->timeout_ms / 1000), .tv_usec = (suseconds_t)(s->timeout_ms % 1000) * 1000 };
    char host[256];
    unsigned port;
    redisContext *c;

    if (config_redis_address_parse(address, host, sizeof(host), &port) < 0) {
        snprintf(err, err_size, "%s is not a Redis address", address);
        return NULL;
    }
    c = port ? redisConnectWithTimeout(host, (int)port, tv) : redisConnectUnixWithTimeout(host, tv);
    if (!c || c->err) {
        snprintf(err, err_size, "cannot connect to %s: %s", address, c ? c->errstr : "out of memory");
        if (c)
            redisFree(c);
        return NULL;
    }
    redisSetTimeout(c, tv);
    fleet_reader_bound(c->reader);
#ifdef HAVE_HIREDIS_SSL
    if (s->ssl && port) { /* Redis serves no TLS on a Unix socket: nothing to protect there */
        /* our own SSL object, so the certificate is checked against the
         * name we asked for (hiredis's own context checks only the chain) */
        SSL *ssl = SSL_new(s->ssl);
        if (!ssl || !tls_expect(ssl, host) || redisInitiateSSL(c, ssl) != REDIS_OK) {
            snprintf(err, err_size, "TLS with %s failed: %s", address, c->errstr[0] ? c->errstr : "out of memory");
            SSL_free(ssl); /* hiredis owns it only once the handshake succeeded */
            redisFree(c);
            return NULL;
        }
    }
#endif
    return c;
}

/* Why a connection failed, in words: a deadline that passed reads as
 * EAGAIN from the socket ("Resource temporarily unavailable"). */
const char *fleet_redis_why(const redisContext *c) {
    if (!c->errstr[0] || (c->err == REDIS_ERR_IO && strcmp(c->errstr, strerror(EAGAIN)) == 0))
        return "no answer within [shared] timeout";
    return c->errstr;
}

/* A command on a fresh connection; an error reply or none fails it. */
redisReply *fleet_command(redisContext *c, int argc, const char **argv, const size_t *lens, char *err,
                           size_t err_size) {
    redisReply *r = redisCommandArgv(c, argc, argv, lens);

    if (!r) {
        snprintf(err, err_size, "%s failed: %s", argv[0], fleet_redis_why(c));
        return NULL;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        snprintf(err, err_size, "%s refused: %.*s%s", argv[0], (int)(r->len < 200 ? r->len : 200), r->str,
                 strncmp(r->str, "NOPERM", 6) == 0 ? " (give tokend's ACL user this command: the README's ACL "
                                                      "line lists every one)"
                                                    : "");
        freeReplyObject(r);
        return NULL;
    }
    return r;
}

/* Asks the sentinels where the master is. */
int fleet_find_master(shared *s, char *address, size_t size, char *err, size_t err_size) {
    for (size_t i = 0; i < s->n_sentinels; i++) {
        const char *argv[] = { "SENTINEL", "get-master-addr-by-name", s->master_name };
        redisContext *c = connect_to(s, s->sentinels[i], err, err_size);
        redisReply *r;

        if (!c)
            continue;
        r = fleet_command(c, 3, argv, NULL, err, err_size);
        if (r && r->type == REDIS_REPLY_ARRAY && r->elements == 2 && r->element[0]->type == REDIS_REPLY_STRING &&
            r->element[1]->type == REDIS_REPLY_STRING) {
            bool v6 = strchr(r->element[0]->str, ':') != NULL;
            snprintf(address, size, "%s%s%s:%s", v6 ? "[" : "", r->element[0]->str, v6 ? "]" : "",
                     r->element[1]->str);
            freeReplyObject(r);
            redisFree(c);
            return 0;
        }
        if (r) {
            snprintf(err, err_size, "sentinel %s does not know a master named '%s'", s->sentinels[i],
                     s->master_name);
            freeReplyObject(r);
        }
        redisFree(c);
    }
    return -EHOSTUNREACH;
}

/* Connects, authenticates, checks it is the master (with sentinels) and,
 * for the command thread, loads the scripts. */
redisContext *fleet_redis_open(shared *s, bool load_scripts, char *address, size_t address_size, char *err,
                                size_t err_size) {
    redisContext *c;
    redisReply *r;

    if (s->n_sentinels) {
        if (fleet_find_master(s, address, address_size, err, err_size) < 0)
            return NULL;
    } else
        snprintf(address, address_size, "%s", s->redis);
    c = connect_to(s, address, err, err_size);
    if (!c)
        return NULL;
    if (s->password) {
        const char *argv[] = { "AUTH", s->username ? s->username : s->password, s->password };
        size_t lens[] = { 4, s->username ? strlen(s->username) : s->password_len, s->password_len };
        r = fleet_command(c, s->username ? 3 : 2, argv, lens, err, err_size);
        if (!r)
            goto fail;
        freeReplyObject(r);
    }
    {
        const char *argv[] = { "ROLE" };
        r = fleet_command(c, 1, argv, NULL, err, err_size);
        if (!r)
            goto fail;
        if (r->type != REDIS_REPLY_ARRAY || r->elements < 1 || r->element[0]->type != REDIS_REPLY_STRING ||
            strcmp(r->element[0]->str, "master") != 0) {
            snprintf(err, err_size, "%s is a replica, not the master", address);
            freeReplyObject(r);
            goto fail;
        }
        freeReplyObject(r);
    }
    for (int i = 0; load_scripts && i < S_COUNT; i++) {
        const char *argv[] = { "SCRIPT", "LOAD", fleet_scripts[i] };
        r = fleet_command(c, 3, argv, NULL, err, err_size);
        if (!r)
            goto fail;
        freeReplyObject(r);
    }
    {
        /* what each thread needs, tried harmlessly, so a missing permission
         * is named now rather than failing every miss later */
        char key[KEY_MAX];
        const char *run[] = { "EVALSHA", s->sha[S_RELEASE], "1", key, "-" };
        const char *time_argv[] = { "TIME" };
        pthread_rwlock_rdlock(&s->keys_lock);
        snprintf(key, sizeof(key), "%sl:permissions", s->ns);
        pthread_rwlock_unlock(&s->keys_lock);
        r = load_scripts ? fleet_command(c, 5, run, NULL, err, err_size) : fleet_command(c, 1, time_argv, NULL, err, err_size);
        if (!r)
            goto fail;
        freeReplyObject(r);
    }
    return c;
fail:
    redisFree(c);
    return NULL;
}
