"""tokend's life as an operator and a service manager see it, against the
real stand-in: starting (the secret and its checks, --check-config, the
limits of the configuration), readiness and the watchdog, sockets passed by
systemd, reload (SIGHUP and ExecReload=: what it applies, what it refuses,
what needs a restart, and mints in flight across it), stopping (answering
what is in flight, refusing new connections), the cache handed over across
a restart, a crash leaving no core dump, and the settings and the command
line as --describe-config, --help, --version and the manual pages say.

systemd's side is played by the stand-ins of systemd_fixture.py; the real
thing, under systemd in a container, is tests/systemd/."""
import ctypes
import ctypes.util
import fcntl
import grp
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest

from conftest import (BUILD, SANITIZER, SLOW, TOKEND_EXE, WRAPPER, exchange, free_port, reload,
                      wait_for)
from redis_fixture import key_file, make_redis, redis, write_key_file  # noqa: F401 (fixtures)
from sec_helpers import Keys
from systemd_fixture import listening_socket, make_sd, notify, stop_and_take_cache  # noqa: F401 (fixtures)

F_GET_SEALS = 1034

F_SEAL_SEAL, F_SEAL_SHRINK, F_SEAL_GROW, F_SEAL_WRITE = 1, 2, 4, 8

MAGIC = b"TOKENDC\x1a"

SOURCE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_tokend(*args, env=None):
    return subprocess.run([TOKEND_EXE, *args], capture_output=True, text=True, timeout=30, env=env)


def run(*args):
    return subprocess.run([TOKEND_EXE, *args], capture_output=True, text=True, timeout=30)


