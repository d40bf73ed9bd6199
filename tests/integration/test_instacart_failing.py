"""Instacart failing, and the way to it, against the real stand-in: what a
caller gets for each way Instacart can fail (502 for a refusal, 503 with
Retry-After, 504 past the deadline), retries with backoff and Retry-After,
the circuit breaker, a 429 pausing every mint, answers not to be trusted,
a bounded queue, cached tokens served through an outage; HTTPS to
Instacart (the stand-in behind a real nginx terminating TLS, tls_fixture.py,
with a throwaway CA given to tokend as [upstream] ca_file): certificates
checked, connections and TLS sessions reused, HTTP/2 multiplexed, TLS
failures reported at once with their own codes; and the forward proxy (a
real tinyproxy), used only when configured, never taken from the
environment."""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest

import conftest
from conftest import SLOW, assert_no_secrets, concurrently, free_port, metrics, reload, wait_for
from sec_helpers import ShortDir, start_unix_only, unix_request
from tls_fixture import Pki, TlsFront

FAST = {"attempt_timeout": "1s", "request_timeout": "3s", "retry_base": "10ms", "retry_max": "50ms"}


def upstream(**kw):
    return {"upstream": {**FAST, **kw}}


# Short deadlines, stretched under valgrind (SLOW), where one attempt at a 503
# can take longer than 500 ms and then ends as a timeout (504), not a 503.
DEADLINES = {"upstream": {"attempt_timeout": f"{500 * SLOW}ms", "request_timeout": f"{1500 * SLOW}ms",
                     "retry_base": "10ms", "retry_max": "50ms", "breaker_failures": "1000"}}


# ---------------------------------------------------------------- what a caller gets when Instacart fails


@pytest.mark.parametrize("status,error", [(400, "invalid_grant"), (401, "invalid_client"),
                                          (403, "forbidden"), (404, "not_found")])
def test_instacart_refusal_is_502_with_its_status_and_code(stub, make_tokend, status, error):
    t = make_tokend(stub, DEADLINES)
    stub.fault(action="status", status=status, body=json.dumps({"error": error, "error_description": "x"}))
    r = t.token("refused")
    assert r.status == 502, r
    body = r.json()
    assert body["error"] == "upstream_rejected"
    assert body["upstream_status"] == status
    assert body["upstream_error"] == error
    assert str(status) in body["error_description"]
    assert len(stub.token_requests()) == 1, "a 4xx must not be retried"


@pytest.mark.parametrize("fault", [
    {"action": "status", "status": 500},
    {"action": "status", "status": 503},
    {"action": "malformed"},
    {"action": "truncate"},
    {"action": "drop"},
    {"action": "status", "status": 200, "body": "not json"},
    {"action": "ok", "expires_in": 0},
    {"action": "ok", "access_token": None},
])
def test_instacart_failure_is_503_with_retry_after(stub, make_tokend, fault):
    t = make_tokend(stub, DEADLINES)
    stub.fault(**fault)
    r = t.token("failing")
    assert r.status == 503, r
    assert r.json()["error"] == "upstream_unavailable"
    assert int(r.header("retry-after")) >= 1
    stub.reset()
    ok = t.token("failing")
    assert ok.status == 200 and ok.header("x-cache") == "miss", "a failure must not be cached"


def test_instacart_unreachable_is_503(make_tokend, tmp_path):
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now

    class Nowhere:
        base_url = f"http://127.0.0.1:{port}"

    t = make_tokend(Nowhere, DEADLINES)
    r = t.token("u")
    assert r.status == 503 and r.header("retry-after")
    assert r.json()["upstream_error"] if "upstream_error" in r.json() else True
    assert "connection_refused" in r.json()["error_description"]


def test_instacart_too_slow_is_504(stub, make_tokend):
    t = make_tokend(stub, DEADLINES)
    stub.fault(action="hang")
    t0 = time.monotonic()
    r = t.token("slow")
    assert r.status == 504, r
    assert r.json()["error"] == "upstream_timeout"
    assert time.monotonic() - t0 < 10 * SLOW


