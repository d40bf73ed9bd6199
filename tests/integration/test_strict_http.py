"""Strict HTTP: hostile and malformed requests, against the real daemon and
the real stand-in. The routes' methods and paths; many idle connections,
oversized headers and bodies, Expect: 100-continue, pipelining, garbage on
the wire, running out of file descriptors; folded, repeated and conflicting
headers, and transfer codings. Each test checks what a caller would notice:
the answer (in tokend's JSON wherever tokend, not libmicrohttpd, answers),
that nothing was minted, and that tokend still serves.

The limits under test: [server] max_connections (4096, lowered to fit
RLIMIT_NOFILE) and idle_timeout (30 s); libmicrohttpd's memory per
connection (MHD_OPTION_CONNECTION_MEMORY_LIMIT in src/api.c), which caps the
request line and headers (431 past it, 414 for a request line alone); and
[frontend] max_body (64 KiB, 413 past it).

All traffic goes to 127.0.0.1, and every connection a test opens is closed
before it ends."""
import contextlib
import json
import os
import random
import resource
import select
import signal
import socket
import subprocess
import time

import pytest

import conftest
from conftest import SLOW, wait_for
from sec_helpers import USER_HEADER, assert_error
from sec_helpers import front  # noqa: F401 (a fixture)

IDLE = 2000

BIG_HEADERS = 64 * 1024


def libmicrohttpd_version():
    """The libmicrohttpd tokend was built against (the tests run where it was
    built: the release's own package), as a tuple such as (0, 9, 75)."""
    out = subprocess.run(["pkg-config", "--modversion", "libmicrohttpd"], capture_output=True,
                         text=True, check=True).stdout
    return tuple(int(part) for part in out.strip().split(".")[:3])


# Debian 12 has 0.9.75, Debian 13 1.0.1. Some of 0.9.75's faults are fixed
# in 1.0: a test of one is a strict expected failure only where it is not.
MHD = libmicrohttpd_version()

MHD_ANSWERS_ITSELF = pytest.mark.xfail(MHD >= (1, 0, 0), strict=True,
                                       reason="libmicrohttpd 1.0.1 refuses this itself, in HTML")


def open_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def accepted(t, by_state=False):
    """How many TCP connections on its listening port tokend holds open
    (its own sockets, from /proc, so nothing in the listen backlog counts);
    by_state: how many in each TCP state (hex, as /proc names them)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{t.proc.pid}/fd"):
        try:
            link = os.readlink(f"/proc/{t.proc.pid}/fd/{fd}")
        except FileNotFoundError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    n, states = 0, {}
    with open(f"/proc/{t.proc.pid}/net/tcp") as f:
        next(f)
        for line in f:
            field = line.split()
            local_port, state, inode = int(field[1].split(":")[1], 16), field[3], field[9]
            # ESTABLISHED or CLOSE_WAIT, not the LISTEN socket itself
            mine = local_port == t.port and state in ("01", "08") and inode in inodes
            n += mine
            if mine:
                states[state] = states.get(state, 0) + 1
    return states if by_state else n


def raise_fd_limit(need):
    """Raises this process's RLIMIT_NOFILE to at least need (up to the hard
    limit, or past it as root), or skips: the test cannot be done here."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= need:
        return
    for limit in ((hard, hard), (need, need)):
        try:
            if limit[0] >= need or limit[0] == resource.RLIM_INFINITY:
                resource.setrlimit(resource.RLIMIT_NOFILE, limit)
                return
        except (ValueError, OSError):
            pass
    pytest.skip(f"needs {need} file descriptors; RLIMIT_NOFILE is {soft}/{hard}")


@contextlib.contextmanager
def connections(t, n, first_bytes=lambda i: b""):
    """n TCP connections to tokend, all established (the kernel's handshake
    done), each having sent first_bytes(i). Closed on the way out."""
    socks = []
    try:
        for i in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.setblocking(False)
            err = s.connect_ex((t.host, t.port))
            assert err in (0, 115), f"connect: {os.strerror(err)}"  # EINPROGRESS
        pending = {s.fileno(): s for s in socks}
        poller = select.poll()
        for fd in pending:
            poller.register(fd, select.POLLOUT)

        def connected():
            for fd, _ in poller.poll(100):
                s = pending.pop(fd)
                poller.unregister(fd)
                assert s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
            return not pending

        wait_for(connected, timeout=30, what=f"{n} connections to be established")
        for i, s in enumerate(socks):
            data = first_bytes(i)
            if data:
                assert s.send(data) == len(data)
        yield socks
    finally:
        for s in socks:
            s.close()


