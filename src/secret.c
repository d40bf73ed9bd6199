/* Opening and reading the files that hold or guard secrets. A secret file
 * must be private to its owner: a secret that other local users can read is
 * already leaked, so we refuse to start rather than use it. Every such file
 * is opened without blocking, so a FIFO planted at its path cannot wedge a
 * reload. Not responsible for where the paths come from. */
#include "secret.h"

#include <errno.h>
#include <stdbool.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util.h"

int secret_file_open(const char *path, const char *what, enum secret_file_kind kind, char *err,
                     size_t err_size) {
    bool private = kind == SECRET_FILE_PRIVATE || kind == SECRET_FILE_CREDENTIAL;
    int flags = O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK | (private ? O_NOFOLLOW : 0);
    struct stat st;
    int fd, r;

    /* O_NONBLOCK: opening a FIFO for reading would otherwise wait for a
     * writer, for ever, with the reload (and so SIGTERM) stuck behind it */
    fd = open(path, flags);
    if (fd < 0) {
        r = -errno;
        snprintf(err, err_size, "%s: cannot open %s: %s%s", path, what, strerror(errno),
                 errno == ELOOP ? " (symbolic links are refused)" : "");
        return r;
    }
    if (fstat(fd, &st) < 0) {
        r = -errno;
        snprintf(err, err_size, "%s: %s", path, strerror(errno));
        goto fail;
    }
    if (!S_ISREG(st.st_mode)) {
        r = -EINVAL;
        snprintf(err, err_size, "%s: %s must be a regular file, not a %s", path, what,
                 S_ISFIFO(st.st_mode) ? "FIFO" : S_ISDIR(st.st_mode) ? "directory"
                 : S_ISSOCK(st.st_mode) ? "socket" : "device");
        goto fail;
    }
    if (kind != SECRET_FILE_PLAIN && st.st_uid != 0 && st.st_uid != geteuid()) {
        r = -EPERM;
        snprintf(err, err_size, "%s: %s is owned by uid %u; it must be owned by root or by tokend's "
                 "user (uid %u): run 'chown root %s'", path, what, (unsigned)st.st_uid,
                 (unsigned)geteuid(), path);
        goto fail;
    }
    if (private && (st.st_mode & (kind == SECRET_FILE_CREDENTIAL ? (S_IRWXG & ~S_IRGRP) | S_IRWXO
                                                                : S_IRWXG | S_IRWXO))) {
        r = -EPERM;
        snprintf(err, err_size, "%s: %s is accessible to group or others (mode %04o); run 'chmod 600 %s'",
                 path, what, (unsigned)(st.st_mode & 07777), path);
        goto fail;
    }
    if (kind == SECRET_FILE_GUARD && (st.st_mode & (S_IWGRP | S_IWOTH))) {
        r = -EPERM;
        snprintf(err, err_size, "%s: %s is writable by group or others (mode %04o); run 'chmod go-w %s'",
                 path, what, (unsigned)(st.st_mode & 07777), path);
        goto fail;
    }
    /* a regular file: reads would not block anyway; back to plain reads */
    r = fcntl(fd, F_GETFL);
    if (r < 0 || fcntl(fd, F_SETFL, r & ~O_NONBLOCK) < 0) {
        r = -errno;
        snprintf(err, err_size, "%s: %s", path, strerror(errno));
        goto fail;
    }
    return fd;
fail:
    close(fd);
    return r;
}

static int load(const char *path, const char *what, enum secret_file_kind kind, char **ret, size_t *ret_len,
                char *err, size_t err_size);

int secret_load(const char *path, char **ret, size_t *ret_len, char *err, size_t err_size) {
    return load(path, "the client secret", SECRET_FILE_PRIVATE, ret, ret_len, err, err_size);
}

int secret_load_credential(const char *path, char **ret, size_t *ret_len, char *err, size_t err_size) {
    return load(path, "the client secret", SECRET_FILE_CREDENTIAL, ret, ret_len, err, err_size);
}

int secret_load_named(const char *path, const char *what, char **ret, size_t *ret_len, char *err,
                      size_t err_size) {
    return load(path, what, SECRET_FILE_PRIVATE, ret, ret_len, err, err_size);
}

static int load(const char *path, const char *what, enum secret_file_kind kind, char **ret, size_t *ret_len,
                char *err, size_t err_size) {
    struct stat st;
    char *buf = NULL;
    size_t len = 0;
    int fd, r;

    fd = secret_file_open(path, what, kind, err, err_size);
    if (fd < 0)
        return fd;
    if (fstat(fd, &st) < 0) {
        r = -errno;
        snprintf(err, err_size, "%s: %s", path, strerror(errno));
        goto out;
    }
    if (st.st_size > SECRET_MAX) {
        r = -EFBIG;
        snprintf(err, err_size, "%s: %s is larger than %d bytes", path, what, SECRET_MAX);
        goto out;
    }
    buf = malloc(SECRET_MAX + 1);
    if (!buf) {
        r = -ENOMEM;
        snprintf(err, err_size, "out of memory");
        goto out;
    }
    for (;;) {
        ssize_t n = read(fd, buf + len, SECRET_MAX + 1 - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            r = -errno;
            snprintf(err, err_size, "%s: %s", path, strerror(errno));
            goto out;
        }
        if (n == 0)
            break;
        len += (size_t)n;
        if (len > SECRET_MAX) {
            r = -EFBIG;
            snprintf(err, err_size, "%s: %s is larger than %d bytes", path, what, SECRET_MAX);
            goto out;
        }
    }
    /* A trailing newline is what editors and `echo` leave; it is not part of
     * the secret. */
    while (len > 0 && (buf[len - 1] == '\n' || buf[len - 1] == '\r' || buf[len - 1] == ' ' ||
                       buf[len - 1] == '\t'))
        len--;
    if (len == 0) {
        r = -ENODATA;
        snprintf(err, err_size, "%s: %s is empty", path, what);
        goto out;
    }
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)buf[i] < 0x20 || buf[i] == 0x7f) {
            r = -EINVAL;
            snprintf(err, err_size, "%s: %s contains a control character", path, what);
            goto out;
        }
    buf[len] = '\0';
    *ret = buf;
    *ret_len = len;
    buf = NULL;
    r = 0;
out:
    wipe_free(buf, SECRET_MAX + 1);
    close(fd);
    return r;
}
