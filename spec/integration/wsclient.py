"""A raw WebSocket client for the RFC 6455 / 7692 tests: exact frames out,
frames in, nothing hidden (masking is optional, RSV bits and opcodes free)."""

import base64
import hashlib
import os
import socket
import struct
import zlib

import h2.config
import h2.connection
import h2.events
import h2.settings

from conftest import SocketClient

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def accept_for(key):
    return base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()


def frame(opcode, payload=b"", fin=True, mask=True, rsv=0, length=None):
    """One frame; rsv is the 3 RSV bits (4 = RSV1)."""
    if isinstance(payload, str):
        payload = payload.encode()
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    n = len(payload) if length is None else length
    head = bytes([b0])
    mbit = 0x80 if mask else 0
    if n < 126:
        head += bytes([mbit | n])
    elif n < 65536:
        head += bytes([mbit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([mbit | 127]) + struct.pack("!Q", n)
    if mask:
        key = os.urandom(4)
        head += key
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return head + payload


def close_payload(code, reason=b""):
    return struct.pack("!H", code) + reason


class WS(SocketClient):
    def __init__(self, port, path="/echo", headers=(), extensions=None, protocols=None, timeout=5):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""
        self.key = base64.b64encode(os.urandom(16)).decode()
        lines = ["GET %s HTTP/1.1" % path, "Host: 127.0.0.1:%d" % port, "Upgrade: websocket",
                 "Connection: Upgrade", "Sec-WebSocket-Key: " + self.key, "Sec-WebSocket-Version: 13"]
        if extensions:
            lines.append("Sec-WebSocket-Extensions: " + extensions)
        if protocols:
            lines.append("Sec-WebSocket-Protocol: " + protocols)
        lines += list(headers)
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = self._read_until(b"\r\n\r\n").decode("latin-1")
        status_line, *hl = head.split("\r\n")
        self.status = int(status_line.split()[1])
        self.headers = {}
        for l in hl:
            if ":" in l:
                k, v = l.split(":", 1)
                self.headers[k.strip().lower()] = v.strip()
        self.inflater = zlib.decompressobj(-15)

    def _read_until(self, delim):
        while delim not in self.buf:
            d = self.sock.recv(65536)
            if not d:
                raise EOFError("closed before %r" % delim)
            self.buf += d
        i = self.buf.index(delim) + len(delim)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def _read(self, n):
        while len(self.buf) < n:
            d = self.sock.recv(65536)
            if not d:
                raise EOFError("closed with %d of %d bytes" % (len(self.buf), n))
            self.buf += d
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def send(self, data):
        self.sock.sendall(data)

    def send_lenient(self, data):
        try:
            self.sock.sendall(data)
        except OSError:
            pass

    def read_frame(self):
        """(fin, rsv, opcode, payload); payload raw (not inflated)."""
        b0, b1 = self._read(2)
        n = b1 & 0x7F
        assert not (b1 & 0x80), "server frames must not be masked"
        if n == 126:
            n = struct.unpack("!H", self._read(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", self._read(8))[0]
        return bool(b0 & 0x80), (b0 >> 4) & 7, b0 & 0xF, self._read(n)

    def read_message(self):
        """Next data message, answering nothing; control frames are returned as they come."""
        fin, rsv, op, data = self.read_frame()
        if op >= 8:
            return op, data
        parts, compressed = [data], bool(rsv & 4)
        while not fin:
            fin, _, _, more = self.read_frame()
            parts.append(more)
        data = b"".join(parts)
        if compressed:
            data = self.inflater.decompress(data + b"\x00\x00\xff\xff")
        return op, data

    def read_close(self):
        """Skips data frames until a close frame: (code or None, reason)."""
        while True:
            fin, rsv, op, data = self.read_frame()
            if op == 8:
                if len(data) >= 2:
                    return struct.unpack("!H", data[:2])[0], data[2:]
                return None, b""

    def closed_by_server(self, timeout=3):
        """True when the server closes the TCP connection."""
        self.sock.settimeout(timeout)
        try:
            while True:
                d = self.sock.recv(65536)
                if not d:
                    return True
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False


class H2WS:
    """one h2c connection, one RFC 8441 extended CONNECT stream (python h2;
    the WebSocket frames are raw, made with frame())"""

    def __init__(self, port, path="/echo", headers=(), sid=1):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.conn.initiate_connection()
        self.sock.sendall(self.conn.data_to_send())
        self.remote_settings = {}
        self.data = b""
        self.ended = False
        self.reset = None
        self.status = None
        self.headers = {}
        self.sid = sid
        while h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL not in self.remote_settings:
            self._pump()
        self.conn.send_headers(sid, [(":method", "CONNECT"), (":protocol", "websocket"), (":scheme", "http"),
                                     (":path", path), (":authority", "127.0.0.1:%d" % port),
                                     ("sec-websocket-version", "13")] + list(headers))
        self.sock.sendall(self.conn.data_to_send())
        while self.status is None and self.reset is None:
            self._pump()

    def _pump(self):
        d = self.sock.recv(65536)
        if not d:
            raise EOFError("connection closed")
        for ev in self.conn.receive_data(d):
            if isinstance(ev, h2.events.RemoteSettingsChanged):
                for k, v in ev.changed_settings.items():
                    self.remote_settings[k] = v.new_value
            elif getattr(ev, "stream_id", self.sid) != self.sid:
                continue  # an earlier stream of this connection
            elif isinstance(ev, h2.events.ResponseReceived):
                self.headers = dict(ev.headers)
                self.status = int(self.headers[":status"])
            elif isinstance(ev, h2.events.DataReceived):
                self.data += ev.data
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                self.ended = True
            elif isinstance(ev, h2.events.StreamReset):
                self.reset = ev.error_code
        out = self.conn.data_to_send()
        if out:
            self.sock.sendall(out)

    def send(self, data):
        while data:
            room = min(self.conn.local_flow_control_window(self.sid), self.conn.max_outbound_frame_size)
            if room == 0:
                self._pump()  # wait for WINDOW_UPDATE
                continue
            self.conn.send_data(self.sid, data[:room])
            data = data[room:]
            self.sock.sendall(self.conn.data_to_send())

    def rst(self, code=8):
        """RST_STREAM (CANCEL by default): the client leaves this WebSocket"""
        self.conn.reset_stream(self.sid, code)
        self.sock.sendall(self.conn.data_to_send())

    def end(self):
        self.conn.end_stream(self.sid)
        self.sock.sendall(self.conn.data_to_send())

    def _take(self, n):
        while len(self.data) < n:
            if self.ended or self.reset is not None:
                raise EOFError("stream ended with %d of %d bytes" % (len(self.data), n))
            self._pump()
        out, self.data = self.data[:n], self.data[n:]
        return out

    _read = _take
    read_frame = WS.read_frame  # the same frames, their bytes from the stream's DATA

    def read_close(self):
        while True:
            fin, rsv, op, data = self.read_frame()
            if op == 8:  # close
                return struct.unpack("!H", data[:2])[0] if len(data) >= 2 else None

    def wait_end(self):
        while not self.ended and self.reset is None:
            self._pump()
        return True

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()
