"""lariat.static and req:sendfile: the body leaves by sendfile(2) on plain
HTTP/1.1 and by reads on libuv's thread pool over TLS and HTTP/2; files come
from a per-worker open-file cache.

RFC 9110 §14.2: "A server MAY ignore the Range header field." / §14.4: "A
server generating a 206 (Partial Content) response to a request with a single
range MUST generate a Content-Range header field"; §15.5.17 416 carries
"Content-Range: bytes */<length>"; §13.1.5: "If the validator given in the
If-Range header field matches the current validator for the selected
representation of the target resource, then the server SHOULD process the
Range header field as requested. If the validator does not match, the server
MUST ignore the Range header field."
"""

import hashlib
import os
import socket
import subprocess
import time

import pytest

from conftest import SLOW, Closed, request, wait_for
from h2raw import H2Raw

BIG = 3 * 1024 * 1024 + 12345  # above the 1 MiB read-at-once bound: streamed over TLS/h2
MID = 100 * 1000
HUGE = 96 * 1024 * 1024  # for hang-ups and slow readers: far more than any socket buffer

ASAN = os.environ.get("LARIAT_SANITIZE") in ("1", "ON", "TRUE", "true", "on")

APP = """
local lariat = require "lariat"
local app = lariat.app()
app:get("/s/*", lariat.static(%(dir)r, { open_file_cache_valid = 0.2 }))
local wrapped = lariat.static(%(dir)r, { open_file_cache_valid = 0.2, cache_control = "max-age=60" })
app:all("/h/*", function(req)
  req:set_header("x-extra", "set before")
  return wrapped(req)
end)
app:get("/part", function(req)
  return req:sendfile(%(dir)r .. "/mid.bin", { offset = 10, length = 20,
    headers = { ["content-type"] = "application/x-part", ["x-part"] = "yes" } })
end)
app:get("/missing", function(req)
  local ok, err = req:sendfile(%(dir)r .. "/nope")
  return 404, {}, tostring(ok) .. " " .. err
end)
app:get("/outside", function(req)
  local ok, err = req:sendfile(%(dir)r .. "/mid.bin", { offset = 1, length = %(mid)d })
  return 416, {}, tostring(ok) .. " " .. err
end)
return app
"""


def sha(b):
    return hashlib.sha256(b).hexdigest()


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    d = tmp_path_factory.mktemp("static")
    pub = d / "pub"
    pub.mkdir()
    (pub / "big.bin").write_bytes(os.urandom(BIG))
    (pub / "mid.bin").write_bytes(os.urandom(MID))
    (pub / "empty.txt").write_bytes(b"")
    (pub / "a.txt").write_bytes(b"0123456789abcdefghij")
    with open(pub / "huge.bin", "wb") as f:
        f.truncate(HUGE)  # sparse: page cache, no disk
    (d / "secret.txt").write_bytes(b"secret")
    os.symlink(d / "secret.txt", pub / "link.txt")
    app = d / "app.lua"
    app.write_text(APP % {"dir": str(pub), "mid": MID})
    return d


@pytest.fixture
def srv(start_server, tree):
    return start_server(str(tree / "app.lua"), "-w", "1", tls=True)


def curl(srv, path, *args, proto="h1"):
    port, scheme = srv.port, "http"
    extra = []
    if proto in ("h1tls", "h2tls"):
        port, scheme = srv.tls_port, "https"
        extra = ["-k", "--http1.1" if proto == "h1tls" else "--http2"]
    elif proto == "h2c":
        extra = ["--http2-prior-knowledge"]
    else:
        extra = ["--http1.1"]
    r = subprocess.run(["curl", "-s", "-S", "--max-time", str(30 * SLOW), "-D", "/dev/stderr", *extra, *args,
                        "%s://127.0.0.1:%d%s" % (scheme, port, path)], capture_output=True, check=True)
    head = r.stderr.decode("latin-1").split("\r\n\r\n")[-2].split("\r\n")
    status = int(head[0].split()[1])
    hdrs = {}
    for line in head[1:]:
        k, _, v = line.partition(":")
        hdrs[k.strip().lower()] = v.strip()
    return status, hdrs, r.stdout


