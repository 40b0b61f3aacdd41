"""One measurement: start a fresh server, warm it up, load it, read its CPU or
memory from /proc, stop it. Returns a dict of numbers; raises servers.Unsupported
(cell says n/a), servers.StartError or load.LoadError (cell says failed)."""
import glob
import os
import re
import subprocess
import time
from dataclasses import dataclass, field

import backends
import compress_body
import load
import procstat
import servers

HERE = os.path.dirname(os.path.abspath(__file__))
PY = "/usr/bin/python3"   # Debian's, not the one first on PATH


@dataclass
class Row:
    name: str       # what --only matches
    title: str      # what the table says
    kind: str       # "wrk" | "wrk-post" | "h2c" | "h2-tls" | "idle" | "download"
    workers: int = 1
    pin: bool = True
    proto: str = "h1"   # idle rows: h1 | h2c | h2-tls
    conns: int = 0      # idle rows: N
    path: str = "/"     # what lariat is asked for
    anchor_path: str = ""   # what the anchors are asked for (default: path)
    anchor: str = "lua"     # nginx template, see servers.Spec
    needs: tuple = ()       # backends (backends.py) the row talks to
    kinds: tuple = servers.SERVERS   # servers measured (anchors that have the work)
    labels: dict = field(default_factory=dict)   # kind -> table label, if not servers.LABELS
    callgrind: bool = False  # also count instructions per request (full runs only)
    headers: tuple = ()      # request headers, "name: value" (wrk -H, h2load -H)
    cg_requests: int = 0     # callgrind requests when not CG_REQUESTS (rows costing ms each)

    def path_for(self, kind):
        return self.path if kind == "lariat" else (self.anchor_path or self.path)


@dataclass
class Opts:
    duration: int       # wrk -d
    h2_requests: int    # h2load -n
    warmup: bool        # a short unmeasured run first (JITs, caches, lazy init)
    tmp: str = ""       # the bench's temp dir (backends live there)


STATIC_FILES = {"4k.bin": 4096, "200m.bin": 200 * 1000 * 1000}


def static_dir(tmp):
    """the static rows' files (random bytes), made once per bench run"""
    d = os.path.join(tmp, "static")
    if not os.path.isdir(d):
        os.makedirs(d)
        # nginx's workers run as nobody: let them through the bench's 0700 temp
        # dir (traverse only, no listing) into this one
        os.chmod(tmp, 0o711)
        os.chmod(d, 0o755)
        for name, size in STATIC_FILES.items():
            with open(os.path.join(d, name), "wb") as f:
                for off in range(0, size, 1 << 20):
                    f.write(os.urandom(min(1 << 20, size - off)))
    return d


def _spec(env, row, kind, opts):
    """servers.Spec for this row: the backends it needs started, their ports and
    URLs handed to the anchor template or to lariat's outbound app."""
    spec = servers.Spec(anchor=row.anchor)
    if row.anchor == "compress":
        # both servers serve the same JSON file: lariat through its middleware
        spec.files["json"] = compress_body.path(opts.tmp)
        if kind == "lariat":
            spec.app = os.path.join(HERE, "compress.lua")
            spec.app_env["BENCH_JSON"] = spec.files["json"]
    if row.anchor == "static":
        spec.app = os.path.join(HERE, "static.lua")
        spec.app_env["BENCH_STATIC_DIR"] = static_dir(opts.tmp)
        return spec
    if not row.needs:
        return spec
    if kind == "lariat":
        spec.app = os.path.join(HERE, "outbound.lua")
        spec.app_env["BENCH_SQL_ROWS"] = str(backends.SQL_ROWS)
    for name in row.needs:
        b = backends.get(name, opts.tmp)
        spec.ports[name] = b.port
        spec.app_env[f"BENCH_{name.upper()}"] = b.url
    return spec


def _backend_cpu(row, opts):
    return sum(backends.cpu_seconds(backends.get(n, opts.tmp)) for n in row.needs)


