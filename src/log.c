/* Logging. Responsible for: formatting one line per event with its level,
 * and writing it where it is read. When stderr is the journal's stream
 * (JOURNAL_STREAM names stderr's device and inode), events go straight to
 * the journal with sd_journal_sendv: a priority, a MESSAGE_ID per kind of
 * event and structured fields, so nothing has to be parsed back out of the
 * text. Otherwise, or when the journal refuses, plain lines on stderr.
 * Not responsible for what is safe to log: callers pass fingerprints,
 * never secrets. */
#define SD_JOURNAL_SUPPRESS_LOCATION /* CODE_FILE=log.c would say nothing */
#include "log.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <systemd/sd-journal.h>
#include <unistd.h>

#define LOG_LINE_MAX 1024
#define LOG_FIELDS_MAX 16

static int max_level = LOG_INFO;
static bool to_journal;
static pthread_once_t journal_once = PTHREAD_ONCE_INIT;

static const char *const level_names[] = {
    [LOG_EMERG] = "emerg", [LOG_ALERT] = "alert", [LOG_CRIT] = "crit", [LOG_ERR] = "error",
    [LOG_WARNING] = "warning", [LOG_NOTICE] = "notice", [LOG_INFO] = "info", [LOG_DEBUG] = "debug",
};

/* Set by a reload on the main thread while every other thread logs. */
void log_set_max_level(int level) {
    __atomic_store_n(&max_level, level, __ATOMIC_RELAXED);
}

int log_get_max_level(void) {
    return __atomic_load_n(&max_level, __ATOMIC_RELAXED);
}

int log_level_from_string(const char *s) {
    for (int i = LOG_ERR; i <= LOG_DEBUG; i++)
        if (strcasecmp(s, level_names[i]) == 0)
            return i;
    return -1;
}

/* JOURNAL_STREAM is inherited by children whose stderr went elsewhere; only
 * a match with stderr's own device and inode means the journal reads it. */
static char identifier[96] = "SYSLOG_IDENTIFIER=instacart-tokend";

static void detect_journal(void) {
    const char *e = getenv("JOURNAL_STREAM");
    /* the unit's SyslogIdentifier= reaches stderr's lines only: an instance
     * of the template unit passes its own for ours too */
    const char *ident = getenv("TOKEND_SYSLOG_IDENTIFIER");

    if (ident && *ident && strlen(ident) < 64 && !strpbrk(ident, "\n="))
        snprintf(identifier, sizeof(identifier), "SYSLOG_IDENTIFIER=%s", ident);
    unsigned long long dev, ino;
    struct stat st;
    int n = 0;

    if (!e || sscanf(e, "%llu:%llu%n", &dev, &ino, &n) != 2 || e[n] != '\0')
        return;
    if (fstat(STDERR_FILENO, &st) < 0)
        return;
    to_journal = (unsigned long long)st.st_dev == dev && (unsigned long long)st.st_ino == ino;
}

static void write_line(int level, char *line) {
    /* one event, one line: a newline or a terminal's escape in a value
     * (Instacart's answer, a caller's input) cannot forge another line
     * (the journal's own fields carry them safely) */
    for (char *p = line; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            *p = '?';
    /* one write per line so lines from several threads never interleave;
     * the journal reads a "<N>" prefix as the priority */
    if (to_journal)
        fprintf(stderr, "<%d>%s\n", level, line);
    else
        fprintf(stderr, "instacart-tokend: %s: %s\n", level_names[level], line);
}

/* sd_journal_sendv() says 0 when the journal's socket is missing, and the
 * event is gone: then the line goes to stderr (which the journal reads). */
static bool journal_reachable(void) {
    return access("/run/systemd/journal/socket", F_OK) == 0;
}

static int send_journal(int level, const char *msgid, const char *fields, const char *line) {
    struct iovec iov[4 + LOG_FIELDS_MAX];
    char prio[16], msg[LOG_LINE_MAX + 16], id[48], copy[LOG_LINE_MAX];
    size_t n = 0;

    snprintf(prio, sizeof(prio), "PRIORITY=%d", level);
    snprintf(msg, sizeof(msg), "MESSAGE=%s", line);
    iov[n++] = (struct iovec){ prio, strlen(prio) };
    iov[n++] = (struct iovec){ msg, strlen(msg) };
    iov[n++] = (struct iovec){ identifier, strlen(identifier) };
    if (msgid) {
        snprintf(id, sizeof(id), "MESSAGE_ID=%s", msgid);
        iov[n++] = (struct iovec){ id, strlen(id) };
    }
    if (fields && snprintf(copy, sizeof(copy), "%s", fields) < (int)sizeof(copy)) {
        for (char *p = copy; *p && n < sizeof(iov) / sizeof(iov[0]);) {
            char *end = strchrnul(p, '\n');
            bool last = *end == '\0';
            *end = '\0';
            if (strchr(p, '=') > p)
                iov[n++] = (struct iovec){ p, (size_t)(end - p) };
            if (last)
                break;
            p = end + 1;
        }
    }
    return sd_journal_sendv(iov, (int)n);
}

static void vlog(int level, const char *msgid, const char *fields, const char *fmt, va_list ap)
    __attribute__((format(printf, 4, 0)));
static void vlog(int level, const char *msgid, const char *fields, const char *fmt, va_list ap) {
    char line[LOG_LINE_MAX];

    if (level > log_get_max_level())
        return;
    pthread_once(&journal_once, detect_journal);
    if (vsnprintf(line, sizeof(line), fmt, ap) < 0)
        return;
    if (to_journal && journal_reachable() && send_journal(level, msgid, fields, line) >= 0)
        return;
    write_line(level, line);
}

void log_msg(int level, const char *fmt, ...) {
    va_list ap;

    va_start(ap, fmt);
    vlog(level, NULL, NULL, fmt, ap);
    va_end(ap);
}

void log_event(int level, const char *msgid, const char *fields, const char *fmt, ...) {
    va_list ap;

    va_start(ap, fmt);
    vlog(level, msgid, fields, fmt, ap);
    va_end(ap);
}
