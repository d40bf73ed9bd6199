"""Driver for tests/stub/instacart-stub, the local stand-in for Instacart's
POST /v2/oauth/token.  Standard library only (runs under /usr/bin/python3).

    stub = Stub(exe, tmp_path)
    stub.start()
    stub.fault(action="status", status=503, count=1)
    ...
    assert stub.stats()["mints"] == 1
    stub.stop()

HTTP answers of the token/API endpoints are returned whatever their status;
the control helpers (requests, stats, fault, reset, config) raise RuntimeError
when the stub refuses them, since that means the test itself is wrong.
"""

import base64
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request

DEFAULT_CREDENTIALS = (("test-client", "test-secret"),)

# Never route 127.0.0.1 through an http_proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def assertion(user_id):
    """The fulfillment_user_assertion for user_id: Base64 of {"user_id": ...}."""
    raw = json.dumps({"user_id": user_id}, separators=(",", ":")).encode()
    return base64.b64encode(raw).decode("ascii")


class Stub:
    def __init__(self, exe, workdir, expires_in=86400, credentials=DEFAULT_CREDENTIALS):
        self.exe = os.fspath(exe)
        self.workdir = os.fspath(workdir)
        self.expires_in = expires_in
        self.credentials = tuple((str(i), str(s)) for i, s in credentials)
        self.proc = None
        self.port = None
        self.base_url = None
        os.makedirs(self.workdir, exist_ok=True)
        self.port_file = os.path.join(self.workdir, "instacart-stub.port")
        self.log_path = os.path.join(self.workdir, "instacart-stub.log")
        self.secret_files = []
        for n, (_, secret) in enumerate(self.credentials):
            path = os.path.join(self.workdir, f"instacart-stub-secret-{n}")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secret + "\n")
            os.chmod(path, 0o600)  # O_CREAT's mode does not apply to an existing file
            self.secret_files.append(path)

    # ------------------------------------------------------------ lifecycle

    def argv(self):
        argv = [self.exe, "--listen", "127.0.0.1:0", "--port-file", self.port_file,
                "--expires-in", str(self.expires_in)]
        for (client_id, _), path in zip(self.credentials, self.secret_files):
            argv += ["--client-id", client_id, "--client-secret-file", path]
        return argv

    def start(self, timeout=10.0):
        if self.proc is not None:
            raise RuntimeError("stub already started")
        try:
            os.unlink(self.port_file)
        except FileNotFoundError:
            pass
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                rc = self.proc.returncode
                self.proc = None
                raise RuntimeError(f"instacart-stub exited with {rc}: {self.log()}")
            port = self._read_port()
            if port:
                self.port = port
                self.base_url = f"http://127.0.0.1:{port}"
                try:
                    status, _, _ = self.request("GET", "/__stub/stats", timeout=1.0)
                    if status == 200:
                        return self
                except OSError:
                    pass
            time.sleep(0.02)
        self._kill()
        raise RuntimeError(f"instacart-stub did not come up within {timeout} s: {self.log()}")

    def stop(self, timeout=10.0):
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError(f"instacart-stub ignored SIGTERM for {timeout} s")
        assert rc == 0, f"instacart-stub exited with {rc}: {self.log()}"

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def log(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()[-4000:]
        except OSError:
            return ""

    def _read_port(self):
        try:
            with open(self.port_file) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    def _kill(self):
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    # ------------------------------------------------------------ HTTP

    def request(self, method, path, body=None, headers=None, timeout=5.0):
        """(status, headers, body bytes); never raises for an HTTP status.
        body: bytes are sent as they are, anything else as JSON."""
        headers = dict(headers or {})
        data = None
        if body is not None:
            if isinstance(body, (bytes, bytearray)):
                data = bytes(body)
            else:
                data = json.dumps(body).encode()
                headers.setdefault("Content-Type", "application/json")
        req = urllib.request.Request(self.base_url + path, data=data, method=method, headers=headers)
        try:
            with _OPENER.open(req, timeout=timeout) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as e:
            with e:
                return e.code, dict(e.headers), e.read()

    def request_json(self, method, path, body=None, headers=None, timeout=5.0):
        """(status, parsed JSON or None if the body is not JSON)."""
        status, _, raw = self.request(method, path, body, headers, timeout)
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, None

    def _control(self, method, path, body=None):
        status, data = self.request_json(method, path, body)
        if status != 200:
            raise RuntimeError(f"{method} {path} -> {status}: {data}")
        return data

    # ------------------------------------------------------------ control API

    def requests(self):
        return self._control("GET", "/__stub/requests")["requests"]

    def token_requests(self):
        return [r for r in self.requests() if r["path"] == "/v2/oauth/token"]

    def stats(self):
        return self._control("GET", "/__stub/stats")

    def fault(self, **kw):
        return self._control("POST", "/__stub/faults", kw)

    def faults(self, faults):
        return self._control("POST", "/__stub/faults", list(faults))

    def reset(self):
        return self._control("POST", "/__stub/reset", {})

    def config(self, **kw):
        """expires_in=N, credentials=[(id, secret), ...], extra_scopes=[...]."""
        if "credentials" in kw:
            kw["credentials"] = [{"client_id": i, "client_secret": s} for i, s in kw["credentials"]]
        return self._control("POST", "/__stub/config", kw)

    # ------------------------------------------------------------ direct calls

    def mint(self, user_id, scope="connect:recommendations", client_id=None, client_secret=None):
        """Mints a user token straight from the stub: (status, json)."""
        body = {"grant_type": "fulfillment_user_assertion",
                "client_id": self.credentials[0][0] if client_id is None else client_id,
                "client_secret": self.credentials[0][1] if client_secret is None else client_secret,
                "assertion": assertion(user_id)}
        if scope is not None:
            body["scope"] = scope
        return self.request_json("POST", "/v2/oauth/token", body)

    def revoke(self, token, client_id=None, client_secret=None):
        body = {"client_id": self.credentials[0][0] if client_id is None else client_id,
                "client_secret": self.credentials[0][1] if client_secret is None else client_secret,
                "token": token}
        return self.request_json("POST", "/v2/oauth/token/revoke", body)
