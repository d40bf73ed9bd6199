/* Unit tests of src/credentials.c (and, through config_load, the checks of
 * src/secret.c as a configuration meets them): the client secret from its
 * file or from systemd's credentials directory, the proxy's credentials and
 * the fleet's key, each refused naming the file when it is missing, not
 * private, not a regular file or malformed. */
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "config-helpers.h"
#include "config.h"
#include "unit.h"
#include "util.h"

/* A configuration file naming secret_path as client_secret_file. */
static char *conf_file(const char *secret_path) {
    char text[1024];

    if (secret_path)
        snprintf(text, sizeof(text), BASE "client_secret_file = %s\n", secret_path);
    else
        snprintf(text, sizeof(text), "%s", BASE);
    return tmp_file(text, strlen(text), 0644);
}

/* config_load with a secret file holding content at mode: the result, and
 * the message in err. */
static int load_with_secret(const char *content, size_t len, mode_t mode, config **c,
                            char err[CONFIG_ERR_MAX], char **ret_secret_path) {
    char *secret = tmp_file(content, len, mode), *conf = conf_file(secret);
    int r;

    *c = NULL;
    err[0] = '\0';
    r = config_load(conf, NULL, c, err);
    free(conf);
    if (ret_secret_path)
        *ret_secret_path = secret;
    else
        free(secret);
    return r;
}

static void secret_loaded_and_newline_stripped(void) {
    static const struct {
        const char *content;
        const char *want;
    } cases[] = {
        { "s3cret\n", "s3cret" },       { "s3cret", "s3cret" },
        { "s3cret\r\n", "s3cret" },     { "s3cret \t\n\n", "s3cret" },
        { "with inner space\n", "with inner space" },
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        char err[CONFIG_ERR_MAX];
        config *c;
        int r = load_with_secret(cases[i].content, strlen(cases[i].content), 0600, &c, err, NULL);
        if (r != 0)
            UNIT_FAIL("refused (%d): %s", r, err);
        ASSERT_STR_EQ(c->client_secret, cases[i].want);
        ASSERT_UINT_EQ(c->client_secret_len, strlen(cases[i].want));
        ASSERT_STR_EQ(c->client_id, "cid");
        config_free(c);
    }
    /* read-only for the owner is fine too */
    {
        char err[CONFIG_ERR_MAX];
        config *c;
        ASSERT_INT_EQ(load_with_secret("ro\n", 3, 0400, &c, err, NULL), 0);
        ASSERT_STR_EQ(c->client_secret, "ro");
        config_free(c);
    }
}

static void secret_missing_file(void) {
    char err[CONFIG_ERR_MAX], *missing = NULL, *conf;
    config *c = NULL;

    ASSERT(asprintf(&missing, "%s/no-such-secret", tmp_dir()) > 0);
    conf = conf_file(missing);
    ASSERT_INT_EQ(config_load(conf, NULL, &c, err), -ENOENT);
    ASSERT(c == NULL);
    ASSERT_CONTAINS(err, missing);
    free(conf);
    free(missing);
}

static void secret_empty_or_blank(void) {
    static const char *const contents[] = { "", "\n", " \t\r\n\n", "   " };
    for (size_t i = 0; i < ARRAY_SIZE(contents); i++) {
        char err[CONFIG_ERR_MAX], *path;
        config *c;
        int r = load_with_secret(contents[i], strlen(contents[i]), 0600, &c, err, &path);
        ASSERT(r < 0);
        ASSERT(c == NULL);
        ASSERT_CONTAINS(err, path);
        ASSERT_CONTAINS(err, "empty");
        free(path);
    }
}

static void secret_readable_by_others_refused(void) {
    static const mode_t modes[] = { 0640, 0604, 0620, 0602, 0610, 0660, 0644 };
    for (size_t i = 0; i < ARRAY_SIZE(modes); i++) {
        char err[CONFIG_ERR_MAX], *path;
        config *c;
        int r = load_with_secret("s3cret\n", 7, modes[i], &c, err, &path);
        if (r != -EPERM)
            UNIT_FAIL("mode %04o: got %d, want -EPERM (%s)", (unsigned)modes[i], r, err);
        ASSERT(c == NULL);
        ASSERT_CONTAINS(err, path);
        ASSERT_CONTAINS(err, "chmod 600");
        free(path);
    }
}

