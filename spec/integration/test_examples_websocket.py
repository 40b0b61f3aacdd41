"""examples/echo_ws.lua and examples/chat with real clients: python websockets
and a headless Chromium that loads the chat page, posts a message and shows
what the room said (messages checked in both directions)."""

import asyncio
import json
import shutil
import subprocess
import tempfile
import time

import pytest
import websockets

from conftest import REPO
from wsclient import WS, frame

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def test_echo_ws_example_with_python_websockets(start_server):
    srv = start_server(str(REPO / "examples" / "echo_ws.lua"))

    async def run():
        async with websockets.connect("ws://127.0.0.1:%d/echo" % srv.port) as ws:
            await ws.send("hello")
            assert await ws.recv() == "hello"
            await ws.send(b"\x00bin")
            assert await ws.recv() == b"\x00bin"
    asyncio.run(run())


def read_chat(ws, want, timeout=10):
    """messages until one matches want(from, text); returns all seen"""
    ws.sock.settimeout(timeout)
    seen = []
    while True:
        op, data = ws.read_message()
        if op != 1:
            continue
        m = json.loads(data)
        seen.append(m)
        if want(m["from"], m["text"]):
            return seen


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (scripts/setup installs it from Debian)")
def test_chat_example_in_headless_chromium(start_server):
    srv = start_server(str(REPO / "examples" / "chat" / "app.lua"), "--workers", "1")
    with WS(srv.port, "/chat?name=py", protocols="chat") as py:
        assert py.status == 101 and py.headers["sec-websocket-protocol"] == "chat"
        py.send(frame(1, "hello from python"))
        read_chat(py, lambda f, t: f == "py" and t == "hello from python")
        with tempfile.TemporaryDirectory() as profile:
            out = subprocess.run(
                [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--user-data-dir=" + profile, "--virtual-time-budget=3000", "--dump-dom",
                 "http://127.0.0.1:%d/?name=browser&say=hello%%20from%%20chromium" % srv.port],
                capture_output=True, text=True, timeout=60)
        dom = out.stdout
        # browser → server → python
        seen = read_chat(py, lambda f, t: f == "browser" and t == "hello from chromium")
        assert {"from": "server", "text": "browser joined"} in seen
        # python → server → browser (the room's history reached the page)
        assert "connected as browser" in dom, dom[-2000:]
        assert "hello from python" in dom
        assert "hello from chromium" in dom


RELOAD_APP = """
local lariat = require "lariat"
local app = lariat.app()
local VERSION = "v%d"
app:ws("/v", function(ws)
  for msg in ws:each() do ws:send(VERSION .. " " .. msg) end
end)
return app
"""


def test_open_websocket_keeps_its_app_version_across_a_reload(tmp_path, start_server):
    """When the app reloads, open WebSockets keep running on the version that
    accepted them; new ones get the new version."""
    import os
    import signal
    app = tmp_path / "app.lua"
    app.write_text(RELOAD_APP % 1)
    srv = start_server(str(app), "--workers", "1")
    with WS(srv.port, "/v") as old:
        old.send(frame(1, "a"))
        assert old.read_message() == (1, b"v1 a")
        app.write_text(RELOAD_APP % 2)
        os.kill(srv.pid, signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "app reloaded" not in srv.log_text():
            assert time.monotonic() < deadline, srv.log_text()
            time.sleep(0.05)
        with WS(srv.port, "/v") as new:
            new.send(frame(1, "b"))
            assert new.read_message() == (1, b"v2 b")
        old.send(frame(1, "c"))
        assert old.read_message() == (1, b"v1 c")


def test_sigterm_closes_open_websockets_with_1001():
    """a graceful stop tells WebSocket peers the server is going away"""
    import os
    import signal
    from conftest import SANITIZER_RE, LariatServer
    srv = LariatServer(str(REPO / "examples" / "echo_ws.lua"), "--workers", "1").start()
    try:
        with WS(srv.port, "/echo") as ws:
            ws.send(frame(1, "x"))
            assert ws.read_message() == (1, b"x")
            os.kill(srv.pid, signal.SIGTERM)
            assert ws.read_close()[0] == 1001
            assert ws.closed_by_server()
        assert srv.proc.wait(10) == 0
    finally:
        srv.stop()
    assert not SANITIZER_RE.search(srv.stderr_text()), srv.stderr_text()


def test_wss_echo_on_the_tls_listener(start_server):
    """WebSocket over TLS (wss://): the same handler behind the TLS listener"""
    import ssl
    srv = start_server(str(REPO / "examples" / "echo_ws.lua"), tls=True)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE

    async def run():
        async with websockets.connect("wss://127.0.0.1:%d/echo" % srv.tls_port, ssl=ctx, max_size=None) as ws:
            for msg in ["over tls", "y" * 200000]:
                await ws.send(msg)
                assert await ws.recv() == msg
    asyncio.run(run())


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (scripts/setup installs it from Debian)")
def test_chat_example_in_headless_chromium_over_wss(start_server):
    srv = start_server(str(REPO / "examples" / "chat" / "app.lua"), "--workers", "1", tls=True)
    with WS(srv.port, "/chat?name=py", protocols="chat") as py:
        py.send(frame(1, "hello from python"))
        read_chat(py, lambda f, t: f == "py" and t == "hello from python")
        with tempfile.TemporaryDirectory() as profile:
            out = subprocess.run(
                [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--ignore-certificate-errors", "--user-data-dir=" + profile, "--virtual-time-budget=3000",
                 "--dump-dom", "https://127.0.0.1:%d/?name=tlsbrowser&say=hello%%20over%%20wss" % srv.tls_port],
                capture_output=True, text=True, timeout=60)
        dom = out.stdout
        seen = read_chat(py, lambda f, t: f == "tlsbrowser" and t == "hello over wss")
        assert {"from": "server", "text": "tlsbrowser joined"} in seen
        assert "connected as tlsbrowser" in dom, dom[-2000:]
        assert "hello from python" in dom