# libmicrohttpd 0.9.75's epoll loop takes at most 128 events per epoll_wait
# and, when it got exactly 128, waits again with its whole timeout (up to
# idle_timeout) before handling any of them: a burst of 128, 256... ready
# connections followed by silence was left unanswered until some other
# event came. A CI run on a loaded machine left 896 (7 x 128) closed
# connections held for good that way. tokend waits on the epoll set with a
# thread of its own and lets the library run without waiting (src/listen.c).
# The burst is made as a loaded machine makes it: tokend is
# stopped while the clients send, then let go. Counts on either side of a
# batch: what else is in the poll set shifts the boundary by one.
@pytest.mark.parametrize("n", [127, 128, 129, 1023, 1024, 1025])
def test_a_burst_of_requests_is_answered_without_waiting_for_another_event(stub, make_tokend, n):
    raise_fd_limit(n + 200)
    t = make_tokend(stub, {"server": {"idle_timeout": "10m"}})
    tok = serves(t, "burst")
    req = b"GET /v1/token?user_id=burst HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    with connections(t, n) as socks:
        wait_for(lambda: accepted(t) >= n, timeout=30, what=f"tokend to accept {n} connections")
        t.signal(signal.SIGSTOP)
        try:
            for s in socks:
                assert s.send(req) == len(req)
        finally:
            t.signal(signal.SIGCONT)
        got = {s.fileno(): b"" for s in socks}
        poller = select.poll()
        for s in socks:
            poller.register(s, select.POLLIN)

        def answered():
            for fd, _ in poller.poll(100):
                chunk = os.read(fd, 65536)
                got[fd] += chunk
                if not chunk or got[fd].endswith(b"}"):
                    poller.unregister(fd)
            return all(g.endswith(b"}") for g in got.values())

        try:
            wait_for(answered, timeout=30, what="every request of the burst to be answered")
        except AssertionError:
            waiting = sum(not g.endswith(b"}") for g in got.values())
            raise AssertionError(f"{waiting} of {n} requests sent together are still unanswered after 30 s") from None
        assert all(g.startswith(b"HTTP/1.1 200 ") and tok.encode() in g for g in got.values())
    # and closing them all at once lets every one go
    wait_for(lambda: accepted(t) == 0, timeout=30, what="tokend to close the connections")


def test_two_server_threads_share_the_listener_and_stop_cleanly(stub, make_tokend):
    """[server] threads = 2: two libmicrohttpd daemons on one socket, each
    polled by a thread of tokend's (src/listen.c). Every caller is served,
    hits and misses (a miss is resumed from another thread, which must wake
    the right one), and a SIGTERM stops both."""
    t = make_tokend(stub, {"server": {"threads": "2"}})
    users = [f"pair{i % 20}" for i in range(200)]
    first = conftest.concurrently(lambda u: serves(t, u), users, 50)
    again = conftest.concurrently(lambda u: serves(t, u), users, 50)
    assert first == again
    assert len({r["user_id"] for r in stub.token_requests()}) == 20
    assert t.stop() == 0


def exchange(t, data, timeout=10.0):
    """Sends data on a new connection and reads until tokend closes it or
    the deadline passes: (bytes received, closed by tokend)."""
    with socket.create_connection((t.host, t.port), timeout=timeout * SLOW) as s:
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before we were done talking: read what it said
        got = b""
        try:
            while True:
                b = s.recv(65536)
                if not b:
                    return got, True
                got += b
        except ConnectionResetError:
            return got, True
        except socket.timeout:
            return got, False


def parse_responses(data):
    """Splits a byte stream into HTTP/1.1 responses: [(status, headers, body)]."""
    out = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        assert sep, f"an incomplete response: {data[:200]!r}"
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
        n = int(headers["content-length"])
        out.append((status, headers, rest[:n]))
        data = rest[n:]
    return out


def raw_answer(t, data, timeout=10.0):
    """(status, headers, body, closed) of the one answer to raw bytes."""
    got, closed = exchange(t, data, timeout=timeout)
    assert got, f"no answer at all (connection {'closed' if closed else 'left open'})"
    head, _, body = got.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    return int(lines[0].split(" ")[1]), headers, body, closed


def assert_json_refusal(t, data, status=400, error="invalid_request"):
    code, headers, body, closed = raw_answer(t, data)
    assert code == status, (code, body[:300])
    assert headers.get("content-type") == "application/json", headers
    assert json.loads(body[:int(headers["content-length"])])["error"] == error
    return headers, closed


def get_with(headers, version=b"1.1", path=b"/v1/token?user_id=alice"):
    return b"GET " + path + b" HTTP/" + version + b"\r\n" + headers + b"\r\n"


def healthy(t):
    """For wait_for: True once /healthz answers 200 on a new connection."""
    try:
        return t.get("/healthz", timeout=2).status == 200
    except OSError:
        return False


def serves(t, user):
    """tokend answers a token request: what every caller needs."""
    r = t.token(user)
    assert r.status == 200, r
    assert r.json()["access_token"]
    return r.json()["access_token"]


