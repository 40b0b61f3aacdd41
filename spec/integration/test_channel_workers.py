"""lariat.channel delivers to subscribers in every worker (uv_async wake-ups),
so a chat room works across cores."""

import threading
import time

import httpx

from conftest import module_server

server = module_server("channel_workers.lua", "--workers", "2")


def test_publish_reaches_subscribers_on_every_worker(server):
    n = 12  # separate connections: SO_REUSEPORT spreads them over both workers
    results = [None] * n

    def subscribe(i):
        with httpx.Client(trust_env=False, timeout=10) as c:
            results[i] = c.get(server.url("/sub")).json()
    threads = [threading.Thread(target=subscribe, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    deadline = time.time() + 5
    while httpx.get(server.url("/subs"), trust_env=False).text != str(n) and time.time() < deadline:
        time.sleep(0.02)
    assert httpx.get(server.url("/subs"), trust_env=False).text == str(n)
    pub = httpx.post(server.url("/pub"), content=b"hello everyone", trust_env=False).json()
    for t in threads:
        t.join(10)
    assert all(r is not None and r["msg"] == "hello everyone" for r in results), results
    workers = {r["worker"] for r in results}
    # the message crossed workers whenever subscribers sat on both
    if len(workers) == 2:
        assert pub["local_subscribers"] < n
