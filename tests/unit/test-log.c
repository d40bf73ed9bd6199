/* Unit tests of src/log.c: which events are written at which level, what
 * a line on stderr looks like, and, when stderr is the journal's stream,
 * the structured fields sent to the journal instead. stderr is captured in
 * a memfd; the journal is a datagram socket of the test's own, bound where
 * libsystemd sends (/run/systemd/journal/socket) inside a mount namespace
 * of the case's process, so a journald on the machine never sees a thing. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <stdarg.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include "log.h"
#include "unit.h"

/* ---- stderr into a buffer ---- */

static int saved_stderr = -1, capture_fd = -1;
static char captured[8192];

static void capture_begin(void) {
    fflush(stderr);
    capture_fd = memfd_create("stderr", MFD_CLOEXEC);
    ASSERT(capture_fd >= 0);
    saved_stderr = dup(STDERR_FILENO);
    ASSERT(saved_stderr >= 0);
    ASSERT(dup2(capture_fd, STDERR_FILENO) == STDERR_FILENO);
}

/* Back to the real stderr (so failures are seen); returns what was written. */
static const char *capture_end(void) {
    ssize_t n;

    fflush(stderr);
    ASSERT(dup2(saved_stderr, STDERR_FILENO) == STDERR_FILENO);
    close(saved_stderr);
    n = pread(capture_fd, captured, sizeof(captured) - 1, 0);
    ASSERT(n >= 0);
    captured[n] = '\0';
    close(capture_fd);
    return captured;
}

/* Makes the journal detection see stderr (the capture) as its stream. */
static void stderr_is_the_journal_stream(void) {
    struct stat st;
    char v[64];

    ASSERT_INT_EQ(fstat(STDERR_FILENO, &st), 0);
    snprintf(v, sizeof(v), "%llu:%llu", (unsigned long long)st.st_dev, (unsigned long long)st.st_ino);
    ASSERT_INT_EQ(setenv("JOURNAL_STREAM", v, 1), 0);
}

static size_t count_char(const char *s, char c) {
    size_t n = 0;

    for (; *s; s++)
        n += *s == c;
    return n;
}

/* ---- plain lines ---- */

static void levels_parse_by_name(void) {
    ASSERT_INT_EQ(log_level_from_string("error"), LOG_ERR);
    ASSERT_INT_EQ(log_level_from_string("warning"), LOG_WARNING);
    ASSERT_INT_EQ(log_level_from_string("notice"), LOG_NOTICE);
    ASSERT_INT_EQ(log_level_from_string("info"), LOG_INFO);
    ASSERT_INT_EQ(log_level_from_string("debug"), LOG_DEBUG);
    ASSERT_INT_EQ(log_level_from_string("DEBUG"), LOG_DEBUG);
    ASSERT_INT_EQ(log_level_from_string("Warning"), LOG_WARNING);
    /* what the configuration does not offer */
    ASSERT_INT_EQ(log_level_from_string("warn"), -1);
    ASSERT_INT_EQ(log_level_from_string("err"), -1);
    ASSERT_INT_EQ(log_level_from_string("crit"), -1);
    ASSERT_INT_EQ(log_level_from_string("emerg"), -1);
    ASSERT_INT_EQ(log_level_from_string("info "), -1);
    ASSERT_INT_EQ(log_level_from_string(""), -1);
    ASSERT_INT_EQ(log_level_from_string("7"), -1);
}

static void info_is_the_default_level(void) {
    const char *out;

    unsetenv("JOURNAL_STREAM");
    ASSERT_INT_EQ(log_get_max_level(), LOG_INFO);
    capture_begin();
    log_debug("not shown %d", 1);
    log_info("shown %d", 2);
    out = capture_end();
    ASSERT_STR_EQ(out, "instacart-tokend: info: shown 2\n");
}

static void each_level_names_itself(void) {
    const char *out;

    unsetenv("JOURNAL_STREAM");
    log_set_max_level(LOG_DEBUG);
    capture_begin();
    log_error("e");
    log_warning("w");
    log_notice("n");
    log_info("i");
    log_debug("d");
    out = capture_end();
    ASSERT_STR_EQ(out, "instacart-tokend: error: e\n"
                       "instacart-tokend: warning: w\n"
                       "instacart-tokend: notice: n\n"
                       "instacart-tokend: info: i\n"
                       "instacart-tokend: debug: d\n");
}

