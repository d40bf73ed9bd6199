"""Issue 4, without systemd: what tokend says to and takes from a service
manager, checked against stand-ins. A datagram socket the test binds plays
systemd's notification socket (NOTIFY_SOCKET, with SCM_RIGHTS for the file
descriptor store); a TCP socket the test binds is passed as systemd passes
sockets (LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES); WATCHDOG_USEC asks for pings.

The real thing, under systemd in a container, is tests/systemd/.
"""
import array
import fcntl
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid

import pytest

from conftest import SLOW, TOKEND_EXE, WRAPPER, Tokend, daemon_factory, exchange, wait_for

F_GET_SEALS = 1034
F_SEAL_SEAL, F_SEAL_SHRINK, F_SEAL_GROW, F_SEAL_WRITE = 1, 2, 4, 8
MAGIC = b"TOKENDC\x1a"

# Puts the passed descriptors at 3, 4, ... and sets LISTEN_PID to its own
# pid, then becomes the daemon: what systemd does between fork and exec.
LAUNCHER = r"""
import os, sys
import fcntl
fds = [int(x) for x in sys.argv[1].split(",") if x]
# out of the way first, so no target number is taken by a source
tmp = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 100) for fd in fds]
for i, fd in enumerate(tmp):
    os.dup2(fd, 3 + i)  # inheritable
for fd in tmp:
    os.close(fd)
if fds:
    os.environ["LISTEN_FDS"] = str(len(fds))
    os.environ["LISTEN_PID"] = str(os.getpid())
os.execvp(sys.argv[2], sys.argv[2:])
"""


class NotifySocket:
    """systemd's side of sd_notify(): every datagram, with the descriptors
    that came with it. BARRIER=1 is answered as systemd does, by closing the
    descriptor it carries."""

    def __init__(self):
        self.address = "@tokend-test-" + uuid.uuid4().hex
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.sock.bind("\0" + self.address[1:])
        self.sock.settimeout(0.1)
        self.messages = []  # (monotonic time, {key: value}, [fds])
        self.lock = threading.Lock()
        self.on_ready = None
        self.on_ready_error = None
        self.closing = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.closing:
            try:
                data, anc, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(64 * 4))
            except socket.timeout:
                continue
            except OSError:
                return
            fds = []
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    a = array.array("i")
                    a.frombytes(payload[: len(payload) - len(payload) % a.itemsize])
                    fds.extend(a)
            fields = {}
            for line in data.decode().split("\n"):
                if "=" in line:
                    k, v = line.split("=", 1)
                    fields[k] = v
            if fields.get("BARRIER") == "1":
                for fd in fds:
                    os.close(fd)
                fds = []
            if fields.get("READY") == "1" and self.on_ready:
                try:
                    self.on_ready(fields)
                except Exception as e:  # the test sees it; the reader must go on
                    self.on_ready_error = e
            with self.lock:
                self.messages.append((time.monotonic(), fields, fds))

    def all(self):
        with self.lock:
            return list(self.messages)

    def with_key(self, key, value=None):
        return [(t, f, fds) for t, f, fds in self.all() if key in f and (value is None or f[key] == value)]

    def wait(self, key, value=None, count=1, timeout=10.0):
        return wait_for(lambda: len(self.with_key(key, value)) >= count and self.with_key(key, value),
                        timeout=timeout, what=f"{count}x {key}={value} on the notify socket")

    def close(self):
        self.closing = True
        self.thread.join(timeout=5)
        self.sock.close()
        for _, _, fds in self.messages:
            for fd in fds:
                try:
                    os.close(fd)
                except OSError:
                    pass


class SdTokend(Tokend):
    """tokend started as systemd starts it: descriptors at 3.., the
    variables set, and NOTIFY_SOCKET pointing at a stand-in."""

    def __init__(self, workdir, stub, notify, fds=(), names=(), watchdog_usec=None, **kw):
        super().__init__(workdir, stub, **kw)
        self.notify = notify
        self.fds = list(fds)
        self.names = list(names)
        self.watchdog_usec = watchdog_usec

    def start(self, expect_ready=True, extra_args=()):
        self.logf = open(self.log_path, "ab")
        env = {k: v for k, v in os.environ.items()
               if k not in ("CREDENTIALS_DIRECTORY", "JOURNAL_STREAM", "NOTIFY_SOCKET", "LISTEN_FDS",
                            "LISTEN_PID", "LISTEN_FDNAMES", "WATCHDOG_USEC", "WATCHDOG_PID")}
        env.update(self.env)
        env["NOTIFY_SOCKET"] = self.notify.address
        if self.names:
            env["LISTEN_FDNAMES"] = ":".join(self.names)
        if self.watchdog_usec:
            env["WATCHDOG_USEC"] = str(self.watchdog_usec)
        argv = [sys.executable, "-c", LAUNCHER, ",".join(str(fd) for fd in self.fds),
                *WRAPPER, TOKEND_EXE, "--config", self.conf_path, *extra_args]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.logf, stderr=self.logf,
                                     env=env, pass_fds=self.fds)
        if expect_ready:
            m = wait_for(lambda: self._find_address() or self._died(), timeout=15, what="tokend to listen")
            if m is True:
                raise AssertionError(f"tokend exited early ({self.proc.returncode}): {self.log()}")
        return self


