"""lariat --redis URL: two lariat instances behind HAProxy share lariat.shared
dictionaries and lariat.channel messages through one redis-server.

DESIGN §4b "Details the tests rely on": with --redis, every lariat.shared
dictionary and every channel is cluster-wide; a `set` is visible on every
instance once it returns; a publish reaches each subscriber once, typically
within milliseconds; while Redis is down operations return
nil, "redis unavailable: …" and the client reconnects by itself."""

import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time

import httpx
import pytest

from conftest import LariatServer, app_path, lariat_bin
from dataservers import SLOW, Redis, free_port, wait_until
from wsclient import WS

HAPROXY_CFG = """global
  maxconn 512
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  timeout tunnel 120s
frontend front
  bind 127.0.0.1:%(port)d
  default_backend lariats
backend lariats
  balance roundrobin
  server a 127.0.0.1:%(a)d
  server b 127.0.0.1:%(b)d
"""


class HAProxy:
    """Debian's haproxy in front of the instances, config in a temp dir, stopped by PID."""

    def __init__(self, backends):
        self.bin = shutil.which("haproxy") or "/usr/sbin/haproxy"
        if not os.access(self.bin, os.X_OK):
            pytest.skip("haproxy is not installed (scripts/setup installs it)")
        self.dir = tempfile.mkdtemp(prefix="lariat-haproxy-")
        self.port = free_port()
        self.cfg = os.path.join(self.dir, "haproxy.cfg")
        with open(self.cfg, "w") as f:
            f.write(HAPROXY_CFG % {"port": self.port, "a": backends[0], "b": backends[1]})
        self.proc = subprocess.Popen([self.bin, "-db", "-f", self.cfg], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_until(self._up, 10, "haproxy to accept connections")

    def _up(self):
        if self.proc.poll() is not None:
            raise RuntimeError("haproxy exited with %r" % self.proc.returncode)
        try:
            return httpx.get(self.url("/kv/nothing"), trust_env=False, timeout=2).status_code in (404, 503)
        except httpx.HTTPError:
            return False

    def url(self, path):
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)


class Cluster:
    def __init__(self):
        self.redis = Redis().start()
        self.lariats = []
        try:
            for name in ("A", "B"):
                os.environ["LARIAT_TEST_INSTANCE"] = name
                self.lariats.append(LariatServer(app_path("cluster.lua"), "--workers", "2",
                                                 "--redis", self.redis.url(db=5)).start())
            self.proxy = HAProxy([s.port for s in self.lariats])
        except BaseException:
            self.cleanup()
            raise
        self.a, self.b = self.lariats

    def cleanup(self):
        if getattr(self, "proxy", None):
            self.proxy.stop()
        for s in self.lariats:
            s.stop()
        self.redis.cleanup()


@pytest.fixture(scope="module")
def cluster():
    c = Cluster()
    yield c
    for s in c.lariats:
        s.check_healthy()
    c.cleanup()


def post(target, path, body=b"", timeout=10):
    return httpx.post(target.url(path), content=body, trust_env=False, timeout=timeout * SLOW)


def get(target, path, timeout=10):
    return httpx.get(target.url(path), trust_env=False, timeout=timeout * SLOW)


def test_a_set_through_one_instance_is_read_through_the_other(cluster):
    a, b, proxy = cluster.a, cluster.b, cluster.proxy
    assert post(a, "/kv/greeting", b'{"text": "hi", "n": [1, 2]}').text == "stored"
    # visible on the other instance as soon as set returned
    r = get(b, "/kv/greeting")
    assert r.status_code == 200 and r.headers["x-instance"] == "B"
    assert r.json()["value"] == {"text": "hi", "n": [1, 2]}
    # through HAProxy: written by whichever instance, read by both
    assert post(proxy, "/kv/via-proxy", b'"one"').text == "stored"
    seen = set()
    for _ in range(4):
        r = get(proxy, "/kv/via-proxy")
        assert r.status_code == 200 and r.json()["value"] == "one"
        seen.add(r.headers["x-instance"])
    assert seen == {"A", "B"}  # round robin reached both
    # an overwrite and a delete on one are seen by the other
    assert post(b, "/kv/greeting", b'"bye"').text == "stored"
    assert get(a, "/kv/greeting").json()["value"] == "bye"
    assert httpx.delete(b.url("/kv/greeting"), trust_env=False).text == "true"
    assert get(a, "/kv/greeting").status_code == 404
    # keys() lists one dictionary's keys, without its prefix
    assert post(a, "/other/x").text == "true"
    keys = get(b, "/keys").json()
    assert "via-proxy" in keys["keys"] and "greeting" not in keys["keys"] and keys["other"] == 1


