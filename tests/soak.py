#!/usr/bin/python3
"""Soak: the real instacart-tokend against the real Instacart stand-in for a
while, under a mix of cache hits, misses (new users), the drop-in endpoint,
operator routes, invalid requests, a SIGHUP reload every few seconds and
Instacart failing in every way the stand-in knows for short periods. Then a
report: requests served, answers by kind and status, errors, the daemon's
resident memory and open file descriptors at the start and the end, and
every answer it should not have given.

    /usr/bin/python3 tests/soak.py [--minutes 10] [--build build] [--concurrency 16]

Not part of the test suite (it takes minutes); exits 1 when anything was
wrong. Standard library only; all traffic goes to 127.0.0.1.

What counts as wrong:
  - a 200 whose token is not the requested user's (asked of the stand-in,
    which knows whom it minted each token for), or whose token was already
    handed to another user, or with expires_in <= 0, or in another shape;
  - a 5xx, or no answer at all, outside a fault window (plus a grace period
    for the retry budget, the breaker's cooldown and Retry-After);
  - anything but 200 for a user whose token is cached (served once already):
    cached tokens must be served through an outage;
  - an invalid request answered with anything but a 4xx;
  - the daemon dying, or not exiting 0 on SIGTERM.
"""
import argparse
import base64
import collections
import http.client
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "integration"))
from stub import Stub  # noqa: E402  (the integration tests' driver of the stand-in)

SCOPE = "connect:recommendations"
EXPIRES_IN = 86400
HOT_USERS = 200
# how long after a fault ends tokend may still answer 5xx: a mint started
# during the fault runs out its retry budget (request_timeout), the breaker
# waits out its cooldown, a 429's Retry-After pauses minting
GRACE_S = 8.0

TOKEND_CONF = """\
[upstream]
base_url = {base_url}
client_id = test-client
client_secret_file = {secret}
connect_timeout = 500ms
attempt_timeout = 1s
request_timeout = 2500ms
retry_base = 20ms
retry_max = 200ms
breaker_failures = 5
breaker_cooldown = 2s

[cache]
# well below the number of new users a run brings: eviction is exercised
max_entries = 20000

[server]
listen = 127.0.0.1:0
"""

FAULTS = {
    "503": {"action": "status", "status": 503},
    "429": {"action": "status", "status": 429, "retry_after": "1"},
    "hang": {"action": "hang"},
    "drop": {"action": "drop"},
    "malformed": {"action": "malformed"},
    "truncated": {"action": "truncate"},
    "slow": {"action": "ok", "delay_ms": 1500},  # past attempt_timeout
}

# Requests no caller should get anything but a 4xx for.
INVALID = [
    ("GET", "/v1/token", None, {}),
    ("GET", "/v1/token?user_id=" + "u" * 257, None, {}),
    ("GET", "/v1/token?user_id=a%01b", None, {}),
    ("GET", "/v1/token?user_id=a&user_id=b", None, {}),
    ("GET", "/v1/token?user_id=a&bogus=1", None, {}),
    ("GET", "/v1/token?user_id=a&min_ttl=99999999", None, {}),
    ("GET", "/v1/token?user_id=a&scope=a%20b", None, {}),
    ("POST", "/v1/token?user_id=a", b"", {}),
    ("GET", "/no/such/route", None, {}),
    ("GET", "/v2/oauth/token", None, {}),
    ("POST", "/v2/oauth/token", b"{", {"Content-Type": "application/json"}),
    ("POST", "/v2/oauth/token", b'{"grant_type":"client_credentials","client_secret":"x"}',
     {"Content-Type": "application/json"}),
    ("POST", "/v2/oauth/token", b'{"grant_type":"password"}', {"Content-Type": "application/json"}),
    ("GET", "/v1/token?user_id=a", None, {"Host": "evil.example"}),
]


def assertion(user):
    return base64.b64encode(json.dumps({"user_id": user}, separators=(",", ":")).encode()).decode()


def proc_rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def proc_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