PROTOS = ["h1", "h1tls", "h2c", "h2tls"]


@pytest.mark.parametrize("proto", PROTOS)
def test_content_arrives_intact_over_every_protocol(srv, tree, proto):
    pub = tree / "pub"
    for name in ("big.bin", "mid.bin", "empty.txt", "a.txt"):
        want = (pub / name).read_bytes()
        status, h, body = curl(srv, "/s/" + name, proto=proto)
        assert status == 200, (name, h)
        assert sha(body) == sha(want), name
        if name != "big.bin" or proto == "h1":
            # a body up to 1 MiB goes with its length on every protocol (read
            # at once); plain HTTP/1.1 sends every file with it (sendfile)
            assert h.get("content-length") == str(len(want)), (name, h)
    # a range of the big file: read from the middle (by offset, not from the start)
    status, h, body = curl(srv, "/s/big.bin", "-r", "1000000-2999999", proto=proto)
    assert status == 206
    assert h["content-range"] == "bytes 1000000-2999999/%d" % BIG
    assert body == (pub / "big.bin").read_bytes()[1000000:3000000]


def test_head_carries_the_length_and_no_body(srv):
    r = raw_get(srv, "/s/big.bin", method="HEAD")
    assert r.status == 200 and r.body == b"" and r.header("content-length") == str(BIG)
    with H2Raw(srv.tls_port, tls=True) as c:
        c.handshake()
        c.request(1, "/s/big.bin", method="HEAD", scheme="https")
        status, h, body, _ = c.response(1)
        assert status == 200 and body == b"" and h["content-length"] == str(BIG)


def raw_get(srv, path, *headers, method="GET"):
    with srv.connect() as c:
        c.send(request(method, path, headers=list(headers) + [("connection", "close")]))
        return c.read_response(method)


def test_range_edge_cases(srv, tree):
    data = (tree / "pub" / "a.txt").read_bytes()
    n = len(data)
    cases = [
        ("bytes=0-0", 206, data[0:1], "bytes 0-0/%d" % n),
        ("bytes=-5", 206, data[-5:], "bytes %d-%d/%d" % (n - 5, n - 1, n)),
        ("bytes=-100", 206, data, "bytes 0-%d/%d" % (n - 1, n)),
        ("bytes=5-", 206, data[5:], "bytes 5-%d/%d" % (n - 1, n)),
        ("bytes=5-1000", 206, data[5:], "bytes 5-%d/%d" % (n - 1, n)),
        ("bytes=%d-" % (n - 1), 206, data[-1:], "bytes %d-%d/%d" % (n - 1, n - 1, n)),
        ("bytes=%d-" % n, 416, None, "bytes */%d" % n),
        ("bytes=-0", 416, None, "bytes */%d" % n),
        ("bytes=5-2", 200, data, None),       # invalid: ignored
        ("bytes=0-1,4-5", 200, data, None),   # several ranges: the whole file
        ("items=0-1", 200, data, None),       # another unit: ignored
    ]
    for value, status, body, crange in cases:
        r = raw_get(srv, "/s/a.txt", ("range", value))
        assert r.status == status, value
        assert r.header("content-range") == crange, value
        if body is not None:
            assert r.body == body, value
            assert r.header("content-length") == str(len(body))
    # a 0-byte file has no satisfiable range
    r = raw_get(srv, "/s/empty.txt", ("range", "bytes=0-"))
    assert r.status == 416 and r.header("content-range") == "bytes */0"
    # If-Range: the range applies only when the validator matches
    etag = raw_get(srv, "/s/a.txt").header("etag")
    lm = raw_get(srv, "/s/a.txt").header("last-modified")
    assert raw_get(srv, "/s/a.txt", ("range", "bytes=1-2"), ("if-range", etag)).body == data[1:3]
    assert raw_get(srv, "/s/a.txt", ("range", "bytes=1-2"), ("if-range", lm)).status == 206
    r = raw_get(srv, "/s/a.txt", ("range", "bytes=1-2"), ("if-range", '"other"'))
    assert r.status == 200 and r.body == data
    # validators still answer 304
    assert raw_get(srv, "/s/a.txt", ("if-none-match", etag)).status == 304
    assert raw_get(srv, "/s/a.txt", ("if-modified-since", lm)).status == 304


