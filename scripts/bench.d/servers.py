"""Start and stop the servers under test: lariat, nginx + lua, h2o + mruby.

Every measurement gets a fresh server (so no run inherits another's warm caches
or freed-but-kept memory), in its own prefix directory under the bench's temp
dir, on free loopback ports. Every server started is registered here so that
stop_all() can stop it by PID at exit, also after Ctrl-C or an error.
"""
import os
import resource
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field

import procstat

SERVERS = ("lariat", "nginx", "h2o")
LABELS = {"lariat": "lariat", "nginx": "nginx + lua", "h2o": "h2o + mruby"}

_running = []


class Unsupported(Exception):
    """A server cannot run this row (lariat not built or lacking a feature; the
    reference configs of ../shared/anchors absent from this checkout's
    surroundings, as on a CI clone): the cell says n/a."""


class StartError(Exception):
    """A server did not come up; the message carries the tail of its log."""


@dataclass
class Server:
    kind: str
    proc: subprocess.Popen
    h1_port: int
    h2c_port: int    # same as h1_port where one port speaks both (lariat, h2o)
    tls_port: int    # 0 when started without TLS
    log: str
    prefix: str = ""

    def pids(self):
        return procstat.tree(self.proc.pid)


@dataclass
class Env:
    """What every start() needs to know, fixed for the whole bench run."""
    repo: str
    tmp: str        # the bench's mktemp -d
    lariat: str     # path of the release binary
    app: str        # the lariat app serving / and POST /echo
    anchors: str    # directory of the anchor config templates
    cert: str
    key: str


def free_port():
    # Ask the kernel for a free loopback port; the tiny race until the server
    # binds it is acceptable on a machine where nothing else grabs random ports.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fill(template, words):
    if not os.path.exists(template):
        raise Unsupported("no reference config at %s (set LARIAT_ANCHORS)" % template)
    with open(template) as f:
        text = f.read()
    for k, v in words.items():
        text = text.replace(f"@{k}@", str(v))
    return text


_COMPRESS_CONF = """daemon off;
master_process on;
worker_processes {workers};
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 16384; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 120s;
  client_body_temp_path {prefix}/tmp/body;
  proxy_temp_path {prefix}/tmp/proxy;
  fastcgi_temp_path {prefix}/tmp/fastcgi;
  uwsgi_temp_path {prefix}/tmp/uwsgi;
  scgi_temp_path {prefix}/tmp/scgi;
  server {{
    listen 127.0.0.1:{port} reuseport backlog=4096;
    location = /json {{
      default_type application/json;
      gzip on; gzip_comp_level 6; gzip_min_length 1024; gzip_types application/json;
      gzip_vary on;
      alias {json};
    }}
  }}
}}
"""


