"""The settings and the command line as an operator meets them: every key of
the table of settings (read from `instacart-tokend --describe-config=json`,
never from a list kept here) is either applied by a reload or named by it
as needing a restart; --help names every option; --version says what the
build can do and the libraries it runs on."""
import ctypes
import ctypes.util
import grp
import json
import os
import re
import shutil
import signal
import subprocess

import pytest

from conftest import BUILD, TOKEND_EXE, wait_for
from redis_fixture import key_file, make_redis, redis, write_key_file  # noqa: F401 (fixtures)
from sec_helpers import Keys

SOURCE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(*args):
    return subprocess.run([TOKEND_EXE, *args], capture_output=True, text=True, timeout=30)


def table():
    r = run("--describe-config=json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def has_redis_tls():
    return "TLS to Redis: yes" in run("--version").stdout


# ------------------------------------------------------------ a new value for each key

DURATION_UNITS = {"ms": 1, "s": 1000, "m": 60000, "h": 3600000}
SIZE_UNITS = {"B": 1, "KiB": 1024, "MiB": 1024 * 1024}


def _number(text, units, bare):
    m = re.fullmatch(r"(\d+)([A-Za-z]*)", text)
    return int(m.group(1)) * units[m.group(2) or bare]


def derived_value(k):
    """Another valid value for a key whose type says how, or None."""
    d, lo, hi = k["default"], k["min"], k["max"]
    if d is None:
        return None
    if k["type"] == "integer":
        v = int(d) + 1 if int(d) + 1 <= int(hi) else int(d) - 1
        return str(v)
    if k["type"] == "percentage":
        v = int(d[:-1])
        return f"{v + 1 if v + 1 <= int(hi[:-1]) else v - 1}%"
    if k["type"] == "duration":
        v, top = _number(d, DURATION_UNITS, "s"), _number(hi, DURATION_UNITS, "s")
        return f"{v * 2 if 0 < v * 2 <= top else v // 2}ms"
    if k["type"] == "size":
        v, top = _number(d, SIZE_UNITS, "B"), _number(hi, SIZE_UNITS, "B")
        return str(v + 1 if v + 1 <= top else v - 1)
    if k["type"] == "mode":
        return "0640" if d != "0640" else "0600"
    if k["type"] == "boolean":
        return "yes" if d == "no" else "no"
    if k["type"] == "level":
        return "debug" if d != "debug" else "info"
    return None


def string_values(t, stub, tmp_path):
    """Changes for the keys whose valid values depend on this machine: each
    a dict {section: {key: value}}, naming the key itself and any key it
    needs alongside (None removes a key)."""
    secret2 = tmp_path / "client-secret-2"
    shutil.copy(t.secret_path, secret2)
    os.chmod(secret2, 0o600)
    creds = tmp_path / "proxy-credentials"
    creds.write_text("user:password\n")
    os.chmod(creds, 0o600)
    password = tmp_path / "redis-password"
    password.write_text("not-the-password\n")
    os.chmod(password, 0o600)
    ca = tmp_path / "ca.pem"
    if os.path.exists("/etc/ssl/certs/ca-certificates.crt"):
        shutil.copy("/etc/ssl/certs/ca-certificates.crt", ca)
    keys = Keys(tmp_path / "keys", {"k": ("token",)})
    sentinels = {"redis": None, "sentinels": "127.0.0.1:26379 127.0.0.1:26380", "master_name": "other"}
    return {
        ("upstream", "base_url"): {"upstream": {"base_url": stub.base_url.replace("127.0.0.1", "localhost")}},
        ("upstream", "client_id"): {"upstream": {"client_id": "another-client"}},
        ("upstream", "client_secret_file"): {"upstream": {"client_secret_file": str(secret2)}},
        ("upstream", "scope"): {"upstream": {"scope": "connect:other"}},
        ("upstream", "ca_file"): {"upstream": {"ca_file": str(ca)}},
        ("upstream", "proxy"): {"upstream": {"proxy": "http://127.0.0.1:9"}},
        ("upstream", "proxy_credentials_file"): {"upstream": {"proxy": "http://127.0.0.1:9",
                                                              "proxy_credentials_file": str(creds)}},
        ("server", "listen"): {"server": {"listen": "127.0.0.1:0 [::1]:0"}},
        ("server", "socket_group"): {"server": {"socket_group": grp.getgrgid(os.getgid()).gr_name}},
        ("server", "allowed_uids"): {"server": {"allowed_uids": str(os.getuid())}},
        ("server", "allowed_gids"): {"server": {"allowed_gids": str(os.getgid())}},
        ("server", "allowed_hosts"): {"server": {"allowed_hosts": "tokend.internal"}},
        ("server", "allowed_origins"): {"server": {"allowed_origins": "https://shop.example"}},
        ("auth", "keys_file"): {"auth": {"keys_file": keys.path}},
        ("frontend", "user_header"): {"frontend": {"user_header": "X-Site-User"}},
        ("shared", "redis"): {"shared": {"redis": "127.0.0.1:1"}},
        ("shared", "sentinels"): {"shared": sentinels},
        ("shared", "master_name"): {"shared": sentinels},
        ("shared", "username"): {"shared": {"username": "tokend", "password_file": str(password)}},
        ("shared", "password_file"): {"shared": {"password_file": str(password)}},
        ("shared", "key_file"): {"shared": {"key_file": write_key_file(tmp_path / "key-2")}},
        ("shared", "previous_key_file"): {"shared": {"previous_key_file": write_key_file(tmp_path / "key-0")}},
        ("shared", "prefix"): {"shared": {"prefix": "other"}},
        ("shared", "tls_ca_file"): {"shared": {"tls": "yes", "tls_ca_file": str(ca)}},
    }


def named(log, what):
    """The keys a reload's log line names as `what` ("applied" or "restart")."""
    pattern = r"changed (.*): applied$" if what == "applied" else r"changed (.*): these settings need a restart"
    out = set()
    for line in log.splitlines():
        m = re.search(pattern, line)
        if m:
            out.update(m.group(1).split(", "))
    return out


def test_a_reload_applies_each_key_or_names_it_as_needing_a_restart(stub, redis, key_file, make_tokend,
                                                                    tmp_path):
    keys = table()
    assert len(keys) >= 40, "the table of settings looks truncated"
    t = make_tokend(stub, {"shared": {**redis.shared(), "key_file": key_file}})
    base = {s: dict(kv) for s, kv in t.sections.items()}
    values = string_values(t, stub, tmp_path)
    tls = has_redis_tls()
    problems = []

    def reload():
        """SIGHUP; the log lines of that reload once it is done."""
        before = len(t.log())
        t.signal(signal.SIGHUP)
        done = re.compile(r"reloaded |reload refused|reload failed")
        wait_for(lambda: done.search(t.log()[before:]), what="the reload to be logged")
        return t.log()[before:]

    for k in keys:
        name = f"[{k['section']}] {k['key']}"
        change = values.get((k["section"], k["key"]))
        if change is None:
            v = derived_value(k)
            if v is None:
                problems.append(f"{name}: the test has no value to change it to; add one to string_values()")
                continue
            change = {k["section"]: {k["key"]: v}}
        changed = {f"[{s}] {key}" for s, kv in change.items() for key, v in kv.items() if base.get(s, {}).get(key) != v}
        assert name in changed, name
        needs_tls = change.get("shared", {}).get("tls") == "yes"

        t.sections = {s: dict(kv) for s, kv in base.items()}
        for s, kv in change.items():
            t.sections.setdefault(s, {}).update(kv)
        t.write_config()
        log = reload()
        if needs_tls and not tls:
            # a build without TLS to Redis refuses it, and says so
            if "reload refused" not in log or "no TLS for Redis" not in log:
                problems.append(f"{name}: tls = yes was not refused by a build without TLS to Redis: {log}")
        elif "reloaded " not in log:
            problems.append(f"{name}: the reload changing it was refused: {log.strip()}")
        else:
            by_table = {f"[{r['section']}] {r['key']}": r["reload"] for r in keys}
            want_applied = {n for n in changed if by_table[n] == "applies"}
            want_restart = changed - want_applied
            got_applied, got_restart = named(log, "applied"), named(log, "restart")
            if got_applied != want_applied or got_restart != want_restart:
                problems.append(f"{name}: the reload named as applied {sorted(got_applied)} and as needing "
                                f"a restart {sorted(got_restart)}; the table says {sorted(want_applied)} "
                                f"and {sorted(want_restart)}")

        # back to the configuration it started with: nothing is left
        # needing a restart, and what was applied is applied back
        t.sections = {s: dict(kv) for s, kv in base.items()}
        t.write_config()
        log = reload()
        if "reloaded " not in log or named(log, "restart"):
            problems.append(f"{name}: changing it back: {log.strip()}")
        assert t.proc.poll() is None, t.log()
    assert not problems, "\n".join(problems)


def test_a_setting_that_needs_a_restart_keeps_its_running_value_in_status(stub, make_tokend):
    """/v1/status shows the values in use: after a reload, the new one of a
    key a reload applies, the old one of a key that needs a restart."""
    t = make_tokend(stub)
    t.sections.setdefault("cache", {})["max_entries"] = "7"
    t.sections.setdefault("log", {})["level"] = "debug"
    t.write_config()
    before = len(t.log())
    t.signal(signal.SIGHUP)
    wait_for(lambda: "reloaded " in t.log()[before:], what="the reload")
    config = t.get("/v1/status").json()["config"]
    assert config["log"]["level"] == "debug"
    assert config["cache"]["max_entries"] == 100000


# ------------------------------------------------------------ the command line


def getopt_long_options():
    """The long options of src/main.c's getopt table."""
    with open(os.path.join(SOURCE, "src", "main.c")) as f:
        text = f.read()
    body = re.search(r"static const struct option options\[\] = \{(.*?)\n\};", text, re.S)
    assert body, "src/main.c has no getopt table named options[]"
    names = re.findall(r'\{ "([a-z-]+)",', body.group(1))
    assert len(names) >= 5
    return names


def test_help_names_every_option():
    r = run("--help")
    assert r.returncode == 0 and r.stderr == ""
    for name in getopt_long_options():
        assert re.search(rf"--{name}\b", r.stdout), f"--help does not mention --{name}:\n{r.stdout}"
    assert "-c, --config FILE" in r.stdout


def test_an_unknown_option_points_at_help():
    r = run("--no-such-option")
    assert r.returncode == 2 and "--help" in r.stderr


def _library_version(soname, symbol):
    lib = ctypes.CDLL(ctypes.util.find_library(soname) or f"lib{soname}.so")
    fn = getattr(lib, symbol)
    fn.restype = ctypes.c_char_p
    return fn().decode()


def test_version_says_what_the_build_can_do_and_what_it_runs_on():
    r = run("--version")
    assert r.returncode == 0, r.stderr
    lines = dict(line.split(": ", 1) for line in r.stdout.splitlines()[1:])
    with open(os.path.join(BUILD, "meson-info", "intro-projectinfo.json")) as f:
        version = json.load(f)["version"]
    assert r.stdout.splitlines()[0] == f"instacart-tokend {version}"
    with open(os.path.join(BUILD, "build-config.h")) as f:
        built_with_tls = re.search(r"^#define HAVE_HIREDIS_SSL\b", f.read(), re.M) is not None
    assert lines["TLS to Redis"].startswith("yes" if built_with_tls else "no")
    hiredis = subprocess.run(["pkg-config", "--modversion", "hiredis"], capture_output=True, text=True).stdout.strip()
    assert lines["fleet mode"] == f"yes (hiredis {hiredis})"
    # the libraries loaded at run time, asked by the same calls from here
    assert lines["libmicrohttpd"] == _library_version("microhttpd", "MHD_get_version")
    curl = _library_version("curl", "curl_version")  # "libcurl/7.88.1 OpenSSL/3.0.11 ..."
    assert curl.startswith(f"libcurl/{lines['libcurl'].split(' ')[0]} ")
    assert lines["libcurl"].split(" with ")[1] in curl


def test_describe_config_text_and_json_name_the_same_keys():
    keys = table()
    text = run("--describe-config").stdout
    for k in keys:
        assert re.search(rf"^{k['key']} = {re.escape(k['default'] or '(unset)')}$", text, re.M), k
        assert k["reload"] in ("applies", "restart")
    assert run("--describe-config=yaml").returncode == 2


# ------------------------------------------------------------ the manual pages


def man_text(page):
    """A built man page's source with roff's escaped minus signs plain."""
    with open(os.path.join(BUILD, "config", "man", page)) as f:
        return f.read().replace("\\-", "-")


def test_the_daemons_man_page_names_every_option_message_id_and_route():
    man = man_text("instacart-tokend.8")
    for name in getopt_long_options():
        assert f"--{name}" in man, f"instacart-tokend(8) does not document --{name}"
    with open(os.path.join(SOURCE, "include", "log.h")) as f:
        ids = re.findall(r'#define LOG_ID_\w+ "([0-9a-f]{32})"', f.read())
    assert len(ids) >= 5
    for i in ids:
        assert i in man, f"instacart-tokend(8) does not list MESSAGE_ID {i}"
    with open(os.path.join(SOURCE, "src", "routes.c")) as f:
        routes = re.findall(r'\{ \.name = "(/[^"]*)"', f.read())
    assert len(routes) >= 8
    for r in routes:
        assert re.search(rf"\b[A-Z]+ {re.escape(r)}\b", man), f"instacart-tokend(8) does not list the route {r}"


def test_the_configuration_man_page_has_every_key_with_its_default_and_reload_rule():
    man = man_text("instacart-tokend.conf.5")
    for k in table():
        block = re.search(rf"^\.SS \[{k['section']}\]$(.*?)(?=^\.SS |^\.SH )", man, re.S | re.M)
        assert block, f"instacart-tokend.conf(5) has no [{k['section']}]"
        entry = re.search(rf"^\.B {k['key']}\n(.*?)(?=^\.TP|\Z)", block.group(1), re.S | re.M)
        assert entry, f"instacart-tokend.conf(5) lacks [{k['section']}] {k['key']}"
        text = entry.group(1)
        assert (f"default \\fB{k['default']}\\fP" if k["default"] else "no default") in text, text
        assert ("a reload applies it" if k["reload"] == "applies" else "needs a restart") in text, text