static void a_lower_level_drops_the_rest(void) {
    const char *out;

    unsetenv("JOURNAL_STREAM");
    log_set_max_level(LOG_WARNING);
    ASSERT_INT_EQ(log_get_max_level(), LOG_WARNING);
    capture_begin();
    log_debug("d");
    log_info("i");
    log_notice("n");
    log_event(LOG_NOTICE, LOG_ID_RELOADED, "A=1", "reloaded");
    log_warning("w");
    log_event(LOG_ERR, LOG_ID_RELOAD_FAILED, NULL, "reload failed");
    out = capture_end();
    ASSERT_STR_EQ(out, "instacart-tokend: warning: w\n"
                       "instacart-tokend: error: reload failed\n");
    /* and a reload raises it again */
    log_set_max_level(LOG_DEBUG);
    capture_begin();
    log_debug("d");
    out = capture_end();
    ASSERT_STR_EQ(out, "instacart-tokend: debug: d\n");
}

/* Plain lines carry the message only: the fields are for the journal. */
static void plain_lines_leave_the_fields_out(void) {
    const char *out;

    unsetenv("JOURNAL_STREAM");
    capture_begin();
    log_event(LOG_INFO, LOG_ID_MINT_OK, "USER_FINGERPRINT=ab12cd34ef56\nLATENCY_MS=12", "mint ok user=%s",
              "ab12cd34ef56");
    out = capture_end();
    ASSERT_STR_EQ(out, "instacart-tokend: info: mint ok user=ab12cd34ef56\n");
}

/* A message longer than a line is cut, and still ends its line. */
static void a_long_message_is_one_cut_line(void) {
    char big[3000];
    const char *out;

    unsetenv("JOURNAL_STREAM");
    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    capture_begin();
    log_warning("%s", big);
    log_info("next");
    out = capture_end();
    ASSERT_STARTS_WITH(out, "instacart-tokend: warning: xxxx");
    ASSERT_INT_EQ(count_char(out, '\n'), 2);
    ASSERT_CONTAINS(out, "x\ninstacart-tokend: info: next\n");
    ASSERT(strlen(out) < 1100 + 30);
}

/* JOURNAL_STREAM inherited from a parent whose stderr was the journal's,
 * while ours goes elsewhere: plain lines, not "<6>" ones. */
static void another_streams_journal_is_not_ours(void) {
    struct stat st;
    char v[64];
    const char *out;

    /* our inode on another device: both must match */
    capture_begin();
    ASSERT_INT_EQ(fstat(STDERR_FILENO, &st), 0);
    snprintf(v, sizeof(v), "%llu:%llu", (unsigned long long)st.st_dev + 1, (unsigned long long)st.st_ino);
    setenv("JOURNAL_STREAM", v, 1);
    log_info("plain");
    out = capture_end();
    ASSERT_STR_EQ(out, "instacart-tokend: info: plain\n");
}

static void another_inode_is_not_ours(void) {
    struct stat st;
    char v[64];
    const char *out;

    capture_begin();
    ASSERT_INT_EQ(fstat(STDERR_FILENO, &st), 0);
    snprintf(v, sizeof(v), "%llu:%llu", (unsigned long long)st.st_dev, (unsigned long long)st.st_ino + 1);
    setenv("JOURNAL_STREAM", v, 1);
    log_info("plain");
    out = capture_end();
    ASSERT_STR_EQ(out, "instacart-tokend: info: plain\n");
}

static void a_malformed_journal_stream_is_ignored(void) {
    struct stat st;
    char v[80];
    const char *out;

    capture_begin();
    ASSERT_INT_EQ(fstat(STDERR_FILENO, &st), 0);
    snprintf(v, sizeof(v), "%llu:%llux", (unsigned long long)st.st_dev, (unsigned long long)st.st_ino);
    setenv("JOURNAL_STREAM", v, 1);
    log_info("plain");
    out = capture_end();
    ASSERT_STR_EQ(out, "instacart-tokend: info: plain\n");
}

