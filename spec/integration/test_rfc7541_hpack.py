"""RFC 7541 (HPACK) as the server's decoder sees it, with hand-made header
blocks: indexing, Huffman, the dynamic table across requests, and the
decoding errors that must end the connection with COMPRESSION_ERROR."""

import pytest
from hyperframe.frame import HeadersFrame

from conftest import module_server
from h2raw import COMPRESSION_ERROR, H2Raw, connection_error

server = module_server("h2.lua")


@pytest.fixture
def conn(server):
    with H2Raw(server.port) as c:
        c.handshake()
        yield c


def raw_headers(conn, sid, block):
    conn.send_frame(HeadersFrame(sid, data=block, flags=["END_HEADERS", "END_STREAM"]))


# static table (Appendix A): 2 = :method GET, 6 = :scheme http, 4 = :path /
STATIC_GET_ROOT = b"\x82\x86\x84"


def test_2_3_1_static_table_indexed_fields(conn):
    """§6.1: "An indexed header field representation identifies an entry in
    either the static table or the dynamic table." """
    raw_headers(conn, 1, STATIC_GET_ROOT + b"\x41\x09127.0.0.1")  # :authority, incremental indexing
    assert conn.response(1)[2] == b"Hello world!"


def test_2_3_2_dynamic_table_entries_serve_later_requests(conn):
    """§2.3.2: entries added with incremental indexing are referenced by later
    header blocks of the same connection (index 62 = newest)."""
    raw_headers(conn, 1, STATIC_GET_ROOT + b"\x41\x09127.0.0.1")
    assert conn.response(1)[0] == 200
    raw_headers(conn, 3, STATIC_GET_ROOT + b"\xbe")  # 0x80 | 62
    assert conn.response(3)[2] == b"Hello world!"


def test_5_2_huffman_encoded_strings(conn):
    """§5.2: string literals may be Huffman-encoded (H bit set)."""
    # :authority "www.example.com" Huffman-coded, from RFC 7541 C.4.1
    raw_headers(conn, 1, STATIC_GET_ROOT + b"\x41\x8c\xf1\xe3\xc2\xe5\xf2\x3a\x6b\xa0\xab\x90\xf4\xff")
    assert conn.response(1)[0] == 200


def test_2_3_3_index_beyond_the_tables_is_compression_error(conn):
    """§2.3.3: "Indices strictly greater than the sum of the lengths of both
    tables MUST be treated as a decoding error" and RFC 9113 §4.3: "A decoding
    error in a field block MUST be treated as a connection error of type
    COMPRESSION_ERROR." """
    raw_headers(conn, 1, STATIC_GET_ROOT + b"\xff\x10")  # index 127 + 16, tables are empty past 61
    connection_error(conn, COMPRESSION_ERROR)


def test_6_3_table_size_update_above_the_limit_is_compression_error(conn):
    """§6.3: "The new maximum size MUST be lower than or equal to the limit
    determined by the protocol using HPACK. A value that exceeds this limit
    MUST be treated as a decoding error." (limit: 4096 by default)"""
    raw_headers(conn, 1, b"\x3f\xe1\x7f" + STATIC_GET_ROOT)  # size update to 16384
    connection_error(conn, COMPRESSION_ERROR)


def test_4_2_table_size_update_after_a_field_is_compression_error(conn):
    """§4.2: "This dynamic table size update MUST occur at the beginning of the
    first header block following the change to the dynamic table size." An
    update after a field line is a decoding error."""
    raw_headers(conn, 1, STATIC_GET_ROOT + b"\x20")
    connection_error(conn, COMPRESSION_ERROR)


def test_5_2_bad_huffman_padding_is_compression_error(conn):
    """§5.2: "A padding not corresponding to the most significant bits of the
    code for the EOS symbol MUST be treated as a decoding error." """
    raw_headers(conn, 1, STATIC_GET_ROOT + b"\x41\x81\x00")  # one byte of zeros: bad padding
    connection_error(conn, COMPRESSION_ERROR)
