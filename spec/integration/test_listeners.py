"""Listeners: --listen unix:PATH (HTTP/1.1, h2c, TLS; socket file mode, stale
files, removal at exit) and --proxy-protocol (HAProxy's PROXY v1 and v2 in
front: req.peer, req.peer_port and the access log show the real client; a
malformed or slow header closes the connection)."""

import json
import os
import socket
import stat
import struct
import subprocess
import tempfile
import time

import pytest

from conftest import LariatServer, SANITIZER_RE, SLOW, free_port, lariat_bin, tls_files, wait_for


APP = """
local lariat = require "lariat"
local app = lariat.app()
app:get("/", function(req)
  return { peer = req.peer, port = req.peer_port, version = req.version, scheme = req.scheme }
end)
return app
"""

REQ = b"GET / HTTP/1.1\r\nhost: x\r\nuser-agent: listener-test\r\n\r\n"
V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"


@pytest.fixture
def app(tmp_path):
    p = tmp_path / "peer.lua"
    p.write_text(APP)
    return p


@pytest.fixture
def sockdir():
    # a short path: sun_path holds 108 bytes
    d = tempfile.mkdtemp(prefix="lr-", dir="/tmp")
    yield d
    for f in os.listdir(d):
        os.unlink(os.path.join(d, f))
    os.rmdir(d)


class Server(LariatServer):
    """A server owned by one test, checked for sanitizer reports at the end."""

    def __exit__(self, *exc):
        rc = self.stop()
        assert not SANITIZER_RE.search(self.stderr_text()), self.stderr_text()[-4000:]
        return rc


def read_response(s, timeout=5):
    s.settimeout(timeout * SLOW)
    data = b""
    while b"\r\n\r\n" not in data:
        d = s.recv(65536)
        if not d:
            return data
        data += d
    head, _, body = data.partition(b"\r\n\r\n")
    n = int([l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0])
    while len(body) < n:
        body += s.recv(65536)
    return head, json.loads(body)


def closed_without_answer(s, timeout=5):
    s.settimeout(timeout * SLOW)
    try:
        return s.recv(100) == b""
    except ConnectionResetError:
        return True


def curl(*args):
    p = subprocess.run(["curl", "-sS", "--max-time", str(10 * SLOW), *args], capture_output=True, timeout=20 * SLOW)
    assert p.returncode == 0, p.stderr
    return p.stdout


# ---------------------------------------------------------------------------
# unix sockets
# ---------------------------------------------------------------------------

def test_unix_listener_speaks_http1_h2c_and_tls(app, sockdir):
    path = os.path.join(sockdir, "plain.sock")
    tpath = os.path.join(sockdir, "tls.sock")
    cert, key = tls_files()
    with Server(app, "--workers", "2", "--listen", "unix:" + path, "--tls", "unix:" + tpath,
                "--cert", cert, "--key", key).start() as srv:
        assert "listening on http+unix:" + path in srv.stdout_text()
        assert "listening on https+unix:" + tpath in srv.stdout_text()
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o666
        r = json.loads(curl("--unix-socket", path, "http://localhost/"))
        assert r == {"peer": "unix:", "port": 0, "version": "HTTP/1.1", "scheme": "http"}
        r = json.loads(curl("--http2-prior-knowledge", "--unix-socket", path, "http://localhost/"))
        assert r["version"] == "HTTP/2"
        r = json.loads(curl("-k", "--http2", "--unix-socket", tpath, "https://localhost/"))
        assert r["version"] == "HTTP/2" and r["scheme"] == "https"
        # both workers take connections from the one socket
        for _ in range(20):
            s = socket.socket(socket.AF_UNIX)
            s.connect(path)
            s.sendall(REQ)
            assert read_response(s)[1]["peer"] == "unix:"
            s.close()
    assert not os.path.exists(path) and not os.path.exists(tpath)  # removed at exit


def test_unix_socket_mode_and_stale_files(app, sockdir):
    path = os.path.join(sockdir, "s.sock")
    # a stale socket file (its server died without removing it) is replaced
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(path)
    dead.close()
    assert os.path.exists(path)
    with Server(app, "--listen", "unix:" + path, "--unix-mode", "0600").start():
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert json.loads(curl("--unix-socket", path, "http://localhost/"))["peer"] == "unix:"
        # a live server there: the second one refuses to start and leaves the file alone
        p = subprocess.run([lariat_bin(), "--listen", "unix:" + path, str(app)],
                           capture_output=True, text=True, timeout=10 * SLOW)
        assert p.returncode == 2 and "already in use" in p.stderr, p.stderr
        assert json.loads(curl("--unix-socket", path, "http://localhost/"))["peer"] == "unix:"
    # a file that is not a socket is never removed
    reg = os.path.join(sockdir, "data.txt")
    with open(reg, "w") as f:
        f.write("keep me")
    p = subprocess.run([lariat_bin(), "--listen", "unix:" + reg, str(app)],
                       capture_output=True, text=True, timeout=10 * SLOW)
    assert p.returncode == 2 and "not a socket" in p.stderr, p.stderr
    assert open(reg).read() == "keep me"
    p = subprocess.run([lariat_bin(), "--unix-mode", "99", str(app)], capture_output=True, text=True)
    assert p.returncode == 2 and "--unix-mode" in p.stderr


