/* systemd glue. Responsible for: everything said to or taken from the
 * service manager (sd_notify's READY, RELOADING, STATUS, STOPPING and
 * WATCHDOG; LISTEN_FDS; the file descriptor store) and the watchdog's probe
 * of our own HTTP server. Not responsible for deciding when the daemon is
 * ready or healthy (main.c decides; this module only says it).
 *
 * Also the two helper modes of the unit's ExecReload= (below): staging the
 * credentials systemd loaded, and a reload that waits for the daemon's
 * verdict.
 *
 * libsystemd is used here and for the journal in log.c, nowhere else. */
#include "sd.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <systemd/sd-bus.h>
#include <systemd/sd-daemon.h>
#include <time.h>
#include <unistd.h>

#include "address.h"
#include "config.h"
#include "log.h"
#include "util.h"

int systemd_take_fds(int *ret_listen_fd, int *ret_cache_fd) {
    char **names = NULL;
    int n, listen_fd = -1, cache_fd = -1;

    n = sd_listen_fds_with_names(1, &names);
    if (n < 0) {
        log_warning("systemd passed unusable descriptors (LISTEN_FDS): %s; ignoring them", strerror(-n));
        *ret_listen_fd = *ret_cache_fd = -1;
        return n;
    }
    for (int i = 0; i < n; i++) {
        int fd = SD_LISTEN_FDS_START + i;
        const char *name = names && names[i] ? names[i] : "unknown";

        fcntl(fd, F_SETFD, FD_CLOEXEC);
        if (strcmp(name, SYSTEMD_FDNAME_CACHE) == 0) {
            /* the last one stored is the newest */
            if (cache_fd >= 0)
                close(cache_fd);
            cache_fd = fd;
        } else if (listen_fd < 0 && sd_is_socket(fd, AF_UNSPEC, SOCK_STREAM, 1) > 0) {
            listen_fd = fd;
        } else {
            log_warning("ignoring descriptor %d named '%s' passed by systemd: tokend takes one "
                        "listening stream socket and the '%s' store", fd, name, SYSTEMD_FDNAME_CACHE);
            close(fd);
        }
    }
    if (names) {
        for (int i = 0; i < n; i++)
            free(names[i]);
        free(names);
    }
    *ret_listen_fd = listen_fd;
    *ret_cache_fd = cache_fd;
    return n;
}

bool systemd_notifying(void) {
    const char *s = getenv("NOTIFY_SOCKET");
    return s && *s;
}

static int notifyf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int notifyf(const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    int n;

    if (!systemd_notifying())
        return 0;
    va_start(ap, fmt);
    n = vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (n < 0)
        return -EINVAL;
    return sd_notify(0, msg);
}

int systemd_ready(const char *status) {
    return notifyf("READY=1\nSTATUS=%s", status);
}

int systemd_reloading(void) {
    struct timespec ts;

    /* MONOTONIC_USEC lets systemd 253+ tell this reload from an earlier one */
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return notifyf("RELOADING=1\nSTATUS=Reloading the configuration\nMONOTONIC_USEC=%llu",
                   (unsigned long long)ts.tv_sec * 1000000ULL + (unsigned long long)ts.tv_nsec / 1000);
}

int systemd_status(const char *status) {
    return notifyf("STATUS=%s", status);
}

int systemd_stopping(const char *status) {
    return notifyf("STOPPING=1\nSTATUS=%s", status);
}

int systemd_watchdog_ping(void) {
    return notifyf("WATCHDOG=1");
}

uint64_t systemd_watchdog_usec(void) {
    uint64_t usec = 0;

    if (sd_watchdog_enabled(0, &usec) <= 0)
        return 0;
    return usec;
}

int systemd_store_fd(int fd, const char *name, uint64_t timeout_ms) {
    char msg[128];
    int r;

    if (!systemd_notifying())
        return 0;
    snprintf(msg, sizeof(msg), "FDSTORE=1\nFDNAME=%s", name);
    r = sd_pid_notify_with_fds(0, 0, msg, &fd, 1);
    if (r <= 0)
        return r;
    /* systemd reads its notification socket before it reaps us, but only
     * the barrier says it got there: wait for it, bounded */
    r = sd_notify_barrier(0, timeout_ms * 1000);
    return r < 0 ? r : 1;
}

int systemd_store_remove(const char *name) {
    return notifyf("FDSTOREREMOVE=1\nFDNAME=%s", name);
}

/* ---- the watchdog's probe ---- */