/* One event, one line: a newline or a control character in what a caller
 * formats (an error text from outside, say) must not start a line of its
 * own that reads like another event, nor reach a terminal raw. */
static void a_newline_or_control_character_stays_in_its_line(void) {
    const char *out;

    unsetenv("JOURNAL_STREAM");
    capture_begin();
    log_warning("revocation failed: error=%s", "x\ninstacart-tokend: notice: circuit to Instacart closed");
    log_warning("error=%s", "\x1b]0;owned\x07\r\x7f");
    out = capture_end();
    ASSERT_INT_EQ(count_char(out, '\n'), 2);
    for (const char *p = out; *p; p++)
        if (*p != '\n' && ((unsigned char)*p < 0x20 || *p == 0x7f))
            UNIT_FAIL("control character 0x%02x written raw: \"%s\"", (unsigned char)*p, out);
}

/* ---- the journal ---- */

#define JOURNAL_DIR "/run/systemd/journal"
#define JOURNAL_SOCKET JOURNAL_DIR "/socket"

static bool write_file(const char *path, const char *text) {
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    bool ok;

    if (fd < 0)
        return false;
    ok = write(fd, text, strlen(text)) == (ssize_t)strlen(text);
    close(fd);
    return ok;
}

/* A mount namespace of this process with an empty /run: root may make
 * one; anyone else through a user namespace, where the kernel allows it. */
static void private_run(void) {
    uid_t uid = geteuid();
    gid_t gid = getegid();

    if (unshare(CLONE_NEWNS) < 0) {
        char map[64];

        if (unshare(CLONE_NEWUSER | CLONE_NEWNS) < 0)
            UNIT_SKIP("cannot make a mount namespace: %s", strerror(errno));
        snprintf(map, sizeof(map), "0 %u 1", (unsigned)uid);
        ASSERT(write_file("/proc/self/uid_map", map));
        ASSERT(write_file("/proc/self/setgroups", "deny"));
        snprintf(map, sizeof(map), "0 %u 1", (unsigned)gid);
        ASSERT(write_file("/proc/self/gid_map", map));
    }
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
        UNIT_SKIP("cannot make mounts private: %s", strerror(errno));
    if (mount("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755") < 0)
        UNIT_SKIP("cannot mount a tmpfs on /run: %s", strerror(errno));
    ASSERT_INT_EQ(mkdir("/run/systemd", 0755), 0);
    ASSERT_INT_EQ(mkdir(JOURNAL_DIR, 0755), 0);
}