@pytest.mark.parametrize("fault", [
    {"access_token": None},
    {"access_token": ""},
    {"access_token": "has space"},
    {"token_type": "mac"},
    {"token_type": None},
    {"expires_in": None},
    {"expires_in": "86400"},
    {"expires_in": 0},
    {"expires_in": -5},
    {"expires_in": 1.5},
    {"expires_in": 604801},
    {"expires_in": 1e300},
])
def test_untrustworthy_answers_are_503_and_never_cached(stub, make_tokend, fault):
    t = make_tokend(stub, upstream())
    stub.fault(action="ok", count=1, **fault)
    r = t.token("doubtful")
    assert r.status == 503, r
    assert r.json()["error"] == "upstream_unavailable"
    assert t.token("doubtful").header("x-cache") == "miss"


@pytest.mark.parametrize("fault", [
    {"action": "malformed"},
    {"action": "truncate"},
    {"action": "status", "status": 200, "body": "{" + " " * 70000 + "}"},
    {"action": "status", "status": 200, "body": "[]"},
])
def test_broken_answers_are_503_and_never_cached(stub, make_tokend, fault):
    t = make_tokend(stub, upstream(breaker_failures="1000"))
    # A truncated answer is a dropped connection: retried, so it must persist.
    stub.fault(count=-1 if fault["action"] == "truncate" else 1, **fault)
    r = t.token("broken")
    assert r.status == 503, r
    stub.reset()
    assert t.token("broken").header("x-cache") == "miss"


# ---------------------------------------------------------------- retries


def test_retry_then_success(stub, make_tokend):
    t = make_tokend(stub, upstream())
    stub.fault(action="status", status=503, count=2)
    r = t.token("retried")
    assert r.status == 200
    assert [q["status"] for q in stub.token_requests()] == [503, 503, 200]


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_retryable_statuses_are_retried(stub, make_tokend, status):
    t = make_tokend(stub, upstream())
    stub.fault(action="status", status=status, count=1)
    assert t.token("again").status == 200
    assert len(stub.token_requests()) == 2


@pytest.mark.parametrize("fault", [{"action": "drop", "count": 1}, {"action": "hang", "count": 1}])
def test_connection_failures_are_retried(stub, make_tokend, fault):
    t = make_tokend(stub, upstream(attempt_timeout="300ms"))
    stub.fault(**fault)
    assert t.token("flaky").status == 200
    assert len(stub.token_requests()) >= 1


def test_retry_after_is_respected(stub, make_tokend):
    t = make_tokend(stub, upstream(request_timeout="5s"))
    stub.fault(action="status", status=503, retry_after="1", count=1)
    assert t.token("patient").status == 200
    first, second = stub.token_requests()
    assert second["t_recv"] - first["t_done"] >= 0.95


def test_retry_after_as_http_date(stub, make_tokend):
    from email.utils import formatdate
    t = make_tokend(stub, upstream(request_timeout="6s"))
    stub.fault(action="status", status=503, retry_after=formatdate(time.time() + 2, usegmt=True), count=1)
    assert t.token("dated").status == 200
    first, second = stub.token_requests()
    assert second["t_recv"] - first["t_done"] >= 0.9


@pytest.mark.parametrize("status", [400, 401, 403, 404])
def test_no_retry_on_client_errors(stub, make_tokend, status):
    t = make_tokend(stub, upstream())
    stub.fault(action="status", status=status, count=1)
    assert t.token("once").status == 502
    assert len(stub.token_requests()) == 1


# ---------------------------------------------------------------- the circuit breaker, 429, and refused credentials


def test_circuit_opens_answers_at_once_lets_one_probe_and_closes(stub, make_tokend):
    t = make_tokend(stub, upstream(breaker_failures="3", breaker_cooldown="2s", request_timeout="1s"))
    stub.fault(action="status", status=500)
    r = t.token("c0")  # retried until the breaker opens
    assert r.status == 503
    n = len(stub.token_requests())
    assert n >= 3
    opened = time.monotonic()
    # while open: misses get 503 with Retry-After at once, nothing reaches Instacart
    for i in range(5):
        r = t.token(f"open{i}")
        assert r.status == 503 and int(r.header("retry-after")) >= 1
    assert len(stub.token_requests()) == n
    assert time.monotonic() - opened < 2, "the open circuit must answer without waiting"
    stub.reset()
    # after the cool-down one probe goes through; it succeeds and closes the circuit
    wait_for(lambda: t.token("probe").status == 200, timeout=10, interval=0.2, what="the probe")
    assert t.token("after").status == 200
    assert "circuit to Instacart open" in t.log() and "circuit to Instacart closed" in t.log()


