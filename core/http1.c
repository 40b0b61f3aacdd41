/* HTTP/1.1 (RFC 9112) over llhttp.
 *
 * One request is handled at a time, Cowboy style: when its head is parsed the
 * parser pauses and the handler starts; pipelined requests behind it wait,
 * unparsed, until its response is complete, so responses leave in request
 * order. The application is never called from inside an llhttp callback:
 * callbacks record what happened and pause, and h1_process acts on it. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <llhttp.h>

#include "lariat.h"

enum { PAUSE_NONE, PAUSE_HEADERS, PAUSE_MESSAGE };
enum { HS_NONE, HS_FIELD, HS_VALUE };

typedef struct h1_conn_s {
  lr_conn_t base;
  llhttp_t parser;
  lr_stream_t *cur;   /* request being parsed or handled */
  lr_buf_t leftover;  /* input received while a response is pending */
  uint32_t requests;  /* requests started on this connection */
  uint32_t head_bytes;/* header section size so far */
  uint8_t pause;      /* why the parser paused */
  uint8_t hstate;     /* header span being parsed: HS_NONE, HS_FIELD, HS_VALUE */
  uint8_t keepalive;  /* current request allows keep-alive */
  uint8_t msg_done;   /* current request fully parsed */
  uint8_t blocked;    /* waiting for cur's response before parsing more */
  uint8_t closing;    /* close once the current response is written */
  uint8_t in_process; /* h1_process is on the stack */
  uint8_t body_stopped;/* reading paused because the body buffer is full */
  uint8_t out_blocked; /* not starting requests until the output drains */
  uint16_t error;     /* status to answer for a bad request */
  uint16_t n_host;
  uint8_t te_unknown; /* a transfer coding we don't implement */
  uint8_t te_bad;     /* chunked is not the final transfer coding */
  uint8_t is_upgrade;
  uint8_t in_body;    /* head done: header callbacks now carry trailer fields */
  uint8_t switched;   /* lr_http1_switch handed the connection to another protocol */
  uint8_t expect;     /* the head asks for 100-continue (head_to_pool) */
  const char *exec_start; /* input given to the running llhttp_execute */
  /* the request body's deadline (LR_TO_BODY checks, loop time in ms) */
  uint64_t body_start; /* the body's clock started (moved on while it is paused) */
  uint64_t body_check; /* last check */
  uint64_t body_last;  /* last body bytes arrived */
} h1_conn_t;

#define H1(c) ((h1_conn_t *)(c))
#define BODY_HIGH (256 * 1024)
#define BODY_LOW (64 * 1024)
#define LEFTOVER_MAX (64 * 1024)

size_t lr_http1_conn_size(void) { return sizeof(h1_conn_t); }

/* ---- request head: bytes go into s->body (reused as raw storage) until the
 * head is complete, then into the stream pool in one copy ---- */

/* during parsing, header slices hold offsets into the raw buffer */
#define OFF(p) ((const char *)(uintptr_t)(p))
#define UNOFF(p) ((size_t)(uintptr_t)(p))

/* ASCII lowercase by table: a branch per character cost twice as much */
static const unsigned char lower[256] = {
#define L4(i) (i), (i) + 1, (i) + 2, (i) + 3
#define L16(i) L4(i), L4((i) + 4), L4((i) + 8), L4((i) + 12)
    L16(0),  L16(16), L16(32), L16(48), 64, L4('a'), L4('e'), L4('i'), L4('m'), L4('q'), L4('u'), 'y', 'z', L4(91),
    91 + 4,  L16(96), L16(112), L16(128), L16(144), L16(160), L16(176), L16(192), L16(208), L16(224), L16(240),
#undef L16
#undef L4
};

static void copy_lower(char *d, const char *s, size_t n) {
  for (size_t i = 0; i < n; i++) d[i] = (char)lower[(unsigned char)s[i]];
}

static int set_error(h1_conn_t *h, int status) {
  if (!h->error) h->error = (uint16_t)status;
  return HPE_USER;
}

static int on_message_begin(llhttp_t *p) {
  h1_conn_t *h = p->data;
  lr_stream_t *s = lr__stream_new(&h->base);
  if (s == NULL) return set_error(h, 503);
  h->cur = s;
  s->id = ++h->requests;
  h->head_bytes = 0;
  h->hstate = HS_NONE;
  h->msg_done = 0;
  h->n_host = 0;
  h->te_unknown = 0;
  h->te_bad = 0;
  h->expect = 0;
  h->in_body = 0;
  lr_conn_set_timeout(&h->base, LR_TO_HEADER);
  return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t len) {
  h1_conn_t *h = p->data;
  lr_stream_t *s = h->cur;
  if (s->target.len + len > h->base.worker->cfg->max_request_line) return set_error(h, 414);
  if (s->target.len == 0) s->target.base = OFF(s->body.len);
  s->target.len += len;
  return lr_buf_append(&s->body, at, len) ? set_error(h, 503) : 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t len) {
  h1_conn_t *h = p->data;
  lr_stream_t *s = h->cur;
  const lr_config_t *cfg = h->base.worker->cfg;
  if ((h->head_bytes += (uint32_t)len) > cfg->max_header_bytes) return set_error(h, 431);
  if (h->in_body) return 0; /* request trailers are read and dropped */
  if (h->hstate != HS_FIELD) { /* else: the rest of a name split across reads */
    if (s->n_headers >= cfg->max_headers) return set_error(h, 431);
    if (lr__stream_add_header(s, OFF(s->body.len), 0, OFF(0), 0)) return set_error(h, 503);
    h->hstate = HS_FIELD;
  }
  if (lr_buf_reserve(&s->body, len)) return set_error(h, 503);
  copy_lower(s->body.base + s->body.len, at, len);
  s->body.len += len;
  s->headers[s->n_headers - 1].name.len += len;
  return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t len) {
  h1_conn_t *h = p->data;
  lr_stream_t *s = h->cur;
  if ((h->head_bytes += (uint32_t)len) > h->base.worker->cfg->max_header_bytes) return set_error(h, 431);
  if (h->in_body) return 0;
  if (h->hstate == HS_NONE) return set_error(h, 400); /* a value without a name */
  /* llhttp joins an obs-fold line to the value as a new span in the middle of
   * the input; a span continued across reads starts at the input's start */
  if (h->hstate == HS_VALUE && at != h->exec_start) return set_error(h, 400);
  /* obs-fold (a value continued on the next line) is rejected, RFC 9112 §5.2 */
  if (memchr(at, '\n', len) || memchr(at, '\r', len)) return set_error(h, 400);
  lr_header_t *hd = &s->headers[s->n_headers - 1];
  if (h->hstate != HS_VALUE) {
    hd->value.base = OFF(s->body.len);
    h->hstate = HS_VALUE;
  }
  hd->value.len += len;
  return lr_buf_append(&s->body, at, len) ? set_error(h, 503) : 0;
}

