"""Hostile HTTP/1.1 clients (issue 9): each attack is made several times in a
row against a server that already survived it, and the bound is asserted:
descriptors closed within a stated time, RSS growth under a stated figure,
other clients served meanwhile.

Raw sockets where the attack is about bytes and timing (slow reads with a tiny
SO_RCVBUF that never read, bodies trickled a few bytes at a time); httpx and
http.client where the point is what a real client sees (the 413 of an upload
that is too large, thanks to lingering close).
"""

import http.client
import os
import resource
import socket
import subprocess
import threading
import time

import httpx
import pytest

from conftest import (LariatServer, RawConn, app_path, lariat_bin, request,
                      REPO)

# ASan is ~3x slower: bounds on time scale with it; its quarantine keeps
# freed memory, so RSS bounds are only checked on the normal build
ASAN = os.environ.get("LARIAT_SANITIZE") in ("1", "ON", "TRUE", "true", "on")
SLOW = 3 if ASAN else 1


def fds(srv):
    return len(os.listdir("/proc/%d/fd" % srv.pid))


def conns(srv):
    """connected TCP sockets the server holds (listeners and other
    descriptors left out, so the idle count is 0 whatever libuv opens)"""
    inodes = set()
    for f in os.listdir("/proc/%d/fd" % srv.pid):
        try:
            link = os.readlink("/proc/%d/fd/%s" % (srv.pid, f))
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    listening = set()
    for table in ("tcp", "tcp6"):
        with open("/proc/%d/net/%s" % (srv.pid, table)) as t:
            for line in t.readlines()[1:]:
                parts = line.split()
                if parts[3] == "0A":  # LISTEN
                    listening.add(parts[9])
    return len(inodes - listening)


def has_data(sock):
    """bytes wait in sock's receive buffer (looked at, not taken)"""
    try:
        return len(sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)) > 0
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return True  # reset: the server answered and closed


def all_closed(srv):
    return conns(srv) == 0


def cpu_seconds(pid):
    """user + system CPU time of the process so far"""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_for(cond, timeout, what):
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("%s: not within %.1f s" % (what, timeout))
        time.sleep(0.05)


def served(srv):
    with srv.connect(timeout=5 * SLOW) as c:
        c.send(request("GET", "/"))
        resp = c.read_response()
    assert resp.status == 200 and resp.body in (b"Hello world!", b"ok"), resp
    return True


def post_head(path, length, extra=()):
    return request("POST", path, headers=[("content-length", str(length))] + list(extra))


# -- remote crash: the access log of a request whose head fails to parse --------

@pytest.mark.parametrize("head", [
    b"GET / HTTP/1.1\r\nUser-Agent: u\r\nbad header\r\n\r\n",
    b"GET / HTTP/1.1\r\nReferer: http://x/\r\nUser-Agent: u\r\nbad header\r\n\r\n",
    b"GET /a HTTP/1.1\r\nHost: x\r\nUser-Agent: u\r\nReferer: r\r\n\x01: y\r\n\r\n",
    b"GET / HTTP/1.1\r\nUser-Agent: u\r\nReferer",      # then the 408 of the unfinished head
])
def test_access_log_of_a_head_that_fails_after_user_agent(start_server, tmp_path, head):
    """With --access-log, a head that fails after a User-Agent or Referer
    header crashed the process (NULL memcmp in lr_stream_header). Now it is
    answered 400 (or 408) and logged, three times in a row."""
    log = tmp_path / "access.log"
    srv = start_server("basic.lua", "-w", "1", "--access-log", str(log),
                       "--header-timeout", "0.5")
    for _ in range(3):
        with srv.connect(timeout=5 * SLOW) as c:
            c.send(head)
            resp = c.read_response()
            assert resp.status in (400, 408), resp
        assert served(srv)
    text = wait_for(lambda: log.read_text().count("\n") >= 6 and log.read_text(), 5, "access log")
    assert '" 400 ' in text or '" 408 ' in text, text


# -- slow read: the peer never reads ---------------------------------------------