static void secret_symlink_refused(void) {
    char err[CONFIG_ERR_MAX], *target = tmp_file("s3cret\n", 7, 0600), *link = NULL, *conf;
    config *c = NULL;

    ASSERT(asprintf(&link, "%s/secret-link", tmp_dir()) > 0);
    ASSERT(symlink(target, link) == 0);
    conf = conf_file(link);
    ASSERT_INT_EQ(config_load(conf, NULL, &c, err), -ELOOP);
    ASSERT(c == NULL);
    ASSERT_CONTAINS(err, link);
    ASSERT_CONTAINS(err, "symbolic link");
    free(conf);
    free(link);
    free(target);
}

static void secret_not_a_regular_file(void) {
    char err[CONFIG_ERR_MAX], *dir = NULL, *conf;
    config *c = NULL;

    ASSERT(asprintf(&dir, "%s/a-directory", tmp_dir()) > 0);
    ASSERT(mkdir(dir, 0700) == 0);
    conf = conf_file(dir);
    ASSERT(config_load(conf, NULL, &c, err) < 0);
    ASSERT(c == NULL);
    ASSERT_CONTAINS(err, "regular file");
    free(conf);
    free(dir);
}

static void secret_control_character_or_too_big(void) {
    char err[CONFIG_ERR_MAX], big[4098];
    config *c;

    ASSERT(load_with_secret("s3c\x01ret\n", 8, 0600, &c, err, NULL) < 0);
    ASSERT_CONTAINS(err, "control character");
    ASSERT(load_with_secret("line1\nline2\n", 12, 0600, &c, err, NULL) < 0);
    memset(big, 'x', sizeof(big));
    ASSERT_INT_EQ(load_with_secret(big, 4097, 0600, &c, err, NULL), -EFBIG);
    ASSERT_INT_EQ(load_with_secret(big, 4096, 0600, &c, err, NULL), 0);
    ASSERT_UINT_EQ(c->client_secret_len, 4096);
    config_free(c);
}

static void secret_not_configured(void) {
    char err[CONFIG_ERR_MAX], *conf = conf_file(NULL);
    config *c = NULL;

    ASSERT_INT_EQ(config_load(conf, NULL, &c, err), -EINVAL);
    ASSERT(c == NULL);
    ASSERT_STARTS_WITH(err, conf);
    ASSERT_CONTAINS(err, "client_secret_file");
    free(conf);
}

static char *credentials_dir(const char *content, mode_t mode) {
    char *dir = NULL, *file = NULL;
    int fd;

    ASSERT(asprintf(&dir, "%s/creds-XXXXXX", tmp_dir()) > 0);
    ASSERT(mkdtemp(dir));
    ASSERT(asprintf(&file, "%s/client_secret", dir) > 0);
    fd = open(file, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    ASSERT(fd >= 0);
    ASSERT(write(fd, content, strlen(content)) == (ssize_t)strlen(content));
    ASSERT(fchmod(fd, mode) == 0);
    close(fd);
    free(file);
    return dir;
}

static void credentials_directory_takes_precedence(void) {
    char err[CONFIG_ERR_MAX], *file_secret = tmp_file("from-file\n", 10, 0600),
                              *conf = conf_file(file_secret), *creds = credentials_dir("from-creds\n", 0600);
    config *c = NULL;

    ASSERT_INT_EQ(config_load(conf, creds, &c, err), 0);
    ASSERT_STR_EQ(c->client_secret, "from-creds");
    config_free(c);
    /* an empty CREDENTIALS_DIRECTORY means none */
    ASSERT_INT_EQ(config_load(conf, "", &c, err), 0);
    ASSERT_STR_EQ(c->client_secret, "from-file");
    config_free(c);
    free(conf);
    /* the file is not even opened: a bad one does not matter under systemd */
    conf = conf_file("/nonexistent/secret");
    ASSERT_INT_EQ(config_load(conf, creds, &c, err), 0);
    ASSERT_STR_EQ(c->client_secret, "from-creds");
    config_free(c);
    free(conf);
    /* and no client_secret_file at all is fine with a credential */
    conf = conf_file(NULL);
    ASSERT_INT_EQ(config_load(conf, creds, &c, err), 0);
    ASSERT_STR_EQ(c->client_secret, "from-creds");
    config_free(c);
    free(conf);
    free(creds);
    free(file_secret);
}

static void credentials_directory_checked_too(void) {
    char err[CONFIG_ERR_MAX], *file_secret = tmp_file("from-file\n", 10, 0600),
                              *conf = conf_file(file_secret), *empty = NULL, *creds;
    config *c = NULL;

    /* a credential missing from the directory is an error, not a fallback */
    ASSERT(asprintf(&empty, "%s/empty-creds", tmp_dir()) > 0);
    ASSERT(mkdir(empty, 0700) == 0);
    ASSERT_INT_EQ(config_load(conf, empty, &c, err), -ENOENT);
    ASSERT(c == NULL);
    ASSERT_CONTAINS(err, "client_secret");
    /* and the same rules apply to it, but for its group's read access:
     * systemd 257 (Debian 13) makes every credential 0440 */
    static const mode_t refused[] = { 0604, 0620, 0610, 0444, 0660 };
    for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++) {
        creds = credentials_dir("x\n", refused[i]);
        ASSERT_INT_EQ(config_load(conf, creds, &c, err), -EPERM);
        free(creds);
    }
    creds = credentials_dir("from-creds\n", 0440);
    ASSERT_INT_EQ(config_load(conf, creds, &c, err), 0);
    ASSERT_STR_EQ(c->client_secret, "from-creds");
    config_free(c);
    c = NULL;
    free(creds);
    creds = credentials_dir("\n", 0600);
    ASSERT(config_load(conf, creds, &c, err) < 0);
    free(creds);
    free(empty);
    free(conf);
    free(file_secret);
}