static int eq(const lr_str_t *a, const char *lit, size_t n) { return a->len == n && memcmp(a->base, lit, n) == 0; }

/* does a comma-separated list contain token (case-insensitive)? */
static int has_token(const char *v, size_t len, const char *tok) { return lr_token_in_list(v, len, tok, strlen(tok), 1); }

/* RFC 9112 §6.1/§6.3: chunked must be the final coding (else 400); we decode
 * no other coding, so any before it is "not implemented" (501) */
static void check_transfer_coding(h1_conn_t *h, const char *v, size_t len) {
  size_t i = 0;
  int last_chunked = 0;
  while (i < len) {
    while (i < len && (v[i] == ' ' || v[i] == '\t' || v[i] == ',')) i++;
    size_t st = i;
    while (i < len && v[i] != ',' && v[i] != ';') i++;
    size_t e = i;
    while (e > st && (v[e - 1] == ' ' || v[e - 1] == '\t')) e--;
    while (i < len && v[i] != ',') i++; /* skip parameters */
    if (e == st) continue;
    last_chunked = e - st == 7 && strncasecmp(v + st, "chunked", 7) == 0;
    if (!last_chunked) h->te_unknown = 1;
  }
  if (!last_chunked) h->te_bad = 1;
}

static int on_header_value_complete(llhttp_t *p) {
  h1_conn_t *h = p->data;
  lr_stream_t *s = h->cur;
  if (h->in_body) return 0;
  lr_header_t *hd = &s->headers[s->n_headers - 1];
  h->hstate = HS_NONE;
  if (hd->name.len == 0) return set_error(h, 400);
  /* names are still offsets here: compare against the raw buffer */
  lr_str_t name = {s->body.base + UNOFF(hd->name.base), hd->name.len};
  const char *v = s->body.base + UNOFF(hd->value.base);
  if (eq(&name, "host", 4))
    h->n_host++;
  else if (eq(&name, "transfer-encoding", 17))
    check_transfer_coding(h, v, hd->value.len);
  return 0;
}

/* lr_header_is_hop_by_hop for a request's names, which are lowercase here;
 * content-length stays visible to handlers */
static int hop_by_hop(const lr_str_t *n) {
  switch (n->len) {
    case 7: return memcmp(n->base, "upgrade", 7) == 0;
    case 10: return memcmp(n->base, "connection", 10) == 0 || memcmp(n->base, "keep-alive", 10) == 0;
    case 16: return memcmp(n->base, "proxy-connection", 16) == 0;
    case 17: return memcmp(n->base, "transfer-encoding", 17) == 0;
    default: return 0;
  }
}

