/* Unit tests of src/secret.c: reading the client secret and the other
 * files that hold or guard a secret. What is read must be exactly the
 * secret (an editor's trailing newline is not part of it), and a file that
 * other local users can read, or that is not a plain file, is refused with
 * a message naming the file and saying what to do. */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include "secret.h"
#include "unit.h"

static char dir[] = "/tmp/tokend-test-secret-XXXXXX";
static char path[sizeof(dir) + 64];
static char err[512];

static int remove_one(const char *p, const struct stat *st, int flag, struct FTW *ftw) {
    return remove(p);
}

static void remove_dir(void) {
    /* the credentials test leaves a directory without write access */
    chmod(dir, 0700);
    nftw(dir, remove_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* Each case (a process of its own) works in a fresh directory, removed
 * when it exits, failed or not. */
static void make_dir(void) {
    static bool made;

    if (made)
        return;
    ASSERT(mkdtemp(dir));
    made = true;
    atexit(remove_dir);
}

/* A file in the test's directory with these bytes and mode. */
static const char *file(const char *name, const char *content, size_t len, mode_t mode) {
    int fd;

    make_dir();
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    unlink(path);
    fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    ASSERT(fd >= 0);
    ASSERT(write(fd, content, len) == (ssize_t)len);
    ASSERT_INT_EQ(fchmod(fd, mode), 0);
    ASSERT_INT_EQ(close(fd), 0);
    return path;
}

static const char *text_file(const char *name, const char *content, mode_t mode) {
    return file(name, content, strlen(content), mode);
}

/* Loads path as the client secret; expects success and returns the secret. */
static char *load_ok(const char *p, size_t *len) {
    char *s = NULL;
    int r;

    err[0] = '\0';
    r = secret_load(p, &s, len, err, sizeof(err));
    if (r != 0)
        UNIT_FAIL("secret_load(%s) = %d: %s", p, r, err);
    ASSERT(s);
    ASSERT_UINT_EQ(strlen(s), *len);
    return s;
}

/* Expects a refusal with code r; checks the outputs are left alone and the
 * message names the file. */
static void load_fails(const char *p, int r) {
    char *s = (char *)"untouched";
    size_t len = 12345;

    err[0] = '\0';
    ASSERT_INT_EQ(secret_load(p, &s, &len, err, sizeof(err)), r);
    ASSERT_STR_EQ(s, "untouched");
    ASSERT_UINT_EQ(len, 12345);
    ASSERT_STARTS_WITH(err, p);
}

static void trailing_newline_is_not_part_of_it(void) {
    static const char *const written[] = { "s3cr3t-V4lue\n", "s3cr3t-V4lue\r\n", "s3cr3t-V4lue \t\n\n",
                                           "s3cr3t-V4lue" };
    size_t len;

    for (size_t i = 0; i < sizeof(written) / sizeof(written[0]); i++) {
        char *s = load_ok(text_file("secret", written[i], 0600), &len);
        ASSERT_STR_EQ(s, "s3cr3t-V4lue");
        ASSERT_UINT_EQ(len, 12);
        free(s);
    }
}

/* Only the end is trimmed: spaces inside or in front are the secret's (a
 * tab there is a control character, refused below). */
static void inner_and_leading_spaces_are_kept(void) {
    size_t len;
    char *s = load_ok(text_file("secret", "  a b c \n", 0600), &len);

    ASSERT_STR_EQ(s, "  a b c");
    ASSERT_UINT_EQ(len, 7);
    free(s);
}

static void utf8_is_taken_as_it_is(void) {
    size_t len;
    char *s = load_ok(text_file("secret", "cl\xc3\xa9-\xe2\x82\xac\n", 0600), &len);

    ASSERT_STR_EQ(s, "cl\xc3\xa9-\xe2\x82\xac");
    free(s);
}

static void empty_file_is_refused_by_name(void) {
    const char *p = text_file("secret", "", 0600);

    load_fails(p, -ENODATA);
    ASSERT_CONTAINS(err, "the client secret is empty");
    /* only white space: empty as well */
    p = text_file("secret", " \n\t\r\n", 0600);
    load_fails(p, -ENODATA);
    ASSERT_CONTAINS(err, "is empty");
}

/* A newline inside would end the secret early in a form body; any other
 * control character is a copy-paste accident. */
static void control_characters_inside_are_refused(void) {
    /* '~' is not in mkdtemp's alphabet: only a quoted secret puts it in err */
    static const char *const bad[] = { "ab\n~cd", "ab\r~cd", "ab\x01~cd", "ab\x7f~cd", "\t~abcd" };

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        load_fails(text_file("secret", bad[i], 0600), -EINVAL);
        ASSERT_CONTAINS(err, "control character");
        /* the message never quotes the secret */
        ASSERT_NOT_CONTAINS(err, "~");
    }
    /* a NUL byte too: it would cut the secret short */
    load_fails(file("secret", "ab\0cd", 5, 0600), -EINVAL);
    ASSERT_CONTAINS(err, "control character");
}

static void too_long_is_refused(void) {
    char *big = malloc(SECRET_MAX + 2);
    size_t len;
    char *s;

    ASSERT(big);
    memset(big, 'k', SECRET_MAX + 1);
    /* SECRET_MAX bytes: the longest taken */
    s = load_ok(file("secret", big, SECRET_MAX, 0600), &len);
    ASSERT_UINT_EQ(len, SECRET_MAX);
    free(s);
    load_fails(file("secret", big, SECRET_MAX + 1, 0600), -EFBIG);
    ASSERT_CONTAINS(err, "larger than 4096 bytes");
    free(big);
}

static void group_or_others_access_is_refused(void) {
    static const mode_t bad[] = { 0640, 0604, 0644, 0660, 0610, 0601, 0440 };
    size_t len;
    char *s;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char mode[8];

        load_fails(text_file("secret", "abc\n", bad[i]), -EPERM);
        snprintf(mode, sizeof(mode), "%04o", (unsigned)bad[i]);
        ASSERT_CONTAINS(err, mode);
        ASSERT_CONTAINS(err, "run 'chmod 600 ");
        ASSERT_CONTAINS(err, path);
    }
    s = load_ok(text_file("secret", "abc\n", 0400), &len);
    free(s);
    s = load_ok(text_file("secret", "abc\n", 0600), &len);
    free(s);
}

