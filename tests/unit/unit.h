/* A very small harness for tokend's unit tests, so they need no test
 * framework package. Each test case is a void function that asserts; the
 * runner forks for each case so one failure (or crash) does not hide the
 * others, and reports TAP, which meson shows case by case.
 *
 * A case registered with KNOWN_BUG() checks behaviour that src/ gets wrong
 * today: it is expected to fail and is listed as such ("# TODO known bug").
 * If it passes, the run fails, so whoever fixes the bug moves it to TEST().
 * A case that cannot run here (it needs root, say) calls UNIT_SKIP(), and
 * shows as skipped with the reason, neither passed nor failed.
 * UNIT_STRICT=1 runs known bugs as ordinary cases; UNIT_NOFORK=1 runs
 * everything in one process (for a debugger; a skip ends that run);
 * arguments pick cases by name. */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define UNIT_FAIL(...)                                                                             \
    do {                                                                                           \
        fprintf(stderr, "%s:%d: ", __FILE__, __LINE__);                                            \
        fprintf(stderr, __VA_ARGS__);                                                              \
        fputc('\n', stderr);                                                                       \
        exit(EXIT_FAILURE);                                                                        \
    } while (0)

#define ASSERT(expr)                                                                               \
    do {                                                                                           \
        if (!(expr))                                                                               \
            UNIT_FAIL("assertion failed: %s", #expr);                                             \
    } while (0)

#define ASSERT_INT_EQ(a, b)                                                                        \
    do {                                                                                           \
        long long a_ = (long long)(a), b_ = (long long)(b);                                        \
        if (a_ != b_)                                                                              \
            UNIT_FAIL("assertion failed: %s == %s (%lld != %lld)", #a, #b, a_, b_);               \
    } while (0)

#define ASSERT_UINT_EQ(a, b)                                                                       \
    do {                                                                                           \
        unsigned long long a_ = (unsigned long long)(a), b_ = (unsigned long long)(b);             \
        if (a_ != b_)                                                                              \
            UNIT_FAIL("assertion failed: %s == %s (%llu != %llu)", #a, #b, a_, b_);               \
    } while (0)

#define ASSERT_STR_EQ(a, b)                                                                        \
    do {                                                                                           \
        const char *a_ = (a), *b_ = (b);                                                           \
        if (!a_ || !b_ || strcmp(a_, b_) != 0)                                                     \
            UNIT_FAIL("assertion failed: %s == %s (\"%s\" != \"%s\")", #a, #b,                     \
                      a_ ? a_ : "<NULL>", b_ ? b_ : "<NULL>");                                     \
    } while (0)

#define ASSERT_STARTS_WITH(s, prefix)                                                              \
    do {                                                                                           \
        const char *s_ = (s), *p_ = (prefix);                                                      \
        if (!s_ || strncmp(s_, p_, strlen(p_)) != 0)                                               \
            UNIT_FAIL("assertion failed: %s starts with %s (\"%s\")", #s, #prefix,                 \
                      s_ ? s_ : "<NULL>");                                                         \
    } while (0)

#define ASSERT_CONTAINS(s, needle)                                                                 \
    do {                                                                                           \
        const char *s_ = (s), *n_ = (needle);                                                      \
        if (!s_ || !strstr(s_, n_))                                                                \
            UNIT_FAIL("assertion failed: %s contains %s (\"%s\")", #s, #needle,                    \
                      s_ ? s_ : "<NULL>");                                                         \
    } while (0)

#define ASSERT_NOT_CONTAINS(s, needle)                                                             \
    do {                                                                                           \
        const char *s_ = (s), *n_ = (needle);                                                      \
        if (!s_ || strstr(s_, n_))                                                                 \
            UNIT_FAIL("assertion failed: %s does not contain %s (\"%s\")", #s, #needle,            \
                      s_ ? s_ : "<NULL>");                                                         \
    } while (0)

/* The exit status of a case that skipped itself, as automake and meson use. */
#define UNIT_SKIP_STATUS 77

#define UNIT_SKIP(...)                                                                             \
    do {                                                                                           \
        fprintf(stderr, "skipped: ");                                                              \
        fprintf(stderr, __VA_ARGS__);                                                              \
        fputc('\n', stderr);                                                                       \
        exit(UNIT_SKIP_STATUS);                                                                    \
    } while (0)

/* Set by unit_run_one when the case it ran skipped itself. */
static bool unit_skipped;

typedef struct unit_test {
    const char *name;
    void (*fn)(void);
    const char *bug; /* NULL, or what src/ gets wrong */
} unit_test;

#define TEST(fn) { #fn, fn, NULL }
#define KNOWN_BUG(fn, why) { #fn, fn, why }

static inline bool unit_selected(const char *name, int argc, char **argv) {
    if (argc < 2)
        return true;
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], name) == 0)
            return true;
    return false;
}

static inline bool unit_run_one(const unit_test *t, bool nofork) {
    int status;
    pid_t pid;

    if (nofork) {
        t->fn();
        return true;
    }
    fflush(stdout);
    fflush(stderr);
    pid = fork();
    if (pid < 0) {
        perror("fork");
        return false;
    }
    if (pid == 0) {
        /* stdout carries TAP: whatever a test prints goes to stderr */
        dup2(STDERR_FILENO, STDOUT_FILENO);
        t->fn();
        exit(EXIT_SUCCESS);
    }
    if (waitpid(pid, &status, 0) < 0) {
        perror("waitpid");
        return false;
    }
    if (WIFSIGNALED(status))
        fprintf(stderr, "%s: killed by signal %d\n", t->name, WTERMSIG(status));
    unit_skipped = WIFEXITED(status) && WEXITSTATUS(status) == UNIT_SKIP_STATUS;
    if (unit_skipped)
        return true;
    return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

static inline int unit_main(const unit_test *tests, size_t n, int argc, char **argv) {
    bool strict = getenv("UNIT_STRICT") && strcmp(getenv("UNIT_STRICT"), "0") != 0;
    bool nofork = getenv("UNIT_NOFORK") && strcmp(getenv("UNIT_NOFORK"), "0") != 0;
    size_t planned = 0, number = 0;
    int failed = 0;

    for (size_t i = 0; i < n; i++)
        if (unit_selected(tests[i].name, argc, argv))
            planned++;
    printf("TAP version 13\n1..%zu\n", planned);
    for (size_t i = 0; i < n; i++) {
        const unit_test *t = &tests[i];
        bool ok;

        if (!unit_selected(t->name, argc, argv))
            continue;
        number++;
        fprintf(stderr, "--- %s%s\n", t->name, t->bug && !strict ? " (known bug)" : "");
        unit_skipped = false;
        ok = unit_run_one(t, nofork);
        if (unit_skipped) {
            printf("ok %zu - %s # SKIP\n", number, t->name);
        } else if (t->bug && !strict) {
            printf("%s %zu - %s # TODO known bug: %s\n", ok ? "ok" : "not ok", number, t->name,
                   t->bug);
            if (ok) {
                fprintf(stderr, "%s passes: the bug looks fixed; register it with TEST()\n",
                        t->name);
                failed++;
            }
        } else {
            printf("%s %zu - %s\n", ok ? "ok" : "not ok", number, t->name);
            if (!ok)
                failed++;
        }
        fflush(stdout);
    }
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

#define UNIT_MAIN(tests)                                                                           \
    int main(int argc, char **argv) {                                                              \
        return unit_main(tests, sizeof(tests) / sizeof((tests)[0]), argc, argv);                   \
    }
