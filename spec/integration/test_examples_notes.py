"""examples/notes/app.lua: the REST notes API on SQLite (zero setup) and on
PostgreSQL (NOTES_DB=postgresql://…), with live updates over SSE."""

import json
import os
import shutil
import socket
import tempfile

import pytest

from conftest import REPO, LariatServer
from dataservers import SLOW, Postgres

APP = str(REPO / "examples" / "notes" / "app.lua")


def call(srv, method, path, body=None):
    import http.client
    c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10 * SLOW)
    c.request(method, path, body=json.dumps(body) if body is not None else None,
              headers={"content-type": "application/json"})
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, (json.loads(data) if data else None)


def exercise(srv):
    ev = socket.create_connection(("127.0.0.1", srv.port), timeout=5 * SLOW)
    ev.sendall(b"GET /events HTTP/1.1\r\nhost: x\r\n\r\n")
    buf = b""
    while b"changes follow" not in buf:
        buf += ev.recv(4096)
    status, note = call(srv, "POST", "/notes", {"title": "first", "body": "hello"})
    assert status == 201 and note["title"] == "first" and note["id"] >= 1, note
    nid = note["id"]
    assert call(srv, "POST", "/notes", {"title": " "})[0] == 422
    status, err = call(srv, "POST", "/notes", {"title": "x", "colour": "red"})
    assert status == 422 and "colour" in err["fields"]
    for i in range(3):
        assert call(srv, "POST", "/notes", {"title": "n%d" % i})[0] == 201
    status, page = call(srv, "GET", "/notes?limit=2&offset=1")
    assert status == 200 and page["total"] == 4 and [n["title"] for n in page["notes"]] == ["n0", "n1"], page
    assert call(srv, "GET", "/notes?limit=1000")[0] == 422
    status, note = call(srv, "PATCH", "/notes/%d" % nid, {"body": "edited"})
    assert status == 200 and note["body"] == "edited" and note["title"] == "first", note
    assert call(srv, "GET", "/notes/%d" % nid)[1]["body"] == "edited"
    assert call(srv, "DELETE", "/notes/%d" % nid)[0] == 204
    status, err = call(srv, "GET", "/notes/%d" % nid)
    assert status == 404 and "no note" in err["error"]
    while buf.count(b"event: note") < 6:
        chunk = ev.recv(4096)
        assert chunk, buf
        buf += chunk
    assert b'"kind":"created"' in buf and b'"kind":"updated"' in buf and b'"kind":"deleted"' in buf
    ev.close()


def test_notes_on_sqlite_with_zero_setup_and_a_restart():
    d = tempfile.mkdtemp(prefix="lariat-notes-")
    try:
        os.environ.pop("NOTES_DB", None)
        srv = LariatServer(APP, "--workers", "2", cwd=d).start()  # ./notes.db in its directory
        try:
            exercise(srv)
        finally:
            srv.check_healthy()
        assert os.path.exists(os.path.join(d, "notes.db"))
        srv = LariatServer(APP, "--workers", "1", cwd=d).start()
        try:
            assert call(srv, "GET", "/notes")[1]["total"] == 3  # kept across the restart
        finally:
            srv.check_healthy()
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_notes_on_postgresql():
    pg = Postgres().start()
    try:
        os.environ["NOTES_DB"] = pg.url()
        srv = LariatServer(APP, "--workers", "2").start()
        try:
            exercise(srv)
        finally:
            srv.check_healthy()
            del os.environ["NOTES_DB"]
    finally:
        pg.cleanup()
