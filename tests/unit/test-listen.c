/* Unit tests of src/listen.c: the HTTP front's listening sockets. TCP on
 * loopback and Unix sockets are bound as the configuration asks (the
 * socket file's mode and group), described as the log and /v1/status say
 * them, and a Unix socket path is never taken from a process that still
 * accepts on it, while one left by a run that ended is replaced. */
#include <arpa/inet.h>
#include <grp.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>

#include "api-internal.h"
#include "config-helpers.h"
#include "util.h"

static config *server_config(const char *server) {
    char text[512];

    snprintf(text, sizeof(text), BASE "[server]\n%s", server);
    return parse_ok(text);
}

/* A path for a Unix socket in the temporary directory. */
static const char *sock_path(const char *name) {
    static char path[sizeof(((struct sockaddr_un *)0)->sun_path)];

    ASSERT(snprintf(path, sizeof(path), "%s/%s", tmp_dir(), name) < (int)sizeof(path));
    return path;
}

/* A socket bound at path and never listened on, closed without unlinking:
 * what a run that ended leaves behind. */
static void leave_stale_socket(const char *path) {
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);

    ASSERT(fd >= 0);
    ASSERT(snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path) < (int)sizeof(sa.sun_path));
    ASSERT_INT_EQ(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    close(fd);
}

static int connect_unix(const char *path) {
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    int fd = socket(AF_UNIX, SOCK_STREAM, 0), r;

    ASSERT(fd >= 0);
    ASSERT(snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path) < (int)sizeof(sa.sun_path));
    r = connect(fd, (struct sockaddr *)&sa, sizeof(sa));
    close(fd);
    return r;
}

static struct listener described(int fd) {
    struct listener l = { .fd = fd };

    listen_describe(&l);
    return l;
}

/* ---- the cases ---- */