def listening_socket():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    s.listen(128)
    return s


def http_get(port, path, timeout=2.0):
    import http.client
    r = exchange(http.client.HTTPConnection("127.0.0.1", port, timeout=timeout), "GET", path)
    return r.status, r.body


@pytest.fixture
def notify():
    n = NotifySocket()
    yield n
    n.close()


@pytest.fixture
def make_sd(tmp_path):
    """make(stub, notify, start=True, **kw): an SdTokend."""
    yield from daemon_factory(tmp_path, "sd", SdTokend)


def stop_and_take_cache(t, notify):
    """SIGTERM, then the memfd the daemon handed to the store."""
    t.stop()
    (_, fields, fds), = notify.with_key("FDSTORE", "1")
    assert fields.get("FDNAME") == "cache", fields
    assert len(fds) == 1, fields
    return fds[0]


def image_of(fd):
    size = os.fstat(fd).st_size
    return os.pread(fd, size, 0)


def memfd_with(data):
    fd = os.memfd_create("test-image", os.MFD_CLOEXEC)
    os.write(fd, data)
    return fd


def crc32c(data, crc=0):
    crc ^= 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFF


def reseal(image):
    """The image with its checksum recomputed, so only what the test changed
    is wrong with it."""
    head = image[:56]
    crc = crc32c(image[64:], crc32c(head))
    return head + crc.to_bytes(4, "little") + image[60:]


# ---------------------------------------------------------------- readiness


def test_ready_only_once_serving_then_status_and_watchdog(stub, notify, make_sd):
    sock = listening_socket()
    port = sock.getsockname()[1]
    answers = []
    # At the moment READY=1 arrives the server must answer at once.
    notify.on_ready = lambda f: answers.append(http_get(port, "/healthz", timeout=1.0 * SLOW)[0])
    t = make_sd(stub, notify, fds=[sock.fileno()], names=["http"], watchdog_usec=2000000)
    sock.close()  # the daemon has its own copy, as with systemd
    ready = notify.wait("READY", "1")
    assert notify.on_ready_error is None and answers == [200], (notify.on_ready_error, answers)
    assert t.port == port, "did not use the passed socket"
    assert "0 tokens cached" in ready[0][1]["STATUS"]

    assert t.token("alice").status == 200
    wait_for(lambda: any("1 token cached" in f["STATUS"] and "1 ok" in f["STATUS"]
                         for _, f, _ in notify.with_key("STATUS")),
             what="a STATUS line counting the token and the mint")
    # pings keep coming (about every third of the interval), never further
    # apart than the interval itself: that gap is when systemd would kill
    first = len(notify.with_key("WATCHDOG", "1"))
    notify.wait("WATCHDOG", "1", count=first + 5, timeout=15)
    pings = [m for m, _, _ in notify.with_key("WATCHDOG", "1")]
    assert max(b - a for a, b in zip(pings, pings[1:])) < 2.0 * SLOW
    t.stop()
    assert notify.with_key("STOPPING", "1")


def test_watchdog_pings_stop_while_the_http_server_does_not_answer(stub, notify, make_sd):
    # one connection allowed: a caller holding it leaves the server unable to
    # answer anyone else, the watchdog's probe included
    t = make_sd(stub, notify, watchdog_usec=1500000, sections={"server": {"max_connections": "1"}})
    notify.wait("WATCHDOG", "1", count=2)
    hog = socket.create_connection((t.host, t.port))
    warning = "watchdog: the HTTP server did not answer GET /healthz"
    wait_for(lambda: t.log().count(warning) >= 1, what="the probe to fail")
    pings = len(notify.with_key("WATCHDOG", "1"))
    wait_for(lambda: t.log().count(warning) >= 3, timeout=15, what="two more failed probes")
    assert len(notify.with_key("WATCHDOG", "1")) == pings, "pinged while the server could not answer"
    hog.close()
    notify.wait("WATCHDOG", "1", count=pings + 2, timeout=15)