def test_rate_limit_pauses_all_minting(stub, make_tokend):
    t = make_tokend(stub, upstream(request_timeout="5s"))
    stub.fault(action="status", status=429, retry_after="1", count=1, match_user="first")
    assert t.token("first").status == 200
    assert t.token("second").status == 200
    reqs = stub.token_requests()
    limited = reqs[0]
    assert limited["status"] == 429
    later = [q for q in reqs[1:]]
    assert all(q["t_recv"] - limited["t_done"] >= 0.95 for q in later), "minted during the pause"


def test_rate_limit_past_the_deadline_answers_503_at_once(stub, make_tokend):
    t = make_tokend(stub, upstream(request_timeout="2s"))
    stub.fault(action="status", status=429, retry_after="30", count=1)
    r = t.token("limited")
    assert r.status == 503 and int(r.header("retry-after")) >= 20
    r = t.token("other")
    assert r.status == 503
    assert len(stub.token_requests()) == 1


def test_rejected_credentials_are_not_hammered_and_logged_once(stub, make_tokend):
    t = make_tokend(stub, upstream(breaker_cooldown="30s"))
    stub.fault(action="status", status=401, body='{"error":"invalid_client"}')
    for i in range(10):
        r = t.token(f"user{i}")
        assert r.status == 502
        assert r.json()["upstream_error"] == "invalid_client"
    assert len(stub.token_requests()) == 1
    assert t.log().count("rejected the client credentials") == 1


def test_a_rejected_user_is_remembered_briefly(stub, make_tokend):
    t = make_tokend(stub, {"cache": {"failure_ttl": "2s"}, **upstream()})
    stub.fault(action="status", status=400, body='{"error":"invalid_grant"}', match_user="bad")
    for _ in range(5):
        r = t.token("bad")
        assert r.status == 502 and r.json()["upstream_error"] == "invalid_grant"
    assert len(stub.token_requests()) == 1
    assert t.token("good").status == 200  # others are unaffected
    wait_for(lambda: len(stub.token_requests()) == 2 and t.token("bad") and
             len(stub.token_requests()) == 3, timeout=10, interval=0.2, what="the memory to lapse")


# ---------------------------------------------------------------- serving through trouble


def test_failed_refresh_keeps_the_old_token_in_service(stub, make_tokend):
    stub.config(expires_in=6)
    t = make_tokend(stub, {"cache": {"refresh_before": "50%", "min_ttl": "1s"}, **upstream()})
    first = t.token("sturdy").json()["access_token"]
    minted = time.monotonic()
    stub.fault(action="status", status=503)
    wait_for(lambda: time.monotonic() - minted > 3.4, what="the refresh window")
    for _ in range(3):
        r = t.token("sturdy")
        assert r.status == 200 and r.json()["access_token"] == first
    wait_for(lambda: len(stub.token_requests()) >= 2, what="a refresh attempt")


def test_cached_users_are_served_while_instacart_hangs_on_another(stub, make_tokend):
    t = make_tokend(stub, upstream(attempt_timeout="20s", request_timeout="20s"))
    users = [f"cached{i}" for i in range(10)]
    for u in users:
        assert t.token(u).status == 200
    stub.fault(action="hang", match_user="stuck")
    hung = {}
    th = threading.Thread(target=lambda: hung.setdefault("r", t.token("stuck")))
    th.start()
    wait_for(lambda: any(q["user_id"] == "stuck" for q in stub.requests()) or
             stub.stats()["token_requests"] > 10, what="the hanging mint to start")
    rs = concurrently(lambda i: t.token(users[i % 10]), range(100), 20)
    assert [r.header("x-cache") for r in rs] == ["hit"] * 100
    assert th.is_alive(), "cached users were answered only after the hang"
    stub.reset()  # releases the hang
    th.join(timeout=30)


