/* Loading the client secret. The file must be private to its owner: a secret
 * that other local users can read is already leaked, so we refuse to start
 * rather than use it. Not responsible for where the path comes from. */
#include "secret.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util.h"

/* refused: the mode bits that make the file too open to trust */
static int load(const char *path, mode_t refused, char **ret, size_t *ret_len, char *err, size_t err_size) {
    struct stat st;
    char *buf = NULL;
    size_t len = 0;
    int fd, r;

    fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NOFOLLOW);
    if (fd < 0) {
        r = -errno;
        snprintf(err, err_size, "%s: cannot open the client secret: %s%s", path, strerror(errno),
                 errno == ELOOP ? " (symbolic links are refused)" : "");
        return r;
    }
    if (fstat(fd, &st) < 0) {
        r = -errno;
        snprintf(err, err_size, "%s: %s", path, strerror(errno));
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        r = -EINVAL;
        snprintf(err, err_size, "%s: the client secret must be a regular file", path);
        goto out;
    }
    if (st.st_mode & refused) {
        r = -EPERM;
        snprintf(err, err_size,
                 "%s: the client secret is accessible to group or others (mode %04o); "
                 "run 'chmod 600 %s'",
                 path, (unsigned)(st.st_mode & 07777), path);
        goto out;
    }
    if (st.st_size > SECRET_MAX) {
        r = -EFBIG;
        snprintf(err, err_size, "%s: the client secret is larger than %d bytes", path, SECRET_MAX);
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
            snprintf(err, err_size, "%s: the client secret is larger than %d bytes", path, SECRET_MAX);
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
        snprintf(err, err_size, "%s: the client secret file is empty", path);
        goto out;
    }
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)buf[i] < 0x20 || buf[i] == 0x7f) {
            r = -EINVAL;
            snprintf(err, err_size, "%s: the client secret contains a control character", path);
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

int secret_load(const char *path, char **ret, size_t *ret_len, char *err, size_t err_size) {
    return load(path, S_IRWXG | S_IRWXO, ret, ret_len, err, err_size);
}

/* systemd 257 (Debian 13) hands credentials over as 0440, the group being
 * the service's own, in a directory only the service can open; 252 used
 * 0400. Group read is all that is let through. */
int secret_load_credential(const char *path, char **ret, size_t *ret_len, char *err, size_t err_size) {
    return load(path, (S_IRWXG & ~S_IRGRP) | S_IRWXO, ret, ret_len, err, err_size);
}
