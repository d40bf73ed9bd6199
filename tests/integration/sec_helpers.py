"""Helpers for the tests of tokens, access control, strict HTTP and the
nginx example: API keys and their keys file, HTTP over a Unix socket, and
tokend with a keys file, allowed hosts and allowed origins (the fixtures
secure, open_tokend and front, imported by the tests that use them)."""
import base64
import hashlib
import http.client
import json
import os
import re
import secrets
import shutil
import socket
import tempfile

import pytest

from conftest import SLOW, exchange, wait_for

RIGHTS = ("token", "client-token", "frontend", "proxy", "admin")

SHOP = "https://shop.example"
APP = "https://app.example:8443"
SERVER = {"allowed_hosts": "tokend.internal", "allowed_origins": f"{SHOP} {APP}"}
USER_HEADER = "X-Tokend-User"
JSON = {"Content-Type": "application/json"}
TOKEN_FIELDS = {"access_token", "token_type", "expires_in", "scope", "created_at"}


class Keys:
    """Random API keys, one per set of rights, and the keys file naming them.

        keys = Keys(path, {"fe": ("frontend", "proxy"), ...})
        keys["fe"]             # the key itself, to send as Bearer
        keys.path              # for [auth] keys_file
    """

    def __init__(self, path, named_rights, scopes=None):
        self.path = os.fspath(path)
        self.keys = {}
        scopes = scopes or {}
        lines = ["# instacart-tokend API keys: NAME SHA256-OF-KEY RIGHTS", ""]
        for name, rights in named_rights.items():
            key = secrets.token_urlsafe(32)
            self.keys[name] = key
            extra = f" scopes={scopes[name]}" if name in scopes else ""
            lines.append(f"{name} {sha256_hex(key)} {','.join(rights)}{extra}")
            lines.append("")  # blank lines are allowed
            lines.append(f"# {name}: {', '.join(rights)}")
        # written aside and renamed: a reload never reads half a file
        fd = os.open(self.path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("\n".join(lines) + "\n")
        os.rename(self.path + ".tmp", self.path)

    def __getitem__(self, name):
        return self.keys[name]

    def values(self):
        return self.keys.values()


def sha256_hex(key):
    return hashlib.sha256(key.encode()).hexdigest()


def bearer(key, **more):
    h = {"Authorization": f"Bearer {key}"}
    h.update(more)
    return h


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over AF_UNIX; the Host header says localhost."""

    def __init__(self, path, timeout=10.0):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.settimeout(self.timeout)
            s.connect(self.unix_path)
        except BaseException:
            s.close()
            raise
        self.sock = s


def unix_request(path, method, url, body=None, headers=None, timeout=10.0):
    return exchange(UnixHTTPConnection(path, timeout=timeout * SLOW), method, url, body, headers)


def start_unix_only(t, sock_path):
    """Starts a Tokend whose only listener is unix:sock_path (conftest's
    start() waits for a TCP one) and waits until it says it listens."""
    t.start(expect_ready=False)
    wait_unix_listening(t, sock_path)
    return t


def wait_unix_listening(t, sock_path):
    """Waits for tokend's "listening on ... unix:PATH " (the line may name
    its TCP listeners first)."""
    want = re.compile(r"listening on [^\n]*\bunix:" + re.escape(sock_path) + r" ")

    def up():
        if t.proc.poll() is not None:
            raise AssertionError(f"tokend exited early ({t.proc.returncode}): {t.log()}")
        return want.search(t.log())

    wait_for(up, timeout=15, what="tokend to listen on its Unix socket")


class ShortDir:
    """A directory with a short path (a Unix socket path must fit in 108
    bytes; pytest's tmp_path may not), removed at close()."""

    def __init__(self):
        self.path = tempfile.mkdtemp(prefix="tkd-", dir="/tmp")

    def close(self):
        shutil.rmtree(self.path, ignore_errors=True)


def http_addresses(log):
    return re.findall(r"listening on http://(\S+?) ", log)


def key_names():
    """Key name -> rights: one key per right, one per 'all rights but one',
    one with all, and the frontend proxy's (frontend + proxy)."""
    named = {"all": RIGHTS, "fe": ("frontend", "proxy")}
    for r in RIGHTS:
        n = r.replace("-", "_")
        named[f"only_{n}"] = (r,)
        named[f"all_but_{n}"] = tuple(x for x in RIGHTS if x != r)
    return named


def only(right):
    return "only_" + right.replace("-", "_")


@pytest.fixture
def secure(stub, make_tokend, tmp_path):
    """tokend with a keys file, allowed hosts and origins; .keys holds the keys."""
    keys = Keys(tmp_path / "keys", key_names())
    t = make_tokend(stub, {"server": dict(SERVER), "auth": {"keys_file": keys.path}})
    t.keys = keys
    return t


@pytest.fixture
def open_tokend(stub, make_tokend):
    """tokend without a keys file (every loopback caller is served), with
    allowed hosts and origins."""
    return make_tokend(stub, {"server": dict(SERVER)})


@pytest.fixture
def front(stub, make_tokend, tmp_path):
    """tokend with a keys file (.keys: fe for a site's proxy, backend, admin),
    allowed hosts and origins."""
    keys = Keys(tmp_path / "keys", {"fe": ("frontend", "proxy"), "backend": ("token", "client-token"),
                                    "admin": ("admin",)})
    t = make_tokend(stub, {"server": dict(SERVER), "auth": {"keys_file": keys.path}})
    t.keys = keys
    return t


def post_json(t, path, body, headers=None, **kw):
    raw = body if isinstance(body, (bytes, bytearray)) else json.dumps(body).encode()
    return t.request("POST", path, body=raw, headers={**JSON, **(headers or {})}, **kw)


def assert_error(r, status, error):
    assert r.status == status, r
    body = r.json()
    assert body["error"] == error, body
    assert body.get("error_description"), body


def assert_nothing_reached_instacart(stub):
    assert stub.requests() == [], "a refused request must not reach Instacart"


def b64(raw):
    return base64.b64encode(raw if isinstance(raw, bytes) else raw.encode()).decode()