def _check_h2(server, row):
    """lariat may not speak h2c / TLS yet: say n/a instead of loading a deaf port.
    An anchor that fails the probe is broken, which is an error."""
    ok = (load.speaks_tls_h2(server.tls_port) if row.kind == "h2-tls"
          else load.speaks_h2c(server.h2c_port))
    if not ok:
        what = "TLS with ALPN h2" if row.kind == "h2-tls" else "h2c (prior knowledge)"
        if server.kind == "lariat":
            raise servers.Unsupported(f"lariat does not speak {what} yet")
        raise load.LoadError(f"{server.kind} does not answer {what}")


DOWNLOADS = 5   # the large-file row: this many downloads, one after the other


def _downloads(port, path, n):
    """n downloads with curl on the load core; the body is discarded"""
    t0 = time.monotonic()
    size = 0
    for _ in range(n):
        p = subprocess.run(["taskset", "-c", "0", "curl", "-s", "-S", "-o", "/dev/null", "-w",
                            "%{size_download} %{http_code}", f"http://127.0.0.1:{port}{path}"],
                           capture_output=True, text=True, timeout=300)
        got, code = (p.stdout.split() + ["0", "0"])[:2]
        if p.returncode or code != "200":
            raise load.LoadError(f"download failed: {p.stderr.strip() or code}")
        size += int(got)
    wall = time.monotonic() - t0
    return {"requests": n, "errors": 0, "rps": n / wall, "bytes_per_req": size / n}


