"""The reverse proxy: the example nginx site (config/nginx-tokend.conf)
under a real nginx, in front of the real tokend and the real stand-in:
users log in to nginx (basic auth) and get their own Instacart token and
Recommendations calls, and nothing else."""
import http.client
import json
import os
import re

import pytest

from conftest import SLOW, exchange, wait_for
from nginx_fixture import NGINX, Nginx, basic, example_text, free_port, htpasswd_line, render
from sec_helpers import Keys, ShortDir, bearer, wait_unix_listening

pytestmark = pytest.mark.skipif(not os.access(NGINX, os.X_OK), reason="nginx (nginx-light) is not installed")

USERS = {"alice": "alice-pass-1", "bob": "bob pass 2 ü"}
RECO_BODY = {"location_code": "94105", "cart_id": "cart-9",
             "items": [{"line_num": 1, "item": {"rrc": "12345"}}]}


class Site:
    """tokend behind nginx running the example site."""

    def __init__(self, stub, tokend, nginx, keys):
        self.stub, self.tokend, self.nginx, self.keys = stub, tokend, nginx, keys
        self.origin = f"http://localhost:{nginx.port}"

    def request(self, method, path, user=None, password=None, body=None, headers=None, timeout=10.0):
        h = {}
        if user is not None:
            h.update(basic(user, USERS.get(user, "") if password is None else password))
        h.update(headers or {})
        if body is not None and not isinstance(body, (bytes, bytearray)):
            body = json.dumps(body).encode()
            h.setdefault("Content-Type", "application/json")
        conn = http.client.HTTPConnection("127.0.0.1", self.nginx.port, timeout=timeout * SLOW)
        return exchange(conn, method, path, body, h)

    def get(self, path, user=None, **kw):
        return self.request("GET", path, user=user, **kw)

    def tokend_requests(self):
        """Requests tokend has answered, by its own metrics (scrapes excluded)."""
        r = self.tokend.get("/metrics")
        assert r.status == 200, r
        n = 0
        for line in r.body.decode().splitlines():
            if line.startswith("tokend_http_requests_total{") and 'route="/metrics"' not in line:
                n += float(line.rsplit(" ", 1)[1])
        return n

    def access_lines(self, count):
        """The access log once it holds count lines (nginx writes it as it finishes a request)."""
        return wait_for(lambda: (lambda a: a if len(a) >= count else None)(self.nginx.access()),
                        what=f"{count} lines in nginx's access log")


@pytest.fixture
def make_site(stub, make_tokend, tmp_path):
    made = []
    dirs = []

    def make(via="tcp"):
        keys = Keys(tmp_path / f"keys{len(made)}", {"nginx": ("frontend", "proxy"), "ops": ("token", "admin")})
        port = free_port()
        server = {"allowed_origins": f"http://localhost:{port}"}
        if via == "unix":
            d = ShortDir()
            dirs.append(d)
            sock = os.path.join(d.path, "tokend.sock")
            # nginx's worker runs as we do (root: `user root` in the test's main
            # conf). The TCP listener is for the test's own look at /metrics.
            server.update(listen=f"127.0.0.1:0 unix:{sock}", allowed_uids=str(os.getuid()))
            t = make_tokend(stub, {"server": server, "auth": {"keys_file": keys.path}})
            wait_unix_listening(t, sock)
            upstream = f"unix:{sock}"
        else:
            t = make_tokend(stub, {"server": server, "auth": {"keys_file": keys.path}})
            upstream = t.address
        wd = tmp_path / f"nginx{len(made)}"
        wd.mkdir()
        htpasswd = wd / "htpasswd"
        htpasswd.write_text("".join(htpasswd_line(u, p) for u, p in USERS.items()))
        site = render(example_text(), {"LISTEN": f"127.0.0.1:{port}", "SERVER_NAME": "localhost",
                                       "TOKEND": upstream, "FRONTEND_KEY": keys["nginx"],
                                       "HTPASSWD": str(htpasswd)})
        ng = Nginx(wd, site, port)
        made.append(ng)
        check = ng.check()
        assert check.returncode == 0, check.stderr
        ng.start()
        return Site(stub, t, ng, keys)

    yield make
    for ng in made:
        ng.stop()
    for d in dirs:
        d.close()


