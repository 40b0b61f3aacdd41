"""Run the load generators (wrk, h2load) and read their reports; probe whether a
port speaks h2c or TLS+h2 before loading it (a server that doesn't would make
h2load hang or count only errors)."""
import os
import re
import socket
import ssl
import subprocess

HERE = os.path.dirname(os.path.abspath(__file__))
POST_SCRIPT = os.path.join(HERE, "post_64k.lua")
ECHO_BODY = 65536   # keep in step with post_64k.lua

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}
_BYTES = {"B": 1, "KB": 1024, "MB": 1024 ** 2, "GB": 1024 ** 3, "TB": 1024 ** 4}


class LoadError(Exception):
    pass


def _run(cmd, timeout):
    try:
        p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True,
                           text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise LoadError(f"{cmd[0] if cmd[0] != 'taskset' else cmd[3]} timed out after {timeout} s")
    if p.returncode != 0:
        raise LoadError(f"{' '.join(cmd)} exited {p.returncode}: {p.stderr.strip()[-300:]}")
    return p.stdout


def _ms(text):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    return float(m.group(1)) * _UNITS[m.group(2)]


def wrk(port, path="/", duration=10, connections=50, post=False, pin=True, headers=()):
    """wrk -t1 -cN -dS --latency; returns requests, rps, p50/p99 (ms), errors, bytes/request.
    headers: ("name: value", ...) sent with every request."""
    cmd = (["taskset", "-c", "0"] if pin else []) + [
        "wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency"]
    for h in headers:
        cmd += ["-H", h]
    if post:
        cmd += ["-s", POST_SCRIPT]
    out = _run(cmd + [f"http://127.0.0.1:{port}{path}"], timeout=duration + 30)
    m = re.search(r"(\d+) requests in [\d.]+\w+, ([\d.]+)(\w+) read", out)
    if not m:
        raise LoadError(f"unreadable wrk output: {out[-300:]}")
    requests = int(m.group(1))
    bytes_read = float(m.group(2)) * _BYTES[m.group(3)]
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = sum(int(x) for x in sock.groups()) if sock else 0
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    non2xx = int(non2xx.group(1)) if non2xx else 0
    if non2xx > requests / 1000:
        raise LoadError(f"{non2xx} of {requests} responses were not 2xx")
    errors += non2xx
    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.M))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    return {"requests": requests, "rps": rps, "errors": errors,
            "p50": _ms(lat["50"]) if "50" in lat else None,
            "p99": _ms(lat["99"]) if "99" in lat else None,
            "bytes_per_req": bytes_read / requests if requests else 0}


def h2load(url, n=200000, connections=50, streams=10, pin=True, h1=False, timeout=120,
           headers=()):
    """h2load -cN -mM -t1 -nR (--h1: HTTP/1.1, one request at a time per
    connection); returns requests (2xx), rps, errors."""
    cmd = (["taskset", "-c", "0"] if pin else []) + [
        "h2load", f"-c{connections}", f"-m{1 if h1 else streams}", "-t1", f"-n{n}"]
    for h in headers:
        cmd += ["-H", h]
    cmd.append(url)
    if h1:
        cmd.insert(-1, "--h1")
    out = _run(cmd, timeout=timeout)
    if url.startswith("https:") and "Application protocol: h2" not in out:
        raise LoadError("TLS connection did not negotiate h2")
    fin = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    st = re.search(r"status codes: (\d+) 2xx", out)
    req = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded", out)
    if not (fin and st and req):
        raise LoadError(f"unreadable h2load output: {out[-300:]}")
    ok, done = int(st.group(1)), int(req.group(2))
    if done - ok > done / 1000:
        raise LoadError(f"{done - ok} of {done} responses were not 2xx")
    return {"requests": ok, "rps": float(fin.group(1)), "errors": int(req.group(1)) - ok,   # not done or not 2xx
            "p50": None, "p99": None}


def _recv_frame_type(sock):
    head = b""
    while len(head) < 9:
        chunk = sock.recv(9 - len(head))
        if not chunk:
            return None
        head += chunk
    return head[3]


def speaks_h2c(port):
    """True if the port answers the HTTP/2 connection preface with a SETTINGS frame."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
            s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            return _recv_frame_type(s) == 4
    except OSError:
        return False


def speaks_tls_h2(port):
    """True if a TLS handshake on the port selects ALPN h2."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # our own self-signed cert
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=3) as raw:
            with ctx.wrap_socket(raw) as s:
                return s.selected_alpn_protocol() == "h2"
    except OSError:
        return False
