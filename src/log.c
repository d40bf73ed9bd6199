/* Logging to stderr, one line per event with its level. systemd's journal
 * reads the "<N>" prefix as the priority when stderr is a journal stream.
 * This module formats; it never decides what is safe to log: callers pass
 * fingerprints, never secrets. */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

static int max_level = LOG_INFO;

static const char *const level_names[] = {
    [LOG_EMERG] = "emerg", [LOG_ALERT] = "alert", [LOG_CRIT] = "crit", [LOG_ERR] = "error",
    [LOG_WARNING] = "warning", [LOG_NOTICE] = "notice", [LOG_INFO] = "info", [LOG_DEBUG] = "debug",
};

void log_set_max_level(int level) {
    max_level = level;
}

int log_get_max_level(void) {
    return max_level;
}

int log_level_from_string(const char *s) {
    for (int i = LOG_ERR; i <= LOG_DEBUG; i++)
        if (strcasecmp(s, level_names[i]) == 0)
            return i;
    return -1;
}

void log_msg(int level, const char *fmt, ...) {
    static int journal = -1;
    char line[1024];
    va_list ap;
    int n;

    if (level > max_level)
        return;
    if (journal < 0)
        journal = getenv("JOURNAL_STREAM") != NULL;

    va_start(ap, fmt);
    n = vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    /* One write per line so lines from several threads never interleave. */
    if (journal)
        fprintf(stderr, "<%d>%s\n", level, line);
    else
        fprintf(stderr, "instacart-tokend: %s: %s\n", level_names[level], line);
}
