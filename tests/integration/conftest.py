"""Fixtures for the integration tests: the real instacart-tokend binary
against the real Instacart stand-in (tests/stub), both on loopback.

Run through meson (`meson test -C build`), which sets TOKEND_BUILD_DIR; by
hand: TOKEND_BUILD_DIR=build /usr/bin/python3 -m pytest tests/integration
"""
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
import http.client
from concurrent.futures import ThreadPoolExecutor

import pytest

from stub import Stub

BUILD = os.path.abspath(os.environ.get("TOKEND_BUILD_DIR", "build"))
TOKEND_EXE = os.path.join(BUILD, "src", "instacart-tokend")
STUB_EXE = os.path.join(BUILD, "tests", "stub", "instacart-stub")
# Set by .ci/run for the valgrind pass: a command prefix for the daemon.
WRAPPER = os.environ.get("TOKEND_WRAPPER", "").split()
SLOW = 5 if WRAPPER else 1  # valgrind runs the daemon ~20x slower
# Set by .ci/run for the valgrind and ThreadSanitizer passes, where a leak or
# a race is reported when the daemon exits, in its exit code: a tokend still
# running when its test ends must then exit 0 on SIGTERM, so the test that
# caused the report fails.
STRICT_EXIT = os.environ.get("TOKEND_STRICT_EXIT") == "1"


def _sanitizer():
    """The build's b_sanitize ("none" for a plain build), from meson's own record."""
    try:
        with open(os.path.join(BUILD, "meson-info", "intro-buildoptions.json")) as f:
            return next((o["value"] for o in json.load(f) if o["name"] == "b_sanitize"), "none")
    except (OSError, ValueError):
        return "none"


# ASan and TSan take over SIGSEGV and core dumps themselves
SANITIZER = _sanitizer()


def wait_for(cond, timeout=10.0, interval=0.01, what="condition"):
    """Polls cond() until it returns something truthy, or fails at the deadline."""
    deadline = time.monotonic() + timeout * SLOW
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


def terminate(proc, timeout=10.0):
    """SIGTERM, then SIGKILL if proc has not exited within timeout; reaped."""
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def concurrently(fn, args, workers):
    """fn(a) for each a, from `workers` threads released together."""
    barrier = threading.Barrier(workers)

    def one(a):
        barrier.wait(timeout=60)
        return fn(a)

    with ThreadPoolExecutor(max_workers=workers) as ex:
        return list(ex.map(one, args))


class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    def json(self):
        return json.loads(self.body)

    def header(self, name):
        return self.headers.get(name.lower())

    def __repr__(self):
        return f"<Response {self.status} {self.body[:200]!r}>"


