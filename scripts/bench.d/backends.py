"""The servers behind the outbound and data rows: an nginx upstream answering
"Hello world!", redis-server, PostgreSQL 15. Each is started once per bench run
(lazily, by the first row that needs it), on a free loopback port in the bench's
temp dir, pinned to the load generator's core (core 0) so the measured server
keeps core 1 to itself, and stopped by PID at exit. A missing program makes the
row n/a (servers.Unsupported), as a missing anchor does.
"""
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import procstat
import servers

PG_BIN = "/usr/lib/postgresql/15/bin"
GREETING = "Hello world!"   # what every backend hands back: the hello rows' body
SQL_ROWS = 1000             # rows in the primary-key table (SQLite and PostgreSQL)

_started = {}   # name -> Backend
_dirs = []      # made outside the bench's temp dir, removed by stop_all()


class Backend:
    def __init__(self, name, proc, port, url, extra=None):
        self.name, self.proc, self.port, self.url = name, proc, port, url
        self.extra = extra or {}

    def pids(self):
        return procstat.tree(self.proc.pid)


def _need(path, what):
    if not path or not os.access(path, os.X_OK):
        raise servers.Unsupported(f"{what} not installed (scripts/setup installs it)")


def _wait(cond, proc, what, log, timeout=30):
    deadline = time.monotonic() + timeout
    while not cond():
        if proc.poll() is not None:
            raise servers.StartError(f"{what} exited {proc.returncode}: {servers._tail(log)}")
        if time.monotonic() > deadline:
            raise servers.StartError(f"{what} not ready within {timeout} s: {servers._tail(log)}")
        time.sleep(0.05)


def _popen(cmd, log, **kw):
    with open(log, "ab") as out:
        return subprocess.Popen(["taskset", "-c", "0"] + cmd, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, **kw)


def _upstream(tmp, name="upstream", h2=False):
    """nginx, C only, `return 200` at /: what both lariat and the nginx anchor proxy to.
    h2: the same speaking h2c (prior knowledge) for the HTTP/2-upstream rows."""
    _need("/usr/sbin/nginx", "nginx")
    prefix = os.path.join(tmp, name)
    os.makedirs(f"{prefix}/tmp")
    port = servers.free_port()
    with open(f"{prefix}/nginx.conf", "w") as f:
        f.write(f"""daemon off; master_process on; worker_processes 1;
pid {prefix}/nginx.pid; error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 1000000; keepalive_timeout 120s;
  default_type text/plain; client_body_temp_path {prefix}/tmp/body;
  proxy_temp_path {prefix}/tmp/proxy; fastcgi_temp_path {prefix}/tmp/fastcgi;
  uwsgi_temp_path {prefix}/tmp/uwsgi; scgi_temp_path {prefix}/tmp/scgi;
  server {{ listen 127.0.0.1:{port} backlog=4096{" http2" if h2 else ""};
    location / {{ return 200 "{GREETING}"; }} }} }}
""")
    log = f"{prefix}/server.log"
    proc = _popen(["/usr/sbin/nginx", "-p", prefix, "-e", f"{prefix}/error.log",
                   "-c", f"{prefix}/nginx.conf"], log)
    _wait(lambda: servers._accepts(port), proc, "upstream nginx", log)
    return Backend(name, proc, port, f"http://127.0.0.1:{port}")


def _resp(port, *args):
    out = b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a)
                                            for a in (x.encode() for x in args))
    with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
        s.sendall(out)
        return s.recv(4096)


def _redis(tmp):
    _need("/usr/bin/redis-server", "redis-server")
    d = os.path.join(tmp, "redis")
    os.makedirs(d)
    port = servers.free_port()
    log = f"{d}/server.log"
    proc = _popen(["/usr/bin/redis-server", "--port", str(port), "--bind", "127.0.0.1",
                   "--save", "", "--appendonly", "no", "--dir", d, "--daemonize", "no"], log)

    def ready():
        try:
            return _resp(port, "PING") == b"+PONG\r\n"
        except OSError:
            return False
    _wait(ready, proc, "redis-server", log)
    _resp(port, "SET", "greeting", GREETING)
    return Backend("redis", proc, port, f"redis://127.0.0.1:{port}/0")