static int head_to_pool(h1_conn_t *h, lr_stream_t *s) {
  lr_worker_t *w = h->base.worker;
  /* one copy of the whole head; slices become pointers */
  char *raw = lr_pool_alloc(w, &s->pool, s->body.len + 1);
  if (raw == NULL) return -1;
  if (s->body.len) memcpy(raw, s->body.base, s->body.len);
  s->target.base = raw + UNOFF(s->target.base);
  unsigned kept = 0, ws = 0;
  lr_str_t connv = {NULL, 0};
  /* the fields the core reads, found in this one pass (names are lowercase) */
  int host = -1, expect = -1, te = -1;
  for (unsigned i = 0; i < s->n_headers; i++) {
    lr_header_t hd = s->headers[i];
    hd.name.base = raw + UNOFF(hd.name.base);
    hd.value.base = hd.value.len ? raw + UNOFF(hd.value.base) : "";
    /* trailing whitespace is not part of the value (llhttp keeps it) */
    while (hd.value.len && (hd.value.base[hd.value.len - 1] == ' ' || hd.value.base[hd.value.len - 1] == '\t'))
      hd.value.len--;
    /* connection-level headers are the core's business, not the handler's */
    if (hop_by_hop(&hd.name)) {
      if (eq(&hd.name, "upgrade", 7)) {
        h->is_upgrade = 1;
        if (has_token(hd.value.base, hd.value.len, "websocket")) ws |= 1;
      } else if (eq(&hd.name, "connection", 10)) {
        if (has_token(hd.value.base, hd.value.len, "upgrade")) ws |= 2;
        connv = hd.value;
      }
      continue;
    }
    switch (hd.name.len) {
      case 2: if (te < 0 && eq(&hd.name, "te", 2)) te = (int)kept; break;
      case 4: if (host < 0 && eq(&hd.name, "host", 4)) host = (int)kept; break;
      case 6: if (expect < 0 && eq(&hd.name, "expect", 6)) expect = (int)kept; break;
    }
    s->headers[kept++] = hd;
  }
  /* TE is read before it may be hidden: RFC 9110 §10.1.4 has its sender name
   * it in Connection too (lariat.proxy does) */
  if (te >= 0 && has_token(s->headers[te].value.base, s->headers[te].value.len, "trailers"))
    s->flags |= LR_SF_TE_TRAILERS;
  /* headers the Connection header names are hop-by-hop too (RFC 9110 §7.6.1):
   * hidden like it, so a handler (or lariat.proxy) never forwards them */
  if (connv.len) {
    unsigned k2 = 0;
    for (unsigned i = 0; i < kept; i++)
      if (eq(&s->headers[i].name, "http2-settings", 14) || /* the core reads it (h2c upgrade) */
          !lr_token_in_list(connv.base, connv.len, s->headers[i].name.base, s->headers[i].name.len, 1))
        s->headers[k2++] = s->headers[i];
    kept = k2;
  }
  s->n_headers = kept;
  if (connv.len) { /* the list moved: look again */
    const lr_str_t *v;
    host = (v = lr_stream_header(s, "host", 4)) ? (int)(LR_CONTAINER_OF(v, lr_header_t, value) - s->headers) : -1;
    expect = (v = lr_stream_header(s, "expect", 6)) ? (int)(LR_CONTAINER_OF(v, lr_header_t, value) - s->headers) : -1;
  }
  if (expect >= 0) {
    const lr_str_t *v = &s->headers[expect].value;
    if (v->len == 12 && strncasecmp(v->base, "100-continue", 12) == 0) h->expect = 1;
  }
  if (ws == 3) s->flags |= LR_SF_WS_UPGRADE; /* RFC 6455 §4.2.1 items 3 and 4 */
  s->body.len = 0;
  if (host >= 0) s->authority = s->headers[host].value;
  /* absolute-form (RFC 9112 §3.2.2): the target's authority wins over Host */
  lr_str_t t = s->target;
  size_t skip = t.len >= 7 && strncasecmp(t.base, "http://", 7) == 0    ? 7
                : t.len >= 8 && strncasecmp(t.base, "https://", 8) == 0 ? 8
                                                                        : 0;
  if (skip) {
    const char *a = t.base + skip, *end = t.base + t.len;
    const char *slash = a;
    while (slash < end && *slash != '/' && *slash != '?') slash++;
    s->authority = (lr_str_t){a, (size_t)(slash - a)};
    t = (lr_str_t){slash, (size_t)(end - slash)};
  }
  /* split the target into path and query */
  const char *q = t.len ? memchr(t.base, '?', t.len) : NULL;
  s->path.base = t.base;
  s->path.len = q ? (size_t)(q - t.base) : t.len;
  if (s->path.len == 0) s->path = (lr_str_t){"/", 1};
  s->query.base = q ? q + 1 : "";
  s->query.len = q ? t.len - (size_t)(q - t.base) - 1 : 0;
  return 0;
}

/* RFC 9112 §3.2 / RFC 3986 §3.2: host [ ":" port ]; host is a reg-name
 * (unreserved, pct-encoded, sub-delims) or an IP literal in brackets */
static const unsigned char reg_name_char[256] = {
    ['a' ... 'z'] = 1, ['A' ... 'Z'] = 1, ['0' ... '9'] = 1, ['-'] = 1, ['.'] = 1, ['_'] = 1, ['~'] = 1,
    ['%'] = 1, ['!'] = 1, ['$'] = 1, ['&'] = 1, ['\''] = 1, ['('] = 1, [')'] = 1, ['*'] = 1, ['+'] = 1,
    [','] = 1, [';'] = 1, ['='] = 1,
};

static int authority_ok(const lr_str_t *a) {
  const char *p = a->base, *end = a->base + a->len;
  if (p < end && *p == '[') {
    const char *close = memchr(p, ']', a->len);
    if (close == NULL) return 0;
    for (const char *q = p + 1; q < close; q++)
      if (!((*q >= '0' && *q <= '9') || (*q >= 'a' && *q <= 'f') || (*q >= 'A' && *q <= 'F') || *q == ':' ||
            *q == '.'))
        return 0;
    p = close + 1;
  } else {
    for (; p < end && *p != ':'; p++)
      if (!reg_name_char[(unsigned char)*p]) return 0;
  }
  if (p == end) return 1;
  if (*p++ != ':') return 0;
  for (; p < end; p++)
    if (*p < '0' || *p > '9') return 0;
  return 1;
}

/* a head that failed before it was complete still holds offsets into the raw
 * buffer: make them pointers there, so the access log can read them */