def test_concurrency_limit_with_a_bounded_queue(stub, make_tokend):
    t = make_tokend(stub, upstream(max_concurrent="2", queue_max="2", attempt_timeout="20s",
                                   request_timeout="20s"))
    stub.fault(action="hang")
    results = {}

    def call(u):
        results[u] = t.token(u)

    threads = [threading.Thread(target=call, args=(f"q{i}",)) for i in range(4)]
    for th in threads:
        th.start()
    wait_for(lambda: stub.stats()["token_requests"] >= 2, what="two mints in flight")
    # and the other two queued, not still on their way in (a CI run sent the
    # fifth before the fourth had been read: it was queued and hung, and the
    # fourth was refused)
    wait_for(lambda: metrics(t)[0]["tokend_mints_in_flight"] >= 4, what="two mints queued")
    # 2 in flight + 2 queued: the fifth and later are refused at once
    for i in range(3):
        r = t.token(f"over{i}")
        assert r.status == 503 and "overloaded" in r.json()["error_description"]
    assert stub.stats()["token_requests"] == 2, "never more than max_concurrent at once"
    stub.reset()
    for th in threads:
        th.join(timeout=30)
    assert all(r.status in (200, 503) for r in results.values())


def test_cached_tokens_are_served_through_an_outage(stub, make_tokend):
    t = make_tokend(stub, upstream(breaker_failures="2"))
    tok = t.token("loyal").json()["access_token"]
    stub.fault(action="status", status=503)
    assert t.token("newcomer").status == 503  # opens the circuit
    for _ in range(10):
        r = t.token("loyal")
        assert r.status == 200 and r.json()["access_token"] == tok


# ---------------------------------------------------------------- connections to Instacart


def test_connections_to_instacart_are_reused(stub, tokend):
    for i in range(5):
        assert tokend.token(f"reuse{i}").header("x-cache") == "miss"
    m = metrics(tokend)[0]
    assert m["tokend_upstream_requests_total"] == 5
    assert m["tokend_upstream_connections_total"] == 1, "a new connection (TLS handshake) per mint"


# ---------------------------------------------------------------- HTTPS to Instacart


SECRET = "tls-test-secret"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def make_front(tmp_path, stub):
    """make(cert_name, **kw): a started TlsFront before the test's stand-in."""
    made = []

    def make(pki, cert_name="good", **kw):
        f = TlsFront(tmp_path / f"front{len(made)}", stub, pki.cert(cert_name), **kw)
        made.append(f)
        return f.start()

    yield make
    for f in made:
        f.stop()


def https_tokend(make_tokend, stub, front, ca_file, **upstream):
    stub.config(credentials=[("test-client", SECRET)])
    sections = {"upstream": {"base_url": front.base_url, **upstream}}
    if ca_file:
        sections["upstream"]["ca_file"] = ca_file
    return make_tokend(stub, sections, secret=SECRET)


def metric(t, name):
    r = t.get("/metrics")
    assert r.status == 200
    m = re.search(rf"^{re.escape(name)} (\S+)$", r.body.decode(), re.M)
    assert m, f"{name} is not in /metrics"
    return float(m.group(1))


@pytest.mark.parametrize("http2", [False, True], ids=["http1.1", "http2"])
def test_mints_over_https_with_the_test_ca(pki, stub, make_front, make_tokend, http2):
    front = make_front(pki, http2=http2)
    t = https_tokend(make_tokend, stub, front, pki.ca("main"))
    r = t.token("tls-user")
    assert r.status == 200, r
    assert [q["user_id"] for q in stub.token_requests()] == ["tls-user"]
    (conn, _, proto, tls, status), = front.wait_requests(1)
    assert proto == ("HTTP/2.0" if http2 else "HTTP/1.1")
    assert tls in ("TLSv1.2", "TLSv1.3") and status == "200"
    assert t.token("tls-user").header("x-cache") == "hit"
    assert_no_secrets(t.log(), SECRET, r.json()["access_token"])


@pytest.mark.parametrize("http2", [False, True], ids=["http1.1", "http2"])
def test_200_sequential_mints_make_one_tls_handshake(pki, stub, make_front, make_tokend, http2):
    front = make_front(pki, http2=http2)
    t = https_tokend(make_tokend, stub, front, pki.ca("main"))
    for i in range(200):
        r = t.token(f"seq{i}")
        assert r.status == 200, r
    assert len(stub.token_requests()) == 200
    assert len(front.wait_requests(200)) == 200
    assert len(front.connections()) == 1, front.connections()
    assert metric(t, "tokend_upstream_connections_total") == 1


