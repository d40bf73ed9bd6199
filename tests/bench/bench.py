"""The benchmark of instacart-tokend, run through tests/bench/run.sh.

Starts the Instacart stand-in (tests/stub), tokend and nginx on 127.0.0.1
and measures, in one run:

  1. hit path: wrk over 10,000 cached users at 50 and 1,000 connections,
     alternating three times with nginx answering a same-size JSON body;
  2. one connection: p50 and p99, alternating with nginx the same way;
  3. coalescing: 1,000 concurrent first requests for one user and for 100
     users, against an immediate stand-in and one that delays each mint;
  4. miss path: first requests for 20,000 new users at 1, 16 and 64
     connections: mints per second and tokend's added latency per mint;
  5. memory: resident memory idle, with 1,000 open connections, and with
     100,000 and 1,000,000 cached users;
  6. start-up: exec to a connectable socket and to the first served token;
  7. instructions per hit request (callgrind);
  8. the miss path over HTTPS: the stand-in behind nginx over plain HTTP,
     HTTPS with HTTP/1.1 and HTTPS with HTTP/2 (and, for context, tokend
     straight to the stand-in): mints per second, added latency per mint,
     TLS handshakes per 1,000 mints and tokend's CPU per mint;
  9. fleet mode, with a Redis of its own: the hit path with
     fleet mode on against off; a miss served from Redis against a hit;
     mints per user with 4 hosts asked at once; memory per cached token.

Prints a table and the performance targets (TARGETS_TEXT, below) with pass
or miss, and writes the raw figures as JSON (--json). Ratios are the
measure: absolute figures drift between runs on a shared machine, ratios
within one run do not.

Standard library only; /usr/bin/python3. Talks to 127.0.0.1 only. Every
wait is bounded in count and time; every process it starts is stopped.
"""

import argparse
import http.client
import json
import os
import platform
import pwd
import grp
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
LUA = os.path.join(HERE, "pick-user.lua")

# What each mode does. "full" is what the issue asks for.
PROFILES = {
    "full": dict(hit_seconds=10, rounds=3, hit_conns=(50, 1000), one_conn=True, hit_users=10000,
                 miss_users=20000, miss_conns=(1, 4, 16, 64), coalesce_conns=1000,
                 fills=(100000, 1000000), hold_conns=1000, startup_runs=20, mint_delay_ms=100,
                 cg_requests=10000, bg_seconds=1.0, tls_users=20000, tls_conns=(1, 64),
                 fleet_users=5000, fleet_burst_users=200, fleet_burst_per_user=2, fleet_mem_users=200000),
    "quick": dict(hit_seconds=3, rounds=3, hit_conns=(50, 1000), one_conn=True, hit_users=10000,
                  miss_users=5000, miss_conns=(1, 4, 16, 64), coalesce_conns=1000,
                  fills=(100000,), hold_conns=1000, startup_runs=10, mint_delay_ms=100,
                  cg_requests=5000, bg_seconds=1.0, tls_users=5000, tls_conns=(1, 64),
                  fleet_users=2000, fleet_burst_users=200, fleet_burst_per_user=2, fleet_mem_users=50000),
    # a one-second miniature of every step, for the test suite: checks that
    # the benchmark still runs and counts right, not how fast anything is
    "selftest": dict(hit_seconds=1, rounds=1, hit_conns=(50,), one_conn=True, hit_users=200,
                     miss_users=300, miss_conns=(8,), coalesce_conns=100,
                     fills=(1000,), hold_conns=50, startup_runs=2, mint_delay_ms=50,
                     cg_requests=200, bg_seconds=0.2, tls_users=200, tls_conns=(8,),
                     fleet_users=100, fleet_burst_users=20, fleet_burst_per_user=2, fleet_mem_users=500),
}

TARGETS_TEXT = """\
- hit path at 50 connections: >= 0.95x nginx req/s (median of pairs); p99 < 1 ms
- hit path at 1,000 connections: >= 0.95x nginx; no connection left waiting
- one connection: p50 and p99 within 1.2x nginx's
- coalescing: exactly one mint per user, always
- miss path: added latency per mint < 0.5 ms at the median; >= 5,000 mints/s
- memory: < 1 KiB per cached token; 1,000,000 users < 1 GiB RSS; idle < 8 MB; < 8 KB per open connection
- start-up to listening: < 50 ms
- miss path over HTTPS: HTTP/2 >= 0.8x plain HTTP's mints/s; added latency per mint within
  0.2 ms of plain HTTP's; TLS handshakes per 1,000 mints <= the connections allowed (max_concurrent)
- fleet mode: hit path >= 0.97x of fleet mode off; a miss served from Redis adds < 0.3 ms
  at p50 and < 1 ms at p99 over a hit; exactly one mint per user across 4 hosts"""


class BenchError(Exception):
    pass


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise BenchError(f"no VmRSS for {pid}")


def mem_kb(pid):
    """VmRSS, and of it what is this process's own: Pss and private (anonymous) pages.
    Most of an idle daemon's RSS is shared, clean library pages (libcurl's tree)."""
    out = {"rss_kb": rss_kb(pid)}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("Pss", "Private_Dirty", "Anonymous", "Shared_Clean"):
                    out[k.lower() + "_kb"] = int(v.split()[0])
    except OSError:
        pass
    return out


