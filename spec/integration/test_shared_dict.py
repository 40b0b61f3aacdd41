"""lariat.shared: one dictionary for every worker thread — atomic counters,
expiry, add-if-absent, tables, and LRU eviction at the size cap."""

import json
import threading
import time

import httpx
import pytest

from conftest import module_server

server = module_server("shared.lua", "--workers", "2")


def test_incr_is_atomic_across_workers(server):
    """8 clients x 50 increments on 2 workers: no update is lost."""
    def hammer():
        with httpx.Client(base_url=server.url(""), trust_env=False) as c:
            for _ in range(50):
                assert c.post("/incr").status_code == 200
    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert httpx.get(server.url("/count"), trust_env=False).text == "400"


def test_tables_round_trip_with_types(server):
    value = {"name": "x", "n": 3, "f": 2.5, "ok": True, "list": [1, "two", False]}
    r = httpx.post(server.url("/kv/t"), content=json.dumps(value), trust_env=False)
    assert r.text == "stored"
    got = httpx.get(server.url("/kv/t"), trust_env=False).json()
    assert got["value"] == value and got["ttl"] == 0


def test_entries_expire(server):
    """Gone once the TTL has passed, not before: the TTL is long enough that a
    loaded machine still reads the entry first, and the expiry is polled."""
    t0 = time.monotonic()
    httpx.post(server.url("/kv/e?ttl=2"), content='"soon gone"', trust_env=False)
    first = httpx.get(server.url("/kv/e"), trust_env=False).json()
    assert first["value"] == "soon gone" and 0 < first["ttl"] <= 2
    deadline = t0 + 30
    while httpx.get(server.url("/kv/e"), trust_env=False).status_code != 404:
        assert time.monotonic() < deadline, "entry never expired"
        time.sleep(0.1)
    assert time.monotonic() - t0 >= 1.9  # not before its TTL


def test_add_only_when_absent(server):
    assert httpx.post(server.url("/add/once"), content="a", trust_env=False).text == "added"
    assert httpx.post(server.url("/add/once"), content="b", trust_env=False).text == "exists"


def test_size_cap_evicts_least_recently_used(server):
    """200 entries of ~200 bytes into 8 KiB: the oldest go, the newest stay."""
    got = httpx.post(server.url("/fill"), trust_env=False).json()
    assert got["last"] is True and got["first"] is False
    assert 0 < got["n"] < 200