def table():
    r = run("--describe-config=json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def has_redis_tls():
    return "TLS to Redis: yes" in run("--version").stdout


def http_get(port, path, timeout=2.0):
    import http.client
    r = exchange(http.client.HTTPConnection("127.0.0.1", port, timeout=timeout), "GET", path)
    return r.status, r.body


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


# ---------------------------------------------------------------- starting: the secret and the configuration


def test_check_config_accepts_a_good_file(stub, make_tokend):
    t = make_tokend(stub, start=False)
    r = run_tokend("--check-config", "--config", t.conf_path)
    assert r.returncode == 0, r.stderr


def test_check_config_names_file_and_line(stub, make_tokend):
    t = make_tokend(stub, {"cache": {"max_entries": "lots"}}, start=False)
    r = run_tokend("--check-config", "--config", t.conf_path)
    assert r.returncode != 0
    assert f"{t.conf_path}:" in r.stderr and "max_entries" in r.stderr
    line = r.stderr.split(f"{t.conf_path}:")[1].split(":")[0]
    with open(t.conf_path) as f:
        assert "max_entries" in f.read().splitlines()[int(line) - 1]


def test_refuses_a_secret_others_can_read(stub, make_tokend):
    t = make_tokend(stub, start=False)
    os.chmod(t.secret_path, 0o644)
    r = run_tokend("--config", t.conf_path)
    assert r.returncode != 0
    assert t.secret_path in r.stderr and "chmod 600" in r.stderr


def test_secret_from_systemd_credentials_directory(stub, make_tokend, tmp_path):
    creds = tmp_path / "creds"
    creds.mkdir()
    fd = os.open(creds / "client_secret", os.O_WRONLY | os.O_CREAT, 0o400)
    os.write(fd, b"test-secret\n")
    os.close(fd)
    t = make_tokend(stub, start=False, secret="wrong-secret", env={"CREDENTIALS_DIRECTORY": str(creds)})
    t.start()
    assert t.token("u").status == 200
    # /v1/status says where the secret in use came from, not the file it ignored
    shown = status_config(t)["upstream"]["client_secret_file"]
    assert shown == "(the systemd credential client_secret)", shown


def test_secret_never_in_argv_or_environment(stub, tokend):
    with open(f"/proc/{tokend.proc.pid}/cmdline", "rb") as f:
        assert b"test-secret" not in f.read()
    with open(f"/proc/{tokend.proc.pid}/environ", "rb") as f:
        assert b"test-secret" not in f.read()


def check_config(conf, *args):
    import os
    from conftest import TOKEND_EXE
    env = {k: v for k, v in os.environ.items() if k not in ("CREDENTIALS_DIRECTORY", "RUNTIME_DIRECTORY")}
    return subprocess.run([TOKEND_EXE, "--check-config", "--config", str(conf), *args], env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)


def private(path, text, mode=0o400):
    import os
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")


def test_check_config_takes_the_credentials_the_unit_passes(tmp_path):
    # fleet mode as the shipped unit runs it: no secret, key or password
    # file in the configuration, all three as LoadCredential= credentials
    conf = tmp_path / "tokend.conf"
    conf.write_text("[upstream]\nbase_url = http://127.0.0.1:9\nclient_id = c\n"
                    "[shared]\nredis = 127.0.0.1:1\nusername = tokend\n")
    creds = tmp_path / "credentials"
    creds.mkdir(mode=0o700)
    private(creds / "client_secret", "s3cret")
    private(creds / "shared_key", "ab" * 32)
    private(creds / "redis_password", "redis-pass")

    r = check_config(conf)
    assert r.returncode != 0 and "client_secret" in r.stderr, r.stderr  # nothing passed
    r = check_config(conf, "--credentials-dir", str(creds))
    assert r.returncode == 0, r.stderr
    assert "configuration OK" in r.stdout

    private(creds / "shared_key", "not-hex")
    r = check_config(conf, "--credentials-dir", str(creds))
    assert r.returncode != 0
    assert f"{creds}/shared_key" in r.stderr and "64 hex digits" in r.stderr, r.stderr
    private(creds / "shared_key", "ab" * 32)
    (creds / "redis_password").unlink()
    r = check_config(conf, "--credentials-dir", str(creds))
    assert r.returncode != 0 and "redis_password" in r.stderr, r.stderr


def test_more_listen_addresses_than_served_are_refused_at_start(stub, make_tokend):
    addrs = " ".join(f"127.0.0.1:{free_port()}" for _ in range(9))
    t = make_tokend(stub, sections={"server": {"listen": addrs}}, start=False)
    t.start(expect_ready=False)
    assert t.proc.wait(timeout=10 * SLOW) == 1
    assert "9 addresses" in t.log() and "at most 8" in t.log()


def test_an_over_long_line_is_refused_by_its_own_number(stub, make_tokend):
    origins = " ".join(f"https://shop{i}.example" for i in range(30))
    t = make_tokend(stub, sections={"server": {"listen": "127.0.0.1:0", "allowed_origins": origins}},
                    start=False)
    t.start(expect_ready=False)
    assert t.proc.wait(timeout=10 * SLOW) == 1
    lines = open(t.conf_path).read().splitlines()
    n = next(i for i, l in enumerate(lines, 1) if l.startswith("allowed_origins"))
    assert f"{t.conf_path}:{n}: this line is longer than" in t.log(), t.log()
    assert "unknown key" not in t.log()


# ---------------------------------------------------------------- readiness, the watchdog, sockets passed by systemd


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


def test_a_fifo_at_the_secret_path_is_refused_and_sigterm_still_stops(stub, make_tokend):
    t = make_tokend(stub)
    assert t.token("alice").status == 200
    os.unlink(t.secret_path)
    os.mkfifo(t.secret_path, 0o600)
    line = reload(t)
    assert "reload refused" in line and "FIFO" in line, line
    assert t.token("alice").header("x-cache") == "hit"
    assert t.token("bob").status == 200  # still minting with the secret it had
    # a second reload is not stuck behind the first, and SIGTERM stops it
    reload(t)
    assert t.stop(timeout=10) == 0


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


def slow_mint_in_flight(stub, make_tokend):
    """tokend, and a caller whose mint Instacart holds for 1.5 s, in flight
    now. Returns (tokend, finish), finish() giving that caller's answer."""
    stub.fault(match_user="slow", action="ok", delay_ms=1500 * SLOW, count=1)
    t = make_tokend(stub)
    answer = {}
    th = threading.Thread(target=lambda: answer.setdefault("r", t.get("/v1/token?user_id=slow", timeout=20)))
    th.start()
    wait_for(lambda: "tokend_mints_in_flight 1" in t.get("/metrics").body.decode(), what="the mint to start")

    def finish():
        th.join(30)
        return answer["r"]
    return t, finish


def test_a_mint_in_flight_when_the_server_changes_is_not_cached(stub, make_stub, make_tokend):
    second = make_stub()
    t, finish = slow_mint_in_flight(stub, make_tokend)

    t.sections["upstream"]["base_url"] = second.base_url
    t.write_config()
    reload(t)
    r = finish()
    assert r.status == 200, r
    # the old server's token was dropped and minted again at the new one
    assert any(q["user_id"] == "slow" for q in second.token_requests()), "not minted at the new server"
    again = t.token("slow")
    assert again.header("x-cache") == "hit"
    assert again.json()["access_token"] == r.json()["access_token"]
    assert second.stats()["mints"] == 1


def test_a_reload_that_fixes_the_secret_is_not_undone_by_a_mint_sent_before_it(stub, make_tokend):
    # the operator rotates the secret because Instacart refuses the old one;
    # a mint sent with the old one and refused after the reload must not
    # open the breaker on the new secret nor fail its caller
    stub.config(credentials=[("test-client", "rotated-secret")])
    t, finish = slow_mint_in_flight(stub, make_tokend)
    t.write_secret("rotated-secret")
    reload(t)
    r = finish()
    assert r.status == 200, r
    assert t.get("/readyz").status == 200
    assert "rejected the client credentials" not in t.log()
    assert t.token("next").status == 200


def test_the_log_level_changes_on_reload_under_traffic(stub, make_tokend):
    # ThreadSanitizer (CI) reports a race between the reload setting the level
    # and the threads that read it; here, the level takes effect
    t = make_tokend(stub)
    stop = threading.Event()

    def traffic():
        i = 0
        while not stop.is_set() and i < 2000:
            t.token(f"user-{i % 50}")
            i += 1
    th = threading.Thread(target=traffic)
    th.start()
    try:
        for level in ("debug", "notice", "info", "debug", "info"):  # reloads log at notice
            t.sections.setdefault("log", {})["level"] = level
            t.write_config()
            reload(t)
    finally:
        stop.set()
        th.join()
    t.sections["log"]["level"] = "notice"
    t.write_config()
    reload(t)
    before = t.log().count("mint ok")
    assert t.token("someone-new").status == 200
    assert t.log().count("mint ok") == before  # info lines are off at notice


# ---------------------------------------------------------------- ExecReload=


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


# ---------------------------------------------------------------- stopping


def test_sigterm_exits_cleanly(stub, tokend):
    assert tokend.token("u").status == 200
    assert tokend.stop() == 0


def test_sigterm_answers_requests_in_flight_then_exits(stub, make_tokend):
    t = make_tokend(stub, {"server": {"shutdown_timeout": "1s"}})
    stub.fault(action="hang")
    result = {}

    def call():
        result["r"] = t.token("hanging")

    th = threading.Thread(target=call)
    th.start()
    wait_for(lambda: stub.token_requests(), what="the mint to reach the stand-in")
    t0 = time.monotonic()
    assert t.stop() == 0
    th.join(timeout=10)
    assert result["r"].status in (503, 504)
    assert time.monotonic() - t0 < 10


def test_new_connections_are_refused_while_requests_in_flight_drain(stub, make_tokend):
    t = make_tokend(stub, {"server": {"shutdown_timeout": "5s"}})
    stub.fault(action="hang")
    th = threading.Thread(target=lambda: t.token("hanging"))
    th.start()
    wait_for(lambda: stub.token_requests(), what="the mint to reach the stand-in")
    t.signal(signal.SIGTERM)
    wait_for(lambda: "stopping: no new connections" in t.log(), what="the drain to begin")

    def refused():
        try:
            socket.create_connection((t.host, t.port), timeout=1).close()
            return False
        except ConnectionRefusedError:
            return True

    # refused at once, not left in the backlog to time out
    wait_for(refused, timeout=4, what="a new connection to be refused during the drain")
    assert t.proc.poll() is None, "tokend should still be draining"
    assert t.stop() == 0
    th.join(timeout=10)


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


def revocation_pending(stub, notify, make_sd, user, status=503):
    """A tokend under systemd whose revocation of user's token Instacart
    refuses (status), kept as pending (503 revocation_pending); and the
    token: (t, token)."""
    t = make_sd(stub, notify)
    notify.wait("READY", "1")
    r = t.token(user)
    assert r.status == 200, r
    stub.fault(match_path="/v2/oauth/token/revoke", action="status", status=status, count=1000)
    r2 = t.request("DELETE", f"/v1/token?user_id={user}&revoke=true")
    assert r2.status == 503 and r2.json()["error"] == "revocation_pending", r2
    return t, r.json()["access_token"]


def test_a_revocation_instacart_has_not_taken_crosses_the_restart(stub, notify, make_sd):
    """A revocation Instacart refuses now is answered 503
    revocation_pending and tried again until it lands: a restart with the
    cache image (systemctl restart) carries it, and the next process
    revokes the token once Instacart takes revocations again."""
    t, tok = revocation_pending(stub, notify, make_sd, "revoke-across")
    fd = stop_and_take_cache(t, notify)
    assert "with 1 drop, flush or revocation not yet made" in t.log(), t.log()
    stub.reset()  # Instacart takes revocations again
    t2 = make_sd(stub, notify, fds=[fd], names=["cache"])
    notify.wait("READY", "1", count=2)
    wait_for(lambda: stub.stats()["revoked_tokens"] == [tok], timeout=10, interval=0.1,
             what="the revocation to land after the restart")
    assert t2.token("revoke-across").json()["access_token"] != tok


def test_a_start_that_fails_after_taking_the_image_says_what_it_lost(stub, notify, make_sd):
    """The image carried a revocation Instacart had not taken; the next
    process reads it (systemd forgets the image) and then cannot start (its
    port is taken): the revocation is lost, and the log says so instead of
    saying it was taken up (found by an attack)."""
    t, _ = revocation_pending(stub, notify, make_sd, "lost-on-failed-start")
    fd = stop_and_take_cache(t, notify)
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        t2 = make_sd(stub, notify, fds=[fd], names=["cache"], start=False)
        t2.sections["server"]["listen"] = f"127.0.0.1:{busy.getsockname()[1]}"
        t2.write_config()
        t2.start(expect_ready=False)
        assert t2.proc.wait(timeout=15 * SLOW) != 0
    finally:
        busy.close()
    log = t2.log()
    assert "1 drop, flush or revocation from before the restart is lost" in log, log
    assert "taking up again" not in log, log


def test_a_revocation_for_the_server_before_a_reload_is_said_lost_at_the_stop(stub, make_stub, notify, make_sd):
    """A revocation kept for the server before a reload to another cannot go
    in the image (it is tied to the server in use): the stop says it is
    lost, not that it goes over (found by an attack)."""
    second = make_stub()
    t, _ = revocation_pending(stub, notify, make_sd, "moved-then-restarted", status=500)
    t.sections["upstream"]["base_url"] = second.base_url
    t.write_config()
    before = t.log().count("reloaded ")
    t.signal(signal.SIGHUP)
    wait_for(lambda: t.log().count("reloaded ") > before, what="the reload")
    stop_and_take_cache(t, notify)
    log = t.log()
    assert "with 0 drops, flushes or revocations not yet made" in log, log
    assert "1 revocation for the Instacart server or client id used before the last reload: they are lost" \
        in log, log
    assert "they go over in the cache image" not in log, log


def test_a_client_token_without_a_scope_survives_the_restart_with_the_rest(stub, notify, make_sd):
    # cached under the empty scope, it must not make the reader refuse the
    # whole image, which would have every cached token minted again
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
        "version 3": reseal(image[:8] + (3).to_bytes(4, "little") + image[12:]),
        "another boot": reseal(image[:24] + bytes(16) + image[40:]),
        "entry length past the end": reseal(image[:66] + (0xFFFF).to_bytes(2, "little") + image[68:]),
        "padded": reseal(image[:16] + (len(image) - 64 + 5).to_bytes(8, "little") + image[24:]) + bytes(5),
        "bad token characters": reseal(image[:-1] + b'"'),
    }


