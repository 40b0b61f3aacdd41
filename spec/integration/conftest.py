"""Shared fixtures for the lariat integration suite.

Every test talks to a real `lariat` process started on 127.0.0.1 with port 0.
The binary is $LARIAT_BIN (ctest sets it), else build/lariat in the checkout.
Run with Debian's interpreter: /usr/bin/python3 -m pytest spec/integration
"""

import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
APPS = HERE / "apps"
LISTEN_RE = re.compile(r"listening on https?://127\.0\.0\.1:(\d+)")
# Sanitizer reports mean a server bug even when the HTTP exchange looked fine.
SANITIZER_RE = re.compile(
    r"ERROR: (AddressSanitizer|LeakSanitizer)|^\S+:\d+:\d+: runtime error:",
    re.M,
)


def lariat_bin():
    path = os.environ.get("LARIAT_BIN") or str(REPO / "build" / "lariat")
    return str(Path(path).resolve()) if not os.path.isabs(path) else path


def app_path(name):
    return str(APPS / name)


# time bounds scale by this under ASan (LARIAT_SANITIZE=1), ~3x slower
SLOW = 3 if os.environ.get("LARIAT_SANITIZE") else 1


def wait_for(cond, timeout, what):
    """Poll cond() until it returns something true (returned), for timeout
    seconds scaled by SLOW; fail naming `what` otherwise."""
    deadline = time.monotonic() + timeout * SLOW
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.02)
    raise AssertionError("timed out waiting for " + what)


