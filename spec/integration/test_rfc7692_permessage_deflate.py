"""RFC 7692: permessage-deflate — negotiation, compressed frames both ways,
context takeover, and bounded inflation. Raw frames, plus python websockets
with and without compression."""

import asyncio
import struct
import zlib

import pytest
import websockets

from conftest import module_server
from wsclient import WS, close_payload, frame

server = module_server("ws.lua", "--workers", "1")

TEXT, BINARY, CONT, PING = 1, 2, 0, 9


def deflate(data, wbits=15):
    c = zlib.compressobj(wbits=-wbits)
    out = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


def expect_close(ws, code):
    assert ws.read_close()[0] == code
    assert ws.closed_by_server()


def test_7_offer_accepted_and_both_directions_compressed(server):
    """§7.1: the server answers with the parameters it accepted; §7.2.3: a
    compressed message has RSV1 set on its first frame"""
    with WS(server.port, extensions="permessage-deflate; client_max_window_bits") as ws:
        assert ws.status == 101
        assert ws.headers["sec-websocket-extensions"] == "permessage-deflate"
        msg = b"hello hello hello hello " * 20
        ws.send(frame(TEXT, deflate(msg), rsv=4))
        fin, rsv, op, data = ws.read_frame()
        assert (fin, rsv, op) == (True, 4, TEXT)
        assert len(data) < len(msg)
        assert ws.inflater.decompress(data + b"\x00\x00\xff\xff") == msg
        # a small message is sent as it is
        ws.send(frame(TEXT, b"hi"))
        assert ws.read_frame() == (True, 0, TEXT, b"hi")
        # the client may send uncompressed messages too
        ws.send(frame(BINARY, msg))
        fin, rsv, op, data = ws.read_frame()
        assert rsv == 4 and ws.inflater.decompress(data + b"\x00\x00\xff\xff") == msg


def test_7_2_3_context_takeover_across_messages(server):
    """the client keeps its LZ77 window between messages: later messages refer
    to earlier ones"""
    with WS(server.port, extensions="permessage-deflate") as ws:
        c = zlib.compressobj(wbits=-15)
        for i in range(3):
            msg = b"the same sentence, again and again %d" % i
            data = c.compress(msg) + c.flush(zlib.Z_SYNC_FLUSH)
            ws.send(frame(TEXT, data[:-4], rsv=4))
            assert ws.read_message() == (TEXT, msg)