static int wait_fd(int fd, short events, uint64_t deadline) {
    for (;;) {
        struct pollfd p = { .fd = fd, .events = events };
        uint64_t now = now_ms();
        int r;

        if (now >= deadline)
            return -ETIMEDOUT;
        r = poll(&p, 1, (int)(deadline - now));
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -errno;
        if (r > 0)
            return 0;
    }
}

int systemd_probe_http(const char *address, uint64_t timeout_ms) {
    static const char req[] = "GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    struct sockaddr_storage ss;
    socklen_t sl;
    bool loopback;
    uint64_t deadline = now_ms() + timeout_ms;
    char buf[64];
    size_t got = 0, sent = 0;
    int fd, r, err = 0;
    socklen_t errlen = sizeof(err);

    if (address_listen_parse(address, &ss, &sl, &loopback) < 0)
        return -EINVAL;
    if (ss.ss_family == AF_INET) {
        struct sockaddr_in *a = (struct sockaddr_in *)&ss;
        if (a->sin_addr.s_addr == htonl(INADDR_ANY))
            a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    } else {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
        if (IN6_IS_ADDR_UNSPECIFIED(&a->sin6_addr))
            a->sin6_addr = in6addr_loopback;
    }
    fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return -errno;
    if (connect(fd, (struct sockaddr *)&ss, sl) < 0 && errno != EINPROGRESS) {
        r = -errno;
        goto out;
    }
    r = wait_fd(fd, POLLOUT, deadline);
    if (r < 0)
        goto out;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &errlen) < 0 || err) {
        r = err ? -err : -errno;
        goto out;
    }
    while (sent < sizeof(req) - 1) {
        ssize_t n = send(fd, req + sent, sizeof(req) - 1 - sent, MSG_NOSIGNAL);
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
            r = wait_fd(fd, POLLOUT, deadline);
            if (r < 0)
                goto out;
            continue;
        }
        if (n < 0) {
            r = -errno;
            goto out;
        }
        sent += (size_t)n;
    }
    /* the status line is enough: "HTTP/1.1 200 " */
    while (got < 13) {
        ssize_t n = recv(fd, buf + got, sizeof(buf) - 1 - got, 0);
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
            r = wait_fd(fd, POLLIN, deadline);
            if (r < 0)
                goto out;
            continue;
        }
        if (n <= 0) {
            r = n < 0 ? -errno : -ECONNRESET;
            goto out;
        }
        got += (size_t)n;
    }
    buf[got] = '\0';
    r = strncmp(buf, "HTTP/1.1 200 ", 13) == 0 || strncmp(buf, "HTTP/1.0 200 ", 13) == 0 ? 0 : -EPROTO;
out:
    close(fd);
    return r;
}

/* ---- reload under systemd ----
 *
 * systemd copies LoadCredential= only when the service starts, and
 * `systemctl reload` waits only for ExecReload= to exit. So the unit's
 * ExecReload= runs tokend twice: first as root ("+"), staging a fresh copy
 * of every credential the unit loads into the runtime directory
 * (systemd_stage_credentials), then as the service itself, with its user,
 * sandbox and credentials, to check the configuration as the daemon will
 * see it, signal the daemon and wait for its verdict
 * (systemd_reload_request). The daemon reads the staged copies, deletes
 * them and writes its verdict into the runtime directory
 * (systemd_reload_confirm). */

#define RELOAD_RESULT "reload-result"
#define STAGED_FROM ".from" /* beside a staged copy: the operator's file it came from */
#define STAGED_MAX (64 * 1024)

static const char *runtime_dir(void) {
    const char *rt = getenv("RUNTIME_DIRECTORY");

    /* several directories come ':'-separated; the unit asks for one */
    return rt && rt[0] == '/' && !strchr(rt, ':') ? rt : NULL;
}

const char *systemd_reload_credentials_dir(void) {
    const char *rt = runtime_dir();
    char p[4096];

    if (rt && snprintf(p, sizeof(p), "%s/client_secret", rt) < (int)sizeof(p) && access(p, F_OK) == 0)
        return rt;
    return getenv("CREDENTIALS_DIRECTORY");
}

bool systemd_reload_staged(void) {
    const char *rt = runtime_dir();

    return rt && systemd_reload_credentials_dir() == rt;
}

/* A message about a staged copy names the operator's file instead: that
 * is the one to fix. */