static void head_resolve(h1_conn_t *h, lr_stream_t *s) {
  if (h->in_body) return;
  h->in_body = 1;
  if (h->error == 503) { /* out of memory: the lengths may count bytes never stored */
    s->target.len = 0;
    s->n_headers = 0;
  }
  const char *raw = s->body.base ? s->body.base : "";
  s->target.base = s->target.len ? raw + UNOFF(s->target.base) : "";
  for (unsigned i = 0; i < s->n_headers; i++) {
    lr_header_t *hd = &s->headers[i];
    hd->name.base = hd->name.len ? raw + UNOFF(hd->name.base) : "";
    hd->value.base = hd->value.len ? raw + UNOFF(hd->value.base) : "";
  }
}

static int on_headers_complete(llhttp_t *p) {
  h1_conn_t *h = p->data;
  lr_stream_t *s = h->cur;
  lr_worker_t *w = h->base.worker;
  h->is_upgrade = 0;
  if (head_to_pool(h, s)) return set_error(h, 503); /* send_error resolves the offsets */
  h->in_body = 1;
  s->version = p->http_major == 1 && p->http_minor == 0 ? 10 : 11;
  if (p->http_major == 0) return set_error(h, 400); /* no version: not an HTTP/1.x request line */
  if (p->http_major != 1) return set_error(h, 505);
  s->method.base = llhttp_method_name(p->method);
  s->method.len = strlen(s->method.base);
  if (p->method == HTTP_HEAD) s->flags |= LR_SF_HEAD;
  if (h->te_bad) return set_error(h, 400);
  /* RFC 9112 §6.1: Transfer-Encoding in HTTP/1.0 means the framing is faulty:
   * the body's end can't be trusted, so it is a bad request (400, close) */
  if (s->version == 10 && (p->flags & F_TRANSFER_ENCODING)) return set_error(h, 400);
  if (h->te_unknown) return set_error(h, 501);
  if (s->version == 11 && h->n_host != 1) return set_error(h, 400);
  if (h->n_host > 1) return set_error(h, 400);
  if (s->authority.len && !authority_ok(&s->authority)) return set_error(h, 400);
  if (p->flags & F_CONTENT_LENGTH) {
    s->content_length = (int64_t)p->content_length;
    if (p->content_length > w->cfg->max_body) return set_error(h, 413);
  } else if (!(p->flags & F_CHUNKED)) {
    s->content_length = 0;
  }
  if (s->content_length == 0) s->flags |= LR_SF_BODY_DONE;
  if (h->expect && s->version == 11 && !(s->flags & LR_SF_BODY_DONE)) s->flags |= LR_SF_EXPECT;
  h->keepalive = llhttp_should_keep_alive(p) && !h->closing;
  h->pause = PAUSE_HEADERS;
  return HPE_PAUSED;
}

static int on_body(llhttp_t *p, const char *at, size_t len) {
  h1_conn_t *h = p->data;
  lr_stream_t *s = h->cur;
  s->body_received += len;
  h->body_last = uv_now(&h->base.worker->loop);
  if (s->body_received > h->base.worker->cfg->max_body) {
    s->flags |= LR_SF_BODY_TOO_BIG;
    return set_error(h, 413);
  }
  /* a response that is already complete doesn't want the rest: drop it */
  if (s->flags & LR_SF_FINISHED) return 0;
  return lr_buf_append(&s->body, at, len) ? set_error(h, 503) : 0;
}

static int on_message_complete(llhttp_t *p) {
  h1_conn_t *h = p->data;
  h->cur->flags |= LR_SF_BODY_DONE;
  h->msg_done = 1;
  h->pause = PAUSE_MESSAGE;
  return HPE_PAUSED;
}

static const llhttp_settings_t settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_header_value_complete = on_header_value_complete,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

/* ---- writing the response ---- */

static char *put(char *d, const char *s, size_t n) {
  if (n) memcpy(d, s, n);
  return d + n;
}

/* decimal digits of n at d; returns the end */
static char *put_u64(char *d, uint64_t n) {
  char tmp[20];
  int k = 0;
  do {
    tmp[k++] = (char)('0' + n % 10);
    n /= 10;
  } while (n);
  while (k) *d++ = tmp[--k];
  return d;
}

/* "HTTP/1.1 200 OK\r\n" without printf: it was 1,800 instructions of the
 * ~17,500 a hello-world request cost (callgrind) */
static char *put_status_line(char *d, int status) {
  if (status == 200) return put(d, "HTTP/1.1 200 OK\r\n", 17);
  const char *reason = lr_status_reason(status);
  d = put(d, "HTTP/1.1 ", 9);
  d = put_u64(d, (uint64_t)status);
  *d++ = ' ';
  d = put(d, reason, strlen(reason));
  return put(d, "\r\n", 2);
}

static void response_complete(h1_conn_t *h, lr_stream_t *s);

