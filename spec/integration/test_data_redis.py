"""lariat.redis: hiredis async on the worker's loop, against a redis-server the
test starts on a free loopback port.

DESIGN §4b "Data": status replies are strings ("OK"), a missing value is
lariat.null, error replies are nil, "ERR …", arrays (HGETALL too) are Lua arrays
as Redis sends them; concurrent commands pipeline on one connection per worker;
SUBSCRIBE and blocking commands use dedicated connections."""

import os
import socket
import threading
import time

import pytest

from conftest import LariatServer, app_path
from dataservers import SLOW, Redis, get, wait_until


@pytest.fixture(scope="module")
def redis():
    r = Redis().start()
    yield r
    r.cleanup()


@pytest.fixture
def srv(redis):
    if redis.proc is None:
        redis.start()
    os.environ["LARIAT_TEST_REDIS"] = redis.url(db=2)
    s = LariatServer(app_path("data_redis.lua"), "--workers", "1").start()
    yield s
    s.check_healthy()


def clients_of(redis):
    return redis.clients()


def test_value_mapping(srv, redis):
    status, r = get(srv, "/types")
    assert status == 200, r
    assert r["set"] == "OK" and r["get"] == "héllo"
    assert r["missing"] == "NULL" and r["missing_is_null"] is True
    assert r["incr"] == 1 and r["incr_type"] == "integer"
    assert r["num_arg"] == "1.5"
    assert r["hgetall"] == ["a", "1", "b", "2"]  # as Redis sends it
    assert r["lrange"] == ["x", "y", "z"]
    assert r["err_nil"] is True and r["err"].startswith("ERR unknown command")
    assert r["err2"] == "ERR value is not an integer or out of range"
    assert r["binary"] is True
    # the URL's /2 selected database 2: the keys are there, not in 0
    assert redis.cli("GET", "k:s", db=2) == b"$6\r\nh\xc3\xa9llo\r\n"
    assert redis.cli("EXISTS", "k:s") == b":0\r\n"


def test_pipeline_and_multi_exec(srv):
    status, r = get(srv, "/pipeline")
    assert status == 200, r
    assert r == {"n": 9, "del": 0, "set": "OK", "incr": 2, "get": "2",
                 "err": "ERR value is not an integer or out of range", "exec": [3, "3"]}, r


def test_concurrent_commands_share_one_connection(srv, redis):
    before = clients_of(redis)
    status, r = get(srv, "/concurrent?n=200")
    assert status == 200 and r["done"] == 200 and r["bad"] == 0, r
    # 200 coroutines, one pipelined connection (it was made by the first test or now)
    assert clients_of(redis) <= max(before, 1)


def test_misuse_raises(srv):
    assert get(srv, "/misuse")[1] == {"ok1": False, "ok2": False, "ok3": False, "ok4": False}
    assert get(srv, "/get")[0] == 200  # and nothing was left half-sent


def test_blocking_command_on_a_dedicated_connection(srv):
    got = {}
    t = threading.Thread(target=lambda: got.update(r=get(srv, "/blpop?t=5")))
    t.start()
    time.sleep(0.2)
    # the shared connection is not blocked meanwhile
    t0 = time.monotonic()
    assert get(srv, "/get")[0] == 200
    assert time.monotonic() - t0 < 0.5 * SLOW
    assert get(srv, "/push")[1]["n"] >= 0
    t.join()
    status, r = got["r"]
    assert status == 200 and r["v"] == ["k:queue", "job1"] and r["took"] < 2 * SLOW, r
    # an empty queue: BLPOP's own timeout, nil bulk → lariat.null
    status, r = get(srv, "/blpop?t=0.3")
    assert r["v"] == "NULL" and 0.25 < r["took"] < 2 * SLOW, r


def test_command_timeout_and_connection_recovers(srv):
    for _ in range(2):  # the second time too
        status, r = get(srv, "/slow")
        assert status == 200 and r["err"] == "timeout", r
        assert 0.25 < r["took"] < 0.9 * SLOW + 0.3
    assert get(srv, "/get?k=k:s")[0] == 200
    assert "err" not in get(srv, "/get?k=k:s")[1]


