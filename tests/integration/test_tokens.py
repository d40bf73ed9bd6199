"""Tokens as a caller gets them, against the real stand-in: a user token
minted once, cached and served until it nears its expiry, min_ttl, refreshed
ahead of expiry for users still asking, the cache's bound, tokens dropped
and revoked on request, client tokens (GET /v1/client-token), and the
drop-in for Instacart's own token endpoint (POST /v2/oauth/token), in JSON
and form-encoded as standard OAuth 2.0 clients send it (driven by Debian's
requests-oauthlib too)."""
import base64
import hashlib
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

import pytest

from conftest import concurrently, metrics, wait_for
from sec_helpers import (SERVER, TOKEN_FIELDS, Keys, assert_error, assert_nothing_reached_instacart, b64, bearer,
                         key_names, only, post_json)
from sec_helpers import front, open_tokend, secure  # noqa: F401 (fixtures)
from stub import assertion

FAST = {"upstream": {"attempt_timeout": "500ms", "request_timeout": "1500ms", "retry_base": "10ms",
                     "retry_max": "50ms", "breaker_failures": "1000"}}

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def fetch_many(t, paths, workers):
    barrier = threading.Barrier(workers)

    def one(p):
        barrier.wait(timeout=30)
        return t.get(p, timeout=30)

    with ThreadPoolExecutor(max_workers=workers) as ex:
        return list(ex.map(one, paths))


# ---------------------------------------------------------------- getting a user token


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


def test_credentials_in_query_are_never_sent(stub, tokend):
    tokend.token("u")
    for req in stub.requests():
        assert not req["query"], "credentials must travel in the JSON body only"


@pytest.mark.parametrize("user_id", ['quote"d', "back\\slash", "éçü", "用户", "emoji😀", "a b+c&d=e"])
def test_awkward_user_ids_reach_instacart_intact(stub, tokend, user_id):
    r = tokend.get("/v1/token?user_id=" + quote(user_id, safe=""))
    assert r.status == 200, r
    (req,) = stub.token_requests()
    assert req["user_id"] == user_id


def test_user_id_of_256_bytes_is_accepted(stub, tokend):
    assert tokend.token("é" * 128).status == 200  # 256 bytes of UTF-8


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


# ---------------------------------------------------------------- one mint per user, however many ask at once


def test_concurrent_first_requests_make_exactly_one_mint(stub, tokend):
    stub.fault(action="ok", delay_ms=300)  # keep the mint in flight while all arrive
    rs = fetch_many(tokend, ["/v1/token?user_id=popular"] * 100, 100)
    assert [r.status for r in rs] == [200] * 100
    assert len({r.json()["access_token"] for r in rs}) == 1
    assert len(stub.token_requests()) == 1
    kinds = {r.header("x-cache") for r in rs}
    assert kinds <= {"miss", "coalesced", "hit"} and "miss" in kinds


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


# ---------------------------------------------------------------- lifetime: min_ttl, expiry and refresh ahead


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


def test_a_one_second_token_is_not_handed_out_as_already_expired(stub, make_tokend):
    stub.config(expires_in=1)
    t = make_tokend(stub)
    r = t.token("alice")
    assert r.status == 200, r
    assert r.json()["expires_in"] == 1


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


# ---------------------------------------------------------------- the cache's bound


def test_lru_evicts_the_least_recently_used(stub, make_tokend):
    t = make_tokend(stub, {"cache": {"max_entries": "3"}})
    for u in ("a", "b", "c"):
        assert t.token(u).header("x-cache") == "miss"
    assert t.token("a").header("x-cache") == "hit"  # a is now more recent than b
    assert t.token("d").header("x-cache") == "miss"  # evicts b
    assert t.token("a").header("x-cache") == "hit"
    assert t.token("c").header("x-cache") == "hit"
    assert t.token("b").header("x-cache") == "miss"


# ---------------------------------------------------------------- dropping and revoking


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


# ---------------------------------------------------------------- GET /v1/client-token