static void another_owner_is_refused(void) {
    const char *p;

    if (geteuid() != 0)
        UNIT_SKIP("needs root to give a file to another user");
    p = text_file("secret", "abc\n", 0600);
    ASSERT_INT_EQ(chown(p, 4242, 4242), 0);
    load_fails(p, -EPERM);
    ASSERT_CONTAINS(err, "owned by uid 4242");
    ASSERT_CONTAINS(err, "chown root");
}

static void a_directory_is_refused(void) {
    make_dir();
    load_fails(dir, -EINVAL);
    ASSERT_CONTAINS(err, "the client secret must be a regular file, not a directory");
}

static void a_device_is_refused(void) {
    load_fails("/dev/null", -EINVAL);
    ASSERT_CONTAINS(err, "not a device");
}

static void on_alarm(int sig) {
    static const char msg[] = "opening a FIFO blocked\n";
    (void)sig;
    (void)!write(STDERR_FILENO, msg, sizeof(msg) - 1);
    _exit(EXIT_FAILURE);
}

/* A FIFO planted at the path must not wedge a start or a reload. */
static void a_fifo_is_refused_without_blocking(void) {
    make_dir();
    snprintf(path, sizeof(path), "%s/fifo", dir);
    ASSERT_INT_EQ(mkfifo(path, 0600), 0);
    signal(SIGALRM, on_alarm);
    alarm(20); /* a deadline: with no writer, a blocking open never returns */
    load_fails(path, -EINVAL);
    alarm(0);
    ASSERT_CONTAINS(err, "not a FIFO");
}

static void a_missing_file_says_so(void) {
    make_dir();
    snprintf(path, sizeof(path), "%s/nothing-here", dir);
    load_fails(path, -ENOENT);
    ASSERT_CONTAINS(err, "cannot open the client secret");
    ASSERT_CONTAINS(err, strerror(ENOENT));
}

/* A link could point anywhere another user can write; refused even when
 * what it points to would pass. */
static void a_symbolic_link_is_refused(void) {
    char link_path[sizeof(dir) + 16];
    size_t len;
    char *s;

    text_file("secret", "abc\n", 0600);
    snprintf(link_path, sizeof(link_path), "%s/link", dir);
    ASSERT_INT_EQ(symlink(path, link_path), 0);
    load_fails(link_path, -ELOOP);
    ASSERT_CONTAINS(err, "symbolic links are refused");
    /* the configuration may be a link (PLAIN) */
    err[0] = '\0';
    {
        int fd = secret_file_open(link_path, "the configuration", SECRET_FILE_PLAIN, err, sizeof(err));
        ASSERT(fd >= 0);
        close(fd);
    }
    s = load_ok(path, &len);
    free(s);
}

/* Other secret files name themselves in messages. */
static void named_files_say_what_they_are(void) {
    char *s = (char *)"untouched";
    size_t len = 0;
    const char *p = text_file("password", "", 0600);

    ASSERT_INT_EQ(secret_load_named(p, "the Redis password", &s, &len, err, sizeof(err)), -ENODATA);
    ASSERT_CONTAINS(err, "the Redis password is empty");
    ASSERT_NOT_CONTAINS(err, "client secret");
    ASSERT_INT_EQ(secret_load_named(p, "the Redis password", &s, &len, err, sizeof(err)), -ENODATA);
    p = text_file("password", "pw\n", 0644);
    ASSERT_INT_EQ(secret_load_named(p, "the Redis password", &s, &len, err, sizeof(err)), -EPERM);
    ASSERT_CONTAINS(err, "the Redis password is accessible to group or others");
    p = text_file("password", "pw\n", 0600);
    ASSERT_INT_EQ(secret_load_named(p, "the Redis password", &s, &len, err, sizeof(err)), 0);
    ASSERT_STR_EQ(s, "pw");
    free(s);
}

