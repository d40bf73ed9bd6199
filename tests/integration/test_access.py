"""Who may reach tokend and what for, against the real stand-in: the Host
check (DNS rebinding), Origin and Sec-Fetch-Site, requests relayed by a
proxy, API keys with their rights and scopes, the keys file (checked at
start, applied by a reload), the user header, the routes a site's proxy
calls for its signed-in users (GET /v1/frontend/token and the
Recommendations proxy) with CORS, also in Debian's headless Chromium, and
Unix socket peers by uid and gid. Every refusal also checks that nothing
reached Instacart."""
import grp
import json
import os
import pwd
import socket
import stat
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import SLOW, TOKEND_EXE, assert_no_secrets, reload
from sec_helpers import (APP, JSON, RIGHTS, SHOP, SERVER, TOKEN_FIELDS, USER_HEADER, Keys, ShortDir, assert_error,
                         assert_nothing_reached_instacart, b64, bearer, http_addresses, key_names, only, post_json,
                         sha256_hex, start_unix_only, unix_request, wait_unix_listening)
from sec_helpers import front, open_tokend, secure  # noqa: F401 (fixtures)
from stub import assertion

RECO_PATHS = [
    "/v2/recommendations/replacement_items",
    "/v2/recommendations/complementary_items",
    "/v2/recommendations/orders/ORD-1234_x/replacement_items",
    "/v2/recommendations/orders/ORD-1234_x/complementary_items",
]

RECO_BODY = {"location_code": "94105", "cart_id": "cart-1", "max_complementary_items": 3,
             "items": [{"line_num": 1, "item": {"rrc": "12345"}}, {"line_num": 2, "item": {"upc": "0001"}}]}

REC = "connect:recommendations"

FUL = "connect:fulfillment"


def all_but(right):
    return "all_but_" + right.replace("-", "_")


@pytest.fixture
def short_dir():
    d = ShortDir()
    yield d.path
    d.close()


def reco_requests(stub):
    return [q for q in stub.requests() if q["path"].startswith("/v2/recommendations/")]


# ---------------------------------------------------------------- Host (DNS rebinding)


REBINDING_HOSTS = ["evil.example", "evil.example:8787", "127.0.0.1.nip.io", "localhost.evil.example",
                   "tokend.internal.evil.example", "evil-tokend.internal", "attacker.example:80",
                   "[::ffff:10.0.0.1]:8787", "[::]:8787", "0.0.0.0"]

GOOD_HOSTS = ["localhost", "localhost:8787", "127.0.0.1", "127.0.0.1:8787", "127.1.2.3:99", "[::1]",
              "[::1]:8787", "tokend.internal", "tokend.internal:8787", "[::ffff:127.0.0.1]:8787",
              "[0:0:0:0:0:0:0:1]"]


@pytest.mark.parametrize("host", REBINDING_HOSTS)
def test_rebinding_host_is_421(stub, open_tokend, host):
    r = open_tokend.get("/v1/token?user_id=alice", headers={"Host": host})
    assert_error(r, 421, "misdirected_request")
    assert_nothing_reached_instacart(stub)


@pytest.mark.parametrize("host", GOOD_HOSTS)
def test_loopback_and_allowed_hosts_are_served(stub, open_tokend, host):
    r = open_tokend.get("/v1/token?user_id=alice", headers={"Host": host})
    assert r.status == 200, r
    assert len(stub.token_requests()) == 1


def test_rebinding_host_is_421_even_with_a_good_key(stub, secure):
    r = secure.get("/v1/token?user_id=alice", headers=bearer(secure.keys["all"], Host="evil.example"))
    assert_error(r, 421, "misdirected_request")
    r = secure.get("/v1/frontend/token", headers=bearer(secure.keys["fe"], Host="evil.example",
                                                        **{USER_HEADER: "alice"}))
    assert_error(r, 421, "misdirected_request")
    assert_nothing_reached_instacart(stub)


def test_only_loopback_names_without_allowed_hosts(stub, tokend):
    assert_error(tokend.get("/v1/token?user_id=a", headers={"Host": "tokend.internal"}), 421,
                 "misdirected_request")
    assert_nothing_reached_instacart(stub)
    assert tokend.get("/v1/token?user_id=a", headers={"Host": "localhost:8787"}).status == 200


def test_ipv4_loopback_in_ipv6_form_is_loopback_everywhere(stub, make_tokend):
    """::ffff:127.0.0.1 is IPv4 loopback: the configuration takes it as a
    listen address without allow_remote, the Host check lets it in, and
    cache control (local callers only) serves a caller on it."""
    t = make_tokend(stub, {"server": {"listen": "[::ffff:127.0.0.1]:0"}})
    assert t.host == "127.0.0.1", t.address
    host = f"[::ffff:127.0.0.1]:{t.port}"
    r = t.get("/v1/token?user_id=alice", headers={"Host": host})
    assert r.status == 200, r
    r = t.request("POST", "/v1/cache/flush", headers={"Host": host})
    assert r.status == 200 and r.json() == {"dropped": 1}, r


# ---------------------------------------------------------------- Origin and Sec-Fetch-Site


BAD_ORIGINS = ["https://evil.example", "null", "https://shop.example.evil.example", "http://shop.example",
               "https://shop.example:8443", "https://app.example", "https://SHOP.example.evil"]


@pytest.mark.parametrize("origin", BAD_ORIGINS)
def test_cross_site_origin_is_403(stub, open_tokend, origin):
    r = open_tokend.get("/v1/token?user_id=alice", headers={"Origin": origin})
    assert_error(r, 403, "forbidden")
    assert_nothing_reached_instacart(stub)


@pytest.mark.parametrize("origin", [SHOP, APP])
def test_allowed_origin_is_served(stub, open_tokend, origin):
    r = open_tokend.get("/v1/token?user_id=alice", headers={"Origin": origin})
    assert r.status == 200, r
    assert len(stub.token_requests()) == 1


def test_any_origin_is_403_without_allowed_origins(stub, tokend):
    assert_error(tokend.get("/v1/token?user_id=alice", headers={"Origin": SHOP}), 403, "forbidden")
    assert_error(tokend.get("/v1/token?user_id=alice", headers={"Origin": "http://127.0.0.1:8787"}), 403,
                 "forbidden")
    assert_nothing_reached_instacart(stub)


@pytest.mark.parametrize("origin", [None, "https://evil.example"])
def test_sec_fetch_site_cross_site_is_403(stub, open_tokend, origin):
    h = {"Sec-Fetch-Site": "cross-site"}
    if origin:
        h["Origin"] = origin
    assert_error(open_tokend.get("/v1/token?user_id=alice", headers=h), 403, "forbidden")
    assert_nothing_reached_instacart(stub)


@pytest.mark.parametrize("value", ["cross-site", "Cross-Site", "CROSS-SITE"])
def test_sec_fetch_site_cross_site_in_any_case(stub, tokend, value):
    assert_error(tokend.get("/v1/token?user_id=alice", headers={"Sec-Fetch-Site": value}), 403, "forbidden")
    assert stub.stats()["mints"] == 0


def test_sec_fetch_site_cross_site_from_an_allowed_origin_is_served(stub, open_tokend):
    r = open_tokend.get("/v1/token?user_id=alice", headers={"Sec-Fetch-Site": "cross-site", "Origin": SHOP})
    assert r.status == 200, r


