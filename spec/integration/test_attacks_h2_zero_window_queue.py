"""Issue 9: "HTTP/2 zero window holds 16.5 MiB per connection": handlers now
wait once the connection holds --output-buffer, but each stream could still
queue one write, so 100 streams at window 0 held one write each (+3.8-5.3
MiB per connection). req:write now waits before queueing when its stream
can't send and the connection already holds --output-buffer: what a
connection buffers stays ~64 KiB whatever the stream count, and everything
flows once the window opens."""

import hashlib
import os
import subprocess

import pytest
from hyperframe.frame import DataFrame, HeadersFrame, RstStreamFrame, SettingsFrame, WindowUpdateFrame

from conftest import app_path
from h2raw import H2Raw
from test_attacks_lifecycle import stats, wait_until

SLOW = 3 if os.environ.get("LARIAT_SANITIZE") else 1
OUT_HIGH = 64 * 1024
BLOCK = 16384
STREAMS = 100


@pytest.fixture
def srv(start_server):
    return start_server(app_path("h2_window.lua"), "--workers", "1", "--send-timeout", "60")


def expected(n):
    return b"".join(bytes([97 + i % 26]) * BLOCK for i in range(1, n + 1))


def test_zero_window_streams_hold_about_the_output_buffer_then_flow(srv):
    """100 streams of 8 blocks at window 0, twice on fresh connections: the
    worker's buffered output stays under --output-buffer plus two blocks
    (it was a block per stream: 1.6 MiB); then the client opens its windows
    and every body arrives whole (no writer is left waiting)."""
    for round_ in range(2):
        with H2Raw(srv.port, timeout=20 * SLOW) as c:
            c.handshake(settings={0x4: 0})  # SETTINGS_INITIAL_WINDOW_SIZE = 0
            for i in range(STREAMS):
                c.request(1 + 2 * i, "/big/8")
            wait_until(lambda: stats(srv)["handlers"] == STREAMS or stats(srv), 10, "all handlers writing")
            # they have all written what they could: the count settles
            wait_until(lambda: stats(srv)["waiting"] == STREAMS or stats(srv), 10, "all writers waiting")
            held = stats(srv)["output"]
            print("round %d: %d bytes buffered for %d zero-window streams" % (round_, held, STREAMS))
            assert held <= OUT_HIGH + 2 * BLOCK + 4096, held
            # open everything: all 100 bodies come whole
            c.send_frame(SettingsFrame(0, settings={0x4: 2 ** 31 - 1}))
            c.send_frame(WindowUpdateFrame(0, window_increment=2 ** 31 - 1 - 65535))
            bodies, done = {}, set()
            while len(done) < STREAMS:
                f = c.read_frame()
                assert f is not None, "EOF with %d of %d bodies" % (len(done), STREAMS)
                assert not isinstance(f, RstStreamFrame), f
                if isinstance(f, DataFrame):
                    bodies[f.stream_id] = bodies.get(f.stream_id, b"") + f.data
                if isinstance(f, (DataFrame, HeadersFrame)) and "END_STREAM" in f.flags:
                    done.add(f.stream_id)
            want = expected(8)
            assert all(bodies[1 + 2 * i] == want for i in range(STREAMS))
        wait_until(lambda: stats(srv)["handlers"] == 0 or stats(srv), 5, "handlers gone")
        wait_until(lambda: stats(srv)["output"] == 0 or stats(srv), 5, "nothing buffered")


def test_large_h2_downloads_are_unaffected(srv):
    """2 MB bodies over h2c with curl (hash-compared) and 40 of them with
    h2load on 4 connections x 10 streams: all whole."""
    want = hashlib.sha256(expected(128)).hexdigest()
    for _ in range(2):
        out = subprocess.run(["curl", "-s", "--http2-prior-knowledge", srv.url("/big/128")],
                             capture_output=True, timeout=60 * SLOW).stdout
        assert hashlib.sha256(out).hexdigest() == want, len(out)
    r = subprocess.run(["h2load", "-n", "40", "-c", "4", "-m", "10", srv.url("/big/128")],
                       capture_output=True, text=True, timeout=120 * SLOW).stdout
    assert "40 succeeded" in r and "status codes: 40 2xx" in r, r