/* A FIFO at the secret's path must not block a reload in open() for ever:
 * opened without blocking, it is refused at once. The load runs in a child
 * with a deadline, so a blocking open fails the test instead of hanging it. */
static int load_in_child(const char *conf, int deadline_s) {
    pid_t pid = fork();
    int status;

    ASSERT(pid >= 0);
    if (pid == 0) {
        char err[CONFIG_ERR_MAX];
        config *c = NULL;
        alarm((unsigned)deadline_s);
        int r = config_load(conf, NULL, &c, err);
        fprintf(stderr, "config_load: %d %s\n", r, r < 0 ? err : "");
        _exit(r == -EINVAL && strstr(err, "regular file") && strstr(err, "FIFO") ? 0 : 1);
    }
    ASSERT(waitpid(pid, &status, 0) == pid);
    return status;
}

static void secret_fifo_refused_without_blocking(void) {
    char *fifo = NULL, *conf;
    int status;

    ASSERT(asprintf(&fifo, "%s/secret-fifo", tmp_dir()) > 0);
    ASSERT(mkfifo(fifo, 0600) == 0);
    conf = conf_file(fifo);
    status = load_in_child(conf, 5);
    if (WIFSIGNALED(status))
        UNIT_FAIL("config_load blocked on the FIFO until killed (signal %d)", WTERMSIG(status));
    ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    free(conf);
    free(fifo);
}

static void secret_owned_by_another_user_refused(void) {
    char err[CONFIG_ERR_MAX], *secret = tmp_file("s3cret\n", 7, 0600), *conf;
    config *c = NULL;

    if (geteuid() != 0) {
        fprintf(stderr, "not root: cannot give a file away; checked by CI as root\n");
        free(secret);
        return;
    }
    ASSERT(chown(secret, 65534, (gid_t)-1) == 0);
    conf = conf_file(secret);
    ASSERT_INT_EQ(config_load(conf, NULL, &c, err), -EPERM);
    ASSERT(c == NULL);
    ASSERT_CONTAINS(err, secret);
    ASSERT_CONTAINS(err, "owned by uid 65534");
    free(conf);
    free(secret);
}