@pytest.mark.parametrize("site", ["same-origin", "none"])
def test_sec_fetch_site_same_origin_or_none_is_served(stub, open_tokend, site):
    assert open_tokend.get("/v1/token?user_id=alice", headers={"Sec-Fetch-Site": site}).status == 200


def test_cross_site_origin_is_403_even_with_a_good_key(stub, secure):
    r = secure.get("/v1/token?user_id=alice", headers=bearer(secure.keys["all"], Origin="https://evil.example"))
    assert_error(r, 403, "forbidden")
    r = secure.get("/v1/frontend/token", headers=bearer(secure.keys["fe"], Origin="https://evil.example",
                                                        **{USER_HEADER: "alice"}))
    assert_error(r, 403, "forbidden")
    assert_nothing_reached_instacart(stub)


# ---------------------------------------------------------------- requests relayed by a proxy


FORWARDED = [{"X-Forwarded-For": "203.0.113.7"}, {"X-Forwarded-For": "127.0.0.1"},
             {"Forwarded": "for=203.0.113.7;proto=https"}, {"Forwarded": "for=127.0.0.1"}]

# what other reverse proxies and CDNs add when they relay a request
RELAY_HEADERS = {"Via": "1.1 proxy.example", "CF-Connecting-IP": "203.0.113.7",
                 "X-Original-Forwarded-For": "203.0.113.7", "X-Real-IP": "203.0.113.7",
                 "True-Client-IP": "203.0.113.7", "X-Client-IP": "203.0.113.7"}

NON_FRONTEND = [("GET", "/v1/token?user_id=alice", None),
                ("GET", "/v1/client-token", None),
                ("POST", "/v2/oauth/token", {"grant_type": "client_credentials"}),
                ("DELETE", "/v1/token?user_id=alice", None),
                ("POST", "/v1/cache/flush", None),
                ("GET", "/v1/status", None),
                ("GET", "/healthz", None),
                ("GET", "/metrics", None)]


@pytest.mark.parametrize("fwd", FORWARDED, ids=lambda h: "-".join(f"{k}={v}" for k, v in h.items()))
def test_forwarded_request_on_v1_token_is_403(stub, open_tokend, fwd):
    assert_error(open_tokend.get("/v1/token?user_id=alice", headers=fwd), 403, "forbidden")
    assert_nothing_reached_instacart(stub)


@pytest.mark.parametrize("method,path,body", NON_FRONTEND, ids=lambda x: str(x))
@pytest.mark.parametrize("header", ["X-Forwarded-For", "Forwarded"])
def test_forwarded_request_on_non_frontend_routes_is_403(stub, secure, method, path, body, header):
    value = "for=203.0.113.7" if header == "Forwarded" else "203.0.113.7"
    h = bearer(secure.keys["all"], **{header: value})
    if body is not None:
        r = post_json(secure, path, body, headers=h)
    else:
        r = secure.request(method, path, headers=h)
    assert_error(r, 403, "forbidden")
    assert_nothing_reached_instacart(stub)


@pytest.mark.parametrize("header", list(RELAY_HEADERS))
def test_every_relay_header_is_refused_outside_the_frontend_routes(stub, secure, header):
    h = bearer(secure.keys["all"], **{header: RELAY_HEADERS[header]})
    assert_error(secure.get("/v1/token?user_id=alice", headers=h), 403, "forbidden")
    assert_error(secure.request("POST", "/v1/cache/flush", headers=h), 403, "forbidden")
    assert_nothing_reached_instacart(stub)
    # and served on them, as X-Forwarded-For is
    h = bearer(secure.keys["fe"], **{USER_HEADER: "alice", header: RELAY_HEADERS[header]})
    r = secure.get("/v1/frontend/token", headers=h)
    assert r.status == 200, r


@pytest.mark.parametrize("header", ["X-Real-IP", "X-Forwarded-Host", "X-Forwarded-Proto", "X-Forwarded-For",
                                    "Forwarded"])
def test_every_header_a_relaying_proxy_adds_is_refused_off_the_frontend_routes(stub, tokend, header):
    value = "for=10.0.0.1" if header == "Forwarded" else "10.0.0.1"
    assert_error(tokend.get("/v1/token?user_id=alice", headers={header: value}), 403, "forbidden")
    assert stub.stats()["mints"] == 0


@pytest.mark.parametrize("fwd", FORWARDED[:3], ids=lambda h: "-".join(h))
def test_forwarded_request_on_frontend_routes_is_served(stub, secure, fwd):
    h = bearer(secure.keys["fe"], **{USER_HEADER: "alice"}, **fwd)
    r = secure.get("/v1/frontend/token", headers=h)
    assert r.status == 200, r
    r = post_json(secure, RECO_PATHS[0], RECO_BODY, headers=h)
    assert r.status == 200, r
    assert r.json()["user_id"] == "alice"


# ---------------------------------------------------------------- API keys and their rights


# name -> (method, path, JSON body or None, extra headers, the right it needs)
ROUTES = {
    "token": ("GET", "/v1/token?user_id=alice", None, {}, "token"),
    "client-token": ("GET", "/v1/client-token?scope=connect:fulfillment", None, {}, "client-token"),
    "drop-in-user": ("POST", "/v2/oauth/token",
                     {"grant_type": "fulfillment_user_assertion", "assertion": assertion("alice"),
                      "scope": "connect:recommendations"}, {}, "token"),
    "drop-in-client": ("POST", "/v2/oauth/token",
                       {"grant_type": "client_credentials", "scope": "connect:fulfillment"}, {}, "client-token"),
    "frontend-token": ("GET", "/v1/frontend/token", None, {USER_HEADER: "alice"}, "frontend"),
    "proxy": ("POST", RECO_PATHS[0], RECO_BODY, {USER_HEADER: "alice"}, "proxy"),
    "proxy-order": ("POST", RECO_PATHS[3], RECO_BODY, {USER_HEADER: "alice"}, "proxy"),
    "delete": ("DELETE", "/v1/token?user_id=alice", None, {}, "admin"),
    "flush": ("POST", "/v1/cache/flush", None, {}, "admin"),
    "status": ("GET", "/v1/status", None, {}, "admin"),
}


def call(t, route, key=None, auth=None, **more_headers):
    method, path, body, headers, _ = ROUTES[route]
    h = dict(headers)
    if key is not None:
        h["Authorization"] = f"Bearer {key}"
    if auth is not None:
        h["Authorization"] = auth
    h.update(more_headers)
    if body is not None:
        return post_json(t, path, body, headers=h)
    return t.request(method, path, headers=h)


def assert_401(r, route=""):
    # the drop-in answers as an OAuth 2.0 server does (RFC 6749 §5.2)
    assert_error(r, 401, "invalid_client" if route.startswith("drop-in") else "unauthorized")
    assert (r.header("www-authenticate") or "").startswith("Bearer"), r.headers


@pytest.mark.parametrize("route", ROUTES)
def test_missing_key_is_401(stub, secure, route):
    assert_401(call(secure, route), route)
    assert_nothing_reached_instacart(stub)


@pytest.mark.parametrize("route", ROUTES)
def test_unknown_key_is_401(stub, secure, route):
    assert_401(call(secure, route, key="k-" + os.urandom(16).hex()), route)
    assert_nothing_reached_instacart(stub)


