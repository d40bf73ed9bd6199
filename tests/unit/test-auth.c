/* Unit tests of src/auth.c: the keys file parser (rights, scopes, the
 * refusals with file and line), which scopes a key may ask for, and the
 * file's own checks (a FIFO or a group-writable file is refused), and
 * the store of the keys in force that a reload swaps. */
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "auth.h"
#include "unit.h"
#include "util.h"

/* printf %s KEY | sha256sum, for the keys used below */
#define H_ALPHA "36294c655e462786692d261f9d8bf6be31670bc66004afd9c91416223221410b" /* k-alpha */
#define H_BETA "3b6424f5938ab57d09f708b7e81994276b9ea3be655baffd5dbd3ca06433c3c6"  /* k-beta */
#define REC "connect:recommendations"
#define FUL "connect:fulfillment"

static char dir[] = "/tmp/tokend-auth-XXXXXX";

static void cleanup(void) {
    char cmd[64];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", dir);
}

static char *keys_file(const char *text, mode_t mode) {
    static unsigned n;
    static bool made; /* not "the template still ends in X": mkdtemp may pick an X */
    char *path = NULL;
    int fd;

    if (!made) {
        ASSERT(mkdtemp(dir));
        atexit(cleanup);
        made = true;
    }
    ASSERT(asprintf(&path, "%s/keys-%u", dir, n++) > 0);
    fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
    ASSERT(fd >= 0);
    ASSERT(write(fd, text, strlen(text)) == (ssize_t)strlen(text));
    ASSERT(fchmod(fd, mode) == 0);
    close(fd);
    return path;
}

static auth *load_ok(const char *text) {
    char err[256] = "", *path = keys_file(text, 0644);
    auth *a = NULL;
    int r = auth_load(path, &a, err, sizeof(err));

    if (r != 0)
        UNIT_FAIL("refused (%d): %s", r, err);
    free(path);
    return a;
}

/* text must be refused with a message for line `line` mentioning what */
static void refused_at(const char *text, int line, const char *what) {
    char err[256] = "", *path = keys_file(text, 0644), prefix[128];
    auth *a = NULL;

    ASSERT(auth_load(path, &a, err, sizeof(err)) < 0);
    ASSERT(a == NULL);
    snprintf(prefix, sizeof(prefix), "%s:%d: ", path, line);
    if (strncmp(err, prefix, strlen(prefix)) != 0 || !strstr(err, what))
        UNIT_FAIL("want '%s...%s', got: %s", prefix, what, err);
    free(path);
}

static void rights_and_names(void) {
    auth *a = load_ok("# comment\n\nbackend " H_ALPHA " token,client-token\n  web " H_BETA " frontend,proxy\n");
    const char *name = NULL;

    ASSERT_INT_EQ(auth_check(a, "k-alpha", 7, &name), RIGHT_TOKEN | RIGHT_CLIENT_TOKEN);
    ASSERT_STR_EQ(name, "backend");
    ASSERT_INT_EQ(auth_check(a, "k-beta", 6, &name), RIGHT_FRONTEND | RIGHT_PROXY);
    ASSERT_STR_EQ(name, "web");
    ASSERT_INT_EQ(auth_check(a, "k-gamma", 7, NULL), -1);
    ASSERT(auth_find(a, "k-alph", 6) == NULL);
    auth_free(a);
}

static void refusals_name_the_line(void) {
    refused_at("ok " H_ALPHA " token\nbad " H_BETA " tokens\n", 2, "unknown right");
    refused_at("x " H_ALPHA "\n", 1, "expected NAME SHA256HEX RIGHTS");
    refused_at("x " H_ALPHA " token admin\n", 1, "scopes=");
    refused_at("x " H_ALPHA " token scopes=\n", 1, "lists no scope");
    refused_at("x " H_ALPHA " token scopes=a\"b\n", 1, "character");
    refused_at("x " H_ALPHA " token scopes=a b\n", 1, "expected NAME");
    refused_at("x 1234 token\n", 1, "64 hex digits");
}

/* A browser's user must not pick any scope through the frontend route.
 * Without scopes=, a key gets only the default scope there; on the backend
 * routes, any. */
static void frontend_route_defaults_to_the_default_scope(void) {
    auth *a = load_ok("web " H_ALPHA " frontend,proxy,token\n");
    const auth_key *web = auth_find(a, "k-alpha", 7);

    ASSERT(web);
    ASSERT(auth_key_allows_scope(web, REC, REC, true));
    ASSERT(!auth_key_allows_scope(web, FUL, REC, true));
    ASSERT(!auth_key_allows_scope(web, "", REC, true));
    /* the default is the configured one */
    ASSERT(auth_key_allows_scope(web, FUL, FUL, true));
    ASSERT(!auth_key_allows_scope(web, REC, FUL, true));
    /* a backend route: any, as a token key already mints any user's */
    ASSERT(auth_key_allows_scope(web, FUL, REC, false));
    ASSERT(auth_key_allows_scope(web, "", REC, false));
    auth_free(a);
}