def ct_get(t, scope=None):
    path = "/v1/client-token" + ("" if scope is None else f"?scope={scope}")
    return t.get(path, headers=bearer(t.keys[only("client-token")]))


def assert_token_shape(body, scope):
    assert {"access_token", "token_type", "expires_in", "created_at"} <= set(body) <= TOKEN_FIELDS, body
    assert body["token_type"] == "Bearer"
    assert 86390 <= body["expires_in"] <= 86400
    if scope is not None:
        assert body["scope"] == scope


def test_client_token_without_scope(stub, secure):
    r = ct_get(secure)
    assert r.status == 200, r
    assert r.header("content-type") == "application/json" and r.header("cache-control") == "no-store"
    assert_token_shape(r.json(), None)
    (req,) = stub.token_requests()
    assert req["grant_type"] == "client_credentials"
    assert req["scope"] is None and req["user_id"] is None
    assert req["client_id"] == "test-client"
    again = ct_get(secure)
    assert again.json()["access_token"] == r.json()["access_token"]
    assert again.header("x-cache") == "hit"
    assert len(stub.token_requests()) == 1


def test_client_token_one_per_scope_cached(stub, secure):
    scopes = [None, "connect:fulfillment", "connect:recommendations",
              "connect:recommendations,connect:fulfillment"]
    tokens = {}
    for s in scopes:
        r = ct_get(secure, s)
        assert r.status == 200, (s, r)
        assert_token_shape(r.json(), s)
        tokens[s] = r.json()["access_token"]
    assert len(set(tokens.values())) == len(scopes)
    for s in scopes:
        r = ct_get(secure, s)
        assert r.json()["access_token"] == tokens[s] and r.header("x-cache") == "hit", s
    reqs = stub.token_requests()
    assert [q["scope"] for q in reqs] == scopes, "one mint per scope"
    assert {q["grant_type"] for q in reqs} == {"client_credentials"}


def test_client_tokens_and_user_tokens_do_not_mix(stub, secure):
    c = ct_get(secure, "connect:recommendations").json()["access_token"]
    u = secure.get("/v1/token?user_id=alice", headers=bearer(secure.keys["all"])).json()["access_token"]
    assert c != u
    assert sorted(q["grant_type"] for q in stub.token_requests()) == ["client_credentials",
                                                                     "fulfillment_user_assertion"]


def test_client_token_failure_is_not_cached(stub, make_tokend, tmp_path):
    keys = Keys(tmp_path / "keys", key_names())
    t = make_tokend(stub, {"auth": {"keys_file": keys.path}, **FAST})
    t.keys = keys
    stub.fault(action="status", status=503)
    r = ct_get(t, "connect:fulfillment")
    assert r.status == 503 and r.json()["error"] == "upstream_unavailable", r
    stub.reset()
    r = ct_get(t, "connect:fulfillment")
    assert r.status == 200 and r.header("x-cache") == "miss"


def test_backend_routes_work_without_a_keys_file(stub, open_tokend):
    assert open_tokend.get("/v1/client-token?scope=connect:fulfillment").status == 200
    r = post_json(open_tokend, "/v2/oauth/token", {"grant_type": "client_credentials",
                                                    "scope": "connect:fulfillment"})
    assert r.status == 200, r
    assert len(stub.token_requests()) == 1


# ---------------------------------------------------------------- POST /v2/oauth/token (the drop-in), in JSON


def drop_in(t, body, key=None, **kw):
    return post_json(t, "/v2/oauth/token", body, headers=bearer(t.keys[key or "all"]), **kw)


def user_grant(user="alice", scope="connect:recommendations", **more):
    b = {"grant_type": "fulfillment_user_assertion", "assertion": assertion(user), **more}
    if scope is not None:
        b["scope"] = scope
    return b