# ---------------------------------------------------------------- routes and methods


def test_unknown_route_is_404(stub, tokend):
    r = tokend.get("/v1/tokens?user_id=a")
    assert r.status == 404 and r.json()["error"] == "not_found"
    assert stub.token_requests() == []


def test_wrong_method_is_405_with_allow(stub, tokend):
    r = tokend.request("POST", "/v1/token?user_id=a", body=b"")
    assert r.status == 405
    assert r.header("allow") == "GET, DELETE"
    assert r.json()["error"] == "invalid_request"
    assert stub.token_requests() == []


def test_body_on_get_is_refused(stub, tokend):
    r = tokend.request("GET", "/v1/token?user_id=a", body=b"x" * 100)
    assert r.status == 400
    assert stub.token_requests() == []


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


def test_a_query_of_more_than_16_parameters_is_refused_and_mints_nothing(stub, tokend):
    # the transport hands the routes at most 16 parameters: a longer query
    # is refused whole rather than read in part
    r = tokend.get("/v1/token?" + "&".join(["scope=a"] * 16 + ["user_id=alice"]))
    assert_error(r, 400, "invalid_request")
    assert "16" in r.json()["error_description"], r.json()
    assert tokend.get("/v1/token?user_id=alice&min_ttl=0&scope=connect:recommendations").status == 200
    assert stub.stats()["mints"] == 1


@pytest.mark.parametrize("target", ["/v1/cache/flush%00/anything", "/v1/cache/flush%00", "/metrics%00.png",
                                    "/healthz%00", "/v1/token%00x?user_id=alice"])
def test_a_nul_in_the_path_is_no_route(stub, tokend, target):
    """The decoded path must be the route's exactly: %00 does not cut it
    short (a flush through /v1/cache/flush%00/anything, /metrics served as
    /metrics%00.png)."""
    assert serves(tokend, "cached")
    method = "POST" if "flush" in target else "GET"
    got, _ = exchange(tokend, f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                              f"Content-Length: 0\r\n\r\n".encode())
    (status, headers, body), = parse_responses(got)
    assert status == 404, got[:300]
    assert headers["content-type"] == "application/json" and json.loads(body)["error"] == "not_found"
    assert b"tokend_" not in body
    # nothing was flushed: the cached token is still a hit
    r = tokend.token("cached")
    assert r.status == 200 and r.header("x-cache") == "hit", r
    assert len(stub.token_requests()) == 1


# ---------------------------------------------------------------- many connections


def test_2000_idle_connections_do_not_stop_other_callers(stub, make_tokend):
    raise_fd_limit(IDLE + 200)
    # idle_timeout well past the test's length: the connections must really
    # be held, not reaped, while the callers are served
    t = make_tokend(stub, {"server": {"idle_timeout": "10m"}})
    before = serves(t, "regular")
    # half say nothing, half send the start of a request and stall (slowloris)
    stall = b"GET /v1/token?user_id=stalled HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "
    with connections(t, IDLE, lambda i: stall if i % 2 else b"") as socks:
        # accepted by tokend, not waiting in the kernel's backlog
        wait_for(lambda: accepted(t) >= IDLE, timeout=30,
                 what=f"tokend to accept {IDLE} connections")
        assert t.token("regular").json()["access_token"] == before  # a hit
        serves(t, "newcomer")  # a miss: a mint through Instacart
        assert t.get("/healthz").status == 200
        # and the idle ones are still open, not dropped to make room
        for s in socks[:10]:
            with pytest.raises(BlockingIOError):
                s.recv(1)
    assert [r["user_id"] for r in stub.token_requests()] == ["regular", "newcomer"]
    # and they are let go once their clients go
    try:
        wait_for(lambda: accepted(t) == 0, timeout=30, what="tokend to close the connections")
    except AssertionError:
        # once seen on Debian 13 under CI's load, not reproduced since: say what was left
        raise AssertionError(f"tokend still holds {accepted(t, by_state=True)} of the connections its "
                             f"clients closed 30 s ago (01 ESTABLISHED, 08 CLOSE_WAIT)") from None


# ---------------------------------------------------------------- header limits