def test_values_keep_their_types_in_redis(cluster):
    # a plain value another Redis client wrote reads back as the string it is
    cluster.redis.cli("SET", "lariat:shared:kv:raw", "plain", db=5)
    r = get(cluster.b, "/types").json()
    assert r["s"] == {"v": "héllo", "type": "string"}
    assert r["i"] == {"v": 42, "type": "integer"} and r["neg"] == {"v": -7, "type": "integer"}
    assert r["f"] == {"v": 2.5, "type": "float"} and r["whole"]["type"] == "float"
    assert r["big"]["type"] == "integer"
    assert r["yes"] == {"v": True, "type": "boolean"} and r["no"] == {"v": False, "type": "boolean"}
    assert r["t"] == {"v": {"a": 1, "list": ["x", 2, False]}, "type": "table"}
    assert r["raw"] == "plain"
    # numbers are Redis numbers: INCRBY from outside works on them
    assert cluster.redis.cli("INCRBY", "lariat:shared:kv:type:i", "1", db=5) == b":43\r\n"


def test_incr_from_both_instances_sums_exactly(cluster):
    """8 clients x 40 increments through HAProxy (so on both instances, 2 workers
    each): the total is exact and every increment saw a different value."""
    results, instances, errors = [], [], []

    def hammer():
        with httpx.Client(trust_env=False, timeout=10 * SLOW) as c:
            for _ in range(40):
                r = c.post(cluster.proxy.url("/incr/hits?init=0"))
                if r.status_code != 200:
                    errors.append(r.text)
                    continue
                results.append(r.json()["value"])
                instances.append(r.headers["x-instance"])

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(results) == list(range(1, 321))
    assert instances.count("A") > 0 and instances.count("B") > 0
    assert get(cluster.a, "/kv/hits").json()["value"] == 320
    assert get(cluster.b, "/kv/hits").json()["value"] == 320
    # float deltas, missing keys and non-numbers behave as without --redis
    assert post(cluster.a, "/incr/hits?by=0.5").json() == {"value": 320.5, "type": "float"}
    assert post(cluster.b, "/incr/never-set").status_code == 404
    assert post(cluster.b, "/kv/word", b'"abc"').text == "stored"
    assert post(cluster.a, "/incr/word").status_code == 409


def test_add_succeeds_once_across_instances(cluster):
    outcomes = []

    def add(srv):
        outcomes.append((srv, post(srv, "/add/once", srv.url("").encode()).text))

    threads = [threading.Thread(target=add, args=(s,)) for s in cluster.lariats * 6]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    added = [s for s, o in outcomes if o == "added"]
    assert len(added) == 1 and sorted(o for _, o in outcomes).count("exists") == 11
    # the value is the winner's, on both
    for s in cluster.lariats:
        assert get(s, "/kv/once").json()["value"] == added[0].url("")


def test_entries_expire_on_every_instance(cluster):
    t0 = time.monotonic()
    assert post(cluster.a, "/kv/short?ttl=1.5", b'"soon gone"').text == "stored"
    first = get(cluster.b, "/kv/short").json()
    assert first["value"] == "soon gone" and 0 < first["ttl"] <= 1.5
    wait_until(lambda: get(cluster.b, "/kv/short").status_code == 404, 30, "the entry to expire", step=0.05)
    assert time.monotonic() - t0 >= 1.4  # not before its TTL
    assert get(cluster.a, "/kv/short").status_code == 404
    # incr keeps a TTL, or sets one when asked
    assert post(cluster.a, "/incr/ctr?init=0&ttl=60").json()["value"] == 1
    assert post(cluster.b, "/incr/ctr").json()["value"] == 2
    assert 55 < get(cluster.a, "/kv/ctr").json()["ttl"] <= 60


def test_outside_a_coroutine_the_call_raises(cluster):
    r = get(cluster.a, "/outside").json()
    assert r["ok"] is False and "with --redis" in r["err"]


def open_sub(port, channel):
    ws = WS(port, "/sub/" + channel, timeout=10 * SLOW)
    assert ws.status == 101
    op, ready = ws.read_message()
    assert ready.startswith(b"ready "), ready
    return ws, ready.split()[1].decode()


def test_a_websocket_on_one_instance_gets_what_the_other_publishes_once(cluster):
    """A WebSocket through HAProxy lands on one instance; the other one publishes,
    and so does its own instance (delivered from memory there): every message
    arrives once, in each publisher's order."""
    proxy = cluster.proxy
    ws1, on1 = open_sub(proxy.port, "room")
    ws2, on2 = open_sub(proxy.port, "room")
    assert {on1, on2} == {"A", "B"}  # round robin: one on each
    here = cluster.a if on1 == "A" else cluster.b
    there = cluster.b if here is cluster.a else cluster.a
    sent = []
    t0 = time.monotonic()
    for i in range(20):
        for srv, tag in ((there, "there"), (here, "here")):
            msg = "%s-%d" % (tag, i)
            assert post(srv, "/publish/room", msg.encode()).status_code == 200
            sent.append(msg)
    post(there, "/publish/room", b"end")
    for ws in (ws1, ws2):
        got = []
        while True:
            op, m = ws.read_message()
            if m == b"end":
                break
            got.append(m.decode())
        assert sorted(got) == sorted(sent), "each message exactly once"
        for tag in ("there", "here"):
            assert [m for m in got if m.startswith(tag)] == [m for m in sent if m.startswith(tag)]
        ws.close()
    assert time.monotonic() - t0 < 20 * SLOW
    # other channels are not delivered
    ws3, _ = open_sub(cluster.a.port, "quiet")
    post(cluster.b, "/publish/loud", b"x")
    post(cluster.b, "/publish/quiet", b"y")
    assert ws3.read_message()[1] == b"y"
    ws3.close()
    # another database of the same Redis is another cluster, for channels too
    apart = LariatServer(app_path("cluster.lua"), "--workers", "1", "--redis", cluster.redis.url(db=6)).start()
    try:
        ws4, _ = open_sub(apart.port, "quiet")
        post(cluster.b, "/publish/quiet", b"not for db 6")
        post(apart, "/publish/quiet", b"db 6")
        assert ws4.read_message()[1] == b"db 6"
        ws4.close()
    finally:
        apart.check_healthy()


