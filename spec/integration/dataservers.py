"""Real database servers for spec/integration/test_data_*.py: started by the
tests on free loopback ports in temp dirs, stopped by PID (never by name)."""

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

import pytest

# ASan builds run ~3x slower: bounds on durations scale with it
SLOW = 3.0 if os.environ.get("LARIAT_SANITIZE") in ("1", "ON", "TRUE", "true") else 1.0


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(cond, timeout, what, step=0.02):
    deadline = time.monotonic() + timeout * SLOW
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for " + what)
        time.sleep(step)


def get(srv, path, timeout=10):
    """GET → (status, parsed JSON or text)."""
    try:
        with urllib.request.urlopen(srv.url(path), timeout=timeout * SLOW) as r:
            status, body, ctype = r.status, r.read(), r.headers.get("content-type", "")
    except urllib.error.HTTPError as e:
        status, body, ctype = e.code, e.read(), e.headers.get("content-type", "")
    if "json" in ctype:
        return status, json.loads(body)
    return status, body.decode("utf-8", "replace")


def _which(name, *extra_dirs):
    for d in extra_dirs:
        p = os.path.join(d, name)
        if os.access(p, os.X_OK):
            return p
    return shutil.which(name)


def _resp_end(sock, buf, pos):
    """Read from sock into buf until the RESP value at pos is complete; its end."""
    def line_end(p):
        while True:
            i = buf.find(b"\r\n", p)
            if i >= 0:
                return i
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("redis closed mid-reply")
            buf.extend(chunk)
    e = line_end(pos)
    kind, head = buf[pos:pos + 1], bytes(buf[pos + 1:e])
    pos = e + 2
    if kind == b"$" and int(head) >= 0:
        while len(buf) < pos + int(head) + 2:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("redis closed mid-reply")
            buf.extend(chunk)
        return pos + int(head) + 2
    if kind == b"*":
        for _ in range(max(int(head), 0)):
            pos = _resp_end(sock, buf, pos)
    return pos


class Redis:
    """redis-server on 127.0.0.1:port, no persistence, in a temp dir."""

    def __init__(self, password=None):
        self.bin = _which("redis-server")
        if self.bin is None:
            pytest.skip("redis-server is not installed (scripts/setup installs it)")
        self.dir = tempfile.mkdtemp(prefix="lariat-redis-")
        self.port = free_port()
        self.password = password
        self.proc = None

    def start(self):
        argv = [self.bin, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", self.dir, "--daemonize", "no", "--logfile", "",
                "--enable-debug-command", "yes"]
        if self.password:
            argv += ["--requirepass", self.password]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(self._ping, 10, "redis-server to answer")
        return self

    def _ping(self):
        try:
            return self.cli("PING") == b"+PONG\r\n"
        except OSError:
            return False

    def cli(self, *args, db=0):
        """One command over a raw socket (RESP) in database db; returns the raw reply bytes."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            msgs = []
            if self.password:
                msgs.append(["AUTH", self.password])
            if db:
                msgs.append(["SELECT", str(db)])
            msgs.append([str(a) for a in args])
            out = b""
            for m in msgs:
                out += b"*%d\r\n" % len(m)
                for a in m:
                    a = a.encode()
                    out += b"$%d\r\n%s\r\n" % (len(a), a)
            s.sendall(out)
            buf = bytearray()
            pos = 0
            for _ in msgs:
                start = pos
                pos = _resp_end(s, buf, pos)
            return bytes(buf[start:pos])

    def clients(self):
        """Connected clients, as redis-server counts them (minus the asking one)."""
        info = self.cli("INFO", "clients").decode()
        for line in info.splitlines():
            if line.startswith("connected_clients:"):
                return int(line.split(":")[1]) - 1
        raise AssertionError(info)

    def url(self, db=0):
        auth = (":%s@" % self.password) if self.password else ""
        return "redis://%s127.0.0.1:%d/%d" % (auth, self.port, db)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class Postgres:
    """PostgreSQL 15 as the unprivileged `postgres` user (it refuses root), data
    and unix socket in a temp dir, TCP on 127.0.0.1:port, trust auth."""

    BIN = "/usr/lib/postgresql/15/bin"

    def __init__(self):
        self.initdb = _which("initdb", self.BIN)
        self.postgres = _which("postgres", self.BIN)
        if self.initdb is None or self.postgres is None:
            pytest.skip("PostgreSQL 15 is not installed (scripts/setup installs postgresql-15)")
        self.dir = tempfile.mkdtemp(prefix="lariat-pg-")
        os.chmod(self.dir, 0o755)
        self.data = os.path.join(self.dir, "data")
        self.port = free_port()
        self.proc = None
        self._as_user = []
        if os.getuid() == 0:
            import pwd
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                pytest.skip("running as root and no `postgres` user to run PostgreSQL as")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            self._as_user = ["setpriv", "--reuid=%d" % pw.pw_uid, "--regid=%d" % pw.pw_gid, "--clear-groups"]
        out = subprocess.run(self._as_user + [self.initdb, "-D", self.data, "-U", "postgres", "-A", "trust",
                                              "-E", "UTF8", "--no-sync"],
                             capture_output=True, env=self._env())
        if out.returncode != 0:
            raise RuntimeError("initdb failed: %s" % out.stderr.decode()[-2000:])

    def _env(self):
        env = dict(os.environ)
        env["LC_ALL"] = "C.UTF-8"
        env["LANG"] = "C.UTF-8"
        return env

    def start(self):
        argv = self._as_user + [self.postgres, "-D", self.data, "-p", str(self.port), "-h", "127.0.0.1",
                                "-k", self.dir, "-c", "fsync=off", "-c", "max_connections=100",
                                "-c", "shared_buffers=16MB", "-c", "logging_collector=off"]
        self.log = open(os.path.join(self.dir, "log"), "ab")
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=self.log, env=self._env())
        wait_until(self._ready, 30, "postgres to accept connections", step=0.1)
        return self

    def _ready(self):
        if self.proc.poll() is not None:
            raise RuntimeError("postgres exited: %s" % open(os.path.join(self.dir, "log")).read()[-2000:])
        return self.psql("SELECT 1", check=False) == "1"

    def psql(self, sql, check=True):
        out = subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", "postgres",
                              "-XAtq", "-v", "ON_ERROR_STOP=1", "-c", sql], capture_output=True, env=self._env())
        if check and out.returncode != 0:
            raise RuntimeError("psql: %s" % out.stderr.decode())
        return out.stdout.decode().strip()

    def url(self):
        return "postgresql://postgres@127.0.0.1:%d/postgres" % self.port

    def stop(self):
        if self.proc and self.proc.poll() is None:
            # SIGKILL of the postmaster alone would leave backends behind: SIGQUIT is
            # PostgreSQL's immediate shutdown (every backend exits at once)
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
