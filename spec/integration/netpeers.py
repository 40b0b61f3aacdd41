"""Peers for the outbound tests (test_net_*.py): small TCP servers on
127.0.0.1 run in threads of the test process, a test CA made with openssl,
and Debian's nginx started on a generated config (stopped by PID)."""

import os
import signal
import socket
import ssl
import struct
import subprocess
import tempfile
import threading
import time


class Peer:
    """A TCP server on a free loopback port. mode:
      echo   every line comes back
      raw    every byte comes back as it arrives
      silent accepts, reads, never answers
      slow   every line comes back after `delay` seconds
      close  answers one line, then closes
      reset  reads one line, then resets (SO_LINGER 0)
      burst  sends `payload` then closes
    ssl_ctx: a server SSLContext to speak TLS."""

    def __init__(self, mode="echo", delay=1.0, payload=b"", ssl_ctx=None, backlog=128):
        self.mode, self.delay, self.payload, self.ssl_ctx = mode, delay, payload, ssl_ctx
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(backlog)
        self.port = self.sock.getsockname()[1]
        self.lock = threading.Lock()
        self.conns = []
        self.accepted = 0
        self.closed_by_peer = 0  # connections the other side (lariat) closed
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stopped:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.accepted += 1
                self.conns.append(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        try:
            if self.ssl_ctx:
                c = self.ssl_ctx.wrap_socket(c, server_side=True)
            if self.mode == "burst":
                c.sendall(self.payload)
                c.close()
                return
            buf = b""
            while True:
                data = c.recv(65536)
                if data and self.mode == "raw":
                    c.sendall(data)
                    continue
                if not data:
                    with self.lock:
                        self.closed_by_peer += 1
                    break
                buf += data
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if self.mode == "silent":
                        continue
                    if self.mode == "reset":
                        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                        c.close()
                        return
                    if self.mode == "slow":
                        time.sleep(self.delay)
                    c.sendall(line + b"\n")
                    if self.mode == "close":
                        c.close()
                        return
        except (OSError, ssl.SSLError):
            with self.lock:
                self.closed_by_peer += 1
        finally:
            try:
                c.close()
            except OSError:
                pass

    def close_all(self):
        """Close every accepted connection (as a server timing out keep-alives)."""
        with self.lock:
            conns, self.conns = self.conns, []
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()

    def stop(self):
        self.stopped = True
        self.sock.close()
        self.close_all()


class Unanswered:
    """A port whose SYNs go unanswered (a listener with a full backlog that never
    accepts): connects to it time out. `with Unanswered() as port: ...`"""

    def __enter__(self):
        self.s = socket.socket()
        self.s.bind(("127.0.0.1", 0))
        self.s.listen(0)
        self.fillers = []
        for _ in range(4):
            c = socket.socket()
            c.setblocking(False)
            c.connect_ex(self.s.getsockname())
            self.fillers.append(c)
        time.sleep(0.1)
        return self.s.getsockname()[1]

    def __exit__(self, *exc):
        for c in self.fillers:
            c.close()
        self.s.close()


def http_call(srv, path, data=None, headers=None, wait=20, method=None, **query):
    """(status, lowercase headers, body) of one request to lariat; query becomes the query string."""
    import urllib.error
    import urllib.parse
    import urllib.request
    url = srv.url(path) + ("?" + urllib.parse.urlencode(query) if query else "")
    req = urllib.request.Request(url, data=data, headers=headers or {},
                                 method=method or ("POST" if data is not None else "GET"))
    try:
        with urllib.request.urlopen(req, timeout=wait) as r:
            return r.status, dict((k.lower(), v) for k, v in r.headers.items()), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict((k.lower(), v) for k, v in e.headers.items()), e.read()


def wait_for(cond, timeout, step=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return cond()


class CA:
    """A CA and leaf certificates made with the openssl command line."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="lariat-ca-")
        self.ca_key = self._p("ca.key")
        self.ca = self._p("ca.pem")
        self._run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                  "-nodes", "-keyout", self.ca_key, "-out", self.ca, "-days", "2",
                  "-subj", "/CN=lariat test CA")

    def _p(self, name):
        return os.path.join(self.dir, name)

    def _run(self, *args):
        subprocess.run(["openssl"] + list(args), check=True, capture_output=True)

    def leaf(self, name, sans, expired=False):
        """(cert, key) for sans like "DNS:localhost,IP:127.0.0.1"."""
        key, csr, cert, ext = (self._p(name + s) for s in (".key", ".csr", ".pem", ".ext"))
        with open(ext, "w") as f:
            f.write("subjectAltName=%s\nbasicConstraints=CA:FALSE\n" % sans)
        self._run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                  "-keyout", key, "-out", csr, "-subj", "/CN=" + name)
        args = ["x509", "-req", "-in", csr, "-CA", self.ca, "-CAkey", self.ca_key,
                "-CAcreateserial", "-out", cert, "-extfile", ext]
        if expired:
            # valid yesterday only: -not_before/-not_after need OpenSSL 3.4; use a past window via -days on a faked start
            args += ["-days", "1", "-not_before", "20200101000000Z", "-not_after", "20200102000000Z"]
        else:
            args += ["-days", "2"]
        try:
            self._run(*args)
        except subprocess.CalledProcessError:
            if not expired:
                raise
            # older openssl: sign with the ca command and explicit dates
            self._expired_with_ca(csr, cert, ext)
        return cert, key

    def _expired_with_ca(self, csr, cert, ext):
        d = self.dir
        open(os.path.join(d, "index.txt"), "w").close()
        with open(os.path.join(d, "serial"), "w") as f:
            f.write("1000\n")
        conf = os.path.join(d, "ca.cnf")
        with open(conf, "w") as f:
            f.write("""[ca]
default_ca = d
[d]
dir = %s
database = $dir/index.txt
serial = $dir/serial
new_certs_dir = $dir
default_md = sha256
policy = p
copy_extensions = copy
[p]
commonName = supplied
""" % d)
        self._run("ca", "-batch", "-config", conf, "-cert", self.ca, "-keyfile", self.ca_key,
                  "-in", csr, "-out", cert, "-startdate", "20200101000000Z",
                  "-enddate", "20200102000000Z", "-extfile", ext, "-notext")

    def server_ctx(self, cert, key, alpn=None):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        if alpn:
            ctx.set_alpn_protocols(alpn)
        return ctx


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Nginx:
    """Debian's nginx on a generated config in a temp dir: `port` speaks
    HTTP/1.1, `tls_port` TLS (ALPN h2 and http/1.1) with a certificate from
    `ca` for localhost and 127.0.0.1. Files under /files/: 0, 1, 2m (random).
    /short/ closes idle keep-alive connections after 1 s. /trail/NAME is /files/NAME
    with a trailer `x-trail: done` (HTTP/2 only), /cookies/NAME with two set-cookie
    fields, and with `upstream` (a port) /up/ proxies there unbuffered and /wsup/X is
    a WebSocket proxied to its /ws/X."""

    def __init__(self, ca, upstream=None):
        self.dir = tempfile.mkdtemp(prefix="lariat-nginx-")
        www = os.path.join(self.dir, "www", "files")
        os.makedirs(www)
        os.makedirs(os.path.join(self.dir, "www", "short"))
        self.files = {"0": b"", "1": b"z", "2m": os.urandom(2 * 1024 * 1024)}
        for name, data in self.files.items():
            with open(os.path.join(www, name), "wb") as f:
                f.write(data)
            with open(os.path.join(self.dir, "www", "short", name), "wb") as f:
                f.write(data)
        cert, key = ca.leaf("nginx", "DNS:localhost,IP:127.0.0.1")
        self.port, self.tls_port = free_port(), free_port()
        d = self.dir
        conf = os.path.join(d, "nginx.conf")
        with open(conf, "w") as f:
            f.write("""
daemon off;
%(user)s
worker_processes 1;
error_log %(d)s/error.log;
pid %(d)s/nginx.pid;
events { worker_connections 1024; }
http {
  log_format conn '$connection $server_protocol $request_uri';
  access_log %(d)s/access.log conn;
  client_body_temp_path %(d)s/body;
  proxy_temp_path %(d)s/proxy;
  fastcgi_temp_path %(d)s/fastcgi;
  uwsgi_temp_path %(d)s/uwsgi;
  scgi_temp_path %(d)s/scgi;
  default_type application/octet-stream;
  keepalive_requests 100000;
  server {
    listen 127.0.0.1:%(port)d;
    listen 127.0.0.1:%(tls_port)d ssl http2;
    ssl_certificate %(cert)s;
    ssl_certificate_key %(key)s;
    root %(d)s/www;
    location /short/ { keepalive_timeout 1s; }
    location /trail/ { alias %(d)s/www/files/; add_trailer x-trail done; }
    location /cookies/ {
      alias %(d)s/www/files/;
      add_header set-cookie "a=1; Path=/";
      add_header set-cookie "b=2, c=3";
    }
    %(up)s
  }
}
""" % {"d": d, "port": self.port, "tls_port": self.tls_port, "cert": cert, "key": key,
       "user": "user root;" if os.geteuid() == 0 else "",
       "up": ("location /up/ { proxy_pass http://127.0.0.1:%d/; proxy_http_version 1.1; "
              "proxy_request_buffering off; proxy_buffering off; client_max_body_size 0; }"
              "location /wsup/ { proxy_pass http://127.0.0.1:%d/ws/; proxy_http_version 1.1; "
              "proxy_set_header Upgrade $http_upgrade; proxy_set_header Connection upgrade; }"
              % (upstream, upstream))
       if upstream else ""})
        self.proc = subprocess.Popen(["nginx", "-p", d, "-c", conf], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if not wait_for(lambda: self._up(), 10):
            self.stop()
            raise RuntimeError("nginx did not start: %s" % self.error_log())

    def _up(self):
        if self.proc.poll() is not None:
            return False
        for p in (self.port, self.tls_port):
            try:
                socket.create_connection(("127.0.0.1", p), timeout=0.2).close()
            except OSError:
                return False
        return True

    def access(self):
        """[(connection serial, protocol, uri)] of the requests so far."""
        try:
            with open(os.path.join(self.dir, "access.log")) as f:
                return [tuple(l.split(" ", 2)) for l in f.read().splitlines()]
        except OSError:
            return []

    def error_log(self):
        try:
            with open(os.path.join(self.dir, "error.log")) as f:
                return f.read()[-2000:]
        except OSError:
            return ""

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


class H2Peer(Peer):
    """An h2c server (prior knowledge, python-h2) on a loopback port, for what
    nginx can't be made to do on cue. GET /hang is never answered; /slow?s=S
    answers after S seconds; anything else answers "ok PATH" at once. Streams
    the client resets are recorded in `resets` as (stream id, error code).
    goaway_after=N: on each connection the first N requests are served; the
    next one gets GOAWAY(last-stream-id = the Nth), which refuses it and any
    later stream. `open`: connections open now, `peak`: the most at once.
    max_streams=N: SETTINGS_MAX_CONCURRENT_STREAMS N (python-h2 fails the
    connection of a client that opens more)."""

    def __init__(self, goaway_after=None, max_streams=None):
        self.goaway_after = goaway_after
        self.max_streams = max_streams
        self.open = 0
        self.peak = 0
        self.served = 0
        self.resets = []
        super().__init__(mode="h2")

    def _serve(self, s):
        import urllib.parse
        import h2.config
        import h2.connection
        import h2.events
        with self.lock:
            self.open += 1
            self.peak = max(self.peak, self.open)
        conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=False))
        if self.max_streams:
            import h2.settings
            conn.local_settings = h2.settings.Settings(
                client=False, initial_values={h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.max_streams})
        conn.initiate_connection()
        due = {}  # stream id -> (time, body)
        n, last_ok, goaway = 0, 0, False
        try:
            s.sendall(conn.data_to_send())
            s.settimeout(0.01)
            while True:
                try:
                    data = s.recv(65536)
                    if not data:
                        break
                except socket.timeout:
                    data = None
                if data:
                    for ev in conn.receive_data(data):
                        if isinstance(ev, h2.events.RequestReceived):
                            n += 1
                            if self.goaway_after and n > self.goaway_after:
                                if not goaway:  # by hand: python-h2 would stop serving the rest
                                    from hyperframe.frame import GoAwayFrame
                                    s.sendall(conn.data_to_send() + GoAwayFrame(0, last_stream_id=last_ok).serialize())
                                    goaway = True
                                continue
                            last_ok = ev.stream_id
                            hd = dict((k.decode() if isinstance(k, bytes) else k,
                                       v.decode() if isinstance(v, bytes) else v) for k, v in ev.headers)
                            u = urllib.parse.urlsplit(hd[":path"])
                            if u.path.endswith("/hang"):
                                continue
                            delay = 0.0
                            if u.path.endswith("/slow"):
                                delay = float(urllib.parse.parse_qs(u.query).get("s", ["1"])[0])
                            due[ev.stream_id] = (time.monotonic() + delay, ("ok " + u.path).encode())
                        elif isinstance(ev, h2.events.DataReceived):
                            conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                        elif isinstance(ev, h2.events.StreamReset):
                            with self.lock:
                                self.resets.append((ev.stream_id, ev.error_code))
                            due.pop(ev.stream_id, None)
                now = time.monotonic()
                for sid, (t, body) in list(due.items()):
                    if t <= now:
                        del due[sid]
                        conn.send_headers(sid, [(":status", "200"), ("content-length", str(len(body)))])
                        conn.send_data(sid, body, end_stream=True)
                        with self.lock:
                            self.served += 1
                out = conn.data_to_send()
                if out:
                    s.sendall(out)
                if goaway and not due:
                    break
        except OSError:  # the client went, or stop() closed it
            pass
        except Exception:  # noqa: BLE001 - a protocol failure shows in the test's output
            import traceback
            traceback.print_exc()
        finally:
            with self.lock:
                self.open -= 1
            s.close()


class HttpPeer(Peer):
    """An HTTP/1.1 server answering each request (its head read up to the
    empty line) with raw bytes of the test's choosing: `answer(n)` gives the
    bytes for the n-th request overall (from 1), or a (bytes, close) pair to
    close the connection after them. split=k sends them k bytes at a time,
    gap seconds apart (split=1: every byte on its own). `requests`: heads read;
    `open`: connections open now; `closed_by_peer`: those the client closed."""

    def __init__(self, answer, split=0, gap=0.0):
        self.answer, self.split, self.gap = answer, split, gap
        self.requests = 0
        self.open = 0
        super().__init__(mode="http")

    def _serve(self, c):
        with self.lock:
            self.open += 1
        buf = b""
        try:
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            while True:
                while b"\r\n\r\n" not in buf:
                    data = c.recv(65536)
                    if not data:
                        with self.lock:
                            self.closed_by_peer += 1
                        return
                    buf += data
                buf = buf.split(b"\r\n\r\n", 1)[1]
                with self.lock:
                    self.requests += 1
                    n = self.requests
                out = self.answer(n)
                close = False
                if isinstance(out, tuple):
                    out, close = out
                step = self.split or len(out) or 1
                for i in range(0, len(out), step):
                    c.sendall(out[i:i + step])
                    if self.gap:
                        time.sleep(self.gap)
                if close:
                    return
        except OSError:
            pass
        finally:
            with self.lock:
                self.open -= 1
            c.close()