def wrong_keys(keys):
    k = keys["all"]
    return {
        "hash-of-the-key": f"Bearer {sha256_hex(k)}",
        "key-plus-one": f"Bearer {k}x",
        "key-minus-one": f"Bearer {k[:-1]}",
        "key-uppercased": f"Bearer {k.upper()}" if k.upper() != k else "Bearer X",
        "empty-bearer": "Bearer ",
        "bare-bearer": "Bearer",
        "bare-key": k,
        "basic": "Basic " + b64(f"all:{k}"),
        "name-as-key": "Bearer all",
    }


@pytest.mark.parametrize("variant", list(wrong_keys({"all": "x"})))
def test_wrong_key_is_401(stub, secure, variant):
    assert_401(call(secure, "token", auth=wrong_keys(secure.keys)[variant]))
    assert_nothing_reached_instacart(stub)


def lacking(right):
    return [only(r) for r in RIGHTS if r != right] + [all_but(right)]


@pytest.mark.parametrize("route", ROUTES)
def test_key_without_the_right_is_403(stub, secure, route):
    need = ROUTES[route][4]
    # the drop-in says it as OAuth does: 400 unauthorized_client
    status, error = (400, "unauthorized_client") if route.startswith("drop-in") else (403, "forbidden")
    for name in lacking(need):
        r = call(secure, route, key=secure.keys[name])
        assert r.status == status, f"{route} with key {name}: {r}"
        assert r.json()["error"] == error, (name, r)
    assert_nothing_reached_instacart(stub)


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("keyname", ["only", "all"])
def test_key_with_the_right_is_served(stub, secure, route, keyname):
    name = only(ROUTES[route][4]) if keyname == "only" else "all"
    r = call(secure, route, key=secure.keys[name])
    assert r.status == 200, r


def test_drop_in_needs_the_right_of_its_grant(stub, secure):
    # token (user grant) does not open the client grant, and client-token not the user grant
    assert_error(call(secure, "drop-in-client", key=secure.keys[only("token")]), 400, "unauthorized_client")
    assert_error(call(secure, "drop-in-user", key=secure.keys[only("client-token")]), 400, "unauthorized_client")
    assert_nothing_reached_instacart(stub)


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
def test_health_and_metrics_need_no_key(stub, secure, path):
    assert secure.get(path).status == 200


def test_keys_never_reach_the_log(stub, make_tokend, tmp_path):
    keys = Keys(tmp_path / "keys", key_names())
    t = make_tokend(stub, {"server": dict(SERVER), "auth": {"keys_file": keys.path}, "log": {"level": "debug"}})
    for name in ("all", only("token"), only("admin")):
        call(t, "token", key=keys[name])
        call(t, "status", key=keys[name])
    call(t, "token", key="not-a-key-" + "z" * 20)
    call(t, "frontend-token", key=keys["fe"])
    t.stop()
    assert_no_secrets(t.log(), *keys.values(), "not-a-key-" + "z" * 20)


# ---------------------------------------------------------------- scopes a key may ask for


def test_a_frontend_key_gets_only_the_default_scope_unless_listed(stub, make_tokend, tmp_path):
    stub.config(extra_scopes=[FUL])
    path = tmp_path / "keys"
    keys = Keys(path, {"site": ("frontend", "proxy"), "wide": ("frontend",), "backend": ("token",)},
                scopes={"wide": f"{REC},{FUL}"})
    t = make_tokend(stub, sections={"auth": {"keys_file": str(path)}})
    user = {"X-Tokend-User": "alice"}
    r = t.get(f"/v1/frontend/token?scope={FUL}", headers=bearer(keys["site"], **user))
    assert r.status == 403, r
    assert r.json()["error"] == "forbidden" and "scope" in r.json()["error_description"]
    assert stub.stats()["mints"] == 0
    assert t.get("/v1/frontend/token", headers=bearer(keys["site"], **user)).status == 200
    assert t.get(f"/v1/frontend/token?scope={REC}", headers=bearer(keys["site"], **user)).status == 200
    # a key whose line lists the scope may ask for it
    r = t.get(f"/v1/frontend/token?scope={FUL}", headers=bearer(keys["wide"], **user))
    assert r.status == 200, r
    assert r.json()["scope"] == FUL
    # a backend key without scopes= asks for any
    assert t.token_with("bob", keys["backend"], scope=FUL).status == 200


def test_a_key_limited_to_scopes_is_held_to_them_on_every_route(stub, make_tokend, tmp_path):
    stub.config(extra_scopes=[FUL])
    path = tmp_path / "keys"
    keys = Keys(path, {"rec": ("token", "client-token")}, scopes={"rec": REC})
    t = make_tokend(stub, sections={"auth": {"keys_file": str(path)}})
    assert t.token_with("alice", keys["rec"]).status == 200
    assert t.token_with("alice", keys["rec"], scope=FUL).status == 403
    assert t.get(f"/v1/client-token?scope={FUL}", headers=bearer(keys["rec"])).status == 403
    assert t.get("/v1/client-token", headers=bearer(keys["rec"])).status == 403  # no scope: only with scopes=*
    body = ('{"grant_type":"client_credentials","scope":"%s"}' % FUL).encode()
    r = t.request("POST", "/v2/oauth/token", body=body,
                  headers=bearer(keys["rec"], **{"Content-Type": "application/json"}))
    assert r.status == 400 and r.json()["error"] == "invalid_scope", r  # the drop-in speaks OAuth
    before = stub.stats()["mints"]
    assert before == 1


# ---------------------------------------------------------------- the keys file: checked at start, read again on reload


def run_tokend(*args, timeout=30):
    return subprocess.run([TOKEND_EXE, *args], capture_output=True, text=True, timeout=timeout)


BAD_KEY_LINES = [
    "bad {h} superuser",                    # unknown right
    "bad {h}",                              # no rights
    "bad 1234 token",                       # not a SHA-256
    "bad {h}zz token",                      # too long
    "bad " + "g" * 64 + " token",           # not hex
]


def bad_keys_config(stub, make_tokend, tmp_path, line):
    path = tmp_path / "keys"
    path.write_text("# keys\n" + line.format(h=sha256_hex("k")) + "\n")
    os.chmod(path, 0o600)
    return str(path), make_tokend(stub, {"auth": {"keys_file": str(path)}}, start=False)


@pytest.mark.parametrize("line", BAD_KEY_LINES)
def test_bad_keys_file_stops_the_daemon(stub, make_tokend, tmp_path, line):
    path, t = bad_keys_config(stub, make_tokend, tmp_path, line)
    try:
        r = run_tokend("--config", t.conf_path, timeout=15)
    except subprocess.TimeoutExpired:
        raise AssertionError("tokend started with a bad keys file")
    assert r.returncode != 0
    assert f"{path}:2" in r.stderr, r.stderr  # file and line


@pytest.mark.parametrize("line", BAD_KEY_LINES)
def test_check_config_checks_the_keys_file(stub, make_tokend, tmp_path, line):
    path, t = bad_keys_config(stub, make_tokend, tmp_path, line)
    r = run_tokend("--check-config", "--config", t.conf_path)
    assert r.returncode != 0, r.stdout + r.stderr
    assert f"{path}:2" in r.stderr, r.stderr


