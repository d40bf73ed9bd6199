"""Real Redis for the fleet tests: Debian's redis-server and redis-sentinel
(7.0 on Debian 12), started on loopback ports or Unix sockets in the test's
own directory, with no persistence, plus a TCP forwarder that can cut one
host's link to Redis.

    r = Redis(tmp_path / "redis").start()
    r.cli("SET", "k", "v")          # python3-redis, as the default user
    r.cli("KEYS", "*", user=TOKEND_USER, password=r.password)  # NOPERM
    r.kill(); r.restart(); r.stop_signal(); r.cont()

Fixtures (conftest.py imports them): redis, make_redis, sentinels, key_file,
make_fleet.
"""
import hashlib
import os
import re
import secrets
import selectors
import shutil
import signal
import socket
import subprocess
import tempfile
import threading

import pytest
import redis as redis_py

from conftest import SLOW, terminate, wait_for
from nginx_fixture import free_port

# TOKEND_REDIS_SERVER and TOKEND_REDIS_SENTINEL name other binaries: Valkey's
# (valkey-server, valkey-sentinel) on Debian 13, as tests/debian13/run.sh runs them.
REDIS_SERVER = os.environ.get("TOKEND_REDIS_SERVER") or shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_SENTINEL = (os.environ.get("TOKEND_REDIS_SENTINEL") or shutil.which("redis-sentinel")
                  or "/usr/bin/redis-sentinel")

# The ACL user tokend runs as, and the only commands it may use: the one
# place this list lives. Keys under "tokend:" only (the default prefix).
TOKEND_USER = "tokend"
# Exactly what tokend sends (and its scripts call), as the README's ACL rule
# says: the ACL test fails if tokend needs one more.
TOKEND_COMMANDS = ("evalsha", "script|load", "get", "set", "del", "pttl", "incr", "xadd", "xread",
                   "xinfo|stream", "exists", "ping", "role", "time", "wait")
PREFIX = "tokend"
MASTER_NAME = "tokend"


def tokend_acl_rule(password):
    return (f"user {TOKEND_USER} on >{password} ~{PREFIX}:* resetchannels -@all "
            + " ".join("+" + c for c in TOKEND_COMMANDS))


def _short_dir(workdir):
    """A directory for a Unix socket: sun_path holds 107 bytes, pytest's
    tmp_path can be longer."""
    if len(os.path.join(workdir, "redis.sock")) < 100:
        return workdir, None
    d = tempfile.mkdtemp(prefix="tkr", dir="/tmp")
    return d, d