def exchange(conn, method, path, body=None, headers=None):
    """One request on an http.client connection, which it then closes."""
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return Response(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
    finally:
        conn.close()


class Tokend:
    """One instacart-tokend process with a configuration of the test's own."""

    def __init__(self, workdir, stub, sections=None, secret="test-secret", client_id="test-client",
                 env=None):
        self.workdir = str(workdir)
        self.stub = stub
        self.secret_path = os.path.join(self.workdir, "client-secret")
        self.conf_path = os.path.join(self.workdir, "tokend.conf")
        self.log_path = os.path.join(self.workdir, "tokend.log")
        self.env = env or {}
        self.proc = None
        self.address = None
        self.write_secret(secret)
        self.sections = {
            "upstream": {
                "base_url": stub.base_url if stub else "http://127.0.0.1:9",
                "client_id": client_id,
                "client_secret_file": self.secret_path,
            },
            "server": {"listen": "127.0.0.1:0"},
        }
        for sec, kv in (sections or {}).items():
            self.sections.setdefault(sec, {}).update(kv)
        self.write_config()

    def write_secret(self, secret):
        fd = os.open(self.secret_path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secret + "\n")
        os.rename(self.secret_path + ".tmp", self.secret_path)

    def write_config(self):
        with open(self.conf_path, "w") as f:
            for sec, kv in self.sections.items():
                f.write(f"[{sec}]\n")
                for k, v in kv.items():
                    if v is not None:
                        f.write(f"{k} = {v}\n")

    def start(self, expect_ready=True, extra_args=()):
        self._log_start = len(self.log())  # a restart: only its own lines count
        self.logf = open(self.log_path, "ab")
        env = {k: v for k, v in os.environ.items() if k not in ("CREDENTIALS_DIRECTORY", "JOURNAL_STREAM",
                                                                "NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID",
                                                                "LISTEN_FDNAMES", "WATCHDOG_USEC")}
        env.update(self.env)
        self.proc = subprocess.Popen(WRAPPER + [TOKEND_EXE, "--config", self.conf_path, *extra_args],
                                     stdin=subprocess.DEVNULL, stdout=self.logf, stderr=self.logf, env=env,
                                     pass_fds=getattr(self, "pass_fds", ()))
        if expect_ready:
            m = wait_for(lambda: self._find_address() or self._died(), timeout=15, what="tokend to listen")
            if m is True:
                raise AssertionError(f"tokend exited early ({self.proc.returncode}): {self.log()}")
        return self

    def _died(self):
        return self.proc.poll() is not None

    def _find_address(self):
        m = re.search(r"listening on http://(\S+?) ", self.log()[getattr(self, "_log_start", 0):])
        if m:
            self.address = m.group(1)
            host, port = self.address.rsplit(":", 1)
            self.host, self.port = host.strip("[]"), int(port)
            return self.address
        return None

    def log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def request(self, method, path, body=None, headers=None, timeout=10.0):
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout * SLOW)
        return exchange(conn, method, path, body, headers)

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def token(self, user_id, **params):
        from urllib.parse import urlencode
        q = urlencode({"user_id": user_id, **params})
        return self.get("/v1/token?" + q)

    def token_with(self, user_id, key, **params):
        """GET /v1/token with an API key."""
        from urllib.parse import urlencode
        q = urlencode({"user_id": user_id, **params})
        return self.get("/v1/token?" + q, headers={"Authorization": f"Bearer {key}"})

    def signal(self, sig):
        self.proc.send_signal(sig)

    def stop(self, timeout=15.0, expect_code=0):
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout * SLOW)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("tokend did not exit on SIGTERM within the deadline")
        self.logf.close()
        self.proc = None
        if expect_code is not None:
            assert code == expect_code, f"tokend exited {code}: {self.log()}"
        return code


@pytest.fixture
def stub(tmp_path):
    s = Stub(STUB_EXE, str(tmp_path / "stub"))
    s.start()
    yield s
    s.stop()


def daemon_factory(tmp_path, prefix, cls):
    """A fixture's body: yields make(*args, start=True, **kw), which builds
    cls(directory, *args, **kw) in a directory of its own and starts it;
    stops every one made when the test ends."""
    made = []

    def make(*args, start=True, **kw):
        d = tmp_path / f"{prefix}{len(made)}"
        d.mkdir()
        t = cls(d, *args, **kw)
        made.append(t)
        if start:
            t.start()
        return t

    yield make
    stop_all(made)


@pytest.fixture
def make_tokend(tmp_path):
    """make(stub, sections=None, start=True, **kw): a Tokend."""
    yield from daemon_factory(tmp_path, "tokend", Tokend)


def stop_all(daemons):
    """Stops what a test left running; in the valgrind and TSan passes
    (STRICT_EXIT) a daemon still running must exit 0, or the test fails."""
    for t in daemons:
        if t.proc is not None:
            running = t.proc.poll() is None
            t.stop(expect_code=0 if STRICT_EXIT and running else None)


@pytest.fixture
def tokend(stub, make_tokend):
    return make_tokend(stub)


def assert_no_secrets(text, *secrets):
    for s in secrets:
        if s:
            assert s not in text, f"a secret or token leaked into the log: {s[:6]}..."


@pytest.fixture
def make_stub(tmp_path):
    """make(**kw): another stand-in of Instacart, started; stopped when the test ends."""
    made = []

    def make(**kw):
        s = Stub(os.path.join(os.path.dirname(TOKEND_EXE), "..", "tests", "stub", "instacart-stub"),
                 str(tmp_path / f"stub-extra{len(made)}"), **kw)
        s.start()
        made.append(s)
        return s

    yield make
    for s in made:
        s.stop()


def reload(t):
    """SIGHUP, then waits until the log says it was applied or refused."""
    done = re.compile(r"reloaded |reload refused|reload failed")
    before = len(done.findall(t.log()))
    t.signal(signal.SIGHUP)
    wait_for(lambda: len(done.findall(t.log())) > before, what="the reload to be logged")
    return t.log().splitlines()[-1]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metrics(t):
    """(/metrics as {series: value}, its raw body), checking its Content-Type."""
    r = t.get("/metrics")
    assert r.status == 200
    assert r.header("content-type").startswith("text/plain; version=0.0.4")
    out = {}
    for line in r.body.decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out, r.body