def test_missing_keys_file_is_refused(stub, make_tokend, tmp_path):
    missing = str(tmp_path / "nope")
    t = make_tokend(stub, {"auth": {"keys_file": missing}}, start=False)
    for args in (("--check-config", "--config", t.conf_path), ("--config", t.conf_path)):
        try:
            r = run_tokend(*args, timeout=15)
        except subprocess.TimeoutExpired:
            raise AssertionError("tokend started without its keys file")
        assert r.returncode != 0 and missing in r.stderr, (args, r.stderr)


def test_a_fifo_as_the_keys_file_is_refused_at_start(stub, make_tokend, tmp_path):
    fifo = tmp_path / "keys"
    os.mkfifo(fifo, 0o600)
    t = make_tokend(stub, sections={"auth": {"keys_file": str(fifo)}}, start=False)
    t.start(expect_ready=False)
    assert t.proc.wait(timeout=10 * SLOW) == 1
    assert "regular file, not a FIFO" in t.log()


def test_a_key_removed_from_the_keys_file_stops_working_at_the_reload(stub, make_tokend, tmp_path):
    path = tmp_path / "keys"
    keys = Keys(path, {"old": ("token",), "other": ("token",)})
    t = make_tokend(stub, sections={"auth": {"keys_file": str(path)}})
    assert t.token_with("alice", keys["old"]).status == 200

    # the operator answers a leaked key: removes it, adds a new one, reloads
    new = Keys(path, {"new": ("token",), "other": ("token",)})
    reload(t)
    r = t.token_with("alice", keys["old"])
    assert r.status == 401, r
    assert t.token_with("alice", new["new"]).status == 200
    assert "API keys reloaded from" in t.log()

    # a broken keys file is refused with file and line; the keys in force stay
    with open(path, "a") as f:
        f.write("broken-line\n")
    line = reload(t)
    assert "reload refused" in line and f"{path}:" in line, line
    assert t.token_with("bob", new["new"]).status == 200
    assert t.token_with("bob", keys["old"]).status == 401


def test_removing_keys_file_from_the_configuration_is_applied_and_said(stub, make_tokend, tmp_path):
    path = tmp_path / "keys"
    keys = Keys(path, {"k": ("token",)})
    t = make_tokend(stub, sections={"auth": {"keys_file": str(path)}})
    assert t.token("alice").status == 401
    t.sections["auth"]["keys_file"] = None
    t.write_config()
    reload(t)
    assert t.token("alice").status == 200
    assert "keys_file removed" in t.log()
    assert "need a restart" not in t.log()
    assert keys["k"]


# ---------------------------------------------------------------- the user header


def test_user_header_without_any_keys_file_is_403(stub, open_tokend):
    for path in ("/v1/token?user_id=alice", "/v1/client-token", "/healthz"):
        r = open_tokend.get(path, headers={USER_HEADER: "alice"})
        assert_error(r, 403, "forbidden")
    r = open_tokend.get("/v1/token?user_id=alice", headers={USER_HEADER.lower(): "bob"})
    assert_error(r, 403, "forbidden")
    assert_nothing_reached_instacart(stub)


@pytest.mark.parametrize("route,keyname", [
    ("token", only("token")), ("client-token", only("client-token")), ("drop-in-user", only("token")),
    ("drop-in-client", only("client-token")), ("status", only("admin")), ("flush", only("admin")),
    ("delete", only("admin")),
])
def test_user_header_with_a_key_lacking_frontend_and_proxy_is_403(stub, secure, route, keyname):
    r = call(secure, route, key=secure.keys[keyname], **{USER_HEADER: "alice"})
    assert_error(r, 403, "forbidden")
    assert_nothing_reached_instacart(stub)


def test_user_header_without_a_key_is_refused(stub, secure):
    r = secure.get("/v1/token?user_id=alice", headers={USER_HEADER: "alice"})
    assert r.status in (401, 403), r
    assert_nothing_reached_instacart(stub)


def test_frontend_routes_need_a_key_even_without_a_keys_file(stub, open_tokend):
    assert_error(open_tokend.get("/v1/frontend/token", headers={USER_HEADER: "alice"}), 403, "forbidden")
    assert_error(open_tokend.get("/v1/frontend/token"), 403, "forbidden")
    for path in RECO_PATHS:
        assert_error(post_json(open_tokend, path, RECO_BODY, headers={USER_HEADER: "alice"}), 403, "forbidden")
    assert_nothing_reached_instacart(stub)


def test_configured_user_header(stub, make_tokend, tmp_path):
    keys = Keys(tmp_path / "keys", key_names())
    t = make_tokend(stub, {"server": dict(SERVER), "auth": {"keys_file": keys.path},
                           "frontend": {"user_header": "X-Site-User"}})
    r = t.get("/v1/frontend/token", headers=bearer(keys["fe"], **{"X-Site-User": "carol"}))
    assert r.status == 200, r
    assert [q["user_id"] for q in stub.token_requests()] == ["carol"]
    # the configured header is the one guarded...
    r = t.get("/v1/token?user_id=carol", headers=bearer(keys[only("token")], **{"X-Site-User": "carol"}))
    assert_error(r, 403, "forbidden")
    # ...and the one read: the default name is not a user
    r = t.get("/v1/frontend/token", headers=bearer(keys["fe"], **{USER_HEADER: "dave"}))
    assert r.status == 400, r
    assert len(stub.requests()) == 1


# ---------------------------------------------------------------- GET /v1/frontend/token, and CORS


def fe_get(t, user, path="/v1/frontend/token", **headers):
    h = bearer(t.keys["fe"], **headers)
    if user is not None:
        h[USER_HEADER] = user
    return t.get(path, headers=h)


def test_frontend_token_is_the_users_token(stub, secure):
    r = fe_get(secure, "alice")
    assert r.status == 200, r
    assert r.header("content-type") == "application/json"
    assert r.header("cache-control") == "no-store"
    body = r.json()
    assert set(body) == TOKEN_FIELDS
    assert body["token_type"] == "Bearer" and body["scope"] == "connect:recommendations"
    (req,) = stub.token_requests()
    assert req["user_id"] == "alice" and req["grant_type"] == "fulfillment_user_assertion"
    # the same JSON as GET /v1/token, from the same cache
    same = secure.get("/v1/token?user_id=alice", headers=bearer(secure.keys[only("token")]))
    assert same.status == 200 and same.header("x-cache") == "hit"
    assert set(same.json()) == set(body)
    for k in ("access_token", "token_type", "scope", "created_at"):
        assert same.json()[k] == body[k]
    again = fe_get(secure, "alice")
    assert again.json()["access_token"] == body["access_token"]
    assert len(stub.token_requests()) == 1


def test_frontend_users_get_their_own_tokens(stub, secure):
    a = fe_get(secure, "alice").json()["access_token"]
    b = fe_get(secure, "bob").json()["access_token"]
    assert a != b
    assert sorted(q["user_id"] for q in stub.token_requests()) == ["alice", "bob"]


def test_frontend_token_with_scope(stub, make_tokend, tmp_path):
    # the browser's user does not pick the scope; the proxy's key may name
    # the ones it may ask for (scopes=)
    keys = Keys(tmp_path / "keys", {"fe": ("frontend", "proxy"), "wide": ("frontend", "proxy")},
                scopes={"wide": "connect:recommendations,connect:post_checkout"})
    t = make_tokend(stub, {"server": dict(SERVER), "auth": {"keys_file": keys.path}})
    t.keys = keys
    assert_error(fe_get(t, "alice", path="/v1/frontend/token?scope=connect:post_checkout"), 403, "forbidden")
    assert_nothing_reached_instacart(stub)
    r = t.get("/v1/frontend/token?scope=connect:post_checkout", headers=bearer(keys["wide"], **{USER_HEADER: "alice"}))
    assert r.status == 200, r
    assert r.json()["scope"] == "connect:post_checkout"
    assert [q["scope"] for q in stub.token_requests()] == ["connect:post_checkout"]