def _pg(tmp):
    _need(f"{PG_BIN}/postgres", "PostgreSQL 15")
    # not under the bench's temp dir: that is mode 0700 and root's, and
    # postgres runs as its own user
    d = tempfile.mkdtemp(prefix="lariat-bench-pg.")
    _dirs.append(d)
    os.chmod(d, 0o755)
    as_user = []
    if os.getuid() == 0:   # postgres refuses to run as root
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            raise servers.Unsupported("running as root and no `postgres` user")
        os.chown(d, pw.pw_uid, pw.pw_gid)
        as_user = ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--clear-groups"]
    env = dict(os.environ, LC_ALL="C.UTF-8", LANG="C.UTF-8")
    data, log, port = f"{d}/data", f"{d}/server.log", servers.free_port()
    p = subprocess.run(as_user + [f"{PG_BIN}/initdb", "-D", data, "-U", "postgres", "-A", "trust",
                                  "-E", "UTF8", "--no-sync"], capture_output=True, env=env)
    if p.returncode:
        raise servers.StartError(f"initdb failed: {p.stderr.decode()[-300:]}")
    proc = _popen(as_user + [f"{PG_BIN}/postgres", "-D", data, "-p", str(port), "-h", "127.0.0.1",
                             "-k", d, "-c", "fsync=off", "-c", "shared_buffers=16MB"], log, env=env)

    def psql(sql):
        return subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
                               "-XAtq", "-v", "ON_ERROR_STOP=1", "-c", sql],
                              capture_output=True, env=env)
    _wait(lambda: psql("SELECT 1").returncode == 0, proc, "postgres", log)
    p = psql("CREATE TABLE greetings (id int PRIMARY KEY, v text NOT NULL); "
             f"INSERT INTO greetings SELECT i, '{GREETING}' FROM generate_series(1, {SQL_ROWS}) i; "
             "ANALYZE greetings")
    if p.returncode:
        raise servers.StartError(f"psql: {p.stderr.decode()[-300:]}")
    return Backend("pg", proc, port, f"postgresql://postgres@127.0.0.1:{port}/postgres")


def _sqlite(tmp):
    # no server: lariat's app creates and fills the file at load time
    return Backend("sqlite", None, 0, os.path.join(tmp, "bench.db"))


_START = {"upstream": _upstream, "upstream_h2": lambda tmp: _upstream(tmp, "upstream_h2", h2=True),
          "redis": _redis, "pg": _pg, "sqlite": _sqlite}
_failed = {}


def get(name, tmp):
    """The running backend `name`, started on first use; a failure is remembered."""
    if name in _failed:
        raise _failed[name]
    if name not in _started:
        try:
            _started[name] = _START[name](tmp)
        except (servers.Unsupported, servers.StartError) as e:
            _failed[name] = e
            raise
    return _started[name]


def cpu_seconds(backend):
    """user + system CPU seconds used so far by a backend's processes (0 for SQLite)."""
    if backend.proc is None:
        return 0.0
    return sum(procstat.cpu_seconds(backend.pids()))


def stop_all():
    for b in list(_started.values()):
        if b.proc is not None and b.proc.poll() is None:
            # postgres: SIGQUIT is the immediate shutdown of every backend;
            # nginx and redis-server exit on SIGTERM
            pids = b.pids()
            b.proc.send_signal(signal.SIGQUIT if b.name == "pg" else signal.SIGTERM)
            try:
                b.proc.wait(15)
            except subprocess.TimeoutExpired:
                for pid in pids:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                b.proc.wait(5)
    _started.clear()
    for d in _dirs:
        shutil.rmtree(d, ignore_errors=True)
    _dirs.clear()