def test_pubsub(srv, redis):
    for attempt in range(2):
        c = socket.create_connection(("127.0.0.1", srv.port), timeout=5 * SLOW)
        c.sendall(b"GET /sub?ch=news&n=3 HTTP/1.1\r\nhost: x\r\n\r\n")
        buf = b""
        while b"subscribed" not in buf:
            buf += c.recv(4096)
        # subscribe returned after Redis confirmed: a publish now reaches it
        for i in range(3):
            assert get(srv, "/pub?ch=news&msg=m%d" % i)[1]["n"] == 1
        while buf.count(b"news m") < 3:
            chunk = c.recv(4096)
            assert chunk, buf
            buf += chunk
        assert b"news m0" in buf and b"news m2" in buf
        c.close()
    # closed subscriptions are gone from the server
    wait_until(lambda: redis.cli("PUBSUB", "NUMSUB", "news").endswith(b":0\r\n"), 5, "unsubscribed")


def test_subscriber_leaving_closes_its_connection(srv, redis):
    base = clients_of(redis)
    c = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
    c.sendall(b"GET /sub?ch=gone&n=3&t=30 HTTP/1.1\r\nhost: x\r\n\r\n")
    buf = b""
    while b"subscribed" not in buf:
        buf += c.recv(4096)
    assert clients_of(redis) == base + 1
    c.close()  # the handler is cancelled at sub:recv; sub is closed with it
    wait_until(lambda: clients_of(redis) == base, 5, "the subscription's connection to close")
    assert get(srv, "/pub?ch=gone")[1]["n"] == 0


def test_subscription_lost_then_next_recv_subscribes_again(srv, redis):
    c = socket.create_connection(("127.0.0.1", srv.port), timeout=10 * SLOW)
    c.sendall(b"GET /sub?ch=lost&n=20&t=30&again=1 HTTP/1.1\r\nhost: x\r\n\r\n")
    buf = b""
    while b"subscribed" not in buf:
        buf += c.recv(4096)
    for attempt in range(2):  # the second time too
        # Redis drops the subscriber's connection: its recv says why ...
        wait_until(lambda: redis.cli("CLIENT", "KILL", "TYPE", "pubsub").strip() not in (b":0", b""), 5,
                   "the subscription's connection to be killed")
        while buf.count(b"nil ") < attempt + 1:
            chunk = c.recv(4096)
            assert chunk, buf
            buf += chunk
        # ... and the next recv subscribes again: a later publish arrives
        msg = b"again%d" % attempt
        wait_until(lambda: get(srv, "/pub?ch=lost&msg=" + msg.decode())[1]["n"] == 1, 5, "resubscribed")
        while msg not in buf:
            chunk = c.recv(4096)
            assert chunk, buf
            buf += chunk
    c.close()
    wait_until(lambda: redis.cli("PUBSUB", "NUMSUB", "lost").endswith(b":0\r\n"), 5, "unsubscribed")


def test_server_killed_mid_run_then_back(srv, redis):
    assert get(srv, "/get")[0] == 200
    for attempt in range(2):  # the second time too
        got = {}
        t = threading.Thread(target=lambda: got.update(r=get(srv, "/blpop?t=10")))
        t.start()
        time.sleep(0.2)
        redis.stop()
        t.join()
        status, r = got["r"]
        assert status == 200 and r["err"] == "closed", r
        status, r = get(srv, "/get")
        assert r == {"err": "connection refused"}, r
        assert get(srv, "/fast") == (200, "fast")
        redis.start()
        status, r = get(srv, "/get?k=k:nothing")
        assert status == 200 and r == {"v": "NULL"}, r


def test_auth_and_select_from_the_url():
    r = Redis(password="s3cret p@ss").start()
    try:
        import urllib.parse
        pw = urllib.parse.quote(r.password, safe="")
        os.environ["LARIAT_TEST_REDIS"] = "redis://:%s@127.0.0.1:%d/3" % (pw, r.port)
        s = LariatServer(app_path("data_redis.lua"), "--workers", "1").start()
        try:
            status, body = get(s, "/types")
            assert status == 200 and body["set"] == "OK", body
            assert r.cli("GET", "k:s", db=3) == b"$6\r\nh\xc3\xa9llo\r\n"
        finally:
            s.check_healthy()
        os.environ["LARIAT_TEST_REDIS"] = "redis://:wrong@127.0.0.1:%d/3" % r.port
        s = LariatServer(app_path("data_redis.lua"), "--workers", "1").start()
        try:
            status, body = get(s, "/get")
            assert status == 200 and body["err"].startswith(("NOAUTH", "WRONGPASS")), body
        finally:
            s.check_healthy()
    finally:
        r.cleanup()
