"""HTTP client for the container test, run by the host's python3 inside the
container's network namespace (nsenter -n), where tokend and the Instacart
stand-in listen on loopback. Standard library only.

    ct_client.py token USER            -> one line: STATUS X-CACHE TOKEN-FINGERPRINT
    ct_client.py fetch N PREFIX        -> fetches N users, prints "ok=.. hit=.. miss=.."
    ct_client.py wait-token USER SECS  -> retries until 200 (for a reload to land)
    ct_client.py stub-stats            -> the stand-in's counters, JSON
    ct_client.py stub-credentials ID SECRET [ID SECRET ...]
    ct_client.py status                -> tokend's /v1/status, JSON on one line

tokend is reached at 127.0.0.1:8787, or at $TOKEND_CT_ADDR: HOST:PORT, or
unix:PATH (a Unix socket in the container, reached from the host through
/proc/PID/root/...).
"""
import hashlib
import http.client
import json
import os
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

STUB = ("127.0.0.1", 9797)


def tokend_address():
    a = os.environ.get("TOKEND_CT_ADDR", "127.0.0.1:8787")
    if a.startswith("unix:"):
        return a
    host, port = a.rsplit(":", 1)
    return (host, int(port))


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


TOKEND = tokend_address()


def request(addr, method, path, body=None, timeout=10.0):
    if isinstance(addr, str):
        c = UnixConnection(addr[len("unix:"):], timeout)
    else:
        c = http.client.HTTPConnection(*addr, timeout=timeout)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        c.request(method, path, body=body, headers=headers)
        r = c.getresponse()
        return r.status, r.getheader("X-Cache") or "-", r.read()
    finally:
        c.close()


def token(user):
    status, how, body = request(TOKEND, "GET", "/v1/token?user_id=" + quote(user))
    fp = "-"
    if status == 200:
        fp = hashlib.sha256(json.loads(body)["access_token"].encode()).hexdigest()[:12]
    return status, how, fp


def main(argv):
    cmd = argv[1]
    if cmd == "token":
        print(*token(argv[2]))
    elif cmd == "wait-token":
        deadline = time.monotonic() + float(argv[3])
        while True:
            status, how, fp = token(argv[2])
            if status == 200 or time.monotonic() > deadline:
                print(status, how, fp)
                return 0 if status == 200 else 1
            time.sleep(0.2)
    elif cmd == "fetch":
        n, prefix = int(argv[2]), argv[3]
        with ThreadPoolExecutor(max_workers=16) as ex:
            results = list(ex.map(token, [f"{prefix}{i}" for i in range(n)]))
        ok = sum(1 for s, _, _ in results if s == 200)
        hit = sum(1 for s, h, _ in results if s == 200 and h == "hit")
        print(f"ok={ok} hit={hit} miss={ok - hit} failed={n - ok}")
        return 0 if ok == n else 1
    elif cmd == "status":
        status, _, body = request(TOKEND, "GET", "/v1/status")
        if status != 200:
            print(status, body.decode(errors="replace"), file=sys.stderr)
            return 1
        print(json.dumps(json.loads(body)))
    elif cmd == "stub-stats":
        status, _, body = request(STUB, "GET", "/__stub/stats")
        stats = json.loads(body)
        print(json.dumps({k: stats[k] for k in ("token_requests", "mints")}))
    elif cmd == "stub-credentials":
        pairs = zip(argv[2::2], argv[3::2])
        body = json.dumps({"credentials": [{"client_id": i, "client_secret": c} for i, c in pairs]})
        status, _, out = request(STUB, "POST", "/__stub/config", body=body)
        if status != 200:
            print(status, out.decode(errors="replace"), file=sys.stderr)
            return 1
    else:
        print("unknown command " + cmd, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