def _run_load(server, row, opts, warmup=False):
    duration = 1 if warmup else opts.duration
    if row.kind == "download":
        return _downloads(server.h1_port, row.path_for(server.kind), 1 if warmup else DOWNLOADS)
    n = max(opts.h2_requests // 10, 1000) if warmup else opts.h2_requests
    if row.kind in ("wrk", "wrk-post"):
        return load.wrk(server.h1_port,
                        "/echo" if row.kind == "wrk-post" else row.path_for(server.kind),
                        duration=duration, post=row.kind == "wrk-post", pin=row.pin,
                        headers=row.headers)
    if row.kind == "h2c":
        return load.h2load(f"http://127.0.0.1:{server.h2c_port}/", n=n, pin=row.pin)
    return load.h2load(f"https://127.0.0.1:{server.tls_port}/", n=n, pin=row.pin)


def throughput(env, row, kind, opts):
    spec = _spec(env, row, kind, opts)
    server = servers.start(env, kind, workers=row.workers, tls=row.kind == "h2-tls", pin=row.pin,
                           spec=spec)
    try:
        if row.kind in ("h2c", "h2-tls"):
            _check_h2(server, row)
        if opts.warmup:
            _run_load(server, row, opts, warmup=True)
        pids = server.pids()
        user0, sys0 = procstat.cpu_seconds(pids)
        b0 = _backend_cpu(row, opts)
        r = _run_load(server, row, opts)
        user1, sys1 = procstat.cpu_seconds(pids)
        b1 = _backend_cpu(row, opts)
    finally:
        servers.stop(server)
    if not r["requests"]:
        raise load.LoadError(f"no successful requests ({r['errors']} errors)")
    # wrk prints bytes read with 3 significant digits ("1.01GB"): allow 5 %.
    # An echo that drops the body (nginx with bodies buffered to a file) is ~150 bytes.
    if row.kind == "wrk-post" and r["bytes_per_req"] < 0.95 * load.ECHO_BODY:
        raise load.LoadError(f"echoed {r['bytes_per_req']:.0f} bytes per request, "
                             f"not the {load.ECHO_BODY} sent")
    r["user_us"] = (user1 - user0) / r["requests"] * 1e6
    r["sys_us"] = (sys1 - sys0) / r["requests"] * 1e6
    r["cpu_us"] = r["user_us"] + r["sys_us"]
    if row.needs and b1 > b0:   # SQLite has no process of its own: its CPU is lariat's
        r["backend_us"] = (b1 - b0) / r["requests"] * 1e6
    return r


CG_REQUESTS = 20000   # per ../shared/anchors/README.md: h2load -n 20000 -c 50 [-m 10]


def _callgrind_total(path):
    with open(path) as f:
        for line in f:
            m = re.match(r"(summary|totals): (\d+)", line)
            if m:
                return int(m.group(2))
    raise load.LoadError(f"no totals in {path}")


def instructions(env, row, kind, opts):
    """Instructions per request of the serving process, every thread, under
    callgrind: warm-up, counters zeroed, a fixed h2load load, dumped, divided.
    Deterministic to ~1 % where timings swing ±30 %."""
    spec = _spec(env, row, kind, opts)
    out_dir = os.path.join(opts.tmp, f"cg-{kind}-{time.monotonic_ns()}")
    os.makedirs(out_dir)
    spec.wrap = ["valgrind", "--tool=callgrind", "--smc-check=all-non-file",
                 f"--callgrind-out-file={out_dir}/callgrind.out"]
    spec.single_process = True
    tls = row.kind == "h2-tls"
    server = servers.start(env, kind, tls=tls, spec=spec, timeout=120)
    h2c = row.kind in ("h2c", "h2-tls")
    url = (f"https://127.0.0.1:{server.tls_port}/" if tls
           else f"http://127.0.0.1:{server.h2c_port}/" if h2c
           else f"http://127.0.0.1:{server.h1_port}{row.path_for(kind)}")
    pid = str(server.proc.pid)   # taskset and valgrind exec: the serving process's PID
    try:
        n = row.cg_requests or CG_REQUESTS
        load.h2load(url, n=min(2000, n), h1=not h2c, timeout=600, headers=row.headers)   # warm-up
        subprocess.run(["callgrind_control", "-z", pid], check=True, capture_output=True,
                       timeout=120)
        r = load.h2load(url, n=n, h1=not h2c, timeout=900, headers=row.headers)
        subprocess.run(["callgrind_control", "-d", pid], check=True, capture_output=True,
                       timeout=120)
        dumps = [p for p in glob.glob(f"{out_dir}/callgrind.out*")
                 if not p.endswith("callgrind.out")]
        if not dumps:
            raise load.LoadError("callgrind wrote no dump")
        total = sum(_callgrind_total(p) for p in dumps)
    except subprocess.SubprocessError as e:
        raise load.LoadError(f"callgrind_control: {e}")
    finally:
        servers.stop(server, timeout=30)
    if not r["requests"]:
        raise load.LoadError("no successful requests under callgrind")
    return {"instr": total / r["requests"], "cg_requests": r["requests"]}


def _opener(port, proto, n):
    """Start idle_conns.py pinned to the load core; returns (process, opened, failed)."""
    p = subprocess.Popen(["taskset", "-c", "0", PY, os.path.join(HERE, "idle_conns.py"),
                          "--port", str(port), "--proto", proto, "--n", str(n)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline().split()
    if not line or line[0] != "ready":
        p.kill()
        p.wait()
        raise load.LoadError("idle connection opener died")
    fields = dict(f.split("=") for f in line[1:])
    return p, int(fields["opened"]), int(fields["failed"])


def _close_opener(p):
    if p.poll() is None:
        p.stdin.close()   # EOF: it resets its connections and exits
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def idle_memory(env, row, kind, opts):
    tls = row.proto == "h2-tls"
    server = servers.start(env, kind, tls=tls, pin=True)
    port = {"h2c": server.h2c_port, "h2-tls": server.tls_port}.get(row.proto, server.h1_port)
    p = None
    try:
        if row.proto != "h1":
            _check_h2(server, Row("", "", "h2-tls" if tls else "h2c"))
        # The baseline is a server that has already served a few requests
        # (lazy init, first-request allocations) and has no client connected.
        warm, _, _ = _opener(port, row.proto, 10)
        _close_opener(warm)
        time.sleep(0.3)
        rss0 = procstat.rss_kib(server.pids())
        p, opened, failed = _opener(port, row.proto, row.conns)
        time.sleep(0.5)   # let the server finish whatever it does after the last response
        rss1 = procstat.rss_kib(server.pids())
        p.stdin.write("check\n")
        p.stdin.flush()
        closed = int(dict(f.split("=") for f in p.stdout.readline().split())["closed"])
    finally:
        if p:
            _close_opener(p)
        servers.stop(server)
    if not opened:
        raise load.LoadError(f"no connection served its request ({failed} failed)")
    return {"kib_per_conn": (rss1 - rss0) / opened, "errors": failed + closed,
            "rss0_kib": rss0, "rss1_kib": rss1}


def run(env, row, kind, opts):
    return (idle_memory if row.kind == "idle" else throughput)(env, row, kind, opts)
