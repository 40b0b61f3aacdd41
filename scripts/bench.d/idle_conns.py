#!/usr/bin/python3
"""Open N keep-alive connections to 127.0.0.1:PORT, have each serve one request
(GET /), then hold them idle while the bench reads the server's RSS.

usage: idle_conns.py --port P --proto h1|h2c|h2-tls --n N

Talks to the bench over stdin/stdout:
  prints "ready opened=K failed=F" once every connection got its response (or failed);
  on a line "check" prints "open=K closed=C" (C: closed by the server since);
  on EOF closes every connection with an RST (SO_LINGER 0) and exits, so no
  TIME_WAIT sockets pile up on the client side between rounds.

h2c is spoken by hand (preface, SETTINGS, one HEADERS frame with a fixed HPACK
block), which keeps 10,000 connections cheap for the client and needs no library.
h2-tls is the same exchange inside TLS (ALPN h2, certificate not verified: the
bench's own self-signed one).
"""
import argparse
import asyncio
import resource
import socket
import ssl
import struct
import sys

CONNECT_CONCURRENCY = 200   # connects in flight: stays well under listen backlogs
TIMEOUT = 20                # per connection
OVERALL = 120               # for all of them: a deaf server must not stall the bench


def h2_frame(ftype, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", stream) + payload


def h2c_request(port):
    authority = f"127.0.0.1:{port}".encode()
    # HPACK: :method GET, :scheme http, :path / from the static table (0x82 0x86 0x84),
    # :authority as a literal *without indexing*, name index 1 (0x01), no Huffman.
    # Without indexing, so the server keeps no HPACK dynamic table for an idle
    # connection: this is what gives the anchors' published figures (nginx ~1.5,
    # h2o ~2.5 KiB). A client that indexes :authority, as nghttp2 and browsers do,
    # makes nginx allocate its 4 KiB table: ~6.0 KiB per connection, h2o ~3.0.
    block = b"\x82\x86\x84\x01" + bytes([len(authority)]) + authority
    return (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + h2_frame(4, 0, 0)
            + h2_frame(1, 0x5, 1, block))   # HEADERS, END_STREAM|END_HEADERS, stream 1


async def read_h2_frame(reader):
    head = await reader.readexactly(9)
    length = int.from_bytes(head[:3], "big")
    payload = await reader.readexactly(length) if length else b""
    return head[3], head[4], int.from_bytes(head[5:9], "big") & 0x7FFFFFFF, payload


async def h2c_exchange(reader, writer, port):
    writer.write(h2c_request(port))
    while True:
        ftype, flags, stream, payload = await read_h2_frame(reader)
        if ftype == 4 and not flags & 1:        # server SETTINGS: acknowledge it
            writer.write(h2_frame(4, 1, 0))
        elif ftype == 7:                        # GOAWAY
            raise ConnectionError("GOAWAY before the response")
        elif ftype == 3 and stream == 1:        # RST_STREAM
            raise ConnectionError("stream reset")
        elif ftype in (0, 1) and stream == 1 and flags & 1:
            return                              # END_STREAM on our response


async def h1_exchange(reader, writer, port):
    writer.write(f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
    if not head.startswith("http/1.1 200"):
        raise ConnectionError(head.split("\r\n")[0])
    for line in head.split("\r\n"):
        if line.startswith("content-length:"):
            await reader.readexactly(int(line.split(":")[1]))
            return
    if "transfer-encoding: chunked" in head:
        await reader.readuntil(b"0\r\n\r\n")
        return
    raise ConnectionError("response without length would not keep the connection")


class Conn:
    def __init__(self):
        self.writer = None
        self.ok = False                 # served its one request
        self.closed_by_server = False


def tls_context():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    return ctx


async def open_one(conn, port, proto, gate, deadline, ctx):
    loop = asyncio.get_running_loop()
    async with gate:
        def budget():
            left = min(TIMEOUT, deadline - loop.time())
            if left <= 0:
                raise TimeoutError("overall deadline passed")
            return left
        reader, conn.writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, ssl=ctx), budget())
        if ctx and conn.writer.get_extra_info("ssl_object").selected_alpn_protocol() != "h2":
            raise ConnectionError("ALPN did not select h2")
        exchange = h1_exchange if proto == "h1" else h2c_exchange
        await asyncio.wait_for(exchange(reader, conn.writer, port), budget())
    conn.ok = True
    return reader


async def watch(conn, reader):
    # Idle: the server should send nothing more; EOF means it closed us.
    try:
        while await reader.read(4096):
            pass
    except (ConnectionError, OSError):
        pass
    conn.closed_by_server = True


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--proto", choices=("h1", "h2c", "h2-tls"), required=True)
    ap.add_argument("--n", type=int, required=True)
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    conns = [Conn() for _ in range(args.n)]
    deadline = asyncio.get_running_loop().time() + OVERALL
    ctx = tls_context() if args.proto == "h2-tls" else None
    results = await asyncio.gather(*(open_one(c, args.port, args.proto, gate, deadline, ctx)
                                     for c in conns),
                                   return_exceptions=True)
    failed = [r for r in results if isinstance(r, BaseException)]
    if failed:
        print(f"idle_conns: {len(failed)} failed, first: {failed[0]!r}", file=sys.stderr)
    watchers = [asyncio.ensure_future(watch(c, r))
                for c, r in zip(conns, results) if not isinstance(r, BaseException)]
    print(f"ready opened={len(watchers)} failed={len(failed)}", flush=True)

    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        if line.strip() == "check":
            closed = sum(c.closed_by_server for c in conns if c.ok)
            print(f"open={len(watchers) - closed} closed={closed}", flush=True)

    for c in conns:
        if c.writer:
            sock = c.writer.get_extra_info("socket")
            try:
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
            c.writer.transport.abort()
    for w in watchers:
        w.cancel()


if __name__ == "__main__":
    asyncio.run(main())
