"""What tokend tells those who watch it, against the real stand-in: /metrics
(valid for promtool, counters that follow a scripted scenario, every request
counted once under its real status), /healthz, /readyz and /v1/status, the
log (no secret, token or assertion in it; user fingerprints keyed with the
secret), and the alerting rules in config/tokend-alerts.yml.

The alerting rules against what a real tokend exports: every series a rule
selects must exist on /metrics of a tokend in fleet mode (a real
redis-server), so renaming a metric, a label or a label value fails here
rather than leaving an alert that can never fire; and the alerts a real
tokend's metrics set off, healthy and failing, are the ones that name its
state (evaluated by promtool on what it exported)."""
import json
import os
import re
import subprocess
import threading

import pytest
import yaml

from conftest import assert_no_secrets, metrics, wait_for
from redis_fixture import key_file, make_fleet, make_redis, redis  # noqa: F401 (fixtures)
from sec_helpers import SHOP, bearer
from sec_helpers import front  # noqa: F401 (a fixture)

FAST = {"upstream": {"attempt_timeout": "1s", "request_timeout": "2s", "retry_base": "10ms",
                     "retry_max": "50ms", "breaker_cooldown": "2s"}}


# ---------------------------------------------------------------- /metrics


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


def test_queued_mints_are_exported(stub, tokend):
    """Mints handed to the upstream worker and not yet taken up: a gauge in
    /metrics beside tokend_mints_in_flight, and in /v1/status; none at rest."""
    assert tokend.token("alice").status == 200
    text = tokend.get("/metrics").body.decode()
    assert "# TYPE tokend_mints_queued gauge\n" in text
    assert "\ntokend_mints_queued 0\n" in text
    assert tokend.get("/v1/status").json()["upstream"]["queued"] == 0


def counted(t, route, code):
    """tokend_http_requests_total{route, code} as /metrics says."""
    m = re.search(r'tokend_http_requests_total\{route="%s",code="%s"\} (\d+)' % (re.escape(route), code),
                  t.get("/metrics").body.decode())
    return int(m.group(1)) if m else 0


def test_a_refused_post_with_a_body_is_counted_once(stub, front):
    body = json.dumps({"grant_type": "client_credentials"}).encode()
    r = front.request("POST", "/v2/oauth/token", body=body, headers={"Content-Type": "application/json"})
    assert r.status == 401, r
    assert counted(front, "/v2/oauth/token", 401) == 1


def test_a_preflight_is_counted_as_204_and_is_no_upstream_error(stub, front):
    r = front.request("OPTIONS", "/v1/frontend/token",
                      headers={"Origin": SHOP, "Access-Control-Request-Method": "GET"})
    assert r.status == 204, r
    assert counted(front, "/v1/frontend/token", 204) == 1
    status = front.get("/v1/status", headers=bearer(front.keys["admin"])).json()
    assert status["http"]["upstream_errors"] == 0


# ---------------------------------------------------------------- health, readiness and status


def test_healthz(tokend):
    r = tokend.get("/healthz")
    assert r.status == 200 and r.json() == {"status": "ok"}


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


# ---------------------------------------------------------------- the log


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


def fnv1a_48(s):
    h = 0xcbf29ce484222325
    for b in s.encode():
        h = ((h ^ b) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return f"{h & 0xFFFFFFFFFFFF:012x}"


def test_user_fingerprints_are_keyed_with_the_secret(stub, make_tokend):
    t = make_tokend(stub)
    assert t.token("10000042").status == 200
    fps = re.findall(r"mint ok user=([0-9a-f]{12})", t.log())
    assert len(fps) == 1, t.log()
    # not an unkeyed hash, which anyone could compute for every numeric id
    assert fps[0] != fnv1a_48("10000042")
    assert "10000042" not in t.log()
    # stable across a restart with the same secret, so lines correlate
    t.stop()
    stub.reset()
    t.start()
    assert t.token("10000042").status == 200
    assert re.findall(r"mint ok user=([0-9a-f]{12})", t.log())[-1] == fps[0]
    # another secret, another fingerprint
    t.stop()
    stub.config(credentials=[("test-client", "another-secret")])
    t.write_secret("another-secret")
    t.start()
    assert t.token("10000042").status == 200
    assert re.findall(r"mint ok user=([0-9a-f]{12})", t.log())[-1] != fps[0]


# ---------------------------------------------------------------- the series the alerting rules select


RULES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "config", "tokend-alerts.yml")

# Series Prometheus makes itself for every target, not exported by tokend.
PROMETHEUS_OWN = {"up"}

IDENT = r"[a-zA-Z_:][a-zA-Z0-9_:]*"

KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
            "bool", "offset", "inf", "nan"}


def rules():
    with open(RULES) as f:
        doc = yaml.safe_load(f)
    return [r for g in doc["groups"] for r in g["rules"]]


