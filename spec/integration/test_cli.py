"""The command line: `lariat [options] APP.lua` (DESIGN.md section 4).

Errors are one line on stderr and exit status 2; the ready line is
`listening on http://127.0.0.1:PORT`, one per listener.
"""

import re
import signal
import socket
import subprocess
import time

import httpx
import pytest

from conftest import LariatServer, app_path, lariat_bin, request, REPO

HELLO = app_path("basic.lua")


def run(*args, timeout=10):
    return subprocess.run([lariat_bin(), *map(str, args)], cwd=str(REPO),
                          stdin=subprocess.DEVNULL, capture_output=True,
                          timeout=timeout)


def assert_usage_error(proc, *needles):
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 2, (proc.returncode, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, "expected a one-line error, got:\n" + err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


# -- errors -------------------------------------------------------------------

def test_unknown_option_is_exit_2(tmp_path):
    assert_usage_error(run("--bogus-option", HELLO), "--bogus-option")


def test_unknown_option_after_app_is_exit_2():
    assert_usage_error(run(HELLO, "--bogus-option"), "--bogus-option")


def test_missing_app_argument_is_exit_2():
    assert_usage_error(run("--listen", "127.0.0.1:0"))


def test_missing_app_file_is_exit_2(tmp_path):
    missing = tmp_path / "no_such_app.lua"
    assert_usage_error(run("--listen", "127.0.0.1:0", missing), "no_such_app.lua")


def test_lua_syntax_error_names_file_and_line(tmp_path):
    app = tmp_path / "broken_syntax.lua"
    app.write_text('local lariat = require "lariat"\n'
                   'local app = lariat.app()\n'
                   'app:get("/", function(req) return "x" end\n'  # missing ")"
                   'return app\n')
    line = assert_usage_error(run("--listen", "127.0.0.1:0", app), "broken_syntax.lua:")
    m = re.search(r"broken_syntax\.lua:(\d+):", line)
    assert m and int(m.group(1)) in (3, 4), line


def test_lua_runtime_error_at_load_names_file_and_line(tmp_path):
    app = tmp_path / "load_error.lua"
    app.write_text('local lariat = require "lariat"\n'
                   'error("kaput at load")\n'
                   'return lariat.app()\n')
    line = assert_usage_error(run("--listen", "127.0.0.1:0", app),
                              "load_error.lua:2:", "kaput at load")
    assert "stack traceback" not in line


@pytest.mark.parametrize("result", ["42", "nil", "{}", '"app"'])
def test_app_not_returning_an_app_is_exit_2(tmp_path, result):
    app = tmp_path / "not_an_app.lua"
    app.write_text('local lariat = require "lariat"\nreturn %s\n' % result)
    assert_usage_error(run("--listen", "127.0.0.1:0", app), "not_an_app.lua")


@pytest.mark.parametrize("value", ["nonsense", "127.0.0.1:99999", "127.0.0.1:-1",
                                   "999.1.1.1:80"])
def test_bad_listen_address_is_exit_2(value):
    assert_usage_error(run("--listen", value, HELLO))


@pytest.mark.parametrize("option,value", [
    ("--workers", "many"), ("--workers", "-3"), ("--max-body", "-1"),
    ("--max-body", "lots"), ("--max-keepalive", "x"),
    ("--header-timeout", "soon"), ("--idle-timeout", "-1"),
    ("--body-timeout", "nan-ish"), ("--send-timeout", "0"), ("--body-deadline", "x"),
    ("--body-min-rate", "-5"), ("--lingering-time", "-1"), ("--lingering-timeout", "0"),
    ("--output-buffer", "10"),
])
def test_bad_option_value_is_exit_2(option, value):
    assert_usage_error(run("--listen", "127.0.0.1:0", option, value, HELLO), option)


def test_option_missing_its_value_is_exit_2():
    assert_usage_error(run(HELLO, "--listen"), "--listen")


def test_port_in_use_is_exit_2():
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    try:
        port = holder.getsockname()[1]
        line = assert_usage_error(run("--listen", "127.0.0.1:%d" % port, HELLO), str(port))
        assert "address in use" in line, line
    finally:
        holder.close()


def test_second_lariat_on_a_busy_port_is_exit_2():
    """SO_REUSEPORT would let a second lariat of the same user join the
    port and take half the connections: it must refuse to start instead
    (the second time too), and the first keeps every connection."""
    with LariatServer(HELLO, "-w", "2").start() as first:
        for _ in range(2):
            line = assert_usage_error(
                run("--listen", "127.0.0.1:%d" % first.port, "-w", "1", HELLO),
                "127.0.0.1:%d" % first.port)
            assert "address in use" in line, line
        for _ in range(20):
            assert httpx.get(first.url("/"), timeout=5).text == "Hello world!"


def test_descriptor_soft_limit_is_raised_to_the_hard_limit():
    import resource

    def low_soft_limit():
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))

    srv = LariatServer(HELLO, "-w", "1")
    argv = srv.argv()
    srv.proc = None
    proc = subprocess.Popen(argv, cwd=str(REPO), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=low_soft_limit)
    try:
        assert proc.stdout.readline().startswith(b"listening on")
        with open("/proc/%d/limits" % proc.pid) as f:
            line = [l for l in f if l.startswith("Max open files")][0]
        soft, hard = line.split()[3:5]
        assert soft == hard, line
    finally:
        proc.terminate()
        proc.wait(10)