static int h1_send_head(lr_stream_t *s, int status, const lr_header_t *hs, size_t n, const char *body, size_t len,
                        lr_release_cb release, void *arg, int fin) {
  h1_conn_t *h = H1(s->conn);
  lr_conn_t *c = &h->base;
  lr_worker_t *w = c->worker;
  int has_body = lr_status_has_body(status);
  int head_only = (s->flags & LR_SF_HEAD) || !has_body;
  if (!h->keepalive || h->requests >= w->cfg->max_keepalive || c->worker->stopping) h->closing = 1;
  /* a body the client was told to wait for and never sent can't be skipped */
  if ((s->flags & LR_SF_EXPECT) && !(s->flags & LR_SF_CONTINUED) && !(s->flags & LR_SF_BODY_DONE)) h->closing = 1;
  int chunked = 0;
  if (!fin && has_body) {
    if (s->version == 11)
      chunked = 1;
    else
      h->closing = 1; /* HTTP/1.0: the end of the body is the end of the connection */
  }
  size_t need = 128 + 64;
  for (size_t i = 0; i < n; i++) need += hs[i].name.len + hs[i].value.len + 4;
  int inline_body = fin && !head_only && release == NULL;
  if (inline_body) need += len;
  char *d0 = lr_conn_reserve(c, need), *d = d0;
  if (d == NULL) return UV_ENOMEM;
  d = put_status_line(d, status);
  int has_server = 0, checked = (s->flags & LR_SF_CHECKED) != 0;
  for (size_t i = 0; i < n; i++) {
    const lr_header_t *hd = &hs[i];
    if (lr_header_is_hop_by_hop(hd->name.base, hd->name.len) || (!checked && !lr_header_valid(hd))) {
      /* the handler can't write connection headers, but can ask to close */
      if (hd->name.len == 10 && strncasecmp(hd->name.base, "connection", 10) == 0 &&
          has_token(hd->value.base, hd->value.len, "close"))
        h->closing = 1;
      continue;
    }
    copy_lower(d, hd->name.base, hd->name.len);
    d += hd->name.len;
    if (hd->name.len == 6 && strncasecmp(hd->name.base, "server", 6) == 0) has_server = 1;
    d = put(d, ": ", 2);
    d = put(d, hd->value.base, hd->value.len);
    d = put(d, "\r\n", 2);
  }
  if (!has_server) d = put(d, "server: lariat\r\n", 16);
  d = put(d, "date: ", 6);
  d = put(d, lr_worker_date(w), 29);
  d = put(d, "\r\n", 2);
  if (fin) {
    if (has_body) {
      d = put(d, "content-length: ", 16);
      d = put_u64(d, len);
      d = put(d, "\r\n", 2);
    }
  } else if (chunked) {
    d = put(d, "transfer-encoding: chunked\r\n", 28);
  }
  if (h->closing)
    d = put(d, "connection: close\r\n", 19);
  else if (s->version == 10)
    d = put(d, "connection: keep-alive\r\n", 24);
  d = put(d, "\r\n", 2);
  if (inline_body) {
    d = put(d, body, len);
    s->bytes_sent += len;
  }
  lr_conn_commit(c, (size_t)(d - d0));
  if (release) {
    if (fin && !head_only && len) {
      lr_conn_write_ref(c, body, len, release, arg); /* big bodies are referenced, not copied */
      s->bytes_sent += len;
    } else {
      release(arg);
    }
  }
  if (fin) response_complete(h, s);
  return 0;
}

static int h1_send_data(lr_stream_t *s, const char *data, size_t len, lr_release_cb release, void *arg, int fin) {
  h1_conn_t *h = H1(s->conn);
  lr_conn_t *c = &h->base;
  int chunked = s->version == 11 && lr_status_has_body(s->status);
  int drop = (s->flags & LR_SF_HEAD) || !lr_status_has_body(s->status);
  if (len && !drop) {
    if (chunked) {
      char sz[24];
      int k = snprintf(sz, sizeof sz, "%zx\r\n", len);
      lr_conn_write(c, sz, (size_t)k);
    }
    if (release)
      lr_conn_write_ref(c, data, len, release, arg);
    else
      lr_conn_write(c, data, len);
    if (chunked) lr_conn_write(c, "\r\n", 2);
    s->bytes_sent += len;
  } else if (release) {
    release(arg);
  }
  if (fin) {
    if (chunked && !drop) lr_conn_write(c, "0\r\n\r\n", 5);
    response_complete(h, s);
  }
  return 0;
}

static int h1_send_trailers(lr_stream_t *s, const lr_header_t *hs, size_t n) {
  h1_conn_t *h = H1(s->conn);
  lr_conn_t *c = &h->base;
  int chunked = s->version == 11 && lr_status_has_body(s->status) && !(s->flags & LR_SF_HEAD);
  if (chunked) {
    lr_conn_write(c, "0\r\n", 3);
    /* RFC 9110 §6.5: only to a client that said it accepts them */
    if (s->flags & LR_SF_TE_TRAILERS) {
      for (size_t i = 0; i < n; i++) {
        const lr_header_t *hd = &hs[i];
        if (lr_header_is_hop_by_hop(hd->name.base, hd->name.len) || !lr_header_valid(hd)) continue;
        char *d0 = lr_conn_reserve(c, hd->name.len + hd->value.len + 4), *d = d0;
        if (d == NULL) break;
        for (size_t k = 0; k < hd->name.len; k++) {
          char ch = hd->name.base[k];
          *d++ = (ch >= 'A' && ch <= 'Z') ? (char)(ch | 0x20) : ch;
        }
        d = put(d, ": ", 2);
        d = put(d, hd->value.base, hd->value.len);
        d = put(d, "\r\n", 2);
        lr_conn_commit(c, (size_t)(d - d0));
      }
    }
    lr_conn_write(c, "\r\n", 2);
  }
  response_complete(h, s);
  return 0;
}

/* ---- request lifecycle ---- */

static void h1_process(h1_conn_t *h, const char *p, size_t n);
static void send_error(h1_conn_t *h, int status);

static void release_current(h1_conn_t *h) {
  lr_stream_t *s = h->cur;
  h->cur = NULL;
  h->blocked = 0;
  if (s) lr__stream_conn_release(s);
}