@pytest.mark.parametrize("user", ["éçü".encode(), "用户".encode(), 'quote"d', "back\\slash", "a+b&c=d",
                                  ("é" * 128).encode()])
def test_frontend_awkward_user_ids_reach_instacart_intact(stub, secure, user):
    r = fe_get(secure, user)
    assert r.status == 200, r
    (req,) = stub.token_requests()
    assert req["user_id"] == (user.decode() if isinstance(user, bytes) else user)


@pytest.mark.parametrize("user", [None, "", "a" * 257, b"\xff\xfe", b"a\x01b", b"a\x7fb", b"\xc2\x85",
                                  b"\xc0\x80"],
                         ids=["missing", "empty", "257-bytes", "not-utf8", "control", "del", "c1", "overlong"])
def test_frontend_bad_user_is_400(stub, secure, user):
    # (a byte the HTTP layer itself refuses may get its non-JSON 400 first)
    r = fe_get(secure, user)
    assert r.status == 400, r
    if (r.header("content-type") or "").startswith("application/json"):
        assert r.json()["error"] == "invalid_request"
    r = post_json(secure, RECO_PATHS[0], RECO_BODY,
                  headers=bearer(secure.keys["fe"], **({} if user is None else {USER_HEADER: user})))
    assert r.status == 400, r
    assert_nothing_reached_instacart(stub)


@pytest.mark.parametrize("origin", [SHOP, APP])
def test_frontend_cors_for_an_allowed_origin(stub, secure, origin):
    r = fe_get(secure, "alice", Origin=origin)
    assert r.status == 200, r
    assert r.header("access-control-allow-origin") == origin
    assert "origin" in [v.strip().lower() for v in (r.header("vary") or "").split(",")], r.headers
    r = post_json(secure, RECO_PATHS[0], RECO_BODY, headers=bearer(secure.keys["fe"], Origin=origin,
                                                                   **{USER_HEADER: "alice"}))
    assert r.status == 200, r
    assert r.header("access-control-allow-origin") == origin


def test_an_allowed_origin_may_send_credentials(stub, front):
    h = bearer(front.keys["fe"], **{USER_HEADER: "alice", "Origin": SHOP})
    r = front.get("/v1/frontend/token", headers=h)
    assert r.status == 200, r
    assert r.header("access-control-allow-origin") == SHOP
    assert r.header("access-control-allow-credentials") == "true"
    pre = front.request("OPTIONS", "/v1/frontend/token",
                        headers={"Origin": SHOP, "Access-Control-Request-Method": "GET"})
    assert pre.header("access-control-allow-credentials") == "true"
    assert pre.header("access-control-allow-origin") == SHOP


def test_frontend_without_origin_has_no_cors_headers(stub, secure):
    r = fe_get(secure, "alice")
    assert r.status == 200
    assert r.header("access-control-allow-origin") is None


def test_another_origin_gets_no_cors_headers(stub, front):
    h = bearer(front.keys["fe"], **{USER_HEADER: "alice", "Origin": "https://evil.example"})
    r = front.get("/v1/frontend/token", headers=h)
    assert r.status == 403
    assert r.header("access-control-allow-origin") is None
    assert r.header("access-control-allow-credentials") is None
    assert stub.stats()["mints"] == 0


@pytest.mark.parametrize("path,method", [("/v1/frontend/token", "GET"), (RECO_PATHS[0], "POST"),
                                         (RECO_PATHS[2], "POST")])
def test_frontend_preflight(stub, secure, path, method):
    r = secure.request("OPTIONS", path, headers={
        "Origin": SHOP, "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": "content-type"})
    assert r.status == 204, r
    assert r.header("access-control-allow-origin") == SHOP
    methods = [m.strip().upper() for m in (r.header("access-control-allow-methods") or "").split(",")]
    assert method in methods, r.headers
    allowed = [h.strip().lower() for h in (r.header("access-control-allow-headers") or "").split(",")]
    assert allowed and allowed != [""], r.headers
    if method == "POST":
        assert "content-type" in allowed, r.headers
    assert_nothing_reached_instacart(stub)


def test_frontend_preflight_from_another_origin_is_403(stub, secure):
    r = secure.request("OPTIONS", "/v1/frontend/token", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "GET"})
    assert r.status == 403, r
    assert r.header("access-control-allow-origin") is None
    assert_nothing_reached_instacart(stub)


# ---------------------------------------------------------------- the Recommendations proxy


def reco(t, path, body=RECO_BODY, user="alice", key="fe", headers=None, **kw):
    h = bearer(t.keys[key], **{USER_HEADER: user})
    h.update(headers or {})
    return post_json(t, path, body, headers=h, **kw)


@pytest.mark.parametrize("path", RECO_PATHS)
def test_proxy_forwards_with_the_users_token(stub, secure, path):
    raw = json.dumps(RECO_BODY).encode()
    r = reco(secure, path, raw, headers={"Cookie": "session=browser-cookie"})
    assert r.status == 200, r
    assert r.header("content-type").startswith("application/json")
    assert r.json() == {"ok": True, "path": path, "user_id": "alice", "body": RECO_BODY}
    (tok,) = stub.token_requests()
    assert tok["user_id"] == "alice" and tok["scope"] == "connect:recommendations"
    (fwd,) = reco_requests(stub)
    assert fwd["method"] == "POST" and fwd["path"] == path
    assert fwd["authorization_user"] == "alice", "the user's token, not the caller's key"
    assert fwd["content_type"].startswith("application/json")
    assert fwd["body_bytes"] == len(raw)
    assert fwd["query"] in (None, "")
    assert fwd["status"] == 200


def test_proxy_uses_each_users_token_and_the_cache(stub, secure):
    for user in ("alice", "bob", "alice", "bob"):
        r = reco(secure, RECO_PATHS[1], user=user)
        assert r.status == 200 and r.json()["user_id"] == user, r
    assert [q["authorization_user"] for q in reco_requests(stub)] == ["alice", "bob", "alice", "bob"]
    assert sorted(q["user_id"] for q in stub.token_requests()) == ["alice", "bob"]
    # the same cache as /v1/token
    r = secure.get("/v1/token?user_id=alice", headers=bearer(secure.keys[only("token")]))
    assert r.header("x-cache") == "hit"
    assert len(stub.token_requests()) == 2


def test_proxy_order_id_of_128_chars(stub, secure):
    oid = ("Az09_-" * 22)[:128]
    path = f"/v2/recommendations/orders/{oid}/complementary_items"
    r = reco(secure, path)
    assert r.status == 200, r
    assert r.json()["path"] == path


@pytest.mark.parametrize("status,body", [(400, '{"errors":[{"message":"unknown item","code":1001}]}'),
                                         (404, '{"error":"not_found","error_description":"no such cart"}'),
                                         (422, '{"errors":[{"message":"bad location_code"}]}')])
