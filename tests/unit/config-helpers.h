/* What the tests of the configuration's files share (test-config.c,
 * test-settings.c, test-credentials.c): a small valid file to build on,
 * parsing a text that must be taken or refused (and where), and files on
 * disk in a temporary directory removed at exit. */
#pragma once

#include <errno.h>
#include <ftw.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "unit.h"

#define NAME "t.conf"
#define BASE                                                                                       \
    "[upstream]\n"                                                                                 \
    "base_url = https://connect.dev.instacart.tools\n"                                             \
    "client_id = cid\n"
/* text appended to BASE starts on this line */
#define FIRST_EXTRA_LINE 4

static inline config *parse_ok(const char *text) {
    char err[CONFIG_ERR_MAX] = "";
    config *c = NULL;
    int r = config_parse_string(text, NAME, &c, err);

    if (r != 0)
        UNIT_FAIL("refused (%d): %s\n--- the file:\n%s", r, err, text);
    ASSERT(c);
    return c;
}

/* Parses text, expects a refusal; returns the message. */
static inline const char *parse_refused(const char *text) {
    static char err[CONFIG_ERR_MAX];
    config *c = NULL;
    int r;

    err[0] = '\0';
    r = config_parse_string(text, NAME, &c, err);
    if (r != -EINVAL)
        UNIT_FAIL("accepted (%d), want -EINVAL:\n%s", r, text);
    ASSERT(c == NULL);
    ASSERT(err[0] != '\0');
    return err;
}

/* BASE + extra must be refused with a message for line `line` that mentions
 * `what` (the key, the section or the value). */
static inline void refused_at(const char *extra, int line, const char *what) {
    char text[1024], prefix[32];
    const char *err;

    snprintf(text, sizeof(text), "%s%s", BASE, extra);
    snprintf(prefix, sizeof(prefix), NAME ":%d: ", line);
    err = parse_refused(text);
    if (strncmp(err, prefix, strlen(prefix)) != 0 || !strstr(err, what))
        UNIT_FAIL("for\n%s\nthe message should start with '%s' and mention '%s', but is:\n%s",
                  text, prefix, what, err);
}

/* A refusal of the file as a whole (no line): "name: ..." mentioning what. */
static inline void refused_whole(const char *text, const char *what) {
    const char *err = parse_refused(text);

    ASSERT_STARTS_WITH(err, NAME ": ");
    ASSERT_CONTAINS(err, what);
}

/* ---- files on disk, in a temporary directory removed at exit ---- */

static char tmp_root[256];

static inline int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    return remove(path);
}

static inline void tmp_cleanup(void) {
    if (tmp_root[0])
        nftw(tmp_root, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static inline const char *tmp_dir(void) {
    if (!tmp_root[0]) {
        const char *base = getenv("TMPDIR");
        snprintf(tmp_root, sizeof(tmp_root), "%s/tokend-unit-XXXXXX", base && *base ? base : "/tmp");
        ASSERT(mkdtemp(tmp_root));
        atexit(tmp_cleanup);
    }
    return tmp_root;
}

/* A new file in the temporary directory holding content, with mode. */
static inline char *tmp_file(const char *content, size_t len, mode_t mode) {
    char *path = NULL;
    int fd;

    ASSERT(asprintf(&path, "%s/file-XXXXXX", tmp_dir()) > 0);
    fd = mkstemp(path);
    ASSERT(fd >= 0);
    ASSERT(write(fd, content, len) == (ssize_t)len);
    ASSERT(fchmod(fd, mode) == 0);
    ASSERT(close(fd) == 0);
    return path;
}