def test_no_ready_when_the_secret_cannot_be_loaded(stub, notify, make_sd):
    t = make_sd(stub, notify, start=False)
    os.unlink(t.secret_path)
    t.start(expect_ready=False)
    assert t.proc.wait(timeout=10 * SLOW) == 1
    assert not notify.with_key("READY")
    assert "client-secret" in t.log()


def test_binds_from_the_configuration_without_passed_sockets(stub, notify, make_sd):
    t = make_sd(stub, notify)
    notify.wait("READY", "1")
    assert t.get("/healthz").status == 200
    assert t.token("bob").status == 200


def test_a_passed_socket_other_than_listen_is_warned_about_and_reported(stub, notify, make_sd):
    import json
    sock = listening_socket()
    port = sock.getsockname()[1]
    other = listening_socket()  # a port the configuration names, not passed
    listen = f"127.0.0.1:{other.getsockname()[1]}"
    t = make_sd(stub, notify, fds=[sock.fileno()], names=["http"], sections={"server": {"listen": listen}})
    sock.close()
    notify.wait("READY", "1")
    line = next((l for l in t.log().splitlines() if "systemd passed a socket" in l), None)
    assert line, t.log()
    assert f"listen = {listen}" in line and f"127.0.0.1:{port}" in line and "ListenStream=" in line, line
    status = json.loads(t.get("/v1/status").body)
    assert status["listening"] == [f"http://127.0.0.1:{port}"], status
    other.close()


def test_a_passed_socket_that_is_listen_is_not_warned_about(stub, notify, make_sd):
    import json
    sock = listening_socket()
    port = sock.getsockname()[1]
    t = make_sd(stub, notify, fds=[sock.fileno()], names=["http"],
                sections={"server": {"listen": f"localhost:{port}"}})
    sock.close()
    notify.wait("READY", "1")
    assert t.token("alice").status == 200
    assert "systemd passed a socket" not in t.log()
    assert json.loads(t.get("/v1/status").body)["listening"] == [f"http://127.0.0.1:{port}"]


def test_foreign_descriptors_are_closed_with_a_warning(stub, notify, make_sd):
    sock = listening_socket()
    r, w = os.pipe()
    t = make_sd(stub, notify, fds=[sock.fileno(), r], names=["http", "stray"])
    notify.wait("READY", "1")
    assert t.port == sock.getsockname()[1]
    assert "ignoring descriptor 4 named 'stray'" in t.log()
    os.close(r)
    os.close(w)
    sock.close()


# ---------------------------------------------------------------- reload


def test_reload_applies_a_rotated_secret_and_keeps_the_cache(stub, notify, make_sd):
    t = make_sd(stub, notify)
    notify.wait("READY", "1")
    before = t.token("alice")
    assert before.status == 200

    # Instacart rotates: only the new secret works from now on.
    stub.config(credentials=[("test-client", "rotated-secret")])
    assert t.token("carol").status == 502  # the old secret is refused
    t.write_secret("rotated-secret")
    t.signal(signal.SIGHUP)
    (reloading_at, f, _), = notify.wait("RELOADING", "1")
    assert int(f["MONOTONIC_USEC"]) > 0
    wait_for(lambda: [m for m, _, _ in notify.with_key("READY", "1") if m > reloading_at],
             what="READY=1 after RELOADING=1")

    r = t.token("dave")
    assert r.status == 200, r
    assert stub.token_requests()[-1]["user_id"] == "dave"
    # same client id and server: cached tokens survive the reload
    again = t.token("alice")
    assert again.header("x-cache") == "hit"
    assert again.json()["access_token"] == before.json()["access_token"]
    assert "reloaded" in t.log()


def write_private(path, text):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o400)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")


