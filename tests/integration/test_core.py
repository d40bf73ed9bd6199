"""Issue 2: mint, cache and serve user tokens, against the real stand-in."""
import json
import os
import signal
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

import pytest

from conftest import SLOW, TOKEND_EXE, assert_no_secrets, wait_for


def fetch_many(t, paths, workers):
    barrier = threading.Barrier(workers)

    def one(p):
        barrier.wait(timeout=30)
        return t.get(p, timeout=30)

    with ThreadPoolExecutor(max_workers=workers) as ex:
        return list(ex.map(one, paths))


# ---------------------------------------------------------------- serving


def test_miss_then_hit_serves_one_token_in_instacarts_shape(stub, tokend):
    first = tokend.token("kamalsingh1234")
    assert first.status == 200, first
    assert first.header("content-type") == "application/json"
    assert first.header("cache-control") == "no-store"
    assert first.header("x-cache") == "miss"
    body = first.json()
    assert set(body) == {"access_token", "token_type", "expires_in", "scope", "created_at"}
    assert body["token_type"] == "Bearer"
    assert body["scope"] == "connect:recommendations"
    assert 86390 <= body["expires_in"] <= 86400
    assert isinstance(body["created_at"], int)

    second = tokend.token("kamalsingh1234")
    assert second.status == 200
    assert second.header("x-cache") == "hit"
    assert second.json()["access_token"] == body["access_token"]
    assert len(stub.token_requests()) == 1


def test_mint_request_is_the_documented_call(stub, tokend):
    assert tokend.token("kamalsingh1234").status == 200
    (req,) = stub.token_requests()
    assert req["method"] == "POST" and req["path"] == "/v2/oauth/token"
    assert req["grant_type"] == "fulfillment_user_assertion"
    assert req["scope"] == "connect:recommendations"
    assert req["client_id"] == "test-client"
    assert req["content_type"].startswith("application/json")
    assert req["query"] in (None, "")
    assert req["user_id"] == "kamalsingh1234"


@pytest.mark.parametrize("user_id", ['quote"d', "back\\slash", "éçü", "用户", "emoji😀", "a b+c&d=e"])
def test_awkward_user_ids_reach_instacart_intact(stub, tokend, user_id):
    r = tokend.get("/v1/token?user_id=" + quote(user_id, safe=""))
    assert r.status == 200, r
    (req,) = stub.token_requests()
    assert req["user_id"] == user_id


def test_scope_is_part_of_the_key(stub, tokend):
    a = tokend.token("u1")
    b = tokend.token("u1", scope="connect:post_checkout")
    assert a.status == b.status == 200
    assert b.json()["scope"] == "connect:post_checkout"
    assert a.json()["access_token"] != b.json()["access_token"]
    scopes = sorted(r["scope"] for r in stub.token_requests())
    assert scopes == ["connect:post_checkout", "connect:recommendations"]
    assert tokend.token("u1", scope="connect:post_checkout").header("x-cache") == "hit"


def test_users_get_their_own_tokens(stub, tokend):
    a = tokend.token("alice").json()["access_token"]
    b = tokend.token("bob").json()["access_token"]
    assert a != b
    assert tokend.token("alice").json()["access_token"] == a


def test_token_reminted_when_below_minimum_lifetime(stub, make_tokend):
    # 4 s tokens: the 5 min default minimum is capped at half the lifetime
    # (2 s), so the token is reused for ~2 s, then a fresh one is minted.
    stub.config(expires_in=4)
    t = make_tokend(stub)
    first = t.token("shortlived").json()
    assert t.token("shortlived").header("x-cache") == "hit"

    def reminted():
        r = t.token("shortlived")
        assert r.status == 200
        assert r.json()["expires_in"] >= 2, "handed out a token below its minimum lifetime"
        return r.json()["access_token"] != first["access_token"]

    wait_for(reminted, timeout=10, interval=0.1, what="a fresh token")
    assert len(stub.token_requests()) == 2


def test_min_ttl_raises_the_bar_for_one_call(stub, make_tokend):
    stub.config(expires_in=600)
    t = make_tokend(stub, {"cache": {"min_ttl": "10s"}})
    first = t.token("m").json()["access_token"]
    # 600 s left: min_ttl=200 is met, so it is a hit
    assert t.token("m", min_ttl=200).json()["access_token"] == first
    # min_ttl above what is left forces a mint... capped at half the lifetime
    # (300 s), which 599 s still meets: still the same token.
    assert t.token("m", min_ttl=43200).json()["access_token"] == first
    assert len(stub.token_requests()) == 1


def test_concurrent_first_requests_make_exactly_one_mint(stub, tokend):
    stub.fault(action="ok", delay_ms=300)  # keep the mint in flight while all arrive
    rs = fetch_many(tokend, ["/v1/token?user_id=popular"] * 100, 100)
    assert [r.status for r in rs] == [200] * 100
    assert len({r.json()["access_token"] for r in rs}) == 1
    assert len(stub.token_requests()) == 1
    kinds = {r.header("x-cache") for r in rs}
    assert kinds <= {"miss", "coalesced", "hit"} and "miss" in kinds


def test_healthz(tokend):
    r = tokend.get("/healthz")
    assert r.status == 200 and r.json() == {"status": "ok"}


# ---------------------------------------------------------------- bad input

