"""tokend started as systemd starts it, without systemd: stand-ins for a
service manager's side. A datagram socket the test binds plays systemd's
notification socket (NOTIFY_SOCKET, with SCM_RIGHTS for the file descriptor
store); sockets the test binds are passed as systemd passes them
(LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES); WATCHDOG_USEC asks for pings.
The fixtures notify and make_sd are imported by the tests that use them."""
import array
import os
import socket
import subprocess
import sys
import threading
import time
import uuid

import pytest

from conftest import TOKEND_EXE, WRAPPER, Tokend, daemon_factory, wait_for


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
    """SIGTERM, then the memfd the daemon handed to the store (the newest,
    when one notify socket saw several restarts)."""
    before = len(notify.with_key("FDSTORE", "1"))
    t.stop()
    stored = notify.wait("FDSTORE", "1", count=before + 1)
    assert len(stored) == before + 1, stored
    _, fields, fds = stored[-1]
    assert fields.get("FDNAME") == "cache", fields
    assert len(fds) == 1, fields
    return fds[0]


def listening_socket():
    """A listening TCP socket on loopback, as systemd passes one."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    s.listen(128)
    return s
