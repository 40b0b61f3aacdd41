"""An idle HTTP/2 connection sleeps: lariat deletes its nghttp2 session (~5 KiB
and more) and makes a new one, told what the old one knew, when the client
speaks again (core/http2.c h2_sleep/h2_wake). The client must not be able to
tell: these tests put a connection to sleep (a client that doesn't index
header fields, so the server's HPACK decoder keeps no table; `--log-level
debug` says when it sleeps) and check that what follows is answered as an
awake connection answers it: HPACK in step, flow-control windows as granted,
the last stream remembered, PING and WINDOW_UPDATE answered while asleep."""

import os
import socket
import struct

import pytest
from hpack import NeverIndexedHeaderTuple
from hyperframe.frame import DataFrame, GoAwayFrame, HeadersFrame, PingFrame, RstStreamFrame, SettingsFrame, WindowUpdateFrame

from conftest import SLOW, LariatServer, app_path, wait_for
from h2raw import PREFACE, STREAM_CLOSED, H2Raw, connection_error

ASLEEP = "h2: connection asleep"
AWAKE = "h2: connection awake"


def _server(tls_mode):
    s = LariatServer(app_path("h2.lua"), "--log-level", "debug", "--idle-timeout", "3", tls=True).start()
    s.tls_mode = tls_mode
    return s


@pytest.fixture
def srv():
    s = _server(False)
    yield s
    s.check_healthy()


@pytest.fixture(params=["h2c", "h2"])
def srv_both(request):
    """TLS too: its connections sleep and wake the same way (h2 over TLS is
    the same code above the TLS layer), so only some tests run on both"""
    s = _server(request.param == "h2")
    yield s
    s.check_healthy()


def count(srv, what):
    return srv.log_text().count(what)


def connect(srv, settings=None):
    """A client that never indexes a header field: the server's HPACK decoder
    keeps no table, which is what lets the connection sleep. Asleep at once:
    it has said all it had to (its SETTINGS) over h2c; over TLS, whose
    preface comes after the server's SETTINGS, after a quiet second."""
    c = H2Raw(srv.tls_port if srv.tls_mode else srv.port, tls=srv.tls_mode)
    c.header_block = lambda hs: c.enc.encode([NeverIndexedHeaderTuple(k, v) for k, v in hs])
    c.handshake(settings)
    sleeps(srv)
    return c


def state(srv):
    """"asleep" or "awake": the last the (one) connection said it was"""
    log = srv.log_text()
    return "asleep" if log.rfind(ASLEEP) > log.rfind(AWAKE) else "awake"


def sleeps(srv, woke=None):
    """wait until the connection sleeps (again: after its count of wakes went
    past `woke`; the log may lag behind the responses)"""
    wait_for(lambda: (woke is None or count(srv, AWAKE) > woke) and state(srv) == "asleep", 5,
             "the connection to sleep")


def read_body(c, sid, timeout=3):
    """DATA of stream sid without sending WINDOW_UPDATE (unlike H2Raw.response)"""
    body, status, ended = b"", None, False
    while not ended:
        f = c.read_frame(timeout)
        assert f is not None, "EOF"
        assert not isinstance(f, (GoAwayFrame, RstStreamFrame)), f
        if f.stream_id != sid:
            continue
        if isinstance(f, HeadersFrame):
            status = int(f.fields[":status"])
        elif isinstance(f, DataFrame):
            body += f.data
        ended = "END_STREAM" in f.flags
    return status, body


def test_requests_after_sleep_are_answered_with_hpack_in_step(srv_both):
    """RFC 7541 §2.3.2: the encoder and decoder tables stay in step. Asleep, our
    encoder's table is dropped; the client's decoder keeps its entries and
    decodes every later response right, sleep after sleep."""
    srv = srv_both
    with connect(srv) as c:
        for sid in (1, 3, 5):
            woke = count(srv, AWAKE)
            c.request(sid, "/")
            assert c.response(sid)[0::2] == (200, b"Hello world!")
            sleeps(srv, woke)  # again after a quiet second
        c.request(7, "/headers")
        status, headers, body, _ = c.response(7)
        assert (status, headers["x-mixed"], body) == (200, "Case", b"ok")


def test_ping_and_settings_ack_answered_asleep(srv):
    """§6.7: "Receivers of a PING frame that does not include an ACK flag MUST
    send a PING frame with the ACK flag set in response, with an identical
    frame payload" -- asleep too, and without waking."""
    with connect(srv) as c:
        woke = count(srv, AWAKE)
        c.request(1, "/")
        c.response(1)
        sleeps(srv, woke)
        woke = count(srv, AWAKE)
        for payload in (b"12345678", b"abcdefgh"):  # the second time too
            c.send_frame(PingFrame(0, opaque_data=payload))
            f = c.wait_for(lambda f: isinstance(f, PingFrame))
            assert "ACK" in f.flags and f.opaque_data == payload
        assert count(srv, AWAKE) == woke
        c.request(3, "/")
        assert c.response(3)[0::2] == (200, b"Hello world!")


