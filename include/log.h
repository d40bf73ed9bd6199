/* Logging: one line per event, with a level, to stderr; straight to the
 * journal, with structured fields, when stderr is a journal stream. Never
 * pass a secret, an access token or an assertion; use fingerprint() for
 * user ids. */
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

/* Stable ids of the kinds of events (the journal's MESSAGE_ID), so
 * `journalctl MESSAGE_ID=...` finds every one of a kind. Never change one. */
#define LOG_ID_STARTED "2b0b16f380f647d08e732fa78a228b8a"
#define LOG_ID_STOPPING "e3aca1c8352b47c79e401953a888c0ee"
#define LOG_ID_RELOADED "9872fbf695e04da4a062b56a255aa623"
#define LOG_ID_RELOAD_FAILED "009e357744a54cc5bdde66588e8c9e9d"
#define LOG_ID_MINT_OK "ad808c4429fd4af99c549760518e4f5c"
#define LOG_ID_MINT_FAILED "d53af942bf864aff994bcc66e4ed9985"
#define LOG_ID_CACHE_SAVED "7adee51d680e4b2ab7646717d30f92e9"
#define LOG_ID_CACHE_RESTORED "aed1f6323185465ca83b3b32f0b2ee62"
#define LOG_ID_CACHE_IGNORED "604aecc05d174e1484660496a4fbb664"

/* Logs one event of a kind. fields: NULL, or journal fields as
 * "KEY=value" lines joined by '\n' (KEY in upper case, values without
 * newlines), e.g. "USER_FINGERPRINT=ab12cd34ef56\nLATENCY_MS=12". They go to
 * the journal as fields of their own; plain lines carry only the message,
 * so the message must say what matters by itself. */
void log_event(int level, const char *msgid, const char *fields, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
