"""Issue 13, the defects of the HTTP front fixed so far: HEAD, the headers a
relaying proxy adds, Sec-Fetch-Site in any case, what the Recommendations
proxy passes to a browser, counting every request once under its real
status, CORS with credentials, and the drop-in speaking OAuth 2.0 as
standard clients expect (driven by Debian's requests-oauthlib)."""
import base64
import json
import re

import pytest

from sec_helpers import Keys, bearer
from stub import assertion
from test_security import RECO_BODY, SERVER, SHOP, USER_HEADER, assert_error, post_json

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.fixture
def front(stub, make_tokend, tmp_path):
    keys = Keys(tmp_path / "keys", {"fe": ("frontend", "proxy"), "backend": ("token", "client-token"),
                                    "admin": ("admin",)})
    t = make_tokend(stub, {"server": dict(SERVER), "auth": {"keys_file": keys.path}})
    t.keys = keys
    return t


def counted(t, route, code):
    """tokend_http_requests_total{route, code} as /metrics says."""
    m = re.search(r'tokend_http_requests_total\{route="%s",code="%s"\} (\d+)' % (re.escape(route), code),
                  t.get("/metrics").body.decode())
    return int(m.group(1)) if m else 0


# ---------------------------------------------------------------- defect 10: HEAD


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics", "/v1/status"])
def test_head_is_answered_wherever_get_only_reads(stub, tokend, path):
    get = tokend.get(path)
    head = tokend.request("HEAD", path)
    assert head.status == get.status == 200, head
    assert head.body == b""
    assert head.header("content-type") == get.header("content-type")


def test_head_is_refused_where_get_mints(stub, tokend):
    r = tokend.request("HEAD", "/v1/token?user_id=alice")
    assert r.status == 405
    assert r.header("allow") == "GET, DELETE"
    assert stub.stats()["mints"] == 0


# ---------------------------------------------------------------- defect 4: relayed requests


@pytest.mark.parametrize("header", ["X-Real-IP", "X-Forwarded-Host", "X-Forwarded-Proto", "X-Forwarded-For",
                                    "Forwarded"])
def test_every_header_a_relaying_proxy_adds_is_refused_off_the_frontend_routes(stub, tokend, header):
    value = "for=10.0.0.1" if header == "Forwarded" else "10.0.0.1"
    assert_error(tokend.get("/v1/token?user_id=alice", headers={header: value}), 403, "forbidden")
    assert stub.stats()["mints"] == 0


@pytest.mark.parametrize("value", ["cross-site", "Cross-Site", "CROSS-SITE"])
def test_sec_fetch_site_cross_site_in_any_case(stub, tokend, value):
    assert_error(tokend.get("/v1/token?user_id=alice", headers={"Sec-Fetch-Site": value}), 403, "forbidden")
    assert stub.stats()["mints"] == 0


# ---------------------------------------------------------------- defect 6: what the proxy passes on


def reco(t, **fault):
    path = "/v2/recommendations/replacement_items"
    return post_json(t, path, RECO_BODY, headers=bearer(t.keys["fe"], **{USER_HEADER: "alice"}))


@pytest.mark.parametrize("status", [302, 304, 307, 101])
def test_the_proxy_does_not_relay_redirects_or_informational_statuses(stub, front, status):
    stub.fault(match_path="/v2/recommendations/replacement_items", action="status", status=status,
               body="", content_type="application/json")
    r = reco(front)
    if status == 101:  # libcurl itself gives up on a 101 nobody asked for
        assert_error(r, 503, "upstream_unavailable")
    else:
        assert_error(r, 502, "upstream_unavailable")
        assert str(status) in r.json()["error_description"]
    assert r.header("location") is None


def test_the_proxy_does_not_serve_html_on_the_sites_origin(stub, front):
    stub.fault(match_path="/v2/recommendations/replacement_items", action="status", status=200,
               body="<script>alert(document.cookie)</script>", content_type="text/html")
    r = reco(front)
    assert_error(r, 502, "upstream_unavailable")
    assert b"<script>" not in r.body
    assert r.header("x-content-type-options") == "nosniff"


def test_the_proxy_relays_instacarts_json_refusals_as_they_are(stub, front):
    stub.fault(match_path="/v2/recommendations/replacement_items", action="status", status=422,
               body='{"errors":[{"message":"bad item"}]}', content_type="application/json; charset=utf-8")
    r = reco(front)
    assert r.status == 422, r
    assert r.json() == {"errors": [{"message": "bad item"}]}
    assert r.header("x-content-type-options") == "nosniff"


# ---------------------------------------------------------------- defect 1: counting


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


# ---------------------------------------------------------------- defect 9: CORS with credentials


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


def test_another_origin_gets_no_cors_headers(stub, front):
    h = bearer(front.keys["fe"], **{USER_HEADER: "alice", "Origin": "https://evil.example"})
    r = front.get("/v1/frontend/token", headers=h)
    assert r.status == 403
    assert r.header("access-control-allow-origin") is None
    assert r.header("access-control-allow-credentials") is None
    assert stub.stats()["mints"] == 0


# ---------------------------------------------------------------- defect 8: the drop-in speaks OAuth 2.0


def form(t, fields, key="backend", auth=None):
    from urllib.parse import urlencode
    h = dict(FORM)
    h["Authorization"] = auth or f"Bearer {t.keys[key]}"
    return t.request("POST", "/v2/oauth/token", body=urlencode(fields).encode(), headers=h)