@pytest.fixture
def site(make_site):
    return make_site("tcp")


# ---------------------------------------------------------------- the example itself


def test_every_placeholder_is_documented():
    text = example_text()
    comments = "\n".join(line for line in text.splitlines() if line.lstrip().startswith("#"))
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    names = set(re.findall(r"@([A-Z_]+)@", code))
    assert names == {"LISTEN", "SERVER_NAME", "TOKEND", "FRONTEND_KEY", "HTPASSWD"}
    for n in names:
        assert re.search(rf"#\s+@{n}@\s", comments), f"@{n}@ is not explained in the comments"


# ---------------------------------------------------------------- the positive paths


@pytest.mark.parametrize("via", ["tcp", "unix"])
def test_users_get_their_own_token_through_nginx(stub, make_site, via):
    s = make_site(via)
    a = s.get("/instacart/v1/frontend/token", user="alice")
    assert a.status == 200, a
    body = a.json()
    assert set(body) == {"access_token", "token_type", "expires_in", "scope", "created_at"}
    assert body["token_type"] == "Bearer"
    b = s.get("/instacart/v1/frontend/token", user="bob")
    assert b.status == 200, b
    assert b.json()["access_token"] != body["access_token"]
    assert [q["user_id"] for q in stub.token_requests()] == ["alice", "bob"]
    again = s.get("/instacart/v1/frontend/token", user="alice")
    assert again.json()["access_token"] == body["access_token"]
    assert len(stub.token_requests()) == 2
    assert s.keys["nginx"] not in str(a.headers) and s.keys["nginx"].encode() not in a.body


@pytest.mark.parametrize("via", ["tcp", "unix"])
def test_recommendations_call_through_nginx_is_made_for_the_user(stub, make_site, via):
    s = make_site(via)
    path = "/v2/recommendations/orders/ORD-77/replacement_items"
    r = s.request("POST", "/instacart" + path, user="bob", body=RECO_BODY,
                  headers={"Cookie": "session=site-cookie"})
    assert r.status == 200, r
    assert r.json() == {"ok": True, "path": path, "user_id": "bob", "body": RECO_BODY}
    (fwd,) = [q for q in stub.requests() if q["path"] == path]
    assert fwd["authorization_user"] == "bob"
    assert [q["user_id"] for q in stub.token_requests()] == ["bob"]


def test_all_four_recommendations_paths(stub, site):
    for path in ("/v2/recommendations/replacement_items", "/v2/recommendations/complementary_items",
                 "/v2/recommendations/orders/o-1/replacement_items",
                 "/v2/recommendations/orders/o-1/complementary_items"):
        r = site.request("POST", "/instacart" + path, user="alice", body=RECO_BODY)
        assert r.status == 200 and r.json()["path"] == path and r.json()["user_id"] == "alice", r
    assert len(stub.token_requests()) == 1


def test_the_sites_own_origin_gets_cors_headers(stub, site):
    r = site.get("/instacart/v1/frontend/token", user="alice", headers={"Origin": site.origin})
    assert r.status == 200, r
    assert r.header("access-control-allow-origin") == site.origin


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize("who", ["anonymous", "wrong-password", "unknown-user", "empty-user",
                                 "tokend-key-as-bearer", "user-header-only"])