/* the response is complete and the request fully read: on to the next request */
static void next_request(h1_conn_t *h) {
  lr_conn_t *c = &h->base;
  if (h->closing) {
    release_current(h);
    /* closing with input unread (a body, pipelined requests): linger */
    if (!h->msg_done || h->leftover.len)
      lr_conn_close_linger(c);
    else
      lr_conn_close_after_write(c);
    return;
  }
  if (h->msg_done) {
    /* ready for the next request: parse what is waiting, after this loop phase
     * (never from inside the handler that just replied) */
    release_current(h);
    lr_conn_set_timeout(c, LR_TO_IDLE);
    if (h->leftover.len) {
      c->flags |= LR_CF_NEED_RESUME;
      lr_conn_defer(c);
    }
    if (h->body_stopped || h->leftover.len < LEFTOVER_MAX) {
      h->body_stopped = 0;
      lr_conn_read_start(c);
    }
  }
  /* else: the rest of the request body is still coming; it is read and
   * dropped, bounded by the body deadline (LR_TO_BODY stays armed) */
}

/* The body's deadline: --body-deadline plus a second per --body-min-rate bytes
 * received, so a body trickled in a few bytes at a time ends with a 408 while
 * a big upload at any sane rate never notices. The clock stops while we don't
 * read (the handler's buffer is full) or the client waits for 100 Continue.
 * Once the response is out, the body is only read to be dropped: a pause of
 * --body-timeout then ends the connection as well. */
static void body_check(h1_conn_t *h) {
  lr_conn_t *c = &h->base;
  lr_stream_t *s = h->cur;
  const lr_config_t *cfg = c->worker->cfg;
  uint64_t now = uv_now(&c->worker->loop);
  if (s == NULL || h->msg_done) return;
  int finished = (s->flags & LR_SF_FINISHED) != 0;
  if (h->body_stopped || ((s->flags & LR_SF_EXPECT) && !(s->flags & LR_SF_CONTINUED) && !finished)) {
    h->body_start += now - h->body_check;
    h->body_last = now;
  }
  h->body_check = now;
  uint64_t deadline = h->body_start + cfg->body_deadline_ms;
  if (cfg->body_min_rate) deadline += s->body_received * 1000 / cfg->body_min_rate;
  if (now >= deadline || (finished && now - h->body_last >= cfg->body_timeout_ms)) {
    LR_DEBUG("request body too slow: %llu bytes in %llu ms", (unsigned long long)s->body_received,
             (unsigned long long)(now - h->body_start));
    if (!(s->flags & LR_SF_REPLIED)) {
      send_error(h, 408);
      return;
    }
    lr_conn_close(c); /* a handler still running sees its stream reset */
    return;
  }
  lr_conn_set_timeout(c, LR_TO_BODY);
}

static void body_clock_start(h1_conn_t *h) {
  uint64_t now = uv_now(&h->base.worker->loop);
  h->body_start = h->body_check = h->body_last = now;
  lr_conn_set_timeout(&h->base, LR_TO_BODY);
}

static void response_complete(h1_conn_t *h, lr_stream_t *s) {
  s->flags |= LR_SF_FINISHED;
  lr_worker_access_log(h->base.worker, s);
  s->body.len = 0; /* unread body is dropped from now on */
  next_request(h);
}

static void send_error(h1_conn_t *h, int status) {
  lr_conn_t *c = &h->base;
  lr_stream_t *s = h->cur;
  h->closing = 1;
  if (s && (s->flags & LR_SF_REPLIED)) {
    /* the response already started: all we can do is cut the connection */
    release_current(h);
    lr_conn_close(c);
    return;
  }
  const char *reason = lr_status_reason(status);
  char buf[512];
  int k = snprintf(buf, sizeof buf,
                   "HTTP/1.1 %d %s\r\nserver: lariat\r\ndate: %s\r\ncontent-type: text/plain; charset=utf-8\r\n"
                   "content-length: %zu\r\nconnection: close\r\n\r\n%s\n",
                   status, reason, lr_worker_date(c->worker), strlen(reason) + 1, reason);
  lr_conn_write(c, buf, (size_t)k);
  if (s) {
    head_resolve(h, s);
    s->flags |= LR_SF_REPLIED | LR_SF_FINISHED | LR_SF_RESET;
    s->status = status;
    if (s->method.base == NULL) s->method = (lr_str_t){"-", 1};
    lr_worker_access_log(c->worker, s);
  }
  release_current(h);
  /* the rest of the request may still come: read it away after the answer */
  lr_conn_close_linger(c);
}

static int parse_error_status(h1_conn_t *h, llhttp_errno_t e) {
  if (h->error) return h->error;
  switch (e) {
    case HPE_INVALID_TRANSFER_ENCODING: return h->te_unknown && !h->te_bad ? 501 : 400;
    case HPE_INVALID_METHOD: return 400; /* unknown methods are 400 for llhttp; 501 would need a list */
    default: return 400;
  }
}

static void wake_reader(h1_conn_t *h) {
  lr_stream_t *s = h->cur;
  if (s && s->wait == LR_WAIT_BODY && (s->body.len || (s->flags & LR_SF_BODY_DONE)))
    h->base.worker->app->wake(s);
}

static void save_leftover(h1_conn_t *h, const char *p, size_t n) {
  if (n == 0) return;
  lr_buf_append(&h->leftover, p, n);
  if (h->leftover.len >= LEFTOVER_MAX) lr_conn_read_stop(&h->base);
}

/* Upgrade: h2c (RFC 7540 §3.2) on a request without a body: it becomes
 * stream 1 of an HTTP/2 connection that takes the rest of the input */