class Soak:
    def __init__(self, args):
        self.args = args
        self.rng = random.Random(args.seed)
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.by_kind = collections.Counter()      # (kind, status or exception)
        self.wrong = collections.Counter()         # what was wrong -> count
        self.examples = collections.defaultdict(list)
        self.token_owner = {}                      # token -> user, once checked
        self.served = set()                        # users served a token at least once
        self.windows = []                          # [start, end] of each fault, monotonic
        self.faults_run = collections.Counter()
        self.reloads = 0
        self.new_users = 0
        self.samples = []                          # (t, rss kB, fds)

    # ------------------------------------------------------------ setup

    def start(self):
        build = os.path.abspath(self.args.build)
        self.workdir = tempfile.mkdtemp(prefix="tokend-soak.")
        self.stub = Stub(os.path.join(build, "tests", "stub", "instacart-stub"),
                         os.path.join(self.workdir, "stub"), expires_in=EXPIRES_IN)
        self.stub.start()
        secret = os.path.join(self.workdir, "client-secret")
        fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("test-secret\n")
        self.conf = os.path.join(self.workdir, "tokend.conf")
        with open(self.conf, "w") as f:
            f.write(TOKEND_CONF.format(base_url=self.stub.base_url, secret=secret))
        self.log_path = os.path.join(self.workdir, "tokend.log")
        self.logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen([os.path.join(build, "src", "instacart-tokend"), "--config", self.conf],
                                     stdin=subprocess.DEVNULL, stdout=self.logf, stderr=self.logf)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"tokend exited at start ({self.proc.returncode}): {self.log()}")
            for line in self.log().splitlines():
                if "listening on http://" in line:
                    addr = line.split("listening on http://", 1)[1].split()[0]
                    self.host, port = addr.rsplit(":", 1)
                    self.port = int(port)
                    return
            time.sleep(0.05)
        raise SystemExit("tokend did not start listening within 15 s")

    def log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def sample(self):
        s = (time.monotonic(), proc_rss_kb(self.proc.pid), proc_fds(self.proc.pid))
        self.samples.append(s)
        return s

    # ------------------------------------------------------------ bookkeeping

    def fault_active(self, t0, t1):
        """Whether [t0, t1] meets a fault window or its grace period."""
        with self.lock:
            windows = [(s, (e if e is not None else float("inf")) + GRACE_S) for s, e in self.windows]
        return any(t0 <= e and s <= t1 for s, e in windows)

    def count(self, kind, outcome):
        with self.lock:
            self.by_kind[(kind, outcome)] += 1

    def flag(self, what, detail):
        with self.lock:
            self.wrong[what] += 1
            if len(self.examples[what]) < 5:
                self.examples[what].append(detail)

    def owner_of(self, token):
        """Whom the stand-in minted token for (None: it knows no such token)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.stub.port, timeout=10)
        try:
            conn.request("POST", "/v2/recommendations/replacement_items", body=b"{}",
                         headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"})
            r = conn.getresponse()
            body = r.read()
            return json.loads(body).get("user_id") if r.status == 200 else None
        finally:
            conn.close()

    def check_token(self, kind, user, r, body):
        """A 200 must carry the requested user's token, in Instacart's shape."""
        try:
            j = json.loads(body)
        except ValueError:
            return self.flag("200 that is not JSON", f"{kind} {user}: {body[:200]!r}")
        tok = j.get("access_token")
        if not isinstance(tok, str) or not tok or j.get("token_type") != "Bearer" or j.get("scope") != SCOPE:
            return self.flag("200 in the wrong shape", f"{kind} {user}: {j}")
        if not isinstance(j.get("expires_in"), int) or not 0 < j["expires_in"] <= EXPIRES_IN:
            self.flag("200 with expires_in out of range", f"{kind} {user}: expires_in={j.get('expires_in')}")
        with self.lock:
            known = self.token_owner.get(tok)
        if known is None:
            owner = self.owner_of(tok)
            with self.lock:
                known = self.token_owner.setdefault(tok, owner)
        if known != user:
            self.flag("200 with another user's token", f"{kind}: asked for {user!r}, got {known!r}'s token")
        else:
            with self.lock:
                self.served.add(user)

    # ------------------------------------------------------------ load

    def pick(self, rng):
        x = rng.random()
        if x < 0.60:
            return "hit", f"hot-{rng.randrange(HOT_USERS)}"
        if x < 0.75:
            with self.lock:
                self.new_users += 1
                n = self.new_users
            return "miss", f"new-{n}"
        if x < 0.82:
            return "dropin", f"hot-{rng.randrange(HOT_USERS)}"
        if x < 0.95:
            return "invalid", rng.randrange(len(INVALID))
        return "operator", rng.choice(["/healthz", "/readyz", "/metrics"])

    def one(self, conn, rng):
        kind, arg = self.pick(rng)
        headers, body = {}, None
        if kind in ("hit", "miss"):
            method, path = "GET", "/v1/token?user_id=" + arg
        elif kind == "dropin":
            method, path = "POST", "/v2/oauth/token"
            body = json.dumps({"grant_type": "fulfillment_user_assertion", "assertion": assertion(arg)}).encode()
            headers = {"Content-Type": "application/json"}
        elif kind == "invalid":
            method, path, body, headers = INVALID[arg]
        else:
            method, path = "GET", arg
        with self.lock:
            cached = kind in ("hit", "dropin") and arg in self.served
        t0 = time.monotonic()
        try:
            conn.request(method, path, body=body, headers=headers)
            r = conn.getresponse()
            data = r.read()
        except (OSError, http.client.HTTPException) as e:
            t1 = time.monotonic()
            self.count(kind, type(e).__name__)
            if not self.fault_active(t0, t1) or cached:
                self.flag("no answer", f"{kind} {method} {path[:80]}: {type(e).__name__}: {e}")
            return False
        t1 = time.monotonic()
        self.count(kind, r.status)
        if kind == "invalid":
            if not 400 <= r.status < 500:
                self.flag("invalid request not refused with 4xx", f"{method} {path[:80]} -> {r.status}")
        elif kind == "operator":
            if r.status != 200 and not (path == "/readyz" and r.status == 503 and self.fault_active(t0, t1)):
                self.flag("operator route failed", f"{path} -> {r.status} {data[:200]!r}")
        elif r.status == 200:
            self.check_token(kind, arg, r, data)
        elif cached:
            self.flag("cached user not served", f"{kind} {arg} -> {r.status} {data[:200]!r}")
        elif r.status >= 500 and not self.fault_active(t0, t1):
            self.flag("5xx with no fault active", f"{kind} {arg} -> {r.status} {data[:200]!r}")
        elif r.status < 500:
            self.flag("valid request refused", f"{kind} {arg} -> {r.status} {data[:200]!r}")
        return not r.will_close

    def worker(self, n):
        rng = random.Random(self.args.seed * 1000 + n)
        conn = None
        while not self.stop.is_set():
            if conn is None or rng.random() < 0.01:  # mostly keep-alive, sometimes a new connection
                if conn is not None:
                    conn.close()
                conn = http.client.HTTPConnection(self.host, self.port, timeout=15)
            if not self.one(conn, rng):
                conn.close()
                conn = None
        if conn is not None:
            conn.close()

    def reloader(self):
        rng = random.Random(self.args.seed + 1)
        while not self.stop.wait(rng.uniform(2, 5)):
            self.proc.send_signal(signal.SIGHUP)
            self.reloads += 1

    def faulter(self):
        rng = random.Random(self.args.seed + 2)
        while not self.stop.wait(rng.uniform(10, 20)):
            name = rng.choice(sorted(FAULTS))
            with self.lock:
                self.windows.append([time.monotonic(), None])
            self.stub.fault(match_path="/v2/oauth/token", **FAULTS[name])
            self.faults_run[name] += 1
            self.stop.wait(rng.uniform(3, 8))
            self.stub.reset()  # clears the fault, ends the hangs
            with self.lock:
                self.windows[-1][1] = time.monotonic()

    def sampler(self):
        while not self.stop.wait(10):
            if self.proc.poll() is not None:
                self.flag("tokend died", f"exit {self.proc.returncode}")
                self.stop.set()
                return
            self.sample()

    # ------------------------------------------------------------ run

    def run(self):
        self.start()
        first = self.sample()
        t_start = time.monotonic()
        threads = [threading.Thread(target=self.worker, args=(i,), daemon=True)
                   for i in range(self.args.concurrency)]
        threads += [threading.Thread(target=f, daemon=True) for f in (self.reloader, self.faulter, self.sampler)]
        for t in threads:
            t.start()
        self.stop.wait(self.args.minutes * 60)
        self.stop.set()
        for t in threads:
            t.join(timeout=60)
        elapsed = time.monotonic() - t_start
        alive = self.proc.poll() is None
        last = settled = None
        if alive:
            last = self.sample()
            # and once the connections of the last requests are closed (up
            # to 10 s): what is still open then was not a request in flight
            for _ in range(20):
                if proc_fds(self.proc.pid) <= first[2]:
                    break
                time.sleep(0.5)
            settled = self.sample()
        if alive:
            self.proc.send_signal(signal.SIGTERM)
            try:
                code = self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                code = self.proc.wait()
                self.flag("tokend ignored SIGTERM", "killed after 30 s")
        else:
            code = self.proc.returncode
        self.logf.close()
        if code != 0:
            self.flag("tokend did not exit 0", f"exit {code}")
        self.stub.stop()
        return self.report(first, last, settled, elapsed, code)

    def report(self, first, last, settled, elapsed, code):
        log = self.log()
        total = sum(self.by_kind.values())
        answered = sum(n for (k, o), n in self.by_kind.items() if isinstance(o, int))
        out = []
        p = out.append
        p(f"tokend soak: {elapsed / 60:.1f} min, {self.args.concurrency} concurrent callers, seed {self.args.seed}")
        p(f"requests: {total} sent, {answered} answered ({answered / elapsed:.0f}/s), "
          f"{self.new_users} new users, {len(self.token_owner)} distinct tokens checked with the stand-in")
        p("answers by kind:")
        kinds = sorted({k for k, _ in self.by_kind})
        for k in kinds:
            row = sorted(((str(o), n) for (kk, o), n in self.by_kind.items() if kk == k))
            p(f"  {k:9} " + ", ".join(f"{o}: {n}" for o, n in row))
        p(f"SIGHUP reloads: {self.reloads} sent, {log.count('reloaded ')} logged as done, "
          f"{log.count('reload refused') + log.count('reload failed')} refused or failed")
        p("faults injected (3-8 s each): " + ", ".join(f"{k} x{n}" for k, n in sorted(self.faults_run.items())))
        peak_rss = max(s[1] for s in self.samples)
        peak_fds = max(s[2] for s in self.samples)
        end = (f"{last[1]} kB at the end of the load, {settled[1]} kB once idle" if last else "- (died)")
        p(f"resident memory: {first[1]} kB at start, {end}, peak {peak_rss} kB")
        end = (f"{last[2]} at the end of the load, {settled[2]} once idle" if last else "- (died)")
        p(f"open file descriptors: {first[2]} at start, {end}, peak {peak_fds}")
        per_min = self.samples[1::6]  # sampled every 10 s
        p("  each minute (rss kB / fds): " + " ".join(f"{s[1]}/{s[2]}" for s in per_min))
        p(f"tokend exit code on SIGTERM: {code}")
        if self.wrong:
            p("WRONG ANSWERS:")
            for what, n in self.wrong.most_common():
                p(f"  {what}: {n}")
                for ex in self.examples[what]:
                    p(f"    e.g. {ex}")
        else:
            p("wrong answers: none")
        p(f"work directory: {self.workdir}" if self.args.keep else "work directory removed")
        text = "\n".join(out)
        print(text)
        if not self.args.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)
        return 1 if self.wrong else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0, help="how long to run (default 10)")
    ap.add_argument("--build", default=os.path.join(HERE, "..", "build"),
                    help="meson build directory with src/instacart-tokend and tests/stub (default build/)")
    ap.add_argument("--concurrency", type=int, default=16, help="callers at once (default 16)")
    ap.add_argument("--seed", type=int, default=8, help="random seed of the mix and the schedule")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = ap.parse_args()
    if not 1 <= args.concurrency <= 256 or args.minutes <= 0:
        ap.error("--concurrency must be 1..256 and --minutes positive")
    sys.exit(Soak(args).run())


if __name__ == "__main__":
    main()