static void name_origins(const char *rt, char *msg, size_t size) {
    DIR *d = opendir(rt);
    struct dirent *e;

    if (!d)
        return;
    while ((e = readdir(d))) {
        size_t nl = strlen(e->d_name), fl = strlen(STAGED_FROM);
        char copy[4096], from_path[4096], origin[1024], out[2048];
        const char *at;
        ssize_t n;
        int fd;

        if (nl <= fl || strcmp(e->d_name + nl - fl, STAGED_FROM) != 0)
            continue;
        if (snprintf(copy, sizeof(copy), "%s/%.*s", rt, (int)(nl - fl), e->d_name) >= (int)sizeof(copy) ||
            snprintf(from_path, sizeof(from_path), "%s/%s", rt, e->d_name) >= (int)sizeof(from_path))
            continue;
        fd = open(from_path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
        if (fd < 0)
            continue;
        n = read(fd, origin, sizeof(origin) - 1);
        close(fd);
        while (n > 0 && isspace((unsigned char)origin[n - 1]))
            n--;
        if (n <= 0)
            continue;
        origin[n] = '\0';
        /* every mention, each followed by something that ends a path */
        size_t pos = 0, cl = strlen(copy);
        const char *p = msg;
        out[0] = '\0';
        while ((at = strstr(p, copy)) && pos < sizeof(out)) {
            if (at[cl] == '/' || at[cl] == '.' || isalnum((unsigned char)at[cl]) || at[cl] == '_') {
                pos += (size_t)snprintf(out + pos, sizeof(out) - pos, "%.*s", (int)(at - p + (ptrdiff_t)cl), p);
            } else {
                pos += (size_t)snprintf(out + pos, sizeof(out) - pos, "%.*s%s", (int)(at - p), p, origin);
            }
            p = at + cl;
        }
        if (pos < sizeof(out))
            snprintf(out + pos, sizeof(out) - pos, "%s", p);
        snprintf(msg, size, "%s", out);
    }
    closedir(d);
}

int systemd_reload_config_load(const char *path, config **ret, char *err) {
    const char *dir = systemd_reload_credentials_dir();
    int r = config_load(path, dir, ret, err);

    if (r < 0 && systemd_reload_staged())
        name_origins(dir, err, CONFIG_ERR_MAX);
    return r;
}

static void discard_in(const char *dir) {
    DIR *d;
    struct dirent *e;

    if (!dir || !(d = opendir(dir)))
        return;
    /* the directory is ours: every regular file in it but the verdict is a
     * staged copy or its origin (a Unix socket there is not touched) */
    while ((e = readdir(d))) {
        struct stat st;

        if (strcmp(e->d_name, RELOAD_RESULT) == 0 ||
            fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISREG(st.st_mode))
            continue;
        unlinkat(dirfd(d), e->d_name, 0);
    }
    closedir(d);
}

void systemd_reload_discard(void) {
    discard_in(runtime_dir());
}

/* Writes text to name in the directory dirfd, whole or not at all, owned
 * by uid:gid (the caller's own with (uid_t)-1: the daemon's sandbox
 * forbids chown), readable by its owner only. */
static int write_private_at(int dfd, const char *name, const void *text, size_t len, uid_t uid, gid_t gid) {
    char tmp[300];
    size_t done = 0;
    int fd, r = 0;

    if (snprintf(tmp, sizeof(tmp), ".%s.tmp", name) >= (int)sizeof(tmp))
        return -ENAMETOOLONG;
    unlinkat(dfd, tmp, 0);
    fd = openat(dfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0400);
    if (fd < 0)
        return -errno;
    if (uid != (uid_t)-1 && fchown(fd, uid, gid) < 0)
        r = -errno;
    while (r == 0 && done < len) {
        ssize_t n = write(fd, (const char *)text + done, len - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            r = -errno;
        else
            done += (size_t)n;
    }
    if (close(fd) < 0 && r == 0)
        r = -errno;
    if (r == 0 && renameat(dfd, tmp, dfd, name) < 0)
        r = -errno;
    if (r < 0)
        unlinkat(dfd, tmp, 0);
    return r;
}

/* One credential: source (the operator's file) to the runtime directory
 * under id, with the name of its source beside it. */
static int stage_one(int dfd, const struct stat *dir, const char *id, const char *source) {
    char *buf = NULL;
    size_t len = 0;
    struct stat st;
    int fd, r;

    if (!*id || strchr(id, '/') || id[0] == '.' || strlen(id) > 200) {
        log_error("the unit loads a credential named '%s', which tokend cannot stage", id);
        return -EINVAL;
    }
    fd = open(source, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0) {
        r = -errno;
        log_error("%s: cannot read the credential '%s' (LoadCredential=%s:%s): %s; the running "
                  "daemon keeps the previous one", source, id, id, source, strerror(errno));
        return r;
    }
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size > STAGED_MAX) {
        log_error("%s: the credential '%s' must be a regular file of at most %d bytes", source, id,
                  STAGED_MAX);
        close(fd);
        return -EINVAL;
    }
    buf = malloc(STAGED_MAX + 1);
    if (!buf) {
        close(fd);
        return -ENOMEM;
    }
    for (;;) {
        ssize_t n = read(fd, buf + len, STAGED_MAX + 1 - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            r = n < 0 ? -errno : 0;
            break;
        }
        len += (size_t)n;
        if (len > STAGED_MAX) {
            r = -EFBIG;
            break;
        }
    }
    close(fd);
    if (r == 0)
        r = write_private_at(dfd, id, buf, len, dir->st_uid, dir->st_gid);
    explicit_bzero(buf, STAGED_MAX + 1);
    free(buf);
    if (r == 0) {
        char from[260];
        snprintf(from, sizeof(from), "%s" STAGED_FROM, id);
        r = write_private_at(dfd, from, source, strlen(source), dir->st_uid, dir->st_gid);
    }
    if (r < 0)
        log_error("cannot stage the credential '%s' from %s: %s", id, source, strerror(-r));
    return r;
}

static int stage_into(const char *unit, const char *rt) {
    sd_bus_error error = SD_BUS_ERROR_NULL;
    sd_bus_message *reply = NULL;
    sd_bus *bus = NULL;
    char *object = NULL;
    const char *id, *source;
    struct stat dir;
    int dfd = -1, r, staged = 0;

    if (!rt) {
        log_error("--stage-credentials runs as the unit's ExecReload=+ line, with the unit's "
                  "RuntimeDirectory= in $RUNTIME_DIRECTORY");
        return -EINVAL;
    }
    dfd = open(rt, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (dfd < 0 || fstat(dfd, &dir) < 0) {
        r = -errno;
        log_error("%s: %s", rt, strerror(errno));
        goto out;
    }
    /* systemd's own socket as root, as systemctl does; else the system bus */
    r = sd_bus_new(&bus);
    if (r >= 0)
        r = sd_bus_set_address(bus, "unix:path=/run/systemd/private");
    if (r >= 0)
        r = sd_bus_start(bus);
    if (r < 0) {
        bus = sd_bus_unref(bus);
        r = sd_bus_open_system(&bus);
    }
    if (r < 0) {
        log_error("cannot ask systemd for %s's credentials: %s", unit, strerror(-r));
        goto out;
    }
    r = sd_bus_path_encode("/org/freedesktop/systemd1/unit", unit, &object);
    if (r >= 0)
        r = sd_bus_get_property(bus, "org.freedesktop.systemd1", object, "org.freedesktop.systemd1.Service",
                                "LoadCredential", &error, &reply, "a(ss)");
    if (r >= 0)
        r = sd_bus_message_enter_container(reply, 'a', "(ss)");
    if (r < 0) {
        log_error("cannot ask systemd for %s's credentials (LoadCredential=): %s", unit,
                  error.message ? error.message : strerror(-r));
        goto out;
    }
    while ((r = sd_bus_message_read(reply, "(ss)", &id, &source)) > 0) {
        if (source[0] != '/')
            continue; /* one of systemd's own credentials: not the operator's file */
        r = stage_one(dfd, &dir, id, source);
        if (r < 0)
            break;
        staged++;
    }
    if (r < 0) {
        discard_in(rt);
        goto out;
    }
    r = staged;
out:
    sd_bus_error_free(&error);
    sd_bus_message_unref(reply);
    sd_bus_flush_close_unref(bus);
    free(object);
    if (dfd >= 0)
        close(dfd);
    return r;
}

int systemd_stage_credentials(const char *unit) {
    return stage_into(unit, runtime_dir());
}

int systemd_unit_credentials(const char *unit, char *ret_dir, size_t size) {
    char dir[] = "/run/instacart-tokend-check.XXXXXX";
    int r;

    /* memory (/run), root's only, gone when the check ends */
    if (!mkdtemp(dir)) {
        r = -errno;
        log_error("cannot make a private directory for %s's credentials: %s", unit, strerror(errno));
        return r;
    }
    r = stage_into(unit, dir);
    if (r < 0) {
        rmdir(dir);
        return r;
    }
    snprintf(ret_dir, size, "%s", dir);
    return 0;
}

void systemd_unit_credentials_explain(const char *dir, char *msg, size_t size) {
    name_origins(dir, msg, size);
}

void systemd_unit_credentials_done(const char *dir) {
    discard_in(dir);
    rmdir(dir);
}

void systemd_reload_confirm(int tag, const char *refused) {
    const char *rt = runtime_dir();
    char text[CONFIG_ERR_MAX + 64];
    int dfd, n;

    if (!rt)
        return;
    n = refused ? snprintf(text, sizeof(text), "%d refused\n%s\n", tag, refused)
                : snprintf(text, sizeof(text), "%d applied\n", tag);
    if (n < 0)
        return;
    if ((size_t)n >= sizeof(text))
        n = (int)sizeof(text) - 1;
    dfd = open(rt, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0)
        return;
    write_private_at(dfd, RELOAD_RESULT, text, (size_t)n, (uid_t)-1, (gid_t)-1);
    close(dfd);
}

int systemd_reload_request(pid_t pid, uint64_t timeout_ms, char *err, size_t size) {
    const char *rt = runtime_dir();
    int tag = (int)getpid();
    uint64_t deadline = now_ms() + timeout_ms;
    char path[4096], text[CONFIG_ERR_MAX + 64], want[32];
    union sigval v = { .sival_int = tag };

    if (!rt) {
        snprintf(err, size, "--reload runs as the unit's ExecReload= line, with the unit's "
                            "RuntimeDirectory= in $RUNTIME_DIRECTORY");
        return -EINVAL;
    }
    snprintf(path, sizeof(path), "%s/" RELOAD_RESULT, rt);
    snprintf(want, sizeof(want), "%d ", tag);
    if (sigqueue(pid, SIGHUP, v) < 0) {
        int r = -errno;
        snprintf(err, size, "cannot signal tokend (pid %d): %s", (int)pid, strerror(errno));
        return r;
    }
    for (;;) {
        int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
        if (fd >= 0) {
            ssize_t n = read(fd, text, sizeof(text) - 1);
            close(fd);
            if (n > 0) {
                text[n] = '\0';
                if (strncmp(text, want, strlen(want)) == 0) {
                    char *why = strchr(text, '\n');
                    if (strncmp(text + strlen(want), "applied", 7) == 0)
                        return 0;
                    if (why && *++why) {
                        why[strcspn(why, "\n")] = '\0';
                        snprintf(err, size, "%s", why);
                    } else
                        snprintf(err, size, "tokend refused the reload; see its log");
                    return -EINVAL;
                }
            }
        }
        if (now_ms() >= deadline) {
            snprintf(err, size, "tokend (pid %d) did not confirm the reload within %llu s; it may "
                     "still apply it: see its log", (int)pid, (unsigned long long)timeout_ms / 1000);
            return -ETIMEDOUT;
        }
        poll(NULL, 0, 20); /* the verdict is a file: polled, bounded by the deadline */
    }
}

/* ---- the socket systemd passed against [server] listen ---- */

static bool same_address(const char *a, const char *b) {
    struct sockaddr_storage sa, sb;
    socklen_t la, lb;
    bool loop;

    if (address_listen_parse(a, &sa, &la, &loop) < 0 || address_listen_parse(b, &sb, &lb, &loop) < 0)
        return strcmp(a, b) == 0;
    return la == lb && memcmp(&sa, &sb, la) == 0;
}

void systemd_check_listen(const config *cfg, const char *listening) {
    char served[1024];
    size_t n = 0;
    const char *p = listening;

    /* listening: "http://HOST:PORT" or "unix:PATH" words, one per socket */
    served[0] = '\0';
    while (*p) {
        size_t len = strcspn(p, " ");
        char word[300];
        const char *addr = word;
        bool found = false;

        snprintf(word, sizeof(word), "%.*s", (int)len, p);
        if (strncmp(word, "http://", 7) == 0)
            addr = word + 7;
        for (size_t i = 0; i < cfg->n_listens && !found; i++)
            found = same_address(cfg->listens[i], addr);
        if (!found || cfg->n_listens != 1)
            n += (size_t)snprintf(served + n, n < sizeof(served) ? sizeof(served) - n : 0, "%s%s",
                                  n ? " " : "", addr);
        if (n >= sizeof(served))
            n = sizeof(served) - 1;
        p += len;
        p += strspn(p, " ");
    }
    if (!n)
        return;
    log_warning("%s: [server] listen = %s, but systemd passed a socket on %s, and tokend serves only "
                "the socket systemd passed (the socket unit's ListenStream= wins). To serve another "
                "address, put it in a drop-in of the socket unit ('systemctl edit' it: ListenStream= "
                "alone first, to drop the shipped one, then ListenStream=THE-ADDRESS) and in listen, "
                "then restart the socket and the service", cfg->path, cfg->listen, listening);
}
