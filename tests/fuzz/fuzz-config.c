/* Fuzzes the configuration parser: any text must either give a configuration
 * that finish() would accept, or fail with a message saying what was wrong,
 * without leaking or touching *ret. Not responsible for the secret file
 * (config_parse_string does not load it). */
#include <errno.h>
#include <stdbool.h>
#include <string.h>
#include <syslog.h>

#include "address.h"
#include "config.h"
#include "fuzz.h"
#include "oauth.h"

static bool printable(const char *s) {
    if (!s || !*s)
        return false;
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            return false;
    return true;
}

static void check_config(const config *c) {
    struct sockaddr_storage ss;
    socklen_t sl;
    bool loopback;
    size_t n;

    fuzz_check(c->path && strcmp(c->path, "fuzz.conf") == 0);
    fuzz_check(printable(c->base_url));
    fuzz_check(strncmp(c->base_url, "https://", 8) == 0 || strncmp(c->base_url, "http://", 7) == 0);
    n = strlen(c->base_url);
    fuzz_check(c->base_url[n - 1] != '/');
    fuzz_check(!strpbrk(c->base_url, "@?# \\"));
    fuzz_check(printable(c->client_id));
    fuzz_check(!c->client_secret_file || printable(c->client_secret_file));
    fuzz_check(!c->client_secret && c->client_secret_len == 0);
    fuzz_check(c->default_scope && oauth_scope_valid(c->default_scope, strlen(c->default_scope)));
    fuzz_check(printable(c->listen));
    /* listen is a list of addresses (TCP and Unix sockets side by side) */
    fuzz_check(c->n_listens >= 1);
    for (size_t i = 0; i < c->n_listens; i++) {
        fuzz_check(printable(c->listens[i]) && !strpbrk(c->listens[i], " \t,"));
        fuzz_check(address_listen_parse(c->listens[i], &ss, &sl, &loopback) == 0);
        fuzz_check(loopback || c->allow_remote);
    }
    fuzz_check(c->retry_base_ms >= 1 && c->retry_base_ms <= c->retry_max_ms);
    fuzz_check(c->connect_timeout_ms >= 100 && c->connect_timeout_ms <= 60000);
    fuzz_check(c->max_concurrent >= 1 && c->max_concurrent <= 1024);
    fuzz_check(c->max_entries >= 1);
    fuzz_check(c->min_ttl_ms <= 12 * 3600000ULL);
    fuzz_check(c->refresh_before_pct <= 50);
    fuzz_check(c->threads >= 1 && c->threads <= 256);
    fuzz_check(c->idle_timeout_ms >= 1000);
    fuzz_check(c->log_level >= LOG_ERR && c->log_level <= LOG_DEBUG);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char err[CONFIG_ERR_MAX];
    config *c = NULL;
    char *text;
    int r;

    text = malloc(size + 1);
    if (!text)
        return 0;
    memcpy(text, data, size);
    text[size] = '\0';

    memset(err, 'x', sizeof(err));
    r = config_parse_string(text, "fuzz.conf", &c, err);
    if (r == 0) {
        fuzz_check(c);
        check_config(c);
        config_free(c);
    } else {
        /* every refusal a user can cause says what was wrong, and where */
        fuzz_check(r < 0);
        fuzz_check(!c);
        fuzz_check(memchr(err, '\0', sizeof(err)));
        fuzz_check(r == -ENOMEM || strncmp(err, "fuzz.conf:", 10) == 0);
    }
    free(text);
    return 0;
}
