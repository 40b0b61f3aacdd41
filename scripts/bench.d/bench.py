#!/usr/bin/python3
"""lariat vs nginx + lua vs h2o + mruby, measured side by side in one run.

Run through scripts/bench, which installs the tools and builds lariat first.
Every row is measured in interleaved rounds (lariat, nginx, h2o, lariat, …;
the order rotates each round so no server always goes first), each measurement
on a fresh server, and the table quotes medians. The result goes to
build-release/bench-results.md (bench-smoke.md for --smoke) and to stdout.
"""
import argparse
import datetime
import os
import resource
import shlex
import signal
import subprocess
import sys
import tempfile
import shutil

import backends
import measure
import report
import servers
from load import LoadError
from measure import Row, Opts

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT = os.path.join(REPO, "build-release", "bench-results.md")
# scripts/test runs --smoke: it must not overwrite the last real results.
OUT_SMOKE = os.path.join(REPO, "build-release", "bench-smoke.md")


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="scripts/bench", description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true",
                    help="every row once, tiny durations (CI: checks the bench still works)")
    ap.add_argument("--rounds", type=int, help="interleaved rounds (default 3, smoke 1)")
    ap.add_argument("--duration", type=int, help="wrk seconds per run (default 10, smoke 1)")
    ap.add_argument("--only", help="comma-separated row names or prefixes, e.g. h1-hello,idle")
    ap.add_argument("--list", action="store_true", help="list the row names and exit")
    ap.add_argument("--no-callgrind", dest="callgrind", action="store_false",
                    help="skip the instructions-per-request runs (never run by --smoke)")
    a = ap.parse_args(argv)
    a.callgrind = a.callgrind and not a.smoke
    a.rounds = a.rounds or (1 if a.smoke else 3)
    a.duration = a.duration or (1 if a.smoke else 10)
    return a


def make_rows(args):
    rows = [
        Row("h1-hello", "HTTP/1.1 hello", "wrk", callgrind=True),
        Row("h2c-hello", "h2c hello", "h2c", callgrind=True),
        Row("h1-echo-64k", "HTTP/1.1 POST echo 64 KiB", "wrk-post"),
        Row("h2-tls-hello", "HTTPS h2 hello", "h2-tls", callgrind=True),
    ]
    for proto in ("h1", "h2c"):
        for n in ([100] if args.smoke else [1000, 10000]):
            rows.append(Row(f"idle-{proto}-{n}", f"idle {proto}, {n:,} conns", "idle",
                            proto=proto, conns=n))
    # HTTPS h2 (ALPN): the TLS layer's own cost is this row minus idle h2c's
    rows.append(Row(f"idle-h2-tls-{100 if args.smoke else 1000}",
                    f"idle HTTPS h2, {100 if args.smoke else 1000:,} conns", "idle",
                    proto="h2-tls", conns=100 if args.smoke else 1000))
    rows.append(Row("h1-2workers", "HTTP/1.1 hello, 2 workers, unpinned", "wrk",
                    workers=2, pin=False))
    # Outbound and data (issues 10, 11): HTTP/1.1, the nginx anchor is
    # nginx-upstream.conf.in; h2o has no counterpart.
    up = dict(anchor="upstream", kinds=("lariat", "nginx"), callgrind=True)
    rows += [
        Row("h1-proxy", "HTTP/1.1 reverse proxy to nginx", "wrk", path="/proxy/",
            needs=("upstream",), labels={"lariat": "lariat.proxy", "nginx": "nginx proxy_pass"},
            **up),
        Row("h1-fetch", "HTTP/1.1 handler, one upstream GET", "wrk", path="/fetch",
            needs=("upstream",),
            labels={"lariat": "lariat.http.get", "nginx": "nginx + lua-resty-http"}, **up),
        Row("h1-redis", "HTTP/1.1 handler, one Redis GET", "wrk", path="/redis",
            needs=("redis",),
            labels={"lariat": "lariat.redis", "nginx": "nginx + lua-resty-redis"}, **up),
        Row("h1-sqlite", "HTTP/1.1 handler, one SQLite PK SELECT", "wrk", path="/sqlite",
            needs=("sqlite",), kinds=("lariat",), labels={"lariat": "lariat.sqlite"},
            callgrind=True),
        Row("h1-pg", "HTTP/1.1 handler, one PostgreSQL PK SELECT", "wrk", path="/pg",
            needs=("pg",), kinds=("lariat",), labels={"lariat": "lariat.pg"}, callgrind=True),
        # the same upstream speaking h2c: every request one stream of one connection.
        # nginx can't proxy to an HTTP/2 upstream, so no anchor: reported only
        Row("h2up-proxy", "HTTP/1.1 reverse proxy to nginx over h2c", "wrk", path="/proxy2/",
            needs=("upstream_h2",), kinds=("lariat",),
            labels={"lariat": "lariat.proxy, version 2"}, callgrind=True),
        Row("h2up-fetch", "HTTP/1.1 handler, one upstream GET over h2c", "wrk", path="/fetch2",
            needs=("upstream_h2",), kinds=("lariat",),
            labels={"lariat": "lariat.http.get, version 2"}, callgrind=True),
    ]
    # Compression (issue 13 item 6): a ~100 KB JSON response through
    # lariat.middleware.compress vs nginx's static file with `gzip on`, both at
    # gzip level 6; br and zstd for lariat alone; identity as the baseline.
    # callgrind: 200 requests (each costs milliseconds; the count is per request)
    cz = dict(path="/json", anchor="compress", labels={"nginx": "nginx gzip on (static file)"},
              cg_requests=200)
    rows += [
        Row("compress-json-identity", "100 KB JSON, no accept-encoding", "wrk",
            kinds=("lariat", "nginx"), **cz),
        Row("compress-json-gzip", "100 KB JSON, gzip level 6", "wrk", kinds=("lariat", "nginx"),
            headers=("accept-encoding: gzip",), callgrind=True, **cz),
        Row("compress-json-br", "100 KB JSON, br level 5", "wrk", kinds=("lariat",),
            headers=("accept-encoding: br",), callgrind=True, **cz),
        Row("compress-json-zstd", "100 KB JSON, zstd level 3", "wrk", kinds=("lariat",),
            headers=("accept-encoding: zstd",), callgrind=True, **cz),
    ]
    # Static files (issue 13 item 5): nginx with sendfile and open_file_cache
    # (nginx-static.conf.in) against lariat.static (static.lua); h2o not measured.
    st = dict(anchor="static", kinds=("lariat", "nginx"),
              labels={"lariat": "lariat.static", "nginx": "nginx sendfile"})
    rows += [
        Row("static-200m", "200 MB file × 5 downloads (CPU µs/req = per download)", "download",
            path="/s/200m.bin", **st),
        Row("static-4k", "4 KiB static file, 50 conns", "wrk", path="/s/4k.bin", callgrind=True,
            **st),
    ]
    if args.only:
        wanted = args.only.split(",")
        rows = [r for r in rows if any(r.name == w or r.name.startswith(w + "-") for w in wanted)]
    return rows