def open_fds(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu_s(pid):
    """User + system CPU seconds of a whole process (all its threads)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK
    except (OSError, IndexError, ValueError):
        return float("nan")


def machine_busy_s():
    """CPU seconds the whole machine spent not idle, all cores together."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal
    return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / TICK


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def background_cores(seconds=1.0):
    """How busy the machine is without us: cores in use over a short window."""
    b0, t0 = machine_busy_s(), time.monotonic()
    time.sleep(seconds)
    return (machine_busy_s() - b0) / (time.monotonic() - t0)


QUIET_CORES = 0.25  # background load under which throughput figures are trusted


def children_cpu_s():
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def http_get(port, path, timeout=5.0):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def http_post_json(port, path, body, timeout=30.0):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        data = json.dumps(body).encode()
        conn.request("POST", path, body=data, headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        raw = r.read()
        if r.status != 200:
            raise BenchError(f"POST {path} -> {r.status}: {raw[:200]!r}")
        return json.loads(raw)
    finally:
        conn.close()


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def redis_cmd(port, *args, timeout=5.0):
    """One command to the benchmark's Redis (RESP by hand: standard library
    only); the reply as str or int. Enough for PING and INFO."""
    req = f"*{len(args)}\r\n" + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(req.encode())
        buf = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
            if b"\r\n" not in buf:
                continue
            head, rest = buf.split(b"\r\n", 1)
            kind, val = head[:1], head[1:].decode()
            if kind == b"+":
                return val
            if kind == b"-":
                raise BenchError(f"redis: {val}")
            if kind == b":":
                return int(val)
            if kind == b"$":
                n = int(val)
                if n < 0:
                    return None
                if len(rest) >= n + 2:
                    return rest[:n].decode(errors="replace")
                continue
            raise BenchError(f"redis: unexpected reply {head[:50]!r}")
    raise OSError("redis: no complete reply")


class Procs:
    """Every process the benchmark starts, so each is stopped (by its own pid)."""

    def __init__(self):
        self.procs = []
        self.died = []  # (argv, status) of processes found dead when stopped

    def start(self, argv, log_path, **kw):
        logf = open(log_path, "ab")
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                             start_new_session=False, **kw)
        logf.close()
        self.procs.append(p)
        return p

    def stop(self, p, timeout=15.0):
        """Stops p; its exit status, or a negative signal number if it had died by one."""
        died = p.poll()
        if died is not None and died != 0:
            self.died.append((p.args, died))
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
        if p in self.procs:
            self.procs.remove(p)
        return p.returncode

    def stop_all(self):
        for p in list(reversed(self.procs)):
            try:
                self.stop(p)
            except Exception as e:  # keep stopping the others
                log(f"could not stop pid {p.pid}: {e}")


class Bench:
    def __init__(self, args):
        self.args = args
        self.p = PROFILES[args.mode]
        self.build = os.path.abspath(args.build_dir)
        self.tokend_exe = os.path.join(self.build, "src", "instacart-tokend")
        self.stub_exe = os.path.join(self.build, "tests", "stub", "instacart-stub")
        self.client_exe = os.path.join(self.build, "tests", "bench", "bench-client")
        self.floor_exe = os.path.join(self.build, "tests", "bench", "link-floor")
        for exe in (self.tokend_exe, self.stub_exe, self.client_exe, self.floor_exe):
            if not os.access(exe, os.X_OK):
                raise BenchError(f"{exe} is missing: build first (tests/bench/run.sh does)")
        self.tmp = tempfile.mkdtemp(prefix="tokend-bench-")
        self.procs = Procs()
        self.results = {"mode": args.mode}
        self.checks = []      # (what, ok, detail): correctness; any failure fails the run
        self.targets = []     # (target, ok, figure): the performance targets
        self.skipped = []
        self.wrk_exe = shutil.which("wrk")
        self.nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)
        self.taskset = shutil.which("taskset")
        self.pin = args.pin and self.taskset and os.cpu_count() and os.cpu_count() >= 2
        self.secret_path = os.path.join(self.tmp, "client-secret")
        fd = os.open(self.secret_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("bench-secret\n")
        os.chmod(self.secret_path, 0o600)
        self.n_tokend = 0

    # ------------------------------------------------------------ processes

    def server_prefix(self):
        return [self.taskset, "-c", "0"] if self.pin else []

    def load_prefix(self):
        return [self.taskset, "-c", "1"] if self.pin else []

    def start_stub(self):
        port_file = os.path.join(self.tmp, "stub.port")
        argv = [self.stub_exe, "--listen", "127.0.0.1:0", "--port-file", port_file,
                "--expires-in", "86400", "--client-id", "bench-client", "--client-secret-file",
                self.secret_path]
        self.stub = self.procs.start(argv, os.path.join(self.tmp, "stub.log"))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.stub.poll() is not None:
                raise BenchError(f"the stand-in exited with {self.stub.returncode}")
            try:
                with open(port_file) as f:
                    self.stub_port = int(f.read().strip())
                if http_get(self.stub_port, "/__stub/stats", timeout=1)[0] == 200:
                    return
            except (OSError, ValueError):
                pass
            time.sleep(0.02)
        raise BenchError("the stand-in did not come up within 10 s")

    def stub_stats(self):
        status, _, body = http_get(self.stub_port, "/__stub/stats", timeout=30)
        if status != 200:
            raise BenchError(f"/__stub/stats -> {status}")
        return json.loads(body)

    def stub_reset(self):
        http_post_json(self.stub_port, "/__stub/reset", {})

    def stub_requests(self):
        status, _, body = http_get(self.stub_port, "/__stub/requests", timeout=120)
        if status != 200:
            raise BenchError(f"/__stub/requests -> {status}")
        return json.loads(body)["requests"]

    def write_config(self, path, port=0, **sections):
        conf = {
            "upstream": {"base_url": f"http://127.0.0.1:{self.stub_port}", "client_id": "bench-client",
                         "client_secret_file": self.secret_path},
            "server": {"listen": f"127.0.0.1:{port}"},
        }
        for sec, kv in sections.items():
            conf.setdefault(sec, {}).update(kv)
        with open(path, "w") as f:
            for sec, kv in conf.items():
                f.write(f"[{sec}]\n")
                for k, v in kv.items():
                    f.write(f"{k} = {v}\n")

    def start_tokend(self, pinned=False, wrapper=(), **sections):
        self.n_tokend += 1
        name = f"tokend{self.n_tokend}"
        conf = os.path.join(self.tmp, name + ".conf")
        logp = os.path.join(self.tmp, name + ".log")
        self.write_config(conf, **sections)
        argv = list(wrapper) + (self.server_prefix() if pinned else []) + [self.tokend_exe, "--config", conf]
        p = self.procs.start(argv, logp)
        deadline = time.monotonic() + (60 if wrapper else 15)
        while time.monotonic() < deadline:
            if p.poll() is not None:
                raise BenchError(f"tokend exited with {p.returncode}: {open(logp).read()[-2000:]}")
            with open(logp, errors="replace") as f:
                m = re.search(r"listening on http://(\S+?):(\d+) ", f.read())
            if m:
                p.port = int(m.group(2))
                p.log_path = logp
                return p
            time.sleep(0.01)
        raise BenchError("tokend did not log 'listening on' in time")

    def start_nginx(self, body, wrapper=(), name="nginx"):
        """nginx answering body on a port of its own; wrapper (valgrind) implies a
        single process without a master, so the wrapped process is the server."""
        root = os.path.join(self.tmp, name)
        os.makedirs(os.path.join(root, "logs"), exist_ok=True)
        port = free_port()
        user_line = ""
        if os.geteuid() == 0:
            # run as the current user, not the compiled-in nobody
            pw = pwd.getpwuid(os.geteuid())
            user_line = f"user {pw.pw_name} {grp.getgrgid(pw.pw_gid).gr_name};"
        if "'" in body or "\\" in body or "$" in body:
            raise BenchError("the reference body cannot be quoted for nginx")
        conf = os.path.join(root, "nginx.conf")
        with open(conf, "w") as f:
            f.write(f"""# written by tests/bench/bench.py: the reference server of the hit path
daemon off;
master_process {"off" if wrapper else "on"};
worker_processes 1;
{user_line}
pid {root}/nginx.pid;
error_log {root}/logs/error.log warn;
worker_rlimit_nofile 65536;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  server_tokens off;
  keepalive_requests 1000000000;
  keepalive_timeout 60s;
  client_body_temp_path {root}/body;
  proxy_temp_path {root}/proxy;
  fastcgi_temp_path {root}/fastcgi;
  uwsgi_temp_path {root}/uwsgi;
  scgi_temp_path {root}/scgi;
  server {{
    listen 127.0.0.1:{port};
    default_type application/json;
    location / {{
      add_header Cache-Control no-store;
      add_header X-Cache hit;
      return 200 '{body}';
    }}
  }}
}}
""")
        argv = (list(wrapper) or self.server_prefix()) + [self.nginx, "-p", root + "/", "-c", conf,
                                                          "-e", root + "/logs/error.log"]
        p = self.procs.start(argv, os.path.join(root, "logs", "stdout.log"))
        deadline = time.monotonic() + (60 if wrapper else 10)
        while time.monotonic() < deadline:
            if p.poll() is not None:
                raise BenchError(f"nginx exited with {p.returncode}: "
                                 f"{open(os.path.join(root, 'logs', 'error.log')).read()[-2000:]}")
            try:
                status, _, got = http_get(port, "/v1/token?user_id=x", timeout=1)
                if status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.02)
        else:
            raise BenchError("nginx did not answer in time")
        if len(got) != len(body):
            raise BenchError(f"nginx answers {len(got)} bytes, tokend {len(body)}")
        p.port = port
        # the worker serves; its pid for fd counts and memory
        children = [] if wrapper else subprocess.run(["pgrep", "-P", str(p.pid)], capture_output=True,
                                                     text=True).stdout.split()
        p.worker = int(children[0]) if children else p.pid
        return p

    def client(self, *args, timeout=600, check=True):
        argv = [self.client_exe, *map(str, args)]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        out = r.stdout.strip().splitlines()
        if not out:
            raise BenchError(f"bench-client {' '.join(map(str, args))} printed nothing: {r.stderr[-1000:]}")
        res = json.loads(out[-1])
        if check and r.returncode != 0:
            raise BenchError(f"bench-client {args[0]} failed: {res} {r.stderr[-1000:]}")
        return res

    # ------------------------------------------------------------ steps

    def wrk(self, port, conns, seconds, pid):
        argv = self.load_prefix() + [self.wrk_exe, "-t1", f"-c{conns}", f"-d{seconds}s", "--timeout", "5s",
                                     "-s", LUA, f"http://127.0.0.1:{port}/", "--",
                                     str(self.p["hit_users"]), "hit-"]
        # the previous run's connections may still be closing: let the count settle
        fds_before, deadline = open_fds(pid), time.monotonic() + 5
        while time.monotonic() < deadline:
            time.sleep(0.05)
            n = open_fds(pid)
            if n == fds_before:
                break
            fds_before = n
        cpu0, busy0, kids0 = proc_cpu_s(pid), machine_busy_s(), children_cpu_s()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        # how many connections has the server accepted? the most of three looks
        fds_mid = 0
        for _ in range(3):
            time.sleep(seconds / 4)
            fds_mid = max(fds_mid, open_fds(pid))
        out, _ = proc.communicate(timeout=seconds + 60)
        cpu1, busy1, kids1 = proc_cpu_s(pid), machine_busy_s(), children_cpu_s()
        m = re.search(r"^BENCH (.*)$", out, re.M)
        if proc.returncode != 0 or not m:
            raise BenchError(f"wrk failed ({proc.returncode}): {out[-2000:]}")
        r = {k: int(v) for k, v in (kv.split("=") for kv in m.group(1).split())}
        r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
        r["errors"] = r["connect"] + r["read"] + r["write"] + r["timeout"] + r["status"]
        r["accepted"] = fds_mid - fds_before
        r["bytes_per_response"] = r["bytes"] / r["requests"] if r["requests"] else 0
        # CPU the server spent per request: steadier than req/s on a shared
        # machine, and what the "server CPU per request" compares
        r["server_cpu_s"] = cpu1 - cpu0
        r["cpu_us_per_req"] = (cpu1 - cpu0) * 1e6 / r["requests"] if r["requests"] else float("nan")
        r["wrk_cpu_s"] = kids1 - kids0
        # everything else the machine did meanwhile (other jobs, and kernel
        # softirq work not charged to either process), in cores
        r["other_cores"] = ((busy1 - busy0) - r["server_cpu_s"] - r["wrk_cpu_s"]) / (r["duration_us"] / 1e6)
        return r

    def step_hit(self):
        if not self.wrk_exe or not self.nginx:
            self.skipped.append("hit path and one connection: wrk or nginx is not installed "
                                "(apt-get install wrk nginx-light)")
            return
        users = self.p["hit_users"]
        t = self.start_tokend(pinned=True)
        self.hit_tokend = t
        self.stub_reset()
        log(f"hit path: pre-warming {users} users")
        warm = self.client("load", "--port", t.port, "--prefix", "hit-", "--first", 0, "--count", users,
                           "--conns", 32)
        mints = self.stub_stats()["mints"]
        self.check("pre-warm: one mint per user", warm["ok"] == users and mints == users,
                   f"{warm['ok']} answers, {mints} mints for {users} users")
        status, headers, body = http_get(t.port, "/v1/token?user_id=hit-0")
        if status != 200 or headers.get("x-cache") != "hit":
            raise BenchError(f"a pre-warmed user is not a hit: {status} {headers}")
        body = body.decode()
        self.reference_body = body
        n = self.start_nginx(body)
        self.results["body_bytes"] = len(body)

        runs = {}
        levels = list(self.p["hit_conns"]) + ([1] if self.p["one_conn"] else [])
        for conns in levels:
            pairs = []
            for rnd in range(self.p["rounds"]):
                order = [("tokend", t.port, t.pid), ("nginx", n.port, n.worker)]
                if rnd % 2:
                    order.reverse()  # alternate who goes first: drift hits both alike
                pair = {"background_cores": background_cores(self.p["bg_seconds"])}
                for name, port, pid in order:
                    time.sleep(0.5)
                    log(f"hit path: {name} at {conns} connections, round {rnd + 1}")
                    pair[name] = self.wrk(port, conns, self.p["hit_seconds"], pid)
                pairs.append(pair)
            runs[conns] = pairs
        self.procs.stop(n)
        after = self.stub_stats()["mints"]
        self.check("hit path: no mint during the wrk runs", after == users, f"{after} mints, expected {users}")
        for conns, pairs in runs.items():
            for pair in pairs:
                for name, r in pair.items():
                    if name == "background_cores":
                        continue
                    self.check(f"hit path: {name} at {conns} connections without errors", r["errors"] == 0,
                               f"connect {r['connect']} read {r['read']} write {r['write']} "
                               f"timeout {r['timeout']} non-2xx {r['status']}")
        self.results["hit"] = {str(k): v for k, v in runs.items()}

    def step_coalesce(self):
        t = getattr(self, "hit_tokend", None) or self.start_tokend()
        self.coalesce_tokend = t
        conns = self.p["coalesce_conns"]
        rows = []
        for delay in (0, self.p["mint_delay_ms"]):
            for users in (1, 100):
                prefix = f"co{users}d{delay}-"
                self.stub_reset()
                if delay:
                    http_post_json(self.stub_port, "/__stub/faults",
                                   {"action": "ok", "delay_ms": delay, "count": users})
                log(f"coalescing: {conns} concurrent first requests for {users} user(s), "
                    f"stand-in delay {delay} ms")
                r = self.client("burst", "--port", t.port, "--prefix", prefix, "--users", users,
                                "--conns", conns, "--timeout-ms", 30000, check=False)
                mints = self.stub_stats()["mints"]
                r.update(users=users, delay_ms=delay, mints=mints)
                rows.append(r)
                self.check(f"coalescing: {conns} requests, {users} user(s), delay {delay} ms: "
                           f"one mint per user and every request answered",
                           mints == users and r["ok"] == conns,
                           f"{mints} mints, {r['ok']} of {conns} answered 200")
        self.results["coalesce"] = rows

    def miss_run(self, t, prefix, count, conns):
        """bench-client load: first requests for count new users over conns
        connections to tokend t; mints per second, tokend's added latency
        per mint (its answer time minus the stand-in's own time for that
        user) and tokend's CPU per mint."""
        self.stub_reset()
        out = os.path.join(self.tmp, f"{prefix}load.txt")
        cpu0 = proc_cpu_s(t.pid)
        r = self.client("load", "--port", t.port, "--prefix", prefix, "--first", 0, "--count", count,
                        "--conns", conns, "--out", out, "--timeout-ms", 300000, check=False)
        cpu = proc_cpu_s(t.pid) - cpu0
        stats = self.stub_stats()
        stub_time = {}
        for q in self.stub_requests():
            if q["path"] == "/v2/oauth/token" and q.get("t_done") is not None and q["user_id"]:
                if q["user_id"] in stub_time:
                    stub_time[q["user_id"]] = None  # minted twice: not one mint per user
                else:
                    stub_time[q["user_id"]] = q["t_done"] - q["t_recv"]
        total, stub, added = [], [], []
        with open(out) as f:
            for line in f:
                idx, ts, td, st = line.split()
                if int(st) != 200:
                    continue
                s = stub_time.get(f"{prefix}{idx}")
                if s is None:
                    continue
                total.append(float(td) - float(ts))
                stub.append(s)
                added.append(float(td) - float(ts) - s)
        added.sort()
        total.sort()
        stub.sort()

        def q(xs, p):
            return xs[min(len(xs) - 1, int(p / 100 * (len(xs) - 1) + 0.5))] * 1e3 if xs else float("nan")

        return dict(conns=conns, count=count, ok=r["ok"], mints=stats["mints"],
                    elapsed_s=r["elapsed_s"], mints_per_s=stats["mints"] / r["elapsed_s"],
                    matched=len(added), cpu_us_per_mint=cpu * 1e6 / stats["mints"] if stats["mints"] else 0,
                    total_p50_ms=q(total, 50), total_p99_ms=q(total, 99),
                    stub_p50_ms=q(stub, 50), stub_p99_ms=q(stub, 99),
                    added_p50_ms=q(added, 50), added_p90_ms=q(added, 90), added_p99_ms=q(added, 99))

    def step_miss(self):
        t = self.start_tokend()
        count = self.p["miss_users"]
        rows = []
        self.results["miss_background_cores"] = background_cores(self.p["bg_seconds"])
        for conns in self.p["miss_conns"]:
            log(f"miss path: {count} new users over {conns} connection(s)")
            row = self.miss_run(t, f"miss{conns}-", count, conns)
            rows.append(row)
            self.check(f"miss path at {conns} connection(s): every user answered, one mint each",
                       row["ok"] == count and row["mints"] == count and row["matched"] == count,
                       f"{row['ok']} answered, {row['mints']} mints, {row['matched']} matched, for {count} users")
        self.procs.stop(t)
        self.results["miss"] = rows

    def link_floor(self):
        """VmRSS of a program linked with tokend's libraries that does nothing
        (link-floor.c): the part of tokend's idle memory that is the libraries'."""
        runs = []
        for _ in range(5):
            r = subprocess.run([self.floor_exe], capture_output=True, text=True, timeout=30)
            m = dict(re.findall(r"(\w+)=(\d+)", r.stdout))
            if r.returncode != 0 or "curl_init_kb" not in m:
                raise BenchError(f"link-floor failed: {r.stdout} {r.stderr}")
            runs.append({k: int(v) for k, v in m.items()})
        return {k: median([x[k] for x in runs]) for k in runs[0]}

    def step_memory(self):
        fills = self.p["fills"]
        floor = self.link_floor()
        t = self.start_tokend(cache={"max_entries": 1100000},
                              upstream={"max_concurrent": 64, "queue_max": 100000})
        time.sleep(0.5)
        mem = {"idle_kb": rss_kb(t.pid), "idle": mem_kb(t.pid)}
        # one mint first, so the connection test measures connections and not
        # libcurl's first-use allocations
        http_get(t.port, "/v1/token?user_id=mem-conn")
        mem["after_first_token_kb"] = rss_kb(t.pid)
        mem["after_first_token"] = mem_kb(t.pid)
        conns = self.p["hold_conns"]
        log(f"memory: {conns} open connections")
        h = self.client("hold", "--port", t.port, "--conns", conns, "--user", "mem-conn", "--pid", t.pid,
                        "--timeout-ms", 60000)
        mem["hold"] = h
        time.sleep(0.5)  # the connections are closed; let the daemon notice
        done = 0
        mem["fills"] = []
        for target in fills:
            self.stub_reset()  # keeps the stand-in's own request log small
            log(f"memory: filling the cache to {target} users")
            r = self.client("load", "--port", t.port, "--prefix", "mem-", "--first", done,
                            "--count", target - done, "--conns", 64, "--timeout-ms", 1800000, check=False)
            mints = self.stub_stats()["mints"]
            self.check(f"memory: fill to {target} users, one mint each",
                       r["ok"] == target - done and mints == target - done,
                       f"{r['ok']} answered, {mints} mints for {target - done} users")
            done = target
            time.sleep(1.0)
            mem["fills"].append(dict(users=target, rss_kb=rss_kb(t.pid), detail=mem_kb(t.pid), fill_rate=r["rate"]))
        # the oldest users must still be there: the cache held them all
        self.stub_reset()
        sample = min(1000, fills[-1])
        r = self.client("load", "--port", t.port, "--prefix", "mem-", "--first", 0, "--count", sample,
                        "--conns", 8, check=False)
        mints = self.stub_stats()["mints"]
        self.check(f"memory: the first {sample} of {fills[-1]} users are still cached",
                   r["hit"] == sample and mints == 0, f"{r['hit']} hits, {mints} mints")
        self.procs.stop(t)
        mem["floor"] = floor
        self.results["memory"] = mem

    def step_instructions(self):
        """User-space instructions per hit request, tokend and nginx, counted by
        callgrind: unlike req/s, the same on a busy machine as on a quiet one."""
        valgrind, control = shutil.which("valgrind"), shutil.which("callgrind_control")
        if not valgrind or not control or not self.nginx:
            self.skipped.append("instructions per request: valgrind or nginx is not installed")
            return
        n_req = self.p["cg_requests"]
        users = min(1000, n_req)
        body = getattr(self, "reference_body", None)
        rows = {}
        names = ["tokend", "nginx"]
        # fleet mode's hit path must be the same code: counted, not timed
        if getattr(self, "redis", None) or (shutil.which("redis-server") and self.start_redis_once()):
            names.insert(1, "tokend-fleet")
        for name in names:
            out = os.path.join(self.tmp, f"callgrind.{name}.%p")
            wrapper = [valgrind, "--tool=callgrind", f"--callgrind-out-file={out}"]
            if name.startswith("tokend"):
                sections = {"shared": self.shared_section()} if name == "tokend-fleet" else {}
                p = self.start_tokend(wrapper=wrapper, **sections)
                for _ in range(2):  # first misses, then every user is a hit
                    self.client("load", "--port", p.port, "--prefix", "cg-", "--first", 0, "--count", users,
                                "--conns", 16, "--timeout-ms", 300000)
                if body is None:
                    body = http_get(p.port, "/v1/token?user_id=cg-0", timeout=30)[2].decode()
            else:
                p = self.start_nginx(body, wrapper=wrapper, name="nginx-callgrind")
            log(f"instructions: {n_req} hit requests to {name} under callgrind")
            subprocess.run([control, "--zero", str(p.pid)], capture_output=True, timeout=60)
            r = self.client("load", "--port", p.port, "--prefix", "cg-", "--first", 0, "--count", n_req,
                            "--conns", 50, "--modulo", users, "--timeout-ms", 600000)
            subprocess.run([control, "--dump", str(p.pid)], capture_output=True, timeout=60)
            self.procs.stop(p)
            total = 0
            for fn in os.listdir(self.tmp):
                if fn.startswith(f"callgrind.{name}.{p.pid}.") and fn.endswith(".1"):
                    with open(os.path.join(self.tmp, fn)) as f:
                        m = re.search(r"^(?:summary|totals): (\d+)", f.read(), re.M)
                    total = int(m.group(1)) if m else 0
            self.check(f"instructions: {name} answered every request", r["ok"] == n_req and total > 0,
                       f"{r['ok']} of {n_req} answered; {total} instructions counted")
            rows[name] = dict(requests=n_req, instructions=total, per_request=total / n_req if n_req else 0,
                              hits=r["hit"])
        self.results["instructions"] = rows

    def step_startup(self):
        port = free_port()
        conf = os.path.join(self.tmp, "startup.conf")
        self.write_config(conf, port=port)
        runs = self.p["startup_runs"]
        self.results["startup_background_cores"] = background_cores(self.p["bg_seconds"])
        log(f"start-up: {runs} runs")
        r = self.client("startup", "--exe", self.tokend_exe, "--config", conf, "--port", port,
                        "--prefix", "start-", "--runs", runs, "--timeout-ms", 60000 + runs * 2000)
        self.results["startup"] = r
        # the floor: loading the binary and its libraries, and nothing else
        times = []
        for _ in range(runs):
            t0 = time.monotonic()
            subprocess.run([self.tokend_exe, "--version"], capture_output=True, timeout=30)
            times.append((time.monotonic() - t0) * 1e3)
        self.results["startup_floor"] = {"version_ms_p50": median(times), "version_ms_min": min(times)}


    # ------------------------------------------------------------ 8. the miss path over HTTPS

    TLS_VARIANTS = ("direct", "http", "https-h1", "https-h2")

    def make_test_ca(self):
        """A throwaway CA and a certificate for localhost signed by it, for the
        TLS front (openssl, as in the tests)."""
        d = os.path.join(self.tmp, "pki")
        os.makedirs(d, exist_ok=True)

        def openssl(*args):
            r = subprocess.run(["openssl", *args], cwd=d, capture_output=True, text=True, timeout=60)
            if r.returncode != 0:
                raise BenchError(f"openssl {args[0]}: {r.stderr[-500:]}")

        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
        openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
                "-subj", "/CN=tokend bench CA", "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign")
        openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost")
        with open(os.path.join(d, "server.ext"), "w") as f:
            f.write("basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
                    "subjectAltName=DNS:localhost,IP:127.0.0.1\n")
        openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-days", "2", "-extfile", "server.ext", "-out", "server.pem")
        return {k: os.path.join(d, f) for k, f in (("ca", "ca.pem"), ("cert", "server.pem"), ("key", "server.key"))}

    def start_front(self, variant, pki, name):
        """nginx in front of the stand-in: plain HTTP, or TLS with HTTP/1.1 only or
        with HTTP/2 by ALPN. Logs each request's connection and whether its TLS
        session was resumed. Returns the process with .port, .base_url, .access_log."""
        root = os.path.join(self.tmp, name)
        os.makedirs(root, exist_ok=True)
        port = free_port()
        tls = variant.startswith("https")
        listen = f"127.0.0.1:{port}" + (" ssl" if tls else "") + (" http2" if variant == "https-h2" else "")
        tls_lines = (f"ssl_certificate {pki['cert']}; ssl_certificate_key {pki['key']}; "
                     f"ssl_protocols TLSv1.2 TLSv1.3; ssl_session_cache shared:bench:4m;") if tls else ""
        user_line = ""
        if os.geteuid() == 0:
            pw = pwd.getpwuid(os.geteuid())
            user_line = f"user {pw.pw_name} {grp.getgrgid(pw.pw_gid).gr_name};"
        conf = os.path.join(root, "nginx.conf")
        with open(conf, "w") as f:
            f.write(f"""# written by tests/bench/bench.py: the TLS front of the stand-in (step 8)
daemon off;
worker_processes 1;
{user_line}
pid {root}/nginx.pid;
error_log {root}/error.log warn;
worker_rlimit_nofile 65536;
events {{ worker_connections 8192; }}
http {{
  log_format conn '$connection $ssl_session_reused';
  access_log {root}/access.log conn;
  client_body_temp_path {root}/body;
  proxy_temp_path {root}/proxy;
  fastcgi_temp_path {root}/fastcgi;
  uwsgi_temp_path {root}/uwsgi;
  scgi_temp_path {root}/scgi;
  upstream stub {{ server 127.0.0.1:{self.stub_port}; keepalive 256; }}
  server {{
    listen {listen};
    {tls_lines}
    keepalive_requests 1000000000;
    keepalive_timeout 60s;
    http2_max_requests 1000000000;
    location / {{
      proxy_pass http://stub;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
""")
        p = self.procs.start([self.nginx, "-p", root + "/", "-c", conf, "-e", root + "/error.log"],
                             os.path.join(root, "stdout.log"))
        deadline = time.monotonic() + 10
        while True:
            if p.poll() is not None:
                raise BenchError(f"nginx (TLS front) exited with {p.returncode}: "
                                 f"{open(os.path.join(root, 'error.log')).read()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise BenchError("the TLS front did not listen in time")
                time.sleep(0.02)
        p.port = port
        p.base_url = f"{'https://localhost' if tls else 'http://127.0.0.1'}:{port}"
        p.access_log = os.path.join(root, "access.log")
        return p

    def step_tls(self):
        if not self.nginx or not shutil.which("openssl"):
            self.skipped.append("miss path over HTTPS: nginx or openssl is not installed "
                                "(apt-get install nginx-light openssl)")
            return
        pki = self.make_test_ca()
        count = self.p["tls_users"]
        rows = []
        self.results["tls_background_cores"] = background_cores(self.p["bg_seconds"])
        n = 0
        # rounds alternate the variants, so a change in the machine's load
        # falls on all of them
        for rnd in range(self.p["rounds"]):
            for conns in self.p["tls_conns"]:
                for variant in self.TLS_VARIANTS:
                    n += 1
                    front = None if variant == "direct" else self.start_front(variant, pki, f"front{n}")
                    upstream = {} if front is None else {"base_url": front.base_url, "ca_file": pki["ca"]}
                    t = self.start_tokend(upstream=upstream)
                    log(f"miss path over {variant}: {count} new users over {conns} connection(s), round {rnd + 1}")
                    row = self.miss_run(t, f"tls{n}-", count, conns)
                    self.procs.stop(t)
                    row.update(variant=variant, round=rnd + 1, connections=0, full_handshakes=0)
                    if front is not None:
                        self.procs.stop(front)  # also flushes its log
                        conn = {}
                        with open(front.access_log) as f:
                            for line in f:
                                c, reused = line.split()
                                conn[c] = reused
                        row["connections"] = len(conn)
                        if variant != "http":
                            row["full_handshakes"] = sum(1 for r in conn.values() if r != "r")
                    rows.append(row)
                    self.check(f"miss path over {variant} at {conns} connection(s): every user answered, "
                               f"one mint each",
                               row["ok"] == count and row["mints"] == count and row["matched"] == count,
                               f"{row['ok']} answered, {row['mints']} mints, {row['matched']} matched, "
                               f"for {count} users")
        self.results["tls"] = rows


    # ------------------------------------------------------------ 9. fleet mode

    def start_redis(self):
        """A redis-server of the benchmark's own: 127.0.0.1 on a free port, its
        directory in the temporary one, no persistence; stopped with the rest."""
        exe = shutil.which("redis-server") or ("/usr/bin/redis-server"
                                               if os.access("/usr/bin/redis-server", os.X_OK) else None)
        if exe is None:
            return None
        root = os.path.join(self.tmp, "redis")
        os.makedirs(root, exist_ok=True)
        for _ in range(5):  # a free port can be taken between bind and start
            port = free_port()
            conf = os.path.join(root, "redis.conf")
            with open(conf, "w") as f:
                f.write(f"bind 127.0.0.1\nport {port}\ndir {root}\nlogfile {root}/redis.log\n"
                        "save \"\"\nappendonly no\ndaemonize no\n")
            p = self.procs.start([exe, conf], os.path.join(root, "stdout.log"))
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and p.poll() is None:
                try:
                    if redis_cmd(port, "PING", timeout=0.5) == "PONG":
                        p.port = port
                        return p
                except OSError:
                    pass
                time.sleep(0.02)
            self.procs.stop(p)
        raise BenchError(f"redis-server did not start: {open(os.path.join(root, 'redis.log')).read()[-1000:]}")

    def start_redis_once(self):
        if not getattr(self, "redis", None):
            self.redis = self.start_redis()
        return self.redis

    def shared_section(self):
        if not getattr(self, "shared_key_path", None):
            self.shared_key_path = os.path.join(self.tmp, "shared-key")
            fd = os.open(self.shared_key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(os.urandom(32).hex() + "\n")
            os.chmod(self.shared_key_path, 0o600)
        return {"redis": f"127.0.0.1:{self.redis.port}", "key_file": self.shared_key_path}

    def start_fleet_host(self, pinned=False, **sections):
        """tokend with [shared] pointing at the benchmark's Redis, once it says it shares."""
        t = self.start_tokend(pinned=pinned, shared=self.shared_section(), **sections)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                status, _, body = http_get(t.port, "/metrics", timeout=2)
                if status == 200 and re.search(rb"^tokend_shared_up 1$", body, re.M):
                    return t
            except OSError:
                pass
            time.sleep(0.05)
        raise BenchError(f"tokend on port {t.port} did not report tokend_shared_up 1 within 10 s")

    def shared_metrics(self, hosts):
        """The fleet counters of /metrics (tokend_shared_*), summed over hosts:
        how the mints came about, lease waits and timeouts, Redis errors."""
        tot = {}
        for h in hosts:
            status, _, body = http_get(h.port, "/metrics", timeout=10)
            if status != 200:
                raise BenchError(f"/metrics -> {status}")
            for m in re.finditer(r"^(tokend_shared_(?:mints_total|lease_waits_total|lease_timeouts_total|"
                                 r"operations_total|lookups_total)(?:\{[^}]*\})?) (\S+)$", body.decode(), re.M):
                tot[m.group(1)] = tot.get(m.group(1), 0) + float(m.group(2))
        return tot

    def redis_used_kb(self):
        info = redis_cmd(self.redis.port, "INFO", "memory")
        m = re.search(r"^used_memory:(\d+)", info, re.M)
        return int(m.group(1)) / 1024 if m else float("nan")

    def fleet_burst(self, hosts, u, k, delay, prefix):
        """k concurrent first requests for each of u users on each host, all
        hosts at once (one bench-client burst per host, in parallel): mints
        counted by the stand-in, answers by X-Cache, and how the hosts say
        their mints came about (/metrics)."""
        self.stub_reset()
        if delay:
            http_post_json(self.stub_port, "/__stub/faults", {"action": "ok", "delay_ms": delay, "count": u})
        n = len(hosts)
        log(f"fleet: {u} users, {k} first requests per user on each of {n} hosts at once, "
            f"stand-in delay {delay} ms")
        m0 = self.shared_metrics(hosts)
        procs = [subprocess.Popen([self.client_exe, "burst", "--port", str(h.port), "--prefix", prefix,
                                   "--users", str(u), "--conns", str(u * k), "--timeout-ms", "30000"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for h in hosts]
        outs = []
        for p in procs:
            o, e = p.communicate(timeout=90)
            lines = o.strip().splitlines()
            if not lines:
                raise BenchError(f"bench-client burst printed nothing: {e[-1000:]}")
            outs.append(json.loads(lines[-1]))
        mints = self.stub_stats()["mints"]
        m1 = self.shared_metrics(hosts)
        dm = {name: int(v - m0.get(name, 0)) for name, v in m1.items()}

        def how(kind):
            return dm.get(f'tokend_shared_mints_total{{how="{kind}"}}', 0)

        redis_errors = sum(v for name, v in dm.items() if name.startswith("tokend_shared_operations_total")
                           and 'result="error"' in name)
        tot = {key: sum(o[key] for o in outs) for key in
               ("ok", "non200", "failed", "hit", "miss", "coalesced", "shared", "shared_wait", "other_cache")}
        row = dict(users=u, hosts=n, requests=n * u * k, delay_ms=delay, mints=mints,
                   mints_per_user=mints / u, elapsed_ms=max(o["elapsed_ms"] for o in outs),
                   leased=how("leased"), lease_timeout=how("lease_timeout"), degraded=how("degraded"),
                   lease_waits=dm.get("tokend_shared_lease_waits_total", 0),
                   lease_timeouts=dm.get("tokend_shared_lease_timeouts_total", 0), redis_errors=redis_errors,
                   **tot)
        self.check(f"fleet: {n} hosts, {n * u * k} concurrent first requests for {u} users, delay {delay} ms: "
                   f"one mint per user, every request answered 200",
                   mints == u and tot["ok"] == n * u * k, f"{mints} mints, {tot['ok']} of {n * u * k} answered 200")
        self.check(f"fleet: {n} hosts, delay {delay} ms: X-Cache miss once per mint, the rest "
                   f"coalesced/shared/shared-wait/hit", tot["miss"] == mints and tot["other_cache"] == 0,
                   f"miss {tot['miss']}, coalesced {tot['coalesced']}, shared {tot['shared']}, "
                   f"shared-wait {tot['shared_wait']}, hit {tot['hit']}, other {tot['other_cache']}")
        return row

    def step_fleet(self):
        self.start_redis_once()
        if self.redis is None:
            self.skipped.append("fleet mode: redis-server is not installed (apt-get install redis-server)")
            log("fleet mode: skipped, redis-server is not installed")
            return
        fl = {"redis": redis_cmd(self.redis.port, "INFO", "server").split("redis_version:", 1)[-1].split()[0]}
        self.results["fleet"] = fl
        fl["background_cores"] = background_cores(self.p["bg_seconds"])

        # 1. the hit path, fleet mode off and on, the same users, alternating
        if not self.wrk_exe:
            self.skipped.append("fleet mode, hit path on vs off: wrk is not installed (apt-get install wrk)")
        else:
            users = self.p["hit_users"]
            hosts = {}
            self.stub_reset()
            for name in ("off", "on"):
                t = self.start_fleet_host(pinned=True) if name == "on" else self.start_tokend(pinned=True)
                log(f"fleet: hit path, pre-warming {users} users with fleet mode {name}")
                self.client("load", "--port", t.port, "--prefix", "hit-", "--first", 0, "--count", users,
                            "--conns", 32, check=False)
                status, headers, _ = http_get(t.port, "/v1/token?user_id=hit-0")
                self.check(f"fleet: hit path, a pre-warmed user is a hit with fleet mode {name}",
                           status == 200 and headers.get("x-cache") == "hit", f"{status} {headers.get('x-cache')}")
                hosts[name] = t
            mints = self.stub_stats()["mints"]
            # the on host finds nothing in Redis (the off host never wrote there): one mint per user each
            self.check("fleet: hit path pre-warm, one mint per user per host", mints == 2 * users,
                       f"{mints} mints for {users} users on 2 hosts")
            runs = {}
            for conns in self.p["hit_conns"]:
                pairs = []
                for rnd in range(self.p["rounds"]):
                    order = ["off", "on"] if rnd % 2 == 0 else ["on", "off"]
                    pair = {"background_cores": background_cores(self.p["bg_seconds"])}
                    for name in order:
                        time.sleep(0.5)
                        log(f"fleet: hit path, fleet mode {name} at {conns} connections, round {rnd + 1}")
                        pair[name] = self.wrk(hosts[name].port, conns, self.p["hit_seconds"], hosts[name].pid)
                        r = pair[name]
                        self.check(f"fleet: hit path, fleet mode {name} at {conns} connections without errors",
                                   r["errors"] == 0, f"connect {r['connect']} read {r['read']} write {r['write']} "
                                   f"timeout {r['timeout']} non-2xx {r['status']}")
                    pairs.append(pair)
                runs[str(conns)] = pairs
            after = self.stub_stats()["mints"]
            self.check("fleet: hit path, no mint during the wrk runs", after == mints, f"{after - mints} mints")
            for t in hosts.values():
                self.procs.stop(t)
            fl["hit"] = runs

        # 2. a miss served from Redis: A mints, B answers from Redis, then from memory
        n = self.p["fleet_users"]
        a, b = self.start_fleet_host(), self.start_fleet_host()
        bg_miss = background_cores(self.p["bg_seconds"])
        self.stub_reset()
        log(f"fleet: host A mints {n} users")
        ra = self.client("load", "--port", a.port, "--prefix", "fsh-", "--first", 0, "--count", n,
                         "--conns", 8, check=False)
        log(f"fleet: host B asks for the same {n} users over one connection, twice")
        rs = self.client("load", "--port", b.port, "--prefix", "fsh-", "--first", 0, "--count", n,
                         "--conns", 1, check=False)
        rh = self.client("load", "--port", b.port, "--prefix", "fsh-", "--first", 0, "--count", n,
                         "--conns", 1, check=False)
        mints = self.stub_stats()["mints"]
        self.check("fleet: host A, every user answered 200 and minted (X-Cache: miss)",
                   ra["ok"] == n and ra["miss"] == n, f"{ra['ok']} answered, {ra['miss']} misses of {n}")
        self.check("fleet: host B's first requests all answered from Redis (200, X-Cache: shared)",
                   rs["ok"] == n and rs["shared"] == n,
                   f"{rs['ok']} answered, {rs['shared']} shared, {rs['miss']} miss, {rs['hit']} hit of {n}")
        self.check("fleet: host B's second requests all hits", rh["ok"] == n and rh["hit"] == n,
                   f"{rh['ok']} answered, {rh['hit']} hits of {n}")
        self.check("fleet: two hosts, one mint per user", mints == n, f"{mints} mints for {n} users")
        fl["shared_miss"] = dict(users=n, shared_p50_ms=rs["p50_us"] / 1e3, shared_p90_ms=rs["p90_us"] / 1e3,
                                 shared_p99_ms=rs["p99_us"] / 1e3, hit_p50_ms=rh["p50_us"] / 1e3,
                                 hit_p90_ms=rh["p90_us"] / 1e3, hit_p99_ms=rh["p99_us"] / 1e3,
                                 added_p50_ms=(rs["p50_us"] - rh["p50_us"]) / 1e3,
                                 added_p99_ms=(rs["p99_us"] - rh["p99_us"]) / 1e3,
                                 shared_rate=rs["rate"], hit_rate=rh["rate"], mints=mints,
                                 background_cores=bg_miss)
        self.procs.stop(a)
        self.procs.stop(b)

        # 3. mints per user across 4 hosts: concurrent first requests spread over them
        u, k = self.p["fleet_burst_users"], self.p["fleet_burst_per_user"]
        hosts = [self.start_fleet_host() for _ in range(4)]
        rows = []
        for delay in (0, self.p["mint_delay_ms"]):
            rows.append(self.fleet_burst(hosts, u, k, delay, f"fco{delay}-"))
        for h in hosts:
            self.procs.stop(h)
        fl["contention"] = rows

        # 4. memory per cached token, fleet mode off and on
        kusers = self.p["fleet_mem_users"]
        mem = {}
        for name in ("off", "on"):
            sections = dict(cache={"max_entries": max(1100000, 2 * kusers)},
                            upstream={"max_concurrent": 64, "queue_max": 100000})
            t = self.start_fleet_host(**sections) if name == "on" else self.start_tokend(**sections)
            http_get(t.port, "/v1/token?user_id=fmem-first")
            time.sleep(0.5)
            before, redis0 = rss_kb(t.pid), self.redis_used_kb()
            self.stub_reset()
            log(f"fleet: memory, {kusers} users through one host with fleet mode {name}")
            r = self.client("load", "--port", t.port, "--prefix", f"fmem{name}-", "--first", 0, "--count", kusers,
                            "--conns", 64, "--timeout-ms", 1800000, check=False)
            mints = self.stub_stats()["mints"]
            time.sleep(1.0)
            after, redis1 = rss_kb(t.pid), self.redis_used_kb()
            self.check(f"fleet: memory, fleet mode {name}: {kusers} users answered 200, one mint each",
                       r["ok"] == kusers and r["miss"] == kusers and mints == kusers,
                       f"{r['ok']} answered, {r['miss']} misses, {mints} mints")
            sample = min(1000, kusers)
            self.stub_reset()
            rc = self.client("load", "--port", t.port, "--prefix", f"fmem{name}-", "--first", 0, "--count", sample,
                             "--conns", 8, check=False)
            mints = self.stub_stats()["mints"]
            self.check(f"fleet: memory, fleet mode {name}: the first {sample} users are still cached here",
                       rc["hit"] == sample and mints == 0, f"{rc['hit']} hits, {mints} mints")
            mem[name] = dict(users=kusers, rss_before_kb=before, rss_after_kb=after, fill_rate=r["rate"],
                             bytes_per_token=(after - before) * 1024 / kusers, detail=mem_kb(t.pid))
            if name == "on":
                mem[name]["redis_bytes_per_token"] = (redis1 - redis0) * 1024 / kusers
            self.procs.stop(t)
        fl["memory"] = mem
        self.procs.stop(self.redis)

    # ------------------------------------------------------------ verdicts

    def check(self, what, ok, detail):
        self.checks.append((what, bool(ok), detail))
        if not ok:
            log(f"CHECK FAILED: {what}: {detail}")

    def target(self, what, ok, figure):
        """ok: True pass, False miss, None a figure for context only."""
        self.targets.append((what, None if ok is None else bool(ok), figure))

    # ------------------------------------------------------------ report

    def machine(self):
        model = "unknown"
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith("model name"):
                        model = line.split(":", 1)[1].strip()
                        break
        except OSError:
            pass

        def version(argv, pattern):
            try:
                out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
                m = re.search(pattern, out.stdout + out.stderr)
                return m.group(1) if m else "?"
            except (OSError, subprocess.TimeoutExpired):
                return "absent"

        mhd = version(["pkg-config", "--modversion", "libmicrohttpd"], r"(\S+)")
        return dict(nproc=os.cpu_count(), cpu=model, kernel=platform.release(), loadavg=loadavg(),
                    wrk=version([self.wrk_exe or "wrk", "-v"], r"wrk (\S+)"),
                    nginx=version([self.nginx or "nginx", "-v"], r"nginx/(\S+)"),
                    libmicrohttpd=mhd, pinned=bool(self.pin))

    def report(self):
        res = self.results
        lines = []
        out = lines.append
        m = res["machine"]
        out(f"## tokend benchmark ({res['mode']})")
        out("")
        out(f"Machine: {m['nproc']} cores, {m['cpu']}, Linux {m['kernel']}; wrk {m['wrk']}, "
            f"nginx {m['nginx']}, libmicrohttpd {m['libmicrohttpd']}; "
            + ("servers pinned to CPU 0, wrk to CPU 1" if m["pinned"] else "no CPU pinning")
            + f"; load average {m['loadavg']} before, {res.get('loadavg_after', '?')} after")
        out(f"Command: {res['command']}")
        out("")

        if "hit" in res:
            out(f"### 1-2. Hit path ({self.p['hit_users']:,} cached users, {self.p['hit_seconds']} s per run, "
                f"wrk -t1, {res['body_bytes']}-byte JSON body, alternating with nginx)")
            out("")
            out("| conns | round | tokend req/s | nginx req/s | ratio | tokend p50 | nginx p50 | tokend p99 | "
                "nginx p99 | p50 ratio | p99 ratio | CPU us/req (t/n) | CPU ratio | other load, cores (t/n) | "
                "accepted (t/n) | errors (t/n) | background before, cores |")
            out("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
            for conns, pairs in res["hit"].items():
                ratios, p50r, p99r, cpur = [], [], [], []
                for i, pr in enumerate(pairs):
                    a, b = pr["tokend"], pr["nginx"]
                    ratio = a["rps"] / b["rps"]
                    cr = a["cpu_us_per_req"] / b["cpu_us_per_req"] if b["cpu_us_per_req"] else float("nan")
                    cpur.append(cr)
                    r50 = a["p50_us"] / b["p50_us"] if b["p50_us"] else float("nan")
                    r99 = a["p99_us"] / b["p99_us"] if b["p99_us"] else float("nan")
                    ratios.append(ratio)
                    p50r.append(r50)
                    p99r.append(r99)
                    out(f"| {conns} | {i + 1} | {a['rps']:,.0f} | {b['rps']:,.0f} | {ratio:.2f} | "
                        f"{a['p50_us'] / 1e3:.3f} ms | {b['p50_us'] / 1e3:.3f} ms | {a['p99_us'] / 1e3:.3f} ms | "
                        f"{b['p99_us'] / 1e3:.3f} ms | {r50:.2f} | {r99:.2f} | "
                        f"{a['cpu_us_per_req']:.1f}/{b['cpu_us_per_req']:.1f} | {cr:.2f} | "
                        f"{a['other_cores']:.2f}/{b['other_cores']:.2f} | {a['accepted']}/{b['accepted']} | "
                        f"{a['errors']}/{b['errors']} | {pr['background_cores']:.2f} |")
                med = median(ratios)
                tp99 = median([pr["tokend"]["p99_us"] for pr in pairs]) / 1e3
                out(f"| {conns} | **median** | {median([p['tokend']['rps'] for p in pairs]):,.0f} | "
                    f"{median([p['nginx']['rps'] for p in pairs]):,.0f} | **{med:.2f}** | "
                    f"{median([p['tokend']['p50_us'] for p in pairs]) / 1e3:.3f} ms | "
                    f"{median([p['nginx']['p50_us'] for p in pairs]) / 1e3:.3f} ms | {tp99:.3f} ms | "
                    f"{median([p['nginx']['p99_us'] for p in pairs]) / 1e3:.3f} ms | **{median(p50r):.2f}** | "
                    f"**{median(p99r):.2f}** | "
                    f"{median([p['tokend']['cpu_us_per_req'] for p in pairs]):.1f}/"
                    f"{median([p['nginx']['cpu_us_per_req'] for p in pairs]):.1f} | **{median(cpur):.2f}** | | | | |")
                c = int(conns)
                bg = median([p["background_cores"] for p in pairs])
                busy = bg > QUIET_CORES
                note = f" -- inconclusive: {bg:.2f} cores of other load" if busy else ""

                def verdict(ok):
                    return None if busy else ok

                self.target(f"(context, no target) server CPU per request at {c} connection(s), tokend/nginx",
                            None, f"{median(cpur):.2f}x")
                if c == 1:
                    self.target("one connection: p50 within 1.2x nginx", verdict(median(p50r) <= 1.2),
                                f"{median(p50r):.2f}x{note}")
                    self.target("one connection: p99 within 1.2x nginx", verdict(median(p99r) <= 1.2),
                                f"{median(p99r):.2f}x{note}")
                else:
                    self.target(f"hit path at {c} connections: >= 0.95x nginx req/s", verdict(med >= 0.95),
                                f"{med:.2f}x (pairs: {', '.join(f'{x:.2f}' for x in ratios)}){note}")
                    if c == 50:
                        self.target("hit path at 50 connections: p99 < 1 ms", verdict(tp99 < 1.0),
                                    f"{tp99:.3f} ms (nginx {median([p['nginx']['p99_us'] for p in pairs]) / 1e3:.3f} ms){note}")
                    else:
                        acc = min(p["tokend"]["accepted"] for p in pairs)
                        errs = sum(p["tokend"]["errors"] for p in pairs)
                        self.target(f"hit path at {c} connections: no connection left waiting",
                                    acc >= c and errs == 0,
                                    f"every run: at least {acc} of {c} connections accepted; {errs} wrk errors")
            out("")

        if "coalesce" in res:
            out("### 3. Coalescing (concurrent first requests; mints counted by the stand-in)")
            out("")
            out("| requests | users | stand-in delay | mints | miss | coalesced | hit | answered 200 | "
                "writes spread over | all answered in |")
            out("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
            ok = True
            for r in res["coalesce"]:
                out(f"| {r['conns']} | {r['users']} | {r['delay_ms']} ms | **{r['mints']}** | {r['miss']} | "
                    f"{r['coalesced']} | {r['hit']} | {r['ok']} | {r['write_spread_us'] / 1e3:.1f} ms | "
                    f"{r['elapsed_ms']:.0f} ms |")
                ok = ok and r["mints"] == r["users"]
            self.target("coalescing: exactly one mint per user", ok,
                        ", ".join(f"{r['mints']}/{r['users']}" for r in res["coalesce"]))
            out("")

        if "miss" in res:
            out("### 4. Miss path (first requests for new users; the stand-in answers at once)")
            out("")
            out("| conns | users | mints | mints/s | tokend answer p50 | p99 | stand-in own p50 | "
                "added p50 | added p90 | added p99 |")
            out("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
            for r in res["miss"]:
                out(f"| {r['conns']} | {r['count']:,} | {r['mints']:,} | {r['mints_per_s']:,.0f} | "
                    f"{r['total_p50_ms']:.3f} ms | {r['total_p99_ms']:.3f} ms | {r['stub_p50_ms']:.3f} ms | "
                    f"{r['added_p50_ms']:.3f} ms | {r['added_p90_ms']:.3f} ms | {r['added_p99_ms']:.3f} ms |")
            one = min(res["miss"], key=lambda r: r["conns"])
            best = max(res["miss"], key=lambda r: r["mints_per_s"])
            bg = res.get("miss_background_cores", 0)
            note = f" -- inconclusive: {bg:.2f} cores of other load" if bg > QUIET_CORES else ""
            self.target("miss path: added latency < 0.5 ms median (one connection, no queueing)",
                        one["added_p50_ms"] < 0.5 or (None if note else False),
                        f"{one['added_p50_ms']:.3f} ms at {one['conns']} conn{note if one['added_p50_ms'] >= 0.5 else ''}")
            self.target(f"(context) miss path: added latency at full rate ({best['conns']} conns, closed loop: "
                        "mostly queueing)", None, f"{best['added_p50_ms']:.3f} ms median")
            ok = best["mints_per_s"] >= 5000
            self.target("miss path: >= 5,000 mints/s", ok or (None if note else False),
                        f"{best['mints_per_s']:,.0f}/s at {best['conns']} conns{'' if ok else note}")
            out("")
            out("Added latency = tokend's answer time seen by the client minus the stand-in's own time "
                "for that user's mint (t_done - t_recv in /__stub/requests).")
            out("")

        if "memory" in res:
            mem = res["memory"]
            out("### 5. Memory (VmRSS of tokend)")
            out("")
            def own(d):
                return (f"{d.get('anonymous_kb', 0) / 1024:.1f} MiB / {d.get('pss_kb', 0) / 1024:.1f} MiB / "
                        f"{d.get('shared_clean_kb', 0) / 1024:.1f} MiB")

            out("| state | RSS | anonymous / Pss / shared clean | per item |")
            out("|---|---:|---:|---:|")
            fl0 = mem.get("floor")
            if fl0:
                out(f"| floor: a program that only links tokend's libraries (`link-floor`) | "
                    f"{fl0['loaded_kb'] / 1024:.1f} MiB | {fl0['loaded_anon_kb'] / 1024:.1f} MiB anonymous | |")
                out(f"| floor, after `curl_global_init()` (OpenSSL's start-up) | "
                    f"{fl0['curl_init_kb'] / 1024:.1f} MiB | {fl0['curl_init_anon_kb'] / 1024:.1f} MiB anonymous | |")
            out(f"| idle, just started | {mem['idle_kb'] / 1024:.1f} MiB | {own(mem['idle'])} | |")
            out(f"| after the first token | {mem['after_first_token_kb'] / 1024:.1f} MiB | "
                f"{own(mem['after_first_token'])} | |")
            h = mem["hold"]
            out(f"| {h['conns']:,} open keep-alive connections | {h['rss_after_kb'] / 1024:.1f} MiB | | "
                f"{h['bytes_per_conn']:,.0f} B per connection |")
            prev_users, prev_kb = 0, mem["after_first_token_kb"]
            for fl in mem["fills"]:
                per = (fl["rss_kb"] - prev_kb) * 1024 / (fl["users"] - prev_users)
                out(f"| {fl['users']:,} cached users (filled at {fl['fill_rate']:,.0f}/s) | "
                    f"{fl['rss_kb'] / 1024:.1f} MiB | {own(fl['detail'])} | {per:,.0f} B per token (vs previous row) |")
                prev_users, prev_kb = fl["users"], fl["rss_kb"]
            last = mem["fills"][-1]
            overall = (last["rss_kb"] - mem["after_first_token_kb"]) * 1024 / last["users"]
            out(f"| bytes per cached token, overall | | | {overall:,.0f} B |")
            self.target("memory: < 1 KiB per cached token", overall < 1024, f"{overall:,.0f} B")
            if last["users"] >= 1000000:
                self.target("memory: 1,000,000 cached users < 1 GiB RSS", last["rss_kb"] < 1024 * 1024,
                            f"{last['rss_kb'] / 1024:.0f} MiB")
            floor_note = ""
            if fl0:
                floor_note = (f"; the libraries alone: {fl0['loaded_kb'] * 1024 / 1e6:.1f} MB loaded, "
                              f"{fl0['curl_init_kb'] * 1024 / 1e6:.1f} MB after curl_global_init, so tokend's own "
                              f"share is {(mem['idle_kb'] - fl0['curl_init_kb']) * 1024 / 1e6:.1f} MB")
            self.target("memory: idle < 8 MB (VmRSS)", mem["idle_kb"] * 1024 < 8e6,
                        f"{mem['idle_kb'] * 1024 / 1e6:.1f} MB, of which {mem['idle'].get('shared_clean_kb', 0) * 1024 / 1e6:.1f} MB "
                        f"shared clean library pages; anonymous {mem['idle'].get('anonymous_kb', 0) * 1024 / 1e6:.1f} MB, "
                        f"Pss {mem['idle'].get('pss_kb', 0) * 1024 / 1e6:.1f} MB{floor_note}")
            self.target("memory: < 8 KB per open connection", h["bytes_per_conn"] < 8000,
                        f"{h['bytes_per_conn']:,.0f} B")
            out("")

        if "startup" in res:
            s = res["startup"]
            out(f"### 6. Start-up ({s['ok']} runs; exec to ...)")
            out("")
            out("| to | median | min | max |")
            out("|---|---:|---:|---:|")
            out(f"| a connectable socket | {s['listen_ms_p50']:.1f} ms | {s['listen_ms_min']:.1f} ms | "
                f"{s['listen_ms_max']:.1f} ms |")
            out(f"| the first served token (one mint) | {s['token_ms_p50']:.1f} ms | {s['token_ms_min']:.1f} ms | "
                f"{s['token_ms_max']:.1f} ms |")
            out("")
            out(f"CPU time of the daemon's whole life (start, one mint, stop): {s['cpu_ms_p50']:.1f} ms median, "
                f"{s['minor_faults_p50']:,.0f} page faults; a busy machine inflates the wall times above, not these. "
                f"Exec of the same binary that only prints its version: "
                f"{res.get('startup_floor', {}).get('version_ms_p50', float('nan')):.1f} ms wall median.")
            bg = res.get("startup_background_cores", 0)
            ok = s["listen_ms_p50"] < 50
            note = f" -- inconclusive: {bg:.2f} cores of other load" if bg > QUIET_CORES and not ok else ""
            self.target("start-up to listening < 50 ms", ok or (None if note else False),
                        f"{s['listen_ms_p50']:.1f} ms median (CPU {s['cpu_ms_p50']:.0f} ms for the whole life){note}")
            out("")

        if "instructions" in res:
            ins = res["instructions"]
            t, n = ins["tokend"], ins["nginx"]
            out(f"### 7. User-space instructions per hit request (callgrind, {t['requests']:,} requests each)")
            out("")
            out("| server | instructions per request | vs nginx |")
            out("|---|---:|---:|")
            out(f"| tokend | {t['per_request']:,.0f} | {t['per_request'] / n['per_request']:.2f}x |")
            if "tokend-fleet" in ins:
                f = ins["tokend-fleet"]
                out(f"| tokend, fleet mode on | {f['per_request']:,.0f} | {f['per_request'] / n['per_request']:.2f}x |")
            out(f"| nginx | {n['per_request']:,.0f} | 1.00x |")
            out("")
            out("Counts every instruction of the server process (and each iteration of a `rep stos`); the "
                "kernel's share, the same system calls for both, is not in it. Stable where req/s is not.")
            out("")
            self.target("(context, no target) user-space instructions per hit request, tokend/nginx", None,
                        f"{t['per_request'] / n['per_request']:.2f}x")
            if "tokend-fleet" in ins:
                ratio = ins["tokend-fleet"]["per_request"] / t["per_request"]
                # the same code serves a hit with fleet mode on: its cost must not grow
                self.target("fleet: instructions per hit request, fleet mode on <= 1.03x off (callgrind)",
                            ratio <= 1.03, f"{ratio:.3f}x")

        if "tls" in res:
            rows = res["tls"]
            out(f"### 8. Miss path over HTTPS ({self.p['tls_users']:,} new users per run, "
                f"median of {self.p['rounds']} alternating round(s))")
            out("")
            out("| conns | path | mints/s | vs plain HTTP | added p50 | vs plain HTTP | added p99 | "
                "connections | full TLS handshakes | per 1,000 mints | tokend CPU per mint |")
            out("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
            names = {"direct": "plain HTTP, straight to the stand-in (context)", "http": "plain HTTP via nginx",
                     "https-h1": "HTTPS, HTTP/1.1, via nginx", "https-h2": "HTTPS, HTTP/2, via nginx"}
            med = {}
            for conns in sorted({r["conns"] for r in rows}):
                for v in self.TLS_VARIANTS:
                    rs = [r for r in rows if r["conns"] == conns and r["variant"] == v]
                    if not rs:
                        continue
                    m = {k: median([r[k] for r in rs]) for k in
                         ("mints_per_s", "added_p50_ms", "added_p99_ms", "cpu_us_per_mint")}
                    m["connections"] = max(r["connections"] for r in rs)
                    m["full_handshakes"] = max(r["full_handshakes"] for r in rs)
                    m["per_1000"] = max(r["full_handshakes"] * 1000 / r["mints"] for r in rs if r["mints"])
                    med[(conns, v)] = m
                    base = med.get((conns, "http"))
                    tls = v.startswith("https")
                    vs_rate = f"{m['mints_per_s'] / base['mints_per_s']:.2f}x" if base else ""
                    vs_added = f"{m['added_p50_ms'] - base['added_p50_ms']:+.3f} ms" if base and v != "http" else ""
                    conns_cell = str(m["connections"]) if v != "direct" else ""
                    hs_cells = f"{m['full_handshakes']} | {m['per_1000']:.2f}" if tls else " | "
                    out(f"| {conns} | {names[v]} | {m['mints_per_s']:,.0f} | {vs_rate} | "
                        f"{m['added_p50_ms']:.3f} ms | {vs_added} | {m['added_p99_ms']:.3f} ms | "
                        f"{conns_cell} | {hs_cells} | {m['cpu_us_per_mint']:.1f} us |")
            out("")
            out("Added latency: as in step 4, so for the paths via nginx it includes nginx's own proxying; "
                "compare those three with each other. Connections and handshakes are counted by nginx "
                "($connection, $ssl_session_reused). tokend's CPU per mint is its user + system time over "
                "the run divided by the mints.")
            out("")
            bg = res.get("tls_background_cores", 0)
            note = f" -- inconclusive: {bg:.2f} cores of other load" if bg > QUIET_CORES else ""
            top, one = max(r["conns"] for r in rows), min(r["conns"] for r in rows)
            if (top, "https-h2") in med and (top, "http") in med:
                ratio = med[(top, "https-h2")]["mints_per_s"] / med[(top, "http")]["mints_per_s"]
                self.target(f"HTTPS with HTTP/2: >= 0.8x plain HTTP's mints/s ({top} conns)",
                            ratio >= 0.8 or (None if note else False), f"{ratio:.2f}x{'' if ratio >= 0.8 else note}")
            for v in ("https-h1", "https-h2"):
                if (one, v) in med and (one, "http") in med:
                    d = med[(one, v)]["added_p50_ms"] - med[(one, "http")]["added_p50_ms"]
                    self.target(f"{names[v]}: added latency per mint within 0.2 ms of plain HTTP's "
                                f"({one} conn, median)", d <= 0.2 or (None if note else False),
                                f"{d:+.3f} ms{'' if d <= 0.2 else note}")
                if (top, v) in med:
                    self.target(f"{names[v]}: TLS handshakes per 1,000 mints <= 64 (the connections allowed)",
                                med[(top, v)]["per_1000"] <= 64,
                                f"{med[(top, v)]['per_1000']:.2f} ({med[(top, v)]['full_handshakes']} for "
                                f"{self.p['tls_users']:,} mints, {med[(top, v)]['connections']} connections)")

        if "fleet" in res:
            fl = res["fleet"]
            bg = fl.get("background_cores", 0)
            note = f" -- inconclusive: {bg:.2f} cores of other load" if bg > QUIET_CORES else ""
            out(f"### 9. Fleet mode (Redis {fl['redis']} on 127.0.0.1, no persistence)")
            out("")
            if "hit" in fl:
                out(f"Hit path, {self.p['hit_users']:,} cached users, {self.p['hit_seconds']} s per run, the same "
                    f"tokend without and with `[shared]`, alternating:")
                out("")
                out("| conns | round | off req/s | on req/s | on/off | off p99 | on p99 | CPU us/req (off/on) | "
                    "CPU on/off | background before, cores |")
                out("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
                for conns, pairs in fl["hit"].items():
                    ratios, cpur = [], []
                    for i, pr in enumerate(pairs):
                        a, b = pr["off"], pr["on"]
                        ratio = b["rps"] / a["rps"]
                        cr = b["cpu_us_per_req"] / a["cpu_us_per_req"] if a["cpu_us_per_req"] else float("nan")
                        ratios.append(ratio)
                        cpur.append(cr)
                        out(f"| {conns} | {i + 1} | {a['rps']:,.0f} | {b['rps']:,.0f} | {ratio:.3f} | "
                            f"{a['p99_us'] / 1e3:.3f} ms | {b['p99_us'] / 1e3:.3f} ms | "
                            f"{a['cpu_us_per_req']:.2f}/{b['cpu_us_per_req']:.2f} | {cr:.3f} | "
                            f"{pr['background_cores']:.2f} |")
                    med = median(ratios)
                    out(f"| {conns} | **median** | {median([p['off']['rps'] for p in pairs]):,.0f} | "
                        f"{median([p['on']['rps'] for p in pairs]):,.0f} | **{med:.3f}** | | | "
                        f"{median([p['off']['cpu_us_per_req'] for p in pairs]):.2f}/"
                        f"{median([p['on']['cpu_us_per_req'] for p in pairs]):.2f} | **{median(cpur):.3f}** | |")
                    hbg = median([p["background_cores"] for p in pairs])
                    hnote = f" -- inconclusive: {hbg:.2f} cores of other load" if hbg > QUIET_CORES else ""
                    self.target(f"fleet: hit path at {conns} connections, fleet mode on >= 0.97x off (req/s)",
                                med >= 0.97 or (None if hnote else False),
                                f"{med:.3f}x (pairs: {', '.join(f'{x:.3f}' for x in ratios)})"
                                f"{'' if med >= 0.97 else hnote}")
                    self.target(f"(context, no target) fleet: server CPU per hit request at {conns} connections, "
                                f"on/off", None, f"{median(cpur):.3f}x")
                out("")
            sm = fl["shared_miss"]
            out(f"A miss served from Redis: host A minted {sm['users']:,} users; host B asked for each over one "
                f"connection (every answer `X-Cache: shared`), then again (hits):")
            out("")
            out("| host B | p50 | p90 | p99 | answers/s |")
            out("|---|---:|---:|---:|---:|")
            out(f"| first request, from Redis (shared) | {sm['shared_p50_ms']:.3f} ms | {sm['shared_p90_ms']:.3f} ms | "
                f"{sm['shared_p99_ms']:.3f} ms | {sm['shared_rate']:,.0f} |")
            out(f"| second request, from memory (hit) | {sm['hit_p50_ms']:.3f} ms | {sm['hit_p90_ms']:.3f} ms | "
                f"{sm['hit_p99_ms']:.3f} ms | {sm['hit_rate']:,.0f} |")
            out(f"| **added by Redis** (shared minus hit) | **{sm['added_p50_ms']:.3f} ms** | | "
                f"**{sm['added_p99_ms']:.3f} ms** | |")
            out("")
            bg = sm.get("background_cores", bg)
            note = f" -- inconclusive: {bg:.2f} cores of other load" if bg > QUIET_CORES else ""
            self.target("fleet: a miss served from Redis adds < 0.3 ms over a hit at p50",
                        sm["added_p50_ms"] < 0.3 or (None if note else False),
                        f"{sm['added_p50_ms']:.3f} ms{'' if sm['added_p50_ms'] < 0.3 else note}")
            self.target("fleet: a miss served from Redis adds < 1 ms over a hit at p99",
                        sm["added_p99_ms"] < 1.0 or (None if note else False),
                        f"{sm['added_p99_ms']:.3f} ms{'' if sm['added_p99_ms'] < 1.0 else note}")
            out("Mints per user across 4 hosts sharing one Redis (`bench-client burst` against each host at "
                "once; mints counted by the stand-in):")
            out("")
            out("| users | requests | stand-in delay | mints | per user | miss | coalesced | shared | shared-wait | "
                "hit | answered 200 | slowest host done in | mints leased / after a lease timeout / degraded | "
                "Redis errors |")
            out("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
            for r in fl["contention"]:
                out(f"| {r['users']} | {r['requests']:,} | {r['delay_ms']} ms | **{r['mints']}** | "
                    f"{r['mints_per_user']:.2f} | {r['miss']} | {r['coalesced']} | {r['shared']} | "
                    f"{r['shared_wait']} | {r['hit']} | {r['ok']:,} | {r['elapsed_ms']:.0f} ms | "
                    f"{r.get('leased', '?')} / {r.get('lease_timeout', '?')} / {r.get('degraded', '?')} | "
                    f"{r.get('redis_errors', '?')} |")
            self.target("fleet: exactly one mint per user across 4 hosts under contention",
                        all(r["mints"] == r["users"] for r in fl["contention"]),
                        ", ".join(f"{r['mints']}/{r['users']} (delay {r['delay_ms']} ms)" for r in fl["contention"]))
            out("")
            mem = fl["memory"]
            out(f"Memory per cached token ({mem['off']['users']:,} new users through one host, VmRSS growth):")
            out("")
            out("| fleet mode | RSS before | RSS after | per cached token | filled at | Redis used_memory per token |")
            out("|---|---:|---:|---:|---:|---:|")
            for name in ("off", "on"):
                m = mem[name]
                rb = f"{m['redis_bytes_per_token']:,.0f} B" if "redis_bytes_per_token" in m else ""
                out(f"| {name} | {m['rss_before_kb'] / 1024:.1f} MiB | {m['rss_after_kb'] / 1024:.1f} MiB | "
                    f"**{m['bytes_per_token']:,.0f} B** | {m['fill_rate']:,.0f}/s | {rb} |")
            out("")
            self.target("(context, no target) fleet: memory per cached token, on (off)", None,
                        f"{mem['on']['bytes_per_token']:,.0f} B ({mem['off']['bytes_per_token']:,.0f} B)")

        if self.args.mode == "selftest":
            out("Self-test: a miniature that checks the benchmark runs and counts right; its figures "
                "are not measurements, so no target is judged.")
            self.targets = []
        else:
            out("### Targets")
            out("")
            out("| target | figure | verdict |")
            out("|---|---|---|")
            for what, ok, fig in self.targets:
                verdict = ("inconclusive" if "inconclusive" in fig else "info") if ok is None else \
                    "pass" if ok else "**MISS**"
                out(f"| {what} | {fig} | {verdict} |")
        out("")
        bad = [c for c in self.checks if not c[1]]
        out(f"Correctness checks: {len(self.checks) - len(bad)} of {len(self.checks)} passed.")
        for what, _, detail in bad:
            out(f"- FAILED: {what}: {detail}")
        for s in self.skipped:
            out(f"- skipped: {s}")
        return "\n".join(lines)

    # ------------------------------------------------------------ main

    def run(self):
        steps = [("hit", self.step_hit), ("coalesce", self.step_coalesce), ("miss", self.step_miss),
                 ("memory", self.step_memory), ("startup", self.step_startup),
                 ("instructions", self.step_instructions), ("tls", self.step_tls),
                 ("fleet", self.step_fleet)]
        only = set(self.args.only.split(",")) if self.args.only else None
        self.results["machine"] = self.machine()
        self.results["command"] = self.args.command or " ".join(sys.argv)
        if self.args.wait_quiet > 0:
            deadline = time.monotonic() + self.args.wait_quiet
            bg = background_cores()
            while bg > QUIET_CORES and time.monotonic() < deadline:
                log(f"the machine is busy ({bg:.2f} cores without us); waiting up to "
                    f"{deadline - time.monotonic():.0f} s more for quiet")
                time.sleep(4)
                bg = background_cores()
            self.results["background_at_start"] = bg
        t0 = time.monotonic()
        try:
            self.start_stub()
            for name, fn in steps:
                if only and name not in only:
                    continue
                fn()
        finally:
            self.procs.stop_all()
            if not self.args.keep and sys.exc_info()[0] is not None:
                shutil.rmtree(self.tmp, ignore_errors=True)
        for argv, status in self.procs.died:
            names = [os.path.basename(str(a)) for a in argv if "instacart" in str(a) or "nginx" in str(a)]
            self.check(f"{names[0] if names else argv[0]} stayed up", False,
                       f"{' '.join(map(str, argv))} had exited with status {status}")
        self.results["elapsed_s"] = time.monotonic() - t0
        self.results["loadavg_after"] = loadavg()
        self.results["checks"] = self.checks
        text = self.report()
        self.results["targets"] = self.targets
        print(text)
        if self.args.json:
            with open(self.args.json, "w") as f:
                json.dump(self.results, f, indent=1)
        if not self.args.keep:
            shutil.rmtree(self.tmp, ignore_errors=True)
        else:
            log(f"kept {self.tmp}")
        return 0 if all(c[1] for c in self.checks) else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build-dir", required=True, help="where instacart-tokend, the stand-in and bench-client are built")
    ap.add_argument("--mode", choices=sorted(PROFILES), default="full")
    ap.add_argument("--no-pin", dest="pin", action="store_false",
                    help="do not pin the servers to CPU 0 and wrk to CPU 1")
    ap.add_argument("--only", help="comma-separated steps: hit,coalesce,miss,memory,startup,instructions,tls,fleet")
    ap.add_argument("--json", help="also write the raw figures here")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (configs, logs)")
    ap.add_argument("--wait-quiet", type=float, default=None, metavar="S",
                    help="wait up to S seconds for a quiet machine before starting (default 120, selftest 0)")
    ap.add_argument("--command", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.wait_quiet is None:
        args.wait_quiet = 0 if args.mode == "selftest" else 120

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < 4096:
        print("bench: the file descriptor limit is below 4096; wrk at 1,000 connections needs more "
              "(ulimit -n 65536)", file=sys.stderr)
        return 2
    try:
        return Bench(args).run()
    except (BenchError, subprocess.TimeoutExpired) as e:
        print(f"bench: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
