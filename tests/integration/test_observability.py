"""The alerting rules in config/tokend-alerts.yml against what a real tokend
exports: every series a rule selects must exist on /metrics of a tokend in
fleet mode (a real redis-server), so renaming a metric, a label or a label
value fails here rather than leaving an alert that can never fire."""
import os
import re

import yaml

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


def exported(text):
    """/metrics as [(name, {label: value})], one per sample line."""
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(rf"({IDENT})(?:\{{(.*)\}})? \S+$", line)
        assert m, f"a line of /metrics that is not a sample: {line!r}"
        labels = {k: v for k, op, v in parse_matchers(m.group(2) or "")}
        out.append((m.group(1), labels))
    return out


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
