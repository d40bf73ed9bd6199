/* instacart-tokend: parses the command line, starts the modules in
 * dependency order (configuration, upstream client, cache, HTTP front),
 * waits for signals, and stops them in reverse. */
#include <curl/curl.h>
#include <errno.h>
#include <getopt.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include "api.h"
#include "build-config.h"
#include "cache.h"
#include "config.h"
#include "log.h"
#include "upstream.h"
#include "util.h"

static void help(void) {
    printf("Usage: instacart-tokend [OPTIONS]\n"
           "Mints, caches and serves Instacart Connect access tokens on a local HTTP endpoint.\n\n"
           "  -c, --config FILE    configuration file (default %s)\n"
           "      --check-config   check the configuration and the client secret, then exit\n"
           "  -h, --help           show this help\n"
           "      --version        show the version\n",
           TOKEND_DEFAULT_CONFIG);
}

/* The cache's source of tokens: Instacart, through the upstream client. */
static void fetch_from_upstream(void *source, enum oauth_grant grant, const char *user_id,
                                const char *scope, cache_done_fn done, void *ctx) {
    upstream_mint(source, grant, user_id, scope, done, ctx);
}

/* Each connection is a file descriptor: make sure the limit we configured
 * can be reached, and lower it (loudly) when the system will not allow it. */
static unsigned fit_connections(unsigned wanted, unsigned upstream_conns) {
    struct rlimit rl;
    unsigned reserve = upstream_conns + 64;

    if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
        return wanted;
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
        getrlimit(RLIMIT_NOFILE, &rl);
    }
    if (rl.rlim_cur != RLIM_INFINITY && (rlim_t)wanted + reserve > rl.rlim_cur) {
        unsigned fit = rl.rlim_cur > reserve + 16 ? (unsigned)(rl.rlim_cur - reserve) : 16;
        log_warning("max_connections %u does not fit the file descriptor limit %llu; using %u",
                    wanted, (unsigned long long)rl.rlim_cur, fit);
        return fit;
    }
    return wanted;
}

static int run(config *cfg) {
    upstream *up = NULL;
    cache *c = NULL;
    api *a = NULL;
    sigset_t mask;
    int sfd = -1, r;
    cache_settings cs = {
        .max_entries = cfg->max_entries,
        .min_ttl_ms = cfg->min_ttl_ms,
        .refresh_before_pct = cfg->refresh_before_pct,
        .failure_ttl_ms = cfg->failure_ttl_ms,
        .max_waiters = cfg->max_waiters,
        .retry_base_ms = cfg->retry_base_ms,
        .retry_max_ms = cfg->retry_max_ms,
    };

    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGHUP);
    /* blocked before any thread starts, so only the signalfd sees them */
    pthread_sigmask(SIG_BLOCK, &mask, NULL);
    signal(SIGPIPE, SIG_IGN);
    sfd = signalfd(-1, &mask, SFD_CLOEXEC);
    if (sfd < 0) {
        r = -errno;
        log_error("signalfd: %s", strerror(errno));
        return r;
    }
    cfg->max_connections = fit_connections(cfg->max_connections, cfg->max_concurrent);

    r = upstream_new(cfg, &up);
    if (r < 0)
        goto out;
    r = cache_new(&cs, fetch_from_upstream, up, &c);
    if (r < 0)
        goto out;
    r = upstream_start(up);
    if (r < 0)
        goto out;
    r = api_new(cfg, c, -1, &a);
    if (r < 0)
        goto out;
    log_notice("listening on http://%s (Instacart at %s, client id %s)", api_address(a),
               cfg->base_url, cfg->client_id);

    for (;;) {
        struct pollfd p = { .fd = sfd, .events = POLLIN };
        struct signalfd_siginfo si;

        if (poll(&p, 1, 1000) > 0 && read(sfd, &si, sizeof(si)) == sizeof(si)) {
            if (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT)
                break;
            if (si.ssi_signo == SIGHUP)
                log_notice("SIGHUP: reloading is not supported yet; restart to apply changes");
        }
        cache_sweep(c);
    }

    log_notice("stopping: no new connections; waiting up to %llu ms for requests in flight",
               (unsigned long long)cfg->shutdown_timeout_ms);
    api_quiesce(a);
    {
        uint64_t deadline = now_ms() + cfg->shutdown_timeout_ms;
        while (api_waiting(a) > 0 && now_ms() < deadline)
            poll(NULL, 0, 20); /* polling a counter, bounded by the deadline */
    }
    r = 0;
out:
    /* reverse order: the upstream first, so every waiting caller is answered
     * before the server and the cache go away */
    upstream_stop(up);
    api_free(a);
    cache_free(c);
    upstream_free(up);
    if (sfd >= 0)
        close(sfd);
    return r;
}

int main(int argc, char **argv) {
    enum { ARG_VERSION = 0x100, ARG_CHECK };
    static const struct option options[] = {
        { "config", required_argument, NULL, 'c' },
        { "check-config", no_argument, NULL, ARG_CHECK },
        { "help", no_argument, NULL, 'h' },
        { "version", no_argument, NULL, ARG_VERSION },
        { 0 },
    };
    const char *path = TOKEND_DEFAULT_CONFIG;
    bool check = false;
    char err[CONFIG_ERR_MAX];
    config *cfg = NULL;
    int c, r;

    while ((c = getopt_long(argc, argv, "c:h", options, NULL)) >= 0) {
        switch (c) {
        case 'c':
            path = optarg;
            break;
        case ARG_CHECK:
            check = true;
            break;
        case 'h':
            help();
            return 0;
        case ARG_VERSION:
            printf("instacart-tokend %s\n", TOKEND_VERSION);
            return 0;
        default:
            fprintf(stderr, "Try 'instacart-tokend --help'.\n");
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "instacart-tokend: unexpected argument '%s'; the configuration goes in a file "
                        "(--config FILE)\n", argv[optind]);
        return 2;
    }

    r = config_load(path, getenv("CREDENTIALS_DIRECTORY"), &cfg, err);
    if (r < 0) {
        log_error("%s", err);
        return 1;
    }
    if (check) {
        printf("%s: configuration OK\n", path);
        config_free(cfg);
        return 0;
    }
    log_set_max_level(cfg->log_level);
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        log_error("cannot initialise libcurl");
        config_free(cfg);
        return 1;
    }
    r = run(cfg);
    config_free(cfg);
    curl_global_cleanup();
    return r < 0 ? 1 : 0;
}