static int h2c_upgrade(h1_conn_t *h, lr_stream_t *s, const char *p, size_t n) {
  const lr_str_t *h2_settings = lr_stream_header(s, "http2-settings", 14);
  if (h2_settings == NULL || !(h->parser.flags & F_CONNECTION_UPGRADE)) return 0;
  h->cur = NULL;
  if (lr_http2_upgrade(&h->base, s, h2_settings, p, n)) {
    h->cur = s; /* not taken: answer it as HTTP/1.1 */
    return 0;
  }
  h->in_process = 0;
  return 1;
}

static void h1_process(h1_conn_t *h, const char *p, size_t n) {
  lr_conn_t *c = &h->base;
  h->in_process = 1;
  /* after a pause at the end of a head, the parser may still owe us the
   * message's completion without needing another byte: run it once more */
  int kick = 0;
  while ((n > 0 || kick) && !(c->flags & LR_CF_CLOSING)) {
    kick = 0;
    /* closing: finish reading the current request, never start another */
    if (h->blocked || (h->closing && (h->msg_done || h->cur == NULL))) {
      save_leftover(h, p, n);
      break;
    }
    if (h->cur == NULL && c->worker->stopping) {
      lr_conn_close(c);
      break;
    }
    /* pipelined requests whose responses the client doesn't read: stop
     * answering (and reading) until the output drains */
    if (h->cur == NULL && lr_conn_queued(c) > LR_OUT_HIGH && !(c->flags & LR_CF_WRITING)) {
      lr__conn_flush(c); /* most often the kernel takes it all at once */
      if (c->flags & LR_CF_CLOSING) break;
    }
    if (h->cur == NULL && lr_conn_queued(c) > LR_OUT_HIGH) {
      save_leftover(h, p, n);
      h->out_blocked = 1;
      lr_conn_read_stop(c);
      break;
    }
    h->pause = PAUSE_NONE;
    h->exec_start = p;
    llhttp_errno_t e = llhttp_execute(&h->parser, p, n);
    size_t used = e == HPE_OK ? n : (size_t)(llhttp_get_error_pos(&h->parser) - p);
    p += used;
    n -= used;
    if (e == HPE_OK) {
      wake_reader(h);
      break;
    }
    if (e == HPE_PAUSED_UPGRADE) {
      /* no protocol upgrade is offered yet: carry on as plain HTTP/1.1 */
      llhttp_resume_after_upgrade(&h->parser);
      e = HPE_PAUSED;
    }
    if (e != HPE_PAUSED) {
      send_error(h, parse_error_status(h, e));
      break;
    }
    llhttp_resume(&h->parser);
    lr_stream_t *s = h->cur;
    if (h->pause == PAUSE_HEADERS) {
      if (s->flags & LR_SF_BODY_DONE)
        lr_conn_set_timeout(c, LR_TO_NONE);
      else
        body_clock_start(h);
      kick = 1;
      if (h->is_upgrade && h2c_upgrade(h, s, p, n)) return;
      c->worker->app->start(s);
      if (h->switched) { /* the handler upgraded the connection: the rest is the new protocol's */
        h->in_process = 0;
        if (n) c->proto->on_read(c, p, n);
        return;
      }
    } else if (h->pause == PAUSE_MESSAGE) {
      if (s->flags & LR_SF_FINISHED)
        next_request(h);
      else {
        lr_conn_set_timeout(c, LR_TO_NONE); /* the body is in: no deadline while the handler runs */
        h->blocked = 1;
        wake_reader(h);
      }
    }
  }
  h->in_process = 0;
  if (h->cur && !(c->flags & LR_CF_CLOSING)) {
    wake_reader(h);
    /* a handler that reads slowly pushes back on its client */
    if (h->cur && h->cur->body.len > BODY_HIGH) {
      h->body_stopped = 1;
      lr_conn_read_stop(c);
    }
  }
}

/* ---- Upgrade ---- */

int lr_http1_switch(lr_stream_t *s, const lr_header_t *hs, size_t n, const lr_proto_t *proto, void *state,
                    lr_buf_t *rest) {
  lr_conn_t *c = s->conn;
  if (c == NULL || c->proto != &lr_http1_proto) return LR_ESTATE;
  h1_conn_t *h = H1(c);
  if (h->cur != s || h->closing || s->version != 11 || !(s->flags & LR_SF_BODY_DONE) ||
      (s->flags & LR_SF_REPLIED))
    return LR_ESTATE;
  size_t need = 128;
  for (size_t i = 0; i < n; i++) need += hs[i].name.len + hs[i].value.len + 4;
  char *d0 = lr_conn_reserve(c, need), *d = d0;
  if (d == NULL) return UV_ENOMEM;
  d = put(d, "HTTP/1.1 101 Switching Protocols\r\n", 34);
  for (size_t i = 0; i < n; i++) {
    if (!lr_header_valid(&hs[i])) continue;
    d = put(d, hs[i].name.base, hs[i].name.len);
    d = put(d, ": ", 2);
    d = put(d, hs[i].value.base, hs[i].value.len);
    d = put(d, "\r\n", 2);
  }
  d = put(d, "server: lariat\r\ndate: ", 22);
  d = put(d, lr_worker_date(c->worker), 29);
  d = put(d, "\r\n\r\n", 4);
  lr_conn_commit(c, (size_t)(d - d0));
  s->flags |= LR_SF_REPLIED | LR_SF_FINISHED;
  s->status = 101;
  lr_worker_access_log(c->worker, s);
  /* the stream now belongs to the new protocol's side of the connection */
  h->cur = NULL;
  h->blocked = 0;
  h->switched = 1;
  *rest = h->leftover;
  h->leftover = (lr_buf_t){0};
  c->proto = proto;
  c->proto_state = state;
  lr_conn_set_timeout(c, LR_TO_NONE);
  h->body_stopped = 0;
  lr_conn_read_start(c);
  return 0;
}