@pytest.mark.parametrize("kind", ["flipped byte", "truncated", "header only", "empty", "garbage",
                                  "version 3", "another boot", "entry length past the end", "padded",
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


# ---------------------------------------------------------------- a crash


def core_files(d):
    return [n for n in os.listdir(d) if n == "core" or n.startswith("core.")]


def crash(t, workdir, extra_args=()):
    """Starts t in workdir with core dumps allowed by the limit, then SIGSEGV."""
    def unlimited():
        resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    t._log_start = len(t.log())
    logf = open(t.log_path, "ab")
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID")}
    p = subprocess.Popen([TOKEND_EXE, "--config", t.conf_path, *extra_args], cwd=workdir, env=env,
                         stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, preexec_fn=unlimited)
    t.proc = p
    wait_for(lambda: t._find_address() or p.poll() is not None, what="tokend to listen")
    assert t.token("alice").status == 200  # a token and the secret are in memory now
    p.send_signal(signal.SIGSEGV)
    p.wait(timeout=30)
    logf.close()
    t.proc = None
    return p.returncode


@pytest.mark.skipif(bool(WRAPPER) or SANITIZER != "none",
                    reason="valgrind and the sanitizers handle SIGSEGV and core dumps themselves")
def test_a_crash_writes_no_core_dump(stub, make_tokend, tmp_path):
    with open("/proc/sys/kernel/core_pattern") as f:
        pattern = f.read().strip()
    if pattern.startswith("|") or "/" in pattern:
        pytest.skip(f"core_pattern {pattern!r} does not write into the working directory")
    t = make_tokend(stub, start=False)
    # the control: with --allow-core-dumps the same crash does leave a core,
    # so this test can see one
    control = tmp_path / "control"
    control.mkdir()
    assert crash(t, control, ["--allow-core-dumps"]) == -signal.SIGSEGV
    wait_for(lambda: core_files(control), what="the control's core file")
    shutil.rmtree(control)  # it holds the test secret
    # the daemon as shipped: nothing on disk
    plain = tmp_path / "plain"
    plain.mkdir()
    assert crash(t, plain) == -signal.SIGSEGV
    assert core_files(plain) == [], "a crash wrote a core dump holding the secret"


# ---------------------------------------------------------------- a reload for each setting


DURATION_UNITS = {"ms": 1, "s": 1000, "m": 60000, "h": 3600000}

SIZE_UNITS = {"B": 1, "KiB": 1024, "MiB": 1024 * 1024}


def _number(text, units, bare):
    m = re.fullmatch(r"(\d+)([A-Za-z]*)", text)
    return int(m.group(1)) * units[m.group(2) or bare]


def derived_value(k):
    """Another valid value for a key whose type says how, or None."""
    d, lo, hi = k["default"], k["min"], k["max"]
    if d is None:
        return None
    if k["type"] == "integer":
        v = int(d) + 1 if int(d) + 1 <= int(hi) else int(d) - 1
        return str(v)
    if k["type"] == "percentage":
        v = int(d[:-1])
        return f"{v + 1 if v + 1 <= int(hi[:-1]) else v - 1}%"
    if k["type"] == "duration":
        v, top = _number(d, DURATION_UNITS, "s"), _number(hi, DURATION_UNITS, "s")
        return f"{v * 2 if 0 < v * 2 <= top else v // 2}ms"
    if k["type"] == "size":
        v, top = _number(d, SIZE_UNITS, "B"), _number(hi, SIZE_UNITS, "B")
        return str(v + 1 if v + 1 <= top else v - 1)
    if k["type"] == "mode":
        return "0640" if d != "0640" else "0600"
    if k["type"] == "boolean":
        return "yes" if d == "no" else "no"
    if k["type"] == "level":
        return "debug" if d != "debug" else "info"
    return None


def string_values(t, stub, tmp_path):
    """Changes for the keys whose valid values depend on this machine: each
    a dict {section: {key: value}}, naming the key itself and any key it
    needs alongside (None removes a key)."""
    secret2 = tmp_path / "client-secret-2"
    shutil.copy(t.secret_path, secret2)
    os.chmod(secret2, 0o600)
    creds = tmp_path / "proxy-credentials"
    creds.write_text("user:password\n")
    os.chmod(creds, 0o600)
    password = tmp_path / "redis-password"
    password.write_text("not-the-password\n")
    os.chmod(password, 0o600)
    ca = tmp_path / "ca.pem"
    if os.path.exists("/etc/ssl/certs/ca-certificates.crt"):
        shutil.copy("/etc/ssl/certs/ca-certificates.crt", ca)
    keys = Keys(tmp_path / "keys", {"k": ("token",)})
    sentinels = {"redis": None, "sentinels": "127.0.0.1:26379 127.0.0.1:26380", "master_name": "other"}
    return {
        ("upstream", "base_url"): {"upstream": {"base_url": stub.base_url.replace("127.0.0.1", "localhost")}},
        ("upstream", "client_id"): {"upstream": {"client_id": "another-client"}},
        ("upstream", "client_secret_file"): {"upstream": {"client_secret_file": str(secret2)}},
        ("upstream", "scope"): {"upstream": {"scope": "connect:other"}},
        ("upstream", "ca_file"): {"upstream": {"ca_file": str(ca)}},
        ("upstream", "proxy"): {"upstream": {"proxy": "http://127.0.0.1:9"}},
        ("upstream", "proxy_credentials_file"): {"upstream": {"proxy": "http://127.0.0.1:9",
                                                              "proxy_credentials_file": str(creds)}},
        ("server", "listen"): {"server": {"listen": "127.0.0.1:0 [::1]:0"}},
        ("server", "socket_group"): {"server": {"socket_group": grp.getgrgid(os.getgid()).gr_name}},
        ("server", "allowed_uids"): {"server": {"allowed_uids": str(os.getuid())}},
        ("server", "allowed_gids"): {"server": {"allowed_gids": str(os.getgid())}},
        ("server", "allowed_hosts"): {"server": {"allowed_hosts": "tokend.internal"}},
        ("server", "allowed_origins"): {"server": {"allowed_origins": "https://shop.example"}},
        ("auth", "keys_file"): {"auth": {"keys_file": keys.path}},
        ("frontend", "user_header"): {"frontend": {"user_header": "X-Site-User"}},
        ("shared", "redis"): {"shared": {"redis": "127.0.0.1:1"}},
        ("shared", "sentinels"): {"shared": sentinels},
        ("shared", "master_name"): {"shared": sentinels},
        ("shared", "username"): {"shared": {"username": "tokend", "password_file": str(password)}},
        ("shared", "password_file"): {"shared": {"password_file": str(password)}},
        ("shared", "key_file"): {"shared": {"key_file": write_key_file(tmp_path / "key-2")}},
        ("shared", "previous_key_file"): {"shared": {"previous_key_file": write_key_file(tmp_path / "key-0")}},
        ("shared", "prefix"): {"shared": {"prefix": "other"}},
        ("shared", "tls_ca_file"): {"shared": {"tls": "yes", "tls_ca_file": str(ca)}},
    }


def named(log, what):
    """The keys a reload's log line names as `what` ("applied" or "restart")."""
    pattern = r"changed (.*): applied$" if what == "applied" else r"changed (.*): these settings need a restart"
    out = set()
    for line in log.splitlines():
        m = re.search(pattern, line)
        if m:
            out.update(m.group(1).split(", "))
    return out


def test_a_reload_applies_each_key_or_names_it_as_needing_a_restart(stub, redis, key_file, make_tokend,
                                                                    tmp_path):
    keys = table()
    assert len(keys) >= 40, "the table of settings looks truncated"
    t = make_tokend(stub, {"shared": {**redis.shared(), "key_file": key_file}})
    base = {s: dict(kv) for s, kv in t.sections.items()}
    values = string_values(t, stub, tmp_path)
    tls = has_redis_tls()
    problems = []

    def reload():
        """SIGHUP; the log lines of that reload once it is done."""
        before = len(t.log())
        t.signal(signal.SIGHUP)
        done = re.compile(r"reloaded |reload refused|reload failed")
        wait_for(lambda: done.search(t.log()[before:]), what="the reload to be logged")
        return t.log()[before:]

    for k in keys:
        name = f"[{k['section']}] {k['key']}"
        change = values.get((k["section"], k["key"]))
        if change is None:
            v = derived_value(k)
            if v is None:
                problems.append(f"{name}: the test has no value to change it to; add one to string_values()")
                continue
            change = {k["section"]: {k["key"]: v}}
        changed = {f"[{s}] {key}" for s, kv in change.items() for key, v in kv.items() if base.get(s, {}).get(key) != v}
        assert name in changed, name
        needs_tls = change.get("shared", {}).get("tls") == "yes"

        t.sections = {s: dict(kv) for s, kv in base.items()}
        for s, kv in change.items():
            t.sections.setdefault(s, {}).update(kv)
        t.write_config()
        log = reload()
        if needs_tls and not tls:
            # a build without TLS to Redis refuses it, and says so
            if "reload refused" not in log or "no TLS for Redis" not in log:
                problems.append(f"{name}: tls = yes was not refused by a build without TLS to Redis: {log}")
        elif "reloaded " not in log:
            problems.append(f"{name}: the reload changing it was refused: {log.strip()}")
        else:
            by_table = {f"[{r['section']}] {r['key']}": r["reload"] for r in keys}
            want_applied = {n for n in changed if by_table[n] == "applies"}
            want_restart = changed - want_applied
            got_applied, got_restart = named(log, "applied"), named(log, "restart")
            if got_applied != want_applied or got_restart != want_restart:
                problems.append(f"{name}: the reload named as applied {sorted(got_applied)} and as needing "
                                f"a restart {sorted(got_restart)}; the table says {sorted(want_applied)} "
                                f"and {sorted(want_restart)}")

        # back to the configuration it started with: nothing is left
        # needing a restart, and what was applied is applied back
        t.sections = {s: dict(kv) for s, kv in base.items()}
        t.write_config()
        log = reload()
        if "reloaded " not in log or named(log, "restart"):
            problems.append(f"{name}: changing it back: {log.strip()}")
        assert t.proc.poll() is None, t.log()
    assert not problems, "\n".join(problems)


def test_a_setting_that_needs_a_restart_keeps_its_running_value_in_status(stub, make_tokend):
    """/v1/status shows the values in use: after a reload, the new one of a
    key a reload applies, the old one of a key that needs a restart."""
    t = make_tokend(stub)
    t.sections.setdefault("cache", {})["max_entries"] = "7"
    t.sections.setdefault("log", {})["level"] = "debug"
    t.write_config()
    before = len(t.log())
    t.signal(signal.SIGHUP)
    wait_for(lambda: "reloaded " in t.log()[before:], what="the reload")
    config = t.get("/v1/status").json()["config"]
    assert config["log"]["level"] == "debug"
    assert config["cache"]["max_entries"] == 100000


# ---------------------------------------------------------------- the command line


def test_version_and_help():
    v = run_tokend("--version")
    assert v.returncode == 0 and v.stdout.startswith("instacart-tokend ")
    h = run_tokend("--help")
    assert h.returncode == 0 and "--config" in h.stdout and "--check-config" in h.stdout
    bad = run_tokend("--bogus")
    assert bad.returncode != 0


def getopt_long_options():
    """The long options of src/main.c's getopt table."""
    with open(os.path.join(SOURCE, "src", "main.c")) as f:
        text = f.read()
    body = re.search(r"static const struct option options\[\] = \{(.*?)\n\};", text, re.S)
    assert body, "src/main.c has no getopt table named options[]"
    names = re.findall(r'\{ "([a-z-]+)",', body.group(1))
    assert len(names) >= 5
    return names


def test_help_names_every_option():
    r = run("--help")
    assert r.returncode == 0 and r.stderr == ""
    for name in getopt_long_options():
        assert re.search(rf"--{name}\b", r.stdout), f"--help does not mention --{name}:\n{r.stdout}"
    assert "-c, --config FILE" in r.stdout


def test_an_unknown_option_points_at_help():
    r = run("--no-such-option")
    assert r.returncode == 2 and "--help" in r.stderr


def _library_version(soname, symbol):
    lib = ctypes.CDLL(ctypes.util.find_library(soname) or f"lib{soname}.so")
    fn = getattr(lib, symbol)
    fn.restype = ctypes.c_char_p
    return fn().decode()


def test_version_says_what_the_build_can_do_and_what_it_runs_on():
    r = run("--version")
    assert r.returncode == 0, r.stderr
    lines = dict(line.split(": ", 1) for line in r.stdout.splitlines()[1:])
    with open(os.path.join(BUILD, "meson-info", "intro-projectinfo.json")) as f:
        version = json.load(f)["version"]
    assert r.stdout.splitlines()[0] == f"instacart-tokend {version}"
    with open(os.path.join(BUILD, "build-config.h")) as f:
        built_with_tls = re.search(r"^#define HAVE_HIREDIS_SSL\b", f.read(), re.M) is not None
    assert lines["TLS to Redis"].startswith("yes" if built_with_tls else "no")
    hiredis = subprocess.run(["pkg-config", "--modversion", "hiredis"], capture_output=True, text=True).stdout.strip()
    assert lines["fleet mode"] == f"yes (hiredis {hiredis})"
    # the libraries loaded at run time, asked by the same calls from here
    assert lines["libmicrohttpd"] == _library_version("microhttpd", "MHD_get_version")
    curl = _library_version("curl", "curl_version")  # "libcurl/7.88.1 OpenSSL/3.0.11 ..."
    assert curl.startswith(f"libcurl/{lines['libcurl'].split(' ')[0]} ")
    assert lines["libcurl"].split(" with ")[1] in curl


def test_describe_config_text_and_json_name_the_same_keys():
    keys = table()
    text = run("--describe-config").stdout
    for k in keys:
        assert re.search(rf"^{k['key']} = {re.escape(k['default'] or '(unset)')}$", text, re.M), k
        assert k["reload"] in ("applies", "restart")
    assert run("--describe-config=yaml").returncode == 2


# ---------------------------------------------------------------- the manual pages and the repository's documents


def man_text(page):
    """A built man page's source with roff's escaped minus signs plain."""
    with open(os.path.join(BUILD, "config", "man", page)) as f:
        return f.read().replace("\\-", "-")


def test_the_daemons_man_page_names_every_option_message_id_and_route():
    man = man_text("instacart-tokend.8")
    for name in getopt_long_options():
        assert f"--{name}" in man, f"instacart-tokend(8) does not document --{name}"
    with open(os.path.join(SOURCE, "include", "log.h")) as f:
        ids = re.findall(r'#define LOG_ID_\w+ "([0-9a-f]{32})"', f.read())
    assert len(ids) >= 5
    for i in ids:
        assert i in man, f"instacart-tokend(8) does not list MESSAGE_ID {i}"
    with open(os.path.join(SOURCE, "src", "routes.c")) as f:
        routes = re.findall(r'\{ \.name = "(/[^"]*)"', f.read())
    assert len(routes) >= 8
    for r in routes:
        assert re.search(rf"\b[A-Z]+ {re.escape(r)}\b", man), f"instacart-tokend(8) does not list the route {r}"


def test_the_configuration_man_page_has_every_key_with_its_default_and_reload_rule():
    man = man_text("instacart-tokend.conf.5")
    for k in table():
        block = re.search(rf"^\.SS \[{k['section']}\]$(.*?)(?=^\.SS |^\.SH )", man, re.S | re.M)
        assert block, f"instacart-tokend.conf(5) has no [{k['section']}]"
        entry = re.search(rf"^\.B {k['key']}\n(.*?)(?=^\.TP|\Z)", block.group(1), re.S | re.M)
        assert entry, f"instacart-tokend.conf(5) lacks [{k['section']}] {k['key']}"
        text = entry.group(1)
        assert (f"default \\fB{k['default']}\\fP" if k["default"] else "no default") in text, text
        assert ("a reload applies it" if k["reload"] == "applies" else "needs a restart") in text, text


def test_no_file_of_the_repository_cites_a_document_outside_it():
    root = os.path.join(os.path.dirname(__file__), "..", "..")
    bad = []
    for top in ("src", "include", "tests", "systemd", "config", "README.md", "meson.build"):
        base = os.path.join(root, top)
        paths = [base] if os.path.isfile(base) else [os.path.join(d, f) for d, _, fs in os.walk(base) for f in fs]
        for p in paths:
            if "/corpus/" in p or p.endswith((".pyc",)) or os.path.samefile(p, __file__):
                continue
            try:
                text = open(p, encoding="utf-8").read()
            except (UnicodeDecodeError, OSError):
                continue
            if re.search(r"(libmicrohttpd|real-clients|fleet)-notes\.md|\.\./shared/|instacart-api\.md|STYLE\.md", text):
                bad.append(os.path.relpath(p, root))
    assert bad == [], f"these cite documents outside the repository: {bad}"