def make_cert(tmp):
    cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "2", "-subj", "/CN=127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


def summary(r):
    if "instr" in r:
        return f"{r['instr']:,.0f} instructions/request ({r['cg_requests']} requests)"
    if "kib_per_conn" in r:
        return f"{r['kib_per_conn']:.2f} KiB/conn, {r['errors']} errors"
    return (f"{r['rps']:.0f} req/s, {r['user_us']:.2f} + {r['sys_us']:.2f} µs/req, "
            f"{r['errors']} errors")


def label_of(row, kind):
    return report.label(row, kind)


def notes(args, rows, cells):
    lines = [
        "- Same run, interleaved rounds (the server order rotates each round), a fresh "
        "server per measurement, medians over rounds. Single worker, server pinned with "
        "`taskset -c 1` and the load generator / connection opener with `taskset -c 0`, "
        "except the 2-worker row, where servers and wrk are unpinned and share both cores.",
        f"- HTTP/1.1: `wrk -t1 -c50 -d{args.duration}s --latency`; h2c and HTTPS h2: "
        f"`h2load -c50 -m10 -t1 -n{200000 if not args.smoke else 2000}` (TLS 1.3, ALPN h2, "
        "self-signed P-256 cert); echo: wrk POSTing 64 KiB to /echo "
        "(`scripts/bench.d/post_64k.lua`), checked to come back whole. "
        f"{'A 1 s / 20,000-request unmeasured warm-up precedes each run.' if not args.smoke else ''}",
        "- CPU µs/req: utime and stime from `/proc/PID/stat`, summed over the server's "
        "process tree (nginx master + workers; h2o and its helper processes; lariat's one "
        "process, all threads) before and after the run, divided by the requests served.",
        "- KiB/conn: VmRSS summed over the same process tree, after N keep-alive connections "
        "that each served one GET / (opened by `scripts/bench.d/idle_conns.py`; h2c sends "
        ":authority without HPACK indexing, so no dynamic table is kept — indexing it costs "
        "nginx ~4.5 KiB more per connection; idle HTTPS h2 is the same exchange over TLS 1.3 "
        "with ALPN h2, and TLS's own cost is its figure minus idle h2c's) minus before them, "
        "divided by the connections "
        "opened. The master/helper processes don't change, so the sum is the "
        "serving process's growth. Errors: connections that failed or were closed by the "
        "server before the measurement.",
        "- instr/req: instructions per request of the serving process, every thread, under "
        "`valgrind --tool=callgrind --smc-check=all-non-file` (nginx with `master_process off`): "
        "a 2,000-request warm-up, `callgrind_control -z`, "
        f"`h2load --h1 -c50 -n{measure.CG_REQUESTS}` (h2c and HTTPS h2: `-c50 -m10`), `callgrind_control -d`, "
        "dumped totals ÷ requests served. One run per row and server after the timed rounds: "
        "the count repeats within ~1 % run to run, loaded machine or not, while the timings "
        "here swing ±30 % (the machine is shared).",
        "- Outbound and data rows (HTTP/1.1, lariat app `scripts/bench.d/outbound.lua`; anchor "
        "`../shared/anchors/nginx-upstream.conf.in` with its lualib): the upstream is an nginx "
        "`return 200 \"Hello world!\"` (C only), redis-server holds `greeting`, SQLite and "
        f"PostgreSQL 15 a {backends.SQL_ROWS:,}-row table read by primary key (a different row "
        "each request); every backend runs pinned to the load generator's core 0, is started "
        "once per bench run and is not part of the server's CPU. backend CPU µs/req: "
        "the backend's own CPU (upstream nginx, redis-server, PostgreSQL's processes) per "
        "request served. SQLite runs inside lariat (its thread), so its cost is in lariat's CPU.",
        "- Static-file rows (lariat app `scripts/bench.d/static.lua`, `lariat.static` with its "
        "defaults; anchor `scripts/bench.d/nginx-static.conf.in`: `sendfile on`, "
        "`open_file_cache` valid 2 s like lariat's): random bytes in a 4 KiB and a 200 MB file; "
        f"the large one is downloaded {measure.DOWNLOADS} times one after the other by curl "
        "(pinned to core 0, body discarded), and its CPU µs/req is the server's CPU per download.",
        "- Anchors from `../shared/anchors/`, with deviations: nginx keeps request bodies up to "
        "128k in memory (`client_body_buffer_size`; with the template's default the 64 KiB "
        "echo answers an empty body) and `worker_rlimit_nofile` = the hard fd limit; h2o gets "
        "an `/echo` mruby handler and nginx's 120 s idle timeouts (its default 10 s); both get a "
        "TLS listener.",
    ]
    sizes = []
    for row in rows:
        if row.anchor != "compress":
            continue
        for kind in row.kinds:
            cell = cells[row.name][kind]
            if cell.results:
                sizes.append(f"{row.title.split(', ')[-1]}, {label_of(row, kind)}: "
                             f"{cell.med('bytes_per_req'):,.0f}")
    if sizes:
        lines.append("- compress-json rows: a handler returning a 100 KB JSON body "
                     "(`scripts/bench.d/compress_body.py`, seeded, API-listing shaped) through "
                     "`lariat.middleware.compress` (`scripts/bench.d/compress.lua`) vs nginx "
                     "serving the same file with `gzip on; gzip_comp_level 6` (C only); wrk "
                     "sends the accept-encoding named in the row. Bytes per response (wrk's bytes "
                     "read ÷ requests, headers included, wrk rounds to 3 digits; instr/req over "
                     "200 requests): "
                     + "; ".join(sizes) + ".")
    one = cells.get("h1-hello", {}).get("lariat")
    two = cells.get("h1-2workers", {}).get("lariat")
    if one and two and one.results and two.results:
        lines.append(f"- lariat 2 workers (unpinned) ÷ 1 worker (pinned): req/s "
                     f"{two.med('rps') / one.med('rps'):.2f}×, CPU µs/req "
                     f"{two.med('cpu_us') / one.med('cpu_us'):.2f}×; with wrk -t1 the load "
                     "generator shares the 2 cores, so this is a floor on scaling.")
    return lines


