"""Issue 6: metrics, readiness, status and cache control, against the
real stand-in."""
import re
import subprocess
import threading

from conftest import wait_for

FAST = {"upstream": {"attempt_timeout": "1s", "request_timeout": "2s", "retry_base": "10ms",
                     "retry_max": "50ms", "breaker_cooldown": "2s"}}


def metrics(t):
    r = t.get("/metrics")
    assert r.status == 200
    assert r.header("content-type").startswith("text/plain; version=0.0.4")
    out = {}
    for line in r.body.decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out, r.body


def test_metrics_pass_promtool(stub, tokend):
    tokend.token("u")
    tokend.token("u")
    tokend.get("/v1/token")
    _, body = metrics(tokend)
    r = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True, timeout=30)
    assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()


def test_counters_follow_a_scripted_scenario(stub, make_tokend):
    t = make_tokend(stub, {"cache": {"max_entries": "2"}, **FAST})

    def m(name):
        return metrics(t)[0].get(name, 0)

    assert t.token("a").header("x-cache") == "miss"
    assert m("tokend_cache_misses_total") == 1
    assert m('tokend_mints_total{outcome="ok"}') == 1
    assert t.token("a").header("x-cache") == "hit"
    assert m("tokend_cache_hits_total") == 1
    assert m('tokend_http_requests_total{route="/v1/token",code="200"}') == 2

    # a coalesced wait
    stub.fault(action="ok", delay_ms=400, count=1)
    rs = []
    ths = [threading.Thread(target=lambda: rs.append(t.token("b"))) for _ in range(2)]
    for th in ths:
        th.start()
    for th in ths:
        th.join(timeout=10)
    assert sorted(r.header("x-cache") for r in rs) == ["coalesced", "miss"]
    assert m("tokend_cache_coalesced_total") == 1
    assert m("tokend_cache_entries") == 2

    # an eviction: max_entries is 2
    t.token("c")
    assert m("tokend_cache_evictions_total") == 1

    # an upstream failure
    stub.fault(action="status", status=401, body='{"error":"invalid_client"}', count=1)
    assert t.token("d").status == 502
    assert m('tokend_mints_total{outcome="rejected"}') == 1
    assert m('tokend_http_requests_total{route="/v1/token",code="502"}') == 1
    assert m("tokend_upstream_credentials_rejected") == 1
    assert m('tokend_upstream_circuit_state{state="open"}') == 1
    wait_for(lambda: t.get("/readyz").status == 200, what="the breaker's cool-down")

    # upstream latency was observed for each HTTP request
    assert m("tokend_upstream_request_duration_seconds_count") == m("tokend_upstream_requests_total") >= 4
    assert m('tokend_upstream_request_duration_seconds_bucket{le="+Inf"}') == \
        m("tokend_upstream_request_duration_seconds_count")

    # a delete, a flush
    assert t.token("e").status == 200
    entries = m("tokend_cache_entries")
    assert entries == 2
    r = t.request("DELETE", "/v1/token?user_id=e")
    assert r.status == 200 and r.json() == {"dropped": True, "revoked": False}
    assert m("tokend_cache_entries") == entries - 1
    r = t.request("POST", "/v1/cache/flush")
    assert r.status == 200 and r.json() == {"dropped": 1}
    assert m("tokend_cache_entries") == 0
    assert t.token("e").header("x-cache") == "miss"
    assert m("process_start_time_seconds") > 1.6e9


def test_delete_with_revoke_reaches_instacart_with_the_right_token(stub, tokend):
    tok = tokend.token("revokee").json()["access_token"]
    other = tokend.token("bystander").json()["access_token"]
    r = tokend.request("DELETE", "/v1/token?user_id=revokee&revoke=true")
    assert r.status == 200 and r.json() == {"dropped": True, "revoked": True}
    assert stub.stats()["revoked_tokens"] == [tok]
    (rev,) = [q for q in stub.requests() if q["path"] == "/v2/oauth/token/revoke"]
    assert rev["status"] == 200 and rev["client_id"] == "test-client"
    assert metrics(tokend)[0]['tokend_revocations_total{outcome="ok"}'] == 1
    # the next request mints a new token; the bystander keeps theirs
    again = tokend.token("revokee")
    assert again.header("x-cache") == "miss" and again.json()["access_token"] != tok
    assert tokend.token("bystander").json()["access_token"] == other