/* A journal of our own: a datagram socket where libsystemd sends. */
static int fake_journal(void) {
    struct sockaddr_un sa = { .sun_family = AF_UNIX, .sun_path = JOURNAL_SOCKET };
    int fd;

    private_run();
    fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    ASSERT(fd >= 0);
    ASSERT_INT_EQ(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    return fd;
}

#define FIELDS_MAX 32

struct entry {
    char data[4096];
    size_t n;
    const char *key[FIELDS_MAX], *value[FIELDS_MAX];
};

/* Receives one entry and reads the journal's native protocol: KEY=value
 * lines, or KEY, a newline, a 64-bit little-endian size and the bytes of a
 * value holding a newline, then a newline. */
static void receive(int fd, struct entry *e) {
    struct pollfd p = { .fd = fd, .events = POLLIN };
    ssize_t len;
    char *s, *end;

    ASSERT_INT_EQ(poll(&p, 1, 10000), 1); /* sent already: a deadline, not a wait */
    len = recv(fd, e->data, sizeof(e->data) - 1, MSG_DONTWAIT);
    ASSERT(len > 0);
    end = e->data + len;
    e->n = 0;
    for (s = e->data; s < end;) {
        char *nl = memchr(s, '\n', (size_t)(end - s)), *eq;

        ASSERT(nl);
        ASSERT(e->n < FIELDS_MAX);
        eq = memchr(s, '=', (size_t)(nl - s));
        if (eq) {
            *eq = *nl = '\0';
            e->key[e->n] = s;
            e->value[e->n++] = eq + 1;
            s = nl + 1;
        } else {
            uint64_t size = 0;

            *nl = '\0';
            ASSERT(end - (nl + 1) >= 8);
            for (int i = 7; i >= 0; i--)
                size = size << 8 | (unsigned char)nl[1 + i];
            ASSERT(size <= (uint64_t)(end - (nl + 9)) - 1);
            e->key[e->n] = s;
            e->value[e->n++] = nl + 9;
            nl[9 + size] = '\0'; /* the newline after the value */
            s = nl + 10 + size;
        }
    }
}

static const char *field(const struct entry *e, const char *key) {
    const char *found = NULL;

    for (size_t i = 0; i < e->n; i++)
        if (strcmp(e->key[i], key) == 0) {
            if (found)
                UNIT_FAIL("field %s sent twice", key);
            found = e->value[i];
        }
    return found;
}

static void nothing_more(int fd) {
    char b[16];

    ASSERT(recv(fd, b, sizeof(b), MSG_DONTWAIT) < 0 && errno == EAGAIN);
}

static void events_go_to_the_journal_with_their_fields(void) {
    int j = fake_journal();
    struct entry e;
    const char *out;

    capture_begin();
    stderr_is_the_journal_stream();
    log_event(LOG_NOTICE, LOG_ID_STARTED, "USER_FINGERPRINT=ab12cd34ef56\nLATENCY_MS=12",
              "listening on %s", "127.0.0.1:8787");
    out = capture_end();
    ASSERT_STR_EQ(out, ""); /* sent once, not also as a line */
    receive(j, &e);
    ASSERT_STR_EQ(field(&e, "MESSAGE"), "listening on 127.0.0.1:8787");
    ASSERT_STR_EQ(field(&e, "PRIORITY"), "5");
    ASSERT_STR_EQ(field(&e, "SYSLOG_IDENTIFIER"), "instacart-tokend");
    ASSERT_STR_EQ(field(&e, "MESSAGE_ID"), "2b0b16f380f647d08e732fa78a228b8a");
    ASSERT_STR_EQ(field(&e, "USER_FINGERPRINT"), "ab12cd34ef56");
    ASSERT_STR_EQ(field(&e, "LATENCY_MS"), "12");
    /* SD_JOURNAL_SUPPRESS_LOCATION: no CODE_FILE=log.c saying nothing */
    ASSERT(!field(&e, "CODE_FILE"));
    ASSERT(!field(&e, "CODE_FUNC"));
    ASSERT_UINT_EQ(e.n, 6);
    nothing_more(j);
}

static void a_plain_message_has_no_message_id(void) {
    int j = fake_journal();
    struct entry e;

    capture_begin();
    stderr_is_the_journal_stream();
    log_warning("watch out");
    capture_end();
    receive(j, &e);
    ASSERT_STR_EQ(field(&e, "MESSAGE"), "watch out");
    ASSERT_STR_EQ(field(&e, "PRIORITY"), "4");
    ASSERT(!field(&e, "MESSAGE_ID"));
    ASSERT_UINT_EQ(e.n, 3);
}

/* A field line without a name is dropped, not sent as a broken entry
 * (which the journal would refuse whole). */
static void a_field_without_a_name_is_dropped(void) {
    int j = fake_journal();
    struct entry e;

    capture_begin();
    stderr_is_the_journal_stream();
    log_event(LOG_INFO, LOG_ID_MINT_OK, "GOOD=1\n=nameless\nno equals sign\n\nALSO_GOOD=2", "m");
    capture_end();
    receive(j, &e);
    ASSERT_STR_EQ(field(&e, "GOOD"), "1");
    ASSERT_STR_EQ(field(&e, "ALSO_GOOD"), "2");
    ASSERT_STR_EQ(field(&e, "MESSAGE"), "m");
    ASSERT_UINT_EQ(e.n, 6);
}

/* In the journal a message is one field whatever it holds: a newline in
 * it cannot forge a field of its own. */
static void a_newline_cannot_forge_a_journal_field(void) {
    int j = fake_journal();
    struct entry e;

    capture_begin();
    stderr_is_the_journal_stream();
    log_event(LOG_WARNING, LOG_ID_MINT_FAILED, NULL, "mint failed error=%s",
              "x\nMESSAGE_ID=" LOG_ID_STARTED "\nPRIORITY=0");
    capture_end();
    receive(j, &e);
    ASSERT_STR_EQ(field(&e, "MESSAGE_ID"), LOG_ID_MINT_FAILED);
    ASSERT_STR_EQ(field(&e, "PRIORITY"), "4");
    ASSERT_STR_EQ(field(&e, "MESSAGE"), "mint failed error=x\nMESSAGE_ID=" LOG_ID_STARTED "\nPRIORITY=0");
}

/* The journal's socket refuses: the event is written on stderr instead,
 * with the "<N>" prefix the journal's stream reads as the priority. */
static void a_refusing_journal_falls_back_to_prefixed_lines(void) {
    int j = fake_journal();
    const char *out;

    close(j); /* bound, nobody reading: ECONNREFUSED */
    capture_begin();
    stderr_is_the_journal_stream();
    log_event(LOG_ERR, LOG_ID_RELOAD_FAILED, "A=1", "reload failed: %s", "bad key");
    log_info("still here");
    out = capture_end();
    ASSERT_STR_EQ(out, "<3>reload failed: bad key\n<6>still here\n");
}

/* stderr is the journal's stream but its socket is not there (a container
 * handed the stream without the socket): the event must still be written
 * somewhere. libsystemd "fails silently" then, returning 0 as if sent. */
static void a_missing_journal_socket_loses_nothing(void) {
    const char *out;

    private_run(); /* /run/systemd/journal is empty */
    capture_begin();
    stderr_is_the_journal_stream();
    log_error("cannot listen on %s", "127.0.0.1:8787");
    out = capture_end();
    ASSERT_STR_EQ(out, "<3>cannot listen on 127.0.0.1:8787\n");
}

/* `journalctl MESSAGE_ID=...` finds every event of a kind, across versions:
 * an id never changes, and each is a 128-bit id as the journal wants it. */
static void message_ids_are_stable(void) {
    static const struct {
        const char *id, *expected;
    } ids[] = {
        { LOG_ID_STARTED, "2b0b16f380f647d08e732fa78a228b8a" },
        { LOG_ID_STOPPING, "e3aca1c8352b47c79e401953a888c0ee" },
        { LOG_ID_RELOADED, "9872fbf695e04da4a062b56a255aa623" },
        { LOG_ID_RELOAD_FAILED, "009e357744a54cc5bdde66588e8c9e9d" },
        { LOG_ID_MINT_OK, "ad808c4429fd4af99c549760518e4f5c" },
        { LOG_ID_MINT_FAILED, "d53af942bf864aff994bcc66e4ed9985" },
        { LOG_ID_CACHE_SAVED, "7adee51d680e4b2ab7646717d30f92e9" },
        { LOG_ID_CACHE_RESTORED, "aed1f6323185465ca83b3b32f0b2ee62" },
        { LOG_ID_CACHE_IGNORED, "604aecc05d174e1484660496a4fbb664" },
    };
    size_t n = sizeof(ids) / sizeof(ids[0]);

    for (size_t i = 0; i < n; i++) {
        ASSERT_STR_EQ(ids[i].id, ids[i].expected);
        ASSERT_UINT_EQ(strlen(ids[i].id), 32);
        ASSERT_UINT_EQ(strspn(ids[i].id, "0123456789abcdef"), 32);
        for (size_t k = 0; k < i; k++)
            ASSERT(strcmp(ids[i].id, ids[k].id) != 0);
    }
}

static const unit_test tests[] = {
    TEST(levels_parse_by_name),
    TEST(info_is_the_default_level),
    TEST(each_level_names_itself),
    TEST(a_lower_level_drops_the_rest),
    TEST(plain_lines_leave_the_fields_out),
    TEST(a_long_message_is_one_cut_line),
    TEST(another_streams_journal_is_not_ours),
    TEST(another_inode_is_not_ours),
    TEST(a_malformed_journal_stream_is_ignored),
    TEST(a_newline_or_control_character_stays_in_its_line),
    TEST(events_go_to_the_journal_with_their_fields),
    TEST(a_plain_message_has_no_message_id),
    TEST(a_field_without_a_name_is_dropped),
    TEST(a_newline_cannot_forge_a_journal_field),
    TEST(a_refusing_journal_falls_back_to_prefixed_lines),
    TEST(a_missing_journal_socket_loses_nothing),
    TEST(message_ids_are_stable),
};

UNIT_MAIN(tests)