def write_report(args, argv, rows, cells):
    # a fresh machine may have no git, and a `git archive` tree no repository
    commit = "unknown"
    if shutil.which("git"):
        commit = subprocess.run(["git", "-C", REPO, "describe", "--always", "--dirty"],
                                capture_output=True, text=True).stdout.strip() or commit
    cmd = " ".join(["scripts/bench"] + [shlex.quote(a) for a in argv])
    text = "\n".join(
        ["# lariat benchmark", "",
         f"Reproduce: `{cmd}` (run {datetime.datetime.now():%Y-%m-%d %H:%M}, commit {commit}, "
         f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the end, "
         f"{args.rounds} round{'s' if args.rounds > 1 else ''}"
         f"{', SMOKE MODE: numbers meaningless' if args.smoke else ''}).", ""]
        + report.table(rows, cells)
        + ["", "Ratios: req/s ÷ the reference's (higher is better), CPU µs/req and KiB/conn ÷ "
           "the reference's (lower is better).", "", "## Targets (issues 6, 10, 11, 13)", ""]
        + report.targets(rows, cells) + ["", "## How it was measured", ""]
        + notes(args, rows, cells)) + "\n"
    out = OUT_SMOKE if args.smoke else OUT
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        f.write(text)
    return text, out


def measure_cell(env, row, kind, opts, cell, when, how=measure.run):
    """One measurement into cell; returns 1 if a server or load generator failed."""
    if cell.na:
        return 0  # lariat lacks it, or the anchor/backend is absent: no point asking again
    tag = f"{when} {row.name:13} {kind:6}"
    try:
        r = how(env, row, kind, opts)
    except servers.Unsupported as e:
        cell.na = str(e)
        print(f"{tag} n/a: {e}", file=sys.stderr, flush=True)
        return 0
    except (servers.StartError, LoadError) as e:
        cell.failed, cell.nfailed = str(e), cell.nfailed + 1
        print(f"{tag} FAILED: {e}", file=sys.stderr, flush=True)
        return 1
    if "instr" in r:
        cell.instr = r["instr"]
    else:
        cell.results.append(r)
    print(f"{tag} {summary(r)}", file=sys.stderr, flush=True)
    return 0