SLOW_READERS = 6 if ASAN else 16  # each pumps MBs into the kernel first: ASan is slow at it


def test_slow_readers_are_closed_by_the_send_timeout_and_memory_is_bounded(start_server):
    """A client that asks for a big response and never reads (tiny SO_RCVBUF)
    holds at most ~64 KiB of user-space output (--output-buffer) plus the
    handler's one pending write, and is closed --send-timeout after the kernel
    stops taking output; other clients are served meanwhile; the memory comes
    back once they are gone. Three rounds of 16 (6 on ASan)."""
    srv = start_server("flood.lua", "-w", "1", "--send-timeout", "1")
    with srv.connect() as warm:
        warm.send(request("GET", "/flood/4"))
        assert len(warm.read_response().body) == 4 * 65536
    base_rss = srv.rss_kib()
    for rnd in range(3):
        clients = []
        for _ in range(SLOW_READERS):
            c = RawConn(srv.port, timeout=10, rcvbuf=4096)
            c.send(request("GET", "/stream/800"))
            clients.append(c)
        try:
            # the bound runs from when every reader got the start of its
            # response (peeked: taking it would be progress for the server)
            peak, answered = srv.rss_kib(), None
            t_start = time.monotonic()
            while True:
                n = conns(srv)
                peak = max(peak, srv.rss_kib())
                if answered is None and all(has_data(c.sock) for c in clients):
                    answered = time.monotonic()
                if answered is not None and n == 0:
                    break
                since = answered or t_start
                assert time.monotonic() - since < 1 + 4 * SLOW + (0 if answered else 10), (
                    "round %d: %d slow readers still open after %.1f s (send timeout 1 s; answered: %s)"
                    % (rnd, n, time.monotonic() - since, answered is not None))
                assert served(srv)
                time.sleep(0.05)
            # before: ~285 KiB per slow reader (a 256 KiB queue)
            per_conn = (peak - base_rss) / SLOW_READERS
            assert ASAN or per_conn < 200, "round %d: %.0f KiB per slow reader" % (rnd, per_conn)
        finally:
            for c in clients:
                c.close()
    assert served(srv)
    if ASAN:
        return
    # memory given back: what 48 slow readers held is not kept (before: ~16 MiB
    # more than at the start stayed; what may stay now is mostly Lua garbage
    # the collector hasn't reached on an idle server)
    wait_for(lambda: srv.rss_kib() < base_rss + 4096, 5 * SLOW,
             "RSS back within 4 MiB of %d KiB (now %d)" % (base_rss, srv.rss_kib()))


def test_pipelined_requests_never_read_are_bounded_and_closed(start_server):
    """Pipelined requests whose responses are never read: the server stops
    answering above the output cap and the send timeout closes the
    connection, the second time too."""
    srv = start_server("basic.lua", "-w", "1", "--send-timeout", "1")
    assert served(srv)
    base_rss = srv.rss_kib()
    batch = request("GET", "/big/100000") * 200   # 20 MB of answers
    for rnd in range(3):
        clients = []
        for _ in range(8):
            c = RawConn(srv.port, timeout=10, rcvbuf=4096)
            c.send_lenient(batch[:60000])
            clients.append(c)
        try:
            wait_for(lambda: all(has_data(c.sock) for c in clients), 10 * SLOW, "answers started")
            wait_for(lambda: all_closed(srv), 1 + 5 * SLOW, "round %d: connections closed" % rnd)
            assert served(srv)
            assert ASAN or srv.rss_kib() - base_rss < 8 * 1024, srv.rss_kib() - base_rss
        finally:
            for c in clients:
                c.close()


# -- trickled request bodies -------------------------------------------------------

def _trickle(c, stop, step=68, every=0.25):
    while not stop.is_set():
        if not c.send_lenient(b"x" * step):
            return
        stop.wait(every)