class Redis:
    """One redis-server: TCP on 127.0.0.1:port (and a Unix socket if unix=True),
    no persistence, the default user without password (the tests' admin) and
    the ACL user tokend with a random password."""

    def __init__(self, workdir, unix=False, replicaof=None, extra=(), password=None):
        self.workdir = os.fspath(workdir)
        os.makedirs(self.workdir, exist_ok=True)
        self.port = None
        self.unix = unix
        self.replicaof = replicaof
        self.extra = tuple(extra)
        self.password = password or secrets.token_hex(16)
        self.password_file = os.path.join(self.workdir, "redis-password")
        fd = os.open(self.password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.password + "\n")
        sockdir, self._sockdir_tmp = _short_dir(self.workdir)
        self.socket_path = os.path.join(sockdir, "redis.sock") if unix else None
        self.conf_path = os.path.join(self.workdir, "redis.conf")
        self.log_path = os.path.join(self.workdir, "redis.log")
        self.proc = None
        self.stopped = False

    # ---------------------------------------------------------------- lifecycle

    def write_config(self):
        lines = [
            "bind 127.0.0.1", f"port {self.port}", f"dir {self.workdir}", f"logfile {self.log_path}",
            'save ""', "appendonly no", "daemonize no",
            # DUMP must show the bytes as they are: LZF could hide a plaintext token
            "rdbcompression no",
            "user default on nopass ~* &* +@all",
            tokend_acl_rule(self.password),
        ]
        if self.socket_path:
            lines += [f"unixsocket {self.socket_path}", "unixsocketperm 700"]
        if self.replicaof:
            lines.append(f"replicaof 127.0.0.1 {self.replicaof}")
        lines += list(self.extra)
        with open(self.conf_path, "w") as f:
            f.write("\n".join(lines) + "\n")

    def start(self, timeout=10.0):
        for attempt in range(5):  # a free port can be taken between bind and start
            if self.port is None or attempt:
                self.port = free_port()
            self.write_config()
            self._spawn()
            try:
                wait_for(lambda: self._pings() or self.proc.poll() is not None, timeout=timeout,
                         what="redis-server to answer PING")
            except AssertionError:
                self.kill()
                raise AssertionError(f"redis-server did not start: {self.log()}")
            if self.proc.poll() is None:
                return self
            self.proc = None
        raise AssertionError(f"redis-server would not start: {self.log()}")

    def _spawn(self):
        self.proc = subprocess.Popen([REDIS_SERVER, self.conf_path], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.stopped = False

    def restart(self, timeout=10.0):
        """Kills it if it runs, and starts it again on the same port and
        socket: empty, since nothing persists."""
        self.kill()
        self._spawn()
        wait_for(self._pings, timeout=timeout, what="redis-server to answer PING after a restart")
        return self

    def _pings(self):
        try:
            return self.client(timeout=0.5).ping()
        except redis_py.RedisError:
            return False

    def kill(self):
        """SIGKILL: no goodbye to the clients, nothing saved."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.proc = None
        self.stopped = False

    def stop_signal(self):
        """SIGSTOP: the kernel still accepts connections, nothing answers."""
        self.proc.send_signal(signal.SIGSTOP)
        self.stopped = True

    def cont(self):
        self.proc.send_signal(signal.SIGCONT)
        self.stopped = False

    def stop(self):
        if self.proc is None:
            return
        if self.stopped:
            self.cont()
        terminate(self.proc)
        self.proc = None
        if self._sockdir_tmp:
            shutil.rmtree(self._sockdir_tmp, ignore_errors=True)

    def log(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()[-3000:]
        except OSError:
            return ""

    # ---------------------------------------------------------------- clients

    @property
    def address(self):
        return f"127.0.0.1:{self.port}"

    @property
    def unix_address(self):
        return f"unix:{self.socket_path}"

    def client(self, user=None, password=None, timeout=2.0):
        return redis_py.Redis(host="127.0.0.1", port=self.port, username=user, password=password,
                              socket_timeout=timeout, socket_connect_timeout=timeout)

    def cli(self, *args, user=None, password=None):
        """One command; the reply as python3-redis gives it (bytes), or
        redis.ResponseError raised for an error reply."""
        c = self.client(user, password)
        try:
            return c.execute_command(*args)
        finally:
            c.close()

    def role(self):
        """b"master", b"slave", ..., or None while it cannot answer (a node
        the sentinels are reconfiguring resets its connections)."""
        try:
            return self.cli("ROLE")[0]
        except (redis_py.RedisError, IndexError):
            return None

    def keys(self):
        """Every key (SCAN, never KEYS), as bytes."""
        c = self.client()
        try:
            return list(c.scan_iter(count=1000))
        finally:
            c.close()

    def shared(self, unix=False):
        """The [shared] keys that point tokend here."""
        return {"redis": self.unix_address if unix else self.address}


class Sentinels:
    """One master, two replicas and three redis-sentinel processes watching
    them (quorum 2, down after 1 s), all on loopback."""

    def __init__(self, workdir):
        self.workdir = os.fspath(workdir)
        self.password = secrets.token_hex(16)  # the ACL user's, the same on every node
        self.master = Redis(os.path.join(self.workdir, "node0"), password=self.password)
        self.nodes = [self.master]
        self.sentinel_ports = []
        self.procs = []

    def start(self, timeout=20.0):
        self.master.start()
        for i in (1, 2):
            r = Redis(os.path.join(self.workdir, f"node{i}"), replicaof=self.master.port,
                      password=self.password)
            self.nodes.append(r.start())
        for i in range(3):
            d = os.path.join(self.workdir, f"sentinel{i}")
            os.makedirs(d, exist_ok=True)
            port = free_port()
            conf = os.path.join(d, "sentinel.conf")  # sentinel rewrites it: must be writable
            with open(conf, "w") as f:
                f.write(f"bind 127.0.0.1\nport {port}\ndir {d}\nlogfile {d}/sentinel.log\n"
                        f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.master.port} 2\n"
                        f"sentinel down-after-milliseconds {MASTER_NAME} 1000\n"
                        f"sentinel failover-timeout {MASTER_NAME} 3000\n"
                        f"sentinel parallel-syncs {MASTER_NAME} 2\n")
            self.procs.append(subprocess.Popen([REDIS_SENTINEL, conf], stdin=subprocess.DEVNULL,
                                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            self.sentinel_ports.append(port)
        # ready when every sentinel knows both replicas and the two other sentinels
        wait_for(self._all_know_all, timeout=timeout, interval=0.1, what="the sentinels to see each other")
        return self

    def _sentinel(self, port):
        return redis_py.Redis(host="127.0.0.1", port=port, socket_timeout=1, socket_connect_timeout=1)

    def _all_know_all(self):
        for p in self.sentinel_ports:
            try:
                c = self._sentinel(p)
                m = c.execute_command("SENTINEL", "MASTER", MASTER_NAME)
                c.close()
            except redis_py.RedisError:
                return False
            info = dict(zip(m[::2], m[1::2]))
            if int(info[b"num-slaves"]) < 2 or int(info[b"num-other-sentinels"]) < 2:
                return False
        return True

    def master_addr(self):
        """What a majority... well, the first sentinel that answers, says."""
        for p in self.sentinel_ports:
            try:
                c = self._sentinel(p)
                host, port = c.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME)
                c.close()
                return host.decode(), int(port)
            except (redis_py.RedisError, TypeError, ValueError):
                continue
        return None

    def kill_master(self):
        self.old_master = self.master
        self.master.kill()
        return self.old_master

    def wait_for_new_master(self, timeout=10.0):
        """The node the sentinels now name as master, once it says so itself."""
        old = self.old_master.port

        def promoted():
            a = self.master_addr()
            if not a or a[1] == old:
                return None
            node = next((n for n in self.nodes if n.port == a[1]), None)
            try:
                return node if node and node.cli("ROLE")[0] == b"master" else None
            except redis_py.RedisError:
                return None

        self.master = wait_for(promoted, timeout=timeout, interval=0.05, what="a new master")
        return self.master

    def named_master(self):
        """The node the sentinels name as master now, or None."""
        a = self.master_addr()
        return next((n for n in self.nodes if a and n.port == a[1]), None)

    def settled(self):
        """The master, once the sentinels name one that says so itself and
        every other running node replicates it (a node continued after a
        failover is turned into a replica by the sentinels, seconds later);
        else None."""
        m = self.named_master()
        if m is None or m.proc is None or m.stopped:
            return None
        try:
            if m.cli("ROLE")[0] != b"master":
                return None
            for n in self.nodes:
                if n is not m and n.proc is not None:
                    role = n.cli("ROLE")
                    if role[0] != b"slave" or int(role[2]) != m.port or role[3] != b"connected":
                        return None
        except (redis_py.RedisError, IndexError, ValueError):
            return None
        self.master = m
        return m

    def restart_as_replica(self, node, timeout=10.0):
        """Starts a killed node again on its own port, as a replica of the
        current master: what an operator does after a failover."""
        node.replicaof = self.master.port
        node.write_config()
        node._spawn()
        wait_for(node._pings, timeout=timeout, what="the restarted node to answer PING")
        return node

    def shared(self):
        return {"sentinels": " ".join(f"127.0.0.1:{p}" for p in self.sentinel_ports),
                "master_name": MASTER_NAME}

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.terminate()  # all at once, then each waited for
        for p in self.procs:
            terminate(p)
        for n in self.nodes:
            n.stop()


class Cutter:
    """A TCP forwarder on a loopback port in front of Redis, on one thread.
    cut() closes every current connection; until restore(), new ones are
    reset at once (mode "refuse") or accepted and never answered
    ("blackhole", what a partition looks like). hold_events() holds back
    what Redis sends on the connections that read the fleet's events (those
    that sent XREAD), as a host slow to read them would see it, until
    release_events()."""

    def __init__(self, target_port, target_host="127.0.0.1"):
        self.target = (target_host, target_port)
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(64)
        self.lsock.setblocking(False)
        self.port = self.lsock.getsockname()[1]
        self.mode = "open"
        self.peer = {}  # socket -> the socket it forwards to (None: blackholed)
        self.clients = set()  # the sockets accepted from tokend
        self.readers = set()  # client sockets that sent XREAD: the event thread's
        self.holding = False
        self.held = {}  # client socket -> bytes Redis sent it, held back
        self.lock = threading.Lock()
        self.wake_r, self.wake_w = socket.socketpair()
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.lsock, selectors.EVENT_READ, "accept")
        self.sel.register(self.wake_r, selectors.EVENT_READ, "wake")
        self.running = True
        self.thread = threading.Thread(target=self._loop, name="cutter", daemon=True)
        self.thread.start()

    @property
    def address(self):
        return f"127.0.0.1:{self.port}"

    def shared(self):
        return {"redis": self.address}

    def connections(self):
        with self.lock:
            return sum(1 for s, p in self.peer.items() if p is not None) // 2

    def cut(self, mode="refuse"):
        assert mode in ("refuse", "blackhole")
        self._command(mode)

    def restore(self):
        self._command("open")

    def hold_events(self):
        self._command("hold")

    def release_events(self):
        self._command("release")

    def close(self):
        if self.running:
            self._command("quit")
            self.thread.join(timeout=5)

    def _command(self, mode):
        done = threading.Event()
        with self.lock:
            self.pending = (mode, done)
        self.wake_w.send(b"x")
        assert done.wait(5), "the cutter's thread is stuck"

    def _close(self, s, reset=False):
        if reset:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
        try:
            self.sel.unregister(s)
        except (KeyError, ValueError):
            pass
        s.close()

    def _drop_all(self):
        with self.lock:
            socks = list(self.peer)
            self.peer.clear()
        self.clients.clear()
        self.readers.clear()
        self.held.clear()
        for s in socks:
            self._close(s, reset=True)

    def _loop(self):
        while self.running:
            for key, _ in self.sel.select(timeout=0.5):
                what = key.data
                if what == "wake":
                    self.wake_r.recv(64)
                    with self.lock:
                        mode, done = self.pending
                    if mode == "quit":
                        self._drop_all()
                        self.running = False
                    elif mode == "hold":
                        self.holding = True
                    elif mode == "release":
                        self.holding = False
                        for c, data in list(self.held.items()):
                            try:
                                c.sendall(data)
                            except OSError:
                                pass
                        self.held.clear()
                    else:
                        if mode != "open" or self.mode != "open":
                            self._drop_all()  # a cut, or the end of one (blackholed sockets)
                        self.mode = mode
                    done.set()
                elif what == "accept":
                    self._accept()
                else:
                    self._pump(key.fileobj)
        self.sel.close()
        self.lsock.close()
        self.wake_r.close()
        self.wake_w.close()

    def _accept(self):
        try:
            c, _ = self.lsock.accept()
        except BlockingIOError:
            return
        if self.mode == "refuse":
            self._close(c, reset=True)
            return
        if self.mode == "blackhole":
            c.setblocking(False)
            with self.lock:
                self.peer[c] = None
            self.sel.register(c, selectors.EVENT_READ, "conn")
            return
        try:
            u = socket.create_connection(self.target, timeout=1)
        except OSError:
            self._close(c, reset=True)
            return
        for s in (c, u):
            s.setblocking(True)
            s.settimeout(2)
        with self.lock:
            self.peer[c], self.peer[u] = u, c
            self.clients.add(c)
        self.sel.register(c, selectors.EVENT_READ, "conn")
        self.sel.register(u, selectors.EVENT_READ, "conn")

    def _pump(self, s):
        with self.lock:
            other = self.peer.get(s, "gone")
        if other == "gone":
            return
        try:
            data = s.recv(65536)
        except OSError:
            data = b""
        if other is None:  # blackholed: read and forget, until the peer gives up
            if not data:
                with self.lock:
                    self.peer.pop(s, None)
                self._close(s)
            return
        if data and s in self.clients and b"XREAD" in data:
            self.readers.add(s)
        if data and self.holding and other in self.readers:
            self.held[other] = self.held.get(other, b"") + data
            return
        try:
            if data:
                other.sendall(data)
                return
        except OSError:
            pass
        with self.lock:
            self.peer.pop(s, None)
            self.peer.pop(other, None)
        for x in (s, other):
            self.clients.discard(x)
            self.readers.discard(x)
            self.held.pop(x, None)
        self._close(s)
        self._close(other)


# ---------------------------------------------------------------- the scripts tokend runs in Redis
# Read from src/fleet_wire.c, the one place they are written: tests run them
# by hand (test_fleet_scripts.py) and tell them apart in MONITOR by their
# SHA1, as EVALSHA names them (test_fleet_faults.py).


FLEET_WIRE = os.path.join(os.path.dirname(__file__), "..", "..", "src", "fleet_wire.c")


def c_strings(text):
    """The C string literals in text, joined and unescaped."""
    out = []
    for lit in re.findall(r'"((?:[^"\\]|\\.)*)"', text):
        out.append(lit.encode().decode("unicode_escape"))
    return "".join(out)


def fleet_script(name):
    """The Lua text of `static const char <name>[]` in fleet_wire.c, macros
    (XADD_LUA) expanded."""
    src = open(FLEET_WIRE).read()
    macros = {m.group(1): c_strings(m.group(2).replace("\\\n", "\n"))
              for m in re.finditer(r"#define (\w+_LUA)\s+((?:.*\\\n)*.*)", src)}
    m = re.search(r"static const char " + re.escape(name) + r"\[\] =(.*?);\n", src, re.S)
    assert m, f"{name} is not in {FLEET_WIRE}"
    body = m.group(1)
    text = ""
    for tok in re.finditer(r'(\w+_LUA)|("(?:[^"\\]|\\.)*")', body):
        text += macros[tok.group(1)] if tok.group(1) else c_strings(tok.group(2))
    return text


def fleet_script_sha(name):
    return hashlib.sha1(fleet_script(name).encode()).hexdigest()


# -------------------------------------------------------------------- fixtures


def _need_redis():
    if not os.access(REDIS_SERVER, os.X_OK):
        pytest.skip("redis-server is not installed (tests/deps.sh test installs it)")


@pytest.fixture
def make_redis(tmp_path):
    """make(unix=False, **kw): a started Redis in a directory of its own."""
    _need_redis()
    made = []

    def make(**kw):
        r = Redis(tmp_path / f"redis{len(made)}", **kw)
        made.append(r)
        return r.start()

    yield make
    for r in made:
        r.stop()


@pytest.fixture
def redis(make_redis):
    return make_redis(unix=True)


@pytest.fixture
def sentinels(tmp_path):
    _need_redis()
    if not os.access(REDIS_SENTINEL, os.X_OK):
        pytest.skip("redis-sentinel is not installed (tests/deps.sh test installs it)")
    s = Sentinels(tmp_path / "sentinels")
    try:
        yield s.start()
    finally:
        s.stop()


@pytest.fixture
def make_cutter():
    made = []

    def make(redis):
        c = Cutter(redis.port)
        c.password_file = redis.password_file  # the ACL user's, as through the Redis behind it
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


def write_key_file(path, digits=64, mode=0o600, content=None):
    text = content if content is not None else secrets.token_hex(32)[:digits] + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, mode)  # O_CREAT's mode does not apply to an existing file, and umask
    return os.fspath(path)


@pytest.fixture
def key_file(tmp_path):
    """The fleet's shared key: 64 random hex digits and a newline, mode 0600."""
    return write_key_file(tmp_path / "shared-key")