# ---------------------------------------------------------------------------
# PROXY protocol, raw headers
# ---------------------------------------------------------------------------

def v2(cmd, fam, addr, tlv=b""):
    return V2_SIG + bytes([0x20 | cmd, fam]) + struct.pack("!H", len(addr) + len(tlv)) + addr + tlv


def v2_ipv4(src, sport, tlv=b""):
    return v2(1, 0x11, socket.inet_aton(src) + socket.inet_aton("127.0.0.1") + struct.pack("!HH", sport, 80), tlv)


def v2_ipv6(src, sport):
    return v2(1, 0x21, socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, "::1")
              + struct.pack("!HH", sport, 443))


GOOD = [
    (b"PROXY TCP4 203.0.113.7 127.0.0.1 4567 80\r\n", "203.0.113.7", 4567),
    (b"PROXY TCP6 2001:db8::17 ::1 65535 80\r\n", "2001:db8::17", 65535),
    (v2_ipv4("198.51.100.9", 999), "198.51.100.9", 999),
    # TLVs (here a 300-byte PP2_TYPE_NOOP) are skipped
    (v2_ipv4("198.51.100.10", 1000, b"\x04" + struct.pack("!H", 297) + b"x" * 297), "198.51.100.10", 1000),
    (v2_ipv6("2001:db8::42", 4242), "2001:db8::42", 4242),
]

BAD = [
    (b"GET / HTTP/1.1\r\n\r\n", "no PROXY header"),
    (b"PROXY TCP4 1.2.3 127.0.0.1 1 2\r\n", "v1: bad address"),
    (b"PROXY TCP4 1.2.3.4 127.0.0.1 99999 2\r\n", "v1: bad port"),
    (b"PROXY TCP5 1.2.3.4 127.0.0.1 1 2\r\n", "v1: unknown protocol"),
    (b"PROXY TCP4 " + b"1" * 120 + b"\r\n", "longer than 107"),
    (b"PROXY TCP4 1.2.3.4 127.0.0.1 1 2\n", "CRLF"),
    (V2_SIG[:5] + b"X" + V2_SIG[6:] + b"\x21\x11\x00\x0c", "bad v2 signature"),
    (V2_SIG + b"\x31\x11\x00\x0c" + b"\0" * 12, "bad version or command"),
    (V2_SIG + b"\x21\x11\x00\x04" + b"\0" * 4, "short IPv4"),
    (V2_SIG + b"\x21\x77\x00\x04" + b"\0" * 4, "bad address family"),
]


def test_proxy_headers_give_the_real_client_to_req_and_the_access_log(app, tmp_path):
    log = tmp_path / "access.log"
    with Server(app, "--proxy-protocol", "--access-log", str(log)).start() as srv:
        for rnd in range(2):  # the second time too
            for header, peer, port in GOOD:
                s = socket.create_connection(("127.0.0.1", srv.port))
                if rnd:  # a byte at a time: the header arrives in pieces
                    for b in header:
                        s.sendall(bytes([b]))
                    s.sendall(REQ)
                else:
                    s.sendall(header + REQ)  # header and request in one segment
                head, body = read_response(s)
                assert body["peer"] == peer and body["port"] == port, (header, body)
                # keep-alive: the header is read once per connection
                s.sendall(REQ)
                assert read_response(s)[1]["peer"] == peer
                s.close()
        # PROXY v2 LOCAL (HAProxy's own health checks) and v1 UNKNOWN: the socket's peer
        for header in (v2(0, 0, b""), b"PROXY UNKNOWN\r\n", b"PROXY UNKNOWN ffff::1 ::1 1 2\r\n"):
            s = socket.create_connection(("127.0.0.1", srv.port))
            s.sendall(header + REQ)
            body = read_response(s)[1]
            assert body["peer"] == "127.0.0.1" and body["port"] == s.getsockname()[1]
            s.close()
        wait_for(lambda: log.exists() and log.read_text().count("listener-test") >= 23, 5, "access log")
        lines = log.read_text().splitlines()
        for _, peer, _ in GOOD:
            assert any(l.startswith(peer + " ") for l in lines), (peer, lines)