def test_trickled_body_trips_the_body_deadline(start_server):
    """A body trickled 68 bytes at a time never trips the per-read
    --body-timeout; the body deadline (--body-deadline plus 1 s per
    --body-min-rate bytes) answers 408 and closes. Three times, with another
    client served meanwhile."""
    srv = start_server("basic.lua", "-w", "1", "--body-deadline", "1", "--body-min-rate", "500",
                       "--body-timeout", "30")
    for rnd in range(3):
        with RawConn(srv.port, timeout=10 * SLOW) as c:
            c.send(post_head("/read-stream", 1000000))
            stop = threading.Event()
            t = threading.Thread(target=_trickle, args=(c, stop), daemon=True)
            t0 = time.monotonic()
            t.start()
            try:
                assert served(srv)
                resp = c.read_response()
                took = time.monotonic() - t0
                # 68 B every 0.25 s = 272 B/s: deadline t = 1 + 272 t / 500, ~2.2 s
                assert resp.status == 408, resp
                assert took < 2.2 + 2 * SLOW, took
                assert c.expect_closed(10 * SLOW)
            finally:
                stop.set()
                t.join()
        wait_for(lambda: all_closed(srv), 5 * SLOW, "round %d: fd closed" % rnd)


def test_a_steady_upload_is_not_cut_by_the_body_deadline(start_server):
    """The deadline grows with what arrives: 2 s for a body at twice the
    minimum rate passes a 1 s deadline."""
    srv = start_server("basic.lua", "-w", "1", "--body-deadline", "1", "--body-min-rate", "500")
    with RawConn(srv.port, timeout=10 * SLOW) as c:
        c.send(post_head("/read-stream", 2000))
        for _ in range(20):
            c.send(b"y" * 100)
            time.sleep(0.1)
        resp = c.read_response()
        assert resp.status == 200 and resp.body == b"y" * 2000, resp


def test_body_that_never_comes_after_the_reply_is_bounded(start_server):
    """The handler replied without reading; the announced body never comes.
    The connection used to stay open forever; it is closed --body-timeout
    after the last body byte, three times in a row."""
    srv = start_server("basic.lua", "-w", "1", "--body-timeout", "1")
    for rnd in range(3):
        with RawConn(srv.port, timeout=10) as c:
            c.send(post_head("/noread", 100000) + b"z" * 1000)
            resp = c.read_response()
            assert resp.status == 200 and resp.body == b"ignored body", resp
            t0 = time.monotonic()
            assert c.expect_closed(1 + 4 * SLOW), "round %d: still open" % rnd
            assert time.monotonic() - t0 > 0.5
        wait_for(lambda: all_closed(srv), 5 * SLOW, "round %d: fd closed" % rnd)
        assert served(srv)


# -- lingering close: the 413 reaches real clients ---------------------------------

def test_413_of_a_too_large_upload_reaches_httpx_and_http_client(start_server):
    """An upload over --max-body is answered 413 at once; without lingering
    close the unread body made the kernel send RST and httpx/http.client lost
    the answer (0 of 150). Now the server reads and drops the rest after
    the answer: 50 of 50 for each client."""
    srv = start_server("basic.lua", "-w", "1", "--max-body", "1000")
    body = b"u" * (4 << 20)
    got = {"httpx": 0, "http.client": 0}
    with httpx.Client(timeout=10 * SLOW) as client:
        for _ in range(50):
            r = client.post(srv.url("/echo"), content=body)
            got["httpx"] += r.status_code == 413
    for _ in range(50):
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10 * SLOW)
        try:
            conn.request("POST", "/echo", body=body)
            got["http.client"] += conn.getresponse().status == 413
        finally:
            conn.close()
    assert got == {"httpx": 50, "http.client": 50}, got
    wait_for(lambda: all_closed(srv), 5 * SLOW, "lingering connections closed")
    assert served(srv)