def test_req_sendfile_from_a_handler(srv, tree):
    mid = (tree / "pub" / "mid.bin").read_bytes()
    for proto in PROTOS:
        status, h, body = curl(srv, "/part", proto=proto)
        assert status == 200 and body == mid[10:30], proto
        assert h["content-type"] == "application/x-part" and h["x-part"] == "yes"
    r = raw_get(srv, "/missing")
    assert r.status == 404 and r.body == b"nil not found"
    r = raw_get(srv, "/outside")
    assert r.status == 416 and r.body == b"nil range outside the file"


def test_path_escapes_are_still_refused(srv):
    for path in ("/s/../app.lua", "/s/%2e%2e/app.lua", "/s/%2E%2E%2Fapp.lua", "/s/link.txt",
                 "/s/..%2fsecret.txt", "/s/a.txt%00.bin", "/s/.hidden"):
        r = raw_get(srv, path)
        assert r.status in (400, 404), path
        assert b"secret" not in r.body and b"lariat" not in r.body, path


def huge_fds(srv, tree):
    return [f for f in srv.open_files(str(tree)) if "huge.bin" in f]


def replace(path, data=None):
    """a new file (new inode) renamed over path, as deploy tools do"""
    tmp = str(path) + ".new"
    with open(tmp, "wb") as f:
        if data is None:
            f.truncate(HUGE)
        else:
            f.write(data)
    os.rename(tmp, path)


@pytest.mark.parametrize("proto", ["h1", "h2tls"])
def test_a_client_hanging_up_mid_download_releases_the_file(srv, tree, proto):
    """The queued file body holds the file open; a client that leaves takes
    it away. The file is then replaced: once the cache has let go of the old
    one (validity 0.2 s), no descriptor may still point to it."""
    huge = tree / "pub" / "huge.bin"
    assert curl(srv, "/s/a.txt", proto=proto)[0] == 200
    base = len(os.listdir("/proc/%d/fd" % srv.pid))
    for attempt in range(2):  # the second time too
        if proto == "h1":
            s = socket.create_connection(("127.0.0.1", srv.port))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.sendall(b"GET /s/huge.bin HTTP/1.1\r\nhost: x\r\n\r\n")
            assert s.recv(4096).startswith(b"HTTP/1.1 200")
        else:
            p = subprocess.Popen(["curl", "-s", "-k", "--http2", "--limit-rate", "100K", "-o", "/dev/null",
                                  "https://127.0.0.1:%d/s/huge.bin" % srv.tls_port])
        wait_for(lambda: huge_fds(srv, tree), 10, "the download to open the file")
        time.sleep(0.2)  # mid-download
        if proto == "h1":
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")  # RST
            s.close()
        else:
            p.kill()
            p.wait()
        replace(huge)
        # the next request finds the file changed and drops the old one
        wait_for(lambda: curl(srv, "/s/huge.bin", "-r", "0-9", proto=proto)[2] == b"\0" * 10 and
                 not [f for f in huge_fds(srv, tree) if "(deleted)" in f], 10,
                 "the replaced file to be closed (attempt %d)" % attempt)
        wait_for(lambda: len(os.listdir("/proc/%d/fd" % srv.pid)) <= base + 1, 10, "descriptors back")