def test_send_window_below_initial_is_kept_across_sleep(srv_both):
    """§6.9.1: "A sender MUST NOT send a flow-controlled frame with a length
    that exceeds the space available in either of the flow-control windows
    advertised by the receiver." The client never gives the connection window
    back: what the first response used stays used after the connection slept,
    though a new session would start at 65,535."""
    srv = srv_both
    with connect(srv, {SettingsFrame.INITIAL_WINDOW_SIZE: 1 << 20}) as c:
        woke = count(srv, AWAKE)
        c.request(1, "/")
        assert read_body(c, 1) == (200, b"Hello world!")
        sleeps(srv, woke)
        c.request(3, "/blocks/8")  # 128 KiB
        got = 0
        for f in c.quiet(0.5 * SLOW):
            if isinstance(f, DataFrame) and f.stream_id == 3:
                got += len(f.data)
        assert got == 65535 - 12
        c.send_frame(WindowUpdateFrame(0, window_increment=1 << 20))
        status, rest = read_body(c, 3)
        assert got + len(rest) == 8 * 16384


def test_window_update_while_asleep_counts(srv):
    """§6.9: WINDOW_UPDATE frames received while asleep enlarge the connection
    window the next response is sent in."""
    with connect(srv, {SettingsFrame.INITIAL_WINDOW_SIZE: 1 << 20}) as c:
        woke = count(srv, AWAKE)
        c.request(1, "/")
        read_body(c, 1)
        sleeps(srv, woke)
        woke = count(srv, AWAKE)
        c.send_frame(WindowUpdateFrame(0, window_increment=40000))
        c.send_frame(WindowUpdateFrame(0, window_increment=40000))
        assert c.quiet(0.2) == []
        assert count(srv, AWAKE) == woke  # answered asleep
        c.request(3, "/blocks/10")  # 160 KiB
        got = sum(len(f.data) for f in c.quiet(0.5 * SLOW) if isinstance(f, DataFrame) and f.stream_id == 3)
        assert got == 65535 - 12 + 80000


def test_closed_streams_stay_closed_after_sleep(srv):
    """§5.1: DATA on a closed stream is a stream error STREAM_CLOSED; §5.1.1: a
    new stream's identifier "MUST be numerically greater than all streams that
    the initiating endpoint has opened" -- after a sleep as before it."""
    with connect(srv) as c:
        woke = count(srv, AWAKE)
        c.request(1, "/")
        c.response(1)
        c.request(3, "/")
        c.response(3)
        sleeps(srv, woke)
        c.data(1, b"late")
        f = c.expect_rst(1)
        assert f.error_code == STREAM_CLOSED
        c.request(3, "/")
        connection_error(c, STREAM_CLOSED)


def test_goaway_after_sleep_names_the_last_stream(srv):
    """§6.8: the GOAWAY's last stream identifier is "the highest-numbered stream
    identifier for which the sender of the GOAWAY frame might have taken some
    action on" -- here the idle timeout's GOAWAY, sent by a session that woke
    for it."""
    with connect(srv) as c:
        woke = count(srv, AWAKE)
        for sid in (1, 3, 5):
            c.request(sid, "/")
            c.response(sid)
        sleeps(srv, woke)
        f = c.expect_goaway(timeout=8 * SLOW)
        assert (f.last_stream_id, f.error_code) == (5, 0)


def _idle_h2c(port):
    """a connection like the bench's: one GET / without indexing, then idle"""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    block = b"\x82\x86\x84\x01\x09127.0.0.1"
    s.sendall(PREFACE + SettingsFrame(0).serialize()
              + struct.pack(">I", len(block))[1:] + b"\x01\x05\x00\x00\x00\x01" + block)
    buf = b""
    while b"Hello world!" not in buf:
        d = s.recv(65536)
        assert d, "closed before the response"
        buf += d
    s.sendall(SettingsFrame(0, flags=["ACK"]).serialize())
    return s


def test_idle_connections_cost_little_memory():
    """Issue 13: an idle HTTP/2 connection costs <= 2 KiB (the bench measures
    1,000 and 10,000; here 300, and the bound is looser for the noise of a
    smaller sample); an awake nghttp2 session alone is ~5.3 KiB. Asleep they
    still answer. Then the same again once the first ones are gone."""
    srv = LariatServer(app_path("h2.lua"), "--log-level", "debug", "--workers", "1").start()
    fds = lambda: len(os.listdir("/proc/%d/fd" % srv.pid))
    try:
        n = 300
        first = _idle_h2c(srv.port)  # the first connection's allocations are not per connection
        fds0 = fds()
        for round_ in (1, 2):
            asleep = count(srv, ASLEEP)
            base = srv.rss_kib()
            socks = [_idle_h2c(srv.port) for _ in range(n)]
            wait_for(lambda: count(srv, ASLEEP) >= asleep + n, 10, "all asleep")
            per_conn = (srv.rss_kib() - base) / n
            if SLOW == 1:  # ASan's allocator and quarantine are no measure of ours
                assert per_conn < 3.5, "round %d: %.2f KiB per idle connection" % (round_, per_conn)
            for s in (socks[0], socks[-1]):
                s.sendall(PingFrame(0, opaque_data=b"rounds!%d" % round_).serialize())
                assert b"rounds!%d" % round_ in s.recv(100)
            for s in socks:
                s.close()
            wait_for(lambda: fds() <= fds0, 10, "the server to close them")
        first.close()
    finally:
        srv.stop()