def test_proxy_passes_instacarts_answer_back(stub, secure, status, body):
    stub.fault(action="status", status=status, body=body, match_path=RECO_PATHS[0])
    r = reco(secure, RECO_PATHS[0])
    assert r.status == status, r
    assert r.json() == json.loads(body)
    assert len(reco_requests(stub)) == 1
    assert len(stub.token_requests()) == 1


@pytest.mark.parametrize("status", [302, 304, 307, 101])
def test_the_proxy_does_not_relay_redirects_or_informational_statuses(stub, front, status):
    stub.fault(match_path="/v2/recommendations/replacement_items", action="status", status=status,
               body="", content_type="application/json")
    r = reco(front, RECO_PATHS[0])
    if status == 101:  # libcurl itself gives up on a 101 nobody asked for
        assert_error(r, 503, "upstream_unavailable")
    else:
        assert_error(r, 502, "upstream_unavailable")
        assert str(status) in r.json()["error_description"]
    assert r.header("location") is None


def test_the_proxy_does_not_serve_html_on_the_sites_origin(stub, front):
    stub.fault(match_path="/v2/recommendations/replacement_items", action="status", status=200,
               body="<script>alert(document.cookie)</script>", content_type="text/html")
    r = reco(front, RECO_PATHS[0])
    assert_error(r, 502, "upstream_unavailable")
    assert b"<script>" not in r.body
    assert r.header("x-content-type-options") == "nosniff"


def test_the_proxy_relays_instacarts_json_refusals_as_they_are(stub, front):
    stub.fault(match_path="/v2/recommendations/replacement_items", action="status", status=422,
               body='{"errors":[{"message":"bad item"}]}', content_type="application/json; charset=utf-8")
    r = reco(front, RECO_PATHS[0])
    assert r.status == 422, r
    assert r.json() == {"errors": [{"message": "bad item"}]}
    assert r.header("x-content-type-options") == "nosniff"


@pytest.mark.parametrize("status", [401, 405, 503])
def test_instacarts_own_refusals_carry_none_of_tokends_headers(stub, front, status):
    # tokend's Allow, WWW-Authenticate and Retry-After describe tokend's own
    # refusals: on Instacart's answer they would be tokend speaking for it
    stub.fault(match_path="/v2/recommendations/replacement_items", action="status", status=status,
               body='{"errors":[{"message":"no"}]}', content_type="application/json")
    r = reco(front, RECO_PATHS[0])
    assert r.status == status, r
    assert r.json() == {"errors": [{"message": "no"}]}
    for header in ("allow", "www-authenticate", "retry-after"):
        assert r.header(header) is None, (header, r.header(header))


def test_proxy_401_remints_once_and_retries(stub, secure):
    first = secure.get("/v1/token?user_id=alice", headers=bearer(secure.keys[only("token")])).json()
    stub.fault(action="status", status=401, count=1, match_path=RECO_PATHS[2],
               body='{"error":"invalid_token"}')
    r = reco(secure, RECO_PATHS[2])
    assert r.status == 200, r
    assert r.json()["user_id"] == "alice"
    assert [q["user_id"] for q in stub.token_requests()] == ["alice", "alice"], "exactly one re-mint"
    assert [q["status"] for q in reco_requests(stub)] == [401, 200]
    # the dropped token was replaced in the cache
    now = secure.get("/v1/token?user_id=alice", headers=bearer(secure.keys[only("token")]))
    assert now.header("x-cache") == "hit"
    assert now.json()["access_token"] != first["access_token"]
    assert len(stub.token_requests()) == 2


def test_proxy_401_forever_is_passed_back_after_one_retry(stub, secure):
    stub.fault(action="status", status=401, match_path=RECO_PATHS[0], body='{"error":"invalid_token"}')
    r = reco(secure, RECO_PATHS[0])
    assert r.status == 401, r
    assert r.json() == {"error": "invalid_token"}
    assert [q["status"] for q in reco_requests(stub)] == [401, 401], "one retry, no more"
    assert [q["user_id"] for q in stub.token_requests()] == ["alice", "alice"]


def test_proxy_401_remint_is_single_flight(stub, secure):
    # Instacart stops honouring alice's token; 20 calls made with it at once
    # all get 401, and must share one re-mint (a late 401 must not drop the
    # token that replaced it).
    first = secure.get("/v1/token?user_id=alice", headers=bearer(secure.keys[only("token")])).json()
    status, _ = stub.revoke(first["access_token"])
    assert status == 200
    barrier = threading.Barrier(20)

    def one(_):
        barrier.wait(timeout=30)
        return reco(secure, RECO_PATHS[1], timeout=30)

    with ThreadPoolExecutor(max_workers=20) as ex:
        rs = list(ex.map(one, range(20)))
    assert [r.status for r in rs] == [200] * 20, rs
    assert [q["user_id"] for q in stub.token_requests()] == ["alice", "alice"], "one re-mint for all"


def test_proxy_401_for_one_user_leaves_the_others_token(stub, secure):
    reco(secure, RECO_PATHS[0], user="bob")
    bob = secure.get("/v1/token?user_id=bob", headers=bearer(secure.keys[only("token")])).json()["access_token"]
    stub.fault(action="status", status=401, count=1, match_path=RECO_PATHS[0], match_user="alice")
    assert reco(secure, RECO_PATHS[0], user="alice").status == 200
    r = secure.get("/v1/token?user_id=bob", headers=bearer(secure.keys[only("token")]))
    assert r.json()["access_token"] == bob and r.header("x-cache") == "hit"


DISALLOWED_PATHS = [
    "/v2/recommendations/other",
    "/v2/users",
    "/v2/recommendations/users/alice/replacement_items",
    "/v2/recommendations/users/alice/complementary_items",
    "/v2/oauth/token/revoke",
    "/v2/recommendations/replacement_items/extra",
    "/v2/recommendations/replacement_items/",
    "/v2/recommendations/",
    "/v2/recommendations",
    "/v2/",
    "/v2/recommendations/orders/replacement_items",
    "/v2/recommendations/orders/o1/other_items",
    "/v2/recommendations/orders/o1",
    "/v2/recommendations/Replacement_items",
    "/v2//recommendations/replacement_items",
    "/v2/recommendations//replacement_items",
    "/v3/recommendations/replacement_items",
    "/v1/recommendations/replacement_items",
    "/recommendations/replacement_items",
]


@pytest.mark.parametrize("path", DISALLOWED_PATHS)
def test_disallowed_proxy_path_is_404(stub, secure, path):
    r = reco(secure, path, key="all")
    assert_error(r, 404, "not_found")
    assert_nothing_reached_instacart(stub)


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
@pytest.mark.parametrize("path", RECO_PATHS)
def test_proxy_paths_with_another_method_are_refused(stub, secure, path, method):
    h = bearer(secure.keys["fe"], **{USER_HEADER: "alice"})
    body = json.dumps(RECO_BODY).encode() if method in ("PUT", "PATCH") else None
    r = secure.request(method, path, body=body, headers={**h, **(JSON if body else {})})
    if body is None:
        assert r.status == 405 and "POST" in r.header("allow"), r
    else:  # like any route given a body it does not take
        assert r.status in (400, 405), r
    assert_nothing_reached_instacart(stub)


BAD_ORDER_IDS = ["a/b", "..", ".", "%2F", "a%2Fb", "%2E%2E", "%2e%2e", "a.b", "a%20b", "%C3%A9", "x" * 129,
                 "", "a:b", "a%00b", "..%2F..%2Foauth%2Ftoken"]