def test_lingering_is_bounded_for_a_client_that_keeps_sending(start_server):
    """Lingering ends after --lingering-time even if the client never stops,
    and after --lingering-timeout if it goes quiet."""
    srv = start_server("basic.lua", "-w", "1", "--max-body", "1000",
                       "--lingering-time", "1", "--lingering-timeout", "0.5")
    for rnd in range(2):
        # keeps sending: cut after lingering_time
        with RawConn(srv.port, timeout=10) as c:
            c.send(post_head("/echo", 10 ** 9))
            stop = threading.Event()
            t = threading.Thread(target=_trickle, args=(c, stop, 1000, 0.05), daemon=True)
            t.start()
            try:
                t0 = time.monotonic()
                assert c.read_response().status == 413
                wait_for(lambda: all_closed(srv), 1 + 3 * SLOW, "round %d: lingering ended" % rnd)
                assert time.monotonic() - t0 > 0.8
            finally:
                stop.set()
                t.join()
        # goes quiet: cut after lingering_timeout
        with RawConn(srv.port, timeout=10) as c:
            c.send(post_head("/echo", 10 ** 9) + b"q" * 5000)
            assert c.read_response().status == 413
            assert c.expect_closed(0.5 + 3 * SLOW)
        assert served(srv)


# -- the descriptor limit -------------------------------------------------------------

FD_LIMIT = 64
IDLE = 100


def test_out_of_descriptors_pauses_accepting_and_recovers(tmp_path):
    """Under a descriptor limit lower than the connections: no busy loop (the
    worker's CPU stays near idle while every descriptor is in use), a log
    line, and full service once the connections close. Three rounds."""
    def limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))

    srv = LariatServer(app_path("basic.lua"), "-w", "2", "--header-timeout", "60")
    argv = srv.argv()
    srv.proc = subprocess.Popen(argv, cwd=str(REPO), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                preexec_fn=limit)
    from conftest import _Drain, LISTEN_RE
    srv.out, srv.err = _Drain(srv.proc.stdout), _Drain(srv.proc.stderr)
    srv.out.start()
    srv.err.start()
    try:
        line = wait_for(lambda: [l for l in srv.out.lines if l and LISTEN_RE.search(l)], 15, "ready")[0]
        srv.ports = [int(LISTEN_RE.search(line).group(1))]
        assert served(srv)
        for rnd in range(3):
            clients = []
            for _ in range(IDLE):
                s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
                clients.append(s)
            wait_for(lambda: fds(srv) >= FD_LIMIT - 1, 5 * SLOW, "descriptors used up")
            # a client arriving now waits in the backlog: it is not dropped
            late = RawConn(srv.port, timeout=10 * SLOW)
            late.send(request("GET", "/p/late"))
            cpu0, t0 = cpu_seconds(srv.pid), time.monotonic()
            time.sleep(1.0)
            used = (cpu_seconds(srv.pid) - cpu0) / (time.monotonic() - t0)
            assert used < 0.2, "round %d: %.0f%% CPU while out of descriptors" % (rnd, used * 100)
            for s in clients:
                s.close()
            with late:
                resp = late.read_response()
                assert resp.status == 200 and resp.body == b"/p/late", resp
            wait_for(lambda: served(srv), 5 * SLOW, "round %d: GET / after the connections closed" % rnd)
        assert "accepting paused" in srv.err.text(), srv.err.text()[-2000:]
    finally:
        srv.check_healthy()


def test_websocket_peer_that_never_reads_is_closed_by_the_send_timeout(start_server):
    """The send timeout is the connection's: a WebSocket whose peer stops
    reading while the handler sends 32 MiB (more than the kernel buffers hold:
    the send buffer alone grows to 4 MiB on loopback) is closed too, three times."""
    from wsclient import WS
    srv = start_server("ws.lua", "-w", "1", "--send-timeout", "1")
    for rnd in range(3):
        ws = WS(srv.port, path="/big?n=512", timeout=10)
        try:
            ws.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            assert ws.status == 101
            t0 = time.monotonic()
            wait_for(lambda: all_closed(srv), 1 + 4 * SLOW, "round %d: websocket closed" % rnd)
            assert time.monotonic() - t0 > 0.5
        finally:
            ws.close()
        assert served(srv)