def test_malformed_or_slow_proxy_headers_close_the_connection(app):
    with Server(app, "--proxy-protocol", "--header-timeout", "0.5").start() as srv:
        for rnd in range(2):  # the second time too
            for data, reason in BAD:
                s = socket.create_connection(("127.0.0.1", srv.port))
                s.sendall(data)
                assert closed_without_answer(s), data
                s.close()
                wait_for(lambda: srv.log_text().count(reason) >= rnd + 1, 5, reason)
            # a header that stops half way is closed by the header timeout
            s = socket.create_connection(("127.0.0.1", srv.port))
            s.sendall(b"PROXY TCP4 203.0.11")
            t0 = time.monotonic()
            assert closed_without_answer(s, timeout=5)
            assert 0.3 < time.monotonic() - t0 < 3 * SLOW
            s.close()
            # and the server serves the next client
            s = socket.create_connection(("127.0.0.1", srv.port))
            s.sendall(GOOD[0][0] + REQ)
            assert read_response(s)[1]["peer"] == "203.0.113.7"
            s.close()
        assert "PROXY protocol: no PROXY header (from 127.0.0.1): connection closed" in srv.log_text()


# ---------------------------------------------------------------------------
# PROXY protocol behind a real HAProxy
# ---------------------------------------------------------------------------


class HAProxy:
    def __init__(self, tmp_path, servers):
        """servers: list of (name, address, send-proxy keyword)"""
        self.ports = {}
        cfg = ["global", "  maxconn 200", "defaults", "  mode tcp",
               "  timeout connect 5s", "  timeout client 10s", "  timeout server 10s"]
        for name, addr, kw in servers:
            port = free_port()
            self.ports[name] = port
            cfg += ["frontend fe_%s" % name, "  bind 127.0.0.1:%d" % port, "  default_backend be_%s" % name,
                    "backend be_%s" % name, "  server s1 %s %s" % (addr, kw)]
        path = tmp_path / "haproxy.cfg"
        path.write_text("\n".join(cfg) + "\n")
        self.proc = subprocess.Popen(["haproxy", "-db", "-f", str(path)],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for port in self.ports.values():
            wait_for(lambda: self._listening(port), 10, "haproxy on %d" % port)

    def _listening(self, port):
        if self.proc.poll() is not None:
            raise AssertionError("haproxy exited: %s" % self.proc.stdout.read().decode())
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            return False

    def close(self):
        self.proc.terminate()
        self.proc.wait(10)


def test_behind_haproxy_send_proxy_v1_and_v2_tcp_and_unix(app, tmp_path, sockdir):
    """HAProxy (mode tcp) forwards to lariat with send-proxy (v1) and
    send-proxy-v2, over TCP and over a unix socket: the handler and the
    access log see the client's own address and source port."""
    path = os.path.join(sockdir, "lariat.sock")
    log = tmp_path / "access.log"
    with Server(app, "--workers", "2", "--proxy-protocol", "--access-log", str(log),
                "--listen", "unix:" + path).start() as srv:
        hp = HAProxy(tmp_path, [
            ("v1", "127.0.0.1:%d" % srv.port, "send-proxy"),
            ("v2", "127.0.0.1:%d" % srv.port, "send-proxy-v2"),
            ("unix", path, "send-proxy-v2"),
        ])
        try:
            for name, port in hp.ports.items():
                for _ in range(3):
                    s = socket.create_connection(("127.0.0.1", port))
                    me = s.getsockname()
                    s.sendall(REQ)
                    body = read_response(s)[1]
                    assert body["peer"] == "127.0.0.1" and body["port"] == me[1], (name, body, me)
                    s.close()
            # a real client through HAProxy: curl's port is unknown, the address is ours
            out = json.loads(curl("http://127.0.0.1:%d/" % hp.ports["v2"]))
            assert out["peer"] == "127.0.0.1" and out["port"] != 0
        finally:
            hp.close()
        wait_for(lambda: log.exists() and log.read_text().count("listener-test") >= 9, 5, "access log")
        assert "PROXY protocol:" not in srv.log_text()  # HAProxy's health checks, if any, parse too


def test_proxy_header_comes_before_the_tls_handshake(app):
    """On a --tls listener the PROXY header precedes the ClientHello; the
    handler sees the client the header names, over TLS."""
    import ssl
    cert, key = tls_files()
    with Server(app, "--proxy-protocol", "--cert", cert, "--key", key, tls=True).start() as srv:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        for header, peer, port in (GOOD[0], GOOD[2]):  # v1 and v2, the second listener too
            raw = socket.create_connection(("127.0.0.1", srv.tls_port), timeout=5 * SLOW)
            raw.sendall(header)
            s = ctx.wrap_socket(raw, server_hostname="localhost")
            s.sendall(REQ)
            body = read_response(s)[1]
            assert body["peer"] == peer and body["port"] == port and body["scheme"] == "https"
            s.close()
        # a TLS client that sends no PROXY header is closed with a log line
        raw = socket.create_connection(("127.0.0.1", srv.tls_port), timeout=5 * SLOW)
        try:
            ctx.wrap_socket(raw, server_hostname="localhost")
            raise AssertionError("handshake without a PROXY header succeeded")
        except (ssl.SSLError, ConnectionError, OSError):
            pass
        wait_for(lambda: "no PROXY header" in srv.log_text(), 5, "the log line")
