"""Starting and stopping like a well-behaved daemon: SIGTERM drains, a second
SIGINT exits at once, the drain timeout, --pid-file, --user,
--max-connections, JSON logs."""

import json
import os
import pwd
import signal
import socket
import threading
import time

import pytest

from conftest import LariatServer, RawConn, app_path, request


def start(*options):
    return LariatServer(app_path("lifecycle.lua"), "--workers", "2", *options).start()


def wait_exit(srv, timeout):
    try:
        return srv.proc.wait(timeout)
    except Exception:
        return None


def test_sigterm_finishes_in_flight_requests_then_exits_0():
    srv = start()
    try:
        with RawConn(srv.port, timeout=5) as busy, RawConn(srv.port, timeout=5) as idle:
            idle.send(request("GET", "/"))
            assert idle.read_response().body == b"ok"
            busy.send(request("GET", "/sleep/600"))
            time.sleep(0.1)
            os.kill(srv.pid, signal.SIGTERM)
            # idle keep-alive connections are closed at once
            assert idle.expect_closed(2)
            # no new connections once stopping
            time.sleep(0.2)
            with pytest.raises(OSError):
                socket.create_connection(("127.0.0.1", srv.port), timeout=1).close()
            resp = busy.read_response()
            assert resp.body == b"slept 600"
            assert "close" in resp.connection_tokens()
        assert wait_exit(srv, 5) == 0
    finally:
        srv.stop()


def test_drain_timeout_cuts_requests_that_take_too_long():
    srv = start("--drain-timeout", "0.5")
    try:
        with RawConn(srv.port, timeout=5) as busy:
            busy.send(request("GET", "/stubborn/10000"))
            time.sleep(0.1)
            t0 = time.monotonic()
            os.kill(srv.pid, signal.SIGTERM)
            assert wait_exit(srv, 5) == 0
            assert time.monotonic() - t0 < 3
    finally:
        srv.stop()


def test_second_sigint_exits_at_once():
    srv = start()
    try:
        with RawConn(srv.port, timeout=5) as busy:
            busy.send(request("GET", "/stubborn/10000"))
            time.sleep(0.1)
            os.kill(srv.pid, signal.SIGINT)
            time.sleep(0.2)
            assert srv.alive()  # still draining
            t0 = time.monotonic()
            os.kill(srv.pid, signal.SIGINT)
            assert wait_exit(srv, 3) == 0
            assert time.monotonic() - t0 < 2
    finally:
        srv.stop()


def test_pid_file_is_written_and_removed(tmp_path):
    pid_file = tmp_path / "lariat.pid"
    srv = start("--pid-file", str(pid_file))
    try:
        assert pid_file.read_text().strip() == str(srv.pid)
        os.kill(srv.pid, signal.SIGTERM)
        assert wait_exit(srv, 5) == 0
        assert not pid_file.exists()
    finally:
        srv.stop()


@pytest.mark.skipif(os.getuid() != 0, reason="dropping privileges needs root")
def test_user_drops_privileges_after_binding():
    nobody = pwd.getpwnam("nobody")
    srv = start("--user", "nobody")
    try:
        with open("/proc/%d/status" % srv.pid) as f:
            uids = [l for l in f if l.startswith("Uid:")][0].split()[1:]
        assert all(int(u) == nobody.pw_uid for u in uids)
        with srv.connect() as c:
            c.send(request("GET", "/"))
            assert c.read_response().body == b"ok"
    finally:
        srv.stop()


def test_max_connections_queues_instead_of_refusing():
    """With the cap reached, a new connection waits in the backlog and is
    served as soon as another one closes."""
    srv = LariatServer(app_path("lifecycle.lua"), "--workers", "1", "--max-connections", "2").start()
    try:
        a, b = RawConn(srv.port), RawConn(srv.port)
        for c in (a, b):
            c.send(request("GET", "/"))
            assert c.read_response().body == b"ok"
        third = RawConn(srv.port, timeout=5)  # connects: the kernel backlog takes it
        third.send(request("GET", "/"))
        assert third.still_open(0.5)
        assert not third.buf  # not served while at the cap
        a.close()
        assert third.read_response().body == b"ok"
        third.close()
        b.close()
    finally:
        srv.stop()


def test_json_log_lines():
    srv = start("--log-format", "json")
    try:
        with srv.connect() as c:
            c.send(request("GET", "/log"))
            assert c.read_response().body == b"logged"
        time.sleep(0.2)
        lines = [l for l in srv.stderr_text().splitlines() if l.strip()]
        records = [json.loads(l) for l in lines]
        warn = [r for r in records if r["level"] == "warn"]
        assert warn and warn[0]["msg"] == 'a "quoted" line\nand a second'
        assert all({"ts", "level", "msg"} <= set(r) for r in records)
    finally:
        srv.stop()
