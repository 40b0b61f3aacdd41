"""A raw HTTP/2 client for protocol tests: exact frames out (hyperframe,
hpack), every frame in. Nothing is validated on our side, so a test can send
what a conforming client never would and see exactly what the server does.
"""

import socket
import ssl
import time

from conftest import SocketClient
from hpack import Encoder
from hyperframe.frame import (ContinuationFrame, DataFrame, Frame, GoAwayFrame, HeadersFrame,
                              PingFrame, RstStreamFrame, SettingsFrame, WindowUpdateFrame)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# error codes (RFC 9113 §7)
NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
INTERNAL_ERROR = 0x2
FLOW_CONTROL_ERROR = 0x3
STREAM_CLOSED = 0x5
FRAME_SIZE_ERROR = 0x6
REFUSED_STREAM = 0x7
CANCEL = 0x8
COMPRESSION_ERROR = 0x9
ENHANCE_YOUR_CALM = 0xB


class H2Raw(SocketClient):
    def __init__(self, port, tls=False, timeout=5):
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        if tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            ctx.set_alpn_protocols(["h2"])
            raw = ctx.wrap_socket(raw, server_hostname="localhost")
        self.sock = raw
        self.timeout = timeout
        self.buf = b""
        self.eof = False
        self.enc = Encoder()
        self.frames = []  # everything received, in order
        self.server_settings = {}
        from hpack import Decoder
        self.dec = Decoder()
        self.dec.max_header_list_size = 1 << 20

    # -- bytes -------------------------------------------------------------
    def send(self, data):
        self.sock.sendall(data)

    def send_lenient(self, data):
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            return False

    def send_frame(self, f):
        self.send(f.serialize())

    def _fill(self, deadline):
        if self.eof:
            return False
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("no frame in time")
        self.sock.settimeout(left)
        try:
            d = self.sock.recv(1 << 20)
        except (ConnectionResetError, ssl.SSLError):
            d = b""
        if not d:
            self.eof = True
            return False
        self.buf += d
        return True

    def read_frame(self, timeout=None):
        """The next frame, or None at EOF. Raises socket.timeout."""
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        while len(self.buf) < 9:
            if not self._fill(deadline):
                return None
        f, length = Frame.parse_frame_header(memoryview(self.buf[:9]))
        while len(self.buf) < 9 + length:
            if not self._fill(deadline):
                return None
        f.parse_body(memoryview(self.buf[9:9 + length]))
        self.buf = self.buf[9 + length:]
        self.frames.append(f)
        if isinstance(f, (HeadersFrame, ContinuationFrame)):
            # every header block is decoded as it arrives, keeping HPACK in step
            self.block = getattr(self, "block", b"") + f.data
            if "END_HEADERS" in f.flags:
                f.fields = {k.decode() if isinstance(k, bytes) else k:
                            v.decode() if isinstance(v, bytes) else v
                            for k, v in self.dec.decode(self.block)}
                self.block = b""
        if isinstance(f, SettingsFrame) and "ACK" not in f.flags:
            self.server_settings.update(f.settings)
        return f

    def wait_for(self, pred, timeout=None):
        """Read until pred(frame) is true; returns that frame (None at EOF)."""
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        while True:
            f = self.read_frame(max(0.01, deadline - time.monotonic()))
            if f is None or pred(f):
                return f

    def quiet(self, seconds=0.3):
        """Frames that arrive within `seconds` (nothing more is expected)."""
        got = []
        deadline = time.monotonic() + seconds
        while True:
            try:
                f = self.read_frame(max(0.01, deadline - time.monotonic()))
            except socket.timeout:
                return got
            if f is None:
                return got
            got.append(f)

    # -- conversation ----------------------------------------------------------
    def handshake(self, settings=None):
        """Preface + SETTINGS; reads the server's SETTINGS and acks it."""
        self.send(PREFACE)
        s = SettingsFrame(0)
        if settings:
            s.settings = dict(settings)
        self.send_frame(s)
        f = self.wait_for(lambda f: isinstance(f, SettingsFrame) and "ACK" not in f.flags)
        assert f is not None, "no SETTINGS from the server"
        self.send_frame(SettingsFrame(0, flags=["ACK"]))
        return f

    def header_block(self, headers):
        return self.enc.encode(headers)

    def request(self, sid, path="/", method="GET", extra=(), end_stream=True,
                authority="127.0.0.1", scheme="http"):
        hs = [(":method", method), (":scheme", scheme), (":authority", authority),
              (":path", path)] + list(extra)
        f = HeadersFrame(sid, data=self.header_block(hs))
        f.flags.add("END_HEADERS")
        if end_stream:
            f.flags.add("END_STREAM")
        self.send_frame(f)

    def data(self, sid, payload, end_stream=False):
        f = DataFrame(sid, data=payload)
        if end_stream:
            f.flags.add("END_STREAM")
        self.send_frame(f)

    def response(self, sid, timeout=None, pre=()):
        """(status, headers dict, body, trailers dict) of stream sid; raises
        AssertionError on RST_STREAM, GOAWAY or EOF first. pre: frames of this
        response already read by the caller."""
        headers, body, trailers = None, b"", {}
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        pre = list(pre)
        while True:
            f = pre.pop(0) if pre else self.read_frame(max(0.01, deadline - time.monotonic()))
            assert f is not None, "EOF before the response to stream %d ended" % sid
            if isinstance(f, GoAwayFrame):
                raise AssertionError("GOAWAY %r before the response" % f.error_code)
            if f.stream_id != sid:
                continue
            if isinstance(f, RstStreamFrame):
                raise AssertionError("RST_STREAM %r on stream %d" % (f.error_code, sid))
            if isinstance(f, HeadersFrame):
                fields = f.fields
                if headers is None or fields.get(":status", "").startswith("1"):
                    headers = fields
                else:
                    trailers = fields
            elif isinstance(f, DataFrame):
                body += f.data
                if f.flow_controlled_length and not pre:
                    self.send_frame(WindowUpdateFrame(0, window_increment=f.flow_controlled_length))
                    if "END_STREAM" not in f.flags:
                        self.send_frame(WindowUpdateFrame(sid, window_increment=f.flow_controlled_length))
            if "END_STREAM" in f.flags:
                return int(headers[":status"]), headers, body, trailers

    def expect_goaway(self, timeout=None):
        f = self.wait_for(lambda f: isinstance(f, GoAwayFrame), timeout)
        assert f is not None, "connection closed without GOAWAY"
        return f

    def expect_rst(self, sid, timeout=None):
        f = self.wait_for(lambda f: isinstance(f, (RstStreamFrame, GoAwayFrame)) and
                          (isinstance(f, GoAwayFrame) or f.stream_id == sid), timeout)
        assert f is not None, "closed without RST_STREAM"
        assert isinstance(f, RstStreamFrame), "GOAWAY %r instead of RST_STREAM" % f.error_code
        return f

    def expect_closed(self, timeout=3):
        """True when the connection ends (a GOAWAY before it is fine)."""
        deadline = time.monotonic() + timeout
        try:
            while self.read_frame(max(0.01, deadline - time.monotonic())) is not None:
                pass
        except socket.timeout:
            return False
        return True

    def ping_ok(self):
        """The connection still works: a PING is answered."""
        self.send_frame(PingFrame(0, opaque_data=b"liveness"))
        f = self.wait_for(lambda f: isinstance(f, (PingFrame, GoAwayFrame)) and "ACK" in getattr(f, "flags", ()) or isinstance(f, GoAwayFrame))
        return isinstance(f, PingFrame) and f.opaque_data == b"liveness"


def connection_error(conn, code, timeout=None):
    """RFC 9113 §5.4.1: GOAWAY with `code`, then the connection closes."""
    f = conn.expect_goaway(timeout)
    assert f.error_code == code, "GOAWAY error %r, wanted %r" % (f.error_code, code)
    assert conn.expect_closed(3), "connection left open after GOAWAY"
    return f


def stream_error(conn, sid, code, timeout=None):
    """RFC 9113 §5.4.2: RST_STREAM with `code`, and the connection lives on."""
    f = conn.expect_rst(sid, timeout)
    assert f.error_code == code, "RST_STREAM error %r, wanted %r" % (f.error_code, code)
    assert conn.ping_ok(), "connection unusable after a stream error"
    return f
