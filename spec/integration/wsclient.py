"""A raw WebSocket client for the RFC 6455 / 7692 tests: exact frames out,
frames in, nothing hidden (masking is optional, RSV bits and opcodes free)."""

import base64
import hashlib
import os
import socket
import struct
import zlib

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

