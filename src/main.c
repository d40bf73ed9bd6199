/* instacart-tokend: parses the command line, loads the configuration,
 * and hands over to the service (service.c), which starts the modules in
 * dependency order, serves, and stops them in reverse. */
#include <curl/curl.h>
#include <errno.h>
#include <getopt.h>
/* only for --version: the versions this binary runs on (the modules that
 * use these libraries keep them to themselves otherwise) */
#include <hiredis/hiredis.h>
#include <microhttpd.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>

#include "build-config.h"
#include "config.h"
#include "log.h"
#include "service.h"

enum { ARG_VERSION = 0x100, ARG_CHECK, ARG_CORE, ARG_DESCRIBE };

/* Every option: getopt's table, and the line --help prints for it. */
static const struct option options[] = {
    { "config", required_argument, NULL, 'c' },
    { "check-config", no_argument, NULL, ARG_CHECK },
    { "describe-config", optional_argument, NULL, ARG_DESCRIBE },
    { "allow-core-dumps", no_argument, NULL, ARG_CORE },
    { "help", no_argument, NULL, 'h' },
    { "version", no_argument, NULL, ARG_VERSION },
    { 0 },
};

static void help(void) {
    printf("Usage: instacart-tokend [OPTIONS]\n"
           "Mints, caches and serves Instacart Connect access tokens on a local HTTP endpoint.\n\n"
           "  -c, --config FILE    configuration file (default %s)\n"
           "      --check-config   check the configuration and the client secret, then exit\n"
           "      --describe-config[=text|json]\n"
           "                       print every configuration key (section, key, type, default,\n"
           "                       bounds, what a reload does, help), then exit\n"
           "      --allow-core-dumps  let a crash write a core dump (it would hold the secret and\n"
           "                       tokens: only with a throwaway secret, see the README)\n"
           "  -h, --help           show this help\n"
           "      --version        show the version and what this build can do\n"
           "\n"
           "SIGHUP reloads the configuration, SIGTERM stops. See instacart-tokend(8) and\n"
           "instacart-tokend.conf(5).\n",
           TOKEND_DEFAULT_CONFIG);
}

/* As nginx -V: what this build can do, and the libraries it runs on. */
static void version(void) {
    const curl_version_info_data *cv = curl_version_info(CURLVERSION_NOW);

    printf("instacart-tokend %s\n", TOKEND_VERSION);
    printf("fleet mode: yes (hiredis %d.%d.%d)\n", HIREDIS_MAJOR, HIREDIS_MINOR, HIREDIS_PATCH);
#ifdef HAVE_HIREDIS_SSL
    printf("TLS to Redis: yes (hiredis_ssl)\n");
#else
    printf("TLS to Redis: no (this hiredis has no hiredis_ssl; use a TLS tunnel)\n");
#endif
    printf("libmicrohttpd: %s\n", MHD_get_version());
    printf("libcurl: %s%s%s\n", cv->version, cv->ssl_version ? " with " : "",
           cv->ssl_version ? cv->ssl_version : "");
}

static int describe(const char *format) {
    char *text;

    if (format && strcmp(format, "json") != 0 && strcmp(format, "text") != 0) {
        fprintf(stderr, "instacart-tokend: --describe-config=%s: the format is text or json\n", format);
        return 2;
    }
    text = config_describe_keys(format && strcmp(format, "json") == 0);
    if (!text) {
        log_error("out of memory");
        return 1;
    }
    fputs(text, stdout);
    if (text[0] && text[strlen(text) - 1] != '\n')
        putchar('\n');
    free(text);
    return 0;
}

int main(int argc, char **argv) {
    const char *path = TOKEND_DEFAULT_CONFIG;
    bool check = false, cores = false;
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
        case ARG_CORE:
            cores = true;
            break;
        case 'h':
            help();
            return 0;
        case ARG_VERSION:
            version();
            return 0;
        case ARG_DESCRIBE:
            return describe(optarg);
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

    /* Before the secret is read: a core dump would hold it, every token and
     * every user id. Not dumpable also keeps other processes of our user
     * from ptrace()ing us or reading /proc/PID/mem. */
    if (!cores) {
        struct rlimit none = { 0, 0 };
        if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) < 0 || setrlimit(RLIMIT_CORE, &none) < 0) {
            log_error("cannot turn core dumps off: %s", strerror(errno));
            return 1;
        }
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
    r = service_run(path, cfg);
    config_free(cfg);
    curl_global_cleanup();
    return r < 0 ? 1 : 0;
}