def expect_unavailable(r):
    assert r.status_code == 503 and r.text.startswith("redis unavailable: "), (r.status_code, r.text)


def test_redis_stopped_and_started_again(cluster):
    """Redis goes away mid-run: every operation says so at once; it comes back on
    the same port: the same lariat processes work again, subscriptions opened
    before the outage included -- twice."""
    redis = cluster.redis
    ws, on = open_sub(cluster.a.port, "survivor")
    for round_ in range(2):
        redis.stop()
        for s in cluster.lariats:
            expect_unavailable(get(s, "/kv/greeting"))
            expect_unavailable(post(s, "/kv/x", b"1"))
            expect_unavailable(post(s, "/incr/hits"))
            expect_unavailable(post(s, "/publish/survivor", b"lost"))
        bad = WS(cluster.b.port, "/sub/survivor", timeout=10 * SLOW)
        assert bad.read_message()[1].startswith(b"error: redis unavailable: ")
        bad.close()
        redis.start()
        for s in cluster.lariats:
            wait_until(lambda: post(s, "/kv/back", b'"yes"').status_code == 200, 10, "lariat to reconnect")
            assert get(s, "/kv/back").json()["value"] == "yes"
        # the subscription made before the outage is taken again by itself
        n = 0

        def delivered():
            nonlocal n
            n += 1
            post(cluster.b, "/publish/survivor", b"probe-%d-%d" % (round_, n))
            ws.sock.settimeout(0.2)
            try:
                return ws.read_message()[1]
            except OSError:
                return None
            finally:
                ws.sock.settimeout(10 * SLOW)

        first = wait_until(delivered, 10, "the old subscription to deliver again", step=0)
        assert first.startswith(b"probe-%d-" % round_)
        # drain stray probes, then one message arrives exactly once
        while True:
            ws.sock.settimeout(0.5)
            try:
                ws.read_message()
            except OSError:
                break
        ws.sock.settimeout(10 * SLOW)
        post(cluster.b, "/publish/survivor", b"after-%d" % round_)
        post(cluster.b, "/publish/survivor", b"end-%d" % round_)
        assert ws.read_message()[1] == b"after-%d" % round_
        assert ws.read_message()[1] == b"end-%d" % round_
    ws.close()
    # the bound: each worker holds at most its command and subscription connections
    wait_until(lambda: redis.clients() <= 2 * 2 * 2, 10, "old connections to be gone")
    for s in cluster.lariats:
        assert s.alive()


def test_a_bad_redis_url_is_refused_at_startup():
    out = subprocess.run([lariat_bin(), "--redis", "http://nope", app_path("cluster.lua")],
                         capture_output=True, timeout=10 * SLOW)
    assert out.returncode == 2 and b"--redis" in out.stderr and b"redis://" in out.stderr


def test_a_stalled_redis_times_out_and_a_leaving_client_cancels(cluster):
    """Redis stalls (DEBUG SLEEP): a call gives up after the URL's timeout with
    "redis unavailable: timeout", a client that leaves mid-wait cancels its call,
    and the same server answers once Redis does -- twice."""
    redis = cluster.redis
    srv = LariatServer(app_path("cluster.lua"), "--workers", "1",
                       "--redis", redis.url(db=5) + "?timeout=0.5").start()
    try:
        assert post(srv, "/kv/stall", b'"before"').text == "stored"
        for _ in range(2):
            sleeper = threading.Thread(target=redis.cli, args=("DEBUG", "SLEEP", "2"))
            sleeper.start()
            time.sleep(0.1)  # the sleep has started: Redis answers nobody now
            leaving = srv.connect()
            leaving.send(b"GET /kv/stall HTTP/1.1\r\nhost: x\r\n\r\n")
            time.sleep(0.1)
            leaving.close()  # while its GET waits for Redis
            t0 = time.monotonic()
            r = get(srv, "/kv/stall")
            assert r.status_code == 503 and r.text == "redis unavailable: timeout", r.text
            assert time.monotonic() - t0 < 1.8
            sleeper.join()
            wait_until(lambda: get(srv, "/kv/stall").status_code == 200, 10, "answers again")
            assert get(srv, "/kv/stall").json()["value"] == "before"
    finally:
        srv.check_healthy()