/* systemd's credentials directory ($CREDENTIALS_DIRECTORY/client_secret):
 * systemd 257 makes a credential 0440 (readable by the service's group),
 * which is fine there; write or execute for the group, or anything for
 * others, is not. */
static void a_systemd_credential_may_be_group_readable(void) {
    static const mode_t ok[] = { 0400, 0440, 0600, 0640 };
    static const mode_t bad[] = { 0444, 0460, 0404, 0450, 0442 };
    char cred_dir[sizeof(dir) + 16];

    make_dir();
    snprintf(cred_dir, sizeof(cred_dir), "%s/credentials", dir);
    ASSERT_INT_EQ(mkdir(cred_dir, 0500), 0);
    snprintf(path, sizeof(path), "%s/client_secret", cred_dir);
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        char *s = NULL;
        size_t len = 0;
        int fd;

        ASSERT_INT_EQ(chmod(cred_dir, 0700), 0);
        unlink(path);
        fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        ASSERT(fd >= 0);
        ASSERT(write(fd, "from-systemd\n", 13) == 13);
        ASSERT_INT_EQ(fchmod(fd, ok[i]), 0);
        close(fd);
        ASSERT_INT_EQ(chmod(cred_dir, 0500), 0);
        if (secret_load_credential(path, &s, &len, err, sizeof(err)) != 0)
            UNIT_FAIL("mode %04o: %s", (unsigned)ok[i], err);
        ASSERT_STR_EQ(s, "from-systemd");
        ASSERT_UINT_EQ(len, 12);
        free(s);
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char *s = NULL;
        size_t len = 0;

        ASSERT_INT_EQ(chmod(path, bad[i]), 0);
        ASSERT_INT_EQ(secret_load_credential(path, &s, &len, err, sizeof(err)), -EPERM);
        ASSERT(!s);
        ASSERT_STARTS_WITH(err, path);
        ASSERT_CONTAINS(err, "accessible to group or others");
    }
    ASSERT_INT_EQ(chmod(cred_dir, 0700), 0);
}

/* The API keys file guards access: anyone may read it, nobody but its
 * owner may change it. */
static void a_guard_file_must_not_be_writable_by_others(void) {
    static const mode_t ok[] = { 0644, 0444, 0600, 0604 };
    static const mode_t bad[] = { 0664, 0646, 0666, 0620 };

    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        int fd = secret_file_open(text_file("keys", "k\n", ok[i]), "the API keys file", SECRET_FILE_GUARD,
                                  err, sizeof(err));
        if (fd < 0)
            UNIT_FAIL("mode %04o: %s", (unsigned)ok[i], err);
        close(fd);
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        ASSERT_INT_EQ(secret_file_open(text_file("keys", "k\n", bad[i]), "the API keys file",
                                       SECRET_FILE_GUARD, err, sizeof(err)),
                      -EPERM);
        ASSERT_CONTAINS(err, "the API keys file is writable by group or others");
        ASSERT_CONTAINS(err, "chmod go-w");
    }
}

/* What secret_file_open hands back reads like any file (blocking, so a
 * short read is not mistaken for the end) and does not leak into children. */
static void the_descriptor_is_blocking_and_close_on_exec(void) {
    int fd = secret_file_open(text_file("secret", "abc", 0600), "the client secret", SECRET_FILE_PRIVATE,
                              err, sizeof(err));
    char buf[8];

    ASSERT(fd >= 0);
    ASSERT(fcntl(fd, F_GETFD) & FD_CLOEXEC);
    ASSERT(!(fcntl(fd, F_GETFL) & O_NONBLOCK));
    ASSERT_INT_EQ(fcntl(fd, F_GETFL) & O_ACCMODE, O_RDONLY);
    ASSERT_INT_EQ(read(fd, buf, sizeof(buf)), 3);
    close(fd);
}

static const unit_test tests[] = {
    TEST(trailing_newline_is_not_part_of_it),
    TEST(inner_and_leading_spaces_are_kept),
    TEST(utf8_is_taken_as_it_is),
    TEST(empty_file_is_refused_by_name),
    TEST(control_characters_inside_are_refused),
    TEST(too_long_is_refused),
    TEST(group_or_others_access_is_refused),
    TEST(another_owner_is_refused),
    TEST(a_directory_is_refused),
    TEST(a_device_is_refused),
    TEST(a_fifo_is_refused_without_blocking),
    TEST(a_missing_file_says_so),
    TEST(a_symbolic_link_is_refused),
    TEST(named_files_say_what_they_are),
    TEST(a_systemd_credential_may_be_group_readable),
    TEST(a_guard_file_must_not_be_writable_by_others),
    TEST(the_descriptor_is_blocking_and_close_on_exec),
};

UNIT_MAIN(tests)
