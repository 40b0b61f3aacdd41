"""lariat.pg: libpq's async API on the worker's loop, against a PostgreSQL 15
the test starts (as the unprivileged `postgres` user) on a free loopback port.

DESIGN §4b "Data": int2/4/8 → integer, float4/8 → number, numeric → string
(exact), bool → boolean, json/jsonb → decoded table, NULL → lariat.null; a
parameter nil or lariat.null is SQL NULL; a pool per worker; db:transaction
pins one connection; LISTEN/NOTIFY to sub:recv(); a handler cancelled while
its query runs cancels the query on the server (PQcancel)."""

import os
import socket
import threading
import time

import pytest

from conftest import LariatServer, app_path
from dataservers import SLOW, Postgres, get, wait_until


@pytest.fixture(scope="module")
def pg():
    p = Postgres().start()
    yield p
    p.cleanup()


@pytest.fixture
def srv(pg):
    if pg.proc is None:
        pg.start()
    os.environ["LARIAT_TEST_PG"] = pg.url()
    s = LariatServer(app_path("data_pg.lua"), "--workers", "1").start()
    assert get(s, "/setup") == (200, {"ok": True})
    yield s
    s.check_healthy()


def active_sleeps(pg):
    return int(pg.psql("SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep%' "
                       "AND state = 'active' AND pid <> pg_backend_pid()"))


def test_types_both_ways(srv):
    status, r = get(srv, "/types")
    assert status == 200, r
    assert r["i2"] == 1 and r["i4"] == 2147483647
    assert r["i8_exact"] is True and r["i8_type"] == "integer"  # 2^53 + 1 survives: a Lua integer
    assert r["f4"] == 1.5 and r["f8"] == 0.1 and r["f8_type"] == "float"
    assert r["num"] == "12345678901234567890.123"  # numeric stays exact, as a string
    assert r["t"] is True and r["f"] is False
    assert r["s"] == "héllo" and r["b_ok"] is True
    assert r["j_a2"] == 2 and r["j_null"] is True and r["js"] == [1, "x"]  # json decoded, null is lariat.null
    assert r["ts"] == "2024-01-02T03:04:05.25"
    assert r["n_is_null"] is True
    # parameters: exact int8, float, text, bool, lariat.null, bytes (bytea), a table (JSON), nil
    assert r["p_int_exact"] is True and r["p_float"] == 2.5 and r["p_text"] == "wörld" and r["p_bool"] is True
    assert r["p_null"] is True and r["p_bytes_ok"] is True and r["p_json"] == {"k": "v", "list": [1, 2]}
    assert r["p_nil_is_null"] is True
    assert r["inj"] == "x'; DROP TABLE items; --"  # a parameter is a value, never SQL


def test_writes_and_errors(srv):
    status, r = get(srv, "/insert?name=a")
    assert status == 200 and r["changes"] == 1 and r["id"] >= 1, r
    status, r = get(srv, "/error")
    assert status == 200, r
    assert r["rows"] is True and r["err"] == 'relation "no_such_table" does not exist' and r["code"] == "42P01"
    assert r["err2"] == 'invalid input syntax for type integer: "abc"' and r["code2"] == "22P02"
    assert r["err3"] == 'syntax error at or near "SELEC"'
    assert get(srv, "/count")[1]["n"] == 1  # the connections are fine after errors


def test_transaction_commits_or_rolls_back(srv):
    assert get(srv, "/tx")[1] == {"a": "committed", "b": 2, "delta": 2}
    status, r = get(srv, "/tx?fail=1")
    assert status == 200 and r["delta"] == 0 and r["b"].endswith("boom") and "a" not in r, r
    # the second time too, and concurrently
    results = []
    ts = [threading.Thread(target=lambda i=i: results.append(get(srv, "/tx?fail=1" if i % 2 else "/tx")))
          for i in range(10)]
    before = get(srv, "/count")[1]["n"]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert all(s == 200 for s, _ in results), results
    assert get(srv, "/count")[1]["n"] == before + 5 * 2


def test_20_concurrent_sleeps_take_one_second_and_the_worker_stays_fast(srv):
    # open the pool's 20 connections first: the bound is on queries, not on
    # PostgreSQL forking 20 backends on a loaded machine
    warm = [threading.Thread(target=lambda: get(srv, "/sleep?s=0.2")) for _ in range(20)]
    for t in warm:
        t.start()
    for t in warm:
        t.join()
    results = []
    t0 = time.monotonic()
    ts = [threading.Thread(target=lambda: results.append(get(srv, "/sleep?s=1"))) for _ in range(20)]
    for t in ts:
        t.start()
    time.sleep(0.3)
    # the one worker serves another route meanwhile (a blocking libpq call on
    # its loop would hold each of these for seconds)
    for _ in range(5):
        f0 = time.monotonic()
        assert get(srv, "/fast") == (200, "fast")
        assert time.monotonic() - f0 < 0.5 * SLOW
    for t in ts:
        t.join()
    took = time.monotonic() - t0
    assert len(results) == 20 and all(s == 200 and r["d"] == "done" for s, r in results), results
    # 20 connections of the pool, in parallel (sequential would be 20 s)
    assert took < 2.2 * SLOW, took