static void proxy_credentials_loaded_like_a_secret(void) {
    char err[CONFIG_ERR_MAX], text[1024], *secret = tmp_file("s3cret\n", 7, 0600), *creds, *conf;
    config *c = NULL;

    creds = tmp_file("tokend:pr0xy-pw\n", 16, 0600);
    snprintf(text, sizeof(text), BASE "client_secret_file = %s\nproxy = http://127.0.0.1:3128\n"
             "proxy_credentials_file = %s\n", secret, creds);
    conf = tmp_file(text, strlen(text), 0644);
    ASSERT_INT_EQ(config_load(conf, NULL, &c, err), 0);
    ASSERT_STR_EQ(c->proxy_credentials, "tokend:pr0xy-pw");
    config_free(c);
    free(conf);
    ASSERT(chmod(creds, 0644) == 0);
    conf = tmp_file(text, strlen(text), 0644);
    ASSERT_INT_EQ(config_load(conf, NULL, &c, err), -EPERM);
    ASSERT_CONTAINS(err, creds);
    ASSERT_CONTAINS(err, "proxy's credentials");
    free(conf);
    free(creds);
    creds = tmp_file("no-colon\n", 9, 0600);
    snprintf(text, sizeof(text), BASE "client_secret_file = %s\nproxy = http://127.0.0.1:3128\n"
             "proxy_credentials_file = %s\n", secret, creds);
    conf = tmp_file(text, strlen(text), 0644);
    ASSERT_INT_EQ(config_load(conf, NULL, &c, err), -EINVAL);
    ASSERT_CONTAINS(err, "USER:PASSWORD");
    free(conf);
    free(creds);
    free(secret);
}

#define KEY64 "00112233445566778899aabbccddeeff00112233445566778899AABBCCDDEEFF"

/* The fleet's key: 64 hex digits in a private file, named with file and
 * line when it is anything else. */
static void shared_key_file_checked_like_a_secret(void) {
    char err[CONFIG_ERR_MAX], text[1024], *secret = tmp_file("s3cret\n", 7, 0600), *key, *conf;
    config *c = NULL;

    key = tmp_file(KEY64 "\n", 65, 0600);
    snprintf(text, sizeof(text), BASE "client_secret_file = %s\n[shared]\nredis = 127.0.0.1:6379\n"
             "key_file = %s\n", secret, key);
    conf = tmp_file(text, strlen(text), 0644);
    ASSERT_INT_EQ(config_load(conf, NULL, &c, err), 0);
    ASSERT(c->shared_key[0] == 0x00 && c->shared_key[1] == 0x11 && c->shared_key[31] == 0xff);
    ASSERT(!c->has_shared_previous_key);
    config_free(c);
    free(conf);
    free(key);
    for (int i = 0; i < 3; i++) {
        static const char *const bad[] = { KEY64 "0\n",
                                           "zz112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n", "" };
        key = i < 2 ? tmp_file(bad[i], strlen(bad[i]), 0600) : tmp_file(KEY64 "\n", 65, 0644);
        snprintf(text, sizeof(text), BASE "client_secret_file = %s\n[shared]\nredis = 127.0.0.1:6379\n"
                 "key_file = %s\n", secret, key);
        conf = tmp_file(text, strlen(text), 0644);
        ASSERT(config_load(conf, NULL, &c, err) < 0);
        ASSERT_CONTAINS(err, key);
        if (i < 2) {
            char where[64];
            snprintf(where, sizeof(where), ":%d: [shared] key_file", FIRST_EXTRA_LINE + 3);
            ASSERT_CONTAINS(err, where);
            ASSERT_CONTAINS(err, "64 hex digits");
        }
        free(conf);
        free(key);
    }
    /* fleet mode without a key is refused, saying where one goes */
    snprintf(text, sizeof(text), BASE "client_secret_file = %s\n[shared]\nredis = 127.0.0.1:6379\n", secret);
    conf = tmp_file(text, strlen(text), 0644);
    ASSERT_INT_EQ(config_load(conf, NULL, &c, err), -EINVAL);
    ASSERT_CONTAINS(err, "key_file");
    ASSERT_CONTAINS(err, "shared_key");
    free(conf);
    free(secret);
}

static const unit_test tests[] = {
    TEST(secret_loaded_and_newline_stripped),
    TEST(secret_missing_file),
    TEST(secret_empty_or_blank),
    TEST(secret_readable_by_others_refused),
    TEST(secret_symlink_refused),
    TEST(secret_not_a_regular_file),
    TEST(secret_control_character_or_too_big),
    TEST(secret_not_configured),
    TEST(credentials_directory_takes_precedence),
    TEST(credentials_directory_checked_too),
    TEST(secret_fifo_refused_without_blocking),
    TEST(secret_owned_by_another_user_refused),
    TEST(proxy_credentials_loaded_like_a_secret),
    TEST(shared_key_file_checked_like_a_secret),
};

UNIT_MAIN(tests)