static void listed_scopes_exactly(void) {
    auth *a = load_ok("web " H_ALPHA " frontend scopes=" REC "," FUL "\nops " H_BETA " token scopes=*\n");
    const auth_key *web = auth_find(a, "k-alpha", 7), *ops = auth_find(a, "k-beta", 6);

    for (int fe = 0; fe <= 1; fe++) {
        ASSERT(auth_key_allows_scope(web, REC, REC, fe));
        ASSERT(auth_key_allows_scope(web, FUL, REC, fe));
        ASSERT(!auth_key_allows_scope(web, "connect", REC, fe));         /* a prefix is not a scope */
        ASSERT(!auth_key_allows_scope(web, "recommendations", REC, fe)); /* nor a suffix */
        ASSERT(!auth_key_allows_scope(web, REC "," FUL, REC, fe));       /* nor a list */
        ASSERT(!auth_key_allows_scope(web, ",", REC, fe));
        ASSERT(!auth_key_allows_scope(web, "", REC, fe));
        ASSERT(!auth_key_allows_scope(web, "connect:other", REC, fe));
        ASSERT(auth_key_allows_scope(ops, "anything:at-all", REC, fe));
        ASSERT(auth_key_allows_scope(ops, "", REC, fe));
    }
    auth_free(a);
}

/* The keys in force: none (every caller unkeyed), then a reload's, then
 * none again; a key's rights and scopes as the loaded file says. */
static void the_store_swaps_the_keys_in_force(void) {
    auth_store *s = NULL;
    bool keyed = true, ok = false;

    ASSERT_INT_EQ(auth_store_new(NULL, &s), 0);
    ASSERT_INT_EQ(auth_store_check(s, "k-alpha", 7, REC, REC, false, &keyed, &ok), -1);
    ASSERT(!keyed && ok);

    auth_store_set(s, load_ok("web " H_ALPHA " frontend,token\nops " H_BETA " admin scopes=" FUL "\n"));
    ASSERT_INT_EQ(auth_store_check(s, "k-alpha", 7, NULL, REC, true, &keyed, &ok), RIGHT_FRONTEND | RIGHT_TOKEN);
    ASSERT(keyed && ok);
    ASSERT_INT_EQ(auth_store_check(s, "k-alpha", 7, FUL, REC, true, &keyed, &ok), RIGHT_FRONTEND | RIGHT_TOKEN);
    ASSERT(!ok); /* the frontend route: the default scope only */
    ASSERT_INT_EQ(auth_store_check(s, "k-beta", 6, REC, REC, false, &keyed, &ok), RIGHT_ADMIN);
    ASSERT(!ok);
    ASSERT_INT_EQ(auth_store_check(s, NULL, 0, NULL, REC, false, &keyed, &ok), -1);
    ASSERT(keyed && ok);
    ASSERT_INT_EQ(auth_store_check(s, "k-gamma", 7, REC, REC, false, &keyed, &ok), -1);

    auth_store_set(s, NULL); /* a reload that removed the keys file */
    ASSERT_INT_EQ(auth_store_check(s, "k-alpha", 7, REC, REC, false, &keyed, &ok), -1);
    ASSERT(!keyed);
    ASSERT(auth_store_free(s) == NULL);
    ASSERT(auth_store_free(NULL) == NULL);
}

static void the_file_must_be_a_guarded_regular_file(void) {
    char err[256], *path = keys_file("x " H_ALPHA " token\n", 0664), *fifo = NULL;
    auth *a = NULL;
    pid_t pid;
    int status;

    ASSERT_INT_EQ(auth_load(path, &a, err, sizeof(err)), -EPERM);
    ASSERT_CONTAINS(err, "writable by group or others");
    ASSERT_CONTAINS(err, path);
    ASSERT(chmod(path, 0646) == 0);
    ASSERT_INT_EQ(auth_load(path, &a, err, sizeof(err)), -EPERM);
    free(path);
    /* a FIFO: refused at once, not waited on (in a child with a deadline) */
    ASSERT(asprintf(&fifo, "%s/keys-fifo", dir) > 0);
    ASSERT(mkfifo(fifo, 0600) == 0);
    pid = fork();
    ASSERT(pid >= 0);
    if (pid == 0) {
        alarm(5);
        _exit(auth_load(fifo, &a, err, sizeof(err)) == -EINVAL && strstr(err, "FIFO") ? 0 : 1);
    }
    ASSERT(waitpid(pid, &status, 0) == pid);
    if (WIFSIGNALED(status))
        UNIT_FAIL("auth_load blocked on a FIFO until killed");
    ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    free(fifo);
}

static const unit_test tests[] = {
    TEST(rights_and_names),
    TEST(refusals_name_the_line),
    TEST(frontend_route_defaults_to_the_default_scope),
    TEST(listed_scopes_exactly),
    TEST(the_store_swaps_the_keys_in_force),
    TEST(the_file_must_be_a_guarded_regular_file),
};

UNIT_MAIN(tests)