# -- help and version ---------------------------------------------------------

def test_help():
    proc = run("--help")
    assert proc.returncode == 0
    out = proc.stdout.decode()
    assert "usage" in out.lower()
    for opt in ("--listen", "--workers", "--access-log", "--max-body",
                "--max-keepalive", "--header-timeout", "--idle-timeout",
                "--body-timeout", "--help", "--version"):
        assert opt in out, opt


def test_version():
    proc = run("--version")
    assert proc.returncode == 0
    out = proc.stdout.decode().strip()
    assert re.match(r"^lariat \d+\.\d+", out.splitlines()[0]), out


# -- starting -----------------------------------------------------------------

def _serve_and_check(srv):
    for port in srv.ports:
        r = httpx.get("http://127.0.0.1:%d/" % port, timeout=10, trust_env=False)
        assert r.status_code == 200
        assert r.text == "Hello world!"


def test_listening_line_reports_the_actual_port():
    srv = LariatServer(HELLO).start()
    try:
        lines = [l for l in srv.stdout_text().splitlines() if l.startswith("listening on")]
        assert lines == ["listening on http://127.0.0.1:%d" % srv.port]
        assert srv.port != 0
        _serve_and_check(srv)
    finally:
        srv.check_healthy()


def test_one_listening_line_per_listener():
    srv = LariatServer(HELLO, listeners=3).start()
    try:
        assert len(set(srv.ports)) == 3
        _serve_and_check(srv)
    finally:
        srv.check_healthy()


def test_options_after_the_app_file():
    srv = LariatServer(HELLO, listen=False)
    srv.start(argv=[lariat_bin(), HELLO, "--listen", "127.0.0.1:0", "--workers", "1"])
    try:
        _serve_and_check(srv)
    finally:
        srv.check_healthy()


def test_short_options():
    srv = LariatServer(HELLO, listen=False)
    srv.start(argv=[lariat_bin(), "-l", "127.0.0.1:0", "-w", "1", HELLO])
    try:
        _serve_and_check(srv)
    finally:
        srv.check_healthy()


def test_options_with_equals_sign():
    srv = LariatServer(HELLO, listen=False)
    srv.start(argv=[lariat_bin(), "--listen=127.0.0.1:0", "--workers=1", HELLO])
    try:
        _serve_and_check(srv)
    finally:
        srv.check_healthy()


def test_relative_app_path_from_another_directory(tmp_path):
    app = tmp_path / "rel_app.lua"
    app.write_text('local app = require("lariat").app()\n'
                   'app:get("/", function(req) return "Hello world!" end)\n'
                   'return app\n')
    srv = LariatServer("rel_app.lua", cwd=str(tmp_path)).start()
    try:
        _serve_and_check(srv)
    finally:
        srv.check_healthy()


def test_sigterm_stops_an_idle_server_cleanly():
    srv = LariatServer(HELLO).start()
    _serve_and_check(srv)
    t0 = time.monotonic()
    srv.proc.send_signal(signal.SIGTERM)
    rc = srv.proc.wait(10)
    srv.stop()
    assert time.monotonic() - t0 < 5
    assert rc == 0, srv.stderr_text()


def test_sigterm_finishes_in_flight_request():
    """kill -TERM: stop accepting, finish in-flight requests, exit."""
    srv = LariatServer(HELLO).start()
    try:
        with srv.connect() as c:
            c.send(request("GET", "/sleep/700"))
            time.sleep(0.2)
            srv.proc.send_signal(signal.SIGTERM)
            resp = c.read_response()
            assert resp.status == 200
            assert resp.body == b"slept 700"
        rc = srv.proc.wait(10)
        assert rc == 0, srv.stderr_text()
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", srv.port), timeout=2).close()
    finally:
        srv.stop()


def test_access_log_to_file(tmp_path):
    log = tmp_path / "access.log"
    srv = LariatServer(HELLO, "--access-log", log).start()
    try:
        with srv.connect() as c:
            c.send(request("GET", "/p/logged-one") + request("GET", "/no/such/route"))
            assert c.read_response().status == 200
            assert c.read_response().status == 404
    finally:
        srv.check_healthy()
    lines = log.read_text().splitlines()
    assert len(lines) == 2, lines
    assert "GET" in lines[0] and "/p/logged-one" in lines[0] and " 200" in lines[0]
    assert "/no/such/route" in lines[1] and " 404" in lines[1]


def test_access_log_to_stdout():
    srv = LariatServer(HELLO, "--access-log", "-").start()
    try:
        with srv.connect() as c:
            c.send(request("GET", "/p/logged-stdout"))
            assert c.read_response().status == 200
        deadline = time.monotonic() + 3
        while "/p/logged-stdout" not in srv.stdout_text() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        srv.check_healthy()
    hits = [l for l in srv.stdout_text().splitlines() if "/p/logged-stdout" in l]
    assert len(hits) == 1 and " 200" in hits[0], srv.stdout_text()
