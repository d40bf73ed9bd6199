/* Logging: one line per event, with a level, to stderr. Never pass a secret,
 * an access token or an assertion; use fingerprint() for user ids. */
#pragma once

#include <syslog.h>

void log_set_max_level(int level);
int log_get_max_level(void);
/* Parse "error", "warning", "notice", "info" or "debug". */
int log_level_from_string(const char *s);

void log_msg(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_error(...) log_msg(LOG_ERR, __VA_ARGS__)
#define log_warning(...) log_msg(LOG_WARNING, __VA_ARGS__)
#define log_notice(...) log_msg(LOG_NOTICE, __VA_ARGS__)
#define log_info(...) log_msg(LOG_INFO, __VA_ARGS__)
#define log_debug(...) log_msg(LOG_DEBUG, __VA_ARGS__)