def _nginx(env, prefix, workers, tls, spec):
    h1, h2c = free_port(), free_port()
    tls_port = free_port() if tls else 0
    os.makedirs(f"{prefix}/tmp")
    if spec.anchor == "compress":
        # no template in ../shared/anchors: nginx's own static file path with
        # `gzip on` at the level lariat's row uses, C only (its cheapest way)
        h2c = h1
        conf = _COMPRESS_CONF.format(prefix=prefix, workers=workers, port=h1,
                                     json=spec.files["json"])
    elif spec.anchor == "upstream":
        # one port; ports of backends a row doesn't use point nowhere (port 1)
        h2c = h1
        conf = _fill(f"{env.anchors}/nginx-upstream.conf.in",
                     {"PREFIX": prefix, "WORKERS": workers, "PORT": h1,
                      "LUALIB": f"{env.anchors}/lualib",
                      "UPSTREAM_PORT": spec.ports.get("upstream", 1),
                      "REDIS_PORT": spec.ports.get("redis", 1)})
    elif spec.anchor == "static":
        h2c = h1
        conf = _fill(os.path.join(os.path.dirname(os.path.abspath(__file__)), "nginx-static.conf.in"),
                     {"PREFIX": prefix, "WORKERS": workers, "H1_PORT": h1,
                      "ROOT": spec.app_env["BENCH_STATIC_DIR"]})
    else:
        conf = _fill(f"{env.anchors}/nginx-lua.conf.in",
                     {"PREFIX": prefix, "WORKERS": workers, "H1_PORT": h1, "H2C_PORT": h2c})
    if spec.single_process:
        # - under callgrind: one process serving (callgrind follows no fork)
        conf = conf.replace("master_process on;", "master_process off;")
    # Deviations from the template, each needed for a fair run:
    # - without CAP_SYS_RESOURCE nginx cannot raise the fd limit past the hard
    #   limit and logs an alert; ask for what we have (already raised by bench.py).
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    conf = conf.replace("worker_rlimit_nofile 65536;", f"worker_rlimit_nofile {hard};")
    # - the template's /echo answers an empty body for a 64 KiB POST: the body
    #   goes to a temp file (client_body_buffer_size defaults to 16k) and
    #   ngx.req.get_body_data() then returns nil. Keep bodies up to 128k in memory.
    conf = conf.replace("client_max_body_size 64m;",
                        "client_max_body_size 64m; client_body_buffer_size 128k;")
    if tls:
        # - a TLS listener (ALPN h2) next to the anchor's two plain ones.
        conf = conf.replace(
            "    location = / ",
            f"    listen 127.0.0.1:{tls_port} ssl http2 reuseport backlog=4096;\n"
            f"    ssl_certificate {env.cert};\n    ssl_certificate_key {env.key};\n"
            "    location = / ", 1)
    with open(f"{prefix}/nginx.conf", "w") as f:
        f.write(conf)
    cmd = ["nginx", "-p", prefix, "-e", f"{prefix}/error.log", "-c", f"{prefix}/nginx.conf"]
    return cmd, h1, h2c, tls_port


def _h2o(env, prefix, workers, tls, spec):
    port = free_port()
    tls_port = free_port() if tls else 0
    os.makedirs(prefix)
    conf = _fill(f"{env.anchors}/h2o-mruby.conf.in",
                 {"PREFIX": prefix, "WORKERS": workers, "PORT": port})
    # Deviations from the template:
    # - h2o closes idle keep-alive connections after 10 s by default; give it
    #   nginx's 120 s so the idle-memory rows measure open connections.
    # - a TLS listener (ALPN h2), without the OCSP fetcher a self-signed cert can't use.
    extra = "http1-request-timeout: 120\nhttp2-idle-timeout: 120\n"
    if tls:
        extra += (f"listen:\n  host: 127.0.0.1\n  port: {tls_port}\n  ssl:\n"
                  f"    certificate-file: {env.cert}\n    key-file: {env.key}\n"
                  "    ocsp-update-interval: 0\n")
    conf = conf.replace("\nhosts:\n", "\n" + extra + "hosts:\n", 1)
    # - the template has no /echo; same handler style as its "/".
    conf += ("      /echo:\n        mruby.handler: |\n          Proc.new do |env|\n"
             "            [200, {\"content-type\" => \"application/octet-stream\"},"
             " [env[\"rack.input\"].read]]\n          end\n")
    with open(f"{prefix}/h2o.conf", "w") as f:
        f.write(conf)
    return ["h2o", "-c", f"{prefix}/h2o.conf"], port, port, tls_port


_help = {}


def _lariat_help(binary):
    if binary not in _help:
        p = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=10)
        _help[binary] = p.stdout + p.stderr
    return _help[binary]


