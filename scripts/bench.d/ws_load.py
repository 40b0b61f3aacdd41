#!/usr/bin/python3
"""WebSocket load for lariat: echo throughput and memory per idle connection.

usage: ws_load.py [--bin build/lariat] [--conns 50] [--seconds 5] [--size 32]
                  [--depth 8] [--procs 4] [--idle 2000]

Starts `lariat -w 1 examples/echo_ws.lua` on a free port, then
  1. echo: --conns connections (spread over --procs client processes), each
     keeping --depth small text messages in flight, for --seconds; prints
     messages/s echoed (each message counted once, on its way back);
  2. idle: opens --idle WebSocket connections (without and then with
     permessage-deflate), lets them sit, and prints the server's RSS growth
     per connection.
The client speaks raw frames (pre-masked, batched reads), so one Python
process can push a few hundred thousand frames per second; more processes
make sure the client is not what is measured.
"""
import argparse
import base64
import multiprocessing
import os
import re
import resource
import socket
import struct
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def handshake(port, path="/echo", deflate=False):
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    key = base64.b64encode(os.urandom(16)).decode()
    ext = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n" if deflate else ""
    s.sendall(("GET %s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n%s\r\n" % (path, key, ext)).encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        d = s.recv(4096)
        if not d:
            raise RuntimeError("closed during handshake")
        buf += d
    if not buf.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(buf[:80])
    return s, buf[buf.index(b"\r\n\r\n") + 4:]


def masked_text(payload):
    key = b"\x01\x02\x03\x04"
    body = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return bytes([0x81, 0x80 | len(payload)]) + key + body


def echo_worker(port, conns, seconds, size, depth, out):
    import selectors
    msg = masked_text(b"m" * size)
    reply_len = 2 + size  # unmasked server frame, size < 126
    sel = selectors.DefaultSelector()
    socks = []
    for _ in range(conns):
        s, rest = handshake(port)
        s.setblocking(False)
        st = {"s": s, "pending": len(rest)}
        socks.append(st)
        sel.register(s, selectors.EVENT_READ, st)
        s.sendall(msg * depth)
    done = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for key, _ in sel.select(0.2):
            st = key.data
            try:
                d = st["s"].recv(1 << 16)
            except BlockingIOError:
                continue
            if not d:
                raise RuntimeError("server closed an echo connection")
            st["pending"] += len(d)
            n = st["pending"] // reply_len
            st["pending"] -= n * reply_len
            done += n
            if n:
                st["s"].sendall(msg * n)
    out.put(done)
    for st in socks:
        st["s"].close()


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])


def start_server(binary, app):
    p = subprocess.Popen([binary, "-w", "1", "-l", "127.0.0.1:0", app], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True)
    line = p.stdout.readline()
    m = re.search(r":(\d+)", line)
    if not m:
        p.kill()
        raise RuntimeError("lariat did not start: %r" % line)
    return p, int(m.group(1))


def idle_cost(binary, app, n, deflate):
    p, port = start_server(binary, app)
    try:
        # warm up: one connection and message so lazily built state exists
        s, _ = handshake(port, deflate=deflate)
        s.close()
        time.sleep(0.3)
        before = rss_kib(p.pid)
        socks = []
        for _ in range(n):
            socks.append(handshake(port, deflate=deflate)[0])
        time.sleep(0.5)
        after = rss_kib(p.pid)
        for s in socks:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
        return (after - before) * 1024 / n
    finally:
        p.terminate()
        p.wait(5)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(ROOT, "build", "lariat"))
    ap.add_argument("--app", default=os.path.join(ROOT, "examples", "echo_ws.lua"))
    ap.add_argument("--conns", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--depth", type=int, default=8)
    ap.add_argument("--procs", type=int, default=4)
    ap.add_argument("--idle", type=int, default=2000)
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, a.idle + 256)), hard))

    p, port = start_server(a.bin, a.app)
    try:
        q = multiprocessing.Queue()
        per = [a.conns // a.procs + (1 if i < a.conns % a.procs else 0) for i in range(a.procs)]
        procs = [multiprocessing.Process(target=echo_worker, args=(port, n, a.seconds, a.size, a.depth, q))
                 for n in per if n]
        for w in procs:
            w.start()
        total = sum(q.get(timeout=a.seconds + 30) for _ in procs)
        for w in procs:
            w.join()
        print("ws echo: %d connections, %d-byte text messages, %d in flight each: %.0f messages/s"
              % (a.conns, a.size, a.depth, total / a.seconds))
    finally:
        p.terminate()
        p.wait(5)
    if a.idle:
        for deflate in (False, True):
            per_conn = idle_cost(a.bin, a.app, a.idle, deflate)
            print("ws idle: %d connections%s: %.1f KiB per connection (server RSS growth)"
                  % (a.idle, " with permessage-deflate" if deflate else "", per_conn / 1024))


if __name__ == "__main__":
    main()
