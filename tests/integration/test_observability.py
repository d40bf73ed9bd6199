"""The alerting rules in config/tokend-alerts.yml against what a real tokend
exports: every series a rule selects must exist on /metrics of a tokend in
fleet mode (a real redis-server), so renaming a metric, a label or a label
value fails here rather than leaving an alert that can never fire; and the
alerts a real tokend's metrics set off, healthy and failing, are the ones
that name its state (evaluated by promtool on what it exported)."""
import json
import os
import re
import subprocess

import pytest
import yaml

from conftest import wait_for
from redis_fixture import key_file, make_fleet, make_redis, redis  # noqa: F401 (fixtures)

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


# ---------------------------------------------------------------- what fires


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
