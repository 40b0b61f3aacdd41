"""lariat.sqlite: the embedded database, on a thread of its own per file.

DESIGN §4b "Data": db:query with ? parameters (bound, never string-built),
integers stay integers, NULL is lariat.null, BLOBs are strings; transactions
commit or roll back; queries never block the worker's loop; many workers
writing one file never see "database is locked"."""

import os
import shutil
import tempfile
import threading
import time

import pytest

from conftest import LariatServer, app_path
from dataservers import SLOW, get


@pytest.fixture
def dbdir():
    d = tempfile.mkdtemp(prefix="lariat-sqlite-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def start(dbdir, *options, workers=2):
    os.environ["LARIAT_TEST_SQLITE"] = os.path.join(dbdir, "t.db")
    return LariatServer(app_path("data_sqlite.lua"), "--workers", str(workers), *options).start()


@pytest.fixture
def srv(dbdir):
    s = start(dbdir)
    yield s
    s.check_healthy()


def test_types_both_ways_and_null(srv):
    status, r = get(srv, "/types")
    assert status == 200, r
    assert r["i"] == 42 and r["i_type"] == "integer"
    assert r["f"] == 1.5 and r["f_type"] == "float"
    assert r["s"] == "héllo"
    assert r["n_is_null"] is True and r["null_same_as_json"] is True
    assert r["b_ok"] is True and r["tb"] == "blob"  # a non-UTF-8 string is bound as a BLOB, read back as is
    assert r["t"] == 1 and r["big_ok"] is True  # booleans bind as 1/0; 64-bit integers exact
    assert r["tn"] == "null"  # nil is NULL too
    # a parameter is a value, never SQL: the quote is just text
    assert r["inj"] == "x'; DROP TABLE items; --"
    assert r["nrows"] == 1 and "changes" not in r  # a read reports no changes


def test_stored_values_keep_their_type(srv):
    assert get(srv, "/kv?set=a&v=7&type=int")[0] == 200
    assert get(srv, "/kv?get=a")[1] == {"v": 7, "t": "integer"}
    assert get(srv, "/kv?set=b&v=7")[0] == 200
    assert get(srv, "/kv?get=b")[1] == {"v": "7", "t": "text"}
    assert get(srv, "/kv?set=c&type=null")[0] == 200
    assert get(srv, "/kv?get=c")[1] == {"v": "NULL", "t": "null"}


def test_errors_come_back_with_sqlite_messages(srv):
    status, r = get(srv, "/error")
    assert status == 200, r
    assert r["rows"] is True and r["err"] == "no such table: no_such_table"
    assert r["first"] is True and r["err3"] == "UNIQUE constraint failed: kv.k"
    assert r["err4"] == "query has 1 parameter, 2 given"
    assert r["raised"] is True  # a table parameter is misuse: it raises
    # the second time too: the connection and statement cache are fine
    assert get(srv, "/error")[1] == r


def test_transaction_commits_or_rolls_back_and_returns_the_error(srv):
    status, r = get(srv, "/tx")
    assert status == 200 and r == {"a": "committed", "b": 2, "delta": 2}, r
    status, r = get(srv, "/tx?fail=1")
    assert status == 200, r
    assert "a" not in r and r["b"].endswith("boom") and r["delta"] == 0, r
    # concurrent transactions and plain writes from both workers serialise cleanly
    results = []

    def one(path):
        results.append(get(srv, path))

    ts = [threading.Thread(target=one, args=("/tx?fail=1" if i % 3 == 0 else "/tx",)) for i in range(12)]
    ts += [threading.Thread(target=one, args=("/insert?name=p",)) for _ in range(12)]
    before = get(srv, "/count")[1]["n"]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert all(s == 200 for s, _ in results), results
    assert get(srv, "/count")[1]["n"] == before + 8 * 2 + 12


def test_400_inserts_from_2_workers_never_see_database_is_locked(srv):
    results, lock = [], threading.Lock()

    def client(n):
        import http.client
        c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30 * SLOW)
        for i in range(n):
            c.request("GET", "/insert?name=c%d" % i)
            r = c.getresponse()
            body = r.read()
            with lock:
                results.append((r.status, body))
        c.close()

    # separate connections spread over both workers (SO_REUSEPORT)
    ts = [threading.Thread(target=client, args=(25,)) for _ in range(16)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    failures = [r for r in results if r[0] != 200]
    assert len(results) == 400 and failures == [], failures[:5]
    status, r = get(srv, "/count")
    assert r["n"] == 400
    assert r["workers"] == 2, "both workers should have written: %r" % r


def test_a_slow_query_times_out_is_interrupted_and_never_blocks_the_loop(srv):
    got = {}

    def slow():
        got["slow"] = get(srv, "/slow")

    t = threading.Thread(target=slow)
    t.start()
    time.sleep(0.05)
    # the worker's loop keeps serving while its coroutine waits on the thread
    t0 = time.monotonic()
    for _ in range(5):
        assert get(srv, "/fast") == (200, "fast")
    assert time.monotonic() - t0 < 0.25 * SLOW
    t.join()
    status, r = got["slow"]
    assert status == 200 and r["err"] == "timeout", r
    assert 0.25 <= r["took"] < 1.5 * SLOW
    # sqlite3_interrupt stopped the statement: the database answers at once
    t0 = time.monotonic()
    assert get(srv, "/count")[0] == 200
    assert time.monotonic() - t0 < 1.0 * SLOW
    # the second time too
    assert get(srv, "/slow")[1]["err"] == "timeout"
    assert get(srv, "/kv?set=after&v=1")[0] == 200


def test_data_survives_a_restart(dbdir):
    s = start(dbdir)
    try:
        for i in range(3):
            assert get(s, "/insert?name=keep%d" % i)[0] == 200
        assert get(s, "/kv?set=k&v=9&type=int")[0] == 200
    finally:
        s.check_healthy()  # SIGTERM: the thread finishes and closes the file
    s2 = start(dbdir, workers=1)
    try:
        assert get(s2, "/count")[1]["n"] == 3
        assert get(s2, "/kv?get=k")[1] == {"v": 9, "t": "integer"}
    finally:
        s2.check_healthy()
    assert os.path.exists(os.path.join(dbdir, "t.db"))


def test_client_leaving_interrupts_its_query(srv):
    """The handler is cancelled at its wait when its client goes: the statement
    is stopped with sqlite3_interrupt and its result dropped (the thread may
    still run it then: nothing on the worker side is touched by it after)."""
    import socket
    for attempt in range(2):  # the second time too
        c = socket.create_connection(("127.0.0.1", srv.port))
        c.sendall(b"GET /slow-forever HTTP/1.1\r\nhost: x\r\n\r\n")
        time.sleep(0.3)
        c.close()
        # without the interrupt, the database thread would be busy for minutes
        t0 = time.monotonic()
        status, r = get(srv, "/count", timeout=5)
        assert status == 200, r
        assert time.monotonic() - t0 < 1.5 * SLOW
    assert get(srv, "/fast") == (200, "fast")
