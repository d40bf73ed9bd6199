"""A real nginx (Debian's nginx-light) running config/nginx-tokend.conf,
rendered, for test_nginx.py.  Standard library only.

    ng = Nginx(workdir, site_text)
    ng.start()            # waits for its port, with a deadline
    ...
    ng.stop()             # always: SIGQUIT, then SIGKILL to its process group

The example site goes into http {} of a minimal main configuration of the
test's own: everything nginx writes (pid, logs, temp files) stays in
workdir.  The access log records $upstream_addr, so a test can tell
whether a request was passed to tokend at all.
"""
import base64
import os
import re
import shutil
import signal
import socket
import subprocess

from conftest import wait_for

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
EXAMPLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "config", "nginx-tokend.conf")
PLACEHOLDER = re.compile(r"@([A-Z_]+)@")


def render(text, values):
    """Replaces every @NAME@ of text; each must be given, each given must be used."""
    used = set(PLACEHOLDER.findall(text))
    missing = used - set(values)
    unused = set(values) - used
    assert not missing, f"placeholders without a value: {sorted(missing)}"
    assert not unused, f"values for placeholders the example does not have: {sorted(unused)}"
    return PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), text)


def example_text():
    with open(EXAMPLE) as f:
        return f.read()


def htpasswd_line(user, password):
    """An apr1 (Apache MD5) line, as operators make them with openssl."""
    r = subprocess.run(["openssl", "passwd", "-apr1", "-stdin"], input=password + "\n", capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return f"{user}:{r.stdout.strip()}\n"


def basic(user, password):
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Nginx:
    def __init__(self, workdir, site_text, port, worker_connections=128):
        self.dir = os.path.abspath(os.fspath(workdir))
        self.port = port
        self.proc = None
        os.makedirs(os.path.join(self.dir, "tmp"), exist_ok=True)
        self.site_path = os.path.join(self.dir, "site.conf")
        self.conf_path = os.path.join(self.dir, "nginx.conf")
        self.error_log = os.path.join(self.dir, "error.log")
        self.access_log = os.path.join(self.dir, "access.log")
        with open(self.site_path, "w") as f:
            f.write(site_text)
        d = self.dir
        user = "user root root;\n" if os.geteuid() == 0 else ""  # else workers would run as nobody
        with open(self.conf_path, "w") as f:
            f.write(f"""{user}worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections {worker_connections}; }}
http {{
    log_format tokend '$remote_user "$request" $status upstream=$upstream_addr';
    access_log {d}/access.log tokend;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    include {self.site_path};
}}
""")

    def argv(self, *extra):
        return [NGINX, "-p", self.dir + "/", "-c", self.conf_path, "-e", self.error_log, *extra]

    def check(self):
        return subprocess.run(self.argv("-t"), capture_output=True, text=True, timeout=30)

    def start(self, timeout=15.0):
        self.out = open(os.path.join(self.dir, "nginx.out"), "ab")
        # its own session: the master and its worker form one process group
        self.proc = subprocess.Popen(self.argv("-g", "daemon off;"), stdin=subprocess.DEVNULL, stdout=self.out,
                                     stderr=subprocess.STDOUT, start_new_session=True)

        def up():
            if self.proc.poll() is not None:
                raise AssertionError(f"nginx exited ({self.proc.returncode}): {self.logs()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return True
            except OSError:
                return False

        try:
            wait_for(up, timeout=timeout, interval=0.02, what="nginx to listen")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout=10.0):
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        pgid = proc.pid  # start_new_session: the master leads its group
        if proc.poll() is None:
            proc.send_signal(signal.SIGQUIT)  # graceful: the master stops its workers
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        # whatever happened, nothing of this nginx survives
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if proc.poll() is None:
            proc.wait(timeout=timeout)
        self.out.close()

    def logs(self):
        out = []
        for p in (self.error_log, os.path.join(self.dir, "nginx.out")):
            try:
                with open(p, errors="replace") as f:
                    out.append(f.read()[-3000:])
            except OSError:
                pass
        return "\n".join(out)

    def access(self):
        try:
            with open(self.access_log, errors="replace") as f:
                return f.read().splitlines()
        except FileNotFoundError:
            return []