def test_a_form_encoded_client_credentials_request(stub, front):
    r = form(front, {"grant_type": "client_credentials", "scope": "connect:fulfillment"})
    assert r.status == 200, r
    assert r.json()["scope"] == "connect:fulfillment"
    (q,) = stub.token_requests()
    assert q["grant_type"] == "client_credentials"


def test_a_form_encoded_user_assertion(stub, front):
    r = form(front, {"grant_type": "fulfillment_user_assertion", "assertion": assertion("al ice+1"),
                     "scope": "connect:recommendations"})
    assert r.status == 200, r
    (q,) = stub.token_requests()
    assert q["user_id"] == "al ice+1"


@pytest.mark.parametrize("body,error", [
    ("scope=connect:fulfillment", "invalid_request"),                      # no grant_type
    ("grant_type=password&username=a", "unsupported_grant_type"),
    ("grant_type=client_credentials&grant_type=client_credentials", "invalid_request"),
    ("grant_type=client_credentials&client_secret=s3cret", "invalid_request"),
    ("grant_type=client_credentials&scope=%zz", "invalid_request"),
    ("grant_type=client_credentials&scope=a%00b", "invalid_request"),
    ("grant_type=fulfillment_user_assertion", "invalid_request"),         # no assertion
    ("grant_type=fulfillment_user_assertion&assertion=bm90IGpzb24%3D", "invalid_grant"),
    ("grant_type=client_credentials&" + "&".join(f"x{i}=1" for i in range(40)), "invalid_request"),
], ids=["no-grant", "other-grant", "repeated", "secret", "bad-escape", "nul", "no-assertion", "bad-assertion",
        "too-many"])
def test_form_refusals_follow_rfc_6749(stub, front, body, error):
    h = {**FORM, "Authorization": f"Bearer {front.keys['backend']}"}
    assert_error(front.request("POST", "/v2/oauth/token", body=body.encode(), headers=h), 400, error)
    assert stub.token_requests() == []


def test_json_without_grant_type_is_invalid_request(stub, front):
    r = post_json(front, "/v2/oauth/token", {"scope": "connect:fulfillment"}, headers=bearer(front.keys["backend"]))
    assert_error(r, 400, "invalid_request")


def test_duplicate_json_members_are_refused_in_the_body_and_the_assertion(stub, front):
    raw = b'{"grant_type":"client_credentials","grant_type":"fulfillment_user_assertion"}'
    assert_error(post_json(front, "/v2/oauth/token", raw, headers=bearer(front.keys["backend"])), 400,
                 "invalid_request")
    twice = base64.b64encode(b'{"user_id":"alice","user_id":"mallory"}').decode()
    r = post_json(front, "/v2/oauth/token", {"grant_type": "fulfillment_user_assertion", "assertion": twice},
                  headers=bearer(front.keys["backend"]))
    assert_error(r, 400, "invalid_grant")
    assert stub.token_requests() == []


def test_instacarts_invalid_scope_comes_back_as_its_own_400(stub, front):
    r = form(front, {"grant_type": "client_credentials", "scope": "connect:no-such-scope"})
    assert_error(r, 400, "invalid_scope")


def test_a_missing_or_wrong_key_is_invalid_client(stub, front):
    r = front.request("POST", "/v2/oauth/token", body=b"grant_type=client_credentials", headers=FORM)
    assert_error(r, 401, "invalid_client")
    r = form(front, {"grant_type": "client_credentials"}, auth="Bearer not-a-key")
    assert_error(r, 401, "invalid_client")
    assert stub.token_requests() == []


def test_the_key_as_the_password_of_http_basic(stub, front):
    basic = base64.b64encode(f"my-app:{front.keys['backend']}".encode()).decode()
    r = form(front, {"grant_type": "client_credentials"}, auth=f"Basic {basic}")
    assert r.status == 200, r
    wrong = base64.b64encode(b"my-app:wrong").decode()
    assert_error(form(front, {"grant_type": "client_credentials"}, auth=f"Basic {wrong}"), 401, "invalid_client")


def test_requests_oauthlib_fetches_a_token(stub, front, monkeypatch):
    oauthlib = pytest.importorskip("oauthlib.oauth2", reason="Debian's python3-oauthlib (tests/deps.sh)")
    requests_oauthlib = pytest.importorskip("requests_oauthlib", reason="Debian's python3-requests-oauthlib")
    # tokend is plain HTTP on loopback; oauthlib insists on https otherwise
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")
    url = f"http://{front.host}:{front.port}/v2/oauth/token"
    session = requests_oauthlib.OAuth2Session(client=oauthlib.BackendApplicationClient(client_id="my-app"))
    session.trust_env = False  # no proxy from the environment for 127.0.0.1
    tok = session.fetch_token(url, client_id="my-app", client_secret=front.keys["backend"],
                              scope=["connect:fulfillment"])
    assert tok["token_type"] == "Bearer" and tok["access_token"]
    assert tok["scope"] == ["connect:fulfillment"]
    (q,) = stub.token_requests()
    assert q["grant_type"] == "client_credentials" and q["scope"] == "connect:fulfillment"
    # a refusal is raised as the OAuth error it is
    with pytest.raises(oauthlib.rfc6749.errors.OAuth2Error) as e:
        session.fetch_token(url, client_id="my-app", client_secret="wrong-key")
    assert e.value.error == "invalid_client"
