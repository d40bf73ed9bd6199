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
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>

#include "build-config.h"
#include "config.h"
#include "log.h"
#include "sd.h"
#include "service.h"

enum { ARG_VERSION = 0x100, ARG_CHECK, ARG_CORE, ARG_DESCRIBE, ARG_CREDS, ARG_RELOAD, ARG_STAGE, ARG_UNIT };

/* Every option: getopt's table, and the line --help prints for it. */
static const struct option options[] = {
    { "config", required_argument, NULL, 'c' },
    { "check-config", no_argument, NULL, ARG_CHECK },
    { "describe-config", optional_argument, NULL, ARG_DESCRIBE },
    { "allow-core-dumps", no_argument, NULL, ARG_CORE },
    { "credentials-dir", required_argument, NULL, ARG_CREDS },
    { "reload", required_argument, NULL, ARG_RELOAD },
    { "stage-credentials", required_argument, NULL, ARG_STAGE },
    { "unit", required_argument, NULL, ARG_UNIT },
    { "help", no_argument, NULL, 'h' },
    { "version", no_argument, NULL, ARG_VERSION },
    { 0 },
};

/* How long ExecReload= waits for the daemon's verdict: within the unit's
 * TimeoutStartSec= (30 s), which bounds ExecReload= too. */
#define RELOAD_WAIT_MS 20000

static void help(void) {
    printf("Usage: instacart-tokend [OPTIONS]\n"
           "Mints, caches and serves Instacart Connect access tokens on a local HTTP endpoint.\n\n"
           "  -c, --config FILE    configuration file (default %s)\n"
           "      --check-config   check the configuration and the client secret, then exit\n"
           "      --describe-config[=text|json]\n"
           "                       print every configuration key (section, key, type, default,\n"
           "                       bounds, what a reload does, help), then exit\n"
           "      --credentials-dir DIR  take the credentials (client_secret, shared_key,\n"
           "                       redis_password) from DIR, as the unit's LoadCredential= passes them\n"
           "      --unit UNIT      with --check-config, as root: the credentials UNIT's\n"
           "                       LoadCredential= names, read from their files\n"
           "      --reload PID     the unit's ExecReload=: check the configuration as the service\n"
           "                       sees it, reload tokend PID and wait until it has applied it\n"
           "      --stage-credentials UNIT  the unit's ExecReload=+ (root): copy the credentials\n"
           "                       UNIT loads into its runtime directory for the reload\n"
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
    const char *path = TOKEND_DEFAULT_CONFIG, *creds = getenv("CREDENTIALS_DIRECTORY"), *stage = NULL, *unit = NULL;
    char unit_creds[64] = "";
    bool check = false, cores = false;
    long reload_pid = 0;
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
        case ARG_CREDS:
            creds = optarg;
            break;
        case ARG_RELOAD: {
            char *end;
            errno = 0;
            reload_pid = strtol(optarg, &end, 10);
            if (errno || end == optarg || *end || reload_pid <= 1 || reload_pid > INT32_MAX) {
                fprintf(stderr, "instacart-tokend: --reload takes the daemon's pid ($MAINPID), not '%s'\n",
                        optarg);
                return 2;
            }
            break;
        }
        case ARG_STAGE:
            stage = optarg;
            break;
        case ARG_UNIT:
            unit = optarg;
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
    if (stage) /* as root, before the service's own check below */
        return systemd_stage_credentials(stage) < 0 ? 1 : 0;
    if (reload_pid) {
        /* exactly as the daemon will load it, as its user, in its sandbox */
        r = systemd_reload_config_load(path, &cfg, err);
        if (r < 0) {
            systemd_reload_discard();
            log_error("reload refused, tokend keeps serving with the previous configuration: %s", err);
            return 1;
        }
        config_free(cfg);
        r = systemd_reload_request((pid_t)reload_pid, RELOAD_WAIT_MS, err, sizeof(err));
        if (r < 0) {
            log_error("reload %s: %s", r == -EINVAL ? "refused" : "failed", err);
            return 1;
        }
        return 0;
    }
    if (unit) {
        if (!check) {
            fprintf(stderr, "instacart-tokend: --unit goes with --check-config\n");
            return 2;
        }
        if (systemd_unit_credentials(unit, unit_creds, sizeof(unit_creds)) < 0)
            return 1;
        creds = unit_creds;
    }
    r = config_load(path, creds, &cfg, err);
    if (unit_creds[0]) {
        if (r < 0)
            systemd_unit_credentials_explain(unit_creds, err, sizeof(err));
        systemd_unit_credentials_done(unit_creds);
    }
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