@pytest.mark.parametrize("shape", ["many-headers", "one-header"])
def test_64k_of_headers_gets_431_and_the_connection_closed(stub, tokend, shape):
    if shape == "many-headers":
        headers = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"a" * 1000) for i in range(BIG_HEADERS // 1000))
    else:
        headers = b"X-Pad: " + b"a" * BIG_HEADERS + b"\r\n"
    req = b"GET /v1/token?user_id=big HTTP/1.1\r\nHost: 127.0.0.1\r\n" + headers + b"\r\n"
    got, closed = exchange(tokend, req)
    assert got.startswith(b"HTTP/1.1 431 "), got[:200]
    assert closed, "the connection must be closed after a 431"
    (status, headers, _), = parse_responses(got)
    assert headers.get("connection", "").lower() == "close"
    assert stub.token_requests() == []
    serves(tokend, "after-big-headers")


def padded(user, size):
    return get_with(b"Host: 127.0.0.1\r\nConnection: close\r\nX-Pad: " + b"a" * size + b"\r\n",
                    path=b"/v1/token?user_id=" + user.encode())


def test_headers_over_5_kib_get_431_in_json_and_mint_nothing(stub, tokend):
    for size in range(5056, 5600, 128):
        assert_json_refusal(tokend, padded(f"pad{size}", size), 431, "request_header_fields_too_large")
    assert stub.token_requests() == []


def test_no_header_block_mints_without_an_answer(stub, tokend):
    """From 4.5 to 7 KiB of headers, 64 bytes at a time: a request that
    mints is one that was answered 200 (libmicrohttpd closes some without
    an answer: see the expected failure below)."""
    answered = []
    for size in range(4608, 7 * 1024, 64):
        got, _ = exchange(tokend, padded(f"pad{size}", size))
        answered.append((f"pad{size}", got[:12]))
    assert [r["user_id"] for r in stub.token_requests()] == [u for u, s in answered if s == b"HTTP/1.1 200"]


# Measured with a bare libmicrohttpd server on tokend's flags and 6 KiB of
# connection memory: a header block of about 5.7 to 5.8 KiB fits, but leaves
# no room in that memory for the answer's own headers, and the connection is
# closed without one ("failed to create response header"), whatever the
# handler queued; past it, libmicrohttpd answers 431 itself. 0.9.75 and
# 1.0.1 alike.
@pytest.mark.xfail(MHD <= (1, 0, 1), strict=True,
                   reason="libmicrohttpd 0.9.75 and 1.0.1 close without an answer when the headers fill its memory")
def test_every_header_block_gets_an_answer(stub, tokend):
    for size in range(5568, 5888, 32):
        got, _ = exchange(tokend, padded(f"pad{size}", size))
        assert got, f"{size} bytes of headers: no answer"


@pytest.mark.xfail(strict=True, reason="libmicrohttpd (0.9.75 and 1.0.1) answers a header block past its "
                   "connection memory itself, in HTML, before any handler runs")
def test_headers_far_over_the_limit_get_431_in_json(stub, tokend):
    assert_json_refusal(tokend, get_with(b"Host: 127.0.0.1\r\nX-Pad: " + b"a" * 65536 + b"\r\n"), 431,
                        "request_header_fields_too_large")


# ---------------------------------------------------------------- bodies, and Expect: 100-continue


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_dropin_body_over_64k_gets_413_and_the_connection_serves_on(stub, tokend, framing):
    body = b'{"grant_type":"client_credentials"}' + b" " * (64 * 1024)
    if framing == "chunked":  # no length announced: tokend finds out as it reads
        headers = b"Transfer-Encoding: chunked\r\n"
        payload = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 4096]), body[i:i + 4096])
                           for i in range(0, len(body), 4096)) + b"0\r\n\r\n"
    else:
        headers = b"Content-Length: %d\r\n" % len(body)
        payload = body
    req = (b"POST /v2/oauth/token HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n" +
           headers + b"\r\n" + payload +
           b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    got, closed = exchange(tokend, req)
    assert closed
    (s1, h1, b1), (s2, _, b2) = parse_responses(got)
    # the body was read and dropped, then refused in tokend's own JSON
    assert s1 == 413
    assert h1["content-type"] == "application/json"
    assert b'"error":"request_too_large"' in b1
    # ... and the same connection answered the next request
    assert s2 == 200 and b2 == b'{"status":"ok"}'
    assert stub.token_requests() == []


def expect_continue(t, extra, length):
    """Sends headers with Expect: 100-continue and no body: what comes back."""
    import socket
    req = (b"POST /v2/oauth/token HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
           b"Expect: 100-continue\r\nContent-Length: %d\r\n" % length) + extra + b"\r\n"
    with socket.create_connection((t.host, t.port), timeout=10) as s:
        s.sendall(req)
        return recv_until(s, b"\r\n\r\n")


def recv_until(s, marker):
    """What arrives on socket s until marker has, or until it is closed."""
    got = b""
    while marker not in got:
        b = s.recv(65536)
        if not b:
            break
        got += b
    return got


def test_a_body_over_max_body_is_refused_before_100_continue(stub, tokend):
    got = expect_continue(tokend, b"", 100 * 1024 ** 3)
    assert got.startswith(b"HTTP/1.1 413 "), got[:200]


def test_a_cross_site_post_is_refused_before_100_continue(stub, tokend):
    got = expect_continue(tokend, b"Origin: https://evil.example\r\n", 40)
    assert got.startswith(b"HTTP/1.1 403 "), got[:200]


def test_an_allowed_post_still_gets_100_continue(stub, tokend):
    assert expect_continue(tokend, b"", 40).startswith(b"HTTP/1.1 100 ")


# ---------------------------------------------------------------- pipelining, and clients that half-close


def test_pipelined_requests_are_each_answered_in_order(stub, tokend):
    def get(path, last=False):
        return (b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n%s\r\n" %
                (path.encode(), b"Connection: close\r\n" if last else b""))

    # one send; the second user's miss suspends the connection while the
    # rest of the pipeline waits in its buffer
    req = (get("/v1/token?user_id=pipe1") + get("/healthz") + get("/v1/token?user_id=pipe2") +
           get("/no/such/route") + get("/v1/token?user_id=pipe1") + get("/v1/token", last=True))
    got, closed = exchange(tokend, req)
    assert closed
    rs = parse_responses(got)
    assert [s for s, _, _ in rs] == [200, 200, 200, 404, 200, 400]
    (_, h1, b1), (_, _, b2), (_, h3, b3), _, (_, h5, b5), _ = rs
    assert b2 == b'{"status":"ok"}'
    assert [h1["x-cache"], h3["x-cache"], h5["x-cache"]] == ["miss", "miss", "hit"]
    tok1, tok3, tok5 = (json.loads(b)["access_token"] for b in (b1, b3, b5))
    assert tok1 == tok5 != tok3
    assert [r["user_id"] for r in stub.token_requests()] == ["pipe1", "pipe2"]


# Measured with a bare libmicrohttpd server (suspend on the request, resume
# 300 ms later, answer; tests/unit/test-libmicrohttpd.c): a client that sent
# its whole request and then shut down its side (shutdown(SHUT_WR), as
# `nc -q` does) never gets the answer while another connection is open (alone,
# it does): the connection is closed when it is resumed. 0.9.75 and 1.0.1,
# with epoll and with poll alike; tokend must suspend a request that waits
# on a mint, so there is nothing to do about it from outside the library.
@pytest.mark.xfail(MHD <= (1, 0, 1), strict=True,
                   reason="libmicrohttpd 0.9.75 and 1.0.1 close a suspended half-closed connection unanswered")
def test_a_client_that_half_closes_after_its_request_gets_its_answer(stub, tokend):
    import socket
    stub.fault(match_path="/v2/oauth/token", action="ok", delay_ms=300, count=5)
    with socket.create_connection((tokend.host, tokend.port), timeout=10):  # another connection, idle
        for i in range(5):
            with socket.create_connection((tokend.host, tokend.port), timeout=10) as s:
                s.sendall(b"GET /v1/token?user_id=half%d HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % i)
                s.shutdown(socket.SHUT_WR)
                got = recv_until(s, b"}")
            assert got.startswith(b"HTTP/1.1 200 "), (i, got[:200])
    assert len(stub.token_requests()) == 5


# ---------------------------------------------------------------- headers the guard reads, and the body's framing


# What libmicrohttpd makes of these, measured with a bare server on the flags
# src/api.c uses (0.9.75 on Debian 12, 1.0.1 on Debian 13, the option
# MHD_OPTION_STRICT_FOR_CLIENT at its default, 0):
# - a folded header line: 0.9.75 glues the continuation onto the header's
#   NAME ("Host: evil\r\n x" reaches tokend as a header "Hostx"), so the
#   folded header vanishes; 1.0.1 glues it onto the value, the CR LF turned
#   into two spaces;
# - `Host : x`: 0.9.75 passes a header named "Host "; 1.0.1 refuses it itself;
# - two different Content-Length: both reach tokend, the first one frames;
# - an unknown transfer coding: 0.9.75 reads the body until the client
#   closes, so the request is never answered; 1.0.1 refuses it itself.
# Where 1.0.1 refuses a request itself, it answers in HTML, before tokend
# sees it: the JSON checks below are strict expected failures there.

FOLDS = {
    "host-1.1": (b"1.1", b"Host: evil.example\r\n 127.0.0.1\r\n"),
    "host-1.0": (b"1.0", b"Host: evil.example\r\n x\r\n"),
    "origin": (b"1.1", b"Host: 127.0.0.1\r\nOrigin: https://evil.example\r\n\tx\r\n"),
    "sec-fetch-site": (b"1.1", b"Host: 127.0.0.1\r\nSec-Fetch-Site: cross-site\r\n x\r\n"),
    "x-forwarded-for": (b"1.1", b"Host: 127.0.0.1\r\nX-Forwarded-For: 10.0.0.1\r\n x\r\n"),
    "x-real-ip": (b"1.1", b"Host: 127.0.0.1\r\nX-Real-IP: 10.0.0.1\r\n x\r\n"),
}


@pytest.mark.parametrize("version,headers", FOLDS.values(), ids=FOLDS.keys())
def test_a_folded_header_the_guard_reads_is_refused(stub, tokend, version, headers):
    assert_json_refusal(tokend, get_with(headers, version))
    assert stub.token_requests() == []


def test_a_folded_user_header_is_refused_as_folded(stub, front):
    req = get_with(b"Host: 127.0.0.1\r\nAuthorization: Bearer %s\r\n%s: alice\r\n mallory\r\n" %
                   (front.keys["fe"].encode(), USER_HEADER.encode()), path=b"/v1/frontend/token")
    code, headers, body, _ = raw_answer(front, req)
    assert code == 400, body
    assert "fold" in json.loads(body)["error_description"]
    assert stub.token_requests() == []


@pytest.mark.parametrize("version", [b"1.0", b"1.1"])
def test_whitespace_before_the_colon_is_refused(stub, tokend, version):
    data = get_with(b"Host : evil.example\r\n", version)
    if MHD >= (1, 0, 0):  # refused by libmicrohttpd itself, in HTML
        assert raw_answer(tokend, data)[0] == 400
    else:
        assert_json_refusal(tokend, data)
    assert stub.token_requests() == []


@pytest.mark.parametrize("headers", [b"Host: 127.0.0.1\r\nHost: evil.example\r\n",
                                     b"Host: 127.0.0.1\r\nOrigin: https://shop.example\r\nOrigin: https://evil.example\r\n"],
                         ids=["host", "origin"])
def test_a_repeated_header_the_guard_reads_is_refused(stub, tokend, headers):
    """Read one way here (the first), maybe another by whatever relayed it."""
    assert raw_answer(tokend, get_with(headers))[0] == 400
    assert stub.token_requests() == []


def test_the_user_header_needs_a_frontend_key_whatever_header_follows_it(stub, front):
    """The guard finds the user header wherever it is in the header block,
    another header after it included: a backend key does not pass with it."""
    req = get_with(b"Host: 127.0.0.1\r\nConnection: close\r\nAuthorization: Bearer %s\r\n"
                   b"%s: mallory\r\nAccept: */*\r\n" % (front.keys["backend"].encode(), USER_HEADER.encode()))
    code, _, body, _ = raw_answer(front, req)
    assert code == 403, body
    assert stub.token_requests() == []


def dropin_post(extra, body=b'{"grant_type":"client_credentials"}'):
    return (b"POST /v2/oauth/token HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n" + extra +
            b"\r\n" + body)


def test_two_different_content_lengths_are_refused_and_the_connection_closed(stub, tokend):
    body = b'{"grant_type":"client_credentials"}'
    _, closed = assert_json_refusal(tokend, dropin_post(b"Content-Length: %d\r\nContent-Length: %d\r\n" %
                                                        (len(body), len(body) + 5), body))
    assert closed
    assert stub.token_requests() == []


def test_a_repeated_equal_content_length_is_one(stub, tokend):
    body = b'{"grant_type":"client_credentials"}'
    code, _, _, _ = raw_answer(tokend, dropin_post(b"Content-Length: %d\r\nContent-Length: %d\r\nConnection: close\r\n"
                                                    % (len(body), len(body)), body))
    assert code == 200


CODINGS = {
    "xchunked": b"Transfer-Encoding: xchunked\r\n",
    "identity-chunked": b"Transfer-Encoding: identity, chunked\r\n",
    "gzip": b"Transfer-Encoding: gzip\r\n",
}


@pytest.mark.parametrize("te", [pytest.param(v, marks=MHD_ANSWERS_ITSELF) for v in CODINGS.values()],
                         ids=CODINGS.keys())
def test_an_unknown_transfer_coding_is_refused_in_json(stub, tokend, te):
    _, closed = assert_json_refusal(tokend, dropin_post(te, b"23\r\n" + b'{"grant_type":"client_credentials"}' +
                                                        b"\r\n0\r\n\r\n"))
    assert closed
    assert stub.token_requests() == []


def test_chunked_and_content_length_together_are_refused(stub, tokend):
    data = dropin_post(b"Transfer-Encoding: chunked\r\nContent-Length: 35\r\n",
                       b"23\r\n" + b'{"grant_type":"client_credentials"}' + b"\r\n0\r\n\r\n")
    if MHD >= (1, 0, 0):
        assert raw_answer(tokend, data)[0] == 400
    else:
        assert assert_json_refusal(tokend, data)[1]
    assert stub.token_requests() == []


# ---------------------------------------------------------------- garbage


# libmicrohttpd 0.9.75 hands the request target over as a C string: a raw
# NUL in it cuts the query short, so user_id=a<NUL>b would be served as
# user "a". No option of 0.9.75 refuses it (MHD_OPTION_STRICT_FOR_CLIENT
# included); tokend refuses it itself, from its URI callback (src/api.c,
# on_target). 1.0.1 (Debian 13) drops such a connection itself, before
# tokend sees the request (tests/unit/test-libmicrohttpd.c shows both).
GARBAGE = {
    "random-binary": random.Random(8).randbytes(4096),
    "lone-crlf": b"\r\n\r\n",
    "http-0.9": b"GET /v1/token?user_id=old\r\n",
    "absurd-method": b"FROBNICATE" * 100 + b" /v1/token?user_id=x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    "100k-request-line": b"GET /v1/token?user_id=" + b"a" * 100 * 1024 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    "header-without-colon": b"GET /v1/token?user_id=x HTTP/1.1\r\nHost: 127.0.0.1\r\nnonsense\r\n\r\n",
    "nul-in-request-line": b"GET /v1/token?user_id=a\x00b HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    # the NUL followed by what looks like the version: still one request line
    "nul-then-a-version": b"GET /v1/token?user_id=a\x00HTTP/1.1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    "nul-in-the-path": b"GET /v1/tok\x00en?user_id=a HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    # 0.9.75 reads the method up to the NUL: it would be served as GET
    "nul-ending-the-method": b"GET\x00 /v1/token?user_id=a HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    "nul-in-the-method": b"GET\x00X /v1/token?user_id=a HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    "bad-content-length": b"POST /v2/oauth/token HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: -5\r\n\r\n{}",
    "bad-chunk-size": (b"POST /v2/oauth/token HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                       b"zz\r\n{}\r\n0\r\n\r\n"),
    "http-2-preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00" * 64,
    # 400: from libmicrohttpd itself on 1.0.1, from tokend on 0.9.75 (which
    # passes such a request on: unless tokend refuses it, it is served a token)
    "http-1.1-without-host": b"GET /v1/token?user_id=nohost HTTP/1.1\r\n\r\n",
}


@pytest.mark.parametrize("garbage", GARBAGE.values(), ids=GARBAGE.keys())
def test_garbage_is_refused_or_dropped_and_tokend_serves_on(stub, make_tokend, garbage):
    # a short idle timeout: a client that sent garbage and went quiet is
    # dropped, not kept forever
    t = make_tokend(stub, {"server": {"idle_timeout": "2s"}})
    got, closed = exchange(t, garbage, timeout=20.0)
    assert closed, f"tokend kept the connection open past its idle timeout: {got[:200]!r}"
    if got:
        # a refusal: 4xx, or 505 for a protocol version it does not speak
        status = int(got.split(b" ", 2)[1])
        assert 400 <= status < 500 or status == 505, got[:300]
    assert stub.token_requests() == []
    serves(t, "after-garbage")
    assert t.proc.poll() is None


def test_a_nul_in_the_request_line_is_refused_in_json_or_dropped(stub, tokend):
    got, _ = exchange(tokend, b"GET /v1/token?user_id=a\x00b HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    if MHD >= (1, 0, 0):
        assert got == b"", got[:300]  # libmicrohttpd drops it before tokend sees it
    else:
        head, _, body = got.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400 "), got[:300]
        assert b"Content-Type: application/json" in head, head
        assert json.loads(body)["error_description"].startswith("the request line holds a NUL byte"), body
    assert stub.token_requests() == []
    assert tokend.get("/v1/token?user_id=a").status == 200  # and the user "a" is served as usual


@pytest.mark.skipif(MHD >= (1, 0, 0), reason="libmicrohttpd 1.0 decides on extra spaces itself")
def test_extra_spaces_around_the_target_are_no_nul(stub, tokend):
    # the NUL check reads what 0.9.75 left between the method, the target
    # and the version: spaces it skipped must not look like a NUL
    got, _ = exchange(tokend, b"GET   /v1/token?user_id=spaces HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert got.startswith(b"HTTP/1.1 200 "), got[:300]


# ---------------------------------------------------------------- file descriptors


@pytest.mark.parametrize("how", ["limit-at-start", "limit-lowered-while-running"])
def test_running_out_of_file_descriptors_refuses_connections_then_recovers(stub, make_tokend, monkeypatch, how):
    """At start, tokend fits max_connections under a low RLIMIT_NOFILE and
    says so; lowered behind its back, accept() fails with EMFILE. Either way
    the connections past the limit wait or are refused, tokend stays up, and
    serves again once they go."""
    limit = 64
    raise_fd_limit(4 * limit + 100)
    if how == "limit-at-start":
        monkeypatch.setattr(conftest, "WRAPPER",
                            ["bash", "-c", f'ulimit -n {limit} && exec "$@"', "tokend-ulimit"] + conftest.WRAPPER)
    t = make_tokend(stub)
    cached = serves(t, "cached")
    if how == "limit-at-start":
        assert "does not fit the file descriptor limit" in t.log()
    else:
        limit = open_fds(t.proc.pid) + 16
        resource.prlimit(t.proc.pid, resource.RLIMIT_NOFILE, (limit, limit))

    with connections(t, 4 * limit):
        if how == "limit-lowered-while-running":
            # every descriptor it may have is in use
            wait_for(lambda: open_fds(t.proc.pid) >= limit, what="tokend to run out of descriptors")
        else:
            # the 16 connections it lowered max_connections to
            wait_for(lambda: accepted(t) == 16, what="tokend to fill its connection limit")
        assert t.proc.poll() is None, "tokend died out of file descriptors"
        assert open_fds(t.proc.pid) <= limit
    assert t.proc.poll() is None, "tokend died out of file descriptors"
    # once they go: a hit, and a miss (a new connection to Instacart)
    wait_for(lambda: healthy(t), timeout=30, what="tokend to serve again")
    assert serves(t, "cached") == cached
    serves(t, "fresh")
    assert t.stop() == 0


# libmicrohttpd 0.9.75 and 1.0.1 (Debian 12 and 13) with MHD_USE_EPOLL: when
# a client's partial request and its FIN arrive together (it sent part of a
# request and left), the connection is never seen to close; it holds its
# slot, in CLOSE_WAIT, until the idle timeout. Reproduced without tokend
# (tests/unit/test-libmicrohttpd.c, which notices a fixed library); MHD_USE_POLL
# is not affected, but accepts one connection a turn (src/listen.c). Not
# strict: the FIN must arrive with the partial request, which timing decides;
# on Debian 13 it passed once in five runs here.
@pytest.mark.xfail(strict=False, reason="libmicrohttpd 0.9.75 and 1.0.1 with epoll keep such connections until idle_timeout")
def test_clients_that_leave_mid_request_do_not_hold_connection_slots(stub, make_tokend):
    t = make_tokend(stub, {"server": {"max_connections": "16", "idle_timeout": "1h"}})
    for _ in range(200):
        with socket.create_connection((t.host, t.port), timeout=10 * SLOW) as s:
            s.sendall(b"GET /v1/token?user_id=gone HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    wait_for(lambda: healthy(t), timeout=10, what="tokend to serve once the clients have left")
    assert stub.token_requests() == []


# ---------------------------------------------------------------- connections across listeners


def held_answers(socks, settle=1.0):
    """Sends one keep-alive request on each socket and reads, all held open:
    how many got an answer. Past its connection limit tokend closes a
    connection unanswered or leaves it in the listen backlog, so once no
    socket has moved for `settle` seconds the count is final."""
    got = {s.fileno(): b"" for s in socks}
    closed = set()
    poller = select.poll()
    for s in socks:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        poller.register(s.fileno(), select.POLLIN)

    def answered():
        return sum(1 for v in got.values() if v.startswith(b"HTTP/1.1 200 ") and b"\r\n\r\n" in v)

    deadline = time.monotonic() + 15 * SLOW
    last_move = time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - last_move < settle * SLOW:
        for fd, _ in poller.poll(100):
            s = next(x for x in socks if x.fileno() == fd)
            try:
                b = s.recv(4096)
            except ConnectionResetError:
                b = b""
            if not b:
                closed.add(fd)
                poller.unregister(fd)
            got[fd] += b
            last_move = time.monotonic()
        if len(closed) + answered() == len(socks):
            break
    return answered()


def test_max_connections_is_for_the_daemon_not_each_listener(stub, make_tokend, tmp_path):
    """With a TCP and a Unix listener, tokend holds at most max_connections
    connections in all: the file descriptor budget counts them once."""
    from sec_helpers import ShortDir, wait_unix_listening
    d = ShortDir()
    sock = os.path.join(d.path, "tokend.sock")
    socks = []
    try:
        t = make_tokend(stub, {"server": {"listen": f"127.0.0.1:0 unix:{sock}", "max_connections": "4",
                                          "idle_timeout": "1h"}})
        wait_unix_listening(t, sock)
        for _ in range(4):
            socks.append(socket.create_connection((t.host, t.port), timeout=10 * SLOW))
        on_tcp = held_answers(socks)
        for _ in range(4):
            u = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            socks.append(u)
            u.connect(sock)
        on_unix = held_answers(socks[4:])
        assert on_tcp and on_unix, "each listener serves"
        assert on_tcp + on_unix == 4, f"{on_tcp} on TCP and {on_unix} on the Unix socket held at once"
    finally:
        for s in socks:
            s.close()
        d.close()
    wait_for(lambda: healthy(t), what="tokend to serve once the connections are closed")
