"""Issue 3: refresh ahead, a bounded cache, and a policy for every way
Instacart can fail, against the real stand-in."""
import threading
import time

import pytest

from conftest import concurrently, wait_for

FAST = {"attempt_timeout": "1s", "request_timeout": "3s", "retry_base": "10ms", "retry_max": "50ms"}


def upstream(**kw):
    return {"upstream": {**FAST, **kw}}


def test_1000_concurrent_requests_over_10_users_make_10_mints(stub, make_tokend):
    t = make_tokend(stub)
    stub.fault(action="ok", delay_ms=500)  # mints stay in flight while requests pile up
    users = [f"crowd{i % 10}" for i in range(1000)]
    rs = concurrently(lambda u: (u, t.token(u, ) if False else t.get(f"/v1/token?user_id={u}", timeout=60)),
                      users, 1000)
    assert all(r.status == 200 for _, r in rs)
    by_user = {}
    for u, r in rs:
        by_user.setdefault(u, set()).add(r.json()["access_token"])
    assert all(len(v) == 1 for v in by_user.values()), "one token per user"
    assert len(stub.token_requests()) == 10
    assert sorted(r["user_id"] for r in stub.token_requests()) == sorted({*users})


def test_refresh_ahead_serves_the_cached_token_and_refreshes_once(stub, make_tokend):
    # 6 s tokens, refreshed in the last 50% (+-10%): from about 3 s on.
    stub.config(expires_in=6)
    t = make_tokend(stub, {"cache": {"refresh_before": "50%", "min_ttl": "1s"}})
    first = t.token("eager").json()["access_token"]
    minted = time.monotonic()
    stub.fault(action="ok", delay_ms=1500)  # the refresh will be slow
    wait_for(lambda: time.monotonic() - minted > 3.4, what="the refresh window")
    rs = [t.token("eager") for _ in range(5)]
    # answered from the cache, not after the slow refresh
    assert [r.header("x-cache") for r in rs] == ["hit"] * 5
    assert {r.json()["access_token"] for r in rs} == {first}
    assert len(stub.token_requests()) >= 1
    wait_for(lambda: len(stub.token_requests()) == 2 and stub.token_requests()[1]["status"] == 200,
             what="the background refresh to complete")
    fresh = wait_for(lambda: (r := t.token("eager").json()["access_token"]) != first and r,
                     what="the refreshed token to be served")
    assert fresh
    assert len(stub.token_requests()) == 2, "exactly one refresh"


def test_tokens_nobody_asks_for_are_not_refreshed(stub, make_tokend):
    stub.config(expires_in=4)
    t = make_tokend(stub, {"cache": {"refresh_before": "50%", "min_ttl": "1s"}})
    t.token("idle")
    minted = time.monotonic()
    wait_for(lambda: time.monotonic() - minted > 4.5, what="the token to expire")
    assert len(stub.token_requests()) == 1


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


def test_lru_evicts_the_least_recently_used(stub, make_tokend):
    t = make_tokend(stub, {"cache": {"max_entries": "3"}})
    for u in ("a", "b", "c"):
        assert t.token(u).header("x-cache") == "miss"
    assert t.token("a").header("x-cache") == "hit"  # a is now more recent than b
    assert t.token("d").header("x-cache") == "miss"  # evicts b
    assert t.token("a").header("x-cache") == "hit"
    assert t.token("c").header("x-cache") == "hit"
    assert t.token("b").header("x-cache") == "miss"


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