@pytest.mark.parametrize("proto", ["h1", "h1tls"])
def test_a_slow_reader_costs_no_memory(srv, tree, proto):
    """Only the socket's buffers and one output buffer's worth per
    connection: the file stays in the page cache."""
    if ASAN:
        pytest.skip("ASan's quarantine keeps freed memory: RSS says nothing")
    assert curl(srv, "/s/a.txt", proto=proto)[0] == 200
    rss0 = srv.rss_kib()
    procs = [subprocess.Popen(["curl", "-s", "-k", "--http1.1", "--limit-rate", "2M", "-o", "/dev/null",
                               "%s://127.0.0.1:%d/s/huge.bin" % (("https", srv.tls_port) if proto == "h1tls"
                                                                 else ("http", srv.port))])
             for _ in range(4)]
    try:
        peak = rss0
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            peak = max(peak, srv.rss_kib())
            time.sleep(0.05)
        assert all(p.poll() is None for p in procs)  # still downloading
        assert peak - rss0 < 8 * 1024, (rss0, peak)
    finally:
        for p in procs:
            p.kill()
            p.wait()


def body_or_cut(srv, path):
    try:
        return raw_get(srv, path).body
    except Closed:
        return None


def test_a_file_replaced_while_cached_is_served_new_after_the_validity(srv, tree):
    path = tree / "pub" / "c.txt"
    path.write_bytes(b"first")
    assert raw_get(srv, "/s/c.txt").body == b"first"
    replace(path, b"second version")  # a new inode
    wait_for(lambda: raw_get(srv, "/s/c.txt").body == b"second version", 5, "the new content")
    with open(path, "r+b") as f:  # rewritten in place: same inode, new size and mtime
        f.write(b"third")
        f.truncate(5)
    # until the cache looks again it promises the old length: a response
    # cut short (closed) is what nginx does too
    wait_for(lambda: body_or_cut(srv, "/s/c.txt") == b"third", 5, "the rewritten content")
    os.unlink(path)
    wait_for(lambda: raw_get(srv, "/s/c.txt").status == 404, 5, "404 once deleted")
    path.write_bytes(b"back")  # a cached miss is checked again too
    wait_for(lambda: raw_get(srv, "/s/c.txt").body == b"back", 5, "the file back")


def without_date(h):
    return {k: v for k, v in h.items() if k != "date"}


@pytest.mark.parametrize("proto", PROTOS)
def test_a_remembered_file_is_answered_as_the_first_time(srv, tree, proto):
    """The first plain GET of a path takes lariat.static's full path and is
    remembered; the ones after it come from the memo (one call into C). Same
    status, fields and body every time, and whatever the memo doesn't serve
    (HEAD aside: conditional, range, another method) still answers right."""
    mid = (tree / "pub" / "mid.bin").read_bytes()
    first = curl(srv, "/h/mid.bin", proto=proto)
    for _ in range(2):
        again = curl(srv, "/h/mid.bin", proto=proto)
        assert again[0] == 200 and sha(again[2]) == sha(mid)
        assert without_date(again[1]) == without_date(first[1]), proto
    h = first[1]
    assert h["x-extra"] == "set before" and h["cache-control"] == "max-age=60"
    assert h["content-length"] == str(MID) and h["accept-ranges"] == "bytes"
    status, hh, _ = curl(srv, "/h/mid.bin", "-I", proto=proto)  # (curl -I prints the head as the body)
    assert status == 200 and hh["content-length"] == str(MID) and hh["etag"] == h["etag"]
    assert curl(srv, "/h/mid.bin", "-H", "if-none-match: " + h["etag"], proto=proto)[0] == 304
    assert curl(srv, "/h/mid.bin", "-r", "5-9", proto=proto)[2] == mid[5:10]
    status, hh, _ = curl(srv, "/h/mid.bin", "-X", "POST", proto=proto)
    assert status == 405 and hh["allow"] == "GET, HEAD"
    # and the memo still answers after all of those
    again = curl(srv, "/h/mid.bin", proto=proto)
    assert without_date(again[1]) == without_date(first[1]) and sha(again[2]) == sha(mid)