def free_port():
    """A loopback port free right now, for servers that can't report the one
    they bound (haproxy, prometheus)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


_TLS_FILES = []


def tls_files():
    """(cert, key) of a self-signed localhost certificate made once per run
    by scripts/devcert."""
    if not _TLS_FILES:
        import tempfile
        d = tempfile.mkdtemp(prefix="lariat-cert-")
        subprocess.run([str(REPO / "scripts" / "devcert"), d], check=True,
                       capture_output=True)
        _TLS_FILES.extend([os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")])
    return tuple(_TLS_FILES)


def tls_options():
    """Options adding a TLS listener on a free port (printed after the plain ones)."""
    cert, key = tls_files()
    return ["--tls", "127.0.0.1:0", "--cert", cert, "--key", key]


# --------------------------------------------------------------------------
# The server process
# --------------------------------------------------------------------------

class _Drain(threading.Thread):
    """Reads a pipe to the end so the server never blocks on a full pipe."""

    def __init__(self, stream):
        super().__init__(daemon=True)
        self.stream = stream
        self.lines = []
        self.cond = threading.Condition()

    def run(self):
        for raw in iter(self.stream.readline, b""):
            with self.cond:
                self.lines.append(raw.decode("utf-8", "replace"))
                self.cond.notify_all()
        with self.cond:
            self.lines.append(None)  # EOF marker
            self.cond.notify_all()

    def text(self):
        with self.cond:
            return "".join(l for l in self.lines if l is not None)


class LariatServer:
    """One lariat process. `ports` holds the ports it printed, in order."""

    def __init__(self, app, *options, listeners=1, listen=True, cwd=None, tls=False):
        self.app = str(app)
        self.tls = tls  # one more listener, TLS, printed last: tls_port
        self.options = [str(o) for o in options]
        self.listeners = listeners
        self.listen = listen
        self.cwd = cwd or str(REPO)
        self.proc = None
        self.ports = []
        self.returncode = None

    # lifecycle ------------------------------------------------------------
    def argv(self):
        argv = [lariat_bin()]
        if self.listen:
            for _ in range(self.listeners):
                argv += ["--listen", "127.0.0.1:0"]
        if self.tls:
            argv += tls_options()
        return argv + self.options + [self.app]

    def start(self, argv=None, timeout=15):
        argv = argv or self.argv()
        self.proc = subprocess.Popen(
            argv, cwd=self.cwd, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        self.out = _Drain(self.proc.stdout)
        self.err = _Drain(self.proc.stderr)
        self.out.start()
        self.err.start()
        deadline = time.monotonic() + timeout
        with self.out.cond:
            while True:
                found = [LISTEN_RE.search(l) for l in self.out.lines if l]
                found = [m for m in found if m]
                if len(found) >= self.listeners + bool(self.tls):
                    self.ports = [int(m.group(1)) for m in found]
                    break
                if None in self.out.lines or self.proc.poll() is not None:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.out.cond.wait(min(left, 0.1))
        if len(self.ports) < self.listeners + bool(self.tls):
            self.stop()
            raise RuntimeError(
                "lariat did not report %d listener(s): argv=%r rc=%r\n"
                "stdout:\n%s\nstderr:\n%s" % (
                    self.listeners, argv, self.returncode,
                    self.out.text(), self.err.text()))
        return self

    @property
    def port(self):
        return self.ports[0]

    @property
    def tls_port(self):
        return self.ports[-1]

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout=5):
        """SIGTERM, then SIGKILL. Returns the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.returncode = self.proc.returncode
        self.out.join(5)
        self.err.join(5)
        return self.returncode

    def stdout_text(self):
        return self.out.text()

    def stderr_text(self):
        return self.err.text()

    def log_text(self):
        return self.out.text() + self.err.text()

    def check_healthy(self):
        """Raise if the server died on its own or a sanitizer complained."""
        died = self.proc.poll()
        if died is not None:
            raise AssertionError(
                "lariat exited by itself with status %r during the test\n"
                "stderr:\n%s" % (died, self.err.text()[-4000:]))
        self.stop()
        m = SANITIZER_RE.search(self.err.text())
        if m:
            raise AssertionError(
                "sanitizer report in lariat stderr:\n%s"
                % self.err.text()[m.start():][:4000])

    def rss_kib(self):
        with open("/proc/%d/status" % self.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def cpu_seconds(self):
        """user + system CPU time of the server process (all threads): bounds
        that hold on a loaded machine, where wall-clock ones don't"""
        with open("/proc/%d/stat" % self.pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def open_files(self, prefix="/"):
        """what the server's descriptors point to, for those starting with
        prefix (a file deleted while open reads "path (deleted)")"""
        out = []
        for f in os.listdir("/proc/%d/fd" % self.pid):
            try:
                link = os.readlink("/proc/%d/fd/%s" % (self.pid, f))
            except OSError:
                continue
            if link.startswith(prefix):
                out.append(link)
        return sorted(out)

    def url(self, path="/", port=None):
        return "http://127.0.0.1:%d%s" % (port or self.port, path)

    def connect(self, timeout=5, port=None):
        return RawConn(port or self.port, timeout=timeout)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


@pytest.fixture
def start_server():
    """Factory: start_server("basic.lua", "--max-body", 1000) -> LariatServer.
    Every server started here is checked and stopped when the test ends."""
    started = []

    def start(app, *options, listeners=1, tls=False):
        path = app if os.path.isabs(str(app)) else app_path(app)
        srv = LariatServer(path, *options, listeners=listeners, tls=tls).start()
        started.append(srv)
        return srv

    yield start
    errors = []
    for srv in started:
        try:
            srv.check_healthy()
        except AssertionError as e:
            errors.append(str(e))
    if errors:
        pytest.fail("\n".join(errors), pytrace=False)


def module_server(app, *options, tls=False):
    """Build a fixture serving `app` with `options`: one server per test
    module, restarted when a test crashed it. The test during which the
    server died fails with its exit status and stderr (not the tests after
    it); sanitizer reports fail the module's last test at teardown."""
    servers = {}

    @pytest.fixture
    def fixture(request):
        module = request.node.getparent(pytest.Module)
        srv = servers.get(module.nodeid)
        if srv is None:
            srv = LariatServer(app_path(app), *options, tls=tls).start()
            servers[module.nodeid] = srv

            def finish(srv=srv, key=module.nodeid):
                if servers.get(key) is srv:
                    del servers[key]
                if srv.alive():
                    srv.check_healthy()
            module.addfinalizer(finish)
        yield srv
        if not srv.alive():
            del servers[module.nodeid]
            srv.stop()
            raise AssertionError(
                "lariat died during this test (exit status %r)\nstderr:\n%s"
                % (srv.returncode, srv.stderr_text()[-4000:]))

    return fixture


# basic.lua with defaults, shared by the tests of one module.
server = module_server("basic.lua")


# --------------------------------------------------------------------------
# A raw HTTP/1.1 client: exact bytes out, exact parsing in
# --------------------------------------------------------------------------

class Closed(Exception):
    """The peer closed the connection before a complete response arrived."""

    def __init__(self, msg, partial=b""):
        super().__init__(msg)
        self.partial = partial


class Response:
    def __init__(self):
        self.version = None
        self.status = None
        self.reason = None
        self.headers = []       # (name as sent, value)
        self.trailers = []      # (name as sent, value)
        self.body = b""
        self.raw_head = b""
        self.chunked = False
        self.interim = []       # 1xx responses that preceded this one

    def header(self, name, default=None):
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return default

    def header_all(self, name):
        name = name.lower()
        return [v for k, v in self.headers if k.lower() == name]

    def trailer(self, name, default=None):
        name = name.lower()
        for k, v in self.trailers:
            if k.lower() == name:
                return v
        return default

    def connection_tokens(self):
        toks = []
        for v in self.header_all("connection"):
            toks += [t.strip().lower() for t in v.split(",") if t.strip()]
        return toks

    def text(self):
        return self.body.decode("utf-8", "replace")

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return "<Response %s %s %r body=%r>" % (
            self.status, self.reason, self.headers, self.body[:200])


class SocketClient:
    """What every raw test client shares: a `sock`, closed quietly, usable
    in a `with` block (RawConn here, H2Raw in h2raw.py, WS in wsclient.py)."""

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class RawConn(SocketClient):
    def __init__(self, port, timeout=5, rcvbuf=None):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        self.timeout = timeout
        self.buf = bytearray()
        self.eof = False
        self.reset = False

    def send(self, data):
        if isinstance(data, str):
            data = data.encode("latin-1")
        self.sock.sendall(data)

    def send_lenient(self, data):
        """Send, but tolerate the server closing on us mid-way (it may answer
        and close before it has read everything)."""
        try:
            self.send(data)
            return True
        except OSError:  # EPIPE, ECONNRESET, or closed under us
            return False

    def _fill(self, timeout=None):
        if self.eof:
            return False
        if timeout is not None:
            self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(1 << 20)
        except ConnectionResetError:
            data = b""
            self.reset = True
        finally:
            if timeout is not None:
                self.sock.settimeout(self.timeout)
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def _take(self, n):
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def read_until(self, delim):
        start = 0
        while True:
            i = self.buf.find(delim, start)
            if i >= 0:
                return self._take(i + len(delim))
            start = max(0, len(self.buf) - len(delim) + 1)
            if not self._fill():
                raise Closed("closed while waiting for %r" % delim, bytes(self.buf))

    def read_exact(self, n):
        while len(self.buf) < n:
            if not self._fill():
                raise Closed("closed with %d of %d bytes" % (len(self.buf), n),
                             bytes(self.buf))
        return self._take(n)

    def read_to_close(self):
        while self._fill():
            pass
        return self._take(len(self.buf))

    def read_response(self, method="GET", skip_interim=True):
        """Read one response. With skip_interim, 1xx responses are collected
        in .interim and the final response is returned."""
        interim = []
        while True:
            resp = self._read_one(method)
            if skip_interim and 100 <= resp.status < 200:
                interim.append(resp)
                continue
            resp.interim = interim
            return resp

    def _read_one(self, method):
        head = self.read_until(b"\r\n\r\n")
        resp = Response()
        resp.raw_head = head
        lines = head[:-4].split(b"\r\n")
        m = re.match(rb"(HTTP/\d\.\d) (\d{3})(?: (.*))?$", lines[0])
        if not m:
            raise AssertionError("bad status line %r" % lines[0])
        resp.version = m.group(1).decode()
        resp.status = int(m.group(2))
        resp.reason = (m.group(3) or b"").decode("latin-1")
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep:
                raise AssertionError("bad header line %r" % line)
            resp.headers.append((name.decode("latin-1"),
                                 value.strip(b" \t").decode("latin-1")))
        if (method == "HEAD" or 100 <= resp.status < 200
                or resp.status in (204, 304)):
            return resp
        te = (resp.header("transfer-encoding") or "").lower()
        if "chunked" in te:
            resp.chunked = True
            resp.body = self._read_chunked(resp)
        elif resp.header("content-length") is not None:
            resp.body = self.read_exact(int(resp.header("content-length")))
        else:
            resp.body = self.read_to_close()
        return resp

    def _read_chunked(self, resp):
        body = bytearray()
        while True:
            try:
                line = self.read_until(b"\r\n")
            except Closed as e:
                raise Closed("closed inside chunked body", bytes(body) + e.partial)
            size = int(line.split(b";")[0].strip(), 16)
            if size == 0:
                break
            try:
                body += self.read_exact(size)
                if self.read_exact(2) != b"\r\n":
                    raise AssertionError("chunk not followed by CRLF")
            except Closed as e:
                raise Closed("closed inside chunked body", bytes(body) + e.partial)
        while True:
            line = self.read_until(b"\r\n")
            if line == b"\r\n":
                break
            name, _, value = line[:-2].partition(b":")
            resp.trailers.append((name.decode("latin-1"),
                                  value.strip().decode("latin-1")))
        return bytes(body)

    def expect_closed(self, timeout=3):
        """True when the server closes (EOF or reset) within `timeout` seconds
        without sending anything more; the extra bytes otherwise stay in buf."""
        deadline = time.monotonic() + timeout
        while not self.eof:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                if not self._fill(timeout=left):
                    break
            except socket.timeout:
                return False
        return self.eof and not self.buf

    def still_open(self, wait=0.3):
        """True when nothing arrives and the connection is not closed."""
        try:
            got = self._fill(timeout=wait)
        except socket.timeout:
            return not self.eof
        return False if not got else not self.eof


def request(method="GET", path="/", headers=None, body=b"", version="HTTP/1.1",
            host="127.0.0.1"):
    """Build request bytes. headers: list of (name, value); Host is added first
    unless host is None. Content-Length is NOT added automatically."""
    lines = ["%s %s %s" % (method, path, version)]
    if host is not None:
        lines.append("host: %s" % host)
    for k, v in headers or []:
        lines.append("%s: %s" % (k, v))
    data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    if isinstance(body, str):
        body = body.encode()
    return data + body


def exchange(srv, data, method="GET", timeout=5):
    """Open a connection, send `data`, read one response."""
    with srv.connect(timeout=timeout) as c:
        c.send_lenient(data)
        return c.read_response(method)


def chunked(*parts, trailers=b""):
    out = b""
    for p in parts:
        if isinstance(p, str):
            p = p.encode()
        out += b"%x\r\n%s\r\n" % (len(p), p)
    return out + b"0\r\n" + trailers + b"\r\n"


def assert_rejected(srv, data, status, closes=True):
    """Send `data` on a fresh connection and expect `status` from the core.

    Another connection, opened and used before the bad request, must keep
    working afterwards ("other connections never notice"). With `closes`,
    the bad connection must be closed after the response."""
    with srv.connect() as other:
        other.send(request("GET", "/p/before"))
        first = other.read_response()
        assert first.status == 200, first
        with srv.connect() as c:
            c.send_lenient(data)
            resp = c.read_response()
            wanted = status if isinstance(status, tuple) else (status,)
            assert resp.status in wanted, "expected %r, got %r" % (status, resp)
            if closes:
                assert c.expect_closed(3), (
                    "connection not closed after %d (extra bytes: %r)"
                    % (resp.status, bytes(c.buf[:200])))
        other.send(request("GET", "/p/after"))
        after = other.read_response()
        assert after.status == 200 and after.body == b"/p/after", after
    return resp