def test_timeout_cancels_the_query_on_the_server(srv, pg):
    for _ in range(2):
        status, r = get(srv, "/timeout")
        assert status == 200 and r["err"] == "timeout" and r["took"] < 1 * SLOW, r
        wait_until(lambda: active_sleeps(pg) == 0, 2, "the timed-out query to be cancelled")
    assert get(srv, "/count")[0] == 200


def test_client_leaving_cancels_the_query(srv, pg):
    for _ in range(2):  # the second time too
        c = socket.create_connection(("127.0.0.1", srv.port))
        c.sendall(b"GET /sleep?s=5 HTTP/1.1\r\nhost: x\r\n\r\n")
        wait_until(lambda: active_sleeps(pg) == 1, 3, "pg_sleep(5) to run")
        c.close()
        t0 = time.monotonic()
        wait_until(lambda: active_sleeps(pg) == 0, 2, "the backend's query to be cancelled (PQcancel)")
        assert time.monotonic() - t0 < 2 * SLOW
    status, r = get(srv, "/sleep?s=0.01")
    assert status == 200 and r["d"] == "done", r


def test_listen_notify(srv, pg):
    for _ in range(2):
        c = socket.create_connection(("127.0.0.1", srv.port), timeout=5 * SLOW)
        c.sendall(b"GET /listen?ch=news&n=2 HTTP/1.1\r\nhost: x\r\n\r\n")
        buf = b""
        while b"listening" not in buf:
            buf += c.recv(4096)
        # listen() returned once LISTEN ran: a NOTIFY now is delivered
        assert get(srv, "/notify?ch=news&msg=one")[0] == 200
        pg.psql("NOTIFY news, 'two'")  # from another client too
        while buf.count(b"news ") < 2:
            chunk = c.recv(4096)
            assert chunk, buf
            buf += chunk
        assert b"news one" in buf and b"news two" in buf
        c.close()
    wait_until(lambda: pg.psql("SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN%'") == "0",
               3, "the LISTEN connections to close")


def test_listen_lost_then_next_recv_listens_again(srv, pg):
    listening = "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN%'"
    c = socket.create_connection(("127.0.0.1", srv.port), timeout=10 * SLOW)
    c.sendall(b"GET /listen?ch=lost&n=20&t=30&again=1 HTTP/1.1\r\nhost: x\r\n\r\n")
    buf = b""
    while b"listening" not in buf:
        buf += c.recv(4096)
    for attempt in range(2):  # the second time too
        # the server ends the listener's session: its recv says why ...
        pg.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE 'LISTEN%'")
        while buf.count(b" nil\n") < attempt + 1:  # "<err> nil"
            chunk = c.recv(4096)
            assert chunk, buf
            buf += chunk
        # ... and the next recv listens again: a later NOTIFY arrives
        wait_until(lambda: pg.psql(listening) == "1", 5, "LISTEN again")
        msg = b"again%d" % attempt
        pg.psql("NOTIFY lost, '%s'" % msg.decode())
        while msg not in buf:
            chunk = c.recv(4096)
            assert chunk, buf
            buf += chunk
    c.close()
    wait_until(lambda: pg.psql(listening) == "0", 3, "the LISTEN connection to close")


def test_server_killed_mid_run_then_back(srv, pg):
    assert get(srv, "/count")[0] == 200
    for _ in range(2):  # the second time too
        got = {}
        t = threading.Thread(target=lambda: got.update(r=get(srv, "/sleep?s=5")))
        t.start()
        wait_until(lambda: active_sleeps(pg) == 1, 3, "pg_sleep(5) to run")
        pg.stop()
        t.join()
        status, r = got["r"]
        assert status == 200 and r["err"] in ("closed", "terminating connection due to administrator command") and "d" not in r, r
        status, r = get(srv, "/sleep?s=0")
        assert r["err"] == "connection refused", r
        assert get(srv, "/fast") == (200, "fast")
        pg.start()
        status, r = get(srv, "/sleep?s=0")
        assert status == 200 and r["d"] == "done", r