def test_unauthenticated_gets_401_from_nginx_and_reaches_nothing(stub, site, who):
    before = site.tokend_requests()
    path = "/instacart/v1/frontend/token"
    if who == "anonymous":
        r = site.get(path)
    elif who == "wrong-password":
        r = site.get(path, user="alice", password="bob pass 2 ü")
    elif who == "unknown-user":
        r = site.get(path, user="mallory", password="x")
    elif who == "empty-user":
        r = site.get(path, user="", password="")
    elif who == "tokend-key-as-bearer":
        r = site.get(path, headers=bearer(site.keys["nginx"], **{"X-Tokend-User": "alice"}))
    else:
        r = site.get(path, headers={"X-Tokend-User": "alice"})
    assert r.status == 401, r
    assert (r.header("www-authenticate") or "").startswith("Basic"), r.headers
    r2 = site.request("POST", "/instacart/v2/recommendations/replacement_items", body=RECO_BODY,
                      headers={"X-Tokend-User": "alice"})
    assert r2.status == 401, r2
    lines = site.access_lines(2)
    assert all(line.endswith("upstream=-") for line in lines), lines
    assert site.tokend_requests() == before, "nothing may reach tokend"
    assert stub.requests() == []


@pytest.mark.parametrize("header", ["X-Tokend-User", "x-tokend-user", "X-TOKEND-USER", "X_Tokend_User"])
def test_a_user_cannot_choose_another_user(stub, site, header):
    r = site.get("/instacart/v1/frontend/token", user="alice", headers={header: "bob"})
    assert r.status == 200, r
    r = site.request("POST", "/instacart/v2/recommendations/replacement_items", user="alice", body=RECO_BODY,
                     headers={header: "bob"})
    assert r.status == 200 and r.json()["user_id"] == "alice", r
    assert [q["user_id"] for q in stub.token_requests()] == ["alice"]
    assert [q["authorization_user"] for q in stub.requests() if q["path"].startswith("/v2/recommendations/")] \
        == ["alice"]


@pytest.mark.parametrize("method,path,body", [
    ("GET", "/instacart/v1/token?user_id=bob", None),
    ("GET", "/instacart/v1/token?user_id=alice", None),
    ("GET", "/instacart/v1/client-token", None),
    ("POST", "/instacart/v2/oauth/token", {"grant_type": "client_credentials"}),
    ("DELETE", "/instacart/v1/token?user_id=bob", None),
    ("POST", "/instacart/v1/cache/flush", None),
    ("GET", "/instacart/v1/status", None),
], ids=lambda x: str(x))
def test_non_frontend_routes_are_refused_by_tokend(stub, site, method, path, body):
    r = site.request(method, path, user="alice", body=body)
    if path.endswith("/oauth/token"):  # the drop-in refuses as OAuth does
        assert r.status == 400 and r.json()["error"] == "unauthorized_client", r
    else:
        assert r.status == 403, r
        assert r.json()["error"] == "forbidden"
    assert stub.requests() == []


def test_a_cross_site_page_cannot_use_a_logged_in_browser(stub, site):
    # the browser has alice's credentials cached and sends them along
    r = site.get("/instacart/v1/frontend/token", user="alice", headers={"Origin": "https://evil.example"})
    assert r.status == 403 and r.json()["error"] == "forbidden", r
    assert r.header("access-control-allow-origin") is None
    r = site.request("POST", "/instacart/v2/recommendations/replacement_items", user="alice",
                     body=b'{"items":[]}', headers={"Content-Type": "text/plain",
                                                     "Origin": "https://evil.example",
                                                     "Sec-Fetch-Site": "cross-site"})
    assert r.status == 403, r
    assert stub.requests() == []


def test_body_over_64_kib_is_refused(stub, site):
    body = json.dumps({**RECO_BODY, "pad": "x" * (64 * 1024)}).encode()
    r = site.request("POST", "/instacart/v2/recommendations/replacement_items", user="alice", body=body,
                     headers={"Content-Type": "application/json"})
    assert r.status == 413, r
    assert stub.requests() == []


def test_paths_outside_instacart_are_not_forwarded(stub, site):
    for path in ("/v1/frontend/token", "/instacart/../v1/token?user_id=bob", "/instacartv1/frontend/token"):
        r = site.get(path, user="alice")
        assert r.status in (400, 404), (path, r)
    assert stub.requests() == []