def main(argv):
    args = parse_args(argv)
    rows = make_rows(args)
    if args.list:
        print("\n".join(f"{r.name:16} {r.title}" for r in make_rows(parse_args([]))))
        return 0
    if not rows:
        sys.exit(f"scripts/bench: --only {args.only} matches no row (see --list)")
    # 10,000 connections need 10,000 fds in the server and in the opener;
    # children inherit this.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    # SIGTERM/SIGHUP unwind like Ctrl-C, so the finally below stops every server.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: sys.exit(130))

    cells = {r.name: {k: report.Cell() for k in r.kinds} for r in rows}
    tmp = tempfile.mkdtemp(prefix="lariat-bench.")
    opts = Opts(duration=args.duration, h2_requests=2000 if args.smoke else 200000,
                warmup=not args.smoke, tmp=tmp)
    failures = 0
    try:
        cert, key = make_cert(tmp)
        env = servers.Env(repo=REPO, tmp=tmp,
                          # overridable to measure another build (profiling, sanitizers)
                          lariat=os.environ.get("LARIAT_BENCH_BIN",
                                                os.path.join(REPO, "build-release", "lariat")),
                          app=os.environ.get("LARIAT_BENCH_APP",
                                             os.path.join(REPO, "examples", "hello.lua")),
                          anchors=os.environ.get("LARIAT_ANCHORS",
                                                 os.path.join(REPO, "..", "shared", "anchors")),
                          cert=cert, key=key)
        for rnd in range(args.rounds):
            order = servers.SERVERS[rnd % 3:] + servers.SERVERS[:rnd % 3]
            for row in rows:
                for kind in order:
                    if kind in row.kinds:
                        failures += measure_cell(env, row, kind, opts, cells[row.name][kind],
                                                 f"[{rnd + 1}/{args.rounds}]")
        # Instruction counts are deterministic: one run each, after the timed rounds.
        for row in rows if args.callgrind else []:
            for kind in row.kinds if row.callgrind else ():
                failures += measure_cell(env, row, kind, opts, cells[row.name][kind],
                                         "[callgrind]", measure.instructions)
        text, out = write_report(args, argv, rows, cells)
        print(text)
        print(f"written to {os.path.relpath(out, os.getcwd())}", file=sys.stderr)
    finally:
        servers.stop_all()
        backends.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    # Numbers never fail the bench; a server or load generator that broke does.
    return 1 if failures else 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:   # servers were stopped by main's finally
        sys.exit("scripts/bench: interrupted")