def test_drop_in_user_grant(stub, secure):
    r = drop_in(secure, user_grant(), key=only("token"))
    assert r.status == 200, r
    assert r.header("content-type") == "application/json"
    body = r.json()
    assert set(body) == TOKEN_FIELDS
    assert body["token_type"] == "Bearer" and body["scope"] == "connect:recommendations"
    assert 86390 <= body["expires_in"] <= 86400 and isinstance(body["created_at"], int)
    (req,) = stub.token_requests()
    assert req["user_id"] == "alice" and req["grant_type"] == "fulfillment_user_assertion"
    again = drop_in(secure, user_grant(), key=only("token"))
    assert again.json()["access_token"] == body["access_token"]
    same = secure.get("/v1/token?user_id=alice", headers=bearer(secure.keys[only("token")]))
    assert same.json()["access_token"] == body["access_token"]
    assert len(stub.token_requests()) == 1, "answered from the cache"


def test_drop_in_user_grant_other_scope(stub, secure):
    r = drop_in(secure, user_grant(scope="connect:post_checkout"))
    assert r.status == 200 and r.json()["scope"] == "connect:post_checkout", r
    assert [q["scope"] for q in stub.token_requests()] == ["connect:post_checkout"]


def test_drop_in_client_grant(stub, secure):
    b = {"grant_type": "client_credentials", "scope": "connect:fulfillment"}
    r = drop_in(secure, b, key=only("client-token"))
    assert r.status == 200, r
    body = r.json()
    assert set(body) == TOKEN_FIELDS and body["scope"] == "connect:fulfillment"
    (req,) = stub.token_requests()
    assert req["grant_type"] == "client_credentials" and req["scope"] == "connect:fulfillment"
    assert drop_in(secure, b, key=only("client-token")).json()["access_token"] == body["access_token"]
    assert ct_get(secure, "connect:fulfillment").json()["access_token"] == body["access_token"]
    assert len(stub.token_requests()) == 1, "answered from the cache"


def test_drop_in_client_grant_without_scope(stub, secure):
    r = drop_in(secure, {"grant_type": "client_credentials"})
    assert r.status == 200, r
    assert ct_get(secure).json()["access_token"] == r.json()["access_token"]
    (req,) = stub.token_requests()
    assert req["scope"] is None


def test_drop_in_accepts_a_client_id(stub, secure):
    # an existing client changes its base URL and drops its secret, nothing more
    r = drop_in(secure, user_grant(client_id="test-client"))
    assert r.status == 200, r
    r = drop_in(secure, {"grant_type": "client_credentials", "client_id": "test-client"})
    assert r.status == 200, r


@pytest.mark.parametrize("body", [
    user_grant(client_id="test-client", client_secret="test-secret"),
    user_grant(client_secret="test-secret"),
    user_grant(client_secret=""),
    {"grant_type": "client_credentials", "client_id": "test-client", "client_secret": "test-secret"},
    {"grant_type": "client_credentials", "client_secret": None},
], ids=["user-grant", "no-client-id", "empty-secret", "client-grant", "null-secret"])
def test_drop_in_with_a_secret_is_400(stub, secure, body):
    assert_error(drop_in(secure, body), 400, "invalid_request")
    assert_nothing_reached_instacart(stub)


def _padded():
    for i in range(100):
        a = assertion(f"user{i}")
        if a.endswith("="):
            return a
    raise AssertionError("no padded assertion")


def _url_safe():
    for i in range(10000):
        a = assertion(f"u{i}>>??~~")
        if "+" in a or "/" in a:
            return a.replace("+", "-").replace("/", "_")
    raise AssertionError("no assertion with + or /")


BAD_ASSERTIONS = {
    "not-base64": "not base64!!",
    "url-safe": _url_safe(),
    "unpadded": _padded().rstrip("="),
    "newline-inside": assertion("alice")[:8] + "\n" + assertion("alice")[8:],
    "leading-space": " " + assertion("alice"),
    "empty": "",
    "non-json": b64("hello, world"),
    "json-string": b64('"alice"'),
    "json-array": b64('["alice"]'),
    "no-user-id": b64('{"id":"alice"}'),
    "user-id-number": b64('{"user_id":1234}'),
    "user-id-null": b64('{"user_id":null}'),
    "user-id-array": b64('{"user_id":["alice"]}'),
    "user-id-empty": b64('{"user_id":""}'),
    "user-id-257-bytes": b64(json.dumps({"user_id": "a" * 257})),
    "user-id-control": b64('{"user_id":"a\\u0001b"}'),
    "trailing-garbage": b64('{"user_id":"alice"} x'),
    "docs-sample": "eyAidXNlcl9pZCI6IGthbWFsc2luZ2gxMjM0fQ==",
}


