/* Runs a fuzz target over saved inputs without libFuzzer, so the seeds and
 * past crashes are regression tests in every build (gcc included) and the
 * targets cannot rot. Arguments are files or directories (not recursed);
 * each input is read into a buffer of exactly its size, as libFuzzer does.
 * A broken invariant aborts; running no input at all is a failure too, so
 * an emptied or mistyped corpus path cannot pass quietly. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fuzz.h"

#define INPUT_MAX (16 * 1024 * 1024)

static int run_file(int dirfd, const char *name, const char *shown) {
    struct stat st;
    uint8_t *buf;
    size_t got = 0;
    int fd;

    fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || fstat(fd, &st) < 0) {
        fprintf(stderr, "%s: %s\n", shown, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    if (!S_ISREG(st.st_mode) || st.st_size > INPUT_MAX) {
        fprintf(stderr, "%s: not a regular file of at most %d bytes\n", shown, INPUT_MAX);
        close(fd);
        return -1;
    }
    buf = malloc((size_t)st.st_size ? (size_t)st.st_size : 1);
    if (!buf) {
        close(fd);
        return -1;
    }
    while (got < (size_t)st.st_size) {
        ssize_t n = read(fd, buf + got, (size_t)st.st_size - got);
        if (n <= 0) {
            fprintf(stderr, "%s: short read\n", shown);
            free(buf);
            close(fd);
            return -1;
        }
        got += (size_t)n;
    }
    close(fd);
    fprintf(stderr, "running %s (%zu bytes)\n", shown, got);
    LLVMFuzzerTestOneInput(buf, got);
    free(buf);
    return 0;
}

static int by_name(const struct dirent **a, const struct dirent **b) {
    return strcmp((*a)->d_name, (*b)->d_name);
}

static int skip_hidden(const struct dirent *d) {
    return d->d_name[0] != '.';
}

/* Returns how many inputs ran, or -1. */
static int run_dir(const char *path) {
    struct dirent **list;
    char shown[4096];
    int dfd, n, ran = 0, r = 0;

    dfd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) {
        fprintf(stderr, "%s: %s\n", path, strerror(errno));
        return -1;
    }
    n = scandir(path, &list, skip_hidden, by_name);
    if (n < 0) {
        fprintf(stderr, "%s: %s\n", path, strerror(errno));
        close(dfd);
        return -1;
    }
    for (int i = 0; i < n; i++) {
        snprintf(shown, sizeof(shown), "%s/%s", path, list[i]->d_name);
        if (run_file(dfd, list[i]->d_name, shown) < 0)
            r = -1;
        else
            ran++;
        free(list[i]);
    }
    free(list);
    close(dfd);
    return r < 0 ? -1 : ran;
}

int main(int argc, char **argv) {
    struct stat st;
    int total = 0;

    if (argc < 2) {
        fprintf(stderr, "usage: %s FILE|DIR...\n", argv[0]);
        return 2;
    }
    for (int i = 1; i < argc; i++) {
        int n;

        if (stat(argv[i], &st) < 0) {
            fprintf(stderr, "%s: %s\n", argv[i], strerror(errno));
            return 1;
        }
        if (S_ISDIR(st.st_mode))
            n = run_dir(argv[i]);
        else
            n = run_file(AT_FDCWD, argv[i], argv[i]) < 0 ? -1 : 1;
        if (n < 0)
            return 1;
        total += n;
    }
    if (total == 0) {
        fprintf(stderr, "no input found in the arguments\n");
        return 1;
    }
    fprintf(stderr, "%d inputs ran without breaking an invariant\n", total);
    return 0;
}