def _lariat(env, prefix, workers, tls, spec):
    app = spec.app or env.app
    if not os.access(env.lariat, os.X_OK):
        raise Unsupported(f"{os.path.relpath(env.lariat, env.repo)} not built")
    if not os.path.exists(app):
        raise Unsupported(f"{os.path.relpath(app, env.repo)} missing")
    os.makedirs(prefix)
    port = free_port()
    cmd = [env.lariat, "--listen", f"127.0.0.1:{port}", "--workers", str(workers)]
    # Same as the nginx anchor's keepalive_requests 1000000 (h2o has no cap):
    # lariat's default of 1000 would make wrk reconnect and h2load fail after GOAWAY.
    if "--max-keepalive" in _lariat_help(env.lariat):
        cmd += ["--max-keepalive", "1000000"]
    tls_port = 0
    if tls:
        tls_port = free_port()
        cmd += ["--tls", f"127.0.0.1:{tls_port}", "--cert", env.cert, "--key", env.key]
        if spec.single_process:
            # under callgrind on a loaded machine 50 TLS handshakes can take longer
            # than the 10 s --header-timeout: nginx's and h2o's are 60 s
            cmd += ["--header-timeout", "60"]
    return cmd + [app], port, port, tls_port


def _accepts(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _tail(path, n=6):
    try:
        with open(path, errors="replace") as f:
            return " | ".join(l.strip() for l in f.readlines()[-n:])
    except OSError:
        return ""


@dataclass
class Spec:
    """What a row asks of the server beyond the hello anchors' defaults."""
    anchor: str = "lua"         # nginx template: "lua" (nginx-lua.conf.in) | "upstream" | "static"
    ports: dict = field(default_factory=dict)   # backend name -> port, for the template
    app: str = ""               # lariat app (default env.app)
    app_env: dict = field(default_factory=dict)  # environment of the lariat process
    wrap: list = field(default_factory=list)     # command prefix (valgrind ...)
    single_process: bool = False                 # nginx master_process off
    files: dict = field(default_factory=dict)    # name -> path of a file the row serves


def start(env, kind, workers=1, tls=False, pin=True, spec=None, timeout=15):
    """Start a fresh server; return once every port it listens on accepts."""
    spec = spec or Spec()
    prefix = os.path.join(env.tmp, f"{kind}-{time.monotonic_ns()}")
    cmd, h1, h2c, tls_port = {"nginx": _nginx, "h2o": _h2o, "lariat": _lariat}[kind](
        env, prefix, workers, tls, spec)
    cmd = spec.wrap + cmd
    if pin:
        cmd = ["taskset", "-c", "1"] + cmd  # the server's core; load runs on core 0
    log = f"{prefix}/server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=env.repo, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT,
                                env=dict(os.environ, **spec.app_env) if spec.app_env else None)
    server = Server(kind, proc, h1, h2c, tls_port, log, prefix)
    _running.append(server)
    ports = {h1, h2c} | ({tls_port} if tls_port else set())
    deadline = time.monotonic() + timeout
    while not all(_accepts(p) for p in ports):
        if proc.poll() is not None:
            stop(server)
            msg = f"{kind} exited with {proc.returncode}: {_tail(log)}"
            if kind == "lariat" and tls:
                raise Unsupported(f"lariat --tls failed ({msg})")
            raise StartError(msg)
        if time.monotonic() > deadline:
            stop(server)
            if kind == "lariat" and tls and _accepts(h1):
                raise Unsupported("lariat did not open its --tls listener")
            raise StartError(f"{kind} did not listen within {timeout} s: {_tail(log)}")
        time.sleep(0.05)
    return server


def stop(server, timeout=10):
    """SIGTERM the server's root process by PID, wait, then SIGKILL what is left
    of its tree (nginx workers would outlive a killed master)."""
    pids = [(pid, procstat.start_time(pid)) for pid in server.pids()]
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    for pid, started in pids:
        if started is not None and procstat.start_time(pid) == started:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    try:
        server.proc.wait(2)
    except subprocess.TimeoutExpired:
        pass
    if server in _running:
        _running.remove(server)


def stop_all():
    for server in list(_running):
        stop(server)