def test_7_2_3_compressed_message_in_fragments(server):
    """§6.1: RSV1 on the first frame only; the compressed payload continues in
    continuation frames"""
    with WS(server.port, extensions="permessage-deflate") as ws:
        msg = bytes(range(256)) * 40
        data = deflate(msg)
        a, b = data[: len(data) // 2], data[len(data) // 2:]
        ws.send(frame(BINARY, a, fin=False, rsv=4) + frame(PING, b"mid") + frame(CONT, b))
        assert ws.read_frame()[2:] == (10, b"mid")
        assert ws.read_message() == (BINARY, msg)


def test_6_1_rsv1_on_a_continuation_frame_is_1002(server):
    """"the RSV1 bit is set only on the first frame" """
    with WS(server.port, extensions="permessage-deflate") as ws:
        ws.send(frame(TEXT, deflate(b"abc"), fin=False, rsv=4) + frame(CONT, b"", rsv=4))
        expect_close(ws, 1002)


def test_6_rsv1_on_a_control_frame_is_1002(server):
    with WS(server.port, extensions="permessage-deflate") as ws:
        ws.send(frame(PING, b"x", rsv=4))
        expect_close(ws, 1002)


def test_6_rsv1_without_negotiation_is_1002(server):
    with WS(server.port) as ws:
        assert "sec-websocket-extensions" not in ws.headers
        ws.send(frame(TEXT, deflate(b"abc"), rsv=4))
        expect_close(ws, 1002)


def test_7_1_2_1_server_max_window_bits(server):
    """"A server accepts an extension negotiation offer with this parameter by
    including the "server_max_window_bits" extension parameter in the
    extension negotiation response ... with the same or smaller value" """
    with WS(server.port, extensions="permessage-deflate; server_max_window_bits=10") as ws:
        assert ws.headers["sec-websocket-extensions"] == "permessage-deflate; server_max_window_bits=10"
        ws.inflater = zlib.decompressobj(-10)
        msg = bytes(range(256)) * 16
        ws.send(frame(BINARY, msg))
        assert ws.read_message() == (BINARY, msg)


def test_7_1_1_server_no_context_takeover(server):
    """each server message then decompresses on its own"""
    with WS(server.port, "/nctx", extensions="permessage-deflate; server_no_context_takeover") as ws:
        assert "server_no_context_takeover" in ws.headers["sec-websocket-extensions"]
        for _ in range(3):
            msg = b"repeat me, repeat me"
            ws.send(frame(TEXT, msg))
            fin, rsv, op, data = ws.read_frame()
            assert rsv == 4
            assert zlib.decompressobj(-15).decompress(data + b"\x00\x00\xff\xff") == msg


@pytest.mark.parametrize("offer", [
    "permessage-deflate; unknown_param",
    "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
    "permessage-deflate; client_max_window_bits=16",
    "permessage-deflate; server_max_window_bits=7",
    "permessage-deflate; server_max_window_bits",
    "permessage-deflate; server_no_context_takeover=1",
    "x-webkit-deflate-frame",
])
def test_7_bad_offers_are_declined(server, offer):
    """§7.1: an offer with an unknown or invalid parameter is declined — the
    connection goes on without the extension"""
    with WS(server.port, extensions=offer) as ws:
        assert ws.status == 101
        assert "sec-websocket-extensions" not in ws.headers
        ws.send(frame(TEXT, b"x" * 200))
        assert ws.read_frame() == (True, 0, TEXT, b"x" * 200)


def test_5_1_first_acceptable_offer_wins(server):
    """the client lists offers by preference; an 8-bit window zlib can't make is skipped"""
    with WS(server.port, extensions="permessage-deflate; server_max_window_bits=8, "
                                    "permessage-deflate; client_max_window_bits") as ws:
        assert ws.headers["sec-websocket-extensions"] == "permessage-deflate"


def test_route_without_compression_declines(server):
    with WS(server.port, "/plain", extensions="permessage-deflate") as ws:
        assert "sec-websocket-extensions" not in ws.headers


def test_8_2_zip_bomb_is_1009(server):
    """a small compressed frame that inflates past max_message (1024 here)"""
    bomb = deflate(b"\x00" * (1 << 20))
    assert len(bomb) < 2000
    with WS(server.port, "/small", extensions="permessage-deflate") as ws:
        ws.send(frame(BINARY, bomb, rsv=4))
        expect_close(ws, 1009)


def test_8_1_invalid_utf8_after_inflating_is_1007(server):
    with WS(server.port, extensions="permessage-deflate") as ws:
        ws.send(frame(TEXT, deflate(b"valid then \xed\xa0\x80"), rsv=4))
        expect_close(ws, 1007)


def test_corrupt_compressed_data_fails_the_connection(server):
    with WS(server.port, extensions="permessage-deflate") as ws:
        ws.send(frame(BINARY, b"\xff\xff\xff\xff\xff", rsv=4))
        code, _ = ws.read_close()
        assert code in (1002, 1007)


@pytest.mark.parametrize("compression", ["deflate", None])
def test_python_websockets_client(server, compression):
    async def run():
        uri = "ws://127.0.0.1:%d/echo" % server.port
        async with websockets.connect(uri, compression=compression, max_size=None) as ws:
            if compression:
                assert "permessage-deflate" in ws.response_headers["sec-websocket-extensions"]
            else:
                assert "sec-websocket-extensions" not in ws.response_headers
            for msg in ["short", "é" * 5000, "x" * 300000]:
                await ws.send(msg)
                assert await ws.recv() == msg
            await ws.send(b"\x00\x01\x02" * 1000)
            assert await ws.recv() == b"\x00\x01\x02" * 1000
            pong = await ws.ping(b"tick")
            await asyncio.wait_for(pong, 5)
            await ws.close(code=4000, reason="bye")
            assert ws.close_code == 4000
    asyncio.run(run())