def test_reload_takes_the_secret_exec_reload_hands_over(stub, notify, make_sd, tmp_path):
    # as under the unit: the secret comes from the credential, which systemd
    # does not refresh on reload; ExecReload= leaves the rotated one in the
    # runtime directory
    creds, run = tmp_path / "credentials", tmp_path / "run"
    creds.mkdir(mode=0o700)
    run.mkdir(mode=0o700)
    write_private(creds / "client_secret", "test-secret")
    t = make_sd(stub, notify, secret="not-this-one",
                env={"CREDENTIALS_DIRECTORY": str(creds), "RUNTIME_DIRECTORY": str(run)})
    assert t.token("alice").status == 200

    stub.config(credentials=[("test-client", "rotated-secret")])
    write_private(run / "client_secret", "rotated-secret")
    t.signal(signal.SIGHUP)
    notify.wait("READY", "1", count=2)
    wait_for(lambda: "secret from the credential ExecReload= copied afresh" in t.log(), what="the reload")
    assert not (run / "client_secret").exists(), "the copy of the secret was left behind"
    assert t.token("bob").status == 200
    assert t.token("alice").header("x-cache") == "hit"


def test_reload_refuses_a_broken_configuration(stub, notify, make_sd):
    t = make_sd(stub, notify)
    notify.wait("READY", "1")
    assert t.token("alice").status == 200
    with open(t.conf_path, "a") as f:
        f.write("[server]\nthreads = many\n")
    t.signal(signal.SIGHUP)
    notify.wait("RELOADING", "1")
    notify.wait("READY", "1", count=2)
    wait_for(lambda: "reload refused" in t.log(), what="the refusal in the log")
    line = next(l for l in t.log().splitlines() if "reload refused" in l)
    assert f"{t.conf_path}:" in line and "threads" in line, line
    assert t.proc.poll() is None
    assert t.token("alice").header("x-cache") == "hit"
    assert t.token("bob").status == 200  # still mints with the old configuration


def test_reload_with_a_missing_secret_keeps_the_old_one(stub, notify, make_sd):
    t = make_sd(stub, notify)
    notify.wait("READY", "1")
    os.unlink(t.secret_path)
    t.signal(signal.SIGHUP)
    notify.wait("READY", "1", count=2)
    wait_for(lambda: "reload refused" in t.log(), what="the refusal in the log")
    assert t.token("bob").status == 200


# ExecReload= under the unit: `instacart-tokend --reload $MAINPID`, as the
# service, with its runtime directory and credentials.

def reload_helper(t, run, creds=None):
    env = {k: v for k, v in os.environ.items() if k not in ("CREDENTIALS_DIRECTORY", "JOURNAL_STREAM")}
    env["RUNTIME_DIRECTORY"] = str(run)
    if creds:
        env["CREDENTIALS_DIRECTORY"] = str(creds)
    return subprocess.run([TOKEND_EXE, "--config", t.conf_path, "--reload", str(t.proc.pid)], env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60 * SLOW)


def status_config(t):
    import json
    r = t.get("/v1/status")
    assert r.status == 200, r.body
    return json.loads(r.body)["config"]


def test_exec_reload_returns_once_the_reload_is_applied(stub, notify, make_sd, tmp_path):
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    t = make_sd(stub, notify, env={"RUNTIME_DIRECTORY": str(run)})
    notify.wait("READY", "1")
    before = status_config(t)
    t.sections["log"] = {"level": "debug"}
    t.sections["upstream"]["client_id"] = "another-client"
    t.write_config()
    done = reload_helper(t, run)
    assert done.returncode == 0, done.stderr
    # applied by the time ExecReload= returns: no waiting here
    after = status_config(t)
    assert after != before
    assert "another-client" in str(after) and "debug" in str(after), after


def test_exec_reload_fails_with_the_reason_and_tokend_keeps_serving(stub, notify, make_sd, tmp_path):
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    t = make_sd(stub, notify, env={"RUNTIME_DIRECTORY": str(run)})
    notify.wait("READY", "1")
    assert t.token("alice").status == 200
    with open(t.conf_path, "a") as f:
        f.write("[server]\nno_such_key = 1\n")
    done = reload_helper(t, run)
    assert done.returncode != 0
    assert f"{t.conf_path}:" in done.stderr and "no_such_key" in done.stderr, done.stderr
    assert t.proc.poll() is None
    assert t.token("alice").header("x-cache") == "hit"
    assert t.token("bob").status == 200