/* ---- lr_proto_t ---- */

static void h1_on_read(lr_conn_t *c, const char *data, size_t len) {
  h1_conn_t *h = H1(c);
  /* h2c with prior knowledge (RFC 9113 §3.3): the connection preface comes first */
  static const char preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
  if (h->requests == 0 && h->leftover.len == 0 && !h->in_process &&
      memcmp(data, preface, len < 24 ? len : 24) == 0) {
    lr_http2_start(c, data, len);
    return;
  }
  if (h->cur == NULL && c->timeout.kind == LR_TO_IDLE) lr_conn_set_timeout(c, LR_TO_HEADER);
  if (h->leftover.len || h->in_process) {
    save_leftover(h, data, len);
    return;
  }
  h1_process(h, data, len);
}

static void h1_resume(lr_conn_t *c) {
  h1_conn_t *h = H1(c);
  if (h->in_process || h->blocked) return;
  lr_buf_t in = h->leftover;
  h->leftover = (lr_buf_t){0};
  h1_process(h, in.base, in.len);
  lr_buf_free(&in);
}

/* EOF before the response is complete is a client gone (DESIGN §4b, nginx's
 * 499): closing cancels the handler at its wait. Reading goes on while a
 * handler runs (pipelined input waits in leftover), so it is noticed; when
 * reading pauses (leftover or body buffer full), h1_on_hangup notices it. */
static void h1_on_eof(lr_conn_t *c) { lr_conn_close(c); }

/* The same, seen by conn.c's probe while reading is paused (input queued
 * behind a running handler, a body it reads slowly): a live handler is
 * cancelled; without one, the queued requests are still answered and the EOF
 * is read once reading resumes. */
static void h1_on_hangup(lr_conn_t *c) {
  h1_conn_t *h = H1(c);
  if (h->cur && !(h->cur->flags & LR_SF_FINISHED)) lr_conn_close(c);
}

static void h1_on_drain(lr_conn_t *c) {
  h1_conn_t *h = H1(c);
  if (h->out_blocked) {
    h->out_blocked = 0;
    c->flags |= LR_CF_NEED_RESUME;
    lr_conn_defer(c);
    if (h->leftover.len < LEFTOVER_MAX) lr_conn_read_start(c);
  }
  if (h->cur && h->cur->wait == LR_WAIT_DRAIN) c->worker->app->wake(h->cur);
}

static void h1_on_timeout(lr_conn_t *c) {
  h1_conn_t *h = H1(c);
  if (c->timeout.kind == LR_TO_BODY) {
    body_check(h);
    return;
  }
  if (c->timeout.kind == LR_TO_HEADER && h->cur) {
    send_error(h, 408); /* slowloris: a request head that never completes */
    return;
  }
  lr_conn_close(c);
}

static void h1_on_close(lr_conn_t *c) {
  h1_conn_t *h = H1(c);
  lr_stream_t *s = h->cur;
  h->cur = NULL;
  if (s) {
    s->flags |= LR_SF_RESET;
    lr__stream_conn_release(s);
  }
  lr_buf_free(&h->leftover);
}

static void h1_on_shutdown(lr_conn_t *c) {
  h1_conn_t *h = H1(c);
  if (h->cur == NULL && h->leftover.len == 0)
    lr_conn_close(c);
  else
    h->closing = 1; /* the response in progress says connection: close */
}

static void h1_abort(lr_stream_t *s) {
  h1_conn_t *h = H1(s->conn);
  /* the client must not mistake a truncated response for a complete one */
  lr__conn_flush(&h->base);
  lr_conn_close(&h->base);
}

static void h1_body_wanted(lr_stream_t *s) {
  h1_conn_t *h = H1(s->conn);
  lr_conn_t *c = &h->base;
  if ((s->flags & LR_SF_EXPECT) && !(s->flags & (LR_SF_CONTINUED | LR_SF_REPLIED))) {
    /* Cowboy's rule: 100 only once the handler actually reads the body */
    s->flags |= LR_SF_CONTINUED;
    lr_conn_write(c, "HTTP/1.1 100 Continue\r\n\r\n", 25);
  }
  if (h->body_stopped && s->body.len < BODY_LOW) {
    h->body_stopped = 0;
    if (h->leftover.len < LEFTOVER_MAX) lr_conn_read_start(c);
  }
}

const lr_proto_t lr_http1_proto = {
    .name = "http/1.1",
    .on_read = h1_on_read,
    .on_eof = h1_on_eof,
    .on_drain = h1_on_drain,
    .on_timeout = h1_on_timeout,
    .on_close = h1_on_close,
    .on_shutdown = h1_on_shutdown,
    .send_head = h1_send_head,
    .send_data = h1_send_data,
    .send_trailers = h1_send_trailers,
    .abort = h1_abort,
    .body_wanted = h1_body_wanted,
    .resume = h1_resume,
    .on_hangup = h1_on_hangup,
};

void lr_http1_init(lr_conn_t *c) {
  h1_conn_t *h = H1(c);
  llhttp_init(&h->parser, HTTP_REQUEST, &settings);
  h->parser.data = h;
}