static void tcp_on_loopback_is_bound_and_described_with_its_port(void) {
    config *cfg = server_config("");
    char err[256];
    struct listener l;
    struct sockaddr_in sa = { .sin_family = AF_INET };
    unsigned port = 0;
    int fd = -1, c;

    ASSERT_INT_EQ(listen_bind(cfg, "127.0.0.1:0", &fd, err, sizeof(err)), 0);
    l = described(fd);
    ASSERT_STARTS_WITH(l.address, "127.0.0.1:");
    ASSERT(!l.unix_socket);
    ASSERT_INT_EQ(sscanf(l.address, "127.0.0.1:%u", &port), 1);
    ASSERT(port > 0);
    /* it listens: a caller connects to the port described */
    c = socket(AF_INET, SOCK_STREAM, 0);
    sa.sin_port = htons((uint16_t)port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_INT_EQ(connect(c, (struct sockaddr *)&sa, sizeof(sa)), 0);
    close(c);
    listen_close(&l);
    ASSERT_INT_EQ(l.fd, -1);
    config_free(cfg);
}

static void tcp_on_ipv6_loopback_is_described_in_brackets(void) {
    config *cfg = server_config("");
    char err[256];
    struct listener l;
    int fd = -1, r;

    r = listen_bind(cfg, "[::1]:0", &fd, err, sizeof(err));
    if (r == -EADDRNOTAVAIL || r == -EAFNOSUPPORT)
        UNIT_SKIP("no IPv6 loopback here (%s)", strerror(-r));
    ASSERT_INT_EQ(r, 0);
    l = described(fd);
    ASSERT_STARTS_WITH(l.address, "[::1]:");
    ASSERT(strlen(l.address) > strlen("[::1]:"));
    listen_close(&l);
    config_free(cfg);
}

static void an_address_that_is_not_one_is_refused(void) {
    config *cfg = server_config("");
    char err[256];
    int fd = -1;

    ASSERT_INT_EQ(listen_bind(cfg, "127.0.0.1", &fd, err, sizeof(err)), -EINVAL);
    ASSERT_INT_EQ(listen_bind(cfg, "127.0.0.1:65536", &fd, err, sizeof(err)), -EINVAL);
    ASSERT_INT_EQ(listen_bind(cfg, "unix:relative/path", &fd, err, sizeof(err)), -EINVAL);
    ASSERT_INT_EQ(fd, -1); /* written only on success */
    config_free(cfg);
}

/* A Unix socket gets socket_mode and socket_group, and is removed when
 * the listener we bound closes. */
static void a_unix_socket_gets_its_mode_and_group(void) {
    const struct group *g = getuid() == 0 ? getgrnam("daemon") : getgrgid(getgid());
    config *cfg;
    char server[128], err[256], path[108], spec[120];
    struct listener l;
    struct stat st;
    int fd = -1;

    ASSERT(g);
    snprintf(server, sizeof(server), "socket_mode = 0640\nsocket_group = %s\n", g->gr_name);
    cfg = server_config(server);
    ASSERT(snprintf(path, sizeof(path), "%s", sock_path("api.sock")) < (int)sizeof(path));
    ASSERT(snprintf(spec, sizeof(spec), "unix:%s", path) < (int)sizeof(spec));
    ASSERT_INT_EQ(listen_bind(cfg, spec, &fd, err, sizeof(err)), 0);
    ASSERT_INT_EQ(lstat(path, &st), 0);
    ASSERT(S_ISSOCK(st.st_mode));
    ASSERT_INT_EQ(st.st_mode & 07777, 0640);
    ASSERT_INT_EQ(st.st_gid, g->gr_gid);
    ASSERT_INT_EQ(connect_unix(path), 0);

    l = described(fd);
    ASSERT(l.unix_socket);
    ASSERT_STARTS_WITH(l.address, "unix:");
    ASSERT_STR_EQ(l.address + 5, path);
    l.bound = true;
    listen_close(&l);
    ASSERT(lstat(path, &st) < 0 && errno == ENOENT);
    config_free(cfg);
}

/* The default mode is 0660, and another mode is taken as given. */
static void a_unix_socket_gets_the_default_mode_or_the_one_set(void) {
    config *cfg = server_config(""), *open_cfg = server_config("socket_mode = 0666\n");
    char err[256], spec[120];
    struct stat st;
    int fd = -1, fd2 = -1;

    ASSERT(snprintf(spec, sizeof(spec), "unix:%s", sock_path("default.sock")) < (int)sizeof(spec));
    ASSERT_INT_EQ(listen_bind(cfg, spec, &fd, err, sizeof(err)), 0);
    ASSERT_INT_EQ(lstat(spec + 5, &st), 0);
    ASSERT_INT_EQ(st.st_mode & 07777, 0660);
    ASSERT(snprintf(spec, sizeof(spec), "unix:%s", sock_path("open.sock")) < (int)sizeof(spec));
    ASSERT_INT_EQ(listen_bind(open_cfg, spec, &fd2, err, sizeof(err)), 0);
    ASSERT_INT_EQ(lstat(spec + 5, &st), 0);
    ASSERT_INT_EQ(st.st_mode & 07777, 0666);
    close(fd);
    close(fd2);
    config_free(cfg);
    config_free(open_cfg);
}

/* A socket another process accepts on is not taken over: the bind is
 * refused, naming the path and that process, and the socket still
 * works. Once that process is gone, its socket is stale and replaced. */
static void a_live_socket_of_another_process_is_refused_a_stale_one_replaced(void) {
    config *cfg = server_config("");
    char err[256], spec[120], want[32], ready;
    int fds[2], fd = -1;
    pid_t pid;

    ASSERT(snprintf(spec, sizeof(spec), "unix:%s", sock_path("shared.sock")) < (int)sizeof(spec));
    ASSERT_INT_EQ(pipe(fds), 0);
    pid = fork();
    ASSERT(pid >= 0);
    if (pid == 0) {
        char e[256];
        int lfd = -1;
        prctl(PR_SET_PDEATHSIG, SIGKILL); /* gone with the case, even one that failed */
        close(fds[0]);
        /* _exit() only: exit() would run the parent's cleanup of the directory */
        if (listen_bind(cfg, spec, &lfd, e, sizeof(e)) != 0 || write(fds[1], "r", 1) != 1)
            _exit(1);
        pause(); /* accepts nothing, but listens: connections wait in the backlog */
        _exit(0);
    }
    close(fds[1]);
    ASSERT_INT_EQ(read(fds[0], &ready, 1), 1); /* the child listens */
    close(fds[0]);

    ASSERT_INT_EQ(listen_bind(cfg, spec, &fd, err, sizeof(err)), -EADDRINUSE);
    ASSERT_INT_EQ(fd, -1);
    ASSERT_CONTAINS(err, spec + 5);
    snprintf(want, sizeof(want), "process %d", (int)pid);
    ASSERT_CONTAINS(err, want);
    ASSERT_INT_EQ(connect_unix(spec + 5), 0); /* still the child's */

    kill(pid, SIGKILL);
    ASSERT_INT_EQ(waitpid(pid, NULL, 0), pid);
    /* the child's socket file is left, with nobody listening: stale */
    ASSERT(connect_unix(spec + 5) < 0 && errno == ECONNREFUSED);
    ASSERT_INT_EQ(listen_bind(cfg, spec, &fd, err, sizeof(err)), 0);
    ASSERT_INT_EQ(connect_unix(spec + 5), 0); /* ours now */
    close(fd);
    config_free(cfg);
}

static void a_stale_socket_left_by_an_ended_run_is_replaced(void) {
    config *cfg = server_config("");
    char err[256], spec[120];
    int fd = -1;

    ASSERT(snprintf(spec, sizeof(spec), "unix:%s", sock_path("stale.sock")) < (int)sizeof(spec));
    leave_stale_socket(spec + 5);
    ASSERT(connect_unix(spec + 5) < 0 && errno == ECONNREFUSED);
    ASSERT_INT_EQ(listen_bind(cfg, spec, &fd, err, sizeof(err)), 0);
    ASSERT_INT_EQ(connect_unix(spec + 5), 0);
    close(fd);
    config_free(cfg);
}

/* Anything but a socket at the path is somebody's file: left alone, and
 * the bind fails. */
static void a_file_that_is_not_a_socket_is_left_alone(void) {
    config *cfg = server_config("");
    char err[256], spec[120], buf[16] = "";
    int fd = -1;
    FILE *f;

    ASSERT(snprintf(spec, sizeof(spec), "unix:%s", sock_path("notes.txt")) < (int)sizeof(spec));
    f = fopen(spec + 5, "w");
    ASSERT(f);
    fputs("keep me", f);
    fclose(f);
    ASSERT_INT_EQ(listen_bind(cfg, spec, &fd, err, sizeof(err)), -EADDRINUSE);
    ASSERT_INT_EQ(fd, -1);
    f = fopen(spec + 5, "r");
    ASSERT(f);
    ASSERT(fgets(buf, sizeof(buf), f));
    fclose(f);
    ASSERT_STR_EQ(buf, "keep me");
    config_free(cfg);
}

/* A socket systemd passed (not bound by us) is not ours to remove. */
static void closing_a_socket_we_did_not_bind_leaves_its_file(void) {
    config *cfg = server_config("");
    char err[256], spec[120];
    struct listener l;
    struct stat st;
    int fd = -1;

    ASSERT(snprintf(spec, sizeof(spec), "unix:%s", sock_path("passed.sock")) < (int)sizeof(spec));
    ASSERT_INT_EQ(listen_bind(cfg, spec, &fd, err, sizeof(err)), 0);
    l = described(fd);
    l.inherited = true;
    listen_close(&l);
    ASSERT_INT_EQ(l.fd, -1);
    ASSERT_INT_EQ(lstat(spec + 5, &st), 0);
    config_free(cfg);
}

static const unit_test tests[] = {
    TEST(tcp_on_loopback_is_bound_and_described_with_its_port),
    TEST(tcp_on_ipv6_loopback_is_described_in_brackets),
    TEST(an_address_that_is_not_one_is_refused),
    TEST(a_unix_socket_gets_its_mode_and_group),
    TEST(a_unix_socket_gets_the_default_mode_or_the_one_set),
    TEST(a_live_socket_of_another_process_is_refused_a_stale_one_replaced),
    TEST(a_stale_socket_left_by_an_ended_run_is_replaced),
    TEST(a_file_that_is_not_a_socket_is_left_alone),
    TEST(closing_a_socket_we_did_not_bind_leaves_its_file),
};

UNIT_MAIN(tests)