def parse_matchers(text):
    """'a="x",b=~"y|z"' as [(label, op, value)]."""
    out = []
    for m in re.finditer(rf'\s*({IDENT})\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*,?', text):
        out.append((m.group(1), m.group(2), m.group(3).encode().decode("unicode_escape")))
    return out


def selectors(expr):
    """The series selectors of a PromQL expression: [(metric name, matchers)].
    Enough PromQL for rule files: strings only inside {}, grouping label
    lists after by/without/on/ignoring, ranges in []."""
    found = []
    rest = expr
    # name{matchers}: take them out first, so their labels are not read as names
    for m in re.finditer(rf"({IDENT})\s*\{{([^}}]*)\}}", expr):
        found.append((m.group(1), parse_matchers(m.group(2))))
    rest = re.sub(rf"{IDENT}\s*\{{[^}}]*\}}", " ", rest)
    rest = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", rest)
    rest = re.sub(r"\[[^\]]*\]", " ", rest)
    for m in re.finditer(rf"({IDENT})(\s*\()?", rest):
        name, call = m.group(1), m.group(2)
        if call or name.lower() in KEYWORDS:
            continue  # a function or an aggregation, or an operator
        found.append((name, []))
    return found


def samples(text):
    """/metrics as (name, the labels as written, value), one per sample line."""
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(rf"({IDENT})(?:\{{(.*)\}})? (\S+)$", line)
        assert m, f"a line of /metrics that is not a sample: {line!r}"
        yield m.group(1), m.group(2) or "", float(m.group(3))


def exported(text):
    """/metrics as [(name, {label: value})]."""
    return [(name, {k: v for k, op, v in parse_matchers(labels)}) for name, labels, _ in samples(text)]


def selects(series, name, matchers):
    for n, labels in series:
        if n != name:
            continue
        ok = True
        for label, op, value in matchers:
            have = labels.get(label, "")
            if op == "=":
                ok = have == value
            elif op == "!=":
                ok = have != value
            elif op == "=~":
                ok = re.fullmatch(value, have) is not None
            else:
                ok = re.fullmatch(value, have) is None
            if not ok:
                break
        if ok:
            return True
    return False


def alternatives(matchers):
    """A selector with label=~"a|b" of plain values, as one selector per
    value: each must exist, not just one of them."""
    out = [[]]
    for label, op, value in matchers:
        if op == "=~" and re.fullmatch(r"[\w:.+-]+(\|[\w:.+-]+)*", value):
            out = [o + [(label, "=", v)] for o in out for v in value.split("|")]
        else:
            out = [o + [(label, op, value)] for o in out]
    return out


def test_the_selector_parser_finds_names_labels_and_ranges():
    expr = ('max without (state) (avg_over_time(tokend_x{state="open"}[5m])) > 0.5 '
            'or on (instance, job) tokend_y == 1 unless histogram_quantile(0.99, rate(tokend_z_bucket[5m]))')
    assert selectors(expr) == [("tokend_x", [("state", "=", "open")]), ("tokend_y", []),
                               ("tokend_z_bucket", [])]
    assert alternatives([("outcome", "=~", "failed|timed_out"), ("le", "=~", "0.5|1")]) == [
        [("outcome", "=", "failed"), ("le", "=", "0.5")], [("outcome", "=", "failed"), ("le", "=", "1")],
        [("outcome", "=", "timed_out"), ("le", "=", "0.5")], [("outcome", "=", "timed_out"), ("le", "=", "1")]]
    assert alternatives([("route", "=~", "/v1/.*")]) == [[("route", "=~", "/v1/.*")]]


def test_every_series_the_alerting_rules_select_is_exported(stub, redis, make_fleet):  # noqa: F811
    (host,) = make_fleet(stub, redis, 1)
    assert host.token("alice").header("x-cache") == "miss"
    assert host.token("alice").header("x-cache") == "hit"
    assert host.get("/readyz").status == 200
    r = host.get("/metrics")
    assert r.status == 200
    series = exported(r.body.decode())
    assert any(n == "tokend_shared_up" for n, _ in series), "fleet mode is on: its metrics must be there"

    missing = []
    checked = 0
    for rule in rules():
        sels = [(n, m) for n, m in selectors(rule["expr"]) if n not in PROMETHEUS_OWN]
        if not sels:
            assert any(n in PROMETHEUS_OWN for n, _ in selectors(rule["expr"])), \
                f"{rule['alert']}: found no series in its expression: {rule['expr']}"
            continue
        for name, matchers in ((n, a) for n, m in sels for a in alternatives(m)):
            checked += 1
            if not selects(series, name, matchers):
                shown = ",".join(f'{k}{op}"{v}"' for k, op, v in matchers)
                missing.append(f"{rule['alert']}: {name}{{{shown}}}")
    assert checked >= 15, f"only {checked} selectors found in {RULES}: is the parser still reading it?"
    assert not missing, ("rules select series tokend does not export (renamed metric, label or value?):\n  "
                         + "\n  ".join(missing))


