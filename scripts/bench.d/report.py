"""Turn the per-round results into the markdown table the README quotes:
medians over rounds, ratios to nginx + lua and to h2o + mruby in their own
columns, and where lariat stands against the targets of issues 6, 10, 11 and 13."""
import statistics

from servers import LABELS


def median(results, key):
    vals = [r[key] for r in results if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def _num(x, digits=1):
    if x is None:
        return ""
    if x >= 10000:
        return f"{x / 1000:.1f}k"
    return f"{x:.{digits}f}"


class Cell:
    """All rounds of one (row, server): numbers, or why there are none."""

    def __init__(self):
        self.results = []
        self.na = None      # lariat lacks the feature
        self.failed = None  # a server or load generator misbehaved: the last message
        self.nfailed = 0
        self.instr = None   # instructions per request under callgrind (full runs)

    def med(self, key):
        return median(self.results, key)


def _x(label, a, b):
    # b is 0 when a short (--smoke) run used less than one clock tick of CPU
    return f"{label} {a / b:.2f}×" if a is not None and b else f"{label} ?"


def _ratio(cell, ref, row, prefix=""):
    if ref is None:
        return ""
    if cell is ref:
        return "—"
    if not cell.results or not ref.results:
        return ""
    if row.kind == "idle":
        return _x("KiB", cell.med("kib_per_conn"), ref.med("kib_per_conn"))
    out = (prefix + _x("req/s", cell.med("rps"), ref.med("rps")) + " · "
           + _x("CPU", cell.med("cpu_us"), ref.med("cpu_us")))
    if cell.instr and ref.instr:
        out += " · " + _x("instr", cell.instr, ref.instr)
    return out


def label(row, kind):
    return row.labels.get(kind, LABELS[kind])


def table(rows, cells):
    out = ["| test | server | req/s | p50 ms | p99 ms | user µs/req | sys µs/req "
           "| CPU µs/req | instr/req | backend CPU µs/req | KiB/conn | errors "
           "| vs nginx (the row's anchor) | vs h2o + mruby |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    hello = cells.get("h1-hello", {}).get("lariat")
    for row in rows:
        for kind in row.kinds:
            cell = cells[row.name][kind]
            head = f"| {row.title} | {label(row, kind)} |"
            if not cell.results:
                why = f"n/a: {cell.na}" if cell.na else f"failed: {cell.failed or 'not run'}"
                out.append(head + f" {' '.join(why.split())} |" + " |" * 11)
                continue
            if "nginx" in row.kinds:
                vs_nginx = _ratio(cell, cells[row.name]["nginx"], row)
            elif kind == "lariat" and row.name != "h1-hello":
                vs_nginx = _ratio(cell, hello, row, "vs lariat hello: ")
            else:
                vs_nginx = ""
            errors = sum(r.get("errors", 0) for r in cell.results)
            note = f" ({cell.nfailed} runs failed: {cell.failed})" if cell.nfailed else ""
            out.append(head + " | ".join([
                "" if row.kind == "idle" else " " + _num(cell.med("rps"), 0),
                _num(cell.med("p50"), 2), _num(cell.med("p99"), 2),
                _num(cell.med("user_us"), 2), _num(cell.med("sys_us"), 2),
                _num(cell.med("cpu_us"), 2),
                f"{cell.instr:,.0f}" if cell.instr else "",
                _num(cell.med("backend_us"), 2), _num(cell.med("kib_per_conn"), 2),
                f"{errors}{note}", vs_nginx,
                _ratio(cell, cells[row.name].get("h2o"), row)]) + " |")
    return out


# The issues' targets: (label, row, measure, anchor row, anchor server, limit on
# lariat ÷ anchor — None: lariat's own figure against the anchor's —, at most?)
TARGETS = (
    ("HTTP/1.1 hello, user CPU/req ÷ nginx + lua ≤ 0.5", "h1-hello", "user_us", "h1-hello", "nginx", 0.5, True),
    ("HTTP/1.1 hello, total CPU/req ÷ nginx + lua ≤ 0.9", "h1-hello", "cpu_us", "h1-hello", "nginx", 0.9, True),
    ("HTTP/1.1 hello p99 ≤ nginx + lua's (ms)", "h1-hello", "p99", "h1-hello", "nginx", None, True),
    ("h2c hello, total CPU/req ÷ h2o + mruby ≤ 0.8", "h2c-hello", "cpu_us", "h2c-hello", "h2o", 0.8, True),
    ("HTTP/1.1 hello, instructions/req ÷ nginx + lua ≤ 0.5 (issue 13)",
     "h1-hello", "instr", "h1-hello", "nginx", 0.5, True),
    ("h2c hello, instructions/req ÷ h2o + mruby ≤ 0.5 (issue 13)", "h2c-hello", "instr", "h2c-hello", "h2o", 0.5, True),
    ("HTTPS h2 hello, instructions/req ÷ h2o + mruby ≤ 0.5 (issue 13)",
     "h2-tls-hello", "instr", "h2-tls-hello", "h2o", 0.5, True),
    ("lariat.proxy ÷ nginx proxy_pass, instructions/req ≤ 0.8 (issue 10/11)",
     "h1-proxy", "instr", "h1-proxy", "nginx", 0.8, True),
    ("lariat.proxy ÷ nginx proxy_pass, CPU µs/req ≤ 0.8 (issue 10)", "h1-proxy", "cpu_us", "h1-proxy", "nginx", 0.8, True),
    ("lariat.http.get ÷ nginx + lua-resty-http, instructions/req ≤ 0.25 (issue 10/11)",
     "h1-fetch", "instr", "h1-fetch", "nginx", 0.25, True),
    ("lariat.redis GET ÷ nginx + lua-resty-redis, instructions/req ≤ 0.4 (issue 10/11)",
     "h1-redis", "instr", "h1-redis", "nginx", 0.4, True),
    ("SQLite PK SELECT req/s ÷ lariat hello's ≥ 0.5 (issue 11)", "h1-sqlite", "rps", "h1-hello", "lariat", 0.5, False),
    ("200 MB static file, server CPU ÷ nginx sendfile ≤ 0.8 (issue 13)",
     "static-200m", "cpu_us", "static-200m", "nginx", 0.8, True),
    ("4 KiB static file, req/s ÷ nginx sendfile ≥ 1.0 (issue 13)", "static-4k", "rps", "static-4k", "nginx", 1.0, False),
)


def targets(rows, cells):
    """Issue 6's targets, checked against this run's medians (✓ met, ✗ not, ? no data)."""
    def get(row_name, kind, key):
        cell = cells.get(row_name, {}).get(kind)
        if key == "instr":
            return cell.instr if cell else None
        return cell.med(key) if cell and cell.results else None

    def check(label, value, limit, fmt="{:.2f}", le=True):
        if value is None or limit is None:
            return f"- ? {label}: no data"
        ok = value <= limit if le else value >= limit
        return f"- {'✓' if ok else '✗'} {label}: {fmt.format(value)} (limit {fmt.format(limit)})"

    def ratio(a, b):
        return a / b if a is not None and b else None

    lines = []
    for label, name, key, anchor_row, anchor, limit, le in TARGETS:
        if name not in cells or anchor_row not in cells:
            continue
        value, ref = get(name, "lariat", key), get(anchor_row, anchor, key)
        if limit is None:  # the anchor's own figure is the limit
            lines.append(check(label, value, ref, le=le))
        else:
            lines.append(check(label, ratio(value, ref), limit, le=le))
    for row in rows:
        if row.kind == "idle" and row.proto == "h2-tls":
            # issue 13: TLS's own cost shown apart (no target of its own)
            tls = get(row.name, "lariat", "kib_per_conn")
            h2c = get(f"idle-h2c-{row.conns}", "lariat", "kib_per_conn")
            if tls is not None and h2c is not None:
                lines.append(f"- {row.title}: {tls:.2f} KiB per idle connection, of which TLS's own "
                             f"(OpenSSL, minus idle h2c at {row.conns:,}) {tls - h2c:.2f}")
        elif row.kind == "idle":
            limit = 1.0 if row.proto == "h1" else 2.0
            lines.append(check(f"{row.title}: KiB per idle connection ≤ {limit}",
                               get(row.name, "lariat", "kib_per_conn"), limit))
        if row.kind == "idle":
            cell = cells[row.name]["lariat"]
            if cell.results:
                errors = sum(r["errors"] for r in cell.results)
                lines.append(f"- {'✓' if not errors else '✗'} {row.title}: "
                             f"{errors} connection errors (target 0)")
    return lines
