"""The Instacart stand-in over HTTPS, for test_instacart_failing.py: throwaway
certificates made with the openssl command, and a real nginx (Debian's
nginx-light, through nginx_fixture.Nginx) terminating TLS in front of the
stand-in, over HTTP/1.1 only or with HTTP/2.  Standard library only.

    pki = Pki(tmp_path / "pki")                   # CAs and server certificates
    front = TlsFront(tmp_path / "ng", stub, pki.cert("good"), http2=True).start()
    front.base_url                                # https://localhost:PORT
    front.handshakes()                            # (full, resumed) so far
    front.stop()

The access log has one line per request: nginx's connection serial number,
whether the TLS session was resumed ('r') and the protocol, so a test can
count connections and full handshakes.  Keys and certificates are test
files in the test's own directory; no secret of tokend's ever goes there.
"""
import os
import subprocess

from conftest import wait_for
from nginx_fixture import Nginx, free_port


def openssl(*args, cwd):
    r = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"openssl {' '.join(args)}: {r.stderr}"
    return r.stdout


class Pki:
    """Two CAs and server certificates signed by them:
    good (CA 'main', names localhost and 127.0.0.1), other_name (CA 'main',
    names only wrong.example), expired (CA 'main', valid only in 2020), and
    other_ca (CA 'other', names localhost and 127.0.0.1)."""

    def __init__(self, workdir):
        self.dir = os.path.abspath(os.fspath(workdir))
        os.makedirs(self.dir, exist_ok=True)
        for ca in ("main", "other"):
            self._ca(ca)
        self._server("good", "main", "DNS:localhost,IP:127.0.0.1")
        self._server("other_name", "main", "DNS:wrong.example")
        self._server("expired", "main", "DNS:localhost,IP:127.0.0.1",
                     dates=("20200101000000Z", "20200201000000Z"))
        self._server("other_ca", "other", "DNS:localhost,IP:127.0.0.1")

    def path(self, name):
        return os.path.join(self.dir, name)

    def ca(self, name):
        """The PEM file of CA name, for [upstream] ca_file."""
        return self.path(f"ca-{name}.pem")

    def cert(self, name):
        """(certificate chain file, key file) of server certificate name."""
        return self.path(f"{name}.pem"), self.path(f"{name}.key")

    def _ca(self, name):
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", f"ca-{name}.key", "-out", f"ca-{name}.pem", "-days", "2",
                "-subj", f"/CN=tokend test CA {name}",
                "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=self.dir)

    def _server(self, name, ca, san, dates=None):
        d = self.dir
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
        with open(os.path.join(d, f"{name}.ext"), "w") as f:
            f.write(f"basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n"
                    f"extendedKeyUsage=serverAuth\nsubjectAltName={san}\n")
        if dates is None:
            openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"ca-{ca}.pem", "-CAkey", f"ca-{ca}.key",
                    "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.pem", cwd=d)
            return
        # OpenSSL 3.0's x509 cannot back-date; 'openssl ca' takes explicit dates
        db = os.path.join(d, f"ca-{ca}-db")
        os.makedirs(db, exist_ok=True)
        open(os.path.join(db, "index.txt"), "w").close()
        with open(os.path.join(db, "serial"), "w") as f:
            f.write("1000\n")
        with open(os.path.join(d, f"ca-{ca}.cnf"), "w") as f:
            f.write(f"""[ca]
default_ca = test
[test]
dir = {db}
database = {db}/index.txt
serial = {db}/serial
new_certs_dir = {db}
default_md = sha256
policy = anything
unique_subject = no
copy_extensions = none
[anything]
commonName = supplied
""")
        openssl("ca", "-batch", "-config", f"ca-{ca}.cnf", "-cert", f"ca-{ca}.pem", "-keyfile", f"ca-{ca}.key",
                "-in", f"{name}.csr", "-out", f"{name}.pem", "-notext", "-extfile", f"{name}.ext",
                "-startdate", dates[0], "-enddate", dates[1], cwd=d)


class TlsFront:
    """nginx on 127.0.0.1 terminating TLS with cert = (chain, key) and passing
    every request to the stand-in over kept-alive HTTP/1.1.  http2: offer h2
    by ALPN (else HTTP/1.1 only).  protocols and ciphers: nginx's
    ssl_protocols and ssl_ciphers."""

    def __init__(self, workdir, stub, cert, http2=True, protocols="TLSv1.2 TLSv1.3", ciphers=None,
                 host="localhost", keepalive_requests=100000):
        self.port = free_port()
        self.base_url = f"https://{host}:{self.port}"
        d = os.path.abspath(os.fspath(workdir))
        os.makedirs(d, exist_ok=True)
        self.tls_log = os.path.join(d, "tls.log")
        ciphers_line = f"ssl_ciphers {ciphers};" if ciphers else ""
        site = f"""
log_format tls '$connection $ssl_session_reused $server_protocol $ssl_protocol $status';
upstream instacart_stub {{
    server 127.0.0.1:{stub.port};
    keepalive 64;
}}
server {{
    listen 127.0.0.1:{self.port} ssl{" http2" if http2 else ""};
    ssl_certificate {cert[0]};
    ssl_certificate_key {cert[1]};
    ssl_protocols {protocols};
    {ciphers_line}
    ssl_session_cache shared:tokend_test:1m;
    ssl_session_timeout 5m;
    keepalive_requests {keepalive_requests};
    keepalive_timeout 60s;
    http2_max_requests 100000;
    access_log {self.tls_log} tls;
    location / {{
        proxy_pass http://instacart_stub;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
    }}
}}
"""
        self.nginx = Nginx(d, site, self.port, worker_connections=1024)

    def start(self):
        self.nginx.start()
        return self

    def stop(self):
        self.nginx.stop()

    def requests(self):
        """[(connection serial, resumed, protocol, tls version, status)] so far."""
        try:
            with open(self.tls_log) as f:
                return [tuple(line.split()) for line in f if line.strip()]
        except FileNotFoundError:
            return []

    def wait_requests(self, n):
        """requests() once it has n lines: nginx logs a request after it has
        sent the answer, so the client may be faster than the log."""
        return wait_for(lambda: len(r := self.requests()) >= n and r, what=f"{n} requests in nginx's log")

    def connections(self):
        """The connections requests came on: {serial: resumed ('r' or '.')}."""
        return {c: reused for c, reused, *_ in self.requests()}

    def full_handshakes(self):
        return sum(1 for reused in self.connections().values() if reused != "r")