# ---------------------------------------------------------------- what the alerting rules fire on


def holding(tmp_path, text, expect, instance="tokend:8787"):
    """Asserts that, with the samples of a /metrics `text` held for 15
    minutes (and the host scraped), exactly the alerts in `expect` have
    their expression true: promtool evaluates each alert's expression (its
    `for:` is the unit tests' business). Counters held still have no rate,
    so this checks the alerts on tokend's state, not on its traffic."""
    target = f'instance={json.dumps(instance)},job="instacart-tokend"'
    series = [{"series": f"up{{{target}}}", "values": "1x15"}]
    for name, labels, value in samples(text):
        series.append({"series": f"{name}{{{labels + ',' if labels else ''}{target}}}", "values": f"{value!r}x15"})
    names = [r["alert"] for r in rules()]
    assert set(expect) <= set(names), f"no such alerts: {set(expect) - set(names)}"
    case = {"rule_files": [os.path.abspath(RULES)], "evaluation_interval": "1m",
            "tests": [{"interval": "1m", "input_series": series, "promql_expr_test": [
                {"expr": f"count({r['expr']})  # {r['alert']}", "eval_time": "10m",
                 "exp_samples": [{"labels": "{}", "value": 1}] if r["alert"] in expect else []}
                for r in rules()]}]}
    path = tmp_path / "holding.test.yml"
    path.write_text(yaml.safe_dump(case))
    r = subprocess.run(["promtool", "test", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"expected exactly {sorted(expect)} to hold:\n{r.stdout}{r.stderr}"


@pytest.fixture
def promtool():
    if subprocess.run(["sh", "-c", "command -v promtool"], capture_output=True).returncode != 0:
        pytest.skip("promtool is not installed (tests/deps.sh test installs prometheus)")


UPSTREAM = {"upstream": {"attempt_timeout": "1s", "request_timeout": "2s", "retry_base": "10ms",
                         "retry_max": "50ms", "breaker_failures": "1", "breaker_cooldown": "60s"}}


def test_a_healthy_fleet_host_sets_off_no_alert(promtool, tmp_path, stub, redis, make_fleet):  # noqa: F811
    (host,) = make_fleet(stub, redis, 1, sections=UPSTREAM)
    assert host.token("alice").status == 200
    assert host.get("/readyz").status == 200
    holding(tmp_path, host.get("/metrics").body.decode(), set())


def test_rejected_credentials_on_one_host_alert_on_another(promtool, tmp_path, stub, redis, make_fleet):  # noqa: F811
    a, b = make_fleet(stub, redis, 2, sections=UPSTREAM)
    stub.fault(action="status", status=401, body='{"error":"invalid_client"}')
    assert a.token("x").status == 502
    wait_for(lambda: b.get("/readyz").status == 503, timeout=5, what="b to be unready through the fleet")
    holding(tmp_path, a.get("/metrics").body.decode(), {"TokendCredentialsRejected", "TokendNotReady"})
    holding(tmp_path, b.get("/metrics").body.decode(), {"TokendCredentialsRejected", "TokendNotReady"})


def test_instacart_failing_opens_the_circuit_and_fails_readiness(promtool, tmp_path, stub, make_tokend):
    t = make_tokend(stub, UPSTREAM)
    stub.fault(action="status", status=503)
    assert t.token("x").status in (502, 503, 504)
    assert t.get("/readyz").status == 503
    holding(tmp_path, t.get("/metrics").body.decode(), {"TokendUpstreamCircuitOpen", "TokendNotReady"})


def test_a_429_pause_is_rate_limiting(promtool, tmp_path, stub, make_tokend):
    t = make_tokend(stub, UPSTREAM)
    stub.fault(action="status", status=429, retry_after="60")
    assert t.token("x").status in (429, 503)
    text = t.get("/metrics").body.decode()
    assert "tokend_upstream_rate_limited 1" in text
    holding(tmp_path, text, {"TokendRateLimited"})


def test_redis_out_of_reach_degrades_fleet_mode_but_not_readiness(promtool, tmp_path, stub, redis,  # noqa: F811
                                                                   make_fleet):
    (host,) = make_fleet(stub, redis, 1, sections=UPSTREAM)
    assert host.token("alice").status == 200
    redis.kill()
    assert host.token("bob").status == 200, "a degraded host still mints"

    def degraded():
        text = host.get("/metrics").body.decode()
        return text if "tokend_shared_up 0" in text else None

    text = wait_for(degraded, timeout=5, what="fleet mode to report itself degraded")
    assert host.get("/readyz").status == 200
    holding(tmp_path, text, {"TokendFleetDegraded"})