@pytest.mark.parametrize("oid", BAD_ORDER_IDS)
@pytest.mark.parametrize("suffix", ["replacement_items", "complementary_items"])
def test_bad_order_id_is_404(stub, secure, oid, suffix):
    r = reco(secure, f"/v2/recommendations/orders/{oid}/{suffix}")
    assert_error(r, 404, "not_found")
    assert_nothing_reached_instacart(stub)


def test_order_id_dot_dot_is_404_not_a_shorter_path(stub, secure):
    # would be /v2/recommendations/replacement_items once normalised
    r = reco(secure, "/v2/recommendations/orders/../replacement_items")
    assert_error(r, 404, "not_found")
    r = reco(secure, "/v2/recommendations/orders/x/../../replacement_items")
    assert_error(r, 404, "not_found")
    assert_nothing_reached_instacart(stub)


def big_json(size):
    """A JSON object of exactly size bytes."""
    skel = json.dumps({**RECO_BODY, "pad": ""}).encode()
    body = json.dumps({**RECO_BODY, "pad": "x" * (size - len(skel))}).encode()
    assert len(body) == size
    return body


def test_proxy_body_over_64_kib_is_413(stub, secure):
    r = reco(secure, RECO_PATHS[0], big_json(64 * 1024 + 1))
    assert_error(r, 413, "request_too_large")
    assert_nothing_reached_instacart(stub)


def test_proxy_body_of_64_kib_is_forwarded(stub, secure):
    body = big_json(64 * 1024)
    r = reco(secure, RECO_PATHS[0], body)
    assert r.status == 200, r
    (fwd,) = reco_requests(stub)
    assert fwd["body_bytes"] == len(body)


def test_proxy_chunked_body_over_the_limit_is_413(stub, secure):
    chunk = b" " * 4096

    def chunks():
        yield b'{"pad":"'
        for _ in range(20):
            yield chunk
        yield b'"}'

    # no Content-Length: http.client sends it chunked
    h = bearer(secure.keys["fe"], **{USER_HEADER: "alice"}, **JSON)
    r = secure.request("POST", RECO_PATHS[0], body=chunks(), headers=h)
    assert_error(r, 413, "request_too_large")
    assert_nothing_reached_instacart(stub)


@pytest.mark.parametrize("max_body,limit", [("1KiB", 1024), ("2000", 2000), ("1MiB", 1024 * 1024)])
def test_configured_max_body(stub, make_tokend, tmp_path, max_body, limit):
    keys = Keys(tmp_path / "keys", key_names())
    t = make_tokend(stub, {"server": dict(SERVER), "auth": {"keys_file": keys.path},
                           "frontend": {"max_body": max_body}})
    t.keys = keys
    over = reco(t, RECO_PATHS[0], big_json(limit + 1))
    assert_error(over, 413, "request_too_large")
    assert_nothing_reached_instacart(stub)
    if limit <= 64 * 1024:  # the stand-in itself takes 64 KiB at most
        assert reco(t, RECO_PATHS[0], big_json(limit)).status == 200


# ---------------------------------------------------------------- CORS with credentials, in Chromium


# The site: one web server (here, in the test) for three origins of one site,
# example.test. app.example.test signs its user in with a cookie and, as the
# site's proxy does, forwards /instacart/... to tokend with its frontend key
# and the user's id. shop.example.test is another origin of the site, listed
# in allowed_origins; evil.example.test is not. Same site, so the browser
# sends the cookie from both: only tokend's CORS answer tells them apart.
class Site:
    def __init__(self, t):
        import http.server
        import threading
        site = self
        self.forwarded = []  # (method, path, Origin, tokend's status)

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def answer(self, status, body=b"", headers=()):
                self.send_response(status)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def handle_any(self):
                host = self.headers.get("Host", "").split(":")[0]
                if host != "app.example.test":
                    return self.answer(200, b"<!doctype html><title>a page</title>", [("Content-Type", "text/html")])
                if self.path == "/login":
                    return self.answer(200, b"signed in", [("Set-Cookie", "session=alice; Path=/; SameSite=Lax")])
                if not self.path.startswith("/instacart/"):
                    return self.answer(404)
                import http.client
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                out = {k: self.headers[k] for k in ("Origin", "Sec-Fetch-Site", "Content-Type",
                                                    "Access-Control-Request-Method",
                                                    "Access-Control-Request-Headers") if self.headers.get(k)}
                if "session=alice" in (self.headers.get("Cookie") or ""):
                    out[USER_HEADER] = "alice"
                    out["Authorization"] = f"Bearer {t.keys['fe']}"
                c = http.client.HTTPConnection(t.host, t.port, timeout=10)
                c.request(self.command, self.path[len("/instacart"):], body=body or None, headers=out)
                r = c.getresponse()
                data = r.read()
                c.close()
                site.forwarded.append((self.command, self.path, self.headers.get("Origin"), r.status))
                keep = [(k, v) for k, v in r.getheaders()
                        if k.lower() not in ("connection", "content-length", "date", "transfer-encoding")]
                self.answer(r.status, data, keep)

            do_GET = do_POST = do_OPTIONS = handle_any

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


READ_BOTH = """
  const base = "http://app.example.test:%d/instacart";
  const out = {};
  try {
    const t = await fetch(base + "/v1/frontend/token", {credentials: "include"});
    out.token = {status: t.status, body: await t.json()};
  } catch (e) { out.token = {failed: e.name}; }
  try {
    const r = await fetch(base + "/v2/recommendations/replacement_items", {
      method: "POST", credentials: "include", headers: {"Content-Type": "application/json"},
      body: JSON.stringify(%s)});
    out.reco = {status: r.status, body: await r.json()};
  } catch (e) { out.reco = {failed: e.name}; }
  return out;
"""


@pytest.fixture
def browser(tmp_path):
    import shutil
    if not shutil.which("chromium"):
        pytest.skip("Debian's chromium is not installed (tests/deps.sh test)")
    pytest.importorskip("websocket", reason="Debian's python3-websocket (tests/deps.sh test)")
    from browser import Browser
    b = Browser(str(tmp_path))
    yield b
    b.close()


def test_a_page_on_an_allowed_origin_signed_in_by_cookie_reads_and_another_reads_nothing(
        stub, make_tokend, tmp_path, browser):
    keys = Keys(tmp_path / "keys", {"fe": ("frontend", "proxy")})
    # the allowed origin carries the site's port, known once the site listens
    t = make_tokend(stub, {"auth": {"keys_file": keys.path}}, start=False)
    t.keys = keys
    site = Site(t)
    try:
        shop, evil = f"http://shop.example.test:{site.port}", f"http://evil.example.test:{site.port}"
        t.sections["server"]["allowed_origins"] = shop
        t.write_config()
        t.start()
        browser.open(f"http://app.example.test:{site.port}/login")
        script = READ_BOTH % (site.port, json.dumps(RECO_BODY))

        # another origin of the same site: the cookie goes along, tokend
        # refuses the Origin (and the preflight), the page reads nothing
        browser.open(evil + "/")
        got = browser.run(script)
        assert got == {"token": {"failed": "TypeError"}, "reco": {"failed": "TypeError"}}, got
        assert stub.token_requests() == []
        assert [(m, s) for m, _, o, s in site.forwarded if o == evil] == [("GET", 403), ("OPTIONS", 403)]

        # the allowed origin reads the user's token and Instacart's answer
        browser.open(shop + "/")
        got = browser.run(script)
        assert got["token"]["status"] == 200, got
        assert got["token"]["body"]["access_token"]
        assert got["reco"]["status"] == 200, got
        assert "error" not in got["reco"]["body"], got
        assert [r["user_id"] for r in stub.token_requests()] == ["alice"]
    finally:
        site.close()