def test_a_reopened_connection_resumes_the_tls_session(pki, stub, make_front, make_tokend):
    # nginx closes each connection after one request: every mint reconnects
    front = make_front(pki, http2=False, keepalive_requests=1)
    t = https_tokend(make_tokend, stub, front, pki.ca("main"))
    for i in range(10):
        assert t.token(f"again{i}").status == 200
    front.wait_requests(10)
    conns = front.connections()
    assert len(conns) == 10
    assert front.full_handshakes() == 1, conns


def test_a_burst_over_http2_shares_one_connection(pki, stub, make_front, make_tokend):
    front = make_front(pki, http2=True)
    t = https_tokend(make_tokend, stub, front, pki.ca("main"))
    rs = concurrently(lambda u: t.get(f"/v1/token?user_id={u}", timeout=60), [f"burst{i}" for i in range(500)], 500)
    assert [r.status for r in rs] == [200] * 500
    assert len(stub.token_requests()) == 500
    assert {p for _, _, p, *_ in front.wait_requests(500)} == {"HTTP/2.0"}
    assert len(front.connections()) <= 2, front.connections()


def test_a_burst_over_http1_opens_at_most_max_concurrent_connections(pki, stub, make_front, make_tokend):
    front = make_front(pki, http2=False)
    t = https_tokend(make_tokend, stub, front, pki.ca("main"), max_concurrent=8)
    rs = concurrently(lambda u: t.get(f"/v1/token?user_id={u}", timeout=60), [f"h1burst{i}" for i in range(500)], 500)
    assert [r.status for r in rs] == [200] * 500
    assert len(stub.token_requests()) == 500
    front.wait_requests(500)
    assert 1 <= len(front.connections()) <= 8, front.connections()


@pytest.mark.parametrize("http2", [False, True], ids=["http1.1", "http2"])
def test_a_hung_mint_does_not_hold_back_the_next(pki, stub, make_front, make_tokend, http2):
    # a burst waits for the connection being set up (to multiplex over it),
    # but only until the handshake says whether it can: not for an answer
    front = make_front(pki, http2=http2)
    t = https_tokend(make_tokend, stub, front, pki.ca("main"), attempt_timeout="20s", request_timeout="20s")
    stub.fault(action="hang", count=1)
    hung = {}
    th = threading.Thread(target=lambda: hung.setdefault("r", t.get("/v1/token?user_id=stuck", timeout=30)))
    th.start()
    try:
        wait_for(lambda: stub.stats()["token_requests"] >= 1, what="the first mint to hang")
        r = t.get("/v1/token?user_id=unstuck", timeout=5)
        assert r.status == 200, r
    finally:
        stub.reset()
        th.join(timeout=30)


FAILURES = {
    "wrong_host": (dict(cert_name="other_name"), "main", "tls_wrong_host"),
    "untrusted_ca": (dict(cert_name="other_ca"), "main", "tls_untrusted"),
    "untrusted_by_the_system": (dict(cert_name="good"), None, "tls_untrusted"),
    "expired": (dict(cert_name="expired"), "main", "tls_expired"),
    "tls1.1_only": (dict(cert_name="good", protocols="TLSv1.1", ciphers="DEFAULT@SECLEVEL=0"), "main",
                    "tls_protocol"),
}


@pytest.mark.parametrize("case", sorted(FAILURES))
def test_tls_failures_are_refused_at_once_with_their_code(pki, stub, make_front, make_tokend, case):
    front_kw, ca, code = FAILURES[case]
    front = make_front(pki, **front_kw)
    t = https_tokend(make_tokend, stub, front, pki.ca(ca) if ca else None)
    r = t.token("tls-victim")
    assert r.status == 503, r
    body = r.json()
    assert body["error"] == "upstream_unavailable"
    assert body["upstream_error"] == code
    assert code in body["error_description"]
    # one attempt, no retry, nothing reached Instacart, nothing cached
    assert metric(t, "tokend_upstream_requests_total") == 1
    assert metric(t, "tokend_upstream_retries_total") == 0
    assert stub.token_requests() == [] and front.requests() == []
    assert metric(t, "tokend_cache_entries") == 0
    line = wait_for(lambda: re.search(rf"cannot reach Instacart: {code} \((.+)\); not retried", t.log()),
                    what="the cause in the log")
    assert line.group(1) != "no detail"
    assert re.search(rf"mint failed .*error={code} attempts=1 ", t.log())
    assert_no_secrets(t.log(), SECRET)