@pytest.mark.parametrize("name", BAD_ASSERTIONS)
def test_drop_in_undecodable_assertion_is_invalid_grant(stub, secure, name):
    r = drop_in(secure, {"grant_type": "fulfillment_user_assertion", "assertion": BAD_ASSERTIONS[name],
                         "scope": "connect:recommendations"})
    assert_error(r, 400, "invalid_grant")
    assert_nothing_reached_instacart(stub)


def test_drop_in_docs_corrected_sample_is_accepted(stub, secure):
    r = drop_in(secure, {"grant_type": "fulfillment_user_assertion",
                         "assertion": "eyJ1c2VyX2lkIjoia2FtYWxzaW5naDEyMzQifQ==", "scope": "connect:recommendations"})
    assert r.status == 200, r
    assert [q["user_id"] for q in stub.token_requests()] == ["kamalsingh1234"]


@pytest.mark.parametrize("grant", ["authorization_code", "password", "refresh_token", "",
                                   "urn:ietf:params:oauth:grant-type:jwt-bearer", "CLIENT_CREDENTIALS"])
def test_drop_in_unsupported_grant(stub, secure, grant):
    r = drop_in(secure, {"grant_type": grant, "code": "c", "redirect_uri": "https://x.example/cb"})
    assert_error(r, 400, "unsupported_grant_type")
    assert_nothing_reached_instacart(stub)


@pytest.mark.parametrize("raw", [b"grant_type=client_credentials", b"{", b'{"grant_type":"client_credentials"',
                                 b"\xff\xfe{}"], ids=["form", "brace", "unterminated", "not-utf8"])
def test_drop_in_not_json_is_400(stub, secure, raw):
    assert_error(drop_in(secure, raw), 400, "invalid_request")
    assert_nothing_reached_instacart(stub)


def test_drop_in_body_over_64_kib_is_413(stub, secure):
    skel = json.dumps({"grant_type": "client_credentials", "pad": ""}).encode()
    raw = json.dumps({"grant_type": "client_credentials", "pad": "x" * (64 * 1024 + 1 - len(skel))}).encode()
    assert len(raw) == 64 * 1024 + 1
    assert_error(drop_in(secure, raw), 413, "request_too_large")
    assert_nothing_reached_instacart(stub)


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


# ---------------------------------------------------------------- the drop-in as OAuth 2.0 clients send it: forms


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


def test_http_basic_credentials_are_form_decoded(stub, make_tokend, tmp_path):
    """RFC 6749 §2.3.1: the client id and secret are form-encoded before
    they go into HTTP Basic. A key made the way tokend.conf shows (Base64:
    '+', '/' and '=') is found when encoded so, and still when a client
    sends it as it is (python-requests' HTTPBasicAuth does)."""
    from urllib.parse import quote_plus
    key = "q+8/Zr0=dW k%41x=="  # Base64's characters, a space and a '%' too
    path = tmp_path / "keys"
    path.write_text(f"app {hashlib.sha256(key.encode()).hexdigest()} client-token\n")
    os.chmod(path, 0o600)
    t = make_tokend(stub, {"server": dict(SERVER), "auth": {"keys_file": str(path)}})

    def basic(user, password):
        return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    t.keys = {"app": key}
    r = form(t, {"grant_type": "client_credentials"}, auth=basic(quote_plus("my app:1"), quote_plus(key)))
    assert r.status == 200, r
    r = form(t, {"grant_type": "client_credentials"}, auth=basic("my-app", key))
    assert r.status == 200, r
    for wrong in (quote_plus(key + "x"), quote_plus(key).replace("%2B", "%2b%"), key[:-1]):
        assert_error(form(t, {"grant_type": "client_credentials"}, auth=basic("my-app", wrong)), 401,
                     "invalid_client")


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