def shared_section(endpoint, key_file, acl=False, **kw):  # kw may name another key_file
    """[shared] for one host. endpoint: a Redis, a Cutter, Sentinels or a
    dict of [shared] keys. acl=True runs tokend as the ACL user."""
    sec = dict(endpoint if isinstance(endpoint, dict) else endpoint.shared())
    sec.update({"key_file": key_file, "timeout": f"{50 * SLOW}ms", "lease_wait": "2s", "prefix": PREFIX})
    if acl:
        node = endpoint.master if isinstance(endpoint, Sentinels) else endpoint
        sec.update({"username": TOKEND_USER, "password_file": node.password_file})
    sec.update(kw)
    return sec


def events_up(t):
    """Whether host t reads the fleet's events stream (its /metrics says so)."""
    for line in t.get("/metrics").body.decode().splitlines():
        if line.startswith("tokend_shared_events_up "):
            return float(line.rsplit(" ", 1)[1]) == 1
    return False


@pytest.fixture
def make_fleet(make_tokend, key_file):
    """make(stub, redis, n, sections=None, shared=None, acl=False, events=True, **tokend_kw):
    n started Tokend processes sharing `redis` (a Redis, Sentinels, Cutter,
    or a list with one per host) and key_file. sections: the other sections
    of every host; shared: more [shared] keys. events: wait until every
    host reads the fleet's events stream (a host reads only events made
    after its reader starts, and that follows readiness), so that a drop or
    flush the test makes next reaches each host as an event."""

    def make(stub, redis, n, sections=None, shared=None, acl=False, events=True, **kw):
        endpoints = redis if isinstance(redis, (list, tuple)) else [redis] * n
        assert len(endpoints) == n
        hosts = []
        for ep in endpoints:
            secs = {k: dict(v) for k, v in (sections or {}).items()}
            more = dict(shared or {})
            secs["shared"] = shared_section(ep, more.pop("key_file", key_file), acl=acl, **more)
            hosts.append(make_tokend(stub, secs, **kw))
        if events:
            wait_for(lambda: all(events_up(h) for h in hosts), timeout=10, interval=0.02,
                     what="every host to read the fleet's events stream")
        return hosts

    return make