BAD_QUERIES = [
    "",
    "?user_id=",
    "?user_id=" + "a" * 257,
    "?user_id=%FF%FE",
    "?user_id=ab%01cd",
    "?user_id=ab%00cd",
    "?user_id=ab%7Fcd",
    "?user_id=%C2%85",  # C1 control
    "?user_id=%C0%80",  # overlong
    "?user_id=a&user_id=b",
    "?user_id=a&extra=1",
    "?user_id=a&scope=",
    "?user_id=a&scope=has%20space",
    "?user_id=a&scope=" + "s" * 257,
    "?user_id=a&min_ttl=-1",
    "?user_id=a&min_ttl=1.5",
    "?user_id=a&min_ttl=43201",
    "?user_id=a&min_ttl=",
]


@pytest.mark.parametrize("query", BAD_QUERIES)
def test_bad_input_is_400_and_never_reaches_instacart(stub, tokend, query):
    r = tokend.get("/v1/token" + query)
    assert r.status == 400, r
    body = r.json()
    assert body["error"] == "invalid_request"
    assert body["error_description"]
    assert stub.token_requests() == []


def test_user_id_of_256_bytes_is_accepted(stub, tokend):
    assert tokend.token("é" * 128).status == 200  # 256 bytes of UTF-8


def test_unknown_route_is_404(stub, tokend):
    r = tokend.get("/v1/tokens?user_id=a")
    assert r.status == 404 and r.json()["error"] == "not_found"
    assert stub.token_requests() == []


def test_wrong_method_is_405_with_allow(stub, tokend):
    r = tokend.request("POST", "/v1/token?user_id=a", body=b"")
    assert r.status == 405
    assert r.header("allow") == "GET, DELETE"
    assert r.json()["error"] == "invalid_request"
    assert stub.token_requests() == []


def test_body_on_get_is_refused(stub, tokend):
    r = tokend.request("GET", "/v1/token?user_id=a", body=b"x" * 100)
    assert r.status == 400
    assert stub.token_requests() == []


# ---------------------------------------------------------------- upstream failures

# Short deadlines, stretched under valgrind (SLOW), where one attempt at a 503
# can take longer than 500 ms and then ends as a timeout (504), not a 503.
FAST = {"upstream": {"attempt_timeout": f"{500 * SLOW}ms", "request_timeout": f"{1500 * SLOW}ms",
                     "retry_base": "10ms", "retry_max": "50ms", "breaker_failures": "1000"}}


@pytest.mark.parametrize("status,error", [(400, "invalid_grant"), (401, "invalid_client"),
                                          (403, "forbidden"), (404, "not_found")])
def test_instacart_refusal_is_502_with_its_status_and_code(stub, make_tokend, status, error):
    t = make_tokend(stub, FAST)
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
    t = make_tokend(stub, FAST)
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

    t = make_tokend(Nowhere, FAST)
    r = t.token("u")
    assert r.status == 503 and r.header("retry-after")
    assert r.json()["upstream_error"] if "upstream_error" in r.json() else True
    assert "connection_refused" in r.json()["error_description"]


def test_instacart_too_slow_is_504(stub, make_tokend):
    t = make_tokend(stub, FAST)
    stub.fault(action="hang")
    t0 = time.monotonic()
    r = t.token("slow")
    assert r.status == 504, r
    assert r.json()["error"] == "upstream_timeout"
    assert time.monotonic() - t0 < 10 * SLOW


def test_credentials_in_query_are_never_sent(stub, tokend):
    tokend.token("u")
    for req in stub.requests():
        assert not req["query"], "credentials must travel in the JSON body only"


# ---------------------------------------------------------------- secrets and logs


def test_no_secret_token_or_assertion_in_the_logs(stub, make_tokend):
    t = make_tokend(stub, {"log": {"level": "debug"}})
    tokens = [t.token(u).json()["access_token"] for u in ("alice", "bob", "carol")]
    stub.fault(action="status", status=401, body='{"error":"invalid_client"}')
    t.token("dave")
    t.stop()
    log = t.log()
    assert "mint ok" in log
    from stub import assertion
    assert_no_secrets(log, "test-secret", *tokens, assertion("alice"), "alice", "bob", "carol")


def test_secret_never_in_argv_or_environment(stub, tokend):
    with open(f"/proc/{tokend.proc.pid}/cmdline", "rb") as f:
        assert b"test-secret" not in f.read()
    with open(f"/proc/{tokend.proc.pid}/environ", "rb") as f:
        assert b"test-secret" not in f.read()


# ---------------------------------------------------------------- lifecycle


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


def run_tokend(*args, env=None):
    return subprocess.run([TOKEND_EXE, *args], capture_output=True, text=True, timeout=30, env=env)


def test_version_and_help():
    v = run_tokend("--version")
    assert v.returncode == 0 and v.stdout.startswith("instacart-tokend ")
    h = run_tokend("--help")
    assert h.returncode == 0 and "--config" in h.stdout and "--check-config" in h.stdout
    bad = run_tokend("--bogus")
    assert bad.returncode != 0


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


def test_queued_mints_are_exported(stub, tokend):
    """Mints handed to the upstream worker and not yet taken up: a gauge in
    /metrics beside tokend_mints_in_flight, and in /v1/status; none at rest."""
    assert tokend.token("alice").status == 200
    text = tokend.get("/metrics").body.decode()
    assert "# TYPE tokend_mints_queued gauge\n" in text
    assert "\ntokend_mints_queued 0\n" in text
    assert tokend.get("/v1/status").json()["upstream"]["queued"] == 0