def test_delete_of_nothing_and_bad_deletes(stub, tokend):
    r = tokend.request("DELETE", "/v1/token?user_id=nobody&revoke=true")
    assert r.status == 200 and r.json() == {"dropped": False, "revoked": False}
    assert tokend.request("DELETE", "/v1/token").status == 400
    assert tokend.request("DELETE", "/v1/token?user_id=a&revoke=maybe").status == 400
    assert tokend.request("GET", "/v1/token?user_id=a&revoke=true").status == 400
    assert tokend.request("GET", "/v1/cache/flush").status == 405
    assert [q for q in stub.requests() if "revoke" in q["path"]] == []


def test_revocation_failure_is_reported_and_not_forgotten(stub, tokend):
    tokend.token("r")
    stub.fault(action="status", status=404, body='{"error":"not_found"}', match_path="/v2/oauth/token/revoke")
    r = tokend.request("DELETE", "/v1/token?user_id=r&revoke=true")
    assert r.status == 503 and r.json()["error"] == "revocation_pending", r
    assert r.json()["upstream_status"] == 404
    assert "keeps trying" in r.json()["error_description"]
    assert metrics(tokend)[0]["tokend_revocations_pending"] == 1
    assert tokend.token("r").header("x-cache") == "miss", "no longer served while its revocation waits"


def test_a_revocation_instacart_cannot_take_now_is_tried_again_until_it_lands(stub, make_tokend):
    t = make_tokend(stub)
    tok = t.token("unlucky").json()["access_token"]
    # a 4xx is one attempt per try: the first try and the first retry fail
    stub.fault(action="status", status=404, count=2, match_path="/v2/oauth/token/revoke")
    r = t.request("DELETE", "/v1/token?user_id=unlucky&revoke=true")
    assert r.status == 503 and r.json()["error"] == "revocation_pending", r
    assert stub.stats()["revoked_tokens"] == []
    wait_for(lambda: stub.stats()["revoked_tokens"] == [tok], timeout=20, interval=0.2,
             what="the revocation to be tried again until Instacart takes it")
    wait_for(lambda: metrics(t)[0]["tokend_revocations_pending"] == 0, timeout=2, what="nothing left pending")
    assert metrics(t)[0]["tokend_revocation_retries_total"] >= 1


def test_readyz_follows_instacart_refusing_the_credentials(stub, make_tokend):
    t = make_tokend(stub, FAST)
    r = t.get("/readyz")
    assert r.status == 200 and r.json() == {"status": "ready"}
    stub.fault(action="status", status=401, body='{"error":"invalid_client"}')
    assert t.token("x").status == 502
    r = t.get("/readyz")
    assert r.status == 503
    assert r.json()["status"] == "not_ready" and "credentials" in r.json()["reason"]
    assert t.get("/healthz").status == 200, "liveness is not readiness"
    stub.reset()
    wait_for(lambda: t.get("/readyz").status == 200, what="readiness to come back")
    assert t.token("y").status == 200
    assert t.get("/readyz").status == 200


def test_readyz_while_instacart_fails(stub, make_tokend):
    t = make_tokend(stub, {"upstream": {**FAST["upstream"], "breaker_failures": "2"}})
    stub.fault(action="status", status=503)
    assert t.token("x").status == 503
    r = t.get("/readyz")
    assert r.status == 503 and "failing" in r.json()["reason"]


def test_status_shows_configuration_without_secrets(stub, tokend):
    tokend.token("s")
    r = tokend.get("/v1/status")
    assert r.status == 200
    st = r.json()
    assert re.match(r"\d+\.\d+\.\d+", st["version"])
    assert st["uptime_seconds"] >= 0
    assert st["config"]["upstream"]["client_id"] == "test-client"
    assert st["config"]["upstream"]["base_url"] == stub.base_url
    assert st["config"]["cache"]["max_entries"] == 100000
    assert st["cache"]["entries"] == 1 and st["cache"]["misses"] == 1
    assert st["upstream"]["mints_ok"] == 1 and st["upstream"]["circuit"] == "closed"
    assert b"test-secret" not in r.body
    assert st["http"]["requests"] >= 1


def test_connections_to_instacart_are_reused(stub, tokend):
    for i in range(5):
        assert tokend.token(f"reuse{i}").header("x-cache") == "miss"
    m = metrics(tokend)[0]
    assert m["tokend_upstream_requests_total"] == 5
    assert m["tokend_upstream_connections_total"] == 1, "a new connection (TLS handshake) per mint"


# ---------------------------------------------------------------- checking what the unit will see

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