def test_exec_reload_names_the_operators_file_for_an_empty_secret(stub, notify, make_sd, tmp_path):
    # the root line staged an empty secret from the operator's file: the
    # message names that file, and the copies are gone
    creds, run = tmp_path / "credentials", tmp_path / "run"
    creds.mkdir(mode=0o700)
    run.mkdir(mode=0o700)
    write_private(creds / "client_secret", "test-secret")
    t = make_sd(stub, notify, env={"CREDENTIALS_DIRECTORY": str(creds), "RUNTIME_DIRECTORY": str(run)})
    notify.wait("READY", "1")
    operators = "/etc/instacart-tokend/client-secret"
    fd = os.open(run / "client_secret", os.O_WRONLY | os.O_CREAT, 0o400)
    os.close(fd)
    write_private(run / "client_secret.from", operators)
    done = reload_helper(t, run, creds)
    assert done.returncode != 0
    assert f"{operators}: the client secret is empty" in done.stderr, done.stderr
    assert str(run) not in done.stderr, done.stderr
    assert os.listdir(run) == [], "the staged copies were left behind"
    assert t.token("bob").status == 200


def test_exec_reload_hands_the_daemons_own_refusal_back(stub, notify, make_sd, tmp_path):
    # the check passed, yet the daemon refuses (here: the secret disappears
    # in between, as the daemon reads it after the check): its reason is
    # what ExecReload= reports
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    t = make_sd(stub, notify, env={"RUNTIME_DIRECTORY": str(run)})
    notify.wait("READY", "1")
    import signal as sig
    os.unlink(t.secret_path)
    # the helper's own check refuses first, naming the file
    done = reload_helper(t, run)
    assert done.returncode != 0 and t.secret_path in done.stderr, done.stderr
    # a plain SIGHUP (tag 0) is answered too, and never taken for a request
    t.signal(sig.SIGHUP)
    wait_for(lambda: (run / "reload-result").exists(), what="the daemon's verdict")
    assert (run / "reload-result").read_text().startswith("0 refused\n" + t.secret_path)
    assert t.token("bob").status == 200


def test_reload_with_another_client_id_flushes_the_cache(stub, notify, make_sd):
    t = make_sd(stub, notify)
    notify.wait("READY", "1")
    first = t.token("alice").json()["access_token"]
    stub.config(credentials=[("new-client", "test-secret")])
    t.sections["upstream"]["client_id"] = "new-client"
    t.write_config()
    t.signal(signal.SIGHUP)
    notify.wait("READY", "1", count=2)
    wait_for(lambda: "dropped 1 cached tokens" in t.log(), what="the flush")
    r = t.token("alice")
    assert r.header("x-cache") == "miss"
    assert r.json()["access_token"] != first
    assert stub.token_requests()[-1]["client_id"] == "new-client"


def test_reload_names_settings_that_need_a_restart(stub, notify, make_sd):
    t = make_sd(stub, notify)
    notify.wait("READY", "1")
    t.sections["server"]["listen"] = "127.0.0.1:1"
    t.sections.setdefault("cache", {})["max_entries"] = "7"
    t.write_config()
    t.signal(signal.SIGHUP)
    notify.wait("READY", "1", count=2)
    wait_for(lambda: "need a restart" in t.log(), what="the warning")
    line = next(l for l in t.log().splitlines() if "need a restart" in l)
    assert "[server] listen" in line and "[cache] max_entries" in line
    assert t.get("/healthz").status == 200  # still on the old address


# ---------------------------------------------------------------- the cache across a restart


def test_stop_hands_the_cache_over_and_the_next_start_mints_nothing(stub, notify, make_sd):
    sock = listening_socket()
    users = [f"user-{i}" for i in range(200)] + ["émile \"quoted\"", "x" * 256]
    t = make_sd(stub, notify, fds=[sock.fileno()], names=["http"])
    notify.wait("READY", "1")
    tokens = {}
    for u in users:
        r = t.token(u)
        assert r.status == 200, r
        tokens[u] = r.json()["access_token"]
    mints = stub.stats()["mints"]
    assert mints == len(users)

    fd = stop_and_take_cache(t, notify)
    assert notify.with_key("STOPPING", "1")
    seals = fcntl.fcntl(fd, F_GET_SEALS)
    assert seals & (F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE) == 15, seals
    image = image_of(fd)
    assert image.startswith(MAGIC)
    assert int.from_bytes(image[12:16], "little") == len(users)
    assert "handed 202 cached tokens" in t.log()

    # As systemd does: the socket and the stored fd, named, on the next start.
    t2 = make_sd(stub, notify, fds=[sock.fileno(), fd], names=["instacart-tokend.socket", "cache"])
    notify.wait("READY", "1", count=2)
    assert "restored 202 cached tokens" in t2.log()
    assert notify.with_key("FDSTOREREMOVE", "1")
    for u in users:
        r = t2.token(u)
        assert r.status == 200 and r.header("x-cache") == "hit", (u, r)
        assert r.json()["access_token"] == tokens[u]
        assert 86000 < r.json()["expires_in"] <= 86400
    assert stub.stats()["mints"] - mints == 0
    sock.close()


