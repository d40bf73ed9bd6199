"""Issue 16: the production path to Instacart, HTTPS. The stand-in behind a
real nginx terminating TLS (tls_fixture.py), with a throwaway CA given to
tokend through [upstream] ca_file: certificates checked, connections and
TLS sessions reused, HTTP/2 multiplexed, and TLS failures reported at once
with their own codes."""
import os
import re
import signal
import subprocess
import threading

import pytest

import conftest
from conftest import assert_no_secrets, concurrently, wait_for
from sec_helpers import ShortDir, start_unix_only, unix_request
from tls_fixture import Pki, TlsFront

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


def reload(t, what):
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
    reload(t, "reloaded ")
    assert t.token("rot1").status == 200

    # a bad file is refused and the CA in use stays
    with open(ca, "w"):
        pass
    reload(t, "reload refused")
    assert re.search(rf"tokend.conf:\d+: \[upstream\] ca_file = '{re.escape(ca)}' is empty", t.log())
    assert t.token("rot2").status == 200

    # back to a CA that does not sign the server's certificate: the open
    # connection, made under the old CA, must not carry the next mint
    write_ca(ca, pki.ca("main"))
    reload(t, "reloaded ")
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