def test_a_corrupt_ca_file_fails_the_mint_at_once(pki, stub, make_front, make_tokend, tmp_path):
    # it looks like PEM, so it passes the check at start; curl cannot use it
    ca = str(tmp_path / "corrupt-ca.pem")
    with open(ca, "w") as f:
        f.write("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    front = make_front(pki)
    t = https_tokend(make_tokend, stub, front, ca)
    r = t.token("tls-victim")
    assert r.status == 503 and r.json()["upstream_error"] == "tls_ca_file", r
    assert metric(t, "tokend_upstream_requests_total") == 1
    assert "cannot reach Instacart: tls_ca_file (" in t.log()
    assert stub.token_requests() == []


def write_ca(path, src):
    with open(src) as f:
        pem = f.read()
    with open(path + ".tmp", "w") as f:
        f.write(pem)
    os.rename(path + ".tmp", path)


def reload_until_logged(t, what):
    """SIGHUP, then waits for one more log line holding `what`."""
    n = t.log().count(what)
    t.signal(signal.SIGHUP)
    wait_for(lambda: t.log().count(what) > n, what=what)


def test_ca_file_replaced_and_reloaded_is_trusted_for_the_next_connection(pki, stub, make_front, make_tokend,
                                                                         tmp_path):
    front = make_front(pki, cert_name="other_ca")
    ca = str(tmp_path / "ca.pem")
    write_ca(ca, pki.ca("main"))
    t = https_tokend(make_tokend, stub, front, ca)
    assert t.token("rot0").json()["upstream_error"] == "tls_untrusted"

    write_ca(ca, pki.ca("other"))
    reload_until_logged(t, "reloaded ")
    assert t.token("rot1").status == 200

    # a bad file is refused and the CA in use stays
    with open(ca, "w"):
        pass
    reload_until_logged(t, "reload refused")
    assert re.search(rf"tokend.conf:\d+: \[upstream\] ca_file = '{re.escape(ca)}' is empty", t.log())
    assert t.token("rot2").status == 200

    # back to a CA that does not sign the server's certificate: the open
    # connection, made under the old CA, must not carry the next mint
    write_ca(ca, pki.ca("main"))
    reload_until_logged(t, "reloaded ")
    assert t.token("rot3").json()["upstream_error"] == "tls_untrusted"
    assert [q["user_id"] for q in stub.token_requests()] == ["rot1", "rot2"]


@pytest.mark.parametrize("content,why", [
    (None, r"cannot be opened \(No such file or directory\)"),
    ("", "is empty"),
    ("not a certificate\n", r"holds no PEM certificate"),
])
def test_a_bad_ca_file_is_refused_at_start_with_file_and_line(stub, make_tokend, tmp_path, content, why):
    ca = str(tmp_path / "bad-ca.pem")
    if content is not None:
        with open(ca, "w") as f:
            f.write(content)
    t = make_tokend(stub, {"upstream": {"base_url": "https://localhost:9", "ca_file": ca}}, start=False)
    t.start(expect_ready=False)
    assert t.proc.wait(timeout=10) != 0
    # line 5: [upstream], base_url, client_id, client_secret_file, ca_file
    assert re.search(rf"{re.escape(t.conf_path)}:5: \[upstream\] ca_file = '{re.escape(ca)}' {why}", t.log()), t.log()


def can_unshare_network():
    try:
        return subprocess.run(["unshare", "-n", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.skipif(not can_unshare_network(), reason="needs unshare -n (root)")
def test_a_name_that_does_not_resolve_is_refused_at_once(stub, make_tokend, monkeypatch):
    # tokend alone in a network namespace of its own, with no network: the
    # lookup fails at once and no query leaves the machine; the test reaches
    # it over a Unix socket
    d, t = ShortDir(), None
    try:
        sock = os.path.join(d.path, "t.sock")
        monkeypatch.setattr(conftest, "WRAPPER", ["unshare", "-n"] + conftest.WRAPPER)
        t = make_tokend(stub, {"upstream": {"base_url": "https://tokend-test.invalid"},
                               "server": {"listen": f"unix:{sock}"}}, start=False)
        start_unix_only(t, sock)
        r = unix_request(sock, "GET", "/v1/token?user_id=nowhere")
        assert r.status == 503, r
        assert r.json()["upstream_error"] == "cannot_resolve"
        assert re.search(r"mint failed .*error=cannot_resolve attempts=1 ", t.log())
        assert "cannot reach Instacart: cannot_resolve (" in t.log()
        m = unix_request(sock, "GET", "/metrics").body.decode()
        assert re.search(r"^tokend_upstream_requests_total 1$", m, re.M)
        assert stub.token_requests() == []
    finally:
        if t:
            t.stop()
        d.close()


# ---------------------------------------------------------------- the forward proxy


class ProxyTrap:
    """A listening socket that counts connections: where http_proxy points."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.sock.settimeout(0.2)
        self.stopping = False
        self.th = threading.Thread(target=self._run, daemon=True)
        self.th.start()

    def _run(self):
        while not self.stopping:
            try:
                c, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            c.close()

    def close(self):
        self.stopping = True
        self.th.join()
        self.sock.close()


def test_proxies_from_the_environment_are_ignored(stub, make_tokend):
    trap = ProxyTrap()
    url = f"http://127.0.0.1:{trap.port}"
    try:
        t = make_tokend(stub, env={"http_proxy": url, "HTTP_PROXY": url, "https_proxy": url,
                                   "HTTPS_PROXY": url, "ALL_PROXY": url, "all_proxy": url, "NO_PROXY": ""})
        r = t.token("alice")
        assert r.status == 200, r
        assert stub.stats()["mints"] == 1
        assert trap.connections == 0, "the mint (with the client secret) went to the environment's proxy"
    finally:
        trap.close()


@pytest.fixture
def tinyproxy(tmp_path):
    exe = shutil.which("tinyproxy")
    if not exe:
        pytest.skip("tinyproxy is not installed (tests/deps.sh test installs it)")
    port = free_port()
    conf = tmp_path / "tinyproxy.conf"
    log = tmp_path / "tinyproxy.log"
    conf.write_text(f"Port {port}\nListen 127.0.0.1\nTimeout 30\nLogLevel Connect\nMaxClients 20\n"
                    f"Allow 127.0.0.1\nBasicAuth tokend pr0xy-pw\nDisableViaHeader Yes\n")
    logf = open(log, "wb")
    p = subprocess.Popen([exe, "-d", "-c", str(conf)], stdout=logf, stderr=logf, stdin=subprocess.DEVNULL)

    def up():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            return p.poll() is not None
    wait_for(up, what="tinyproxy to listen")
    assert p.poll() is None, log.read_text()
    yield port, log
    p.terminate()
    p.wait(timeout=10)
    logf.close()


def test_a_configured_proxy_carries_the_mints_with_its_own_credentials(stub, make_tokend, tmp_path, tinyproxy):
    port, log = tinyproxy
    creds = tmp_path / "proxy-credentials"
    fd = os.open(creds, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"tokend:pr0xy-pw\n")
    os.close(fd)
    t = make_tokend(stub, sections={"upstream": {"proxy": f"http://127.0.0.1:{port}",
                                                 "proxy_credentials_file": str(creds)}})
    r = t.token("alice")
    assert r.status == 200, r
    assert stub.stats()["mints"] == 1
    wait_for(lambda: f"POST {stub.base_url}/v2/oauth/token" in log.read_text(), what="the mint in the proxy's log")
    # the proxy's credentials, like the secret, show nowhere
    status = t.get("/v1/status").json()
    assert status["config"]["upstream"]["proxy"] == f"http://127.0.0.1:{port}"
    assert "pr0xy-pw" not in t.get("/v1/status").body.decode() and "pr0xy-pw" not in t.log()

    # wrong credentials: the proxy refuses (407), nothing reaches Instacart
    fd = os.open(creds, os.O_WRONLY | os.O_TRUNC)
    os.write(fd, b"tokend:wrong\n")
    os.close(fd)
    reload(t)
    r = t.token("bob")
    assert r.status in (502, 503), r
    assert stub.stats()["mints"] == 1