# ---------------------------------------------------------------- Unix socket peers, and the socket itself


def unix_tokend(stub, make_tokend, sock, **server):
    t = make_tokend(stub, {"server": {"listen": f"unix:{sock}", **server}}, start=False)
    return start_unix_only(t, sock)


def test_unix_socket_peer_outside_the_uid_list_is_403(stub, make_tokend, short_dir):
    sock = os.path.join(short_dir, "tokend.sock")
    assert os.getuid() != 4242
    unix_tokend(stub, make_tokend, sock, allowed_uids="4242")
    r = unix_request(sock, "GET", "/v1/token?user_id=alice")
    assert_error(r, 403, "forbidden")
    assert unix_request(sock, "GET", "/v1/client-token").status == 403
    assert_nothing_reached_instacart(stub)


def test_unix_socket_peer_outside_the_gid_list_is_403(stub, make_tokend, short_dir):
    sock = os.path.join(short_dir, "tokend.sock")
    assert 4242 not in os.getgroups() and os.getgid() != 4242
    unix_tokend(stub, make_tokend, sock, allowed_gids="4242")
    assert_error(unix_request(sock, "GET", "/v1/token?user_id=alice"), 403, "forbidden")
    assert_nothing_reached_instacart(stub)


@pytest.mark.parametrize("kind", ["uid", "uid-name", "uid-among-others", "gid", "gid-name"])
def test_unix_socket_peer_in_the_list_is_served(stub, make_tokend, short_dir, kind):
    sock = os.path.join(short_dir, "tokend.sock")
    uid, gid = os.getuid(), os.getgid()
    server = {
        "uid": {"allowed_uids": str(uid)},
        "uid-name": {"allowed_uids": pwd.getpwuid(uid).pw_name},
        "uid-among-others": {"allowed_uids": f"4242 {uid} 4243"},
        "gid": {"allowed_gids": str(gid)},
        "gid-name": {"allowed_gids": grp.getgrgid(gid).gr_name},
    }[kind]
    unix_tokend(stub, make_tokend, sock, **server)
    r = unix_request(sock, "GET", "/v1/token?user_id=alice")
    assert r.status == 200, r
    assert [q["user_id"] for q in stub.token_requests()] == ["alice"]


def test_unix_socket_mode_and_group(stub, make_tokend, short_dir):
    sock = os.path.join(short_dir, "default.sock")
    unix_tokend(stub, make_tokend, sock)
    assert stat.S_ISSOCK(os.stat(sock).st_mode)
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o660

    sock2 = os.path.join(short_dir, "private.sock")
    unix_tokend(stub, make_tokend, sock2, socket_mode="0600")
    assert stat.S_IMODE(os.stat(sock2).st_mode) == 0o600

    if os.getuid() != 0:
        pytest.skip("socket_group to a group not ours needs root")
    other = next((g for g in grp.getgrall() if g.gr_gid != os.getgid()), None)
    if other is None:
        pytest.skip("no other group on this system")
    sock3 = os.path.join(short_dir, "group.sock")
    unix_tokend(stub, make_tokend, sock3, socket_group=other.gr_name)
    assert os.stat(sock3).st_gid == other.gr_gid
    assert unix_request(sock3, "GET", "/v1/token?user_id=alice").status == 200


def test_a_second_tokend_on_a_live_socket_refuses_to_start(stub, make_tokend, short_dir):
    """A second tokend configured on the socket of one that runs does not
    take the path over (the first would run on, unreachable): it exits,
    naming the path and the process that listens there."""
    sock = os.path.join(short_dir, "tokend.sock")
    first = unix_tokend(stub, make_tokend, sock)
    second = make_tokend(stub, {"server": {"listen": f"unix:{sock}"}}, start=False)
    second.start(expect_ready=False)
    code = second.proc.wait(timeout=15 * SLOW)
    log = second.log()
    assert code != 0, log
    assert sock in log and str(first.proc.pid) in log, log
    assert "another" in log, log
    # the first is still reachable on its path
    r = unix_request(sock, "GET", "/v1/token?user_id=alice")
    assert r.status == 200, r
    assert os.path.exists(sock)


def test_a_stale_socket_is_replaced(stub, make_tokend, short_dir):
    """A socket file left by a tokend that died (nobody accepts on it) is
    replaced at start."""
    sock = os.path.join(short_dir, "tokend.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(sock)
    s.close()  # bound, never listened on: connect() is refused
    unix_tokend(stub, make_tokend, sock)
    assert unix_request(sock, "GET", "/v1/token?user_id=alice").status == 200
    # a path that is not a socket is never removed
    plain = os.path.join(short_dir, "plain")
    open(plain, "w").close()
    t = make_tokend(stub, {"server": {"listen": f"unix:{plain}"}}, start=False)
    t.start(expect_ready=False)
    assert t.proc.wait(timeout=15 * SLOW) != 0
    assert os.path.isfile(plain)


def test_tcp_and_unix_at_once(stub, make_tokend, short_dir):
    sock = os.path.join(short_dir, "tokend.sock")
    # the peer allow-list is for Unix socket callers only
    t = make_tokend(stub, {"server": {"listen": f"127.0.0.1:0 unix:{sock}", "allowed_uids": "4242"}})
    wait_unix_listening(t, sock)
    assert len(http_addresses(t.log())) == 1
    tcp = t.get("/v1/token?user_id=alice")
    assert tcp.status == 200, tcp
    assert_error(unix_request(sock, "GET", "/v1/token?user_id=alice"), 403, "forbidden")
    assert len(stub.token_requests()) == 1


def test_tcp_and_unix_both_serve_the_same_cache(stub, make_tokend, short_dir):
    sock = os.path.join(short_dir, "tokend.sock")
    t = make_tokend(stub, {"server": {"listen": f"127.0.0.1:0 unix:{sock}"}})
    wait_unix_listening(t, sock)
    a = t.get("/v1/token?user_id=alice")
    b = unix_request(sock, "GET", "/v1/token?user_id=alice")
    assert a.status == b.status == 200
    assert a.json()["access_token"] == b.json()["access_token"]
    assert b.header("x-cache") == "hit"
    assert len(stub.token_requests()) == 1


def test_unix_socket_with_keys(stub, make_tokend, short_dir, tmp_path):
    sock = os.path.join(short_dir, "tokend.sock")
    keys = Keys(tmp_path / "keys", key_names())
    t = make_tokend(stub, {"server": {"listen": f"unix:{sock}", "allowed_uids": str(os.getuid())},
                           "auth": {"keys_file": keys.path}}, start=False)
    start_unix_only(t, sock)
    assert_401(unix_request(sock, "GET", "/v1/token?user_id=alice"))
    assert_nothing_reached_instacart(stub)
    r = unix_request(sock, "GET", "/v1/frontend/token", headers=bearer(keys["fe"], **{USER_HEADER: "alice"}))
    assert r.status == 200, r