def test_a_client_token_without_a_scope_survives_the_restart_with_the_rest(stub, notify, make_sd):
    # issue 14: cached under the empty scope, it made the reader refuse the
    # whole image, and every cached token was minted again
    t = make_sd(stub, notify)
    notify.wait("READY", "1")
    client = t.get("/v1/client-token")
    assert client.status == 200, client
    users = {u: t.token(u).json()["access_token"] for u in ("alice", "bob")}
    fd = stop_and_take_cache(t, notify)
    mints = stub.stats()["mints"]

    t2 = make_sd(stub, notify, fds=[fd], names=["cache"])
    notify.wait("READY", "1", count=2)
    assert "restored 3 cached tokens" in t2.log(), t2.log()
    r = t2.get("/v1/client-token")
    assert r.header("x-cache") == "hit" and r.json()["access_token"] == client.json()["access_token"]
    for u, tok in users.items():
        assert t2.token(u).json()["access_token"] == tok
    assert stub.stats()["mints"] == mints


def test_tokens_too_close_to_expiry_are_not_restored(stub, notify, make_sd):
    # 3 s tokens: handed out while more than half their lifetime is left
    stub.config(expires_in=3)
    t = make_sd(stub, notify)
    assert t.token("alice").status == 200
    minted = time.monotonic()
    fd = stop_and_take_cache(t, notify)
    # let the token age past half its lifetime: time passing is the point
    time.sleep(max(0.0, minted + 2.0 - time.monotonic()))
    t2 = make_sd(stub, notify, fds=[fd], names=["cache"])
    notify.wait("READY", "1", count=2)
    assert "restored 0 cached tokens from before the restart (1 too close to expiry" in t2.log(), t2.log()
    assert t2.token("alice").header("x-cache") == "miss"


def damaged(image):
    mid = 64 + (len(image) - 64) // 2
    return {
        "flipped byte": image[:mid] + bytes([image[mid] ^ 0x40]) + image[mid + 1:],
        "truncated": image[:-7],
        "header only": image[:40],
        "empty": b"",
        "garbage": os.urandom(4096),
        "version 2": reseal(image[:8] + (2).to_bytes(4, "little") + image[12:]),
        "another boot": reseal(image[:24] + bytes(16) + image[40:]),
        "entry length past the end": reseal(image[:66] + (0xFFFF).to_bytes(2, "little") + image[68:]),
        "padded": reseal(image[:16] + (len(image) - 64 + 5).to_bytes(8, "little") + image[24:]) + bytes(5),
        "bad token characters": reseal(image[:-1] + b'"'),
    }


@pytest.mark.parametrize("kind", ["flipped byte", "truncated", "header only", "empty", "garbage",
                                  "version 2", "another boot", "entry length past the end", "padded",
                                  "bad token characters"])
def test_a_damaged_or_foreign_image_is_ignored_with_a_warning(stub, notify, make_sd, kind):
    t = make_sd(stub, notify)
    assert t.token("alice").status == 200
    assert t.token("bob").status == 200
    image = image_of(stop_and_take_cache(t, notify))
    fd = memfd_with(damaged(image)[kind])

    t2 = make_sd(stub, notify, fds=[fd], names=["cache"])
    notify.wait("READY", "1", count=2)
    os.close(fd)
    assert "ignoring the cache image passed by systemd" in t2.log(), t2.log()
    assert "restored" not in t2.log()
    mints = stub.stats()["mints"]
    r = t2.token("alice")
    assert r.status == 200 and r.header("x-cache") == "miss"
    assert stub.stats()["mints"] == mints + 1


def test_an_image_for_another_client_id_is_not_used(stub, notify, make_sd):
    t = make_sd(stub, notify)
    assert t.token("alice").status == 200
    fd = stop_and_take_cache(t, notify)
    stub.config(credentials=[("test-client", "test-secret"), ("other-client", "other-secret")])
    t2 = make_sd(stub, notify, fds=[fd], names=["cache"], client_id="other-client", secret="other-secret")
    notify.wait("READY", "1", count=2)
    assert "another client id" in t2.log()
    assert t2.token("alice").header("x-cache") == "miss"


def test_without_a_service_manager_nothing_is_stored(stub, make_tokend):
    t = make_tokend(stub)
    assert t.token("alice").status == 200
    t.stop()
    assert "cached tokens to systemd" not in t.log() and "cache image" not in t.log()