def test_a_sibling_appearing_after_a_file_was_remembered_is_served(srv, tree):
    """The memo also remembers that no precompressed sibling exists: one that
    appears later is served once the validity (0.2 s) has passed, and its
    removal brings the plain file back."""
    import gzip
    pub = tree / "pub"
    (pub / "d.txt").write_bytes(b"plain text " * 50)
    ae = ("accept-encoding", "gzip")
    for _ in range(2):
        r = raw_get(srv, "/s/d.txt", ae)
        assert r.status == 200 and r.header("content-encoding") is None and r.header("vary") is None
    (pub / "d.txt.gz").write_bytes(gzip.compress(b"zipped text " * 50))
    try:
        wait_for(lambda: raw_get(srv, "/s/d.txt", ae).header("content-encoding") == "gzip", 5 * SLOW,
                 "the new .gz sibling to be served")
        r = raw_get(srv, "/s/d.txt", ae)
        assert gzip.decompress(r.body) == b"zipped text " * 50 and r.header("vary") == "accept-encoding"
    finally:
        os.unlink(pub / "d.txt.gz")
    wait_for(lambda: raw_get(srv, "/s/d.txt", ae).header("content-encoding") is None, 5 * SLOW,
             "the plain file once the sibling is gone")
    r = raw_get(srv, "/s/d.txt", ae)
    assert r.body == b"plain text " * 50 and r.header("vary") is None


def test_small_and_large_bodies_keep_their_order_in_a_pipeline(srv, tree):
    """A small file (up to 16 KiB) leaves with its head in one write, a larger
    one by sendfile behind it: pipelined requests mixing both, HEAD among
    them, come back whole and in order (RFC 9112 §9.3.2: "A server MAY
    process a sequence of pipelined requests in parallel if they all have
    safe methods, but it MUST send the corresponding responses in the same
    order that the requests were received")."""
    pub = tree / "pub"
    small, mid = (pub / "a.txt").read_bytes(), (pub / "mid.bin").read_bytes()
    order = [("GET", "/s/a.txt", small), ("GET", "/s/mid.bin", mid), ("HEAD", "/s/a.txt", b""),
             ("GET", "/s/a.txt", small), ("GET", "/s/empty.txt", b""), ("GET", "/s/mid.bin", mid)]
    for attempt in range(2):  # the first time by the full path, then from the memo
        with srv.connect() as c:
            c.send(b"".join(request(m, p) for m, p, _ in order))
            for m, p, want in order:
                r = c.read_response(m)
                assert r.status == 200, (attempt, m, p)
                assert r.body == want, (attempt, m, p)
                size = len(small) if p == "/s/a.txt" else len(want)
                assert r.header("content-length") == str(size), (attempt, m, p)


@pytest.mark.parametrize("proto", ["h1tls", "h2c"])
def test_a_file_out_of_the_page_cache_is_read_on_the_thread_pool(srv, tree, proto):
    """TLS and HTTP/2 read what the page cache holds on the loop (preadv2
    RWF_NOWAIT, which never waits for the disk) and the rest on libuv's
    thread pool: a file dropped from the cache arrives intact all the same,
    whole (up to 1 MiB) and streamed, the second time too."""
    pub = tree / "pub"
    for name, size in (("cold-small.bin", 200 * 1000), ("cold-big.bin", BIG)):
        data = os.urandom(size)
        (pub / name).write_bytes(data)
        for attempt in range(2):
            fd = os.open(pub / name, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # clean pages: dropped
            finally:
                os.close(fd)
            status, h, body = curl(srv, "/s/" + name, proto=proto)
            assert status == 200 and sha(body) == sha(data), (name, attempt)
